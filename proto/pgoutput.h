/*
 * Logical replication wire format: the replication CopyData messages
 * (XLogData, primary keepalive, standby status update) and the pgoutput
 * protocol version 1 messages carried inside XLogData. A pure decoder over
 * bytes: no I/O, no allocation, no state between calls.
 *
 * Decoding validates the whole message (every length checked against what
 * is left) before returning, so the iterators below cannot run off the end
 * of a message that decoded; they still check bounds and simply stop.
 * Pointers in the results point into the caller's buffer.
 */
#ifndef PGC_PROTO_PGOUTPUT_H
#define PGC_PROTO_PGOUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Seconds from the Unix epoch to the PostgreSQL epoch (2000-01-01 UTC). */
#define PGO_EPOCH_OFFSET_SEC 946684800LL

/* Bytes of a standby status update ('r' + 4 x int64 + reply byte). */
#define PGO_STATUS_LEN 34

/* ---- replication CopyData (protocol-replication) ---------------------- */

typedef struct PgoCopy {
    char kind;           /* 'w' XLogData or 'k' primary keepalive */
    uint64_t start_lsn;  /* 'w': where the data starts */
    uint64_t end_lsn;    /* current end of WAL on the server */
    int64_t send_time;   /* server clock, microseconds since 2000-01-01 */
    bool reply_request;  /* 'k': the server wants a status update now */
    const uint8_t *data; /* 'w': the pgoutput message */
    size_t len;
} PgoCopy;

/*
 * Decode one CopyData payload of a START_REPLICATION stream. Returns NULL,
 * or why the bytes are not a well-formed XLogData or keepalive.
 */
const char *pgo_decode_copy(const uint8_t *p, size_t len, PgoCopy *out)
    __attribute__((warn_unused_result));

/*
 * Standby status update into out: written/flushed/applied positions
 * (last byte + 1), the client clock in microseconds since 2000-01-01, and
 * whether the server should answer at once. Returns PGO_STATUS_LEN.
 */
size_t pgo_status_update(uint8_t out[PGO_STATUS_LEN], uint64_t written, uint64_t flushed,
                         uint64_t applied, int64_t now_usec, bool reply);

/* ---- pgoutput messages (protocol-logicalrep-message-formats) ---------- */

typedef enum {
    PGO_BEGIN = 'B',
    PGO_COMMIT = 'C',
    PGO_ORIGIN = 'O',
    PGO_RELATION = 'R',
    PGO_TYPE = 'Y',
    PGO_INSERT = 'I',
    PGO_UPDATE = 'U',
    PGO_DELETE = 'D',
    PGO_TRUNCATE = 'T',
    PGO_MESSAGE = 'M',
} PgoKind;

/* A validated TupleData part: ncols columns starting at p. */
typedef struct PgoTuple {
    int ncols;
    const uint8_t *p;
    size_t len;
} PgoTuple;

/* One column of a tuple. */
typedef struct PgoValue {
    char kind;            /* 'n' null, 'u' unchanged TOAST, 't' text, 'b' binary */
    const uint8_t *value; /* 't'/'b' only */
    uint32_t len;
} PgoValue;

/* One column of a Relation message. */
typedef struct PgoColumn {
    uint8_t flags; /* PGO_COL_KEY */
    const char *name;
    uint32_t type_oid;
    int32_t typmod;
} PgoColumn;

#define PGO_COL_KEY 1 /* part of the replica identity */

typedef struct PgoMsg {
    PgoKind kind;
    union {
        struct {
            uint64_t final_lsn;
            int64_t commit_time; /* microseconds since 2000-01-01 */
            uint32_t xid;
        } begin;
        struct {
            uint8_t flags;
            uint64_t commit_lsn;
            uint64_t end_lsn;
            int64_t commit_time;
        } commit;
        struct {
            uint32_t relid;
            const char *nspname; /* "" for pg_catalog */
            const char *relname;
            char replident; /* relreplident: 'd' default (primary key), 'n', 'f' full, 'i' index */
            int ncols;
            const uint8_t *cols; /* validated column part, for pgo_relation_iter */
            size_t cols_len;
        } relation;
        /* Insert, Update, Delete */
        struct {
            uint32_t relid;
            char old_kind;    /* 0 none, 'K' replica identity key, 'O' whole old row */
            PgoTuple old_row; /* when old_kind */
            bool has_new;     /* Insert, Update */
            PgoTuple new_row; /* when has_new */
        } change;
        struct {
            uint32_t nrels;
            uint8_t options;       /* 1 CASCADE, 2 RESTART IDENTITY */
            const uint8_t *relids; /* nrels big-endian OIDs: pgo_truncate_relid */
        } truncate;
    } u;
} PgoMsg;

/*
 * Decode one pgoutput (protocol version 1) message, the data of an
 * XLogData. Origin, Type and Message are validated but their contents not
 * returned. Returns NULL, or why the message is malformed or unknown
 * (trailing bytes count as malformed).
 */
const char *pgo_decode(const uint8_t *p, size_t len, PgoMsg *out)
    __attribute__((warn_unused_result));

/* Walk over the columns of a decoded tuple or relation. */
typedef struct PgoIter {
    const uint8_t *p;
    size_t len;
    size_t pos;
    int left;
} PgoIter;

void pgo_tuple_iter(const PgoTuple *t, PgoIter *it);
/* The next column; false at the end. */
bool pgo_tuple_next(PgoIter *it, PgoValue *out);
void pgo_relation_iter(const PgoMsg *m, PgoIter *it);
bool pgo_relation_next(PgoIter *it, PgoColumn *out);
/* The i-th relation of a decoded Truncate (i < nrels). */
uint32_t pgo_truncate_relid(const PgoMsg *m, uint32_t i);

#endif
