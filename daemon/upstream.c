/*
 * The libpq connection parameters of a pool's upstream, for the proxy's own
 * libpq connections (daemon/catalog.c, daemon/repl.c).
 */
#include "daemon/upstream.h"

#include <arpa/inet.h>
#include <stdio.h>

static const char *libpq_sslmode(ServerTlsMode m)
{
    switch (m) {
    case SERVER_TLS_DISABLE:
        return "disable";
    case SERVER_TLS_PREFER:
        return "prefer";
    case SERVER_TLS_REQUIRE:
        return "require";
    case SERVER_TLS_VERIFY_CA:
        return "verify-ca";
    case SERVER_TLS_VERIFY_FULL:
        return "verify-full";
    }
    return "prefer";
}

void upstream_conninfo(const Pool *p, bool replication, const char *keys[UPSTREAM_MAX_PARAMS],
                       const char *vals[UPSTREAM_MAX_PARAMS])
{
    static __thread char port[16];
    const Config *cfg = p->w->cfg;
    int n = 0;

    snprintf(port, sizeof(port), "%d", p->port);
#define KV(k, v)                                                                                   \
    do {                                                                                           \
        keys[n] = (k);                                                                             \
        vals[n] = (v);                                                                             \
        n++;                                                                                       \
    } while (0)
    KV("host", p->host);
    KV("port", port);
    KV("dbname", p->dbname);
    KV("user", p->server_user);
    /* an md5 hash is no use to libpq: without a plain password only trust works */
    if (p->server_password && !md5_is_hash(p->server_password))
        KV("password", p->server_password);
    KV("application_name", "pgcoalesce");
    KV("connect_timeout", "10");
    KV("sslmode", libpq_sslmode(cfg->server_tls_sslmode));
    if (cfg->server_tls_ca_file && *cfg->server_tls_ca_file)
        KV("sslrootcert", cfg->server_tls_ca_file);
    if (cfg->server_tls_cert_file && *cfg->server_tls_cert_file)
        KV("sslcert", cfg->server_tls_cert_file);
    if (cfg->server_tls_key_file && *cfg->server_tls_key_file)
        KV("sslkey", cfg->server_tls_key_file);
    if (replication)
        KV("replication", "database");
#undef KV
    keys[n] = NULL;
    vals[n] = NULL;
}

bool upstream_needs_dns(const char *host)
{
    struct in6_addr a6;
    struct in_addr a4;

    if (!host || !*host || host[0] == '/' || host[0] == '@')
        return false;
    return inet_pton(AF_INET, host, &a4) != 1 && inet_pton(AF_INET6, host, &a6) != 1;
}

void pq_unwatch(PqWatch *pw)
{
    if (pw->ev)
        event_free(pw->ev);
    pw->ev = NULL;
    pw->fd = -1;
    pw->what = 0;
}

bool pq_watch(PqWatch *pw, struct event_base *base, PGconn *conn, short what, bool force,
              event_callback_fn cb, void *arg)
{
    evutil_socket_t fd = PQsocket(conn);

    if (pw->ev && !force && pw->fd == fd && pw->what == what)
        return true;
    pq_unwatch(pw);
    if (fd < 0)
        return false;
    pw->ev = event_new(base, fd, what | EV_PERSIST, cb, arg);
    if (!pw->ev || event_add(pw->ev, NULL) != 0) {
        pq_unwatch(pw);
        return false;
    }
    pw->fd = fd;
    pw->what = what;
    return true;
}
