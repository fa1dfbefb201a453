/*
 * Unit tests of the password maths: MD5 against a hash computed outside
 * this code, SCRAM-SHA-256 against RFC 7677's example and against a secret
 * that a real PostgreSQL 15 stored, and rejection of malformed input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "proto/auth.h"

#define OUT_LEN 1024

/* ---- MD5 ---------------------------------------------------------------- */

/* printf %s secretapp | md5sum */
#define MD5_SECRET_APP "md56a422f785c9e20873908ce25d1736ae2"
/* printf '6a422f785c9e20873908ce25d1736ae2\x01\x02\x03\x04' | md5sum */
#define MD5_SECRET_APP_SALTED "md5911f527656472583a006e7727877b33e"

static const uint8_t salt1234[4] = {1, 2, 3, 4};

static void test_md5_known_vector(void **state)
{
    char out[MD5_PASSWD_LEN + 1];

    md5_password_hash("secret", "app", out);
    assert_string_equal(out, MD5_SECRET_APP);
    /* SET password_encryption = 'md5'; CREATE ROLE m PASSWORD 'secret' (PostgreSQL 15) */
    md5_password_hash("secret", "m", out);
    assert_string_equal(out, "md5b52328d7451bfeace80c4b8c338106f9");
    md5_salted_response(MD5_SECRET_APP, salt1234, out);
    assert_string_equal(out, MD5_SECRET_APP_SALTED);
    /* Not a hash: no response is produced. */
    md5_salted_response("secret", salt1234, out);
    assert_string_equal(out, "");
}

static const struct {
    const char *name;
    const char *stored, *user;
    const uint8_t *salt;
    const char *response;
    bool ok;
} md5_verify_cases[] = {
    {"plain password", "secret", "app", salt1234, MD5_SECRET_APP_SALTED, true},
    {"stored md5 hash", MD5_SECRET_APP, "app", salt1234, MD5_SECRET_APP_SALTED, true},
    {"wrong password", "secreT", "app", salt1234, MD5_SECRET_APP_SALTED, false},
    {"wrong user", "secret", "apq", salt1234, MD5_SECRET_APP_SALTED, false},
    {"wrong salt", "secret", "app", (const uint8_t *)"\1\2\3\5", MD5_SECRET_APP_SALTED, false},
    {"truncated response", "secret", "app", salt1234, "md5911f527656472583a006e7727877b33", false},
    {"longer response", "secret", "app", salt1234, MD5_SECRET_APP_SALTED "0", false},
    {"upper-case response", "secret", "app", salt1234, "MD5911F527656472583A006E7727877B33E",
     false},
    {"empty response", "secret", "app", salt1234, "", false},
    {"unsalted hash as response", "secret", "app", salt1234, MD5_SECRET_APP, false},
};

static void test_md5_verify(void **state)
{
    for (size_t i = 0; i < sizeof(md5_verify_cases) / sizeof(md5_verify_cases[0]); i++) {
        bool ok = md5_verify(md5_verify_cases[i].stored, md5_verify_cases[i].user,
                             md5_verify_cases[i].salt, md5_verify_cases[i].response);

        if (ok != md5_verify_cases[i].ok)
            fail_msg("%s: got %d", md5_verify_cases[i].name, ok);
    }
}

static const struct {
    const char *s;
    bool ok;
} md5_hash_cases[] = {
    {MD5_SECRET_APP, true},
    {"md50123456789abcdef0123456789abcdef", true},
    {"md50123456789ABCDEF0123456789abcdef", false},
    {"md50123456789abcdef0123456789abcde", false},
    {"md50123456789abcdef0123456789abcdef0", false},
    {"md50123456789abcdeg0123456789abcdef", false},
    {"MD50123456789abcdef0123456789abcdef", false},
    {"xmd50123456789abcdef0123456789abcde", false},
    {"md5", false},
    {"", false},
    {"secret", false},
};

static void test_md5_is_hash(void **state)
{
    for (size_t i = 0; i < sizeof(md5_hash_cases) / sizeof(md5_hash_cases[0]); i++)
        if (md5_is_hash(md5_hash_cases[i].s) != md5_hash_cases[i].ok)
            fail_msg("md5_is_hash(\"%s\") != %d", md5_hash_cases[i].s, md5_hash_cases[i].ok);
}

/* ---- SCRAM: RFC 7677 section 3 ------------------------------------------ */

#define RFC_CLIENT_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_CLIENT_FIRST "n,,n=user,r=" RFC_CLIENT_NONCE
#define RFC_SERVER_FIRST "r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define RFC_PROOF        "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_CLIENT_FINAL "c=biws,r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",p=" RFC_PROOF
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
/* The same salt and keys in PostgreSQL's stored form, computed with Python's
 * hashlib/hmac from password "pencil". */
#define RFC_SECRET                                                                                 \
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"                                                 \
    "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="

static const uint8_t rfc_salt[16] = {91,  109, 153, 104, 157, 18, 53,  142,
                                     236, 160, 75,  20,  18,  54, 250, 129};
/* ClientKey of the RFC example (Python again). */
static const uint8_t rfc_client_key[32] = {
    0xa6, 0x0f, 0xc9, 0x23, 0xd6, 0x7e, 0x86, 0x44, 0xa9, 0x2d, 0x16, 0xb9, 0x6e, 0xda, 0x5e, 0xf4,
    0x65, 0x6b, 0x0c, 0x72, 0x5c, 0x48, 0x43, 0x74, 0xbe, 0x25, 0x53, 0x55, 0x76, 0x99, 0x6e, 0x8b};

