/* kv/resp.c: replies and RESP parsing in the kv server's portable core (see
 * kv_internal.h). Replies are built in obuf for the connection being served (K.cur);
 * the parser reads one command (multibulk or inline) into args/nargs. */
#include "kv_internal.h"

/* ---------------------------------------------------------------------------------
 * replies (into obuf, owned by K.cur)
 * --------------------------------------------------------------------------------- */
#define BIG_REPLY (16u << 10)      /* bulk replies longer than this are sent directly */

uint8_t obuf[OBUF_SIZE];

void out_flush(void)
{
    if (K.olen && K.cur) kvp_send(K.cur->id, obuf, K.olen);
    K.olen = 0;
}

void r_raw(const void *p, uint32_t n)
{
    if (K.olen + n > OBUF_SIZE) out_flush();
    if (n > OBUF_SIZE) { /* cannot happen for the replies we build; be safe */
        kvp_send(K.cur->id, p, n);
        return;
    }
    kcpy(obuf + K.olen, p, n);
    K.olen += n;
}

void r_str(const char *s) { r_raw(s, (uint32_t)kstrlen(s)); }

uint32_t fmt_u64(char *b, uint64_t v)
{
    char t[24];
    uint32_t n = 0, i = 0;
    do { t[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) b[i++] = t[--n];
    return i;
}

uint32_t fmt_i64(char *b, int64_t v)
{
    if (v < 0) {
        b[0] = '-';
        return 1 + fmt_u64(b + 1, (uint64_t)0 - (uint64_t)v);
    }
    return fmt_u64(b, (uint64_t)v);
}

static void r_prefixed(char c, int64_t v)
{
    char b[32];
    b[0] = c;
    uint32_t n = 1 + fmt_i64(b + 1, v);
    b[n++] = '\r';
    b[n++] = '\n';
    r_raw(b, n);
}

void r_int(int64_t v) { r_prefixed(':', v); }
void r_arr(int64_t n) { r_prefixed('*', n); }
void r_nil(void) { r_str(K.cur->resp3 ? "_\r\n" : "$-1\r\n"); }
void r_map(int64_t n)
{
    if (K.cur->resp3) r_prefixed('%', n);
    else r_prefixed('*', 2 * n);
}
void r_ok(void) { r_str("+OK\r\n"); }

void r_bulk(const uint8_t *p, uint32_t n)
{
    r_prefixed('$', n);
    if (n > BIG_REPLY) {
        out_flush();
        kvp_send(K.cur->id, p, n);
    } else {
        r_raw(p, n);
    }
    r_raw("\r\n", 2);
}

void r_cstr_bulk(const char *s) { r_bulk((const uint8_t *)s, (uint32_t)kstrlen(s)); }

/* "-ERR <a><name><b>\r\n" with the name sanitised and shortened */
void r_err3(const char *a, const uint8_t *name, uint32_t n, const char *b)
{
    char t[160];
    uint32_t k = 0;
    if (n > 128) n = 128;
    for (uint32_t i = 0; i < n; i++) {
        char ch = (char)name[i];
        t[k++] = (ch == '\r' || ch == '\n') ? ' ' : ch;
    }
    r_str(a);
    r_raw(t, k);
    r_str(b);
}

void r_lower_name(const char *a, const uint8_t *name, uint32_t n, const char *b)
{
    char t[160];
    if (n > 128) n = 128;
    for (uint32_t i = 0; i < n; i++) t[i] = lower((char)name[i]);
    r_err3(a, (const uint8_t *)t, n, b);
}

void r_arity(const struct kv_arg *name)
{
    r_lower_name("-ERR wrong number of arguments for '", name->p, name->n, "' command\r\n");
}

const char E_NOTINT[] = "-ERR value is not an integer or out of range\r\n";
const char E_SYNTAX[] = "-ERR syntax error\r\n";
const char E_OOM[] = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";
const char E_TOOBIG[] = "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n";
const char E_LOGFULL[] = "-ERR persistence log is full: the disk is too small for the data set\r\n";

const char *disk_errmsg(uint32_t st)
{
    switch (st) {
    case FTVM_DISK_EIO: return "-ERR disk write failed: I/O error\r\n";
    case FTVM_DISK_ENOSPC: return "-ERR disk write failed: no space left on device\r\n";
    case FTVM_DISK_EINVAL: return "-ERR disk write failed: invalid request\r\n";
    case FTVM_DISK_EBUSY: return "-ERR disk write failed: device busy\r\n";
    }
    return "-ERR disk write failed: unknown error\r\n";
}

/* ---------------------------------------------------------------------------------
 * RESP parsing
 * --------------------------------------------------------------------------------- */
struct kv_arg args[KV_MAX_ARGS];
uint32_t nargs;
const char *perr;
static char perr_buf[64];
static uint8_t inl_buf[KV_MAX_INLINE];

int str2ll(const uint8_t *s, uint32_t n, int64_t *out)
{
    if (n == 0 || n > 20) return 0;
    if (n == 1 && s[0] == '0') { *out = 0; return 1; }
    uint32_t i = 0;
    int neg = 0;
    if (s[0] == '-') {
        neg = 1;
        i = 1;
        if (n == 1) return 0;
    }
    if (s[i] < '1' || s[i] > '9') return 0;
    uint64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > 1844674407370955161ull) return 0;
        v *= 10;
        if (v > ~0ull - d) return 0;
        v += d;
    }
    if (neg) {
        if (v > (1ull << 63)) return 0;
        *out = (int64_t)(0 - v);
    } else {
        if (v > (uint64_t)INT64_MAX) return 0;
        *out = (int64_t)v;
    }
    return 1;
}

