/*
 * Pools: handing server connections to clients, SQLAlchemy QueuePool
 * meanings (pool_size, max_overflow, pool_timeout, pool_recycle,
 * pool_pre_ping), and the periodic checks that go with them.
 */
#include "daemon/log.h"
#include "daemon/worker.h"
#include "daemon/cache.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

Pool *pool_new(Worker *w, const char *db, const char *user, const DbConf *dbc)
{
    const Config *cfg = w->cfg;
    const char *password = dbc->password;
    Pool *p = calloc(1, sizeof(*p));

    if (!p)
        return NULL;
    p->w = w;
    if (!dbc->user && !password)
        password = config_find_user(cfg, user);
    p->db_name = strdup(db);
    p->user_name = strdup(user);
    p->host = strdup(dbc->host);
    p->port = dbc->port > 0 ? dbc->port : 5432;
    p->dbname = strdup(dbc->dbname ? dbc->dbname : db);
    p->server_user = strdup(dbc->user ? dbc->user : user);
    p->server_password = dup_or_null(password);
    p->pool_size = dbconf_pool_size(cfg, dbc);
    p->max_overflow = dbconf_max_overflow(cfg, dbc);
    p->mode = dbconf_pool_mode(cfg, dbc);
    if (!p->db_name || !p->user_name || !p->host || !p->dbname || !p->server_user ||
        (password && !p->server_password)) {
        pool_free(p);
        return NULL;
    }
    list_init(&p->idle_clients);
    list_init(&p->waiting_clients);
    list_init(&p->active_clients);
    list_init(&p->connecting_servers);
    list_init(&p->idle_servers);
    list_init(&p->active_servers);
    list_init(&p->testing_servers);
    params_init(&p->welcome);
    list_append(&w->pools, &p->node);
    return p;
}

void pool_free(Pool *p)
{
    cache_pool_free(p);
    free(p->db_name);
    free(p->user_name);
    free(p->host);
    free(p->dbname);
    free(p->server_user);
    free(p->server_password);
    params_free(&p->welcome);
    free(p);
}

int pool_server_count(const Pool *p)
{
    return p->connecting_servers.count + p->idle_servers.count + p->active_servers.count +
           p->testing_servers.count;
}

/* Clients still waiting for the first server login to learn the welcome. */
static int pool_welcome_waiters(const Pool *p)
{
    int n = 0;
    for (ListNode *n_ = list_first(&p->w->login_clients); n_;
         n_ = list_next(&p->w->login_clients, n_)) {
        Client *c = list_entry(n_, Client);
        if (c->pool == p && c->phase == LOGIN_WELCOME)
            n++;
    }
    return n;
}

void pool_grow(Pool *p)
{
    int limit = p->pool_size + p->max_overflow;
    int want = p->waiting_clients.count - p->connecting_servers.count - p->testing_servers.count;

    /* After a failed connection, not again before the backoff (the janitor retries). */
    if (p->retry_at > 0 && now_sec() < p->retry_at)
        return;

    if (!p->have_welcome && p->connecting_servers.count == 0 && pool_server_count(p) == 0 &&
        want < 1 && pool_welcome_waiters(p) > 0)
        want = 1;
    while (want-- > 0 && pool_server_count(p) < limit) {
        if (!server_connect(p))
            break;
    }
}

static void pool_link(Server *s, Client *c)
{
    double wait = worker_now(s->w) - c->wait_since;
    uint64_t usec = wait > 0 ? (uint64_t)(wait * 1e6) : 0;

    s->pool->stats.wait_usec += usec;
    if (usec > s->pool->stats.max_wait_usec)
        s->pool->stats.max_wait_usec = usec;
    stats_observe(s->pool->stats.wait_hist, usec);
    s->client = c;
    c->server = s;
    server_set_state(s, SV_ACTIVE);
    client_set_state(c, CL_ACTIVE);
    server_sync_params(s, c);
    client_linked(c);
}

/* Is the idle server s proven dead by a zero-timeout poll? */
static bool server_socket_dead(Server *s)
{
    struct pollfd pfd = {.fd = s->io.fd, .events = POLLIN | POLLRDHUP};

    /* Any byte from an idle server is a goodbye (FATAL) or a protocol breach. */
    if (iobuf_len(&s->io.in) > 0)
        return true;
    return poll(&pfd, 1, 0) != 0;
}

static bool server_needs_ping(Server *s, double now)
{
    const Config *cfg = s->w->cfg;

    return now - s->idle_since >= cfg->pre_ping_idle || s->idle_since <= s->pool->last_failure;
}

/* Hand idle servers to waiting clients, testing them first when asked to. */
static void pool_dispatch(Pool *p)
{
    bool pre_ping = p->w->cfg->pool_pre_ping;
    double now = pre_ping ? now_sec() : 0; /* only pre-ping needs the time */

    if (pool_paused(p))
        return; /* PAUSE or shutdown: clients wait; RESUME dispatches */
    while (p->waiting_clients.count > 0) {
        /* Most recently used first: a few warm backends serve a light load
         * and the rest age out through pool_recycle. */
        Server *s = list_entry(list_last(&p->idle_servers), Server);
        if (!s)
            break;
        if (pre_ping && server_socket_dead(s)) {
            p->stats.ping_failures++;
            p->last_failure = now;
            server_close(s, "pre-ping: connection found closed");
            continue;
        }
        if (pre_ping && server_needs_ping(s, now)) {
            server_ping(s);
            continue;
        }
        pool_link(s, list_entry(list_first(&p->waiting_clients), Client));
    }
    if (p->waiting_clients.count > 0)
        pool_grow(p);
}

