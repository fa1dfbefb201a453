/*
 * Client connections: the startup packet, authentication, the welcome, and
 * forwarding the client's messages to whichever server the pool links.
 */
#include "daemon/auth.h"
#include "daemon/log.h"
#include "daemon/cache.h"
#include "daemon/orm_feed.h"
#include "orm/session.h"
#include "daemon/worker.h"
#include "proto/msg.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Bound on a login-phase message (password, SASL). */
#define CLIENT_MAX_LOGIN_MSG 8192
/* How long a refused client may keep sending before it is cut off. */
#define CLIENT_LINGER_SEC 2.0
/* A server is taken for a message once it has arrived whole, or this much
 * of a longer one: announcing a message and sending no more of it must not
 * hold a server connection. */
#define CLIENT_CHECKOUT_BYTES (64 * 1024)

static void client_on_io(void *arg, IoEvent ev);
static void client_process(Client *c);

static List *client_state_list(Client *c, ClientState st)
{
    switch (st) {
    case CL_LOGIN:
        return &c->w->login_clients;
    case CL_IDLE:
        return &c->pool->idle_clients;
    case CL_WAITING:
        return &c->pool->waiting_clients;
    case CL_ACTIVE:
        return &c->pool->active_clients;
    case CL_LINGER:
        return &c->w->linger_clients;
    case CL_CLOSING:
        return &c->w->just_free_clients;
    case CL_FREE:
        return NULL;
    }
    abort(); /* an unknown state is a bug */
}

void client_set_state(Client *c, ClientState st)
{
    List *from = client_state_list(c, c->state);
    List *to = client_state_list(c, st);

    if (from)
        list_remove(from, &c->node);
    c->state = st;
    if (to)
        list_append(to, &c->node);
}

static const char *client_id(const Client *c, char *buf, size_t len)
{
    snprintf(buf, len, "C-%p %s/%s@%s", (const void *)c, c->database ? c->database : "(nodb)",
             c->user ? c->user : "(nouser)", c->addr);
    return buf;
}

static void client_send(Client *c, PktBuf *b)
{
    if (b->failed) {
        client_close(c, "out of memory");
        return;
    }
    io_send(&c->io, b->data, b->len);
}

/* What happens to a client's server when the client goes away. */
static void client_detach_server(Client *c)
{
    Server *s = c->server;

    if (!s)
        return;
    c->server = NULL;
    s->client = NULL;
    if (c->pkt_left > 0) {
        /* The backend holds part of a message: anything sent now would be
         * read as the rest of it. */
        server_close(s, "client disconnected in the middle of a message");
        return;
    }
    if (s->rq_len > 0 || s->copy_in || s->dirty || s->pkt_left > 0) {
        /* Mid-answer: the backend's state is unknowable from here. */
        server_close(s, "client disconnected while a query was running");
        return;
    }
    if (s->pool->mode == POOL_SESSION)
        server_reset(s, true);
    else if (s->tx_status != 'I' || s->discard_on_release)
        server_reset(s, false); /* DISCARD ALL too when session state was left */
    else
        pool_release(s);
}

void client_close(Client *c, const char *reason)
{
    char id[256];

    if (c->state == CL_CLOSING)
        return;
    if (c->state == CL_LOGIN || c->state == CL_LINGER)
        log_debug("%s closing: %s", client_id(c, id, sizeof(id)), reason);
    else
        log_info("%s closing: %s", client_id(c, id, sizeof(id)), reason);
    client_detach_server(c);
    io_close(&c->io);
    client_set_state(c, CL_CLOSING);
    worker_schedule_reap(c->w);
}

void client_error_close(Client *c, const char *sqlstate, const char *fmt, ...)
{
    char msg[512], id[256];
    PktBuf *b;
    va_list ap;

    if (c->state == CL_CLOSING || c->state == CL_LINGER)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_info("%s refused: %s (SQLSTATE %s)", client_id(c, id, sizeof(id)), msg, sqlstate);
    /* First: the server's ROLLBACK or Terminate is built in the same scratch buffer. */
    client_detach_server(c);
    b = worker_pkt(c->w);
    pkt_error(b, "FATAL", sqlstate, "%s", msg);
    if (b->failed || c->io.closed) {
        client_close(c, msg);
        return;
    }
    io_send(&c->io, b->data, b->len);
    /* Keep reading and dropping what the client still sends, so that closing
     * with unread input does not reset the connection before it reads the
     * error. */
    if (!c->io.tls)
        shutdown(c->io.fd, SHUT_WR); /* TLS: the error is still in the bufferevent */
    iobuf_drain(&c->io.in, iobuf_len(&c->io.in));
    io_read(&c->io, true);
    c->linger_since = now_sec();
    client_set_state(c, CL_LINGER);
}

void client_free(Client *c)
{
    io_free(&c->io);
    free(c->user);
    free(c->database);
    params_free(&c->startup);
    params_free(&c->params);
    cache_client_free(c);
    orm_client_free(c);
    client_stmts_clear(&c->stmts, &c->w->prepared);
    free(c->scram);
    c->w->nclients--;
    free(c);
}

void client_accept(Worker *w, int fd, const struct sockaddr *sa, int salen)
{
    Client *c = calloc(1, sizeof(*c));
    int one = 1;

    if (!c) {
        close(fd);
        return;
    }
    c->w = w;
    c->connect_time = now_sec();
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(c->addr, sizeof(c->addr), "%s:%d", ip, ntohs(sin->sin_port));
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        char ip[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(c->addr, sizeof(c->addr), "[%s]:%d", ip, ntohs(sin6->sin6_port));
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    } else {
        snprintf(c->addr, sizeof(c->addr), "unix");
    }
    params_init(&c->startup);
    params_init(&c->params);
    evutil_make_socket_nonblocking(fd);
    if (!io_init(&c->io, w->base, fd, client_on_io, c)) {
        close(fd);
        free(c);
        return;
    }
    w->nclients++;
    c->phase = LOGIN_STARTUP;
    client_set_state(c, CL_LOGIN);
    io_read(&c->io, true);
}

/*
 * The next word of a startup "options" value, as PostgreSQL splits it:
 * blanks separate words, a backslash takes the next character as it is
 * ("repeatable\ read" is one word). Unescaped into dst (as long as src);
 * NULL at the end.
 */
