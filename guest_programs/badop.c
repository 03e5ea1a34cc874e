/* badop: executes an invalid instruction (ud2); ftvm reports it, exit status 132. */
#include "ftvm.h"

int main(void)
{
    ftvm_puts("badop: executing ud2\n");
    __asm__ volatile("ud2");
    return 0;
}
