/*
 * daemon/repl.c against a real PostgreSQL (wal_level = logical, a
 * superuser that may create the publication): the stream starts with
 * all(), row changes arrive as row() with canonical keys, what cannot be
 * keyed as table(), a killed walsender is followed by a reconnect and
 * another all(), status updates reach the server, and repl_free is safe in
 * every phase. Each committed change is heard twice: when it arrives and
 * again once its commit is visible to other sessions, which with
 * synchronous replication waiting for a standby can be much later. Skipped unless PGC_TEST_PG_PORT
 * names the server's port (host 127.0.0.1, user PGC_TEST_PG_USER or postgres, database postgres).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <libpq-fe.h>

#include "conf/config.h"
#include "daemon/repl.h"
#include "daemon/worker.h"
#include "orm/cache_key.h"

#define MAX_EVENTS 256

/* What the callbacks saw, as "all", "table <relid>", "row <relid> <key>". */
typedef struct Seen {
    int n;
    char ev[MAX_EVENTS][CACHE_KEY_MAX + 32];
    int alls;
} Seen;

typedef struct Live {
    Config *cfg;
    Worker w;
    Pool p;
    PGconn *admin;         /* blocking: this test's own writes, not the loop's */
    PGconn *direct;        /* a session whose commit waits for a standby */
    bool sync_standby_set; /* synchronous_standby_names is set: the teardown resets it */
    Seen seen;
    char port[16];
} Live;

static void seen_add(Seen *s, const char *ev)
{
    if (s->n < MAX_EVENTS)
        snprintf(s->ev[s->n++], sizeof(s->ev[0]), "%s", ev);
}

static void on_row(void *arg, uint32_t relid, const char *key, size_t keylen)
{
    char ev[CACHE_KEY_MAX + 32];

    snprintf(ev, sizeof(ev), "row %u %.*s", relid, (int)keylen, key);
    seen_add(arg, ev);
}

static void on_table(void *arg, uint32_t relid)
{
    char ev[32];

    snprintf(ev, sizeof(ev), "table %u", relid);
    seen_add(arg, ev);
}

static void on_all(void *arg)
{
    Seen *s = arg;

    s->alls++;
    seen_add(s, "all");
}

/* How many events equal ev. */
static int seen_count(const Seen *s, const char *ev)
{
    int n = 0;

    for (int i = 0; i < s->n; i++)
        n += strcmp(s->ev[i], ev) == 0;
    return n;
}

/* Index of the first event at or after from equal to ev, or -1. */
static int seen_find(const Seen *s, int from, const char *ev)
{
    for (int i = from; i < s->n; i++)
        if (strcmp(s->ev[i], ev) == 0)
            return i;
    return -1;
}

static void sql(Live *l, const char *q)
{
    PGresult *res = PQexec(l->admin, q);
    ExecStatusType st = PQresultStatus(res);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", q, PQerrorMessage(l->admin));
    PQclear(res);
}

