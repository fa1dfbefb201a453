/*
 * Server connections: connecting and logging in to PostgreSQL, relaying
 * its answers to the linked client, and the proxy's own queries (reset,
 * pre-ping, parameter sync) whose answers are swallowed.
 */
#include "daemon/log.h"
#include "daemon/worker.h"
#include "proto/msg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/dns.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

/* Bound on a message the proxy reads whole from a server (login, internal
 * answers); relayed messages are not bounded here. */
#define SERVER_MAX_WHOLE_MSG (1024 * 1024)

static void server_on_io(void *arg, IoEvent ev);

static List *server_state_list(Server *s, ServerState st)
{
    switch (st) {
    case SV_CONNECTING:
        return &s->pool->connecting_servers;
    case SV_IDLE:
        return &s->pool->idle_servers;
    case SV_ACTIVE:
        return &s->pool->active_servers;
    case SV_TESTING:
        return &s->pool->testing_servers;
    case SV_CLOSING:
        return &s->w->just_free_servers;
    case SV_FREE:
        return NULL;
    }
    abort(); /* an unknown state is a bug */
}

void server_set_state(Server *s, ServerState st)
{
    List *from = server_state_list(s, s->state);
    List *to = server_state_list(s, st);

    if (from)
        list_remove(from, &s->node);
    s->state = st;
    if (to)
        list_append(to, &s->node);
}

/* Identity of a server connection for log lines. */
static const char *server_id(const Server *s, char *buf, size_t len)
{
    snprintf(buf, len, "S-%p %s/%s@%s:%d pid=%d", (const void *)s, s->pool->dbname,
             s->pool->server_user, s->pool->host, s->pool->port, (int)s->be_pid);
    return buf;
}

void server_close(Server *s, const char *reason)
{
    char id[256];

    if (s->state == SV_CLOSING)
        return;
    log_debug("%s closing: %s", server_id(s, id, sizeof(id)), reason);
    if (s->state != SV_CONNECTING || s->logged_in)
        log_info("%s closed: %s", server_id(s, id, sizeof(id)), reason);
    if (s->dns_req) {
        evdns_getaddrinfo_cancel(s->dns_req);
        s->dns_req = NULL;
    }
    if (s->client) {
        Client *c = s->client;
        s->client = NULL;
        c->server = NULL;
        client_error_close(c, "08006", "server connection lost: %s", reason);
    }
    if (!s->io.closed && s->logged_in && !s->io.tls) {
        PktBuf *b = worker_pkt(s->w);
        pkt_terminate(b);
        if (!b->failed && s->io.fd >= 0) {
            /* Best effort goodbye; the socket is closed right after. */
            if (write(s->io.fd, b->data, b->len) < 0) {
            }
        }
    }
    io_close(&s->io);
    server_set_state(s, SV_CLOSING);
    worker_schedule_reap(s->w);
}

void server_free(Server *s)
{
    rq_clear(s);
    server_stmts_clear(&s->stmts, &s->w->prepared);
    free(s->rq);
    io_free(&s->io);
    params_free(&s->params);
    free(s->scram);
    free(s);
}

/* Fail a server that never became usable, telling the pool. */
static void server_fail(Server *s, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void server_fail(Server *s, const char *sqlstate, const char *fmt, ...)
{
    char msg[512], id[256];
    Pool *p = s->pool;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_warning("%s login failed: %s", server_id(s, id, sizeof(id)), msg);
    server_close(s, msg);
    pool_server_failed(p, sqlstate, msg);
}

/* Defer a failure to the janitor: used where reporting now would re-enter the pool. */
static void server_fail_later(Server *s, const char *sqlstate, const char *msg)
{
    snprintf(s->fail_sqlstate, sizeof(s->fail_sqlstate), "%.5s", sqlstate);
    snprintf(s->fail_msg, sizeof(s->fail_msg), "%.*s", (int)sizeof(s->fail_msg) - 1, msg);
}

void server_check_timeout(Server *s, double now)
{
    if (s->fail_msg[0]) {
        server_fail(s, s->fail_sqlstate, "%s", s->fail_msg);
        return;
    }
    if (now - s->connect_time >= s->w->cfg->server_connect_timeout)
        server_fail(s, "08006",
                    "could not connect to server %s:%d within server_connect_timeout (%g s)",
                    s->pool->host, s->pool->port, s->w->cfg->server_connect_timeout);
}

static void server_start_connect(Server *s)
{
    int fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;

    if (fd < 0) {
        server_fail_later(s, "08006", strerror(errno));
        return;
    }
    if (s->addr.ss_family != AF_UNIX) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    }
    if (!io_init(&s->io, s->w->base, fd, server_on_io, s)) {
        close(fd);
        s->io.closed = true;
        server_fail_later(s, "53200", "out of memory");
        return;
    }
    if (!io_connect(&s->io, (struct sockaddr *)&s->addr, s->addrlen)) {
        char msg[300];
        snprintf(msg, sizeof(msg), "could not connect to server %s:%d: %s", s->pool->host,
                 s->pool->port, strerror(s->io.err));
        server_fail_later(s, "08006", msg);
    }
}