static void test_scram_rfc7677_client(void **state)
{
    ScramClient c = {0};
    char out[OUT_LEN];
    const char *err = NULL;

    strcpy(c.client_nonce, RFC_CLIENT_NONCE);
    assert_true(scram_client_first_user(&c, "user", out, sizeof(out)));
    assert_string_equal(out, RFC_CLIENT_FIRST);
    assert_true(scram_client_final(&c, "pencil", RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                   sizeof(out), &err));
    assert_string_equal(out, RFC_CLIENT_FINAL);
    assert_true(scram_client_verify(&c, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL), &err));
}

static void test_scram_rfc7677_server(void **state)
{
    ScramServer s = {0};
    ScramSecret sec;
    char out[OUT_LEN];
    const char *err = NULL;

    assert_true(scram_secret_from_password("pencil", rfc_salt, sizeof(rfc_salt), 4096, &sec));
    strcpy(s.nonce, RFC_SERVER_NONCE);
    assert_true(scram_server_first(&s, &sec, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out,
                                   sizeof(out), &err));
    assert_string_equal(out, RFC_SERVER_FIRST);
    assert_true(
        scram_server_final(&s, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out, sizeof(out), &err));
    assert_string_equal(out, RFC_SERVER_FINAL);
    assert_true(s.have_client_key);
    assert_memory_equal(s.client_key, rfc_client_key, 32);
    /* The nonce is spent: a reused struct would draw a fresh one. */
    assert_string_equal(s.nonce, "");
}

/* The stored form parses to exactly what the password derives. */
static void test_scram_secret_rfc_form(void **state)
{
    ScramSecret parsed, derived;

    assert_true(scram_parse_secret(RFC_SECRET, &parsed));
    assert_true(scram_is_secret(RFC_SECRET));
    assert_true(scram_secret_from_password("pencil", rfc_salt, sizeof(rfc_salt), 4096, &derived));
    assert_int_equal(parsed.iterations, 4096);
    assert_int_equal(parsed.salt_len, 16);
    assert_memory_equal(parsed.salt, rfc_salt, 16);
    assert_memory_equal(parsed.stored_key, derived.stored_key, SCRAM_KEY_LEN);
    assert_memory_equal(parsed.server_key, derived.server_key, SCRAM_KEY_LEN);
}

/* Knowing a SCRAM secret must not let one answer an MD5 challenge. */
static void test_md5_verify_refuses_scram_secret(void **state)
{
    const char *secret = RFC_SECRET;
    char hash[MD5_PASSWD_LEN + 1], resp[MD5_PASSWD_LEN + 1];

    md5_password_hash(secret, "app", hash);
    md5_salted_response(hash, salt1234, resp);
    assert_int_equal(strlen(resp), MD5_PASSWD_LEN);
    assert_false(md5_verify(secret, "app", salt1234, resp));
}

/* ---- SCRAM: a secret made by PostgreSQL 15 ------------------------------- */

/* CREATE ROLE x PASSWORD 'pw' on PostgreSQL 15.x, read from pg_authid. */
#define PG15_SECRET                                                                                \
    "SCRAM-SHA-256$4096:vyetdgvZJ1utvj6x1pYBSw==$"                                                 \
    "kF/EMKojscC/8ic5GmeneH6gVdKrj3pVxvp4p+AzYmg=:CPdwVIw8C0kZc1BDsl91SUrEFS1m9rJGPN24u1Zcxvk="

static const uint8_t pg15_salt[16] = {0xbf, 0x27, 0xad, 0x76, 0x0b, 0xd9, 0x27, 0x5b,
                                      0xad, 0xbe, 0x3e, 0xb1, 0xd6, 0x96, 0x01, 0x4b};

static void test_scram_pg15_secret(void **state)
{
    ScramSecret parsed, derived;

    assert_true(scram_parse_secret(PG15_SECRET, &parsed));
    assert_int_equal(parsed.iterations, 4096);
    assert_int_equal(parsed.salt_len, sizeof(pg15_salt));
    assert_memory_equal(parsed.salt, pg15_salt, sizeof(pg15_salt));
    assert_true(scram_secret_from_password("pw", parsed.salt, parsed.salt_len, parsed.iterations,
                                           &derived));
    assert_memory_equal(parsed.stored_key, derived.stored_key, SCRAM_KEY_LEN);
    assert_memory_equal(parsed.server_key, derived.server_key, SCRAM_KEY_LEN);
    assert_true(scram_secret_from_password("pW", parsed.salt, parsed.salt_len, parsed.iterations,
                                           &derived));
    assert_memory_not_equal(parsed.stored_key, derived.stored_key, SCRAM_KEY_LEN);
}

/* Where an exchange between our client and our server stopped. */
typedef enum {
    EX_OK,
    EX_CLIENT_FIRST,
    EX_SERVER_FIRST,
    EX_CLIENT_FINAL,
    EX_SERVER_FINAL,
    EX_CLIENT_VERIFY,
} ExStage;

typedef enum { TAMPER_NONE, TAMPER_PROOF, TAMPER_SERVER_FINAL } Tamper;

/* Flip the last base64 digit before the padding of the message's proof or
 * signature, keeping it valid base64 of the same length. */
static void tamper_b64(char *msg)
{
    char *p = msg + strlen(msg) - 1;

    while (*p == '=')
        p--;
    *p = *p == 'A' ? 'E' : 'A';
}

