/*
 * Tests of daemon/catalog.c against a real PostgreSQL (PGC_TEST_PG_PORT on
 * 127.0.0.1, user postgres with trust, database postgres; skipped without
 * it): the verdict, reason, OID and primary key it gives for each kind of
 * table, its TTL-less forgetting on DDL, the isolation level, and what it
 * does when the server cannot be reached.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conf/config.h"
#include "daemon/catalog.h"
#include "daemon/log.h"
#include "daemon/worker.h"

typedef struct Env {
    int port;
    PGconn *admin; /* blocking: the test's own DDL and expectations */
    Config *cfg;
    Worker w;
    Pool pool;
} Env;

static Env env;

static const char SETUP_SQL[] =
    "DROP SCHEMA IF EXISTS \"Other\" CASCADE;"
    "DROP TABLE IF EXISTS ct_int, ct_big, ct_text, ct_uuid, ct_comp, ct_num, ct_nopk,"
    " ct_unlogged, ct_rls, ct_part, ct_wide CASCADE;"
    "DROP VIEW IF EXISTS ct_view;"
    "CREATE TABLE ct_int (id int PRIMARY KEY, v text);"
    "CREATE TABLE ct_big (id bigint PRIMARY KEY);"
    "CREATE TABLE ct_text (k text PRIMARY KEY);"
    "CREATE TABLE ct_uuid (u uuid PRIMARY KEY);"
    /* the key's order differs from the columns': keys come in column order (b, a), the order
     * logical replication sends key columns in */
    "CREATE TABLE ct_comp (b text, a int, PRIMARY KEY (a, b));"
    "CREATE TABLE ct_num (n numeric PRIMARY KEY);"
    "CREATE TABLE ct_nopk (x int);"
    "CREATE UNLOGGED TABLE ct_unlogged (id int PRIMARY KEY);"
    "CREATE TABLE ct_rls (id int PRIMARY KEY);"
    "ALTER TABLE ct_rls ENABLE ROW LEVEL SECURITY;"
    "CREATE TABLE ct_part (id int PRIMARY KEY) PARTITION BY RANGE (id);"
    "CREATE TABLE ct_wide (c1 int, c2 int, c3 int, c4 int, c5 int, c6 int, c7 int, c8 int,"
    " c9 int, PRIMARY KEY (c1, c2, c3, c4, c5, c6, c7, c8, c9));"
    "CREATE VIEW ct_view AS SELECT 1 AS x;"
    "CREATE SCHEMA \"Other\";"
    "CREATE TABLE \"Other\".\"MixedCase\" (\"Id\" int PRIMARY KEY);";

static void admin_exec(const char *sql)
{
    PGresult *res = PQexec(env.admin, sql);

    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(env.admin));
    PQclear(res);
}

/* The OID PostgreSQL gives the (SQL-spelled) relation name. */
static uint32_t regclass_oid(const char *sqlname)
{
    const char *vals[1] = {sqlname};
    PGresult *res =
        PQexecParams(env.admin, "SELECT $1::regclass::oid", 1, NULL, vals, NULL, NULL, 0);
    uint32_t oid = 0;

    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(res), 1);
    assert_false(PQgetisnull(res, 0, 0));
    oid = (uint32_t)strtoul(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    assert_true(oid != 0);
    return oid;
}

