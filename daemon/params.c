/* Session parameter sets and the SQL that reconciles two of them. */
#include "daemon/params.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>

/*
 * Names and values are interned: ten thousand clients hold the same dozen
 * ParameterStatus values, so each string is kept once per worker thread with
 * a reference count (a client then costs its Param array, not two small
 * allocations per parameter). A Param's strings point into Interned.s.
 */
typedef struct Interned {
    struct Interned *next;
    uint32_t refs;
    uint32_t hash;
    char s[];
} Interned;

static __thread Interned **intern_tab; /* buckets; NULL while nothing is interned */
static __thread size_t intern_cap, intern_n;

static uint32_t str_hash(const char *s)
{
    uint32_t h = 2166136261u;

    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static bool intern_grow(void)
{
    size_t cap = intern_cap ? intern_cap * 2 : 256;
    Interned **t = calloc(cap, sizeof(*t));

    if (!t)
        return false;
    for (size_t i = 0; i < intern_cap; i++)
        while (intern_tab[i]) {
            Interned *e = intern_tab[i];
            intern_tab[i] = e->next;
            e->next = t[e->hash & (cap - 1)];
            t[e->hash & (cap - 1)] = e;
        }
    free(intern_tab);
    intern_tab = t;
    intern_cap = cap;
    return true;
}

/* A reference to the interned copy of s; NULL when out of memory. */
static char *intern(const char *s)
{
    uint32_t h = str_hash(s);
    size_t n = strlen(s);
    Interned *e;

    if (intern_cap && intern_tab)
        for (e = intern_tab[h & (intern_cap - 1)]; e; e = e->next)
            if (e->hash == h && strcmp(e->s, s) == 0) {
                e->refs++;
                return e->s;
            }
    if ((intern_n + 1 > intern_cap / 2 * 3 || !intern_tab) && !intern_grow())
        return NULL;
    e = malloc(sizeof(*e) + n + 1);
    if (!e)
        return NULL;
    e->refs = 1;
    e->hash = h;
    memcpy(e->s, s, n + 1);
    e->next = intern_tab[h & (intern_cap - 1)];
    intern_tab[h & (intern_cap - 1)] = e;
    intern_n++;
    return e->s;
}

static char *intern_ref(char *s)
{
    ((Interned *)(s - offsetof(Interned, s)))->refs++;
    return s;
}

/* Drop a reference from intern(); NULL is fine. */
static void unintern(char *s)
{
    Interned *e, **pp;

    if (!s)
        return;
    e = (Interned *)(s - offsetof(Interned, s));
    if (--e->refs > 0)
        return;
    for (pp = &intern_tab[e->hash & (intern_cap - 1)]; *pp != e; pp = &(*pp)->next)
        ;
    *pp = e->next;
    free(e);
    if (--intern_n == 0) {
        free(intern_tab); /* nothing left: no table either */
        intern_tab = NULL;
        intern_cap = 0;
    }
}

void params_init(ParamSet *ps)
{
    ps->v = NULL;
    ps->n = ps->cap = 0;
    ps->digest = 0;
}

/* FNV-1a over name (case-folded) and value; combined by addition so order does not matter. */
static uint64_t param_digest(const char *name, const char *value)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *s = name; *s; s++)
        h = (h ^ (uint8_t)tolower((unsigned char)*s)) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *s = value; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

void params_free(ParamSet *ps)
{
    for (int i = 0; i < ps->n; i++) {
        unintern(ps->v[i].name);
        unintern(ps->v[i].value);
    }
    free(ps->v);
    params_init(ps);
}

static Param *params_find(const ParamSet *ps, const char *name)
{
    for (int i = 0; i < ps->n; i++)
        if (strcasecmp(ps->v[i].name, name) == 0)
            return &ps->v[i];
    return NULL;
}

const char *params_get(const ParamSet *ps, const char *name)
{
    Param *p = params_find(ps, name);
    return p ? p->value : NULL;
}

/* Make room for one more Param; false when out of memory. */
static bool params_room(ParamSet *ps, int more)
{
    int cap;
    Param *nv;

    if (ps->n + more <= ps->cap)
        return true;
    cap = ps->cap ? ps->cap : 4;
    while (cap < ps->n + more)
        cap *= 2;
    nv = realloc(ps->v, sizeof(*nv) * (size_t)cap);
    if (!nv)
        return false;
    ps->v = nv;
    ps->cap = cap;
    return true;
}

/* Set name (interned) to the interned value v, taking over v's reference. */
static bool params_put(ParamSet *ps, const char *name, char *v)
{
    Param *p = params_find(ps, name);

    if (p) {
        ps->digest -= param_digest(p->name, p->value);
        unintern(p->value);
        p->value = v;
        ps->digest += param_digest(p->name, p->value);
        return true;
    }
    if (!params_room(ps, 1)) {
        unintern(v);
        return false;
    }
    ps->v[ps->n].name = intern(name);
    if (!ps->v[ps->n].name) {
        unintern(v);
        return false;
    }
    ps->v[ps->n].value = v;
    ps->digest += param_digest(name, v);
    ps->n++;
    return true;
}

