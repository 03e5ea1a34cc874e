/* Host-side test driver for the kv server's portable core in guest_programs/kv/ (not
 * a guest program: tests/test_kv_core.py builds it with the host compiler). It
 * simulates the network and the disk devices and runs a script from stdin, one
 * command per line:
 *
 *   disk N                 a blank disk of N sectors (N = 0: no disk)
 *   load PATH / save PATH  the disk image from / to a file
 *   boot                   kv_start() (any requests still in flight are lost)
 *   open C | eof C | reset C     network events for connection C
 *   data C TEXT            a data event; TEXT has C escapes (\r \n \t \\ \xHH)
 *   datarep C N TEXT       TEXT repeated N times, as one data event
 *   round                  kv_disk_poll() + kv_round_end() (one main-loop turn)
 *   complete [N]           complete the oldest N (default: all) disk requests
 *   settle                 complete + round until nothing is left to do
 *   fault OP STATUS COUNT [SKIP]   OP read|write, STATUS eio|enospc: after SKIP
 *                          requests of that kind, COUNT of them fail (no data moves)
 *   crashat N [torn K]     the N-th completion from now does not happen: the machine
 *                          "crashes" (a write applies only its first K sectors) and
 *                          the core is abandoned until the next boot
 *   dump C                 print "OUT C CLOSED <escaped replies since the last dump>"
 *                          (CLOSED: 1 once the server closed the connection)
 *   stat                   print "STAT keys=.. live=.. logend=.. gen=.."
 *   pending                print "PENDING n"
 * Console output of the core goes to stdout as is ("kv: ..." lines). */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_core.h"

static unsigned char *disk;
static uint32_t nsectors;

#define MAXQ 256
static struct ftvm_disk_req *q[MAXQ];
static int qn;
static struct ftvm_disk_req *wreq_key[MAXQ];
static unsigned char *wreq_data[MAXQ];
static int fault_op, fault_status, fault_count, fault_skip;
static int crash_countdown = -1, crash_torn;
static jmp_buf crash_jmp;
static int alive;

#define MAXC 100000
static struct {
    unsigned char *buf;
    size_t len, cap;
    int closed;
} cap_out[MAXC];

void kvp_send(uint32_t conn, const void *data, uint32_t len)
{
    if (conn >= MAXC) return;
    if (cap_out[conn].closed) {
        printf("ERROR send after close on %u\n", conn);
        return;
    }
    if (cap_out[conn].len + len > cap_out[conn].cap) {
        size_t nc = (cap_out[conn].len + len) * 2;
        cap_out[conn].buf = realloc(cap_out[conn].buf, nc);
        cap_out[conn].cap = nc;
    }
    memcpy(cap_out[conn].buf + cap_out[conn].len, data, len);
    cap_out[conn].len += len;
}

void kvp_close(uint32_t conn)
{
    if (conn < MAXC) cap_out[conn].closed = 1;
}

uint32_t kvp_disk_sectors(void) { return nsectors; }

void kvp_disk_submit(struct ftvm_disk_req *r)
{
    if (r->op != FTVM_DISK_READ && r->op != FTVM_DISK_WRITE) { r->status = FTVM_DISK_EINVAL; return; }
    if (r->count < 1 || r->count > FTVM_DISK_MAX_SECTORS || r->lba + r->count > nsectors) {
        r->status = FTVM_DISK_EINVAL;
        return;
    }
    if (qn >= FTVM_DISK_MAX_INFLIGHT) { r->status = FTVM_DISK_EBUSY; return; }
    /* a write's data is copied at submit: keep a private copy in the request's shadow */
    r->status = FTVM_DISK_PENDING;
    q[qn++] = r;
    if (r->op == FTVM_DISK_WRITE) {
        size_t n = (size_t)r->count * FTVM_DISK_SECTOR;
        unsigned char *copy = malloc(n);
        memcpy(copy, (void *)(uintptr_t)r->buf, n);
        r->tag = 0;
        /* the copy waits in a side table keyed by the request */
        for (int i = 0; i < MAXQ; i++)
            if (!wreq_key[i]) { wreq_key[i] = r; wreq_data[i] = copy; break; }
    }
}

static unsigned char *take_copy(struct ftvm_disk_req *r)
{
    for (int i = 0; i < MAXQ; i++)
        if (wreq_key[i] == r) {
            unsigned char *d = wreq_data[i];
            wreq_key[i] = 0;
            wreq_data[i] = 0;
            return d;
        }
    return 0;
}

static void drop_all(void)
{
    for (int i = 0; i < qn; i++) free(take_copy(q[i]));
    qn = 0;
}

static int nth_read, nth_write;

