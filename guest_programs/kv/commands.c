/* kv/commands.c: the commands of the kv server's portable core (see kv_internal.h)
 * and their dispatch by name. Each returns 0 (done, reply written) or 1 (blocked:
 * retry later). A mutation reserves room in the log, changes the table, appends its
 * record and holds its reply until the record is durable (log.c). */
#include "kv_internal.h"

static int arg_is(const struct kv_arg *a, const char *lc)
{
    uint32_t n = (uint32_t)kstrlen(lc);
    if (a->n != n) return 0;
    for (uint32_t i = 0; i < n; i++)
        if (lower((char)a->p[i]) != lc[i]) return 0;
    return 1;
}

static int c_ping(uint32_t argc)
{
    if (argc > 2) { r_arity(&args[0]); return 0; }
    if (argc == 2) r_bulk(args[1].p, args[1].n);
    else r_str("+PONG\r\n");
    return 0;
}

static int c_echo(uint32_t argc)
{
    (void)argc;
    r_bulk(args[1].p, args[1].n);
    return 0;
}

static int c_get(uint32_t argc)
{
    (void)argc;
    struct entry *e = tb_get(args[1].p, args[1].n);
    if (e) r_bulk(e_val(e), e->vlen);
    else r_nil();
    return 0;
}

static int c_strlen(uint32_t argc)
{
    (void)argc;
    struct entry *e = tb_get(args[1].p, args[1].n);
    r_int(e ? e->vlen : 0);
    return 0;
}

static int c_mget(uint32_t argc)
{
    r_arr(argc - 1);
    for (uint32_t i = 1; i < argc; i++) {
        struct entry *e = tb_get(args[i].p, args[i].n);
        if (e) r_bulk(e_val(e), e->vlen);
        else r_nil();
    }
    return 0;
}

static int c_exists(uint32_t argc)
{
    int64_t n = 0;
    for (uint32_t i = 1; i < argc; i++)
        if (tb_get(args[i].p, args[i].n)) n++;
    r_int(n);
    return 0;
}

static int reserve_or_reply(uint32_t rs, int shrinking)
{
    const char *err = 0;
    int r = log_reserve(rs, shrinking, &err);
    if (r == LR_ERR) r_str(err);
    return r;
}

static int c_set(uint32_t argc)
{
    if (argc != 3) { r_str(E_SYNTAX); return 0; }
    if ((uint64_t)args[1].n + args[2].n > KV_MAX_ENTRY) { r_str(E_TOOBIG); return 0; }
    int r = reserve_or_reply(kv_rec_size(2, args + 1), 0);
    if (r != LR_OK) return r == LR_BLOCK;
    if (!tb_set(args[1].p, args[1].n, args[2].p, args[2].n)) { r_str(E_OOM); return 0; }
    log_append(KV_T_SET, 2, args + 1);
    reply_mutation("+OK\r\n", 5);
    return 0;
}

static int c_mset(uint32_t argc)
{
    if ((argc - 1) & 1) { r_arity(&args[0]); return 0; }
    for (uint32_t i = 1; i < argc; i += 2)
        if ((uint64_t)args[i].n + args[i + 1].n > KV_MAX_ENTRY) { r_str(E_TOOBIG); return 0; }
    int r = reserve_or_reply(kv_rec_size(argc - 1, args + 1), 0);
    if (r != LR_OK) return r == LR_BLOCK;
    uint32_t done = 0;
    for (uint32_t i = 1; i < argc; i += 2) {
        if (!tb_set(args[i].p, args[i].n, args[i + 1].p, args[i + 1].n)) break;
        done += 2;
    }
    if (!done) { r_str(E_OOM); return 0; }
    log_append(KV_T_MSET, done, args + 1);
    if (done < argc - 1) reply_mutation(E_OOM, (uint32_t)kstrlen(E_OOM));
    else reply_mutation("+OK\r\n", 5);
    return 0;
}

