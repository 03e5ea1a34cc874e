/* ticker: counts periodic timer interrupts (1 ms) while it computes, and stops after
 * 50 ticks. How much work fits between ticks depends on the host; the log makes the
 * replay repeat it exactly. */
#include "ftvm.h"

static volatile uint64_t ticks;

static void on_irq(unsigned vector)
{
    if (vector == FTVM_IRQ_TIMER)
        ticks++;
}

int main(void)
{
    ftvm_set_irq_handler(on_irq);
    ftvm_timer_set_us(1000);
    ftvm_irq_enable();
    uint64_t x = 88172645463325252ull, iters = 0;
    while (ticks < 50) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        iters++;
    }
    ftvm_timer_set_us(0);
    ftvm_puts("ticker: ticks=");
    ftvm_put_u64(ticks);
    ftvm_puts(" iterations=");
    ftvm_put_u64(iters);
    ftvm_puts(" state=");
    ftvm_put_hex(x);
    ftvm_putc('\n');
    return 0;
}
