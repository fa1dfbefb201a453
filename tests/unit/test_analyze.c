/*
 * Unit tests of shape analysis (orm/analyze.c) and the bounded shape table
 * (orm/shapes.c): the ORM corpus's kinds, keys and verdicts, then flags,
 * output columns, references and eviction.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "orm/analyze.h"
#include "orm/shape.h"
#include "orm/shapes.h"
#include "orm_data.h"

static ShapeBuf *sb;

static int setup(void **state)
{
    sb = malloc(sizeof(*sb));
    return sb ? 0 : -1;
}

static int teardown(void **state)
{
    free(sb);
    shape_analyze_thread_exit();
    return 0;
}

/* Shape and analyse sql; the caller unrefs. */
static ShapeInfo *analyze(const char *sql)
{
    ShapeInfo *info;

    if (!shape_normalize(sql, strlen(sql), sb))
        fail_msg("[%s] does not shape: %s", sql, shape_status_name(sb->status));
    info = shape_analyze(sb->text, sb->text_len, sb->hash);
    assert_non_null(info);
    assert_true(info->hash == sb->hash);
    assert_string_equal(info->sql, sb->text);
    return info;
}

/* The keys as the corpus writes them. */
static void keys_text(const ShapeInfo *info, char *buf, size_t cap)
{
    size_t o = 0;

    if (info->nkeys == 0) {
        snprintf(buf, cap, "none");
        return;
    }
    buf[0] = '\0';
    for (int i = 0; i < info->nkeys; i++) {
        char name[256];
        const ShapeKey *k = &info->keys[i];
        shape_key_name(info, k, name, sizeof(name));
        if (k->side == SHAPE_KEY_COL_LEFT)
            o += (size_t)snprintf(buf + o, cap - o, "%s%s = $%d", i ? " AND " : "", name, k->param);
        else
            o += (size_t)snprintf(buf + o, cap - o, "%s$%d = %s", i ? " AND " : "", k->param, name);
    }
}

/* Check "yes", "yes (substr)" or "no (substr)" against a verdict and its reason. */
static void check_verdict(const OrmRecord *r, const char *what, const char *want, bool got,
                          const char *why)
{
    bool yes = strncmp(want, "yes", 3) == 0;
    const char *open = strchr(want, '(');

    if (yes != got)
        fail_msg("line %d %s: %s is %s (%s), want %s", r->line, r->name, what, got ? "yes" : "no",
                 why, want);
    if (open) {
        char sub[SHAPE_REASON_MAX];
        snprintf(sub, sizeof(sub), "%s", open + 1);
        sub[strcspn(sub, ")")] = '\0';
        if (!strstr(why, sub))
            fail_msg("line %d %s: %s reason [%s] lacks [%s]", r->line, r->name, what, why, sub);
    } else if (yes && got && strcmp(what, "batch") == 0 && why[0]) {
        fail_msg("line %d %s: batchable with a reason [%s]", r->line, r->name, why);
    }
}

static void test_corpus_analysis(void **state)
{
    OrmRecord *recs = NULL;
    int n = orm_data_load(&recs);

    if (n < 30)
        fail_msg("corpus missing or short: %d records", n);
    for (int i = 0; i < n; i++) {
        const OrmRecord *r = &recs[i];
        ShapeInfo *info;
        char keys[512];

        assert_non_null(r->kind);
        assert_non_null(r->key);
        assert_non_null(r->batch);
        assert_non_null(r->cache);
        info = analyze(r->sql[0]);
        if (strcmp(shape_kind_name(info->kind), r->kind) != 0)
            fail_msg("line %d %s: kind %s, want %s (%s)", r->line, r->name,
                     shape_kind_name(info->kind), r->kind, info->batch_reason);
        keys_text(info, keys, sizeof(keys));
        if (strcmp(keys, r->key) != 0)
            fail_msg("line %d %s: key [%s], want [%s]", r->line, r->name, keys, r->key);
        check_verdict(r, "batch", r->batch, info->batchable, info->batch_reason);
        check_verdict(r, "cache", r->cache, info->cacheable, info->cache_reason);
        shape_info_unref(info);
    }
    orm_data_free(recs, n);
}

