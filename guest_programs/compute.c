/* compute: CPU-bound work for a few seconds (sieve, sorting, hashing). The result is
 * fixed, so it is also a correctness check of the emulated CPU. */
#include "ftvm.h"

#define N 2000000
static unsigned char composite[N];
static uint32_t arr[1 << 16];

static uint64_t sieve(void)
{
    uint64_t count = 0;
    memset(composite, 0, sizeof composite);
    for (uint64_t i = 2; i < N; i++) {
        if (composite[i])
            continue;
        count++;
        for (uint64_t j = i * i; j < N; j += i)
            composite[j] = 1;
    }
    return count;
}

static void shellsort(uint32_t *a, int n)
{
    static const int gaps[] = {1750, 701, 301, 132, 57, 23, 10, 4, 1};
    for (unsigned g = 0; g < sizeof gaps / sizeof gaps[0]; g++) {
        int gap = gaps[g];
        for (int i = gap; i < n; i++) {
            uint32_t t = a[i];
            int j = i;
            for (; j >= gap && a[j - gap] > t; j -= gap)
                a[j] = a[j - gap];
            a[j] = t;
        }
    }
}

static uint64_t fnv(const void *p, size_t n, uint64_t h)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

int main(void)
{
    uint64_t h = 1469598103934665603ull, x = 0x9E3779B97F4A7C15ull;
    uint64_t primes = 0;
    for (int round = 0; round < 6; round++) {
        primes = sieve();
        for (int i = 0; i < (int)(sizeof arr / sizeof arr[0]); i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            arr[i] = (uint32_t)x;
        }
        shellsort(arr, sizeof arr / sizeof arr[0]);
        for (int i = 1; i < (int)(sizeof arr / sizeof arr[0]); i++)
            if (arr[i - 1] > arr[i])
                return 3;
        h = fnv(arr, sizeof arr, h);
        h = fnv(composite, sizeof composite, h);
    }
    ftvm_puts("compute: primes=");
    ftvm_put_u64(primes);
    ftvm_puts(" hash=");
    ftvm_put_hex(h);
    ftvm_putc('\n');
    return 0;
}