static char *next_option_word(const char **src, char *dst)
{
    const char *p = *src;
    char *o = dst;

    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p == '\0')
        return NULL;
    while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
        if (*p == '\\' && p[1])
            p++;
        *o++ = *p++;
    }
    *o = '\0';
    *src = p;
    return dst;
}

/* Split the startup "options" value: -c name=value, -cname=value, --name=value. */
static bool client_parse_options(Client *c, const char *opts)
{
    char *buf = malloc(strlen(opts) + 1), *tok;
    bool ok = true, expect_c = false;

    if (!buf)
        return false;
    while (ok && (tok = next_option_word(&opts, buf)) != NULL) {
        char *setting = NULL, *eq;
        if (expect_c) {
            setting = tok;
            expect_c = false;
        } else if (strcmp(tok, "-c") == 0) {
            expect_c = true;
            continue;
        } else if (strncmp(tok, "-c", 2) == 0) {
            setting = tok + 2;
        } else if (strncmp(tok, "--", 2) == 0) {
            setting = tok + 2;
        } else {
            ok = false;
            break;
        }
        eq = strchr(setting, '=');
        if (!eq || eq == setting) {
            ok = false;
            break;
        }
        *eq = 0;
        for (char *p = setting; *p; p++)
            if (*p == '-')
                *p = '_';
        ok = params_set(&c->startup, setting, eq + 1);
    }
    free(buf);
    return ok && !expect_c;
}

/* Send the rest of a successful login: parameters, key, ReadyForQuery. */
void client_welcome(Client *c)
{
    Pool *p = c->pool;
    PktBuf *b = worker_pkt(c->w);

    if (!params_assign(&c->params, &p->welcome) || !params_copy(&c->params, &c->startup)) {
        client_error_close(c, "53200", "out of memory");
        return;
    }
    /* Report the values the session will have, for every parameter the
     * server reports. */
    for (int i = 0; i < p->welcome.n; i++) {
        const char *name = p->welcome.v[i].name;
        pkt_param_status(b, name, params_get(&c->params, name));
    }
    if (!auth_random(&c->cancel_pid, sizeof(c->cancel_pid)) ||
        !auth_random(&c->cancel_key, sizeof(c->cancel_key))) {
        client_error_close(c, "58000", "could not generate a cancel key");
        return;
    }
    c->cancel_pid &= 0x7fffffff;
    pkt_backend_key(b, c->cancel_pid, c->cancel_key);
    pkt_ready(b, 'I');
    client_send(c, b);
    if (c->state == CL_LOGIN) {
        client_set_state(c, CL_IDLE);
        if (iobuf_len(&c->io.in) > 0)
            client_process(c);
    }
}

void client_server_failed(Client *c, const char *sqlstate, const char *message)
{
    if (c->state == CL_LOGIN) {
        client_error_close(c, sqlstate, "%s", message);
        return;
    }
    if (c->state == CL_WAITING) {
        PktBuf *b = worker_pkt(c->w);
        pkt_error(b, "ERROR", sqlstate, "%s", message);
        client_set_state(c, CL_IDLE);
        c->discarding = true;
        client_send(c, b);
        io_read(&c->io, true);
        client_process(c);
    }
}

void client_wait_timeout(Client *c)
{
    PktBuf *b = worker_pkt(c->w);
    char id[256];

    log_warning("%s waited pool_timeout (%g s) for a server connection",
                client_id(c, id, sizeof(id)), c->w->cfg->pool_timeout);
    pkt_error_hint(b, "ERROR", "53300",
                   "raise pool_size or max_overflow, or shorten the transactions holding "
                   "connections",
                   "no server connection available within pool_timeout (%g s) for database "
                   "\"%s\" user \"%s\"",
                   c->w->cfg->pool_timeout, c->pool->db_name, c->pool->user_name);
    client_set_state(c, CL_IDLE);
    c->discarding = true;
    client_send(c, b);
    io_read(&c->io, true);
    client_process(c);
}

/* Authentication succeeded: find the pool and welcome the client. */
static void client_auth_ok(Client *c)
{
    const char *err = NULL;
    PktBuf *b = worker_pkt(c->w);

    pkt_auth_ok(b);
    client_send(c, b);
    c->pool = worker_find_pool(c->w, c->database, c->user, &err);
    if (!c->pool) {
        client_error_close(c, "3D000", "%s", err ? err : "no such database");
        return;
    }
    if (c->pool->have_welcome) {
        client_welcome(c);
        return;
    }
    c->phase = LOGIN_WELCOME;
    pool_grow(c->pool);
}

static void client_auth_failed(Client *c)
{
    client_error_close(c, "28P01", "password authentication failed for user \"%s\"", c->user);
}

/* Begin authentication according to auth_type and the user's secret. */
static void client_start_auth(Client *c)
{
    const Config *cfg = c->w->cfg;
    const char *secret = config_find_user(cfg, c->user);
    PktBuf *b;

    if (cfg->auth_type == AUTH_TRUST) {
        client_auth_ok(c);
        return;
    }
    b = worker_pkt(c->w);
    if (cfg->auth_type == AUTH_MD5 && !(secret && scram_is_secret(secret))) {
        if (!auth_random(c->md5_salt, sizeof(c->md5_salt))) {
            client_error_close(c, "58000", "could not generate a salt");
            return;
        }
        pkt_auth_md5(b, c->md5_salt);
        c->phase = LOGIN_PASSWORD;
    } else {
        /* scram-sha-256, or md5 for a user whose secret is SCRAM (as PostgreSQL does). */
        pkt_auth_sasl(b, "SCRAM-SHA-256");
        c->phase = LOGIN_SASL_INITIAL;
    }
    client_send(c, b);
}

