/* kv_core: a Redis-protocol (RESP2) key-value server with a crash-safe log on a block
 * device. Portable C (no libc): builds for the ftvm guest (kv.c adds the device glue)
 * and for the host (tests/test_kv_core.py, with kv_hosttest.c simulating network and
 * disk).
 *
 * ==================================================================================
 * ON-DISK LAYOUT (4096-byte sectors, little-endian; all CRCs are CRC-32 as zlib's)
 * ==================================================================================
 *
 *   sector 0            superblock slot 0
 *   sector 1            superblock slot 1
 *   sectors 2 .. 2+R    log region 0       R = region_sectors = (disk sectors - 2) / 2
 *   sectors 2+R .. 2+2R log region 1
 *
 * Superblock (first 68 bytes of its sector, the rest zero):
 *     0 u32 magic "KVSB"      4 u32 version (1)        8 u64 sbseq
 *    16 u32 generation       20 u32 disk_id           24 u32 region (0 or 1)
 *    28 u32 region_sectors   32 u32 snap_records      36 u32 reserved (0)
 *    40 u64 snap_bytes       48 u64 base_seq          56 u64 disk_sectors
 *    64 u32 crc32 of bytes 0..63
 * The valid superblock with the highest sbseq is the current one. Every superblock
 * write takes a new sbseq and goes to the slot that does NOT hold the current one,
 * so a torn superblock write leaves the previous one in force.
 *
 * The active region holds one stream of records, packed back to back with no
 * alignment (a record may span sectors): first snap_records snapshot records (type
 * SNAP, snap_bytes bytes in all), then the log records appended since. A record:
 *     0 u32 magic "KVL1"      4 u32 crc32 of bytes 8 .. 32+paylen
 *     8 u32 disk_id          12 u32 generation       16 u32 epoch
 *    20 u32 index (0, 1, 2 ... within the region)   24 u32 paylen
 *    28 u16 type             30 u16 reserved (0)
 *    32 payload: u32 nargs, then nargs times (u32 len, len bytes)
 * Types: 1 SNAP(key, value)  2 SET(key, value)  3 DEL(key...)  4 APPEND(key, suffix)
 *        5 FLUSHALL()  6 MSET(key, value, ...). INCR/INCRBY are logged as SET of the
 *        result. One mutating command = one record, so it recovers all or nothing.
 *
 * Recovery reads the current superblock, then the region's records in order and
 * stops at the first one that is not valid: bad magic or CRC, another disk_id or
 * generation, an index out of sequence, an epoch lower than the previous record's or
 * higher than the superblock's sbseq, or a malformed payload. Whatever follows is
 * tail garbage: torn writes, records of an older generation (the region was used two
 * compactions ago), or records an earlier run wrote but never had acknowledged.
 *
 * Epochs. The log is appended in place: the partially filled tail sector is rewritten
 * with every write. Records written by a run that crashed mid-write may lie beyond a
 * hole; a later run appends from the hole and could, by chance, end exactly where
 * such a stale record starts, with the same index. Epochs make that harmless: each
 * run (and each compaction) writes a superblock with a fresh sbseq before it writes
 * any record, and stamps its records with it. So a later run's records always carry a
 * higher epoch than anything an earlier run wrote, and "epochs never decrease" cuts
 * the stale record off. The superblock at start-up also keeps its place: generation
 * and region do not change.
 *
 * Compaction: when the log has grown past half the region and at least half of it is
 * garbage (or a record does not fit any more), the whole table is written as SNAP
 * records into the other region with generation+1 (synchronously: the server pauses),
 * and once every write completed, a superblock naming that region is written. A
 * crash at any point before that superblock write completes leaves the old one in
 * force, and the old region is untouched until the next compaction.
 *
 * Durability: a mutating command's reply is sent only once the write holding its
 * record (and everything before it) completed with FTVM_DISK_OK. Group commit, pipelined:
 * up to KV_WBATCH log writes are in flight; records appended meanwhile go out together
 * in the next one. Each write starts at the sector holding the end of the write before
 * it (that sector was partly filled; it is written again, with more), and the device
 * completes writes in order, so the log on disk only ever grows at its end. A failed
 * write fails every later one still in flight too (their records follow a hole that
 * recovery would stop at); once they have all come back, writing resumes from the
 * durable end.
 * A client whose command waits is not served further until then (replies stay in
 * order); other clients carry on, and may read data that is not yet durable.
 * ================================================================================== */
#include "kv_core.h"

/* One record pending while another is in flight, after the partial tail sector; and
 * recovery needs a whole record plus a read chunk in the same buffer. */
_Static_assert(KV_LOGBUF_SIZE >= KV_SECTOR + 2 * KV_MAX_RECORD, "log buffer too small");
_Static_assert(KV_LOGBUF_SIZE >= KV_MAX_RECORD + KV_SECTOR + KV_CHUNK_SIZE, "log buffer too small");
_Static_assert(KV_WBATCH * 8 + 1 <= FTVM_DISK_MAX_INFLIGHT, "log writes in flight exceed the device's limit");
_Static_assert(KV_CONN_IN_MAX >= KV_MAX_RECORD, "a command must fit a client's input buffer");

#define S KV_SECTOR
#define OBUF_SIZE (128u << 10)
#define RX_SIZE (128u << 10)
#define TAIL_RESERVE (64u << 10)   /* end of a region kept for DEL / FLUSHALL records */
#define BIG_REPLY (16u << 10)      /* bulk replies longer than this are sent directly */
#define CHASH 4096u

#define NODIST __attribute__((optimize("no-tree-loop-distribute-patterns")))

/* ---------------------------------------------------------------------------------
 * memory helpers: word-wise (the runtime's memcpy is byte-wise, and every loop
 * iteration is a translated block under emulation)
 * --------------------------------------------------------------------------------- */
static inline uint64_t ld64(const void *p) { uint64_t v; __builtin_memcpy(&v, p, 8); return v; }
static inline uint32_t ld32(const void *p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }
static inline uint16_t ld16(const void *p) { uint16_t v; __builtin_memcpy(&v, p, 2); return v; }
static inline void st64(void *p, uint64_t v) { __builtin_memcpy(p, &v, 8); }
static inline void st32(void *p, uint32_t v) { __builtin_memcpy(p, &v, 4); }
static inline void st16(void *p, uint16_t v) { __builtin_memcpy(p, &v, 2); }

static NODIST void kcpy(void *dst, const void *src, size_t n)
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

static NODIST void kmove(void *dst, const void *src, size_t n)
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

static NODIST void kzero(void *dst, size_t n)
{
    uint8_t *d = dst;
    while (n >= 32) { st64(d, 0); st64(d + 8, 0); st64(d + 16, 0); st64(d + 24, 0); d += 32; n -= 32; }
    while (n >= 8) { st64(d, 0); d += 8; n -= 8; }
    while (n--) *d++ = 0;
}

static NODIST int keq(const uint8_t *a, const uint8_t *b, size_t n)
{
    while (n >= 8) {
        if (ld64(a) != ld64(b)) return 0;
        a += 8; b += 8; n -= 8;
    }
    while (n--)
        if (*a++ != *b++) return 0;
    return 1;
}

static size_t kstrlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

static char lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

/* ---------------------------------------------------------------------------------
 * CRC-32 (reflected 0xEDB88320, as zlib), slicing by 8
 * --------------------------------------------------------------------------------- */
static uint32_t crc_tab[8][256];
static int crc_ready;

static void crc_init(void)
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
static uint64_t a_free;

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

static void a_init(void)
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

static void *a_alloc(uint64_t n)
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

static void a_release(void *p)
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
static int data_strict = 1;
static void *d_alloc(uint64_t n)
{
    if (data_strict && a_free < n + 64 + KV_RESERVE) return 0;
    return a_alloc(n);
}

/* ---------------------------------------------------------------------------------
 * the hash table
 * --------------------------------------------------------------------------------- */
struct entry {
    struct entry *next;
    uint64_t h;
    uint32_t klen, vlen, vcap, pad;
    /* key bytes, then vcap value bytes */
};
static inline uint8_t *e_key(struct entry *e) { return (uint8_t *)(e + 1); }
static inline uint8_t *e_val(struct entry *e) { return (uint8_t *)(e + 1) + e->klen; }
static inline uint64_t e_live(uint32_t klen, uint32_t vlen) { return KV_REC_HDR + 12ull + klen + vlen; }

static struct {
    struct entry **b;
    uint64_t mask, count, live;
} T;

static uint64_t khash(const uint8_t *p, uint32_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t k = ld64(p) * 0x87C37B91114253D5ull;
        k = (k << 31) | (k >> 33);
        h ^= k * 0x4CF5AD432745937Full;
        h = ((h << 27) | (h >> 37)) * 5 + 0x52DCE729;
        p += 8;
        n -= 8;
    }
    uint64_t t = 0;
    for (uint32_t i = 0; i < n; i++) t |= (uint64_t)p[i] << (8 * i);
    h ^= t * 0x87C37B91114253D5ull;
    h ^= h >> 33; h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33; h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 33;
    return h;
}

#define TB_INIT 1024u
static int tb_alloc(uint64_t nb)
{
    struct entry **b = a_alloc(nb * sizeof *b);
    if (!b) return 0;
    kzero(b, nb * sizeof *b);
    T.b = b;
    T.mask = nb - 1;
    return 1;
}

static void tb_init(void)
{
    T.count = T.live = 0;
    if (!tb_alloc(TB_INIT)) kvp_fatal("kv: out of memory for the table\n");
}

static void tb_grow(void)
{
    uint64_t nb = (T.mask + 1) * 2;
    struct entry **old = T.b;
    uint64_t oldn = T.mask + 1;
    if (a_free < nb * sizeof *old + KV_RESERVE) return;
    if (!tb_alloc(nb)) return;
    for (uint64_t i = 0; i < oldn; i++) {
        struct entry *e = old[i];
        while (e) {
            struct entry *n = e->next;
            struct entry **slot = &T.b[e->h & T.mask];
            e->next = *slot;
            *slot = e;
            e = n;
        }
    }
    a_release(old);
}

static struct entry *tb_find(const uint8_t *k, uint32_t kn, uint64_t h, struct entry ***pp)
{
    struct entry **p = &T.b[h & T.mask];
    for (struct entry *e = *p; e; p = &e->next, e = e->next)
        if (e->h == h && e->klen == kn && keq(e_key(e), k, kn)) {
            if (pp) *pp = p;
            return e;
        }
    if (pp) *pp = p;
    return 0;
}

static struct entry *tb_get(const uint8_t *k, uint32_t kn) { return tb_find(k, kn, khash(k, kn), 0); }

