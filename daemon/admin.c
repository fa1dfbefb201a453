/*
 * The admin port: accepting, telling HTTP from PostgreSQL by the first byte,
 * and the PostgreSQL console (login as an admin_users or stats_users user to
 * the database "pgcoalesce", then SHOW, RELOAD, PAUSE, ... as simple
 * queries). The commands are one table of {word, handler}.
 */
#include "daemon/admin.h"
#include "daemon/cache.h"
#include "daemon/log.h"
#include "daemon/orm_feed.h"
#include "proto/msg.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/listener.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Bounds: admin connections at once, one console message, words of a command. */
#define ADMIN_MAX_CONNS 64
#define ADMIN_MAX_MSG   65536
#define ADMIN_MAX_WORDS 8
/* Seconds to finish logging in, and to take an answer queued for closing. */
#define ADMIN_LOGIN_SEC 30.0
#define ADMIN_FLUSH_SEC 10.0
/* The only database the console answers to. */
#define ADMIN_DBNAME "pgcoalesce"

#define T_TEXT   25
#define T_INT8   20
#define T_FLOAT8 701

static void admin_on_io(void *arg, IoEvent ev);

/* ---- life cycle -------------------------------------------------------------------------- */

void admin_close(AdminConn *a, const char *reason)
{
    if (a->state == ADM_CLOSING)
        return;
    log_debug("admin %s%s%s closing: %s", a->addr, a->user ? " user " : "", a->user ? a->user : "",
              reason);
    io_close(&a->io);
    list_remove(&a->ops->admin_conns, &a->node);
    a->state = ADM_CLOSING;
    list_append(&a->ops->admin_closing, &a->node);
    event_active(a->ops->admin_reaper, EV_TIMEOUT, 0);
}

static void admin_free(AdminConn *a)
{
    io_free(&a->io);
    pkt_free(&a->out);
    auth_exchange_free(&a->auth);
    free(a->user);
    free(a);
}

void admin_finish(AdminConn *a)
{
    a->state = ADM_FLUSH;
    a->since = now_sec();
    io_read(&a->io, false);
    if (io_flushed(&a->io))
        admin_close(a, "answer sent");
}

void admin_tick(Ops *ops, double now)
{
    ListNode *n;

    for (n = list_first(&ops->admin_conns); n;) {
        AdminConn *a = list_entry(n, AdminConn);
        n = list_next(&ops->admin_conns, n);
        if (a->state == ADM_FLUSH && (io_flushed(&a->io) || now - a->since > ADMIN_FLUSH_SEC))
            admin_close(a, "answer sent");
        else if (a->state < ADM_READY && now - a->since > ADMIN_LOGIN_SEC)
            admin_close(a, "login took too long");
        else if (a->state == ADM_HTTP && now - a->since > ADMIN_LOGIN_SEC)
            admin_close(a, "HTTP request took too long");
    }
    while ((n = list_first(&ops->admin_closing)) != NULL) {
        list_remove(&ops->admin_closing, n);
        admin_free(list_entry(n, AdminConn));
    }
}

void admin_close_all(Ops *ops)
{
    ListNode *n;

    for (int i = 0; i < ops->nadmin; i++)
        evconnlistener_free(ops->admin[i]);
    ops->nadmin = 0;
    while ((n = list_first(&ops->admin_conns)) != NULL)
        admin_close(list_entry(n, AdminConn), "shutting down");
    while ((n = list_first(&ops->admin_closing)) != NULL) {
        list_remove(&ops->admin_closing, n);
        admin_free(list_entry(n, AdminConn));
    }
}

AdminConn *admin_conn_new(Ops *ops, int fd, const char *addr)
{
    AdminConn *a = calloc(1, sizeof(*a));

    if (!a) {
        close(fd);
        return NULL;
    }
    a->ops = ops;
    a->since = now_sec();
    pkt_init(&a->out);
    snprintf(a->addr, sizeof(a->addr), "%s", addr);
    evutil_make_socket_nonblocking(fd);
    if (!io_init(&a->io, ops->w->base, fd, admin_on_io, a)) {
        close(fd);
        pkt_free(&a->out);
        free(a);
        return NULL;
    }
    list_append(&ops->admin_conns, &a->node);
    io_read(&a->io, true);
    return a;
}

static void admin_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                            int salen, void *arg)
{
    Ops *ops = arg;
    char ip[INET6_ADDRSTRLEN] = "?";

    if (ops->admin_conns.count >= ADMIN_MAX_CONNS) {
        log_warning("admin port: %d connections already open; refusing another", ADMIN_MAX_CONNS);
        close(fd);
        return;
    }
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, ip, sizeof(ip));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof(ip));
    else
        snprintf(ip, sizeof(ip), "unix");
    (void)admin_conn_new(ops, fd, ip);
}

