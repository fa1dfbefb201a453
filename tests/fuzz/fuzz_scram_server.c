/*
 * Fuzz target: the server side of SCRAM-SHA-256 (scram_server_first,
 * scram_server_final), which reads what a client sends while logging in.
 *
 * Input: client-first-message FUZZ_SEP client-final-message. The secret is
 * RFC 7677's ("pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations) and
 * the server nonce is RFC 7677's too (through the test hook), so RFC 7677's
 * own messages log in. A client-final-message that ends in ",p=" gets the
 * proof a client knowing the password would send for it appended, so that
 * the fuzzer also reaches the success path with messages it made up.
 * Checks: the exchange succeeds exactly when the proof is right, and a
 * client-final-message replayed after the exchange is refused.
 */
#include "tests/fuzz/fuzz.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "proto/auth.h"

#define PASSWORD     "pencil"
#define SERVER_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"

static ScramSecret secret;
static uint8_t client_key[SCRAM_KEY_LEN];

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64_key(const uint8_t *k, char out[45])
{
    size_t o = 0;

    for (size_t i = 0; i < SCRAM_KEY_LEN; i += 3) {
        uint32_t v = (uint32_t)k[i] << 16 | (i + 1 < SCRAM_KEY_LEN ? (uint32_t)k[i + 1] << 8 : 0) |
                     (i + 2 < SCRAM_KEY_LEN ? k[i + 2] : 0);
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = i + 1 < SCRAM_KEY_LEN ? b64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < SCRAM_KEY_LEN ? b64[v & 63] : '=';
    }
    out[o] = '\0';
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const uint8_t salt[] = {0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e,
                                   0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81};
    uint8_t salted[SCRAM_KEY_LEN];
    unsigned int n;

    if (!scram_secret_from_password(PASSWORD, salt, sizeof(salt), 4096, &secret) ||
        PKCS5_PBKDF2_HMAC(PASSWORD, strlen(PASSWORD), salt, sizeof(salt), 4096, EVP_sha256(),
                          SCRAM_KEY_LEN, salted) != 1 ||
        !HMAC(EVP_sha256(), salted, SCRAM_KEY_LEN, (const uint8_t *)"Client Key", 10, client_key,
              &n))
        abort();
    return 0;
}

/* The client's proof for final (without ",p=..."): ClientKey XOR
 * HMAC(StoredKey, client-first-bare "," server-first "," final). */
static void proof_for(const ScramServer *s, const char *final, size_t len, char out[45])
{
    char auth[4 * SCRAM_MSG_MAX];
    uint8_t sig[SCRAM_KEY_LEN];
    unsigned int n;
    int alen;

    alen = snprintf(auth, sizeof(auth), "%s,%s,%.*s", s->client_first_bare, s->server_first,
                    (int)len, final);
    if (alen < 0 || (size_t)alen >= sizeof(auth) ||
        !HMAC(EVP_sha256(), secret.stored_key, SCRAM_KEY_LEN, (const uint8_t *)auth, (size_t)alen,
              sig, &n))
        abort();
    for (int i = 0; i < SCRAM_KEY_LEN; i++)
        sig[i] ^= client_key[i];
    b64_key(sig, out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzPart parts[2];
    ScramServer *s = calloc(1, sizeof(*s));
    char out[SCRAM_MSG_MAX];
    const char *err = NULL;
    char *first, *final;
    size_t final_len;
    bool fixed = false, ok;

    if (!s)
        abort();
    if (fuzz_split(data, size, parts, 2) < 2)
        parts[1].n = 0;
    first = (char *)fuzz_dup(parts[0].p, parts[0].n);
    memcpy(s->nonce, SERVER_NONCE, sizeof(SERVER_NONCE));
    if (!scram_server_first(s, &secret, first, parts[0].n, out, sizeof(out), &err)) {
        FUZZ_CHECK(err != NULL);
        goto out;
    }
    FUZZ_CHECK(strlen(out) < sizeof(out) && strncmp(out, "r=", 2) == 0);
    FUZZ_CHECK(strcmp(out, s->server_first) == 0);

    final_len = parts[1].n;
    if (final_len >= 3 && memcmp(parts[1].p + final_len - 3, ",p=", 3) == 0 &&
        final_len < SCRAM_MSG_MAX) {
        char proof[45];
        proof_for(s, (const char *)parts[1].p, final_len - 3, proof);
        final = malloc(final_len + 44);
        if (!final)
            abort();
        memcpy(final, parts[1].p, final_len);
        memcpy(final + final_len, proof, 44);
        final_len += 44;
        fixed = true;
    } else {
        final = (char *)fuzz_dup(parts[1].p, final_len);
    }
    err = NULL;
    ok = scram_server_final(s, final, final_len, out, sizeof(out), &err);
    if (ok) {
        FUZZ_CHECK(s->have_client_key && memcmp(s->client_key, client_key, SCRAM_KEY_LEN) == 0);
        FUZZ_CHECK(strncmp(out, "v=", 2) == 0 && strlen(out) == 46);
        /* the nonce is spent: the same answer again must not log in */
        FUZZ_CHECK(!scram_server_final(s, final, final_len, out, sizeof(out), &err));
    } else {
        /* with the right proof it may fail for anything but the proof */
        FUZZ_CHECK(err != NULL && !(fixed && strstr(err, "proof does not match")));
    }
    free(final);
out:
    free(first);
    free(s);
    return 0;
}