/* 1 = stored, 0 = out of memory (nothing changed) */
static int tb_set(const uint8_t *k, uint32_t kn, const uint8_t *v, uint32_t vn)
{
    uint64_t h = khash(k, kn);
    struct entry **pp;
    struct entry *e = tb_find(k, kn, h, &pp);
    if (e && vn <= e->vcap && e->vcap <= 2ull * vn + 64) {
        kcpy(e_val(e), v, vn);
        T.live += vn;
        T.live -= e->vlen;
        e->vlen = vn;
        return 1;
    }
    struct entry *ne = d_alloc(sizeof *ne + kn + vn);
    if (!ne) return 0;
    ne->h = h;
    ne->klen = kn;
    ne->vlen = ne->vcap = vn;
    ne->pad = 0;
    kcpy(e_key(ne), k, kn);
    kcpy(e_val(ne), v, vn);
    T.live += e_live(kn, vn);
    if (e) {
        ne->next = e->next;
        *pp = ne;
        T.live -= e_live(e->klen, e->vlen);
        a_release(e);
    } else {
        struct entry **slot = &T.b[h & T.mask];
        ne->next = *slot;
        *slot = ne;
        if (++T.count > T.mask + 1) tb_grow();
    }
    return 1;
}

/* Append; *newlen = resulting length. 1 = ok, 0 = out of memory. */
static int tb_append(const uint8_t *k, uint32_t kn, const uint8_t *s, uint32_t sn, uint32_t *newlen)
{
    uint64_t h = khash(k, kn);
    struct entry **pp;
    struct entry *e = tb_find(k, kn, h, &pp);
    if (!e) {
        *newlen = sn;
        return tb_set(k, kn, s, sn);
    }
    uint32_t need = e->vlen + sn;
    if (need <= e->vcap) {
        kcpy(e_val(e) + e->vlen, s, sn);
        e->vlen = need;
        T.live += sn;
        *newlen = need;
        return 1;
    }
    uint64_t cap = (uint64_t)e->vlen * 2;
    if (cap > (uint64_t)e->vlen + (1u << 20)) cap = (uint64_t)e->vlen + (1u << 20);
    if (cap < need) cap = need;
    if (cap + kn > KV_MAX_ENTRY) cap = KV_MAX_ENTRY - kn;
    if (cap < need) cap = need;
    struct entry *ne = d_alloc(sizeof *ne + kn + cap);
    if (!ne && cap > need) {
        cap = need;
        ne = d_alloc(sizeof *ne + kn + cap);
    }
    if (!ne) return 0;
    ne->h = h;
    ne->klen = kn;
    ne->vlen = need;
    ne->vcap = (uint32_t)cap;
    ne->pad = 0;
    ne->next = e->next;
    kcpy(e_key(ne), k, kn);
    kcpy(e_val(ne), e_val(e), e->vlen);
    kcpy(e_val(ne) + e->vlen, s, sn);
    *pp = ne;
    a_release(e);
    T.live += sn;
    *newlen = need;
    return 1;
}

static int tb_del(const uint8_t *k, uint32_t kn)
{
    struct entry **pp;
    struct entry *e = tb_find(k, kn, khash(k, kn), &pp);
    if (!e) return 0;
    *pp = e->next;
    T.live -= e_live(e->klen, e->vlen);
    T.count--;
    a_release(e);
    return 1;
}

static void tb_flush(void)
{
    for (uint64_t i = 0; i <= T.mask; i++) {
        struct entry *e = T.b[i];
        while (e) {
            struct entry *n = e->next;
            a_release(e);
            e = n;
        }
    }
    a_release(T.b);
    tb_init();
}

uint64_t kv_dbsize(void) { return T.count; }
uint64_t kv_live_bytes(void) { return T.live; }

/* ---------------------------------------------------------------------------------
 * log records
 * --------------------------------------------------------------------------------- */
uint32_t kv_rec_size(uint32_t nargs, const struct kv_arg *args)
{
    uint64_t n = KV_REC_HDR + 4;
    for (uint32_t i = 0; i < nargs; i++) n += 4ull + args[i].n;
    return n > 0xFFFFFFF0u ? 0xFFFFFFF0u : (uint32_t)n;
}

static void rec_header(uint8_t *h, uint32_t type, uint32_t paylen, uint32_t disk_id, uint32_t gen,
                       uint32_t epoch, uint32_t index)
{
    st32(h, KV_REC_MAGIC);
    st32(h + 4, 0);
    st32(h + 8, disk_id);
    st32(h + 12, gen);
    st32(h + 16, epoch);
    st32(h + 20, index);
    st32(h + 24, paylen);
    st16(h + 28, (uint16_t)type);
    st16(h + 30, 0);
}

void kv_rec_encode(uint8_t *dst, uint32_t type, uint32_t nargs, const struct kv_arg *args,
                   uint32_t disk_id, uint32_t gen, uint32_t epoch, uint32_t index)
{
    uint32_t total = kv_rec_size(nargs, args);
    rec_header(dst, type, total - KV_REC_HDR, disk_id, gen, epoch, index);
    uint8_t *p = dst + KV_REC_HDR;
    st32(p, nargs);
    p += 4;
    for (uint32_t i = 0; i < nargs; i++) {
        st32(p, args[i].n);
        kcpy(p + 4, args[i].p, args[i].n);
        p += 4 + args[i].n;
    }
    st32(dst + 4, kv_crc32(0, dst + 8, total - 8));
}

struct rec_expect {
    uint32_t disk_id, gen, index, epoch_min, epoch_max;
    int snapshot; /* 1: must be SNAP, 0: must not be */
};
#define REC_MORE 0
#define REC_BAD (-1)

static struct kv_arg args[KV_MAX_ARGS];
static uint32_t nargs;

/* Check the record at p (avail bytes there). > 0: its length, args/nargs/ *type filled;
 * REC_MORE: needs more bytes; REC_BAD: not a valid record here. */
static long rec_check(const uint8_t *p, uint64_t avail, const struct rec_expect *x, uint32_t *type)
{
    if (avail < KV_REC_HDR) return REC_MORE;
    if (ld32(p) != KV_REC_MAGIC) return REC_BAD;
    uint32_t paylen = ld32(p + 24);
    if (paylen < 4 || paylen > KV_MAX_RECORD - KV_REC_HDR) return REC_BAD;
    uint32_t t = ld16(p + 28), epoch = ld32(p + 16);
    if (ld32(p + 8) != x->disk_id || ld32(p + 12) != x->gen || ld32(p + 20) != x->index || ld16(p + 30) != 0)
        return REC_BAD;
    if (epoch < x->epoch_min || epoch > x->epoch_max) return REC_BAD;
    if (t < KV_T_SNAP || t > KV_T_MSET || (t == KV_T_SNAP) != (x->snapshot != 0)) return REC_BAD;
    if (avail < (uint64_t)KV_REC_HDR + paylen) return REC_MORE;
    if (kv_crc32(0, p + 8, KV_REC_HDR - 8 + paylen) != ld32(p + 4)) return REC_BAD;
    const uint8_t *q = p + KV_REC_HDR, *end = q + paylen;
    uint32_t n = ld32(q);
    q += 4;
    if (n > KV_MAX_ARGS) return REC_BAD;
    for (uint32_t i = 0; i < n; i++) {
        if (end - q < 4) return REC_BAD;
        uint32_t l = ld32(q);
        q += 4;
        if ((uint64_t)(end - q) < l) return REC_BAD;
        args[i].p = q;
        args[i].n = l;
        q += l;
    }
    if (q != end) return REC_BAD;
    switch (t) {
    case KV_T_SNAP: case KV_T_SET: case KV_T_APPEND: if (n != 2) return REC_BAD; break;
    case KV_T_DEL: if (n < 1) return REC_BAD; break;
    case KV_T_FLUSHALL: if (n != 0) return REC_BAD; break;
    case KV_T_MSET: if (n < 2 || (n & 1)) return REC_BAD; break;
    }
    nargs = n;
    *type = t;
    return (long)(KV_REC_HDR + paylen);
}

/* ---------------------------------------------------------------------------------
 * connections and global state
 * --------------------------------------------------------------------------------- */
enum { CS_IDLE, CS_WAITING, CS_BLOCKED, CS_READY };
#define F_PEER_CLOSED 1u
#define F_CLOSING 2u
#define HELD_SMALL 48

struct conn {
    uint32_t id, flags;
    uint8_t state, held_err, blk_err, resp3; /* resp3: the client chose RESP3 (HELLO 3) */
    uint32_t in_len, in_cap;
    uint8_t *in;
    uint8_t *held;
    uint32_t held_len, held_mark;
    uint64_t wait_seq;
    struct conn *hnext, *lprev, *lnext;
    uint8_t held_small[HELD_SMALL];
};

struct clist {
    struct conn *head, *tail;
};

enum { W_IDLE, W_LOG, W_SB };

static struct {
    /* connections */
    struct conn *chash[CHASH];
    struct conn *cfree;
    uint32_t nconns;
    struct clist waitl, blkl, readyl;
    struct conn *cur;
    uint32_t olen, omark;
    uint64_t ncmds, nconn_total;
    /* disk */
    int disk;
    uint32_t sectors, region_sectors, region, disk_id, gen, snap_records, next_index;
    uint64_t region_bytes, snap_bytes, base_seq, sbseq_max;
    int good_slot, epoch_ok, sb_dirty;
    uint32_t cur_epoch;
    uint64_t lb_off;               /* region offset of lb[0] (sector aligned) */
    uint32_t lb_len, lb_durable;   /* bytes in lb; of them durable */
    uint64_t applied_seq, durable_seq, submitted_seq;
    uint64_t sub_end;              /* region offset where the log writes in flight end */
    int wstate, failing, compacting, want_kick, want_compact;
    int wb_head, wb_n, wb_failed;  /* log writes in flight (a ring); one of them failed */
    uint32_t wb_err, backoff;
    uint64_t sb_seq_pending;
    int sb_slot_pending;
    uint64_t nwrites, nwrite_errors, ncompactions;
} K;

