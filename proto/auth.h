/*
 * Password maths: MD5 hashes and SCRAM-SHA-256 (RFC 5802/7677) for both
 * ends of the exchange. Pure computation on buffers, crypto from OpenSSL.
 */
#ifndef PGC_PROTO_AUTH_H
#define PGC_PROTO_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MD5_PASSWD_LEN           35 /* "md5" + 32 hex digits */
#define SCRAM_KEY_LEN            32
#define SCRAM_MAX_SALT           64
#define SCRAM_DEFAULT_ITERATIONS 4096
#define SCRAM_NONCE_LEN          24   /* raw bytes before base64 */
#define SCRAM_MSG_MAX            1024 /* bound on any SCRAM message we build or accept */
/* Most iterations a server may ask the proxy's client side to compute: the
 * event loop stalls for them (about 0.5 s at this bound; INT_MAX would be
 * minutes). PostgreSQL's default is 4096. */
#define SCRAM_MAX_ITERATIONS 1000000

/* out = "md5" + hex(md5(password || user)), NUL-terminated. */
void md5_password_hash(const char *password, const char *user, char out[MD5_PASSWD_LEN + 1]);
/* Client's answer to an MD5 challenge: "md5" + hex(md5(hex_part_of(md5hash) || salt)).
 * md5hash is a "md5..." string as md5_password_hash makes. */
void md5_salted_response(const char *md5hash, const uint8_t salt[4], char out[MD5_PASSWD_LEN + 1]);
/* Check a client's MD5 response against a stored secret that is either a
 * plain password or an "md5..." hash. Constant-time comparison. */
bool md5_verify(const char *stored, const char *user, const uint8_t salt[4], const char *response);
/* True if s looks like "md5" + 32 hex digits. */
bool md5_is_hash(const char *s);

typedef struct ScramSecret {
    int iterations;
    uint8_t salt[SCRAM_MAX_SALT];
    size_t salt_len;
    uint8_t stored_key[SCRAM_KEY_LEN];
    uint8_t server_key[SCRAM_KEY_LEN];
} ScramSecret;

/* Parse "SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>". */
bool scram_parse_secret(const char *s, ScramSecret *out);
/* Derive a secret from a plain password (ASCII passwords need no SASLprep). */
bool scram_secret_from_password(const char *password, const uint8_t *salt, size_t salt_len,
                                int iterations, ScramSecret *out);
bool scram_is_secret(const char *s);

/*
 * Server side of the exchange (the proxy authenticating a client). Zero it
 * (= {0} or calloc) before each exchange: see nonce.
 */
typedef struct ScramServer {
    ScramSecret secret;
    char client_first_bare[SCRAM_MSG_MAX];
    char server_first[SCRAM_MSG_MAX];
    /* client nonce + server nonce. Test hook: a NUL-terminated server nonce
     * (printable, no ',') stored here before scram_server_first is used
     * instead of a random one. Cleared by scram_server_final. */
    char nonce[128];
    /* client_key is known: from a plain password, or recovered from the
     * proof by a successful scram_server_final */
    bool have_client_key;
    uint8_t client_key[SCRAM_KEY_LEN];
    char cbind_flag; /* gs2 channel-binding flag the client sent: 'n' or 'y' */
} ScramServer;

/*
 * Take the client-first-message (SASLInitialResponse data) and write the
 * server-first-message into out (NUL-terminated). Returns false with *err
 * set when the message is malformed. secret is copied. The user name in
 * the message is ignored (the startup packet's is the one that counts);
 * channel binding ("p=") is refused.
 */
bool scram_server_first(ScramServer *s, const ScramSecret *secret, const char *msg, size_t len,
                        char *out, size_t outcap, const char **err);
/*
 * Take the client-final-message, verify the proof, and write the
 * server-final-message ("v=...") into out. Returns false with *err set on a
 * malformed message or a wrong proof.
 */
bool scram_server_final(ScramServer *s, const char *msg, size_t len, char *out, size_t outcap,
                        const char **err);

/* Client side of the exchange (the proxy logging in to PostgreSQL). Zero it
 * before each exchange: see client_nonce. */
typedef struct ScramClient {
    /* Test hook: a NUL-terminated nonce (printable, no ',') stored here
     * before scram_client_first is used instead of a random one. Cleared by
     * scram_client_final. */
    char client_nonce[64];
    char client_first_bare[SCRAM_MSG_MAX];
    char auth_message[3 * SCRAM_MSG_MAX];
    uint8_t salted_password[SCRAM_KEY_LEN];
} ScramClient;

/* Write the client-first-message ("n,,n=,r=<nonce>") into out (NUL-terminated). */
bool scram_client_first(ScramClient *c, char *out, size_t outcap);
/* The same with a user name in n= (',' and '=' escaped); PostgreSQL ignores it. */
bool scram_client_first_user(ScramClient *c, const char *user, char *out, size_t outcap);
/* Take the server-first-message, write the client-final-message into out.
 * Refuses an iteration count above SCRAM_MAX_ITERATIONS. */
bool scram_client_final(ScramClient *c, const char *password, const char *msg, size_t len,
                        char *out, size_t outcap, const char **err);
/* Check the server-final-message's signature. */
bool scram_client_verify(ScramClient *c, const char *msg, size_t len, const char **err);

/* Fill buf with cryptographically strong random bytes. */
bool auth_random(void *buf, size_t len);

#endif