static int setup(void **state)
{
    const char *port = getenv("PGC_TEST_PG_PORT");
    char conninfo[128], url[128], err[256];

    memset(&env, 0, sizeof(env));
    log_level = LOG_WARNING; /* the expected connection failures, not every step */
    if (!port || !*port)
        return 0;
    env.port = atoi(port);
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d user=postgres dbname=postgres",
             env.port);
    env.admin = PQconnectdb(conninfo);
    if (PQstatus(env.admin) != CONNECTION_OK) {
        fprintf(stderr, "cannot connect to %s: %s", conninfo, PQerrorMessage(env.admin));
        return -1;
    }
    admin_exec("SET client_min_messages = warning");
    admin_exec(SETUP_SQL);
    snprintf(url, sizeof(url), "postgresql://postgres@127.0.0.1:%d/postgres", env.port);
    env.cfg = config_from_url(url, NULL, err, sizeof(err));
    if (!env.cfg) {
        fprintf(stderr, "config_from_url: %s\n", err);
        return -1;
    }
    env.w.base = event_base_new();
    env.w.cfg = env.cfg;
    env.pool.w = &env.w;
    env.pool.host = "127.0.0.1";
    env.pool.port = env.port;
    env.pool.dbname = "postgres";
    env.pool.server_user = "postgres";
    return env.w.base ? 0 : -1;
}

static int teardown(void **state)
{
    if (env.w.base)
        event_base_free(env.w.base);
    if (env.cfg)
        config_free(env.cfg);
    if (env.admin)
        PQfinish(env.admin);
    return 0;
}

static void need_server(void)
{
    if (!env.admin)
        skip(); /* PGC_TEST_PG_PORT unset */
}

/* Run the loop a little: what a worker does between two client messages. */
static void spin(double seconds)
{
    double until = now_sec() + seconds;

    do {
        event_base_loop(env.w.base, EVLOOP_NONBLOCK);
        usleep(2000);
    } while (now_sec() < until);
}

/* Ask until answered (at most 5 s, else the test fails). */
static const TableInfo *wait_table(Catalog *cat, const char *schema, const char *name)
{
    double until = now_sec() + 5.0;
    const TableInfo *t;

    while ((t = catalog_table(cat, schema, name)) == NULL) {
        if (now_sec() > until)
            fail_msg("no answer for %s.%s", schema ? schema : "", name);
        event_base_loop(env.w.base, EVLOOP_NONBLOCK);
        usleep(2000);
    }
    return t;
}

static void expect_key(const TableInfo *t, int n, const char *const *names, const uint32_t *types)
{
    assert_int_equal(t->npk, n);
    for (int i = 0; i < n; i++) {
        assert_string_equal(t->pk_name[i], names[i]);
        assert_int_equal(t->pk_type[i], types[i]);
    }
}

static void expect_cacheable(Catalog *cat, const char *schema, const char *name,
                             const char *sqlname, int n, const char *const *names,
                             const uint32_t *types)
{
    const TableInfo *t = wait_table(cat, schema, name);

    assert_true(t->cacheable);
    assert_string_equal(t->reason, "");
    assert_int_equal(t->oid, regclass_oid(sqlname));
    expect_key(t, n, names, types);
}

static void expect_refused(Catalog *cat, const char *schema, const char *name, const char *sqlname,
                           const char *reason)
{
    const TableInfo *t = wait_table(cat, schema, name);

    assert_false(t->cacheable);
    assert_string_equal(t->reason, reason);
    if (sqlname)
        assert_int_equal(t->oid, regclass_oid(sqlname));
    else
        assert_int_equal(t->oid, 0);
}

static void test_cacheable_tables(void **state)
{
    static const char *const id[] = {"id"}, *const k[] = {"k"}, *const u[] = {"u"};
    static const char *const ba[] = {"b", "a"}, *const mixed[] = {"Id"};
    static const uint32_t int4[] = {CACHE_OID_INT4}, int8[] = {CACHE_OID_INT8};
    static const uint32_t text[] = {CACHE_OID_TEXT}, uuid[] = {CACHE_OID_UUID};
    static const uint32_t text_int4[] = {CACHE_OID_TEXT, CACHE_OID_INT4};
    Catalog *cat;

    need_server();
    cat = catalog_new(&env.pool);
    assert_non_null(cat);
    assert_int_equal(catalog_read_committed(cat), -1);
    expect_cacheable(cat, NULL, "ct_int", "ct_int", 1, id, int4);
    assert_int_equal(catalog_read_committed(cat), 1);
    expect_cacheable(cat, "public", "ct_int", "public.ct_int", 1, id, int4);
    expect_cacheable(cat, NULL, "ct_big", "ct_big", 1, id, int8);
    expect_cacheable(cat, NULL, "ct_text", "ct_text", 1, k, text);
    expect_cacheable(cat, NULL, "ct_uuid", "ct_uuid", 1, u, uuid);
    expect_cacheable(cat, NULL, "ct_comp", "ct_comp", 2, ba, text_int4);
    expect_cacheable(cat, NULL, "ct_part", "ct_part", 1, id, int4);
    expect_cacheable(cat, "Other", "MixedCase", "\"Other\".\"MixedCase\"", 1, mixed, int4);
    catalog_free(cat);
}

