/*
 * The identity-map cache (cache_url set): answers of primary-key lookups
 * kept in Redis, shared by every worker and every pgcoalesce using the same
 * Redis, and never served past its invalidation contract (README "Cache").
 *
 * Redis layout, all under cache_namespace (NS):
 *   NS:e                         epoch: bumped when invalidations may have been lost
 *   NS:g:<db>:<oid>              table generation: bumped by writes whose rows are unknown
 *   NS:v:<db>:<oid>:<pk>         row version: bumped by every write of that row
 *   NS:c:<db>:<role>:<oid>:<e>.<g>:<pk>
 *                                hash, one field per (shape, result formats, other
 *                                parameters): "<row version>|<fill time>|<answer>"
 * A lookup reads e, g and v and the entry in one script; the entry counts
 * only when its row version is the current one and it is younger than
 * cache_ttl. A fill carries the e, g and v its lookup saw and is refused
 * when any moved meanwhile, so a slow reader never stores an old row over a
 * newer write. Invalidations are also published on NS:inval.
 *
 * Where it sits: client_process calls cache_client at the start of each
 * statement with nothing in flight (as for batching). A lookup pauses the
 * client until Redis answers or cache_timeout passes; a hit is answered by
 * the proxy without a server; a miss runs the client's own statement on its
 * server with the answer relayed as it comes and kept for the fill.
 */
#ifndef PGC_DAEMON_CACHE_H
#define PGC_DAEMON_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon/orm_feed.h"
#include "daemon/worker.h"

/* Why a cacheable-looking statement went to PostgreSQL without the cache. */
typedef enum {
    CACHE_BYPASS_REDIS = 0, /* Redis not connected, or the lookup could not be sent */
    CACHE_BYPASS_TIMEOUT,   /* no answer within cache_timeout */
    CACHE_BYPASS_ERROR,     /* Redis answered with an error */
    CACHE_BYPASS_CATALOG,   /* the table's facts are still being looked up */
    CACHE_BYPASS_TABLE,     /* the table may not be cached (RLS, no primary key, ...) */
    CACHE_BYPASS_KEY,       /* the WHERE does not give the whole primary key as values */
    CACHE_BYPASS_WROTE,     /* the transaction has written */
    CACHE_BYPASS_ISOLATION, /* REPEATABLE READ / SERIALIZABLE, or not known to be READ COMMITTED */
    CACHE_BYPASS_SESSION,   /* the session changed role or search_path */
    CACHE_BYPASS_REPLICATION, /* cache_invalidation = replication and the stream is not running */
    CACHE_BYPASS_N
} CacheBypass;

typedef struct CacheStats {
    uint64_t lookups;
    uint64_t hits;
    uint64_t misses;
    uint64_t fills;         /* answers stored */
    uint64_t fills_refused; /* an invalidation came after the read began */
    uint64_t fills_skipped; /* not stored: an error, no rows, a notice, over cache_max_value */
    uint64_t bypass[CACHE_BYPASS_N];
    uint64_t inval_statement; /* invalidations sent for a write passing through, at the statement */
    uint64_t inval_commit;    /* ... and again when it committed */
    uint64_t inval_replication; /* invalidations from the replication stream */
    uint64_t inval_remote;      /* invalidations other pgcoalesce instances published */
    uint64_t table_bumps;       /* table generations bumped (all sources) */
    uint64_t epoch_bumps;       /* everything invalidated at once */
    uint64_t inval_lost;        /* invalidations Redis did not take (then the epoch is bumped) */
    uint64_t bytes_stored;
    uint64_t bytes_served;
} CacheStats;

typedef struct CacheWorker CacheWorker;
typedef struct CacheClient CacheClient;

/* Per worker: connects to cache_url when set. False only when out of memory or bad URL. */
bool cache_worker_init(Worker *w) __attribute__((warn_unused_result));
void cache_worker_free(Worker *w);
/* Is the cache configured on this worker? */
static inline bool cache_on(const Worker *w)
{
    return w->cache != NULL;
}

/*
 * At the start of a client's statement (nothing of it forwarded, nothing in
 * flight on its server). BATCH_DONE: answered from the cache; BATCH_WAIT: a
 * lookup or a fill is on its way; BATCH_SERVER: a fill needs a server;
 * BATCH_INPUT: wait for the rest of the execution; BATCH_PASS: forward it.
 */
BatchResult cache_client(Client *c);
void cache_client_free(Client *c);
/* The execution the cache gave up on went to the server as it was. */
void cache_client_forwarded(Client *c);
/* orm_exec_read is only looking (batching, the cache): its Bind is not yet a statement. */
void cache_peek(Client *c, bool on);

/*
 * A statement of the client's is about to reach the server (orm_feed.c):
 * for writes, invalidate what they touch now and remember it for the
 * commit; note changes of role, search_path and isolation. sb is the shape
 * of text when it was just made (else NULL); binds are its Bind values as
 * orm_feed.c converted them (text, or binary not made text).
 */
void cache_note_statement(Client *c, const OrmStmt *e, const char *text, const ShapeBuf *sb,
                          const OrmShapeCache *k, const ShapeValue *binds, int nbinds);
/*
 * The client's server sent ReadyForQuery with status. At 'I' the
 * transaction's writes are invalidated again, and the client must not hear
 * of the commit before Redis has them (another pgcoalesce could serve the
 * old row meanwhile): true means hold the ReadyForQuery (and what follows)
 * in the server's input; cache.c calls server_relay again once Redis
 * confirmed, or after cache_timeout. Then (or when false) relay it as usual.
 */
bool cache_commit_hold(Client *c, char status);

/* Is the head item the cache's fill? */
static inline bool cache_item(const RqItem *it)
{
    return it && it->kind == RQ_CACHE_FILL;
}
/* Server answers for the head fill item; as batch_server_input. */
bool cache_server_input(Server *s);

/* A pool goes away: its catalog goes with it. */
void cache_pool_free(Pool *p);

/* Reports (SHOW CACHE, /cache, /metrics). */
struct evbuffer;
void cache_report_json(const Worker *w, struct evbuffer *out);
void cache_report_metrics(const Worker *w, struct evbuffer *out);
/* One line per fact for SHOW CACHE: name, value. Returns false past the end. */
bool cache_report_row(const Worker *w, int i, const char **name, char *value, size_t cap);

#endif
