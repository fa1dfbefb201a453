/*
 * Table facts for the identity-map cache, asked of a pool's upstream over
 * one non-blocking libpq connection of the catalog's own: a hash table of
 * answers with a TTL, a FIFO of names waiting for their lookup, and the
 * connection's life (resolve, connect, one query at a time, backoff).
 */
#include "daemon/catalog.h"

#include "daemon/log.h"
#include "daemon/upstream.h"
#include "daemon/worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CATALOG_BUCKETS     256  /* hash chains; a pool reads tens of tables, not thousands */
#define CATALOG_MAX_TABLES  4096 /* entries held; past it only expired ones make room */
#define CATALOG_IO_TIMEOUT  10.0 /* seconds a connect or a query may take */
#define CATALOG_RETRY       5.0  /* seconds before a table whose query failed is asked again */
#define CATALOG_BACKOFF_MIN 1.0  /* seconds after a connection failure, doubling... */
#define CATALOG_BACKOFF_MAX 30.0 /* ...up to this */
#define PG_OID_TEXT         25

/* The catalog connection's life; each state says what the events wait for. */
typedef enum {
    CAT_DOWN,       /* no connection: one may be opened from next_connect on */
    CAT_RESOLVING,  /* asynchronous DNS of the pool's host */
    CAT_CONNECTING, /* PQconnectPoll: socket events as it asks */
    CAT_IDLE,       /* connected, nothing in flight: read events only (a lost connection) */
    CAT_BUSY,       /* one query in flight */
} CatState;

/* What the query in flight is for. */
typedef enum {
    CQ_NONE,
    CQ_ISOLATION, /* default_transaction_isolation */
    CQ_TABLE,     /* a table's facts; inflight says whose (NULL: forgotten meanwhile) */
} CatQuery;

typedef struct CatEntry {
    struct CatEntry *hnext; /* hash chain */
    struct CatEntry *qnext; /* lookup FIFO, while queued */
    bool has_schema;        /* false: the name as search_path finds it */
    char schema[CATALOG_NAME_MAX];
    char name[CATALOG_NAME_MAX];
    bool known;      /* info holds an answer (maybe expired) */
    bool pending;    /* in the FIFO or in flight */
    double expires;  /* info trusted until (now_sec) */
    double retry_at; /* a failed query is not repeated before */
    TableInfo info;
} CatEntry;

struct Catalog {
    Pool *pool;
    PGconn *conn;
    CatState state;
    PqWatch io;          /* on PQsocket */
    struct event *timer; /* deadline of the connect or query in progress */
    struct evdns_getaddrinfo_request *dns_req;
    char hostaddr[INET6_ADDRSTRLEN]; /* what DNS gave for pool->host */
    double next_connect;             /* CAT_DOWN: no connection attempt before */
    double backoff;                  /* the wait after the next failure */

    CatEntry *buckets[CATALOG_BUCKETS];
    uint64_t ntables;
    CatEntry *qhead, *qtail; /* names waiting for their lookup, oldest first */
    int nqueue;

    CatQuery query;     /* in flight (CAT_BUSY) */
    CatEntry *inflight; /* CQ_TABLE: whose facts */
    PGresult *result;   /* the query's first result, kept until the last one arrived */
    bool asked_isolation;
    int read_committed;

    uint64_t lookups;
    uint64_t failures;
    char last_error[160];
};

/*
 * One round trip per table: the relation to_regclass finds for the name
 * (so a missing table is no error), with one row per primary-key column in
 * the table's column order (attnum: the order logical replication gives key
 * columns in, so both sides build the same key; orm/cache_key.h), or one row
 * with NULL key columns when it has none.
 */
static const char TABLE_SQL[] =
    "SELECT c.oid, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,"
    " n.nspname, a.attname, a.atttypid, pg_catalog.format_type(a.atttypid, NULL)"
    " FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary"
    " LEFT JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
    " LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
    " WHERE c.oid = pg_catalog.to_regclass(CASE WHEN $1 IS NULL"
    " THEN pg_catalog.quote_ident($2) ELSE pg_catalog.format('%I.%I', $1, $2) END)"
    " ORDER BY a.attnum";
#define TABLE_COLS 9