static void test_refused_tables(void **state)
{
    static const char *const n[] = {"n"};
    static const uint32_t numeric[] = {1700};
    Catalog *cat;
    const TableInfo *t;

    need_server();
    cat = catalog_new(&env.pool);
    assert_non_null(cat);
    expect_refused(cat, NULL, "ct_num", "ct_num", "primary key type numeric is not supported");
    expect_key(wait_table(cat, NULL, "ct_num"), 1, n, numeric);
    expect_refused(cat, NULL, "ct_nopk", "ct_nopk", "no primary key");
    assert_int_equal(wait_table(cat, NULL, "ct_nopk")->npk, 0);
    expect_refused(cat, NULL, "ct_unlogged", "ct_unlogged", "unlogged table");
    expect_refused(cat, NULL, "ct_rls", "ct_rls", "row-level security is enabled");
    expect_refused(cat, NULL, "ct_view", "ct_view", "not a table (relkind v)");
    expect_refused(cat, NULL, "ct_wide", "ct_wide",
                   "primary key has 9 columns (at most 8 are supported)");
    expect_refused(cat, NULL, "pg_class", "pg_class", "system catalog");
    expect_refused(cat, "pg_catalog", "pg_class", "pg_class", "system catalog");
    expect_refused(cat, "information_schema", "tables", "information_schema.tables",
                   "not a table (relkind v)");
    /* names are taken as folded already: "mixedcase" is another name */
    expect_refused(cat, "Other", "mixedcase", NULL, "no such table");
    expect_refused(cat, "other", "MixedCase", NULL, "no such table");
    expect_refused(cat, NULL, "ct_missing", NULL, "no such table");
    expect_refused(cat, "no_schema", "ct_int", NULL, "no such table");
    /* a name that would need quoting is quoted, not run */
    expect_refused(cat, NULL, "x; DROP TABLE ct_int", NULL, "no such table");
    regclass_oid("ct_int");
    t = catalog_table(cat, NULL, "ct_missing");
    assert_non_null(t); /* a "no such table" is kept like any answer */
    catalog_free(cat);
}