static uint32_t relid_of(Live *l, const char *table)
{
    char q[128];
    PGresult *res;
    uint32_t oid;

    snprintf(q, sizeof(q), "SELECT '%s'::regclass::oid", table);
    res = PQexec(l->admin, q);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    oid = (uint32_t)strtoul(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return oid;
}

static double now_wall(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Run the loop until done(l) or timeout seconds; returns done(l). */
static bool run_until(Live *l, bool (*done)(Live *l, void *arg), void *arg, double timeout)
{
    double until = now_wall() + timeout;
    struct timeval slice = {0, 50000};

    while (!done(l, arg)) {
        if (now_wall() > until)
            return false;
        event_base_loopexit(l->w.base, &slice);
        event_base_dispatch(l->w.base);
    }
    return true;
}

/* One pass of the loop (at most a second: the repl's own tick wakes it). */
static void loop_once(Live *l)
{
    event_base_loop(l->w.base, EVLOOP_ONCE);
}

static bool never(Live *l, void *arg)
{
    return false;
}

/* Run the loop for secs seconds. */
static void run_for(Live *l, double secs)
{
    (void)run_until(l, never, NULL, secs);
}

static bool streaming_with_alls(Live *l, void *arg)
{
    Repl *r = ((void **)arg)[0];
    int want = *(int *)((void **)arg)[1];
    ReplStats st;

    repl_stats(r, &st);
    return st.streaming && l->seen.alls >= want;
}

static bool event_seen(Live *l, void *arg)
{
    return seen_find(&l->seen, 0, arg) >= 0;
}

static int live_setup(void **state)
{
    const char *port = getenv("PGC_TEST_PG_PORT");
    const char *user = getenv("PGC_TEST_PG_USER");
    char url[256], err[256], conninfo[256];
    Live *l;

    if (!port || !*port)
        return 0; /* each test skips */
    if (!user || !*user)
        user = "postgres";
    l = calloc(1, sizeof(*l));
    assert_non_null(l);
    snprintf(url, sizeof(url), "postgresql://%s@127.0.0.1:%s/postgres", user, port);
    l->cfg = config_from_url(url, NULL, err, sizeof(err));
    if (!l->cfg)
        fail_msg("config_from_url: %s", err);
    l->w.cfg = l->cfg;
    l->w.base = event_base_new();
    assert_non_null(l->w.base);
    snprintf(l->port, sizeof(l->port), "%s", port);
    l->p.w = &l->w;
    l->p.host = "127.0.0.1";
    l->p.port = atoi(port);
    l->p.dbname = "postgres";
    l->p.server_user = (char *)user;
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%s user=%s dbname=postgres", port,
             user);
    l->admin = PQconnectdb(conninfo);
    if (PQstatus(l->admin) != CONNECTION_OK)
        fail_msg("admin connection: %s", PQerrorMessage(l->admin));
    sql(l, "SET client_min_messages = warning");
    sql(l, "DROP TABLE IF EXISTS rl_int, rl_comp, rl_uuid, rl_full, rl_nopk");
    sql(l, "DO $$ BEGIN FOR i IN 1..260 LOOP "
           "EXECUTE format('DROP TABLE IF EXISTS rl_many_%s', i); END LOOP; END $$");
    /* repl.c must create its publication when missing */
    sql(l, "DROP PUBLICATION IF EXISTS " REPL_OWN_PUBLICATION);
    sql(l, "CREATE TABLE rl_int (id int PRIMARY KEY, v text)");
    sql(l, "CREATE TABLE rl_comp (a int, b text, c int, PRIMARY KEY (a, b))");
    sql(l, "CREATE TABLE rl_uuid (id uuid PRIMARY KEY)");
    sql(l, "CREATE TABLE rl_full (id int PRIMARY KEY, v text)");
    sql(l, "ALTER TABLE rl_full REPLICA IDENTITY FULL");
    sql(l, "CREATE TABLE rl_nopk (x int)");
    *state = l;
    return 0;
}

static int live_teardown(void **state)
{
    Live *l = *state;

    if (!l)
        return 0;
    PQfinish(l->admin);
    event_base_free(l->w.base);
    config_free(l->cfg);
    free(l);
    return 0;
}

#define NEED_LIVE(l)                                                                               \
    do {                                                                                           \
        if (!(l))                                                                                  \
            skip();                                                                                \
    } while (0)

static Repl *live_repl(Live *l)
{
    ReplCallbacks cb = {on_row, on_table, on_all, &l->seen};
    Repl *r = repl_new(&l->p, &cb);

    assert_non_null(r);
    return r;
}

/* Wait for ev, failing with everything seen so far when it does not come. */
static void expect_event(Live *l, const char *ev)
{
    if (run_until(l, event_seen, (void *)ev, 10))
        return;
    for (int i = 0; i < l->seen.n; i++)
        fprintf(stderr, "  seen: %s\n", l->seen.ev[i]);
    fail_msg("no \"%s\"", ev);
}

static void expect_row(Live *l, uint32_t relid, const char *key)
{
    char ev[CACHE_KEY_MAX + 32];

    snprintf(ev, sizeof(ev), "row %u %s", relid, key);
    expect_event(l, ev);
}

static void expect_table(Live *l, uint32_t relid)
{
    char ev[32];

    snprintf(ev, sizeof(ev), "table %u", relid);
    expect_event(l, ev);
}

static void wait_streaming(Live *l, Repl *r, int alls)
{
    void *arg[2] = {r, &alls};
    ReplStats st;

    if (!run_until(l, streaming_with_alls, arg, 15)) {
        repl_stats(r, &st);
        fail_msg("not streaming (all() %d times): %s", l->seen.alls, st.last_error);
    }
}

/* The key cache_key.h makes for (a int, b text). */
static const char *comp_key(char *buf, const char *a, const char *b)
{
    CacheKey k;

    cache_key_init(&k, 2);
    assert_true(cache_key_add(&k, CACHE_OID_INT4, a, strlen(a), false));
    assert_true(cache_key_add(&k, CACHE_OID_TEXT, b, strlen(b), false));
    assert_true(cache_key_done(&k));
    memcpy(buf, k.buf, k.len);
    buf[k.len] = 0;
    return buf;
}

static void test_stream_changes_and_reconnect(void **state)
{
    Live *l = *state;
    char key[CACHE_KEY_MAX + 1];
    uint32_t r_int, r_comp, r_uuid, r_full, r_nopk;
    ReplStats st;
    Repl *r;

    NEED_LIVE(l);
    r_int = relid_of(l, "rl_int");
    r_comp = relid_of(l, "rl_comp");
    r_uuid = relid_of(l, "rl_uuid");
    r_full = relid_of(l, "rl_full");
    r_nopk = relid_of(l, "rl_nopk");
    l->seen.n = l->seen.alls = 0;
    r = live_repl(l);
    wait_streaming(l, r, 1);
    assert_string_equal(l->seen.ev[0], "all");

    sql(l, "INSERT INTO rl_int VALUES (5, 'five'), (7, NULL)");
    expect_table(l, r_int); /* its Relation message */
    expect_row(l, r_int, "5");
    expect_row(l, r_int, "7");
    l->seen.n = 0;
    sql(l, "UPDATE rl_int SET id = 6 WHERE id = 5"); /* old and new key */
    expect_row(l, r_int, "5");
    expect_row(l, r_int, "6");
    sql(l, "DELETE FROM rl_int WHERE id = 7");
    expect_row(l, r_int, "7");
    sql(l, "INSERT INTO rl_comp VALUES (7, 'ab', NULL)");
    expect_row(l, r_comp, comp_key(key, "7", "ab"));
    sql(l, "INSERT INTO rl_uuid VALUES ('A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11')");
    expect_row(l, r_uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    l->seen.n = 0;
    sql(l, "INSERT INTO rl_full VALUES (1, 'x')");
    expect_table(l, r_full);
    l->seen.n = 0;
    sql(l, "UPDATE rl_full SET v = 'y'"); /* FULL identity: no key, the table */
    expect_table(l, r_full);
    assert_int_equal(seen_find(&l->seen, 0, "row"), -1);
    sql(l, "INSERT INTO rl_nopk VALUES (1)");
    expect_table(l, r_nopk);
    l->seen.n = 0;
    sql(l, "TRUNCATE rl_int");
    expect_table(l, r_int);
    repl_stats(r, &st);
    assert_true(st.transactions >= 9);
    assert_true(st.rows >= 7);
    assert_true(st.last_lag >= 0 && st.last_lag < 5);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.connects, 1);

    /* a killed walsender: failure, reconnect after the first backoff, all() again */
    sql(l, "SELECT pg_terminate_backend(pid) FROM pg_stat_replication "
           "WHERE application_name = 'pgcoalesce'");
    wait_streaming(l, r, 2);
    repl_stats(r, &st);
    assert_int_equal(st.failures, 1);
    assert_int_equal(st.connects, 2);
    assert_true(st.last_error[0] != 0);
    l->seen.n = 0;
    sql(l, "INSERT INTO rl_int VALUES (42, 'again')");
    expect_row(l, r_int, "42");
    repl_free(r);
}

static bool flushed_on_server(Live *l, void *arg)
{
    PGresult *res =
        PQexec(l->admin, "SELECT flush_lsn >= pg_current_wal_insert_lsn() - 1000000 "
                         "FROM pg_stat_replication "
                         "WHERE application_name = 'pgcoalesce' AND flush_lsn IS NOT NULL");
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
              strcmp(PQgetvalue(res, 0, 0), "t") == 0;

    PQclear(res);
    return ok;
}

/* The server accepts the standby status updates (a bad one would end the stream). */
static void test_status_updates(void **state)
{
    Live *l = *state;
    ReplStats st;
    Repl *r;

    NEED_LIVE(l);
    l->seen.n = l->seen.alls = 0;
    r = live_repl(l);
    wait_streaming(l, r, 1);
    sql(l, "INSERT INTO rl_int VALUES (100, 'x')");
    assert_true(run_until(l, flushed_on_server, NULL, 15));
    repl_stats(r, &st);
    assert_int_equal(st.failures, 0);
    assert_true(st.streaming);
    repl_free(r);
}

/* "row <relid> <key>" into ev. */
static const char *row_ev(char *ev, size_t cap, uint32_t relid, const char *key)
{
    snprintf(ev, cap, "row %u %s", relid, key);
    return ev;
}

typedef struct CountWant {
    const char *ev;
    int n;
} CountWant;

static bool counts_reached(Live *l, void *arg)
{
    for (const CountWant *w = arg; w->ev; w++)
        if (seen_count(&l->seen, w->ev) < w->n)
            return false;
    return true;
}

static void dump_seen(const Live *l)
{
    for (int i = 0; i < l->seen.n; i++)
        fprintf(stderr, "  seen: %s\n", l->seen.ev[i]);
}

/* Wait until each ev was seen n times (within timeout), then check no more come for a while. */
static void expect_counts(Live *l, CountWant *want, double timeout)
{
    if (!run_until(l, counts_reached, want, timeout)) {
        dump_seen(l);
        fail_msg("\"%s\" and the others not seen as often as expected", want[0].ev);
    }
    run_for(l, 0.3); /* past the 200 ms fallback: nothing more comes */
    for (const CountWant *w = want; w->ev; w++)
        if (seen_count(&l->seen, w->ev) != w->n) {
            dump_seen(l);
            fail_msg("\"%s\" seen %d times, not %d", w->ev, seen_count(&l->seen, w->ev), w->n);
        }
}

/* Ordinary commits: each changed key's row() twice, the second round after the first. */
static void test_second_round(void **state)
{
    Live *l = *state;
    char e201[64], e202[64], e203[64];
    int i201, i202;
    uint32_t r_int;
    ReplStats st;
    Repl *r;

    NEED_LIVE(l);
    r_int = relid_of(l, "rl_int");
    l->seen.n = l->seen.alls = 0;
    r = live_repl(l);
    wait_streaming(l, r, 1);
    run_for(l, 0.2); /* the check connection comes up */
    l->seen.n = 0;
    sql(l, "INSERT INTO rl_int VALUES (201, 'a'), (202, 'b')");
    row_ev(e201, sizeof(e201), r_int, "201");
    row_ev(e202, sizeof(e202), r_int, "202");
    row_ev(e203, sizeof(e203), r_int, "203");
    {
        CountWant want[] = {{e201, 2}, {e202, 2}, {NULL, 0}};
        expect_counts(l, want, 5);
    }
    /* the first round of both keys, then the second of both */
    i201 = seen_find(&l->seen, 0, e201);
    i202 = seen_find(&l->seen, 0, e202);
    assert_true(i201 < i202);
    assert_true(seen_find(&l->seen, i201 + 1, e201) > i202);
    assert_true(seen_find(&l->seen, i202 + 1, e202) > seen_find(&l->seen, i201 + 1, e201));
    l->seen.n = 0;
    sql(l, "UPDATE rl_int SET id = 203 WHERE id = 201");
    {
        CountWant want[] = {{e201, 2}, {e203, 2}, {NULL, 0}};
        expect_counts(l, want, 5);
    }
    assert_int_equal(seen_count(&l->seen, e202), 0);
    repl_stats(r, &st);
    assert_true(st.rechecked >= 4);
    assert_int_equal(st.unchecked, 0); /* every second round came from a visibility check */
    assert_int_equal(st.failures, 0);
    repl_free(r);
    assert_int_equal(event_base_get_num_events(l->w.base, EVENT_BASE_COUNT_ADDED), 0);
}

/* A value of the first row of the admin's q (copied into out). */
static void query_value(Live *l, const char *q, char *out, size_t cap)
{
    PGresult *res = PQexec(l->admin, q);

    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", q, PQerrorMessage(l->admin));
    snprintf(out, cap, "%s", PQntuples(res) ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
}

/* Has the direct session's statement finished (its results are in)? */
static bool direct_done(Live *l)
{
    if (!PQconsumeInput(l->direct))
        fail_msg("direct session: %s", PQerrorMessage(l->direct));
    return !PQisBusy(l->direct);
}

static bool direct_done_cb(Live *l, void *arg)
{
    return direct_done(l);
}

/* Drain the direct session's results; the last status. */
static ExecStatusType direct_drain(Live *l)
{
    ExecStatusType st = PGRES_EMPTY_QUERY;
    PGresult *res;

    while ((res = PQgetResult(l->direct))) {
        st = PQresultStatus(res);
        PQclear(res);
    }
    return st;
}

static bool direct_waits_or_done(Live *l, void *arg)
{
    char q[128], ev[64];

    if (direct_done(l))
        return true;
    snprintf(q, sizeof(q), "SELECT wait_event FROM pg_stat_activity WHERE pid = %d",
             PQbackendPID(l->direct));
    query_value(l, q, ev, sizeof(ev));
    return strcmp(ev, "SyncRep") == 0;
}

/*
 * synchronous_standby_names names a standby that never comes: a commit
 * waits (SyncRep) with its change already streamed and not visible. The
 * first round comes at once, the second only once the commit is visible
 * (pg_cancel_backend ends the wait, the commit stays), and soon after.
 */
static void test_sync_commit_window(void **state)
{
    Live *l = *state;
    char conninfo[256], q[256], before[64], after[64], ev[64];
    ReplStats st;
    bool waiting = false;
    double t0;
    Repl *r;
    uint32_t r_int;

    NEED_LIVE(l);
    r_int = relid_of(l, "rl_int");
    row_ev(ev, sizeof(ev), r_int, "300");
    /* the admin's own commits must not wait (the setting reaches every process in its time) */
    sql(l, "SET synchronous_commit = local");
    sql(l, "INSERT INTO rl_int VALUES (300, 'v0')");
    l->seen.n = l->seen.alls = 0;
    r = live_repl(l);
    wait_streaming(l, r, 1);
    run_for(l, 0.2);
    l->sync_standby_set = true;
    sql(l, "ALTER SYSTEM SET synchronous_standby_names = 'nobody'");
    sql(l, "SELECT pg_reload_conf()");
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%s user=%s dbname=postgres", l->port,
             l->p.server_user);
    l->direct = PQconnectdb(conninfo);
    if (PQstatus(l->direct) != CONNECTION_OK)
        fail_msg("direct connection: %s", PQerrorMessage(l->direct));
    /* until the server's processes took the setting, a commit may not wait: try again */
    for (int attempt = 1; attempt <= 20 && !waiting; attempt++) {
        query_value(l, "SELECT v FROM rl_int WHERE id = 300", before, sizeof(before));
        l->seen.n = 0;
        snprintf(q, sizeof(q),
                 "SET synchronous_commit = on; UPDATE rl_int SET v = 'v%d' WHERE id = 300",
                 attempt);
        assert_true(PQsendQuery(l->direct, q));
        expect_event(l, ev); /* the first round: the change is streamed */
        assert_true(run_until(l, direct_waits_or_done, NULL, 5));
        if (direct_done(l)) {
            assert_int_equal(direct_drain(l), PGRES_COMMAND_OK);
            run_for(l, 0.3); /* its second round, out of the way */
            continue;
        }
        waiting = true;
    }
    assert_true(waiting);
    /* the change was heard, the commit is not visible: no second round, not even the fallback */
    query_value(l, "SELECT v FROM rl_int WHERE id = 300", after, sizeof(after));
    assert_string_equal(after, before);
    repl_stats(r, &st);
    run_for(l, 0.5);
    assert_int_equal(seen_count(&l->seen, ev), 1);
    {
        ReplStats st2;

        repl_stats(r, &st2);
        assert_true(st2.rechecked == st.rechecked);
        assert_int_equal(st2.unchecked, 0);
    }
    assert_true(direct_waits_or_done(l, NULL) && !direct_done(l));
    /* released: the commit stays and becomes visible */
    snprintf(q, sizeof(q), "SELECT pg_cancel_backend(%d)", PQbackendPID(l->direct));
    t0 = now_wall();
    sql(l, q);
    {
        CountWant want[] = {{ev, 2}, {NULL, 0}};

        if (!run_until(l, counts_reached, want, 2)) {
            dump_seen(l);
            fail_msg("no second round within 2 s of the release");
        }
    }
    fprintf(stderr, "  second round %.1f ms after the release\n", (now_wall() - t0) * 1000);
    query_value(l, "SELECT v FROM rl_int WHERE id = 300", after, sizeof(after));
    assert_string_not_equal(after, before);
    assert_true(run_until(l, direct_done_cb, NULL, 5));
    assert_int_equal(direct_drain(l), PGRES_COMMAND_OK); /* with a WARNING */
    run_for(l, 0.3);
    assert_int_equal(seen_count(&l->seen, ev), 2);
    repl_stats(r, &st);
    assert_int_equal(st.unchecked, 0);
    assert_int_equal(st.failures, 0);
    repl_free(r);
}

/* Whatever test_sync_commit_window left: the setting reset, the waiting session released. */
static int sync_teardown(void **state)
{
    Live *l = *state;
    char q[128];

    if (!l)
        return 0;
    if (l->sync_standby_set) {
        /* with no standby named, the checkpointer releases every waiting commit */
        sql(l, "ALTER SYSTEM RESET synchronous_standby_names");
        sql(l, "SELECT pg_reload_conf()");
        l->sync_standby_set = false;
    }
    if (l->direct) {
        snprintf(q, sizeof(q), "SELECT pg_cancel_backend(%d)", PQbackendPID(l->direct));
        sql(l, q);
        PQfinish(l->direct);
        l->direct = NULL;
    }
    return 0;
}

static bool check_conn_gone(Live *l, void *arg)
{
    char n[16];

    query_value(l,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgcoalesce' "
                "AND backend_type = 'client backend'",
                n, sizeof(n));
    return strcmp(n, *(const char **)arg) == 0;
}

/*
 * The visibility check connection killed: until it is back (after a second),
 * the second round comes 200 ms after the commit, counted as unchecked;
 * then checks again.
 */
static void test_check_connection_lost(void **state)
{
    Live *l = *state;
    const char *zero = "0", *one = "1";
    char ev[64];
    double t0, dt;
    uint32_t r_int;
    ReplStats st;
    Repl *r;

    NEED_LIVE(l);
    r_int = relid_of(l, "rl_int");
    l->seen.n = l->seen.alls = 0;
    r = live_repl(l);
    wait_streaming(l, r, 1);
    assert_true(run_until(l, check_conn_gone, &one, 5)); /* it is up */
    sql(l, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
           "WHERE application_name = 'pgcoalesce' AND backend_type = 'client backend'");
    assert_true(run_until(l, check_conn_gone, &zero, 5));
    run_for(l, 0.1);
    l->seen.n = 0;
    sql(l, "INSERT INTO rl_int VALUES (400, 'x')");
    row_ev(ev, sizeof(ev), r_int, "400");
    expect_event(l, ev);
    t0 = now_wall();
    {
        CountWant want[] = {{ev, 2}, {NULL, 0}};

        assert_true(run_until(l, counts_reached, want, 2));
    }
    dt = now_wall() - t0;
    assert_true(dt >= 0.1 && dt < 1.0);
    repl_stats(r, &st);
    assert_int_equal(st.unchecked, 1);
    /* back after the first backoff: checked again */
    assert_true(run_until(l, check_conn_gone, &one, 5));
    run_for(l, 0.2);
    l->seen.n = 0;
    sql(l, "INSERT INTO rl_int VALUES (401, 'x')");
    row_ev(ev, sizeof(ev), r_int, "401");
    {
        CountWant want[] = {{ev, 2}, {NULL, 0}};

        expect_counts(l, want, 5);
    }
    repl_stats(r, &st);
    assert_int_equal(st.unchecked, 1);
    assert_int_equal(st.failures, 0);
    repl_free(r);
}

static bool rechecked_reached(Live *l, void *arg)
{
    Repl *r = ((void **)arg)[0];
    uint64_t want = *(uint64_t *)((void **)arg)[1];
    ReplStats st;

    repl_stats(r, &st);
    return st.rechecked >= want;
}

/*
 * Bounded: past 10,000 pending keys the second round names the table; a
 * transaction of more than 256 tables gets all() the second time.
 */
static void test_second_round_bounds(void **state)
{
    Live *l = *state;
    uint64_t want;
    void *arg[2];
    ReplStats st0, st;
    Repl *r;

    NEED_LIVE(l);
    sql(l, "DO $$ BEGIN FOR i IN 1..260 LOOP "
           "EXECUTE format('CREATE TABLE rl_many_%s (id int PRIMARY KEY)', i); END LOOP; END $$");
    l->seen.n = l->seen.alls = 0;
    r = live_repl(l);
    wait_streaming(l, r, 1);
    run_for(l, 0.2);
    repl_stats(r, &st0);
    /* one transaction, 10,050 keys (and rl_int's Relation message, a table()) */
    sql(l, "INSERT INTO rl_int SELECT g, NULL FROM generate_series(1000, 11049) g");
    want = st0.rechecked + 10001;
    arg[0] = r;
    arg[1] = &want;
    assert_true(run_until(l, rechecked_reached, arg, 10));
    run_for(l, 0.3);
    repl_stats(r, &st);
    assert_int_equal(st.rows - st0.rows, 10050);
    assert_int_equal(st.rechecked - st0.rechecked, 10001); /* 10,000 rows, then the table */
    assert_int_equal(l->seen.alls, 1);
    /* 260 tables in one transaction: all() the second time */
    sql(l, "DO $$ BEGIN FOR i IN 1..260 LOOP "
           "EXECUTE format('INSERT INTO rl_many_%s VALUES (1)', i); END LOOP; END $$");
    want = st.rechecked + 1;
    assert_true(run_until(l, rechecked_reached, arg, 10));
    run_for(l, 0.3);
    repl_stats(r, &st0);
    assert_int_equal(st0.rechecked, want);
    assert_int_equal(l->seen.alls, 2);
    assert_int_equal(st0.unchecked, 0);
    assert_int_equal(st0.failures, 0);
    repl_free(r);
    sql(l, "DELETE FROM rl_int WHERE id BETWEEN 1000 AND 11049");
    sql(l, "DO $$ BEGIN FOR i IN 1..260 LOOP "
           "EXECUTE format('DROP TABLE rl_many_%s', i); END LOOP; END $$");
}

/* A name resolved through the worker's evdns base, not by libpq on the loop. */
static void test_dns_host(void **state)
{
    Live *l = *state;
    Repl *r;

    NEED_LIVE(l);
    l->w.dns = evdns_base_new(l->w.base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    assert_non_null(l->w.dns);
    l->p.host = "localhost";
    l->seen.n = l->seen.alls = 0;
    r = live_repl(l);
    wait_streaming(l, r, 1);
    repl_free(r);
    /* freed in the middle of a lookup that goes to a name server (or fails):
     * the callback, if libevent still makes it, must not touch r */
    l->p.host = "pgc-test.invalid";
    r = live_repl(l);
    loop_once(l); /* the first attempt: the lookup starts */
    repl_free(r);
    {
        struct timeval t = {0, 200000};
        event_base_loopexit(l->w.base, &t);
        event_base_dispatch(l->w.base);
    }
    evdns_base_free(l->w.dns, 0);
    l->w.dns = NULL;
    l->p.host = "127.0.0.1";
}

/*
 * A publication that does not exist: the walsender says so at the first
 * change it decodes; the failure is counted and explained.
 */
static void test_missing_publication(void **state)
{
    Live *l = *state;
    char *saved;
    ReplStats st = {0};
    bool wrote = false;
    double until;
    Repl *r;

    NEED_LIVE(l);
    saved = l->cfg->cache_publication;
    l->cfg->cache_publication = "no_such_pub";
    r = live_repl(l);
    until = now_wall() + 10;
    while (st.failures == 0 && now_wall() < until) {
        struct timeval t = {0, 50000};
        event_base_loopexit(l->w.base, &t);
        event_base_dispatch(l->w.base);
        repl_stats(r, &st);
        if (st.streaming && !wrote) {
            sql(l, "INSERT INTO rl_nopk VALUES (2)");
            wrote = true;
        }
    }
    l->cfg->cache_publication = saved;
    assert_true(st.failures >= 1);
    assert_false(st.streaming);
    assert_non_null(strstr(st.last_error, "no_such_pub"));
    repl_free(r);
}

/*
 * repl_free after 0, 1, 2, ... passes of the loop: before the first
 * attempt, mid-connect, mid-setup, streaming; and while waiting to retry.
 * ASan and the count of events left on the loop tell whether it cleaned up.
 */
static void test_free_in_every_phase(void **state)
{
    Live *l = *state;
    bool streamed_late = false, streamed_early = false;
    ReplStats st = {0};
    Repl *r;

    NEED_LIVE(l);
    /* up to the first number of passes that ends streaming (each later pass waits for the tick) */
    for (int passes = 0; passes <= 40 && !streamed_late; passes++) {
        r = live_repl(l);
        for (int i = 0; i < passes; i++)
            loop_once(l);
        repl_stats(r, &st);
        if (passes < 3 && st.streaming)
            streamed_early = true;
        streamed_late = st.streaming;
        repl_free(r);
    }
    assert_false(streamed_early); /* so the first frees were mid-setup */
    assert_true(streamed_late);   /* and the passes covered the whole setup */
    /* nothing listens here: fails, then waits for its retry */
    l->p.port = 1;
    r = live_repl(l);
    for (int i = 0; i < 5 && st.failures == 0; i++) {
        loop_once(l);
        repl_stats(r, &st);
    }
    repl_free(r);
    l->p.port = atoi(l->port);
    assert_true(st.failures >= 1);
    assert_non_null(strstr(st.last_error, "connect"));
    assert_null(strchr(st.last_error, '\n'));
    assert_null(strchr(st.last_error, '\t'));
    /* nothing is left on the loop */
    assert_int_equal(event_base_get_num_events(l->w.base, EVENT_BASE_COUNT_ADDED), 0);
}

/* A user that may replicate but not create the publication: told what to do. */
static void test_publication_not_creatable(void **state)
{
    Live *l = *state;
    char *saved_user, *saved_password;
    ReplStats st = {0};
    Repl *r;

    NEED_LIVE(l);
    sql(l, "DROP PUBLICATION IF EXISTS " REPL_OWN_PUBLICATION);
    sql(l, "DROP ROLE IF EXISTS pgc_repl_only");
    /* a password, for servers whose pg_hba asks one of other users over TCP */
    sql(l, "CREATE ROLE pgc_repl_only LOGIN REPLICATION PASSWORD 'pgc_repl_pw'");
    saved_user = l->p.server_user;
    saved_password = l->p.server_password;
    l->p.server_user = "pgc_repl_only";
    l->p.server_password = "pgc_repl_pw";
    r = live_repl(l);
    for (int i = 0; i < 20 && st.failures == 0; i++) {
        loop_once(l);
        repl_stats(r, &st);
    }
    repl_free(r);
    l->p.server_user = saved_user;
    l->p.server_password = saved_password;
    sql(l, "DROP ROLE pgc_repl_only");
    assert_true(st.failures >= 1);
    assert_int_equal(st.connects, 0);
    assert_non_null(strstr(st.last_error, "cannot create publication"));
    assert_non_null(strstr(st.last_error, "cache_publication"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_changes_and_reconnect),
        cmocka_unit_test(test_status_updates),
        cmocka_unit_test(test_second_round),
        cmocka_unit_test_teardown(test_sync_commit_window, sync_teardown),
        cmocka_unit_test(test_check_connection_lost),
        cmocka_unit_test(test_second_round_bounds),
        cmocka_unit_test(test_dns_host),
        cmocka_unit_test(test_missing_publication),
        cmocka_unit_test(test_free_in_every_phase),
        cmocka_unit_test(test_publication_not_creatable),
    };

    return cmocka_run_group_tests(tests, live_setup, live_teardown);
}
