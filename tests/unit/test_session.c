/*
 * Unit tests of orm/session.c: which statements leave session state that
 * transaction pooling would hand to the next client of a backend.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "orm/session.h"

static const char *effect(const char *sql)
{
    return session_state_sql(sql, strlen(sql));
}

static void test_leaves_state(void **state)
{
    static const char *const yes[] = {
        "SET search_path TO app, public",
        "  set   work_mem = '64MB'",
        "SET SESSION statement_timeout = 5000",
        "/* c */ SET -- x\n role admin",
        "SET ROLE admin",
        "SET SESSION AUTHORIZATION bob",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET schema 'x'",
        "SET \"TimeZone\" = 'UTC'", /* quoted: not looked at closer */
        "CREATE TEMP TABLE t (x int)",
        "create temporary view v as select 1",
        "CREATE LOCAL TEMP SEQUENCE s",
        "CREATE GLOBAL TEMPORARY TABLE g (x int)",
        "SELECT * INTO TEMP t2 FROM t",
        "LISTEN chan",
        "SELECT pg_advisory_lock(1)",
        "select PG_TRY_ADVISORY_LOCK_SHARED(2)",
        "SELECT set_config('work_mem', '1MB', false)",
        "SELECT SET_CONFIG('a.b', 'c', false) FROM t",
        "select x from t where y = pg_advisory_lock(3)",
        "pg_advisory_lock(1)", /* the name at the very start */
        "SELECT a_b, c_d, pg_try_advisory_lock(a_b) FROM t_u",
        "SELECT 1 INTO TEMP x",
        "select * into temp t3 from t",
        "PREPARE p AS SELECT 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "LOAD 'auto_explain'",
        "SELECT 1; SET work_mem = '1MB'",
        "BEGIN; CREATE TEMP TABLE x (y int); COMMIT",
    };
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        if (!effect(yes[i]))
            fail_msg("not spotted: %s", yes[i]);
}

static void test_leaves_nothing(void **state)
{
    static const char *const no[] = {
        "SELECT 1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 5",
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET x = 1",
        "SET LOCAL work_mem = '1MB'",
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SET CONSTRAINTS ALL DEFERRED",
        "SET TimeZone = 'UTC'",
        "SET TIME ZONE 'UTC'",
        "SET application_name = 'x'",
        "SET SESSION DateStyle = 'ISO'",
        "SET NAMES 'UTF8'",
        "SET client_encoding = 'UTF8'",
        "CREATE TABLE t (x int)",
        "CREATE OR REPLACE VIEW v AS SELECT 1",
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT pg_advisory_unlock_all()",
        "SELECT pg_try_advisory_xact_lock(1), my_set_conf(2)",
        "SELECT a_b FROM t_u WHERE c_d = any($1) AND e = f(g_h)",
        "SELECT x INTO t4 FROM t WHERE temp = 1",
        "UNLISTEN *",
        "DECLARE c CURSOR FOR SELECT 1",
        "PREPARE TRANSACTION 'gid'",
        "SELECT 'set role x' AS not_a_statement",
        "RESET ROLE",
        "",
        "-- only a comment",
    };
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (effect(no[i]))
            fail_msg("false alarm (%s): %s", effect(no[i]), no[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_leaves_state),
        cmocka_unit_test(test_leaves_nothing),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
