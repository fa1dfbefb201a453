/*
 * Reader of tests/data/orm/statements.txt, the ORM statement corpus shared
 * by test_shape.c and test_analyze.c (format described in the file).
 */
#ifndef PGC_TESTS_ORM_DATA_H
#define PGC_TESTS_ORM_DATA_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ORM_MAX_SQL     16
#define ORM_MAX_RECORDS 256

typedef struct OrmRecord {
    char name[160];
    int line;
    int nsql;
    char *sql[ORM_MAX_SQL];
    char *text, *values, *kind, *key, *batch, *cache;
} OrmRecord;

static char *orm_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* Append "\n" + more to *field (a continuation line). */
static void orm_append(char **field, const char *more)
{
    size_t a = strlen(*field), b = strlen(more);
    char *p = realloc(*field, a + b + 2);
    if (!p)
        return;
    p[a] = '\n';
    memcpy(p + a + 1, more, b + 1);
    *field = p;
}

static void orm_data_free(OrmRecord *recs, int n)
{
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < recs[i].nsql; k++)
            free(recs[i].sql[k]);
        free(recs[i].text);
        free(recs[i].values);
        free(recs[i].kind);
        free(recs[i].key);
        free(recs[i].batch);
        free(recs[i].cache);
    }
    free(recs);
}

/* Load the corpus; returns the number of records (-1 when the file is missing). */
static int orm_data_load(OrmRecord **out)
{
    const char *dir = getenv("PGC_TEST_DATA");
    char path[1024], *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int n = -1, lineno = 0;
    char **last = NULL;
    OrmRecord *recs = calloc(ORM_MAX_RECORDS, sizeof(*recs));
    FILE *f;

    snprintf(path, sizeof(path), "%s/orm/statements.txt", dir ? dir : "tests/data");
    f = fopen(path, "r");
    if (!f || !recs) {
        free(recs);
        if (f)
            fclose(f);
        return -1;
    }
    while ((len = getline(&line, &cap, f)) >= 0) {
        OrmRecord *r = n >= 0 ? &recs[n] : NULL;
        char *colon, *val;
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0 || line[0] == '#') {
            last = NULL;
            continue;
        }
        if (strncmp(line, "== ", 3) == 0) {
            if (n + 1 >= ORM_MAX_RECORDS)
                break;
            r = &recs[++n];
            snprintf(r->name, sizeof(r->name), "%s", line + 3);
            r->line = lineno;
            last = NULL;
            continue;
        }
        if ((line[0] == ' ' || line[0] == '\t') && last) {
            orm_append(last, line);
            continue;
        }
        colon = strstr(line, ": ");
        if (!r || !colon)
            continue;
        *colon = '\0';
        val = orm_strdup(colon + 2);
        if (strcmp(line, "sql") == 0 && r->nsql < ORM_MAX_SQL)
            last = &r->sql[r->nsql++];
        else if (strcmp(line, "text") == 0)
            last = &r->text;
        else if (strcmp(line, "values") == 0)
            last = &r->values;
        else if (strcmp(line, "kind") == 0)
            last = &r->kind;
        else if (strcmp(line, "key") == 0)
            last = &r->key;
        else if (strcmp(line, "batch") == 0)
            last = &r->batch;
        else if (strcmp(line, "cache") == 0)
            last = &r->cache;
        else
            last = NULL;
        if (last) {
            free(*last);
            *last = val;
        } else {
            free(val);
        }
    }
    free(line);
    fclose(f);
    *out = recs;
    return n + 1;
}

#endif
