/*
 * Unit tests of the statement lexer (orm/shape.c): the ORM corpus in
 * tests/data/orm/statements.txt (one shape per record, expected text and
 * values) and the lexer's edge cases one by one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "orm/shape.h"
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
    return 0;
}

/* Normalise sql and expect success with the given text. */
static void expect_text(const char *sql, const char *text)
{
    bool ok = shape_normalize(sql, strlen(sql), sb);
    if (!ok || strcmp(sb->text, text) != 0)
        fail_msg("shape of [%s]\n  got  [%s] (%s)\n  want [%s]", sql, ok ? sb->text : "",
                 shape_status_name(sb->status), text);
}

/* Value i (0-based over all extracted values) as text. */
static const char *value(const char *sql, unsigned i)
{
    static char buf[512];
    assert_true(i < sb->nlits);
    shape_lit_text(sql, &sb->lits[i], buf, sizeof(buf));
    return buf;
}

static void want_value(const char *sql, unsigned i, ShapeLitKind kind, const char *text)
{
    assert_true(i < sb->nlits);
    assert_string_equal(shape_lit_kind_name(sb->lits[i].kind), shape_lit_kind_name(kind));
    assert_string_equal(value(sql, i), text);
}

/* ---- the corpus ---- */

static void test_corpus_shapes(void **state)
{
    OrmRecord *recs = NULL;
    int n = orm_data_load(&recs);
    uint64_t *hashes;

    if (n < 30)
        fail_msg("corpus missing or short: %d records", n);
    hashes = calloc(ORM_MAX_RECORDS, sizeof(*hashes));
    assert_non_null(hashes);
    for (int i = 0; i < n; i++) {
        const OrmRecord *r = &recs[i];
        char vals[4096] = "";
        size_t used = 0;

        assert_true(r->nsql >= 1);
        assert_non_null(r->text);
        for (int k = 0; k < r->nsql; k++) {
            if (!shape_normalize(r->sql[k], strlen(r->sql[k]), sb))
                fail_msg("line %d %s: sql %d does not shape: %s", r->line, r->name, k,
                         shape_status_name(sb->status));
            if (strcmp(sb->text, r->text) != 0)
                fail_msg("line %d %s: sql %d\n  got  [%s]\n  want [%s]", r->line, r->name, k,
                         sb->text, r->text);
            if (k == 0)
                hashes[i] = sb->hash;
            else if (sb->hash != hashes[i])
                fail_msg("line %d %s: same text, other hash", r->line, r->name);
        }
        /* the first statement's values */
        assert_true(shape_normalize(r->sql[0], strlen(r->sql[0]), sb));
        for (unsigned v = 0; v < sb->nlits; v++)
            used += (size_t)snprintf(vals + used, sizeof(vals) - used, "%s%s", v ? "|" : "",
                                     value(r->sql[0], v));
        if (strcmp(vals, strcmp(r->values, "(none)") == 0 ? "" : r->values) != 0)
            fail_msg("line %d %s: values [%s], want [%s]", r->line, r->name, vals, r->values);
        for (int j = 0; j < i; j++)
            if (hashes[j] == hashes[i])
                fail_msg("records %s and %s share a shape", recs[j].name, r->name);
    }
    free(hashes);
    orm_data_free(recs, n);
}

/* ---- literal kinds ---- */

static void test_literal_kinds(void **state)
{
    const char *sql = "SELECT 'a''b', E'x\\ny', N'nat', U&'d\\0061t' UESCAPE '!', $q$it's$q$, "
                      "B'0101', X'1F', 42, -1.5e3, .5, 0x1F, TRUE, false, NULL, 1_000";

    expect_text(sql, "select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15");
    assert_int_equal(sb->nparams, 15);
    want_value(sql, 0, SHAPE_LIT_STRING, "a'b");
    want_value(sql, 1, SHAPE_LIT_ESTRING, "x\ny");
    want_value(sql, 2, SHAPE_LIT_STRING, "nat");
    want_value(sql, 3, SHAPE_LIT_USTRING, "d\\0061t");
    want_value(sql, 4, SHAPE_LIT_DOLLAR, "it's");
    want_value(sql, 5, SHAPE_LIT_BITSTRING, "0101");
    want_value(sql, 6, SHAPE_LIT_BITSTRING, "1F");
    want_value(sql, 7, SHAPE_LIT_NUMBER, "42");
    want_value(sql, 8, SHAPE_LIT_NUMBER, "-1.5e3");
    want_value(sql, 9, SHAPE_LIT_NUMBER, ".5");
    want_value(sql, 10, SHAPE_LIT_NUMBER, "0x1F");
    want_value(sql, 11, SHAPE_LIT_BOOL, "t");
    want_value(sql, 12, SHAPE_LIT_BOOL, "f");
    want_value(sql, 13, SHAPE_LIT_NULL, "NULL");
    want_value(sql, 14, SHAPE_LIT_NUMBER, "1_000");
    /* the UESCAPE clause belongs to the literal */
    assert_int_equal(sb->lits[3].len, strlen("U&'d\\0061t' UESCAPE '!'"));
}

