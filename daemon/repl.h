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
 *
 * Two rounds. PostgreSQL sends a transaction's changes once its commit
 * record is flushed, which can be before other sessions see the commit (a
 * short window with synchronous_commit = on; as long as the wait for a
 * standby with synchronous replication). A read in that window gets the old
 * row and would store it under the version the first round made. So every
 * committed transaction's callbacks are made twice: when its changes arrive
 * (first round, before its Commit is even decoded) and again once its xid is
 * visible to a new snapshot (second round), which a second, ordinary
 * connection of the Repl's own finds out: SELECT pg_current_snapshot()
 * (txid_current_snapshot() before PostgreSQL 13), one at a time, at most
 * every 2 ms while some transaction is pending. The second round repeats
 * the first round's row() and table() calls of the transaction (Relation
 * messages' table() included); when more than 10,000 keys are pending over
 * all transactions, the further keys' relids get table() instead, and when
 * a transaction named more than 256 relids, it gets all(). While that
 * connection is down (or a check goes unanswered for 2 s) the second round
 * comes 200 ms after the Commit instead, counted in unchecked. What was
 * pending when the stream breaks, or the Repl is freed, is dropped: the next
 * stream starts with all().
 */
#ifndef PGC_DAEMON_REPL_H
#define PGC_DAEMON_REPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct Pool;

#define REPL_OWN_PUBLICATION "pgcoalesce_cache"

typedef struct ReplCallbacks {
    /* Each is made twice for each committed change (see "Two rounds" above). */
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
    uint64_t rows;         /* row callbacks made (first round) */
    uint64_t tables;       /* table callbacks made (first round) */
    uint64_t rechecked;    /* second-round callbacks made (row, table and all) */
    uint64_t unchecked;    /* transactions whose second round came on the 200 ms fallback */
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
