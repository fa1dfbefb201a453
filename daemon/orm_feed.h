/*
 * Feeding the ORM layer from the proxied streams. The daemon does not parse
 * SQL: it hands statement texts, Bind values, RowDescriptions, DataRows and
 * CommandComplete tags to orm/ (shapes, N+1 detector, statement statistics)
 * at the right moments, and never changes a byte either side receives.
 *
 * When n1_mode is off nothing here is called: the client path tests the
 * setting once per message and the relay tests RqItem.n1, which is 0.
 *
 * Order. The detector needs events in execution order, but a client may
 * pipeline many statements before the first answer arrives. So the client
 * side only shapes a statement and queues it on the client (a ring of
 * OrmStmt, numbered by seq); the RqItem that will receive its answers gets
 * ORM_RQ_TRACK and that number. The relay starts the statement (n1_statement)
 * at the first answer to that item, feeds its result, and finishes it
 * (n1_statement_done) at CommandComplete, an error or ReadyForQuery. Items
 * the server skips after an error simply leave their ring entries behind;
 * the next start drops them by number.
 */
#ifndef PGC_DAEMON_ORM_FEED_H
#define PGC_DAEMON_ORM_FEED_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon/worker.h"
#include "orm/n1.h"
#include "orm/qstats.h"
#include "orm/shape.h"
#include "orm/shapes.h"

/* RqItem.n1 bits. */
#define ORM_RQ_TRACK    0x01 /* carries the client's statement n1_seq */
#define ORM_RQ_STARTED  0x02 /* n1_statement was called for it */
#define ORM_RQ_WANT     0x04 /* the detector wants its result rows */
#define ORM_RQ_COLS     0x08 /* n1_result_columns was called */
#define ORM_RQ_DONE     0x10 /* n1_statement_done was called */
#define ORM_RQ_DESCRIBE 0x20 /* a Describe whose RowDescription is the next item's */

/* Parameter hashes kept per queued statement: the detector compares
 * N1_MAX_PARAMS one by one; the rest are folded into one more. */
#define ORM_STMT_PARAMS (N1_MAX_PARAMS + 1)
/* Longest client message (Query, Parse, Bind) or server row (RowDescription,
 * DataRow) the ORM layer reads; longer ones are forwarded as they come and
 * their statement is "unknown" (or, for a row, not remembered). */
#define ORM_MAX_MSG 65536
/* Bind values looked at; a $n beyond counts as NULL. */
#define ORM_MAX_BINDS 4096
/* Statements a client may have queued (pipelined) before their answers; more are not followed. */
#define ORM_MAX_QUEUED 256

/*
 * Integers are compared by value. A key travels in whichever format the
 * driver picked: psycopg 3 sends a small int as a binary int2 and reads
 * results as text, asyncpg uses binary int4 both ways, psycopg2 and Django
 * inline "5". So a binary value of an integer type (int2, int4, int8), or of
 * unknown type and 2, 4 or 8 bytes long, is hashed as its decimal text, on
 * both sides: Bind values and result cells. Likewise a binary uuid whose
 * type is known (a Bind parameter declared uuid, as psycopg 3 sends them; a
 * result column described as uuid) is hashed as its text; asyncpg's uuids,
 * untyped on both sides, match as raw bytes.
 */
#define ORM_RES_TEXT   0 /* every result column in text */
#define ORM_RES_BINARY 1 /* every result column in binary */
#define ORM_RES_MIXED  2 /* per column: OrmStmt.res_bin */

/* One statement of a client, from its shaping to its end. */
typedef struct OrmStmt {
    const ShapeInfo *info; /* a reference; NULL: unknown shape */
    double sent;           /* now_sec() when it was forwarded */
    uint32_t seq;
    uint8_t nparams;
    uint8_t res_fmt;  /* ORM_RES_*: result formats the Bind asked for */
    bool no_result;   /* a multi-statement Query: counted, never remembered as a parent */
    uint64_t res_bin; /* ORM_RES_MIXED: bit c set when column c is binary */
    uint64_t params[ORM_STMT_PARAMS];
} OrmStmt;