static void test_escape_strings(void **state)
{
    /* E'\'' is one quote; the second literal must still be found */
    const char *sql = "SELECT E'\\'', E'\\\\', E'a\\x41\\101', 'plain'";

    expect_text(sql, "select $1, $2, $3, $4");
    want_value(sql, 0, SHAPE_LIT_ESTRING, "'");
    want_value(sql, 1, SHAPE_LIT_ESTRING, "\\");
    want_value(sql, 2, SHAPE_LIT_ESTRING, "aAA");
    want_value(sql, 3, SHAPE_LIT_STRING, "plain");
    /* a plain string's backslash is an ordinary character */
    expect_text("SELECT 'a\\' AS x", "select $1 as x");
    want_value("SELECT 'a\\' AS x", 0, SHAPE_LIT_STRING, "a\\");
}

static void test_dollar_quotes(void **state)
{
    const char *sql = "SELECT $fn$ it's $$ not the end $x$ $fn$, $$;$$, a$b";

    expect_text(sql, "select $1, $2, a$b");
    want_value(sql, 0, SHAPE_LIT_DOLLAR, " it's $$ not the end $x$ ");
    want_value(sql, 1, SHAPE_LIT_DOLLAR, ";");
    assert_int_equal(sb->nstmts, 1);
}

static void test_comments(void **state)
{
    expect_text("SELECT /* outer /* nested */ still comment */ 1 -- trailing\n FROM t",
                "select $1 from t");
    expect_text("SELECT a/*x*/b FROM t", "select a b from t");
    expect_text("SELECT a--x\n,b FROM t", "select a,b from t");
    expect_text("/* app=web,route=/users */ SELECT 1", "select $1");
    /* comment markers inside strings and identifiers are text */
    expect_text("SELECT '/* no', \"-- no\" FROM t", "select $1, \"-- no\" from t");
    want_value("SELECT '/* no', \"-- no\" FROM t", 0, SHAPE_LIT_STRING, "/* no");
}

static void test_quoted_identifiers(void **state)
{
    /* quotes, keywords and case inside identifiers are kept; no literals */
    expect_text("SELECT \"a\"\"b\", \"NULL\", \"select\", \"Users\".\"Id\" FROM \"Users\"",
                "select \"a\"\"b\", \"NULL\", \"select\", \"Users\".\"Id\" from \"Users\"");
    assert_int_equal(sb->nlits, 0);
    expect_text("SELECT U&\"d\\0061t\" FROM t", "select U&\"d\\0061t\" from t");
    assert_int_equal(sb->nlits, 0);
}

static void test_unterminated(void **state)
{
    static const char *const bad[] = {
        "SELECT 'abc",           "SELECT E'abc\\'", "SELECT \"abc",    "SELECT 1 /* open",
        "SELECT 1 /* a /* b */", "SELECT $x$ body", "SELECT $$ body$",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (shape_normalize(bad[i], strlen(bad[i]), sb))
            fail_msg("[%s] shaped as [%s]", bad[i], sb->text);
        assert_int_equal(sb->status, SHAPE_UNTERMINATED);
        assert_int_equal(sb->nparams, 0);
    }
}

static void test_empty(void **state)
{
    static const char *const empty[] = {"", "   \n\t", ";", " ; ; ", "/* nothing */", "-- x"};
    for (size_t i = 0; i < sizeof(empty) / sizeof(empty[0]); i++) {
        assert_false(shape_normalize(empty[i], strlen(empty[i]), sb));
        assert_int_equal(sb->status, SHAPE_EMPTY);
    }
}

static void test_whitespace_and_case(void **state)
{
    expect_text("  SELECT  *\n\tFROM   Users  WHERE ( Id = 1 )  ;  ",
                "select * from users where (id = $1)");
    expect_text("select * from users where (id = 2)", "select * from users where (id = $1)");
    expect_text("SELECT f( a , b ) FROM t", "select f(a, b) from t");
    /* non-ASCII bytes of identifiers are kept as they are */
    expect_text("SELECT Größe FROM t", "select größe from t");
}

