/*
 * Unit tests of the wire codec: PktBuf framing, MsgReader bounds, frame
 * headers, startup packets, ErrorResponse parsing, and every builder
 * decoded back through the readers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/msg.h"
#include "proto/pkt.h"

/* A byte-string literal and its length, embedded NULs included. */
#define BYTES(s) (const uint8_t *)(s), sizeof(s) - 1

/* A walk over the messages in a PktBuf. */
typedef struct Walk {
    const PktBuf *b;
    size_t off;
} Walk;

/* Decode the next typed message header; body reader positioned on its body. */
static void walk_next(Walk *w, char want_type, MsgReader *body)
{
    char type = 0;
    uint32_t len = 0;

    assert_true(w->off + PROTO_HDR_LEN <= w->b->len);
    assert_int_equal(proto_frame_header(w->b->data + w->off, 1 << 20, &type, &len), FRAME_OK);
    assert_int_equal(type, want_type);
    assert_true(w->off + PROTO_HDR_LEN + len <= w->b->len);
    mr_init(body, w->b->data + w->off + PROTO_HDR_LEN, len);
    w->off += PROTO_HDR_LEN + len;
}

/* The body of the one typed message b holds. */
static void only_msg(const PktBuf *b, char want_type, MsgReader *body)
{
    Walk w = {b, 0};

    assert_false(b->failed);
    walk_next(&w, want_type, body);
    assert_int_equal(w.off, b->len);
}

/* The body of the one untyped message b holds. */
static void only_untyped(const PktBuf *b, MsgReader *body)
{
    MsgReader r;
    int32_t len;

    assert_false(b->failed);
    mr_init(&r, b->data, b->len);
    len = mr_i32(&r);
    assert_false(r.bad);
    assert_int_equal(len, b->len);
    mr_init(body, b->data + 4, b->len - 4);
}

static void assert_end(MsgReader *r)
{
    assert_false(r->bad);
    assert_int_equal(mr_remaining(r), 0);
}

/* ---- PktBuf ------------------------------------------------------------- */

static void test_pkt_typed_length_word(void **state)
{
    static const uint8_t want[] = {'Q', 0, 0, 0, 6, 'x', 0, 'S', 0, 0, 0, 4};
    PktBuf b;

    pkt_init(&b);
    pkt_begin(&b, 'Q');
    pkt_put_str(&b, "x");
    pkt_end(&b);
    pkt_begin(&b, 'S');
    pkt_end(&b);
    assert_false(b.failed);
    assert_int_equal(b.len, sizeof(want));
    assert_memory_equal(b.data, want, sizeof(want));
    pkt_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
}

static void test_pkt_untyped_and_ints(void **state)
{
    static const uint8_t want[] = {0, 0, 0, 11, 0x12, 0x34, 0x56, 0x78, 0xff, 0xfe, 0x80};
    PktBuf b;

    pkt_init(&b);
    pkt_begin(&b, 0);
    pkt_put_i32(&b, 0x12345678);
    pkt_put_i16(&b, -2);
    pkt_put_u8(&b, 0x80);
    pkt_end(&b);
    assert_false(b.failed);
    assert_int_equal(b.len, sizeof(want));
    assert_memory_equal(b.data, want, sizeof(want));
    pkt_free(&b);
}

static void test_pkt_grows_and_resets(void **state)
{
    enum { N = 100000 };
    uint8_t *big = malloc(N);
    uint8_t *data;
    MsgReader r;
    size_t cap;
    PktBuf b;

    assert_non_null(big);
    for (size_t i = 0; i < N; i++)
        big[i] = (uint8_t)(i * 7);
    pkt_init(&b);
    pkt_begin(&b, 'd');
    pkt_put_bytes(&b, big, N);
    pkt_end(&b);
    only_msg(&b, 'd', &r);
    assert_memory_equal(mr_bytes(&r, N), big, N);
    assert_end(&r);

    data = b.data;
    cap = b.cap;
    pkt_reset(&b);
    assert_int_equal(b.len, 0);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    pkt_sync(&b);
    only_msg(&b, 'S', &r);
    assert_end(&r);
    pkt_free(&b);
    free(big);
}