static int c_del(uint32_t argc)
{
    int r = reserve_or_reply(kv_rec_size(argc - 1, args + 1), 1);
    if (r != LR_OK) return r == LR_BLOCK;
    uint32_t n = 0;
    for (uint32_t i = 1; i < argc; i++)
        if (tb_del(args[i].p, args[i].n)) args[1 + n++] = args[i];
    if (!n) { r_int(0); return 0; }
    log_append(KV_T_DEL, n, args + 1);
    reply_mutation_int(n);
    return 0;
}

static int do_incrby(int64_t delta)
{
    struct entry *e = tb_get(args[1].p, args[1].n);
    int64_t v = 0;
    if (e && !str2ll(e_val(e), e->vlen, &v)) { r_str(E_NOTINT); return 0; }
    if ((delta > 0 && v > INT64_MAX - delta) || (delta < 0 && v < INT64_MIN - delta)) {
        r_str("-ERR increment or decrement would overflow\r\n");
        return 0;
    }
    v += delta;
    char num[24];
    uint32_t nn = fmt_i64(num, v);
    struct kv_arg a[2] = {args[1], {(const uint8_t *)num, nn}};
    int r = reserve_or_reply(kv_rec_size(2, a), 0);
    if (r != LR_OK) return r == LR_BLOCK;
    if (!tb_set(a[0].p, a[0].n, a[1].p, a[1].n)) { r_str(E_OOM); return 0; }
    log_append(KV_T_SET, 2, a);
    char b[32];
    b[0] = ':';
    kcpy(b + 1, num, nn);
    b[nn + 1] = '\r';
    b[nn + 2] = '\n';
    reply_mutation(b, nn + 3);
    return 0;
}

static int c_incr(uint32_t argc) { (void)argc; return do_incrby(1); }
static int c_decr(uint32_t argc) { (void)argc; return do_incrby(-1); }
static int c_incrby(uint32_t argc)
{
    (void)argc;
    int64_t d;
    if (!str2ll(args[2].p, args[2].n, &d)) { r_str(E_NOTINT); return 0; }
    return do_incrby(d);
}
static int c_decrby(uint32_t argc)
{
    (void)argc;
    int64_t d;
    if (!str2ll(args[2].p, args[2].n, &d) || d == INT64_MIN) { r_str(E_NOTINT); return 0; }
    return do_incrby(-d);
}

static int c_append(uint32_t argc)
{
    (void)argc;
    struct entry *e = tb_get(args[1].p, args[1].n);
    uint64_t nl = (e ? e->vlen : 0) + (uint64_t)args[2].n;
    if (args[1].n + nl > KV_MAX_ENTRY) { r_str(E_TOOBIG); return 0; }
    int r = reserve_or_reply(kv_rec_size(2, args + 1), 0);
    if (r != LR_OK) return r == LR_BLOCK;
    uint32_t newlen;
    if (!tb_append(args[1].p, args[1].n, args[2].p, args[2].n, &newlen)) { r_str(E_OOM); return 0; }
    log_append(KV_T_APPEND, 2, args + 1);
    reply_mutation_int(newlen);
    return 0;
}

static int c_dbsize(uint32_t argc)
{
    (void)argc;
    r_int((int64_t)T.count);
    return 0;
}

static int c_flushall(uint32_t argc)
{
    if (argc > 2 || (argc == 2 && !arg_is(&args[1], "async") && !arg_is(&args[1], "sync"))) {
        r_str(E_SYNTAX);
        return 0;
    }
    int r = reserve_or_reply(kv_rec_size(0, 0), 1);
    if (r != LR_OK) return r == LR_BLOCK;
    tb_flush();
    log_append(KV_T_FLUSHALL, 0, 0);
    reply_mutation("+OK\r\n", 5);
    return 0;
}

static int c_select(uint32_t argc)
{
    (void)argc;
    int64_t v;
    if (!str2ll(args[1].p, args[1].n, &v)) r_str(E_NOTINT);
    else if (v != 0) r_str("-ERR DB index is out of range\r\n");
    else r_ok();
    return 0;
}