static struct conn conns[KV_MAX_CONNS];
static uint8_t obuf[OBUF_SIZE];
static uint8_t rxbuf[RX_SIZE];
static uint8_t inl_buf[KV_MAX_INLINE];
static uint8_t lb[KV_LOGBUF_SIZE] __attribute__((aligned(4096)));
static uint8_t chunk[KV_CHUNK_SIZE] __attribute__((aligned(4096)));
static uint8_t sbbuf[2 * S] __attribute__((aligned(4096)));
static uint8_t tailbuf[S];
/* A log write: up to 8 requests of FTVM_DISK_MAX_SECTORS; done once all completed. */
struct wbatch {
    struct ftvm_disk_req req[8];
    int nreq;
    uint64_t end;    /* region offset of the end of the log it makes durable */
    uint64_t seq;    /* the mutations it holds, up to this one */
};
static struct wbatch wb[KV_WBATCH];
static struct ftvm_disk_req sbreq;
static struct ftvm_disk_req sreq[FTVM_DISK_MAX_INFLIGHT];
static struct ftvm_disk_req ioreq;

uint8_t *kv_rx_buffer(uint32_t *cap)
{
    *cap = RX_SIZE;
    return rxbuf;
}
uint64_t kv_log_end(void) { return K.disk ? K.lb_off + K.lb_len : 0; }
uint32_t kv_generation(void) { return K.disk ? K.gen : 0; }

static void l_push(struct clist *l, struct conn *c)
{
    c->lnext = 0;
    c->lprev = l->tail;
    if (l->tail) l->tail->lnext = c;
    else l->head = c;
    l->tail = c;
}

static void l_del(struct clist *l, struct conn *c)
{
    if (c->lprev) c->lprev->lnext = c->lnext;
    else l->head = c->lnext;
    if (c->lnext) c->lnext->lprev = c->lprev;
    else l->tail = c->lprev;
    c->lprev = c->lnext = 0;
}

static struct clist *list_of(struct conn *c)
{
    switch (c->state) {
    case CS_WAITING: return &K.waitl;
    case CS_BLOCKED: return &K.blkl;
    case CS_READY: return &K.readyl;
    }
    return 0;
}

static void set_state(struct conn *c, int st)
{
    struct clist *l = list_of(c);
    if (l) l_del(l, c);
    c->state = (uint8_t)st;
    l = list_of(c);
    if (l) l_push(l, c);
}

static inline uint32_t chash_of(uint32_t id) { return (id * 2654435761u) >> 20; }

static struct conn *conn_find(uint32_t id)
{
    for (struct conn *c = K.chash[chash_of(id) & (CHASH - 1)]; c; c = c->hnext)
        if (c->id == id) return c;
    return 0;
}

static struct conn *conn_new(uint32_t id)
{
    struct conn *c = K.cfree;
    if (!c) return 0;
    K.cfree = c->hnext;
    kzero(c, sizeof *c);
    c->id = id;
    uint32_t h = chash_of(id) & (CHASH - 1);
    c->hnext = K.chash[h];
    K.chash[h] = c;
    K.nconns++;
    K.nconn_total++;
    return c;
}

static void held_free(struct conn *c)
{
    if (c->held && c->held != c->held_small) a_release(c->held);
    c->held = 0;
    c->held_len = c->held_mark = 0;
    c->held_err = 0;
}

static void conn_free(struct conn *c)
{
    set_state(c, CS_IDLE);
    held_free(c);
    a_release(c->in);
    struct conn **p = &K.chash[chash_of(c->id) & (CHASH - 1)];
    while (*p != c) p = &(*p)->hnext;
    *p = c->hnext;
    c->id = 0;
    c->hnext = K.cfree;
    K.cfree = c;
    K.nconns--;
    if (K.cur == c) K.cur = 0;
}

/* ---------------------------------------------------------------------------------
 * replies (into obuf, owned by K.cur)
 * --------------------------------------------------------------------------------- */
static void out_flush(void)
{
    if (K.olen && K.cur) kvp_send(K.cur->id, obuf, K.olen);
    K.olen = 0;
}

static void r_raw(const void *p, uint32_t n)
{
    if (K.olen + n > OBUF_SIZE) out_flush();
    if (n > OBUF_SIZE) { /* cannot happen for the replies we build; be safe */
        kvp_send(K.cur->id, p, n);
        return;
    }
    kcpy(obuf + K.olen, p, n);
    K.olen += n;
}

static void r_str(const char *s) { r_raw(s, (uint32_t)kstrlen(s)); }

