/* timerand: clocks, sleeping and randomness. Lines that differ from run to run start
 * with "nondet:" (tests drop them when comparing with a native run; record and replay
 * must still agree on them). Exits with status 5. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/random.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "common.h"

static int64_t ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

static int nonzero(const unsigned char *p, size_t n)
{
    while (n--)
        if (*p++)
            return 1;
    return 0;
}

int main(void)
{
    struct timespec mono0, mono1, real, res;
    struct timeval tv;

    CHECK(clock_gettime(CLOCK_MONOTONIC, &mono0) == 0, "clock_gettime MONOTONIC");
    CHECK(clock_gettime(CLOCK_REALTIME, &real) == 0, "clock_gettime REALTIME");
    CHECK(gettimeofday(&tv, NULL) == 0, "gettimeofday");
    time_t now = time(NULL);
    CHECK(clock_getres(CLOCK_MONOTONIC, &res) == 0, "clock_getres");

    struct timespec req = {0, 10 * 1000 * 1000};
    CHECK(nanosleep(&req, NULL) == 0, "nanosleep");
    CHECK(clock_gettime(CLOCK_MONOTONIC, &mono1) == 0, "clock_gettime MONOTONIC again");

    printf("realtime after 2020: %s\n", real.tv_sec > 1600000000 ? "yes" : "no");
    printf("gettimeofday within 2 s of realtime: %s\n",
           llabs((long long)tv.tv_sec - real.tv_sec) <= 2 ? "yes" : "no");
    printf("time() within 2 s of realtime: %s\n", llabs((long long)now - real.tv_sec) <= 2 ? "yes" : "no");
    printf("clock_getres monotonic at most 1 ms: %s\n", res.tv_sec == 0 && res.tv_nsec <= 1000000 ? "yes" : "no");
    printf("monotonic advanced by at least 10 ms over nanosleep: %s\n",
           ns(&mono1) - ns(&mono0) >= 10 * 1000 * 1000 ? "yes" : "no");

    unsigned char rnd[16], urnd[32];
    ssize_t n = getrandom(rnd, sizeof rnd, 0);
    printf("getrandom 16 bytes: %s\n", n == 16 && nonzero(rnd, sizeof rnd) ? "ok" : "FAILED");
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0, "open /dev/urandom");
    n = read(fd, urnd, sizeof urnd);
    close(fd);
    printf("/dev/urandom 32 bytes: %s\n", n == 32 && nonzero(urnd, sizeof urnd) ? "ok" : "FAILED");

    uint64_t h = fnv1a(0, rnd, sizeof rnd);
    h = fnv1a(h, urnd, sizeof urnd);
    printf("nondet: random hash %016llx\n", (unsigned long long)h);
    printf("nondet: monotonic %lld.%09ld -> %lld.%09ld\n", (long long)mono0.tv_sec, mono0.tv_nsec,
           (long long)mono1.tv_sec, mono1.tv_nsec);
    printf("nondet: realtime %lld.%09ld gettimeofday %lld.%06ld time %lld\n", (long long)real.tv_sec,
           real.tv_nsec, (long long)tv.tv_sec, (long)tv.tv_usec, (long long)now);
    return 5;
}
