/*
 * First-sight analysis of a shape: libpg_query parses the normalised text
 * once and the facts the N+1 detector, the batcher and the cache need are
 * kept in an immutable, reference-counted ShapeInfo.
 *
 * Policies decided here (documented once, used everywhere):
 *  - Functions: a short list of known immutable functions (and aggregates,
 *    window functions, set-returning functions of that kind) is safe. Known
 *    stable ones (now(), current_timestamp, to_char, ...) set SHAPE_F_STABLE:
 *    they allow batching (one statement sees one snapshot of them) but not
 *    caching. Everything else, including every user-defined function, sets
 *    SHAPE_F_VOLATILE. Functions known to write (nextval, setval,
 *    set_config, advisory locks, ...) also clear SHAPE_F_READ_ONLY.
 *  - Read-only: a SELECT with no INTO, no locking clause, no data-modifying
 *    WITH and no function known to write.
 *  - Keys: the top-level AND-conjuncts of the WHERE of form col = $n or
 *    $n = col (a cast on the parameter is allowed; col may be qualified by a
 *    table or alias, resolved to the table). The statement is single-key
 *    when there is exactly one.
 *  - Batchable: a single read-only SELECT (no set operation) with at least
 *    one key, nothing volatile. LIMIT, ORDER BY, aggregates, DISTINCT,
 *    GROUP BY, joins and subqueries are kept per key by the LATERAL form.
 *    With several keys the batcher uses the one whose parameter varies.
 *  - Cacheable: a single read-only SELECT of one table (no join, subquery,
 *    WITH, set operation or OFFSET), nothing volatile or stable, whose WHERE
 *    is only key equalities. Whether they cover the whole primary key is
 *    learned later from the catalog, so the reason then says "pk unknown".
 *    LIMIT is allowed: the cache layer must see its value (limit_param) >= 1.
 */
#ifndef PGC_ORM_ANALYZE_H
#define PGC_ORM_ANALYZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    SHAPE_KIND_UNKNOWN = 0, /* did not parse */
    SHAPE_KIND_SELECT,      /* SELECT, VALUES, TABLE (read-only or not: see flags) */
    SHAPE_KIND_INSERT,
    SHAPE_KIND_UPDATE,
    SHAPE_KIND_DELETE,
    SHAPE_KIND_UTILITY, /* BEGIN/COMMIT/ROLLBACK/SAVEPOINT, SET, SHOW, DISCARD, LISTEN, ... */
    SHAPE_KIND_OTHER,   /* DDL, COPY, EXPLAIN, MERGE, CALL, ... */
} ShapeKind;

/* Facts about the statement (anywhere in it unless said otherwise). */
enum {
    SHAPE_F_READ_ONLY = 1u << 0,
    SHAPE_F_LIMIT = 1u << 1,  /* LIMIT / FETCH FIRST */
    SHAPE_F_OFFSET = 1u << 2, /* OFFSET */
    SHAPE_F_ORDER_BY = 1u << 3,
    SHAPE_F_DISTINCT = 1u << 4,
    SHAPE_F_AGGREGATE = 1u << 5,
    SHAPE_F_GROUP_BY = 1u << 6, /* GROUP BY or HAVING */
    SHAPE_F_WINDOW = 1u << 7,
    SHAPE_F_LOCKING = 1u << 8,   /* FOR UPDATE / SHARE / ... */
    SHAPE_F_VOLATILE = 1u << 9,  /* a function not known to be immutable or stable */
    SHAPE_F_STABLE = 1u << 10,   /* now(), CURRENT_DATE, ...: fine per statement */
    SHAPE_F_WRITE_FN = 1u << 11, /* nextval(), setval(), ...: writes */
    SHAPE_F_CTE = 1u << 12,
    SHAPE_F_WRITE_CTE = 1u << 13, /* WITH x AS (INSERT/UPDATE/DELETE ...) */
    SHAPE_F_MULTI_STMT = 1u << 14,
    SHAPE_F_SRF = 1u << 15,         /* set-returning function (select list or FROM) */
    SHAPE_F_SUBQUERY = 1u << 16,    /* sub-SELECT in an expression or FROM */
    SHAPE_F_JOIN = 1u << 17,        /* top-level FROM has a JOIN or several items */
    SHAPE_F_SET_OP = 1u << 18,      /* top level is UNION / INTERSECT / EXCEPT */
    SHAPE_F_INTO = 1u << 19,        /* SELECT INTO */
    SHAPE_F_STAR = 1u << 20,        /* "*" or "t.*" in the top-level select list */
    SHAPE_F_MANY_TABLES = 1u << 21, /* more tables than SHAPE_MAX_TABLES */
    SHAPE_F_RETURNING = 1u << 22,
};

