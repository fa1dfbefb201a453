/* Unit tests: canonical primary-key values (orm/cache_key.c) and cache_url parsing
 * (daemon/redis.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/redis.h"
#include "orm/cache_key.h"

typedef struct KeyCase {
    uint32_t type;
    const char *in;
    size_t in_len; /* 0: strlen(in) */
    bool binary;
    const char *want; /* NULL: must be refused */
} KeyCase;

/* Every spelling PostgreSQL accepts for one value must give one key; what it refuses, none. */
static const KeyCase key_cases[] = {
    {CACHE_OID_INT4, "5", 0, false, "5"},
    {CACHE_OID_INT4, " 5 ", 0, false, "5"},
    {CACHE_OID_INT4, "+5", 0, false, "5"},
    {CACHE_OID_INT4, "005", 0, false, "5"},
    {CACHE_OID_INT4, "-0", 0, false, "0"},
    {CACHE_OID_INT4, "-2147483648", 0, false, "-2147483648"},
    {CACHE_OID_INT4, "2147483648", 0, false, NULL},
    {CACHE_OID_INT4, "5.0", 0, false, NULL},
    {CACHE_OID_INT4, "", 0, false, NULL},
    {CACHE_OID_INT4, "1 2", 0, false, NULL},
    {CACHE_OID_INT4, "\x00\x00\x00\x05", 4, true, "5"},
    {CACHE_OID_INT4, "\xff\xff\xff\xfb", 4, true, "-5"},
    {CACHE_OID_INT4, "\x00\x05", 2, true, "5"}, /* psycopg 3: a small int is an int2 */
    {CACHE_OID_INT4, "\x00\x00\x05", 3, true, NULL},
    {CACHE_OID_INT4, "\xff\xff\xff\xff\xff\xff\xff\xfe", 8, true, "-2"},
    {CACHE_OID_OID, "\x00\x05", 2, true, NULL},
    {CACHE_OID_INT2, "32767", 0, false, "32767"},
    {CACHE_OID_INT2, "32768", 0, false, NULL},
    {CACHE_OID_INT2, "\x80\x00", 2, true, "-32768"},
    {CACHE_OID_INT8, "-9223372036854775808", 0, false, "-9223372036854775808"},
    {CACHE_OID_INT8, "9223372036854775807", 0, false, "9223372036854775807"},
    {CACHE_OID_INT8, "9223372036854775808", 0, false, NULL},
    {CACHE_OID_INT8, "99999999999999999999999", 0, false, NULL},
    {CACHE_OID_INT8, "\x00\x00\x00\x00\x00\x00\x01\x00", 8, true, "256"},
    {CACHE_OID_OID, "4294967295", 0, false, "4294967295"},
    {CACHE_OID_TEXT, "abc", 0, false, "abc"},
    {CACHE_OID_TEXT, " abc", 0, false, " abc"},
    {CACHE_OID_TEXT, "a\0b", 3, false, NULL},
    {CACHE_OID_VARCHAR, "abc", 0, true, "abc"},
    {CACHE_OID_UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", 0, false,
     "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
    {CACHE_OID_UUID, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", 0, false,
     "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
    {CACHE_OID_UUID, "{a0eebc999c0b4ef8bb6d6bb9bd380a11}", 0, false,
     "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
    {CACHE_OID_UUID, "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", 0, false,
     "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
    {CACHE_OID_UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", 0, false, NULL},
    {CACHE_OID_UUID, "a0ee--bc99-9c0b-4ef8-bb6d-6bb9bd380a11", 0, false, NULL}, /* uuid_in: no */
    {CACHE_OID_UUID, "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", 0, false, NULL},
    {CACHE_OID_UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-", 0, false, NULL},
    {CACHE_OID_UUID, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", 0, false, NULL},
    {CACHE_OID_UUID, "a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11", 0, false, NULL},
    {CACHE_OID_UUID, "\xa0\xee\xbc\x99\x9c\x0b\x4e\xf8\xbb\x6d\x6b\xb9\xbd\x38\x0a\x11", 16, true,
     "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
    {1700 /* numeric */, "5", 0, false, NULL},
};

static void test_key_values(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(key_cases) / sizeof(key_cases[0]); i++) {
        const KeyCase *k = &key_cases[i];
        char out[CACHE_KEY_MAX];
        size_t len = k->in_len ? k->in_len : strlen(k->in);
        int n = cache_key_value(k->type, k->in, len, k->binary, out, sizeof(out));
        if (!k->want) {
            if (n >= 0)
                fail_msg("case %zu (%s): accepted as \"%.*s\", want refused", i, k->in, n, out);
            continue;
        }
        if (n < 0)
            fail_msg("case %zu (%s): refused, want \"%s\"", i, k->in, k->want);
        if ((size_t)n != strlen(k->want) || memcmp(out, k->want, (size_t)n) != 0)
            fail_msg("case %zu (%s): \"%.*s\", want \"%s\"", i, k->in, n, out, k->want);
    }
}

static void test_key_types(void **state)
{
    (void)state;
    assert_true(cache_key_type_ok(CACHE_OID_INT4));
    assert_true(cache_key_type_ok(CACHE_OID_UUID));
    assert_true(cache_key_type_ok(CACHE_OID_VARCHAR));
    assert_false(cache_key_type_ok(1700));           /* numeric: 5.0 = 5 */
    assert_false(cache_key_type_ok(1042));           /* bpchar: trailing blanks do not count */
    assert_false(cache_key_type_ok(1184));           /* timestamptz: TimeZone dependent text */
    assert_false(cache_key_type_ok(CACHE_OID_BOOL)); /* not worth a case */
}

/* Several columns: lengths keep "1:2" + "3" apart from "1" + "2:3". */
static void test_key_composite(void **state)
{
    CacheKey a, b, c;

    (void)state;
    cache_key_init(&a, 2);
    assert_true(cache_key_add(&a, CACHE_OID_TEXT, "1:2", 3, false));
    assert_true(cache_key_add(&a, CACHE_OID_TEXT, "3", 1, false));
    assert_true(cache_key_done(&a));
    cache_key_init(&b, 2);
    assert_true(cache_key_add(&b, CACHE_OID_TEXT, "1", 1, false));
    assert_true(cache_key_add(&b, CACHE_OID_TEXT, "2:3", 3, false));
    assert_true(cache_key_done(&b));
    assert_false(a.len == b.len && memcmp(a.buf, b.buf, a.len) == 0);
    assert_int_equal(a.len, strlen("3:1:21:3"));
    assert_memory_equal(a.buf, "3:1:21:3", a.len);

    cache_key_init(&c, 2);
    assert_true(cache_key_add(&c, CACHE_OID_INT4, "07", 2, false));
    assert_false(cache_key_done(&c)); /* one column missing */
    assert_false(cache_key_add(&c, CACHE_OID_INT4, "x", 1, false));
    assert_false(cache_key_done(&c)); /* a bad value spoils the key */
    assert_false(cache_key_add(&c, CACHE_OID_INT4, "1", 1, false));

    cache_key_init(&c, 1);
    assert_true(cache_key_add(&c, CACHE_OID_INT8, "42", 2, false));
    assert_false(cache_key_add(&c, CACHE_OID_INT8, "43", 2, false)); /* one column too many */
    assert_false(cache_key_done(&c));
}

static void test_key_too_long(void **state)
{
    char big[CACHE_KEY_MAX + 1], out[3];
    CacheKey k;

    (void)state;
    /* the output is not NUL-terminated: a value may fill it exactly */
    assert_int_equal(cache_key_value(CACHE_OID_INT4, "123", 3, false, out, 3), 3);
    assert_memory_equal(out, "123", 3);
    assert_int_equal(cache_key_value(CACHE_OID_INT4, "1234", 4, false, out, 3), -1);
    memset(big, 'x', sizeof(big));
    cache_key_init(&k, 1);
    assert_false(cache_key_add(&k, CACHE_OID_TEXT, big, sizeof(big), false));
    cache_key_init(&k, 2);
    assert_true(cache_key_add(&k, CACHE_OID_TEXT, big, CACHE_KEY_MAX - 10, false));
    assert_false(cache_key_add(&k, CACHE_OID_TEXT, big, 10, false));
    cache_key_init(&k, 0);
    assert_false(cache_key_add(&k, CACHE_OID_INT4, "1", 1, false));
    cache_key_init(&k, CACHE_KEY_COLS + 1);
    assert_false(cache_key_done(&k));
}

typedef struct UrlCase {
    const char *url;
    bool ok;
    const char *host, *path, *user, *password;
    int port, db;
} UrlCase;

static const UrlCase url_cases[] = {
    {"redis://127.0.0.1", true, "127.0.0.1", "", "", "", 6379, 0},
    {"redis://localhost:6380/2", true, "localhost", "", "", "", 6380, 2},
    {"redis://:sekrit@cache.internal:7000/1", true, "cache.internal", "", "", "sekrit", 7000, 1},
    {"redis://app:pw@h", true, "h", "", "app", "pw", 6379, 0},
    {"redis://pw@h/", true, "h", "", "", "pw", 6379, 0},
    {"unix:/run/redis.sock", true, "", "/run/redis.sock", "", "", 6379, 0},
    {"unix:/run/redis.sock?db=3&password=x", true, "", "/run/redis.sock", "", "x", 6379, 3},
    {"redis://a%40b:p%2Fw%3A@h", true, "h", "", "a@b", "p/w:", 6379, 0},
    {"redis://[::1]:6380/1", true, "::1", "", "", "", 6380, 1},
    {"redis://[::1]", true, "::1", "", "", "", 6379, 0},
    {"redis://[::1", false, NULL, NULL, NULL, NULL, 0, 0},
    {"redis://[]:1", false, NULL, NULL, NULL, NULL, 0, 0},
    {"redis://:p%zz@h", false, NULL, NULL, NULL, NULL, 0, 0},
    {"redis://:p%4@h", false, NULL, NULL, NULL, NULL, 0, 0},
    {"redis://", false, NULL, NULL, NULL, NULL, 0, 0},
    {"redis://:pw@", false, NULL, NULL, NULL, NULL, 0, 0},
    {"redis://h:0", false, NULL, NULL, NULL, NULL, 0, 0},
    {"redis://h:70000", false, NULL, NULL, NULL, NULL, 0, 0},
    {"redis://h:12x", false, NULL, NULL, NULL, NULL, 0, 0},
    {"redis://h/abc", false, NULL, NULL, NULL, NULL, 0, 0},
    {"redis://h/-1", false, NULL, NULL, NULL, NULL, 0, 0},
    {"rediss://h", false, NULL, NULL, NULL, NULL, 0, 0},
    {"http://h", false, NULL, NULL, NULL, NULL, 0, 0},
    {"unix:/s?db=x", false, NULL, NULL, NULL, NULL, 0, 0},
    {"unix:/s?timeout=1", false, NULL, NULL, NULL, NULL, 0, 0},
};

static void test_url(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(url_cases) / sizeof(url_cases[0]); i++) {
        const UrlCase *u = &url_cases[i];
        RedisTarget t;
        char err[256] = "";
        bool ok = redis_url_parse(u->url, &t, err, sizeof(err));
        if (ok != u->ok)
            fail_msg("%s: %s, want %s (%s)", u->url, ok ? "accepted" : "refused",
                     u->ok ? "accepted" : "refused", err);
        if (!ok) {
            if (!strstr(err, "cache_url"))
                fail_msg("%s: the error does not name cache_url: %s", u->url, err);
            continue;
        }
        assert_string_equal(t.host, u->host);
        assert_string_equal(t.path, u->path);
        assert_string_equal(t.user, u->user);
        assert_string_equal(t.password, u->password);
        assert_int_equal(t.port, u->port);
        assert_int_equal(t.db, u->db);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_values),    cmocka_unit_test(test_key_types),
        cmocka_unit_test(test_key_composite), cmocka_unit_test(test_key_too_long),
        cmocka_unit_test(test_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
