/* Packing of RDTSC results for the log: per entry, the zigzag LEB128 varints of the
 * differences to the previous entry's block count, pc and value (the first entry is
 * relative to zero). Arithmetic is modulo 2^64, so any 64-bit values round-trip.
 * Pure: no I/O, no allocation. */
#include <stddef.h>
#include <stdint.h>

static inline uint64_t zigzag(uint64_t d) { return (d << 1) ^ (uint64_t)((int64_t)d >> 63); }
static inline uint64_t unzigzag(uint64_t u) { return (u >> 1) ^ (uint64_t)(-(int64_t)(u & 1)); }

static inline uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* `out` must have room for 30 bytes per entry. Returns the bytes written. */
size_t ftvm_tsc_encode(const uint64_t *entries, uint32_t n, uint8_t *out)
{
    uint64_t prev[3] = {0, 0, 0};
    uint8_t *p = out;
    for (uint64_t i = 0; i < 3 * (uint64_t)n; i++) {
        uint64_t v = entries[i];
        p = put_varint(p, zigzag(v - prev[i % 3]));
        prev[i % 3] = v;
    }
    return (size_t)(p - out);
}

/* Decodes exactly n entries. Returns the bytes consumed, or -1 if the input is
 * malformed (ends early or holds a varint longer than 64 bits). */
int64_t ftvm_tsc_decode(const uint8_t *in, size_t len, uint64_t *entries, uint32_t n)
{
    const uint8_t *p = in, *end = in + len;
    uint64_t prev[3] = {0, 0, 0};
    for (uint64_t i = 0; i < 3 * (uint64_t)n; i++) {
        uint64_t v = 0;
        unsigned shift = 0;
        for (;;) {
            if (p == end)
                return -1;
            uint8_t b = *p++;
            if (shift == 63 && (b & 0x7e))
                return -1;
            v |= (uint64_t)(b & 0x7f) << shift;
            if (!(b & 0x80))
                break;
            shift += 7;
            if (shift > 63)
                return -1;
        }
        prev[i % 3] += unzigzag(v);
        entries[i] = prev[i % 3];
    }
    return (int64_t)(p - in);
}

/* --- whole log frames: u8 version | u8 kind | u32 body length | u32 CRC32 | body ------------
 * The CRC32 (zlib's polynomial) covers the first 6 header bytes and the body. A backup checks
 * every frame of every LOG message it takes, tens of thousands a second: one call per message
 * here instead of a struct unpack, a slice and two zlib calls per frame in Python. */

#include "crc32_slice8.h"

/* zlib.crc32(p[:n], crc) */
uint32_t ftvm_crc32(uint32_t crc, const uint8_t *p, size_t n)
{
    return crc32_slice8(crc, p, n);
}

static inline uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Check the frames that fill buf[0:len] exactly: a readable version (bit v of versions), a
 * known kind (bit k of kinds), a body length of at most body_max that the buffer holds, and the
 * CRC32. offsets[i] gets frame i's start (cap entries at most; len / 10 + 1 always suffice).
 * Returns the number of frames, or -(i + 1) if frame i is bad (the caller names why). */
int64_t ftvm_frames_check(const uint8_t *buf, size_t len, uint32_t *offsets, uint32_t cap,
                          uint32_t versions, uint32_t kinds, uint32_t body_max)
{
    size_t off = 0;
    uint32_t n = 0;
    while (off < len) {
        if (n >= cap || len - off < 10)
            return -(int64_t)n - 1;
        const uint8_t *f = buf + off;
        uint32_t size = get_le32(f + 2);
        if (f[0] > 31 || !(versions >> f[0] & 1) || f[1] > 31 || !(kinds >> f[1] & 1) || size > body_max
            || size > len - off - 10)
            return -(int64_t)n - 1;
        if (ftvm_crc32(ftvm_crc32(0, f, 6), f + 10, size) != get_le32(f + 6))
            return -(int64_t)n - 1;
        offsets[n++] = (uint32_t)off;
        off += 10 + (size_t)size;
    }
    return n;
}
