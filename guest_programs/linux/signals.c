/* Signals: a SIGUSR1 the program sends itself (handler on an alternate stack), an
 * interval timer's SIGALRMs interrupting sleeps (EINTR), SA_RESETHAND, and a blocked
 * signal that waits until it is unblocked. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t alarms, usr1, on_alt;
static char altstack[65536];

static void on_alarm(int sig) { (void)sig; alarms++; }
static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    char here;
    usr1 += sig == SIGUSR1 && si->si_signo == SIGUSR1;
    on_alt = &here >= altstack && &here < altstack + sizeof altstack;
}

int main(void)
{
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    sigaction(SIGUSR1, &sa, NULL);
    kill(getpid(), SIGUSR1);
    printf("usr1 handled: %d on alternate stack: %d\n", (int)usr1, (int)on_alt);
    struct sigaction cur;
    sigaction(SIGUSR1, NULL, &cur);
    printf("reset to default: %d\n", cur.sa_handler == SIG_DFL);

    signal(SIGALRM, on_alarm);
    struct itimerval it = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    int eintr = 0;
    while (alarms < 3) {
        struct timespec ts = {1, 0};
        if (nanosleep(&ts, NULL) < 0 && errno == EINTR)
            eintr++;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("alarms: %d, sleeps interrupted: %d\n", (int)alarms, eintr >= 3);

    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    signal(SIGUSR2, on_alarm);
    sigprocmask(SIG_BLOCK, &block, NULL);
    int before = alarms;
    raise(SIGUSR2);
    int while_blocked = alarms - before;
    sigprocmask(SIG_UNBLOCK, &block, NULL);
    printf("blocked signal waited: %d, delivered after unblock: %d\n", while_blocked == 0, alarms - before);
    return 0;
}