/* Complete the oldest request. */
static void complete_one(void)
{
    if (!qn) return;
    struct ftvm_disk_req *r = q[0];
    memmove(q, q + 1, sizeof q[0] * (size_t)(qn - 1));
    qn--;
    unsigned char *copy = r->op == FTVM_DISK_WRITE ? take_copy(r) : 0;
    if (crash_countdown > 0 && --crash_countdown == 0) {
        crash_countdown = -1;
        if (copy && crash_torn) {
            uint32_t k = (uint32_t)crash_torn < r->count ? (uint32_t)crash_torn : r->count;
            memcpy(disk + r->lba * FTVM_DISK_SECTOR, copy, (size_t)k * FTVM_DISK_SECTOR);
        }
        free(copy);
        drop_all();
        alive = 0;
        printf("CRASHED\n");
        longjmp(crash_jmp, 1);
    }
    int *nth = r->op == FTVM_DISK_WRITE ? &nth_write : &nth_read;
    (*nth)++;
    uint32_t st = FTVM_DISK_OK;
    if (fault_count && (int)r->op == fault_op) {
        if (fault_skip) fault_skip--;
        else { st = (uint32_t)fault_status; fault_count--; }
    }
    if (st == FTVM_DISK_OK) {
        size_t off = r->lba * FTVM_DISK_SECTOR, n = (size_t)r->count * FTVM_DISK_SECTOR;
        if (r->op == FTVM_DISK_WRITE) memcpy(disk + off, copy, n);
        else memcpy((void *)(uintptr_t)r->buf, disk + off, n);
    }
    free(copy);
    r->status = st;
}

void kvp_wait_disk(void)
{
    if (!qn) {
        printf("ERROR kvp_wait_disk with nothing in flight\n");
        exit(99);
    }
    complete_one();
}

void kvp_puts(const char *s) { fputs(s, stdout); }

static uint32_t rng = 12345;
uint32_t kvp_rng32(void)
{
    rng = rng * 1103515245u + 12345u;
    return rng;
}

void kvp_fatal(const char *msg)
{
    fputs(msg, stdout);
    printf("FATAL\n");
    exit(3);
}

static size_t unescape(const char *s, unsigned char *out)
{
    size_t n = 0;
    while (*s) {
        if (*s == '\\' && s[1]) {
            s++;
            switch (*s) {
            case 'r': out[n++] = '\r'; s++; break;
            case 'n': out[n++] = '\n'; s++; break;
            case 't': out[n++] = '\t'; s++; break;
            case '0': out[n++] = 0; s++; break;
            case 'x': {
                unsigned v;
                sscanf(s + 1, "%2x", &v);
                out[n++] = (unsigned char)v;
                s += 3;
                break;
            }
            default: out[n++] = (unsigned char)*s++;
            }
        } else {
            out[n++] = (unsigned char)*s++;
        }
    }
    return n;
}

static void print_escaped(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c == '\r') fputs("\\r", stdout);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\\') fputs("\\\\", stdout);
        else if (c < 32 || c >= 127) printf("\\x%02x", c);
        else putchar(c);
    }
}

static void deliver(uint32_t conn, const unsigned char *p, size_t n)
{
    uint32_t cap;
    uint8_t *buf = kv_rx_buffer(&cap);
    do {
        size_t k = n < cap ? n : cap;
        struct ftvm_net_event ev = {FTVM_NET_DATA, conn, (uint32_t)k, 0};
        memcpy(buf, p, k);
        kv_net_event(&ev, buf);
        p += k;
        n -= k;
    } while (n);
}

static void ev_simple(uint32_t type, uint32_t conn)
{
    struct ftvm_net_event ev = {type, conn, 0, 0};
    kv_net_event(&ev, 0);
}

static void round_once(void)
{
    kv_disk_poll();
    kv_round_end();
}

