/* random: reads the random-number device; the values are logged and replayed. */
#include "ftvm.h"

int main(void)
{
    for (int i = 0; i < 4; i++) {
        ftvm_puts("random: ");
        ftvm_put_hex(((uint64_t)ftvm_rng32() << 32) | ftvm_rng32());
        ftvm_putc('\n');
    }
    return 0;
}
