/*
 * The N+1 detector: per-session parent/run tracking over statement events
 * and the per-worker table of the patterns found (definitions in n1.h).
 */
#include "orm/n1.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orm/hindex.h"

#define NAMES_BUF 2048 /* RowDescription names kept for the parent */

struct N1Table {
    N1Pattern *pats; /* slots 0..n-1 in use */
    size_t n, cap;
    HIndex idx; /* pattern key -> slot */
    int threshold;
    int result_memory;
    uint64_t runs_detected;
    uint64_t evicted;
};

/* A key-source candidate: parameter param found in parent column col, last at row pos. */
typedef struct N1Cand {
    uint8_t param;
    uint8_t col;
    uint32_t pos;
} N1Cand;

/* Where a parent cell's bytes are kept. */
typedef struct N1Cell {
    uint32_t off;
    int32_t len;
} N1Cell;

/* The run of one child shape under the current parent. */
typedef struct N1Run {
    uint64_t child; /* child shape hash; 0: free slot */
    uint64_t params[N1_MAX_PARAMS];
    uint64_t rest; /* combined hash of parameters beyond N1_MAX_PARAMS */
    int nparams;
    int vary; /* index of the parameter that changes, -1 while none has */
    uint32_t count;
    bool reported;
    uint64_t us, rows;
    uint64_t batched;
    uint64_t last_used; /* session sequence number, for LRU among runs */
    int ncand;
    N1Cand cand[N1_MAX_CANDS];
} N1Run;

struct N1Session {
    N1Table *t;
    char user[N1_NAME_MAX];
    char database[N1_NAME_MAX];
    char app[N1_NAME_MAX];

    bool have_parent;
    uint64_t parent_hash;    /* 0 for an unknown shape */
    const ShapeInfo *parent; /* a reference, NULL when unknown */
    bool want_result;        /* the current statement is the parent */
    int ncols;               /* parent result columns kept (<= N1_MAX_COLS) */
    uint32_t nrows;
    bool full;
    uint64_t *vals;    /* nrows x ncols hashes, row-major; result_memory of them */
    int cap_vals;      /* result_memory: values at most */
    size_t alloc_vals; /* values vals has room for */
    uint64_t *filter;  /* bitmap of the hashes in vals: a quick "not there" */
    uint32_t filter_bits;
    bool filter_dirty;
    bool runs_dirty;                /* a run was started since the runs were last cleared */
    uint16_t name_off[N1_MAX_COLS]; /* into names; UINT16_MAX: none */
    char *names;                    /* grown as parents need, up to NAMES_BUF */
    size_t names_cap;

    N1Run *runs;  /* N1_MAX_RUNS of them, made at the session's first run */
    int last_run; /* run of the current statement, -1 if none */
    uint64_t seq;
    uint64_t parent_gen; /* bumped each time a statement becomes the parent */

    /* The parent's values as sent (n1_session_keep_values): cell i is
     * raw[cells[i].off .. + cells[i].len), len -1 for NULL, -2 not kept.
     * Both grow as a parent's result needs them, up to result_memory cells
     * and N1_RAW_AVG bytes per cell. */
    bool keep;
    N1Cell *cells;
    size_t ncells, cells_cap;
    uint8_t *raw;
    size_t raw_used, raw_cap, raw_max;
};

/* ---- the pattern table ---- */

static uint64_t pattern_key(uint64_t parent, uint64_t child)
{
    uint64_t pair[2] = {parent, child};
    return shape_hash_bytes(pair, sizeof(pair));
}

N1Table *n1_table_new(size_t max_patterns, int threshold, int result_memory)
{
    N1Table *t = calloc(1, sizeof(*t));

    if (!t)
        return NULL;
    if (max_patterns == 0)
        max_patterns = 1;
    t->cap = max_patterns;
    t->pats = calloc(max_patterns, sizeof(*t->pats));
    if (!t->pats || !hindex_init(&t->idx, max_patterns)) {
        free(t->pats);
        free(t);
        return NULL;
    }
    n1_table_configure(t, threshold, result_memory);
    return t;
}