static int c_quit(uint32_t argc)
{
    (void)argc;
    r_ok();
    K.cur->flags |= F_CLOSING;
    return 0;
}

static void r_unknown_sub(const struct kv_arg *sub, const char *cmd)
{
    r_err3("-ERR unknown subcommand '", sub->p, sub->n, "'. Try ");
    r_str(cmd);
    r_str(" HELP.\r\n");
}

/* CONFIG GET answers for the few parameters clients ask about (redis-benchmark
 * reads "save" and "appendonly"); "*" lists them all; anything else: nothing. */
static int c_config(uint32_t argc)
{
    if (arg_is(&args[1], "get")) {
        if (argc < 3) {
            r_str("-ERR wrong number of arguments for 'config|get' command\r\n");
            return 0;
        }
        static const char *const names[] = {"save", "appendonly", "appendfsync", "databases", "maxmemory"};
        char mem[24];
        mem[fmt_u64(mem, KV_ARENA_SIZE)] = 0;
        const char *vals[] = {"", K.disk ? "yes" : "no", "always", "1", mem};
        int want[5] = {0, 0, 0, 0, 0}, n = 0;
        for (uint32_t a = 2; a < argc; a++)
            for (int i = 0; i < 5; i++)
                if (!want[i] && (arg_is(&args[a], names[i]) || (args[a].n == 1 && args[a].p[0] == '*'))) {
                    want[i] = 1;
                    n++;
                }
        r_map(n);
        for (int i = 0; i < 5; i++)
            if (want[i]) {
                r_cstr_bulk(names[i]);
                r_cstr_bulk(vals[i]);
            }
    } else if (arg_is(&args[1], "resetstat")) {
        r_ok();
    } else if (arg_is(&args[1], "set")) {
        r_str("-ERR CONFIG SET is not supported by this server\r\n");
    } else {
        r_unknown_sub(&args[1], "CONFIG");
    }
    return 0;
}

static int c_command(uint32_t argc)
{
    if (argc >= 2 && arg_is(&args[1], "count")) r_int(0);
    else if (argc >= 2 && arg_is(&args[1], "docs")) r_map(0);
    else r_arr(0);
    return 0;
}

static int c_client(uint32_t argc)
{
    const struct kv_arg *s = &args[1];
    if (arg_is(s, "setinfo") || arg_is(s, "setname") || arg_is(s, "no-evict") || arg_is(s, "no-touch")) {
        if (argc < 3) r_lower_name("-ERR wrong number of arguments for 'client|", s->p, s->n, "' command\r\n");
        else r_ok();
    } else if (arg_is(s, "getname")) {
        r_nil();
    } else if (arg_is(s, "id")) {
        r_int(K.cur->id);
    } else if (arg_is(s, "info")) {
        char b[64];
        uint32_t k = 0;
        const char *p = "id=";
        while (*p) b[k++] = *p++;
        k += fmt_u64(b + k, K.cur->id);
        p = " db=0\n";
        while (*p) b[k++] = *p++;
        r_bulk((const uint8_t *)b, k);
    } else {
        r_unknown_sub(s, "CLIENT");
    }
    return 0;
}

/* HELLO [protover [AUTH user pass] [SETNAME name]]: RESP2 or RESP3 for this client
 * (redis-py 5+ asks for RESP3). There is no authentication: AUTH is accepted. */
