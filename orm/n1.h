/*
 * N+1 detection: a per-session detector fed with events by the daemon (no
 * I/O here) and a per-worker table of the patterns found.
 *
 * Definitions (the contract the tests check):
 *  - The parent is the session's latest statement that did not join a run
 *    (below) and is not a utility statement (BEGIN, COMMIT, SET, ... pass
 *    through without effect). Its result's column values are remembered,
 *    bounded by result_memory values (as 64-bit hashes).
 *  - A statement of another shape than the parent joins the parent when one
 *    of its parameter values (not a LIMIT/OFFSET one) is in a column of the
 *    parent's result. A read-only one then starts or extends the run of its
 *    shape; a write (executemany INSERT, per-row UPDATE) is only absorbed:
 *    it keeps the parent and never forms a run.
 *  - A run is consecutive executions of one read-only child shape under one
 *    parent in which at most one parameter changes from one execution to the
 *    next, always the same one, and whose value is found in one parent
 *    column (the key source) at a strictly increasing row position (rows may
 *    be skipped: ORMs do not ask again for keys they hold; a repeated value
 *    must appear again further down, as Django's repeated many-to-one loads
 *    do). Runs of different child shapes under one parent interleave freely
 *    (up to N1_MAX_RUNS at once).
 *  - A run is reported when it reaches threshold executions and its varying
 *    parameter took at least two values. So repeated identical queries,
 *    pagination (the parameter is a LIMIT/OFFSET one, or the next page's
 *    parent is the previous page: the same shape), and writes never report.
 *  - A statement matching none of this becomes the new parent; all runs end.
 *
 * Events, in execution order (the daemon serialises pipelined requests):
 *   n1_statement()                      when a statement starts
 *   n1_result_columns()                 on its RowDescription, if n1_wants_result()
 *   n1_result_column_values()           per DataRow, while it returns true
 *   n1_statement_done()                 on its CommandComplete / error
 * Parameter values are hashes from shape_param_hashes(); result values are
 * raw column bytes (text or binary: a key matches when both sides use the
 * same format, as ORMs do).
 */
#ifndef PGC_ORM_N1_H
#define PGC_ORM_N1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orm/analyze.h"
#include "orm/shape.h"

#define N1_MAX_RUNS          8    /* child shapes tracked at once under one parent */
#define N1_MAX_PARAMS        16   /* parameters compared one by one; the rest must not change */
#define N1_MAX_CANDS         8    /* (parameter, parent column) key-source candidates per run */
#define N1_MAX_COLS          64   /* parent result columns remembered */
#define N1_NAME_MAX          64   /* application_name, user, database kept per pattern */
#define N1_COL_MAX           128  /* key column / key source names */
#define N1_SQL_MAX           4096 /* normalised SQL kept per pattern, cut beyond */
#define N1_DEFAULT_THRESHOLD 5
#define N1_RAW_MAX           256 /* longest parent value kept for batching */
#define N1_RAW_AVG           24  /* bytes kept per remembered value on average */

typedef struct N1Table N1Table;
typedef struct N1Session N1Session;

/* One (parent shape, child shape) pattern. */
typedef struct N1Pattern {
    uint64_t parent_hash;
    uint64_t child_hash;
    char *parent_sql; /* normalised, owned, at most N1_SQL_MAX bytes */
    char *child_sql;
    char key_column[N1_COL_MAX];  /* child column compared to the key: "posts.user_id", or "$n" */
    char key_source[N1_COL_MAX];  /* parent column the keys come from: "users.id" */
    char child_table[N1_COL_MAX]; /* table of key_column, "" if unknown */
    int key_param;                /* $n of the child's key */
    bool many_to_one;             /* the child is looked up by its "id" */
    uint64_t occurrences;         /* runs that reached the threshold */
    uint64_t total_run_len;       /* child executions in those runs */
    uint64_t max_run_len;
    uint64_t child_us; /* time of those executions (time per run: child_us / occurrences) */
    uint64_t child_rows;
    uint64_t batched; /* child executions the proxy answered from a batch (n1_mode = batch) */
    uint64_t first_seen_us;
    uint64_t last_seen_us;
    /* client of the latest occurrence */
    char application_name[N1_NAME_MAX];
    char user[N1_NAME_MAX];
    char database[N1_NAME_MAX];
} N1Pattern;

typedef enum {
    N1_NONE = 0,
    N1_RUN_DETECTED, /* this execution made a run reach the threshold */
    N1_NEW_PATTERN,  /* ... and its pattern was never seen before: log it */
} N1Event;

typedef struct N1TableStats {
    uint64_t runs_detected;
    uint64_t patterns_evicted;
    size_t count;
    size_t capacity;
} N1TableStats;