void n1_table_configure(N1Table *t, int threshold, int result_memory)
{
    t->threshold = threshold < 2 ? N1_DEFAULT_THRESHOLD : threshold;
    t->result_memory = result_memory < 0 ? 0 : result_memory;
}

static void pattern_clear(N1Pattern *p)
{
    free(p->parent_sql);
    free(p->child_sql);
    memset(p, 0, sizeof(*p));
}

void n1_table_free(N1Table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        pattern_clear(&t->pats[i]);
    hindex_free(&t->idx);
    free(t->pats);
    free(t);
}

static N1Pattern *pattern_find(N1Table *t, uint64_t parent, uint64_t child)
{
    int32_t slot = hindex_get(&t->idx, pattern_key(parent, child));
    N1Pattern *p;

    if (slot < 0)
        return NULL;
    p = &t->pats[slot];
    return p->parent_hash == parent && p->child_hash == child ? p : NULL;
}

/* A cleared slot for a new pattern: a free one, else the least recently seen. */
static N1Pattern *pattern_slot(N1Table *t, uint64_t parent, uint64_t child)
{
    size_t s = 0;

    if (t->n < t->cap) {
        s = t->n++;
    } else {
        for (size_t i = 1; i < t->n; i++)
            if (t->pats[i].last_seen_us < t->pats[s].last_seen_us)
                s = i;
        hindex_del(&t->idx, pattern_key(t->pats[s].parent_hash, t->pats[s].child_hash), (int32_t)s);
        pattern_clear(&t->pats[s]);
        t->evicted++;
    }
    t->pats[s].parent_hash = parent;
    t->pats[s].child_hash = child;
    hindex_put(&t->idx, pattern_key(parent, child), (int32_t)s);
    return &t->pats[s];
}

static char *sql_copy(const ShapeInfo *info)
{
    const char *sql = info ? info->sql : "(unknown statement)";
    size_t n = info ? info->sql_len : strlen(sql);

    if (n > N1_SQL_MAX)
        n = N1_SQL_MAX;
    return strndup(sql, n);
}

/* ---- sessions ---- */

static void copy_name(char *dst, const char *src)
{
    snprintf(dst, N1_NAME_MAX, "%s", src ? src : "");
}

N1Session *n1_session_new(N1Table *t, const char *user, const char *database,
                          const char *application_name)
{
    N1Session *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->t = t;
    copy_name(s->user, user);
    copy_name(s->database, database);
    copy_name(s->app, application_name);
    s->last_run = -1;
    return s;
}

void n1_session_set_application(N1Session *s, const char *application_name)
{
    copy_name(s->app, application_name);
}

void n1_session_free(N1Session *s)
{
    if (!s)
        return;
    shape_info_unref(s->parent);
    free(s->vals);
    free(s->filter);
    free(s->cells);
    free(s->raw);
    free(s->names);
    free(s->runs);
    free(s);
}

static inline bool filter_has(const N1Session *s, uint64_t h)
{
    uint32_t b = (uint32_t)(h >> 40) & (s->filter_bits - 1);
    return s->filter_bits && (s->filter[b / 64] >> (b % 64) & 1);
}

static inline void filter_add(N1Session *s, uint64_t h)
{
    uint32_t b = (uint32_t)(h >> 40) & (s->filter_bits - 1);
    s->filter[b / 64] |= 1ULL << (b % 64);
    s->filter_dirty = true;
}

/* Row of the first occurrence of h in column col at or after row from, or -1. */
static int64_t col_find(const N1Session *s, int col, uint64_t h, uint32_t from)
{
    for (uint32_t r = from; r < s->nrows; r++)
        if (s->vals[(size_t)r * (size_t)s->ncols + (size_t)col] == h)
            return r;
    return -1;
}

/* The statement just started becomes the parent: every run ends. */
static void become_parent(N1Session *s, const ShapeInfo *info)
{
    /* Most statements start no run (pgbench -S is all parents): clearing
     * the slots only when one was used saves ~2 KB of stores each time. */
    if (s->runs_dirty) {
        memset(s->runs, 0, N1_MAX_RUNS * sizeof(*s->runs));
        s->runs_dirty = false;
    }
    if (info)
        shape_info_ref(info);
    shape_info_unref(s->parent);
    s->parent = info;
    s->parent_hash = info ? info->hash : 0;
    s->have_parent = true;
    s->parent_gen++;
    s->ncols = 0;
    s->nrows = 0;
    s->raw_used = 0;
    s->ncells = 0;
    s->full = false;
    s->want_result = s->t->result_memory > 0;
    if (s->filter_dirty) {
        memset(s->filter, 0, s->filter_bits / 8);
        s->filter_dirty = false;
    }
}