/*
 * A statement text's shape kept for its next executions, so that an
 * extended-protocol execution (Bind, Execute) costs no normalising: each
 * placeholder's value is either a Bind parameter or a literal of the text
 * (hashed once). Kept on the PreparedStmt of a named statement and per
 * client for the unnamed one (while its text stays the same). Texts with a
 * folded list (IN ($1, $2)) are shaped at every Bind instead.
 */
typedef struct OrmParamSource {
    uint32_t bind; /* the value of Bind parameter bind (1-based), or 0: */
    uint64_t hash; /* ... the hash of a literal written in the text */
} OrmParamSource;

typedef struct OrmShapeCache {
    const ShapeInfo *info; /* a reference */
    uint32_t nparams;
    OrmParamSource src[]; /* one per placeholder */
} OrmShapeCache;

/* Batching counters (n1_mode = batch), per worker. */
typedef struct OrmBatchStats {
    uint64_t batches;           /* batched statements that answered */
    uint64_t keys_prefetched;   /* keys they fetched */
    uint64_t keys_answered;     /* child executions answered from a prefetch */
    uint64_t keys_wasted;       /* prefetched keys dropped without being asked for */
    uint64_t round_trips_saved; /* keys_answered minus the batches' own round trips */
    uint64_t types_learned;     /* key types learned with Parse/Describe */
    uint64_t fb_error;          /* the batched statement failed: the single one was sent */
    uint64_t fb_type;           /* the key type could not be learned or is not supported */
    uint64_t fb_keys;           /* a key could not be written as the key type's text */
    uint64_t dropped;           /* prefetches dropped: another statement, a status change, ttl */
    uint64_t expired;           /* ... of which by n1_prefetch_ttl */
    uint64_t unbatchable;       /* shapes given up on after repeated failures */
} OrmBatchStats;

/* Server round trips the batches saved: answered keys less the batches' own trips. */
static inline uint64_t orm_batch_round_trips_saved(const OrmBatchStats *st)
{
    uint64_t cost = st->batches + st->types_learned;

    return st->keys_answered > cost ? st->keys_answered - cost : 0;
}

typedef struct OrmPrefetch OrmPrefetch;       /* daemon/batch.c */
typedef struct OrmRowDesc OrmRowDesc;         /* daemon/orm_feed.c */
typedef struct OrmBatch OrmBatch;             /* daemon/batch.c */
typedef struct OrmBatchShapes OrmBatchShapes; /* daemon/batch.c */
#define ORM_MAX_PREFETCH 4                    /* child shapes with a prefetch at once, per client */

/* Per worker. */
typedef struct OrmWorker {
    ShapeBuf *sb;
    ShapeTable *shapes;
    N1Table *n1;
    QStats *queries;
    uint8_t *msg;            /* ORM_MAX_MSG: one message copied whole, used and forgotten */
    ShapeValue *binds;       /* ORM_MAX_BINDS */
    char (*decimals)[40];    /* ORM_MAX_BINDS: binary integer and uuid Bind values as text */
    uint64_t *hashes;        /* SHAPE_MAX_PARAMS */
    double wall_offset;      /* wall clock minus now_sec(), for first/last seen */
    uint64_t statements;     /* finished statements fed to the detector */
    uint64_t unknown;        /* ... of which of unknown shape */
    uint64_t runs;           /* N+1 runs that reached n1_threshold */
    uint64_t new_patterns;   /* first detections of a (parent, child) pattern */
    OrmBatchShapes *bshapes; /* key types learned, shapes given up on */
    OrmBatchStats batch;
} OrmWorker;