/* One 'p' message during login. */
static void client_auth_message(Client *c, const uint8_t *body, uint32_t len)
{
    MsgReader r;
    char out[SCRAM_MSG_MAX];
    const char *err = NULL;
    PktBuf *b;

    mr_init(&r, body, len);
    switch (c->phase) {
    case LOGIN_PASSWORD: {
        const char *resp = mr_str(&r);
        const char *secret = config_find_user(c->w->cfg, c->user);
        if (resp && secret && md5_verify(secret, c->user, c->md5_salt, resp))
            client_auth_ok(c);
        else
            client_auth_failed(c);
        return;
    }
    case LOGIN_SASL_INITIAL: {
        const char *mech = mr_str(&r);
        int32_t dlen = mr_i32(&r);
        const uint8_t *data = dlen >= 0 ? mr_bytes(&r, (size_t)dlen) : NULL;
        ScramSecret sec;
        if (!mech || strcmp(mech, "SCRAM-SHA-256") != 0) {
            client_error_close(c, "28000", "only SASL mechanism SCRAM-SHA-256 is supported");
            return;
        }
        if (!data) {
            client_error_close(c, "08P01", "malformed SASLInitialResponse");
            return;
        }
        c->scram = calloc(1, sizeof(*c->scram));
        if (!c->scram || !auth_scram_secret(config_find_user(c->w->cfg, c->user), &sec)) {
            client_error_close(c, "53200", "out of memory preparing SCRAM");
            return;
        }
        if (!scram_server_first(c->scram, &sec, (const char *)data, (size_t)dlen, out, sizeof(out),
                                &err)) {
            client_error_close(c, "08P01", "%s", err ? err : "malformed SCRAM message");
            return;
        }
        b = worker_pkt(c->w);
        pkt_auth_sasl_continue(b, out, strlen(out));
        c->phase = LOGIN_SASL_FINAL;
        client_send(c, b);
        return;
    }
    case LOGIN_SASL_FINAL: {
        const char *secret = config_find_user(c->w->cfg, c->user);
        bool ok = scram_server_final(c->scram, (const char *)body, len, out, sizeof(out), &err);
        if (!ok || !secret || md5_is_hash(secret)) {
            client_auth_failed(c);
            return;
        }
        b = worker_pkt(c->w);
        pkt_auth_sasl_final(b, out, strlen(out));
        client_send(c, b);
        client_auth_ok(c);
        return;
    }
    default:
        client_error_close(c, "08P01", "unexpected password message");
        return;
    }
}

/* A v3 startup packet arrived: remember who the client is and begin auth. */
static void client_startup(Client *c, const StartupPacket *sp)
{
    const Config *cfg = c->w->cfg;

    /* Names and values go into pool keys, logs, reports and the proxy's own
     * SET statements: bytes that are not UTF-8 are refused here, before any
     * of that, rather than failing later on a server connection. */
    for (int i = 0; i < sp->nparams; i++) {
        const char *n = sp->params[i].name, *v = sp->params[i].value, *bad;
        if ((bad = proto_utf8_error(n)) != NULL) {
            client_error_close(c, "22021",
                               "invalid byte sequence for encoding \"UTF8\" in the name of "
                               "startup parameter %d: 0x%02x",
                               i + 1, (unsigned)(uint8_t)*bad);
            return;
        }
        if ((bad = proto_utf8_error(v)) != NULL) {
            client_error_close(c, "22021",
                               "invalid byte sequence for encoding \"UTF8\" in startup parameter "
                               "\"%s\": 0x%02x",
                               n, (unsigned)(uint8_t)*bad);
            return;
        }
    }
    c->user = strdup(sp->user);
    c->database = strdup(sp->database);
    if (!c->user || !c->database) {
        client_error_close(c, "53200", "out of memory");
        return;
    }
    for (int i = 0; i < sp->nparams; i++) {
        const char *n = sp->params[i].name, *v = sp->params[i].value;
        if (strcmp(n, "user") == 0 || strcmp(n, "database") == 0)
            continue;
        if (strcmp(n, "replication") == 0) {
            client_error_close(c, "08P01", "replication connections are not supported");
            return;
        }
        if (strcmp(n, "options") == 0) {
            if (!client_parse_options(c, v)) {
                client_error_close(c, "22023", "invalid startup options \"%s\": use -c name=value",
                                   v);
                return;
            }
            continue;
        }
        if (!params_set(&c->startup, n, v)) {
            client_error_close(c, "53200", "out of memory");
            return;
        }
    }
    if (cfg->client_tls_sslmode == CLIENT_TLS_REQUIRE && !c->io.tls) {
        client_error_close(c, "28000",
                           "TLS is required (client_tls_sslmode = require): connect with "
                           "sslmode=require or stronger");
        return;
    }
    if (c->w->nclients > cfg->max_client_conn) {
        client_error_close(c, "53300", "too many clients already (max_client_conn = %d)",
                           cfg->max_client_conn);
        return;
    }
    if (!config_find_db(cfg, c->database)) {
        client_error_close(c, "3D000", "database \"%s\" is not configured in [databases]",
                           c->database);
        return;
    }
    client_start_auth(c);
}

static void client_cancel_request(Client *c, const StartupPacket *sp)
{
    Client *target = client_find_cancel(c->w, sp->cancel_pid, sp->cancel_key);

    if (target && target->server)
        server_cancel(target->server);
    client_close(c, "cancel request handled");
}

/* Answer 'S' to SSLRequest and do the TLS handshake; the startup packet
 * then arrives encrypted. */
static void client_start_tls(Client *c)
{
    struct ssl_st *ssl;

    if (iobuf_len(&c->io.in) > 0) {
        /* Bytes sent before the handshake could be injected by a third party. */
        client_error_close(c, "08P01", "unencrypted data after SSLRequest");
        return;
    }
    ssl = tls_new_client_conn(c->w);
    if (!ssl || write(c->io.fd, "S", 1) != 1 || !io_start_tls(&c->io, ssl, true)) {
        client_close(c, "could not start TLS");
        return;
    }
}

/* Startup phase: untyped packets (startup, SSLRequest, cancel). */
static void client_startup_input(Client *c)
{
    uint8_t lenbuf[4];
    uint32_t len;
    uint8_t pkt[PROTO_MAX_STARTUP_LEN];
    StartupPacket sp;
    const char *err;

    while (c->state == CL_LOGIN && c->phase == LOGIN_STARTUP) {
        if (iobuf_len(&c->io.in) < 4)
            return;
        iobuf_copyout(&c->io.in, lenbuf, 4);
        len = ((uint32_t)lenbuf[0] << 24) | ((uint32_t)lenbuf[1] << 16) |
              ((uint32_t)lenbuf[2] << 8) | lenbuf[3];
        if (len < 8 || len > PROTO_MAX_STARTUP_LEN) {
            client_error_close(c, "08P01", "invalid startup packet length %u", len);
            return;
        }
        if (iobuf_len(&c->io.in) < len)
            return;
        /* Copied out so the packet can be drained before acting on it. */
        iobuf_remove(&c->io.in, pkt, len);
        err = proto_parse_startup(pkt + 4, len - 4, &sp);
        if (err) {
            client_error_close(c, err == PROTO_ERR_NO_USER ? "28000" : "08P01", "%s", err);
            return;
        }
        if (sp.code == PROTO_SSL_REQUEST && c->w->client_tls && !c->io.tls) {
            client_start_tls(c);
            return;
        }
        if (sp.code == PROTO_SSL_REQUEST || sp.code == PROTO_GSSENC_REQUEST) {
            io_send(&c->io, "N", 1);
            continue;
        }
        if (sp.code == PROTO_CANCEL_REQUEST) {
            client_cancel_request(c, &sp);
            return;
        }
        client_startup(c, &sp);
    }
}

