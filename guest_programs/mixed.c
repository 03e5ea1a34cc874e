/* mixed: every source of nondeterminism at once, for the determinism tests. Input bytes
 * (interrupts), timer ticks (interrupts), RDTSC and random numbers all feed one hash. */
#include "ftvm.h"

#define RING 4096
static volatile unsigned char ring[RING];
static volatile uint32_t head, tail;
static volatile int eof;
static volatile uint64_t ticks;

static void on_irq(unsigned vector)
{
    if (vector == FTVM_IRQ_TIMER) {
        ticks++;
        return;
    }
    for (int c; (c = ftvm_input_byte()) >= 0;)
        if (head - tail < RING)
            ring[head++ % RING] = (unsigned char)c;
    if (ftvm_input_status() & FTVM_INPUT_EOF)
        eof = 1;
}

int main(void)
{
    uint64_t h = 1469598103934665603ull, x = 0x2545F4914F6CDD1Dull, n = 0;
    ftvm_set_irq_handler(on_irq);
    ftvm_timer_set_us(1000);
    for (;;) {
        ftvm_irq_disable();
        while (tail == head && !eof) {
            ftvm_wait_irq();
            ftvm_irq_disable();
        }
        ftvm_irq_enable();
        while (tail != head) {
            unsigned char c = ring[tail++ % RING];
            for (int k = 0; k < 300; k++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            h = (h ^ c ^ (ftvm_rdtsc() & 0xff) ^ ftvm_rng32() ^ x) * 1099511628211ull;
            n++;
        }
        if (eof && tail == head)
            break;
    }
    ftvm_timer_set_us(0);
    ftvm_puts("mixed: bytes=");
    ftvm_put_u64(n);
    ftvm_puts(" ticks=");
    ftvm_put_u64(ticks);
    ftvm_puts(" hash=");
    ftvm_put_hex(h);
    ftvm_putc('\n');
    return 0;
}
