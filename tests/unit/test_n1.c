/*
 * Unit tests of the N+1 detector (orm/n1.c), driven the way the daemon
 * drives it: each statement is shaped, looked up in a shape table, its
 * parameter hashes taken, then its result rows fed. The ORM loops are the
 * ones lazy loading produces (SQLAlchemy one-to-many and many-to-one,
 * Django interleaved loads); the rest are workloads that must not report.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "orm/n1.h"
#include "orm/shape.h"
#include "orm/shapes.h"

/* One simulated client session against one worker's tables. */
typedef struct Sim {
    ShapeBuf *sb;
    ShapeTable *shapes;
    N1Table *t;
    N1Session *s;
    uint64_t now;
    int new_patterns; /* N1_NEW_PATTERN events */
    int detections;   /* N1_RUN_DETECTED events */
    const N1Pattern *last;
} Sim;

static void sim_open(Sim *m, size_t max_patterns, int threshold, int memory)
{
    memset(m, 0, sizeof(*m));
    m->sb = malloc(sizeof(*m->sb));
    m->shapes = shapes_new(256);
    m->t = n1_table_new(max_patterns, threshold, memory);
    assert_non_null(m->sb);
    assert_non_null(m->shapes);
    assert_non_null(m->t);
    m->s = n1_session_new(m->t, "app_user", "appdb", "pytest-orm");
    assert_non_null(m->s);
    m->now = 1000000;
}

static void sim_close(Sim *m)
{
    n1_session_free(m->s);
    n1_table_free(m->t);
    shapes_free(m->shapes);
    free(m->sb);
}

/*
 * Execute sql: the result has ncols columns named names and nrows rows of
 * text cells (row-major, NULL for SQL NULL); binds are Bind values.
 */
static N1Event exec_full(Sim *m, const char *sql, const ShapeValue *binds, int nbinds, int ncols,
                         const char *const *names, const ShapeValue *cells, int nrows, uint64_t us)
{
    uint64_t h[64];
    const ShapeInfo *info;
    const N1Pattern *p = NULL;
    N1Event ev;
    int n;

    assert_true(shape_normalize(sql, strlen(sql), m->sb));
    info = shapes_get(m->shapes, m->sb);
    assert_non_null(info);
    n = shape_param_hashes(m->sb, sql, binds, nbinds, h, 64);
    ev = n1_statement(m->s, info, h, n, m->now, &p);
    if (ev == N1_NEW_PATTERN)
        m->new_patterns++;
    if (ev != N1_NONE) {
        m->detections++;
        assert_non_null(p);
        m->last = p;
    }
    if (n1_wants_result(m->s)) {
        n1_result_columns(m->s, ncols, names);
        for (int r = 0; r < nrows; r++)
            if (!n1_result_column_values(m->s, cells + (size_t)r * (size_t)ncols, ncols))
                break;
    }
    n1_statement_done(m->s, us, (uint64_t)nrows);
    m->now += us + 10;
    return ev;
}

/* A statement with a text result built from integer cells. */
static N1Event exec_ints(Sim *m, const char *sql, int ncols, const char *const *names,
                         const long *cells, int nrows, uint64_t us)
{
    static char text[4096][24];
    static ShapeValue vals[4096];

    assert_true(ncols * nrows <= 4096);
    for (int i = 0; i < ncols * nrows; i++) {
        snprintf(text[i], sizeof(text[i]), "%ld", cells[i]);
        vals[i] = (ShapeValue){text[i], (int32_t)strlen(text[i])};
    }
    return exec_full(m, sql, NULL, 0, ncols, names, vals, nrows, us);
}

static N1Event exec_simple(Sim *m, const char *sql, uint64_t us)
{
    return exec_full(m, sql, NULL, 0, 0, NULL, NULL, 0, us);
}

static const char *const user_cols[] = {"users_id", "users_name"};
#define USERS_SQL "SELECT users.id AS users_id, users.name AS users_name FROM users"
#define POSTS_BY_USER                                                                              \
    "SELECT posts.id AS posts_id, posts.user_id AS posts_user_id, posts.title AS posts_title "     \
    "FROM posts WHERE %ld = posts.user_id"

