/* fault: touches unmapped memory; ftvm reports the fault and the exit status is 139. */
#include "ftvm.h"

int main(void)
{
    ftvm_puts("fault: reading 0xdead0000\n");
    volatile uint64_t *p = (volatile uint64_t *)0xdead0000ull;
    uint64_t v = *p;
    ftvm_puts("fault: not reached\n");
    return (int)v;
}
