/* kv/conn.c: connections and the global state of the kv server's portable core (see
 * kv_internal.h): network events, each client's buffered input run through the parser
 * and the commands, replies handed on or held until durable, and the end of a
 * main-loop round (resume unblocked clients, compact, start the next log write). */
#include "kv_internal.h"

/* ---------------------------------------------------------------------------------
 * connections and global state
 * --------------------------------------------------------------------------------- */
#define RX_SIZE (128u << 10)

struct kv_state K;

static struct conn conns[KV_MAX_CONNS];
static uint8_t rxbuf[RX_SIZE];

uint8_t *kv_rx_buffer(uint32_t *cap)
{
    *cap = RX_SIZE;
    return rxbuf;
}

static void l_push(struct clist *l, struct conn *c)
{
    c->lnext = 0;
    c->lprev = l->tail;
    if (l->tail) l->tail->lnext = c;
    else l->head = c;
    l->tail = c;
}

static void l_del(struct clist *l, struct conn *c)
{
    if (c->lprev) c->lprev->lnext = c->lnext;
    else l->head = c->lnext;
    if (c->lnext) c->lnext->lprev = c->lprev;
    else l->tail = c->lprev;
    c->lprev = c->lnext = 0;
}

static struct clist *list_of(struct conn *c)
{
    switch (c->state) {
    case CS_WAITING: return &K.waitl;
    case CS_BLOCKED: return &K.blkl;
    case CS_READY: return &K.readyl;
    }
    return 0;
}

void set_state(struct conn *c, int st)
{
    struct clist *l = list_of(c);
    if (l) l_del(l, c);
    c->state = (uint8_t)st;
    l = list_of(c);
    if (l) l_push(l, c);
}

static inline uint32_t chash_of(uint32_t id) { return (id * 2654435761u) >> 20; }

static struct conn *conn_find(uint32_t id)
{
    for (struct conn *c = K.chash[chash_of(id) & (CHASH - 1)]; c; c = c->hnext)
        if (c->id == id) return c;
    return 0;
}

static struct conn *conn_new(uint32_t id)
{
    struct conn *c = K.cfree;
    if (!c) return 0;
    K.cfree = c->hnext;
    kzero(c, sizeof *c);
    c->id = id;
    uint32_t h = chash_of(id) & (CHASH - 1);
    c->hnext = K.chash[h];
    K.chash[h] = c;
    K.nconns++;
    K.nconn_total++;
    return c;
}

static void held_free(struct conn *c)
{
    if (c->held && c->held != c->held_small) a_release(c->held);
    c->held = 0;
    c->held_len = c->held_mark = 0;
    c->held_err = 0;
}

static void conn_free(struct conn *c)
{
    set_state(c, CS_IDLE);
    held_free(c);
    a_release(c->in);
    struct conn **p = &K.chash[chash_of(c->id) & (CHASH - 1)];
    while (*p != c) p = &(*p)->hnext;
    *p = c->hnext;
    c->id = 0;
    c->hnext = K.cfree;
    K.cfree = c;
    K.nconns--;
    if (K.cur == c) K.cur = 0;
}

void conns_init(void)
{
    kzero(&K, sizeof K);
    K.cfree = 0;
    for (int i = KV_MAX_CONNS - 1; i >= 0; i--) {
        conns[i].id = 0;
        conns[i].hnext = K.cfree;
        K.cfree = &conns[i];
    }
}

/* ---------------------------------------------------------------------------------
 * connection processing
 * --------------------------------------------------------------------------------- */
/* Run the complete commands in p[0..n) for K.cur; returns the bytes consumed. */
static uint32_t process(uint8_t *p, uint32_t n)
{
    struct conn *c = K.cur;
    uint32_t pos = 0;
    while (pos < n && c->state == CS_IDLE && !(c->flags & F_CLOSING)) {
        long r = parse_command(p + pos, n - pos);
        if (r == 0) break;
        if (r < 0) {
            r_str("-ERR Protocol error: ");
            r_str(perr);
            r_str("\r\n");
            c->flags |= F_CLOSING;
            return n;
        }
        if (nargs == 0) {
            pos += (uint32_t)r;
            continue;
        }
        if (dispatch(nargs)) {
            set_state(c, CS_BLOCKED);
            break;
        }
        K.ncmds++;
        pos += (uint32_t)r;
    }
    return pos;
}

static int in_append(struct conn *c, const uint8_t *p, uint32_t n)
{
    uint64_t need = (uint64_t)c->in_len + n;
    if (need > KV_CONN_IN_MAX) return 0;
    if (need > c->in_cap) {
        uint64_t cap = (uint64_t)c->in_cap * 2;
        if (cap < 4096) cap = 4096;
        if (cap < need) cap = need;
        if (cap > KV_CONN_IN_MAX) cap = KV_CONN_IN_MAX;
        uint8_t *b = a_alloc(cap);
        if (!b && cap > need) b = a_alloc(cap = need);
        if (!b) return 0;
        kcpy(b, c->in, c->in_len);
        a_release(c->in);
        c->in = b;
        c->in_cap = (uint32_t)cap;
    }
    kcpy(c->in + c->in_len, p, n);
    c->in_len = (uint32_t)need;
    return 1;
}

