/*
 * The operator's levers on a running worker: pause, resume, reconnect and
 * kill, shared by the admin console and the signals, plus the periodic
 * operations work (shutdown progress, systemd status) run by the janitor.
 */
#include "daemon/log.h"
#include "daemon/ops.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How often systemd hears the client and server counts (STATUS=). */
#define OPS_STATUS_SEC 5.0

static void ops_admin_reap(evutil_socket_t fd, short what, void *arg);

Ops *ops_new(Worker *w, const char *config_path, bool daemon)
{
    Ops *ops = calloc(1, sizeof(*ops));

    if (!ops)
        return NULL;
    ops->w = w;
    ops->daemon = daemon;
    ops->admin_fd = -1;
    ops->started = time(NULL);
    list_init(&ops->admin_conns);
    list_init(&ops->admin_closing);
    if (config_path) {
        ops->config_path = realpath(config_path, NULL);
        if (!ops->config_path)
            ops->config_path = strdup(config_path);
        if (!ops->config_path)
            goto out_free;
    }
    ops->admin_reaper = event_new(w->base, -1, 0, ops_admin_reap, ops);
    if (!ops->admin_reaper)
        goto out_free;
    w->ops = ops;
    return ops;

out_free:
    free(ops->config_path);
    free(ops);
    return NULL;
}

static void ops_admin_reap(evutil_socket_t fd, short what, void *arg)
{
    admin_tick(arg, now_sec());
}

bool ops_start(Ops *ops)
{
    Worker *w = ops->w;
    char err[1024];
    int adopted = notify_take_sockets(ops);

    if (adopted < 0)
        return false;
    if (adopted == 0 && !worker_listen(w))
        return false;
    if (!admin_listen(ops)) {
        /* The --upstream quick start puts the admin port next to the listen
         * port on its own; if that one is taken, run without it. */
        if (w->cfg->path)
            return false;
        log_warning("quick start: continuing without the admin port");
    }
    if (!ops_signals_start(ops)) {
        log_error("could not set up signal handling");
        return false;
    }
    if (!pidfile_write(ops, w->cfg->pidfile, err, sizeof(err))) {
        log_error("%s", err);
        return false;
    }
    ops->watchdog_sec = notify_watchdog_interval();
    notify_ready(ops);
    return true;
}

void ops_free(Ops *ops)
{
    if (!ops)
        return;
    admin_close_all(ops);
    for (int i = 0; i < OPS_NSIGNALS; i++)
        if (ops->signals[i])
            event_free(ops->signals[i]);
    if (ops->admin_reaper)
        event_free(ops->admin_reaper);
    for (int i = 0; i < ops->npaused_dbs; i++)
        free(ops->paused_dbs[i]);
    free(ops->paused_dbs);
    pidfile_remove(ops);
    config_free(ops->retired);
    ops->w->ops = NULL;
    free(ops->config_path);
    free(ops);
}

static bool ops_db_paused(const Ops *ops, const char *db)
{
    for (int i = 0; i < ops->npaused_dbs; i++)
        if (strcmp(ops->paused_dbs[i], db) == 0)
            return true;
    return false;
}

bool pool_paused(const Pool *p)
{
    const Ops *ops = p->w->ops;

    if (p->paused || p->w->shutting_down)
        return true;
    if (!ops)
        return false;
    /* A pool created after PAUSE db (another user) is paused on first look. */
    if (ops->paused || (ops->npaused_dbs > 0 && ops_db_paused(ops, p->db_name))) {
        ((Pool *)p)->paused = true;
        return true;
    }
    return false;
}

bool ops_is_paused(const Ops *ops)
{
    return ops->paused || ops->npaused_dbs > 0;
}

void ops_pause(Ops *ops, const char *db)
{
    if (!db) {
        ops->paused = true;
    } else if (!ops_db_paused(ops, db)) {
        char **v = realloc(ops->paused_dbs, sizeof(*v) * (size_t)(ops->npaused_dbs + 1));
        char *copy = strdup(db);
        if (!v || !copy) {
            free(copy);
            if (v)
                ops->paused_dbs = v;
            log_error("out of memory pausing database \"%s\"", db);
            return;
        }
        ops->paused_dbs = v;
        ops->paused_dbs[ops->npaused_dbs++] = copy;
    }
    for (ListNode *n = list_first(&ops->w->pools); n; n = list_next(&ops->w->pools, n)) {
        Pool *p = list_entry(n, Pool);
        if (!db || strcmp(p->db_name, db) == 0)
            p->paused = true;
    }
    log_info("paused %s%s%s: new transactions wait until RESUME", db ? "database \"" : "all pools",
             db ? db : "", db ? "\"" : "");
}

