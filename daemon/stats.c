/*
 * Statistics: the hot-path counters' helpers (histograms, the query clock;
 * no allocation, no locks: one worker writes its pools' PoolStats) and the
 * renderers that turn pools into Prometheus text and JSON for the admin
 * port's /metrics and /stats.
 */
#include "daemon/admin.h"
#include "daemon/cache.h"
#include "daemon/log.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

const uint64_t stats_hist_bounds_usec[STATS_HIST_BUCKETS - 1] = {
    500,    1000,   2500,   5000,    10000,   25000,   50000,
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

void stats_observe(uint64_t *hist, uint64_t usec)
{
    int i = 0;

    while (i < STATS_HIST_BUCKETS - 1 && usec > stats_hist_bounds_usec[i])
        i++;
    hist[i]++;
}

void stats_query_begin(Server *s)
{
    if (s->query_start == 0)
        s->query_start = worker_now(s->w);
}

void stats_query_end(Server *s)
{
    double d;
    uint64_t usec;

    if (s->query_start == 0)
        return;
    d = worker_now(s->w) - s->query_start;
    usec = d > 0 ? (uint64_t)(d * 1e6) : 0;
    s->query_start = 0;
    s->pool->stats.query_usec += usec;
    stats_observe(s->pool->stats.query_hist, usec);
}

uint64_t stats_pool_max_wait_usec(const Pool *p, double now)
{
    /* The list is in arrival order: its first client waited longest. */
    const Client *c = list_entry(list_first(&p->waiting_clients), Client);
    double d = c ? now - c->wait_since : 0;

    return d > 0 ? (uint64_t)(d * 1e6) : 0;
}

int stats_pool_overflow(const Pool *p)
{
    int over = pool_server_count(p) - p->pool_size;

    return over > 0 ? over : 0;
}

uint64_t stats_hist_count(const uint64_t *hist)
{
    uint64_t n = 0;

    for (int i = 0; i < STATS_HIST_BUCKETS; i++)
        n += hist[i];
    return n;
}

/* ---- Prometheus text format ------------------------------------------------------------ */

/* A label value with \, " and newline escaped. */
static void prom_escape(struct evbuffer *out, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\')
            evbuffer_add(out, "\\\\", 2);
        else if (*v == '"')
            evbuffer_add(out, "\\\"", 2);
        else if (*v == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, v, 1);
    }
}

static void prom_family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{database="..",user=".."[,extra]} value */
static void prom_pool_sample(struct evbuffer *out, const char *name, const Pool *p,
                             const char *extra, const char *value)
{
    evbuffer_add_printf(out, "%s{database=\"", name);
    prom_escape(out, p->db_name);
    evbuffer_add(out, "\",user=\"", 8);
    prom_escape(out, p->user_name);
    evbuffer_add_printf(out, "\"%s%s} %s\n", extra ? "," : "", extra ? extra : "", value);
}

static void prom_pool_u64(struct evbuffer *out, const char *name, const Pool *p, const char *extra,
                          uint64_t v)
{
    char buf[32];

    snprintf(buf, sizeof(buf), "%" PRIu64, v);
    prom_pool_sample(out, name, p, extra, buf);
}

/* What one per-pool family shows. */
typedef struct PoolMetric {
    const char *name;
    const char *type;
    const char *help;
    uint64_t (*get)(const Pool *p, double now);
} PoolMetric;

#define POOL_GETTER(fn, expr)                                                                      \
    static uint64_t fn(const Pool *p, double now)                                                  \
    {                                                                                              \
        (void)now;                                                                                 \
        return (uint64_t)(expr);                                                                   \
    }

POOL_GETTER(get_waiting, p->waiting_clients.count)
POOL_GETTER(get_pool_size, p->pool_size)
POOL_GETTER(get_max_overflow, p->max_overflow)
POOL_GETTER(get_overflow, stats_pool_overflow(p))
POOL_GETTER(get_paused, pool_paused(p))
POOL_GETTER(get_queries, p->stats.query_count)
POOL_GETTER(get_xacts, p->stats.xact_count)
POOL_GETTER(get_bytes_in, p->stats.bytes_in)
POOL_GETTER(get_bytes_out, p->stats.bytes_out)
POOL_GETTER(get_ping_failures, p->stats.ping_failures)
POOL_GETTER(get_session_resets, p->stats.session_resets)
POOL_GETTER(get_recycled, p->stats.recycled)
POOL_GETTER(get_timeouts, p->stats.timeouts)
POOL_GETTER(get_connect_failures, p->stats.connect_failures)
POOL_GETTER(get_n1_runs, p->stats.n1_runs)