static uint32_t fmt_u64(char *b, uint64_t v)
{
    char t[24];
    uint32_t n = 0, i = 0;
    do { t[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) b[i++] = t[--n];
    return i;
}

static uint32_t fmt_i64(char *b, int64_t v)
{
    if (v < 0) {
        b[0] = '-';
        return 1 + fmt_u64(b + 1, (uint64_t)0 - (uint64_t)v);
    }
    return fmt_u64(b, (uint64_t)v);
}

static void r_prefixed(char c, int64_t v)
{
    char b[32];
    b[0] = c;
    uint32_t n = 1 + fmt_i64(b + 1, v);
    b[n++] = '\r';
    b[n++] = '\n';
    r_raw(b, n);
}

static void r_int(int64_t v) { r_prefixed(':', v); }
static void r_arr(int64_t n) { r_prefixed('*', n); }
static void r_nil(void) { r_str(K.cur->resp3 ? "_\r\n" : "$-1\r\n"); }
static void r_map(int64_t n)
{
    if (K.cur->resp3) r_prefixed('%', n);
    else r_prefixed('*', 2 * n);
}
static void r_ok(void) { r_str("+OK\r\n"); }

static void r_bulk(const uint8_t *p, uint32_t n)
{
    r_prefixed('$', n);
    if (n > BIG_REPLY) {
        out_flush();
        kvp_send(K.cur->id, p, n);
    } else {
        r_raw(p, n);
    }
    r_raw("\r\n", 2);
}

static void r_cstr_bulk(const char *s) { r_bulk((const uint8_t *)s, (uint32_t)kstrlen(s)); }

/* "-ERR <a><name><b>\r\n" with the name sanitised and shortened */
static void r_err3(const char *a, const uint8_t *name, uint32_t n, const char *b)
{
    char t[160];
    uint32_t k = 0;
    if (n > 128) n = 128;
    for (uint32_t i = 0; i < n; i++) {
        char ch = (char)name[i];
        t[k++] = (ch == '\r' || ch == '\n') ? ' ' : ch;
    }
    r_str(a);
    r_raw(t, k);
    r_str(b);
}

static void r_lower_name(const char *a, const uint8_t *name, uint32_t n, const char *b)
{
    char t[160];
    if (n > 128) n = 128;
    for (uint32_t i = 0; i < n; i++) t[i] = lower((char)name[i]);
    r_err3(a, (const uint8_t *)t, n, b);
}

static void r_arity(const struct kv_arg *name)
{
    r_lower_name("-ERR wrong number of arguments for '", name->p, name->n, "' command\r\n");
}

static const char E_NOTINT[] = "-ERR value is not an integer or out of range\r\n";
static const char E_SYNTAX[] = "-ERR syntax error\r\n";
static const char E_OOM[] = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";
static const char E_TOOBIG[] = "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n";
static const char E_LOGFULL[] = "-ERR persistence log is full: the disk is too small for the data set\r\n";

static const char *disk_errmsg(uint32_t st)
{
    switch (st) {
    case FTVM_DISK_EIO: return "-ERR disk write failed: I/O error\r\n";
    case FTVM_DISK_ENOSPC: return "-ERR disk write failed: no space left on device\r\n";
    case FTVM_DISK_EINVAL: return "-ERR disk write failed: invalid request\r\n";
    case FTVM_DISK_EBUSY: return "-ERR disk write failed: device busy\r\n";
    }
    return "-ERR disk write failed: unknown error\r\n";
}

/* ---------------------------------------------------------------------------------
 * the log writer
 * --------------------------------------------------------------------------------- */
static void say(const char *a, uint64_t v, const char *b)
{
    char t[200];
    uint32_t n = 0;
    for (const char *s = a; *s && n < 150; s++) t[n++] = *s;
    n += fmt_u64(t + n, v);
    for (const char *s = b; *s && n < 198; s++) t[n++] = *s;
    t[n] = 0;
    kvp_puts(t);
}

static void say_status(const char *what, uint32_t st)
{
    const char *m = disk_errmsg(st) + 5; /* skip "-ERR " */
    char t[160];
    uint32_t n = 0;
    for (const char *s = what; *s; s++) t[n++] = *s;
    for (const char *s = m; *s && *s != '\r'; s++) t[n++] = *s;
    t[n++] = '\n';
    t[n] = 0;
    kvp_puts(t);
}

static uint64_t region_lba(uint32_t r) { return 2 + (uint64_t)r * K.region_sectors; }

static uint32_t sync_io(uint32_t op, uint64_t lba, uint32_t count, void *buf)
{
    ioreq.op = op;
    ioreq.count = count;
    ioreq.lba = lba;
    ioreq.buf = (uint64_t)(uintptr_t)buf;
    ioreq.tag = 0;
    kvp_disk_submit(&ioreq);
    while (ioreq.status == FTVM_DISK_PENDING) kvp_wait_disk();
    return ioreq.status;
}

static void sb_build(uint8_t *b, uint64_t sbseq, uint32_t gen, uint32_t region, uint32_t snap_records,
                     uint64_t snap_bytes, uint64_t base_seq)
{
    kzero(b, S);
    st32(b, KV_SB_MAGIC);
    st32(b + 4, KV_SB_VERSION);
    st64(b + 8, sbseq);
    st32(b + 16, gen);
    st32(b + 20, K.disk_id);
    st32(b + 24, region);
    st32(b + 28, K.region_sectors);
    st32(b + 32, snap_records);
    st32(b + 36, 0);
    st64(b + 40, snap_bytes);
    st64(b + 48, base_seq);
    st64(b + 56, K.sectors);
    st32(b + 64, kv_crc32(0, b, 64));
}

/* Submit a superblock for the current configuration with a fresh sbseq. */
static void sb_submit(void)
{
    K.sb_seq_pending = ++K.sbseq_max;
    K.sb_slot_pending = 1 - K.good_slot;
    sb_build(sbbuf, K.sb_seq_pending, K.gen, K.region, K.snap_records, K.snap_bytes, K.base_seq);
    sbreq.op = FTVM_DISK_WRITE;
    sbreq.count = 1;
    sbreq.lba = (uint64_t)K.sb_slot_pending;
    sbreq.buf = (uint64_t)(uintptr_t)sbbuf;
    sbreq.tag = 0;
    K.wstate = W_SB;
    K.nwrites++;
    kvp_disk_submit(&sbreq);
}

/* Write the log from the sector where the writes in flight end (or the durable end)
 * to its current end. The device copies a write's data at submit, so lb may change
 * (and move, once earlier writes are durable) while this one is in flight. */
static void submit_log(void)
{
    struct wbatch *b = &wb[(K.wb_head + K.wb_n) % KV_WBATCH];
    uint32_t len = K.lb_len, padded = (len + S - 1) / S * S;
    uint64_t from_abs = K.sub_end > K.lb_off ? K.sub_end / S * S : K.lb_off;
    uint32_t from = (uint32_t)(from_abs - K.lb_off);
    kzero(lb + len, padded - len);
    uint64_t lba = region_lba(K.region) + from_abs / S;
    uint32_t nsec = (padded - from) / S;
    b->nreq = 0;
    for (uint32_t off = 0; off < nsec; off += FTVM_DISK_MAX_SECTORS) {
        struct ftvm_disk_req *r = &b->req[b->nreq++];
        uint32_t cnt = nsec - off < FTVM_DISK_MAX_SECTORS ? nsec - off : FTVM_DISK_MAX_SECTORS;
        r->op = FTVM_DISK_WRITE;
        r->count = cnt;
        r->lba = lba + off;
        r->buf = (uint64_t)(uintptr_t)(lb + from + (uint64_t)off * S);
        r->tag = 0;
        kvp_disk_submit(r);
    }
    b->end = K.lb_off + len;
    b->seq = K.applied_seq;
    K.sub_end = b->end;
    K.submitted_seq = K.applied_seq;
    K.wb_n++;
    K.wstate = W_LOG;
    K.nwrites++;
}

/* Start the next write if one is due: new records, or a blocked client wants one. */
static void log_kick(void)
{
    if (!K.disk || K.wstate == W_SB || K.compacting || K.wb_n >= KV_WBATCH || K.wb_failed) return;
    int have_new = K.applied_seq > K.submitted_seq;
    if (!have_new && !K.want_kick) return;
    if (K.sb_dirty || !K.epoch_ok) {
        if (K.wb_n) return;  /* the superblock goes alone, after the log writes in flight */
        K.want_kick = 0;
        sb_submit();
        return;
    }
    K.want_kick = 0;
    if (K.lb_off + K.lb_len > K.sub_end || have_new) submit_log();
}

static void release_waiters(uint64_t upto, uint32_t err)
{
    while (K.waitl.head && K.waitl.head->wait_seq <= upto) {
        struct conn *c = K.waitl.head;
        c->held_err = (uint8_t)err;
        set_state(c, CS_READY);
    }
}

static void wake_blocked(uint32_t err)
{
    while (K.blkl.head) {
        struct conn *c = K.blkl.head;
        if (err) c->blk_err = (uint8_t)err;
        set_state(c, CS_READY);
    }
}

static void write_failed(uint32_t st)
{
    K.nwrite_errors++;
    if (!K.failing) say_status("kv: disk write failed: ", st);
    K.failing = 1;
}

static void write_ok(void)
{
    if (K.failing) kvp_puts("kv: disk writes succeed again\n");
    K.failing = 0;
}

static int batch_finished(void)
{
    if (K.wstate == W_SB) return sbreq.status != FTVM_DISK_PENDING;
    if (K.wstate == W_LOG) {
        const struct wbatch *b = &wb[K.wb_head];
        for (int i = 0; i < b->nreq; i++)
            if (b->req[i].status == FTVM_DISK_PENDING) return 0;
        return 1;
    }
    return 0;
}

/* Take a finished write into account. Returns 1 if one was handled. */
static int writer_poll(void)
{
    if (!batch_finished()) return 0;
    if (K.wstate == W_SB) {
        uint32_t st = sbreq.status;
        K.wstate = W_IDLE;
        if (st == FTVM_DISK_OK) {
            K.good_slot = K.sb_slot_pending;
            K.cur_epoch = (uint32_t)K.sb_seq_pending;
            K.epoch_ok = 1;
            K.sb_dirty = 0;
            write_ok();
            wake_blocked(0);
            log_kick();
        } else {
            write_failed(st);
            /* the records waiting behind it were not written */
            release_waiters(K.applied_seq, st);
            K.submitted_seq = K.applied_seq;
            wake_blocked(st);
        }
        return 1;
    }
    const struct wbatch *b = &wb[K.wb_head];
    uint32_t st = FTVM_DISK_OK;
    for (int i = 0; i < b->nreq; i++)
        if (b->req[i].status != FTVM_DISK_OK) { st = b->req[i].status; break; }
    K.wb_head = (K.wb_head + 1) % KV_WBATCH;
    if (--K.wb_n == 0) K.wstate = W_IDLE;
    if (st == FTVM_DISK_OK && K.wb_failed) st = K.wb_err;  /* it follows a hole */
    if (st == FTVM_DISK_OK) {
        write_ok();
        K.lb_durable = (uint32_t)(b->end - K.lb_off);
        K.durable_seq = b->seq;
        uint32_t drop = K.lb_durable / S * S;
        if (drop) {
            kmove(lb, lb + drop, K.lb_len - drop);
            K.lb_off += drop;
            K.lb_len -= drop;
            K.lb_durable -= drop;
        }
        release_waiters(K.durable_seq, 0);
        wake_blocked(0);
    } else {
        if (!K.wb_failed) write_failed(st);
        K.wb_failed = 1;
        K.wb_err = st;
        release_waiters(b->seq, st);
        wake_blocked(st);
        if (K.wb_n == 0) { /* all back: write again from the durable end */
            K.wb_failed = 0;
            K.sub_end = K.lb_off + K.lb_durable;
        }
    }
    return 1;
}

void kv_disk_poll(void)
{
    if (K.disk) writer_poll();
}

int kv_busy(void) { return K.readyl.head != 0 || batch_finished(); }

/* Room for a record of rs bytes? LR_OK, LR_BLOCK (retry later), LR_ERR (*err set). */
enum { LR_OK, LR_BLOCK, LR_ERR };

static int compaction_useful(uint64_t rs)
{
    return K.backoff == 0 && T.live + rs + TAIL_RESERVE + K.region_bytes / 8 <= K.region_bytes &&
           K.lb_off + K.lb_len > T.live;
}

static int log_reserve(uint32_t rs, int shrinking, const char **err)
{
    if (!K.disk) return LR_OK;
    struct conn *c = K.cur;
    if (K.backoff) K.backoff--;
    if (c->blk_err) {
        *err = disk_errmsg(c->blk_err);
        c->blk_err = 0;
        return LR_ERR;
    }
    if (rs > KV_MAX_RECORD) {
        *err = "-ERR command too large for the log\r\n";
        return LR_ERR;
    }
    if (!K.epoch_ok) { /* the superblock of this run is not written yet */
        K.want_kick = 1;
        return LR_BLOCK;
    }
    uint64_t end = K.lb_off + K.lb_len;
    uint64_t limit = K.region_bytes - (shrinking ? 0 : TAIL_RESERVE);
    if (end + rs > limit) {
        if (compaction_useful(rs)) {
            K.want_compact = 1;
            return LR_BLOCK;
        }
        *err = E_LOGFULL;
        return LR_ERR;
    }
    if ((uint64_t)K.lb_len + rs > KV_LOGBUF_SIZE) {
        K.want_kick = 1;
        return LR_BLOCK;
    }
    return LR_OK;
}

static void log_append(uint32_t type, uint32_t n, const struct kv_arg *a)
{
    K.applied_seq++;
    if (!K.disk) return;
    uint32_t rs = kv_rec_size(n, a);
    kv_rec_encode(lb + K.lb_len, type, n, a, K.disk_id, K.gen, K.cur_epoch, K.next_index++);
    K.lb_len += rs;
}

/* The reply of a mutation just logged: held until its record is durable. */
static void reply_mutation(const char *s, uint32_t n)
{
    if (!K.disk) {
        r_raw(s, n);
        return;
    }
    if (K.olen + n > OBUF_SIZE) out_flush();
    K.omark = K.olen;
    r_raw(s, n);
    struct conn *c = K.cur;
    c->wait_seq = K.applied_seq;
    set_state(c, CS_WAITING);
}

/* A mutation's integer reply (":n\r\n"), sent once its log record is durable. */
static void reply_mutation_int(uint64_t n)
{
    char b[32];
    b[0] = ':';
    uint32_t k = 1 + fmt_u64(b + 1, n);
    b[k++] = '\r';
    b[k++] = '\n';
    reply_mutation(b, k);
}

/* ---------------------------------------------------------------------------------
 * compaction: write the table as a snapshot into the other region, then switch
 * --------------------------------------------------------------------------------- */
static struct {
    uint64_t lba0, sec;
    uint32_t fill, next_req, used_req, fail;
} W;

static void sw_collect(struct ftvm_disk_req *r)
{
    while (r->status == FTVM_DISK_PENDING) kvp_wait_disk();
    if (r->status != FTVM_DISK_OK && !W.fail) W.fail = r->status;
}

static void sw_flush(void)
{
    if (!W.fill) return;
    uint32_t padded = (W.fill + S - 1) / S * S;
    kzero(chunk + W.fill, padded - W.fill);
    struct ftvm_disk_req *r = &sreq[W.next_req];
    if (W.used_req > W.next_req || W.used_req == FTVM_DISK_MAX_INFLIGHT) sw_collect(r);
    W.next_req = (W.next_req + 1) % FTVM_DISK_MAX_INFLIGHT;
    if (W.used_req < FTVM_DISK_MAX_INFLIGHT) W.used_req++;
    r->op = FTVM_DISK_WRITE;
    r->count = padded / S;
    r->lba = W.lba0 + W.sec;
    r->buf = (uint64_t)(uintptr_t)chunk;
    r->tag = 0;
    kvp_disk_submit(r);
    K.nwrites++;
    if (W.fill % S) kcpy(tailbuf, chunk + W.fill / S * S, W.fill % S);
    W.sec += padded / S;
    W.fill = 0;
}

static void sw_put(const void *src, uint32_t n)
{
    const uint8_t *p = src;
    while (n) {
        uint32_t k = KV_CHUNK_SIZE - W.fill;
        if (k > n) k = n;
        kcpy(chunk + W.fill, p, k);
        W.fill += k;
        p += k;
        n -= k;
        if (W.fill == KV_CHUNK_SIZE) sw_flush();
    }
}

/* Returns 0 on success, else the failing disk status (or EINVAL if it cannot fit). */
static uint32_t compact(void)
{
    if (!K.disk) return 0;
    if (T.live + TAIL_RESERVE > K.region_bytes) { /* the snapshot would not fit */
        K.want_compact = 0;
        K.backoff = 1000;
        wake_blocked(0);
        return FTVM_DISK_ENOSPC;
    }
    K.compacting = 1;
    while (K.wstate != W_IDLE) { /* let the write in flight finish */
        if (!writer_poll()) kvp_wait_disk();
    }
    uint64_t old_end = K.lb_off + K.lb_len;
    uint64_t sbseq = ++K.sbseq_max;
    uint32_t gen = K.gen + 1, target = 1 - K.region, epoch = (uint32_t)sbseq;
    W.lba0 = region_lba(target);
    W.sec = 0;
    W.fill = W.next_req = W.used_req = W.fail = 0;
    uint32_t nrec = 0;
    uint64_t nbytes = 0;
    for (uint64_t i = 0; i <= T.mask; i++) {
        for (struct entry *e = T.b[i]; e; e = e->next) {
            uint8_t h[KV_REC_HDR + 8];
            uint32_t paylen = 12 + e->klen + e->vlen;
            rec_header(h, KV_T_SNAP, paylen, K.disk_id, gen, epoch, nrec);
            st32(h + KV_REC_HDR, 2);
            st32(h + KV_REC_HDR + 4, e->klen);
            uint8_t vl[4];
            st32(vl, e->vlen);
            uint32_t crc = kv_crc32(0, h + 8, KV_REC_HDR - 8 + 8);
            crc = kv_crc32(crc, e_key(e), e->klen);
            crc = kv_crc32(crc, vl, 4);
            crc = kv_crc32(crc, e_val(e), e->vlen);
            st32(h + 4, crc);
            sw_put(h, KV_REC_HDR + 8);
            sw_put(e_key(e), e->klen);
            sw_put(vl, 4);
            sw_put(e_val(e), e->vlen);
            nrec++;
            nbytes += KV_REC_HDR + paylen;
        }
    }
    sw_flush();
    for (uint32_t i = 0; i < W.used_req; i++) sw_collect(&sreq[i]);
    uint32_t st = W.fail;
    if (!st) {
        /* switch: the superblock naming the new region */
        int slot = 1 - K.good_slot;
        sb_build(sbbuf, sbseq, gen, target, nrec, nbytes, K.applied_seq);
        K.nwrites++;
        st = sync_io(FTVM_DISK_WRITE, (uint64_t)slot, 1, sbbuf);
        if (st == FTVM_DISK_OK) {
            K.good_slot = slot;
            K.gen = gen;
            K.region = target;
            K.snap_records = nrec;
            K.snap_bytes = nbytes;
            K.base_seq = K.applied_seq;
            K.cur_epoch = epoch;
            K.epoch_ok = 1;
            K.sb_dirty = 0;
            K.next_index = nrec;
            K.lb_off = nbytes / S * S;
            K.lb_len = K.lb_durable = (uint32_t)(nbytes % S);
            K.sub_end = K.lb_off + K.lb_len;
            kcpy(lb, tailbuf, K.lb_len);
            K.durable_seq = K.submitted_seq = K.applied_seq;
            K.ncompactions++;
            write_ok();
            release_waiters(K.applied_seq, 0);
            wake_blocked(0);
            K.compacting = 0;
            K.want_compact = 0;
            say("kv: compacted the log into generation ", gen, "");
            say(": ", T.count, " keys,");
            say(" ", nbytes, " bytes");
            say(" (the log had ", old_end, " bytes)\n");
            return 0;
        }
        /* The superblock may or may not have reached the disk: the next write of the
         * log must first put a superblock for the current region (higher sbseq). */
        K.sb_dirty = 1;
    }
    K.nwrite_errors++;
    say_status("kv: compaction failed: ", st);
    K.backoff = 1000;
    K.compacting = 0;
    K.want_compact = 0;
    wake_blocked(st);
    return st;
}

/* ---------------------------------------------------------------------------------
 * RESP parsing
 * --------------------------------------------------------------------------------- */
static const char *perr;
static char perr_buf[64];

static int str2ll(const uint8_t *s, uint32_t n, int64_t *out)
{
    if (n == 0 || n > 20) return 0;
    if (n == 1 && s[0] == '0') { *out = 0; return 1; }
    uint32_t i = 0;
    int neg = 0;
    if (s[0] == '-') {
        neg = 1;
        i = 1;
        if (n == 1) return 0;
    }
    if (s[i] < '1' || s[i] > '9') return 0;
    uint64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > 1844674407370955161ull) return 0;
        v *= 10;
        if (v > ~0ull - d) return 0;
        v += d;
    }
    if (neg) {
        if (v > (1ull << 63)) return 0;
        *out = (int64_t)(0 - v);
    } else {
        if (v > (uint64_t)INT64_MAX) return 0;
        *out = (int64_t)v;
    }
    return 1;
}