static const char ISOLATION_SQL[] =
    "SELECT pg_catalog.current_setting('default_transaction_isolation')";

static void cat_on_io(evutil_socket_t fd, short what, void *arg);
static void cat_pump(Catalog *cat);

/* ---- entries ---------------------------------------------------------- */

/* FNV-1a over schema (or nothing) and name, told apart by a byte neither has. */
static unsigned cat_hash(const char *schema, const char *name)
{
    uint32_t h = 2166136261u;

    for (const char *s = schema; s && *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    h = (h ^ (schema ? 1u : 2u)) * 16777619u;
    for (const char *s = name; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h % CATALOG_BUCKETS;
}

static CatEntry *cat_find(Catalog *cat, const char *schema, const char *name)
{
    for (CatEntry *e = cat->buckets[cat_hash(schema, name)]; e; e = e->hnext) {
        if (e->has_schema != (schema != NULL) || strcmp(e->name, name) != 0)
            continue;
        if (!schema || strcmp(e->schema, schema) == 0)
            return e;
    }
    return NULL;
}

/* Drop the entries that hold nothing worth keeping (unknown or expired, not pending). */
static void cat_sweep(Catalog *cat, double now)
{
    for (int b = 0; b < CATALOG_BUCKETS; b++) {
        CatEntry **pp = &cat->buckets[b];
        while (*pp) {
            CatEntry *e = *pp;
            if (!e->pending && (!e->known || now >= e->expires)) {
                *pp = e->hnext;
                free(e);
                cat->ntables--;
            } else {
                pp = &e->hnext;
            }
        }
    }
}

/* A new (unknown) entry for schema.name; NULL when out of memory or full. */
static CatEntry *cat_insert(Catalog *cat, const char *schema, const char *name, double now)
{
    unsigned b = cat_hash(schema, name);
    CatEntry *e;

    if (cat->ntables >= CATALOG_MAX_TABLES)
        cat_sweep(cat, now);
    if (cat->ntables >= CATALOG_MAX_TABLES)
        return NULL;
    e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->has_schema = schema != NULL;
    snprintf(e->schema, sizeof(e->schema), "%s", schema ? schema : "");
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->hnext = cat->buckets[b];
    cat->buckets[b] = e;
    cat->ntables++;
    return e;
}

/* Lookups still waiting are forgotten (not failed): their callers ask again. */
static void cat_queue_clear(Catalog *cat)
{
    while (cat->qhead) {
        CatEntry *e = cat->qhead;
        cat->qhead = e->qnext;
        e->qnext = NULL;
        e->pending = false;
    }
    cat->qtail = NULL;
    cat->nqueue = 0;
}

/* ---- the connection --------------------------------------------------- */

/* Wait for what (EV_READ and/or EV_WRITE) on the connection's socket. */
static bool cat_watch(Catalog *cat, short what)
{
    return pq_watch(&cat->io, cat->pool->w->base, cat->conn, what, false, cat_on_io, cat);
}

static void cat_deadline(Catalog *cat, bool on)
{
    struct timeval tv = {(time_t)CATALOG_IO_TIMEOUT, 0};

    if (!cat->timer)
        return;
    if (on)
        evtimer_add(cat->timer, &tv);
    else
        evtimer_del(cat->timer);
}

/* Close whatever is open or in progress; the entries stay. */
static void cat_disconnect(Catalog *cat)
{
    if (cat->dns_req) {
        struct evdns_getaddrinfo_request *req = cat->dns_req;
        cat->dns_req = NULL; /* the callback runs now, with EVUTIL_EAI_CANCEL */
        evdns_getaddrinfo_cancel(req);
    }
    pq_unwatch(&cat->io);
    cat_deadline(cat, false);
    if (cat->result)
        PQclear(cat->result);
    cat->result = NULL;
    if (cat->conn)
        PQfinish(cat->conn);
    cat->conn = NULL;
    cat->query = CQ_NONE;
    if (cat->inflight)
        cat->inflight->pending = false;
    cat->inflight = NULL;
    cat->state = CAT_DOWN;
}

/* libpq's message on one line (runs of blanks and newlines made one space), for logs. */
static void cat_one_line(char *dst, size_t cap, const char *msg)
{
    size_t n = 0;

    if (!msg || !*msg)
        msg = "unknown error";
    for (const char *s = msg; *s && n + 1 < cap; s++) {
        bool blank = *s == ' ' || *s == '\n' || *s == '\r' || *s == '\t';
        if (blank && (n == 0 || dst[n - 1] == ' '))
            continue;
        dst[n++] = blank ? ' ' : *s;
    }
    while (n > 0 && dst[n - 1] == ' ')
        n--;
    dst[n] = '\0';
}

/* Keep msg (one line already) as last_error, cut to its size. */
static void cat_set_error(Catalog *cat, const char *msg)
{
    size_t n = strnlen(msg, sizeof(cat->last_error) - 1);

    memcpy(cat->last_error, msg, n);
    cat->last_error[n] = '\0';
}

/*
 * An authentication failure with no plain password to offer: upstream_conninfo
 * leaves an md5 hash out (libpq cannot use one), so say what would help.
 */
static const char *cat_auth_hint(const Catalog *cat, const char *msg)
{
    const char *pw = cat->pool->server_password;

    if (!strstr(msg, "password") && !strstr(msg, "authentication"))
        return "";
    if (!pw)
        return " (the catalog connection needs a plain password for this user; none is known)";
    if (md5_is_hash(pw))
        return " (the catalog connection needs a plain password; the one configured is an md5 "
               "hash, which libpq cannot use)";
    return "";
}

/* The connection failed (or could not be opened): log once, back off, forget the FIFO. */
static void cat_fail(Catalog *cat, const char *msg)
{
    const Pool *p = cat->pool;
    char line[512];

    cat_one_line(line, sizeof(line), msg);
    log_warning("catalog %s/%s@%s:%d: connection failed: %s%s; cache bypassed, retry in %.0fs",
                p->dbname, p->server_user, p->host ? p->host : "", p->port, line,
                cat_auth_hint(cat, line), cat->backoff);
    cat_set_error(cat, line);
    cat->failures++;
    cat_disconnect(cat);
    cat_queue_clear(cat);
    cat->next_connect = now_sec() + cat->backoff;
    cat->backoff *= 2;
    if (cat->backoff > CATALOG_BACKOFF_MAX)
        cat->backoff = CATALOG_BACKOFF_MAX;
}

static void cat_fail_conn(Catalog *cat, const char *what)
{
    char msg[512];

    snprintf(msg, sizeof(msg), "%s: %s", what, cat->conn ? PQerrorMessage(cat->conn) : "");
    cat_fail(cat, msg);
}

/* Server notices would go to stderr by default: the catalog's queries expect none. */
static void cat_notice(void *arg, const char *message)
{
    char line[256];

    cat_one_line(line, sizeof(line), message);
    log_debug("catalog notice: %s", line);
}

/* The connection is up: nothing queued may wait longer. */
static void cat_connected(Catalog *cat)
{
    if (PQsetnonblocking(cat->conn, 1) != 0) {
        cat_fail_conn(cat, "could not set non-blocking mode");
        return;
    }
    cat_deadline(cat, false);
    cat->state = CAT_IDLE;
    cat->backoff = CATALOG_BACKOFF_MIN;
    cat->asked_isolation = false; /* as this login gets it */
    if (!cat_watch(cat, EV_READ)) {
        cat_fail(cat, "could not watch the connection's socket");
        return;
    }
    log_debug("catalog %s/%s: connected", cat->pool->dbname, cat->pool->server_user);
    cat_pump(cat);
}

/* One step of PQconnectPoll; waits for what it asks. */
static void cat_poll_connect(Catalog *cat)
{
    switch (PQconnectPoll(cat->conn)) {
    case PGRES_POLLING_READING:
        if (!cat_watch(cat, EV_READ))
            cat_fail(cat, "could not watch the connection's socket");
        return;
    case PGRES_POLLING_WRITING:
        if (!cat_watch(cat, EV_WRITE))
            cat_fail(cat, "could not watch the connection's socket");
        return;
    case PGRES_POLLING_OK:
        cat_connected(cat);
        return;
    default:
        cat_fail_conn(cat, "could not connect");
        return;
    }
}

/* Start libpq's connect, with hostaddr (numeric, or NULL) sparing it a blocking DNS lookup. */
static void cat_connect(Catalog *cat, const char *hostaddr)
{
    const char *keys[UPSTREAM_MAX_PARAMS + 1], *vals[UPSTREAM_MAX_PARAMS + 1];
    int n = 0;

    upstream_conninfo(cat->pool, false, keys, vals);
    while (keys[n])
        n++;
    if (hostaddr) {
        keys[n] = "hostaddr";
        vals[n] = hostaddr;
        n++;
        keys[n] = vals[n] = NULL;
    }
    cat->conn = PQconnectStartParams(keys, vals, 0);
    if (!cat->conn) {
        cat_fail(cat, "out of memory");
        return;
    }
    if (PQstatus(cat->conn) == CONNECTION_BAD) {
        cat_fail_conn(cat, "could not connect");
        return;
    }
    PQsetNoticeProcessor(cat->conn, cat_notice, cat);
    cat->state = CAT_CONNECTING;
    cat_deadline(cat, true);
    /* as libpq asks: the first poll is made once the socket is writable */
    if (!cat_watch(cat, EV_WRITE))
        cat_fail(cat, "could not watch the connection's socket");
}

static void cat_dns_done(int result, struct evutil_addrinfo *res, void *arg)
{
    Catalog *cat = arg;
    char msg[sizeof(cat->last_error)];
    int rc;

    if (result == EVUTIL_EAI_CANCEL)
        return; /* cat_disconnect, maybe from catalog_free: cat is not to be touched */
    cat->dns_req = NULL;
    if (result != 0 || !res) {
        snprintf(msg, sizeof(msg), "could not resolve host \"%s\": %s", cat->pool->host,
                 evutil_gai_strerror(result));
        cat_fail(cat, msg);
        return;
    }
    rc = getnameinfo(res->ai_addr, (socklen_t)res->ai_addrlen, cat->hostaddr, sizeof(cat->hostaddr),
                     NULL, 0, NI_NUMERICHOST);
    evutil_freeaddrinfo(res);
    if (rc != 0) {
        cat_fail(cat, "could not format the resolved address");
        return;
    }
    cat_connect(cat, cat->hostaddr);
}

/* Open the connection: resolve the host without blocking the loop, then connect. */
static void cat_open(Catalog *cat)
{
    Worker *w = cat->pool->w;
    struct evutil_addrinfo hints;
    struct evdns_getaddrinfo_request *req;
    char port[16];

    if (!cat->timer)
        cat->timer = evtimer_new(w->base, cat_on_io, cat);
    if (!cat->timer) {
        cat_fail(cat, "out of memory");
        return;
    }
    if (!upstream_needs_dns(cat->pool->host) || !w->dns) {
        cat_connect(cat, NULL);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", cat->pool->port);
    cat->state = CAT_RESOLVING;
    cat_deadline(cat, true);
    /* the callback may run before this returns (a hosts-file name, an error): req is NULL then */
    req = evdns_getaddrinfo(w->dns, cat->pool->host, port, &hints, cat_dns_done, cat);
    if (req)
        cat->dns_req = req;
}

/* ---- queries ---------------------------------------------------------- */

/* Push out what libpq holds, and wait for the answer (and for room, if it did not all go). */
static void cat_flush(Catalog *cat)
{
    int r = PQflush(cat->conn);

    if (r < 0) {
        cat_fail_conn(cat, "could not send a query");
        return;
    }
    if (!cat_watch(cat, r ? EV_READ | EV_WRITE : EV_READ))
        cat_fail(cat, "could not watch the connection's socket");
}

static void cat_send(Catalog *cat, CatQuery q, const char *sql, int nparams,
                     const char *const *vals)
{
    static const Oid types[2] = {PG_OID_TEXT, PG_OID_TEXT};

    if (!PQsendQueryParams(cat->conn, sql, nparams, types, vals, NULL, NULL, 0)) {
        cat_fail_conn(cat, "could not send a query");
        return;
    }
    cat->state = CAT_BUSY;
    cat->query = q;
    cat_deadline(cat, true);
    cat_flush(cat);
}

/* Idle and something to ask: the isolation level first (once per login), then the FIFO's head. */
static void cat_pump(Catalog *cat)
{
    CatEntry *e = cat->qhead;
    const char *vals[2];

    if (cat->state != CAT_IDLE)
        return;
    if (!cat->asked_isolation) {
        cat->asked_isolation = true;
        cat_send(cat, CQ_ISOLATION, ISOLATION_SQL, 0, NULL);
        return;
    }
    if (!e)
        return;
    cat->qhead = e->qnext;
    if (!cat->qhead)
        cat->qtail = NULL;
    e->qnext = NULL;
    cat->nqueue--;
    cat->inflight = e;
    vals[0] = e->has_schema ? e->schema : NULL;
    vals[1] = e->name;
    cat_send(cat, CQ_TABLE, TABLE_SQL, 2, vals);
}

static void cat_note_isolation(Catalog *cat, const PGresult *res)
{
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) != 1 ||
        PQgetisnull(res, 0, 0))
        return; /* stays unknown: the cache keeps bypassing */
    cat->read_committed = strcmp(PQgetvalue(res, 0, 0), "read committed") == 0 ? 1 : 0;
}

/* Parse an unsigned 32-bit number (an oid) that must be the whole string. */
static bool cat_parse_oid(const char *s, uint32_t *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v > UINT32_MAX)
        return false;
    *out = (uint32_t)v;
    return true;
}

