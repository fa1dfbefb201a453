/*
 * One [databases] value: "host=x port=5432 password='it''s' ...", in the
 * manner of a libpq connection string, read into a DbConf.
 */
#include "conf/config_internal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

typedef enum { DK_STRING, DK_INT, DK_POOL_MODE } DbKeyType;

typedef struct DbKey {
    const char *name;
    DbKeyType type;
    size_t offset; /* of the field in DbConf */
    long min, max; /* DK_INT */
} DbKey;

#define DB(field) offsetof(DbConf, field)

static const DbKey db_keys[] = {
    {"host", DK_STRING, DB(host), 0, 0},
    {"port", DK_INT, DB(port), 1, 65535},
    {"dbname", DK_STRING, DB(dbname), 0, 0},
    {"user", DK_STRING, DB(user), 0, 0},
    {"password", DK_STRING, DB(password), 0, 0},
    {"pool_size", DK_INT, DB(pool_size), 1, CONF_POOL_SIZE_MAX},
    {"max_overflow", DK_INT, DB(max_overflow), 0, CONF_MAX_OVERFLOW_MAX},
    {"pool_mode", DK_POOL_MODE, DB(pool_mode), 0, 0},
};

#define NKEYS ((int)(sizeof(db_keys) / sizeof(db_keys[0])))

static const char *skip_space(const char *p)
{
    while (isspace((unsigned char)*p))
        p++;
    return p;
}

static const DbKey *db_key_find(const char *k, size_t len)
{
    for (int i = 0; i < NKEYS; i++)
        if (strlen(db_keys[i].name) == len && strncmp(db_keys[i].name, k, len) == 0)
            return &db_keys[i];
    return NULL;
}

/*
 * Read one value at *pp: up to the next whitespace, or a single-quoted
 * string in which '' and a backslash before any character stand for that
 * character. On success *out is a new string (caller frees) and *pp is past
 * the value.
 */
CONF_CHECK static DbParseResult read_value(const char **pp, const DbKey *key, char **out, char *msg,
                                           size_t msglen)
{
    const char *p = *pp;
    char *buf, *w;

    buf = malloc(strlen(p) + 1);
    if (!buf) {
        conf_msgf(msg, msglen, "out of memory");
        return DBPARSE_ERROR;
    }
    w = buf;
    if (*p != '\'') {
        while (*p && !isspace((unsigned char)*p))
            *w++ = *p++;
        goto out_done;
    }
    for (p++;; p++) {
        if (*p == '\0') {
            free(buf);
            conf_msgf(msg, msglen, "the quoted value of %s has no closing quote", key->name);
            return DBPARSE_UNTERMINATED;
        }
        if (*p == '\\' && p[1] != '\0') {
            *w++ = *++p;
        } else if (*p == '\'' && p[1] == '\'') {
            *w++ = *++p;
        } else if (*p == '\'') {
            p++;
            break;
        } else {
            *w++ = *p;
        }
    }
    if (*p != '\0' && !isspace((unsigned char)*p)) {
        free(buf);
        conf_msgf(msg, msglen, "unexpected text after the closing quote of %s", key->name);
        return DBPARSE_ERROR;
    }
out_done:
    *w = '\0';
    *out = buf;
    *pp = p;
    return DBPARSE_OK;
}

/* Store text (which this takes over) as key's value in db. */
CONF_CHECK static DbParseResult db_key_apply(DbConf *db, const DbKey *key, char *text, char *msg,
                                             size_t msglen)
{
    void *field = (char *)db + key->offset;
    long v;

    if (key->type == DK_STRING) {
        if (*text == '\0') {
            free(text);
            conf_msgf(msg, msglen, "%s must not be empty%s", key->name,
                      strcmp(key->name, "password") == 0
                          ? "; leave it out to use the auth_file entry"
                          : "");
            return DBPARSE_ERROR;
        }
        *(char **)field = text;
        return DBPARSE_OK;
    }
    if (key->type == DK_INT && conf_parse_long(text, key->min, key->max, &v)) {
        *(int *)field = (int)v;
        free(text);
        return DBPARSE_OK;
    }
    if (key->type == DK_POOL_MODE && conf_pool_mode_from_word(text, (int *)field)) {
        free(text);
        return DBPARSE_OK;
    }
    if (key->type == DK_INT)
        conf_msgf(msg, msglen, "%s must be an integer from %ld to %ld, not \"%s\"", key->name,
                  key->min, key->max, text);
    else
        conf_msgf(msg, msglen, "%s must be session or transaction, not \"%s\"", key->name, text);
    free(text);
    return DBPARSE_ERROR;
}

/* Read "key =" at *pp; NULL with msg set when there is no known key there. */
CONF_CHECK static const DbKey *read_key(const char **pp, char *msg, size_t msglen)
{
    const char *k = *pp, *p = *pp;
    const DbKey *key;
    size_t len;

    while (*p && *p != '=' && !isspace((unsigned char)*p))
        p++;
    len = (size_t)(p - k);
    p = skip_space(p);
    if (len == 0) {
        conf_msgf(msg, msglen, "a key is missing before '='");
        return NULL;
    }
    if (*p != '=') {
        conf_msgf(msg, msglen, "expected key=value, found \"%.*s\" without '='", (int)len, k);
        return NULL;
    }
    key = db_key_find(k, len);
    if (!key) {
        conf_msgf(msg, msglen,
                  "unknown key \"%.*s\"; the keys are host, port, dbname, user, password, "
                  "pool_size, max_overflow and pool_mode",
                  (int)len, k);
        return NULL;
    }
    *pp = skip_space(p + 1);
    return key;
}

DbParseResult conf_parse_db(const char *value, DbConf *db, char *msg, size_t msglen)
{
    const char *p = skip_space(value);
    bool seen[NKEYS] = {false};
    DbParseResult r;

    while (*p) {
        const DbKey *key = read_key(&p, msg, msglen);
        char *text;

        if (!key)
            return DBPARSE_ERROR;
        if (seen[key - db_keys]) {
            conf_msgf(msg, msglen, "%s is given twice", key->name);
            return DBPARSE_ERROR;
        }
        seen[key - db_keys] = true;
        r = read_value(&p, key, &text, msg, msglen);
        if (r != DBPARSE_OK)
            return r;
        r = db_key_apply(db, key, text, msg, msglen);
        if (r != DBPARSE_OK)
            return r;
        p = skip_space(p);
    }
    if (!db->host) {
        conf_msgf(msg, msglen,
                  "host is missing; give the PostgreSQL server as host=127.0.0.1 (a name or "
                  "address) or host=/var/run/postgresql (a unix socket directory)");
        return DBPARSE_ERROR;
    }
    return DBPARSE_OK;
}
