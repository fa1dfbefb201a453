/*
 * The admin port's HTTP views of the ORM layer: GET /n1 (N+1 patterns) and
 * GET /queries (statement statistics per shape) as JSON, and the shape and
 * N+1 counters of /metrics. (SHOW N1 and SHOW QUERIES are in admin.c.)
 */
#include "daemon/admin.h"
#include "daemon/orm_feed.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *n1_mode_name(N1Mode m)
{
    return m == N1_MODE_OFF ? "off" : m == N1_MODE_BATCH ? "batch" : "detect";
}

/* "name":"value" with a leading comma unless first. */
static void js_field(struct evbuffer *out, const char *name, const char *value, bool first)
{
    evbuffer_add_printf(out, "%s\"%s\":", first ? "" : ",", name);
    stats_json_string(out, value);
}

/* Wall-clock microseconds as ISO 8601 UTC, null for 0. */
static void js_time(struct evbuffer *out, const char *name, uint64_t us)
{
    time_t t = (time_t)(us / 1000000);
    struct tm tm;
    char buf[32];

    if (us == 0) {
        evbuffer_add_printf(out, ",\"%s\":null", name);
        return;
    }
    gmtime_r(&t, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    evbuffer_add_printf(out, ",\"%s\":\"%s\"", name, buf);
}

static void n1_pattern_json(struct evbuffer *out, const N1Pattern *p)
{
    char fix[1024];

    n1_pattern_fix(p, fix, sizeof(fix));
    js_field(out, "parent_sql", p->parent_sql, true);
    js_field(out, "child_sql", p->child_sql, false);
    js_field(out, "key_column", p->key_column, false);
    js_field(out, "key_source", p->key_source, false);
    evbuffer_add_printf(
        out,
        ",\"occurrences\":%" PRIu64 ",\"total_run_length\":%" PRIu64 ",\"max_run_length\":%" PRIu64
        ",\"avg_run_length\":%.2f"
        ",\"child_time_us\":%" PRIu64 ",\"time_per_run_us\":%" PRIu64 ",\"child_rows\":%" PRIu64,
        p->occurrences, p->total_run_len, p->max_run_len,
        p->occurrences ? (double)p->total_run_len / (double)p->occurrences : 0.0, p->child_us,
        p->occurrences ? p->child_us / p->occurrences : 0, p->child_rows);
    evbuffer_add_printf(out, ",\"batched\":%" PRIu64, p->batched);
    js_time(out, "first_seen", p->first_seen_us);
    js_time(out, "last_seen", p->last_seen_us);
    js_field(out, "application_name", p->application_name, false);
    js_field(out, "user", p->user, false);
    js_field(out, "database", p->database, false);
    js_field(out, "fix", fix, false);
}

/* "batch":{...},: the counters of n1_mode = batch. */
static void batch_json(struct evbuffer *out, const OrmBatchStats *st)
{
    evbuffer_add_printf(out,
                        "\"batch\":{\"batches\":%" PRIu64 ",\"keys_prefetched\":%" PRIu64
                        ",\"keys_answered\":%" PRIu64 ",\"keys_wasted\":%" PRIu64
                        ",\"round_trips_saved\":%" PRIu64 ",\"types_learned\":%" PRIu64
                        ",\"fallbacks\":{\"error\":%" PRIu64 ",\"key_type\":%" PRIu64
                        ",\"key_value\":%" PRIu64 "},\"prefetches_dropped\":%" PRIu64
                        ",\"prefetches_expired\":%" PRIu64 ",\"unbatchable_shapes\":%" PRIu64 "},",
                        st->batches, st->keys_prefetched, st->keys_answered, st->keys_wasted,
                        orm_batch_round_trips_saved(st), st->types_learned, st->fb_error,
                        st->fb_type, st->fb_keys, st->dropped, st->expired, st->unbatchable);
}

void orm_render_n1_json(const Ops *ops, struct evbuffer *out)
{
    const OrmWorker *ow = ops->w->orm;
    N1TableStats st;
    const N1Pattern **pats;
    size_t n;

    n1_table_stats(ow->n1, &st);
    pats = st.count ? malloc(st.count * sizeof(*pats)) : NULL;
    n = pats ? n1_table_sorted(ow->n1, pats, st.count) : 0;
    evbuffer_add_printf(out,
                        "{\"n1_mode\":\"%s\",\"n1_threshold\":%d,\"runs_detected\":%" PRIu64
                        ",\"patterns_found\":%" PRIu64 ",\"patterns_evicted\":%" PRIu64
                        ",\"max_patterns\":%zu,",
                        n1_mode_name(ops->w->cfg->n1_mode), ops->w->cfg->n1_threshold,
                        st.runs_detected, ow->new_patterns, st.patterns_evicted, st.capacity);
    batch_json(out, &ow->batch);
    evbuffer_add(out, "\"patterns\":[", 12);
    for (size_t i = 0; i < n; i++) {
        evbuffer_add(out, i ? ",{" : "{", i ? 2 : 1);
        n1_pattern_json(out, pats[i]);
        evbuffer_add(out, "}", 1);
    }
    evbuffer_add(out, "]}\n", 3);
    free(pats);
}

static void query_json(struct evbuffer *out, const QueryStat *e)
{
    js_field(out, "sql", e->info->sql, true);
    js_field(out, "kind", shape_kind_name(e->info->kind), false);
    evbuffer_add_printf(out,
                        ",\"read_only\":%s,\"calls\":%" PRIu64 ",\"total_time_us\":%" PRIu64
                        ",\"avg_time_us\":%" PRIu64 ",\"max_time_us\":%" PRIu64
                        ",\"rows\":%" PRIu64,
                        e->info->flags & SHAPE_F_READ_ONLY ? "true" : "false", e->calls,
                        e->total_us, e->calls ? e->total_us / e->calls : 0, e->max_us, e->rows);
    js_time(out, "first_seen", e->first_us);
    js_time(out, "last_seen", e->last_us);
}

void orm_render_queries_json(const Ops *ops, struct evbuffer *out)
{
    const OrmWorker *ow = ops->w->orm;
    ShapeTableStats ss;
    QStatsSummary sum;
    const QueryStat **ents;
    size_t n;

    shapes_stats(ow->shapes, &ss);
    qstats_summary(ow->queries, &sum);
    ents = sum.count ? malloc(sum.count * sizeof(*ents)) : NULL;
    n = ents ? qstats_sorted(ow->queries, ents, sum.count) : 0;
    evbuffer_add_printf(out,
                        "{\"n1_mode\":\"%s\",\"shape_cache\":{\"entries\":%zu,\"capacity\":%zu,"
                        "\"hits\":%" PRIu64 ",\"misses\":%" PRIu64 ",\"evictions\":%" PRIu64
                        "},\"unknown\":{\"calls\":%" PRIu64 ",\"total_time_us\":%" PRIu64
                        "},\"evicted\":%" PRIu64 ",\"queries\":[",
                        n1_mode_name(ops->w->cfg->n1_mode), ss.count, ss.capacity, ss.hits,
                        ss.misses, ss.evictions, sum.unknown_calls, sum.unknown_us, sum.evictions);
    for (size_t i = 0; i < n; i++) {
        evbuffer_add(out, i ? ",{" : "{", i ? 2 : 1);
        query_json(out, ents[i]);
        evbuffer_add(out, "}", 1);
    }
    evbuffer_add(out, "]}\n", 3);
    free(ents);
}

static void prom_counter(struct evbuffer *out, const char *name, const char *type, const char *help,
                         uint64_t v)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", name, help, name, type,
                        name, v);
}