#define SHAPE_MAX_TABLES  8
#define SHAPE_MAX_KEYS    4
#define SHAPE_MAX_OUTCOLS 64
#define SHAPE_REASON_MAX  128

typedef enum {
    SHAPE_KEY_COL_LEFT = 1,  /* col = $n */
    SHAPE_KEY_COL_RIGHT = 2, /* $n = col */
} ShapeKeySide;

/* A table the statement reads or writes, names as PostgreSQL's parser has
 * them (unquoted names folded to lower case). */
typedef struct ShapeTableRef {
    const char *schema; /* NULL when not qualified */
    const char *name;
    const char *alias; /* NULL when none */
} ShapeTableRef;

/* One col = $n conjunct of the top-level WHERE. */
typedef struct ShapeKey {
    int table;          /* index into tables[], -1 when not resolved */
    const char *column; /* column name */
    int param;          /* placeholder number n of $n */
    ShapeKeySide side;
} ShapeKey;

/*
 * The analysis of one shape. Immutable once built; shared by reference
 * count (ShapeTable holds one reference, anyone keeping it longer takes one).
 * All strings live in the same allocation.
 */
typedef struct ShapeInfo {
    uint64_t hash;
    uint32_t refs;
    ShapeKind kind;
    uint32_t flags;  /* SHAPE_F_* */
    const char *sql; /* the normalised text */
    uint32_t sql_len;

    int ntables;
    ShapeTableRef tables[SHAPE_MAX_TABLES];
    int nkeys;
    ShapeKey keys[SHAPE_MAX_KEYS];
    int limit_param;      /* $n of the top-level LIMIT, 0 if none or constant */
    int offset_param;     /* $n of the top-level OFFSET, 0 if none or constant */
    uint64_t page_params; /* bit n-1 set: $n is used in some LIMIT/OFFSET (n <= 64) */

    /* Top-level select list: out_cols[i] is "table.column" when output
     * column i is a plain column reference, else NULL; nout stops at "*". */
    int nout;
    const char **out_cols;

    /* The session state its statement leaves (orm/session.h), read from
     * the shape's words: for SELECT, INSERT, UPDATE, DELETE and the
     * utility statements (BEGIN, SET, LISTEN, ...), whose literals cannot
     * run anything; for other kinds (a DO block's body is a literal)
     * session_known is false and the text itself is to be read. */
    bool session_known;
    const char *session;

    bool batchable;
    bool cacheable;                      /* "candidate": the primary-key check is still to come */
    char batch_reason[SHAPE_REASON_MAX]; /* why not, "" when batchable */
    char cache_reason[SHAPE_REASON_MAX]; /* why not, or "pk unknown" */
} ShapeInfo;

/*
 * Analyse the normalised text sql[0..len) (NUL-terminated at len). Never
 * fails for bad SQL (that gives SHAPE_KIND_UNKNOWN with the parser's message
 * in the reasons); returns NULL only when out of memory. The result has one
 * reference. CPU-bound, tens of microseconds: call once per new shape.
 */
__attribute__((warn_unused_result)) ShapeInfo *shape_analyze(const char *sql, size_t len,
                                                             uint64_t hash);

void shape_info_ref(const ShapeInfo *info);
/* Drop a reference; frees at zero. NULL is fine. */
void shape_info_unref(const ShapeInfo *info);

/* The single key (nkeys == 1), or NULL. */
const ShapeKey *shape_info_key(const ShapeInfo *info);
/* The key whose parameter is $param, or NULL. */
const ShapeKey *shape_info_key_for_param(const ShapeInfo *info, int param);
/* "table.column" of a key (just "column" when unresolved) into buf. */
void shape_key_name(const ShapeInfo *info, const ShapeKey *key, char *buf, size_t cap);

const char *shape_kind_name(ShapeKind kind);

/* Free libpg_query's per-thread memory; call when a worker thread ends. */
void shape_analyze_thread_exit(void);

#endif
