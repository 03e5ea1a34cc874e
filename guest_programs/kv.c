/* kv: a Redis-protocol key-value server for ftvm (guest ABI v2). This file is the
 * device glue: the interrupt handler, the main loop and the kvp_* hooks of the
 * portable core (the files in kv/, interface kv_core.h, where the protocol, the table
 * and the on-disk format live and are documented).
 *
 * Connections arrive as network events (irq 2); the log is written to the virtual
 * disk (irq 3). The handler only sets flags; the main loop takes every waiting
 * network event, lets the core run the commands, then starts the next log write, and
 * sleeps with `sti; hlt` when there is nothing left to do. */
#include "ftvm.h"
#include "kv_core.h"

static volatile int net_pending, disk_pending;

static void on_irq(unsigned vector)
{
    if (vector == FTVM_IRQ_NET)
        net_pending = 1;
    else if (vector == FTVM_IRQ_DISK)
        disk_pending = 1;
}

void kvp_send(uint32_t conn, const void *data, uint32_t len)
{
    if (len)
        ftvm_net_send(conn, data, len);
}
void kvp_close(uint32_t conn) { ftvm_net_close(conn); }
uint32_t kvp_disk_sectors(void) { return ftvm_disk_sectors(); }
void kvp_disk_submit(struct ftvm_disk_req *req) { ftvm_disk_submit(req); }
void kvp_puts(const char *s) { ftvm_puts(s); }
uint32_t kvp_rng32(void) { return ftvm_rng32(); }

void kvp_fatal(const char *msg)
{
    ftvm_puts(msg);
    ftvm_exit(1);
}

/* Sleep until a disk completion interrupt has come (the caller re-checks its
 * request's status: a flag left over from an earlier completion only costs a loop). */
void kvp_wait_disk(void)
{
    ftvm_irq_disable();
    while (!disk_pending) {
        ftvm_wait_irq();
        ftvm_irq_disable();
    }
    disk_pending = 0;
    ftvm_irq_enable();
}

int main(void)
{
    static struct ftvm_net_event ev;
    ftvm_set_irq_handler(on_irq);
    /* Interrupts stay masked during start-up except while waiting for the disk;
     * network events queue up meanwhile. */
    kv_start();
    uint32_t cap;
    uint8_t *buf = kv_rx_buffer(&cap);
    net_pending = 1; /* clients may have connected during start-up */
    for (;;) {
        ftvm_irq_disable();
        while (!net_pending && !disk_pending && !kv_busy()) {
            ftvm_wait_irq(); /* sti; hlt */
            ftvm_irq_disable();
        }
        ftvm_irq_enable();
        disk_pending = 0;
        kv_disk_poll();
        if (net_pending) {
            net_pending = 0;
            for (;;) {
                ftvm_net_recv(&ev, buf, cap);
                if (ev.type == FTVM_NET_NONE)
                    break;
                kv_net_event(&ev, buf);
                if (!ev.more)
                    break;
            }
        }
        kv_round_end();
    }
}