static void admin_on_accept_error(struct evconnlistener *l, void *arg)
{
    log_error("admin port: accept failed: %s",
              evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static bool admin_add_listener(Ops *ops, struct evconnlistener *l, const char *what)
{
    if (!l || ops->nadmin >= OPS_MAX_ADMIN_LISTENERS) {
        if (l)
            evconnlistener_free(l);
        log_error("could not listen on admin port %s: %s; set admin_addr and admin_port "
                  "(admin_port = 0 turns the admin port off)",
                  what, l ? "too many addresses" : strerror(errno));
        return false;
    }
    evconnlistener_set_error_cb(l, admin_on_accept_error);
    ops->admin[ops->nadmin++] = l;
    log_info("admin port listening on %s", what);
    return true;
}

bool admin_listen(Ops *ops)
{
    const Config *cfg = ops->w->cfg;
    const unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC;
    struct evutil_addrinfo hints, *res = NULL, *ai;
    const char *host;
    char port[16], what[300];
    int rc;
    bool ok = true;

    if (ops->admin_fd >= 0)
        return admin_add_listener(
            ops, evconnlistener_new(ops->w->base, admin_on_accept, ops, flags, -1, ops->admin_fd),
            "the socket from systemd");
    if (cfg->admin_port == 0) {
        log_info("admin port off (admin_port = 0)");
        return true;
    }
    if (cfg->admin_port == cfg->listen_port) {
        log_error("admin_port and listen_port are both %d; give the admin port its own",
                  cfg->admin_port);
        return false;
    }
    host = strcmp(cfg->admin_addr, "*") == 0 ? NULL : cfg->admin_addr;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_PASSIVE;
    snprintf(port, sizeof(port), "%d", cfg->admin_port);
    rc = evutil_getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        log_error("admin_addr \"%s\": %s", cfg->admin_addr, evutil_gai_strerror(rc));
        return false;
    }
    snprintf(what, sizeof(what), "%s:%d", cfg->admin_addr, cfg->admin_port);
    for (ai = res; ai && ok; ai = ai->ai_next) {
        ok = admin_add_listener(ops,
                                evconnlistener_new_bind(ops->w->base, admin_on_accept, ops,
                                                        flags | LEV_OPT_REUSEABLE, 128, ai->ai_addr,
                                                        (int)ai->ai_addrlen),
                                what);
        if (host)
            break; /* one address for an explicit host */
    }
    evutil_freeaddrinfo(res);
    return ok;
}

/* ---- output ------------------------------------------------------------------------------ */

/* Send what a->out holds. */
static void admin_flush_out(AdminConn *a)
{
    if (a->out.failed) {
        admin_close(a, "out of memory");
        return;
    }
    io_send(&a->io, a->out.data, a->out.len);
    pkt_reset(&a->out);
}

/* FATAL error, then close once it is written. */
static void admin_refuse(AdminConn *a, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void admin_refuse(AdminConn *a, const char *sqlstate, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_info("admin %s%s%s refused: %s", a->addr, a->user ? " user " : "", a->user ? a->user : "",
             msg);
    pkt_error(&a->out, "FATAL", sqlstate, "%s", msg);
    admin_flush_out(a);
    if (a->state != ADM_CLOSING)
        admin_finish(a);
}

/* A result set: RowDescription now, DataRows from res_row, CommandComplete from res_end. */
typedef struct Res {
    AdminConn *a;
    int ncols;
    long rows;
} Res;

static Res res_begin(AdminConn *a, int ncols, const char *const *names, const uint32_t *types)
{
    Res r = {a, ncols, 0};

    pkt_row_description(&a->out, ncols, names, types);
    return r;
}

static void res_row(Res *r, const char *const *values)
{
    pkt_data_row(&r->a->out, r->ncols, values);
    r->rows++;
}

static void res_end(Res *r, const char *tag)
{
    pkt_command_complete(&r->a->out, tag);
}

static const char *fmt_u64(char *buf, uint64_t v)
{
    snprintf(buf, 24, "%" PRIu64, v);
    return buf;
}

static const char *fmt_int(char *buf, long long v)
{
    snprintf(buf, 24, "%lld", v);
    return buf;
}

/* A monotonic timestamp as local wall-clock time. */
static const char *fmt_time(char *buf, size_t len, double mono)
{
    time_t t = time(NULL) - (time_t)(now_sec() - mono);
    struct tm tm;

    localtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
    return buf;
}

static const char *fmt_ptr(char *buf, const void *p)
{
    if (!p)
        return NULL;
    snprintf(buf, 24, "%p", p);
    return buf;
}

/* ---- SHOW views -------------------------------------------------------------------------- */

/* Arguments of a command: the words after its own. */
typedef struct Args {
    char *word[ADMIN_MAX_WORDS];
    int n;
} Args;

static void show_pools(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {
        "database",  "user",      "cl_active",    "cl_waiting",      "cl_idle", "sv_active",
        "sv_idle",   "sv_used",   "sv_tested",    "sv_login",        "maxwait", "maxwait_us",
        "pool_mode", "pool_size", "max_overflow", "overflow_in_use", "paused"};
    static const uint32_t types[] = {T_TEXT, T_TEXT, T_INT8, T_INT8, T_INT8, T_INT8,
                                     T_INT8, T_INT8, T_INT8, T_INT8, T_INT8, T_INT8,
                                     T_TEXT, T_INT8, T_INT8, T_INT8, T_TEXT};
    const int ncols = (int)(sizeof(cols) / sizeof(cols[0]));
    _Static_assert(sizeof(cols) / sizeof(cols[0]) <= 20, "b[] has a slot per column");
    Res r = res_begin(a, ncols, cols, types);
    Worker *w = a->ops->w;
    double now = now_sec();
    char b[20][24]; /* one per column (ncols <= 20) */

    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n)) {
        const Pool *p = list_entry(n, Pool);
        uint64_t wait = stats_pool_max_wait_usec(p, now);
        const char *v[] = {p->db_name,
                           p->user_name,
                           fmt_int(b[2], p->active_clients.count),
                           fmt_int(b[3], p->waiting_clients.count),
                           fmt_int(b[4], p->idle_clients.count),
                           fmt_int(b[5], p->active_servers.count),
                           fmt_int(b[6], p->idle_servers.count),
                           "0",
                           fmt_int(b[8], p->testing_servers.count),
                           fmt_int(b[9], p->connecting_servers.count),
                           fmt_u64(b[10], wait / 1000000),
                           fmt_u64(b[11], wait % 1000000),
                           p->mode == POOL_SESSION ? "session" : "transaction",
                           fmt_int(b[13], p->pool_size),
                           fmt_int(b[14], p->max_overflow),
                           fmt_int(b[15], stats_pool_overflow(p)),
                           pool_paused(p) ? "yes" : "no"};
        res_row(&r, v);
    }
    res_end(&r, "SHOW");
}

/* PoolStats summed over the pools of one database (SHOW STATS is per database). */
static void stats_add(PoolStats *sum, const PoolStats *st)
{
    sum->xact_count += st->xact_count;
    sum->query_count += st->query_count;
    sum->bytes_in += st->bytes_in;
    sum->bytes_out += st->bytes_out;
    sum->wait_usec += st->wait_usec;
    sum->query_usec += st->query_usec;
    if (st->max_wait_usec > sum->max_wait_usec)
        sum->max_wait_usec = st->max_wait_usec;
    sum->timeouts += st->timeouts;
    sum->recycled += st->recycled;
    sum->ping_failures += st->ping_failures;
    sum->connect_failures += st->connect_failures;
    for (int i = 0; i < STATS_HIST_BUCKETS; i++) {
        sum->query_hist[i] += st->query_hist[i];
        sum->wait_hist[i] += st->wait_hist[i];
    }
}

