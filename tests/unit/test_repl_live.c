/*
 * daemon/repl.c against a real PostgreSQL (wal_level = logical, a
 * superuser that may create the publication): the stream starts with
 * all(), row changes arrive as row() with canonical keys, what cannot be
 * keyed as table(), a killed walsender is followed by a reconnect and
 * another all(), status updates reach the server, and repl_free is safe in
 * every phase. Skipped unless PGC_TEST_PG_PORT names the server's port
 * (host 127.0.0.1, user PGC_TEST_PG_USER or postgres, database postgres).
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
    PGconn *admin; /* blocking: this test's own writes, not the loop's */
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
    char *saved_user;
    ReplStats st = {0};
    Repl *r;

    NEED_LIVE(l);
    sql(l, "DROP PUBLICATION IF EXISTS " REPL_OWN_PUBLICATION);
    sql(l, "DROP ROLE IF EXISTS pgc_repl_only");
    sql(l, "CREATE ROLE pgc_repl_only LOGIN REPLICATION");
    saved_user = l->p.server_user;
    l->p.server_user = "pgc_repl_only";
    r = live_repl(l);
    for (int i = 0; i < 20 && st.failures == 0; i++) {
        loop_once(l);
        repl_stats(r, &st);
    }
    repl_free(r);
    l->p.server_user = saved_user;
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
        cmocka_unit_test(test_dns_host),
        cmocka_unit_test(test_missing_publication),
        cmocka_unit_test(test_free_in_every_phase),
        cmocka_unit_test(test_publication_not_creatable),
    };

    return cmocka_run_group_tests(tests, live_setup, live_teardown);
}
