/* Session parameter sets and the SQL that reconciles two of them. */
#include "daemon/params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>

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
        free(ps->v[i].name);
        free(ps->v[i].value);
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

bool params_set(ParamSet *ps, const char *name, const char *value)
{
    Param *p = params_find(ps, name);
    char *v;

    if (p && strcmp(p->value, value) == 0)
        return true;
    v = strdup(value);
    if (!v)
        return false;
    if (p) {
        ps->digest -= param_digest(p->name, p->value);
        free(p->value);
        p->value = v;
        ps->digest += param_digest(p->name, p->value);
        return true;
    }
    if (ps->n == ps->cap) {
        int cap = ps->cap ? ps->cap * 2 : 16;
        Param *nv = realloc(ps->v, sizeof(*nv) * (size_t)cap);
        if (!nv) {
            free(v);
            return false;
        }
        ps->v = nv;
        ps->cap = cap;
    }
    ps->v[ps->n].name = strdup(name);
    if (!ps->v[ps->n].name) {
        free(v);
        return false;
    }
    ps->v[ps->n].value = v;
    ps->digest += param_digest(name, value);
    ps->n++;
    return true;
}

bool params_assign(ParamSet *dst, const ParamSet *src)
{
    params_free(dst);
    return params_copy(dst, src);
}

bool params_copy(ParamSet *dst, const ParamSet *src)
{
    for (int i = 0; i < src->n; i++)
        if (!params_set(dst, src->v[i].name, src->v[i].value))
            return false;
    return true;
}

bool params_read_only(const char *name)
{
    static const char *const ro[] = {"server_version", "server_encoding", "integer_datetimes",
                                     "is_superuser",   "session_authorization",
                                     "in_hot_standby", "scram_iterations", NULL};
    for (int i = 0; ro[i]; i++)
        if (strcasecmp(ro[i], name) == 0)
            return true;
    return false;
}

/* Append s to the growing string, doubling quote characters q. */
static bool append_quoted(char **buf, size_t *len, size_t *cap, const char *s, char q)
{
    size_t need = *len + 2 * strlen(s) + 4;
    if (need > *cap) {
        size_t ncap = need * 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return false;
        *buf = nb;
        *cap = ncap;
    }
    (*buf)[(*len)++] = q;
    for (; *s; s++) {
        if (*s == q)
            (*buf)[(*len)++] = q;
        (*buf)[(*len)++] = *s;
    }
    (*buf)[(*len)++] = q;
    (*buf)[*len] = 0;
    return true;
}

static bool append_raw(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        size_t ncap = (*len + n + 1) * 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return false;
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, s, n + 1);
    *len += n;
    return true;
}

int params_sync_sql(const ParamSet *have, const ParamSet *want, char **sql)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int count = 0;
    bool ok = true;

    for (int i = 0; i < want->n && ok; i++) {
        const Param *p = &want->v[i];
        const char *cur = params_get(have, p->name);
        if (params_read_only(p->name) || (cur && strcmp(cur, p->value) == 0))
            continue;
        /* E'' would depend on standard_conforming_strings; doubled quotes do not. */
        ok = append_raw(&buf, &len, &cap, "SET ") &&
             append_quoted(&buf, &len, &cap, p->name, '"') &&
             append_raw(&buf, &len, &cap, " TO ") &&
             append_quoted(&buf, &len, &cap, p->value, '\'') && append_raw(&buf, &len, &cap, ";");
        count++;
    }
    for (int i = 0; i < have->n && ok; i++) {
        const Param *p = &have->v[i];
        if (params_read_only(p->name) || params_get(want, p->name))
            continue;
        ok = append_raw(&buf, &len, &cap, "RESET ") &&
             append_quoted(&buf, &len, &cap, p->name, '"') && append_raw(&buf, &len, &cap, ";");
        count++;
    }
    if (!ok) {
        free(buf);
        return -1;
    }
    *sql = buf;
    return count;
}
