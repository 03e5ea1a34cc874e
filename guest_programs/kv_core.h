/* kv_core: the portable part of the kv server (the files in guest_programs/kv/; how
 * they divide the work is at the top of kv/kv_internal.h).
 *
 * The core knows nothing about ports or interrupts. It talks to its platform through
 * the kvp_* hooks below, implemented by kv.c for the ftvm guest and by
 * tests/kv_hosttest.c (a simulated network and disk) for the host-side unit tests. The
 * structs of the network and disk devices are the ftvm ABI's own (ftvm.h). */
#ifndef KV_CORE_H
#define KV_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "ftvm.h"

/* --- platform hooks (provided by the platform) ------------------------------------ */
void kvp_send(uint32_t conn, const void *data, uint32_t len);  /* copied at once */
void kvp_close(uint32_t conn);                                 /* after pending replies */
uint32_t kvp_disk_sectors(void);                               /* 0 = no disk */
void kvp_disk_submit(struct ftvm_disk_req *req);               /* asynchronous */
void kvp_wait_disk(void);  /* sleep until a disk completion may have happened */
void kvp_puts(const char *s);                                  /* console */
uint32_t kvp_rng32(void);
__attribute__((noreturn)) void kvp_fatal(const char *msg);     /* unusable disk: stop */

/* --- entry points (called by the platform's main loop) ---------------------------- */
void kv_start(void);        /* (re)initialise everything, recover from the disk, say ready */
/* Buffer for the platform to receive network data into (then hand to kv_net_event). */
uint8_t *kv_rx_buffer(uint32_t *cap);
/* One network event; for FTVM_NET_DATA, data[0..ev->len) (the buffer may be modified). */
void kv_net_event(const struct ftvm_net_event *ev, uint8_t *data);
void kv_disk_poll(void);    /* take finished disk requests into account */
void kv_round_end(void);    /* resume unblocked clients, start the next log write, compact */
/* Nonzero if the main loop must not sleep: connections are ready to run, or a log
 * write has finished and waits to be taken into account. Call with interrupts masked. */
int kv_busy(void);

/* --- limits ----------------------------------------------------------------------- */
#define KV_ARENA_SIZE   (16u << 20)   /* keys, values, table, connection buffers */
#define KV_RESERVE      (1u << 20)    /* left for connection buffers when data is stored */
#define KV_MAX_BULK     (1u << 20)    /* longest argument (so values up to 1 MiB) */
#define KV_MAX_ENTRY    (KV_MAX_BULK + (64u << 10))   /* key + value of one entry */
#define KV_MAX_ARGS     32768         /* arguments of one command */
#define KV_MAX_INLINE   (64u << 10)   /* longest inline command line */
#define KV_CONN_IN_MAX  (KV_MAX_BULK * 2 + (256u << 10))  /* buffered input of a client */
#define KV_MAX_CONNS    1024
#define KV_SECTOR       4096u
#define KV_REC_HDR      32u
#define KV_MAX_RECORD   (KV_MAX_BULK + (128u << 10))  /* header + payload of one record */
#define KV_LOGBUF_SIZE  (3u << 20)    /* tail sector + the log writes in flight + pending */
#define KV_WBATCH       4             /* log writes in flight at most (group commit, pipelined) */
#define KV_CHUNK_SIZE   (1u << 20)    /* snapshot writes, recovery reads */
#define KV_MIN_REGION   640u          /* sectors per log region, at least */

/* --- on-disk format (see the comment at the top of kv/log.c) --------------------- */
#define KV_SB_MAGIC   0x4253564bu   /* "KVSB" */
#define KV_SB_VERSION 1u
#define KV_REC_MAGIC  0x314c564bu   /* "KVL1" */
enum { KV_T_SNAP = 1, KV_T_SET = 2, KV_T_DEL = 3, KV_T_APPEND = 4, KV_T_FLUSHALL = 5, KV_T_MSET = 6 };

struct kv_arg {
    const uint8_t *p;
    uint32_t n;
};

/* Encoding helpers, exported for the host tests. */
uint32_t kv_crc32(uint32_t crc, const void *p, size_t n);   /* zlib-compatible */
uint32_t kv_rec_size(uint32_t nargs, const struct kv_arg *args);
void kv_rec_encode(uint8_t *dst, uint32_t type, uint32_t nargs, const struct kv_arg *args,
                   uint32_t disk_id, uint32_t gen, uint32_t epoch, uint32_t index);

/* Introspection for tests and INFO. */
uint64_t kv_dbsize(void);
uint64_t kv_live_bytes(void);
uint64_t kv_log_end(void);
uint32_t kv_generation(void);

#endif