/* A failed buffer ignores writes until reset clears it. */
static void test_pkt_failed_is_sticky(void **state)
{
    PktBuf b;

    pkt_init(&b);
    pkt_query(&b, "select 1");
    b.failed = true;
    pkt_query(&b, "select 2");
    pkt_put_u8(&b, 1);
    assert_int_equal(b.len, 14);
    pkt_reset(&b);
    assert_false(b.failed);
    pkt_sync(&b);
    assert_int_equal(b.len, 5);
    pkt_free(&b);
}

/* ---- MsgReader ---------------------------------------------------------- */

static void test_mr_reads(void **state)
{
    MsgReader r;

    mr_init(&r, BYTES("\xff\xff\xff\xfe\x80\x00\x7f"
                      "ab\0xyz"));
    assert_int_equal(mr_i32(&r), -2);
    assert_int_equal(mr_i16(&r), -32768);
    assert_int_equal(mr_u8(&r), 0x7f);
    assert_string_equal(mr_str(&r), "ab");
    assert_int_equal(mr_remaining(&r), 3);
    assert_memory_equal(mr_bytes(&r, 3), "xyz", 3);
    assert_end(&r);
    assert_non_null(mr_bytes(&r, 0));
    assert_false(r.bad);
}

/* Each overrun: the read fails, bad is set, and later reads fail too. */
static void test_mr_overrun(void **state)
{
    static const uint8_t data[] = {1, 2, 3, 'a', 0};
    MsgReader r;

    mr_init(&r, data, 3);
    assert_int_equal(mr_i32(&r), 0);
    assert_true(r.bad);
    assert_int_equal(mr_remaining(&r), 0);
    assert_int_equal(mr_u8(&r), 0);
    assert_int_equal(mr_i16(&r), 0);
    assert_null(mr_str(&r));
    assert_null(mr_bytes(&r, 1));

    mr_init(&r, data, 3);
    assert_int_equal(mr_i16(&r), 0x0102);
    assert_int_equal(mr_i16(&r), 0);
    assert_true(r.bad);

    mr_init(&r, data, sizeof(data));
    assert_null(mr_bytes(&r, sizeof(data) + 1));
    assert_true(r.bad);

    /* "a" is unterminated when the body stops before the NUL. */
    mr_init(&r, data + 3, 1);
    assert_null(mr_str(&r));
    assert_true(r.bad);

    mr_init(&r, data, 0);
    assert_null(mr_str(&r));
    assert_true(r.bad);

    mr_init(&r, NULL, 10);
    assert_int_equal(mr_remaining(&r), 0);
    assert_int_equal(mr_u8(&r), 0);
    assert_true(r.bad);
}

/* ---- Frame headers ------------------------------------------------------ */

static const struct {
    const char *name;
    uint8_t hdr[PROTO_HDR_LEN];
    uint32_t max_len;
    FrameResult want;
    uint32_t body_len;
} frame_cases[] = {
    {"empty body", {'S', 0, 0, 0, 4}, 100, FRAME_OK, 0},
    {"small body", {'Q', 0, 0, 0, 9}, 100, FRAME_OK, 5},
    {"body exactly max", {'Q', 0, 0, 0, 104}, 100, FRAME_OK, 100},
    {"body one over max", {'Q', 0, 0, 0, 105}, 100, FRAME_BAD, 0},
    {"length 3", {'Q', 0, 0, 0, 3}, 100, FRAME_BAD, 0},
    {"length 0", {'Q', 0, 0, 0, 0}, 100, FRAME_BAD, 0},
    {"length 3, no max", {'Q', 0, 0, 0, 3}, UINT32_MAX, FRAME_BAD, 0},
    {"length 0, no max", {'Q', 0, 0, 0, 0}, UINT32_MAX, FRAME_BAD, 0},
    {"length big endian", {'D', 0, 1, 0, 4}, 1 << 20, FRAME_OK, 65536},
    {"length over max", {'D', 0x01, 0, 0, 0}, 1 << 20, FRAME_BAD, 0},
    {"negative length", {'D', 0x80, 0, 0, 4}, UINT32_MAX, FRAME_BAD, 0},
    {"all ones", {'D', 0xff, 0xff, 0xff, 0xff}, UINT32_MAX, FRAME_BAD, 0},
    {"int32 max", {'D', 0x7f, 0xff, 0xff, 0xff}, UINT32_MAX, FRAME_OK, 0x7ffffffb},
};

