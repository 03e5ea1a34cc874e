/* The hot paths of ftvm: block counting and virtual time (RDTSC/RDTSCP).
 *
 * Blocks are counted one of two ways, with the same semantics:
 *  - inline (the patched Unicorn, unicorn-patch/): the translated code counts each
 *    block and stores its pc, and calls ftvm_limit_cb before a block only when
 *    blocks >= trip;
 *  - hook (a stock Unicorn): each translated block that runs calls ftvm_block_hook,
 *    which does the same test and counting in C.
 * Either way, when a stop is wanted Unicorn stops *before* the block runs and the
 * count is left alone; the block is counted when it runs on resume. So (blocks, pc)
 * names the same instant however often the hypervisor stops, resumes or moves the
 * state into a fresh engine.
 *
 * RDTSC and RDTSCP take their value from next_tsc() the matching two ways: the
 * patched engine calls ftvm_tsc_source from the translated code (UC_CTL_TSC_SOURCE),
 * a stock one calls the instruction hooks ftvm_rdtsc_hook / ftvm_rdtscp_hook.
 */
#include <stdbool.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unicorn/unicorn.h>

#include "fastpath.h"

#define FTVM_TSC_HOST 0
#define FTVM_TSC_SYNTHETIC 1
#define FTVM_TSC_REPLAY 2

#define FTVM_DIV_TSC_EXHAUSTED 1  /* guest ran more RDTSCs than the log holds */
#define FTVM_DIV_TSC_POINT 2      /* an RDTSC ran at another block count than logged */

#define SYNC_TSC_DRAIN 1u
#define SYNC_DIVERGED 2u
#define SYNC_HYPERCALL 4u  /* set from Python port hooks */

#define RFLAGS_IF 0x200u

#define FTVM_SYS_STOP 0
#define FTVM_SYS_DONE 1
#define FTVM_SYS_DONE_STOP 2

/* UC_CTL_BLOCK_COUNTER comes with the patched Unicorn. Spelled out here when the
 * headers lack it, so this file builds against the stock wheel too: a stock engine
 * refuses the control (UC_ERR_ARG) and ftvm falls back to the block hook. */
#ifdef uc_ctl_set_block_counter
#define FTVM_CTL_BLOCK_COUNTER UC_CTL_BLOCK_COUNTER
#else
#define FTVM_CTL_BLOCK_COUNTER (UC_CTL_CONTEXT_MODE + 1)
typedef struct uc_block_counter {
    uint64_t count;
    volatile uint64_t limit;
    uint64_t pc;
} uc_block_counter;
typedef bool (*uc_cb_block_limit_t)(uc_engine *uc, uint64_t address, void *user_data);
#endif
/* UC_CTL_TSC_SOURCE, the same way (the patched engine's RDTSC/RDTSCP fast path). */
#ifdef uc_ctl_set_tsc_source
#define FTVM_CTL_TSC_SOURCE UC_CTL_TSC_SOURCE
#else
#define FTVM_CTL_TSC_SOURCE (UC_CTL_CONTEXT_MODE + 2)
typedef uint64_t (*uc_cb_tsc_t)(uc_engine *uc, int insn, void *user_data);
#endif
#define FTVM_MSR_TSC_AUX 0xC0000103u

_Static_assert(offsetof(ftvm_cpu, blocks) == offsetof(uc_block_counter, count), "blocks is the count");
_Static_assert(offsetof(ftvm_cpu, trip) == offsetof(uc_block_counter, limit), "trip is the limit");
_Static_assert(offsetof(ftvm_cpu, block_pc) == offsetof(uc_block_counter, pc), "block_pc is the pc");

static int stop_wanted(uc_engine *uc, ftvm_cpu *c)
{
    if (c->blocks == c->stop_at || c->async_req || c->sync_req)
        return 1;
    if (c->irq_wait) {
        /* An interrupt waits: stop once the guest has interrupts enabled. */
        uint64_t rflags = 0;
        uc_reg_read(uc, UC_X86_REG_RFLAGS, &rflags);
        return (rflags & RFLAGS_IF) != 0;
    }
    return 0;
}