/* Parameter index i may carry a key: not NULL, not a LIMIT/OFFSET value. */
static bool key_capable(const ShapeInfo *info, int i, uint64_t h)
{
    if (h == SHAPE_HASH_NULL)
        return false;
    return !(i < 64 && (info->page_params >> i & 1));
}

/* Candidates of a first execution: every (parameter, column) holding its value. */
static int find_cands(const N1Session *s, const ShapeInfo *info, const uint64_t *params, int n,
                      N1Cand *out)
{
    int k = 0;

    if (n > N1_MAX_PARAMS)
        n = N1_MAX_PARAMS;
    for (int i = 0; i < n; i++) {
        if (!key_capable(info, i, params[i]) || !filter_has(s, params[i]))
            continue;
        for (int c = 0; c < s->ncols && k < N1_MAX_CANDS; c++) {
            int64_t r = col_find(s, c, params[i], 0);
            if (r >= 0)
                out[k++] = (N1Cand){(uint8_t)i, (uint8_t)c, (uint32_t)r};
        }
    }
    return k;
}

static uint64_t rest_hash(const uint64_t *params, int n)
{
    return n > N1_MAX_PARAMS ? shape_hash_bytes(params + N1_MAX_PARAMS,
                                                (size_t)(n - N1_MAX_PARAMS) * sizeof(*params))
                             : 0;
}

static void run_start(N1Session *s, N1Run *r, const ShapeInfo *info, const uint64_t *params, int n,
                      const N1Cand *cand, int ncand)
{
    s->runs_dirty = true;
    memset(r, 0, sizeof(*r));
    r->child = info->hash;
    r->nparams = n;
    memcpy(r->params, params, (size_t)(n < N1_MAX_PARAMS ? n : N1_MAX_PARAMS) * sizeof(*params));
    r->rest = rest_hash(params, n);
    r->vary = -1;
    r->count = 1;
    r->last_used = ++s->seq;
    r->ncand = ncand;
    memcpy(r->cand, cand, (size_t)ncand * sizeof(*cand));
}

/*
 * Try to extend run r with this execution: at most one parameter changed
 * (always the same one) and the key is further down its parent column.
 * False: the run is broken (the caller clears it).
 */
static bool run_extend(N1Session *s, N1Run *r, const uint64_t *params, int n)
{
    int m = n < N1_MAX_PARAMS ? n : N1_MAX_PARAMS, diff = -1, k = 0;

    if (n != r->nparams || rest_hash(params, n) != r->rest)
        return false;
    for (int i = 0; i < m; i++) {
        if (params[i] == r->params[i])
            continue;
        if (diff >= 0 || (r->vary >= 0 && r->vary != i))
            return false;
        diff = i;
    }
    for (int c = 0; c < r->ncand; c++) {
        N1Cand cd = r->cand[c];
        int64_t row;
        if (diff >= 0 && cd.param != diff)
            continue;
        row = col_find(s, cd.col, params[cd.param], cd.pos + 1);
        if (row < 0)
            continue;
        cd.pos = (uint32_t)row;
        r->cand[k++] = cd;
    }
    if (k == 0)
        return false;
    r->ncand = k;
    if (diff >= 0)
        r->vary = diff;
    memcpy(r->params, params, (size_t)m * sizeof(*params));
    r->count++;
    r->last_used = ++s->seq;
    return true;
}

/* The parent column name for a key source: the analysed "table.column",
 * else the RowDescription name, else its position. */
static void source_name(const N1Session *s, int col, char *buf, size_t cap)
{
    if (s->parent && col < s->parent->nout && s->parent->out_cols[col])
        snprintf(buf, cap, "%s", s->parent->out_cols[col]);
    else if (s->name_off[col] != UINT16_MAX)
        snprintf(buf, cap, "%s", s->names + s->name_off[col]);
    else
        snprintf(buf, cap, "column %d", col + 1);
}