/* Login phase after startup: typed password/SASL messages. */
static void client_login_input(Client *c)
{
    uint8_t hdr[PROTO_HDR_LEN];
    char type;
    uint32_t len;

    if (c->phase == LOGIN_STARTUP) {
        client_startup_input(c);
        return;
    }
    while (c->state == CL_LOGIN && c->phase != LOGIN_WELCOME &&
           iobuf_len(&c->io.in) >= PROTO_HDR_LEN) {
        uint8_t msg[CLIENT_MAX_LOGIN_MSG];
        iobuf_copyout(&c->io.in, hdr, PROTO_HDR_LEN);
        if (proto_frame_header(hdr, CLIENT_MAX_LOGIN_MSG - 4, &type, &len) != FRAME_OK) {
            uint32_t raw = ((uint32_t)hdr[1] << 24) | ((uint32_t)hdr[2] << 16) |
                           ((uint32_t)hdr[3] << 8) | hdr[4];
            if (raw >= 4)
                client_error_close(c, "08P01",
                                   "message of %u bytes during login exceeds the %d allowed", raw,
                                   CLIENT_MAX_LOGIN_MSG);
            else
                client_error_close(c, "08P01", "invalid message length %u during login", raw);
            return;
        }
        if (type == 'X') {
            client_close(c, "client gave up during login");
            return;
        }
        if (type != 'p') {
            client_error_close(c, "08P01", "expected a password message, got '%c'", type);
            return;
        }
        if (iobuf_len(&c->io.in) < PROTO_HDR_LEN + len)
            return;
        /* Taken out of the input before acting on it: a login that completes
         * here goes straight on to the client's first query in the input,
         * which must not begin with this message. */
        iobuf_drain(&c->io.in, PROTO_HDR_LEN);
        iobuf_remove(&c->io.in, msg, len);
        client_auth_message(c, msg, len);
    }
}

/* Drop messages of a query that got an error instead of a server, up to and
 * including its Query or Sync, which is answered with ReadyForQuery. */
static bool client_discard(Client *c)
{
    uint8_t hdr[PROTO_HDR_LEN];
    char type;
    uint32_t len;

    while (c->discarding && iobuf_len(&c->io.in) >= PROTO_HDR_LEN) {
        iobuf_copyout(&c->io.in, hdr, PROTO_HDR_LEN);
        if (proto_frame_header(hdr, (uint32_t)c->w->cfg->max_packet_size - 4, &type, &len) !=
            FRAME_OK) {
            client_error_close(c, "08P01", "invalid message length");
            return false;
        }
        if (iobuf_len(&c->io.in) < PROTO_HDR_LEN + len)
            return false;
        iobuf_drain(&c->io.in, PROTO_HDR_LEN + len);
        if (type == 'X') {
            client_close(c, "client closed the connection");
            return false;
        }
        if (type == 'Q' || type == 'S') {
            PktBuf *b = worker_pkt(c->w);
            pkt_ready(b, 'I');
            client_send(c, b);
            c->discarding = false;
        }
    }
    return !c->discarding;
}

/* What a simple Query does to session state the proxy tracks. */
typedef enum {
    QK_OTHER,
    QK_DROPS_STATEMENTS, /* DEALLOCATE [PREPARE] ALL */
    QK_DISCARD_ALL,      /* drops statements and resets parameters */
    QK_RESET_ALL,
    QK_RESET_ONE,      /* RESET name */
    QK_DEALLOCATE_ONE, /* DEALLOCATE [PREPARE] name */
} QueryKind;

/* Cheap filter before query_kind: does the text start with R or D? */
static inline bool query_may_reset(const uint8_t *p, size_t n)
{
    size_t i = 0;

    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i < n && ((p[i] | 0x20) == 'r' || (p[i] | 0x20) == 'd');
}

/*
 * Classify a Query body (at most its first bytes; the whole statement must
 * fit for the single-name forms). name receives the lower-cased name for
 * QK_RESET_ONE and QK_DEALLOCATE_ONE.
 */
static QueryKind query_kind(const uint8_t *p, size_t n, bool whole, char *name, size_t namecap)
{
    char words[4][64];
    int nw = 0;
    size_t i = 0;

    while (nw < 4) {
        size_t j = 0;
        while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
            i++;
        if (i >= n || p[i] == 0 || p[i] == ';')
            break;
        while (i < n && p[i] && p[i] != ' ' && p[i] != '\t' && p[i] != '\n' && p[i] != '\r' &&
               p[i] != ';') {
            if (j < sizeof(words[0]) - 1)
                words[nw][j++] = (char)tolower(p[i]);
            i++;
        }
        words[nw++][j] = 0;
    }
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r' || p[i] == ';'))
        i++;
    /* Anything after the words (a second statement, more words) is not ours. */
    if (!whole || (i < n && p[i] != 0) || nw == 0)
        return QK_OTHER;
    if (nw == 2 && strcmp(words[0], "discard") == 0 && strcmp(words[1], "all") == 0)
        return QK_DISCARD_ALL;
    if (nw == 2 && strcmp(words[0], "reset") == 0) {
        if (strcmp(words[1], "all") == 0)
            return QK_RESET_ALL;
        snprintf(name, namecap, "%s", words[1]);
        return name[0] == '"' ? QK_OTHER : QK_RESET_ONE;
    }
    if (strcmp(words[0], "deallocate") == 0 && (nw == 2 || nw == 3)) {
        const char *w = words[nw - 1];
        if (nw == 3 && strcmp(words[1], "prepare") != 0)
            return QK_OTHER;
        if (strcmp(w, "all") == 0)
            return QK_DROPS_STATEMENTS;
        snprintf(name, namecap, "%s", w);
        return name[0] == '"' ? QK_OTHER : QK_DEALLOCATE_ONE;
    }
    return QK_OTHER;
}