static void test_forget_and_queue(void **state)
{
    static const char *const names[] = {"ct_int", "ct_big",      "ct_text", "ct_uuid", "ct_comp",
                                        "ct_num", "ct_unlogged", "ct_rls",  "ct_view", "ct_part"};
    int nnames = (int)(sizeof(names) / sizeof(names[0]));
    CatalogStats st;
    Catalog *cat;

    need_server();
    cat = catalog_new(&env.pool);
    assert_non_null(cat);
    /* all asked at once: answered one by one through the FIFO */
    for (int i = 0; i < nnames; i++)
        assert_null(catalog_table(cat, NULL, names[i]));
    for (int i = 0; i < nnames; i++)
        assert_int_equal(wait_table(cat, NULL, names[i])->oid, regclass_oid(names[i]));
    catalog_stats(cat, &st);
    assert_int_equal(st.lookups, nnames);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.tables, nnames);
    assert_true(st.connected);
    assert_string_equal(st.last_error, "");

    /* DDL: the old answer must not survive catalog_forget_all */
    assert_false(wait_table(cat, NULL, "ct_nopk")->cacheable);
    admin_exec("ALTER TABLE ct_nopk ADD PRIMARY KEY (x)");
    assert_false(wait_table(cat, NULL, "ct_nopk")->cacheable); /* trusted until told */
    catalog_forget_all(cat);
    catalog_stats(cat, &st);
    assert_int_equal(st.tables, 0);
    assert_null(catalog_table(cat, NULL, "ct_nopk"));
    assert_true(wait_table(cat, NULL, "ct_nopk")->cacheable);
    catalog_stats(cat, &st);
    assert_int_equal(st.lookups, nnames + 2);

    /* forgotten while in flight: the (maybe stale) answer is dropped, the next one kept */
    assert_null(catalog_table(cat, NULL, "ct_int"));
    catalog_forget_all(cat);
    spin(0.3);
    assert_null(catalog_table(cat, NULL, "ct_int"));
    assert_true(wait_table(cat, NULL, "ct_int")->cacheable);
    admin_exec("ALTER TABLE ct_nopk DROP CONSTRAINT ct_nopk_pkey");
    catalog_free(cat);
}

/* More names than CATALOG_MAX_QUEUE at once: the rest are looked up when asked again. */
static void test_queue_bound(void **state)
{
    int n = CATALOG_MAX_QUEUE + 44;
    CatalogStats st;
    Catalog *cat;
    char name[32];
    double until;

    need_server();
    cat = catalog_new(&env.pool);
    assert_non_null(cat);
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "ct_nothing_%d", i);
        assert_null(catalog_table(cat, NULL, name));
    }
    until = now_sec() + 5.0;
    do {
        spin(0.05);
        catalog_stats(cat, &st);
    } while (st.lookups < CATALOG_MAX_QUEUE && now_sec() < until);
    spin(0.2);
    catalog_stats(cat, &st);
    assert_int_equal(st.lookups, CATALOG_MAX_QUEUE);
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "ct_nothing_%d", i);
        assert_int_equal(wait_table(cat, NULL, name)->oid, 0);
    }
    catalog_stats(cat, &st);
    assert_int_equal(st.lookups, n);
    assert_int_equal(st.tables, n);
    assert_int_equal(st.failures, 0);
    catalog_free(cat);
}

/* Freed mid-connect and mid-query: nothing left behind on the loop (ASan, valgrind). */
static void test_free_midway(void **state)
{
    Catalog *cat;
    int before;

    need_server();
    /* events of the loop that are not the catalog's (a resolver's probes) stay */
    before = event_base_get_num_events(env.w.base, EVENT_BASE_COUNT_ADDED);
    cat = catalog_new(&env.pool);
    assert_non_null(cat);
    assert_null(catalog_table(cat, NULL, "ct_int"));
    catalog_free(cat);

    cat = catalog_new(&env.pool);
    assert_non_null(cat);
    wait_table(cat, NULL, "ct_int");
    assert_null(catalog_table(cat, NULL, "ct_big"));
    event_base_loop(env.w.base, EVLOOP_NONBLOCK);
    catalog_free(cat);
    spin(0.05);
    assert_int_equal(event_base_get_num_events(env.w.base, EVENT_BASE_COUNT_ADDED), before);
}

/* The server ends the catalog's backend: noticed while idle, counted, reopened after the backoff.
 */
static void test_connection_lost(void **state)
{
    CatalogStats st;
    Catalog *cat;

    need_server();
    cat = catalog_new(&env.pool);
    assert_non_null(cat);
    wait_table(cat, NULL, "ct_int");
    catalog_stats(cat, &st);
    assert_true(st.connected);
    admin_exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
               " WHERE application_name = 'pgcoalesce' AND pid <> pg_backend_pid()");
    spin(0.3);
    catalog_stats(cat, &st);
    assert_false(st.connected);
    assert_int_equal(st.failures, 1);
    assert_true(catalog_table(cat, NULL, "ct_int") != NULL); /* answers already held stay */
    assert_null(catalog_table(cat, NULL, "ct_big"));         /* backing off: no lookup */
    assert_int_equal(wait_table(cat, NULL, "ct_big")->oid, regclass_oid("ct_big"));
    catalog_stats(cat, &st);
    assert_true(st.connected);
    assert_int_equal(st.failures, 1);
    catalog_free(cat);
}