static const PoolMetric pool_metrics[] = {
    {"pgcoalesce_waiting_clients", "gauge", "Clients waiting for a server connection.",
     get_waiting},
    {"pgcoalesce_pool_size", "gauge", "Server connections a pool keeps (pool_size).",
     get_pool_size},
    {"pgcoalesce_pool_max_overflow", "gauge",
     "Extra server connections a pool may open under load (max_overflow).", get_max_overflow},
    {"pgcoalesce_overflow_in_use", "gauge", "Server connections open beyond pool_size.",
     get_overflow},
    {"pgcoalesce_pool_paused", "gauge", "1 while new transactions of the pool wait (PAUSE).",
     get_paused},
    {"pgcoalesce_queries_total", "counter",
     "Queries sent to servers (simple Query, Execute and FunctionCall messages).", get_queries},
    {"pgcoalesce_transactions_total", "counter",
     "Transactions that ended and gave their server back.", get_xacts},
    {"pgcoalesce_received_bytes_total", "counter", "Bytes received from clients for servers.",
     get_bytes_in},
    {"pgcoalesce_sent_bytes_total", "counter", "Bytes sent to clients from servers.",
     get_bytes_out},
    {"pgcoalesce_pre_ping_failures_total", "counter",
     "Server connections found dead before being handed out (pool_pre_ping).", get_ping_failures},
    {"pgcoalesce_session_resets_total", "counter",
     "Server connections reset with DISCARD ALL because a transaction-mode client left session "
     "state (temp table, SET of an unreported parameter, LISTEN, ...).",
     get_session_resets},
    {"pgcoalesce_recycled_total", "counter",
     "Server connections closed because of their age (pool_recycle).", get_recycled},
    {"pgcoalesce_pool_timeouts_total", "counter",
     "Clients that waited pool_timeout for a server connection in vain.", get_timeouts},
    {"pgcoalesce_server_connect_failures_total", "counter",
     "Attempts to open a server connection that failed.", get_connect_failures},
    {"pgcoalesce_n1_runs_total", "counter",
     "N+1 runs (a child statement repeated n1_threshold times for the rows of its parent) "
     "detected in the pool's client sessions.",
     get_n1_runs},
};

static void prom_pool_families(struct evbuffer *out, const Worker *w, double now)
{
    for (size_t i = 0; i < sizeof(pool_metrics) / sizeof(pool_metrics[0]); i++) {
        const PoolMetric *m = &pool_metrics[i];
        prom_family(out, m->name, m->type, m->help);
        for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n)) {
            const Pool *p = list_entry(n, Pool);
            prom_pool_u64(out, m->name, p, NULL, m->get(p, now));
        }
    }
}

/* Gauges by state: clients and servers. */
static void prom_states(struct evbuffer *out, const Worker *w)
{
    prom_family(out, "pgcoalesce_clients", "gauge", "Client connections of a pool by state.");
    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n)) {
        const Pool *p = list_entry(n, Pool);
        prom_pool_u64(out, "pgcoalesce_clients", p, "state=\"active\"",
                      (uint64_t)p->active_clients.count);
        prom_pool_u64(out, "pgcoalesce_clients", p, "state=\"waiting\"",
                      (uint64_t)p->waiting_clients.count);
        prom_pool_u64(out, "pgcoalesce_clients", p, "state=\"idle\"",
                      (uint64_t)p->idle_clients.count);
    }
    prom_family(out, "pgcoalesce_servers", "gauge", "Server connections of a pool by state.");
    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n)) {
        const Pool *p = list_entry(n, Pool);
        prom_pool_u64(out, "pgcoalesce_servers", p, "state=\"active\"",
                      (uint64_t)p->active_servers.count);
        prom_pool_u64(out, "pgcoalesce_servers", p, "state=\"idle\"",
                      (uint64_t)p->idle_servers.count);
        prom_pool_u64(out, "pgcoalesce_servers", p, "state=\"testing\"",
                      (uint64_t)p->testing_servers.count);
        prom_pool_u64(out, "pgcoalesce_servers", p, "state=\"connecting\"",
                      (uint64_t)p->connecting_servers.count);
    }
}

static void prom_max_wait(struct evbuffer *out, const Worker *w, double now)
{
    char buf[32];

    prom_family(out, "pgcoalesce_max_wait_seconds", "gauge",
                "How long the longest-waiting client of a pool has waited so far.");
    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n)) {
        const Pool *p = list_entry(n, Pool);
        snprintf(buf, sizeof(buf), "%.6f", (double)stats_pool_max_wait_usec(p, now) / 1e6);
        prom_pool_sample(out, "pgcoalesce_max_wait_seconds", p, NULL, buf);
    }
}

