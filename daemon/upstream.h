/*
 * libpq connections of the proxy's own (catalog queries, the replication
 * stream) to a pool's upstream: the same host, port, database, user,
 * password and TLS settings its server connections use.
 */
#ifndef PGC_DAEMON_UPSTREAM_H
#define PGC_DAEMON_UPSTREAM_H

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

#endif
