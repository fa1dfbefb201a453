/*
 * Inside the admin port: one AdminConn per connection, shared by the
 * PostgreSQL console (admin.c), HTTP (http.c) and the renderers of the
 * statistics (stats.c). Not for use outside those files.
 */
#ifndef PGC_DAEMON_ADMIN_H
#define PGC_DAEMON_ADMIN_H

#include <event2/buffer.h>
#include <stdbool.h>
#include <stdint.h>

#include "daemon/auth.h"
#include "daemon/io.h"
#include "daemon/ops.h"
#include "proto/pkt.h"

/* Every admin connection is on exactly one list: ops->admin_conns, or
 * ops->admin_closing once ADM_CLOSING. */
typedef enum {
    ADM_SNIFF = 0, /* nothing read yet: HTTP or PostgreSQL? */
    ADM_STARTUP,   /* PostgreSQL: waiting for the startup packet */
    ADM_AUTH,      /* PostgreSQL: password exchange */
    ADM_READY,     /* PostgreSQL: logged in, running commands */
    ADM_HTTP,      /* HTTP: reading the request head */
    ADM_FLUSH,     /* answer queued: closed once it is written */
    ADM_CLOSING,   /* freed after the callback */
} AdminState;

typedef enum { ROLE_NONE = 0, ROLE_STATS, ROLE_ADMIN } AdminRole;

typedef struct AdminConn {
    ListNode node;
    Ops *ops;
    Io io;
    AdminState state;
    AdminRole role;
    char addr[64];
    char *user;
    AuthExchange auth;
    PktBuf out;        /* the console's answer being built */
    double since;      /* accepted at; in ADM_FLUSH, when the answer was queued */
    bool skip_to_sync; /* an extended-protocol message was refused: drop until Sync */
} AdminConn;

/* admin.c */
/*
 * A new connection on fd (taken over: closed when this fails), reading,
 * in ADM_SNIFF. NULL when out of memory. The accept callback's, and the
 * fuzz targets' way in: they drive one over an eventfd through
 * a->io.handler, without a socket.
 */
AdminConn *admin_conn_new(Ops *ops, int fd, const char *addr);
void admin_close(AdminConn *a, const char *reason);
/* Queue the answer and close once it is written. */
void admin_finish(AdminConn *a);

/* http.c: the request head is (being) read in a->io.in */
void http_input(AdminConn *a);

/* stats.c */
/* Upper bounds, in microseconds, of all histogram buckets but the last (+Inf). */
extern const uint64_t stats_hist_bounds_usec[STATS_HIST_BUCKETS - 1];
/* Longest current wait among the pool's waiting clients, in microseconds. */
uint64_t stats_pool_max_wait_usec(const Pool *p, double now);
/* Observations a histogram holds. */
uint64_t stats_hist_count(const uint64_t *hist);
/* Server connections beyond pool_size (the overflow in use). */
int stats_pool_overflow(const Pool *p);
/* Prometheus text exposition format 0.0.4. */
void stats_render_metrics(const Ops *ops, struct evbuffer *out);
/* The same numbers as one JSON object. */
void stats_render_json(const Ops *ops, struct evbuffer *out);

/* orm_report.c: GET /n1, GET /queries and the ORM families of /metrics */
void orm_render_n1_json(const Ops *ops, struct evbuffer *out);
void orm_render_queries_json(const Ops *ops, struct evbuffer *out);
void orm_render_metrics(const Ops *ops, struct evbuffer *out);

#endif