static void test_frame_header(void **state)
{
    for (size_t i = 0; i < sizeof(frame_cases) / sizeof(frame_cases[0]); i++) {
        char type = 0;
        uint32_t len = 12345;
        FrameResult got =
            proto_frame_header(frame_cases[i].hdr, frame_cases[i].max_len, &type, &len);

        if (got != frame_cases[i].want)
            fail_msg("%s: result %d, want %d", frame_cases[i].name, got, frame_cases[i].want);
        if (got == FRAME_OK &&
            (type != (char)frame_cases[i].hdr[0] || len != frame_cases[i].body_len))
            fail_msg("%s: type %c len %u", frame_cases[i].name, type, len);
    }
}

/* ---- Startup packets ---------------------------------------------------- */

#define V3   "\x00\x03\x00\x00"
#define V3_2 "\x00\x03\x00\x02"

/* Table rows: the body is a literal whose sizeof gives its length. */
/* clang-format off */
#define OK(n, b, np, u, d)         {n, b, sizeof(b) - 1, NULL, PROTO_V3, np, u, d}
#define OK_CODE(n, b, c, np, u, d) {n, b, sizeof(b) - 1, NULL, c, np, u, d}
#define BAD(n, b, e)               {n, b, sizeof(b) - 1, e, 0, 0, NULL, NULL}
/* clang-format on */

static const struct {
    const char *name;
    const char *body;
    size_t len;
    const char *err; /* substring of the error, NULL for success */
    int32_t code;
    int nparams;
    const char *user, *database;
} startup_cases[] = {
    OK("user and database", V3 "user\0app\0database\0db\0\0", 2, "app", "db"),
    OK("database defaults to user", V3 "user\0app\0\0", 1, "app", "app"),
    OK("empty database is the user", V3 "database\0\0user\0bob\0\0", 2, "bob", "bob"),
    OK("options is just a param",
       V3 "user\0u\0options\0-c search_path=x\0application_name\0psql\0\0", 3, "u", "u"),
    OK_CODE("minor version 3.2 accepted", V3_2 "user\0u\0database\0d\0\0", 196610, 2, "u", "d"),
    BAD("protocol 2.0", "\x00\x02\x00\x00user\0u\0\0",
        "unsupported frontend protocol 2.0: server supports 3.0"),
    BAD("protocol 4.1", "\x00\x04\x00\x01user\0u\0\0",
        "unsupported frontend protocol 4.1: server supports 3.0"),
    BAD("missing user", V3 "database\0db\0\0",
        "no PostgreSQL user name specified in startup packet"),
    BAD("empty user", V3 "user\0\0\0", "no PostgreSQL user name specified in startup packet"),
    BAD("no params at all", V3, "terminator"),
    BAD("missing final terminator", V3 "user\0app\0", "terminator"),
    BAD("unterminated name", V3 "user\0app\0data", "terminator"),
    BAD("unterminated value", V3 "user\0ap", "unterminated"),
    BAD("data after terminator", V3 "user\0app\0\0x", "after"),
    BAD("duplicate user", V3 "user\0a\0user\0b\0\0", "duplicate"),
    BAD("empty body", "", "length"),
    BAD("truncated code", "\x00\x03", "length"),
    OK_CODE("cancel request", "\x04\xd2\x16\x2e\x00\x00\x30\x39\xff\xff\xff\xfe",
            PROTO_CANCEL_REQUEST, 0, NULL, NULL),
    BAD("cancel request short", "\x04\xd2\x16\x2e\x00\x00\x30\x39", "cancel"),
    BAD("cancel request long", "\x04\xd2\x16\x2e\x00\x00\x30\x39\0\0\0\0\0\0\0\0", "cancel"),
    OK_CODE("ssl request", "\x04\xd2\x16\x2f", PROTO_SSL_REQUEST, 0, NULL, NULL),
    OK_CODE("gssenc request", "\x04\xd2\x16\x30", PROTO_GSSENC_REQUEST, 0, NULL, NULL),
    BAD("ssl request with payload", "\x04\xd2\x16\x2f\0\0\0\0", "length"),
#undef OK
#undef OK_CODE
#undef BAD
};

