/* netecho: a tiny network guest for tests. Each connection's bytes come back
 * upper-cased, line by line, prefixed with the connection id and a per-connection
 * line number ("3:1 HELLO\n"). "quit" closes the connection; "exit" ends the guest
 * (status 0) after printing how many connections and lines it served. */
#include "ftvm.h"

#define MAXC 1024
static volatile int net_pending;
static char line[MAXC][256];
static uint32_t len[MAXC];
static uint64_t nlines[MAXC];
static uint64_t conns, total_lines;
static char buf[65536];

static void on_irq(unsigned v)
{
    if (v == FTVM_IRQ_NET)
        net_pending = 1;
}

static int fmt_u64(char *p, uint64_t v)
{
    char t[24];
    int n = 0, k = 0;
    do { t[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) p[k++] = t[--n];
    return k;
}

static int handle_line(uint32_t c)
{
    char *l = line[c % MAXC];
    uint32_t n = len[c % MAXC];
    len[c % MAXC] = 0;
    if (n == 4 && !memcmp(l, "quit", 4)) {
        ftvm_net_close(c);
        return 0;
    }
    if (n == 4 && !memcmp(l, "exit", 4))
        return 1;
    char out[320];
    int k = fmt_u64(out, c);
    out[k++] = ':';
    k += fmt_u64(out + k, ++nlines[c % MAXC]);
    out[k++] = ' ';
    for (uint32_t i = 0; i < n; i++)
        out[k++] = (l[i] >= 'a' && l[i] <= 'z') ? (char)(l[i] - 32) : l[i];
    out[k++] = '\n';
    ftvm_net_send(c, out, (uint32_t)k);
    total_lines++;
    return 0;
}

int main(void)
{
    ftvm_set_irq_handler(on_irq);
    ftvm_puts("netecho: ready\n");
    struct ftvm_net_event ev;
    for (;;) {
        ftvm_irq_disable();
        while (!net_pending && !ftvm_net_status()) {
            ftvm_wait_irq();
            ftvm_irq_disable(); /* re-check with interrupts masked, or a wake-up is lost */
        }
        net_pending = 0;
        ftvm_irq_enable();
        for (;;) {
            ftvm_net_recv(&ev, buf, sizeof buf);
            if (ev.type == FTVM_NET_NONE)
                break;
            uint32_t c = ev.conn;
            if (ev.type == FTVM_NET_OPEN) {
                conns++;
                len[c % MAXC] = 0;
                nlines[c % MAXC] = 0;
            } else if (ev.type == FTVM_NET_DATA) {
                for (uint32_t i = 0; i < ev.len; i++) {
                    char ch = buf[i];
                    if (ch == '\n') {
                        if (handle_line(c)) {
                            ftvm_puts("netecho: ");
                            ftvm_put_u64(conns);
                            ftvm_puts(" connections, ");
                            ftvm_put_u64(total_lines);
                            ftvm_puts(" lines\n");
                            return 0;
                        }
                    } else if (ch != '\r' && len[c % MAXC] < sizeof line[0]) {
                        line[c % MAXC][len[c % MAXC]++] = ch;
                    }
                }
            } else if (ev.type == FTVM_NET_CLOSE) {
                ftvm_net_close(c);
            }
        }
    }
}