static ExStage exchange(const ScramSecret *sec, const char *password, Tamper tamper,
                        const char **err)
{
    ScramClient c = {0};
    ScramServer s = {0};
    char a[OUT_LEN], b[OUT_LEN];

    *err = NULL;
    if (!scram_client_first(&c, a, sizeof(a)))
        return EX_CLIENT_FIRST;
    if (!scram_server_first(&s, sec, a, strlen(a), b, sizeof(b), err))
        return EX_SERVER_FIRST;
    if (!scram_client_final(&c, password, b, strlen(b), a, sizeof(a), err))
        return EX_CLIENT_FINAL;
    if (tamper == TAMPER_PROOF)
        tamper_b64(a);
    if (!scram_server_final(&s, a, strlen(a), b, sizeof(b), err))
        return EX_SERVER_FINAL;
    if (tamper == TAMPER_SERVER_FINAL)
        tamper_b64(b);
    if (!scram_client_verify(&c, b, strlen(b), err))
        return EX_CLIENT_VERIFY;
    return EX_OK;
}

static void test_scram_exchange_pg15(void **state)
{
    ScramSecret sec;
    const char *err;
    uint8_t h[SCRAM_KEY_LEN];
    unsigned int hlen = 0;
    ScramClient c = {0};
    ScramServer s = {0};
    char a[OUT_LEN], b[OUT_LEN];

    assert_true(scram_parse_secret(PG15_SECRET, &sec));
    assert_int_equal(exchange(&sec, "pw", TAMPER_NONE, &err), EX_OK);

    /* Step by step, to look at what the server recovered. */
    assert_true(scram_client_first(&c, a, sizeof(a)));
    assert_true(scram_server_first(&s, &sec, a, strlen(a), b, sizeof(b), &err));
    assert_true(scram_client_final(&c, "pw", b, strlen(b), a, sizeof(a), &err));
    assert_false(s.have_client_key);
    assert_true(scram_server_final(&s, a, strlen(a), b, sizeof(b), &err));
    assert_true(s.have_client_key);
    assert_true(EVP_Digest(s.client_key, SCRAM_KEY_LEN, h, &hlen, EVP_sha256(), NULL));
    assert_memory_equal(h, sec.stored_key, SCRAM_KEY_LEN);
    assert_true(scram_client_verify(&c, b, strlen(b), &err));
}

static void test_scram_wrong_password(void **state)
{
    ScramSecret sec;
    const char *err;

    assert_true(scram_parse_secret(PG15_SECRET, &sec));
    assert_int_equal(exchange(&sec, "pW", TAMPER_NONE, &err), EX_SERVER_FINAL);
    assert_non_null(strstr(err, "password authentication failed"));
    assert_int_equal(exchange(&sec, "", TAMPER_NONE, &err), EX_SERVER_FINAL);
}

static void test_scram_tampered(void **state)
{
    ScramSecret sec;
    const char *err;

    assert_true(scram_parse_secret(PG15_SECRET, &sec));
    assert_int_equal(exchange(&sec, "pw", TAMPER_PROOF, &err), EX_SERVER_FINAL);
    assert_non_null(strstr(err, "password authentication failed"));
    assert_int_equal(exchange(&sec, "pw", TAMPER_SERVER_FINAL, &err), EX_CLIENT_VERIFY);
    assert_non_null(strstr(err, "signature"));
}

/* A server whose secret is for another password is caught by the client. */
static void test_scram_client_catches_fake_server(void **state)
{
    ScramClient c = {0};
    ScramServer s = {0};
    ScramSecret real, fake;
    char a[OUT_LEN], b[OUT_LEN];
    const char *err;

    assert_true(scram_parse_secret(PG15_SECRET, &real));
    assert_true(scram_secret_from_password("other", real.salt, real.salt_len, 4096, &fake));
    /* It knows StoredKey (so the proof checks) but not ServerKey. */
    memcpy(fake.stored_key, real.stored_key, SCRAM_KEY_LEN);
    assert_true(scram_client_first(&c, a, sizeof(a)));
    assert_true(scram_server_first(&s, &fake, a, strlen(a), b, sizeof(b), &err));
    assert_true(scram_client_final(&c, "pw", b, strlen(b), a, sizeof(a), &err));
    assert_true(scram_server_final(&s, a, strlen(a), b, sizeof(b), &err));
    assert_false(scram_client_verify(&c, b, strlen(b), &err));
}

/* ---- SCRAM: the "y" channel-binding flag -------------------------------- */

/* Proof and server signature computed here with OpenSSL alone, as an
 * independent check of the server code. */
static void independent_proof(const char *password, const ScramSecret *sec, const char *auth,
                              char proof_b64[64], char sig_b64[64])
{
    uint8_t salted[32], ck[32], sk[32], stored[32], sig[32], proof[32], ssig[32];
    unsigned int n;

    assert_true(PKCS5_PBKDF2_HMAC(password, (int)strlen(password), sec->salt, (int)sec->salt_len,
                                  sec->iterations, EVP_sha256(), 32, salted));
    assert_non_null(HMAC(EVP_sha256(), salted, 32, (const uint8_t *)"Client Key", 10, ck, &n));
    assert_non_null(HMAC(EVP_sha256(), salted, 32, (const uint8_t *)"Server Key", 10, sk, &n));
    assert_true(EVP_Digest(ck, 32, stored, &n, EVP_sha256(), NULL));
    assert_non_null(HMAC(EVP_sha256(), stored, 32, (const uint8_t *)auth, strlen(auth), sig, &n));
    for (int i = 0; i < 32; i++)
        proof[i] = ck[i] ^ sig[i];
    assert_non_null(HMAC(EVP_sha256(), sk, 32, (const uint8_t *)auth, strlen(auth), ssig, &n));
    assert_int_equal(EVP_EncodeBlock((uint8_t *)proof_b64, proof, 32), 44);
    assert_int_equal(EVP_EncodeBlock((uint8_t *)sig_b64, ssig, 32), 44);
}

