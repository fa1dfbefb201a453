/*
 * Fuzz target: daemon/auth.c, the server side of a password exchange as
 * the admin console runs it: auth_exchange_begin, then one
 * auth_exchange_step per password message ('p' body: a password, an MD5
 * response, a SASLInitialResponse or a SASLResponse).
 *
 * Input: one byte (bits 0-1: auth_type trust/md5/scram-sha-256; bits 2-3:
 * the user: plain password, md5 hash, SCRAM secret, unknown), then the
 * message bodies cut at FUZZ_SEP. Checks: whatever was built for the
 * client is well-formed Authentication messages; a refusal names a
 * SQLSTATE and a message; no step runs after the exchange ended.
 */
#include "tests/fuzz/fuzz.h"

#include "daemon/auth.h"
#include "proto/msg.h"

#define MAX_STEPS 4

static const char *const users[] = {"plain", "md5user", "scramuser", "nobody"};

static AuthUser auth_users[] = {
    {(char *)"plain", (char *)"secret"},
    /* md5 of "secret" || "md5user" */
    {(char *)"md5user", (char *)"md52aea419619857e8a27f0f7aa641db0c6"},
    /* password "pencil" with RFC 7677 salt, 4096 iterations */
    {(char *)"scramuser", (char *)"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
                                  "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
                                  "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="},
};

/* Every message in b is an 'R' message whose code fits the exchange. */
static void check_output(const PktBuf *b)
{
    size_t off = 0;

    FUZZ_CHECK(!b->failed);
    while (off < b->len) {
        char type;
        uint32_t len;
        MsgReader r;
        int32_t code;

        FUZZ_CHECK(b->len - off >= PROTO_HDR_LEN);
        FUZZ_CHECK(proto_frame_header(b->data + off, 1 << 20, &type, &len) == FRAME_OK);
        FUZZ_CHECK(type == 'R' && b->len - off - PROTO_HDR_LEN >= len);
        mr_init(&r, b->data + off + PROTO_HDR_LEN, len);
        code = mr_i32(&r);
        FUZZ_CHECK(!r.bad);
        FUZZ_CHECK(code == AUTH_REQ_MD5 || code == AUTH_REQ_SASL ||
                   code == AUTH_REQ_SASL_CONTINUE || code == AUTH_REQ_SASL_FINAL);
        off += PROTO_HDR_LEN + len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const AuthType types[] = {AUTH_TRUST, AUTH_MD5, AUTH_SCRAM, AUTH_SCRAM};
    FuzzPart parts[MAX_STEPS];
    AuthExchange ax;
    Config cfg;
    PktBuf b;
    const char *sqlstate = NULL, *user;
    char msg[256];
    AuthResult r;
    int n;

    if (size < 1)
        return 0;
    memset(&cfg, 0, sizeof(cfg));
    cfg.auth_type = types[data[0] & 3];
    cfg.users = auth_users;
    cfg.nusers = sizeof(auth_users) / sizeof(auth_users[0]);
    user = users[(data[0] >> 2) & 3];
    n = fuzz_split(data + 1, size - 1, parts, MAX_STEPS);

    memset(&ax, 0, sizeof(ax));
    pkt_init(&b);
    r = auth_exchange_begin(&ax, &cfg, user, &b, &sqlstate, msg, sizeof(msg));
    for (int i = 0; i < n && r == AUTHX_CONTINUE; i++) {
        uint8_t *body = fuzz_dup(parts[i].p, parts[i].n);

        check_output(&b);
        pkt_reset(&b);
        r = auth_exchange_step(&ax, &cfg, user, body, (uint32_t)parts[i].n, &b, &sqlstate, msg,
                               sizeof(msg));
        free(body);
    }
    check_output(&b);
    if (r == AUTHX_FAIL)
        FUZZ_CHECK(sqlstate && strlen(sqlstate) == 5 && msg[0]);
    if (r == AUTHX_OK)
        FUZZ_CHECK(cfg.auth_type == AUTH_TRUST || ax.phase == AUTHX_IDLE);
    auth_exchange_free(&ax);
    pkt_free(&b);
    return 0;
}