void ftvm_block_hook(void *uc_, uint64_t address, uint32_t size, void *user)
{
    ftvm_cpu *c = (ftvm_cpu *)user;
    (void)size;
    if (__builtin_expect(c->blocks >= c->trip, 0) && c->resume_mid) {
        /* The rest of a block the debugger stopped inside: counted when it began.
         * Requests wait for the next block boundary (ftvm_arm keeps trip at 0). */
        c->resume_mid = 0;
        ftvm_arm(c, c->stop_at);
        return;
    }
    if (__builtin_expect(c->blocks >= c->trip, 0) && stop_wanted((uc_engine *)uc_, c)) {
        c->stop_pc = address;
        c->hook_stops++;
        uc_emu_stop((uc_engine *)uc_);
        return; /* not counted: the block has not run */
    }
    c->block_pc = address;
    c->blocks++;
}

/* Inline counting's slow path: the translated code found blocks >= trip before the
 * block at `address`. The same decisions as ftvm_block_hook's slow path: stopping
 * here leaves the block uncounted; returning true lets the translated code count it
 * (and store its pc) and run it, false runs it uncounted. */
static bool ftvm_limit_cb(uc_engine *uc, uint64_t address, void *user)
{
    ftvm_cpu *c = (ftvm_cpu *)user;
    if (c->resume_mid) {
        /* The rest of a block the debugger stopped inside: counted when it began,
         * and block_pc stays that block's. Requests wait for the next block. */
        c->resume_mid = 0;
        ftvm_arm(c, c->stop_at);
        return false;
    }
    if (stop_wanted(uc, c)) {
        c->stop_pc = address;
        c->hook_stops++;
        uc_emu_stop(uc);
    }
    return true;
}

int ftvm_counter_install(void *uc, ftvm_cpu *c)
{
    return (int)uc_ctl((uc_engine *)uc, UC_CTL_WRITE(FTVM_CTL_BLOCK_COUNTER, 3), (uc_block_counter *)c,
                       (uc_cb_block_limit_t)ftvm_limit_cb, (void *)c);
}

void ftvm_arm(ftvm_cpu *c, uint64_t stop_at)
{
    c->stop_at = stop_at;
    c->trip = stop_at;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    /* A poke that lands between these lines has set trip = 0 itself (ftvm_poke sets
     * async_req first, then trip), so no request is lost. */
    if (c->async_req || c->sync_req || c->irq_wait)
        c->trip = 0;
}

void ftvm_poke(ftvm_cpu *c)
{
    c->async_req = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    c->trip = 0;
}

void ftvm_request(ftvm_cpu *c, uint32_t sync_bits)
{
    c->sync_req |= sync_bits;
    c->trip = 0;
}

/* Test hook: pretend this host's clock is off by this much (two hosts' monotonic
 * clocks never agree; tests make the disagreement large on purpose). */
static int64_t clock_skew_ns;

void ftvm_set_clock_skew(int64_t skew_ns) { clock_skew_ns = skew_ns; }

uint64_t ftvm_host_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + (uint64_t)clock_skew_ns;
}

/* The next guest time to hand out (record side): the host clock (or the synthetic
 * clock) plus the offset, never backwards and never the same twice. RDTSC, RDTSCP and
 * the clock system calls share it; the caller commits it to tsc_last. */
static uint64_t vtime_peek(const ftvm_cpu *c)
{
    uint64_t v;
    if (c->tsc_mode == FTVM_TSC_SYNTHETIC)
        v = (uint64_t)((int64_t)(c->blocks * c->tsc_synth_ns_per_block) + c->tsc_offset_ns);
    else
        v = (uint64_t)((int64_t)ftvm_host_ns() + c->tsc_offset_ns);
    return v <= c->tsc_last ? c->tsc_last + 1 : v;
}