static void fill_new_pattern(N1Session *s, N1Pattern *p, const N1Run *r, const ShapeInfo *child,
                             uint64_t now)
{
    const ShapeKey *key = shape_info_key_for_param(child, r->vary + 1);
    const N1Cand *best = &r->cand[0];

    /* Once the parameter has changed only its candidates survive; of those,
     * the densest (smallest last row position) is the key source. */
    for (int c = 1; c < r->ncand; c++)
        if (r->cand[c].pos < best->pos)
            best = &r->cand[c];
    p->parent_sql = sql_copy(s->parent);
    p->child_sql = sql_copy(child);
    p->key_param = r->vary + 1;
    if (key) {
        shape_key_name(child, key, p->key_column, sizeof(p->key_column));
        if (key->table >= 0)
            snprintf(p->child_table, sizeof(p->child_table), "%s", child->tables[key->table].name);
        p->many_to_one = strcmp(key->column, "id") == 0;
    } else {
        snprintf(p->key_column, sizeof(p->key_column), "$%d", r->vary + 1);
    }
    source_name(s, best->col, p->key_source, sizeof(p->key_source));
    p->first_seen_us = now;
}

/* Run r just reached the threshold: count it in its pattern. */
static N1Event report(N1Session *s, N1Run *r, const ShapeInfo *child, uint64_t now,
                      const N1Pattern **out)
{
    N1Table *t = s->t;
    N1Pattern *p = pattern_find(t, s->parent_hash, r->child);
    N1Event ev = N1_RUN_DETECTED;

    if (!p) {
        p = pattern_slot(t, s->parent_hash, r->child);
        fill_new_pattern(s, p, r, child, now);
        ev = N1_NEW_PATTERN;
    }
    r->reported = true;
    t->runs_detected++;
    p->occurrences++;
    p->total_run_len += r->count;
    p->child_us += r->us;
    p->child_rows += r->rows;
    p->batched += r->batched;
    if (r->count > p->max_run_len)
        p->max_run_len = r->count;
    p->last_seen_us = now;
    copy_name(p->application_name, s->app);
    copy_name(p->user, s->user);
    copy_name(p->database, s->database);
    if (out)
        *out = p;
    return ev;
}

/* One more execution of an already reported run. */
static void report_more(N1Session *s, const N1Run *r, uint64_t now)
{
    N1Pattern *p = pattern_find(s->t, s->parent_hash, r->child);

    if (!p)
        return;
    p->total_run_len++;
    if (r->count > p->max_run_len)
        p->max_run_len = r->count;
    p->last_seen_us = now;
}

static N1Run *run_find(N1Session *s, uint64_t child)
{
    if (!s->runs)
        return NULL;
    for (int i = 0; i < N1_MAX_RUNS; i++)
        if (s->runs[i].child == child)
            return &s->runs[i];
    return NULL;
}

/* A free run slot, else the least recently used run (which ends). */
static N1Run *run_slot(N1Session *s)
{
    N1Run *lru;

    if (!s->runs && !(s->runs = calloc(N1_MAX_RUNS, sizeof(*s->runs))))
        return NULL;
    lru = &s->runs[0];

    for (int i = 0; i < N1_MAX_RUNS; i++) {
        if (!s->runs[i].child)
            return &s->runs[i];
        if (s->runs[i].last_used < lru->last_used)
            lru = &s->runs[i];
    }
    return lru;
}