static long find_byte(const uint8_t *p, uint32_t from, uint32_t to, uint8_t ch)
{
    for (uint32_t i = from; i < to; i++)
        if (p[i] == ch) return (long)i;
    return -1;
}

#define P_ERR(msg) do { perr = (msg); return -1; } while (0)

static long parse_multibulk(const uint8_t *p, uint32_t n)
{
    uint32_t lim = n < KV_MAX_INLINE ? n : KV_MAX_INLINE;
    long cr = find_byte(p, 1, lim, '\r');
    if (cr < 0) {
        if (n > KV_MAX_INLINE) P_ERR("too big mbulk count string");
        return 0;
    }
    if ((uint32_t)cr + 1 >= n) return 0;
    int64_t cnt;
    if (p[cr + 1] != '\n' || !str2ll(p + 1, (uint32_t)cr - 1, &cnt) || cnt > KV_MAX_ARGS)
        P_ERR("invalid multibulk length");
    uint64_t pos = (uint64_t)cr + 2;
    if (cnt <= 0) {
        nargs = 0;
        return (long)pos;
    }
    for (int64_t a = 0; a < cnt; a++) {
        if (pos >= n) return 0;
        if (p[pos] != '$') {
            const char *m = "expected '$', got '";
            uint32_t k = 0;
            while (*m) perr_buf[k++] = *m++;
            perr_buf[k++] = (p[pos] >= 32 && p[pos] < 127) ? (char)p[pos] : '?';
            perr_buf[k++] = '\'';
            perr_buf[k] = 0;
            P_ERR(perr_buf);
        }
        uint32_t lim2 = (uint32_t)(pos + 1 + 24 < n ? pos + 1 + 24 : n);
        long j = find_byte(p, (uint32_t)pos + 1, lim2, '\r');
        if (j < 0) {
            if (lim2 < n) P_ERR("invalid bulk length");
            return 0;
        }
        if ((uint32_t)j + 1 >= n) return 0;
        int64_t len;
        if (p[j + 1] != '\n' || !str2ll(p + pos + 1, (uint32_t)(j - (long)pos - 1), &len) || len < 0 ||
            len > KV_MAX_BULK)
            P_ERR("invalid bulk length");
        pos = (uint64_t)j + 2;
        if (pos + (uint64_t)len + 2 > n) return 0;
        if (p[pos + (uint64_t)len] != '\r' || p[pos + (uint64_t)len + 1] != '\n')
            P_ERR("bulk string not terminated by CRLF");
        args[a].p = p + pos;
        args[a].n = (uint32_t)len;
        pos += (uint64_t)len + 2;
    }
    nargs = (uint32_t)cnt;
    return (long)pos;
}

static int is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }
static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Inline command: words split on white space; "double" (with \n \r \t \b \a \\ \" \xHH
 * escapes) and 'single' quotes as redis-cli and Redis itself treat them. The input is
 * left untouched (unquoted words are built in inl_buf). */
static long parse_inline(const uint8_t *p, uint32_t n)
{
    uint32_t lim = n < KV_MAX_INLINE ? n : KV_MAX_INLINE;
    long nl = find_byte(p, 0, lim, '\n');
    if (nl < 0) {
        if (n >= KV_MAX_INLINE) P_ERR("too big inline request");
        return 0;
    }
    uint32_t end = (uint32_t)nl, i = 0, w = 0;
    if (end && p[end - 1] == '\r') end--;
    nargs = 0;
    for (;;) {
        while (i < end && is_space(p[i])) i++;
        if (i >= end) break;
        if (nargs >= KV_MAX_ARGS) P_ERR("too many arguments");
        uint32_t start = w;
        int inq = 0, insq = 0;
        for (;;) {
            if (inq) {
                if (i >= end) P_ERR("unbalanced quotes in request");
                if (p[i] == '\\' && i + 3 < end && p[i + 1] == 'x' && hexval(p[i + 2]) >= 0 && hexval(p[i + 3]) >= 0) {
                    inl_buf[w++] = (uint8_t)(hexval(p[i + 2]) * 16 + hexval(p[i + 3]));
                    i += 4;
                } else if (p[i] == '\\' && i + 1 < end) {
                    uint8_t c = p[i + 1];
                    inl_buf[w++] = c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : c == 'b' ? '\b' : c == 'a' ? '\a' : c;
                    i += 2;
                } else if (p[i] == '"') {
                    if (i + 1 < end && !is_space(p[i + 1])) P_ERR("unbalanced quotes in request");
                    i++;
                    break;
                } else {
                    inl_buf[w++] = p[i++];
                }
            } else if (insq) {
                if (i >= end) P_ERR("unbalanced quotes in request");
                if (p[i] == '\\' && i + 1 < end && p[i + 1] == '\'') {
                    inl_buf[w++] = '\'';
                    i += 2;
                } else if (p[i] == '\'') {
                    if (i + 1 < end && !is_space(p[i + 1])) P_ERR("unbalanced quotes in request");
                    i++;
                    break;
                } else {
                    inl_buf[w++] = p[i++];
                }
            } else {
                if (i >= end || is_space(p[i])) break;
                if (p[i] == '"') { inq = 1; i++; }
                else if (p[i] == '\'') { insq = 1; i++; }
                else inl_buf[w++] = p[i++];
            }
        }
        args[nargs].p = inl_buf + start;
        args[nargs].n = w - start;
        nargs++;
    }
    return nl + 1;
}

/* > 0: a whole command (args/nargs; nargs may be 0), 0: incomplete, < 0: protocol error */
long parse_command(const uint8_t *p, uint32_t n)
{
    if (p[0] == '*') return parse_multibulk(p, n);
    return parse_inline(p, n);
}