/*
 * A pattern table for up to max_patterns patterns (oldest last_seen evicted
 * when full), runs reported at threshold executions (< 2 means the
 * default), result_memory column values remembered per session (0 turns
 * key-source learning and so detection off). NULL when out of memory.
 */
__attribute__((warn_unused_result)) N1Table *n1_table_new(size_t max_patterns, int threshold,
                                                          int result_memory);
/* New threshold / result_memory (reload); sessions pick them up at their next parent. */
void n1_table_configure(N1Table *t, int threshold, int result_memory);
/* Free the table; its sessions must be freed first. */
void n1_table_free(N1Table *t);

/* A detector for one client session; names are copied (cut to N1_NAME_MAX). */
__attribute__((warn_unused_result)) N1Session *
n1_session_new(N1Table *t, const char *user, const char *database, const char *application_name);
void n1_session_set_application(N1Session *s, const char *application_name);
void n1_session_free(N1Session *s);

/*
 * A statement starts. info is its shape's analysis (NULL when unknown: too
 * long or unparseable), params its placeholder value hashes. now_us is any
 * monotonic or wall clock in microseconds, used for first/last seen. On
 * N1_RUN_DETECTED / N1_NEW_PATTERN, *pattern (if not NULL) points at the
 * pattern, valid until the next call into any session of this table.
 */
N1Event n1_statement(N1Session *s, const ShapeInfo *info, const uint64_t *params, int nparams,
                     uint64_t now_us, const N1Pattern **pattern);

/* Does the detector want the current statement's result rows? */
bool n1_wants_result(const N1Session *s);

/* The RowDescription of the current statement (names may be NULL). */
void n1_result_columns(N1Session *s, int ncols, const char *const *names);

/* One DataRow. Returns false when no more rows are wanted (memory full). */
bool n1_result_column_values(N1Session *s, const ShapeValue *vals, int ncols);
/* The same, with the values as the server sent them (kept for batching)
 * when vals holds them converted for comparing (binary integers as decimal
 * text); sent NULL: vals are as sent. */
bool n1_result_row(N1Session *s, const ShapeValue *vals, const ShapeValue *sent, int ncols);

/* The current statement was answered from a batch, not by the server. */
void n1_statement_batched(N1Session *s);

/* The current statement finished (CommandComplete or an error). */
void n1_statement_done(N1Session *s, uint64_t duration_us, uint64_t rows);

void n1_table_stats(const N1Table *t, N1TableStats *out);

/*
 * The patterns, most child time first, into out (up to cap); returns how
 * many. Pointers valid until the next call into the table's sessions.
 */
size_t n1_table_sorted(const N1Table *t, const N1Pattern **out, size_t cap);

/* The suggested eager-loading fix, into buf; returns snprintf's length. */
int n1_pattern_fix(const N1Pattern *p, char *buf, size_t cap);

/*
 * Batching support (n1_mode = batch). With keep_values on, the parent's
 * values are kept as sent (up to N1_RAW_MAX bytes each, about N1_RAW_AVG
 * per value in all) next to their hashes, so that the daemon can fetch the
 * keys a run has not asked for yet.
 */
void n1_session_keep_values(N1Session *s, bool keep);
/* Changes whenever a new statement becomes the parent. */
uint64_t n1_parent_gen(const N1Session *s);
/* Rows of the parent's result remembered. */
uint32_t n1_parent_rows(const N1Session *s);
/* The hash of a remembered cell (row < n1_parent_rows(), col < the parent's columns). */
uint64_t n1_parent_hash_at(const N1Session *s, uint32_t row, int col);
/* A remembered cell's bytes: their length, -1 for NULL, -2 when not kept. */
int n1_parent_value(const N1Session *s, uint32_t row, int col, const uint8_t **data);

/* Is there a run of at least after executions whose key has changed? (cheap) */
bool n1_runs_ready(const N1Session *s, int after);

/* How a statement about to run continues a run. */
typedef struct N1BatchPlan {
    int param;      /* 0-based placeholder whose value is the key */
    int col;        /* parent column the keys come from */
    uint32_t row;   /* row of this statement's key in that column */
    uint32_t count; /* executions of the run so far */
    uint64_t gen;   /* n1_parent_gen() it is about */
} N1BatchPlan;

/*
 * Would this statement (not yet passed to n1_statement) extend a run of at
 * least after executions with a new key found further down its key source?
 * Then *out says where its key is. Does not change the session.
 */
bool n1_batch_plan(const N1Session *s, const ShapeInfo *info, const uint64_t *params, int n,
                   int after, N1BatchPlan *out);

#endif