/* A port nothing listens on (bound, never listened). */
static int dead_port(int *fd)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);

    *fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(*fd >= 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(*fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(*fd, (struct sockaddr *)&sin, &len), 0);
    return ntohs(sin.sin_port);
}

static void test_unreachable(void **state)
{
    Pool dead = env.pool;
    CatalogStats st;
    Catalog *cat;
    double start;
    int fd;

    need_server();
    dead.port = dead_port(&fd);
    cat = catalog_new(&dead);
    assert_non_null(cat);
    start = now_sec();
    assert_null(catalog_table(cat, NULL, "ct_int"));
    spin(0.3);
    assert_null(catalog_table(cat, NULL, "ct_int"));
    catalog_stats(cat, &st);
    assert_int_equal(st.failures, 1);
    assert_false(st.connected);
    assert_non_null(strstr(st.last_error, "could not connect"));
    /* within the 1 s backoff: no new attempt, still no answer */
    for (int i = 0; i < 50; i++)
        assert_null(catalog_table(cat, NULL, i % 2 ? "ct_int" : "ct_big"));
    spin(0.3);
    catalog_stats(cat, &st);
    assert_int_equal(st.failures, 1);
    /* after it: one more attempt, then 2 s of backoff */
    spin(0.6);
    assert_null(catalog_table(cat, NULL, "ct_int"));
    spin(0.3);
    assert_null(catalog_table(cat, NULL, "ct_int"));
    catalog_stats(cat, &st);
    assert_int_equal(st.failures, 2);
    assert_int_equal(st.lookups, 0);
    assert_int_equal(catalog_read_committed(cat), -1);
    assert_true(now_sec() - start < 3.0);
    catalog_free(cat);
    close(fd);
}

/* A name DNS cannot resolve fails softly too: a nameserver that never answers, a short timeout. */
static void test_unresolvable(void **state)
{
    Pool named = env.pool;
    CatalogStats st;
    Catalog *cat;
    char ns[32];
    double until;
    int fd;

    need_server();
    env.w.dns = evdns_base_new(env.w.base, 0);
    assert_non_null(env.w.dns);
    snprintf(ns, sizeof(ns), "127.0.0.1:%d", dead_port(&fd));
    assert_int_equal(evdns_base_nameserver_ip_add(env.w.dns, ns), 0);
    assert_int_equal(evdns_base_set_option(env.w.dns, "timeout:", "0.2"), 0);
    assert_int_equal(evdns_base_set_option(env.w.dns, "attempts:", "1"), 0);
    named.host = "catalog-test.invalid";
    cat = catalog_new(&named);
    assert_non_null(cat);
    until = now_sec() + 3.0;
    do {
        assert_null(catalog_table(cat, NULL, "ct_int"));
        spin(0.05);
        catalog_stats(cat, &st);
    } while (st.failures == 0 && now_sec() < until);
    assert_int_equal(st.failures, 1);
    assert_false(st.connected);
    assert_non_null(strstr(st.last_error, "could not resolve host"));
    catalog_free(cat);
    evdns_base_free(env.w.dns, 0);
    env.w.dns = NULL;
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cacheable_tables), cmocka_unit_test(test_refused_tables),
        cmocka_unit_test(test_forget_and_queue), cmocka_unit_test(test_queue_bound),
        cmocka_unit_test(test_free_midway),      cmocka_unit_test(test_connection_lost),
        cmocka_unit_test(test_unreachable),      cmocka_unit_test(test_unresolvable),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
