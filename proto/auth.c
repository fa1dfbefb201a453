/*
 * Password maths for MD5 and SCRAM-SHA-256 (RFC 5802/7677), both ends.
 *
 * Everything works on caller-owned buffers and returns a checked result:
 * peer input is copied into a bounded, NUL-terminated scratch buffer before
 * it is parsed, and every base64 field is decoded strictly. Secrets are
 * compared in constant time and scratch keys wiped after use.
 */
#include "proto/auth.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define SCRAM_PREFIX "SCRAM-SHA-256$"
/* base64 of one SCRAM key with its padding, plus NUL */
#define B64_KEY_LEN 45

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* ---- base64 ------------------------------------------------------------- */

/* Padded base64 of src into dst (NUL-terminated); false if dst is too small. */
static bool b64_encode(const uint8_t *src, size_t len, char *dst, size_t cap)
{
    size_t need = (len + 2) / 3 * 4 + 1, o = 0;

    if (cap < need)
        return false;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16;

        if (i + 1 < len)
            v |= (uint32_t)src[i + 1] << 8;
        if (i + 2 < len)
            v |= src[i + 2];
        dst[o++] = b64_alphabet[(v >> 18) & 63];
        dst[o++] = b64_alphabet[(v >> 12) & 63];
        dst[o++] = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        dst[o++] = i + 2 < len ? b64_alphabet[v & 63] : '=';
    }
    dst[o] = '\0';
    return true;
}

static int b64_value(char c)
{
    const char *p = c ? strchr(b64_alphabet, c) : NULL;

    return p ? (int)(p - b64_alphabet) : -1;
}

/*
 * Strict decode of n chars: whole quads, padding only at the end, unused
 * bits zero, no whitespace. false if malformed or over cap bytes.
 */
static bool b64_decode(const char *src, size_t n, uint8_t *dst, size_t cap, size_t *outlen)
{
    size_t o = 0;

    if (n % 4 != 0)
        return false;
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int pad = last ? (src[i + 3] == '=') + (src[i + 2] == '=') : 0;
        int v[4] = {0, 0, 0, 0};
        size_t nbytes = 3 - (size_t)pad;

        if (pad == 1 && src[i + 2] == '=')
            return false; /* "x=y=" style */
        for (int k = 0; k < 4 - pad; k++) {
            v[k] = b64_value(src[i + k]);
            if (v[k] < 0)
                return false;
        }
        if ((pad == 2 && (v[1] & 0x0f)) || (pad == 1 && (v[2] & 0x03)))
            return false; /* non-canonical trailing bits */
        if (nbytes > cap - o)
            return false;
        dst[o++] = (uint8_t)(v[0] << 2 | v[1] >> 4);
        if (nbytes > 1)
            dst[o++] = (uint8_t)((v[1] & 0x0f) << 4 | v[2] >> 2);
        if (nbytes > 2)
            dst[o++] = (uint8_t)((v[2] & 0x03) << 6 | v[3]);
    }
    *outlen = o;
    return true;
}

/* Decode exactly one SCRAM key's worth of base64. */
static bool b64_decode_key(const char *src, size_t n, uint8_t key[SCRAM_KEY_LEN])
{
    size_t got;

    return b64_decode(src, n, key, SCRAM_KEY_LEN, &got) && got == SCRAM_KEY_LEN;
}

/* ---- hashes ------------------------------------------------------------- */

static bool sha256(const void *p, size_t n, uint8_t out[SCRAM_KEY_LEN])
{
    unsigned int len = 0;

    return EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) == 1 && len == SCRAM_KEY_LEN;
}

static bool hmac_sha256(const uint8_t key[SCRAM_KEY_LEN], const void *p, size_t n,
                        uint8_t out[SCRAM_KEY_LEN])
{
    unsigned int len = 0;

    return HMAC(EVP_sha256(), key, SCRAM_KEY_LEN, p, n, out, &len) && len == SCRAM_KEY_LEN;
}