/* A histogram family from per-bucket counts (cumulated here). */
static void prom_histogram(struct evbuffer *out, const Worker *w, const char *name,
                           const char *help, size_t hist_off, size_t sum_off)
{
    char metric[96], le[32], value[32];

    prom_family(out, name, "histogram", help);
    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n)) {
        const Pool *p = list_entry(n, Pool);
        const uint64_t *hist = (const uint64_t *)((const char *)&p->stats + hist_off);
        uint64_t sum = *(const uint64_t *)((const char *)&p->stats + sum_off), cum = 0;

        snprintf(metric, sizeof(metric), "%s_bucket", name);
        for (int i = 0; i < STATS_HIST_BUCKETS; i++) {
            cum += hist[i];
            if (i < STATS_HIST_BUCKETS - 1)
                snprintf(le, sizeof(le), "le=\"%g\"", (double)stats_hist_bounds_usec[i] / 1e6);
            else
                snprintf(le, sizeof(le), "le=\"+Inf\"");
            prom_pool_u64(out, metric, p, le, cum);
        }
        snprintf(metric, sizeof(metric), "%s_sum", name);
        snprintf(value, sizeof(value), "%.6f", (double)sum / 1e6);
        prom_pool_sample(out, metric, p, NULL, value);
        snprintf(metric, sizeof(metric), "%s_count", name);
        prom_pool_u64(out, metric, p, NULL, cum);
    }
}

/* Process-wide numbers, without labels. */
static void prom_process(struct evbuffer *out, const Ops *ops)
{
    const Worker *w = ops->w;

    prom_family(out, "pgcoalesce_build_info", "gauge", "Always 1; the version is a label.");
    evbuffer_add_printf(out, "pgcoalesce_build_info{version=\"%s\"} 1\n", PGC_VERSION);
    prom_family(out, "pgcoalesce_start_time_seconds", "gauge",
                "When pgcoalesce started, in seconds since the Unix epoch.");
    evbuffer_add_printf(out, "pgcoalesce_start_time_seconds %lld\n", (long long)ops->started);
    prom_family(out, "pgcoalesce_client_connections", "gauge",
                "Client connections, logging in included.");
    evbuffer_add_printf(out, "pgcoalesce_client_connections %d\n", w->nclients);
    prom_family(out, "pgcoalesce_login_clients", "gauge", "Clients still logging in.");
    evbuffer_add_printf(out, "pgcoalesce_login_clients %d\n", w->login_clients.count);
    prom_family(out, "pgcoalesce_max_client_connections", "gauge",
                "Most client connections accepted at once (max_client_conn).");
    evbuffer_add_printf(out, "pgcoalesce_max_client_connections %d\n", w->cfg->max_client_conn);
    prom_family(out, "pgcoalesce_paused", "gauge", "1 while PAUSE (all pools) is in force.");
    evbuffer_add_printf(out, "pgcoalesce_paused %d\n", ops->paused ? 1 : 0);
    prom_family(out, "pgcoalesce_shutting_down", "gauge", "1 once a shutdown has begun.");
    evbuffer_add_printf(out, "pgcoalesce_shutting_down %d\n", ops->shutdown ? 1 : 0);
    prom_family(out, "pgcoalesce_reloads_total", "counter", "Configuration reloads applied.");
    evbuffer_add_printf(out, "pgcoalesce_reloads_total %" PRIu64 "\n", ops->reloads);
    prom_family(out, "pgcoalesce_reload_failures_total", "counter",
                "Configuration reloads refused because of an error in the file.");
    evbuffer_add_printf(out, "pgcoalesce_reload_failures_total %" PRIu64 "\n",
                        ops->reload_failures);
}

void stats_render_metrics(const Ops *ops, struct evbuffer *out)
{
    const Worker *w = ops->w;
    double now = now_sec();

    prom_process(out, ops);
    prom_states(out, w);
    prom_max_wait(out, w, now);
    prom_pool_families(out, w, now);
    prom_histogram(out, w, "pgcoalesce_query_duration_seconds",
                   "Time from a client's request to the server's ReadyForQuery.",
                   offsetof(PoolStats, query_hist), offsetof(PoolStats, query_usec));
    prom_histogram(out, w, "pgcoalesce_wait_duration_seconds",
                   "Time clients waited for a server connection.", offsetof(PoolStats, wait_hist),
                   offsetof(PoolStats, wait_usec));
    orm_render_metrics(ops, out);
    cache_report_metrics(ops->w, out);
}