static int c_hello(uint32_t argc)
{
    struct conn *c = K.cur;
    int proto = c->resp3 ? 3 : 2;
    if (argc >= 2) {
        int64_t v;
        if (!str2ll(args[1].p, args[1].n, &v)) {
            r_str("-ERR Protocol version is not an integer or out of range\r\n");
            return 0;
        }
        if (v != 2 && v != 3) {
            r_str("-NOPROTO unsupported protocol version\r\n");
            return 0;
        }
        for (uint32_t i = 2; i < argc; i++) {
            if (arg_is(&args[i], "auth") && i + 2 < argc) i += 2;
            else if (arg_is(&args[i], "setname") && i + 1 < argc) i += 1;
            else {
                r_err3("-ERR Syntax error in HELLO option '", args[i].p, args[i].n, "'\r\n");
                return 0;
            }
        }
        proto = (int)v;
    }
    c->resp3 = proto == 3;
    r_map(7);
    r_cstr_bulk("server");
    r_cstr_bulk("redis");
    r_cstr_bulk("version");
    r_cstr_bulk("7.0.0");
    r_cstr_bulk("proto");
    r_int(proto);
    r_cstr_bulk("id");
    r_int(c->id);
    r_cstr_bulk("mode");
    r_cstr_bulk("standalone");
    r_cstr_bulk("role");
    r_cstr_bulk("master");
    r_cstr_bulk("modules");
    r_arr(0);
    return 0;
}

struct sbuild {
    char *b;
    uint32_t n, cap;
};
static void sb_s(struct sbuild *s, const char *t)
{
    while (*t && s->n < s->cap) s->b[s->n++] = *t++;
}
static void sb_u(struct sbuild *s, uint64_t v)
{
    if (s->n + 24 <= s->cap) s->n += fmt_u64(s->b + s->n, v);
}
static void sb_kv(struct sbuild *s, const char *k, uint64_t v)
{
    sb_s(s, k);
    sb_s(s, ":");
    sb_u(s, v);
    sb_s(s, "\r\n");
}

static uint32_t info_argc;
/* INFO [section ...]: the named sections (case-insensitive), or all of them */
static int info_want(struct sbuild *s, const char *name, const char *title)
{
    int want = info_argc < 2;
    for (uint32_t i = 1; i < info_argc && !want; i++)
        want = arg_is(&args[i], name) || arg_is(&args[i], "all") || arg_is(&args[i], "everything") ||
               arg_is(&args[i], "default");
    if (want) {
        if (s->n) sb_s(s, "\r\n");
        sb_s(s, title);
    }
    return want;
}

static int c_info(uint32_t argc)
{
    static char b[2048];
    struct sbuild s = {b, 0, sizeof b};
    info_argc = argc;
    if (info_want(&s, "server", "# Server\r\n"))
        sb_s(&s, "redis_version:7.0.0-ftvm\r\nredis_mode:standalone\r\nos:ftvm\r\narch_bits:64\r\n");
    if (info_want(&s, "clients", "# Clients\r\n")) {
        sb_kv(&s, "connected_clients", K.nconns);
        sb_kv(&s, "blocked_clients", 0);
    }
    if (info_want(&s, "memory", "# Memory\r\n")) {
        sb_kv(&s, "used_memory", KV_ARENA_SIZE - 8 - a_free);
        sb_kv(&s, "maxmemory", KV_ARENA_SIZE);
        sb_s(&s, "maxmemory_policy:noeviction\r\n");
    }
    if (info_want(&s, "persistence", "# Persistence\r\n")) {
        sb_kv(&s, "loading", 0);
        sb_kv(&s, "aof_enabled", K.disk ? 1 : 0);
        if (K.disk) {
            sb_kv(&s, "kv_disk_sectors", K.sectors);
            sb_kv(&s, "kv_generation", K.gen);
            sb_kv(&s, "kv_log_bytes", K.lb_off + K.lb_len);
            sb_kv(&s, "kv_region_bytes", K.region_bytes);
            sb_kv(&s, "kv_compactions", K.ncompactions);
            sb_kv(&s, "kv_disk_writes", K.nwrites);
            sb_kv(&s, "kv_disk_write_errors", K.nwrite_errors);
            sb_kv(&s, "kv_mutations_durable", K.durable_seq);
        }
        sb_kv(&s, "kv_mutations", K.applied_seq);
    }
    if (info_want(&s, "stats", "# Stats\r\n")) {
        sb_kv(&s, "total_connections_received", K.nconn_total);
        sb_kv(&s, "total_commands_processed", K.ncmds);
    }
    if (info_want(&s, "keyspace", "# Keyspace\r\n") && T.count) {
        sb_s(&s, "db0:keys=");
        sb_u(&s, T.count);
        sb_s(&s, ",expires=0,avg_ttl=0\r\n");
    }
    r_bulk((const uint8_t *)b, s.n);
    return 0;
}