static long find_byte(const uint8_t *p, uint32_t from, uint32_t to, uint8_t ch)
{
    for (uint32_t i = from; i < to; i++)
        if (p[i] == ch) return (long)i;
    return -1;
}

#define P_ERR(msg) do { perr = (msg); return -1; } while (0)

static long parse_multibulk(const uint8_t *p, uint32_t n)
{
    uint32_t lim = n < KV_MAX_INLINE ? n : KV_MAX_INLINE;
    long cr = find_byte(p, 1, lim, '\r');
    if (cr < 0) {
        if (n > KV_MAX_INLINE) P_ERR("too big mbulk count string");
        return 0;
    }
    if ((uint32_t)cr + 1 >= n) return 0;
    int64_t cnt;
    if (p[cr + 1] != '\n' || !str2ll(p + 1, (uint32_t)cr - 1, &cnt) || cnt > KV_MAX_ARGS)
        P_ERR("invalid multibulk length");
    uint64_t pos = (uint64_t)cr + 2;
    if (cnt <= 0) {
        nargs = 0;
        return (long)pos;
    }
    for (int64_t a = 0; a < cnt; a++) {
        if (pos >= n) return 0;
        if (p[pos] != '$') {
            const char *m = "expected '$', got '";
            uint32_t k = 0;
            while (*m) perr_buf[k++] = *m++;
            perr_buf[k++] = (p[pos] >= 32 && p[pos] < 127) ? (char)p[pos] : '?';
            perr_buf[k++] = '\'';
            perr_buf[k] = 0;
            P_ERR(perr_buf);
        }
        uint32_t lim2 = (uint32_t)(pos + 1 + 24 < n ? pos + 1 + 24 : n);
        long j = find_byte(p, (uint32_t)pos + 1, lim2, '\r');
        if (j < 0) {
            if (lim2 < n) P_ERR("invalid bulk length");
            return 0;
        }
        if ((uint32_t)j + 1 >= n) return 0;
        int64_t len;
        if (p[j + 1] != '\n' || !str2ll(p + pos + 1, (uint32_t)(j - (long)pos - 1), &len) || len < 0 ||
            len > KV_MAX_BULK)
            P_ERR("invalid bulk length");
        pos = (uint64_t)j + 2;
        if (pos + (uint64_t)len + 2 > n) return 0;
        if (p[pos + (uint64_t)len] != '\r' || p[pos + (uint64_t)len + 1] != '\n')
            P_ERR("bulk string not terminated by CRLF");
        args[a].p = p + pos;
        args[a].n = (uint32_t)len;
        pos += (uint64_t)len + 2;
    }
    nargs = (uint32_t)cnt;
    return (long)pos;
}

static int is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }
static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Inline command: words split on white space; "double" (with \n \r \t \b \a \\ \" \xHH
 * escapes) and 'single' quotes as redis-cli and Redis itself treat them. The input is
 * left untouched (unquoted words are built in inl_buf). */
static long parse_inline(const uint8_t *p, uint32_t n)
{
    uint32_t lim = n < KV_MAX_INLINE ? n : KV_MAX_INLINE;
    long nl = find_byte(p, 0, lim, '\n');
    if (nl < 0) {
        if (n >= KV_MAX_INLINE) P_ERR("too big inline request");
        return 0;
    }
    uint32_t end = (uint32_t)nl, i = 0, w = 0;
    if (end && p[end - 1] == '\r') end--;
    nargs = 0;
    for (;;) {
        while (i < end && is_space(p[i])) i++;
        if (i >= end) break;
        if (nargs >= KV_MAX_ARGS) P_ERR("too many arguments");
        uint32_t start = w;
        int inq = 0, insq = 0;
        for (;;) {
            if (inq) {
                if (i >= end) P_ERR("unbalanced quotes in request");
                if (p[i] == '\\' && i + 3 < end && p[i + 1] == 'x' && hexval(p[i + 2]) >= 0 && hexval(p[i + 3]) >= 0) {
                    inl_buf[w++] = (uint8_t)(hexval(p[i + 2]) * 16 + hexval(p[i + 3]));
                    i += 4;
                } else if (p[i] == '\\' && i + 1 < end) {
                    uint8_t c = p[i + 1];
                    inl_buf[w++] = c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : c == 'b' ? '\b' : c == 'a' ? '\a' : c;
                    i += 2;
                } else if (p[i] == '"') {
                    if (i + 1 < end && !is_space(p[i + 1])) P_ERR("unbalanced quotes in request");
                    i++;
                    break;
                } else {
                    inl_buf[w++] = p[i++];
                }
            } else if (insq) {
                if (i >= end) P_ERR("unbalanced quotes in request");
                if (p[i] == '\\' && i + 1 < end && p[i + 1] == '\'') {
                    inl_buf[w++] = '\'';
                    i += 2;
                } else if (p[i] == '\'') {
                    if (i + 1 < end && !is_space(p[i + 1])) P_ERR("unbalanced quotes in request");
                    i++;
                    break;
                } else {
                    inl_buf[w++] = p[i++];
                }
            } else {
                if (i >= end || is_space(p[i])) break;
                if (p[i] == '"') { inq = 1; i++; }
                else if (p[i] == '\'') { insq = 1; i++; }
                else inl_buf[w++] = p[i++];
            }
        }
        args[nargs].p = inl_buf + start;
        args[nargs].n = w - start;
        nargs++;
    }
    return nl + 1;
}

/* > 0: a whole command (args/nargs; nargs may be 0), 0: incomplete, < 0: protocol error */
static long parse_command(const uint8_t *p, uint32_t n)
{
    if (p[0] == '*') return parse_multibulk(p, n);
    return parse_inline(p, n);
}

/* ---------------------------------------------------------------------------------
 * commands. Each returns 0 (done, reply written) or 1 (blocked: retry later).
 * --------------------------------------------------------------------------------- */
static int arg_is(const struct kv_arg *a, const char *lc)
{
    uint32_t n = (uint32_t)kstrlen(lc);
    if (a->n != n) return 0;
    for (uint32_t i = 0; i < n; i++)
        if (lower((char)a->p[i]) != lc[i]) return 0;
    return 1;
}

