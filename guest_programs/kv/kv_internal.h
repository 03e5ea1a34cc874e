/* kv_internal: what the files of the kv server's portable core share (private; the
 * public interface is ../kv_core.h).
 *
 * The core is a Redis-protocol (RESP2) key-value server with a crash-safe log on a
 * block device. Portable C (no libc): builds for the ftvm guest (kv.c adds the device
 * glue) and for the host (tests/test_kv_core.py, with tests/kv_hosttest.c simulating
 * network and disk). Its files, one job each:
 *
 *   mem.c       memory helpers (word-wise copy, zero, compare), CRC-32, the allocator
 *   table.c     the hash table of keys and values
 *   log.c       the on-disk layout, log records, the log writer (group commit)
 *   compact.c   compaction: the table as a snapshot into the other region
 *   resp.c      replies to clients, RESP parsing
 *   commands.c  the commands and their dispatch
 *   conn.c      connections and the global state, running clients' input, the round end
 *   start.c     start-up: find the superblock, recover the log, or format
 *
 * Everything else, apart from the entry points declared in ../kv_core.h, is static to
 * its file. */
#ifndef KV_INTERNAL_H
#define KV_INTERNAL_H

#include "../kv_core.h"

/* One record pending while another is in flight, after the partial tail sector; and
 * recovery needs a whole record plus a read chunk in the same buffer. */
_Static_assert(KV_LOGBUF_SIZE >= KV_SECTOR + 2 * KV_MAX_RECORD, "log buffer too small");
_Static_assert(KV_LOGBUF_SIZE >= KV_MAX_RECORD + KV_SECTOR + KV_CHUNK_SIZE, "log buffer too small");
_Static_assert(KV_WBATCH * 8 + 1 <= FTVM_DISK_MAX_INFLIGHT, "log writes in flight exceed the device's limit");
_Static_assert(KV_CONN_IN_MAX >= KV_MAX_RECORD, "a command must fit a client's input buffer");

#define S KV_SECTOR
#define OBUF_SIZE (128u << 10)
#define TAIL_RESERVE (64u << 10)   /* end of a region kept for DEL / FLUSHALL records */
#define CHASH 4096u

/* --- memory helpers, CRC-32, allocator (mem.c) ------------------------------------ */
static inline uint64_t ld64(const void *p) { uint64_t v; __builtin_memcpy(&v, p, 8); return v; }
static inline uint32_t ld32(const void *p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }
static inline uint16_t ld16(const void *p) { uint16_t v; __builtin_memcpy(&v, p, 2); return v; }
static inline void st64(void *p, uint64_t v) { __builtin_memcpy(p, &v, 8); }
static inline void st32(void *p, uint32_t v) { __builtin_memcpy(p, &v, 4); }
static inline void st16(void *p, uint16_t v) { __builtin_memcpy(p, &v, 2); }

void kcpy(void *dst, const void *src, size_t n);
void kmove(void *dst, const void *src, size_t n);
void kzero(void *dst, size_t n);
int keq(const uint8_t *a, const uint8_t *b, size_t n);
static inline size_t kstrlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }
static inline char lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

void crc_init(void);

void a_init(void);
void *a_alloc(uint64_t n);
void a_release(void *p);
void *d_alloc(uint64_t n);     /* for data: leaves KV_RESERVE free (while data_strict) */
extern uint64_t a_free;        /* bytes free in the arena */
extern int data_strict;        /* 0 while recovering: data may use the reserve too */

/* --- the hash table (table.c) ----------------------------------------------------- */
struct entry {
    struct entry *next;
    uint64_t h;
    uint32_t klen, vlen, vcap, pad;
    /* key bytes, then vcap value bytes */
};
static inline uint8_t *e_key(struct entry *e) { return (uint8_t *)(e + 1); }
static inline uint8_t *e_val(struct entry *e) { return (uint8_t *)(e + 1) + e->klen; }

extern struct table {
    struct entry **b;
    uint64_t mask, count, live;
} T;