N1Event n1_statement(N1Session *s, const ShapeInfo *info, const uint64_t *params, int nparams,
                     uint64_t now_us, const N1Pattern **pattern)
{
    N1Cand cand[N1_MAX_CANDS];
    N1Run *r;
    int ncand;

    s->last_run = -1;
    s->want_result = false;
    if (info && info->kind == SHAPE_KIND_UTILITY)
        return N1_NONE;
    if (!info || !s->have_parent || info->hash == s->parent_hash || nparams <= 0 || s->nrows == 0) {
        become_parent(s, info);
        return N1_NONE;
    }
    r = run_find(s, info->hash);
    if (r && run_extend(s, r, params, nparams)) {
        s->last_run = (int)(r - s->runs);
        if (r->reported) {
            report_more(s, r, now_us);
            return N1_NONE;
        }
        if ((int)r->count >= s->t->threshold && r->vary >= 0)
            return report(s, r, info, now_us, pattern);
        return N1_NONE;
    }
    if (r)
        memset(r, 0, sizeof(*r));
    ncand = find_cands(s, info, params, nparams, cand);
    if (ncand == 0) {
        become_parent(s, info);
        return N1_NONE;
    }
    if (!(info->flags & SHAPE_F_READ_ONLY))
        return N1_NONE; /* a write about the parent's rows: absorbed, no run */
    r = run_slot(s);
    if (!r)
        return N1_NONE; /* out of memory: not followed */
    run_start(s, r, info, params, nparams, cand, ncand);
    s->last_run = (int)(r - s->runs);
    return N1_NONE;
}

bool n1_wants_result(const N1Session *s)
{
    return s->want_result;
}

/* Room for n values (n <= cap_vals) and a filter of 4 bits per value, grown
 * as parents need them: most parents are a handful of values, and a session
 * should not hold result_memory's worth for them. */
static bool grow_store(N1Session *s, size_t n)
{
    size_t cap = s->alloc_vals ? s->alloc_vals : 32;
    uint32_t bits = s->filter_bits ? s->filter_bits : 128;
    uint64_t *nv, *nf;

    while (cap < n)
        cap *= 2;
    if (cap > (size_t)s->cap_vals)
        cap = (size_t)s->cap_vals;
    while (bits < cap * 4 && bits < (1u << 24))
        bits <<= 1;
    if (cap > s->alloc_vals) {
        nv = realloc(s->vals, cap * sizeof(*nv));
        if (!nv)
            return false;
        s->vals = nv;
        s->alloc_vals = cap;
    }
    if (bits > s->filter_bits) {
        nf = calloc(bits / 64, sizeof(*nf));
        if (!nf)
            return false;
        free(s->filter);
        s->filter = nf;
        s->filter_bits = bits;
        s->filter_dirty = false;
        for (size_t i = 0; i < (size_t)s->nrows * (size_t)s->ncols; i++)
            filter_add(s, s->vals[i]);
    }
    return true;
}

/* Size the value store and its filter on first use. */
static bool ensure_store(N1Session *s)
{
    int mem = s->t->result_memory;

    s->raw_max = (size_t)mem * N1_RAW_AVG;
    s->cap_vals = mem;
    if (s->vals)
        return true;
    return mem > 0 && grow_store(s, 1);
}

void n1_result_columns(N1Session *s, int ncols, const char *const *names)
{
    size_t used = 0, need = 0, len[N1_MAX_COLS];

    if (!s->want_result)
        return;
    if (!ensure_store(s)) {
        s->want_result = false;
        return;
    }
    s->ncols = ncols < N1_MAX_COLS ? ncols : N1_MAX_COLS;
    s->nrows = 0;
    s->ncells = 0;
    s->raw_used = 0;
    s->full = s->ncols <= 0 || s->ncols > s->cap_vals;
    for (int c = 0; c < s->ncols; c++) {
        len[c] = names && names[c] ? strlen(names[c]) + 1 : 0;
        need += len[c];
    }
    if (need > NAMES_BUF)
        need = NAMES_BUF;
    if (need > s->names_cap) {
        char *nn = realloc(s->names, need);
        if (nn) {
            s->names = nn;
            s->names_cap = need;
        }
    }
    for (int c = 0; c < s->ncols; c++) {
        size_t n = len[c];
        s->name_off[c] = UINT16_MAX;
        if (n && used + n <= s->names_cap) {
            memcpy(s->names + used, names[c], n);
            s->name_off[c] = (uint16_t)used;
            used += n;
        }
    }
}