static void show_stats(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {"database",
                                       "total_xact_count",
                                       "total_query_count",
                                       "total_received",
                                       "total_sent",
                                       "total_query_time",
                                       "total_wait_time",
                                       "avg_query_time",
                                       "avg_wait_time",
                                       "max_wait_time",
                                       "total_timeouts",
                                       "total_recycled",
                                       "total_ping_failures",
                                       "total_connect_failures"};
    const int ncols = (int)(sizeof(cols) / sizeof(cols[0]));
    _Static_assert(sizeof(cols) / sizeof(cols[0]) <= 20, "b[] has a slot per column");
    uint32_t types[sizeof(cols) / sizeof(cols[0])];
    Worker *w = a->ops->w;
    char b[20][24]; /* one per column (ncols <= 20) */
    Res r;

    types[0] = T_TEXT;
    for (int i = 1; i < ncols; i++)
        types[i] = T_INT8;
    r = res_begin(a, ncols, cols, types);
    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n)) {
        const Pool *p = list_entry(n, Pool);
        PoolStats sum;
        uint64_t nq, nw;
        bool seen = false;

        /* one row per database, at its first pool */
        for (ListNode *m = list_first(&w->pools); m != n; m = list_next(&w->pools, m))
            if (strcmp(list_entry(m, Pool)->db_name, p->db_name) == 0)
                seen = true;
        if (seen)
            continue;
        memset(&sum, 0, sizeof(sum));
        for (ListNode *m = n; m; m = list_next(&w->pools, m))
            if (strcmp(list_entry(m, Pool)->db_name, p->db_name) == 0)
                stats_add(&sum, &list_entry(m, Pool)->stats);
        nq = stats_hist_count(sum.query_hist);
        nw = stats_hist_count(sum.wait_hist);
        {
            const char *v[] = {p->db_name,
                               fmt_u64(b[1], sum.xact_count),
                               fmt_u64(b[2], sum.query_count),
                               fmt_u64(b[3], sum.bytes_in),
                               fmt_u64(b[4], sum.bytes_out),
                               fmt_u64(b[5], sum.query_usec),
                               fmt_u64(b[6], sum.wait_usec),
                               fmt_u64(b[7], nq ? sum.query_usec / nq : 0),
                               fmt_u64(b[8], nw ? sum.wait_usec / nw : 0),
                               fmt_u64(b[9], sum.max_wait_usec),
                               fmt_u64(b[10], sum.timeouts),
                               fmt_u64(b[11], sum.recycled),
                               fmt_u64(b[12], sum.ping_failures),
                               fmt_u64(b[13], sum.connect_failures)};
            res_row(&r, v);
        }
    }
    res_end(&r, "SHOW");
}

static const char *client_state_name(ClientState st)
{
    switch (st) {
    case CL_LOGIN:
        return "login";
    case CL_IDLE:
        return "idle";
    case CL_WAITING:
        return "waiting";
    case CL_ACTIVE:
        return "active";
    case CL_LINGER:
    case CL_CLOSING:
    case CL_FREE:
        break;
    }
    return "closing";
}

/* "1.2.3.4:5678" or "[::1]:5678" into address and port; "unix" has port 0. */
static void split_addr(const char *addr, char *host, size_t hostlen, char *port)
{
    const char *colon = strrchr(addr, ':');

    if (!colon || strcmp(addr, "unix") == 0) {
        snprintf(host, hostlen, "%s", addr);
        snprintf(port, 24, "0");
        return;
    }
    if (addr[0] == '[')
        snprintf(host, hostlen, "%.*s", (int)(colon - addr - 2), addr + 1);
    else
        snprintf(host, hostlen, "%.*s", (int)(colon - addr), addr);
    snprintf(port, 24, "%s", colon + 1);
}

static void show_client_row(Res *r, const Client *c, double now)
{
    char host[64], port[24], when[32], wait[24], wait_us[24], ptr[24], link[24];
    double waited = c->state == CL_WAITING ? now - c->wait_since : 0;
    uint64_t usec = waited > 0 ? (uint64_t)(waited * 1e6) : 0;
    const char *app = params_get(&c->params, "application_name");

    split_addr(c->addr, host, sizeof(host), port);
    {
        const char *v[] = {"C",
                           c->user ? c->user : "",
                           c->database ? c->database : "",
                           client_state_name(c->state),
                           host,
                           port,
                           fmt_time(when, sizeof(when), c->connect_time),
                           fmt_u64(wait, usec / 1000000),
                           fmt_u64(wait_us, usec % 1000000),
                           fmt_ptr(ptr, c),
                           fmt_ptr(link, c->server),
                           app ? app : ""};
        res_row(r, v);
    }
}

static void show_clients(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {"type",    "user", "database",     "state",
                                       "addr",    "port", "connect_time", "wait",
                                       "wait_us", "ptr",  "link",         "application_name"};
    static const uint32_t types[] = {T_TEXT, T_TEXT, T_TEXT, T_TEXT, T_TEXT, T_INT8,
                                     T_TEXT, T_INT8, T_INT8, T_TEXT, T_TEXT, T_TEXT};
    Res r = res_begin(a, 12, cols, types);
    Worker *w = a->ops->w;
    double now = now_sec();
    const List *wl[] = {&w->login_clients, &w->linger_clients};

    for (ListNode *pn = list_first(&w->pools); pn; pn = list_next(&w->pools, pn)) {
        const Pool *p = list_entry(pn, Pool);
        const List *lists[] = {&p->active_clients, &p->waiting_clients, &p->idle_clients};
        for (int i = 0; i < 3; i++)
            for (ListNode *n = list_first(lists[i]); n; n = list_next(lists[i], n))
                show_client_row(&r, list_entry(n, Client), now);
    }
    for (int i = 0; i < 2; i++)
        for (ListNode *n = list_first(wl[i]); n; n = list_next(wl[i], n))
            show_client_row(&r, list_entry(n, Client), now);
    res_end(&r, "SHOW");
}