/* The users query: ids 1..n, a numeric "name" column that repeats values. */
static N1Event load_users(Sim *m, int n)
{
    static long cells[2 * 1000];
    for (int i = 0; i < n; i++) {
        cells[2 * i] = i + 1;
        cells[2 * i + 1] = 9000 + i % 3;
    }
    return exec_ints(m, USERS_SQL, 2, user_cols, cells, n, 800);
}

static void lazy_posts(Sim *m, int first, int count)
{
    char sql[512];
    for (int i = first; i < first + count; i++) {
        snprintf(sql, sizeof(sql), POSTS_BY_USER, (long)i);
        exec_simple(m, sql, 1000);
    }
}

/* SQLAlchemy: for user in users: user.posts -> one query per user. */
static void test_sqlalchemy_one_to_many(void **state)
{
    Sim m;
    char fix[1024];
    N1TableStats st;

    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 4096);
    load_users(&m, 100);
    for (int i = 1; i <= 100; i++) {
        char sql[512];
        N1Event ev;
        snprintf(sql, sizeof(sql), POSTS_BY_USER, (long)i);
        ev = exec_simple(&m, sql, 1000);
        assert_int_equal(ev, i == 5 ? N1_NEW_PATTERN : N1_NONE);
    }
    assert_int_equal(m.new_patterns, 1);
    assert_non_null(m.last);
    assert_int_equal(m.last->occurrences, 1);
    assert_int_equal(m.last->total_run_len, 100);
    assert_int_equal(m.last->max_run_len, 100);
    assert_int_equal(m.last->child_us, 100 * 1000);
    assert_int_equal(m.last->child_rows, 0);
    assert_string_equal(m.last->key_column, "posts.user_id");
    assert_string_equal(m.last->key_source, "users.id");
    assert_int_equal(m.last->key_param, 1);
    assert_false(m.last->many_to_one);
    assert_string_equal(m.last->parent_sql,
                        "select users.id as users_id, users.name as users_name from users");
    assert_string_equal(m.last->child_sql,
                        "select posts.id as posts_id, posts.user_id as posts_user_id, "
                        "posts.title as posts_title from posts where $1 = posts.user_id");
    assert_string_equal(m.last->application_name, "pytest-orm");
    assert_string_equal(m.last->user, "app_user");
    assert_string_equal(m.last->database, "appdb");
    assert_true(m.last->first_seen_us < m.last->last_seen_us);
    n1_pattern_fix(m.last, fix, sizeof(fix));
    assert_non_null(strstr(fix, "posts.user_id = ANY($1)"));
    assert_non_null(strstr(fix, "users.id"));
    assert_non_null(strstr(fix, "selectinload"));
    assert_non_null(strstr(fix, "prefetch_related"));
    assert_non_null(strstr(fix, "includes"));

    /* the page runs again: a second occurrence of the same pattern */
    load_users(&m, 10);
    n1_session_set_application(m.s, "second-app");
    lazy_posts(&m, 1, 10);
    assert_int_equal(m.new_patterns, 1);
    assert_int_equal(m.detections, 2);
    assert_int_equal(m.last->occurrences, 2);
    assert_int_equal(m.last->total_run_len, 110);
    assert_int_equal(m.last->max_run_len, 100);
    assert_string_equal(m.last->application_name, "second-app");
    n1_table_stats(m.t, &st);
    assert_int_equal(st.count, 1);
    assert_int_equal(st.runs_detected, 2);
    sim_close(&m);
}

