/* lines: output-heavy. Prints numbered lines with some work between them; used by the
 * fault-tolerance tests, which check that every line arrives exactly once, in order. */
#include "ftvm.h"

#ifndef LINES
#define LINES 2000
#endif
/* Work per line: xorshift rounds, one translated block each. Sized so that the run
 * lasts about a second with ftvm's inline block counter (the tests and the demo kill the
 * primary at fixed times and expect the guest to be running then). */
#ifndef WORK
#define WORK 90000
#endif

int main(void)
{
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (uint64_t n = 1; n <= LINES; n++) {
        for (int k = 0; k < WORK; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        ftvm_puts("line ");
        ftvm_put_u64(n);
        ftvm_puts(" ");
        ftvm_put_hex(x & 0xffff);
#ifdef PAD
        /* lines_fast: a longer line for the same number of output calls */
        ftvm_puts(" ................................................................................");
#endif
        ftvm_putc('\n');
    }
    return 0;
}