/* Keep cell i's bytes (v NULL: a missing column, as NULL). */
static void raw_add(N1Session *s, size_t i, const ShapeValue *v)
{
    N1Cell *cell;

    if (i != s->ncells)
        return; /* a cell could not be kept: none after it either */
    if (i == s->cells_cap) {
        size_t cap = s->cells_cap ? s->cells_cap * 2 : 16;
        N1Cell *n = realloc(s->cells, cap * sizeof(*n));
        if (!n)
            return;
        s->cells = n;
        s->cells_cap = cap;
    }
    cell = &s->cells[s->ncells++];
    cell->off = 0;
    cell->len = -2;
    if (!v || v->len < 0) {
        cell->len = -1;
        return;
    }
    if (v->len > N1_RAW_MAX || s->raw_used + (size_t)v->len > s->raw_max)
        return;
    if (v->len == 0) {
        cell->len = 0; /* an empty string: nothing to copy (raw may not exist yet) */
        return;
    }
    if (s->raw_used + (size_t)v->len > s->raw_cap) {
        size_t cap = s->raw_cap ? s->raw_cap * 2 : 256;
        uint8_t *n;
        while (cap < s->raw_used + (size_t)v->len)
            cap *= 2;
        n = realloc(s->raw, cap);
        if (!n)
            return;
        s->raw = n;
        s->raw_cap = cap;
    }
    memcpy(s->raw + s->raw_used, v->data, (size_t)v->len);
    cell->off = (uint32_t)s->raw_used;
    cell->len = v->len;
    s->raw_used += (size_t)v->len;
}

bool n1_result_column_values(N1Session *s, const ShapeValue *vals, int ncols)
{
    return n1_result_row(s, vals, NULL, ncols);
}

bool n1_result_row(N1Session *s, const ShapeValue *vals, const ShapeValue *sent, int ncols)
{
    uint64_t *row;

    if (!s->want_result || s->full || !s->vals)
        return false;
    if ((size_t)(s->nrows + 1) * (size_t)s->ncols > (size_t)s->cap_vals ||
        ((size_t)(s->nrows + 1) * (size_t)s->ncols > s->alloc_vals &&
         !grow_store(s, (size_t)(s->nrows + 1) * (size_t)s->ncols))) {
        s->full = true;
        return false;
    }
    row = s->vals + (size_t)s->nrows * (size_t)s->ncols;
    for (int c = 0; c < s->ncols; c++) {
        uint64_t h = c < ncols && vals[c].len >= 0
                         ? shape_hash_bytes(vals[c].data, (size_t)vals[c].len)
                         : SHAPE_HASH_NULL;
        row[c] = h;
        filter_add(s, h);
        if (s->keep)
            raw_add(s, (size_t)(row - s->vals) + (size_t)c,
                    c < ncols ? (sent ? &sent[c] : &vals[c]) : NULL);
    }
    s->nrows++;
    return true;
}

void n1_statement_batched(N1Session *s)
{
    N1Run *r;
    N1Pattern *p;

    if (s->last_run < 0)
        return;
    r = &s->runs[s->last_run];
    r->batched++;
    if (r->reported && (p = pattern_find(s->t, s->parent_hash, r->child)) != NULL)
        p->batched++;
}

void n1_statement_done(N1Session *s, uint64_t duration_us, uint64_t rows)
{
    N1Run *r;

    s->want_result = false;
    if (s->last_run < 0)
        return;
    r = &s->runs[s->last_run];
    s->last_run = -1;
    r->us += duration_us;
    r->rows += rows;
    if (r->reported) {
        N1Pattern *p = pattern_find(s->t, s->parent_hash, r->child);
        if (p) {
            p->child_us += duration_us;
            p->child_rows += rows;
        }
    }
}

void n1_table_stats(const N1Table *t, N1TableStats *out)
{
    out->runs_detected = t->runs_detected;
    out->patterns_evicted = t->evicted;
    out->count = t->n;
    out->capacity = t->cap;
}

static int by_time_desc(const void *a, const void *b)
{
    const N1Pattern *x = *(const N1Pattern *const *)a, *y = *(const N1Pattern *const *)b;

    if (x->child_us != y->child_us)
        return x->child_us < y->child_us ? 1 : -1;
    return x->total_run_len < y->total_run_len ? 1 : x->total_run_len > y->total_run_len ? -1 : 0;
}