/* SQLAlchemy: for post in posts: post.author -> one query per author not yet loaded. */
static void test_sqlalchemy_many_to_one_skips(void **state)
{
    static const char *const cols[] = {"posts_id", "posts_user_id", "posts_title"};
    static long cells[3 * 100];
    bool seen[32] = {false};
    int queried = 0;
    char fix[1024];
    Sim m;

    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 4096);
    for (int i = 0; i < 100; i++) {
        cells[3 * i] = i + 1;
        cells[3 * i + 1] = (i * 7) % 20 + 1; /* authors repeat, in no particular order */
        cells[3 * i + 2] = 500 + i;
    }
    exec_ints(&m,
              "SELECT posts.id AS posts_id, posts.user_id AS posts_user_id, posts.title AS "
              "posts_title FROM posts",
              3, cols, cells, 100, 2000);
    for (int i = 0; i < 100; i++) {
        long author = cells[3 * i + 1];
        char sql[256];
        if (seen[author])
            continue; /* the identity map already holds this author */
        seen[author] = true;
        snprintf(sql, sizeof(sql),
                 "SELECT users.id AS users_id, users.name AS users_name FROM users WHERE "
                 "users.id = %ld",
                 author);
        exec_simple(&m, sql, 300);
        queried++;
    }
    assert_int_equal(queried, 20);
    assert_int_equal(m.new_patterns, 1);
    assert_int_equal(m.last->total_run_len, 20);
    assert_int_equal(m.last->child_us, 20 * 300);
    assert_string_equal(m.last->key_column, "users.id");
    assert_string_equal(m.last->key_source, "posts.user_id");
    assert_true(m.last->many_to_one);
    n1_pattern_fix(m.last, fix, sizeof(fix));
    assert_non_null(strstr(fix, "select_related"));
    assert_non_null(strstr(fix, "users.id = ANY($1)"));
    sim_close(&m);
}

/* Django: for book in books: book.author; book.reviews -> two interleaved runs. */
static void test_django_interleaved(void **state)
{
    static const char *const cols[] = {"id", "title", "author_id"};
    static long cells[3 * 30];
    const N1Pattern *pats[8];
    Sim m;

    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 4096);
    for (int i = 0; i < 30; i++) {
        cells[3 * i] = 100 + i;
        cells[3 * i + 1] = 7;
        cells[3 * i + 2] = i / 3 + 1; /* three books per author, next to each other */
    }
    exec_ints(&m,
              "SELECT \"app_book\".\"id\", \"app_book\".\"title\", \"app_book\".\"author_id\" "
              "FROM \"app_book\" ORDER BY \"app_book\".\"id\" ASC",
              3, cols, cells, 30, 1500);
    for (int i = 0; i < 30; i++) {
        char sql[512];
        /* Django has no identity map: the author is asked for again for every book */
        snprintf(sql, sizeof(sql),
                 "SELECT \"app_author\".\"id\", \"app_author\".\"name\" FROM \"app_author\" "
                 "WHERE \"app_author\".\"id\" = %ld LIMIT 21",
                 cells[3 * i + 2]);
        exec_simple(&m, sql, 200);
        snprintf(sql, sizeof(sql),
                 "SELECT \"app_review\".\"id\", \"app_review\".\"stars\" FROM \"app_review\" "
                 "WHERE \"app_review\".\"book_id\" = %ld",
                 cells[3 * i]);
        exec_simple(&m, sql, 400);
    }
    assert_int_equal(m.new_patterns, 2);
    assert_int_equal(n1_table_sorted(m.t, pats, 8), 2);
    /* most time first: reviews (30 x 400 us), then authors (30 x 200 us) */
    assert_string_equal(pats[0]->key_column, "app_review.book_id");
    assert_string_equal(pats[0]->key_source, "app_book.id");
    assert_int_equal(pats[0]->total_run_len, 30);
    assert_int_equal(pats[0]->child_us, 30 * 400);
    assert_string_equal(pats[1]->key_column, "app_author.id");
    assert_string_equal(pats[1]->key_source, "app_book.author_id");
    assert_int_equal(pats[1]->total_run_len, 30);
    assert_int_equal(pats[1]->key_param, 1);
    assert_true(pats[0]->parent_hash == pats[1]->parent_hash);
    sim_close(&m);
}