/* Per client, created at its first statement while n1_mode is on. */
typedef struct ClientOrm {
    N1Session *sess;
    uint64_t params_digest; /* c->params.digest when application_name was last passed on */
    OrmStmt *ring;          /* queued statements, oldest at head */
    uint32_t head, len, cap;
    uint32_t next_seq;
    OrmStmt cur; /* the statement running (after start, until done) */
    bool cur_open;
    double cur_start; /* when it started: sent, or the previous one's end if later */
    double last_done;
    bool cols_typed;   /* the running statement's RowDescription was read: */
    uint64_t col_int;  /* ... bit c: column c is a binary integer */
    uint64_t col_uuid; /* ... bit c: column c is a binary uuid */
    OrmRowDesc *rd;    /* the last RowDescription read whole, or NULL */
    /* extended protocol */
    char *unnamed; /* the last unnamed Parse after its name: text, NUL, parameter types */
    uint32_t unnamed_len, unnamed_size, unnamed_cap; /* text length, whole size, allocated */
    bool unnamed_ok;                                 /* false: none, or too long to keep */
    OrmShapeCache *unnamed_cache;                    /* the unnamed text's shape, or NULL */
    OrmStmt bound; /* the unnamed portal's statement and values (last Bind) */
    bool bound_ok;
    ClientStmts named; /* session mode: the client's named statements (transaction mode
                        * has them in c->stmts) */
    /* batching (daemon/batch.c) */
    uint64_t parent_bin; /* bit c: the parent's column c came in binary */
    OrmPrefetch *pf[ORM_MAX_PREFETCH];
    int npf;
    OrmBatch *batch;     /* a batched statement in flight for the client's held execution */
    bool batch_skip;     /* the held execution goes to the server as it is (after a fallback) */
    uint32_t batch_hint; /* keys to fetch next time, from what the last prefetch was used for */
} ClientOrm;

/* worker: tables sized from w->cfg; false when out of memory. */
bool orm_worker_init(Worker *w) __attribute__((warn_unused_result));
void orm_worker_free(Worker *w);
/* A reload: new n1_threshold / n1_result_memory. */
void orm_worker_configure(Worker *w);
/* Wall clock in microseconds for a now_sec() value. */
uint64_t orm_wall_us(const Worker *w, double mono);

/*
 * Client side, called only while n1_mode is on. Before a message is
 * forwarded: false when the whole message is needed and has not arrived
 * (the caller stops and waits). When the message is buffered but beyond
 * what cur covers, the *fwd bytes before it are forwarded to s and cur is
 * set up again over the message.
 */
bool orm_client_whole(Client *c, Server *s, char type, uint32_t len, IoCursor *cur, size_t *fwd);
/*
 * After client_note_message queued the message's item (if any). True when
 * the message is a simple Query whose shape tells the session state it
 * leaves: *session is that (orm/session.h), NULL for none.
 */
bool orm_client_message(Client *c, Server *s, char type, const IoCursor *cur, uint32_t len,
                        const char **session);
/* A Bind naming a statement the proxy maps (transaction mode); body is the whole message body. */
void orm_client_bind(Client *c, PreparedStmt *ps, const uint8_t *body, uint32_t len);
void orm_client_free(Client *c);

/*
 * The relay's per-message test: does the ORM layer want to see this message
 * of the head item? Not for items it does not follow, nor for DataRows of a
 * started statement whose rows it does not want.
 */
static inline bool orm_follows(const RqItem *head, char type)
{
    return head->n1 &&
           (type != 'D' || (head->n1 & (ORM_RQ_WANT | ORM_RQ_STARTED)) != ORM_RQ_STARTED);
}

/*
 * Relay side: a server message while orm_follows() the head item. Returns
 * false when the whole message is needed first (the caller waits); cur and
 * *fwd as for orm_client_whole, towards the client.
 */
bool orm_server_message(Server *s, char type, uint32_t len, IoCursor *cur, size_t *fwd);

/* ---- for daemon/batch.c ---- */
ClientOrm *orm_client_get(Client *c);
void orm_stmt_release(OrmStmt *e);
void orm_stmt_copy(OrmStmt *dst, const OrmStmt *src);
/* Shape text with Bind values into *e; false for an empty statement. */
bool orm_stmt_shape(OrmWorker *ow, const char *text, size_t n, const ShapeValue *binds, int nbinds,
                    OrmStmt *e);