void pool_checkout(Pool *p, Client *c)
{
    c->wait_since = worker_now(p->w);
    client_set_state(c, CL_WAITING);
    pool_dispatch(p);
}

static bool server_recycle_due(const Server *s, double now)
{
    return s->recycle_at > 0 && now >= s->recycle_at;
}

void pool_server_ready(Server *s)
{
    Pool *p = s->pool;
    double now = worker_now(s->w);

    s->idle_since = now;
    p->connect_backoff = 0; /* the upstream works */
    p->retry_at = 0;
    /* Reading may have been paused for a slow client; an idle server must be
     * heard so that its death is noticed. */
    io_read(&s->io, true);
    if (s->close_when_idle) {
        server_close(s, "closed as requested once idle");
        pool_dispatch(p);
        return;
    }
    if (server_recycle_due(s, now)) {
        p->stats.recycled++;
        server_close(s, "pool_recycle: connection lifetime reached");
        pool_dispatch(p);
        return;
    }
    if (p->waiting_clients.count > 0 && !pool_paused(p)) {
        pool_link(s, list_entry(list_first(&p->waiting_clients), Client));
        return;
    }
    /* QueuePool: a connection returned to a pool already holding
     * pool_size idle ones is overflow and is closed. */
    if (p->idle_servers.count >= p->pool_size) {
        server_close(s, "max_overflow: returned while pool_size connections are idle");
        return;
    }
    server_set_state(s, SV_IDLE);
}

void pool_release(Server *s)
{
    Client *c = s->client;

    if (c) {
        c->server = NULL;
        s->client = NULL;
    }
    if (s->discard_on_release) {
        server_reset(s, true);
        return;
    }
    pool_server_ready(s);
}

void pool_server_failed(Pool *p, const char *sqlstate, const char *message)
{
    p->stats.connect_failures++;
    snprintf(p->last_connect_error, sizeof(p->last_connect_error), "%s", message);
    p->last_connect_error_at = now_sec();
    /* Connections to a refusing server are not retried in a loop: 50 ms,
     * doubling to 1 s, until one logs in. */
    p->connect_backoff = p->connect_backoff > 0 ? p->connect_backoff * 2 : 0.05;
    if (p->connect_backoff > 1.0)
        p->connect_backoff = 1.0;
    p->retry_at = p->last_connect_error_at + p->connect_backoff;
    /* With no logged-in server that could serve them, waiting clients hear it
     * now rather than at pool_timeout (other attempts in flight go to the same
     * server and will most likely fail alike); they stay connected. */
    if (p->idle_servers.count + p->active_servers.count + p->testing_servers.count == 0) {
        ListNode *n;
        while ((n = list_first(&p->waiting_clients)) != NULL) {
            Client *c = list_entry(n, Client);
            client_server_failed(c, sqlstate, message);
        }
        for (n = list_first(&p->w->login_clients); n;) {
            Client *c = list_entry(n, Client);
            n = list_next(&p->w->login_clients, n);
            if (c->pool == p && c->phase == LOGIN_WELCOME)
                client_server_failed(c, sqlstate, message);
        }
    } else if (p->waiting_clients.count > 0) {
        pool_grow(p);
    }
}

void pool_janitor(Pool *p, double now)
{
    const Config *cfg = p->w->cfg;
    ListNode *n;
    bool recycled_one = false;

    /* Waiting clients are in the order they began to wait (pool_checkout
     * appends): the first one still within pool_timeout ends the walk, so
     * a long queue is not read through every tick. */
    for (n = list_first(&p->waiting_clients); n;) {
        Client *c = list_entry(n, Client);
        n = list_next(&p->waiting_clients, n);
        if (now - c->wait_since < cfg->pool_timeout)
            break;
        p->stats.timeouts++;
        client_wait_timeout(c);
    }
    /* Close at most one expired idle connection per pool per tick so that a
     * pool opened all at once does not reconnect all at once. */
    for (n = list_first(&p->idle_servers); n && !recycled_one;) {
        Server *s = list_entry(n, Server);
        n = list_next(&p->idle_servers, n);
        if (server_recycle_due(s, now)) {
            p->stats.recycled++;
            server_close(s, "pool_recycle: connection lifetime reached");
            recycled_one = true;
        }
    }
    for (n = list_first(&p->connecting_servers); n;) {
        Server *s = list_entry(n, Server);
        n = list_next(&p->connecting_servers, n);
        server_check_timeout(s, now);
    }
    if (cfg->idle_transaction_timeout > 0 || cfg->client_write_timeout > 0) {
        /* A client closed here leaves its server closed or with a ROLLBACK
         * (or DISCARD ALL) in flight: no other client is linked meanwhile,
         * so the next node stays valid. */
        for (n = list_first(&p->active_clients); n;) {
            Client *c = list_entry(n, Client);
            n = list_next(&p->active_clients, n);
            client_check_linked(c, now);
        }
    }
    if (p->waiting_clients.count > 0)
        pool_dispatch(p);
    else if (!p->have_welcome && p->connecting_servers.count == 0 && pool_server_count(p) == 0)
        pool_grow(p); /* a login waiting for the first server, after a failure's backoff */
}
