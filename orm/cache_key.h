/*
 * Identity-map cache keys: one canonical spelling of a primary-key value,
 * whoever wrote it. A lookup sees the key as a literal ('5', 5, E'\x35'),
 * a Bind value in text or binary, an invalidation sees it in an UPDATE's
 * WHERE or in a logical replication tuple (text); all must name the same
 * Redis key, or an invalidation would miss the entry it is meant for.
 *
 * So only primary-key types whose text form this file can canonicalise are
 * cached: int2, int4, int8 and oid (decimal, no sign for 0, no leading
 * zeros), text and varchar (the bytes as they are), uuid (lower-case
 * 8-4-4-4-12). Any other type makes the table uncacheable ("primary key
 * type X is not supported"), which loses hits but never correctness.
 *
 * A key of several columns is the concatenation of "<length>:<value>" per
 * column, in the table's column order (attnum, which is also the order
 * logical replication sends key columns in, not the index's order); a
 * one-column key is its value alone.
 */
#ifndef PGC_ORM_CACHE_KEY_H
#define PGC_ORM_CACHE_KEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest canonical key (all columns) the cache stores; longer keys bypass it. */
#define CACHE_KEY_MAX 512
/* Columns in a primary key the cache handles. */
#define CACHE_KEY_COLS 8

#define CACHE_OID_BOOL    16
#define CACHE_OID_INT8    20
#define CACHE_OID_INT2    21
#define CACHE_OID_INT4    23
#define CACHE_OID_TEXT    25
#define CACHE_OID_OID     26
#define CACHE_OID_VARCHAR 1043
#define CACHE_OID_UUID    2950

/* Is a primary-key column of this type cacheable? */
bool cache_key_type_ok(uint32_t type_oid);

/*
 * Canonical text of one value of type type_oid into out (cap bytes, not
 * NUL-terminated): from its text form (binary false) or its binary form
 * (binary true). Returns the length written, or -1 when the value is not a
 * valid value of the type, does not fit, or the type is not supported.
 * Text input follows PostgreSQL's input functions for these types: integers
 * may have surrounding blanks and a sign; a uuid may be upper case, in
 * braces, or have its hyphens elsewhere or none. A binary integer may be 2,
 * 4 or 8 bytes wide whatever the key's integer type (the value counts).
 */
int cache_key_value(uint32_t type_oid, const void *value, size_t len, bool binary, char *out,
                    size_t cap);

/*
 * A whole key being built column by column. ncols is the primary key's
 * column count; add the columns in column (attnum) order.
 */
typedef struct CacheKey {
    int ncols;
    int added;
    size_t len;
    bool bad; /* a value did not canonicalise or the key outgrew CACHE_KEY_MAX */
    char buf[CACHE_KEY_MAX];
} CacheKey;

void cache_key_init(CacheKey *k, int ncols);
/* Add the next column's value (as for cache_key_value); false (and k->bad) on failure. */
bool cache_key_add(CacheKey *k, uint32_t type_oid, const void *value, size_t len, bool binary);
/* The finished key: true when every column was added and none failed. */
bool cache_key_done(const CacheKey *k);

#endif