static void test_negative_numbers(void **state)
{
    expect_text("SELECT * FROM t WHERE x = -5", "select * from t where x = $1");
    want_value("SELECT * FROM t WHERE x = -5", 0, SHAPE_LIT_NUMBER, "-5");
    /* after an operand the minus is binary */
    expect_text("SELECT a - 5, a-5, (b)-1 FROM t", "select a - $1, a-$2, (b)-$3 from t");
    want_value("SELECT a - 5, a-5, (b)-1 FROM t", 0, SHAPE_LIT_NUMBER, "5");
    /* "=-" is two operators, as in PostgreSQL; a space after the minus keeps it apart */
    expect_text("SELECT * FROM t WHERE x=-5 AND y<>-1 AND z = - 2",
                "select * from t where x=$1 and y<>$2 and z = - $3");
    want_value("SELECT * FROM t WHERE x=-5 AND y<>-1 AND z = - 2", 1, SHAPE_LIT_NUMBER, "-1");
    expect_text("SELECT -1, (-2), f(3, -4) WHERE a AND -5 < b",
                "select $1, ($2), f($3, $4) where a and $5 < b");
    /* psycopg2 writes negative numbers with a space before them */
    expect_text("SELECT * FROM t WHERE x =  -5", "select * from t where x = $1");
}

static void test_null_true_false(void **state)
{
    expect_text(
        "SELECT * FROM t WHERE a IS NULL AND b IS NOT NULL AND c IS TRUE AND d IS NOT FALSE",
        "select * from t where a is null and b is not null and c is true and d is not "
        "false");
    assert_int_equal(sb->nlits, 0);
    expect_text("UPDATE t SET a = NULL, b = TRUE WHERE c = false",
                "update t set a = $1, b = $2 where c = $3");
    want_value("UPDATE t SET a = NULL, b = TRUE WHERE c = false", 0, SHAPE_LIT_NULL, "NULL");
    expect_text("SELECT * FROM t WHERE a IS DISTINCT FROM NULL",
                "select * from t where a is distinct from $1");
}

static void test_typed_literals(void **state)
{
    expect_text("SELECT * FROM t WHERE d > DATE '2020-01-01' AND i < now() - INTERVAL '1 day'",
                "select * from t where d > $1::date and i < now() - $2::interval");
    assert_true(sb->params[0].flags & SHAPE_PARAM_TYPED);
    expect_text("SELECT '2020-01-01'::date, '{1,2}'::int[], CAST('5' AS int)",
                "select $1::date, $2::int[], cast($3 as int)");
    /* AT TIME ZONE takes an ordinary literal */
    expect_text("SELECT ts AT TIME ZONE 'UTC' FROM t", "select ts at time zone $1 from t");
}

static void test_in_lists(void **state)
{
    static char big[40000];
    size_t o = 0;

    expect_text("SELECT * FROM t WHERE id IN (1, 2, 3) AND x NOT IN ('a','b')",
                "select * from t where id in ($1 /*, ... */) and x not in ($2 /*, ... */)");
    assert_int_equal(sb->nparams, 2);
    assert_int_equal(sb->nlits, 5);
    assert_int_equal(sb->params[0].n, 3);
    assert_true(sb->params[0].flags & SHAPE_PARAM_LIST);
    assert_int_equal(sb->lits[4].param, 2);
    /* $n lists fold too, and mixed casts do not */
    expect_text("SELECT * FROM t WHERE id IN ($1, $2, $3)",
                "select * from t where id in ($1 /*, ... */)");
    assert_int_equal(sb->lits[2].bind, 3);
    expect_text("SELECT * FROM t WHERE id IN ('a'::uuid, 'b'::uuid)",
                "select * from t where id in ($1::uuid /*, ... */)");
    expect_text("SELECT * FROM t WHERE id IN ('a'::uuid, 'b')",
                "select * from t where id in ($1::uuid, $2)");
    /* lists of expressions or subqueries are not folded */
    expect_text("SELECT * FROM t WHERE id IN (1, a + 1)",
                "select * from t where id in ($1, a + $2)");
    expect_text("SELECT * FROM t WHERE id IN (SELECT x FROM y WHERE z = 1)",
                "select * from t where id in (select x from y where z = $1)");
    /* ARRAY[...] folds like IN (...) */
    expect_text("SELECT ARRAY[1, 2, 3], ARRAY[4]",
                "select array[$1 /*, ... */], array[$2 /*, ... */]");

    /* a very long list: one placeholder, every value extracted */
    o += (size_t)snprintf(big + o, sizeof(big) - o, "SELECT * FROM t WHERE id IN (");
    for (int i = 0; i < 3000; i++)
        o += (size_t)snprintf(big + o, sizeof(big) - o, "%s%d", i ? ", " : "", i + 100);
    snprintf(big + o, sizeof(big) - o, ")");
    expect_text(big, "select * from t where id in ($1 /*, ... */)");
    assert_int_equal(sb->nparams, 1);
    assert_int_equal(sb->nlits, 3000);
    assert_string_equal(value(big, 2999), "3099");
    {
        uint64_t h = sb->hash;
        assert_true(shape_normalize("SELECT * FROM t WHERE id IN (7)", 31, sb));
        assert_true(sb->hash == h);
    }
}

