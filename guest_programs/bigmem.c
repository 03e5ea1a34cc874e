/* bigmem: a guest with MEM_MB MiB of memory in use (every page written), printing
 * numbered lines while it keeps changing that memory: for state-transfer timing. */
#include "ftvm.h"

#ifndef MEM_MB
#define MEM_MB 64
#endif
#define LINES (3000 + MEM_MB * 20)   /* bigger guests run longer: room for transfers */

static unsigned char mem[(size_t)MEM_MB << 20];

int main(void)
{
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < sizeof mem; i += 4096)
        mem[i] = (unsigned char)i;
    for (uint64_t n = 1; n <= LINES; n++) {
        for (int k = 0; k < 20000; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        mem[(x >> 3) % sizeof mem] ^= (unsigned char)x;
        ftvm_puts("line ");
        ftvm_put_u64(n);
        ftvm_puts(" ");
        ftvm_put_hex(x & 0xffff);
        ftvm_putc('\n');
    }
    return 0;
}
