/*
 * Password exchanges, server side: which method auth_type and the user's
 * secret call for, and checking the answers with proto/auth.
 */
#include "daemon/auth.h"
#include "proto/msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static AuthResult auth_refuse(const char **sqlstate, const char *code, char *msg, size_t msglen,
                              const char *user)
{
    *sqlstate = code;
    snprintf(msg, msglen, "password authentication failed for user \"%s\"", user);
    return AUTHX_FAIL;
}

static AuthResult auth_error(const char **sqlstate, const char *code, char *msg, size_t msglen,
                             const char *text)
{
    *sqlstate = code;
    snprintf(msg, msglen, "%s", text);
    return AUTHX_FAIL;
}

AuthResult auth_exchange_begin(AuthExchange *ax, const Config *cfg, const char *user, PktBuf *b,
                               const char **sqlstate, char *msg, size_t msglen)
{
    const char *secret = config_find_user(cfg, user);

    if (cfg->auth_type == AUTH_TRUST)
        return AUTHX_OK;
    if (cfg->auth_type == AUTH_MD5 && !(secret && scram_is_secret(secret))) {
        if (!auth_random(ax->md5_salt, sizeof(ax->md5_salt)))
            return auth_error(sqlstate, "58000", msg, msglen, "could not generate a salt");
        pkt_auth_md5(b, ax->md5_salt);
        ax->phase = AUTHX_MD5;
    } else {
        /* scram-sha-256, or md5 for a user whose secret is SCRAM, as PostgreSQL does */
        pkt_auth_sasl(b, "SCRAM-SHA-256");
        ax->phase = AUTHX_SASL_INITIAL;
    }
    return AUTHX_CONTINUE;
}

/* The SCRAM secret to check against: the user's, else one nobody knows so
 * that the exchange runs to its end and fails there. */
bool auth_scram_secret(const char *secret, ScramSecret *sec)
{
    uint8_t salt[16], pw[16];
    char junk[33];

    if (secret && scram_is_secret(secret))
        return scram_parse_secret(secret, sec);
    if (!auth_random(salt, sizeof(salt)))
        return false;
    if (secret && !md5_is_hash(secret))
        return scram_secret_from_password(secret, salt, sizeof(salt), SCRAM_DEFAULT_ITERATIONS,
                                          sec);
    if (!auth_random(pw, sizeof(pw)))
        return false;
    for (int i = 0; i < 16; i++)
        snprintf(junk + 2 * i, 3, "%02x", pw[i]);
    return scram_secret_from_password(junk, salt, sizeof(salt), SCRAM_DEFAULT_ITERATIONS, sec);
}

static AuthResult auth_sasl_initial(AuthExchange *ax, const char *secret, MsgReader *r, PktBuf *b,
                                    const char **sqlstate, char *msg, size_t msglen)
{
    const char *mech = mr_str(r);
    int32_t dlen = mr_i32(r);
    const uint8_t *data = dlen >= 0 ? mr_bytes(r, (size_t)dlen) : NULL;
    char out[SCRAM_MSG_MAX];
    const char *err = NULL;
    ScramSecret sec;

    if (!mech || strcmp(mech, "SCRAM-SHA-256") != 0)
        return auth_error(sqlstate, "28000", msg, msglen,
                          "only SASL mechanism SCRAM-SHA-256 is supported");
    if (!data)
        return auth_error(sqlstate, "08P01", msg, msglen, "malformed SASLInitialResponse");
    free(ax->scram);
    ax->scram = calloc(1, sizeof(*ax->scram));
    if (!ax->scram || !auth_scram_secret(secret, &sec))
        return auth_error(sqlstate, "53200", msg, msglen, "out of memory preparing SCRAM");
    if (!scram_server_first(ax->scram, &sec, (const char *)data, (size_t)dlen, out, sizeof(out),
                            &err))
        return auth_error(sqlstate, "08P01", msg, msglen, err ? err : "malformed SCRAM message");
    pkt_auth_sasl_continue(b, out, strlen(out));
    ax->phase = AUTHX_SASL_FINAL;
    return AUTHX_CONTINUE;
}

AuthResult auth_exchange_step(AuthExchange *ax, const Config *cfg, const char *user,
                              const uint8_t *body, uint32_t len, PktBuf *b, const char **sqlstate,
                              char *msg, size_t msglen)
{
    const char *secret = config_find_user(cfg, user);
    char out[SCRAM_MSG_MAX];
    const char *err = NULL;
    MsgReader r;

    mr_init(&r, body, len);
    switch (ax->phase) {
    case AUTHX_MD5: {
        const char *resp = mr_str(&r);
        ax->phase = AUTHX_IDLE;
        if (resp && secret && md5_verify(secret, user, ax->md5_salt, resp))
            return AUTHX_OK;
        return auth_refuse(sqlstate, "28P01", msg, msglen, user);
    }
    case AUTHX_SASL_INITIAL:
        return auth_sasl_initial(ax, secret, &r, b, sqlstate, msg, msglen);
    case AUTHX_SASL_FINAL:
        ax->phase = AUTHX_IDLE;
        if (!scram_server_final(ax->scram, (const char *)body, len, out, sizeof(out), &err) ||
            !secret || md5_is_hash(secret))
            return auth_refuse(sqlstate, "28P01", msg, msglen, user);
        pkt_auth_sasl_final(b, out, strlen(out));
        return AUTHX_OK;
    case AUTHX_IDLE:
        break;
    }
    return auth_error(sqlstate, "08P01", msg, msglen, "unexpected password message");
}

void auth_exchange_free(AuthExchange *ax)
{
    free(ax->scram);
    ax->scram = NULL;
    ax->phase = AUTHX_IDLE;
}
