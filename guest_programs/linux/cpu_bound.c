/* cpu_bound: CRC-32 over 8 MiB of generated data, computed ROUNDS times (a benchmark;
 * about 0.1 s natively). Exits with status 0. */
#include "common.h"

#ifndef ROUNDS
#define ROUNDS 6
#endif
#define SIZE (8 * 1024 * 1024)

int main(void)
{
    unsigned char *buf = malloc(SIZE);
    CHECK(buf, "malloc");
    uint32_t seed = 12345;
    for (size_t i = 0; i < SIZE; i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = seed >> 16;
    }
    uint32_t crc = 0;
    for (int r = 0; r < ROUNDS; r++) {
        crc = crc32_update(0, buf, SIZE);
        buf[r] ^= crc;          /* each round depends on the previous one */
    }
    printf("crc32 of 8 MiB, %d rounds: %08x\n", ROUNDS, crc);
    free(buf);
    return 0;
}