static void test_flags(void **state)
{
    static const struct {
        const char *sql;
        uint32_t set;
        uint32_t clear;
    } cases[] = {
        {"SELECT DISTINCT a FROM t WHERE b = 1 ORDER BY a LIMIT 5 OFFSET 10",
         SHAPE_F_DISTINCT | SHAPE_F_ORDER_BY | SHAPE_F_LIMIT | SHAPE_F_OFFSET | SHAPE_F_READ_ONLY,
         SHAPE_F_AGGREGATE},
        {"SELECT a, count(*) FROM t GROUP BY a HAVING count(*) > 1",
         SHAPE_F_AGGREGATE | SHAPE_F_GROUP_BY | SHAPE_F_READ_ONLY, SHAPE_F_VOLATILE},
        {"SELECT row_number() OVER (PARTITION BY a) FROM t", SHAPE_F_WINDOW,
         SHAPE_F_AGGREGATE | SHAPE_F_VOLATILE},
        {"SELECT * FROM t WHERE id = 1 FOR SHARE", SHAPE_F_LOCKING, SHAPE_F_READ_ONLY},
        {"SELECT setval('s', 5)", SHAPE_F_WRITE_FN | SHAPE_F_VOLATILE, SHAPE_F_READ_ONLY},
        {"SELECT pg_advisory_lock(1)", SHAPE_F_WRITE_FN, SHAPE_F_READ_ONLY},
        {"SELECT gen_random_uuid()", SHAPE_F_VOLATILE | SHAPE_F_READ_ONLY, SHAPE_F_WRITE_FN},
        {"SELECT myschema.f(1) FROM t", SHAPE_F_VOLATILE, 0},
        {"SELECT pg_catalog.lower(a) FROM t", SHAPE_F_READ_ONLY, SHAPE_F_VOLATILE},
        {"SELECT CURRENT_TIMESTAMP", SHAPE_F_STABLE, SHAPE_F_VOLATILE},
        {"SELECT * FROM generate_series(1, 10)", SHAPE_F_SRF, SHAPE_F_VOLATILE},
        {"SELECT unnest(tags) FROM posts WHERE id = 1", SHAPE_F_SRF, SHAPE_F_VOLATILE},
        {"WITH x AS (SELECT 1) SELECT * FROM x", SHAPE_F_CTE | SHAPE_F_READ_ONLY,
         SHAPE_F_WRITE_CTE},
        {"WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
         SHAPE_F_CTE | SHAPE_F_WRITE_CTE, SHAPE_F_READ_ONLY},
        {"SELECT * FROM t WHERE a IN (SELECT b FROM u)", SHAPE_F_SUBQUERY, 0},
        {"SELECT * INTO new_t FROM t", SHAPE_F_INTO, SHAPE_F_READ_ONLY},
        {"SELECT 1; SELECT 2", SHAPE_F_MULTI_STMT, SHAPE_F_READ_ONLY},
        {"INSERT INTO t (a) VALUES (1) RETURNING id", SHAPE_F_RETURNING, SHAPE_F_READ_ONLY},
        {"SELECT a FROM t UNION ALL SELECT a FROM u", SHAPE_F_SET_OP, 0},
        {"SELECT * FROM t, u WHERE t.id = u.id", SHAPE_F_JOIN | SHAPE_F_STAR, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ShapeInfo *info = analyze(cases[i].sql);
        if ((info->flags & cases[i].set) != cases[i].set || (info->flags & cases[i].clear))
            fail_msg("[%s]: flags %#x, want set %#x clear %#x", cases[i].sql, info->flags,
                     cases[i].set, cases[i].clear);
        shape_info_unref(info);
    }
}

static void test_tables_and_aliases(void **state)
{
    ShapeInfo *info = analyze("SELECT b.title, a.name FROM library.book AS b JOIN author a ON "
                              "a.id = b.author_id WHERE b.id = 3 AND a.country = 'fr'");

    assert_int_equal(info->ntables, 2);
    assert_string_equal(info->tables[0].schema, "library");
    assert_string_equal(info->tables[0].name, "book");
    assert_string_equal(info->tables[0].alias, "b");
    assert_null(info->tables[1].schema);
    assert_string_equal(info->tables[1].alias, "a");
    assert_int_equal(info->nkeys, 2);
    assert_int_equal(info->keys[0].table, 0);
    assert_string_equal(info->keys[0].column, "id");
    assert_int_equal(info->keys[1].table, 1);
    assert_null(shape_info_key(info));
    assert_non_null(shape_info_key_for_param(info, 2));
    assert_null(shape_info_key_for_param(info, 3));
    assert_int_equal(info->nout, 2);
    assert_string_equal(info->out_cols[0], "library.book.title");
    assert_string_equal(info->out_cols[1], "author.name");
    shape_info_unref(info);

    /* an unqualified column with a join is not resolved; a CTE is no table */
    info = analyze("WITH recent AS (SELECT * FROM posts) SELECT id FROM recent JOIN users ON "
                   "true WHERE id = 1");
    assert_int_equal(info->ntables, 2);
    assert_int_equal(info->nkeys, 1);
    assert_int_equal(info->keys[0].table, -1);
    shape_info_unref(info);
}

static void test_output_columns(void **state)
{
    /* SQLAlchemy labels: the analysis still knows users.id is column 0 */
    ShapeInfo *info = analyze("SELECT users.id AS users_id, users.name AS users_name, 1 + 1 AS x "
                              "FROM users");
    assert_int_equal(info->nout, 3);
    assert_string_equal(info->out_cols[0], "users.id");
    assert_string_equal(info->out_cols[1], "users.name");
    assert_null(info->out_cols[2]);
    shape_info_unref(info);

    /* "*" stops the mapping: positions after it are unknown */
    info = analyze("SELECT \"posts\".* FROM \"posts\" WHERE \"posts\".\"user_id\" = $1");
    assert_int_equal(info->nout, 0);
    assert_true(info->flags & SHAPE_F_STAR);
    shape_info_unref(info);
}

static void test_page_params(void **state)
{
    ShapeInfo *info = analyze("SELECT * FROM t WHERE a = 5 ORDER BY id LIMIT 10 OFFSET 20");

    assert_int_equal(info->limit_param, 2);
    assert_int_equal(info->offset_param, 3);
    assert_true(info->page_params == ((1u << 1) | (1u << 2)));
    shape_info_unref(info);
    info = analyze("SELECT * FROM t WHERE a = $1 LIMIT $2::bigint");
    assert_int_equal(info->limit_param, 2);
    shape_info_unref(info);
}

/* TYPE 'x' shapes as "type $n", which libpg_query reads as a cast of $n:
 * not a key, since batching would write "type pgc_k.pgc_val" (found by
 * fuzz_batch). The cast forms are keys. */
static void test_typed_literal_keys(void **state)
{
    ShapeInfo *info =
        analyze("SELECT * FROM t WHERE id = uuid 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'");

    assert_int_equal(info->nkeys, 0);
    assert_false(info->batchable);
    shape_info_unref(info);
    info = analyze("SELECT * FROM t WHERE id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AND "
                   "n = CAST($1 AS int)");
    assert_int_equal(info->nkeys, 2);
    assert_true(info->batchable);
    shape_info_unref(info);
}

static void test_update_delete_keys(void **state)
{
    ShapeInfo *info = analyze("DELETE FROM sessions s WHERE s.token = 'x'");
    char name[128];

    assert_int_equal(info->kind, SHAPE_KIND_DELETE);
    assert_int_equal(info->nkeys, 1);
    shape_key_name(info, &info->keys[0], name, sizeof(name));
    assert_string_equal(name, "sessions.token");
    assert_false(info->flags & SHAPE_F_READ_ONLY);
    shape_info_unref(info);
}

static void test_unknown_keeps_text(void **state)
{
    ShapeInfo *info = analyze("SELECT FROM WHERE (");

    assert_int_equal(info->kind, SHAPE_KIND_UNKNOWN);
    assert_false(info->batchable);
    assert_false(info->cacheable);
    assert_non_null(strstr(info->batch_reason, "unparseable"));
    assert_string_equal(info->sql, "select from where (");
    shape_info_unref(info);
}

/*
 * The session state a shape tells (orm/session.h): read from the shape's
 * words for SELECT/INSERT/UPDATE/DELETE and utilities; for other kinds the proxy reads the
 * statement itself, as a DO block's body is a literal of the shape.
 */
static void test_session_state(void **state)
{
    static const struct {
        const char *sql;
        bool known;
        const char *what; /* NULL: none */
    } cases[] = {
        {"SELECT abalance FROM pgbench_accounts WHERE aid = 5;", true, NULL},
        {"select set_config('search_path', 'x', false)", true, "set_config()"},
        {"SELECT pg_advisory_lock(42)", true, "a session advisory lock"},
        {"SELECT * INTO TEMP t2 FROM t WHERE id = 1", true, "a temporary table (SELECT INTO)"},
        {"SELECT 'into temp', 'set_config(' FROM t", true, NULL}, /* only literals say so */
        {"UPDATE t SET v = 'pg_advisory_lock(1)' WHERE id = 2", true, NULL},
        {"WITH x AS (SELECT set_config('a.b', '1', false)) SELECT * FROM x", true, "set_config()"},
        {"SET search_path = app, public", true, "SET of a parameter the server does not report"},
        {"SET LOCAL search_path = app", true, NULL},
        {"SET TIME ZONE 'UTC'", true, NULL},
        {"LISTEN jobs", true, "LISTEN"},
        {"BEGIN ISOLATION LEVEL REPEATABLE READ", true, NULL},
        {"DO $$ BEGIN PERFORM set_config('search_path', 'x', false); END $$", false, NULL},
        {"CREATE TEMP TABLE t (a int)", false, NULL},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ShapeInfo *info = analyze(cases[i].sql);
        if (info->session_known != cases[i].known)
            fail_msg("[%s]: session_known %d", cases[i].sql, info->session_known);
        if (cases[i].what)
            assert_string_equal(info->session ? info->session : "(none)", cases[i].what);
        else if (info->session)
            fail_msg("[%s]: session state \"%s\"", cases[i].sql, info->session);
        shape_info_unref(info);
    }
}

static void test_deep_nesting(void **state)
{
    static char sql[8192];
    size_t o = 0;

    o += (size_t)snprintf(sql + o, sizeof(sql) - o, "SELECT ");
    for (int i = 0; i < 800; i++)
        sql[o++] = '(';
    sql[o++] = '1';
    for (int i = 0; i < 800; i++)
        sql[o++] = ')';
    sql[o] = '\0';
    /* no crash; whatever the parser says, no verdict is granted blindly */
    ShapeInfo *info = analyze(sql);
    assert_false(info->cacheable);
    shape_info_unref(info);
}

/* ---- the shape table ---- */

static const ShapeInfo *get(ShapeTable *t, const char *sql)
{
    assert_true(shape_normalize(sql, strlen(sql), sb));
    return shapes_get(t, sb);
}

static void test_table_hits_and_misses(void **state)
{
    ShapeTable *t = shapes_new(4);
    ShapeTableStats st;
    const ShapeInfo *a, *b;

    assert_non_null(t);
    a = get(t, "SELECT * FROM users WHERE id = 1");
    b = get(t, "SELECT * FROM users WHERE id = 2");
    assert_ptr_equal(a, b);
    assert_ptr_equal(shapes_lookup(t, a->hash), a);
    assert_null(shapes_lookup(t, a->hash ^ 1));
    shapes_stats(t, &st);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.count, 1);
    /* not SHAPE_OK: no analysis */
    assert_false(shape_normalize("SELECT 'x", 9, sb));
    assert_null(shapes_get(t, sb));
    shapes_free(t);
}