static int c_ping(uint32_t argc)
{
    if (argc > 2) { r_arity(&args[0]); return 0; }
    if (argc == 2) r_bulk(args[1].p, args[1].n);
    else r_str("+PONG\r\n");
    return 0;
}

static int c_echo(uint32_t argc)
{
    (void)argc;
    r_bulk(args[1].p, args[1].n);
    return 0;
}

static int c_get(uint32_t argc)
{
    (void)argc;
    struct entry *e = tb_get(args[1].p, args[1].n);
    if (e) r_bulk(e_val(e), e->vlen);
    else r_nil();
    return 0;
}

static int c_strlen(uint32_t argc)
{
    (void)argc;
    struct entry *e = tb_get(args[1].p, args[1].n);
    r_int(e ? e->vlen : 0);
    return 0;
}

static int c_mget(uint32_t argc)
{
    r_arr(argc - 1);
    for (uint32_t i = 1; i < argc; i++) {
        struct entry *e = tb_get(args[i].p, args[i].n);
        if (e) r_bulk(e_val(e), e->vlen);
        else r_nil();
    }
    return 0;
}

static int c_exists(uint32_t argc)
{
    int64_t n = 0;
    for (uint32_t i = 1; i < argc; i++)
        if (tb_get(args[i].p, args[i].n)) n++;
    r_int(n);
    return 0;
}

static int reserve_or_reply(uint32_t rs, int shrinking)
{
    const char *err = 0;
    int r = log_reserve(rs, shrinking, &err);
    if (r == LR_ERR) r_str(err);
    return r;
}

static int c_set(uint32_t argc)
{
    if (argc != 3) { r_str(E_SYNTAX); return 0; }
    if ((uint64_t)args[1].n + args[2].n > KV_MAX_ENTRY) { r_str(E_TOOBIG); return 0; }
    int r = reserve_or_reply(kv_rec_size(2, args + 1), 0);
    if (r != LR_OK) return r == LR_BLOCK;
    if (!tb_set(args[1].p, args[1].n, args[2].p, args[2].n)) { r_str(E_OOM); return 0; }
    log_append(KV_T_SET, 2, args + 1);
    reply_mutation("+OK\r\n", 5);
    return 0;
}

static int c_mset(uint32_t argc)
{
    if ((argc - 1) & 1) { r_arity(&args[0]); return 0; }
    for (uint32_t i = 1; i < argc; i += 2)
        if ((uint64_t)args[i].n + args[i + 1].n > KV_MAX_ENTRY) { r_str(E_TOOBIG); return 0; }
    int r = reserve_or_reply(kv_rec_size(argc - 1, args + 1), 0);
    if (r != LR_OK) return r == LR_BLOCK;
    uint32_t done = 0;
    for (uint32_t i = 1; i < argc; i += 2) {
        if (!tb_set(args[i].p, args[i].n, args[i + 1].p, args[i + 1].n)) break;
        done += 2;
    }
    if (!done) { r_str(E_OOM); return 0; }
    log_append(KV_T_MSET, done, args + 1);
    if (done < argc - 1) reply_mutation(E_OOM, (uint32_t)kstrlen(E_OOM));
    else reply_mutation("+OK\r\n", 5);
    return 0;
}

static int c_del(uint32_t argc)
{
    int r = reserve_or_reply(kv_rec_size(argc - 1, args + 1), 1);
    if (r != LR_OK) return r == LR_BLOCK;
    uint32_t n = 0;
    for (uint32_t i = 1; i < argc; i++)
        if (tb_del(args[i].p, args[i].n)) args[1 + n++] = args[i];
    if (!n) { r_int(0); return 0; }
    log_append(KV_T_DEL, n, args + 1);
    reply_mutation_int(n);
    return 0;
}

static int do_incrby(int64_t delta)
{
    struct entry *e = tb_get(args[1].p, args[1].n);
    int64_t v = 0;
    if (e && !str2ll(e_val(e), e->vlen, &v)) { r_str(E_NOTINT); return 0; }
    if ((delta > 0 && v > INT64_MAX - delta) || (delta < 0 && v < INT64_MIN - delta)) {
        r_str("-ERR increment or decrement would overflow\r\n");
        return 0;
    }
    v += delta;
    char num[24];
    uint32_t nn = fmt_i64(num, v);
    struct kv_arg a[2] = {args[1], {(const uint8_t *)num, nn}};
    int r = reserve_or_reply(kv_rec_size(2, a), 0);
    if (r != LR_OK) return r == LR_BLOCK;
    if (!tb_set(a[0].p, a[0].n, a[1].p, a[1].n)) { r_str(E_OOM); return 0; }
    log_append(KV_T_SET, 2, a);
    char b[32];
    b[0] = ':';
    kcpy(b + 1, num, nn);
    b[nn + 1] = '\r';
    b[nn + 2] = '\n';
    reply_mutation(b, nn + 3);
    return 0;
}

static int c_incr(uint32_t argc) { (void)argc; return do_incrby(1); }
static int c_decr(uint32_t argc) { (void)argc; return do_incrby(-1); }
static int c_incrby(uint32_t argc)
{
    (void)argc;
    int64_t d;
    if (!str2ll(args[2].p, args[2].n, &d)) { r_str(E_NOTINT); return 0; }
    return do_incrby(d);
}
static int c_decrby(uint32_t argc)
{
    (void)argc;
    int64_t d;
    if (!str2ll(args[2].p, args[2].n, &d) || d == INT64_MIN) { r_str(E_NOTINT); return 0; }
    return do_incrby(-d);
}

static int c_append(uint32_t argc)
{
    (void)argc;
    struct entry *e = tb_get(args[1].p, args[1].n);
    uint64_t nl = (e ? e->vlen : 0) + (uint64_t)args[2].n;
    if (args[1].n + nl > KV_MAX_ENTRY) { r_str(E_TOOBIG); return 0; }
    int r = reserve_or_reply(kv_rec_size(2, args + 1), 0);
    if (r != LR_OK) return r == LR_BLOCK;
    uint32_t newlen;
    if (!tb_append(args[1].p, args[1].n, args[2].p, args[2].n, &newlen)) { r_str(E_OOM); return 0; }
    log_append(KV_T_APPEND, 2, args + 1);
    reply_mutation_int(newlen);
    return 0;
}

static int c_dbsize(uint32_t argc)
{
    (void)argc;
    r_int((int64_t)T.count);
    return 0;
}

static int c_flushall(uint32_t argc)
{
    if (argc > 2 || (argc == 2 && !arg_is(&args[1], "async") && !arg_is(&args[1], "sync"))) {
        r_str(E_SYNTAX);
        return 0;
    }
    int r = reserve_or_reply(kv_rec_size(0, 0), 1);
    if (r != LR_OK) return r == LR_BLOCK;
    tb_flush();
    log_append(KV_T_FLUSHALL, 0, 0);
    reply_mutation("+OK\r\n", 5);
    return 0;
}

static int c_select(uint32_t argc)
{
    (void)argc;
    int64_t v;
    if (!str2ll(args[1].p, args[1].n, &v)) r_str(E_NOTINT);
    else if (v != 0) r_str("-ERR DB index is out of range\r\n");
    else r_ok();
    return 0;
}

static int c_quit(uint32_t argc)
{
    (void)argc;
    r_ok();
    K.cur->flags |= F_CLOSING;
    return 0;
}

static void r_unknown_sub(const struct kv_arg *sub, const char *cmd)
{
    r_err3("-ERR unknown subcommand '", sub->p, sub->n, "'. Try ");
    r_str(cmd);
    r_str(" HELP.\r\n");
}

/* CONFIG GET answers for the few parameters clients ask about (redis-benchmark
 * reads "save" and "appendonly"); "*" lists them all; anything else: nothing. */
static int c_config(uint32_t argc)
{
    if (arg_is(&args[1], "get")) {
        if (argc < 3) {
            r_str("-ERR wrong number of arguments for 'config|get' command\r\n");
            return 0;
        }
        static const char *const names[] = {"save", "appendonly", "appendfsync", "databases", "maxmemory"};
        char mem[24];
        mem[fmt_u64(mem, KV_ARENA_SIZE)] = 0;
        const char *vals[] = {"", K.disk ? "yes" : "no", "always", "1", mem};
        int want[5] = {0, 0, 0, 0, 0}, n = 0;
        for (uint32_t a = 2; a < argc; a++)
            for (int i = 0; i < 5; i++)
                if (!want[i] && (arg_is(&args[a], names[i]) || (args[a].n == 1 && args[a].p[0] == '*'))) {
                    want[i] = 1;
                    n++;
                }
        r_map(n);
        for (int i = 0; i < 5; i++)
            if (want[i]) {
                r_cstr_bulk(names[i]);
                r_cstr_bulk(vals[i]);
            }
    } else if (arg_is(&args[1], "resetstat")) {
        r_ok();
    } else if (arg_is(&args[1], "set")) {
        r_str("-ERR CONFIG SET is not supported by this server\r\n");
    } else {
        r_unknown_sub(&args[1], "CONFIG");
    }
    return 0;
}

static int c_command(uint32_t argc)
{
    if (argc >= 2 && arg_is(&args[1], "count")) r_int(0);
    else if (argc >= 2 && arg_is(&args[1], "docs")) r_map(0);
    else r_arr(0);
    return 0;
}

static int c_client(uint32_t argc)
{
    const struct kv_arg *s = &args[1];
    if (arg_is(s, "setinfo") || arg_is(s, "setname") || arg_is(s, "no-evict") || arg_is(s, "no-touch")) {
        if (argc < 3) r_lower_name("-ERR wrong number of arguments for 'client|", s->p, s->n, "' command\r\n");
        else r_ok();
    } else if (arg_is(s, "getname")) {
        r_nil();
    } else if (arg_is(s, "id")) {
        r_int(K.cur->id);
    } else if (arg_is(s, "info")) {
        char b[64];
        uint32_t k = 0;
        const char *p = "id=";
        while (*p) b[k++] = *p++;
        k += fmt_u64(b + k, K.cur->id);
        p = " db=0\n";
        while (*p) b[k++] = *p++;
        r_bulk((const uint8_t *)b, k);
    } else {
        r_unknown_sub(s, "CLIENT");
    }
    return 0;
}

/* HELLO [protover [AUTH user pass] [SETNAME name]]: RESP2 or RESP3 for this client
 * (redis-py 5+ asks for RESP3). There is no authentication: AUTH is accepted. */