/* hex(md5(a || b)) into out[33]. */
static bool md5_hex(const void *a, size_t alen, const void *b, size_t blen, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok;

    if (!ctx)
        return false;
    ok = EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1 && EVP_DigestUpdate(ctx, a, alen) == 1 &&
         EVP_DigestUpdate(ctx, b, blen) == 1 && EVP_DigestFinal_ex(ctx, md, &len) == 1 && len == 16;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return false;
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[32] = '\0';
    return true;
}

bool auth_random(void *buf, size_t len)
{
    if (len > INT_MAX)
        return false;
    return RAND_bytes(buf, (int)len) == 1;
}

/* ---- MD5 ---------------------------------------------------------------- */

/* On a crypto failure out is "", which no response matches. */
void md5_password_hash(const char *password, const char *user, char out[MD5_PASSWD_LEN + 1])
{
    memcpy(out, "md5", 3);
    if (!md5_hex(password, strlen(password), user, strlen(user), out + 3))
        out[0] = '\0';
}

/* out is "" when md5hash is not a hash (or on a crypto failure). */
void md5_salted_response(const char *md5hash, const uint8_t salt[4], char out[MD5_PASSWD_LEN + 1])
{
    out[0] = '\0';
    if (!md5_is_hash(md5hash))
        return;
    memcpy(out, "md5", 3);
    if (!md5_hex(md5hash + 3, 32, salt, 4, out + 3))
        out[0] = '\0';
}

/* Lower-case hex only: that is what md5_password_hash makes and clients send. */
bool md5_is_hash(const char *s)
{
    if (strncmp(s, "md5", 3) != 0 || strlen(s) != MD5_PASSWD_LEN)
        return false;
    return strspn(s + 3, "0123456789abcdef") == 32;
}

/*
 * A SCRAM secret cannot answer an MD5 challenge; were it taken for a plain
 * password, knowing the secret would be enough to log in.
 */
bool md5_verify(const char *stored, const char *user, const uint8_t salt[4], const char *response)
{
    char hash[MD5_PASSWD_LEN + 1], expect[MD5_PASSWD_LEN + 1];
    bool ok;

    if (scram_is_secret(stored))
        return false;
    if (md5_is_hash(stored))
        memcpy(hash, stored, sizeof(hash));
    else
        md5_password_hash(stored, user, hash);
    md5_salted_response(hash, salt, expect);
    ok = expect[0] != '\0' && strlen(response) == MD5_PASSWD_LEN &&
         CRYPTO_memcmp(expect, response, MD5_PASSWD_LEN) == 0;
    OPENSSL_cleanse(hash, sizeof(hash));
    OPENSSL_cleanse(expect, sizeof(expect));
    return ok;
}

/* ---- SCRAM secrets ------------------------------------------------------ */

/* n decimal digits, 1..INT_MAX. */
static bool parse_iterations(const char *p, size_t n, int *out)
{
    int64_t v = 0;

    if (n == 0 || n > 10)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (p[i] - '0');
    }
    if (v < 1 || v > INT_MAX)
        return false;
    *out = (int)v;
    return true;
}

/* "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>", all base64 strict. */
bool scram_parse_secret(const char *s, ScramSecret *out)
{
    const char *iter, *salt, *stored, *server;

    memset(out, 0, sizeof(*out));
    if (strncmp(s, SCRAM_PREFIX, strlen(SCRAM_PREFIX)) != 0)
        return false;
    iter = s + strlen(SCRAM_PREFIX);
    salt = strchr(iter, ':');
    stored = salt ? strchr(salt, '$') : NULL;
    server = stored ? strchr(stored, ':') : NULL;
    if (!server)
        return false;
    salt++;
    stored++;
    server++;
    if (parse_iterations(iter, (size_t)(salt - 1 - iter), &out->iterations) &&
        b64_decode(salt, (size_t)(stored - 1 - salt), out->salt, SCRAM_MAX_SALT, &out->salt_len) &&
        out->salt_len > 0 &&
        b64_decode_key(stored, (size_t)(server - 1 - stored), out->stored_key) &&
        b64_decode_key(server, strlen(server), out->server_key))
        return true;
    memset(out, 0, sizeof(*out));
    return false;
}