static void test_scram_server_accepts_y_flag(void **state)
{
    static const uint8_t salt[8] = "saltsalt";
    ScramServer s = {0};
    ScramSecret sec;
    char sf[OUT_LEN], cf[OUT_LEN], auth[3 * OUT_LEN], out[OUT_LEN], proof[64], sig[64];
    const char *err;

    assert_true(scram_secret_from_password("pw", salt, sizeof(salt), 2, &sec));
    strcpy(s.nonce, "SRV");
    assert_true(scram_server_first(&s, &sec, "y,,n=,r=cli", 11, sf, sizeof(sf), &err));
    assert_string_equal(sf, "r=cliSRV,s=c2FsdHNhbHQ=,i=2");
    snprintf(auth, sizeof(auth), "n=,r=cli,%s,c=eSws,r=cliSRV", sf);
    independent_proof("pw", &sec, auth, proof, sig);
    snprintf(cf, sizeof(cf), "c=eSws,r=cliSRV,p=%s", proof);
    assert_true(scram_server_final(&s, cf, strlen(cf), out, sizeof(out), &err));
    assert_string_equal(out + 2, sig);
    assert_memory_equal(out, "v=", 2);

    /* c=biws claims "n,," though the client said "y,,": refused. */
    memset(&s, 0, sizeof(s));
    strcpy(s.nonce, "SRV");
    assert_true(scram_server_first(&s, &sec, "y,,n=,r=cli", 11, sf, sizeof(sf), &err));
    snprintf(auth, sizeof(auth), "n=,r=cli,%s,c=biws,r=cliSRV", sf);
    independent_proof("pw", &sec, auth, proof, sig);
    snprintf(cf, sizeof(cf), "c=biws,r=cliSRV,p=%s", proof);
    assert_false(scram_server_final(&s, cf, strlen(cf), out, sizeof(out), &err));
    assert_non_null(strstr(err, "channel-binding"));
}

/* ---- SCRAM: malformed input --------------------------------------------- */

#define MSG(s) s, sizeof(s) - 1
#define PROOF0 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

/* A message of n copies of c, NUL-terminated; caller frees. */
static char *huge(size_t n, char c)
{
    char *p = malloc(n + 1);

    assert_non_null(p);
    memset(p, c, n);
    memcpy(p, "n,,n=,r=", 8);
    p[n] = '\0';
    return p;
}

static const struct {
    const char *name;
    const char *msg;
    size_t len;
    const char *err; /* substring; NULL: accepted */
} client_first_cases[] = {
    {"plain", MSG("n,,n=,r=abc"), NULL},
    {"user name ignored", MSG("n,,n=someone,r=abc"), NULL},
    {"extension after nonce", MSG("n,,n=,r=abc,x=whatever"), NULL},
    {"y flag", MSG("y,,n=,r=abc"), NULL},
    {"empty", MSG(""), "channel-binding flag"},
    {"channel binding", MSG("p=tls-server-end-point,,n=,r=abc"), "channel binding"},
    {"unknown flag", MSG("x,,n=,r=abc"), "channel-binding flag"},
    {"flag without comma", MSG("n"), "channel-binding flag"},
    {"authzid", MSG("n,a=bob,n=,r=abc"), "authorization identity"},
    {"short gs2 header", MSG("n,n=,r=abc"), "gs2 header"},
    {"mandatory extension", MSG("n,,m=ext,n=,r=abc"), "mandatory"},
    {"missing user attribute", MSG("n,,r=abc"), "expected n="},
    {"missing nonce", MSG("n,,n="), "expected n="},
    {"attributes swapped", MSG("n,,r=abc,n="), "expected n="},
    {"trailing comma", MSG("n,,n=,r=abc,"), "expected n="},
    {"bad extension", MSG("n,,n=,r=abc,x"), "expected n="},
    {"empty nonce", MSG("n,,n=,r="), "invalid nonce"},
    {"nonce control char", MSG("n,,n=,r=ab\x7f"), "invalid nonce"},
    {"nonce space", MSG("n,,n=,r=a c"), "invalid nonce"},
    {"embedded NUL", MSG("n,,n=,r=abc\0def"), "NUL"},
    {"nonce too long for the state",
     MSG("n,,n=,r="
         "0123456789012345678901234567890123456789012345678901234567890123456789"
         "0123456789012345678901234567890123456789"),
     "too long"},
};

static void test_scram_malformed_client_first(void **state)
{
    ScramSecret sec;
    char out[OUT_LEN];
    char *big;

    assert_true(scram_parse_secret(PG15_SECRET, &sec));
    for (size_t i = 0; i < sizeof(client_first_cases) / sizeof(client_first_cases[0]); i++) {
        ScramServer s = {0};
        const char *err = NULL;
        bool ok = scram_server_first(&s, &sec, client_first_cases[i].msg, client_first_cases[i].len,
                                     out, sizeof(out), &err);

        if (!client_first_cases[i].err) {
            if (!ok)
                fail_msg("%s: refused: %s", client_first_cases[i].name, err);
            continue;
        }
        if (ok || !err || !strstr(err, client_first_cases[i].err))
            fail_msg("%s: ok=%d err \"%s\", want \"%s\"", client_first_cases[i].name, ok,
                     err ? err : "(none)", client_first_cases[i].err);
        if (s.nonce[0] != '\0')
            fail_msg("%s: nonce left behind", client_first_cases[i].name);
    }

    /* Bigger than any SCRAM message, and well past it. */
    for (size_t n = SCRAM_MSG_MAX; n <= 1 << 20; n *= 32) {
        ScramServer s = {0};
        const char *err = NULL;

        big = huge(n, 'a');
        assert_false(scram_server_first(&s, &sec, big, n, out, sizeof(out), &err));
        assert_non_null(strstr(err, "too long"));
        free(big);
    }
}