static void test_startup_cases(void **state)
{
    for (size_t i = 0; i < sizeof(startup_cases) / sizeof(startup_cases[0]); i++) {
        const char *name = startup_cases[i].name;
        StartupPacket sp;
        const char *err =
            proto_parse_startup((const uint8_t *)startup_cases[i].body, startup_cases[i].len, &sp);

        if (startup_cases[i].err) {
            if (!err || !strstr(err, startup_cases[i].err))
                fail_msg("%s: error \"%s\", want \"%s\"", name, err ? err : "(none)",
                         startup_cases[i].err);
            continue;
        }
        if (err)
            fail_msg("%s: unexpected error \"%s\"", name, err);
        if (sp.code != startup_cases[i].code || sp.nparams != startup_cases[i].nparams)
            fail_msg("%s: code %d nparams %d", name, sp.code, sp.nparams);
        if (!startup_cases[i].user) {
            if (sp.user || sp.database)
                fail_msg("%s: user/database set on a request", name);
            continue;
        }
        if (!sp.user || strcmp(sp.user, startup_cases[i].user) != 0 || !sp.database ||
            strcmp(sp.database, startup_cases[i].database) != 0)
            fail_msg("%s: user %s database %s", name, sp.user, sp.database);
    }
}

static void test_startup_params_and_cancel_fields(void **state)
{
    StartupPacket sp;

    assert_null(proto_parse_startup(BYTES(V3 "user\0app\0options\0-c x=1\0\0"), &sp));
    assert_int_equal(sp.nparams, 2);
    assert_string_equal(sp.params[0].name, "user");
    assert_string_equal(sp.params[0].value, "app");
    assert_string_equal(sp.params[1].name, "options");
    assert_string_equal(sp.params[1].value, "-c x=1");

    assert_null(
        proto_parse_startup(BYTES("\x04\xd2\x16\x2e\x00\x00\x30\x39\xff\xff\xff\xfe"), &sp));
    assert_int_equal(sp.cancel_pid, 12345);
    assert_int_equal(sp.cancel_key, -2);
}

/* Build a v3 body with user plus (n - 1) more parameters. */
static uint8_t *startup_with_params(int n, size_t *len)
{
    PktBuf b;
    uint8_t *body;
    char name[32];

    pkt_init(&b);
    pkt_put_i32(&b, PROTO_V3);
    pkt_put_str(&b, "user");
    pkt_put_str(&b, "u");
    for (int i = 1; i < n; i++) {
        snprintf(name, sizeof(name), "p%d", i);
        pkt_put_str(&b, name);
        pkt_put_str(&b, "v");
    }
    pkt_put_u8(&b, 0);
    assert_false(b.failed);
    *len = b.len;
    body = b.data; /* ownership passes to the caller */
    return body;
}

static void test_startup_param_limit(void **state)
{
    StartupPacket sp;
    size_t len;
    uint8_t *body;
    const char *err;

    body = startup_with_params(PROTO_MAX_STARTUP_PARAMS, &len);
    assert_null(proto_parse_startup(body, len, &sp));
    assert_int_equal(sp.nparams, PROTO_MAX_STARTUP_PARAMS);
    assert_string_equal(sp.params[PROTO_MAX_STARTUP_PARAMS - 1].name, "p63");
    free(body);

    body = startup_with_params(PROTO_MAX_STARTUP_PARAMS + 1, &len);
    err = proto_parse_startup(body, len, &sp);
    assert_non_null(err);
    assert_non_null(strstr(err, "too many"));
    free(body);
}

static void test_startup_too_long(void **state)
{
    size_t len = PROTO_MAX_STARTUP_LEN;
    uint8_t *body = calloc(1, len);
    StartupPacket sp;
    const char *err;

    assert_non_null(body);
    memcpy(body, V3 "user\0u\0x\0", 13);
    /* A long value, then the list terminator as the last byte. */
    memset(body + 13, 'a', len - 13 - 2);
    err = proto_parse_startup(body, len, &sp);
    assert_non_null(err);
    assert_non_null(strstr(err, "length"));
    /* Four bytes shorter it fits the 10000-byte packet cap. */
    body[len - 6] = 0;
    body[len - 5] = 0;
    assert_null(proto_parse_startup(body, len - 4, &sp));
    free(body);
}

/* ---- ErrorResponse parsing ---------------------------------------------- */

/* clang-format off */
#define CASE(n, b, ok, s, c, m, d, h) {n, b, sizeof(b) - 1, ok, s, c, m, d, h}
/* clang-format on */