/* From the first bytes of a Parse/Bind/Describe/Close body: does it name a
 * prepared statement? Unsure (names past the peeked bytes) counts as yes. */
static bool message_names_statement(char type, const uint8_t *p, size_t n)
{
    const uint8_t *end;

    if (n == 0)
        return false;
    switch (type) {
    case 'P':
        return p[0] != 0;
    case 'B':
        end = memchr(p, 0, n);
        return !end || (size_t)(end - p) + 1 >= n || end[1] != 0;
    case 'D':
    case 'C':
        return p[0] == 'S' && (n < 2 || p[1] != 0);
    }
    return false;
}

/*
 * A Parse, Bind, Describe or Close that names a statement, in transaction
 * mode: map the client's name onto the proxy-wide server name, preparing it
 * on this backend first when it lacks it. The whole message is at the front
 * of the client's input. Returns false if the client or server was closed.
 */
/* The client's statement leaves session state in s: nobody else may see it. */
static void client_note_session(Client *c, Server *s, const char *what)
{
    char id[256];

    if (!what || c->pool->mode != POOL_TRANSACTION)
        return;
    s->discard_on_release = true;
    if (!c->session_warned) {
        c->session_warned = true;
        log_info("%s: %s does not survive transaction pooling; its server connection is reset "
                 "(DISCARD ALL) before it serves another client",
                 client_id(c, id, sizeof(id)), what);
    }
}

/* The text of the Query (skip 0) or Parse (skip past the name) at cur: its session state. */
static const char *peek_session(const IoCursor *cur, uint32_t len, bool parse)
{
    size_t n = len < 4096 ? len : 4096, off = 0, left;
    const char *text, *z;

    /* what has arrived of the first 4 KiB: the statement words come first */
    if (io_cursor_left(cur) < PROTO_HDR_LEN)
        return NULL;
    left = io_cursor_left(cur) - PROTO_HDR_LEN;
    if (left < n)
        n = left;
    if (n == 0)
        return NULL;
    text = (const char *)io_cursor_span(cur, PROTO_HDR_LEN, n); /* in place */
    if (parse) {
        z = memchr(text, 0, n);
        if (!z)
            return NULL;
        off = (size_t)(z - text) + 1;
    }
    /* the text up to its NUL (memchr: libpg_query's strnlen is a byte loop) */
    z = memchr(text + off, 0, n - off);
    return session_state_sql(text + off, z ? (size_t)(z - (text + off)) : n - off);
}

static bool client_statement_message(Client *c, Server *s, char type, uint32_t len)
{
    PsRegistry *reg = &c->w->prepared;
    const uint8_t *msg = iobuf_data(&c->io.in);
    MsgReader r;
    const char *portal = NULL, *name;
    PreparedStmt *ps;
    RqKind kind;
    PktBuf *b;
    bool ok = true;

    mr_init(&r, msg + PROTO_HDR_LEN, len);
    if (type == 'B')
        portal = mr_str(&r);
    if (type == 'D' || type == 'C')
        mr_u8(&r);
    name = mr_str(&r);
    if (!name || r.bad) {
        client_error_close(c, "08P01", "malformed '%c' message", type);
        return false;
    }
    s->dirty = true;
    if (type == 'P' && (ps = client_stmts_get(&c->stmts, name)) != NULL) {
        /* PostgreSQL refuses to redefine a name (42P05) and skips to Sync.
         * Make the server do the same: prepare the existing pgc_N again. */
        if (!server_ensure_prepared(s, ps, NULL))
            return false;
        b = worker_pkt(c->w);
        pkt_begin(b, 'P');
        pkt_put_str(b, ps->server_name);
        pkt_put_bytes(b, ps->body, ps->body_len);
        pkt_end(b);
        ok = rq_push(s, RQ_PARSE_DUP, NULL, name);
        if (ok)
            server_queue(s, b);
        goto done;
    }
    if (type == 'P') {
        ps = ps_intern(reg, r.p + r.pos, mr_remaining(&r));
        if (ps)
            client_note_session(c, s, ps->session);
        ok =
            ps && client_stmts_put(&c->stmts, reg, name, ps) && server_ensure_prepared(s, ps, name);
        if (ps)
            ps_unref(reg, ps);
        goto done;
    }
    if (type == 'C') {
        client_stmts_del(&c->stmts, reg, name, NULL);
        ok = rq_push(s, RQ_FAKE_CLOSE, NULL, NULL);
        goto done;
    }
    ps = client_stmts_get(&c->stmts, name);
    kind = type == 'B' ? RQ_BIND : RQ_DESCRIBE;
    if (type == 'B' && ps)
        client_note_session(c, s, ps->session);
    if (type == 'B' && c->w->cfg->n1_mode != N1_MODE_OFF)
        orm_client_bind(c, ps, msg + PROTO_HDR_LEN, len);
    if (!ps) {
        /* Unknown to the proxy: the server answers as it would. */
        if (!rq_push(s, kind, NULL, NULL))
            goto oom;
        io_forward(&s->io, &c->io.in, PROTO_HDR_LEN + len);
        return true;
    }
    if (!server_ensure_prepared(s, ps, NULL))
        return false;
    b = worker_pkt(c->w);
    pkt_begin(b, type);
    if (type == 'B')
        pkt_put_str(b, portal);
    else
        pkt_put_u8(b, 'S');
    pkt_put_str(b, ps->server_name);
    pkt_put_bytes(b, r.p + r.pos, mr_remaining(&r));
    pkt_end(b);
    ok = rq_push(s, kind, NULL, NULL);
    if (ok)
        server_queue(s, b);
done:
    iobuf_drain(&c->io.in, PROTO_HDR_LEN + len);
    if (!ok)
        goto oom;
    return s->state != SV_CLOSING && c->state != CL_CLOSING;
oom:
    client_error_close(c, "53200", "out of memory handling a prepared statement");
    return false;
}

/*
 * Queue a simple Query, noting what it does to tracked session state
 * (unless shaped: the caller takes that from the statement's shape).
 * Returns false on OOM.
 */
