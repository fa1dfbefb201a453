/*
 * Fuzz target: the admin console (daemon/admin.c): telling PostgreSQL from
 * HTTP by the first byte, the startup packet and login, and then the
 * console's reading of Query messages into statements, words and commands
 * (SHOW ..., RELOAD, PAUSE/RESUME/RECONNECT/KILL [db], SHUTDOWN, SET, ...),
 * with the answers rendered from a live but idle Worker. See
 * admin_harness.h for how this runs without a socket.
 *
 * Input: one byte, then the bytes a client sends. Bits 0-1 of the byte: 0
 * and 3 start at the connection's first byte (a startup packet: user
 * "admin", database "pgcoalesce" logs in), 1 starts logged in as an
 * admin_users user, 2 as a stats_users user. Bits 2-7: 0 hands everything
 * over as one read, n > 0 in reads of n bytes. Checks: every answer is a
 * sequence of whole, well-formed backend messages (ErrorResponses parse,
 * DataRows have the columns their RowDescription announced).
 */
#include "tests/fuzz/admin_harness.h"

#include "proto/msg.h"

/* Column count of the last RowDescription, -1 outside a result. */
static int ncols = -1;

static void check_frame(char type, const uint8_t *body, uint32_t len)
{
    MsgReader r;
    ProtoError e;

    mr_init(&r, body, len);
    switch (type) {
    case 'E':
    case 'N':
        FUZZ_CHECK(proto_parse_error(body, len, &e));
        FUZZ_CHECK(strlen(e.sqlstate) == 5);
        break;
    case 'T':
        ncols = mr_i16(&r);
        for (int i = 0; i < ncols; i++) {
            FUZZ_CHECK(mr_str(&r) != NULL);
            FUZZ_CHECK(mr_bytes(&r, 18) != NULL);
        }
        FUZZ_CHECK(!r.bad && mr_remaining(&r) == 0);
        break;
    case 'D':
        FUZZ_CHECK(mr_i16(&r) == ncols);
        for (int i = 0; i < ncols; i++) {
            int32_t n = mr_i32(&r);
            FUZZ_CHECK(n >= -1);
            if (n > 0)
                FUZZ_CHECK(mr_bytes(&r, (size_t)n) != NULL);
        }
        FUZZ_CHECK(!r.bad && mr_remaining(&r) == 0);
        break;
    case 'C':
        ncols = -1;
        FUZZ_CHECK(mr_str(&r) != NULL && mr_remaining(&r) == 0);
        break;
    case 'Z':
        ncols = -1;
        FUZZ_CHECK(len == 1 && body[0] == 'I');
        break;
    case 'R':
        FUZZ_CHECK(len >= 4);
        break;
    case 'S':
        FUZZ_CHECK(mr_str(&r) && mr_str(&r) && mr_remaining(&r) == 0);
        break;
    case 'K':
        FUZZ_CHECK(len == 8);
        break;
    case 'I':
        FUZZ_CHECK(len == 0);
        break;
    default:
        fprintf(stderr, "unexpected message type '%c'\n", type);
        FUZZ_CHECK(!"the console sends only known backend messages");
    }
}

/* What the console wrote: whole messages, then drained. The one byte "N"
 * answers an SSLRequest. */
static void check_output(AdminConn *a)
{
    size_t len = iobuf_len(&a->io.out);
    const uint8_t *p = iobuf_data(&a->io.out);
    size_t off = 0;

    while (off < len) {
        char type;
        uint32_t blen;

        if (p[off] == 'N' && (len - off == 1 || p[off + 1] != 0)) {
            off++;
            continue;
        }
        FUZZ_CHECK(len - off >= PROTO_HDR_LEN);
        FUZZ_CHECK(proto_frame_header(p + off, 1 << 24, &type, &blen) == FRAME_OK);
        FUZZ_CHECK(len - off - PROTO_HDR_LEN >= blen);
        check_frame(type, p + off + PROTO_HDR_LEN, blen);
        off += PROTO_HDR_LEN + blen;
    }
    iobuf_drain(&a->io.out, len);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    harness_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const AdminRole roles[] = {ROLE_NONE, ROLE_ADMIN, ROLE_STATS, ROLE_NONE};
    AdminRole role;
    AdminConn *a;
    size_t chunk;
    bool http;

    if (size < 1)
        return 0;
    role = roles[data[0] & 3];
    a = harness_conn(role);
    chunk = data[0] >> 2;
    data++;
    size--;
    if (chunk == 0)
        chunk = size ? size : 1;
    /* HTTP answers are fuzz_http's to check */
    http = role == ROLE_NONE && size > 0 && data[0] >= 'A' && data[0] <= 'Z';
    ncols = -1;
    for (size_t off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        bool open = harness_feed(a, data + off, n);

        if (http) {
            iobuf_drain(&a->io.out, iobuf_len(&a->io.out));
        } else {
            check_output(a);
            /* the console stops reading while its answer is not written */
            if (open && a->state == ADM_READY)
                a->io.handler(a->io.owner, IO_DRAINED);
            check_output(a);
        }
        if (!open)
            break;
    }
    harness_done(a);
    return 0;
}