static const struct {
    const char *name;
    const char *body;
    size_t len;
    bool ok;
    const char *severity, *sqlstate, *message, *detail, *hint;
} error_cases[] = {
    CASE("all fields", "SERROR\0C28P01\0Mbad\0Dmore\0Hdo this\0\0", true, "ERROR", "28P01", "bad",
         "more", "do this"),
    CASE("V wins over localized S", "SFEHLER\0VERROR\0C42601\0Msyntax\0\0", true, "ERROR", "42601",
         "syntax", NULL, NULL),
    CASE("unknown fields skipped", "SNOTICE\0Xwhat\0C00000\0Mhi\0Ffile.c\0L12\0\0", true, "NOTICE",
         "00000", "hi", NULL, NULL),
    CASE("missing message", "SERROR\0C28P01\0\0", false, 0, 0, 0, 0, 0),
    CASE("missing sqlstate", "SERROR\0Mbad\0\0", false, 0, 0, 0, 0, 0),
    CASE("missing terminator", "SERROR\0C28P01\0Mbad\0", false, 0, 0, 0, 0, 0),
    CASE("unterminated string", "SERROR\0C28P01\0Mbad", false, 0, 0, 0, 0, 0),
    CASE("data after terminator", "SERROR\0C28P01\0Mbad\0\0junk", false, 0, 0, 0, 0, 0),
    CASE("empty", "", false, 0, 0, 0, 0, 0),
#undef CASE
};

static void check_field(const char *case_name, const char *field, const char *got, const char *want)
{
    if ((want == NULL) != (got == NULL) || (want && strcmp(got, want) != 0))
        fail_msg("%s: %s is \"%s\", want \"%s\"", case_name, field, got ? got : "(null)",
                 want ? want : "(null)");
}

static void test_parse_error_cases(void **state)
{
    for (size_t i = 0; i < sizeof(error_cases) / sizeof(error_cases[0]); i++) {
        ProtoError e;
        bool ok = proto_parse_error((const uint8_t *)error_cases[i].body, error_cases[i].len, &e);

        if (ok != error_cases[i].ok)
            fail_msg("%s: returned %d", error_cases[i].name, ok);
        if (!ok)
            continue;
        check_field(error_cases[i].name, "severity", e.severity, error_cases[i].severity);
        check_field(error_cases[i].name, "sqlstate", e.sqlstate, error_cases[i].sqlstate);
        check_field(error_cases[i].name, "message", e.message, error_cases[i].message);
        check_field(error_cases[i].name, "detail", e.detail, error_cases[i].detail);
        check_field(error_cases[i].name, "hint", e.hint, error_cases[i].hint);
    }
}

/* ---- Builders, decoded back --------------------------------------------- */

/* Read one field of an ErrorResponse body: its type byte, then its text. */
static void expect_field(MsgReader *r, char type, const char *value)
{
    assert_int_equal(mr_u8(r), type);
    assert_string_equal(mr_str(r), value);
}

static void test_build_error(void **state)
{
    PktBuf b;
    MsgReader r;
    ProtoError e;

    pkt_init(&b);
    pkt_error(&b, "FATAL", "3D000", "database \"%s\" does not exist", "nope");
    only_msg(&b, 'E', &r);
    expect_field(&r, 'S', "FATAL");
    expect_field(&r, 'V', "FATAL");
    expect_field(&r, 'C', "3D000");
    expect_field(&r, 'M', "database \"nope\" does not exist");
    assert_int_equal(mr_u8(&r), 0);
    assert_end(&r);

    pkt_reset(&b);
    pkt_error_hint(&b, "ERROR", "53300", "raise max_client_conn", "too many clients (%d)", 7);
    only_msg(&b, 'E', &r);
    expect_field(&r, 'S', "ERROR");
    expect_field(&r, 'V', "ERROR");
    expect_field(&r, 'C', "53300");
    expect_field(&r, 'M', "too many clients (7)");
    expect_field(&r, 'H', "raise max_client_conn");
    assert_int_equal(mr_u8(&r), 0);
    assert_end(&r);
    assert_true(proto_parse_error(r.p, r.len, &e));
    assert_string_equal(e.hint, "raise max_client_conn");

    pkt_reset(&b);
    pkt_notice(&b, "01000", "pool %s is %s", "main", "paused");
    only_msg(&b, 'N', &r);
    expect_field(&r, 'S', "NOTICE");
    expect_field(&r, 'V', "NOTICE");
    expect_field(&r, 'C', "01000");
    expect_field(&r, 'M', "pool main is paused");
    assert_int_equal(mr_u8(&r), 0);
    assert_end(&r);
    pkt_free(&b);
}