static const char *server_state_name(ServerState st)
{
    switch (st) {
    case SV_CONNECTING:
        return "login";
    case SV_IDLE:
        return "idle";
    case SV_ACTIVE:
        return "active";
    case SV_TESTING:
        return "tested";
    case SV_CLOSING:
    case SV_FREE:
        break;
    }
    return "closing";
}

static void show_servers(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {"type", "user",       "database",     "state",
                                       "addr", "port",       "connect_time", "ptr",
                                       "link", "remote_pid", "tx_status"};
    static const uint32_t types[] = {T_TEXT, T_TEXT, T_TEXT, T_TEXT, T_TEXT, T_INT8,
                                     T_TEXT, T_TEXT, T_TEXT, T_INT8, T_TEXT};
    Res r = res_begin(a, 11, cols, types);
    Worker *w = a->ops->w;

    for (ListNode *pn = list_first(&w->pools); pn; pn = list_next(&w->pools, pn)) {
        const Pool *p = list_entry(pn, Pool);
        const List *lists[] = {&p->active_servers, &p->idle_servers, &p->testing_servers,
                               &p->connecting_servers};
        for (int i = 0; i < 4; i++)
            for (ListNode *n = list_first(lists[i]); n; n = list_next(lists[i], n)) {
                const Server *s = list_entry(n, Server);
                char port[24], when[32], ptr[24], link[24], pid[24], tx[2] = {s->tx_status, 0};
                const char *v[] = {"S",
                                   p->server_user,
                                   p->db_name,
                                   server_state_name(s->state),
                                   p->host,
                                   fmt_int(port, p->port),
                                   fmt_time(when, sizeof(when), s->connect_time),
                                   fmt_ptr(ptr, s),
                                   fmt_ptr(link, s->client),
                                   fmt_int(pid, s->be_pid),
                                   tx};
                res_row(&r, v);
            }
    }
    res_end(&r, "SHOW");
}

static int db_server_count(const Worker *w, const char *db)
{
    int n = 0;

    for (ListNode *pn = list_first(&w->pools); pn; pn = list_next(&w->pools, pn)) {
        const Pool *p = list_entry(pn, Pool);
        if (strcmp(p->db_name, db) == 0)
            n += pool_server_count(p);
    }
    return n;
}

static void show_databases(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {"name",         "host",       "port",
                                       "database",     "force_user", "pool_size",
                                       "max_overflow", "pool_mode",  "current_connections",
                                       "paused"};
    static const uint32_t types[] = {T_TEXT, T_TEXT, T_INT8, T_TEXT, T_TEXT,
                                     T_INT8, T_INT8, T_TEXT, T_INT8, T_TEXT};
    Res r = res_begin(a, 10, cols, types);
    const Ops *ops = a->ops;
    const Config *cfg = ops->w->cfg;

    for (int i = 0; i < cfg->ndbs; i++) {
        const DbConf *d = &cfg->dbs[i];
        char port[24], size[24], over[24], cur[24];
        bool paused = ops->paused;
        for (int j = 0; j < ops->npaused_dbs; j++)
            if (strcmp(ops->paused_dbs[j], d->name) == 0)
                paused = true;
        {
            const char *v[] = {d->name,
                               d->host,
                               fmt_int(port, d->port > 0 ? d->port : 5432),
                               d->dbname,
                               d->user,
                               fmt_int(size, dbconf_pool_size(cfg, d)),
                               fmt_int(over, dbconf_max_overflow(cfg, d)),
                               dbconf_pool_mode(cfg, d) == POOL_SESSION ? "session" : "transaction",
                               fmt_int(cur, db_server_count(ops->w, d->name)),
                               paused ? "yes" : "no"};
            res_row(&r, v);
        }
    }
    res_end(&r, "SHOW");
}

static void show_config(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {"key", "value", "default", "changeable"};
    Res r = res_begin(a, 4, cols, NULL);
    ConfigItem item;

    for (int i = 0; config_item(a->ops->w->cfg, i, &item); i++) {
        const char *v[] = {item.name, item.value, item.default_value,
                           item.reloadable ? "yes" : "no"};
        res_row(&r, v);
    }
    res_end(&r, "SHOW");
}

static void show_version(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {"version"};
    const char *v[] = {"pgcoalesce " PGC_VERSION};
    Res r = res_begin(a, 1, cols, NULL);

    res_row(&r, v);
    res_end(&r, "SHOW");
}

/* Wall-clock microseconds as local time, "" for 0. */
static const char *fmt_wall_us(char *buf, size_t len, uint64_t us)
{
    time_t t = (time_t)(us / 1000000);
    struct tm tm;

    if (us == 0) {
        buf[0] = '\0';
        return buf;
    }
    localtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
    return buf;
}

/* The N+1 patterns, most child time first (see docs/operations.md). */
static void show_n1(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {"parent_sql",       "child_sql",
                                       "key_column",       "key_source",
                                       "occurrences",      "total_run_length",
                                       "max_run_length",   "avg_run_length",
                                       "child_time_us",    "time_per_run_us",
                                       "child_rows",       "batched",
                                       "first_seen",       "last_seen",
                                       "application_name", "user",
                                       "database",         "fix"};
    static const uint32_t types[] = {T_TEXT, T_TEXT,   T_TEXT, T_TEXT, T_INT8, T_INT8,
                                     T_INT8, T_FLOAT8, T_INT8, T_INT8, T_INT8, T_INT8,
                                     T_TEXT, T_TEXT,   T_TEXT, T_TEXT, T_TEXT, T_TEXT};
    const N1Table *t = a->ops->w->orm->n1;
    N1TableStats st;
    const N1Pattern **pats;
    Res r = res_begin(a, 18, cols, types);
    size_t n;

    n1_table_stats(t, &st);
    pats = st.count ? malloc(st.count * sizeof(*pats)) : NULL;
    n = pats ? n1_table_sorted(t, pats, st.count) : 0;
    for (size_t i = 0; i < n; i++) {
        const N1Pattern *p = pats[i];
        char b[8][24], first[32], last[32], avg[32], fix[1024];
        snprintf(avg, sizeof(avg), "%.2f",
                 p->occurrences ? (double)p->total_run_len / (double)p->occurrences : 0.0);
        n1_pattern_fix(p, fix, sizeof(fix));
        {
            const char *v[] = {p->parent_sql,
                               p->child_sql,
                               p->key_column,
                               p->key_source,
                               fmt_u64(b[0], p->occurrences),
                               fmt_u64(b[1], p->total_run_len),
                               fmt_u64(b[2], p->max_run_len),
                               avg,
                               fmt_u64(b[3], p->child_us),
                               fmt_u64(b[4], p->occurrences ? p->child_us / p->occurrences : 0),
                               fmt_u64(b[5], p->child_rows),
                               fmt_u64(b[6], p->batched),
                               fmt_wall_us(first, sizeof(first), p->first_seen_us),
                               fmt_wall_us(last, sizeof(last), p->last_seen_us),
                               p->application_name,
                               p->user,
                               p->database,
                               fix};
            res_row(&r, v);
        }
    }
    free(pats);
    res_end(&r, "SHOW");
}

