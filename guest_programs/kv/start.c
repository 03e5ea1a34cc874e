/* kv/start.c: start-up of the kv server's portable core (see kv_internal.h; the
 * on-disk layout is at the top of log.c): find the superblock, replay the log, or
 * format.
 *
 * Recovery reads the current superblock, then the region's records in order and
 * stops at the first one that is not valid: bad magic or CRC, another disk_id or
 * generation, an index out of sequence, an epoch lower than the previous record's or
 * higher than the superblock's sbseq, or a malformed payload. Whatever follows is
 * tail garbage: torn writes, records of an older generation (the region was used two
 * compactions ago), or records an earlier run wrote but never had acknowledged. */
#include "kv_internal.h"

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
    /* This run's superblock, before any record of it (see "Epochs" in log.c). */
    sb_submit();
    while (sbreq.status == FTVM_DISK_PENDING) kvp_wait_disk();
    writer_poll();
    if (!K.epoch_ok) kvp_puts("kv: mutations wait until the superblock can be written\n");
    kvp_puts("kv: ready\n");
}
