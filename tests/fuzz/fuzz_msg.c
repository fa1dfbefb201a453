/*
 * Fuzz target: proto_frame_header and MsgReader over a stream of typed
 * messages, the way the proxy cuts what clients and servers send into
 * messages and reads their fields.
 *
 * Input: one byte saying whose messages follow (bit 0 clear: a client's,
 * set: a server's; bits 1-7 pick the max_len given to proto_frame_header),
 * then the messages as they come on the wire. Each body is copied to an
 * exact-size buffer and read field by field as its type says (Bind,
 * Parse, RowDescription, DataRow, Authentication, ...), so reads past a
 * body's end show up; the reader's own promises are checked on the way.
 */
#include "tests/fuzz/fuzz.h"

#include "proto/msg.h"

typedef struct Body {
    const uint8_t *p;
    size_t len;
} Body;

/* Reader promises: position within the body, reads after a failure fail. */
static void check_reader(const MsgReader *r, const Body *b)
{
    FUZZ_CHECK(r->pos <= r->len && r->len == b->len);
    if (r->bad)
        FUZZ_CHECK(mr_remaining(r) == 0);
    else
        FUZZ_CHECK(mr_remaining(r) == r->len - r->pos);
}

static const char *rd_str(MsgReader *r, const Body *b)
{
    const char *s = mr_str(r);

    if (s) {
        const uint8_t *p = (const uint8_t *)s;
        FUZZ_CHECK(p >= b->p && p + strlen(s) < b->p + b->len);
    } else {
        FUZZ_CHECK(r->bad);
    }
    check_reader(r, b);
    return s;
}

static const uint8_t *rd_bytes(MsgReader *r, const Body *b, int32_t n)
{
    const uint8_t *p;
    volatile uint8_t sink = 0;

    if (n < 0)
        return NULL;
    p = mr_bytes(r, (size_t)n);
    if (p) {
        FUZZ_CHECK(p >= b->p && p + n <= b->p + b->len);
        for (int32_t i = 0; i < n; i++)
            sink ^= p[i];
    }
    check_reader(r, b);
    (void)sink;
    return p;
}

/* n int16 format codes (Bind, CopyInResponse, FunctionCall) */
static void rd_i16s(MsgReader *r, const Body *b, int n)
{
    for (int i = 0; i < n && !r->bad; i++)
        mr_i16(r);
    check_reader(r, b);
}

/* Bind: portal, statement, formats, values (int32 length, -1 = NULL), result formats. */
static void rd_bind(MsgReader *r, const Body *b)
{
    int n;

    rd_str(r, b);
    rd_str(r, b);
    rd_i16s(r, b, mr_i16(r));
    n = mr_i16(r);
    for (int i = 0; i < n && !r->bad; i++)
        rd_bytes(r, b, mr_i32(r));
    rd_i16s(r, b, mr_i16(r));
}

static void rd_frontend(char type, MsgReader *r, const Body *b)
{
    int n;

    switch (type) {
    case 'Q': /* Query */
    case 'f': /* CopyFail */
        rd_str(r, b);
        break;
    case 'P': /* Parse: name, text, parameter type OIDs */
        rd_str(r, b);
        rd_str(r, b);
        n = mr_i16(r);
        for (int i = 0; i < n && !r->bad; i++)
            mr_i32(r);
        break;
    case 'B':
        rd_bind(r, b);
        break;
    case 'E': /* Execute */
        rd_str(r, b);
        mr_i32(r);
        break;
    case 'D': /* Describe */
    case 'C': /* Close */
        mr_u8(r);
        rd_str(r, b);
        break;
    case 'p': /* SASLInitialResponse (or a password, or SASLResponse) */
        rd_str(r, b);
        rd_bytes(r, b, mr_i32(r));
        break;
    case 'F': /* FunctionCall */
        mr_i32(r);
        rd_i16s(r, b, mr_i16(r));
        n = mr_i16(r);
        for (int i = 0; i < n && !r->bad; i++)
            rd_bytes(r, b, mr_i32(r));
        mr_i16(r);
        break;
    default: /* d, c, S, H, X: raw or empty */
        rd_bytes(r, b, (int32_t)mr_remaining(r));
        break;
    }
}