/* Statement statistics per shape, most total time first; unknown shapes last. */
static void show_queries(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {"sql",           "kind",        "read_only",   "calls",
                                       "total_time_us", "avg_time_us", "max_time_us", "rows",
                                       "first_seen",    "last_seen"};
    static const uint32_t types[] = {T_TEXT, T_TEXT, T_TEXT, T_INT8, T_INT8,
                                     T_INT8, T_INT8, T_INT8, T_TEXT, T_TEXT};
    const QStats *q = a->ops->w->orm->queries;
    QStatsSummary sum;
    const QueryStat **ents;
    Res r = res_begin(a, 10, cols, types);
    char b[6][24], first[32], last[32];
    size_t n;

    qstats_summary(q, &sum);
    ents = sum.count ? malloc(sum.count * sizeof(*ents)) : NULL;
    n = ents ? qstats_sorted(q, ents, sum.count) : 0;
    for (size_t i = 0; i < n; i++) {
        const QueryStat *e = ents[i];
        const char *v[] = {e->info->sql,
                           shape_kind_name(e->info->kind),
                           e->info->flags & SHAPE_F_READ_ONLY ? "yes" : "no",
                           fmt_u64(b[0], e->calls),
                           fmt_u64(b[1], e->total_us),
                           fmt_u64(b[2], e->calls ? e->total_us / e->calls : 0),
                           fmt_u64(b[3], e->max_us),
                           fmt_u64(b[4], e->rows),
                           fmt_wall_us(first, sizeof(first), e->first_us),
                           fmt_wall_us(last, sizeof(last), e->last_us)};
        res_row(&r, v);
    }
    free(ents);
    if (sum.unknown_calls) {
        const char *v[] = {"(statements of unknown shape)",
                           "unknown",
                           "no",
                           fmt_u64(b[0], sum.unknown_calls),
                           fmt_u64(b[1], sum.unknown_us),
                           fmt_u64(b[2], sum.unknown_us / sum.unknown_calls),
                           NULL,
                           NULL,
                           NULL,
                           NULL};
        res_row(&r, v);
    }
    res_end(&r, "SHOW");
}

/* N+1 batching counters (n1_mode = batch), one row. */
static void show_batch(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {"batches",
                                       "keys_prefetched",
                                       "keys_answered",
                                       "keys_wasted",
                                       "round_trips_saved",
                                       "types_learned",
                                       "fallback_error",
                                       "fallback_key_type",
                                       "fallback_key_value",
                                       "prefetches_dropped",
                                       "prefetches_expired",
                                       "unbatchable_shapes"};
    static const uint32_t types[] = {T_INT8, T_INT8, T_INT8, T_INT8, T_INT8, T_INT8,
                                     T_INT8, T_INT8, T_INT8, T_INT8, T_INT8, T_INT8};
    const OrmBatchStats *st = &a->ops->w->orm->batch;
    Res r = res_begin(a, 12, cols, types);
    char b[12][24];
    const char *v[] = {fmt_u64(b[0], st->batches),
                       fmt_u64(b[1], st->keys_prefetched),
                       fmt_u64(b[2], st->keys_answered),
                       fmt_u64(b[3], st->keys_wasted),
                       fmt_u64(b[4], orm_batch_round_trips_saved(st)),
                       fmt_u64(b[5], st->types_learned),
                       fmt_u64(b[6], st->fb_error),
                       fmt_u64(b[7], st->fb_type),
                       fmt_u64(b[8], st->fb_keys),
                       fmt_u64(b[9], st->dropped),
                       fmt_u64(b[10], st->expired),
                       fmt_u64(b[11], st->unbatchable)};

    res_row(&r, v);
    res_end(&r, "SHOW");
}

/* The identity-map cache: one row per counter (name, value). */
static void show_cache(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {"name", "value"};
    static const uint32_t types[] = {T_TEXT, T_TEXT};
    Res r = res_begin(a, 2, cols, types);
    const char *name;
    char value[256];

    if (!cache_on(a->ops->w)) {
        const char *v[] = {"enabled", "no (cache_url is empty)"};
        res_row(&r, v);
    }
    for (int i = 0; cache_report_row(a->ops->w, i, &name, value, sizeof(value)); i++) {
        const char *v[] = {name, value};
        res_row(&r, v);
    }
    res_end(&r, "SHOW");
}

static void show_help(AdminConn *a, const Args *args);

typedef struct AdminShow {
    const char *word;
    void (*handler)(AdminConn *a, const Args *args);
    const char *help;
} AdminShow;

static const AdminShow shows[] = {
    {"pools", show_pools, "one row per pool (database, user): clients and servers by state"},
    {"stats", show_stats, "one row per database: totals since start"},
    {"clients", show_clients, "one row per client connection"},
    {"servers", show_servers, "one row per server connection"},
    {"databases", show_databases, "the [databases] entries and their pool settings"},
    {"config", show_config, "every setting: value, default, whether RELOAD changes it"},
    {"n1", show_n1,
     "N+1 patterns (parent and child statement) with run lengths, time and the fix, most time "
     "first"},
    {"queries", show_queries, "statement statistics per shape: calls, time, rows"},
    {"batch", show_batch,
     "N+1 batching: batches, keys prefetched, answered and wasted, round trips saved, "
     "fallbacks by reason"},
    {"cache", show_cache,
     "identity-map cache: hits, misses, fills, bypasses by reason, invalidations by source, "
     "Redis and replication health"},
    {"version", show_version, "the pgcoalesce version"},
    {"help", show_help, "this list"},
};