static void test_bounds(void **state)
{
    static char big[SHAPE_MAX_SQL + 100];
    size_t o = 0;

    /* more values than SHAPE_MAX_LITS */
    o += (size_t)snprintf(big + o, sizeof(big) - o, "SELECT * FROM t WHERE id IN (");
    for (int i = 0; i < SHAPE_MAX_LITS + 10 && o < SHAPE_MAX_SQL - 16; i++)
        o += (size_t)snprintf(big + o, sizeof(big) - o, "%s%d", i ? "," : "", i % 10);
    snprintf(big + o, sizeof(big) - o, ")");
    assert_false(shape_normalize(big, strlen(big), sb));
    assert_int_equal(sb->status, SHAPE_TOO_LONG);
    /* longer than SHAPE_MAX_SQL */
    memset(big, ' ', sizeof(big));
    memcpy(big, "SELECT 1", 8);
    assert_false(shape_normalize(big, SHAPE_MAX_SQL + 1, sb));
    assert_int_equal(sb->status, SHAPE_TOO_LONG);
    assert_true(shape_normalize(big, SHAPE_MAX_SQL, sb));
}

static void test_binds_and_literals(void **state)
{
    const char *sql = "SELECT * FROM t WHERE a = $2 AND b = 'x' AND c = $1 LIMIT 10";
    ShapeValue binds[2] = {{"10", 2}, {"\x00\x00\x00\x05", 4}};
    uint64_t h[8];

    expect_text(sql, "select * from t where a = $1 and b = $2 and c = $3 limit $4");
    assert_int_equal(sb->max_bind, 2);
    assert_int_equal(sb->lits[0].kind, SHAPE_LIT_BIND);
    assert_int_equal(sb->lits[0].bind, 2);
    assert_int_equal(sb->lits[2].bind, 1);
    assert_int_equal(shape_param_hashes(sb, sql, binds, 2, h, 8), 4);
    assert_true(h[0] == shape_hash_bytes("\x00\x00\x00\x05", 4));
    assert_true(h[1] == shape_hash_bytes("x", 1));
    assert_true(h[2] == shape_hash_bytes("10", 2));
    /* the literal 10 and the text Bind value "10" are the same value */
    assert_true(h[3] == h[2]);
    /* a Bind parameter that was not supplied is NULL */
    assert_int_equal(shape_param_hashes(sb, sql, NULL, 0, h, 8), 4);
    assert_true(h[0] == SHAPE_HASH_NULL);
}

/* $0 refers to no Bind parameter: kept as written, no value with bind 0, the
 * same inside IN lists; a $n above 65535 is $65535 inside IN lists too. The
 * shape is its own shape (found by fuzz_shape). */
static void test_dollar_out_of_range(void **state)
{
    const char *sql = "SELECT * FROM t WHERE a = $0::int AND b = $00 AND c = $1 AND d = $65536";

    expect_text(sql, "select * from t where a = $0::int and b = $00 and c = $1 and d = $2");
    assert_int_equal(sb->nlits, 2);
    assert_int_equal(sb->lits[0].kind, SHAPE_LIT_BIND);
    assert_int_equal(sb->lits[0].bind, 1);
    assert_int_equal(sb->lits[1].bind, 65535);
    assert_int_equal(sb->max_bind, 65535);
    expect_text("select * from t where a = $0::int and b = $00 and c = $1 and d = $2",
                "select * from t where a = $0::int and b = $00 and c = $1 and d = $2");
    expect_text("SELECT 1 WHERE x IN ($1333333, $2, $3)", "select $1 where x in ($2 /*, ... */)");
    assert_int_equal(sb->lits[1].bind, 65535);
    expect_text("SELECT 1 WHERE x IN ($0, $2)", "select $1 where x in ($0, $2)");
}

/* A literal written against a word keeps apart from it: "int$1" would be
 * one identifier (found by fuzz_shape: a shape must be its own shape). */
static void test_literal_after_word(void **state)
{
    expect_text("SELECT int'5', U'x', foo$1, $1$2, 5'a'",
                "select int $1, u $2, foo$1, $3 $4, $5 $6");
    assert_int_equal(sb->nlits, 6);
    expect_text("select int $1, u $2, foo$1, $3 $4, $5 $6",
                "select int $1, u $2, foo$1, $3 $4, $5 $6");
}