static uint64_t next_tsc(uc_engine *uc, ftvm_cpu *c)
{
    uint64_t v, pc = c->block_pc;
    if (c->tsc_mode == FTVM_TSC_REPLAY) {
        if (c->tsc_pos >= c->tsc_len) {
            if (!c->diverged) {
                c->diverged = FTVM_DIV_TSC_EXHAUSTED;
                c->div_blocks = c->blocks;
                c->div_pc = pc;
                c->div_index = c->tsc_count;
            }
            ftvm_request(c, SYNC_DIVERGED);
            uc_emu_stop(uc);
            return c->tsc_last;
        }
        uint64_t *e = c->tsc_buf + 3 * (uint64_t)c->tsc_pos;
        v = e[2];
        if ((e[0] != c->blocks || e[1] != pc) && !c->diverged) {
            c->diverged = FTVM_DIV_TSC_POINT;
            c->div_blocks = c->blocks;
            c->div_pc = pc;
            c->div_expected = e[0];
            c->div_expected_pc = e[1];
            c->div_index = c->tsc_count;
            ftvm_request(c, SYNC_DIVERGED);
            uc_emu_stop(uc);
        }
        c->tsc_pos++;
        /* Ask for a refill while a whole block's worth is left (a translated block
         * holds at most 512 instructions). */
        if (c->tsc_more && c->tsc_len - c->tsc_pos < 1024)
            ftvm_request(c, SYNC_TSC_DRAIN);
    } else {
        v = vtime_peek(c);
        if (c->tsc_len < c->tsc_cap) {
            uint64_t *e = c->tsc_buf + 3 * (uint64_t)c->tsc_len;
            e[0] = c->blocks;
            e[1] = pc;
            e[2] = v;
            c->tsc_len++;
        }
        /* The buffer keeps slack past the high-water mark for the rest of the block:
         * a translated block holds at most 512 instructions. */
        if (c->tsc_len >= c->tsc_high_water)
            ftvm_request(c, SYNC_TSC_DRAIN);
    }
    c->tsc_last = v;
    c->tsc_count++;
    return v;
}

int ftvm_rdtsc_hook(void *uc_, void *user)
{
    uc_engine *uc = (uc_engine *)uc_;
    uint64_t v = next_tsc(uc, (ftvm_cpu *)user);
    uint64_t lo = v & 0xffffffffull, hi = v >> 32;
    uc_reg_write(uc, UC_X86_REG_RAX, &lo);
    uc_reg_write(uc, UC_X86_REG_RDX, &hi);
    return 1; /* skip the real instruction */
}

int ftvm_rdtscp_hook(void *uc_, void *user)
{
    uc_engine *uc = (uc_engine *)uc_;
    ftvm_cpu *c = (ftvm_cpu *)user;
    uint64_t v = next_tsc(uc, c);
    uint64_t lo = v & 0xffffffffull, hi = v >> 32, aux = c->tsc_aux;
    uc_reg_write(uc, UC_X86_REG_RAX, &lo);
    uc_reg_write(uc, UC_X86_REG_RDX, &hi);
    uc_reg_write(uc, UC_X86_REG_RCX, &aux);
    return 1;
}

/* The patched engine's UC_CTL_TSC_SOURCE: the translated code calls this for RDTSC
 * and RDTSCP and puts the value in EDX:EAX itself (ECX of RDTSCP: the TSC_AUX MSR,
 * set from tsc_aux at install). The hooks above do the same through Unicorn's
 * instruction hooks, which bring the whole CPU state up to date first and write
 * the registers through the API: most of the cost of an RDTSC. */
static uint64_t ftvm_tsc_source(uc_engine *uc, int insn, void *user)
{
    (void)insn;
    return next_tsc(uc, (ftvm_cpu *)user);
}

int ftvm_tsc_install(void *uc_, ftvm_cpu *c)
{
    uc_engine *uc = (uc_engine *)uc_;
    uc_x86_msr aux = {FTVM_MSR_TSC_AUX, c->tsc_aux};
    int err = (int)uc_reg_write(uc, UC_X86_REG_MSR, &aux);
    if (err != UC_ERR_OK)
        return err;
    return (int)uc_ctl(uc, UC_CTL_WRITE(FTVM_CTL_TSC_SOURCE, 2), (uc_cb_tsc_t)ftvm_tsc_source, (void *)c);
}

/* --- Clock reads run in C (record side of the Linux personality) -----------------
 * gettimeofday, clock_gettime and time are a third to a half of a network server's
 * calls. Recording one in C gives the same result, the same guest memory and the
 * same SYSCALL record, byte for byte, as the Python handlers (calls_time.py) and
 * kernel.run_record would: [blocks, pc, nr, args, ret, [guest ns], []], encoded as
 * logging_channel/records.py encodes it. The frames wait in sys_frames until Python
 * appends them to the log, first thing at the next stop or hook call, so the log
 * order is the execution order. Anything unusual (an unknown clock, a bad pointer, a
 * full buffer, RDTSC results waiting to be logged) goes to Python instead, before any
 * value is taken. */

