/*
 * libpq connections of the proxy's own (catalog queries, the replication
 * stream) to a pool's upstream: the same host, port, database, user,
 * password and TLS settings its server connections use.
 */
#ifndef PGC_DAEMON_UPSTREAM_H
#define PGC_DAEMON_UPSTREAM_H

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "daemon/worker.h"

/* Room for every keyword upstream_conninfo writes, and the NULL after them. */
#define UPSTREAM_MAX_PARAMS 16

/*
 * libpq keywords/values for p's upstream, NULL-terminated, for
 * PQconnectStartParams with expand_dbname 0. With replication, adds
 * replication=database. The strings point into p and w->cfg (and static
 * storage): valid while both are. application_name is "pgcoalesce".
 */
void upstream_conninfo(const Pool *p, bool replication, const char *keys[UPSTREAM_MAX_PARAMS],
                       const char *vals[UPSTREAM_MAX_PARAMS]);

/* Must libpq's host be resolved first (a name, not an address or a socket directory)? The
 * proxy resolves it with evdns, since libpq would block the loop in getaddrinfo. */
bool upstream_needs_dns(const char *host);

/* One libpq connection's socket, watched on an event loop. */
typedef struct PqWatch {
    struct event *ev; /* NULL: not watched */
    evutil_socket_t fd;
    short what;
} PqWatch;

/*
 * Wait for what (EV_READ and/or EV_WRITE) on conn's socket; cb(fd, events,
 * arg) runs on base. The event is made anew when the socket or the interest
 * changed, or with force (while connecting, libpq may close its socket and
 * open another under the same number). False, with nothing watched, when conn
 * has no socket or the event cannot be added.
 */
bool pq_watch(PqWatch *pw, struct event_base *base, PGconn *conn, short what, bool force,
              event_callback_fn cb, void *arg) __attribute__((warn_unused_result));
void pq_unwatch(PqWatch *pw);

#endif
