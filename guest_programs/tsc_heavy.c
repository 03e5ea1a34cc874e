/* tsc-heavy: one RDTSC about every 100 instructions of ordinary mixed work (table
 * loads and stores, multiplies, a data-dependent branch), for a stress test of the
 * virtual time path and of the log's bytes per RDTSC. */
#include "ftvm.h"

#define TABLE 4096
#ifndef ROUNDS
#define ROUNDS 2000000
#endif
static uint32_t table[TABLE];

int main(void)
{
    uint64_t x = 0x243F6A8885A308D3ull, acc = 0, sum = 0, prev = ftvm_rdtsc(), backwards = 0;
    const uint64_t rounds = ROUNDS;
    for (uint64_t i = 0; i < rounds; i++) {
        for (int k = 0; k < 5; k++) {
            uint32_t idx = (uint32_t)(x >> 7) & (TABLE - 1);
            table[idx] += (uint32_t)x;
            x = x * 6364136223846793005ull + table[(idx * 7) & (TABLE - 1)];
            if (x & 0x100)
                acc ^= x >> 3;
            else
                acc += x;
        }
        uint64_t t = ftvm_rdtsc();
        if (t <= prev)
            backwards++;
        sum += t - prev;
        prev = t;
    }
    ftvm_puts("tsc-heavy: rdtsc=");
    ftvm_put_u64(rounds + 1);
    ftvm_puts(" elapsed_ns=");
    ftvm_put_u64(sum);
    ftvm_puts(" state=");
    ftvm_put_hex(acc ^ x);
    ftvm_puts(backwards ? " monotonic=NO\n" : " monotonic=yes\n");
    return backwards ? 1 : 0;
}