void orm_render_metrics(const Ops *ops, struct evbuffer *out)
{
    const OrmWorker *ow = ops->w->orm;
    ShapeTableStats ss;
    N1TableStats st;

    shapes_stats(ow->shapes, &ss);
    n1_table_stats(ow->n1, &st);
    prom_counter(out, "pgcoalesce_n1_patterns", "gauge",
                 "N+1 patterns (parent shape, child shape) held for SHOW N1 and /n1.",
                 (uint64_t)st.count);
    prom_counter(out, "pgcoalesce_n1_patterns_found_total", "counter",
                 "N+1 patterns detected for the first time.", ow->new_patterns);
    prom_counter(out, "pgcoalesce_n1_patterns_evicted_total", "counter",
                 "N+1 patterns dropped to make room (n1_max_patterns).", st.patterns_evicted);
    evbuffer_add_printf(out,
                        "# HELP pgcoalesce_statements_total Statements followed by the ORM "
                        "layer (n1_mode), by whether their shape is known.\n"
                        "# TYPE pgcoalesce_statements_total counter\n"
                        "pgcoalesce_statements_total{shape=\"known\"} %" PRIu64 "\n"
                        "pgcoalesce_statements_total{shape=\"unknown\"} %" PRIu64 "\n",
                        ow->statements - ow->unknown, ow->unknown);
    prom_counter(out, "pgcoalesce_n1_batches_total", "counter",
                 "Batched statements that answered an N+1 run (n1_mode = batch).",
                 ow->batch.batches);
    prom_counter(out, "pgcoalesce_n1_batch_keys_prefetched_total", "counter",
                 "Keys fetched by batched statements.", ow->batch.keys_prefetched);
    prom_counter(out, "pgcoalesce_n1_batch_keys_answered_total", "counter",
                 "Child executions answered from a batch instead of the server.",
                 ow->batch.keys_answered);
    prom_counter(out, "pgcoalesce_n1_batch_keys_wasted_total", "counter",
                 "Prefetched keys dropped without being asked for.", ow->batch.keys_wasted);
    prom_counter(out, "pgcoalesce_n1_batch_round_trips_saved_total", "counter",
                 "Server round trips saved: answered keys less the batches' own round trips.",
                 orm_batch_round_trips_saved(&ow->batch));
    evbuffer_add_printf(out,
                        "# HELP pgcoalesce_n1_batch_fallbacks_total Batches given up on, the "
                        "single statement sent instead, by reason.\n"
                        "# TYPE pgcoalesce_n1_batch_fallbacks_total counter\n"
                        "pgcoalesce_n1_batch_fallbacks_total{reason=\"error\"} %" PRIu64 "\n"
                        "pgcoalesce_n1_batch_fallbacks_total{reason=\"key_type\"} %" PRIu64 "\n"
                        "pgcoalesce_n1_batch_fallbacks_total{reason=\"key_value\"} %" PRIu64 "\n",
                        ow->batch.fb_error, ow->batch.fb_type, ow->batch.fb_keys);
    prom_counter(
        out, "pgcoalesce_n1_prefetches_dropped_total", "counter",
        "Prefetched answers dropped (another statement, a status change, n1_prefetch_ttl).",
        ow->batch.dropped);
    prom_counter(out, "pgcoalesce_n1_prefetches_expired_total", "counter",
                 "Prefetched answers dropped by n1_prefetch_ttl.", ow->batch.expired);
    prom_counter(out, "pgcoalesce_shape_cache_entries", "gauge",
                 "Statement shapes held with their analysis (shape_cache_size).",
                 (uint64_t)ss.count);
    prom_counter(out, "pgcoalesce_shape_cache_hits_total", "counter",
                 "Statements whose shape was already analysed.", ss.hits);
    prom_counter(out, "pgcoalesce_shape_cache_misses_total", "counter",
                 "Statements whose shape was analysed on first sight.", ss.misses);
    prom_counter(out, "pgcoalesce_shape_cache_evictions_total", "counter",
                 "Shapes dropped to make room (shape_cache_size).", ss.evictions);
}