static void server_dns_done(int result, struct evutil_addrinfo *res, void *arg)
{
    Server *s = arg;

    s->dns_req = NULL;
    if (result == EVUTIL_EAI_CANCEL)
        return;
    if (result != 0 || !res) {
        char msg[300];
        snprintf(msg, sizeof(msg), "could not resolve host \"%s\": %s", s->pool->host,
                 evutil_gai_strerror(result));
        server_fail_later(s, "08006", msg);
        return;
    }
    memcpy(&s->addr, res->ai_addr, res->ai_addrlen);
    s->addrlen = (socklen_t)res->ai_addrlen;
    evutil_freeaddrinfo(res);
    server_start_connect(s);
}

/* Fill s->addr from the pool's host; numeric and unix-socket hosts at once,
 * names through asynchronous DNS. */
static void server_resolve(Server *s)
{
    Pool *p = s->pool;
    struct sockaddr_in *sin = (struct sockaddr_in *)&s->addr;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&s->addr;
    struct evutil_addrinfo hints;
    char port[16];

    memset(&s->addr, 0, sizeof(s->addr));
    if (p->host[0] == '/') {
        struct sockaddr_un *sun = (struct sockaddr_un *)&s->addr;
        sun->sun_family = AF_UNIX;
        if ((size_t)snprintf(sun->sun_path, sizeof(sun->sun_path), "%s/.s.PGSQL.%d", p->host,
                             p->port) >= sizeof(sun->sun_path)) {
            server_fail_later(s, "08006", "unix socket path too long");
            return;
        }
        s->addrlen = sizeof(*sun);
        server_start_connect(s);
        return;
    }
    if (inet_pton(AF_INET, p->host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)p->port);
        s->addrlen = sizeof(*sin);
        server_start_connect(s);
        return;
    }
    if (inet_pton(AF_INET6, p->host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)p->port);
        s->addrlen = sizeof(*sin6);
        server_start_connect(s);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", p->port);
    s->dns_req = evdns_getaddrinfo(s->w->dns, p->host, port, &hints, server_dns_done, s);
}

Server *server_connect(Pool *p)
{
    Server *s = calloc(1, sizeof(*s));
    int recycle = p->w->cfg->pool_recycle;

    if (!s)
        return NULL;
    s->w = p->w;
    s->pool = p;
    s->io.fd = -1;
    s->io.closed = true; /* until a socket exists */
    s->connect_time = now_sec();
    s->tx_status = 'I';
    params_init(&s->params);
    server_stmts_init(&s->stmts);
    if (recycle > 0) {
        /* A lifetime between 75% and 100% of pool_recycle staggers closures. */
        double jitter = 0.75 + 0.25 * ((double)(random() % 1000) / 1000.0);
        s->recycle_at = s->connect_time + recycle * jitter;
    }
    server_set_state(s, SV_CONNECTING);
    server_resolve(s);
    return s;
}

void server_send(Server *s, PktBuf *b)
{
    if (b->failed) {
        server_close(s, "out of memory");
        return;
    }
    io_send(&s->io, b->data, b->len);
}

