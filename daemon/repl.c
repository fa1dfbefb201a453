/*
 * The logical replication stream that tells the cache about writes made
 * anywhere: connect, ensure the publication, create a temporary slot,
 * START_REPLICATION, then turn pgoutput changes into row/table/all
 * callbacks. libpq non-blocking calls only, driven by the worker's loop;
 * any failure closes the connection and retries after a backoff.
 */
#include "daemon/repl.h"

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/util.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/log.h"
#include "daemon/upstream.h"
#include "daemon/worker.h"
#include "orm/cache_key.h"
#include "proto/pgoutput.h"

#define REPL_BACKOFF_MIN   1.0  /* seconds before the first retry */
#define REPL_BACKOFF_MAX   30.0 /* the doubling stops here */
#define REPL_BACKOFF_RESET 60.0 /* a stream that ran this long starts the backoff over */
#define REPL_STATUS_SEC    10.0 /* standby status update at least this often */
#define REPL_SILENCE_SEC   35.0 /* nothing heard although every status asked for a reply */
#define REPL_CONNECT_SEC   15.0 /* DNS + connect + login (libpq's connect_timeout is ours to do) */
#define REPL_NAME_MAX      64   /* NAMEDATALEN: slot and publication names */
#define REPL_RELS_MIN      64   /* first size of the relation table */
#define REPL_QUERY_MAX     512  /* longest command sent (names are bounded by NAMEDATALEN) */

/* The second round (repl.h "Two rounds"). */
#define REPL_CHECK_GAP      0.002 /* seconds between checks: at most 500 a second */
#define REPL_CHECK_GAP_MAX  0.1   /* ... and for a commit held long, every 100 ms */
#define REPL_CHECK_FALLBACK 0.2   /* no check connection: second round this long after Commit */
#define REPL_CHECK_TIMEOUT  2.0   /* a check unanswered this long: the connection is failing */
#define REPL_PENDING_KEYS   10000 /* keys kept, over all pending transactions */
#define REPL_PENDING_TABLES 256   /* relids kept per pending transaction; beyond, all() */
#define REPL_PENDING_XACTS  10000 /* pending transactions; beyond, the last absorbs the next */
#define REPL_PENDING_MIN    16    /* first size of the pending array, allocated up front */

/* One connection attempt moves through these in order; RS_WAIT between attempts. */
typedef enum {
    RS_WAIT,        /* no connection; retry is pending */
    RS_RESOLVING,   /* asynchronous DNS of the host */
    RS_CONNECTING,  /* PQconnectPoll */
    RS_FIND_PUB,    /* SELECT from pg_publication */
    RS_CREATE_PUB,  /* CREATE PUBLICATION */
    RS_CREATE_SLOT, /* CREATE_REPLICATION_SLOT ... TEMPORARY */
    RS_START,       /* START_REPLICATION sent, no CopyBoth yet */
    RS_STREAMING,
} ReplState;

/* What a Relation message said that turning a tuple into a key needs. */
typedef struct RelInfo {
    uint32_t relid; /* 0: free slot */
    bool keyed;     /* identity is the primary key, of types orm/cache_key.h handles */
    int ncols;
    int nkey;
    int key_col[CACHE_KEY_COLS]; /* positions in the tuple, ascending */
    uint32_t key_type[CACHE_KEY_COLS];
} RelInfo;

/*
 * A transaction whose changes were heard (first round) and whose commit
 * may not be visible to other sessions yet: what its first round called,
 * to be called again (second round) once its xid is visible to a new
 * snapshot. Keys are stored one after another as relid (4 bytes), length
 * (2 bytes), key.
 */
typedef struct ReplPending {
    uint32_t xid;     /* from Begin; merged: the newest of the transactions */
    bool merged;      /* stands for several transactions: visible once xid < xmin */
    bool all;         /* call all() (the relids overflowed); keys and tables are empty */
    uint64_t seq;     /* order of Commit; merged: the newest */
    double committed; /* now_sec() at Commit; merged: the newest */
    char *keys;
    size_t keys_len, keys_cap;
    size_t nkeys;
    uint32_t *tables;
    size_t ntables, tables_cap;
} ReplPending;

/* The visibility check connection (ordinary, not replication). */
typedef enum {
    CK_DOWN,       /* none; the next try at ck_retry_at, while streaming */
    CK_CONNECTING, /* PQconnectPoll */
    CK_IDLE,       /* connected, nothing sent */
    CK_BUSY,       /* a snapshot query is in flight */
} CheckState;

/*
 * What a DNS lookup's callback gets: libevent may run it after a cancel,
 * from the loop, when r is gone; closing detaches r, the callback frees it.
 */
typedef struct ReplDns {
    struct Repl *r; /* NULL: detached */
} ReplDns;

struct Repl {
    Pool *p;
    ReplCallbacks cb;
    ReplState state;
    PGconn *conn;
    PqWatch io;          /* on PQsocket(conn) */
    struct event *retry; /* one-shot: the next attempt */
    struct event *tick;  /* every second: timeouts, status updates */
    struct evdns_getaddrinfo_request *dns;
    struct ReplDns *dns_q;           /* the pending lookup's link back to r */
    char hostaddr[INET6_ADDRSTRLEN]; /* resolved host, "" to let libpq use host */
    uint32_t attempt;                /* makes slot names unique within r */
    bool pub_found;                  /* RS_FIND_PUB's answer */
    char slot[REPL_NAME_MAX];
    double backoff;
    double attempt_since; /* monotonic, as now_sec() */
    double stream_since;
    double last_recv;
    double last_status;
    uint64_t lsn;  /* everything up to here was handled: reported as written/flushed/applied */
    bool in_xact;  /* between Begin and Commit */
    RelInfo *rels; /* open addressing on relid */
    size_t rels_cap;
    size_t rels_used;
    /* the second round: committed transactions maybe not visible yet */
    ReplPending cur;   /* the transaction between Begin and Commit */
    ReplPending *pend; /* committed, in Commit order */
    size_t npend;
    size_t pend_cap;
    size_t pend_keys;      /* keys held by cur and pend */
    uint64_t pend_seq;     /* the last seq given */
    struct event *recheck; /* one-shot: the next check, or the fallback */
    /* the visibility check: SELECT pg_current_snapshot() on a connection of its own */
    CheckState ck;
    PGconn *ck_conn;
    PqWatch ck_io;      /* on PQsocket(ck_conn) */
    double ck_since;    /* connect started, or the query sent */
    double ck_last;     /* the last query sent */
    double ck_retry_at; /* CK_DOWN: no new connection before this */
    double ck_backoff;
    uint64_t ck_seq; /* the query in flight answers for pending entries with seq <= this */
    bool ck_pg13;    /* pg_current_snapshot(), else txid_current_snapshot() */
    uint64_t *xip;   /* the last snapshot's in-progress xids, sorted */
    size_t xip_cap;
    ReplStats st;
};

