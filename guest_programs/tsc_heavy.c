/* tsc-heavy: one RDTSC about every 100 instructions, for a stress test of the virtual
 * time path and the log's bytes per RDTSC. */
#include "ftvm.h"

int main(void)
{
    uint64_t x = 0x243F6A8885A308D3ull, sum = 0, prev = ftvm_rdtsc(), backwards = 0;
    const uint64_t rounds = 2000000;
    for (uint64_t i = 0; i < rounds; i++) {
        for (int k = 0; k < 8; k++) { /* ~96 instructions of ALU work */
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x += k;
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
    ftvm_put_hex(x);
    ftvm_puts(backwards ? " monotonic=NO\n" : " monotonic=yes\n");
    return backwards ? 1 : 0;
}