void server_queue(Server *s, PktBuf *b)
{
    if (b->failed) {
        server_close(s, "out of memory");
        return;
    }
    io_queue(&s->io, b->data, b->len);
}

static void server_send_startup(Server *s)
{
    const char *kv[] = {"user", s->pool->server_user, "database", s->pool->dbname, NULL};
    PktBuf *b = worker_pkt(s->w);

    pkt_startup(b, kv);
    server_send(s, b);
}

/* Answer an authentication request during login. Returns false when it failed s. */
static bool server_auth(Server *s, MsgReader *r)
{
    Pool *p = s->pool;
    int32_t code = mr_i32(r);
    const char *pw = p->server_password;
    PktBuf *b;
    const char *err = NULL;
    char out[SCRAM_MSG_MAX];

    if (code == AUTH_REQ_OK)
        return true;
    if (!pw) {
        server_fail(s, "28P01",
                    "server asks a password for user \"%s\" but none is configured (set "
                    "password= in [databases] or add the user to auth_file)",
                    p->server_user);
        return false;
    }
    b = worker_pkt(s->w);
    switch (code) {
    case AUTH_REQ_PASSWORD:
        pkt_password(b, pw);
        break;
    case AUTH_REQ_MD5: {
        const uint8_t *salt = mr_bytes(r, 4);
        char hash[MD5_PASSWD_LEN + 1], resp[MD5_PASSWD_LEN + 1];
        if (!salt)
            goto bad_message;
        if (md5_is_hash(pw))
            snprintf(hash, sizeof(hash), "%s", pw);
        else
            md5_password_hash(pw, p->server_user, hash);
        md5_salted_response(hash, salt, resp);
        pkt_password(b, resp);
        break;
    }
    case AUTH_REQ_SASL: {
        bool found = false;
        const char *mech;
        while ((mech = mr_str(r)) && *mech)
            if (strcmp(mech, "SCRAM-SHA-256") == 0)
                found = true;
        if (!found) {
            server_fail(s, "28000", "server offers no SASL mechanism the proxy supports");
            return false;
        }
        if (md5_is_hash(pw) || scram_is_secret(pw)) {
            server_fail(s, "28P01",
                        "server wants SCRAM for user \"%s\" but only a hash is configured; "
                        "give the plain password in [databases] or auth_file",
                        p->server_user);
            return false;
        }
        free(s->scram);
        s->scram = calloc(1, sizeof(*s->scram));
        if (!s->scram || !scram_client_first(s->scram, out, sizeof(out)))
            goto oom;
        pkt_sasl_initial(b, "SCRAM-SHA-256", out, strlen(out));
        break;
    }
    case AUTH_REQ_SASL_CONTINUE:
        if (!s->scram || !scram_client_final(s->scram, pw, (const char *)r->p + r->pos,
                                             mr_remaining(r), out, sizeof(out), &err)) {
            server_fail(s, "08P01", "SCRAM exchange with server failed: %s",
                        err ? err : "unexpected message");
            return false;
        }
        pkt_sasl_response(b, out, strlen(out));
        break;
    case AUTH_REQ_SASL_FINAL:
        if (!s->scram ||
            !scram_client_verify(s->scram, (const char *)r->p + r->pos, mr_remaining(r), &err)) {
            server_fail(s, "08P01", "server's SCRAM signature is wrong: %s",
                        err ? err : "unexpected message");
            return false;
        }
        return true;
    default:
        server_fail(s, "28000", "server asks for authentication method %d, which is not supported",
                    (int)code);
        return false;
    }
    server_send(s, b);
    return true;
bad_message:
    server_fail(s, "08P01", "malformed authentication request from server");
    return false;
oom:
    server_fail(s, "53200", "out of memory");
    return false;
}

/* Read one whole message from the front of in. Returns 1 and fills type/body
 * (body valid until the next drain), 0 when incomplete, -1 on a bad frame. */