static bool client_note_query(Client *c, Server *s, IoCursor *cur, uint32_t len, bool shaped)
{
    const uint8_t *text = io_cursor_span(cur, PROTO_HDR_LEN, len);
    char name[64];
    QueryKind kind = QK_OTHER;
    bool tx_mode = c->pool->mode == POOL_TRANSACTION;

    if (tx_mode && !shaped)
        client_note_session(c, s, peek_session(cur, len, false));
    /* Only short texts starting with R or D (after blanks) can be one of
     * these statements: most queries are let through on their first byte. */
    if (len <= 128 && text && query_may_reset(text, len))
        kind = query_kind(text, len, true, name, sizeof(name));
    switch (kind) {
    case QK_DROPS_STATEMENTS:
        if (tx_mode)
            client_stmts_clear(&c->stmts, &c->w->prepared);
        break;
    case QK_DISCARD_ALL:
        if (tx_mode)
            client_stmts_clear(&c->stmts, &c->w->prepared);
        if (!rq_push(s, RQ_QUERY, NULL, NULL))
            return false;
        rq_tail(s)->flags = RQ_RESET_ALL;
        return true;
    case QK_RESET_ALL:
        if (!rq_push(s, RQ_QUERY, NULL, NULL))
            return false;
        rq_tail(s)->flags = RQ_RESET_ALL;
        return true;
    case QK_RESET_ONE:
        if (!rq_push(s, RQ_QUERY, NULL, name))
            return false;
        rq_tail(s)->flags = RQ_RESET_ONE;
        return true;
    case QK_DEALLOCATE_ONE:
    case QK_OTHER:
        break;
    }
    return rq_push(s, RQ_QUERY, NULL, NULL);
}

/*
 * An unnamed Parse of "DEALLOCATE name" for one of the client's statements
 * (psycopg 3 evicts this way). The backend's statement is shared, so the
 * text becomes DEALLOCATE pgc_N, the backend's copy is forgotten (other
 * clients get it prepared again when they need it) and the client's name
 * goes. Returns true when the message was consumed; *fwd is flushed first.
 */
static bool client_unnamed_deallocate(Client *c, Server *s, const uint8_t *text, size_t n,
                                      uint32_t len, size_t *fwd)
{
    char name[64], sql[PS_SERVER_NAME_LEN + 16];
    const uint8_t *end = memchr(text, 0, n), *msg;
    PreparedStmt *ps;
    PktBuf *b;
    size_t textlen;

    if (!end ||
        query_kind(text, (size_t)(end - text), true, name, sizeof(name)) != QK_DEALLOCATE_ONE)
        return false;
    ps = client_stmts_get(&c->stmts, name);
    if (!ps || iobuf_len(&c->io.in) < *fwd + PROTO_HDR_LEN + len)
        return false;
    io_forward(&s->io, &c->io.in, *fwd);
    s->pool->stats.bytes_in += *fwd + PROTO_HDR_LEN + len;
    *fwd = 0;
    ps_ref(ps);
    client_stmts_del(&c->stmts, &c->w->prepared, name, NULL);
    if (!server_ensure_prepared(s, ps, NULL)) {
        ps_unref(&c->w->prepared, ps);
        return true;
    }
    msg = iobuf_data(&c->io.in);
    textlen = (size_t)(end - text);
    snprintf(sql, sizeof(sql), "DEALLOCATE %s", ps->server_name);
    b = worker_pkt(c->w);
    pkt_begin(b, 'P');
    pkt_put_str(b, "");
    pkt_put_str(b, sql);
    /* parameter types, as the client sent them */
    pkt_put_bytes(b, msg + PROTO_HDR_LEN + 1 + textlen + 1, len - 1 - textlen - 1);
    pkt_end(b);
    iobuf_drain(&c->io.in, PROTO_HDR_LEN + len);
    server_stmts_del(&s->stmts, &c->w->prepared, ps);
    ps_unref(&c->w->prepared, ps);
    s->dirty = true;
    if (!rq_push(s, RQ_PARSE, NULL, NULL)) {
        client_error_close(c, "53200", "out of memory");
        return true;
    }
    server_send(s, b);
    return true;
}

/* Account one message about to be forwarded as is. Returns false on OOM. */
static bool client_note_message(Client *c, Server *s, char type, IoCursor *cur, uint32_t len,
                                bool shaped)
{
    PoolStats *st = &s->pool->stats;

    switch (type) {
    case 'Q':
        st->query_count++;
        return client_note_query(c, s, cur, len, shaped);
    case 'F':
        st->query_count++;
        return rq_push(s, RQ_QUERY, NULL, NULL);
    case 'S':
        if (s->copy_in)
            return true; /* ignored by the server during COPY FROM STDIN */
        s->dirty = false;
        return rq_push(s, RQ_SYNC, NULL, NULL);
    case 'c':
    case 'f':
        s->copy_in = false;
        return true;
    case 'd':
    case 'H':
        return true;
    case 'E':
        st->query_count++;
        s->dirty = true;
        return rq_push(s, RQ_EXECUTE, NULL, NULL);
    case 'P':
        s->dirty = true;
        return rq_push(s, RQ_PARSE, NULL, NULL);
    case 'B':
        s->dirty = true;
        return rq_push(s, RQ_BIND, NULL, NULL);
    case 'D':
        s->dirty = true;
        return rq_push(s, RQ_DESCRIBE, NULL, NULL);
    case 'C':
        s->dirty = true;
        return rq_push(s, RQ_CLOSE, NULL, NULL);
    default:
        s->dirty = true;
        return true;
    }
}

