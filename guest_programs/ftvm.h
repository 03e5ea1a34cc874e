/* ftvm guest ABI v1: the interface between a guest program and the ftvm hypervisor.
 * See docs/guest-abi.md for the full description. Header-only helpers; the entry
 * point, the interrupt trampoline and a few libc basics live in runtime.c / crt0.S. */
#ifndef FTVM_H
#define FTVM_H

#include <stdint.h>
#include <stddef.h>

#define FTVM_ABI_VERSION 2   /* v2 = v1 + the network and disk devices */

/* I/O ports */
#define FTVM_PORT_CONSOLE      0xE9   /* out: one console byte; in: reads 0xE9 */
#define FTVM_PORT_EXIT         0x501  /* out: end the guest; the byte is the exit status */
#define FTVM_PORT_IRQ_HANDLER  0x510  /* out: rdi = handler, rsi = return trampoline */
#define FTVM_PORT_IRQ_RETURN   0x511  /* out: return from the interrupt handler */
#define FTVM_PORT_TIMER        0x520  /* out (32-bit): timer period in microseconds, 0 = off */
#define FTVM_PORT_INPUT_STATUS 0x530  /* in (32-bit): bytes waiting (bits 0-15), end of input (bit 31) */
#define FTVM_PORT_INPUT_DATA   0x531  /* in (32-bit): next input byte, or 0xFFFFFFFF if none */
#define FTVM_PORT_RNG          0x540  /* in (32-bit): 32 random bits */
/* Network device (ABI v2): connections from the front end, as events. */
#define FTVM_PORT_NET_RECV     0x550  /* out: rdi = struct ftvm_net_event *, rsi = buffer, rcx = capacity */
#define FTVM_PORT_NET_SEND     0x551  /* out: rdi = connection id, rsi = data, rcx = length */
#define FTVM_PORT_NET_CLOSE    0x552  /* out: rdi = connection id: close it */
#define FTVM_PORT_NET_STATUS   0x553  /* in (32-bit): events waiting (saturating at 0xFFFF) */
/* Disk device (ABI v2): 4096-byte sectors, asynchronous requests, DMA, completion irq. */
#define FTVM_PORT_DISK_SECTORS 0x560  /* in (32-bit): disk size in sectors, 0 = no disk */
#define FTVM_PORT_DISK_SUBMIT  0x561  /* out: rdi = struct ftvm_disk_req * */

/* Interrupt vectors, passed to the handler as its argument */
#define FTVM_IRQ_TIMER 0
#define FTVM_IRQ_INPUT 1
#define FTVM_IRQ_NET   2   /* network events are waiting */
#define FTVM_IRQ_DISK  3   /* a disk request completed */

/* Network events (FTVM_PORT_NET_RECV fills one in and removes it from the queue). */
#define FTVM_NET_NONE  0   /* nothing was waiting */
#define FTVM_NET_OPEN  1   /* a client connected: a new connection id */
#define FTVM_NET_DATA  2   /* bytes from the client (len of them, copied to the buffer) */
#define FTVM_NET_CLOSE 3   /* the client closed its end (no more data will come) */
#define FTVM_NET_RESET 4   /* the connection was reset / lost: it is gone */
struct ftvm_net_event {
    uint32_t type;   /* FTVM_NET_* */
    uint32_t conn;   /* connection id, never reused within a run */
    uint32_t len;    /* DATA: bytes copied into the buffer (the rest of a longer event stays queued) */
    uint32_t more;   /* events still waiting after this one */
};

/* Disk requests. The struct must stay in place until the request completes. */
#define FTVM_DISK_SECTOR   4096
#define FTVM_DISK_MAX_SECTORS 256   /* most sectors per request (1 MiB) */
#define FTVM_DISK_MAX_INFLIGHT 64
#define FTVM_DISK_READ  1
#define FTVM_DISK_WRITE 2           /* durable (fdatasync) when it completes */
#define FTVM_DISK_PENDING 0xFFFFFFFFu   /* status while in flight */
#define FTVM_DISK_OK      0
#define FTVM_DISK_EIO     1         /* the host reported an I/O error */
#define FTVM_DISK_ENOSPC  2         /* the host's disk is full */
#define FTVM_DISK_EINVAL  3         /* bad request: op, range, size or buffer (completes at once) */
#define FTVM_DISK_EBUSY   4         /* too many requests in flight (completes at once) */
struct ftvm_disk_req {
    uint32_t op;          /* FTVM_DISK_READ or FTVM_DISK_WRITE */
    uint32_t count;       /* sectors, 1..FTVM_DISK_MAX_SECTORS */
    uint64_t lba;         /* first sector */
    uint64_t buf;         /* guest address of count*4096 bytes */
    volatile uint32_t status;  /* set by the device: PENDING at submit, then the result */
    uint32_t tag;         /* the guest's own, untouched */
};