static void cat_set_reason(TableInfo *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void cat_set_reason(TableInfo *t, const char *fmt, ...)
{
    va_list ap;

    t->cacheable = false;
    va_start(ap, fmt);
    vsnprintf(t->reason, sizeof(t->reason), fmt, ap);
    va_end(ap);
}

static bool cat_system_schema(const char *nsp)
{
    return strcmp(nsp, "pg_catalog") == 0 || strcmp(nsp, "information_schema") == 0 ||
           strncmp(nsp, "pg_toast", 8) == 0;
}

/*
 * The primary-key columns of res (rows from 0, in the key's order) into t;
 * false when the rows do not hold what TABLE_SQL promises. A key wider than
 * CACHE_KEY_COLS leaves npk 0 (and t uncacheable).
 */
static bool cat_fill_key(TableInfo *t, const PGresult *res)
{
    int n = PQntuples(res);

    if (PQgetisnull(res, 0, 6))
        return n == 1; /* no primary key */
    if (n > CACHE_KEY_COLS) {
        cat_set_reason(t, "primary key has %d columns (at most %d are supported)", n,
                       CACHE_KEY_COLS);
        return true;
    }
    for (int i = 0; i < n; i++) {
        const char *name = PQgetvalue(res, i, 6);
        if (PQgetisnull(res, i, 6) || PQgetisnull(res, i, 7) ||
            strlen(name) >= sizeof(t->pk_name[i]) ||
            !cat_parse_oid(PQgetvalue(res, i, 7), &t->pk_type[i]))
            return false;
        memcpy(t->pk_name[i], name, strlen(name) + 1);
    }
    t->npk = n;
    return true;
}

/* The first primary-key column whose type the cache cannot key on, or -1. */
static int cat_bad_key_type(const TableInfo *t)
{
    for (int i = 0; i < t->npk; i++)
        if (!cache_key_type_ok(t->pk_type[i]))
            return i;
    return -1;
}

/*
 * The facts in res (TABLE_SQL's answer) into t, with the verdict; false
 * when res is not what the query promises.
 */
static bool cat_fill(TableInfo *t, const PGresult *res)
{
    const char *kind, *persistence, *nsp;
    bool rls;
    int bad;

    memset(t, 0, sizeof(*t));
    t->cacheable = true;
    if (PQnfields(res) != TABLE_COLS)
        return false;
    if (PQntuples(res) == 0) {
        cat_set_reason(t, "no such table");
        return true;
    }
    for (int c = 0; c <= 5; c++)
        if (PQgetisnull(res, 0, c))
            return false;
    if (!cat_parse_oid(PQgetvalue(res, 0, 0), &t->oid) || t->oid == 0 || !cat_fill_key(t, res))
        return false;
    kind = PQgetvalue(res, 0, 1);
    persistence = PQgetvalue(res, 0, 2);
    rls = PQgetvalue(res, 0, 3)[0] == 't' || PQgetvalue(res, 0, 4)[0] == 't';
    nsp = PQgetvalue(res, 0, 5);
    if (!t->cacheable)
        return true; /* cat_fill_key's verdict */
    if (strcmp(kind, "r") != 0 && strcmp(kind, "p") != 0)
        cat_set_reason(t, "not a table (relkind %s)", kind);
    else if (strcmp(persistence, "p") != 0)
        cat_set_reason(t, "%s",
                       strcmp(persistence, "t") == 0 ? "temporary table" : "unlogged table");
    else if (cat_system_schema(nsp))
        cat_set_reason(t, "system catalog");
    else if (rls)
        cat_set_reason(t, "row-level security is enabled");
    else if (t->npk == 0)
        cat_set_reason(t, "no primary key");
    else if ((bad = cat_bad_key_type(t)) >= 0 && !PQgetisnull(res, bad, 8))
        cat_set_reason(t, "primary key type %s is not supported", PQgetvalue(res, bad, 8));
    else if (bad >= 0)
        cat_set_reason(t, "primary key type %u is not supported", (unsigned)t->pk_type[bad]);
    return true;
}

/* A table's answer arrived: keep it CATALOG_TTL seconds, or retry later when it failed. */
static void cat_note_table(Catalog *cat, CatEntry *e, const PGresult *res)
{
    double now = now_sec();
    char msg[512];
    TableInfo t;

    if (PQresultStatus(res) == PGRES_TUPLES_OK && cat_fill(&t, res)) {
        cat->lookups++;
        if (!e)
            return; /* forgotten meanwhile (DDL): the answer may predate it */
        e->info = t;
        e->known = true;
        e->expires = now + CATALOG_TTL;
        return;
    }
    cat->failures++;
    cat_one_line(msg, sizeof(msg),
                 PQresultStatus(res) == PGRES_TUPLES_OK ? "unexpected answer to the table lookup"
                                                        : PQresultErrorMessage(res));
    cat_set_error(cat, msg);
    log_warning("catalog %s/%s: lookup of %s%s%s failed: %s", cat->pool->dbname,
                cat->pool->server_user, e && e->has_schema ? e->schema : "",
                e && e->has_schema ? "." : "", e ? e->name : "(forgotten table)", msg);
    if (e)
        e->retry_at = now + CATALOG_RETRY;
}

/* The query in flight is answered (res NULL: it gave no result at all). */
static void cat_query_done(Catalog *cat, PGresult *res)
{
    CatQuery q = cat->query;
    CatEntry *e = cat->inflight;

    cat->query = CQ_NONE;
    cat->inflight = NULL;
    cat->state = CAT_IDLE;
    cat_deadline(cat, false);
    if (e)
        e->pending = false;
    if (PQstatus(cat->conn) == CONNECTION_BAD) {
        PQclear(res); /* the connection's failure, not the table's: retried after the backoff */
        cat_fail_conn(cat, "connection lost");
        return;
    }
    if (!res) {
        cat_fail(cat, "the server gave no answer to a catalog query");
        return;
    }
    if (q == CQ_ISOLATION)
        cat_note_isolation(cat, res);
    else if (q == CQ_TABLE)
        cat_note_table(cat, e, res);
    PQclear(res);
    cat_pump(cat);
}

/* Read what arrived; a finished query is answered and the next one sent. */
static void cat_read(Catalog *cat)
{
    if (!PQconsumeInput(cat->conn)) {
        cat_fail_conn(cat, "connection lost");
        return;
    }
    if (cat->state == CAT_IDLE) {
        if (PQstatus(cat->conn) == CONNECTION_BAD)
            cat_fail_conn(cat, "connection lost");
        return; /* a notice or a parameter change: nothing owed */
    }
    while (cat->state == CAT_BUSY && !PQisBusy(cat->conn)) {
        PGresult *res = PQgetResult(cat->conn);
        if (res && !cat->result) {
            cat->result = res;
        } else if (res) {
            PQclear(res); /* one statement gives one result; anything more is not ours */
        } else {
            PGresult *first = cat->result;
            cat->result = NULL;
            cat_query_done(cat, first);
            return;
        }
    }
}

/* Socket events and the deadline timer: one dispatcher per state. */
static void cat_on_io(evutil_socket_t fd, short what, void *arg)
{
    Catalog *cat = arg;

    if (what & EV_TIMEOUT) {
        cat_fail(cat, cat->state == CAT_BUSY ? "catalog query timed out" : "connect timed out");
        return;
    }
    switch (cat->state) {
    case CAT_CONNECTING:
        cat_poll_connect(cat);
        return;
    case CAT_BUSY:
        if (what & EV_WRITE) {
            cat_flush(cat);
            if (cat->state != CAT_BUSY)
                return;
        }
        if (what & EV_READ)
            cat_read(cat);
        return;
    case CAT_IDLE:
        cat_read(cat);
        return;
    case CAT_DOWN:
    case CAT_RESOLVING:
        return;
    }
}

/* ---- the interface ---------------------------------------------------- */

Catalog *catalog_new(struct Pool *p)
{
    Catalog *cat = calloc(1, sizeof(*cat));

    if (!cat)
        return NULL;
    cat->pool = p;
    cat->state = CAT_DOWN;
    cat->io.fd = -1;
    cat->backoff = CATALOG_BACKOFF_MIN;
    cat->read_committed = -1;
    return cat;
}

void catalog_free(Catalog *cat)
{
    if (!cat)
        return;
    cat_disconnect(cat);
    if (cat->timer)
        event_free(cat->timer);
    cat_queue_clear(cat);
    for (int b = 0; b < CATALOG_BUCKETS; b++) {
        while (cat->buckets[b]) {
            CatEntry *e = cat->buckets[b];
            cat->buckets[b] = e->hnext;
            free(e);
        }
    }
    free(cat);
}

/* e is wanted: queue its lookup, opening the connection if it may be. */
static void cat_request(Catalog *cat, CatEntry *e, double now)
{
    if (e->pending || now < e->retry_at)
        return;
    if (cat->state == CAT_DOWN) {
        if (now < cat->next_connect)
            return; /* backing off: the caller bypasses the cache meanwhile */
        cat_open(cat);
        if (cat->state == CAT_DOWN)
            return;
    }
    if (cat->nqueue >= CATALOG_MAX_QUEUE)
        return; /* asked again by a later call */
    e->pending = true;
    e->qnext = NULL;
    if (cat->qtail)
        cat->qtail->qnext = e;
    else
        cat->qhead = e;
    cat->qtail = e;
    cat->nqueue++;
    cat_pump(cat);
}

const TableInfo *catalog_table(Catalog *cat, const char *schema, const char *name)
{
    double now = now_sec();
    CatEntry *e;

    /* the parser truncates identifiers to NAMEDATALEN - 1: a longer one is no table name */
    if (!name || strlen(name) >= CATALOG_NAME_MAX || (schema && strlen(schema) >= CATALOG_NAME_MAX))
        return NULL;
    e = cat_find(cat, schema, name);
    if (e && e->known && now < e->expires)
        return &e->info;
    if (!e)
        e = cat_insert(cat, schema, name, now);
    if (e)
        cat_request(cat, e, now);
    return NULL;
}

int catalog_read_committed(Catalog *cat)
{
    return cat->read_committed;
}

void catalog_forget_all(Catalog *cat)
{
    /* an answer in flight is dropped when it comes: it may predate the DDL */
    cat->inflight = NULL;
    cat_queue_clear(cat);
    for (int b = 0; b < CATALOG_BUCKETS; b++) {
        while (cat->buckets[b]) {
            CatEntry *e = cat->buckets[b];
            cat->buckets[b] = e->hnext;
            free(e);
        }
    }
    cat->ntables = 0;
}

void catalog_stats(const Catalog *cat, CatalogStats *out)
{
    memset(out, 0, sizeof(*out));
    out->lookups = cat->lookups;
    out->failures = cat->failures;
    out->tables = cat->ntables;
    out->connected = cat->state == CAT_IDLE || cat->state == CAT_BUSY;
    memcpy(out->last_error, cat->last_error, sizeof(out->last_error));
}