static void test_value_hashes(void **state)
{
    const char *sql =
        "SELECT 5, '5', E'5', $$5$$, TRUE, NULL, 'it''s', (1, 2), ARRAY[1,2], ARRAY[2,1]";
    uint64_t h[16];

    assert_true(shape_normalize(sql, strlen(sql), sb));
    assert_int_equal(shape_param_hashes(sb, sql, NULL, 0, h, 16), 11);
    assert_true(h[0] == shape_hash_bytes("5", 1));
    assert_true(h[1] == h[0] && h[2] == h[0] && h[3] == h[0]);
    assert_true(h[4] == shape_hash_bytes("t", 1));
    assert_true(h[5] == SHAPE_HASH_NULL);
    assert_true(h[6] == shape_hash_bytes("it's", 4));
    /* lists hash in order */
    assert_true(h[9] != h[10]);
    assert_true(h[9] != h[7]);
    /* cap is respected */
    assert_int_equal(shape_param_hashes(sb, sql, NULL, 0, h, 3), 3);
}

static void test_multi_statement(void **state)
{
    const char *sql = "SELECT 1; SELECT ';' -- ;\n; /* ; */ ; SELECT $$;$$;";
    ShapeSpan sp[4];

    expect_text(sql, "select $1; select $2; select $3");
    assert_int_equal(sb->nstmts, 3);
    assert_int_equal(shape_split(sql, strlen(sql), sp, 4), 3);
    for (int i = 0; i < 3; i++) {
        assert_true(shape_normalize(sql + sp[i].off, sp[i].len, sb));
        assert_string_equal(sb->text, "select $1");
        assert_int_equal(sb->nstmts, 1);
    }
    /* more statements than room: counted, first ones written */
    assert_int_equal(shape_split(sql, strlen(sql), sp, 1), 3);
    assert_int_equal(shape_split("  ", 2, sp, 4), 0);
    /* an unterminated quote runs to the end */
    assert_int_equal(shape_split("SELECT 1; SELECT 'a;b", 21, sp, 4), 2);
    assert_int_equal(sp[1].off + sp[1].len, 21);
    assert_int_equal(shape_split("SELECT E'\\';'; SELECT 2", 23, sp, 4), 2);
}

static void test_hash_distinct(void **state)
{
    uint64_t a, b;

    assert_true(shape_normalize("SELECT a FROM t WHERE id = 1", 28, sb));
    a = sb->hash;
    assert_true(shape_normalize("SELECT b FROM t WHERE id = 1", 28, sb));
    b = sb->hash;
    assert_true(a != b);
    assert_true(shape_hash_bytes("", 0) != shape_hash_bytes("\0", 1));
    assert_true(shape_hash_bytes("abcdefghabcdefghabcdefghabcdefgh1", 33) !=
                shape_hash_bytes("abcdefghabcdefghabcdefghabcdefgh2", 33));
}

/*
 * Shape and value hashes outlive the process (cache keys, reports): pinned
 * values, and every length 0..80 at every alignment the same as the plain
 * definition below (one 8-byte block a round, the tail zero-extended, four
 * lanes over 32-byte blocks first).
 */
static uint64_t rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x9fb21c651e98df25ULL;
    x ^= x >> 29;
    x *= 0xc2b2ae3d27d4eb4fULL;
    return x ^ (x >> 32);
}

static uint64_t plain_hash(const unsigned char *b, size_t n)
{
    const uint64_t k1 = 0x9fb21c651e98df25ULL, k2 = 0xc2b2ae3d27d4eb4fULL,
                   k3 = 0x165667b19e3779f9ULL;
    uint64_t h = k3 ^ ((uint64_t)n * k1), w, a[4];

    if (n >= 32) {
        a[0] = h, a[1] = h ^ k2, a[2] = h ^ k3, a[3] = h ^ k1;
        for (; n >= 32; b += 32, n -= 32)
            for (int l = 0; l < 4; l++) {
                memcpy(&w, b + 8 * l, 8);
                a[l] = rotl(a[l] ^ (w * k2), 29) * k1;
            }
        h = mix(a[0]) ^ rotl(mix(a[1]), 16) ^ rotl(mix(a[2]), 32) ^ rotl(mix(a[3]), 48);
    }
    for (; n >= 8; b += 8, n -= 8) {
        memcpy(&w, b, 8);
        h = rotl(h ^ (w * k2), 29) * k1;
    }
    if (n) {
        w = 0;
        memcpy(&w, b, n);
        h = rotl(h ^ (w * k2), 29) * k1;
    }
    return mix(h);
}

