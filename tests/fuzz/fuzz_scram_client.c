/*
 * Fuzz target: the client side of SCRAM-SHA-256 (scram_client_first_user,
 * scram_client_final, scram_client_verify), which reads what PostgreSQL
 * sends while the proxy logs in to it, and both sides against each other.
 *
 * Input: one mode byte, then parts cut at FUZZ_SEP.
 *  - mode even: user FUZZ_SEP server-first-message FUZZ_SEP
 *    server-final-message, with RFC 7677's client nonce and password
 *    ("pencil"), so RFC 7677's own exchange verifies.
 *  - mode odd: user FUZZ_SEP password FUZZ_SEP client nonce FUZZ_SEP server
 *    nonce FUZZ_SEP salt; the proxy's client and server run a whole
 *    exchange with these (1 to 4 iterations), which must succeed on both
 *    sides whenever the nonces are acceptable.
 */
#include "tests/fuzz/fuzz.h"

#include "proto/auth.h"

#define RFC_CLIENT_NONCE "rOprNGfwEbeRWgbNEkqO"

static void run_raw(FuzzPart *p, int n)
{
    ScramClient c;
    char out[SCRAM_MSG_MAX], *user = fuzz_str(p[0].p, p[0].n), *msg;
    const char *err = NULL;

    memset(&c, 0, sizeof(c));
    memcpy(c.client_nonce, RFC_CLIENT_NONCE, sizeof(RFC_CLIENT_NONCE));
    if (!scram_client_first_user(&c, user, out, sizeof(out)) || n < 2)
        goto out;
    FUZZ_CHECK(strncmp(out, "n,,n=", 5) == 0);
    msg = (char *)fuzz_dup(p[1].p, p[1].n);
    if (!scram_client_final(&c, "pencil", msg, p[1].n, out, sizeof(out), &err)) {
        FUZZ_CHECK(err != NULL && c.auth_message[0] == '\0');
        free(msg);
        goto out;
    }
    free(msg);
    FUZZ_CHECK(strncmp(out, "c=biws,r=", 9) == 0 && strstr(out, ",p="));
    if (n >= 3) {
        msg = (char *)fuzz_dup(p[2].p, p[2].n);
        if (!scram_client_verify(&c, msg, p[2].n, &err))
            FUZZ_CHECK(err != NULL);
        free(msg);
        FUZZ_CHECK(c.auth_message[0] == '\0');
    }
out:
    free(user);
}

/* A preset nonce must be printable and without ','; keep what fits. */
static bool nonce_ok(const char *s, size_t cap)
{
    size_t n = strlen(s);

    if (n == 0 || n >= cap)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7e || s[i] == ',')
            return false;
    return true;
}

static void run_round_trip(int iterations, FuzzPart *p, int n)
{
    char *user, *password, *cnonce, *snonce;
    char c1[SCRAM_MSG_MAX], s1[SCRAM_MSG_MAX], c2[SCRAM_MSG_MAX], s2[SCRAM_MSG_MAX];
    const char *err = NULL;
    ScramClient *c;
    ScramServer *s;
    ScramSecret sec;
    bool ok;

    if (n < 5)
        return;
    user = fuzz_str(p[0].p, p[0].n);
    password = fuzz_str(p[1].p, p[1].n);
    cnonce = fuzz_str(p[2].p, p[2].n);
    snonce = fuzz_str(p[3].p, p[3].n);
    c = calloc(1, sizeof(*c));
    s = calloc(1, sizeof(*s));
    if (!c || !s)
        abort();
    if (p[4].n == 0 || p[4].n > SCRAM_MAX_SALT || !nonce_ok(cnonce, sizeof(c->client_nonce)) ||
        !nonce_ok(snonce, sizeof(s->nonce)))
        goto out;
    FUZZ_CHECK(scram_secret_from_password(password, p[4].p, p[4].n, iterations, &sec));
    strcpy(c->client_nonce, cnonce);
    strcpy(s->nonce, snonce);
    if (!scram_client_first_user(c, user, c1, sizeof(c1)))
        goto out; /* user name too long */
    if (!scram_server_first(s, &sec, c1, strlen(c1), s1, sizeof(s1), &err)) {
        /* only a combined nonce too long for the server may fail here */
        FUZZ_CHECK(strstr(err, "too long") != NULL);
        goto out;
    }
    ok = scram_client_final(c, password, s1, strlen(s1), c2, sizeof(c2), &err);
    if (!ok) {
        FUZZ_CHECK(strstr(err, "too long") != NULL);
        goto out;
    }
    ok = scram_server_final(s, c2, strlen(c2), s2, sizeof(s2), &err);
    if (!ok)
        fprintf(stderr, "server refused: %s\n", err);
    FUZZ_CHECK(ok);
    FUZZ_CHECK(s->have_client_key);
    ok = scram_client_verify(c, s2, strlen(s2), &err);
    if (!ok)
        fprintf(stderr, "client refused: %s\n", err);
    FUZZ_CHECK(ok);
out:
    free(c);
    free(s);
    free(user);
    free(password);
    free(cnonce);
    free(snonce);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzPart parts[5];
    int n;

    if (size < 1)
        return 0;
    n = fuzz_split(data + 1, size - 1, parts, 5);
    if (data[0] & 1)
        run_round_trip(1 + (data[0] >> 1) % 4, parts, n);
    else
        run_raw(parts, n);
    return 0;
}