static int c_hello(uint32_t argc)
{
    struct conn *c = K.cur;
    int proto = c->resp3 ? 3 : 2;
    if (argc >= 2) {
        int64_t v;
        if (!str2ll(args[1].p, args[1].n, &v)) {
            r_str("-ERR Protocol version is not an integer or out of range\r\n");
            return 0;
        }
        if (v != 2 && v != 3) {
            r_str("-NOPROTO unsupported protocol version\r\n");
            return 0;
        }
        for (uint32_t i = 2; i < argc; i++) {
            if (arg_is(&args[i], "auth") && i + 2 < argc) i += 2;
            else if (arg_is(&args[i], "setname") && i + 1 < argc) i += 1;
            else {
                r_err3("-ERR Syntax error in HELLO option '", args[i].p, args[i].n, "'\r\n");
                return 0;
            }
        }
        proto = (int)v;
    }
    c->resp3 = proto == 3;
    r_map(7);
    r_cstr_bulk("server");
    r_cstr_bulk("redis");
    r_cstr_bulk("version");
    r_cstr_bulk("7.0.0");
    r_cstr_bulk("proto");
    r_int(proto);
    r_cstr_bulk("id");
    r_int(c->id);
    r_cstr_bulk("mode");
    r_cstr_bulk("standalone");
    r_cstr_bulk("role");
    r_cstr_bulk("master");
    r_cstr_bulk("modules");
    r_arr(0);
    return 0;
}

struct sbuild {
    char *b;
    uint32_t n, cap;
};
static void sb_s(struct sbuild *s, const char *t)
{
    while (*t && s->n < s->cap) s->b[s->n++] = *t++;
}
static void sb_u(struct sbuild *s, uint64_t v)
{
    if (s->n + 24 <= s->cap) s->n += fmt_u64(s->b + s->n, v);
}
static void sb_kv(struct sbuild *s, const char *k, uint64_t v)
{
    sb_s(s, k);
    sb_s(s, ":");
    sb_u(s, v);
    sb_s(s, "\r\n");
}

static uint32_t info_argc;
/* INFO [section ...]: the named sections (case-insensitive), or all of them */
static int info_want(struct sbuild *s, const char *name, const char *title)
{
    int want = info_argc < 2;
    for (uint32_t i = 1; i < info_argc && !want; i++)
        want = arg_is(&args[i], name) || arg_is(&args[i], "all") || arg_is(&args[i], "everything") ||
               arg_is(&args[i], "default");
    if (want) {
        if (s->n) sb_s(s, "\r\n");
        sb_s(s, title);
    }
    return want;
}

static int c_info(uint32_t argc)
{
    static char b[2048];
    struct sbuild s = {b, 0, sizeof b};
    info_argc = argc;
    if (info_want(&s, "server", "# Server\r\n"))
        sb_s(&s, "redis_version:7.0.0-ftvm\r\nredis_mode:standalone\r\nos:ftvm\r\narch_bits:64\r\n");
    if (info_want(&s, "clients", "# Clients\r\n")) {
        sb_kv(&s, "connected_clients", K.nconns);
        sb_kv(&s, "blocked_clients", 0);
    }
    if (info_want(&s, "memory", "# Memory\r\n")) {
        sb_kv(&s, "used_memory", KV_ARENA_SIZE - 8 - a_free);
        sb_kv(&s, "maxmemory", KV_ARENA_SIZE);
        sb_s(&s, "maxmemory_policy:noeviction\r\n");
    }
    if (info_want(&s, "persistence", "# Persistence\r\n")) {
        sb_kv(&s, "loading", 0);
        sb_kv(&s, "aof_enabled", K.disk ? 1 : 0);
        if (K.disk) {
            sb_kv(&s, "kv_disk_sectors", K.sectors);
            sb_kv(&s, "kv_generation", K.gen);
            sb_kv(&s, "kv_log_bytes", K.lb_off + K.lb_len);
            sb_kv(&s, "kv_region_bytes", K.region_bytes);
            sb_kv(&s, "kv_compactions", K.ncompactions);
            sb_kv(&s, "kv_disk_writes", K.nwrites);
            sb_kv(&s, "kv_disk_write_errors", K.nwrite_errors);
            sb_kv(&s, "kv_mutations_durable", K.durable_seq);
        }
        sb_kv(&s, "kv_mutations", K.applied_seq);
    }
    if (info_want(&s, "stats", "# Stats\r\n")) {
        sb_kv(&s, "total_connections_received", K.nconn_total);
        sb_kv(&s, "total_commands_processed", K.ncmds);
    }
    if (info_want(&s, "keyspace", "# Keyspace\r\n") && T.count) {
        sb_s(&s, "db0:keys=");
        sb_u(&s, T.count);
        sb_s(&s, ",expires=0,avg_ttl=0\r\n");
    }
    r_bulk((const uint8_t *)b, s.n);
    return 0;
}

static int c_save(uint32_t argc)
{
    (void)argc;
    uint32_t st = compact();
    if (st == FTVM_DISK_ENOSPC && T.live + TAIL_RESERVE > K.region_bytes) r_str(E_LOGFULL);
    else if (st) r_str(disk_errmsg(st));
    else r_ok();
    return 0;
}

struct cmd {
    const char *name;
    int arity;
    int (*fn)(uint32_t argc);
};
static const struct cmd cmds[] = {
    {"ping", -1, c_ping},     {"echo", 2, c_echo},       {"get", 2, c_get},         {"set", -3, c_set},
    {"del", -2, c_del},       {"unlink", -2, c_del},     {"exists", -2, c_exists},  {"incr", 2, c_incr},
    {"decr", 2, c_decr},      {"incrby", 3, c_incrby},   {"decrby", 3, c_decrby},   {"append", 3, c_append},
    {"strlen", 2, c_strlen},  {"mget", -2, c_mget},      {"mset", -3, c_mset},      {"dbsize", 1, c_dbsize},
    {"flushall", -1, c_flushall}, {"flushdb", -1, c_flushall}, {"config", -2, c_config}, {"command", -1, c_command},
    {"client", -2, c_client}, {"select", 2, c_select},   {"quit", -1, c_quit},      {"info", -1, c_info},
    {"save", 1, c_save},      {"bgsave", -1, c_save},    {"hello", -1, c_hello},
};
#define NCMDS (sizeof cmds / sizeof cmds[0])
#define CTAB 128
static const struct cmd *ctab[CTAB];

static uint32_t name_hash(const char *s, uint32_t n)
{
    uint32_t h = n * 131;
    for (uint32_t i = 0; i < n; i++) h = h * 31 + (uint8_t)s[i];
    return h;
}

static void cmds_init(void)
{
    for (uint32_t i = 0; i < CTAB; i++) ctab[i] = 0;
    for (uint32_t i = 0; i < NCMDS; i++) {
        uint32_t h = name_hash(cmds[i].name, (uint32_t)kstrlen(cmds[i].name)) & (CTAB - 1);
        while (ctab[h]) h = (h + 1) & (CTAB - 1);
        ctab[h] = &cmds[i];
    }
}

static const struct cmd *cmd_lookup(const struct kv_arg *a)
{
    char nm[16];
    if (a->n == 0 || a->n >= sizeof nm) return 0;
    for (uint32_t i = 0; i < a->n; i++) nm[i] = lower((char)a->p[i]);
    nm[a->n] = 0;
    uint32_t h = name_hash(nm, a->n) & (CTAB - 1);
    for (; ctab[h]; h = (h + 1) & (CTAB - 1)) {
        const char *cn = ctab[h]->name;
        uint32_t i = 0;
        while (i < a->n && cn[i] == nm[i]) i++;
        if (i == a->n && cn[i] == 0) return ctab[h];
    }
    return 0;
}

static int dispatch(uint32_t argc)
{
    const struct cmd *c = cmd_lookup(&args[0]);
    if (!c) {
        r_err3("-ERR unknown command '", args[0].p, args[0].n, "'\r\n");
        return 0;
    }
    if ((c->arity > 0 && argc != (uint32_t)c->arity) || (c->arity < 0 && argc < (uint32_t)-c->arity)) {
        r_arity(&args[0]);
        return 0;
    }
    return c->fn(argc);
}

/* ---------------------------------------------------------------------------------
 * connection processing
 * --------------------------------------------------------------------------------- */
/* Run the complete commands in p[0..n) for K.cur; returns the bytes consumed. */
static uint32_t process(uint8_t *p, uint32_t n)
{
    struct conn *c = K.cur;
    uint32_t pos = 0;
    while (pos < n && c->state == CS_IDLE && !(c->flags & F_CLOSING)) {
        long r = parse_command(p + pos, n - pos);
        if (r == 0) break;
        if (r < 0) {
            r_str("-ERR Protocol error: ");
            r_str(perr);
            r_str("\r\n");
            c->flags |= F_CLOSING;
            return n;
        }
        if (nargs == 0) {
            pos += (uint32_t)r;
            continue;
        }
        if (dispatch(nargs)) {
            set_state(c, CS_BLOCKED);
            break;
        }
        K.ncmds++;
        pos += (uint32_t)r;
    }
    return pos;
}

static int in_append(struct conn *c, const uint8_t *p, uint32_t n)
{
    uint64_t need = (uint64_t)c->in_len + n;
    if (need > KV_CONN_IN_MAX) return 0;
    if (need > c->in_cap) {
        uint64_t cap = (uint64_t)c->in_cap * 2;
        if (cap < 4096) cap = 4096;
        if (cap < need) cap = need;
        if (cap > KV_CONN_IN_MAX) cap = KV_CONN_IN_MAX;
        uint8_t *b = a_alloc(cap);
        if (!b && cap > need) b = a_alloc(cap = need);
        if (!b) return 0;
        kcpy(b, c->in, c->in_len);
        a_release(c->in);
        c->in = b;
        c->in_cap = (uint32_t)cap;
    }
    kcpy(c->in + c->in_len, p, n);
    c->in_len = (uint32_t)need;
    return 1;
}

static void in_consume(struct conn *c, uint32_t used)
{
    if (used >= c->in_len) {
        c->in_len = 0;
        if (c->in_cap > (64u << 10)) {
            a_release(c->in);
            c->in = 0;
            c->in_cap = 0;
        }
    } else if (used) {
        kmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
    }
}

/* After processing: hand the replies on (or hold them), close if it is time. */
static void settle(struct conn *c)
{
    if (K.olen) {
        if (c->state == CS_WAITING) {
            uint8_t *h = c->held_small;
            if (K.olen > HELD_SMALL) h = a_alloc(K.olen);
            if (!h) { /* no memory to hold the replies: give up on this client */
                K.olen = 0;
                kvp_close(c->id);
                conn_free(c);
                return;
            }
            kcpy(h, obuf, K.olen);
            c->held = h;
            c->held_len = K.olen;
            c->held_mark = K.omark;
            K.olen = 0;
        } else {
            out_flush();
        }
    }
    if (c->state == CS_IDLE && (c->flags & (F_CLOSING | F_PEER_CLOSED))) {
        kvp_close(c->id);
        conn_free(c);
    }
}

