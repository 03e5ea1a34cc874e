/* CRC-32 as zlib computes it (the log frames' checksum: logging_channel/records.py),
 * eight bytes a step ("slicing by 8"), tables built at the first call. One copy for both
 * C modules: the log codec (codec.c, which checks incoming frames) and the emulator's
 * fast path (hypervisor/fastpath.c, which writes frames inside the syscall hook). */
#ifndef FTVM_CRC32_SLICE8_H
#define FTVM_CRC32_SLICE8_H

#include <stddef.h>
#include <stdint.h>

static uint32_t crc32_s8_tab[8][256];

static void crc32_s8_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc32_s8_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc32_s8_tab[t][i] = (crc32_s8_tab[t - 1][i] >> 8) ^ crc32_s8_tab[0][crc32_s8_tab[t - 1][i] & 0xff];
}

/* zlib.crc32(p[:n], crc) */
static uint32_t crc32_slice8(uint32_t crc, const uint8_t *p, size_t n)
{
    if (!crc32_s8_tab[0][1])
        crc32_s8_init();
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        crc = crc32_s8_tab[7][lo & 0xff] ^ crc32_s8_tab[6][(lo >> 8) & 0xff] ^ crc32_s8_tab[5][(lo >> 16) & 0xff]
            ^ crc32_s8_tab[4][lo >> 24] ^ crc32_s8_tab[3][p[4]] ^ crc32_s8_tab[2][p[5]] ^ crc32_s8_tab[1][p[6]]
            ^ crc32_s8_tab[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = crc32_s8_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#endif