/* asyncpg: binary Bind values match binary result columns. */
static void test_binary_binds(void **state)
{
    static const char *const cols[] = {"users_id"};
    unsigned char cellbuf[20][4], bindbuf[4];
    ShapeValue cells[20];
    Sim m;

    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 4096);
    for (int i = 0; i < 20; i++) {
        uint32_t v = (uint32_t)(i + 1);
        cellbuf[i][0] = (unsigned char)(v >> 24);
        cellbuf[i][1] = (unsigned char)(v >> 16);
        cellbuf[i][2] = (unsigned char)(v >> 8);
        cellbuf[i][3] = (unsigned char)v;
        cells[i] = (ShapeValue){cellbuf[i], 4};
    }
    exec_full(&m, "SELECT users.id AS users_id FROM users", NULL, 0, 1, cols, cells, 20, 500);
    for (int i = 0; i < 20; i++) {
        ShapeValue bind = {bindbuf, 4};
        memcpy(bindbuf, cellbuf[i], 4);
        exec_full(&m, "SELECT posts.id AS posts_id FROM posts WHERE $1::INTEGER = posts.user_id",
                  &bind, 1, 0, NULL, NULL, 0, 100);
    }
    assert_int_equal(m.new_patterns, 1);
    assert_int_equal(m.last->total_run_len, 20);
    assert_string_equal(m.last->key_source, "users.id");
    sim_close(&m);
}

/* Transaction control between the loads changes nothing. */
static void test_utility_is_transparent(void **state)
{
    Sim m;
    char sql[512];

    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 4096);
    exec_simple(&m, "BEGIN", 10);
    load_users(&m, 10);
    for (int i = 1; i <= 10; i++) {
        snprintf(sql, sizeof(sql), POSTS_BY_USER, (long)i);
        exec_simple(&m, sql, 100);
        exec_simple(&m, "SAVEPOINT sa_savepoint_1", 10);
        exec_simple(&m, "RELEASE SAVEPOINT sa_savepoint_1", 10);
    }
    exec_simple(&m, "COMMIT", 10);
    assert_int_equal(m.new_patterns, 1);
    assert_int_equal(m.last->total_run_len, 10);
    sim_close(&m);
}

static void test_threshold(void **state)
{
    Sim m;

    sim_open(&m, 64, 5, 4096);
    load_users(&m, 50);
    lazy_posts(&m, 1, 4); /* four: below the threshold */
    assert_int_equal(m.detections, 0);
    load_users(&m, 50); /* a new parent ends that run */
    lazy_posts(&m, 1, 4);
    assert_int_equal(m.detections, 0);
    lazy_posts(&m, 5, 1); /* the fifth */
    assert_int_equal(m.detections, 1);
    assert_int_equal(m.last->total_run_len, 5);
    sim_close(&m);

    /* a configured threshold of 3 */
    sim_open(&m, 64, 3, 4096);
    load_users(&m, 50);
    lazy_posts(&m, 1, 3);
    assert_int_equal(m.detections, 1);
    sim_close(&m);
}

/* Only n1_result_memory values are kept: keys beyond them end the run. */
static void test_result_memory_bound(void **state)
{
    Sim m;

    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 50);
    load_users(&m, 100); /* 2 columns: 25 rows kept */
    lazy_posts(&m, 1, 40);
    assert_int_equal(m.new_patterns, 1);
    assert_int_equal(m.last->max_run_len, 25);
    assert_int_equal(m.last->total_run_len, 25);
    sim_close(&m);

    /* result_memory 0: nothing is remembered, nothing detected */
    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 0);
    load_users(&m, 20);
    lazy_posts(&m, 1, 20);
    assert_int_equal(m.detections, 0);
    sim_close(&m);
}

