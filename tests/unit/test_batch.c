/*
 * Unit tests of the pure parts of N+1 batching (orm/batch.c): the batched
 * statement built around a child's own text, the key array literal, and the
 * cutting of the batch's answer back into the single statement's messages.
 * The daemon side is tested end to end in tests/integration/test_n1_batch.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "orm/batch.h"
#include "orm/shape.h"

/* The ShapeLit of placeholder param (1-based) of sql. */
static ShapeLit lit_of(const char *sql, int param)
{
    ShapeBuf *sb = malloc(sizeof(*sb));
    ShapeLit lit;

    assert_non_null(sb);
    assert_true(shape_normalize(sql, strlen(sql), sb));
    assert_true((uint32_t)param <= sb->nparams);
    assert_int_equal(sb->params[param - 1].n, 1);
    lit = sb->lits[sb->params[param - 1].first];
    free(sb);
    return lit;
}

static void test_type_names(void **state)
{
    (void)state;
    assert_string_equal(batch_type_name(23), "pg_catalog.int4");
    assert_string_equal(batch_type_name(20), "pg_catalog.int8");
    assert_string_equal(batch_type_name(25), "pg_catalog.text");
    assert_string_equal(batch_type_name(2950), "pg_catalog.uuid");
    assert_null(batch_type_name(0));
    assert_null(batch_type_name(114)); /* json: not a key type */
}

/* psycopg2: the key is an inline literal; everything else stays as written. */
static void test_sql_literal_key(void **state)
{
    const char *sql = "SELECT posts.id, posts.title FROM posts WHERE posts.user_id = 42 "
                      "AND posts.kind = 'a''b' ORDER BY posts.id LIMIT 21";
    ShapeLit lit = lit_of(sql, 1);
    char *out;

    (void)state;
    assert_true(batch_sql(sql, strlen(sql), &lit, 1, "pg_catalog.int4", false, &out));
    assert_string_equal(out, "SELECT pgc_k.pgc_ord, pgc_s.* FROM unnest($1::pg_catalog.int4[]) "
                             "WITH ORDINALITY AS pgc_k(pgc_val, pgc_ord) CROSS JOIN LATERAL ("
                             "SELECT posts.id, posts.title FROM posts WHERE posts.user_id =  "
                             "pgc_k.pgc_val  AND posts.kind = 'a''b' ORDER BY posts.id LIMIT 21"
                             "\n) AS pgc_s ORDER BY pgc_k.pgc_ord");
    free(out);
}

/* asyncpg/psycopg 3: the key is $2; $1 stays for the client's value; the array is $3. */
static void test_sql_bind_key(void **state)
{
    const char *sql = "SELECT * FROM t WHERE a = $1 AND $2 = t.k";
    ShapeLit lit = lit_of(sql, 2);
    char *out;

    (void)state;
    assert_int_equal(lit.kind, SHAPE_LIT_BIND);
    assert_int_equal(lit.bind, 2);
    assert_true(batch_sql(sql, strlen(sql), &lit, 3, "pg_catalog.text", false, &out));
    assert_non_null(strstr(out, "unnest($3::pg_catalog.text[])"));
    assert_non_null(strstr(out, "WHERE a = $1 AND  pgc_k.pgc_val  = t.k\n)"));
    free(out);
}

/* A trailing ";" would end the subquery; a trailing "--" comment would eat what follows.
 * Without LIMIT/OFFSET the child gets OFFSET 0, on a line of its own. */
static void test_sql_trailing(void **state)
{
    const char *semi = "SELECT * FROM t WHERE k = 7 ;  \n";
    const char *comment = "SELECT * FROM t WHERE k = 7 -- lazy load";
    ShapeLit lit = lit_of(semi, 1);
    char *out;

    (void)state;
    assert_true(batch_sql(semi, strlen(semi), &lit, 1, "pg_catalog.int4", true, &out));
    assert_non_null(strstr(out, "WHERE k =  pgc_k.pgc_val \nOFFSET 0\n) AS pgc_s"));
    free(out);
    lit = lit_of(comment, 1);
    assert_true(batch_sql(comment, strlen(comment), &lit, 1, "pg_catalog.int4", true, &out));
    assert_non_null(strstr(out, "-- lazy load\nOFFSET 0\n) AS pgc_s ORDER BY pgc_k.pgc_ord"));
    free(out);
}

