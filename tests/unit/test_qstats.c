/*
 * Unit tests of the per-shape statement statistics (orm/qstats.c): counting,
 * ordering by total time, statements of unknown shape, references kept on
 * the analyses, and CLOCK eviction when the table is full.
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
#include "orm/qstats.h"
#include "orm/shape.h"

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

/* The analysis of sql's shape, one reference for the caller. */
static ShapeInfo *info_of(const char *sql)
{
    ShapeInfo *info;

    assert_true(shape_normalize(sql, strlen(sql), sb));
    info = shape_analyze(sb->text, sb->text_len, sb->hash);
    assert_non_null(info);
    return info;
}

static const QueryStat *find(const QStats *q, const char *sql)
{
    const QueryStat *all[64];
    size_t n = qstats_sorted(q, all, 64);

    for (size_t i = 0; i < n; i++)
        if (strcmp(all[i]->info->sql, sql) == 0)
            return all[i];
    return NULL;
}

static void test_counts_and_order(void **state)
{
    QStats *q = qstats_new(8);
    ShapeInfo *a = info_of("SELECT name FROM users WHERE id = 1");
    ShapeInfo *b = info_of("UPDATE users SET name = 'x' WHERE id = 2");
    ShapeInfo *a2 = info_of("SELECT name FROM users WHERE id = 99"); /* same shape as a */
    const QueryStat *all[8];
    const QueryStat *e;
    QStatsSummary sum;

    assert_non_null(q);
    assert_int_equal(a->hash, a2->hash);
    qstats_record(q, a, 100, 1, 1000);
    qstats_record(q, a2, 300, 1, 2000);
    qstats_record(q, b, 50, 1, 1500);
    qstats_record(q, NULL, 70, 0, 1600);
    qstats_record(q, NULL, 30, 0, 1700);

    e = find(q, "select name from users where id = $1");
    assert_non_null(e);
    assert_int_equal(e->calls, 2);
    assert_int_equal(e->total_us, 400);
    assert_int_equal(e->max_us, 300);
    assert_int_equal(e->rows, 2);
    assert_int_equal(e->first_us, 1000);
    assert_int_equal(e->last_us, 2000);

    /* most total time first */
    assert_int_equal(qstats_sorted(q, all, 8), 2);
    assert_int_equal(all[0]->total_us, 400);
    assert_int_equal(all[1]->total_us, 50);
    assert_int_equal(qstats_sorted(q, all, 1), 1);
    assert_int_equal(all[0]->total_us, 400);

    qstats_summary(q, &sum);
    assert_int_equal(sum.unknown_calls, 2);
    assert_int_equal(sum.unknown_us, 100);
    assert_int_equal(sum.count, 2);
    assert_int_equal(sum.capacity, 8);
    assert_int_equal(sum.evictions, 0);

    /* the table holds its own references: the SQL outlives the caller's */
    shape_info_unref(a);
    shape_info_unref(a2);
    shape_info_unref(b);
    e = find(q, "update users set name = $1 where id = $2");
    assert_non_null(e);
    assert_int_equal(e->calls, 1);
    qstats_free(q);
}

/* A full table evicts a shape without its second chance, not one in use. */
static void test_eviction(void **state)
{
    QStats *q = qstats_new(2);
    ShapeInfo *hot = info_of("SELECT 1 FROM a WHERE id = 1");
    ShapeInfo *cold = info_of("SELECT 1 FROM b WHERE id = 1");
    ShapeInfo *new1 = info_of("SELECT 1 FROM c WHERE id = 1");
    QStatsSummary sum;

    qstats_record(q, hot, 10, 1, 1);
    qstats_record(q, cold, 10, 1, 2);
    qstats_record(q, hot, 10, 1, 3); /* hot earns its second chance */
    qstats_record(q, new1, 10, 1, 4);
    qstats_summary(q, &sum);
    assert_int_equal(sum.count, 2);
    assert_int_equal(sum.evictions, 1);
    assert_non_null(find(q, "select $1 from a where id = $2"));
    assert_null(find(q, "select $1 from b where id = $2"));
    assert_non_null(find(q, "select $1 from c where id = $2"));
    assert_int_equal(find(q, "select $1 from a where id = $2")->calls, 2);
    assert_int_equal(find(q, "select $1 from c where id = $2")->calls, 1);
    shape_info_unref(hot);
    shape_info_unref(cold);
    shape_info_unref(new1);
    qstats_free(q);
}

/* The same hash analysed again (the shape table evicted the first analysis)
 * keeps counting in the same entry. */
static void test_reanalysed_shape(void **state)
{
    QStats *q = qstats_new(4);
    ShapeInfo *first = info_of("SELECT x FROM t WHERE k = 1");
    ShapeInfo *again = info_of("SELECT x FROM t WHERE k = 2");
    const QueryStat *e;

    assert_ptr_not_equal(first, again);
    qstats_record(q, first, 5, 1, 1);
    shape_info_unref(first);
    qstats_record(q, again, 7, 1, 2);
    e = find(q, "select x from t where k = $1");
    assert_non_null(e);
    assert_int_equal(e->calls, 2);
    assert_int_equal(e->total_us, 12);
    assert_ptr_equal(e->info, again);
    shape_info_unref(again);
    qstats_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_and_order),
        cmocka_unit_test(test_eviction),
        cmocka_unit_test(test_reanalysed_shape),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
