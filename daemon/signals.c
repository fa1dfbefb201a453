/*
 * Signals, delivered as libevent events (so handlers run in the loop like any
 * other callback), and the shutdown they start: stop accepting, let running
 * transactions finish up to shutdown_timeout, say goodbye, exit 0.
 *
 *   SIGHUP   reload the config file
 *   SIGTERM  graceful shutdown
 *   SIGINT   the same, closing idle clients at once
 *   SIGUSR1  PAUSE (all pools)     SIGUSR2  RESUME
 *
 * A second SIGTERM or SIGINT during a shutdown exits at once.
 */
#include "daemon/log.h"
#include "daemon/ops.h"

#include <event2/listener.h>
#include <signal.h>

static const int ops_signal_numbers[OPS_NSIGNALS] = {SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGUSR2};

static void ops_on_signal(evutil_socket_t sig, short what, void *arg)
{
    Ops *ops = arg;
    char err[1024];

    switch (sig) {
    case SIGHUP:
        log_info("got SIGHUP: reloading the configuration");
        if (!ops_reload(ops, err, sizeof(err))) {
            /* ops_reload logged why */
        }
        break;
    case SIGTERM:
        log_info("got SIGTERM: graceful shutdown");
        ops_shutdown(ops, ops->shutdown ? SHUTDOWN_IMMEDIATE : SHUTDOWN_GRACEFUL);
        break;
    case SIGINT:
        log_info("got SIGINT: fast shutdown");
        ops_shutdown(ops, ops->shutdown ? SHUTDOWN_IMMEDIATE : SHUTDOWN_FAST);
        break;
    case SIGUSR1:
        log_info("got SIGUSR1: pausing");
        ops_pause(ops, NULL);
        break;
    case SIGUSR2:
        log_info("got SIGUSR2: resuming");
        ops_resume(ops, NULL);
        break;
    }
}

bool ops_signals_start(Ops *ops)
{
    for (int i = 0; i < OPS_NSIGNALS; i++) {
        ops->signals[i] = evsignal_new(ops->w->base, ops_signal_numbers[i], ops_on_signal, ops);
        if (!ops->signals[i] || evsignal_add(ops->signals[i], NULL) != 0)
            return false;
    }
    return true;
}

/* Close every client of list with a FATAL admin_shutdown error. */
static void ops_goodbye_list(List *list, const char *why)
{
    ListNode *n;

    while ((n = list_first(list)) != NULL)
        client_error_close(list_entry(n, Client), "57P01", "pgcoalesce is shutting down (%s)", why);
}

/* Stop the loop; every client hears why first. */
static void ops_finish(Ops *ops, const char *why)
{
    Worker *w = ops->w;

    if (ops->exiting)
        return;
    ops->exiting = true;
    log_info("shutting down: %s", why);
    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n)) {
        Pool *p = list_entry(n, Pool);
        ops_goodbye_list(&p->active_clients, why);
        ops_goodbye_list(&p->waiting_clients, why);
        ops_goodbye_list(&p->idle_clients, why);
    }
    ops_goodbye_list(&w->login_clients, why);
    event_base_loopexit(w->base, NULL);
}

void ops_shutdown(Ops *ops, ShutdownMode mode)
{
    Worker *w = ops->w;
    double timeout = w->cfg->shutdown_timeout;

    if (mode <= ops->shutdown)
        return;
    if (ops->shutdown == SHUTDOWN_NONE) {
        w->shutting_down = true;
        /* Closed, not just disabled: new connections are refused at once and
         * a load balancer moves on instead of queueing them in the backlog. */
        for (int i = 0; i < w->nlisteners; i++)
            evconnlistener_free(w->listeners[i]);
        w->nlisteners = 0;
        ops->shutdown_deadline = now_sec() + timeout;
        notify_stopping();
    }
    ops->shutdown = mode;
    if (mode == SHUTDOWN_IMMEDIATE) {
        ops_finish(ops, "immediate shutdown requested");
        return;
    }
    log_info("no longer accepting clients; waiting up to shutdown_timeout (%g s) for running "
             "transactions%s",
             timeout, mode == SHUTDOWN_FAST ? "; idle clients are closed now" : "");
    ops_shutdown_tick(ops, now_sec());
}

void ops_shutdown_tick(Ops *ops, double now)
{
    Worker *w = ops->w;
    int busy = 0;

    if (ops->exiting)
        return;
    /* Logins and clients wanting a new transaction will not be served. */
    ops_goodbye_list(&w->login_clients, "no new logins");
    for (ListNode *pn = list_first(&w->pools); pn; pn = list_next(&w->pools, pn)) {
        Pool *p = list_entry(pn, Pool);

        ops_goodbye_list(&p->waiting_clients, "no new transactions");
        if (ops->shutdown == SHUTDOWN_FAST)
            ops_goodbye_list(&p->idle_clients, "fast shutdown");
        for (ListNode *n = list_first(&p->active_clients); n;) {
            Client *c = list_entry(n, Client);
            n = list_next(&p->active_clients, n);
            if (ops_client_busy(c))
                busy++;
            else if (ops->shutdown == SHUTDOWN_FAST)
                client_error_close(c, "57P01", "pgcoalesce is shutting down (fast shutdown)");
        }
    }
    if (busy == 0) {
        ops_finish(ops, "no transaction is running");
    } else if (now >= ops->shutdown_deadline) {
        log_warning("shutdown_timeout (%g s) reached with %d transaction%s still running; "
                    "closing %s",
                    w->cfg->shutdown_timeout, busy, busy == 1 ? "" : "s",
                    busy == 1 ? "it" : "them");
        ops_finish(ops, "shutdown_timeout reached");
    }
}