bool params_set(ParamSet *ps, const char *name, const char *value)
{
    Param *p = params_find(ps, name);
    char *v;

    if (p && strcmp(p->value, value) == 0)
        return true;
    v = intern(value);
    return v && params_put(ps, name, v);
}

bool params_assign(ParamSet *dst, const ParamSet *src)
{
    params_free(dst);
    return params_copy(dst, src);
}

bool params_copy(ParamSet *dst, const ParamSet *src)
{
    if (dst->n == 0) {
        /* the common case (a login, a backend taking a client's values): references only */
        if (!params_room(dst, src->n))
            return false;
        for (int i = 0; i < src->n; i++) {
            dst->v[i].name = intern_ref(src->v[i].name);
            dst->v[i].value = intern_ref(src->v[i].value);
        }
        dst->n = src->n;
        dst->digest = src->digest;
        return true;
    }
    for (int i = 0; i < src->n; i++) {
        Param *p = params_find(dst, src->v[i].name);
        if (p && p->value == src->v[i].value)
            continue; /* the same interned string */
        if (!params_put(dst, src->v[i].name, intern_ref(src->v[i].value)))
            return false;
    }
    return true;
}

bool params_read_only(const char *name)
{
    static const char *const ro[] = {
        "server_version",        "server_encoding", "integer_datetimes", "is_superuser",
        "session_authorization", "in_hot_standby",  "scram_iterations",  NULL};
    for (int i = 0; ro[i]; i++)
        if (strcasecmp(ro[i], name) == 0)
            return true;
    return false;
}

/* A growing string; ok turns false on allocation failure and stays so. */
typedef struct Sb {
    char *buf;
    size_t len;
    size_t cap;
    bool ok;
} Sb;

static void sb_reserve(Sb *sb, size_t more)
{
    if (!sb->ok || sb->len + more + 1 <= sb->cap)
        return;
    size_t ncap = (sb->len + more + 1) * 2;
    char *nb = realloc(sb->buf, ncap);
    if (!nb) {
        sb->ok = false;
        return;
    }
    sb->buf = nb;
    sb->cap = ncap;
}

static void sb_add(Sb *sb, const char *s)
{
    size_t n = strlen(s);
    sb_reserve(sb, n);
    if (!sb->ok)
        return;
    memcpy(sb->buf + sb->len, s, n + 1);
    sb->len += n;
}

/* An E'' literal: backslashes and quotes escaped, so that the meaning does
 * not depend on standard_conforming_strings. */
static void sb_add_literal(Sb *sb, const char *s)
{
    sb_reserve(sb, 2 * strlen(s) + 3);
    if (!sb->ok)
        return;
    sb->buf[sb->len++] = 'E';
    sb->buf[sb->len++] = '\'';
    for (; *s; s++) {
        if (*s == '\'' || *s == '\\')
            sb->buf[sb->len++] = *s;
        sb->buf[sb->len++] = *s;
    }
    sb->buf[sb->len++] = '\'';
    sb->buf[sb->len] = 0;
}

/* A quoted identifier, doubling quotes. */
static void sb_add_ident(Sb *sb, const char *s)
{
    sb_reserve(sb, 2 * strlen(s) + 2);
    if (!sb->ok)
        return;
    sb->buf[sb->len++] = '"';
    for (; *s; s++) {
        if (*s == '"')
            sb->buf[sb->len++] = '"';
        sb->buf[sb->len++] = *s;
    }
    sb->buf[sb->len++] = '"';
    sb->buf[sb->len] = 0;
}

int params_sync_sql(const ParamSet *have, const ParamSet *want, char **sql)
{
    Sb sb = {NULL, 0, 0, true};
    int count = 0;

    /* set_config() takes the value as the setting's own text, so lists such
     * as search_path keep their meaning (SET x TO 'a,b' would make one name). */
    for (int i = 0; i < want->n; i++) {
        const Param *p = &want->v[i];
        const char *cur = params_get(have, p->name);
        if (params_read_only(p->name) || (cur && strcmp(cur, p->value) == 0))
            continue;
        sb_add(&sb, count == 0 ? "SELECT set_config(" : ", set_config(");
        sb_add_literal(&sb, p->name);
        sb_add(&sb, ", ");
        sb_add_literal(&sb, p->value);
        sb_add(&sb, ", false)");
        count++;
    }
    if (count > 0)
        sb_add(&sb, ";");
    for (int i = 0; i < have->n; i++) {
        const Param *p = &have->v[i];
        if (params_read_only(p->name) || params_get(want, p->name))
            continue;
        sb_add(&sb, "RESET ");
        sb_add_ident(&sb, p->name);
        sb_add(&sb, ";");
        count++;
    }
    if (!sb.ok) {
        free(sb.buf);
        return -1;
    }
    *sql = sb.buf;
    return count;
}

void params_remove(ParamSet *ps, const char *name)
{
    Param *p = params_find(ps, name);

    if (!p)
        return;
    ps->digest -= param_digest(p->name, p->value);
    unintern(p->name);
    unintern(p->value);
    *p = ps->v[--ps->n];
}