size_t n1_table_sorted(const N1Table *t, const N1Pattern **out, size_t cap)
{
    const N1Pattern **all;
    size_t n = 0;

    if (cap == 0 || t->n == 0)
        return 0;
    all = malloc(t->n * sizeof(*all));
    if (!all)
        return 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->pats[i].occurrences)
            all[n++] = &t->pats[i];
    qsort(all, n, sizeof(*all), by_time_desc);
    if (n > cap)
        n = cap;
    memcpy(out, all, n * sizeof(*out));
    free(all);
    return n;
}

int n1_pattern_fix(const N1Pattern *p, char *buf, size_t cap)
{
    const char *what = p->child_table[0] ? p->child_table : "the child rows";

    if (p->many_to_one)
        return snprintf(buf, cap,
                        "load %s for all parent rows at once: one query with WHERE %s = "
                        "ANY($1) and the %s values (SQLAlchemy: selectinload() or "
                        "joinedload() on the many-to-one relationship; Django: "
                        "select_related(); Rails: includes())",
                        what, p->key_column, p->key_source);
    return snprintf(buf, cap,
                    "load %s for all parent rows at once: one query with WHERE %s = ANY($1) and "
                    "the %s values (SQLAlchemy: selectinload() on the relationship; Django: "
                    "prefetch_related(); Rails: includes())",
                    what, p->key_column, p->key_source);
}

/* ---- batching support ---- */

void n1_session_keep_values(N1Session *s, bool keep)
{
    s->keep = keep;
}

uint64_t n1_parent_gen(const N1Session *s)
{
    return s->parent_gen;
}

uint32_t n1_parent_rows(const N1Session *s)
{
    return s->nrows;
}

uint64_t n1_parent_hash_at(const N1Session *s, uint32_t row, int col)
{
    return s->vals[(size_t)row * (size_t)s->ncols + (size_t)col];
}

int n1_parent_value(const N1Session *s, uint32_t row, int col, const uint8_t **data)
{
    size_t i = (size_t)row * (size_t)s->ncols + (size_t)col;

    if (!s->keep || row >= s->nrows || col >= s->ncols || i >= s->ncells)
        return -2;
    *data = s->raw ? s->raw + s->cells[i].off : (const uint8_t *)"";
    return s->cells[i].len;
}

bool n1_batch_plan(const N1Session *s, const ShapeInfo *info, const uint64_t *params, int n,
                   int after, N1BatchPlan *out)
{
    const N1Run *r;
    int m = n < N1_MAX_PARAMS ? n : N1_MAX_PARAMS;

    if (!info || !s->have_parent || info->hash == s->parent_hash || !s->keep || n <= 0 || !s->runs)
        return false;
    r = NULL;
    for (int i = 0; i < N1_MAX_RUNS; i++)
        if (s->runs[i].child == info->hash)
            r = &s->runs[i];
    if (!r || r->vary < 0 || (int)r->count < after || n != r->nparams || r->vary >= m ||
        rest_hash(params, n) != r->rest)
        return false;
    for (int i = 0; i < m; i++)
        if (i != r->vary && params[i] != r->params[i])
            return false;
    if (params[r->vary] == r->params[r->vary])
        return false; /* the same key again: nothing new to fetch */
    /* The key source: the densest candidate holding this key further down. */
    out->row = UINT32_MAX;
    for (int c = 0; c < r->ncand; c++) {
        const N1Cand *cd = &r->cand[c];
        int64_t row;
        if (cd->param != r->vary)
            continue;
        row = col_find(s, cd->col, params[r->vary], cd->pos + 1);
        if (row >= 0 && (uint32_t)row < out->row) {
            out->row = (uint32_t)row;
            out->col = cd->col;
        }
    }
    if (out->row == UINT32_MAX)
        return false;
    out->param = r->vary;
    out->count = r->count;
    out->gen = s->parent_gen;
    return true;
}

bool n1_runs_ready(const N1Session *s, int after)
{
    if (!s->runs_dirty || !s->keep)
        return false;
    for (int i = 0; i < N1_MAX_RUNS; i++)
        if (s->runs[i].child && s->runs[i].vary >= 0 && (int)s->runs[i].count >= after)
            return true;
    return false;
}