static void test_pattern_table_bound(void **state)
{
    static const char *const children[] = {
        "SELECT a.x FROM a WHERE a.user_id = %d",
        "SELECT b.x FROM b WHERE b.user_id = %d",
        "SELECT c.x FROM c WHERE c.user_id = %d",
    };
    N1TableStats st;
    Sim m;

    sim_open(&m, 2, N1_DEFAULT_THRESHOLD, 4096);
    for (int k = 0; k < 3; k++) {
        load_users(&m, 10);
        for (int i = 1; i <= 6; i++) {
            char sql[128];
            snprintf(sql, sizeof(sql), children[k], i);
            exec_simple(&m, sql, 100);
        }
    }
    assert_int_equal(m.new_patterns, 3);
    n1_table_stats(m.t, &st);
    assert_int_equal(st.count, 2);
    assert_int_equal(st.capacity, 2);
    assert_int_equal(st.patterns_evicted, 1);
    sim_close(&m);
}

/* ---- no false positives ---- */

static void test_no_fp_executemany_insert(void **state)
{
    static const char *const cols[] = {"id"};
    static long ids[50];
    Sim m;

    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 4096);
    /* with no parent at all */
    for (int i = 0; i < 50; i++) {
        char sql[128];
        snprintf(sql, sizeof(sql), "INSERT INTO posts (user_id, title) VALUES (%d, 'p%d')", i, i);
        exec_simple(&m, sql, 100);
    }
    /* and with the ids coming from a parent, as a copy loop does */
    for (int i = 0; i < 50; i++)
        ids[i] = i + 1;
    exec_ints(&m, "SELECT id FROM users ORDER BY id", 1, cols, ids, 50, 100);
    for (int i = 0; i < 50; i++) {
        char sql[128];
        snprintf(sql, sizeof(sql), "INSERT INTO audit (user_id, note) VALUES (%ld, 'copied')",
                 ids[i]);
        exec_simple(&m, sql, 100);
    }
    assert_int_equal(m.detections, 0);
    sim_close(&m);
}

static void test_no_fp_pagination(void **state)
{
    static const char *const cols[] = {"id"};
    static long ids[100];
    Sim m;

    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 4096);
    /* every page's parent is the previous page: one shape, always the parent */
    for (int page = 0; page < 10; page++) {
        char sql[128];
        for (int i = 0; i < 10; i++)
            ids[i] = page * 10 + i;
        snprintf(sql, sizeof(sql), "SELECT id FROM items ORDER BY id LIMIT 10 OFFSET %d",
                 page * 10);
        exec_ints(&m, sql, 1, cols, ids, 10, 100);
    }
    /* keyset pagination: the next key is the last id of the previous page */
    for (int page = 0; page < 10; page++) {
        char sql[128];
        for (int i = 0; i < 10; i++)
            ids[i] = page * 10 + i + 1;
        snprintf(sql, sizeof(sql), "SELECT id FROM items WHERE id > %d ORDER BY id LIMIT 10",
                 page * 10);
        exec_ints(&m, sql, 1, cols, ids, 10, 100);
    }
    /* an OFFSET loop after a parent whose ids happen to be the offsets */
    for (int i = 0; i < 100; i++)
        ids[i] = i;
    exec_ints(&m, "SELECT id FROM items ORDER BY id", 1, cols, ids, 100, 100);
    for (int page = 0; page < 10; page++) {
        char sql[128];
        snprintf(sql, sizeof(sql),
                 "SELECT items.id, items.name FROM items ORDER BY items.id LIMIT 10 OFFSET %d",
                 page * 10);
        exec_simple(&m, sql, 100);
    }
    assert_int_equal(m.detections, 0);
    sim_close(&m);
}

static void test_no_fp_repeated_identical(void **state)
{
    static const char *const cols[] = {"user_id"};
    static long same[20];
    Sim m;

    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 4096);
    for (int i = 0; i < 20; i++)
        same[i] = 5;
    /* the value is in the parent column at every row: still one key, no loop over keys */
    exec_ints(&m, "SELECT posts.user_id FROM posts WHERE posts.topic = 3", 1, cols, same, 20, 100);
    for (int i = 0; i < 20; i++)
        exec_simple(&m, "SELECT users.name FROM users WHERE users.id = 5", 100);
    /* and a query repeated with no parent relation */
    for (int i = 0; i < 20; i++)
        exec_simple(&m, "SELECT value FROM settings WHERE key = 'theme'", 100);
    assert_int_equal(m.detections, 0);
    sim_close(&m);
}

