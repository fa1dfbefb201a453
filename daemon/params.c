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
    free(p->name);
    free(p->value);
    *p = ps->v[--ps->n];
}
