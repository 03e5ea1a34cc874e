/* zeromem: a guest with about 1 GiB of zero-initialised data (.bss) that it never touches
 * but one page of: ftvm must not back the untouched part with host memory. */
#include "ftvm.h"

static unsigned char big[((size_t)1 << 30) - (4 << 20)];

int main(void)
{
    big[4096 * 1000] = 1;
    ftvm_puts("zeromem: ");
    ftvm_put_u64(big[4096 * 1000] + big[12345]);
    ftvm_putc('\n');
    return 0;
}