void ops_resume(Ops *ops, const char *db)
{
    double now = now_sec();

    if (!db) {
        ops->paused = false;
        for (int i = 0; i < ops->npaused_dbs; i++)
            free(ops->paused_dbs[i]);
        ops->npaused_dbs = 0;
    } else {
        for (int i = 0; i < ops->npaused_dbs; i++) {
            if (strcmp(ops->paused_dbs[i], db) == 0) {
                free(ops->paused_dbs[i]);
                ops->paused_dbs[i] = ops->paused_dbs[--ops->npaused_dbs];
                break;
            }
        }
    }
    for (ListNode *n = list_first(&ops->w->pools); n;) {
        Pool *p = list_entry(n, Pool);
        n = list_next(&ops->w->pools, n);
        if (db && strcmp(p->db_name, db) != 0)
            continue;
        p->paused = ops->paused || ops_db_paused(ops, p->db_name);
        /* The janitor's pass hands servers to the clients that waited. */
        if (!p->paused)
            pool_janitor(p, now);
    }
    log_info("resumed %s%s%s", db ? "database \"" : "all pools", db ? db : "", db ? "\"" : "");
}

int ops_reconnect_pool(Pool *p, const char *why)
{
    List *marked[] = {&p->connecting_servers, &p->active_servers, &p->testing_servers};
    ListNode *sn;
    int n = 0;

    for (size_t i = 0; i < sizeof(marked) / sizeof(marked[0]); i++)
        for (sn = list_first(marked[i]); sn; sn = list_next(marked[i], sn)) {
            list_entry(sn, Server)->close_when_idle = true;
            n++;
        }
    while ((sn = list_first(&p->idle_servers)) != NULL) {
        server_close(list_entry(sn, Server), why);
        n++;
    }
    return n;
}

int ops_reconnect(Ops *ops, const char *db)
{
    int n = 0;

    for (ListNode *pn = list_first(&ops->w->pools); pn; pn = list_next(&ops->w->pools, pn)) {
        Pool *p = list_entry(pn, Pool);
        if (!db || strcmp(p->db_name, db) == 0)
            n += ops_reconnect_pool(p, "RECONNECT from the admin console");
    }
    return n;
}

int ops_kill(Ops *ops, const char *db)
{
    int n = 0;

    for (ListNode *pn = list_first(&ops->w->pools); pn; pn = list_next(&ops->w->pools, pn)) {
        Pool *p = list_entry(pn, Pool);
        List *clients[] = {&p->active_clients, &p->waiting_clients, &p->idle_clients};
        List *servers[] = {&p->connecting_servers, &p->idle_servers, &p->active_servers,
                           &p->testing_servers};
        ListNode *m;

        if (strcmp(p->db_name, db) != 0)
            continue;
        for (size_t i = 0; i < sizeof(clients) / sizeof(clients[0]); i++)
            while ((m = list_first(clients[i])) != NULL) {
                client_error_close(list_entry(m, Client), "57P01",
                                   "connection killed by KILL %s on the admin console", db);
                n++;
            }
        for (size_t i = 0; i < sizeof(servers) / sizeof(servers[0]); i++)
            while ((m = list_first(servers[i])) != NULL)
                server_close(list_entry(m, Server), "KILL from the admin console");
    }
    return n;
}

bool ops_client_busy(const Client *c)
{
    const Server *s = c->server;

    if (c->state != CL_ACTIVE || !s)
        return false;
    /* In transaction mode a linked client is inside a transaction by
     * definition; in session mode only while a query or transaction runs. */
    return s->pool->mode == POOL_TRANSACTION || s->tx_status != 'I' || s->query_start > 0;
}

void ops_count(const Worker *w, int *clients, int *active, int *waiting, int *servers)
{
    *clients = w->nclients;
    *active = *waiting = *servers = 0;
    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n)) {
        const Pool *p = list_entry(n, Pool);
        *active += p->active_clients.count;
        *waiting += p->waiting_clients.count;
        *servers += pool_server_count(p);
    }
}

void ops_tick(Worker *w, double now)
{
    Ops *ops = w->ops;

    if (!ops)
        return;
    if (ops->shutdown != SHUTDOWN_NONE)
        ops_shutdown_tick(ops, now);
    admin_tick(ops, now);
    if (now >= ops->next_status) {
        ops->next_status = now + OPS_STATUS_SEC;
        notify_status(ops);
    }
    if (ops->watchdog_sec > 0 && now >= ops->next_watchdog) {
        ops->next_watchdog = now + ops->watchdog_sec;
        notify_watchdog();
    }
}