/* A Parse / a Bind of the unnamed portal, as the client side sees them (body whole). */
void orm_client_parse_body(Client *c, const uint8_t *body, uint32_t len);
void orm_client_bind_body(Client *c, const uint8_t *body, uint32_t len);
/* A statement the proxy answered itself: to the detector and statistics at once. */
void orm_stmt_local(Client *c, const OrmStmt *e, uint64_t rows, double started);

/* ---- daemon/batch.c: N+1 batching (n1_mode = batch) ---- */
typedef enum {
    BATCH_PASS,   /* not answered here: forward as usual */
    BATCH_DONE,   /* answered from a prefetch; the bytes are consumed */
    BATCH_INPUT,  /* the execution is not all there yet: wait for more input */
    BATCH_SERVER, /* a batch is due but the client has no server: check one out */
    BATCH_WAIT,   /* a batched statement is on its way: the client waits */
} BatchResult;

/*
 * One whole execution at the front of a client's input, peeked at (not
 * consumed): a Query, or [Parse] Bind [Describe] Execute Sync of the unnamed
 * portal (a named statement only in transaction mode, where the proxy holds
 * its text). Used by batching and the cache, which answer executions
 * themselves.
 */
typedef struct OrmExec {
    uint8_t *buf; /* the execution's bytes, copied into the worker's scratch (ow->msg) */
    size_t bytes; /* its length in the client's input */
    bool simple;  /* a Query; else [Parse] Bind [Describe] Execute Sync */
    bool has_parse, has_describe;
    const char *text; /* the statement text (in buf or a PreparedStmt) */
    size_t text_len;
    const uint8_t *types; /* the statement's declared parameter types: int16 n, int32[n] */
    size_t types_len;
    const uint8_t *bind; /* the Bind body after its two names */
    size_t bind_len;
    OrmStmt stmt;
} OrmExec;

/*
 * Copy the execution at the front of the client's input into x and shape it.
 * BATCH_PASS when it is not one that can be answered by the proxy,
 * BATCH_INPUT when it has not all arrived, BATCH_DONE when x is ready.
 * Always orm_exec_free(x) after.
 */
BatchResult orm_exec_read(Client *c, OrmExec *x);
void orm_exec_free(OrmExec *x);

/* The transaction status the client sees now: its server's, or 'I' without one. */
static inline char orm_client_status(const Client *c)
{
    return c->server ? c->server->tx_status : 'I';
}

/*
 * Answer the execution at the front of the client's input (simple, with a
 * Parse, with a Describe as x says; exec_bytes long) with the messages the
 * server would have sent: ParseComplete and BindComplete where due, the
 * whole RowDescription message for a Query or after a Describe, the DataRow
 * messages rows[0..rows_len), CommandComplete with tag, ReadyForQuery with
 * the current status. Drains the execution, counts the query and feeds the
 * statement to the detector. Returns the bytes sent.
 */
size_t orm_answer(Client *c, const OrmExec *x, const uint8_t *rowdesc, size_t rowdesc_len,
                  const uint8_t *rows, size_t rows_len, const char *tag, uint64_t nrows,
                  double started);

bool batch_worker_init(OrmWorker *ow) __attribute__((warn_unused_result));
void batch_worker_free(OrmWorker *ow);
/*
 * At the start of a client's statement (nothing of it forwarded, nothing in
 * flight on its server): answer it from a prefetch, or send a batched
 * statement in its place.
 */
BatchResult batch_client(Client *c);
/* Drop the client's prefetches (a write, SET, unknown statement, ...). */
void batch_drop_all(Client *c);
void batch_client_free(Client *c);
/* Is the head item one of batch.c's? */
static inline bool batch_item(const RqItem *it)
{
    return it &&
           (it->kind == RQ_BATCH || it->kind == RQ_BATCH_TYPES || it->kind == RQ_BATCH_SAVEPOINT);
}
/* Server answers for the head batch item; false when s must not be used further
 * by the caller (released, closed, or waiting for more bytes). */
bool batch_server_input(Server *s);

#endif