static void repl_io_cb(evutil_socket_t fd, short what, void *arg);
static void repl_step(Repl *r);
static void pend_drop(Repl *r);

/* ---- teardown and retry -------------------------------------------------- */

static void repl_close(Repl *r)
{
    if (r->dns_q) {
        r->dns_q->r = NULL;
        r->dns_q = NULL;
    }
    if (r->dns) {
        evdns_getaddrinfo_cancel(r->dns);
        r->dns = NULL;
    }
    pq_unwatch(&r->io);
    if (r->conn) {
        PQfinish(r->conn);
        r->conn = NULL;
    }
    /* relations are described anew on every connection */
    if (r->rels)
        memset(r->rels, 0, r->rels_cap * sizeof(*r->rels));
    r->rels_used = 0;
    r->in_xact = false;
    /* the next stream starts with all(): what was pending needs nothing more */
    pend_drop(r);
}

/* One line of s: libpq's newlines and tabs become single spaces, none at the end. */
static void tidy_message(char *s)
{
    size_t n = 0;

    for (size_t i = 0; s[i]; i++) {
        char c = (unsigned char)s[i] < 0x20 ? ' ' : s[i];

        if (c == ' ' && (n == 0 || s[n - 1] == ' '))
            continue;
        s[n++] = c;
    }
    while (n && s[n - 1] == ' ')
        n--;
    s[n] = 0;
}

/*
 * The one teardown: close, count, remember and log why (once), retry after
 * the backoff.
 */
