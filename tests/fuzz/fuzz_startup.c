/*
 * Fuzz target: proto_parse_startup, the first packet a client sends
 * (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).
 *
 * Input: the packet body, i.e. what follows the length word. Checks that
 * every pointer handed back lies inside the body and is terminated there,
 * and that a StartupMessage rebuilt with pkt_startup parses back to the
 * same parameters. Also proto_utf8_error, which the proxy runs on every
 * parameter, against a table-driven reference (Unicode's Table 3-7), on the
 * parameters and on the whole input as a string.
 */
#include "tests/fuzz/fuzz.h"

#include "proto/msg.h"

/* The first byte of s not starting a well-formed UTF-8 sequence (Unicode
 * 15, Table 3-7), or NULL. */
static const char *utf8_reference(const char *s)
{
    const uint8_t *p = (const uint8_t *)s;

    while (*p) {
        uint8_t lo = 0x80, hi = 0xbf;
        int n;

        if (p[0] < 0x80) {
            p++;
            continue;
        }
        if (p[0] >= 0xc2 && p[0] <= 0xdf)
            n = 1;
        else if (p[0] >= 0xe0 && p[0] <= 0xef)
            n = 2;
        else if (p[0] >= 0xf0 && p[0] <= 0xf4)
            n = 3;
        else
            return (const char *)p;
        if (p[0] == 0xe0)
            lo = 0xa0;
        else if (p[0] == 0xed)
            hi = 0x9f;
        else if (p[0] == 0xf0)
            lo = 0x90;
        else if (p[0] == 0xf4)
            hi = 0x8f;
        if (p[1] < lo || p[1] > hi)
            return (const char *)p;
        for (int i = 2; i <= n; i++)
            if ((p[i] & 0xc0) != 0x80)
                return (const char *)p;
        p += n + 1;
    }
    return NULL;
}

static void check_utf8(const char *s)
{
    const char *got = proto_utf8_error(s), *want = utf8_reference(s);

    if (got != want)
        fprintf(stderr, "proto_utf8_error: offset %td, reference: offset %td\n", got ? got - s : -1,
                want ? want - s : -1);
    FUZZ_CHECK(got == want);
}

/* s is a NUL-terminated string that starts and ends inside body[0..len). */
static void check_inside(const uint8_t *body, size_t len, const char *s)
{
    const uint8_t *p = (const uint8_t *)s;

    FUZZ_CHECK(p >= body && p < body + len);
    FUZZ_CHECK(memchr(p, 0, len - (size_t)(p - body)) != NULL);
}

/* Rebuild the parameters as a StartupMessage and parse that. */
static void check_round_trip(const StartupPacket *sp)
{
    const char *kv[2 * PROTO_MAX_STARTUP_PARAMS + 2];
    StartupPacket again;
    PktBuf b;
    int n = 0;

    for (int i = 0; i < sp->nparams; i++) {
        kv[n++] = sp->params[i].name;
        kv[n++] = sp->params[i].value;
    }
    kv[n] = NULL;
    pkt_init(&b);
    pkt_startup(&b, kv);
    FUZZ_CHECK(!b.failed && b.len >= 8);
    FUZZ_CHECK(proto_parse_startup(b.data + 4, b.len - 4, &again) == NULL);
    FUZZ_CHECK(again.code == PROTO_V3 && again.nparams == sp->nparams);
    for (int i = 0; i < sp->nparams; i++) {
        FUZZ_CHECK(strcmp(again.params[i].name, sp->params[i].name) == 0);
        FUZZ_CHECK(strcmp(again.params[i].value, sp->params[i].value) == 0);
    }
    FUZZ_CHECK(strcmp(again.user, sp->user) == 0);
    FUZZ_CHECK(strcmp(again.database, sp->database) == 0);
    pkt_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *body = fuzz_dup(data, size);
    StartupPacket sp;
    const char *err = proto_parse_startup(body, size, &sp);

    if (err) {
        FUZZ_CHECK(strlen(err) > 0);
        goto out;
    }
    switch (sp.code) {
    case PROTO_CANCEL_REQUEST:
        FUZZ_CHECK(size == 12 && sp.nparams == 0);
        break;
    case PROTO_SSL_REQUEST:
    case PROTO_GSSENC_REQUEST:
        FUZZ_CHECK(size == 4 && sp.nparams == 0);
        break;
    default:
        FUZZ_CHECK((uint32_t)sp.code >> 16 == 3);
        FUZZ_CHECK(sp.nparams >= 1 && sp.nparams <= PROTO_MAX_STARTUP_PARAMS);
        FUZZ_CHECK(sp.user && sp.user[0] && sp.database && sp.database[0]);
        for (int i = 0; i < sp.nparams; i++) {
            check_inside(body, size, sp.params[i].name);
            check_inside(body, size, sp.params[i].value);
            FUZZ_CHECK(sp.params[i].name[0] != '\0');
            check_utf8(sp.params[i].name);
            check_utf8(sp.params[i].value);
        }
        check_inside(body, size, sp.user);
        check_inside(body, size, sp.database);
        check_round_trip(&sp);
        break;
    }
out:
    free(body);
    {
        char *all = fuzz_str(data, size);
        check_utf8(all);
        free(all);
    }
    return 0;
}
