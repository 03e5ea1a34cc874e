/* hello: the smallest guest. Prints one line and exits 0. */
#include "ftvm.h"

int main(void)
{
    ftvm_puts("Hello from an ftvm guest!\n");
    return 0;
}