static void repl_fail(Repl *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void repl_fail(Repl *r, const char *fmt, ...)
{
    struct timeval tv = {0, 0};
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(r->st.last_error, sizeof(r->st.last_error), fmt, ap);
    va_end(ap);
    tidy_message(r->st.last_error);
    if (r->state == RS_STREAMING && now_sec() - r->stream_since >= REPL_BACKOFF_RESET)
        r->backoff = REPL_BACKOFF_MIN;
    log_warning("replication %s@%s:%d/%s: %s (retrying in %.0f s)", r->p->server_user, r->p->host,
                r->p->port, r->p->dbname, r->st.last_error, r->backoff);
    r->st.failures++;
    repl_close(r);
    r->state = RS_WAIT;
    tv.tv_sec = (time_t)r->backoff;
    r->backoff = r->backoff * 2 > REPL_BACKOFF_MAX ? REPL_BACKOFF_MAX : r->backoff * 2;
    if (event_add(r->retry, &tv) < 0)
        log_error("replication %s: cannot schedule a retry", r->p->dbname);
}

/* ---- socket events --------------------------------------------------------- */

/* repl_fail or ck_fail: how a failure of one of the two connections ends it. */
typedef void (*ReplFailFn)(Repl *r, const char *fmt, ...);

/*
 * Wait for what on conn's socket (io, cb: the stream's or the check's).
 * force makes a new event even for the same fd: while connecting libpq may
 * close the socket and open another under the same number, which an old
 * registration would miss. On failure, fail(r, why).
 */
static bool conn_watch(Repl *r, PqWatch *io, PGconn *conn, short what, bool force,
                       event_callback_fn cb, ReplFailFn fail)
{
    if (pq_watch(io, r->p->w->base, conn, what, force, cb, r))
        return true;
    if (PQsocket(conn) < 0)
        fail(r, "connection has no socket: %s", PQerrorMessage(conn));
    else
        fail(r, "cannot watch the socket");
    return false;
}

/* Push conn's queued output; wait for write readiness while some is left. */
static bool conn_flush(Repl *r, PqWatch *io, PGconn *conn, event_callback_fn cb, ReplFailFn fail)
{
    int rc = PQflush(conn);

    if (rc < 0) {
        fail(r, "send failed: %s", PQerrorMessage(conn));
        return false;
    }
    return conn_watch(r, io, conn, rc ? EV_READ | EV_WRITE : EV_READ, false, cb, fail);
}

static bool repl_watch(Repl *r, short what, bool force)
{
    return conn_watch(r, &r->io, r->conn, what, force, repl_io_cb, repl_fail);
}

static bool repl_flush(Repl *r)
{
    return conn_flush(r, &r->io, r->conn, repl_io_cb, repl_fail);
}

static bool repl_send(Repl *r, const char *sql, ReplState next)
{
    if (!PQsendQuery(r->conn, sql)) {
        repl_fail(r, "cannot send a command: %s", PQerrorMessage(r->conn));
        return false;
    }
    r->state = next;
    return repl_flush(r);
}

/* ---- setup commands -------------------------------------------------------- */

/* s as a double-quoted identifier into out; false when it does not fit. */
static bool quote_ident(const char *s, char *out, size_t cap)
{
    size_t n = 0;

    if (cap < 3)
        return false;
    out[n++] = '"';
    for (; *s; s++) {
        if (n + 4 > cap)
            return false;
        if (*s == '"')
            out[n++] = '"';
        out[n++] = *s;
    }
    out[n++] = '"';
    out[n] = 0;
    return true;
}

/* Double the single quotes of s: a string literal's body. */
static bool quote_literal_body(const char *s, char *out, size_t cap)
{
    size_t n = 0;

    for (; *s; s++) {
        if (n + 3 > cap)
            return false;
        if (*s == '\'')
            out[n++] = '\'';
        out[n++] = *s;
    }
    out[n] = 0;
    return true;
}

static const char *repl_publication(const Repl *r)
{
    const char *pub = r->p->w->cfg->cache_publication;

    return pub && *pub ? pub : REPL_OWN_PUBLICATION;
}

static bool repl_create_slot(Repl *r)
{
    char sql[REPL_QUERY_MAX];

    /* unique per process (pid), per Repl alive in it (address) and per attempt */
    snprintf(r->slot, sizeof(r->slot), "pgc_%ld_%lx_%u", (long)getpid(),
             (unsigned long)(uintptr_t)r, ++r->attempt);
    /* no snapshot: the stream only needs changes from here on */
    snprintf(sql, sizeof(sql),
             "CREATE_REPLICATION_SLOT %s TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT", r->slot);
    return repl_send(r, sql, RS_CREATE_SLOT);
}

static bool repl_start_replication(Repl *r)
{
    char ident[2 * REPL_NAME_MAX + 3], lit[4 * REPL_NAME_MAX + 7], sql[REPL_QUERY_MAX];

    /* publication_names is a list of identifiers inside a string literal */
    if (!quote_ident(repl_publication(r), ident, sizeof(ident)) ||
        !quote_literal_body(ident, lit, sizeof(lit))) {
        repl_fail(r, "cache_publication \"%s\" is too long", repl_publication(r));
        return false;
    }
    snprintf(sql, sizeof(sql),
             "START_REPLICATION SLOT %s LOGICAL 0/0 (proto_version '1', publication_names '%s')",
             r->slot, lit);
    return repl_send(r, sql, RS_START);
}

/* Connected: ask for the proxy's own publication, or go straight to the slot. */
static bool repl_begin_setup(Repl *r)
{
    const char *pub = r->p->w->cfg->cache_publication;

    if (PQsetnonblocking(r->conn, 1) != 0) {
        repl_fail(r, "cannot make the connection non-blocking: %s", PQerrorMessage(r->conn));
        return false;
    }
    /* a named publication is the operator's to create */
    if (!pub || !*pub)
        return repl_send(
            r, "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = '" REPL_OWN_PUBLICATION "'",
            RS_FIND_PUB);
    return repl_create_slot(r);
}

/* libpq's error message of res, or its status when there is none. */
static const char *result_error(const PGresult *res)
{
    const char *msg = PQresultErrorMessage(res);

    return msg && *msg ? msg : PQresStatus(PQresultStatus(res));
}

/* One result of a setup command; false when r failed. */
static bool repl_setup_result(Repl *r, PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    switch (r->state) {
    case RS_FIND_PUB:
        if (st != PGRES_TUPLES_OK)
            break;
        r->pub_found = PQntuples(res) > 0;
        return true;
    case RS_CREATE_PUB:
        /* 42710 duplicate_object: someone else created it meanwhile, as good */
        if (st == PGRES_COMMAND_OK || (sqlstate && strcmp(sqlstate, "42710") == 0))
            return true;
        repl_fail(r,
                  "cannot create publication " REPL_OWN_PUBLICATION
                  " (a superuser must, or set cache_publication): %s",
                  PQresultErrorMessage(res));
        return false;
    case RS_CREATE_SLOT:
        if (st == PGRES_TUPLES_OK)
            return true;
        break;
    default:
        break;
    }
    repl_fail(r, "%s failed: %s",
              r->state == RS_FIND_PUB ? "publication lookup" : "CREATE_REPLICATION_SLOT",
              result_error(res));
    return false;
}

/* A setup command finished: send the next one. */
static bool repl_setup_done(Repl *r)
{
    switch (r->state) {
    case RS_FIND_PUB:
        if (r->pub_found)
            return repl_create_slot(r);
        return repl_send(r, "CREATE PUBLICATION " REPL_OWN_PUBLICATION " FOR ALL TABLES",
                         RS_CREATE_PUB);
    case RS_CREATE_PUB:
        return repl_create_slot(r);
    case RS_CREATE_SLOT:
        return repl_start_replication(r);
    default:
        repl_fail(r, "START_REPLICATION ended without streaming");
        return false;
    }
}

/* ---- the second round: pending transactions -------------------------------- */

/* Free what e holds (its keys leave the budget); e stays with its xid, seq and time. */
static void pend_release(Repl *r, ReplPending *e)
{
    r->pend_keys -= e->nkeys;
    free(e->keys);
    free(e->tables);
    e->keys = NULL;
    e->keys_len = e->keys_cap = e->nkeys = 0;
    e->tables = NULL;
    e->ntables = e->tables_cap = 0;
}

/* Everything, the second time: nothing else needs keeping. */
static void pend_set_all(Repl *r, ReplPending *e)
{
    pend_release(r, e);
    e->all = true;
}

static void pend_table(Repl *r, ReplPending *e, uint32_t relid)
{
    uint32_t *tables;
    size_t cap;

    if (e->all)
        return;
    for (size_t i = 0; i < e->ntables; i++)
        if (e->tables[i] == relid)
            return;
    if (e->ntables == REPL_PENDING_TABLES) {
        pend_set_all(r, e);
        return;
    }
    if (e->ntables == e->tables_cap) {
        cap = e->tables_cap ? e->tables_cap * 2 : 8;
        if (cap > REPL_PENDING_TABLES)
            cap = REPL_PENDING_TABLES;
        tables = realloc(e->tables, cap * sizeof(*tables));
        if (!tables) {
            pend_set_all(r, e);
            return;
        }
        e->tables = tables;
        e->tables_cap = cap;
    }
    e->tables[e->ntables++] = relid;
}

/* Room for need more bytes of keys; false when out of memory. */
static bool pend_keys_room(ReplPending *e, size_t need)
{
    size_t cap = e->keys_cap ? e->keys_cap : 256;
    char *keys;

    if (e->keys_len + need <= e->keys_cap)
        return true;
    while (cap < e->keys_len + need)
        cap *= 2;
    keys = realloc(e->keys, cap);
    if (!keys)
        return false;
    e->keys = keys;
    e->keys_cap = cap;
    return true;
}

/* A key of the open transaction; over the budget, its table instead. */
static void pend_key(Repl *r, uint32_t relid, const char *key, size_t len)
{
    ReplPending *e = &r->cur;
    uint16_t len16 = (uint16_t)len;

    if (e->all)
        return;
    if (r->pend_keys >= REPL_PENDING_KEYS || len > UINT16_MAX ||
        !pend_keys_room(e, sizeof(relid) + sizeof(len16) + len)) {
        pend_table(r, e, relid);
        return;
    }
    memcpy(e->keys + e->keys_len, &relid, sizeof(relid));
    memcpy(e->keys + e->keys_len + sizeof(relid), &len16, sizeof(len16));
    memcpy(e->keys + e->keys_len + sizeof(relid) + sizeof(len16), key, len);
    e->keys_len += sizeof(relid) + sizeof(len16) + len;
    e->nkeys++;
    r->pend_keys++;
}

/* src (released) into dst: one entry, visible when the newest of them is below xmin. */
static void pend_merge(Repl *r, ReplPending *dst, ReplPending *src)
{
    dst->merged = true;
    if ((int32_t)(src->xid - dst->xid) > 0)
        dst->xid = src->xid;
    dst->seq = src->seq;
    dst->committed = src->committed;
    if (src->all || dst->all || !pend_keys_room(dst, src->keys_len)) {
        pend_release(r, src);
        pend_set_all(r, dst);
        return;
    }
    if (src->keys_len)
        memcpy(dst->keys + dst->keys_len, src->keys, src->keys_len);
    dst->keys_len += src->keys_len;
    dst->nkeys += src->nkeys;
    r->pend_keys += src->nkeys;
    for (size_t i = 0; i < src->ntables; i++)
        pend_table(r, dst, src->tables[i]);
    pend_release(r, src);
}

/* Every pending transaction forgotten (the stream broke, or r goes away). */
static void pend_drop(Repl *r)
{
    pend_release(r, &r->cur);
    memset(&r->cur, 0, sizeof(r->cur));
    for (size_t i = 0; i < r->npend; i++)
        pend_release(r, &r->pend[i]);
    r->npend = 0;
    if (r->recheck)
        evtimer_del(r->recheck);
}

/* The second round of e. */
static void pend_fire(Repl *r, const ReplPending *e)
{
    size_t off = 0;

    if (e->all) {
        r->st.rechecked++;
        r->cb.all(r->cb.arg);
        return;
    }
    while (off < e->keys_len) {
        uint32_t relid;
        uint16_t len;

        memcpy(&relid, e->keys + off, sizeof(relid));
        memcpy(&len, e->keys + off + sizeof(relid), sizeof(len));
        off += sizeof(relid) + sizeof(len);
        r->st.rechecked++;
        r->cb.row(r->cb.arg, relid, e->keys + off, len);
        off += len;
    }
    for (size_t i = 0; i < e->ntables; i++) {
        r->st.rechecked++;
        r->cb.table(r->cb.arg, e->tables[i]);
    }
}

/* In 64 bits, against the snapshot's xmax (its epoch): false when not assigned before it. */
static bool xid_full(uint32_t xid, uint64_t xmax, uint64_t *full)
{
    int32_t d = (int32_t)((uint32_t)xmax - xid);

    if (d <= 0)
        return false;
    /* from before the first epoch's start: cannot be, older than anything */
    *full = (uint64_t)d > xmax ? 0 : xmax - (uint64_t)d;
    return true;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Does a snapshot with xmin, xmax and the sorted xip see e's commit? */
static bool pend_visible(const ReplPending *e, uint64_t xmin, uint64_t xmax, const uint64_t *xip,
                         size_t nxip)
{
    uint64_t full;

    if (!xid_full(e->xid, xmax, &full))
        return false;
    if (full < xmin)
        return true;
    if (e->merged)
        return false;
    return nxip == 0 || !bsearch(&full, xip, nxip, sizeof(*xip), cmp_u64);
}

/* The fallback, without a check: the second round of what committed 200 ms ago. */
static void pend_fallback(Repl *r)
{
    double now = now_sec();
    size_t n = 0;

    for (size_t i = 0; i < r->npend; i++) {
        ReplPending *e = &r->pend[i];

        if (e->committed + REPL_CHECK_FALLBACK <= now + 0.0005) {
            r->st.unchecked++;
            pend_fire(r, e);
            pend_release(r, e);
        } else {
            r->pend[n++] = *e;
        }
    }
    r->npend = n;
}

static void ck_send(Repl *r);

/* Arrange what comes next for the pending transactions: a check, or the fallback. */
static void pend_schedule(Repl *r)
{
    double now, at;
    struct timeval tv;

    if (r->npend == 0) {
        evtimer_del(r->recheck);
        return;
    }
    now = now_sec();
    switch (r->ck) {
    case CK_BUSY:
        /* its answer schedules again; a stuck one is failed by the tick */
        evtimer_del(r->recheck);
        return;
    case CK_IDLE: {
        /* 2 ms apart while commits are fresh (the usual window is far
         * shorter); a commit held longer (a synchronous standby) is asked
         * about less often: a tenth of its age, at most every 100 ms. */
        double gap = (now - r->pend[0].committed) / 10;
        if (gap < REPL_CHECK_GAP)
            gap = REPL_CHECK_GAP;
        if (gap > REPL_CHECK_GAP_MAX)
            gap = REPL_CHECK_GAP_MAX;
        at = r->ck_last + gap;
        if (at <= now) {
            ck_send(r);
            return;
        }
        break;
    }
    default:
        /* the oldest commit comes first (a merged entry is the last) */
        at = r->pend[0].committed + REPL_CHECK_FALLBACK;
        break;
    }
    if (at < now)
        at = now;
    tv.tv_sec = (time_t)(at - now);
    tv.tv_usec = (suseconds_t)((at - now - (double)tv.tv_sec) * 1e6) + 1;
    if (evtimer_add(r->recheck, &tv) < 0)
        log_error("replication %s: cannot schedule a visibility check", r->p->dbname);
}

static void pend_recheck_cb(evutil_socket_t fd, short what, void *arg)
{
    Repl *r = arg;

    if (r->ck == CK_DOWN || r->ck == CK_CONNECTING)
        pend_fallback(r);
    pend_schedule(r);
}

/* Begin: a new transaction to remember. */
static void pend_begin(Repl *r, uint32_t xid)
{
    pend_release(r, &r->cur);
    memset(&r->cur, 0, sizeof(r->cur));
    r->cur.xid = xid;
}

/* Commit: the open transaction waits for its commit to be visible. */
static void pend_commit(Repl *r)
{
    ReplPending *e = &r->cur;
    ReplPending *pend;
    size_t cap;

    if (!e->all && e->nkeys == 0 && e->ntables == 0)
        return;
    e->seq = ++r->pend_seq;
    e->committed = now_sec();
    if (r->npend == r->pend_cap && r->npend < REPL_PENDING_XACTS) {
        cap = r->pend_cap * 2 > REPL_PENDING_XACTS ? REPL_PENDING_XACTS : r->pend_cap * 2;
        pend = realloc(r->pend, cap * sizeof(*pend));
        if (pend) {
            r->pend = pend;
            r->pend_cap = cap;
        }
    }
    /* full (or out of memory): the last one absorbs it (there is one: the first room was made up
     * front) */
    if (r->npend == r->pend_cap)
        pend_merge(r, &r->pend[r->npend - 1], e);
    else
        r->pend[r->npend++] = *e;
    memset(e, 0, sizeof(*e));
    pend_schedule(r);
}

/* ---- the visibility check connection ------------------------------------------ */

static void ck_io_cb(evutil_socket_t fd, short what, void *arg);

static void ck_close(Repl *r)
{
    pq_unwatch(&r->ck_io);
    if (r->ck_conn) {
        PQfinish(r->ck_conn);
        r->ck_conn = NULL;
    }
    r->ck = CK_DOWN;
}

/* Close, log, retry later (while streaming); meanwhile the pending ones fall back. */
static void ck_fail(Repl *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ck_fail(Repl *r, const char *fmt, ...)
{
    char msg[sizeof(r->st.last_error)];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    tidy_message(msg);
    log_warning("replication %s@%s:%d/%s: visibility check: %s (retrying in %.0f s; until then "
                "changes are heard again %.0f ms after their commit)",
                r->p->server_user, r->p->host, r->p->port, r->p->dbname, msg, r->ck_backoff,
                REPL_CHECK_FALLBACK * 1000);
    ck_close(r);
    r->ck_retry_at = now_sec() + r->ck_backoff;
    r->ck_backoff = r->ck_backoff * 2 > REPL_BACKOFF_MAX ? REPL_BACKOFF_MAX : r->ck_backoff * 2;
    pend_schedule(r);
}

/* As repl_watch and repl_flush, for the check connection. */
static bool ck_watch(Repl *r, short what, bool force)
{
    return conn_watch(r, &r->ck_io, r->ck_conn, what, force, ck_io_cb, ck_fail);
}

static bool ck_flush(Repl *r)
{
    return conn_flush(r, &r->ck_io, r->ck_conn, ck_io_cb, ck_fail);
}

/* Ask for a snapshot; it answers for every transaction pending now. */
static void ck_send(Repl *r)
{
    const char *q = r->ck_pg13 ? "SELECT pg_catalog.pg_current_snapshot()::text"
                               : "SELECT pg_catalog.txid_current_snapshot()::text";

    if (!PQsendQuery(r->ck_conn, q)) {
        ck_fail(r, "cannot send the query: %s", PQerrorMessage(r->ck_conn));
        return;
    }
    r->ck = CK_BUSY;
    r->ck_since = r->ck_last = now_sec();
    r->ck_seq = r->pend_seq;
    (void)ck_flush(r);
}

/* Start the check connection, to the host the stream resolved (libpq must not resolve). */
static void ck_connect(Repl *r)
{
    const char *keys[UPSTREAM_MAX_PARAMS + 1], *vals[UPSTREAM_MAX_PARAMS + 1];
    int n = 0;

    upstream_conninfo(r->p, false, keys, vals);
    while (keys[n])
        n++;
    if (r->hostaddr[0]) {
        keys[n] = "hostaddr";
        vals[n++] = r->hostaddr;
        keys[n] = vals[n] = NULL;
    }
    r->ck = CK_CONNECTING;
    r->ck_since = now_sec();
    r->ck_conn = PQconnectStartParams(keys, vals, 0);
    if (!r->ck_conn) {
        ck_fail(r, "cannot connect: out of memory");
        return;
    }
    if (PQstatus(r->ck_conn) == CONNECTION_BAD) {
        ck_fail(r, "cannot connect: %s", PQerrorMessage(r->ck_conn));
        return;
    }
    (void)ck_watch(r, EV_WRITE, true);
}

/* "xmin:xmax:xip,..." into the snapshot; false when it is not one. */
static bool ck_parse(Repl *r, const char *s, uint64_t *xmin, uint64_t *xmax, size_t *nxip)
{
    char *end;
    size_t n = 0, cap;
    uint64_t *xip;

    *xmin = strtoull(s, &end, 10);
    if (end == s || *end != ':')
        return false;
    s = end + 1;
    *xmax = strtoull(s, &end, 10);
    if (end == s || *end != ':')
        return false;
    s = end + 1;
    while (*s) {
        if (n == r->xip_cap) {
            cap = r->xip_cap ? r->xip_cap * 2 : 64;
            xip = realloc(r->xip, cap * sizeof(*xip));
            if (!xip)
                return false;
            r->xip = xip;
            r->xip_cap = cap;
        }
        r->xip[n++] = strtoull(s, &end, 10);
        if (end == s || (*end != ',' && *end != 0))
            return false;
        s = *end ? end + 1 : end;
    }
    if (n > 1)
        qsort(r->xip, n, sizeof(*r->xip), cmp_u64);
    *nxip = n;
    return true;
}

/* A snapshot came: the second round of every pending transaction it sees committed. */
static bool ck_apply(Repl *r, const char *snapshot)
{
    uint64_t xmin, xmax;
    size_t nxip = 0, n = 0;

    if (!ck_parse(r, snapshot, &xmin, &xmax, &nxip))
        return false;
    for (size_t i = 0; i < r->npend; i++) {
        ReplPending *e = &r->pend[i];

        /* a later Commit than the query: the snapshot may be older than its xid */
        if (e->seq <= r->ck_seq && pend_visible(e, xmin, xmax, r->xip, nxip)) {
            pend_fire(r, e);
            pend_release(r, e);
        } else {
            r->pend[n++] = *e;
        }
    }
    r->npend = n;
    return true;
}

/* The check's results; then the next check, if any is needed. */
static void ck_read(Repl *r)
{
    while (!PQisBusy(r->ck_conn)) {
        PGresult *res = PQgetResult(r->ck_conn);
        bool ok;

        if (!res) {
            r->ck = CK_IDLE;
            pend_schedule(r);
            return;
        }
        ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) == 1 &&
             ck_apply(r, PQgetvalue(res, 0, 0));
        if (!ok) {
            ck_fail(r, "%s",
                    PQresultStatus(res) == PGRES_TUPLES_OK ? "not a snapshot" : result_error(res));
            PQclear(res);
            return;
        }
        PQclear(res);
        r->ck_backoff = REPL_BACKOFF_MIN;
    }
}

static void ck_io_cb(evutil_socket_t fd, short what, void *arg)
{
    Repl *r = arg;

    if (r->ck == CK_CONNECTING) {
        switch (PQconnectPoll(r->ck_conn)) {
        case PGRES_POLLING_READING:
            (void)ck_watch(r, EV_READ, true);
            return;
        case PGRES_POLLING_WRITING:
            (void)ck_watch(r, EV_WRITE, true);
            return;
        case PGRES_POLLING_OK:
            if (PQsetnonblocking(r->ck_conn, 1) != 0) {
                ck_fail(r, "cannot make the connection non-blocking: %s",
                        PQerrorMessage(r->ck_conn));
                return;
            }
            r->ck_pg13 = PQserverVersion(r->ck_conn) >= 130000;
            r->ck = CK_IDLE;
            if (ck_watch(r, EV_READ, false))
                pend_schedule(r);
            return;
        default:
            ck_fail(r, "cannot connect: %s", PQerrorMessage(r->ck_conn));
            return;
        }
    }
    if ((what & EV_WRITE) && !ck_flush(r))
        return;
    if (((what & EV_READ) && !PQconsumeInput(r->ck_conn)) ||
        PQstatus(r->ck_conn) == CONNECTION_BAD) {
        ck_fail(r, "connection lost: %s", PQerrorMessage(r->ck_conn));
        return;
    }
    if (r->ck == CK_BUSY)
        ck_read(r);
}

/* ---- relations ------------------------------------------------------------- */

static size_t rel_slot(const Repl *r, uint32_t relid)
{
    size_t i = (relid * 2654435761u) & (r->rels_cap - 1);

    while (r->rels[i].relid && r->rels[i].relid != relid)
        i = (i + 1) & (r->rels_cap - 1);
    return i;
}

static RelInfo *rel_find(Repl *r, uint32_t relid)
{
    RelInfo *ri = &r->rels[rel_slot(r, relid)];

    return ri->relid == relid ? ri : NULL;
}

/* Keep the table at most half full; false when out of memory. */
static bool rel_grow(Repl *r)
{
    size_t old_cap = r->rels_cap;
    RelInfo *old = r->rels;
    RelInfo *rels;

    if ((r->rels_used + 1) * 2 <= r->rels_cap)
        return true;
    rels = calloc(old_cap * 2, sizeof(*rels));
    if (!rels)
        return false;
    r->rels = rels;
    r->rels_cap = old_cap * 2;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].relid)
            r->rels[rel_slot(r, old[i].relid)] = old[i];
    free(old);
    return true;
}

