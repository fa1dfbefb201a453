/*
 * Operating pgcoalesce: the admin port (PostgreSQL console and HTTP), signals,
 * reload, pause and graceful shutdown, systemd notification and socket
 * activation, the pidfile and daemon mode. One Ops per worker, reached as
 * w->ops; the pools, clients and servers know it only through pool_paused()
 * and ops_tick() (daemon/worker.h).
 *
 * Configuration lifetime: w->cfg is replaced by a reload. Nothing may keep a
 * pointer into a Config past the callback it got it in: pools copy what
 * they need (pool_new, reload_apply_pool), clients and servers look settings
 * up through w->cfg each time. The replaced Config is kept until the next
 * reload (or the exit), so a callback that was running when the reload
 * happened (for instance the admin command RELOAD itself) still sees valid
 * memory.
 */
#ifndef PGC_DAEMON_OPS_H
#define PGC_DAEMON_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "daemon/list.h"
#include "daemon/worker.h"

typedef enum {
    SHUTDOWN_NONE = 0,
    SHUTDOWN_GRACEFUL, /* SIGTERM, SHUTDOWN: running transactions finish */
    SHUTDOWN_FAST,     /* SIGINT: the same, idle clients are closed at once */
    SHUTDOWN_IMMEDIATE /* SHUTDOWN IMMEDIATE, a second signal: exit now */
} ShutdownMode;

#define OPS_NSIGNALS 5
/* admin_addr = * may mean an IPv4 and an IPv6 socket */
#define OPS_MAX_ADMIN_LISTENERS 4

typedef struct Ops {
    Worker *w;
    char *config_path; /* absolute; NULL when started with --upstream */
    bool daemon;       /* -d: stderr is /dev/null */

    int admin_fd; /* socket from systemd, -1 = bind admin_addr:admin_port */
    struct evconnlistener *admin[OPS_MAX_ADMIN_LISTENERS]; /* none when admin_port = 0 */
    int nadmin;
    List admin_conns;           /* AdminConn, open */
    List admin_closing;         /* AdminConn closed inside a callback */
    struct event *admin_reaper; /* frees admin_closing after the callback */

    struct event *signals[OPS_NSIGNALS];

    bool paused;       /* PAUSE without a database */
    char **paused_dbs; /* PAUSE db */
    int npaused_dbs;

    ShutdownMode shutdown;
    double shutdown_deadline;
    bool exiting; /* the loop was told to stop */

    double next_status;  /* next STATUS= line for systemd */
    double watchdog_sec; /* WATCHDOG=1 interval, 0 = no watchdog */
    double next_watchdog;

    Config *retired; /* the Config the last reload replaced; freed by the next one */
    char *pidfile;   /* written by us; removed at exit */
    time_t started;  /* wall clock, for metrics */
    uint64_t reloads;
    uint64_t reload_failures;
} Ops;

/* ops.c */
Ops *ops_new(Worker *w, const char *config_path, bool daemon);
/* Listen (sockets from systemd, else the configured addresses, and the admin
 * port), catch signals, write the pidfile, tell systemd READY=1. */
bool ops_start(Ops *ops) __attribute__((warn_unused_result));
void ops_free(Ops *ops);
/* Pause new transactions of one database (db) or of all (db NULL). */
void ops_pause(Ops *ops, const char *db);
/* Undo ops_pause(db), or every pause when db is NULL; waiting clients go on. */
void ops_resume(Ops *ops, const char *db);
bool ops_is_paused(const Ops *ops);
/* Close the servers of db's pools (all when NULL) as soon as they are idle. */
int ops_reconnect(Ops *ops, const char *db);
/* The same for one pool; returns how many servers were closed or marked. */
int ops_reconnect_pool(Pool *p, const char *why);
/* Drop every client and server of db's pools now. Returns clients dropped. */
int ops_kill(Ops *ops, const char *db);
/* Does a client still run a transaction or a query (shutdown waits for it)? */
bool ops_client_busy(const Client *c);
/* Clients and servers of every pool, by state, for STATUS= and SHOW. */
void ops_count(const Worker *w, int *clients, int *active, int *waiting, int *servers);

/* signals.c */
bool ops_signals_start(Ops *ops) __attribute__((warn_unused_result));
/* Begin shutting down (or escalate one in progress). */
void ops_shutdown(Ops *ops, ShutdownMode mode);
/* Called from ops_tick while shutting down: finish when nothing is busy. */
void ops_shutdown_tick(Ops *ops, double now);

/* reload.c: read the config file again and apply it. false with err set. */
bool ops_reload(Ops *ops, char *err, size_t errlen) __attribute__((warn_unused_result));

/* notify.c: systemd, pidfile, daemon mode */
void notify_ready(const Ops *ops);
void notify_reloading(void);
void notify_stopping(void);
void notify_status(const Ops *ops);
void notify_watchdog(void);
/* Seconds between WATCHDOG=1 pings systemd expects, 0 = none. */
double notify_watchdog_interval(void);
/* Take sockets passed by systemd (LISTEN_FDS): the one on admin_port becomes
 * ops->admin_fd, the others client listeners. Returns the number of client
 * listeners adopted, or -1 on error. */
int notify_take_sockets(Ops *ops) __attribute__((warn_unused_result));
bool pidfile_write(Ops *ops, const char *path, char *err, size_t errlen)
    __attribute__((warn_unused_result));
void pidfile_remove(Ops *ops);
/* Fork into the background. Returns in the daemon; the parent exits when
 * daemon_ready() (or an exit of the daemon) tells it how starting went. */
bool daemon_start(char *err, size_t errlen) __attribute__((warn_unused_result));
void daemon_ready(bool ok);

/* admin.c */
bool admin_listen(Ops *ops) __attribute__((warn_unused_result));
void admin_close_all(Ops *ops);
/* Close admin connections whose answer has been written (HTTP). */
void admin_tick(Ops *ops, double now);

#endif