/* ---- commands ---------------------------------------------------------------------------- */

/* Each handler returns false when it put an ErrorResponse in a->out. */
typedef bool (*AdminHandler)(AdminConn *a, const Args *args);

typedef struct AdminCommand {
    const char *word;
    AdminHandler handler;
    bool admin_only; /* stats_users may not */
    const char *usage;
    const char *help;
} AdminCommand;

static bool cmd_show(AdminConn *a, const Args *args);
static bool cmd_reload(AdminConn *a, const Args *args);
static bool cmd_pause(AdminConn *a, const Args *args);
static bool cmd_resume(AdminConn *a, const Args *args);
static bool cmd_reconnect(AdminConn *a, const Args *args);
static bool cmd_kill(AdminConn *a, const Args *args);
static bool cmd_shutdown(AdminConn *a, const Args *args);
static bool cmd_ignored(AdminConn *a, const Args *args);

static const AdminCommand commands[] = {
    {"show", cmd_show, false, "SHOW what", "see the SHOW rows of this list"},
    {"reload", cmd_reload, true, "RELOAD", "read the config file again (as SIGHUP)"},
    {"pause", cmd_pause, true, "PAUSE [db]",
     "new transactions (of db, else of every pool) wait until RESUME (as SIGUSR1)"},
    {"resume", cmd_resume, true, "RESUME [db]", "end PAUSE (as SIGUSR2)"},
    {"reconnect", cmd_reconnect, true, "RECONNECT [db]",
     "replace server connections (of db) as they become idle"},
    {"kill", cmd_kill, true, "KILL db", "drop every client and server connection of db now"},
    {"shutdown", cmd_shutdown, true, "SHUTDOWN [IMMEDIATE]",
     "stop accepting, let transactions finish (up to shutdown_timeout), exit (as SIGTERM); "
     "IMMEDIATE exits now"},
    /* what drivers send on their own; accepted and ignored */
    {"begin", cmd_ignored, false, NULL, NULL},
    {"commit", cmd_ignored, false, NULL, NULL},
    {"rollback", cmd_ignored, false, NULL, NULL},
    {"end", cmd_ignored, false, NULL, NULL},
    {"set", cmd_ignored, false, NULL, NULL},
};

static void show_help(AdminConn *a, const Args *args)
{
    static const char *const cols[] = {"command", "description"};
    Res r = res_begin(a, 2, cols, NULL);
    char usage[64];

    for (size_t i = 0; i < sizeof(shows) / sizeof(shows[0]); i++) {
        const char *v[] = {usage, shows[i].help};
        snprintf(usage, sizeof(usage), "SHOW %s", shows[i].word);
        for (char *p = usage; *p; p++)
            *p = (char)toupper((unsigned char)*p);
        res_row(&r, v);
    }
    for (size_t i = 1; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const char *v[] = {commands[i].usage, commands[i].help};
        if (commands[i].usage)
            res_row(&r, v);
    }
    res_end(&r, "SHOW");
}

static bool admin_error(AdminConn *a, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool admin_error(AdminConn *a, const char *sqlstate, const char *fmt, ...)
{
    char msg[600];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pkt_error(&a->out, "ERROR", sqlstate, "%s", msg);
    return false;
}

static bool cmd_show(AdminConn *a, const Args *args)
{
    if (args->n != 1)
        return admin_error(a, "42601", "SHOW takes one word, such as SHOW POOLS; see SHOW HELP");
    for (size_t i = 0; i < sizeof(shows) / sizeof(shows[0]); i++)
        if (strcasecmp(args->word[0], shows[i].word) == 0) {
            shows[i].handler(a, args);
            return true;
        }
    return admin_error(a, "42601", "unknown SHOW \"%s\"; see SHOW HELP", args->word[0]);
}

static bool cmd_reload(AdminConn *a, const Args *args)
{
    char err[1024];

    if (args->n != 0)
        return admin_error(a, "42601", "RELOAD takes no argument");
    if (!ops_reload(a->ops, err, sizeof(err)))
        return admin_error(a, "F0000", "reload failed, the running configuration is kept: %s", err);
    pkt_command_complete(&a->out, "RELOAD");
    return true;
}

/* The optional database argument of PAUSE, RESUME, RECONNECT; false with an error. */
static bool admin_db_arg(AdminConn *a, const Args *args, const char *cmd, bool required,
                         const char **db)
{
    const Worker *w = a->ops->w;

    *db = NULL;
    if (args->n > 1 || (required && args->n == 0))
        return admin_error(a, "42601", "usage: %s %s", cmd, required ? "db" : "[db]");
    if (args->n == 0)
        return true;
    *db = args->word[0];
    /* by its own name: a database served by the "*" entry has a pool */
    for (int i = 0; i < w->cfg->ndbs; i++)
        if (strcmp(w->cfg->dbs[i].name, *db) == 0 && strcmp(*db, "*") != 0)
            return true;
    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n))
        if (strcmp(list_entry(n, Pool)->db_name, *db) == 0)
            return true;
    return admin_error(a, "3D000", "no database \"%s\" in [databases]; see SHOW DATABASES", *db);
}

static bool cmd_pause(AdminConn *a, const Args *args)
{
    const char *db;

    if (!admin_db_arg(a, args, "PAUSE", false, &db))
        return false;
    ops_pause(a->ops, db);
    pkt_command_complete(&a->out, "PAUSE");
    return true;
}

static bool cmd_resume(AdminConn *a, const Args *args)
{
    const char *db;

    if (!admin_db_arg(a, args, "RESUME", false, &db))
        return false;
    ops_resume(a->ops, db);
    pkt_command_complete(&a->out, "RESUME");
    return true;
}

static bool cmd_reconnect(AdminConn *a, const Args *args)
{
    const char *db;

    if (!admin_db_arg(a, args, "RECONNECT", false, &db))
        return false;
    log_info("RECONNECT %s: %d server connections to replace", db ? db : "(all)",
             ops_reconnect(a->ops, db));
    pkt_command_complete(&a->out, "RECONNECT");
    return true;
}