/* What a Relation message says about naming its rows by primary key. */
static void rel_describe(const PgoMsg *m, RelInfo *ri)
{
    PgoIter it;
    PgoColumn c;
    int col = 0;

    *ri = (RelInfo){.relid = m->u.relation.relid, .ncols = m->u.relation.ncols};
    /* only the default identity is the primary key; FULL flags every column */
    ri->keyed = m->u.relation.replident == 'd';
    pgo_relation_iter(m, &it);
    while (pgo_relation_next(&it, &c)) {
        if (c.flags & PGO_COL_KEY) {
            if (ri->nkey == CACHE_KEY_COLS || !cache_key_type_ok(c.type_oid)) {
                ri->keyed = false;
            } else {
                ri->key_col[ri->nkey] = col;
                ri->key_type[ri->nkey] = c.type_oid;
                ri->nkey++;
            }
        }
        col++;
    }
    if (ri->nkey == 0)
        ri->keyed = false;
}

static void repl_table(Repl *r, uint32_t relid)
{
    r->st.tables++;
    r->cb.table(r->cb.arg, relid);
    if (r->in_xact)
        pend_table(r, &r->cur, relid);
}

static bool repl_relation(Repl *r, const PgoMsg *m)
{
    RelInfo *ri;

    if (m->u.relation.relid == 0) {
        repl_fail(r, "Relation message for OID 0");
        return false;
    }
    ri = rel_find(r, m->u.relation.relid);
    if (!ri) {
        if (!rel_grow(r)) {
            repl_fail(r, "out of memory");
            return false;
        }
        ri = &r->rels[rel_slot(r, m->u.relation.relid)];
        r->rels_used++;
    }
    rel_describe(m, ri);
    /* the first description, or a schema change: cached rows may be of another shape */
    repl_table(r, m->u.relation.relid);
    return true;
}

