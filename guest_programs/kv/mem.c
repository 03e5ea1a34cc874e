/* kv/mem.c: memory helpers, CRC-32 and the allocator of the kv server's portable core
 * (see kv_internal.h). */
#include "kv_internal.h"

#define NODIST __attribute__((optimize("no-tree-loop-distribute-patterns")))

/* ---------------------------------------------------------------------------------
 * memory helpers: word-wise (the runtime's memcpy is byte-wise, and every loop
 * iteration is a translated block under emulation)
 * --------------------------------------------------------------------------------- */
NODIST void kcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n >= 32) {
        uint64_t a = ld64(s), b = ld64(s + 8), c = ld64(s + 16), e = ld64(s + 24);
        st64(d, a); st64(d + 8, b); st64(d + 16, c); st64(d + 24, e);
        d += 32; s += 32; n -= 32;
    }
    while (n >= 8) { st64(d, ld64(s)); d += 8; s += 8; n -= 8; }
    while (n--) *d++ = *s++;
}

NODIST void kmove(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d <= s || d >= s + n) {
        kcpy(d, s, n);
        return;
    }
    while (n >= 8) { n -= 8; st64(d + n, ld64(s + n)); }
    while (n--) d[n] = s[n];
}

NODIST void kzero(void *dst, size_t n)
{
    uint8_t *d = dst;
    while (n >= 32) { st64(d, 0); st64(d + 8, 0); st64(d + 16, 0); st64(d + 24, 0); d += 32; n -= 32; }
    while (n >= 8) { st64(d, 0); d += 8; n -= 8; }
    while (n--) *d++ = 0;
}

NODIST int keq(const uint8_t *a, const uint8_t *b, size_t n)
{
    while (n >= 8) {
        if (ld64(a) != ld64(b)) return 0;
        a += 8; b += 8; n -= 8;
    }
    while (n--)
        if (*a++ != *b++) return 0;
    return 1;
}

/* ---------------------------------------------------------------------------------
 * CRC-32 (reflected 0xEDB88320, as zlib), slicing by 8
 * --------------------------------------------------------------------------------- */
static uint32_t crc_tab[8][256];
static int crc_ready;

void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xff];
    crc_ready = 1;
}