int main(void)
{
    char *line = 0;
    size_t lcap = 0;
    ssize_t ll;
    setvbuf(stdout, 0, _IOFBF, 1 << 20);
    while ((ll = getline(&line, &lcap, stdin)) > 0) {
        if (line[ll - 1] == '\n') line[--ll] = 0;
        char cmd[32] = "";
        int off = 0;
        if (sscanf(line, "%31s %n", cmd, &off) < 1 || cmd[0] == '#') continue;
        char *rest = line + off;
        if (setjmp(crash_jmp)) continue;
        int need_alive = strcmp(cmd, "disk") && strcmp(cmd, "load") && strcmp(cmd, "save") &&
                         strcmp(cmd, "boot") && strcmp(cmd, "dump") && strcmp(cmd, "fault") &&
                         strcmp(cmd, "crashat") && strcmp(cmd, "pending");
        if (need_alive && !alive) {
            printf("ERROR %s: the server is not running\n", cmd);
            continue;
        }
        if (!strcmp(cmd, "disk")) {
            nsectors = (uint32_t)strtoul(rest, 0, 0);
            free(disk);
            disk = calloc((size_t)nsectors + 1, FTVM_DISK_SECTOR);
        } else if (!strcmp(cmd, "load")) {
            FILE *f = fopen(rest, "rb");
            if (!f) { printf("ERROR cannot open %s\n", rest); exit(2); }
            fseek(f, 0, SEEK_END);
            long sz = ftell(f);
            fseek(f, 0, SEEK_SET);
            nsectors = (uint32_t)(sz / FTVM_DISK_SECTOR);
            free(disk);
            disk = calloc((size_t)nsectors + 1, FTVM_DISK_SECTOR);
            if (fread(disk, 1, (size_t)sz, f) != (size_t)sz) exit(2);
            fclose(f);
        } else if (!strcmp(cmd, "save")) {
            FILE *f = fopen(rest, "wb");
            fwrite(disk, FTVM_DISK_SECTOR, nsectors, f);
            fclose(f);
        } else if (!strcmp(cmd, "boot")) {
            drop_all();
            for (int i = 0; i < MAXC; i++) {
                free(cap_out[i].buf);
                cap_out[i].buf = 0;
                cap_out[i].len = cap_out[i].cap = 0;
                cap_out[i].closed = 0;
            }
            alive = 1;
            kv_start();
        } else if (!strcmp(cmd, "open")) {
            ev_simple(FTVM_NET_OPEN, (uint32_t)atoi(rest));
        } else if (!strcmp(cmd, "eof")) {
            ev_simple(FTVM_NET_CLOSE, (uint32_t)atoi(rest));
        } else if (!strcmp(cmd, "reset")) {
            ev_simple(FTVM_NET_RESET, (uint32_t)atoi(rest));
        } else if (!strcmp(cmd, "data") || !strcmp(cmd, "datarep")) {
            char *e;
            uint32_t conn = (uint32_t)strtoul(rest, &e, 10);
            size_t rep = 1;
            if (!strcmp(cmd, "datarep")) rep = strtoul(e, &e, 10);
            if (*e == ' ') e++;
            unsigned char *one = malloc(strlen(e) + 1);
            size_t n = unescape(e, one);
            unsigned char *all = malloc(n * rep + 1);
            for (size_t i = 0; i < rep; i++) memcpy(all + i * n, one, n);
            deliver(conn, all, n * rep);
            free(one);
            free(all);
        } else if (!strcmp(cmd, "round")) {
            round_once();
        } else if (!strcmp(cmd, "complete")) {
            int n = *rest ? atoi(rest) : qn;
            while (n-- > 0 && qn) complete_one();
        } else if (!strcmp(cmd, "settle")) {
            int guard = 0;
            do {
                while (qn) complete_one();
                round_once();
            } while ((qn || kv_busy()) && ++guard < 100000);
            if (guard >= 100000) printf("ERROR settle does not settle\n");
        } else if (!strcmp(cmd, "fault")) {
            char op[16], st[16];
            int count = 1, skip = 0;
            sscanf(rest, "%15s %15s %d %d", op, st, &count, &skip);
            fault_op = !strcmp(op, "read") ? FTVM_DISK_READ : FTVM_DISK_WRITE;
            fault_status = !strcmp(st, "enospc") ? FTVM_DISK_ENOSPC : FTVM_DISK_EIO;
            fault_count = count;
            fault_skip = skip;
        } else if (!strcmp(cmd, "crashat")) {
            int n = 1, k = 0;
            sscanf(rest, "%d torn %d", &n, &k);
            crash_countdown = n;
            crash_torn = k;
        } else if (!strcmp(cmd, "dump")) {
            uint32_t c = (uint32_t)atoi(rest);
            if (c >= MAXC) { printf("ERROR connection id %u too large\n", c); continue; }
            printf("OUT %u %d ", c, cap_out[c].closed);
            print_escaped(cap_out[c].buf, cap_out[c].len);
            cap_out[c].len = 0;
            printf("\n");
        } else if (!strcmp(cmd, "stat")) {
            printf("STAT keys=%llu live=%llu logend=%llu gen=%u\n", (unsigned long long)kv_dbsize(),
                   (unsigned long long)kv_live_bytes(), (unsigned long long)kv_log_end(), kv_generation());
        } else if (!strcmp(cmd, "pending")) {
            printf("PENDING %d\n", qn);
        } else {
            printf("ERROR unknown script command %s\n", cmd);
            exit(2);
        }
    }
    fflush(stdout);
    return 0;
}