static void test_table_eviction(void **state)
{
    ShapeTable *t = shapes_new(3);
    ShapeTableStats st;
    const ShapeInfo *hot, *kept;
    char sql[128];

    assert_non_null(t);
    hot = get(t, "SELECT * FROM hot WHERE id = 1");
    kept = hot;
    shape_info_ref(kept);
    for (int i = 0; i < 20; i++) {
        snprintf(sql, sizeof(sql), "SELECT c%d FROM cold", i);
        assert_non_null(get(t, sql));
        /* the hot shape is used between every new one: CLOCK keeps it */
        assert_non_null(shapes_lookup(t, hot->hash));
    }
    shapes_stats(t, &st);
    assert_int_equal(st.count, 3);
    assert_int_equal(st.capacity, 3);
    assert_int_equal(st.evictions, 18);
    assert_int_equal(st.misses, 21);
    assert_ptr_equal(get(t, "SELECT * FROM hot WHERE id = 9"), hot);
    /* an evicted shape is analysed again on its next sight */
    assert_non_null(get(t, "SELECT c0 FROM cold"));
    shapes_stats(t, &st);
    assert_int_equal(st.misses, 22);
    for (size_t i = 0; i < st.capacity; i++)
        assert_non_null(shapes_at(t, i));
    assert_null(shapes_at(t, st.capacity));
    shapes_free(t);
    /* a reference outlives the table */
    assert_string_equal(kept->sql, "select * from hot where id = $1");
    shape_info_unref(kept);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corpus_analysis),    cmocka_unit_test(test_flags),
        cmocka_unit_test(test_tables_and_aliases), cmocka_unit_test(test_output_columns),
        cmocka_unit_test(test_page_params),        cmocka_unit_test(test_update_delete_keys),
        cmocka_unit_test(test_typed_literal_keys), cmocka_unit_test(test_unknown_keeps_text),
        cmocka_unit_test(test_deep_nesting),       cmocka_unit_test(test_table_hits_and_misses),
        cmocka_unit_test(test_table_eviction),     cmocka_unit_test(test_session_state),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