uint32_t kv_crc32(uint32_t crc, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    if (!crc_ready) crc_init();
    crc = ~crc;
    while (n >= 8) {
        uint32_t one = ld32(p) ^ crc, two = ld32(p + 4);
        crc = crc_tab[7][one & 0xff] ^ crc_tab[6][(one >> 8) & 0xff] ^ crc_tab[5][(one >> 16) & 0xff] ^
              crc_tab[4][one >> 24] ^ crc_tab[3][two & 0xff] ^ crc_tab[2][(two >> 8) & 0xff] ^
              crc_tab[1][(two >> 16) & 0xff] ^ crc_tab[0][two >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---------------------------------------------------------------------------------
 * allocator: boundary tags + segregated free lists over a static arena
 * block: u64 header (size | USED | PREV_USED), payload; a free block also holds
 * next/prev list pointers and a footer (its size) in its last 8 bytes.
 * --------------------------------------------------------------------------------- */
#define A_USED 1ull
#define A_PUSED 2ull
#define A_MIN 32ull
#define NBINS 128
struct fblk {
    uint64_t hdr;
    struct fblk *next, *prev;
};
static uint8_t arena[KV_ARENA_SIZE] __attribute__((aligned(16)));
static struct fblk *bins[NBINS];
static uint64_t binmap[2];
uint64_t a_free;

static inline uint64_t bsz(const void *b) { return ((const struct fblk *)b)->hdr & ~7ull; }

static unsigned bin_of(uint64_t sz)
{
    if (sz < 1024) return (unsigned)(sz >> 4);
    unsigned lg = 63u - (unsigned)__builtin_clzll(sz);
    unsigned idx = 64 + (lg - 10) * 4 + (unsigned)((sz >> (lg - 2)) & 3);
    return idx < NBINS ? idx : NBINS - 1;
}

static void bin_insert(struct fblk *b, uint64_t sz)
{
    unsigned i = bin_of(sz);
    b->prev = 0;
    b->next = bins[i];
    if (bins[i]) bins[i]->prev = b;
    bins[i] = b;
    binmap[i >> 6] |= 1ull << (i & 63);
}

static void bin_remove(struct fblk *b, uint64_t sz)
{
    unsigned i = bin_of(sz);
    if (b->prev) b->prev->next = b->next;
    else bins[i] = b->next;
    if (b->next) b->next->prev = b->prev;
    if (!bins[i]) binmap[i >> 6] &= ~(1ull << (i & 63));
}

void a_init(void)
{
    for (int i = 0; i < NBINS; i++) bins[i] = 0;
    binmap[0] = binmap[1] = 0;
    uint64_t total = KV_ARENA_SIZE - 8;
    struct fblk *b = (struct fblk *)arena;
    b->hdr = total | A_PUSED;
    st64(arena + total - 8, total);
    st64(arena + total, 0 | A_USED); /* end sentinel */
    bin_insert(b, total);
    a_free = total;
}

void *a_alloc(uint64_t n)
{
    uint64_t need = (n + 8 + 7) & ~7ull;
    if (need < A_MIN) need = A_MIN;
    if (need > a_free) return 0;
    unsigned i = bin_of(need);
    struct fblk *b = 0;
    int tries = 0;
    for (struct fblk *x = bins[i]; x && tries < 16; x = x->next, tries++)
        if (bsz(x) >= need) { b = x; break; }
    if (!b) {
        for (unsigned j = i + 1; j < NBINS;) {
            uint64_t m = binmap[j >> 6] & (~0ull << (j & 63));
            if (m) { b = bins[(j & ~63u) + (unsigned)__builtin_ctzll(m)]; break; }
            j = (j & ~63u) + 64;
        }
        if (!b) return 0;
    }
    uint64_t sz = bsz(b);
    bin_remove(b, sz);
    if (sz - need >= A_MIN) {
        struct fblk *rest = (struct fblk *)((uint8_t *)b + need);
        uint64_t rsz = sz - need;
        rest->hdr = rsz | A_PUSED;
        st64((uint8_t *)rest + rsz - 8, rsz);
        bin_insert(rest, rsz);
        b->hdr = need | A_USED | (b->hdr & A_PUSED);
        sz = need;
    } else {
        b->hdr |= A_USED;
        ((struct fblk *)((uint8_t *)b + sz))->hdr |= A_PUSED;
    }
    a_free -= sz;
    return (uint8_t *)b + 8;
}

void a_release(void *p)
{
    if (!p) return;
    struct fblk *b = (struct fblk *)((uint8_t *)p - 8);
    uint64_t sz = bsz(b);
    a_free += sz;
    struct fblk *next = (struct fblk *)((uint8_t *)b + sz);
    if (!(next->hdr & A_USED)) {
        uint64_t nsz = bsz(next);
        bin_remove(next, nsz);
        sz += nsz;
    }
    if (!(b->hdr & A_PUSED)) {
        uint64_t psz = ld64((uint8_t *)b - 8);
        struct fblk *prev = (struct fblk *)((uint8_t *)b - psz);
        bin_remove(prev, psz);
        b = prev;
        sz += psz;
    }
    b->hdr = sz | A_PUSED;
    st64((uint8_t *)b + sz - 8, sz);
    ((struct fblk *)((uint8_t *)b + sz))->hdr &= ~A_PUSED;
    bin_insert(b, sz);
}

/* Data (keys and values) must leave KV_RESERVE for connection buffers. */
int data_strict = 1;
void *d_alloc(uint64_t n)
{
    if (data_strict && a_free < n + 64 + KV_RESERVE) return 0;
    return a_alloc(n);
}