/* ---- row changes ----------------------------------------------------------- */

/*
 * The canonical primary key of tuple t into k: false when the relation's
 * rows are not named by key, or a key column is null, an unchanged TOAST
 * value or not canonicalisable.
 */
static bool build_key(const RelInfo *ri, const PgoTuple *t, CacheKey *k)
{
    PgoIter it;
    PgoValue v;
    int col = 0, ki = 0;

    if (!ri || !ri->keyed || t->ncols != ri->ncols)
        return false;
    cache_key_init(k, ri->nkey);
    pgo_tuple_iter(t, &it);
    while (ki < ri->nkey && pgo_tuple_next(&it, &v)) {
        if (col++ != ri->key_col[ki])
            continue;
        if (v.kind != 't' && v.kind != 'b')
            return false;
        if (!cache_key_add(k, ri->key_type[ki], v.value, v.len, v.kind == 'b'))
            return false;
        ki++;
    }
    return cache_key_done(k);
}

/* Insert, Update, Delete: the rows' keys (old and new), or the whole table. */
static void repl_change(Repl *r, const PgoMsg *m)
{
    const RelInfo *ri = rel_find(r, m->u.change.relid);
    CacheKey keys[2];
    int n = 0;

    if (m->u.change.old_kind && !build_key(ri, &m->u.change.old_row, &keys[n++]))
        goto table;
    if (m->u.change.has_new && !build_key(ri, &m->u.change.new_row, &keys[n++]))
        goto table;
    /* an update that kept its key names the same row twice */
    if (n == 2 && keys[0].len == keys[1].len && memcmp(keys[0].buf, keys[1].buf, keys[0].len) == 0)
        n = 1;
    for (int i = 0; i < n; i++) {
        r->st.rows++;
        r->cb.row(r->cb.arg, m->u.change.relid, keys[i].buf, keys[i].len);
        if (r->in_xact)
            pend_key(r, m->u.change.relid, keys[i].buf, keys[i].len);
    }
    return;
table:
    repl_table(r, m->u.change.relid);
}

