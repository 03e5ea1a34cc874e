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
        if (c->tsc_mode == FTVM_TSC_SYNTHETIC)
            v = (uint64_t)((int64_t)(c->blocks * c->tsc_synth_ns_per_block) + c->tsc_offset_ns);
        else
            v = (uint64_t)((int64_t)ftvm_host_ns() + c->tsc_offset_ns);
        if (v <= c->tsc_last)   /* never backwards, never the same twice */
            v = c->tsc_last + 1;
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
    uint64_t v;
    if (c->tsc_mode == FTVM_TSC_SYNTHETIC)
        v = (uint64_t)((int64_t)(c->blocks * c->tsc_synth_ns_per_block) + c->tsc_offset_ns);
    else
        v = (uint64_t)((int64_t)ftvm_host_ns() + c->tsc_offset_ns);
    if (v <= c->tsc_last)
        v = c->tsc_last + 1;
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