/* Forward client messages to its server; ask the pool for one when needed. */
static void client_process(Client *c)
{
    const Config *cfg = c->w->cfg;
    IoCursor cur;
    size_t fwd = 0;
    uint8_t hdr[PROTO_HDR_LEN];
    char type;
    uint32_t len;
    Server *s = c->server;
    bool tx_mode = c->pool->mode == POOL_TRANSACTION;
    bool n1 = cfg->n1_mode != N1_MODE_OFF;
    bool batch = cfg->n1_mode == N1_MODE_BATCH;
    bool cache = cache_on(c->w);

    if (c->discarding && !client_discard(c))
        return;
    if (c->state == CL_WAITING || c->state == CL_CLOSING)
        return;
    if (c->orm && c->orm->batch) {
        io_read(&c->io, false); /* a batched statement answers its next statement first */
        return;
    }
    io_cursor_init(&cur, &c->io.in);
    for (;;) {
        if (c->pkt_left > 0) {
            size_t n = io_cursor_left(&cur);
            if (n == 0)
                break;
            if (n > c->pkt_left)
                n = c->pkt_left;
            io_cursor_skip(&cur, n);
            fwd += n;
            c->pkt_left -= (uint32_t)n;
            continue;
        }
        if (!io_cursor_peek(&cur, hdr, PROTO_HDR_LEN))
            break;
        /* max_packet_size bounds the length word, which counts itself. */
        if (proto_frame_header(hdr, (uint32_t)cfg->max_packet_size - 4, &type, &len) != FRAME_OK) {
            uint32_t raw = ((uint32_t)hdr[1] << 24) | ((uint32_t)hdr[2] << 16) |
                           ((uint32_t)hdr[3] << 8) | hdr[4];
            if (raw >= 4)
                client_error_close(c, "08P01", "message of %u bytes exceeds max_packet_size (%d)",
                                   raw, cfg->max_packet_size);
            else
                client_error_close(c, "08P01", "invalid message length %u", raw);
            return;
        }
        /* 'p' answers authentication requests, which are over. */
        if (!proto_frontend_type_known(type) || type == 'p') {
            client_error_close(c, "08P01", "invalid frontend message type %d", (int)(uint8_t)type);
            return;
        }
        if (type == 'X') {
            if (s) {
                s->pool->stats.bytes_in += fwd;
                io_forward(&s->io, &c->io.in, fwd);
            }
            client_close(c, "client closed the connection");
            return;
        }
        if ((batch || cache) && fwd == 0 && (!s || (!s->dirty && s->pkt_left == 0)) &&
            (!c->orm || c->orm->len == 0) && (!s || rq_quiet(s))) {
            /* The start of a statement with nothing in flight: an N+1 child
             * may be answered from a prefetch or fetched in a batch; a
             * primary-key lookup from the cache. */
            BatchResult br = batch ? batch_client(c) : BATCH_PASS;
            if (br == BATCH_PASS && cache && c->state != CL_CLOSING && c->state != CL_LINGER)
                br = cache_client(c);
            switch (br) {
            case BATCH_DONE:
                io_cursor_init(&cur, &c->io.in);
                continue;
            case BATCH_INPUT:
                goto out;
            case BATCH_WAIT:
                io_read(&c->io, false);
                return;
            case BATCH_SERVER:
                pool_checkout(c->pool, c);
                if (c->state == CL_WAITING)
                    io_read(&c->io, false);
                return;
            case BATCH_PASS:
                break;
            }
            if (c->state == CL_CLOSING || c->state == CL_LINGER)
                return;
        }
        if (!s) {
            /* First message of a transaction: get a server, then come back.
             * Reading pauses only if the client has to wait, which saves
             * two epoll_ctl calls per transaction when a server is idle. */
            if (iobuf_len(&c->io.in) - cur.pos <
                PROTO_HDR_LEN + (len < CLIENT_CHECKOUT_BYTES ? len : CLIENT_CHECKOUT_BYTES))
                break; /* not until the message (or its first part) is here */
            pool_checkout(c->pool, c);
            if (c->state == CL_WAITING)
                io_read(&c->io, false);
            return;
        }
        stats_query_begin(s);
        if (tx_mode && type == 'Q' && c->stmts.count > 0 && len <= 128) {
            /* DEALLOCATE of the client's own statement: the server-side one
             * is shared, so only the client's name goes. */
            const uint8_t *text = io_cursor_span(&cur, PROTO_HDR_LEN, len);
            char name[64];
            if (!text)
                break;
            if (query_may_reset(text, len) &&
                query_kind(text, len, true, name, sizeof(name)) == QK_DEALLOCATE_ONE &&
                client_stmts_get(&c->stmts, name)) {
                s->pool->stats.bytes_in += fwd + PROTO_HDR_LEN + len;
                io_forward(&s->io, &c->io.in, fwd);
                fwd = 0;
                iobuf_drain(&c->io.in, PROTO_HDR_LEN + len);
                client_stmts_del(&c->stmts, &c->w->prepared, name, NULL);
                if (!rq_push(s, RQ_FAKE_DEALLOCATE, NULL, NULL)) {
                    client_error_close(c, "53200", "out of memory");
                    return;
                }
                io_cursor_init(&cur, &c->io.in);
                continue;
            }
        }
        if (tx_mode && (type == 'P' || type == 'B' || type == 'D' || type == 'C')) {
            size_t n = len < 256 ? len : 256;
            const uint8_t *head = io_cursor_span(&cur, PROTO_HDR_LEN, n);
            if (!head)
                break; /* wait for the names */
            if (type == 'P' && n > 1 && head[0] == 0)
                client_note_session(c, s, peek_session(&cur, len, true));
            if (type == 'P' && n > 1 && head[0] == 0 && c->stmts.count > 0 &&
                client_unnamed_deallocate(c, s, head + 1, n - 1, len, &fwd)) {
                if (c->state == CL_CLOSING || c->state == CL_LINGER)
                    return;
                io_cursor_init(&cur, &c->io.in);
                continue;
            }
            if (message_names_statement(type, head, n)) {
                if (io_cursor_left(&cur) < PROTO_HDR_LEN + len)
                    break; /* wait for the whole message */
                s->pool->stats.bytes_in += fwd + PROTO_HDR_LEN + len;
                io_forward(&s->io, &c->io.in, fwd);
                fwd = 0;
                if (!client_statement_message(c, s, type, len))
                    return;
                io_cursor_init(&cur, &c->io.in);
                continue;
            }
        }
        /* Shapes and N+1 detection need some messages whole (n1_mode). */
        if (n1 && !orm_client_whole(c, s, type, len, &cur, &fwd))
            break;
        if (!client_note_message(c, s, type, &cur, len, n1)) {
            client_error_close(c, "53200", "out of memory");
            return;
        }
        if (n1) {
            /* a Query's session state from its shape, known for most: its
             * words are not read a second time */
            const char *what = NULL;
            if (orm_client_message(c, s, type, &cur, len, &what))
                client_note_session(c, s, what);
            else if (type == 'Q' && tx_mode)
                client_note_session(c, s, peek_session(&cur, len, false));
        }
        c->pkt_left = PROTO_HDR_LEN + len;
    }
out:
    if (!s)
        return; /* only part of a header so far */
    s->pool->stats.bytes_in += fwd;
    io_forward(&s->io, &c->io.in, fwd);
    io_push(&s->io); /* rewritten messages queued without bytes to forward after them */
    server_settle(s);
    if (s->io.congested)
        io_read(&c->io, false); /* resumed when the server drains */
}