/* Wall clock in microseconds since 2000-01-01, as the server counts. */
static int64_t pg_now_usec(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return ((int64_t)ts.tv_sec - PGO_EPOCH_OFFSET_SEC) * 1000000 + ts.tv_nsec / 1000;
}

static void repl_commit(Repl *r, const PgoMsg *m)
{
    double lag = (double)(pg_now_usec() - m->u.commit.commit_time) / 1e6;

    /* a negative lag is clock skew between the hosts, not news from the future */
    if (lag < 0)
        lag = 0;
    r->st.transactions++;
    r->st.last_lag = lag;
    if (lag > r->st.max_lag)
        r->st.max_lag = lag;
    if (m->u.commit.end_lsn > r->lsn)
        r->lsn = m->u.commit.end_lsn;
    r->in_xact = false;
    /* sent once its commit record was flushed: other sessions may not see it yet */
    pend_commit(r);
}

/* One pgoutput message; false when r failed. */
static bool repl_message(Repl *r, const uint8_t *p, size_t len)
{
    PgoMsg m;
    const char *err = pgo_decode(p, len, &m);
    uint32_t i;

    if (err) {
        repl_fail(r, "bad pgoutput message: %s", err);
        return false;
    }
    switch (m.kind) {
    case PGO_BEGIN:
        r->in_xact = true;
        pend_begin(r, m.u.begin.xid);
        return true;
    case PGO_COMMIT:
        repl_commit(r, &m);
        return true;
    case PGO_RELATION:
        return repl_relation(r, &m);
    case PGO_INSERT:
    case PGO_UPDATE:
    case PGO_DELETE:
        repl_change(r, &m);
        return true;
    case PGO_TRUNCATE:
        for (i = 0; i < m.u.truncate.nrels; i++)
            repl_table(r, pgo_truncate_relid(&m, i));
        return true;
    case PGO_ORIGIN:
    case PGO_TYPE:
    case PGO_MESSAGE:
        return true;
    }
    return true;
}