int server_whole_message(Server *s, char *type, const uint8_t **body, uint32_t *len)
{
    uint8_t hdr[PROTO_HDR_LEN];
    size_t avail = iobuf_len(&s->io.in);

    if (avail < PROTO_HDR_LEN)
        return 0;
    iobuf_copyout(&s->io.in, hdr, PROTO_HDR_LEN);
    if (proto_frame_header(hdr, SERVER_MAX_WHOLE_MSG, type, len) != FRAME_OK)
        return -1;
    if (avail < PROTO_HDR_LEN + *len)
        return 0;
    *body = iobuf_data(&s->io.in) + PROTO_HDR_LEN;
    return 1;
}

bool server_note_param(Server *s, const uint8_t *body, uint32_t len)
{
    MsgReader r;
    const char *name, *value, *had;
    bool changed = false;

    mr_init(&r, body, len);
    name = mr_str(&r);
    value = mr_str(&r);
    if (!name || !value)
        return false;
    if (!params_set(&s->params, name, value))
        log_error("out of memory noting parameter %s", name);
    if (s->client) {
        had = params_get(&s->client->params, name);
        changed = !had || strcmp(had, value) != 0;
        if (changed && !params_set(&s->client->params, name, value))
            log_error("out of memory noting parameter %s", name);
    }
    return changed;
}

static void server_logged_in(Server *s)
{
    Pool *p = s->pool;
    char id[256];

    s->logged_in = true;
    log_debug("%s logged in", server_id(s, id, sizeof(id)));
    if (!p->have_welcome) {
        if (!params_assign(&p->welcome, &s->params)) {
            server_fail(s, "53200", "out of memory");
            return;
        }
        p->have_welcome = true;
        for (ListNode *n = list_first(&s->w->login_clients); n;) {
            Client *c = list_entry(n, Client);
            n = list_next(&s->w->login_clients, n);
            if (c->pool == p && c->phase == LOGIN_WELCOME)
                client_welcome(c);
        }
    }
    pool_server_ready(s);
}

/* Login conversation: auth, parameters, key data, then ReadyForQuery. */
/* TCP (or TLS) is up: ask for TLS first when configured, else log in. */
static void server_connected(Server *s)
{
    PktBuf *b;

    io_read(&s->io, true);
    if (s->tls_phase == SV_TLS_HANDSHAKE) {
        s->tls_phase = SV_TLS_NONE;
        server_send_startup(s);
        return;
    }
    if (!s->w->server_tls || s->addr.ss_family == AF_UNIX) {
        server_send_startup(s);
        return;
    }
    b = worker_pkt(s->w);
    pkt_ssl_request(b);
    s->tls_phase = SV_TLS_ASKED;
    server_send(s, b);
}

/* The one-byte answer to SSLRequest. Returns false when s failed. */
static bool server_tls_answer(Server *s)
{
    ServerTlsMode mode = s->w->cfg->server_tls_sslmode;
    uint8_t ch;
    struct ssl_st *ssl;

    if (iobuf_remove(&s->io.in, &ch, 1) != 1)
        return true;
    if (ch == 'S') {
        if (iobuf_len(&s->io.in) > 0) {
            server_fail(s, "08P01", "server sent unencrypted data after agreeing to TLS");
            return false;
        }
        ssl = tls_new_server_conn(s->w, s->pool->host, mode);
        if (!ssl || !io_start_tls(&s->io, ssl, false)) {
            server_fail(s, "08006", "could not start TLS with server %s:%d", s->pool->host,
                        s->pool->port);
            return false;
        }
        s->tls_phase = SV_TLS_HANDSHAKE;
        return true;
    }
    if (ch == 'N' && mode <= SERVER_TLS_PREFER) {
        s->tls_phase = SV_TLS_NONE;
        server_send_startup(s);
        return true;
    }
    if (ch == 'N')
        server_fail(s, "08006",
                    "server %s:%d does not support TLS, but server_tls_sslmode requires it",
                    s->pool->host, s->pool->port);
    else
        server_fail(s, "08P01", "unexpected answer to SSLRequest from server %s:%d", s->pool->host,
                    s->pool->port);
    return false;
}