#define SYS_READ 0
#define SYS_WRITE 1
#define SYS_GETTIMEOFDAY 96
#define SYS_TIME 201
#define SYS_CLOCK_GETTIME 228
#define FRAME_VERSION 3
#define KIND_SYSCALL 14

static uint8_t *mp_uint(uint8_t *p, uint64_t v)
{
    if (v < 128) {
        *p++ = (uint8_t)v;
    } else if (v < 256) {
        *p++ = 0xcc;
        *p++ = (uint8_t)v;
    } else if (v < 65536) {
        *p++ = 0xcd;
        *p++ = (uint8_t)(v >> 8);
        *p++ = (uint8_t)v;
    } else if (v < (1ull << 32)) {
        *p++ = 0xce;
        for (int s = 24; s >= 0; s -= 8)
            *p++ = (uint8_t)(v >> s);
    } else {
        *p++ = 0xcf;
        for (int s = 56; s >= 0; s -= 8)
            *p++ = (uint8_t)(v >> s);
    }
    return p;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* CRC-32 of log frames (logging_channel/crc32_slice8.h): frames of a few dozen bytes, and
 * reads of data-directory files (fastpath_files.c) of many kilobytes. */
#include "crc32_slice8.h"

/* zlib's own crc32 when Python hands it over (ftvm_set_crc32): about twice as fast
 * on the many-KiB frames of file reads. */
static unsigned long (*zlib_crc32)(unsigned long, const unsigned char *, unsigned int);

void ftvm_set_crc32(void *fn) { zlib_crc32 = (unsigned long (*)(unsigned long, const unsigned char *, unsigned int))fn; }

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
    if (zlib_crc32 && n >= 256 && n < (1u << 31))
        return (uint32_t)zlib_crc32(crc, p, (unsigned int)n);
    return crc32_slice8(crc, p, n);
}

static int realtime_clock(uint64_t clock) { return clock == 0 || clock == 5 || clock == 11; }
static int known_clock(uint64_t clock) { return clock <= 9 || clock == 11; }

/* A SYSCALL record's whole frame, appended to sys_frames (the caller made sure of
 * room: 96 bytes hold three arguments and a value): [blocks, pc, nr, args, ret,
 * values (none, or one), []], as records.py encodes it. */
static void put_syscall_frame(ftvm_cpu *c, uint64_t pc, uint64_t nr, const uint64_t *a, int nargs, uint64_t ret,
                              int nvalues, uint64_t value)
{
    uint8_t *frame = c->sys_frames + c->sys_frames_len, *body = frame + 10, *p = body;
    *p++ = 0x97;
    p = mp_uint(p, c->blocks);
    p = mp_uint(p, pc);
    p = mp_uint(p, nr);
    *p++ = (uint8_t)(0x90 | nargs);
    for (int i = 0; i < nargs; i++)
        p = mp_uint(p, a[i]);
    p = mp_uint(p, ret);
    *p++ = (uint8_t)(0x90 | nvalues);
    if (nvalues)
        p = mp_uint(p, value);
    *p++ = 0x90;
    uint32_t len = (uint32_t)(p - body);
    frame[0] = FRAME_VERSION;
    frame[1] = KIND_SYSCALL;
    put_le32(frame + 2, len);
    put_le32(frame + 6, crc32_update(crc32_update(0, frame, 6), body, len));
    c->sys_frames_len += 10 + len;
    c->sys_frames_count++;
}

/* Python's lean socket calls (linux/inhook.py) log their record here, after the clock
 * reads made in C, so the order holds. 0: no room (Python appends what is there
 * first). */
int ftvm_log_syscall3(ftvm_cpu *c, uint64_t pc, uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t ret)
{
    uint64_t a[3] = {a0, a1, a2};
    if (!c->sys_frames || c->sys_frames_cap - c->sys_frames_len < 96)
        return 0;
    put_syscall_frame(c, pc, nr, a, 3, ret, 0, 0);
    return 1;
}

static int time_nargs(uint64_t nr) { return nr == SYS_TIME ? 1 : 2; }

/* What the call does with guest time `v` (memory and result), as calls_time.py does
 * it; 0 (and nothing changed that matters) if Python must do it instead. */
