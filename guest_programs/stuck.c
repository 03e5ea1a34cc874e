/* stuck: halts with interrupts disabled, so nothing can ever wake it. ftvm reports
 * that and exits with status 6. */
#include "ftvm.h"

int main(void)
{
    ftvm_puts("stuck: halting with interrupts off\n");
    __asm__ volatile("cli; hlt");
    return 0;
}