/* ---- the stream ------------------------------------------------------------ */

static bool repl_send_status(Repl *r, bool reply)
{
    uint8_t msg[PGO_STATUS_LEN];
    int rc;

    (void)pgo_status_update(msg, r->lsn, r->lsn, r->lsn, pg_now_usec(), reply);
    rc = PQputCopyData(r->conn, (const char *)msg, (int)sizeof(msg));
    if (rc < 0) {
        repl_fail(r, "cannot send a status update: %s", PQerrorMessage(r->conn));
        return false;
    }
    /* 0: libpq's buffer is full; the next tick tries again */
    if (rc > 0)
        r->last_status = now_sec();
    return repl_flush(r);
}

/* One CopyData of the stream; false when r failed. */
static bool repl_copy(Repl *r, const uint8_t *p, size_t len)
{
    PgoCopy c;
    const char *err = pgo_decode_copy(p, len, &c);

    if (err) {
        repl_fail(r, "bad replication message: %s", err);
        return false;
    }
    if (c.kind == 'k') {
        /* everything before the server's position has reached us and been handled */
        if (!r->in_xact && c.end_lsn > r->lsn)
            r->lsn = c.end_lsn;
        return c.reply_request ? repl_send_status(r, false) : true;
    }
    return repl_message(r, c.data, c.len);
}

static void repl_stream_started(Repl *r)
{
    double now = now_sec();

    r->state = RS_STREAMING;
    r->stream_since = now;
    r->last_recv = now;
    r->last_status = now;
    r->st.connects++;
    log_info("replication %s@%s:%d/%s: streaming from slot %s, publication %s", r->p->server_user,
             r->p->host, r->p->port, r->p->dbname, r->slot, repl_publication(r));
    /* whatever was written while no stream ran is unknown */
    r->cb.all(r->cb.arg);
    if (r->ck == CK_DOWN && now >= r->ck_retry_at)
        ck_connect(r);
}

/* Drain the CopyData libpq has; false when r failed. */
static bool repl_read_stream(Repl *r)
{
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(r->conn, &buf, 1);
        PGresult *res;
        bool ok;

        if (n == 0)
            return true;
        if (n == -1) {
            res = PQgetResult(r->conn);
            repl_fail(r, "stream ended: %s",
                      res ? PQresultErrorMessage(res) : PQerrorMessage(r->conn));
            PQclear(res);
            return false;
        }
        if (n < 0) {
            repl_fail(r, "stream failed: %s", PQerrorMessage(r->conn));
            return false;
        }
        r->last_recv = now_sec();
        ok = repl_copy(r, (const uint8_t *)buf, (size_t)n);
        PQfreemem(buf);
        if (!ok)
            return false;
    }
}

/* Results of setup commands, up to START_REPLICATION's CopyBoth; false when r failed. */
static bool repl_read_results(Repl *r)
{
    while (!PQisBusy(r->conn)) {
        PGresult *res = PQgetResult(r->conn);
        bool ok;

        if (!res)
            return repl_setup_done(r);
        if (r->state == RS_START) {
            ok = PQresultStatus(res) == PGRES_COPY_BOTH;
            if (!ok)
                repl_fail(r, "START_REPLICATION failed: %s", result_error(res));
            PQclear(res);
            if (!ok)
                return false;
            repl_stream_started(r);
            return repl_read_stream(r);
        }
        ok = repl_setup_result(r, res);
        PQclear(res);
        if (!ok)
            return false;
    }
    return true;
}

/* ---- connecting ------------------------------------------------------------ */

static void repl_connect_poll(Repl *r)
{
    switch (PQconnectPoll(r->conn)) {
    case PGRES_POLLING_READING:
        (void)repl_watch(r, EV_READ, true);
        return;
    case PGRES_POLLING_WRITING:
        (void)repl_watch(r, EV_WRITE, true);
        return;
    case PGRES_POLLING_OK:
        (void)repl_begin_setup(r);
        return;
    default:
        repl_fail(r, "cannot connect: %s", PQerrorMessage(r->conn));
        return;
    }
}