static void test_hash_values(void **state)
{
    static const struct {
        const char *s;
        uint64_t h;
    } pinned[] = {
        {"", 0x1d45a972371a7e39ULL},
        {"5", 0xa8384ace4e0a0895ULL},
        {"-42", 0x139579ccdd54a083ULL},
        {"4213", 0x84f9c968bc21ea02ULL},
        {"398123", 0x1dd25b1ec58339ddULL},
        {"-4213", 0x0f428b5fed200918ULL},
        {"1234567", 0x3a6c00a601897927ULL},
        {"12345678", 0x04fcae32217f948aULL},
        {"123456789", 0xf802951d94526eb9ULL},
        {"abcdefghabcdefghabcdefghabcdefgh1", 0x7aa2d9ff395d88afULL},
        {"t", 0x9b98a9b76bf9111eULL},
    };
    unsigned char buf[96];
    uint32_t seed = 7;

    for (size_t i = 0; i < sizeof(pinned) / sizeof(pinned[0]); i++)
        assert_true(shape_hash_bytes(pinned[i].s, strlen(pinned[i].s)) == pinned[i].h);
    for (size_t i = 0; i < sizeof(buf); i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (unsigned char)(seed >> 16);
    }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n + off <= 88; n++)
            assert_true(shape_hash_bytes(buf + off, n) == plain_hash(buf + off, n));
#endif
}

/* The fast lane and the general step of the lexer agree on sql[0..len). */
static void expect_same_lanes(const char *sql, size_t len)
{
    static ShapeBuf slow;
    bool a = shape_normalize(sql, len, sb), b = shape_normalize_stepwise(sql, len, &slow);

    if (a != b || !shape_same(sb, &slow))
        fail_msg("fast lane [%s] vs step [%s] for [%.*s]", sb->text, slow.text, (int)len, sql);
}

/*
 * Every corpus statement and every prefix of it (prefixes end inside
 * words, strings, comments and lists): the lexer's fast lane, which repeats
 * the general rules for the common tokens, gives the general step's output.
 */
static void test_fast_lane_agrees(void **state)
{
    OrmRecord *recs = NULL;
    int n = orm_data_load(&recs), checked = 0;

    assert_true(n > 0);
    for (int r = 0; r < n; r++)
        for (int k = 0; k < recs[r].nsql; k++) {
            const char *sql = recs[r].sql[k];
            size_t len = strlen(sql);
            for (size_t cut = 0; cut <= len; cut++) {
                char *exact = malloc(cut ? cut : 1); /* no NUL after the text */
                assert_non_null(exact);
                memcpy(exact, sql, cut);
                expect_same_lanes(exact, cut);
                free(exact);
                checked++;
            }
        }
    assert_true(checked > 1000);
    orm_data_free(recs, n);
}

/*
 * Numbers, signs and blanks as the fast lane takes them itself (digit runs
 * inline, a unary minus, the blanks after a word), next to every form that
 * must still go to scan_number or lex_operator; each text and its prefixes.
 */
static void test_fast_lane_numbers(void **state)
{
    static const char *const texts[] = {
        "UPDATE pgbench_accounts SET abalance = abalance + -4213 WHERE aid = 398123;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 52, -17, "
        "CURRENT_TIMESTAMP);",
        "SELECT 1_000, 1__2, 5_, 0x1F, 0X1f, 0o17, 0b101, 0b, 0x, 1e5, 1E-3, 2e+, 3e, 12.5, 5., "
        "1..2, .5, 12abc, 3x, 4o, 5b, 6E, 7_8_9",
        "SELECT x -5, x-5, (-5), = -5, - 5, -.5, -0x1F, -1_0, -1e3, -7.25, 1 - -2, a--5\n, -",
        "SELECT -5 WHERE a = -5 AND b IN (-1, -2) AND c = ARRAY[-3] LIMIT -1 OFFSET -0",
        "SELECT date -5, interval -1, 'x' -5, $1 -5, ) -5, ] -5, abc   \t\n  -5, null -5, t.c -5",
        "select  a ,  b  from   t   where  c = 1   ;   select 2",
    };

    for (size_t t = 0; t < sizeof(texts) / sizeof(texts[0]); t++) {
        size_t len = strlen(texts[t]);
        for (size_t cut = 0; cut <= len; cut++) {
            char *exact = malloc(cut ? cut : 1); /* no NUL after the text */
            assert_non_null(exact);
            memcpy(exact, texts[t], cut);
            expect_same_lanes(exact, cut);
            free(exact);
        }
    }
    /* the unary minus stays part of the literal, a binary one does not */
    assert_true(shape_normalize(texts[0], strlen(texts[0]), sb));
    assert_string_equal(sb->text,
                        "update pgbench_accounts set abalance = abalance + $1 where aid = $2");
    assert_int_equal(sb->lits[0].len, 5);
}