/* Empty statements around the child stay out of the subquery: ";SELECT ..." and
 * "...; -- comment" are one statement each (found by fuzz_batch). Two are refused. */
static void test_sql_empty_statements(void **state)
{
    const char *sql = ";;\r\n SELECT * FROM t WHERE k = 7; -- done";
    const char *two = "SELECT 1; SELECT * FROM t WHERE k = 7";
    ShapeLit lit = lit_of(sql, 1);
    char *out;

    (void)state;
    assert_true(batch_sql(sql, strlen(sql), &lit, 1, "pg_catalog.int4", true, &out));
    assert_non_null(strstr(
        out, "LATERAL (\r\n SELECT * FROM t WHERE k =  pgc_k.pgc_val \nOFFSET 0\n) AS pgc_s"));
    free(out);
    lit = lit_of(two, 2);
    assert_false(batch_sql(two, strlen(two), &lit, 1, "pg_catalog.int4", true, &out));
    assert_null(out);
}

/* A $n used twice cannot be replaced in one place only. */
static void test_sql_bind_twice(void **state)
{
    const char *sql = "SELECT * FROM t WHERE k = $1 OR parent = $1";
    ShapeLit lit = lit_of(sql, 1);
    char *out = (char *)"untouched";

    (void)state;
    assert_false(batch_sql(sql, strlen(sql), &lit, 2, "pg_catalog.int4", true, &out));
    assert_null(out);
}

static void test_array_text(void **state)
{
    char buf[256];
    size_t used = 0;

    (void)state;
    assert_true(batch_array_add(buf, sizeof(buf), &used, 25, (const uint8_t *)"plain", 5, false));
    assert_true(
        batch_array_add(buf, sizeof(buf), &used, 25, (const uint8_t *)"q\"b\\s,{}", 8, false));
    assert_true(batch_array_add(buf, sizeof(buf), &used, 25, (const uint8_t *)"", 0, false));
    assert_true(batch_array_add(buf, sizeof(buf), &used, 25, (const uint8_t *)"NULL", 4, false));
    assert_true(batch_array_end(buf, sizeof(buf), &used));
    buf[used] = '\0';
    assert_string_equal(buf, "{\"plain\",\"q\\\"b\\\\s,{}\",\"\",\"NULL\"}");
    /* NULL is a key too: unquoted */
    used = 0;
    assert_true(batch_array_add(buf, sizeof(buf), &used, 25, NULL, -1, false));
    assert_true(batch_array_add(buf, sizeof(buf), &used, 25, (const uint8_t *)"x", 1, false));
    assert_true(batch_array_end(buf, sizeof(buf), &used));
    buf[used] = '\0';
    assert_string_equal(buf, "{NULL,\"x\"}");
}

static void test_array_empty_and_full(void **state)
{
    char buf[8];
    size_t used = 0;

    (void)state;
    assert_true(batch_array_end(buf, sizeof(buf), &used));
    assert_int_equal(used, 2);
    assert_memory_equal(buf, "{}", 2);
    used = 0;
    assert_false(
        batch_array_add(buf, sizeof(buf), &used, 25, (const uint8_t *)"too long", 8, false));
}

