/* kv/log.c: the on-disk layout, log records and the log writer of the kv server's
 * portable core (see kv_internal.h; recovery is in start.c, compaction in compact.c).
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
#include "kv_internal.h"

/* ---------------------------------------------------------------------------------
 * log records
 * --------------------------------------------------------------------------------- */
uint32_t kv_rec_size(uint32_t nargs, const struct kv_arg *args)
{
    uint64_t n = KV_REC_HDR + 4;
    for (uint32_t i = 0; i < nargs; i++) n += 4ull + args[i].n;
    return n > 0xFFFFFFF0u ? 0xFFFFFFF0u : (uint32_t)n;
}

void rec_header(uint8_t *h, uint32_t type, uint32_t paylen, uint32_t disk_id, uint32_t gen,
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

/* Check the record at p (avail bytes there). > 0: its length, args/nargs/ *type filled;
 * REC_MORE: needs more bytes; REC_BAD: not a valid record here. */
long rec_check(const uint8_t *p, uint64_t avail, const struct rec_expect *x, uint32_t *type)
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
 * the log writer
 * --------------------------------------------------------------------------------- */
uint8_t lb[KV_LOGBUF_SIZE] __attribute__((aligned(4096)));
uint8_t sbbuf[2 * S] __attribute__((aligned(4096)));
/* A log write: up to 8 requests of FTVM_DISK_MAX_SECTORS; done once all completed. */
struct wbatch {
    struct ftvm_disk_req req[8];
    int nreq;
    uint64_t end;    /* region offset of the end of the log it makes durable */
    uint64_t seq;    /* the mutations it holds, up to this one */
};
static struct wbatch wb[KV_WBATCH];
struct ftvm_disk_req sbreq;
static struct ftvm_disk_req ioreq;

void say(const char *a, uint64_t v, const char *b)
{
    char t[200];
    uint32_t n = 0;
    for (const char *s = a; *s && n < 150; s++) t[n++] = *s;
    n += fmt_u64(t + n, v);
    for (const char *s = b; *s && n < 198; s++) t[n++] = *s;
    t[n] = 0;
    kvp_puts(t);
}

void say_status(const char *what, uint32_t st)
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

uint64_t region_lba(uint32_t r) { return 2 + (uint64_t)r * K.region_sectors; }

uint32_t sync_io(uint32_t op, uint64_t lba, uint32_t count, void *buf)
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

void sb_build(uint8_t *b, uint64_t sbseq, uint32_t gen, uint32_t region, uint32_t snap_records,
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
void sb_submit(void)
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
void log_kick(void)
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

void release_waiters(uint64_t upto, uint32_t err)
{
    while (K.waitl.head && K.waitl.head->wait_seq <= upto) {
        struct conn *c = K.waitl.head;
        c->held_err = (uint8_t)err;
        set_state(c, CS_READY);
    }
}

void wake_blocked(uint32_t err)
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

void write_ok(void)
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
int writer_poll(void)
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
uint64_t kv_log_end(void) { return K.disk ? K.lb_off + K.lb_len : 0; }
uint32_t kv_generation(void) { return K.disk ? K.gen : 0; }

static int compaction_useful(uint64_t rs)
{
    return K.backoff == 0 && T.live + rs + TAIL_RESERVE + K.region_bytes / 8 <= K.region_bytes &&
           K.lb_off + K.lb_len > T.live;
}

int log_reserve(uint32_t rs, int shrinking, const char **err)
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

void log_append(uint32_t type, uint32_t n, const struct kv_arg *a)
{
    K.applied_seq++;
    if (!K.disk) return;
    uint32_t rs = kv_rec_size(n, a);
    kv_rec_encode(lb + K.lb_len, type, n, a, K.disk_id, K.gen, K.cur_epoch, K.next_index++);
    K.lb_len += rs;
}

/* The reply of a mutation just logged: held until its record is durable. */
void reply_mutation(const char *s, uint32_t n)
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
void reply_mutation_int(uint64_t n)
{
    char b[32];
    b[0] = ':';
    uint32_t k = 1 + fmt_u64(b + 1, n);
    b[k++] = '\r';
    b[k++] = '\n';
    reply_mutation(b, k);
}