static void test_no_fp_values_not_from_parent(void **state)
{
    Sim m;

    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 4096);
    load_users(&m, 20);
    lazy_posts(&m, 1000, 20); /* keys no parent row holds */
    assert_int_equal(m.detections, 0);
    /* keys from the parent but walking it backwards */
    load_users(&m, 20);
    for (int i = 20; i >= 1; i--) {
        char sql[512];
        snprintf(sql, sizeof(sql), POSTS_BY_USER, (long)i);
        exec_simple(&m, sql, 100);
    }
    assert_int_equal(m.detections, 0);
    /* two parameters changing together */
    load_users(&m, 20);
    for (int i = 1; i <= 20; i++) {
        char sql[256];
        snprintf(sql, sizeof(sql), "SELECT x FROM t WHERE t.a = %d AND t.b = %d", i, i + 1);
        exec_simple(&m, sql, 100);
    }
    assert_int_equal(m.detections, 0);
    sim_close(&m);
}

/* Sessions end with runs and a parent in flight: nothing leaks (ASan). */
static void test_session_lifecycle(void **state)
{
    Sim m;
    N1Session *other;

    sim_open(&m, 64, N1_DEFAULT_THRESHOLD, 4096);
    other = n1_session_new(m.t, NULL, NULL, NULL);
    assert_non_null(other);
    load_users(&m, 30);
    lazy_posts(&m, 1, 7);
    n1_table_configure(m.t, 3, 128);
    load_users(&m, 30); /* the store is re-sized to the new memory */
    lazy_posts(&m, 1, 3);
    assert_int_equal(m.detections, 2);
    assert_false(n1_wants_result(other));
    n1_statement_done(other, 5, 0);
    n1_session_free(other);
    sim_close(&m);
}

/*
 * Batching support: with values kept, a third execution of a run is planned
 * from the key source (parameter, column, row of its key), the parent's
 * cells can be read back as sent, and a new parent changes the generation.
 */
static void test_batch_plan(void **state)
{
    Sim m;
    char sql[512];
    uint64_t h[8], gen;
    const ShapeInfo *info;
    N1BatchPlan plan;
    const uint8_t *v;
    int n;

    (void)state;
    sim_open(&m, 16, 5, 1000);
    n1_session_keep_values(m.s, true);
    load_users(&m, 10);
    assert_int_equal(n1_parent_rows(m.s), 10);
    assert_int_equal(n1_parent_value(m.s, 3, 0, &v), 1);
    assert_memory_equal(v, "4", 1);
    assert_int_equal(n1_parent_value(m.s, 3, 1, &v), 4);
    assert_memory_equal(v, "9000", 4);
    gen = n1_parent_gen(m.s);
    assert_false(n1_runs_ready(m.s, 2));
    lazy_posts(&m, 1, 1);
    assert_false(n1_runs_ready(m.s, 2)); /* one execution: the key has not changed yet */
    lazy_posts(&m, 2, 1);
    assert_true(n1_runs_ready(m.s, 2));
    assert_false(n1_runs_ready(m.s, 3));

    /* the next child, user 3: its key is in column 0, row 2 */
    snprintf(sql, sizeof(sql), POSTS_BY_USER, 3L);
    assert_true(shape_normalize(sql, strlen(sql), m.sb));
    info = shapes_get(m.shapes, m.sb);
    n = shape_param_hashes(m.sb, sql, NULL, 0, h, 8);
    assert_true(n1_batch_plan(m.s, info, h, n, 2, &plan));
    assert_int_equal(plan.param, 0);
    assert_int_equal(plan.col, 0);
    assert_int_equal(plan.row, 2);
    assert_int_equal(plan.gen, gen);
    assert_int_equal(n1_parent_hash_at(m.s, 2, 0), h[0]);
    /* not yet at 3 executions; and the planning changed nothing */
    assert_false(n1_batch_plan(m.s, info, h, n, 3, &plan));
    assert_int_equal(n1_parent_gen(m.s), gen);

    /* a key found nowhere further down, or the same key again: no plan */
    snprintf(sql, sizeof(sql), POSTS_BY_USER, 1L);
    assert_true(shape_normalize(sql, strlen(sql), m.sb));
    n = shape_param_hashes(m.sb, sql, NULL, 0, h, 8);
    assert_false(n1_batch_plan(m.s, info, h, n, 2, &plan));
    snprintf(sql, sizeof(sql), POSTS_BY_USER, 2L);
    assert_true(shape_normalize(sql, strlen(sql), m.sb));
    n = shape_param_hashes(m.sb, sql, NULL, 0, h, 8);
    assert_false(n1_batch_plan(m.s, info, h, n, 2, &plan));

    /* a new parent: another generation, no run */
    load_users(&m, 3);
    assert_true(n1_parent_gen(m.s) != gen);
    assert_false(n1_runs_ready(m.s, 2));
    sim_close(&m);
}

