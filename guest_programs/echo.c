/* echo: input bytes arrive as asynchronous interrupts. The handler moves them from the
 * input device into a ring; the main loop sleeps in HLT, then echoes each whole line
 * upper-cased and numbered. At end of input it prints a summary and exits 0. */
#include "ftvm.h"

#define RING 4096
static volatile unsigned char ring[RING];
static volatile uint32_t head, tail; /* head: written by the handler */
static volatile int eof;
static volatile uint64_t irqs;

static void on_irq(unsigned vector)
{
    if (vector != FTVM_IRQ_INPUT)
        return;
    irqs++;
    for (;;) {
        int c = ftvm_input_byte();
        if (c < 0)
            break;
        if (head - tail < RING) {
            ring[head % RING] = (unsigned char)c;
            head++;
        }
    }
    if (ftvm_input_status() & FTVM_INPUT_EOF)
        eof = 1;
}

static char line[1024];
static uint32_t len;
static uint64_t lines, bytes;

static void flush_line(void)
{
    lines++;
    ftvm_puts("echo[");
    ftvm_put_u64(lines);
    ftvm_puts("]: ");
    for (uint32_t i = 0; i < len; i++) {
        char c = line[i];
        ftvm_putc(c >= 'a' && c <= 'z' ? (char)(c - 32) : c);
    }
    ftvm_putc('\n');
    len = 0;
}

int main(void)
{
    ftvm_set_irq_handler(on_irq);
    ftvm_puts("echo: ready\n");
    for (;;) {
        ftvm_irq_disable();
        while (tail == head && !eof) {
            ftvm_wait_irq(); /* sti; hlt: wakes on the next interrupt */
            ftvm_irq_disable(); /* re-check with interrupts masked, or a wake-up is lost */
        }
        ftvm_irq_enable();
        while (tail != head) {
            char c = (char)ring[tail % RING];
            tail++;
            bytes++;
            if (c == '\n')
                flush_line();
            else if (len < sizeof line)
                line[len++] = c;
        }
        if (eof && tail == head)
            break;
    }
    if (len)
        flush_line();
    ftvm_puts("echo: ");
    ftvm_put_u64(lines);
    ftvm_puts(" lines, ");
    ftvm_put_u64(bytes);
    ftvm_puts(" bytes\n");
    return 0;
}