void client_continue(Client *c)
{
    io_read(&c->io, true);
    if (iobuf_len(&c->io.in) > 0)
        client_process(c);
}

void client_linked(Client *c)
{
    io_read(&c->io, true);
    client_process(c);
}

void client_resume(Client *c)
{
    if (c->state == CL_ACTIVE)
        client_set_state(c, CL_IDLE);
    io_read(&c->io, true);
    if (iobuf_len(&c->io.in) > 0)
        client_process(c);
}

void client_check_login_timeout(Client *c, double now)
{
    double limit = c->w->cfg->client_login_timeout;

    if (c->state == CL_LOGIN && limit > 0 && now - c->connect_time >= limit)
        client_error_close(c, "08006", "login not completed within client_login_timeout (%g s)",
                           limit);
    else if (c->state == CL_LINGER && now - c->linger_since >= CLIENT_LINGER_SEC)
        client_close(c, "refused client did not close");
}

void client_check_linked(Client *c, double now)
{
    const Config *cfg = c->w->cfg;
    Server *s = c->server;
    char id[256];

    if (!s)
        return;
    if (cfg->client_write_timeout > 0) {
        /* Over the cap its server is not read: any byte the client takes is
         * progress, none for the whole timeout is a client that stopped. */
        uint64_t sent = io_sent(&c->io);
        if (!c->io.congested) {
            c->stall_since = 0;
        } else if (c->stall_since == 0 || sent != c->stall_sent) {
            c->stall_since = now;
            c->stall_sent = sent;
        } else if (now - c->stall_since >= cfg->client_write_timeout) {
            struct linger reset = {1, 0};
            log_warning("%s read none of the %zu bytes waiting for it within client_write_timeout "
                        "(%g s): disconnecting it",
                        client_id(c, id, sizeof(id)), io_pending_output(&c->io),
                        cfg->client_write_timeout);
            /* It is not reading, so an ErrorResponse would never arrive: a
             * reset frees the socket buffers at once. */
            if (c->io.fd >= 0)
                setsockopt(c->io.fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
            client_close(c, "client_write_timeout: the client stopped reading");
            return;
        }
    }
    if (cfg->idle_transaction_timeout > 0) {
        /* Idle: in a transaction, nothing owed by the server, nothing of a
         * message half forwarded, and no input since the last look. */
        bool idle = (s->tx_status == 'T' || s->tx_status == 'E') && s->rq_len == 0 && !s->dirty &&
                    !s->copy_in && s->pkt_left == 0 && c->pkt_left == 0 &&
                    !(c->orm && c->orm->batch);
        if (!idle) {
            c->idle_since = 0;
        } else if (c->idle_since == 0 || c->reads != c->idle_reads) {
            c->idle_since = now;
            c->idle_reads = c->reads;
        } else if (now - c->idle_since >= cfg->idle_transaction_timeout) {
            client_error_close(c, "25P03",
                               "terminating connection due to idle-in-transaction timeout "
                               "(idle_transaction_timeout = %g s)",
                               cfg->idle_transaction_timeout);
        }
    }
}

/*
 * Bytes still missing from a message the client left unfinished when it
 * closed its side, or 0 when its input ends on a message boundary.
 */
static uint32_t client_unfinished(Client *c)
{
    const uint8_t *in = iobuf_data(&c->io.in);
    size_t have = iobuf_len(&c->io.in), pos = 0;
    /* Before the startup packet frames have no type byte. */
    size_t tb = c->state == CL_LOGIN && c->phase == LOGIN_STARTUP ? 0 : 1;

    if (c->pkt_left > 0) {
        if (have < c->pkt_left)
            return c->pkt_left - (uint32_t)have;
        pos = c->pkt_left;
    }
    while (pos < have) {
        const uint8_t *hdr = in + pos;
        uint32_t len;

        if (have - pos < tb + 4)
            return (uint32_t)(tb + 4 - (have - pos));
        len = ((uint32_t)hdr[tb] << 24) | ((uint32_t)hdr[tb + 1] << 16) |
              ((uint32_t)hdr[tb + 2] << 8) | hdr[tb + 3];
        if (len < 4 || len > INT32_MAX)
            return 0; /* a bad frame is not an unfinished one */
        if (have - pos < tb + len)
            return (uint32_t)(tb + len - (have - pos));
        pos += tb + len;
    }
    return 0;
}

/* The client closed its side. It may still read: a message it left
 * unfinished is a protocol violation it hears about before the close. */
static void client_eof(Client *c)
{
    uint32_t missing;

    if (c->state == CL_LINGER || c->state == CL_CLOSING || !(missing = client_unfinished(c))) {
        client_close(c, "client closed the connection");
        return;
    }
    if (c->state == CL_LOGIN && c->phase == LOGIN_STARTUP)
        client_error_close(c, "08P01", "incomplete startup packet: %u bytes missing at EOF",
                           missing);
    else
        client_error_close(c, "08P01", "incomplete message from client: %u bytes missing at EOF",
                           missing);
}

Client *client_find_cancel(Worker *w, int32_t pid, int32_t key)
{
    for (ListNode *pn = list_first(&w->pools); pn; pn = list_next(&w->pools, pn)) {
        Pool *p = list_entry(pn, Pool);
        for (ListNode *n = list_first(&p->active_clients); n;
             n = list_next(&p->active_clients, n)) {
            Client *c = list_entry(n, Client);
            if (c->cancel_pid == pid && c->cancel_key == key)
                return c;
        }
    }
    return NULL;
}

static void client_on_io(void *arg, IoEvent ev)
{
    Client *c = arg;

    switch (ev) {
    case IO_READ:
        c->reads++;
        if (c->state == CL_LINGER) {
            iobuf_drain(&c->io.in, iobuf_len(&c->io.in));
        } else if (c->state == CL_LOGIN) {
            client_login_input(c);
        } else {
            client_process(c);
        }
        break;
    case IO_DRAINED:
        if (c->server)
            io_read(&c->server->io, true);
        break;
    case IO_EOF:
        client_eof(c);
        break;
    case IO_ERROR:
        client_close(c, strerror(c->io.err));
        break;
    case IO_CONNECTED:
        break;
    }
}
