/* Shared between the C fast path and Python (cffi cdef reads this file).
 * Keep it free of preprocessor directives: cffi parses it as declarations. */

/* Data-directory files the syscall hook serves in C (record side of the Linux
 * personality, fastpath_files.c; hypervisor/linux/cfiles.py keeps it). A mirror of
 * Python's fd table: Python owns the table and sets each slot's state whenever it
 * changes an fd; C opens, reads and closes plain data-directory files itself, and
 * Python takes over the files C opened (state 2) first thing whenever it runs. */
typedef struct ftvm_cfile {
    uint32_t state;             /* 0 free, 1 Python's, 2 opened in C (Python not told yet),
                                 * 3 Python's file that C may read (pos lives here) */
    int32_t hostfd;             /* states 2 and 3 */
    uint32_t flags;             /* open flags as the guest gave them (state 2) */
    uint32_t path_len;
    uint64_t pos;               /* file position (states 2 and 3) */
    char path[256];             /* guest path (state 2) */
} ftvm_cfile;

typedef struct ftvm_files {
    ftvm_cfile fd[1024];        /* by guest fd (the personality's FD_MAX) */
    uint32_t fresh;             /* slots in state 2 */
    int32_t data_dirfd;         /* the data directory on the host (O_PATH), -1: none */
    uint32_t data_guest_len;
    uint32_t cwd_len;           /* 0: relative paths go to Python */
    char data_guest[256];       /* its guest path, no trailing slash */
    char cwd[256];              /* the working directory's guest path */
    uint64_t read_max;          /* larger reads go to Python */
} ftvm_files;

typedef struct ftvm_cpu {
    /* The first three fields are laid out as Unicorn's uc_block_counter (the patched
     * engine's UC_CTL_BLOCK_COUNTER, see unicorn-patch/): with the inline counter the
     * translated code itself counts blocks, compares with trip and stores block_pc. */
    /* Execution point: blocks that have actually run. A block before which a stop
     * was asked for has not run and is not counted; it is counted when it runs on
     * resume. */
    uint64_t blocks;
    /* The only test on the fast path (the block hook's, or the translated code's):
     * blocks >= trip sends a block down the slow path, which works out whether to
     * stop. trip is stop_at, or 0 while any request is pending. Set it through
     * ftvm_arm / ftvm_poke. */
    volatile uint64_t trip;
    /* Start address of the block now running (the pc logged with each RDTSC). */
    uint64_t block_pc;
    /* Stop before running a block when blocks == stop_at (UINT64_MAX: never). */
    uint64_t stop_at;
    /* Stop requests. async_req may be set from other threads or a signal handler;
     * sync_req is set by hooks on the emulation thread. Python clears both. */
    volatile uint32_t async_req;
    uint32_t sync_req;
    /* Stop at the first block boundary where RFLAGS.IF is set (an IRQ waits). */
    uint32_t irq_wait;
    /* Set by the SIGINT/SIGTERM handler: the signal number. */
    volatile uint32_t signal;
    /* Address of the block that was about to run when the hook last stopped, and how
     * many times it has stopped (so the caller can tell a hook stop from HLT). */
    uint64_t stop_pc;
    uint64_t hook_stops;

    /* Virtual time (RDTSC/RDTSCP). Units: nanoseconds of guest time. */
    uint32_t tsc_mode;          /* FTVM_TSC_HOST, FTVM_TSC_SYNTHETIC, FTVM_TSC_REPLAY */
    uint32_t tsc_aux;           /* value RDTSCP puts in ECX */
    int64_t tsc_offset_ns;      /* host mode: vtime = CLOCK_MONOTONIC + offset */
    uint64_t tsc_last;          /* last value returned; vtime never goes backwards */
    uint64_t tsc_count;         /* RDTSC/RDTSCP executed so far */
    uint64_t tsc_synth_ns_per_block; /* synthetic mode: vtime advances this much per block */
    /* Record: (blocks, pc, value) triples appended here; replay: consumed from here. */
    uint64_t *tsc_buf;
    uint32_t tsc_len;           /* entries in the buffer */
    uint32_t tsc_cap;           /* capacity in entries */
    uint32_t tsc_pos;           /* replay: next entry to consume */
    uint32_t tsc_high_water;    /* record: ask for a stop (to drain) at this many entries */
    uint32_t tsc_more;          /* replay: more entries wait in Python; ask for a refill when low */

    /* Replay divergence seen by a C hook (FTVM_DIV_*), with where it happened. */
    uint32_t diverged;
    uint64_t div_blocks;        /* blocks when it happened */
    uint64_t div_pc;            /* pc of the block of the RDTSC that ran */
    uint64_t div_expected;      /* what the log said: blocks of the RDTSC ... */
    uint64_t div_expected_pc;   /* ... and its pc */
    uint64_t div_index;         /* index of the RDTSC in the run */

    /* Linux personality: a `syscall` instruction ran (it ends its block); the hook
     * asks for a stop at the end of the block, where the kernel runs the call. */
    uint32_t sys_pending;
    uint64_t sys_pc;            /* address of the syscall instruction */
    uint64_t sys_regs[7];       /* rax (the number), rdi, rsi, rdx, r10, r8, r9 */
    /* Calls run inside the hook, without stopping the engine (record and replay of
     * the Linux personality, see hypervisor/linux/inhook.py): for a call whose bit is
     * set in sys_fast_mask the hook calls sys_fast, which returns FTVM_SYS_DONE (the
     * call ran: go on), FTVM_SYS_DONE_STOP (it ran: stop at the end of the block) or
     * FTVM_SYS_STOP (not run here: stop, the call stays pending). */
    int (*sys_fast)(struct ftvm_cpu *);
    uint64_t sys_fast_mask[8];  /* bit nr: try call nr in the hook (nr < 512) */
    uint64_t sys_fast_calls;    /* calls run in the hook so far */
    /* Clock reads (gettimeofday, clock_gettime, time) run in C. sys_time_c 1 (record):
     * their SYSCALL records are encoded into sys_frames (whole log frames) for Python
     * to append. 2 (replay): they are checked against, and take their values from,
     * the records Python queued in sys_tq. */
    uint32_t sys_time_c;
    uint64_t *sys_tq;               /* replay: entries of 7: blocks, pc, nr, arg0, arg1, ret, ns */
    uint32_t sys_tq_len;            /* entries queued */
    uint32_t sys_tq_pos;            /* next entry to apply */
    uint32_t sys_tq_cap;
    int64_t sys_realtime_base_ns;   /* CLOCK_REALTIME = guest time + this */
    uint8_t *sys_frames;
    uint32_t sys_frames_len;        /* bytes */
    uint32_t sys_frames_cap;
    uint32_t sys_frames_count;      /* frames */
    /* Data-directory files served in C (record side, fastpath_files.c), or NULL. */
    ftvm_files *sys_fs;
    /* Replay (sys_time_c 2): socket reads and writes are queued in sys_tq too, in log
     * order with the clock reads (entries: blocks, pc, nr, arg0, arg1, ret, arg2). When
     * the guest makes the one at the head, in every logged respect, the hook calls
     * sys_sock, which moves the bytes (linux/inhook.py) and returns 1 (done, the entry
     * is used) or 0 (not a connected socket's simple case: the replay loop applies the
     * record at the stop, as for any call that does not run in the hook). */
    int (*sys_sock)(struct ftvm_cpu *);

    /* Debugger: the guest stopped in the middle of a block (after single steps or at a
     * breakpoint) and resumes there. Unicorn starts a new translated block at that
     * address, which is the rest of block `blocks`, already counted: the next block
     * hook neither counts it nor moves block_pc. Set with trip = 0. */
    uint32_t resume_mid;
} ftvm_cpu;

