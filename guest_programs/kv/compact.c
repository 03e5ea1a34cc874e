/* kv/compact.c: compaction in the kv server's portable core (see kv_internal.h; the
 * on-disk layout is at the top of log.c): write the table as a snapshot into the other
 * region, then switch.
 *
 * Compaction: when the log has grown past half the region and at least half of it is
 * garbage (or a record does not fit any more), the whole table is written as SNAP
 * records into the other region with generation+1 (synchronously: the server pauses),
 * and once every write completed, a superblock naming that region is written. A
 * crash at any point before that superblock write completes leaves the old one in
 * force, and the old region is untouched until the next compaction. */
#include "kv_internal.h"

static uint8_t chunk[KV_CHUNK_SIZE] __attribute__((aligned(4096)));
static uint8_t tailbuf[S];
static struct ftvm_disk_req sreq[FTVM_DISK_MAX_INFLIGHT];

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
uint32_t compact(void)
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
