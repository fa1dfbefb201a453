/*
 * One event loop: listeners, the janitor (timeouts, recycling), the reaper
 * (freeing what was closed inside callbacks) and pool lookup.
 */
#include "daemon/log.h"
#include "daemon/orm_feed.h"
#include "daemon/worker.h"
#include "daemon/cache.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <event2/dns.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define JANITOR_USEC 100000

double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

PktBuf *worker_pkt(Worker *w)
{
    pkt_reset(&w->scratch);
    return &w->scratch;
}

static void worker_reap(evutil_socket_t fd, short what, void *arg)
{
    Worker *w = arg;
    ListNode *n;

    while ((n = list_first(&w->just_free_clients)) != NULL) {
        Client *c = list_entry(n, Client);
        list_remove(&w->just_free_clients, n);
        client_free(c);
    }
    while ((n = list_first(&w->just_free_servers)) != NULL) {
        Server *s = list_entry(n, Server);
        list_remove(&w->just_free_servers, n);
        server_free(s);
    }
}

void worker_schedule_reap(Worker *w)
{
    event_active(w->reaper, EV_TIMEOUT, 0);
}

static void worker_janitor(evutil_socket_t fd, short what, void *arg)
{
    Worker *w = arg;
    double now = now_sec();
    ListNode *n;

    for (n = list_first(&w->pools); n; n = list_next(&w->pools, n))
        pool_janitor(list_entry(n, Pool), now);
    for (n = list_first(&w->login_clients); n;) {
        Client *c = list_entry(n, Client);
        n = list_next(&w->login_clients, n);
        client_check_login_timeout(c, now);
    }
    for (n = list_first(&w->linger_clients); n;) {
        Client *c = list_entry(n, Client);
        n = list_next(&w->linger_clients, n);
        client_check_login_timeout(c, now);
    }
    ops_tick(w, now);
}

Pool *worker_find_pool(Worker *w, const char *db, const char *user, const char **err)
{
    const DbConf *dbc;
    Pool *p;

    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n)) {
        p = list_entry(n, Pool);
        if (strcmp(p->db_name, db) == 0 && strcmp(p->user_name, user) == 0)
            return p;
    }
    dbc = config_find_db(w->cfg, db);
    if (!dbc) {
        *err = "database is not configured in [databases]";
        return NULL;
    }
    p = pool_new(w, db, user, dbc);
    if (!p)
        *err = "out of memory creating pool";
    return p;
}

static void worker_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                             int salen, void *arg)
{
    Worker *w = arg;

    if (w->shutting_down) {
        close(fd);
        return;
    }
    client_accept(w, fd, sa, salen);
}

static void worker_on_accept_error(struct evconnlistener *l, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    log_error("accept failed: %s", evutil_socket_error_to_string(err));
}

bool worker_init(Worker *w, const Config *cfg)
{
    struct timeval tv = {0, JANITOR_USEC};

    memset(w, 0, sizeof(*w));
    w->cfg = cfg;
    list_init(&w->pools);
    list_init(&w->login_clients);
    list_init(&w->linger_clients);
    list_init(&w->just_free_clients);
    list_init(&w->just_free_servers);
    pkt_init(&w->scratch);
    ps_registry_init(&w->prepared);
    w->base = event_base_new();
    if (!w->base)
        return false;
    w->dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (!w->dns)
        w->dns = evdns_base_new(w->base, 0); /* no resolv.conf: /etc/hosts only */
    if (w->dns)
        evdns_base_load_hosts(w->dns, NULL);
    {
        char err[512];
        if (!worker_load_tls(w, cfg, err, sizeof(err))) {
            log_error("%s", err);
            return false;
        }
    }
    w->reaper = event_new(w->base, -1, 0, worker_reap, w);
    w->janitor = event_new(w->base, -1, EV_PERSIST, worker_janitor, w);
    if (!w->dns || !w->reaper || !w->janitor || event_add(w->janitor, &tv) != 0)
        return false;
    if (!orm_worker_init(w)) {
        orm_worker_free(w);
        return false;
    }
    if (!cache_worker_init(w))
        return false;
    return true;
}

/* Take a new listener into the worker's list; frees it on failure. */
static bool worker_keep_listener(Worker *w, struct evconnlistener *l, const char *what)
{
    struct evconnlistener **nl;

    evconnlistener_set_error_cb(l, worker_on_accept_error);
    nl = realloc(w->listeners, sizeof(*nl) * (size_t)(w->nlisteners + 1));
    if (!nl) {
        evconnlistener_free(l);
        return false;
    }
    w->listeners = nl;
    w->listeners[w->nlisteners++] = l;
    log_info("listening on %s", what);
    return true;
}

