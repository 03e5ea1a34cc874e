/* A fault goes to the handler the program installed: SIGSEGV with siginfo; the
 * handler prints and exits 42. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <unistd.h>
static void h(int sig, siginfo_t *si, void *uc) { (void)si; (void)uc; printf("caught signal %d\n", sig); fflush(stdout); _exit(42); }
int main(void) {
    struct sigaction sa = {0}; sa.sa_sigaction = h; sa.sa_flags = SA_SIGINFO; sigaction(SIGSEGV, &sa, NULL);
    puts("about to fault"); fflush(stdout);
    volatile int *p = (int *)(uintptr_t)getpid();   /* address 100: unmapped */
    *p = 1;
    return 0;
}
