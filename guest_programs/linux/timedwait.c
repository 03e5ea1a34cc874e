/* Timed futex waits that time out, in two threads at once: pthread_cond_timedwait on
 * CLOCK_MONOTONIC (FUTEX_WAIT_BITSET, an absolute deadline: glibc's and CPython's
 * GIL's way) and a raw FUTEX_WAIT with a relative timeout. Nobody signals, so every
 * wait ends in ETIMEDOUT, and the guest's last reads of the clock are those timeouts
 * (no clock_gettime after them): replay's guest time must still match the log's. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FUTEX_WAIT_PRIVATE 128        /* FUTEX_WAIT | FUTEX_PRIVATE_FLAG (musl has no linux/futex.h) */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static int never;

static void *cond_waiter(void *arg) {
    int timeouts = 0;
    for (int i = 0; i < 5; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 2000000;
        if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
        pthread_mutex_lock(&mu);
        if (pthread_cond_timedwait(&cv, &mu, &ts) == ETIMEDOUT) timeouts++;
        pthread_mutex_unlock(&mu);
    }
    *(int *)arg = timeouts;
    return NULL;
}

static void *futex_waiter(void *arg) {
    int timeouts = 0;
    for (int i = 0; i < 5; i++) {
        struct timespec rel = {0, 3000000};
        if (syscall(SYS_futex, &never, FUTEX_WAIT_PRIVATE, 0, &rel, NULL, 0) == -1 && errno == ETIMEDOUT)
            timeouts++;
    }
    *(int *)arg = timeouts;
    return NULL;
}

int main(void) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cv, &ca);
    int a = 0, b = 0;
    pthread_t t1, t2;
    pthread_create(&t1, NULL, cond_waiter, &a);
    pthread_create(&t2, NULL, futex_waiter, &b);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    printf("cond timeouts=%d futex timeouts=%d\n", a, b);
    return 0;
}