static bool cmd_kill(AdminConn *a, const Args *args)
{
    const char *db;

    if (!admin_db_arg(a, args, "KILL", true, &db))
        return false;
    log_info("KILL %s: %d clients dropped", db, ops_kill(a->ops, db));
    pkt_command_complete(&a->out, "KILL");
    return true;
}

static bool cmd_shutdown(AdminConn *a, const Args *args)
{
    bool immediate = args->n == 1 && strcasecmp(args->word[0], "immediate") == 0;

    if (args->n > 1 || (args->n == 1 && !immediate))
        return admin_error(a, "42601", "usage: SHUTDOWN [IMMEDIATE]");
    log_info("SHUTDOWN%s from the admin console (user %s)", immediate ? " IMMEDIATE" : "", a->user);
    pkt_command_complete(&a->out, "SHUTDOWN");
    ops_shutdown(a->ops, immediate ? SHUTDOWN_IMMEDIATE : SHUTDOWN_GRACEFUL);
    return true;
}

static bool cmd_ignored(AdminConn *a, const Args *args)
{
    pkt_command_complete(&a->out, "SET");
    return true;
}

/* Split one statement into words (double quotes around a word are dropped). */
static int admin_words(char *stmt, char **word, int max)
{
    int n = 0;
    char *save = NULL;

    for (char *t = strtok_r(stmt, " \t\r\n", &save); t; t = strtok_r(NULL, " \t\r\n", &save)) {
        size_t len = strlen(t);
        if (n == max)
            return -1;
        if (len >= 2 && t[0] == '"' && t[len - 1] == '"') {
            t[len - 1] = '\0';
            t++;
        }
        word[n++] = t;
    }
    return n;
}

/* Run one statement; false when it ended in an error. */
static bool admin_statement(AdminConn *a, char *stmt)
{
    char *word[ADMIN_MAX_WORDS + 1];
    int n = admin_words(stmt, word, ADMIN_MAX_WORDS + 1);
    Args args;

    if (n < 0)
        return admin_error(a, "42601", "too many words; see SHOW HELP");
    args.n = n - 1;
    for (int i = 1; i < n; i++)
        args.word[i - 1] = word[i];
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const AdminCommand *c = &commands[i];
        if (strcasecmp(word[0], c->word) != 0)
            continue;
        if (c->admin_only && a->role != ROLE_ADMIN)
            return admin_error(a, "42501",
                               "%s needs a user listed in admin_users; \"%s\" may only SHOW "
                               "(stats_users)",
                               c->word, a->user);
        return c->handler(a, &args);
    }
    return admin_error(a, "42601", "unknown command \"%s\"; see SHOW HELP", word[0]);
}

/* A simple Query: statements separated by ';', stopping at the first error. */
static void admin_query(AdminConn *a, const uint8_t *body, uint32_t len)
{
    char *sql = strndup((const char *)body, len), *save = NULL;
    bool any = false;

    if (!sql) {
        admin_close(a, "out of memory");
        return;
    }
    for (char *stmt = strtok_r(sql, ";", &save); stmt; stmt = strtok_r(NULL, ";", &save)) {
        if (strspn(stmt, " \t\r\n") == strlen(stmt))
            continue;
        any = true;
        if (!admin_statement(a, stmt))
            break;
    }
    if (!any)
        pkt_empty_query(&a->out);
    free(sql);
    pkt_ready(&a->out, 'I');
}

/* Logged-in input: typed messages, one at a time, while output drains. */
static void admin_console_input(AdminConn *a)
{
    uint8_t hdr[PROTO_HDR_LEN];
    char type;
    uint32_t len;

    while (a->state == ADM_READY && iobuf_len(&a->io.in) >= PROTO_HDR_LEN) {
        const uint8_t *msg;
        if (io_pending_output(&a->io) > IO_HIGH_WATERMARK) {
            io_read(&a->io, false); /* resumed on IO_DRAINED */
            return;
        }
        iobuf_copyout(&a->io.in, hdr, PROTO_HDR_LEN);
        if (proto_frame_header(hdr, ADMIN_MAX_MSG, &type, &len) != FRAME_OK) {
            admin_refuse(a, "08P01", "invalid message length (the console takes at most %d bytes)",
                         ADMIN_MAX_MSG);
            return;
        }
        if (iobuf_len(&a->io.in) < PROTO_HDR_LEN + len)
            return;
        msg = iobuf_data(&a->io.in) + PROTO_HDR_LEN;
        switch (type) {
        case 'Q':
            admin_query(a, msg, len);
            break;
        case 'X':
            admin_close(a, "client closed the connection");
            return;
        case 'S':
            a->skip_to_sync = false;
            pkt_ready(&a->out, 'I');
            break;
        default:
            if (!a->skip_to_sync)
                pkt_error(&a->out, "ERROR", "0A000",
                          "the admin console takes simple queries only (psql, or a driver "
                          "without parameters and prepared statements)");
            a->skip_to_sync = true;
            break;
        }
        iobuf_drain(&a->io.in, PROTO_HDR_LEN + len);
        if (a->state == ADM_CLOSING)
            return;
        admin_flush_out(a);
    }
}

/* ---- login ------------------------------------------------------------------------------- */