static bool worker_add_listener(Worker *w, const struct sockaddr *sa, socklen_t len,
                                const char *what)
{
    struct evconnlistener *l;

    l = evconnlistener_new_bind(w->base, worker_on_accept, w,
                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                                1024, sa, (int)len);
    if (!l) {
        log_error("could not listen on %s: %s", what, strerror(errno));
        return false;
    }
    return worker_keep_listener(w, l, what);
}

bool worker_adopt_listener(Worker *w, int fd, const char *what)
{
    struct evconnlistener *l;

    /* backlog -1: the socket is already listening (socket activation) */
    l = evconnlistener_new(w->base, worker_on_accept, w,
                           LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (!l) {
        log_error("could not use %s: %s", what, strerror(errno));
        return false;
    }
    return worker_keep_listener(w, l, what);
}

bool worker_listen(Worker *w)
{
    const Config *cfg = w->cfg;
    char what[PATH_MAX + 64];

    if (cfg->listen_addr && cfg->listen_addr[0]) {
        struct evutil_addrinfo hints, *res = NULL, *ai;
        char port[16];
        const char *host = strcmp(cfg->listen_addr, "*") == 0 ? NULL : cfg->listen_addr;
        int rc;

        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = EVUTIL_AI_PASSIVE;
        snprintf(port, sizeof(port), "%d", cfg->listen_port);
        rc = evutil_getaddrinfo(host, port, &hints, &res);
        if (rc != 0) {
            log_error("listen_addr \"%s\": %s", cfg->listen_addr, evutil_gai_strerror(rc));
            return false;
        }
        for (ai = res; ai; ai = ai->ai_next) {
            snprintf(what, sizeof(what), "%s:%d", cfg->listen_addr, cfg->listen_port);
            if (!worker_add_listener(w, ai->ai_addr, (socklen_t)ai->ai_addrlen, what)) {
                evutil_freeaddrinfo(res);
                return false;
            }
            if (host)
                break; /* one address for an explicit host */
        }
        evutil_freeaddrinfo(res);
    }
    if (cfg->unix_socket_dir && cfg->unix_socket_dir[0]) {
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof(sun));
        sun.sun_family = AF_UNIX;
        if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/.s.PGSQL.%d",
                             cfg->unix_socket_dir, cfg->listen_port) >= sizeof(sun.sun_path)) {
            log_error("unix_socket_dir \"%s\" is too long for a socket path", cfg->unix_socket_dir);
            return false;
        }
        unlink(sun.sun_path);
        snprintf(what, sizeof(what), "unix socket %s", sun.sun_path);
        if (!worker_add_listener(w, (struct sockaddr *)&sun, sizeof(sun), what))
            return false;
        chmod(sun.sun_path, 0777);
    }
    if (w->nlisteners == 0) {
        log_error("nothing to listen on: set listen_addr or unix_socket_dir");
        return false;
    }
    return true;
}

void worker_run(Worker *w)
{
    /* event_base_dispatch, one turn at a time so that each turn starts
     * with a fresh worker_now() */
    for (;;) {
        w->turn_now_set = false;
        if (event_base_loop(w->base, EVLOOP_ONCE) != 0)
            break; /* no events left, or an error */
        if (event_base_got_exit(w->base) || event_base_got_break(w->base))
            break;
    }
    w->turn_now_set = false;
}

void worker_free(Worker *w)
{
    ListNode *n;

    for (int i = 0; i < w->nlisteners; i++)
        evconnlistener_free(w->listeners[i]);
    free(w->listeners);
    while ((n = list_first(&w->pools)) != NULL) {
        Pool *p = list_entry(n, Pool);
        ListNode *m;
        List *lists[] = {&p->idle_clients, &p->waiting_clients, &p->active_clients};
        List *slists[] = {&p->connecting_servers, &p->idle_servers, &p->active_servers,
                          &p->testing_servers};
        for (int i = 0; i < 3; i++)
            while ((m = list_first(lists[i])) != NULL)
                client_close(list_entry(m, Client), "shutting down");
        for (int i = 0; i < 4; i++)
            while ((m = list_first(slists[i])) != NULL)
                server_close(list_entry(m, Server), "shutting down");
        list_remove(&w->pools, n);
        pool_free(p);
    }
    while ((n = list_first(&w->login_clients)) != NULL)
        client_close(list_entry(n, Client), "shutting down");
    while ((n = list_first(&w->linger_clients)) != NULL)
        client_close(list_entry(n, Client), "shutting down");
    worker_reap(-1, 0, w);
    cache_worker_free(w);
    orm_worker_free(w); /* after the clients: their N+1 sessions belong to its table */
    if (w->janitor)
        event_free(w->janitor);
    if (w->reaper)
        event_free(w->reaper);
    if (w->dns)
        evdns_base_free(w->dns, 0);
    if (w->base)
        event_base_free(w->base);
    pkt_free(&w->scratch);
    ps_registry_free(&w->prepared);
    worker_free_tls(w);
}