static int time_write(uc_engine *uc, const uint64_t *a, uint64_t nr, int64_t base_ns, uint64_t v, uint64_t *ret)
{
    uint64_t real = v + (uint64_t)base_ns;
    int64_t buf[2];
    *ret = 0;
    if (nr == SYS_GETTIMEOFDAY) {
        buf[0] = (int64_t)(real / 1000000000ull);
        buf[1] = (int64_t)((real % 1000000000ull) / 1000);
        if (a[0] && uc_mem_write(uc, a[0], buf, 16) != UC_ERR_OK)
            return 0;
        if (a[1]) {
            int64_t zero = 0;
            if (uc_mem_write(uc, a[1], &zero, 8) != UC_ERR_OK)
                return 0;
        }
    } else if (nr == SYS_CLOCK_GETTIME) {
        if (!known_clock(a[0]))
            return 0;
        uint64_t ns = realtime_clock(a[0]) ? real : v;
        buf[0] = (int64_t)(ns / 1000000000ull);
        buf[1] = (int64_t)(ns % 1000000000ull);
        if (uc_mem_write(uc, a[1], buf, 16) != UC_ERR_OK)
            return 0;
    } else {
        *ret = real / 1000000000ull;
        buf[0] = (int64_t)*ret;
        if (a[0] && uc_mem_write(uc, a[0], buf, 8) != UC_ERR_OK)
            return 0;
    }
    return 1;
}

static void sys_return(uc_engine *uc, uint64_t ret, uint64_t next)
{
    uint64_t rflags = 0;
    uc_reg_read(uc, UC_X86_REG_RFLAGS, &rflags);
    uc_reg_write(uc, UC_X86_REG_RAX, &ret);
    uc_reg_write(uc, UC_X86_REG_RCX, &next);
    uc_reg_write(uc, UC_X86_REG_R11, &rflags);
}

static int time_call(uc_engine *uc, ftvm_cpu *c, uint64_t nr, uint64_t rip)
{
    const uint64_t *a = c->sys_regs + 1;
    if (c->tsc_len || c->sys_frames_cap - c->sys_frames_len < 96)
        return 0;
    if (c->tsc_mode != FTVM_TSC_HOST && c->tsc_mode != FTVM_TSC_SYNTHETIC)
        return 0;
    uint64_t v = vtime_peek(c), ret;
    int nargs = time_nargs(nr);
    if (!time_write(uc, a, nr, c->sys_realtime_base_ns, v, &ret))
        return 0;
    c->tsc_last = v;
    sys_return(uc, ret, rip + 2);

    put_syscall_frame(c, rip, nr, a, nargs, ret, 1, v);
    return 1;
}

/* Replay: the clock read the log has next, queued by Python (sys_tq entries: blocks,
 * pc, nr, arg0, arg1, ret, guest ns). Applied here when the call matches it in every
 * logged respect; otherwise Python applies (or refuses) it. */
static int time_replay(uc_engine *uc, ftvm_cpu *c, uint64_t nr, uint64_t rip)
{
    const uint64_t *a = c->sys_regs + 1, *e = c->sys_tq + 7 * (uint64_t)c->sys_tq_pos;
    uint64_t ret;
    if (e[0] != c->blocks || e[1] != rip || e[2] != nr || e[3] != a[0] || (time_nargs(nr) == 2 && e[4] != a[1]))
        return 0;
    if (!time_write(uc, a, nr, c->sys_realtime_base_ns, e[6], &ret) || ret != e[5])
        return 0;
    if (e[6] > c->tsc_last)
        c->tsc_last = e[6];
    sys_return(uc, ret, rip + 2);
    c->sys_tq_pos++;
    return 1;
}

static int files_call(uc_engine *uc, ftvm_cpu *c, uint64_t nr, uint64_t rip);
static uint32_t get_le32_(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* One msgpack unsigned integer at *p (before end); 0 if there is none. */
static int mp_get_uint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    const uint8_t *q = *p;
    if (q >= end)
        return 0;
    uint8_t t = *q++;
    int n = t < 0x80 ? 0 : t == 0xcc ? 1 : t == 0xcd ? 2 : t == 0xce ? 4 : t == 0xcf ? 8 : -1;
    if (n < 0 || end - q < n)
        return 0;
    uint64_t x = n ? 0 : t;
    for (int i = 0; i < n; i++)
        x = x << 8 | q[i];
    *v = x;
    *p = q + n;
    return 1;
}