void ftvm_block_hook(void *uc, uint64_t address, uint32_t size, void *user);
/* Counting in the translated code (patched Unicorn). Returns a uc_err: non-zero
 * (UC_ERR_ARG) from a stock engine, which has no such control. */
int ftvm_counter_install(void *uc, ftvm_cpu *cpu);
void ftvm_arm(ftvm_cpu *cpu, uint64_t stop_at);
void ftvm_poke(ftvm_cpu *cpu);
void ftvm_request(ftvm_cpu *cpu, uint32_t sync_bits);
int ftvm_rdtsc_hook(void *uc, void *user);
int ftvm_rdtscp_hook(void *uc, void *user);
/* RDTSC/RDTSCP through the patched engine's UC_CTL_TSC_SOURCE instead of the two
 * hooks above. Returns a uc_err: non-zero (UC_ERR_ARG) from a stock engine. */
int ftvm_tsc_install(void *uc, ftvm_cpu *cpu);
void ftvm_syscall_hook(void *uc, void *user);
uint64_t ftvm_vtime_next(ftvm_cpu *cpu);
uint64_t ftvm_host_ns(void);
/* Read / write one register of at most 64 bits, without the Python binding's cost. */
uint64_t ftvm_reg_read(void *uc, int regid);
int ftvm_reg_write(void *uc, int regid, uint64_t value);
void ftvm_sys_return(void *uc, uint64_t rax, uint64_t next_rip);
int64_t ftvm_tq_push_frame(ftvm_cpu *cpu, const uint8_t *buf, uint64_t off);
int ftvm_log_syscall3(ftvm_cpu *cpu, uint64_t pc, uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t ret);
int ftvm_mem_write(void *uc, uint64_t addr, const uint8_t *data, size_t n);
int ftvm_mem_read(void *uc, uint64_t addr, uint8_t *out, size_t n);
void ftvm_set_clock_skew(int64_t skew_ns);
/* zlib's crc32 (its address), for the C side's log frames; NULL: its own. */
void ftvm_set_crc32(void *fn);
int ftvm_install_signals(ftvm_cpu *cpu);
void ftvm_restore_signals(void);