bool scram_is_secret(const char *s)
{
    ScramSecret tmp;
    bool ok = scram_parse_secret(s, &tmp);

    OPENSSL_cleanse(&tmp, sizeof(tmp));
    return ok;
}

/* ClientKey and ServerKey from a SaltedPassword. */
static bool scram_keys(const uint8_t salted[SCRAM_KEY_LEN], uint8_t client_key[SCRAM_KEY_LEN],
                       uint8_t server_key[SCRAM_KEY_LEN])
{
    return hmac_sha256(salted, "Client Key", 10, client_key) &&
           hmac_sha256(salted, "Server Key", 10, server_key);
}

static bool scram_salt_password(const char *password, const uint8_t *salt, size_t salt_len,
                                int iterations, uint8_t out[SCRAM_KEY_LEN])
{
    size_t plen = strlen(password);

    if (plen > INT_MAX || salt_len > INT_MAX || iterations < 1)
        return false;
    return PKCS5_PBKDF2_HMAC(password, (int)plen, salt, (int)salt_len, iterations, EVP_sha256(),
                             SCRAM_KEY_LEN, out) == 1;
}

/* The password is used as given: ASCII needs no SASLprep, and the rest is
 * used raw, as PostgreSQL does when SASLprep does not apply. */
bool scram_secret_from_password(const char *password, const uint8_t *salt, size_t salt_len,
                                int iterations, ScramSecret *out)
{
    uint8_t salted[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN];
    bool ok;

    memset(out, 0, sizeof(*out));
    if (salt_len == 0 || salt_len > SCRAM_MAX_SALT || iterations < 1)
        return false;
    ok = scram_salt_password(password, salt, salt_len, iterations, salted) &&
         scram_keys(salted, client_key, out->server_key) && sha256(client_key, 32, out->stored_key);
    if (ok) {
        out->iterations = iterations;
        memcpy(out->salt, salt, salt_len);
        out->salt_len = salt_len;
    } else {
        memset(out, 0, sizeof(*out));
    }
    OPENSSL_cleanse(salted, sizeof(salted));
    OPENSSL_cleanse(client_key, sizeof(client_key));
    return ok;
}

/* ---- SCRAM message parsing ---------------------------------------------- */

/* Copy a peer message into buf[SCRAM_MSG_MAX] as a C string. */
static bool scram_copy_msg(const char *msg, size_t len, char *buf, const char **err)
{
    if (len >= SCRAM_MSG_MAX) {
        *err = "SCRAM message too long";
        return false;
    }
    if (memchr(msg, '\0', len)) {
        *err = "malformed SCRAM message (contains a NUL byte)";
        return false;
    }
    memcpy(buf, msg, len);
    buf[len] = '\0';
    return true;
}

/*
 * Read "<attr>=<value>" at *cur (attr 0: any letter, stored in *name).
 * The value is NUL-terminated in place; *cur moves past the ',' after it,
 * or becomes NULL when the message ends. NULL if the attribute is not there.
 */
static char *scram_attr(char **cur, char attr, char *name)
{
    char *p = *cur, *comma;

    if (!p || !((p[0] >= 'a' && p[0] <= 'z') || (p[0] >= 'A' && p[0] <= 'Z')) || p[1] != '=')
        return NULL;
    if (attr && p[0] != attr)
        return NULL;
    if (name)
        *name = p[0];
    comma = strchr(p + 2, ',');
    if (comma) {
        *comma = '\0';
        *cur = comma + 1;
    } else {
        *cur = NULL;
    }
    return p + 2;
}

/* Optional trailing extensions: well-formed attributes we do not use. */
static bool scram_skip_extensions(char *cur)
{
    char name;

    while (cur)
        if (!scram_attr(&cur, 0, &name))
            return false;
    return true;
}