/* The rest of a socket read's or write's SYSCALL frame (after blocks, pc, nr), as the
 * record side's lean path writes it (ftvm_log_syscall3: three arguments, a result that
 * is no error, no values, no strings): queued as blocks, pc, nr, arg0, arg1, ret, arg2. */
static int64_t sock_push_frame(ftvm_cpu *c, uint64_t *e, const uint8_t *p, const uint8_t *end)
{
    uint64_t a2, ret;
    if (p >= end || *p++ != 0x93 || !mp_get_uint(&p, end, &e[3]) || !mp_get_uint(&p, end, &e[4])
        || !mp_get_uint(&p, end, &a2) || !mp_get_uint(&p, end, &ret) || ret >> 63)
        return -1;
    if (end - p != 2 || p[0] != 0x90 || p[1] != 0x90 || e[0] >> 63)
        return -1;
    e[5] = ret;
    e[6] = a2;
    memcpy(c->sys_tq + 7 * (uint64_t)c->sys_tq_len, e, 7 * sizeof *e);
    c->sys_tq_len++;
    return (int64_t)e[0];
}

/* Replay: if the frame at buf + off (checked already: logging_channel/frames.py) is a
 * socket read's or write's SYSCALL record (sock_push_frame), or a clock read's that C
 * applies (the shape put_syscall_frame writes and
 * linux/inhook.py's queue accepts: a known call, its arguments, a result that is no
 * error, one value), queue it in sys_tq without Python decoding it, and return its
 * block count; -1 otherwise (Python decodes the record). */
int64_t ftvm_tq_push_frame(ftvm_cpu *c, const uint8_t *buf, uint64_t off)
{
    const uint8_t *f = buf + off, *p = f + 10, *end = p + get_le32_(f + 2);
    uint64_t e[7] = {0}, nargs, ret, v;
    if (f[1] != KIND_SYSCALL || c->sys_tq_len >= c->sys_tq_cap || p >= end || *p++ != 0x97)
        return -1;
    if (!mp_get_uint(&p, end, &e[0]) || !mp_get_uint(&p, end, &e[1]) || !mp_get_uint(&p, end, &e[2]))
        return -1;
    if (e[2] == SYS_READ || e[2] == SYS_WRITE)
        return c->sys_sock ? sock_push_frame(c, e, p, end) : -1;
    if (e[2] != SYS_GETTIMEOFDAY && e[2] != SYS_CLOCK_GETTIME && e[2] != SYS_TIME)
        return -1;
    nargs = (uint64_t)time_nargs(e[2]);
    if (p >= end || *p++ != (uint8_t)(0x90 | nargs))
        return -1;
    for (uint64_t i = 0; i < nargs; i++)
        if (!mp_get_uint(&p, end, &e[3 + i]))
            return -1;
    if (!mp_get_uint(&p, end, &ret) || ret >> 63 || (e[2] != SYS_TIME && ret != 0))
        return -1;
    if (p >= end || *p++ != 0x91 || !mp_get_uint(&p, end, &v) || p >= end || *p++ != 0x90 || p != end
        || e[0] >> 63)
        return -1;
    e[5] = ret;
    e[6] = v;
    memcpy(c->sys_tq + 7 * (uint64_t)c->sys_tq_len, e, sizeof e);
    c->sys_tq_len++;
    return (int64_t)e[0];
}