/* Binary parent values: integers of 2, 4 or 8 bytes, uuid as 16 bytes. */
static void test_array_binary(void **state)
{
    static const uint8_t uuid[16] = {0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0,
                                     0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
    char buf[256];
    size_t used = 0;

    (void)state;
    assert_true(batch_array_add(buf, sizeof(buf), &used, 20, (const uint8_t *)"\xff\xef", 2, true));
    assert_true(batch_array_add(buf, sizeof(buf), &used, 2950, uuid, 16, true));
    assert_true(batch_array_add(buf, sizeof(buf), &used, 25, (const uint8_t *)"txt", 3, true));
    assert_true(batch_array_end(buf, sizeof(buf), &used));
    buf[used] = '\0';
    assert_string_equal(buf, "{\"-17\",\"12345678-9abc-def0-0123-456789abcdef\",\"txt\"}");
    used = 0;
    /* a 4-byte int8 key (an int4 parent column) */
    assert_true(batch_array_add(buf, sizeof(buf), &used, 20, (const uint8_t *)"\0\1\0\5", 4, true));
    buf[used] = '\0';
    assert_string_equal(buf, "{\"65541\"");
    used = 0;
    /* 3 bytes is no integer; binary of a type not known here */
    assert_false(batch_array_add(buf, sizeof(buf), &used, 23, (const uint8_t *)"\0\0\5", 3, true));
    assert_false(batch_array_add(buf, sizeof(buf), &used, 1700, (const uint8_t *)"\0\1", 2, true));
}

static size_t put_i32(uint8_t *p, int32_t v)
{
    p[0] = (uint8_t)((uint32_t)v >> 24);
    p[1] = (uint8_t)((uint32_t)v >> 16);
    p[2] = (uint8_t)((uint32_t)v >> 8);
    p[3] = (uint8_t)v;
    return 4;
}

static void test_cut_row_text(void **state)
{
    /* 3 columns: ord "12", "abc", NULL */
    uint8_t row[64], out[64];
    size_t n = 0;
    int64_t ord = 0, len;

    (void)state;
    row[n++] = 0;
    row[n++] = 3;
    n += put_i32(row + n, 2);
    memcpy(row + n, "12", 2);
    n += 2;
    n += put_i32(row + n, 3);
    memcpy(row + n, "abc", 3);
    n += 3;
    n += put_i32(row + n, -1);
    len = batch_cut_row(row, n, false, &ord, out);
    assert_int_equal(ord, 12);
    assert_int_equal(len, 2 + 4 + 3 + 4);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 2);
    assert_memory_equal(out + 2, row + 2 + 4 + 2, (size_t)len - 2);
}

static void test_cut_row_binary_and_bad(void **state)
{
    uint8_t row[64], out[64];
    size_t n = 0;
    int64_t ord = 0;

    (void)state;
    row[n++] = 0;
    row[n++] = 2;
    n += put_i32(row + n, 8);
    memset(row + n, 0, 8);
    row[n + 7] = 3;
    n += 8;
    n += put_i32(row + n, 1);
    row[n++] = 'x';
    assert_int_equal(batch_cut_row(row, n, true, &ord, out), 2 + 5);
    assert_int_equal(ord, 3);
    /* the same row read as text: "\0...\3" is no number */
    assert_int_equal(batch_cut_row(row, n, false, &ord, out), -1);
    /* an ordinality longer than the row */
    put_i32(row + 2, 100);
    assert_int_equal(batch_cut_row(row, n, true, &ord, out), -1);
    /* no columns at all */
    assert_int_equal(batch_cut_row(row, 1, true, &ord, out), -1);
}

static void test_cut_rowdesc(void **state)
{
    uint8_t desc[128], out[128];
    size_t n = 0;
    int64_t len;

    (void)state;
    desc[n++] = 0;
    desc[n++] = 2;
    memcpy(desc + n, "pgc_ord", 8);
    n += 8;
    memset(desc + n, 7, 18);
    n += 18;
    memcpy(desc + n, "title", 6);
    n += 6;
    memset(desc + n, 9, 18);
    n += 18;
    len = batch_cut_rowdesc(desc, n, out);
    assert_int_equal(len, 2 + 6 + 18);
    assert_int_equal(out[1], 1);
    assert_memory_equal(out + 2, "title", 6);
    /* a first field cut short */
    assert_int_equal(batch_cut_rowdesc(desc, 12, out), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_sql_literal_key),
        cmocka_unit_test(test_sql_bind_key),
        cmocka_unit_test(test_sql_trailing),
        cmocka_unit_test(test_sql_bind_twice),
        cmocka_unit_test(test_sql_empty_statements),
        cmocka_unit_test(test_array_text),
        cmocka_unit_test(test_array_empty_and_full),
        cmocka_unit_test(test_array_binary),
        cmocka_unit_test(test_cut_row_text),
        cmocka_unit_test(test_cut_row_binary_and_bad),
        cmocka_unit_test(test_cut_rowdesc),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
