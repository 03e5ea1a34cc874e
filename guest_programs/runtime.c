/* The ftvm guest runtime: console output, exit, interrupt registration and the few
 * libc functions that gcc may call on its own. */
#include "ftvm.h"

extern void ftvm_irq_trampoline(void);

void ftvm_set_irq_handler(ftvm_irq_handler h)
{
    __asm__ volatile("outb %%al, %%dx" ::"a"(0), "d"(FTVM_PORT_IRQ_HANDLER), "D"(h),
                     "S"(ftvm_irq_trampoline)
                     : "memory");
}

void ftvm_exit(int status)
{
    ftvm_outb(FTVM_PORT_EXIT, (uint8_t)status);
    for (;;)
        __asm__ volatile("" ::: "memory");
}

void ftvm_putc(char c) { ftvm_outb(FTVM_PORT_CONSOLE, (uint8_t)c); }

void ftvm_puts(const char *s)
{
    while (*s)
        ftvm_putc(*s++);
}

void ftvm_put_u64(uint64_t v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    ftvm_puts(buf + i);
}

void ftvm_put_hex(uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char buf[19];
    int i = 18;
    buf[i] = 0;
    do {
        buf[--i] = digits[v & 15];
        v >>= 4;
    } while (v);
    buf[--i] = 'x';
    buf[--i] = '0';
    ftvm_puts(buf + i);
}

void *memset(void *d, int c, size_t n)
{
    unsigned char *p = d;
    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    unsigned char *p = d;
    const unsigned char *q = s;
    if (p < q)
        while (n--)
            *p++ = *q++;
    else
        while (n--)
            p[n] = q[n];
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}
