/* Threads: four workers share a mutex-protected counter and signal a condition
 * variable; joins collect their results; a thread spins on a flag that another sets
 * after a 1 ms sleep (the scheduler must preempt the spinner). */
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>

#include <time.h>
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long counter; static int ready;
static atomic_int flag;
static void *worker(void *arg) {
    long id = (long)arg;
    for (int i = 0; i < 20000; i++) { pthread_mutex_lock(&mu); counter++; pthread_mutex_unlock(&mu); }
    pthread_mutex_lock(&mu); ready++; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu);
    return (void *)(id * 10);
}
static void *spinner(void *arg) { (void)arg; while (!atomic_load(&flag)) ; return NULL; }
static void *setter(void *arg) { (void)arg; struct timespec ts = {0, 1000000}; nanosleep(&ts, NULL); atomic_store(&flag, 1); return NULL; }
int main(void) {
    pthread_t t[4], s1, s2;
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    pthread_mutex_lock(&mu); while (ready < 4) pthread_cond_wait(&cv, &mu); pthread_mutex_unlock(&mu);
    long sum = 0; for (int i = 0; i < 4; i++) { void *r; pthread_join(t[i], &r); sum += (long)r; }
    pthread_create(&s1, NULL, spinner, NULL); pthread_create(&s2, NULL, setter, NULL);
    pthread_join(s1, NULL); pthread_join(s2, NULL);
    printf("counter=%ld sum=%ld spin done\n", counter, sum);
    return 0;
}
