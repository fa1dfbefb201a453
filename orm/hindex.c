/*
 * The fixed-capacity hash index behind the shape and N+1 pattern tables.
 */
#include "orm/hindex.h"

#include <stdlib.h>

bool hindex_init(HIndex *h, size_t capacity)
{
    size_t size = 8;

    while (size < capacity * 2)
        size <<= 1;
    h->mask = (uint32_t)(size - 1);
    h->keys = calloc(size, sizeof(*h->keys));
    h->vals = malloc(size * sizeof(*h->vals));
    if (!h->keys || !h->vals) {
        hindex_free(h);
        return false;
    }
    for (size_t i = 0; i < size; i++)
        h->vals[i] = -1;
    return true;
}

void hindex_free(HIndex *h)
{
    free(h->keys);
    free(h->vals);
    h->keys = NULL;
    h->vals = NULL;
}

int32_t hindex_get(const HIndex *h, uint64_t key)
{
    for (uint32_t i = (uint32_t)key & h->mask;; i = (i + 1) & h->mask) {
        if (h->vals[i] < 0)
            return -1;
        if (h->keys[i] == key)
            return h->vals[i];
    }
}

void hindex_put(HIndex *h, uint64_t key, int32_t val)
{
    uint32_t i = (uint32_t)key & h->mask;

    while (h->vals[i] >= 0)
        i = (i + 1) & h->mask;
    h->keys[i] = key;
    h->vals[i] = val;
}

void hindex_del(HIndex *h, uint64_t key, int32_t val)
{
    uint32_t i = (uint32_t)key & h->mask, j;

    while (h->vals[i] >= 0 && !(h->keys[i] == key && h->vals[i] == val))
        i = (i + 1) & h->mask;
    if (h->vals[i] < 0)
        return;
    /* Shift back the entries of the probe run that would no longer be found. */
    for (j = i;;) {
        uint32_t home;
        j = (j + 1) & h->mask;
        if (h->vals[j] < 0)
            break;
        home = (uint32_t)h->keys[j] & h->mask;
        if (((j - home) & h->mask) < ((j - i) & h->mask))
            continue;
        h->keys[i] = h->keys[j];
        h->vals[i] = h->vals[j];
        i = j;
    }
    h->vals[i] = -1;
}