/* A copy of sql[0..n) with every digit run changed: longer or shorter, and a
 * "-" put before it or taken away, as variant v says (0 .. 7). */
static size_t vary_integers(const char *sql, size_t n, unsigned v, char *out, size_t cap)
{
    static const char *const digits[] = {"7", "40", "123456", "0", "9999999999", "05"};
    size_t o = 0, run = 0;

    for (size_t i = 0; i < n && o + 16 < cap; i++) {
        bool starts =
            sql[i] >= '0' && sql[i] <= '9' && (i == 0 || sql[i - 1] < '0' || sql[i - 1] > '9');
        if (!starts) {
            out[o++] = sql[i];
            continue;
        }
        while (i + 1 < n && sql[i + 1] >= '0' && sql[i + 1] <= '9')
            i++;
        run++;
        if ((v + run) % 3 == 0 && o > 0 && out[o - 1] == '-')
            o--; /* the minus taken away */
        else if ((v + run) % 3 == 1)
            out[o++] = '-';
        memcpy(out + o, digits[(v + run) % 6], strlen(digits[(v + run) % 6]));
        o += strlen(digits[(v + run) % 6]);
    }
    return o;
}

/*
 * A text seen again with other integers can take an earlier result
 * (shape.c: templates): after each text, its variants (other integers,
 * minus signs put or taken away) must still give what the general step
 * gives, for the corpus and for the cases templates must refuse.
 */
static void test_templates(void **state)
{
    static const char *const pairs[][2] = {
        {"SELECT (.-5)", "SELECT (.7)"}, /* ".7" is a number where ".-5" is not */
        {"SELECT $-5", "SELECT $5"},     /* "$5" is a Bind parameter */
        {"SELECT where-5", "SELECT where5"},
        {"SELECT a.b-5", "SELECT a.b5"},
        {"SELECT x=-5", "SELECT x=5"},
        {"SELECT 5 x", "SELECT 5.5 x"},
        {"SELECT 5 x", "SELECT 5e3 x"},
        {"SELECT 0 x", "SELECT 0x1F x"},
        {"SELECT 5xa", "SELECT 0xa"}, /* a radix after "0" only */
        {"SELECT 5o7", "SELECT 0o7"},
        {"SELECT 5 x", "SELECT 5_000 x"},
        {"SELECT 5,6", "SELECT -5,-6"},
        {"SELECT -5,-6", "SELECT 5,6"},
        {"-7 + 3", "7 + 3"},
        {"SELECT 1; SELECT 2", "SELECT 3; SELECT -4"},
        {"x IN (5)", "x IN (5, 6)"},
        {"x IN (-5, y)", "x IN (5, y)"},
        {"SELECT ARRAY[-1]", "SELECT ARRAY[1]"},
        {"SELECT date -5", "SELECT date 5"},
        {"SELECT 5 --x", "SELECT -77 --x"},
        {"/*5*/ SELECT 5", "/*5*/ SELECT 77"},
        {"SELECT '5', 5", "SELECT '5', 6"},
        {"SELECT 5", "SELECT 5a"},
        {"SELECT 5", "SELECT 5$"},
        {"SELECT 5 ", "SELECT 5"},
        {"SELECT x -5", "SELECT x 5"},
        {"SELECT y 5", "SELECT y -5"}, /* a minus only where the template had one */
        {"SELECT x+-5", "SELECT x+5"},
        {"SELECT x@-5", "SELECT x@5"},
        {"SELECT x<-5", "SELECT x<5"},
        {"BEGIN;", "BEGIN;"},
        {"UPDATE pgbench_accounts SET abalance = abalance + -4213 WHERE aid = 398123;",
         "UPDATE pgbench_accounts SET abalance = abalance + 17 WHERE aid = 5;"},
    };
    OrmRecord *recs = NULL;
    int n = orm_data_load(&recs), checked = 0;
    char var[8192];

    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        ShapeBuf *first = malloc(sizeof(*first));
        assert_non_null(first);
        /* texts that cannot be templates, until no template is recent
         * enough to be kept: the first of the pair becomes one */
        for (int k = 0; k < 1000; k++)
            assert_true(shape_normalize("SELECT 'x'", 10, first));
        if (!shape_normalize(pairs[i][0], strlen(pairs[i][0]), first))
            assert_int_not_equal(first->status, SHAPE_OK);
        expect_same_lanes(pairs[i][1], strlen(pairs[i][1]));
        expect_same_lanes(pairs[i][0], strlen(pairs[i][0]));
        free(first);
    }
    assert_true(n > 0);
    for (int r = 0; r < n; r++)
        for (int k = 0; k < recs[r].nsql; k++) {
            const char *sql = recs[r].sql[k];
            size_t len = strlen(sql);
            for (unsigned v = 0; v < 8; v++) {
                size_t m = vary_integers(sql, len, v, var, sizeof(var));
                expect_same_lanes(sql, len);
                expect_same_lanes(var, m);
                expect_same_lanes(var, m); /* now from its own template too */
                checked++;
            }
        }
    assert_true(checked > 100);
    orm_data_free(recs, n);
}