static void server_login_input(Server *s)
{
    char type;
    const uint8_t *body;
    uint32_t len;
    int rc;

    if (s->tls_phase == SV_TLS_ASKED && (!server_tls_answer(s) || s->tls_phase != SV_TLS_NONE))
        return;

    while (s->state == SV_CONNECTING && (rc = server_whole_message(s, &type, &body, &len)) != 0) {
        MsgReader r;
        ProtoError e;

        if (rc < 0) {
            server_fail(s, "08P01", "malformed message from server during login");
            return;
        }
        mr_init(&r, body, len);
        switch (type) {
        case 'R':
            if (!server_auth(s, &r))
                return;
            break;
        case 'S':
            server_note_param(s, body, len);
            break;
        case 'K':
            s->be_pid = mr_i32(&r);
            s->be_key = mr_i32(&r);
            break;
        case 'E':
            if (proto_parse_error(body, len, &e) && e.message)
                server_fail(s, e.sqlstate ? e.sqlstate : "08006", "%s", e.message);
            else
                server_fail(s, "08006", "server refused the login");
            return;
        case 'N':
        case 'v':
            break;
        case 'Z':
            iobuf_drain(&s->io.in, PROTO_HDR_LEN + len);
            server_logged_in(s);
            return;
        default:
            server_fail(s, "08P01", "unexpected message '%c' from server during login", type);
            return;
        }
        iobuf_drain(&s->io.in, PROTO_HDR_LEN + len);
    }
}

static void server_on_io(void *arg, IoEvent ev)
{
    Server *s = arg;

    switch (ev) {
    case IO_CONNECTED:
        server_connected(s);
        break;
    case IO_READ:
        if (s->state == SV_CONNECTING)
            server_login_input(s);
        else if (s->state == SV_IDLE)
            server_idle_input(s);
        else
            server_relay(s);
        break;
    case IO_DRAINED:
        if (s->client)
            io_read(&s->client->io, true);
        break;
    case IO_EOF:
    case IO_ERROR:
        if (s->state == SV_CONNECTING) {
            if (s->io.tls_error[0])
                server_fail(s, "08006", "TLS with server %s:%d failed: %s", s->pool->host,
                            s->pool->port, s->io.tls_error);
            else if (s->io.err)
                server_fail(s, "08006", "could not connect to server %s:%d: %s", s->pool->host,
                            s->pool->port, strerror(s->io.err));
            else
                server_fail(s, "08006", "server %s:%d closed the connection during login",
                            s->pool->host, s->pool->port);
        } else {
            server_close(s, ev == IO_EOF ? "server closed the connection" : strerror(s->io.err));
        }
        break;
    }
}

/* A one-shot connection carrying a CancelRequest to PostgreSQL. */
typedef struct CancelConn {
    Io io;
    Worker *w;
    int32_t pid, key;
} CancelConn;

static void cancel_free_cb(evutil_socket_t fd, short what, void *arg)
{
    CancelConn *cc = arg;
    io_free(&cc->io);
    free(cc);
}

static void cancel_on_io(void *arg, IoEvent ev)
{
    CancelConn *cc = arg;
    struct timeval zero = {0, 0};

    if (ev == IO_CONNECTED) {
        PktBuf *b = worker_pkt(cc->w);
        pkt_cancel_request(b, cc->pid, cc->key);
        if (!b->failed)
            io_send(&cc->io, b->data, b->len);
        io_read(&cc->io, true);
        return;
    }
    if (ev == IO_READ) {
        iobuf_drain(&cc->io.in, iobuf_len(&cc->io.in));
        return;
    }
    if (ev == IO_DRAINED)
        return;
    io_close(&cc->io);
    event_base_once(cc->w->base, -1, EV_TIMEOUT, cancel_free_cb, cc, &zero);
}

void server_cancel(Server *s)
{
    CancelConn *cc;
    int fd;

    if (s->addrlen == 0)
        return;
    cc = calloc(1, sizeof(*cc));
    if (!cc)
        return;
    cc->w = s->w;
    cc->pid = s->be_pid;
    cc->key = s->be_key;
    fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        free(cc);
        return;
    }
    if (!io_init(&cc->io, s->w->base, fd, cancel_on_io, cc)) {
        close(fd);
        free(cc);
        return;
    }
    if (!io_connect(&cc->io, (struct sockaddr *)&s->addr, s->addrlen)) {
        io_close(&cc->io);
        io_free(&cc->io);
        free(cc);
    }
}