#define FTVM_INPUT_EOF 0x80000000u

static inline void ftvm_outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port) : "memory"); }
static inline void ftvm_outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port) : "memory"); }
static inline uint32_t ftvm_inl(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}
static inline uint64_t ftvm_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
static inline uint64_t ftvm_rdtscp(uint32_t *aux)
{
    uint32_t lo, hi, c;
    __asm__ volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(c));
    if (aux) *aux = c;
    return ((uint64_t)hi << 32) | lo;
}
/* Interrupts are masked by RFLAGS.IF, as on hardware: sti/cli. */
static inline void ftvm_irq_enable(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void ftvm_irq_disable(void) { __asm__ volatile("cli" ::: "memory"); }
/* Enable interrupts and wait for the next one (sti; hlt, as on hardware). Call it with
 * interrupts disabled after checking there is nothing to do, and disable them again
 * before checking anew: an interrupt between the check and the sti would otherwise
 * be taken and its wake-up lost in the hlt. */
static inline void ftvm_wait_irq(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
static inline uint32_t ftvm_rng32(void) { return ftvm_inl(FTVM_PORT_RNG); }
static inline void ftvm_timer_set_us(uint32_t period_us) { ftvm_outl(FTVM_PORT_TIMER, period_us); }
static inline uint32_t ftvm_input_status(void) { return ftvm_inl(FTVM_PORT_INPUT_STATUS); }
static inline int ftvm_input_byte(void)
{
    uint32_t v = ftvm_inl(FTVM_PORT_INPUT_DATA);
    return v == 0xFFFFFFFFu ? -1 : (int)v;
}

static inline void ftvm_hypercall3(uint16_t port, uint64_t a, uint64_t b, uint64_t c)
{
    __asm__ volatile("outb %%al, %w0" ::"Nd"(port), "a"(0), "D"(a), "S"(b), "c"(c) : "memory");
}
/* Take the next network event: fills *ev (type FTVM_NET_NONE if nothing waits). */
static inline void ftvm_net_recv(struct ftvm_net_event *ev, void *buf, uint32_t cap)
{
    ftvm_hypercall3(FTVM_PORT_NET_RECV, (uint64_t)ev, (uint64_t)buf, cap);
}
static inline void ftvm_net_send(uint32_t conn, const void *data, uint32_t len)
{
    ftvm_hypercall3(FTVM_PORT_NET_SEND, conn, (uint64_t)data, len);
}
static inline void ftvm_net_close(uint32_t conn) { ftvm_hypercall3(FTVM_PORT_NET_CLOSE, conn, 0, 0); }
static inline uint32_t ftvm_net_status(void) { return ftvm_inl(FTVM_PORT_NET_STATUS); }
static inline uint32_t ftvm_disk_sectors(void) { return ftvm_inl(FTVM_PORT_DISK_SECTORS); }
/* Submit a request; req->status becomes PENDING, then the result (irq FTVM_IRQ_DISK). */
static inline void ftvm_disk_submit(struct ftvm_disk_req *req)
{
    ftvm_hypercall3(FTVM_PORT_DISK_SUBMIT, (uint64_t)req, 0, 0);
}

/* runtime.c */
typedef void (*ftvm_irq_handler)(unsigned vector);
void ftvm_set_irq_handler(ftvm_irq_handler h);
__attribute__((noreturn)) void ftvm_exit(int status);
void ftvm_putc(char c);
void ftvm_puts(const char *s);           /* no newline added */
void ftvm_put_u64(uint64_t v);
void ftvm_put_hex(uint64_t v);
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

#endif
