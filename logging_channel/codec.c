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