/* A formatted message longer than any small stack buffer survives whole. */
static void test_build_error_long_message(void **state)
{
    enum { N = 5000 };
    char *long_name = malloc(N + 1);
    PktBuf b;
    MsgReader r;
    ProtoError e;

    assert_non_null(long_name);
    memset(long_name, 'x', N);
    long_name[N] = '\0';
    pkt_init(&b);
    pkt_error(&b, "ERROR", "42000", "<%s>", long_name);
    only_msg(&b, 'E', &r);
    assert_true(proto_parse_error(r.p, r.len, &e));
    assert_int_equal(strlen(e.message), N + 2);
    assert_int_equal(e.message[0], '<');
    assert_int_equal(e.message[N + 1], '>');
    assert_memory_equal(e.message + 1, long_name, N);
    pkt_free(&b);
    free(long_name);
}

static void test_build_auth(void **state)
{
    static const uint8_t salt[4] = {0xde, 0xad, 0x00, 0xef};
    PktBuf b;
    MsgReader r;
    Walk w;

    pkt_init(&b);
    pkt_auth_ok(&b);
    pkt_auth_md5(&b, salt);
    pkt_auth_sasl(&b, "SCRAM-SHA-256");
    pkt_auth_sasl_continue(&b, "r=abc,s=c2FsdA==,i=4096", 23);
    pkt_auth_sasl_final(&b, "v=xyz", 5);
    assert_false(b.failed);
    w = (Walk){&b, 0};

    walk_next(&w, 'R', &r);
    assert_int_equal(mr_i32(&r), AUTH_REQ_OK);
    assert_end(&r);

    walk_next(&w, 'R', &r);
    assert_int_equal(mr_i32(&r), AUTH_REQ_MD5);
    assert_memory_equal(mr_bytes(&r, 4), salt, 4);
    assert_end(&r);

    walk_next(&w, 'R', &r);
    assert_int_equal(mr_i32(&r), AUTH_REQ_SASL);
    assert_string_equal(mr_str(&r), "SCRAM-SHA-256");
    assert_string_equal(mr_str(&r), "");
    assert_end(&r);

    walk_next(&w, 'R', &r);
    assert_int_equal(mr_i32(&r), AUTH_REQ_SASL_CONTINUE);
    assert_int_equal(mr_remaining(&r), 23);
    assert_memory_equal(mr_bytes(&r, 23), "r=abc,s=c2FsdA==,i=4096", 23);
    assert_end(&r);

    walk_next(&w, 'R', &r);
    assert_int_equal(mr_i32(&r), AUTH_REQ_SASL_FINAL);
    assert_memory_equal(mr_bytes(&r, 5), "v=xyz", 5);
    assert_end(&r);
    assert_int_equal(w.off, b.len);
    pkt_free(&b);
}

static void test_build_session_messages(void **state)
{
    PktBuf b;
    MsgReader r;
    Walk w;

    pkt_init(&b);
    pkt_param_status(&b, "server_version", "15.0");
    pkt_backend_key(&b, 4242, -123456789);
    pkt_ready(&b, 'T');
    pkt_command_complete(&b, "SELECT 1");
    pkt_empty_query(&b);
    assert_false(b.failed);
    w = (Walk){&b, 0};

    walk_next(&w, 'S', &r);
    assert_string_equal(mr_str(&r), "server_version");
    assert_string_equal(mr_str(&r), "15.0");
    assert_end(&r);

    walk_next(&w, 'K', &r);
    assert_int_equal(mr_i32(&r), 4242);
    assert_int_equal(mr_i32(&r), -123456789);
    assert_end(&r);

    walk_next(&w, 'Z', &r);
    assert_int_equal(mr_u8(&r), 'T');
    assert_end(&r);

    walk_next(&w, 'C', &r);
    assert_string_equal(mr_str(&r), "SELECT 1");
    assert_end(&r);

    walk_next(&w, 'I', &r);
    assert_end(&r);
    assert_int_equal(w.off, b.len);
    pkt_free(&b);
}