static void repl_connect(Repl *r)
{
    const char *keys[UPSTREAM_MAX_PARAMS + 1], *vals[UPSTREAM_MAX_PARAMS + 1];
    int n = 0;

    upstream_conninfo(r->p, true, keys, vals);
    while (keys[n])
        n++;
    if (r->hostaddr[0]) {
        /* libpq would resolve host itself, blocking the loop */
        keys[n] = "hostaddr";
        vals[n++] = r->hostaddr;
        keys[n] = vals[n] = NULL;
    }
    r->state = RS_CONNECTING;
    r->conn = PQconnectStartParams(keys, vals, 0);
    if (!r->conn) {
        repl_fail(r, "cannot connect: out of memory");
        return;
    }
    if (PQstatus(r->conn) == CONNECTION_BAD) {
        repl_fail(r, "cannot connect: %s", PQerrorMessage(r->conn));
        return;
    }
    /* libpq: start as if PQconnectPoll had said PGRES_POLLING_WRITING */
    (void)repl_watch(r, EV_WRITE, true);
}

static void repl_dns_done(int result, struct evutil_addrinfo *res, void *arg)
{
    ReplDns *q = arg;
    Repl *r = q->r;

    free(q);
    if (!r) {
        if (res)
            evutil_freeaddrinfo(res);
        return;
    }
    r->dns_q = NULL;
    r->dns = NULL;
    if (result != 0 || !res) {
        repl_fail(r, "could not resolve host \"%s\": %s", r->p->host, evutil_gai_strerror(result));
        return;
    }
    if (res->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, r->hostaddr,
                  sizeof(r->hostaddr));
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, r->hostaddr,
                  sizeof(r->hostaddr));
    evutil_freeaddrinfo(res);
    repl_connect(r);
}

/* Does the host need DNS (not a socket directory, not a numeric address)? */
/* A new attempt: resolve the host when it is a name (and there is a resolver), then connect. */
static void repl_attempt(Repl *r)
{
    struct evdns_getaddrinfo_request *req;
    struct evutil_addrinfo hints;
    char port[16];
    ReplDns *q;

    r->attempt_since = now_sec();
    r->hostaddr[0] = 0;
    if (!r->p->w->dns || !upstream_needs_dns(r->p->host)) {
        repl_connect(r);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", r->p->port);
    q = malloc(sizeof(*q));
    if (!q) {
        repl_fail(r, "out of memory");
        return;
    }
    q->r = r;
    r->dns_q = q;
    r->state = RS_RESOLVING;
    req = evdns_getaddrinfo(r->p->w->dns, r->p->host, port, &hints, repl_dns_done, q);
    /* NULL when answered at once: the callback has run and freed q */
    if (req)
        r->dns = req;
}

/* ---- events ------------------------------------------------------------------ */

static void repl_io_cb(evutil_socket_t fd, short what, void *arg)
{
    Repl *r = arg;

    if (r->state == RS_CONNECTING) {
        repl_connect_poll(r);
        return;
    }
    if ((what & EV_WRITE) && !repl_flush(r))
        return;
    if ((what & EV_READ) && !PQconsumeInput(r->conn)) {
        repl_fail(r, "connection lost: %s", PQerrorMessage(r->conn));
        return;
    }
    /* also after a write alone: PQflush may have read input while it waited */
    repl_step(r);
}

/* Handle what input libpq has, in the current state. */
static void repl_step(Repl *r)
{
    if (r->state == RS_STREAMING)
        (void)repl_read_stream(r);
    else
        (void)repl_read_results(r);
}

static void repl_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    repl_attempt(arg);
}

/* Once a second: setup timeout; while streaming, status updates and silence. */
static void repl_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    Repl *r = arg;
    double now = now_sec();

    if (r->ck == CK_CONNECTING && now - r->ck_since > REPL_CONNECT_SEC)
        ck_fail(r, "connecting timed out");
    else if (r->ck == CK_BUSY && now - r->ck_since > REPL_CHECK_TIMEOUT)
        ck_fail(r, "no answer in %.0f s", REPL_CHECK_TIMEOUT);
    else if (r->ck == CK_DOWN && r->state == RS_STREAMING && now >= r->ck_retry_at)
        ck_connect(r);
    if ((r->state == RS_RESOLVING || r->state == RS_CONNECTING) &&
        now - r->attempt_since > REPL_CONNECT_SEC) {
        repl_fail(r, "connecting timed out");
        return;
    }
    if (r->state != RS_STREAMING)
        return;
    if (now - r->last_recv > REPL_SILENCE_SEC) {
        repl_fail(r, "nothing heard from the server for 35 s");
        return;
    }
    /* asking for a reply makes the server's silence mean something */
    if (now - r->last_status >= REPL_STATUS_SEC)
        (void)repl_send_status(r, true);
}

/* ---- interface --------------------------------------------------------------- */

Repl *repl_new(struct Pool *p, const ReplCallbacks *cb)
{
    struct timeval zero = {0, 0}, second = {1, 0};
    Repl *r = calloc(1, sizeof(*r));

    if (!r)
        return NULL;
    r->p = p;
    r->cb = *cb;
    r->backoff = REPL_BACKOFF_MIN;
    r->ck_backoff = REPL_BACKOFF_MIN;
    r->rels_cap = REPL_RELS_MIN;
    r->rels = calloc(r->rels_cap, sizeof(*r->rels));
    r->pend_cap = REPL_PENDING_MIN;
    r->pend = calloc(r->pend_cap, sizeof(*r->pend));
    r->retry = evtimer_new(p->w->base, repl_retry_cb, r);
    r->tick = event_new(p->w->base, -1, EV_PERSIST, repl_tick_cb, r);
    r->recheck = evtimer_new(p->w->base, pend_recheck_cb, r);
    if (!r->rels || !r->pend || !r->retry || !r->tick || !r->recheck ||
        event_add(r->tick, &second) < 0 || event_add(r->retry, &zero) < 0) {
        repl_free(r);
        return NULL;
    }
    /* the first attempt runs from the loop, not inside the caller */
    return r;
}

void repl_free(Repl *r)
{
    if (!r)
        return;
    repl_close(r);
    ck_close(r);
    if (r->retry)
        event_free(r->retry);
    if (r->tick)
        event_free(r->tick);
    if (r->recheck)
        event_free(r->recheck);
    free(r->rels);
    free(r->pend);
    free(r->xip);
    free(r);
}

bool repl_streaming(const Repl *r)
{
    return r && r->state == RS_STREAMING;
}

void repl_stats(const Repl *r, ReplStats *out)
{
    *out = r->st;
    out->streaming = r->state == RS_STREAMING;
}