static void in_consume(struct conn *c, uint32_t used)
{
    if (used >= c->in_len) {
        c->in_len = 0;
        if (c->in_cap > (64u << 10)) {
            a_release(c->in);
            c->in = 0;
            c->in_cap = 0;
        }
    } else if (used) {
        kmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
    }
}

/* After processing: hand the replies on (or hold them), close if it is time. */
static void settle(struct conn *c)
{
    if (K.olen) {
        if (c->state == CS_WAITING) {
            uint8_t *h = c->held_small;
            if (K.olen > HELD_SMALL) h = a_alloc(K.olen);
            if (!h) { /* no memory to hold the replies: give up on this client */
                K.olen = 0;
                kvp_close(c->id);
                conn_free(c);
                return;
            }
            kcpy(h, obuf, K.olen);
            c->held = h;
            c->held_len = K.olen;
            c->held_mark = K.omark;
            K.olen = 0;
        } else {
            out_flush();
        }
    }
    if (c->state == CS_IDLE && (c->flags & (F_CLOSING | F_PEER_CLOSED))) {
        kvp_close(c->id);
        conn_free(c);
    }
}

static void run_conn(struct conn *c)
{
    K.cur = c;
    K.olen = 0;
    if (c->flags & F_CLOSING) c->in_len = 0;
    if (c->in_len) in_consume(c, process(c->in, c->in_len));
    settle(c);
    K.cur = 0;
}

static void on_data(struct conn *c, uint8_t *data, uint32_t len)
{
    if (c->state != CS_IDLE || c->in_len) {
        if (!in_append(c, data, len)) {
            c->flags |= F_CLOSING;
            c->in_len = 0;
            if (c->state == CS_IDLE) {
                K.cur = c;
                K.olen = 0;
                r_str("-ERR Protocol error: query buffer limit exceeded\r\n");
                settle(c);
                K.cur = 0;
            }
            return;
        }
        if (c->state == CS_IDLE) run_conn(c);
        return;
    }
    K.cur = c;
    K.olen = 0;
    uint32_t used = process(data, len);
    if (used < len && !(c->flags & F_CLOSING) && !in_append(c, data + used, len - used)) {
        r_str("-ERR Protocol error: query buffer limit exceeded\r\n");
        c->flags |= F_CLOSING;
        if (c->state == CS_BLOCKED) set_state(c, CS_IDLE);
    }
    settle(c);
    K.cur = 0;
}

void kv_net_event(const struct ftvm_net_event *ev, uint8_t *data)
{
    struct conn *c = conn_find(ev->conn);
    switch (ev->type) {
    case FTVM_NET_OPEN:
        if (c || !ev->conn) return;
        if (!conn_new(ev->conn)) {
            static const char m[] = "-ERR max number of clients reached\r\n";
            kvp_send(ev->conn, m, sizeof m - 1);
            kvp_close(ev->conn);
        }
        return;
    case FTVM_NET_DATA:
        if (c && !(c->flags & F_CLOSING) && ev->len) on_data(c, data, ev->len);
        return;
    case FTVM_NET_CLOSE:
        if (!c) return;
        c->flags |= F_PEER_CLOSED;
        if (c->state == CS_IDLE) {
            K.cur = c;
            K.olen = 0;
            settle(c);
            K.cur = 0;
        }
        return;
    case FTVM_NET_RESET:
        if (c) conn_free(c);
        return;
    }
}

static void run_ready(void)
{
    struct conn *c;
    while ((c = K.readyl.head) != 0) {
        set_state(c, CS_IDLE);
        if (c->held_len) {
            if (c->held_err) {
                if (c->held_mark) kvp_send(c->id, c->held, c->held_mark);
                const char *m = disk_errmsg(c->held_err);
                kvp_send(c->id, m, (uint32_t)kstrlen(m));
            } else {
                kvp_send(c->id, c->held, c->held_len);
            }
        }
        held_free(c);
        run_conn(c);
    }
}

void kv_round_end(void)
{
    for (int guard = 0; guard < 8; guard++) {
        run_ready();
        if (!K.disk) break;
        uint64_t end = K.lb_off + K.lb_len;
        if (K.want_compact ||
            (K.backoff == 0 && end >= K.region_bytes / 2 && T.live * 2 <= end && T.live + TAIL_RESERVE + K.region_bytes / 8 <= K.region_bytes))
            compact();
        if (!K.readyl.head) break;
    }
    log_kick();
}