/* An empty string as the first value kept (nothing allocated yet) is kept as empty. */
static void test_batch_keeps_empty_values(void **state)
{
    static const char *const cols[] = {"s", "t"};
    const ShapeValue cells[] = {{"", 0}, {"x", 1}, {NULL, -1}, {"", 0}};
    const uint8_t *v;
    Sim m;

    (void)state;
    sim_open(&m, 16, 5, 1000);
    n1_session_keep_values(m.s, true);
    exec_full(&m, "SELECT s, t FROM strings", NULL, 0, 2, cols, cells, 2, 100);
    assert_int_equal(n1_parent_rows(m.s), 2);
    assert_int_equal(n1_parent_value(m.s, 0, 0, &v), 0);
    assert_int_equal(n1_parent_value(m.s, 0, 1, &v), 1);
    assert_memory_equal(v, "x", 1);
    assert_int_equal(n1_parent_value(m.s, 1, 0, &v), -1);
    assert_int_equal(n1_parent_value(m.s, 1, 1, &v), 0);
    sim_close(&m);
}

/* Without keep_values nothing is kept, and nothing is planned. */
static void test_batch_plan_needs_values(void **state)
{
    Sim m;
    char sql[512];
    uint64_t h[8];
    const ShapeInfo *info;
    N1BatchPlan plan;
    const uint8_t *v;
    int n;

    (void)state;
    sim_open(&m, 16, 5, 1000);
    load_users(&m, 10);
    assert_int_equal(n1_parent_value(m.s, 0, 0, &v), -2);
    lazy_posts(&m, 1, 2);
    assert_false(n1_runs_ready(m.s, 2));
    snprintf(sql, sizeof(sql), POSTS_BY_USER, 3L);
    assert_true(shape_normalize(sql, strlen(sql), m.sb));
    info = shapes_get(m.shapes, m.sb);
    n = shape_param_hashes(m.sb, sql, NULL, 0, h, 8);
    assert_false(n1_batch_plan(m.s, info, h, n, 2, &plan));
    sim_close(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sqlalchemy_one_to_many),
        cmocka_unit_test(test_batch_plan),
        cmocka_unit_test(test_batch_plan_needs_values),
        cmocka_unit_test(test_batch_keeps_empty_values),
        cmocka_unit_test(test_sqlalchemy_many_to_one_skips),
        cmocka_unit_test(test_django_interleaved),
        cmocka_unit_test(test_binary_binds),
        cmocka_unit_test(test_utility_is_transparent),
        cmocka_unit_test(test_threshold),
        cmocka_unit_test(test_result_memory_bound),
        cmocka_unit_test(test_pattern_table_bound),
        cmocka_unit_test(test_no_fp_executemany_insert),
        cmocka_unit_test(test_no_fp_pagination),
        cmocka_unit_test(test_no_fp_repeated_identical),
        cmocka_unit_test(test_no_fp_values_not_from_parent),
        cmocka_unit_test(test_session_lifecycle),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    shape_analyze_thread_exit();
    return rc;
}
