/*
 * Statement statistics per shape: calls, time and rows of every statement
 * the daemon fed to the ORM layer, so that N+1 numbers can be read against
 * the whole workload. One table per worker, bounded (CLOCK eviction, as the
 * shape table); statements of unknown shape (too long, unparseable,
 * multi-statement) are counted apart.
 */
#ifndef PGC_ORM_QSTATS_H
#define PGC_ORM_QSTATS_H

#include <stddef.h>
#include <stdint.h>

#include "orm/analyze.h"

typedef struct QStats QStats;

/* One shape's numbers. */
typedef struct QueryStat {
    uint64_t hash;
    const ShapeInfo *info; /* a reference held by the table: the SQL, kind, tables */
    uint64_t calls;
    uint64_t total_us;
    uint64_t max_us;
    uint64_t rows;              /* from CommandComplete tags: rows returned or affected */
    uint64_t first_us, last_us; /* wall clock of the first and latest call */
} QueryStat;

typedef struct QStatsSummary {
    uint64_t unknown_calls; /* statements of unknown shape */
    uint64_t unknown_us;
    uint64_t evictions;
    size_t count;
    size_t capacity;
} QStatsSummary;

/* A table for capacity shapes (at least 1); NULL when out of memory. */
__attribute__((warn_unused_result)) QStats *qstats_new(size_t capacity);
void qstats_free(QStats *q);

/*
 * Count one finished statement. info NULL: a statement of unknown shape.
 * now_us is the wall clock (first/last seen). No allocation unless the shape
 * is new to the table, and then none either: slots are preallocated.
 */
void qstats_record(QStats *q, const ShapeInfo *info, uint64_t us, uint64_t rows, uint64_t now_us);

/* The entries, most total time first, into out (up to cap); returns how many.
 * Pointers valid until the next qstats_record. */
size_t qstats_sorted(const QStats *q, const QueryStat **out, size_t cap);

void qstats_summary(const QStats *q, QStatsSummary *out);

#endif
