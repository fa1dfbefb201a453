/*
 * Fuzz target: proto_parse_error (ErrorResponse/NoticeResponse bodies from
 * PostgreSQL) and the builders whose output the proxy's own readers take
 * back: pkt_error_hint, pkt_notice, pkt_row_description, pkt_data_row,
 * pkt_command_complete, pkt_param_status.
 *
 * Input: a message body, parsed as it is; then the same bytes cut at
 * FUZZ_SEP into severity, SQLSTATE, hint, message and column values that
 * are built into messages and must read back unchanged.
 */
#include "tests/fuzz/fuzz.h"

#include "proto/msg.h"

#define MAX_COLS 8

static bool inside(const uint8_t *body, size_t len, const char *s)
{
    const uint8_t *p = (const uint8_t *)s;

    return p >= body && p < body + len && memchr(p, 0, len - (size_t)(p - body));
}

static void parse_raw(const uint8_t *data, size_t size)
{
    uint8_t *body = fuzz_dup(data, size);
    ProtoError e;

    if (proto_parse_error(body, size, &e)) {
        FUZZ_CHECK(inside(body, size, e.severity) && inside(body, size, e.sqlstate) &&
                   inside(body, size, e.message));
        FUZZ_CHECK(!e.detail || inside(body, size, e.detail));
        FUZZ_CHECK(!e.hint || inside(body, size, e.hint));
    }
    free(body);
}

/* The single message in b: its type and a reader over an exact-size copy
 * of its body (freed by the caller). */
static uint8_t *only_message(const PktBuf *b, char type, MsgReader *r, size_t *len)
{
    char t;
    uint32_t n;
    uint8_t *copy;

    FUZZ_CHECK(!b->failed && b->len >= PROTO_HDR_LEN);
    FUZZ_CHECK(proto_frame_header(b->data, INT32_MAX - 4, &t, &n) == FRAME_OK);
    FUZZ_CHECK(t == type && PROTO_HDR_LEN + n == b->len);
    copy = fuzz_dup(b->data + PROTO_HDR_LEN, n);
    mr_init(r, copy, n);
    *len = n;
    return copy;
}

static void round_trip_error(const char *sev, const char *code, const char *hint, const char *msg,
                             bool notice)
{
    PktBuf b;
    MsgReader r;
    ProtoError e;
    size_t len;
    uint8_t *body;

    pkt_init(&b);
    if (notice)
        pkt_notice(&b, code, "%s", msg);
    else
        pkt_error_hint(&b, sev, code, hint[0] ? hint : NULL, "%s", msg);
    body = only_message(&b, notice ? 'N' : 'E', &r, &len);
    FUZZ_CHECK(proto_parse_error(body, len, &e));
    FUZZ_CHECK(strcmp(e.severity, notice ? "NOTICE" : sev) == 0);
    FUZZ_CHECK(strcmp(e.sqlstate, code) == 0);
    FUZZ_CHECK(strcmp(e.message, msg) == 0);
    if (!notice && hint[0])
        FUZZ_CHECK(e.hint && strcmp(e.hint, hint) == 0);
    else
        FUZZ_CHECK(e.hint == NULL);
    free(body);
    pkt_free(&b);
}

/* RowDescription and DataRow of the same columns read back field by field. */
static void round_trip_rows(char **vals, int n)
{
    const char *names[MAX_COLS], *values[MAX_COLS];
    PktBuf b;
    MsgReader r;
    size_t len;
    uint8_t *body;

    for (int i = 0; i < n; i++) {
        names[i] = vals[i];
        /* every other value is SQL NULL when it is empty */
        values[i] = (i % 2 && !vals[i][0]) ? NULL : vals[i];
    }
    pkt_init(&b);
    pkt_row_description(&b, n, names, NULL);
    body = only_message(&b, 'T', &r, &len);
    FUZZ_CHECK(mr_i16(&r) == n);
    for (int i = 0; i < n; i++) {
        const char *name = mr_str(&r);
        FUZZ_CHECK(name && strcmp(name, names[i]) == 0);
        FUZZ_CHECK(mr_bytes(&r, 18) != NULL);
    }
    FUZZ_CHECK(!r.bad && mr_remaining(&r) == 0);
    free(body);

    pkt_reset(&b);
    pkt_data_row(&b, n, values);
    body = only_message(&b, 'D', &r, &len);
    FUZZ_CHECK(mr_i16(&r) == n);
    for (int i = 0; i < n; i++) {
        int32_t vlen = mr_i32(&r);
        if (!values[i]) {
            FUZZ_CHECK(vlen == -1);
            continue;
        }
        FUZZ_CHECK(vlen >= 0 && (size_t)vlen == strlen(values[i]));
        FUZZ_CHECK(memcmp(mr_bytes(&r, (size_t)vlen), values[i], (size_t)vlen) == 0);
    }
    FUZZ_CHECK(!r.bad && mr_remaining(&r) == 0);
    free(body);

    if (n >= 2) {
        pkt_reset(&b);
        pkt_param_status(&b, vals[0], vals[1]);
        body = only_message(&b, 'S', &r, &len);
        FUZZ_CHECK(strcmp(mr_str(&r), vals[0]) == 0 && strcmp(mr_str(&r), vals[1]) == 0);
        free(body);
    }
    pkt_reset(&b);
    pkt_command_complete(&b, vals[0]);
    body = only_message(&b, 'C', &r, &len);
    FUZZ_CHECK(strcmp(mr_str(&r), vals[0]) == 0 && mr_remaining(&r) == 0);
    free(body);
    pkt_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzPart parts[MAX_COLS];
    char *s[MAX_COLS];
    int n;

    parse_raw(data, size);

    n = fuzz_split(data, size, parts, MAX_COLS);
    for (int i = 0; i < n; i++)
        s[i] = fuzz_str(parts[i].p, parts[i].n);
    if (n >= 4) {
        round_trip_error(s[0], s[1], s[2], s[3], false);
        round_trip_error(s[0], s[1], s[2], s[3], true);
    }
    round_trip_rows(s, n);
    for (int i = 0; i < n; i++)
        free(s[i]);
    return 0;
}