static void rd_auth(MsgReader *r, const Body *b)
{
    switch (mr_i32(r)) {
    case AUTH_REQ_MD5:
        rd_bytes(r, b, 4);
        break;
    case AUTH_REQ_SASL: /* mechanism names, then "" */
        for (int i = 0; i < 64; i++) {
            const char *m = rd_str(r, b);
            if (!m || !m[0])
                break;
        }
        break;
    default:
        rd_bytes(r, b, (int32_t)mr_remaining(r));
        break;
    }
}

static void rd_backend(char type, MsgReader *r, const Body *b)
{
    ProtoError e;
    int n;

    switch (type) {
    case 'R':
        rd_auth(r, b);
        break;
    case 'S': /* ParameterStatus */
        rd_str(r, b);
        rd_str(r, b);
        break;
    case 'K': /* BackendKeyData */
        mr_i32(r);
        mr_i32(r);
        break;
    case 'Z': /* ReadyForQuery */
        mr_u8(r);
        break;
    case 'C': /* CommandComplete */
        rd_str(r, b);
        break;
    case 'T': /* RowDescription */
        n = mr_i16(r);
        for (int i = 0; i < n && !r->bad; i++) {
            rd_str(r, b);
            mr_i32(r);
            mr_i16(r);
            mr_i32(r);
            mr_i16(r);
            mr_i32(r);
            mr_i16(r);
        }
        break;
    case 'D': /* DataRow */
        n = mr_i16(r);
        for (int i = 0; i < n && !r->bad; i++)
            rd_bytes(r, b, mr_i32(r));
        break;
    case 't': /* ParameterDescription */
        n = mr_i16(r);
        for (int i = 0; i < n && !r->bad; i++)
            mr_i32(r);
        break;
    case 'G': /* CopyInResponse */
    case 'H': /* CopyOutResponse */
    case 'W': /* CopyBothResponse */
        mr_u8(r);
        rd_i16s(r, b, mr_i16(r));
        break;
    case 'A': /* NotificationResponse */
        mr_i32(r);
        rd_str(r, b);
        rd_str(r, b);
        break;
    case 'v': /* NegotiateProtocolVersion */
        mr_i32(r);
        n = mr_i32(r);
        for (int i = 0; i < n && i < 1024 && !r->bad; i++)
            rd_str(r, b);
        break;
    case 'E':
    case 'N':
        if (proto_parse_error(b->p, b->len, &e)) {
            FUZZ_CHECK(e.severity && e.sqlstate && e.message);
            FUZZ_CHECK((const uint8_t *)e.message >= b->p &&
                       (const uint8_t *)e.message < b->p + b->len);
        }
        break;
    default:
        rd_bytes(r, b, (int32_t)mr_remaining(r));
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool backend;
    uint32_t max_len;

    if (size < 1)
        return 0;
    backend = data[0] & 1;
    /* from 0 up to 2^31: the proxy uses 8192, 65536, max_packet_size, ... */
    max_len = (data[0] >> 1) == 0 ? 0 : 1u << ((data[0] >> 1) % 32);
    data++;
    size--;
    while (size >= PROTO_HDR_LEN) {
        char type = 0;
        uint32_t len = 0;
        MsgReader r;
        Body b;
        uint8_t *copy;

        if (proto_frame_header(data, max_len, &type, &len) != FRAME_OK)
            break;
        FUZZ_CHECK(len <= max_len && len <= INT32_MAX - 4);
        FUZZ_CHECK(type == (char)data[0]);
        if (len > size - PROTO_HDR_LEN)
            break; /* the rest has not arrived */
        copy = fuzz_dup(data + PROTO_HDR_LEN, len);
        b.p = copy;
        b.len = len;
        mr_init(&r, copy, len);
        check_reader(&r, &b);
        if (backend)
            rd_backend(type, &r, &b);
        else
            rd_frontend(type, &r, &b);
        check_reader(&r, &b);
        free(copy);
        data += PROTO_HDR_LEN + len;
        size -= PROTO_HDR_LEN + len;
    }
    return 0;
}