void ftvm_syscall_hook(void *uc_, void *user)
{
    ftvm_cpu *c = (ftvm_cpu *)user;
    uint64_t rip = 0;
    uc_reg_read((uc_engine *)uc_, UC_X86_REG_RIP, &rip);
    static const int regs[7] = {UC_X86_REG_RAX, UC_X86_REG_RDI, UC_X86_REG_RSI, UC_X86_REG_RDX,
                                UC_X86_REG_R10, UC_X86_REG_R8, UC_X86_REG_R9};
    for (int i = 0; i < 7; i++)
        uc_reg_read((uc_engine *)uc_, regs[i], &c->sys_regs[i]);
    c->sys_pending = 1;
    c->sys_pc = rip;
    uint64_t nr = c->sys_regs[0];
    if (c->sys_time_c && (nr == SYS_GETTIMEOFDAY || nr == SYS_CLOCK_GETTIME || nr == SYS_TIME)
        && (c->sys_time_c == 1 ? time_call((uc_engine *)uc_, c, nr, rip)
                               : c->sys_tq_pos < c->sys_tq_len && time_replay((uc_engine *)uc_, c, nr, rip))) {
        c->sys_pending = 0;
        c->sys_fast_calls++;
        return;
    }
    if (c->sys_time_c == 2 && (nr == SYS_READ || nr == SYS_WRITE) && c->sys_sock && c->sys_tq_pos < c->sys_tq_len) {
        const uint64_t *e = c->sys_tq + 7 * (uint64_t)c->sys_tq_pos, *a = c->sys_regs + 1;
        if (e[0] == c->blocks && e[1] == rip && e[2] == nr && e[3] == a[0] && e[4] == a[1] && e[6] == a[2]) {
            if (c->sys_sock(c)) {
                c->sys_tq_pos++;
                c->sys_pending = 0;
                c->sys_fast_calls++;
                return;
            }
            /* Not a socket's simple case (a console or pipe write, say): the replay
             * loop applies the record at the stop, as it would have without C. */
            ftvm_request(c, SYNC_HYPERCALL);
            return;
        }
    }
    if (c->sys_fs && c->sys_time_c == 1 && files_call((uc_engine *)uc_, c, nr, rip)) {
        c->sys_pending = 0;
        c->sys_fast_calls++;
        return;
    }
    if (c->sys_fast && nr < 512 && ((c->sys_fast_mask[nr >> 6] >> (nr & 63)) & 1)) {
        int r = c->sys_fast(c);
        if (r == FTVM_SYS_DONE) {
            c->sys_fast_calls++;
            return;
        }
        if (r == FTVM_SYS_DONE_STOP)
            c->sys_fast_calls++;
    }
    ftvm_request(c, SYNC_HYPERCALL);
}

/* Guest time for a system call (record side): the host clock plus the offset, never
 * backwards and never the same twice, shared with RDTSC. */
uint64_t ftvm_vtime_next(ftvm_cpu *c)
{
    uint64_t v = vtime_peek(c);
    c->tsc_last = v;
    return v;
}

/* SIGINT/SIGTERM while the guest runs: Python's own handler would only run once
 * emu_start returns, which for a CPU-bound guest may be never. */
static ftvm_cpu *signal_cpu;
static struct sigaction old_int, old_term;
static int signals_installed;

static void on_signal(int sig)
{
    if (signal_cpu) {
        signal_cpu->signal = (uint32_t)sig;
        ftvm_poke(signal_cpu);
    }
}

int ftvm_install_signals(ftvm_cpu *cpu)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    signal_cpu = cpu;
    if (sigaction(SIGINT, &sa, &old_int) != 0)
        return -1;
    if (sigaction(SIGTERM, &sa, &old_term) != 0)
        return -1;
    signals_installed = 1;
    return 0;
}

void ftvm_restore_signals(void)
{
    if (signals_installed) {
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
        signals_installed = 0;
    }
    signal_cpu = NULL;
}

/* A Linux system call's return: rax = the result, rcx = the next instruction's
 * address (rip at a stop; `next_rip` when run inside the hook, where rip is still
 * the syscall's own address), r11 = rflags, as the syscall instruction leaves them. */
void ftvm_sys_return(void *uc_, uint64_t rax, uint64_t next_rip)
{
    uc_engine *uc = (uc_engine *)uc_;
    if (!next_rip)
        uc_reg_read(uc, UC_X86_REG_RIP, &next_rip);
    sys_return(uc, rax, next_rip);
}

/* Guest memory without the binding's ctypes conversions: 0 on success. */
int ftvm_mem_write(void *uc, uint64_t addr, const uint8_t *data, size_t n)
{
    return uc_mem_write((uc_engine *)uc, addr, data, n) == UC_ERR_OK ? 0 : -1;
}

int ftvm_mem_read(void *uc, uint64_t addr, uint8_t *out, size_t n)
{
    return uc_mem_read((uc_engine *)uc, addr, out, n) == UC_ERR_OK ? 0 : -1;
}

uint64_t ftvm_reg_read(void *uc, int regid)
{
    uint64_t v = 0;
    uc_reg_read((uc_engine *)uc, regid, &v);
    return v;
}

int ftvm_reg_write(void *uc, int regid, uint64_t value)
{
    return (int)uc_reg_write((uc_engine *)uc, regid, &value);
}
