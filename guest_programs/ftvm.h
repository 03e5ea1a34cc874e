/* ftvm guest ABI v1: the interface between a guest program and the ftvm hypervisor.
 * See docs/guest-abi.md for the full description. Header-only helpers; the entry
 * point, the interrupt trampoline and a few libc basics live in runtime.c / crt0.S. */
#ifndef FTVM_H
#define FTVM_H

#include <stdint.h>
#include <stddef.h>

#define FTVM_ABI_VERSION 1

/* I/O ports */
#define FTVM_PORT_CONSOLE      0xE9   /* out: one console byte; in: reads 0xE9 */
#define FTVM_PORT_EXIT         0x501  /* out: end the guest; the byte is the exit status */
#define FTVM_PORT_IRQ_HANDLER  0x510  /* out: rdi = handler, rsi = return trampoline */
#define FTVM_PORT_IRQ_RETURN   0x511  /* out: return from the interrupt handler */
#define FTVM_PORT_TIMER        0x520  /* out (32-bit): timer period in microseconds, 0 = off */
#define FTVM_PORT_INPUT_STATUS 0x530  /* in (32-bit): bytes waiting (bits 0-15), end of input (bit 31) */
#define FTVM_PORT_INPUT_DATA   0x531  /* in (32-bit): next input byte, or 0xFFFFFFFF if none */
#define FTVM_PORT_RNG          0x540  /* in (32-bit): 32 random bits */

/* Interrupt vectors, passed to the handler as its argument */
#define FTVM_IRQ_TIMER 0
#define FTVM_IRQ_INPUT 1

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
/* Enable interrupts and wait for the next one (sti; hlt, as on hardware). */
static inline void ftvm_wait_irq(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
static inline uint32_t ftvm_rng32(void) { return ftvm_inl(FTVM_PORT_RNG); }
static inline void ftvm_timer_set_us(uint32_t period_us) { ftvm_outl(FTVM_PORT_TIMER, period_us); }
static inline uint32_t ftvm_input_status(void) { return ftvm_inl(FTVM_PORT_INPUT_STATUS); }
static inline int ftvm_input_byte(void)
{
    uint32_t v = ftvm_inl(FTVM_PORT_INPUT_DATA);
    return v == 0xFFFFFFFFu ? -1 : (int)v;
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
