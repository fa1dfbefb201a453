/*
 * The bounded shape table: a hash index over a fixed array of ShapeInfo
 * references, with a CLOCK hand choosing what to evict.
 */
#include "orm/shapes.h"

#include <stdlib.h>
#include <string.h>

#include "orm/hindex.h"

struct ShapeTable {
    size_t cap;
    size_t n;    /* slots in use: always 0..n-1 */
    size_t hand; /* CLOCK hand */
    ShapeInfo **ents;
    uint8_t *used; /* CLOCK reference bits */
    HIndex idx;    /* hash -> slot */
    uint64_t hits, misses, evictions;
};

ShapeTable *shapes_new(size_t capacity)
{
    ShapeTable *t;

    if (capacity == 0)
        capacity = 1;
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->cap = capacity;
    t->ents = calloc(capacity, sizeof(*t->ents));
    t->used = calloc(capacity, 1);
    if (!t->ents || !t->used || !hindex_init(&t->idx, capacity))
        goto out_free;
    return t;
out_free:
    free(t->ents);
    free(t->used);
    free(t);
    return NULL;
}

void shapes_free(ShapeTable *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        shape_info_unref(t->ents[i]);
    hindex_free(&t->idx);
    free(t->ents);
    free(t->used);
    free(t);
}

/* A slot for a new entry: a never-used one, else the CLOCK victim. */
static size_t take_slot(ShapeTable *t)
{
    size_t victim;

    if (t->n < t->cap)
        return t->n++;
    while (t->used[t->hand]) {
        t->used[t->hand] = 0;
        t->hand = (t->hand + 1) % t->cap;
    }
    victim = t->hand;
    t->hand = (t->hand + 1) % t->cap;
    hindex_del(&t->idx, t->ents[victim]->hash, (int32_t)victim);
    shape_info_unref(t->ents[victim]);
    t->ents[victim] = NULL;
    t->evictions++;
    return victim;
}

const ShapeInfo *shapes_lookup(ShapeTable *t, uint64_t hash)
{
    int32_t slot = hindex_get(&t->idx, hash);

    if (slot < 0)
        return NULL;
    t->used[slot] = 1;
    return t->ents[slot];
}

const ShapeInfo *shapes_get(ShapeTable *t, const ShapeBuf *sb)
{
    int32_t slot;
    ShapeInfo *info;
    size_t s;

    if (sb->status != SHAPE_OK)
        return NULL;
    slot = hindex_get(&t->idx, sb->hash);
    if (slot >= 0) {
        info = t->ents[slot];
        if (info->sql_len == sb->text_len && memcmp(info->sql, sb->text, sb->text_len) == 0) {
            t->used[slot] = 1;
            t->hits++;
            return info;
        }
        /* Two texts with one 64-bit hash: the newer one takes the slot. */
        hindex_del(&t->idx, sb->hash, slot);
        shape_info_unref(info);
        t->ents[slot] = NULL;
        t->evictions++;
        s = (size_t)slot;
    } else {
        s = (size_t)-1;
    }
    t->misses++;
    info = shape_analyze(sb->text, sb->text_len, sb->hash);
    if (!info) {
        if (s != (size_t)-1) {
            /* keep slots 0..n-1 filled: move the last entry into the hole */
            size_t last = --t->n;
            if (last != s) {
                hindex_del(&t->idx, t->ents[last]->hash, (int32_t)last);
                t->ents[s] = t->ents[last];
                t->used[s] = t->used[last];
                hindex_put(&t->idx, t->ents[s]->hash, (int32_t)s);
            }
            t->ents[last] = NULL;
        }
        return NULL;
    }
    if (s == (size_t)-1)
        s = take_slot(t);
    t->ents[s] = info;
    /* A new shape enters without its second chance: it earns one on its
     * next hit, so a stream of one-off statements evicts itself first. */
    t->used[s] = 0;
    hindex_put(&t->idx, info->hash, (int32_t)s);
    return info;
}

void shapes_stats(const ShapeTable *t, ShapeTableStats *out)
{
    out->hits = t->hits;
    out->misses = t->misses;
    out->evictions = t->evictions;
    out->count = t->n;
    out->capacity = t->cap;
}

const ShapeInfo *shapes_at(const ShapeTable *t, size_t i)
{
    return i < t->n ? t->ents[i] : NULL;
}