static int c_save(uint32_t argc)
{
    (void)argc;
    uint32_t st = compact();
    if (st == FTVM_DISK_ENOSPC && T.live + TAIL_RESERVE > K.region_bytes) r_str(E_LOGFULL);
    else if (st) r_str(disk_errmsg(st));
    else r_ok();
    return 0;
}

struct cmd {
    const char *name;
    int arity;
    int (*fn)(uint32_t argc);
};
static const struct cmd cmds[] = {
    {"ping", -1, c_ping},     {"echo", 2, c_echo},       {"get", 2, c_get},         {"set", -3, c_set},
    {"del", -2, c_del},       {"unlink", -2, c_del},     {"exists", -2, c_exists},  {"incr", 2, c_incr},
    {"decr", 2, c_decr},      {"incrby", 3, c_incrby},   {"decrby", 3, c_decrby},   {"append", 3, c_append},
    {"strlen", 2, c_strlen},  {"mget", -2, c_mget},      {"mset", -3, c_mset},      {"dbsize", 1, c_dbsize},
    {"flushall", -1, c_flushall}, {"flushdb", -1, c_flushall}, {"config", -2, c_config}, {"command", -1, c_command},
    {"client", -2, c_client}, {"select", 2, c_select},   {"quit", -1, c_quit},      {"info", -1, c_info},
    {"save", 1, c_save},      {"bgsave", -1, c_save},    {"hello", -1, c_hello},
};
#define NCMDS (sizeof cmds / sizeof cmds[0])
#define CTAB 128
static const struct cmd *ctab[CTAB];

static uint32_t name_hash(const char *s, uint32_t n)
{
    uint32_t h = n * 131;
    for (uint32_t i = 0; i < n; i++) h = h * 31 + (uint8_t)s[i];
    return h;
}

void cmds_init(void)
{
    for (uint32_t i = 0; i < CTAB; i++) ctab[i] = 0;
    for (uint32_t i = 0; i < NCMDS; i++) {
        uint32_t h = name_hash(cmds[i].name, (uint32_t)kstrlen(cmds[i].name)) & (CTAB - 1);
        while (ctab[h]) h = (h + 1) & (CTAB - 1);
        ctab[h] = &cmds[i];
    }
}

static const struct cmd *cmd_lookup(const struct kv_arg *a)
{
    char nm[16];
    if (a->n == 0 || a->n >= sizeof nm) return 0;
    for (uint32_t i = 0; i < a->n; i++) nm[i] = lower((char)a->p[i]);
    nm[a->n] = 0;
    uint32_t h = name_hash(nm, a->n) & (CTAB - 1);
    for (; ctab[h]; h = (h + 1) & (CTAB - 1)) {
        const char *cn = ctab[h]->name;
        uint32_t i = 0;
        while (i < a->n && cn[i] == nm[i]) i++;
        if (i == a->n && cn[i] == 0) return ctab[h];
    }
    return 0;
}

int dispatch(uint32_t argc)
{
    const struct cmd *c = cmd_lookup(&args[0]);
    if (!c) {
        r_err3("-ERR unknown command '", args[0].p, args[0].n, "'\r\n");
        return 0;
    }
    if ((c->arity > 0 && argc != (uint32_t)c->arity) || (c->arity < 0 && argc < (uint32_t)-c->arity)) {
        r_arity(&args[0]);
        return 0;
    }
    return c->fn(argc);
}