/* One RowDescription column as the builder promises to write it. */
static void expect_column(MsgReader *r, const char *name, int32_t type_oid)
{
    assert_string_equal(mr_str(r), name);
    assert_int_equal(mr_i32(r), 0); /* table OID */
    assert_int_equal(mr_i16(r), 0); /* attnum */
    assert_int_equal(mr_i32(r), type_oid);
    assert_int_equal(mr_i16(r), -1); /* typlen */
    assert_int_equal(mr_i32(r), -1); /* typmod */
    assert_int_equal(mr_i16(r), 0);  /* text format */
}

static void test_build_rows(void **state)
{
    static const char *const names[] = {"database", "pool_size"};
    static const uint32_t oids[] = {25, 23};
    static const char *const values[] = {"main", NULL, ""};
    PktBuf b;
    MsgReader r;
    Walk w;

    pkt_init(&b);
    pkt_row_description(&b, 2, names, NULL);
    pkt_row_description(&b, 2, names, oids);
    pkt_data_row(&b, 3, values);
    pkt_row_description(&b, 0, NULL, NULL);
    assert_false(b.failed);
    w = (Walk){&b, 0};

    walk_next(&w, 'T', &r);
    assert_int_equal(mr_i16(&r), 2);
    expect_column(&r, "database", 25);
    expect_column(&r, "pool_size", 25);
    assert_end(&r);

    walk_next(&w, 'T', &r);
    assert_int_equal(mr_i16(&r), 2);
    expect_column(&r, "database", 25);
    expect_column(&r, "pool_size", 23);
    assert_end(&r);

    walk_next(&w, 'D', &r);
    assert_int_equal(mr_i16(&r), 3);
    assert_int_equal(mr_i32(&r), 4);
    assert_memory_equal(mr_bytes(&r, 4), "main", 4);
    assert_int_equal(mr_i32(&r), -1);
    assert_int_equal(mr_i32(&r), 0);
    assert_end(&r);

    walk_next(&w, 'T', &r);
    assert_int_equal(mr_i16(&r), 0);
    assert_end(&r);
    assert_int_equal(w.off, b.len);
    pkt_free(&b);
}

static void test_build_frontend_messages(void **state)
{
    PktBuf b;
    MsgReader r;
    Walk w;

    pkt_init(&b);
    pkt_query(&b, "SELECT 1;");
    pkt_sync(&b);
    pkt_terminate(&b);
    pkt_password(&b, "md5abc");
    pkt_sasl_initial(&b, "SCRAM-SHA-256", "n,,n=,r=x", 9);
    pkt_sasl_initial(&b, "SCRAM-SHA-256", NULL, 0);
    pkt_sasl_response(&b, "c=biws,r=x,p=y", 14);
    assert_false(b.failed);
    w = (Walk){&b, 0};

    walk_next(&w, 'Q', &r);
    assert_string_equal(mr_str(&r), "SELECT 1;");
    assert_end(&r);
    walk_next(&w, 'S', &r);
    assert_end(&r);
    walk_next(&w, 'X', &r);
    assert_end(&r);

    walk_next(&w, 'p', &r);
    assert_string_equal(mr_str(&r), "md5abc");
    assert_end(&r);

    walk_next(&w, 'p', &r);
    assert_string_equal(mr_str(&r), "SCRAM-SHA-256");
    assert_int_equal(mr_i32(&r), 9);
    assert_memory_equal(mr_bytes(&r, 9), "n,,n=,r=x", 9);
    assert_end(&r);

    walk_next(&w, 'p', &r);
    assert_string_equal(mr_str(&r), "SCRAM-SHA-256");
    assert_int_equal(mr_i32(&r), -1);
    assert_end(&r);

    walk_next(&w, 'p', &r);
    assert_memory_equal(mr_bytes(&r, 14), "c=biws,r=x,p=y", 14);
    assert_end(&r);
    assert_int_equal(w.off, b.len);
    pkt_free(&b);
}