static void run_conn(struct conn *c)
{
    K.cur = c;
    K.olen = 0;
    if (c->flags & F_CLOSING) c->in_len = 0;
    if (c->in_len) in_consume(c, process(c->in, c->in_len));
    settle(c);
    K.cur = 0;
}

static void on_data(struct conn *c, uint8_t *data, uint32_t len)
{
    if (c->state != CS_IDLE || c->in_len) {
        if (!in_append(c, data, len)) {
            c->flags |= F_CLOSING;
            c->in_len = 0;
            if (c->state == CS_IDLE) {
                K.cur = c;
                K.olen = 0;
                r_str("-ERR Protocol error: query buffer limit exceeded\r\n");
                settle(c);
                K.cur = 0;
            }
            return;
        }
        if (c->state == CS_IDLE) run_conn(c);
        return;
    }
    K.cur = c;
    K.olen = 0;
    uint32_t used = process(data, len);
    if (used < len && !(c->flags & F_CLOSING) && !in_append(c, data + used, len - used)) {
        r_str("-ERR Protocol error: query buffer limit exceeded\r\n");
        c->flags |= F_CLOSING;
        if (c->state == CS_BLOCKED) set_state(c, CS_IDLE);
    }
    settle(c);
    K.cur = 0;
}

void kv_net_event(const struct ftvm_net_event *ev, uint8_t *data)
{
    struct conn *c = conn_find(ev->conn);
    switch (ev->type) {
    case FTVM_NET_OPEN:
        if (c || !ev->conn) return;
        if (!conn_new(ev->conn)) {
            static const char m[] = "-ERR max number of clients reached\r\n";
            kvp_send(ev->conn, m, sizeof m - 1);
            kvp_close(ev->conn);
        }
        return;
    case FTVM_NET_DATA:
        if (c && !(c->flags & F_CLOSING) && ev->len) on_data(c, data, ev->len);
        return;
    case FTVM_NET_CLOSE:
        if (!c) return;
        c->flags |= F_PEER_CLOSED;
        if (c->state == CS_IDLE) {
            K.cur = c;
            K.olen = 0;
            settle(c);
            K.cur = 0;
        }
        return;
    case FTVM_NET_RESET:
        if (c) conn_free(c);
        return;
    }
}

static void run_ready(void)
{
    struct conn *c;
    while ((c = K.readyl.head) != 0) {
        set_state(c, CS_IDLE);
        if (c->held_len) {
            if (c->held_err) {
                if (c->held_mark) kvp_send(c->id, c->held, c->held_mark);
                const char *m = disk_errmsg(c->held_err);
                kvp_send(c->id, m, (uint32_t)kstrlen(m));
            } else {
                kvp_send(c->id, c->held, c->held_len);
            }
        }
        held_free(c);
        run_conn(c);
    }
}

void kv_round_end(void)
{
    for (int guard = 0; guard < 8; guard++) {
        run_ready();
        if (!K.disk) break;
        uint64_t end = K.lb_off + K.lb_len;
        if (K.want_compact ||
            (K.backoff == 0 && end >= K.region_bytes / 2 && T.live * 2 <= end && T.live + TAIL_RESERVE + K.region_bytes / 8 <= K.region_bytes))
            compact();
        if (!K.readyl.head) break;
    }
    log_kick();
}

/* ---------------------------------------------------------------------------------
 * start-up: find the superblock, replay the log, or format
 * --------------------------------------------------------------------------------- */
static int sb_parse(const uint8_t *b, uint32_t sectors)
{
    if (ld32(b) != KV_SB_MAGIC || ld32(b + 4) != KV_SB_VERSION) return 0;
    if (kv_crc32(0, b, 64) != ld32(b + 64)) return 0;
    uint32_t region = ld32(b + 24), rs = ld32(b + 28);
    if (region > 1 || rs < KV_MIN_REGION || 2 + 2ull * rs > sectors) return 0;
    if (ld64(b + 40) > (uint64_t)rs * S) return 0;
    return 1;
}

static uint32_t read_retry(uint64_t lba, uint32_t count, void *buf)
{
    uint32_t st = 0;
    for (int i = 0; i < 3; i++) {
        st = sync_io(FTVM_DISK_READ, lba, count, buf);
        if (st == FTVM_DISK_OK) return st;
    }
    say_status("kv: cannot read the disk: ", st);
    kvp_fatal("kv: giving up\n");
}

static void apply_record(uint32_t type)
{
    int ok = 1;
    uint32_t nl;
    switch (type) {
    case KV_T_SNAP:
    case KV_T_SET: ok = tb_set(args[0].p, args[0].n, args[1].p, args[1].n); break;
    case KV_T_APPEND: ok = tb_append(args[0].p, args[0].n, args[1].p, args[1].n, &nl); break;
    case KV_T_DEL:
        for (uint32_t i = 0; i < nargs; i++) tb_del(args[i].p, args[i].n);
        break;
    case KV_T_FLUSHALL: tb_flush(); break;
    case KV_T_MSET:
        for (uint32_t i = 0; ok && i < nargs; i += 2) ok = tb_set(args[i].p, args[i].n, args[i + 1].p, args[i + 1].n);
        break;
    }
    if (!ok) kvp_fatal("kv: out of memory while replaying the log\n");
}

static void recover(const uint8_t *sb, int slot)
{
    K.good_slot = slot;
    K.sbseq_max = ld64(sb + 8);
    K.gen = ld32(sb + 16);
    K.disk_id = ld32(sb + 20);
    K.region = ld32(sb + 24);
    K.region_sectors = ld32(sb + 28);
    K.snap_records = ld32(sb + 32);
    K.snap_bytes = ld64(sb + 40);
    K.base_seq = ld64(sb + 48);
    K.region_bytes = (uint64_t)K.region_sectors * S;

    struct rec_expect x = {K.disk_id, K.gen, 0, 0, (uint32_t)K.sbseq_max, K.snap_records > 0};
    uint64_t bstart = 0;        /* region offset of lb[0] */
    uint32_t blen = 0, off = 0; /* bytes read into lb; parse position */
    uint64_t rlba = region_lba(K.region);
    data_strict = 0;
    for (;;) {
        if (x.index == K.snap_records) {
            if (bstart + off != K.snap_bytes) kvp_fatal("kv: the snapshot on the disk is corrupt (length)\n");
            x.snapshot = 0;
        }
        uint32_t type;
        long r = rec_check(lb + off, blen - off, &x, &type);
        if (r == REC_MORE) {
            if (bstart + blen >= K.region_bytes) break;
            uint32_t drop = off / S * S;
            if (drop) {
                kmove(lb, lb + drop, blen - drop);
                bstart += drop;
                blen -= drop;
                off -= drop;
            }
            uint64_t want = KV_CHUNK_SIZE;
            if (want > KV_LOGBUF_SIZE - blen) want = KV_LOGBUF_SIZE - blen;
            if (want > K.region_bytes - (bstart + blen)) want = K.region_bytes - (bstart + blen);
            if (want < S) break;
            read_retry(rlba + (bstart + blen) / S, (uint32_t)(want / S), lb + blen);
            blen += (uint32_t)want;
            continue;
        }
        if (r == REC_BAD) break;
        apply_record(type);
        x.epoch_min = ld32(lb + off + 16);
        off += (uint32_t)r;
        x.index++;
    }
    data_strict = 1;
    if (x.index < K.snap_records) kvp_fatal("kv: the snapshot on the disk is corrupt\n");
    uint64_t end = bstart + off;
    K.next_index = x.index;
    K.applied_seq = K.durable_seq = K.submitted_seq = K.base_seq + (x.index - K.snap_records);
    K.lb_off = end / S * S;
    K.lb_len = K.lb_durable = (uint32_t)(end - K.lb_off);
    K.sub_end = end;
    kmove(lb, lb + (K.lb_off - bstart), K.lb_len);
    kzero(lb + K.lb_len, S);
    say("kv: recovered ", T.count, " keys from ");
    say("", x.index, " log records (generation ");
    say("", K.gen, ")\n");
}

static void conns_init(void)
{
    kzero(&K, sizeof K);
    K.cfree = 0;
    for (int i = KV_MAX_CONNS - 1; i >= 0; i--) {
        conns[i].id = 0;
        conns[i].hnext = K.cfree;
        K.cfree = &conns[i];
    }
}

void kv_start(void)
{
    crc_init();
    a_init();
    data_strict = 1;
    tb_init();
    cmds_init();
    conns_init();
    uint32_t sectors = kvp_disk_sectors();
    if (!sectors) {
        kvp_puts("kv: no disk attached, data lives in memory only\n");
        kvp_puts("kv: ready\n");
        return;
    }
    if (sectors < 2 + 2 * KV_MIN_REGION) {
        say("kv: the disk of ", sectors, " sectors is too small");
        say(" (at least ", 2 + 2 * KV_MIN_REGION, " needed), data lives in memory only\n");
        kvp_puts("kv: ready\n");
        return;
    }
    K.disk = 1;
    K.sectors = sectors;
    read_retry(0, 2, sbbuf);
    int v0 = sb_parse(sbbuf, sectors), v1 = sb_parse(sbbuf + S, sectors);
    if (v0 || v1) {
        int slot = (v0 && v1) ? (ld64(sbbuf + S + 8) > ld64(sbbuf + 8)) : v1;
        uint8_t sb[S];
        kcpy(sb, sbbuf + (uint64_t)slot * S, 72);
        recover(sb, slot);
    } else {
        K.region_sectors = (sectors - 2) / 2;
        K.region_bytes = (uint64_t)K.region_sectors * S;
        K.disk_id = kvp_rng32() | 1;
        K.gen = 1;
        K.region = 0;
        K.good_slot = 1; /* the first superblock goes to slot 0 */
        K.sbseq_max = 0;
        kzero(lb, S);
        say("kv: formatted a new disk of ", sectors, " sectors\n");
    }
    /* This run's superblock, before any record of it (see "Epochs" above). */
    sb_submit();
    while (sbreq.status == FTVM_DISK_PENDING) kvp_wait_disk();
    writer_poll();
    if (!K.epoch_ok) kvp_puts("kv: mutations wait until the superblock can be written\n");
    kvp_puts("kv: ready\n");
}
