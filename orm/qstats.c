/*
 * Per-shape statement statistics: a fixed array of QueryStat slots found
 * through a hash index, with a CLOCK hand choosing what to evict.
 */
#include "orm/qstats.h"

#include <stdlib.h>
#include <string.h>

#include "orm/hindex.h"

struct QStats {
    QueryStat *ents; /* slots 0..n-1 in use */
    uint8_t *used;   /* CLOCK reference bits */
    size_t n, cap, hand;
    HIndex idx; /* hash -> slot */
    uint64_t unknown_calls, unknown_us, evictions;
};

QStats *qstats_new(size_t capacity)
{
    QStats *q = calloc(1, sizeof(*q));

    if (!q)
        return NULL;
    if (capacity == 0)
        capacity = 1;
    q->cap = capacity;
    q->ents = calloc(capacity, sizeof(*q->ents));
    q->used = calloc(capacity, 1);
    if (!q->ents || !q->used || !hindex_init(&q->idx, capacity))
        goto out_free;
    return q;
out_free:
    free(q->ents);
    free(q->used);
    free(q);
    return NULL;
}

void qstats_free(QStats *q)
{
    if (!q)
        return;
    for (size_t i = 0; i < q->n; i++)
        shape_info_unref(q->ents[i].info);
    hindex_free(&q->idx);
    free(q->ents);
    free(q->used);
    free(q);
}

/* A cleared slot for a new shape: a never-used one, else the CLOCK victim. */
static QueryStat *take_slot(QStats *q, uint64_t hash)
{
    size_t s;

    if (q->n < q->cap) {
        s = q->n++;
    } else {
        while (q->used[q->hand]) {
            q->used[q->hand] = 0;
            q->hand = (q->hand + 1) % q->cap;
        }
        s = q->hand;
        q->hand = (q->hand + 1) % q->cap;
        hindex_del(&q->idx, q->ents[s].hash, (int32_t)s);
        shape_info_unref(q->ents[s].info);
        q->evictions++;
    }
    memset(&q->ents[s], 0, sizeof(q->ents[s]));
    q->ents[s].hash = hash;
    q->used[s] = 0; /* earns its second chance on its next call */
    hindex_put(&q->idx, hash, (int32_t)s);
    return &q->ents[s];
}

void qstats_record(QStats *q, const ShapeInfo *info, uint64_t us, uint64_t rows, uint64_t now_us)
{
    int32_t slot;
    QueryStat *e;

    if (!info) {
        q->unknown_calls++;
        q->unknown_us += us;
        return;
    }
    slot = hindex_get(&q->idx, info->hash);
    if (slot >= 0 && q->ents[slot].info == info) {
        e = &q->ents[slot];
        q->used[slot] = 1;
    } else if (slot >= 0) {
        /* the same hash analysed again after the shape table evicted it */
        e = &q->ents[slot];
        shape_info_unref(e->info);
        shape_info_ref(info);
        e->info = info;
        q->used[slot] = 1;
    } else {
        e = take_slot(q, info->hash);
        shape_info_ref(info);
        e->info = info;
        e->first_us = now_us;
    }
    e->calls++;
    e->total_us += us;
    if (us > e->max_us)
        e->max_us = us;
    e->rows += rows;
    e->last_us = now_us;
}

static int by_time_desc(const void *a, const void *b)
{
    const QueryStat *x = *(const QueryStat *const *)a, *y = *(const QueryStat *const *)b;

    if (x->total_us != y->total_us)
        return x->total_us < y->total_us ? 1 : -1;
    return x->calls < y->calls ? 1 : x->calls > y->calls ? -1 : 0;
}

size_t qstats_sorted(const QStats *q, const QueryStat **out, size_t cap)
{
    const QueryStat **all;
    size_t n = q->n;

    if (cap == 0 || n == 0)
        return 0;
    all = malloc(n * sizeof(*all));
    if (!all)
        return 0;
    for (size_t i = 0; i < n; i++)
        all[i] = &q->ents[i];
    qsort(all, n, sizeof(*all), by_time_desc);
    if (n > cap)
        n = cap;
    memcpy(out, all, n * sizeof(*out));
    free(all);
    return n;
}

void qstats_summary(const QStats *q, QStatsSummary *out)
{
    out->unknown_calls = q->unknown_calls;
    out->unknown_us = q->unknown_us;
    out->evictions = q->evictions;
    out->count = q->n;
    out->capacity = q->cap;
}