/* Server state after "n,,n=,r=abc" with our half of the nonce preset to XYZ. */
static void server_after_first(ScramServer *s, const ScramSecret *sec)
{
    char out[OUT_LEN];
    const char *err = NULL;

    memset(s, 0, sizeof(*s));
    strcpy(s->nonce, "XYZ");
    assert_true(scram_server_first(s, sec, MSG("n,,n=,r=abc"), out, sizeof(out), &err));
    assert_string_equal(out, "r=abcXYZ,s=vyetdgvZJ1utvj6x1pYBSw==,i=4096");
}

static const struct {
    const char *name;
    const char *msg;
    size_t len;
    const char *err;
} client_final_cases[] = {
    {"zero proof", MSG("c=biws,r=abcXYZ,p=" PROOF0), "password authentication failed"},
    {"extension before proof", MSG("c=biws,r=abcXYZ,x=1,p=" PROOF0),
     "password authentication failed"},
    {"empty", MSG(""), "expected c="},
    {"missing c", MSG("r=abcXYZ,p=" PROOF0), "expected c="},
    {"missing r", MSG("c=biws,p=" PROOF0), "expected c="},
    {"missing proof", MSG("c=biws,r=abcXYZ"), "proof missing"},
    {"proof not last", MSG("c=biws,r=abcXYZ,p=" PROOF0 ",x=1"), "not last"},
    {"trailing comma", MSG("c=biws,r=abcXYZ,p=" PROOF0 ","), "not last"},
    {"bad attribute", MSG("c=biws,r=abcXYZ,=1,p=" PROOF0), "bad attribute"},
    {"nonce mismatch", MSG("c=biws,r=abcXYQ,p=" PROOF0), "nonce mismatch"},
    {"client nonce only", MSG("c=biws,r=abc,p=" PROOF0), "nonce mismatch"},
    {"nonce with extra", MSG("c=biws,r=abcXYZZ,p=" PROOF0), "nonce mismatch"},
    {"y binding after n", MSG("c=eSws,r=abcXYZ,p=" PROOF0), "channel-binding"},
    {"p binding data", MSG("c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=abcXYZ,p=" PROOF0),
     "channel-binding"},
    {"binding bad base64", MSG("c=biw,r=abcXYZ,p=" PROOF0), "channel-binding"},
    {"proof bad base64", MSG("c=biws,r=abcXYZ,p=!!!!"), "malformed SCRAM proof"},
    {"proof short", MSG("c=biws,r=abcXYZ,p=AAAA"), "malformed SCRAM proof"},
    {"proof long", MSG("c=biws,r=abcXYZ,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
     "malformed SCRAM proof"},
    {"proof unpadded", MSG("c=biws,r=abcXYZ,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
     "malformed SCRAM proof"},
    {"proof non-canonical", MSG("c=biws,r=abcXYZ,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB="),
     "malformed SCRAM proof"},
    {"proof empty", MSG("c=biws,r=abcXYZ,p="), "malformed SCRAM proof"},
    {"embedded NUL", MSG("c=biws,r=abcXYZ\0,p=" PROOF0), "NUL"},
};

static void test_scram_malformed_client_final(void **state)
{
    ScramSecret sec;
    ScramServer s;
    char out[OUT_LEN];
    const char *err;
    char *big;

    assert_true(scram_parse_secret(PG15_SECRET, &sec));
    for (size_t i = 0; i < sizeof(client_final_cases) / sizeof(client_final_cases[0]); i++) {
        bool ok;

        server_after_first(&s, &sec);
        err = NULL;
        ok = scram_server_final(&s, client_final_cases[i].msg, client_final_cases[i].len, out,
                                sizeof(out), &err);
        if (ok || !err || !strstr(err, client_final_cases[i].err))
            fail_msg("%s: ok=%d err \"%s\", want \"%s\"", client_final_cases[i].name, ok,
                     err ? err : "(none)", client_final_cases[i].err);
        if (s.have_client_key)
            fail_msg("%s: client key recorded on failure", client_final_cases[i].name);
    }

    server_after_first(&s, &sec);
    big = huge(SCRAM_MSG_MAX, 'A');
    assert_false(scram_server_final(&s, big, SCRAM_MSG_MAX, out, sizeof(out), &err));
    assert_non_null(strstr(err, "too long"));
    free(big);

    /* Out of order: no client-first-message yet, or the exchange is over. */
    memset(&s, 0, sizeof(s));
    assert_false(scram_server_final(&s, MSG("c=biws,r=abcXYZ,p=" PROOF0), out, sizeof(out), &err));
    assert_non_null(strstr(err, "before"));
    server_after_first(&s, &sec);
    assert_false(scram_server_final(&s, MSG("c=biws,r=abcXYZ,p=" PROOF0), out, sizeof(out), &err));
    assert_false(scram_server_final(&s, MSG("c=biws,r=abcXYZ,p=" PROOF0), out, sizeof(out), &err));
    assert_non_null(strstr(err, "before"));
}

static void test_scram_server_buffers(void **state)
{
    ScramSecret sec;
    ScramServer s = {0};
    char out[OUT_LEN];
    const char *err = NULL;

    assert_true(scram_parse_secret(PG15_SECRET, &sec));
    /* "r=abc" + 32 nonce chars + ",s=" + 24 + ",i=4096" does not fit 40 bytes. */
    assert_false(scram_server_first(&s, &sec, MSG("n,,n=,r=abc"), out, 40, &err));
    assert_non_null(strstr(err, "too small"));

    sec.iterations = 0;
    assert_false(scram_server_first(&s, &sec, MSG("n,,n=,r=abc"), out, sizeof(out), &err));
    assert_non_null(strstr(err, "invalid SCRAM secret"));

    /* A preset nonce must be printable without commas. */
    assert_true(scram_parse_secret(PG15_SECRET, &sec));
    strcpy(s.nonce, "X,Y");
    assert_false(scram_server_first(&s, &sec, MSG("n,,n=,r=abc"), out, sizeof(out), &err));
    assert_non_null(strstr(err, "preset"));
}

/* Random nonces: well formed, and different each time. */
static void test_scram_random_nonces(void **state)
{
    ScramSecret sec;
    ScramClient c1 = {0}, c2 = {0};
    ScramServer s1 = {0}, s2 = {0};
    char a[OUT_LEN], b[OUT_LEN];
    const char *err;

    assert_true(scram_parse_secret(PG15_SECRET, &sec));
    assert_true(scram_client_first(&c1, a, sizeof(a)));
    assert_true(scram_client_first(&c2, b, sizeof(b)));
    assert_int_equal(strlen(a), strlen("n,,n=,r=") + 32);
    assert_memory_equal(a, "n,,n=,r=", 8);
    assert_string_not_equal(a, b);
    assert_int_equal(strcspn(a + 8, ", \t"), 32);

    assert_true(scram_server_first(&s1, &sec, MSG("n,,n=,r=abc"), a, sizeof(a), &err));
    assert_true(scram_server_first(&s2, &sec, MSG("n,,n=,r=abc"), b, sizeof(b), &err));
    assert_int_equal(strlen(s1.nonce), 3 + 32);
    assert_memory_equal(s1.nonce, "abc", 3);
    assert_string_not_equal(s1.nonce, s2.nonce);
}

static void test_scram_client_user_escaping(void **state)
{
    ScramClient c = {0};
    char out[OUT_LEN];

    strcpy(c.client_nonce, "N");
    assert_true(scram_client_first_user(&c, "a,b=c", out, sizeof(out)));
    assert_string_equal(out, "n,,n=a=2Cb=3Dc,r=N");
    assert_string_equal(c.client_first_bare, "n=a=2Cb=3Dc,r=N");

    memset(&c, 0, sizeof(c));
    strcpy(c.client_nonce, "N N");
    assert_false(scram_client_first(&c, out, sizeof(out)));

    memset(&c, 0, sizeof(c));
    strcpy(c.client_nonce, "N");
    assert_false(scram_client_first(&c, out, 8));
}

static const struct {
    const char *name;
    const char *msg;
    size_t len;
    const char *err; /* NULL: accepted */
} server_first_cases[] = {
    {"plain", MSG("r=abcXYZ,s=c2FsdA==,i=1"), NULL},
    {"extension", MSG("r=abcXYZ,s=c2FsdA==,i=1,x=y"), NULL},
    {"empty", MSG(""), "expected r="},
    {"missing salt", MSG("r=abcXYZ,i=4096"), "expected r="},
    {"missing iterations", MSG("r=abcXYZ,s=c2FsdA=="), "expected r="},
    {"order swapped", MSG("s=c2FsdA==,r=abcXYZ,i=4096"), "expected r="},
    {"trailing comma", MSG("r=abcXYZ,s=c2FsdA==,i=1,"), "expected r="},
    {"mandatory extension", MSG("m=x,r=abcXYZ,s=c2FsdA==,i=1"), "mandatory"},
    {"iteration 0", MSG("r=abcXYZ,s=c2FsdA==,i=0"), "iteration"},
    {"iteration negative", MSG("r=abcXYZ,s=c2FsdA==,i=-1"), "iteration"},
    {"iteration plus", MSG("r=abcXYZ,s=c2FsdA==,i=+1"), "iteration"},
    {"iteration 2^31", MSG("r=abcXYZ,s=c2FsdA==,i=2147483648"), "iteration"},
    /* computed on the event loop: INT_MAX took minutes (found by fuzz_scram_client) */
    {"iteration INT_MAX", MSG("r=abcXYZ,s=c2FsdA==,i=2147483647"), "iteration"},
    {"iteration over the bound", MSG("r=abcXYZ,s=c2FsdA==,i=1000001"), "iteration"},
    {"iteration huge", MSG("r=abcXYZ,s=c2FsdA==,i=99999999999999999999"), "iteration"},
    {"iteration text", MSG("r=abcXYZ,s=c2FsdA==,i=4k"), "iteration"},
    {"iteration empty", MSG("r=abcXYZ,s=c2FsdA==,i="), "iteration"},
    {"salt bad base64", MSG("r=abcXYZ,s=c2Fsd,i=1"), "salt"},
    {"salt bad char", MSG("r=abcXYZ,s=c2F*dA==,i=1"), "salt"},
    {"salt empty", MSG("r=abcXYZ,s=,i=1"), "salt"},
    {"salt too long",
     MSG("r=abcXYZ,s=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
         "AAAAAAAAAAAAAAAA,i=1"),
     "salt"},
    {"nonce not ours", MSG("r=abdXYZ,s=c2FsdA==,i=1"), "nonce mismatch"},
    {"nonce not extended", MSG("r=abc,s=c2FsdA==,i=1"), "nonce mismatch"},
    {"nonce truncated", MSG("r=ab,s=c2FsdA==,i=1"), "nonce mismatch"},
    {"nonce control char", MSG("r=abc\x01,s=c2FsdA==,i=1"), "nonce mismatch"},
    {"embedded NUL", MSG("r=abcXYZ,s=c2FsdA==,i=1\0"), "NUL"},
};

static void test_scram_malformed_server_first(void **state)
{
    char out[OUT_LEN];
    char *big;

    for (size_t i = 0; i < sizeof(server_first_cases) / sizeof(server_first_cases[0]); i++) {
        ScramClient c = {0};
        const char *err = NULL;
        bool ok;

        strcpy(c.client_nonce, "abc");
        assert_true(scram_client_first(&c, out, sizeof(out)));
        ok = scram_client_final(&c, "pw", server_first_cases[i].msg, server_first_cases[i].len, out,
                                sizeof(out), &err);
        if (!server_first_cases[i].err) {
            if (!ok)
                fail_msg("%s: refused: %s", server_first_cases[i].name, err);
            continue;
        }
        if (ok || !err || !strstr(err, server_first_cases[i].err))
            fail_msg("%s: ok=%d err \"%s\", want \"%s\"", server_first_cases[i].name, ok,
                     err ? err : "(none)", server_first_cases[i].err);
    }

    for (size_t n = SCRAM_MSG_MAX; n <= 1 << 20; n *= 32) {
        ScramClient c = {0};
        const char *err = NULL;

        assert_true(scram_client_first(&c, out, sizeof(out)));
        big = huge(n, 'r');
        assert_false(scram_client_final(&c, "pw", big, n, out, sizeof(out), &err));
        assert_non_null(strstr(err, "too long"));
        free(big);
    }

    {
        ScramClient c = {0};
        const char *err = NULL;

        assert_false(
            scram_client_final(&c, "pw", MSG("r=abcXYZ,s=c2FsdA==,i=1"), out, sizeof(out), &err));
        assert_non_null(strstr(err, "before"));
    }
}

static const struct {
    const char *name;
    const char *msg;
    size_t len;
    const char *err;
} server_final_cases[] = {
    {"server error", MSG("e=invalid-proof"), "rejected"},
    {"empty", MSG(""), "malformed"},
    {"empty signature", MSG("v="), "malformed"},
    {"short signature", MSG("v=AAAA"), "malformed"},
    {"bad base64", MSG("v=!!!!"), "malformed"},
    {"unknown attribute", MSG("x=1"), "malformed"},
    {"trailing comma", MSG("v=" PROOF0 ","), "malformed"},
    {"wrong signature", MSG("v=" PROOF0), "signature"},
    {"embedded NUL", MSG("v=" PROOF0 "\0"), "NUL"},
};

/* Client state that has sent its final message to a server for "pw". */
static void client_after_final(ScramClient *c, const ScramSecret *sec)
{
    ScramServer s = {0};
    char a[OUT_LEN], b[OUT_LEN];
    const char *err;

    memset(c, 0, sizeof(*c));
    assert_true(scram_client_first(c, a, sizeof(a)));
    assert_true(scram_server_first(&s, sec, a, strlen(a), b, sizeof(b), &err));
    assert_true(scram_client_final(c, "pw", b, strlen(b), a, sizeof(a), &err));
}

static void test_scram_malformed_server_final(void **state)
{
    static const uint8_t salt[4] = "salt";
    ScramSecret sec;
    ScramClient c;
    const char *err;
    char *big;

    assert_true(scram_secret_from_password("pw", salt, sizeof(salt), 1, &sec));
    for (size_t i = 0; i < sizeof(server_final_cases) / sizeof(server_final_cases[0]); i++) {
        bool ok;

        client_after_final(&c, &sec);
        err = NULL;
        ok = scram_client_verify(&c, server_final_cases[i].msg, server_final_cases[i].len, &err);
        if (ok || !err || !strstr(err, server_final_cases[i].err))
            fail_msg("%s: ok=%d err \"%s\", want \"%s\"", server_final_cases[i].name, ok,
                     err ? err : "(none)", server_final_cases[i].err);
    }

    client_after_final(&c, &sec);
    big = huge(4 * SCRAM_MSG_MAX, 'v');
    assert_false(scram_client_verify(&c, big, 4 * SCRAM_MSG_MAX, &err));
    assert_non_null(strstr(err, "too long"));
    free(big);

    /* Verifying twice is refused: the first call ended the exchange. */
    assert_false(scram_client_verify(&c, MSG("v=" PROOF0), &err));
    assert_non_null(strstr(err, "before"));
}

/* ---- SCRAM secrets ------------------------------------------------------ */

#define SALT_B64   "W22ZaJ0SNY7soEsUEjb6gQ=="
#define STORED_B64 "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
#define SERVER_B64 "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="

static const struct {
    const char *name;
    const char *s;
} bad_secrets[] = {
    {"empty", ""},
    {"md5 hash", MD5_SECRET_APP},
    {"plain password", "pencil"},
    {"other algorithm", "SCRAM-SHA-1$4096:" SALT_B64 "$" STORED_B64 ":" SERVER_B64},
    {"lower-case prefix", "scram-sha-256$4096:" SALT_B64 "$" STORED_B64 ":" SERVER_B64},
    {"iterations 0", "SCRAM-SHA-256$0:" SALT_B64 "$" STORED_B64 ":" SERVER_B64},
    {"iterations empty", "SCRAM-SHA-256$:" SALT_B64 "$" STORED_B64 ":" SERVER_B64},
    {"iterations negative", "SCRAM-SHA-256$-1:" SALT_B64 "$" STORED_B64 ":" SERVER_B64},
    {"iterations text", "SCRAM-SHA-256$4096x:" SALT_B64 "$" STORED_B64 ":" SERVER_B64},
    {"iterations overflow", "SCRAM-SHA-256$9999999999:" SALT_B64 "$" STORED_B64 ":" SERVER_B64},
    {"salt empty", "SCRAM-SHA-256$4096:$" STORED_B64 ":" SERVER_B64},
    {"salt unpadded", "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ$" STORED_B64 ":" SERVER_B64},
    {"salt non-canonical",
     "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gR==$" STORED_B64 ":" SERVER_B64},
    {"salt with space", "SCRAM-SHA-256$4096:W22ZaJ0S NY7soEsUEjb6gQ==$" STORED_B64 ":" SERVER_B64},
    {"salt padding inside",
     "SCRAM-SHA-256$4096:W22=aJ0SNY7soEsUEjb6gQ==$" STORED_B64 ":" SERVER_B64},
    {"stored key short", "SCRAM-SHA-256$4096:" SALT_B64 "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT"
                         ":" SERVER_B64},
    {"stored key long", "SCRAM-SHA-256$4096:" SALT_B64 "$" STORED_B64 "AAAA:" SERVER_B64},
    {"server key missing", "SCRAM-SHA-256$4096:" SALT_B64 "$" STORED_B64},
    {"server key empty", "SCRAM-SHA-256$4096:" SALT_B64 "$" STORED_B64 ":"},
    {"extra field", "SCRAM-SHA-256$4096:" SALT_B64 "$" STORED_B64 ":" SERVER_B64 ":x"},
    {"trailing newline", "SCRAM-SHA-256$4096:" SALT_B64 "$" STORED_B64 ":" SERVER_B64 "\n"},
    {"keys swapped separators", "SCRAM-SHA-256$4096$" SALT_B64 ":" STORED_B64 ":" SERVER_B64},
};

static void test_scram_parse_secret_malformed(void **state)
{
    ScramSecret sec;

    for (size_t i = 0; i < sizeof(bad_secrets) / sizeof(bad_secrets[0]); i++) {
        memset(&sec, 0x55, sizeof(sec));
        if (scram_parse_secret(bad_secrets[i].s, &sec) || scram_is_secret(bad_secrets[i].s))
            fail_msg("%s: accepted", bad_secrets[i].name);
        if (sec.iterations != 0 || sec.salt_len != 0)
            fail_msg("%s: output not cleared", bad_secrets[i].name);
    }
    /* The unmodified secret they were all made from is fine. */
    assert_true(scram_is_secret("SCRAM-SHA-256$4096:" SALT_B64 "$" STORED_B64 ":" SERVER_B64));
}

static void test_scram_secret_from_password_args(void **state)
{
    static const uint8_t salt[SCRAM_MAX_SALT + 1] = {0};
    ScramSecret sec;

    assert_false(scram_secret_from_password("pw", salt, 0, 4096, &sec));
    assert_false(scram_secret_from_password("pw", salt, SCRAM_MAX_SALT + 1, 4096, &sec));
    assert_false(scram_secret_from_password("pw", salt, 16, 0, &sec));
    assert_true(scram_secret_from_password("pw", salt, SCRAM_MAX_SALT, 1, &sec));
    assert_int_equal(sec.salt_len, SCRAM_MAX_SALT);
    assert_int_equal(sec.iterations, 1);
}

static void test_auth_random(void **state)
{
    uint8_t a[32] = {0}, b[32] = {0};

    assert_true(auth_random(a, sizeof(a)));
    assert_true(auth_random(b, sizeof(b)));
    assert_memory_not_equal(a, b, sizeof(a));
    assert_true(auth_random(a, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_md5_known_vector),
        cmocka_unit_test(test_md5_verify),
        cmocka_unit_test(test_md5_verify_refuses_scram_secret),
        cmocka_unit_test(test_md5_is_hash),
        cmocka_unit_test(test_scram_rfc7677_client),
        cmocka_unit_test(test_scram_rfc7677_server),
        cmocka_unit_test(test_scram_secret_rfc_form),
        cmocka_unit_test(test_scram_pg15_secret),
        cmocka_unit_test(test_scram_exchange_pg15),
        cmocka_unit_test(test_scram_wrong_password),
        cmocka_unit_test(test_scram_tampered),
        cmocka_unit_test(test_scram_client_catches_fake_server),
        cmocka_unit_test(test_scram_server_accepts_y_flag),
        cmocka_unit_test(test_scram_malformed_client_first),
        cmocka_unit_test(test_scram_malformed_client_final),
        cmocka_unit_test(test_scram_server_buffers),
        cmocka_unit_test(test_scram_random_nonces),
        cmocka_unit_test(test_scram_client_user_escaping),
        cmocka_unit_test(test_scram_malformed_server_first),
        cmocka_unit_test(test_scram_malformed_server_final),
        cmocka_unit_test(test_scram_parse_secret_malformed),
        cmocka_unit_test(test_scram_secret_from_password_args),
        cmocka_unit_test(test_auth_random),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