void tb_init(void);
struct entry *tb_get(const uint8_t *k, uint32_t kn);
int tb_set(const uint8_t *k, uint32_t kn, const uint8_t *v, uint32_t vn);
int tb_append(const uint8_t *k, uint32_t kn, const uint8_t *s, uint32_t sn, uint32_t *newlen);
int tb_del(const uint8_t *k, uint32_t kn);
void tb_flush(void);

/* --- connections and global state (conn.c) ---------------------------------------- */
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

extern struct kv_state {
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

void set_state(struct conn *c, int st);   /* moves c to the list of its new state */
void conns_init(void);                    /* K zeroed, every connection free */

/* --- replies and RESP parsing (resp.c) -------------------------------------------- */
extern uint8_t obuf[OBUF_SIZE];          /* replies of K.cur, K.olen bytes */
extern struct kv_arg args[KV_MAX_ARGS];  /* the command just parsed, or the record just checked */
extern uint32_t nargs;
extern const char *perr;                 /* what the protocol error was */

void out_flush(void);
void r_raw(const void *p, uint32_t n);
void r_str(const char *s);
uint32_t fmt_u64(char *b, uint64_t v);
uint32_t fmt_i64(char *b, int64_t v);
void r_int(int64_t v);
void r_arr(int64_t n);
void r_nil(void);
void r_map(int64_t n);
void r_ok(void);
void r_bulk(const uint8_t *p, uint32_t n);
void r_cstr_bulk(const char *s);
void r_err3(const char *a, const uint8_t *name, uint32_t n, const char *b);
void r_lower_name(const char *a, const uint8_t *name, uint32_t n, const char *b);
void r_arity(const struct kv_arg *name);

extern const char E_NOTINT[], E_SYNTAX[], E_OOM[], E_TOOBIG[], E_LOGFULL[];
const char *disk_errmsg(uint32_t st);

int str2ll(const uint8_t *s, uint32_t n, int64_t *out);
long parse_command(const uint8_t *p, uint32_t n);

/* --- log records and the log writer (log.c) --------------------------------------- */
struct rec_expect {
    uint32_t disk_id, gen, index, epoch_min, epoch_max;
    int snapshot; /* 1: must be SNAP, 0: must not be */
};
#define REC_MORE 0
#define REC_BAD (-1)

extern uint8_t lb[KV_LOGBUF_SIZE];     /* the log's tail: from K.lb_off, K.lb_len bytes */
extern uint8_t sbbuf[2 * S];           /* superblocks */
extern struct ftvm_disk_req sbreq;     /* the superblock write */

void rec_header(uint8_t *h, uint32_t type, uint32_t paylen, uint32_t disk_id, uint32_t gen,
                uint32_t epoch, uint32_t index);
long rec_check(const uint8_t *p, uint64_t avail, const struct rec_expect *x, uint32_t *type);

void say(const char *a, uint64_t v, const char *b);
void say_status(const char *what, uint32_t st);
uint64_t region_lba(uint32_t r);
uint32_t sync_io(uint32_t op, uint64_t lba, uint32_t count, void *buf);
void sb_build(uint8_t *b, uint64_t sbseq, uint32_t gen, uint32_t region, uint32_t snap_records,
              uint64_t snap_bytes, uint64_t base_seq);
void sb_submit(void);
void log_kick(void);
void release_waiters(uint64_t upto, uint32_t err);
void wake_blocked(uint32_t err);
void write_ok(void);
int writer_poll(void);

/* Room for a record of rs bytes? LR_OK, LR_BLOCK (retry later), LR_ERR (*err set). */
enum { LR_OK, LR_BLOCK, LR_ERR };
int log_reserve(uint32_t rs, int shrinking, const char **err);
void log_append(uint32_t type, uint32_t n, const struct kv_arg *a);
void reply_mutation(const char *s, uint32_t n);
void reply_mutation_int(uint64_t n);

/* --- compaction (compact.c) ------------------------------------------------------- */
uint32_t compact(void);

/* --- commands (commands.c) -------------------------------------------------------- */
void cmds_init(void);
int dispatch(uint32_t argc);

#endif