/* RFC 5802 printable: %x21-2B / %x2D-7E, at least one. */
static bool scram_nonce_valid(const char *s, size_t cap)
{
    size_t n = 0;

    for (; n < cap && s[n]; n++)
        if (s[n] < 0x21 || s[n] > 0x7e || s[n] == ',')
            return false;
    return n > 0 && n < cap;
}

/* A random nonce: SCRAM_NONCE_LEN bytes in base64. */
static bool scram_make_nonce(char *out, size_t cap)
{
    uint8_t raw[SCRAM_NONCE_LEN];

    return auth_random(raw, sizeof(raw)) && b64_encode(raw, sizeof(raw), out, cap);
}

/* Format into out[cap]; false if it does not fit. */
static bool fmt_fits(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool fmt_fits(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < cap;
}

/* ---- SCRAM server ------------------------------------------------------- */

/*
 * gs2 header of a client-first-message: "n,," or "y,,". Returns the
 * client-first-message-bare or NULL with *err.
 */
static char *scram_read_gs2(char *p, char *flag, const char **err)
{
    if (p[0] == 'p') {
        *err = "SCRAM channel binding is not supported here: "
               "connect with channel_binding=prefer or disable";
        return NULL;
    }
    if ((p[0] != 'n' && p[0] != 'y') || p[1] != ',') {
        *err = "malformed SCRAM message (bad channel-binding flag)";
        return NULL;
    }
    *flag = p[0];
    if (p[2] == 'a' && p[3] == '=') {
        *err = "SCRAM authorization identity (a=) is not supported";
        return NULL;
    }
    if (p[2] != ',') {
        *err = "malformed SCRAM message (bad gs2 header)";
        return NULL;
    }
    return p + 3;
}

/* Our half of the nonce: the preset test value if any, else random. */
static bool scram_server_nonce(const ScramServer *s, char *out, size_t cap, const char **err)
{
    if (s->nonce[0] == '\0') {
        if (scram_make_nonce(out, cap))
            return true;
        *err = "could not generate a SCRAM nonce";
        return false;
    }
    if (!scram_nonce_valid(s->nonce, sizeof(s->nonce)) || !fmt_fits(out, cap, "%s", s->nonce)) {
        *err = "invalid preset SCRAM server nonce";
        return false;
    }
    return true;
}

bool scram_server_first(ScramServer *s, const ScramSecret *secret, const char *msg, size_t len,
                        char *out, size_t outcap, const char **err)
{
    char buf[SCRAM_MSG_MAX], snonce[sizeof(s->nonce)], salt[SCRAM_MAX_SALT / 3 * 4 + 8];
    char *bare, *cur, *cnonce, flag = 0;

    if (secret->iterations < 1 || secret->salt_len < 1 || secret->salt_len > SCRAM_MAX_SALT) {
        *err = "invalid SCRAM secret";
        goto fail;
    }
    if (!scram_copy_msg(msg, len, buf, err) || !(bare = scram_read_gs2(buf, &flag, err)))
        goto fail;
    memcpy(s->client_first_bare, bare, strlen(bare) + 1);
    if (bare[0] == 'm' && bare[1] == '=') {
        *err = "SCRAM mandatory extension (m=) is not supported";
        goto fail;
    }
    cur = bare;
    /* The user name is ignored: the startup packet's is the one used. */
    if (!scram_attr(&cur, 'n', NULL) || !(cnonce = scram_attr(&cur, 'r', NULL)) ||
        !scram_skip_extensions(cur)) {
        *err = "malformed SCRAM client-first-message (expected n=...,r=...)";
        goto fail;
    }
    if (!scram_nonce_valid(cnonce, SCRAM_MSG_MAX)) {
        *err = "malformed SCRAM message (invalid nonce)";
        goto fail;
    }
    if (!scram_server_nonce(s, snonce, sizeof(snonce), err))
        goto fail;
    if (!fmt_fits(s->nonce, sizeof(s->nonce), "%s%s", cnonce, snonce)) {
        *err = "SCRAM client nonce too long";
        goto fail;
    }
    if (!b64_encode(secret->salt, secret->salt_len, salt, sizeof(salt)) ||
        !fmt_fits(s->server_first, sizeof(s->server_first), "r=%s,s=%s,i=%d", s->nonce, salt,
                  secret->iterations) ||
        !fmt_fits(out, outcap, "%s", s->server_first)) {
        *err = "SCRAM output buffer too small";
        goto fail;
    }
    s->secret = *secret;
    s->cbind_flag = flag;
    return true;
fail:
    memset(s->nonce, 0, sizeof(s->nonce));
    s->server_first[0] = '\0';
    return false;
}

/*
 * Parse a client-final-message "c=..,r=..[,ext..],p=..". Fills the proof
 * and the length of the part before ",p=". NULL on success, else an error.
 */
static const char *scram_read_client_final(const ScramServer *s, char *buf,
                                           uint8_t proof[SCRAM_KEY_LEN], size_t *without_proof)
{
    char *cur = buf, *cb, *nonce, *v = NULL, name = 0;
    uint8_t cbdata[8];
    size_t cblen;

    if (!(cb = scram_attr(&cur, 'c', NULL)) || !(nonce = scram_attr(&cur, 'r', NULL)))
        return "malformed SCRAM client-final-message (expected c=...,r=...)";
    while (cur && name != 'p')
        if (!(v = scram_attr(&cur, 0, &name)))
            return "malformed SCRAM client-final-message (bad attribute)";
    if (name != 'p' || cur)
        return "malformed SCRAM client-final-message (proof missing or not last)";
    if (!b64_decode(cb, strlen(cb), cbdata, sizeof(cbdata), &cblen) || cblen != 3 ||
        cbdata[0] != (uint8_t)s->cbind_flag || cbdata[1] != ',' || cbdata[2] != ',')
        return "SCRAM channel-binding data does not match the client-first-message";
    if (strcmp(nonce, s->nonce) != 0)
        return "SCRAM nonce mismatch";
    if (!b64_decode_key(v, strlen(v), proof))
        return "malformed SCRAM proof";
    *without_proof = (size_t)(v - buf) - 3;
    return NULL;
}

/* True if proof shows knowledge of ClientKey; recovers it into client_key. */
static bool scram_check_proof(const ScramSecret *sec, const char *auth, size_t auth_len,
                              const uint8_t proof[SCRAM_KEY_LEN], uint8_t client_key[SCRAM_KEY_LEN])
{
    uint8_t sig[SCRAM_KEY_LEN], stored[SCRAM_KEY_LEN];
    bool ok;

    ok = hmac_sha256(sec->stored_key, auth, auth_len, sig);
    for (int i = 0; i < SCRAM_KEY_LEN; i++)
        client_key[i] = proof[i] ^ sig[i];
    ok = ok && sha256(client_key, SCRAM_KEY_LEN, stored) &&
         CRYPTO_memcmp(stored, sec->stored_key, SCRAM_KEY_LEN) == 0;
    OPENSSL_cleanse(sig, sizeof(sig));
    return ok;
}

bool scram_server_final(ScramServer *s, const char *msg, size_t len, char *out, size_t outcap,
                        const char **err)
{
    char buf[SCRAM_MSG_MAX], auth[3 * SCRAM_MSG_MAX], b64[B64_KEY_LEN];
    uint8_t proof[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN], sig[SCRAM_KEY_LEN];
    size_t without_proof;
    bool ok = false;

    if (s->nonce[0] == '\0' || s->server_first[0] == '\0') {
        *err = "SCRAM client-final-message before client-first-message";
        goto out;
    }
    if (!scram_copy_msg(msg, len, buf, err))
        goto out;
    *err = scram_read_client_final(s, buf, proof, &without_proof);
    if (*err)
        goto out;
    if (!fmt_fits(auth, sizeof(auth), "%s,%s,%.*s", s->client_first_bare, s->server_first,
                  (int)without_proof, msg)) {
        *err = "SCRAM message too long";
        goto out;
    }
    if (!scram_check_proof(&s->secret, auth, strlen(auth), proof, client_key)) {
        *err = "password authentication failed (SCRAM proof does not match)";
        goto out;
    }
    if (!hmac_sha256(s->secret.server_key, auth, strlen(auth), sig) ||
        !b64_encode(sig, sizeof(sig), b64, sizeof(b64)) || !fmt_fits(out, outcap, "v=%s", b64)) {
        *err = "SCRAM output buffer too small";
        goto out;
    }
    memcpy(s->client_key, client_key, SCRAM_KEY_LEN);
    s->have_client_key = true;
    ok = true;
out:
    /* The exchange is over: a reused struct must never repeat this nonce. */
    memset(s->nonce, 0, sizeof(s->nonce));
    OPENSSL_cleanse(client_key, sizeof(client_key));
    return ok;
}

/* ---- SCRAM client ------------------------------------------------------- */

/* saslname escaping of RFC 5802: ',' as "=2C", '=' as "=3D". */
static bool scram_escape_user(const char *user, char *out, size_t cap)
{
    size_t o = 0;

    for (; *user; user++) {
        const char *rep = *user == ',' ? "=2C" : *user == '=' ? "=3D" : NULL;
        size_t n = rep ? 3 : 1;

        if (n >= cap - o)
            return false;
        if (rep)
            memcpy(out + o, rep, 3);
        else
            out[o] = *user;
        o += n;
    }
    out[o] = '\0';
    return true;
}

bool scram_client_first(ScramClient *c, char *out, size_t outcap)
{
    return scram_client_first_user(c, "", out, outcap);
}

bool scram_client_first_user(ScramClient *c, const char *user, char *out, size_t outcap)
{
    char name[SCRAM_MSG_MAX / 2];

    c->auth_message[0] = '\0';
    if (c->client_nonce[0] == '\0') {
        if (!scram_make_nonce(c->client_nonce, sizeof(c->client_nonce)))
            return false;
    } else if (!scram_nonce_valid(c->client_nonce, sizeof(c->client_nonce))) {
        return false;
    }
    return scram_escape_user(user, name, sizeof(name)) &&
           fmt_fits(c->client_first_bare, sizeof(c->client_first_bare), "n=%s,r=%s", name,
                    c->client_nonce) &&
           fmt_fits(out, outcap, "n,,%s", c->client_first_bare);
}

/* Parse a server-first-message "r=..,s=..,i=..[,ext..]". NULL or an error. */
static const char *scram_read_server_first(const ScramClient *c, char *buf, const char **nonce,
                                           uint8_t *salt, size_t *salt_len, int *iterations)
{
    char *cur = buf, *r, *s, *i;
    size_t cn = strlen(c->client_nonce);

    if (buf[0] == 'm' && buf[1] == '=')
        return "SCRAM mandatory extension (m=) is not supported";
    if (!(r = scram_attr(&cur, 'r', NULL)) || !(s = scram_attr(&cur, 's', NULL)) ||
        !(i = scram_attr(&cur, 'i', NULL)) || !scram_skip_extensions(cur))
        return "malformed SCRAM server-first-message (expected r=...,s=...,i=...)";
    if (!scram_nonce_valid(r, SCRAM_MSG_MAX) || strncmp(r, c->client_nonce, cn) != 0 ||
        strlen(r) <= cn)
        return "SCRAM nonce mismatch";
    if (!b64_decode(s, strlen(s), salt, SCRAM_MAX_SALT, salt_len) || *salt_len == 0)
        return "malformed SCRAM salt";
    if (!parse_iterations(i, strlen(i), iterations))
        return "invalid SCRAM iteration count";
    if (*iterations > SCRAM_MAX_ITERATIONS)
        return "SCRAM iteration count above 1000000 (SCRAM_MAX_ITERATIONS): the proxy would stall "
               "computing it";
    *nonce = r;
    return NULL;
}

bool scram_client_final(ScramClient *c, const char *password, const char *msg, size_t len,
                        char *out, size_t outcap, const char **err)
{
    char buf[SCRAM_MSG_MAX], without_proof[SCRAM_MSG_MAX], b64[B64_KEY_LEN];
    uint8_t salt[SCRAM_MAX_SALT], client_key[SCRAM_KEY_LEN], server_key[SCRAM_KEY_LEN];
    uint8_t stored[SCRAM_KEY_LEN], proof[SCRAM_KEY_LEN];
    const char *nonce = NULL;
    size_t salt_len = 0;
    int iterations = 0;
    bool ok = false;

    c->auth_message[0] = '\0';
    if (c->client_nonce[0] == '\0' || c->client_first_bare[0] == '\0' || !password) {
        *err = "SCRAM server-first-message before client-first-message";
        goto out;
    }
    if (!scram_copy_msg(msg, len, buf, err))
        goto out;
    *err = scram_read_server_first(c, buf, &nonce, salt, &salt_len, &iterations);
    if (*err)
        goto out;
    *err = "SCRAM computation failed";
    if (!scram_salt_password(password, salt, salt_len, iterations, c->salted_password) ||
        !scram_keys(c->salted_password, client_key, server_key) ||
        !sha256(client_key, sizeof(client_key), stored))
        goto out;
    *err = "SCRAM message too long";
    if (!fmt_fits(without_proof, sizeof(without_proof), "c=biws,r=%s", nonce) ||
        !fmt_fits(c->auth_message, sizeof(c->auth_message), "%s,%.*s,%s", c->client_first_bare,
                  (int)len, msg, without_proof))
        goto out;
    *err = "SCRAM computation failed";
    if (!hmac_sha256(stored, c->auth_message, strlen(c->auth_message), proof))
        goto out;
    for (int k = 0; k < SCRAM_KEY_LEN; k++)
        proof[k] ^= client_key[k];
    *err = "SCRAM output buffer too small";
    if (!b64_encode(proof, sizeof(proof), b64, sizeof(b64)) ||
        !fmt_fits(out, outcap, "%s,p=%s", without_proof, b64))
        goto out;
    *err = NULL;
    ok = true;
out:
    if (!ok)
        c->auth_message[0] = '\0';
    /* The nonce is spent; a reused struct gets a fresh one. */
    memset(c->client_nonce, 0, sizeof(c->client_nonce));
    OPENSSL_cleanse(client_key, sizeof(client_key));
    OPENSSL_cleanse(server_key, sizeof(server_key));
    return ok;
}

/* Also wipes the salted password: the exchange is over either way. */
bool scram_client_verify(ScramClient *c, const char *msg, size_t len, const char **err)
{
    char buf[SCRAM_MSG_MAX], *cur = buf, *v;
    uint8_t server_key[SCRAM_KEY_LEN], expect[SCRAM_KEY_LEN], got[SCRAM_KEY_LEN];
    bool ok = false;

    if (c->auth_message[0] == '\0') {
        *err = "SCRAM server-final-message before client-final-message";
        goto out;
    }
    if (!scram_copy_msg(msg, len, buf, err))
        goto out;
    if (buf[0] == 'e' && buf[1] == '=') {
        *err = "server rejected SCRAM authentication";
        goto out;
    }
    if (!(v = scram_attr(&cur, 'v', NULL)) || !scram_skip_extensions(cur) ||
        !b64_decode_key(v, strlen(v), got)) {
        *err = "malformed SCRAM server-final-message";
        goto out;
    }
    if (!hmac_sha256(c->salted_password, "Server Key", 10, server_key) ||
        !hmac_sha256(server_key, c->auth_message, strlen(c->auth_message), expect)) {
        *err = "SCRAM computation failed";
        goto out;
    }
    ok = CRYPTO_memcmp(expect, got, SCRAM_KEY_LEN) == 0;
    if (!ok)
        *err = "SCRAM server signature does not match: the server does not know the password";
out:
    OPENSSL_cleanse(c->salted_password, sizeof(c->salted_password));
    c->auth_message[0] = '\0';
    OPENSSL_cleanse(server_key, sizeof(server_key));
    return ok;
}
