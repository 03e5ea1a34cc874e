/* clock: reads virtual time with RDTSC/RDTSCP, checks it never runs backwards, and
 * busy-waits 2 ms of guest time (so its control flow depends on the values read). */
#include "ftvm.h"

int main(void)
{
    uint64_t first = ftvm_rdtsc(), prev = first, now = first;
    uint64_t reads = 1, backwards = 0;
    while (now - first < 2000000) { /* 2 ms of guest time, in ns */
        now = ftvm_rdtsc();
        reads++;
        if (now <= prev)
            backwards++;
        prev = now;
    }
    uint32_t aux = 1;
    uint64_t p = ftvm_rdtscp(&aux);
    if (p <= prev)
        backwards++;
    ftvm_puts("clock: first=");
    ftvm_put_u64(first);
    ftvm_puts(" last=");
    ftvm_put_u64(p);
    ftvm_puts(" reads=");
    ftvm_put_u64(reads + 1);
    ftvm_puts(" rdtscp_aux=");
    ftvm_put_u64(aux);
    ftvm_puts(backwards ? " monotonic=NO\n" : " monotonic=yes\n");
    return backwards ? 1 : 0;
}
