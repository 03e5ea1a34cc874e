/* kv/table.c: the hash table of the kv server's portable core (see kv_internal.h):
 * chained, doubling when it holds more entries than buckets; an entry holds its key and
 * value inline. T.live counts the bytes the table would take as snapshot records. */
#include "kv_internal.h"

static inline uint64_t e_live(uint32_t klen, uint32_t vlen) { return KV_REC_HDR + 12ull + klen + vlen; }

struct table T;

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

void tb_init(void)
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

struct entry *tb_get(const uint8_t *k, uint32_t kn) { return tb_find(k, kn, khash(k, kn), 0); }

/* 1 = stored, 0 = out of memory (nothing changed) */
int tb_set(const uint8_t *k, uint32_t kn, const uint8_t *v, uint32_t vn)
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
int tb_append(const uint8_t *k, uint32_t kn, const uint8_t *s, uint32_t sn, uint32_t *newlen)
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

int tb_del(const uint8_t *k, uint32_t kn)
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

void tb_flush(void)
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
