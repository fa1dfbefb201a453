/*
 * The bounded shape table of one worker: shape hash -> ShapeInfo. A shape
 * seen for the first time is analysed once (orm/analyze.h); the table keeps
 * at most shape_cache_size of them and evicts with CLOCK (second chance;
 * a new shape enters without one), so lookups and inserts are O(1) and a
 * shape in use outlives a flood of one-off statements.
 */
#ifndef PGC_ORM_SHAPES_H
#define PGC_ORM_SHAPES_H

#include <stddef.h>
#include <stdint.h>

#include "orm/analyze.h"
#include "orm/shape.h"

typedef struct ShapeTable ShapeTable;

typedef struct ShapeTableStats {
    uint64_t hits;
    uint64_t misses; /* each one ran the analyser */
    uint64_t evictions;
    size_t count;
    size_t capacity;
} ShapeTableStats;

/* A table for capacity shapes (at least 1); NULL when out of memory. */
__attribute__((warn_unused_result)) ShapeTable *shapes_new(size_t capacity);
/* Free the table and drop its references (ShapeInfos referenced elsewhere live on). */
void shapes_free(ShapeTable *t);

/*
 * The analysis of sb's shape (sb->status must be SHAPE_OK), analysing it on
 * first sight. The pointer is borrowed: valid until the next shapes_get on
 * this table; take a reference (shape_info_ref) to keep it longer. NULL only
 * when sb is not SHAPE_OK or memory ran out.
 */
const ShapeInfo *shapes_get(ShapeTable *t, const ShapeBuf *sb);

/* The cached analysis of a hash, or NULL; never analyses. Borrowed as above. */
const ShapeInfo *shapes_lookup(ShapeTable *t, uint64_t hash);

void shapes_stats(const ShapeTable *t, ShapeTableStats *out);

/* Iteration for reports: slot i < capacity, NULL for an empty slot. */
const ShapeInfo *shapes_at(const ShapeTable *t, size_t i);

#endif
