/*
 * Invalidation from writes made anywhere: a logical replication stream of
 * one upstream database (pgoutput, protocol version 1), consumed with
 * libpq's non-blocking API on the worker's event loop. Each committed row
 * change becomes "this row of this table changed", by primary key in the
 * canonical form of orm/cache_key.h; TRUNCATE and relation (schema) changes
 * become "this table changed"; a (re)connection, after which changes may
 * have been missed, becomes "everything changed".
 *
 * The stream uses a temporary slot (gone with the connection, so a proxy
 * that dies leaves no WAL pinned) and the publication named by
 * cache_publication, or, when that is empty, its own "pgcoalesce_cache"
 * FOR ALL TABLES, created when missing (that needs a superuser; otherwise
 * name one in cache_publication). Needs wal_level = logical and a user with
 * the REPLICATION attribute.
 */
#ifndef PGC_DAEMON_REPL_H
#define PGC_DAEMON_REPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct Pool;

#define REPL_OWN_PUBLICATION "pgcoalesce_cache"

typedef struct ReplCallbacks {
    /* A row changed: key is its primary key, canonical (orm/cache_key.h). */
    void (*row)(void *arg, uint32_t relid, const char *key, size_t keylen);
    /* Some rows of a table changed whose keys are not known (TRUNCATE, a
     * relation change, a replica identity that is not the primary key). */
    void (*table)(void *arg, uint32_t relid);
    /* Changes may have been missed (the stream (re)started). */
    void (*all)(void *arg);
    void *arg;
} ReplCallbacks;

typedef struct ReplStats {
    bool streaming;        /* START_REPLICATION is running */
    uint64_t connects;     /* streams started */
    uint64_t failures;     /* connection, slot or stream failures */
    uint64_t transactions; /* commits received */
    uint64_t rows;         /* row callbacks made */
    uint64_t tables;       /* table callbacks made */
    double last_lag;       /* seconds from the last commit to its arrival here */
    double max_lag;
    char last_error[160];
} ReplStats;

typedef struct Repl Repl;

/*
 * Start following p's upstream database (connecting as p's server user,
 * retrying with backoff up to 30 s between tries). The callbacks run on
 * p's worker loop. NULL when out of memory.
 */
Repl *repl_new(struct Pool *p, const ReplCallbacks *cb);
void repl_free(Repl *r);
void repl_stats(const Repl *r, ReplStats *out);
/* Is the stream running (every committed change since its start is being heard)? */
bool repl_streaming(const Repl *r);

#endif