/*
 * Random SQL-ish texts: whatever the bytes, the lexer stays inside its
 * input and buffers and its output is consistent (the invariants below).
 * Deterministic; run under ASan/UBSan by the sanitized suite.
 */
static void test_random_inputs(void **state)
{
    static const char *const atoms[] = {
        "SELECT", " ",      "'",  "''",       "\"", "$",   "$$",   "$a$",  "1",
        "-",      "--",     "/*", "*/",       ";",  "(",   ")",    ",",    "IN",
        "in (",   "ARRAY[", "]",  "E'",       "\\", "U&'", "x",    "NULL", "is",
        "not",    "TRUE",   ".",  "5.",       "e",  "::",  "date", "\n",   "$1",
        "$99999", "B'",     "0x", "\xc3\xa9", "=",  "<>",  "+",    "a_b",  "'a;b'",
    };
    static char text[512];
    uint64_t h[SHAPE_MAX_PARAMS];
    ShapeSpan sp[64];
    unsigned seed = 12345;

    for (int iter = 0; iter < 20000; iter++) {
        size_t len = 0;
        int natoms;

        seed = seed * 1103515245u + 12345u;
        natoms = 1 + (int)(seed >> 16) % 40;
        for (int a = 0; a < natoms; a++) {
            const char *atom;
            size_t n;
            seed = seed * 1103515245u + 12345u;
            atom = atoms[(seed >> 16) % (sizeof(atoms) / sizeof(atoms[0]))];
            n = strlen(atom);
            if (len + n >= sizeof(text))
                break;
            memcpy(text + len, atom, n);
            len += n;
        }
        /* no NUL after the text: the lexer must not read past len */
        char *exact = malloc(len ? len : 1);
        assert_non_null(exact);
        memcpy(exact, text, len);
        expect_same_lanes(exact, len);
        if (shape_normalize(exact, len, sb)) {
            uint32_t covered = 0;
            assert_int_equal(sb->status, SHAPE_OK);
            assert_true(sb->text_len > 0 && sb->text_len < SHAPE_TEXT_CAP);
            assert_int_equal(strlen(sb->text), sb->text_len);
            assert_true(sb->nstmts >= 1);
            for (uint32_t i = 0; i < sb->nlits; i++) {
                assert_true(sb->lits[i].off + sb->lits[i].len <= len);
                assert_true(sb->lits[i].param >= 1 && sb->lits[i].param <= sb->nparams);
            }
            for (uint32_t p = 0; p < sb->nparams; p++) {
                assert_int_equal(sb->params[p].first, covered);
                assert_true(sb->params[p].n >= 1);
                covered += sb->params[p].n;
            }
            assert_int_equal(covered, sb->nlits);
            assert_int_equal(shape_param_hashes(sb, exact, NULL, 0, h, SHAPE_MAX_PARAMS),
                             (int)sb->nparams);
        } else {
            assert_true(sb->status != SHAPE_OK);
        }
        {
            int n = shape_split(exact, len, sp, 64);
            assert_true(n >= 0);
            for (int i = 0; i < n && i < 64; i++)
                assert_true(sp[i].off + sp[i].len <= len);
        }
        free(exact);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corpus_shapes),
        cmocka_unit_test(test_fast_lane_agrees),
        cmocka_unit_test(test_fast_lane_numbers),
        cmocka_unit_test(test_templates),
        cmocka_unit_test(test_literal_kinds),
        cmocka_unit_test(test_escape_strings),
        cmocka_unit_test(test_dollar_quotes),
        cmocka_unit_test(test_comments),
        cmocka_unit_test(test_quoted_identifiers),
        cmocka_unit_test(test_unterminated),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_whitespace_and_case),
        cmocka_unit_test(test_negative_numbers),
        cmocka_unit_test(test_null_true_false),
        cmocka_unit_test(test_typed_literals),
        cmocka_unit_test(test_in_lists),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_binds_and_literals),
        cmocka_unit_test(test_dollar_out_of_range),
        cmocka_unit_test(test_literal_after_word),
        cmocka_unit_test(test_value_hashes),
        cmocka_unit_test(test_multi_statement),
        cmocka_unit_test(test_hash_distinct),
        cmocka_unit_test(test_hash_values),
        cmocka_unit_test(test_random_inputs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
