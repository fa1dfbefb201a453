/*
 * The server side of a password exchange (trust, md5, SCRAM-SHA-256)
 * against auth_type and the auth_file, independent of the connection that
 * carries it: the caller hands in 'p' message bodies and sends what is
 * built into a PktBuf. Used by the admin console; client logins may move to
 * it too.
 */
#ifndef PGC_DAEMON_AUTH_H
#define PGC_DAEMON_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/config.h"
#include "proto/auth.h"
#include "proto/pkt.h"

typedef enum {
    AUTHX_IDLE = 0,
    AUTHX_MD5,          /* sent AuthenticationMD5Password */
    AUTHX_SASL_INITIAL, /* sent AuthenticationSASL */
    AUTHX_SASL_FINAL,   /* sent SASLContinue */
} AuthPhase;

typedef struct AuthExchange {
    AuthPhase phase;
    uint8_t md5_salt[4];
    ScramServer *scram; /* owned; freed by auth_exchange_free */
} AuthExchange;

typedef enum {
    AUTHX_CONTINUE, /* a request is in b: send it and wait for the next 'p' */
    AUTHX_OK,       /* authenticated (b may hold SASLFinal: send it first) */
    AUTHX_FAIL,     /* sqlstate and msg say why: refuse with FATAL */
} AuthResult;

/* Start authenticating user. */
/* The SCRAM secret to check a login against: the user's stored secret, one
 * derived from a plain password, or (unknown user, md5-only secret) one
 * nobody knows, so that the exchange runs to its end and fails there. */
bool auth_scram_secret(const char *secret, ScramSecret *sec) __attribute__((warn_unused_result));
AuthResult auth_exchange_begin(AuthExchange *ax, const Config *cfg, const char *user, PktBuf *b,
                               const char **sqlstate, char *msg, size_t msglen);
/* One password message body ('p'). */
AuthResult auth_exchange_step(AuthExchange *ax, const Config *cfg, const char *user,
                              const uint8_t *body, uint32_t len, PktBuf *b, const char **sqlstate,
                              char *msg, size_t msglen);
void auth_exchange_free(AuthExchange *ax);

#endif