static bool user_listed(const char *list, const char *user)
{
    size_t ulen = strlen(user);

    for (const char *p = list; *p;) {
        size_t n;
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        n = strcspn(p, ",");
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == ulen && strncmp(p, user, n) == 0)
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

/* Authenticated: the role decides whether the user may stay. */
static void admin_welcome(AdminConn *a)
{
    const Config *cfg = a->ops->w->cfg;
    int32_t key[2];

    if (user_listed(cfg->admin_users, a->user))
        a->role = ROLE_ADMIN;
    else if (user_listed(cfg->stats_users, a->user))
        a->role = ROLE_STATS;
    if (a->role == ROLE_NONE) {
        admin_refuse(a, "28000",
                     "user \"%s\" may not use the admin console; list it in admin_users or "
                     "stats_users",
                     a->user);
        return;
    }
    if (!auth_random(key, sizeof(key))) {
        admin_refuse(a, "58000", "could not generate a cancel key");
        return;
    }
    pkt_auth_ok(&a->out);
    pkt_param_status(&a->out, "server_version", "15.0 (pgcoalesce " PGC_VERSION ")");
    pkt_param_status(&a->out, "server_encoding", "UTF8");
    pkt_param_status(&a->out, "client_encoding", "UTF8");
    pkt_param_status(&a->out, "DateStyle", "ISO, MDY");
    pkt_param_status(&a->out, "integer_datetimes", "on");
    pkt_param_status(&a->out, "standard_conforming_strings", "on");
    pkt_backend_key(&a->out, key[0] & 0x7fffffff, key[1]);
    pkt_ready(&a->out, 'I');
    a->state = ADM_READY;
    log_info("admin %s user %s logged in (%s)", a->addr, a->user,
             a->role == ROLE_ADMIN ? "admin_users" : "stats_users");
}

static void admin_auth_result(AdminConn *a, AuthResult r, const char *sqlstate, const char *msg)
{
    if (r == AUTHX_FAIL) {
        admin_refuse(a, sqlstate, "%s", msg);
        return;
    }
    if (r == AUTHX_OK)
        admin_welcome(a);
    if (a->state != ADM_CLOSING && a->state != ADM_FLUSH)
        admin_flush_out(a);
}

static void admin_startup(AdminConn *a, const StartupPacket *sp)
{
    const char *sqlstate = NULL;
    char msg[256];
    AuthResult r;

    a->user = strdup(sp->user ? sp->user : "");
    if (!a->user) {
        admin_close(a, "out of memory");
        return;
    }
    if (!sp->database || strcmp(sp->database, ADMIN_DBNAME) != 0) {
        admin_refuse(a, "3D000", "the admin console's database is \"%s\", not \"%s\"", ADMIN_DBNAME,
                     sp->database ? sp->database : "");
        return;
    }
    a->state = ADM_AUTH;
    r = auth_exchange_begin(&a->auth, a->ops->w->cfg, a->user, &a->out, &sqlstate, msg,
                            sizeof(msg));
    admin_auth_result(a, r, sqlstate, msg);
}

/* Untyped startup-phase packets: startup, SSLRequest (refused), cancel. */
static void admin_startup_input(AdminConn *a)
{
    uint8_t lenbuf[4], pkt[PROTO_MAX_STARTUP_LEN];
    StartupPacket sp;
    const char *err;
    uint32_t len;

    while (a->state == ADM_STARTUP && iobuf_len(&a->io.in) >= 4) {
        iobuf_copyout(&a->io.in, lenbuf, 4);
        len = ((uint32_t)lenbuf[0] << 24) | ((uint32_t)lenbuf[1] << 16) |
              ((uint32_t)lenbuf[2] << 8) | lenbuf[3];
        if (len < 8 || len > PROTO_MAX_STARTUP_LEN) {
            admin_refuse(a, "08P01", "invalid startup packet length %u", len);
            return;
        }
        if (iobuf_len(&a->io.in) < len)
            return;
        iobuf_remove(&a->io.in, pkt, len);
        err = proto_parse_startup(pkt + 4, len - 4, &sp);
        if (err) {
            admin_refuse(a, "08P01", "%s", err);
            return;
        }
        if (sp.code == PROTO_SSL_REQUEST || sp.code == PROTO_GSSENC_REQUEST) {
            io_send(&a->io, "N", 1);
            continue;
        }
        if (sp.code == PROTO_CANCEL_REQUEST) {
            admin_close(a, "cancel request: nothing runs on the console");
            return;
        }
        admin_startup(a, &sp);
    }
}

static void admin_auth_input(AdminConn *a)
{
    uint8_t hdr[PROTO_HDR_LEN];
    const char *sqlstate = NULL;
    char type, msg[256];
    uint32_t len;
    AuthResult r;

    while (a->state == ADM_AUTH && iobuf_len(&a->io.in) >= PROTO_HDR_LEN) {
        const uint8_t *body;
        iobuf_copyout(&a->io.in, hdr, PROTO_HDR_LEN);
        if (proto_frame_header(hdr, 8192, &type, &len) != FRAME_OK || type != 'p') {
            if (type == 'X')
                admin_close(a, "client gave up during login");
            else
                admin_refuse(a, "08P01", "expected a password message");
            return;
        }
        if (iobuf_len(&a->io.in) < PROTO_HDR_LEN + len)
            return;
        body = iobuf_data(&a->io.in) + PROTO_HDR_LEN;
        r = auth_exchange_step(&a->auth, a->ops->w->cfg, a->user, body, len, &a->out, &sqlstate,
                               msg, sizeof(msg));
        iobuf_drain(&a->io.in, PROTO_HDR_LEN + len);
        admin_auth_result(a, r, sqlstate, msg);
    }
}

/* First bytes: a startup packet's length begins with a zero byte (it is far
 * below 16 MiB); an HTTP request with a method's capital letter. */
static void admin_sniff(AdminConn *a)
{
    uint8_t first;

    if (iobuf_copyout(&a->io.in, &first, 1) != 1)
        return;
    if (first == 0) {
        a->state = ADM_STARTUP;
    } else if (first >= 'A' && first <= 'Z') {
        a->state = ADM_HTTP;
    } else {
        admin_close(a, "neither PostgreSQL nor HTTP");
    }
}

static void admin_on_io(void *arg, IoEvent ev)
{
    AdminConn *a = arg;

    switch (ev) {
    case IO_READ:
        if (a->state == ADM_SNIFF)
            admin_sniff(a);
        if (a->state == ADM_STARTUP)
            admin_startup_input(a);
        if (a->state == ADM_AUTH)
            admin_auth_input(a);
        if (a->state == ADM_READY)
            admin_console_input(a);
        else if (a->state == ADM_HTTP)
            http_input(a);
        else if (a->state == ADM_FLUSH)
            iobuf_drain(&a->io.in, iobuf_len(&a->io.in));
        break;
    case IO_DRAINED:
        if (a->state == ADM_READY) {
            io_read(&a->io, true);
            admin_console_input(a);
        }
        break;
    case IO_EOF:
        admin_close(a, "client closed the connection");
        break;
    case IO_ERROR:
        admin_close(a, strerror(a->io.err));
        break;
    case IO_CONNECTED:
        break;
    }
}