/* ---- JSON ------------------------------------------------------------------------------ */

void stats_json_string(struct evbuffer *out, const char *s)
{
    evbuffer_add(out, "\"", 1);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            evbuffer_add_printf(out, "\\%c", ch);
        else if (ch < 0x20)
            evbuffer_add_printf(out, "\\u%04x", ch);
        else
            evbuffer_add(out, s, 1);
    }
    evbuffer_add(out, "\"", 1);
}

static void json_hist(struct evbuffer *out, const char *name, const uint64_t *hist, uint64_t sum)
{
    uint64_t cum = 0;

    evbuffer_add_printf(out, "\"%s\":{\"buckets\":[", name);
    for (int i = 0; i < STATS_HIST_BUCKETS; i++) {
        cum += hist[i];
        if (i < STATS_HIST_BUCKETS - 1)
            evbuffer_add_printf(out, "%s{\"le\":%g,\"count\":%" PRIu64 "}", i ? "," : "",
                                (double)stats_hist_bounds_usec[i] / 1e6, cum);
        else
            evbuffer_add_printf(out, ",{\"le\":\"+Inf\",\"count\":%" PRIu64 "}", cum);
    }
    evbuffer_add_printf(out, "],\"sum_seconds\":%.6f,\"count\":%" PRIu64 "}", (double)sum / 1e6,
                        cum);
}

static void json_pool(struct evbuffer *out, const Pool *p, double now)
{
    const PoolStats *st = &p->stats;

    evbuffer_add(out, "{\"database\":", 12);
    stats_json_string(out, p->db_name);
    evbuffer_add(out, ",\"user\":", 8);
    stats_json_string(out, p->user_name);
    evbuffer_add_printf(out,
                        ",\"pool_mode\":\"%s\",\"pool_size\":%d,\"max_overflow\":%d,\"paused\":%s,"
                        "\"clients\":{\"active\":%d,\"waiting\":%d,\"idle\":%d},"
                        "\"servers\":{\"active\":%d,\"idle\":%d,\"testing\":%d,\"connecting\":%d},"
                        "\"max_wait_seconds\":%.6f,\"overflow_in_use\":%d,",
                        p->mode == POOL_SESSION ? "session" : "transaction", p->pool_size,
                        p->max_overflow, pool_paused(p) ? "true" : "false", p->active_clients.count,
                        p->waiting_clients.count, p->idle_clients.count, p->active_servers.count,
                        p->idle_servers.count, p->testing_servers.count,
                        p->connecting_servers.count, (double)stats_pool_max_wait_usec(p, now) / 1e6,
                        stats_pool_overflow(p));
    evbuffer_add_printf(
        out,
        "\"queries\":%" PRIu64 ",\"transactions\":%" PRIu64 ",\"received_bytes\":%" PRIu64
        ",\"sent_bytes\":%" PRIu64 ",\"pre_ping_failures\":%" PRIu64 ",\"recycled\":%" PRIu64
        ",\"pool_timeouts\":%" PRIu64 ",\"server_connect_failures\":%" PRIu64
        ",\"max_wait_ever_seconds\":%.6f,",
        st->query_count, st->xact_count, st->bytes_in, st->bytes_out, st->ping_failures,
        st->recycled, st->timeouts, st->connect_failures, (double)st->max_wait_usec / 1e6);
    json_hist(out, "query_duration", st->query_hist, st->query_usec);
    evbuffer_add(out, ",", 1);
    json_hist(out, "wait_duration", st->wait_hist, st->wait_usec);
    evbuffer_add(out, "}", 1);
}

void stats_render_json(const Ops *ops, struct evbuffer *out)
{
    const Worker *w = ops->w;
    double now = now_sec();
    bool first = true;

    evbuffer_add_printf(out,
                        "{\"version\":\"%s\",\"start_time\":%lld,\"paused\":%s,"
                        "\"shutting_down\":%s,\"client_connections\":%d,\"login_clients\":%d,"
                        "\"reloads\":%" PRIu64 ",\"reload_failures\":%" PRIu64 ",\"pools\":[",
                        PGC_VERSION, (long long)ops->started, ops->paused ? "true" : "false",
                        ops->shutdown ? "true" : "false", w->nclients, w->login_clients.count,
                        ops->reloads, ops->reload_failures);
    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n)) {
        if (!first)
            evbuffer_add(out, ",", 1);
        first = false;
        json_pool(out, list_entry(n, Pool), now);
    }
    evbuffer_add(out, "]}\n", 3);
}