static void test_build_startup_packets(void **state)
{
    static const char *const kv[] = {"user", "app",     "database", "db", "timezone",
                                     NULL,   "options", "-c a=b",   NULL};
    StartupPacket sp;
    PktBuf b;
    MsgReader r;

    pkt_init(&b);
    pkt_startup(&b, kv);
    only_untyped(&b, &r);
    assert_null(proto_parse_startup(r.p, r.len, &sp));
    assert_int_equal(sp.code, PROTO_V3);
    assert_int_equal(sp.nparams, 3); /* the NULL-valued timezone is left out */
    assert_string_equal(sp.user, "app");
    assert_string_equal(sp.database, "db");
    assert_string_equal(sp.params[2].name, "options");
    assert_string_equal(sp.params[2].value, "-c a=b");

    pkt_reset(&b);
    pkt_cancel_request(&b, 777, -5);
    only_untyped(&b, &r);
    assert_int_equal(r.len, 12);
    assert_null(proto_parse_startup(r.p, r.len, &sp));
    assert_int_equal(sp.code, PROTO_CANCEL_REQUEST);
    assert_int_equal(sp.cancel_pid, 777);
    assert_int_equal(sp.cancel_key, -5);

    pkt_reset(&b);
    pkt_ssl_request(&b);
    only_untyped(&b, &r);
    assert_int_equal(r.len, 4);
    assert_null(proto_parse_startup(r.p, r.len, &sp));
    assert_int_equal(sp.code, PROTO_SSL_REQUEST);
    pkt_free(&b);
}

/* ---- Frontend message types --------------------------------------------- */

static void test_frontend_types(void **state)
{
    static const char known[] = "QPBEDCSHXFdcfp";
    static const char unknown[] = "RZTKANIntsGWv12";
    int count = 0;

    for (const char *p = known; *p; p++)
        if (!proto_frontend_type_known(*p))
            fail_msg("'%c' should be known", *p);
    for (const char *p = unknown; *p; p++)
        if (proto_frontend_type_known(*p))
            fail_msg("'%c' should be unknown", *p);
    assert_false(proto_frontend_type_known(0));
    for (int c = -128; c < 128; c++)
        count += proto_frontend_type_known((char)c);
    assert_int_equal(count, (int)strlen(known));
}

/* ---- UTF-8 ----------------------------------------------------------- */

static void test_utf8(void **state)
{
    static const char *const good[] = {"",
                                       "app",
                                       "caf\xc3\xa9",
                                       "\xe2\x82\xac",
                                       "\xf0\x9f\x90\x98",
                                       "\xef\xbf\xbf",
                                       "\xf4\x8f\xbf\xbf",
                                       "a\tb\nc"};
    static const struct {
        const char *s;
        size_t bad_at;
    } bad[] = {
        {"\xff", 0},             /* never valid */
        {"ab\x80", 2},           /* a lone continuation byte */
        {"caf\xc3", 3},          /* cut short by the end */
        {"\xc3(", 0},            /* a continuation byte missing */
        {"\xc0\xaf", 0},         /* overlong '/' */
        {"x\xe0\x80\xaf", 1},    /* overlong, three bytes */
        {"\xf0\x80\x80\xaf", 0}, /* overlong, four bytes */
        {"\xed\xa0\x80", 0},     /* a UTF-16 surrogate */
        {"\xf4\x90\x80\x80", 0}, /* above U+10FFFF */
        {"\xf5\x80\x80\x80", 0}, /* lead byte above 0xf4 */
        {"ok\xe2\x82", 2},       /* three-byte sequence cut short */
    };

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (proto_utf8_error(good[i]))
            fail_msg("good[%zu] refused", i);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *at = proto_utf8_error(bad[i].s);
        if (!at)
            fail_msg("bad[%zu] accepted", i);
        assert_int_equal((size_t)(at - bad[i].s), bad[i].bad_at);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pkt_typed_length_word),
        cmocka_unit_test(test_pkt_untyped_and_ints),
        cmocka_unit_test(test_pkt_grows_and_resets),
        cmocka_unit_test(test_pkt_failed_is_sticky),
        cmocka_unit_test(test_mr_reads),
        cmocka_unit_test(test_mr_overrun),
        cmocka_unit_test(test_frame_header),
        cmocka_unit_test(test_startup_cases),
        cmocka_unit_test(test_startup_params_and_cancel_fields),
        cmocka_unit_test(test_startup_param_limit),
        cmocka_unit_test(test_startup_too_long),
        cmocka_unit_test(test_parse_error_cases),
        cmocka_unit_test(test_build_error),
        cmocka_unit_test(test_build_error_long_message),
        cmocka_unit_test(test_build_auth),
        cmocka_unit_test(test_build_session_messages),
        cmocka_unit_test(test_build_rows),
        cmocka_unit_test(test_build_frontend_messages),
        cmocka_unit_test(test_build_startup_packets),
        cmocka_unit_test(test_frontend_types),
        cmocka_unit_test(test_utf8),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
