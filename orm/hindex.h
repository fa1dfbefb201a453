/*
 * A fixed-capacity hash index from 64-bit keys (already well mixed, such as
 * shape hashes) to slot numbers: open addressing with linear probing and
 * backward-shift deletion, so lookups stay O(1) without tombstones.
 */
#ifndef PGC_ORM_HINDEX_H
#define PGC_ORM_HINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct HIndex {
    uint32_t mask; /* table size - 1 (a power of two, at least twice the capacity) */
    uint64_t *keys;
    int32_t *vals; /* -1: empty */
} HIndex;

/* An index for up to capacity entries. False when out of memory. */
__attribute__((warn_unused_result)) bool hindex_init(HIndex *h, size_t capacity);
void hindex_free(HIndex *h);
/* The value of the first entry with this key, or -1. */
int32_t hindex_get(const HIndex *h, uint64_t key);
/* Add an entry (the caller keeps at most capacity entries). */
void hindex_put(HIndex *h, uint64_t key, int32_t val);
/* Remove the entry (key, val); no-op when absent. */
void hindex_del(HIndex *h, uint64_t key, int32_t val);

#endif
