/*
 * The auth_file: one "user" "secret" pair per line, each in double quotes
 * with "" standing for a quote inside; blank lines and lines starting with
 * ';' or '#' are comments. The secret is kept as written (a plain password,
 * an md5 hash or a SCRAM secret): the daemon decides how to use it.
 */
#include "conf/config_internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* State of one auth_file read. */
typedef struct AuthLoad {
    const char *path;
    int lineno;
    int *lines; /* line of each cfg->users entry, for duplicate messages */
    int cap;
    char *err;
    size_t errlen;
} AuthLoad;

static bool auth_fail(AuthLoad *al, const char *what)
{
    conf_msgf(al->err, al->errlen, "%s:%d: %s", al->path, al->lineno, what);
    return false;
}

/*
 * Read a double-quoted field at *pp into a new string at *out. what names
 * the field for messages. Returns false with the error written.
 */
CONF_CHECK static bool read_quoted(AuthLoad *al, const char **pp, const char *what, char **out)
{
    const char *p = *pp;
    char msg[128];
    char *buf, *w;

    if (*p != '"') {
        snprintf(msg, sizeof(msg), "expected the %s in double quotes: \"user\" \"secret\"", what);
        return auth_fail(al, msg);
    }
    buf = malloc(strlen(p) + 1);
    if (!buf)
        return auth_fail(al, "out of memory");
    w = buf;
    for (p++;; p++) {
        if (*p == '\0') {
            free(buf);
            snprintf(msg, sizeof(msg), "the %s has no closing '\"'", what);
            return auth_fail(al, msg);
        }
        if (*p == '"' && p[1] == '"') {
            *w++ = '"';
            p++;
        } else if (*p == '"') {
            break;
        } else {
            *w++ = *p;
        }
    }
    *w = '\0';
    *out = buf;
    *pp = p + 1;
    return true;
}

/* Append one user (taking over name and secret); false with the error written. */
CONF_CHECK static bool auth_add(Config *cfg, AuthLoad *al, char *name, char *secret)
{
    if (cfg->nusers == al->cap) {
        int cap = al->cap ? al->cap * 2 : 16;
        AuthUser *users = realloc(cfg->users, (size_t)cap * sizeof(*users));
        int *lines;

        if (users)
            cfg->users = users;
        lines = users ? realloc(al->lines, (size_t)cap * sizeof(*lines)) : NULL;
        if (!lines) {
            free(name);
            free(secret);
            return auth_fail(al, "out of memory");
        }
        al->lines = lines;
        al->cap = cap;
    }
    cfg->users[cfg->nusers].name = name;
    cfg->users[cfg->nusers].secret = secret;
    al->lines[cfg->nusers] = al->lineno;
    cfg->nusers++;
    return true;
}

/* One line that is not blank or a comment. */
CONF_CHECK static bool auth_line(Config *cfg, AuthLoad *al, const char *p)
{
    char *name = NULL, *secret = NULL;
    char msg[256];

    if (!read_quoted(al, &p, "user name", &name))
        return false;
    if (!isspace((unsigned char)*p)) {
        free(name);
        return auth_fail(al, "expected whitespace and then the quoted secret after the user name");
    }
    while (isspace((unsigned char)*p))
        p++;
    if (!read_quoted(al, &p, "secret", &secret))
        goto out_free;
    while (isspace((unsigned char)*p))
        p++;
    if (*p != '\0') {
        auth_fail(al, "unexpected text after the secret; a line is \"user\" \"secret\"");
        goto out_free;
    }
    if (name[0] == '\0' || secret[0] == '\0') {
        auth_fail(al, name[0] == '\0' ? "the user name is empty" : "the secret is empty");
        goto out_free;
    }
    for (int i = 0; i < cfg->nusers; i++) {
        if (strcmp(cfg->users[i].name, name) == 0) {
            snprintf(msg, sizeof(msg), "user \"%.100s\" is already listed on line %d", name,
                     al->lines[i]);
            auth_fail(al, msg);
            goto out_free;
        }
    }
    return auth_add(cfg, al, name, secret);

out_free:
    free(name);
    free(secret);
    return false;
}

bool conf_load_auth_file(Config *cfg, const char *path, const char *origin, char *err,
                         size_t errlen)
{
    AuthLoad al = {.path = path, .err = err, .errlen = errlen};
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    bool ok = true;
    FILE *fp;

    fp = fopen(path, "r");
    if (!fp) {
        conf_msgf(err, errlen, "%s: cannot open: %s%s%s%s", path, strerror(errno),
                  origin ? " (" : "", origin ? origin : "", origin ? ")" : "");
        return false;
    }
    while (ok && (n = getline(&line, &cap, fp)) >= 0) {
        const char *p = line;

        al.lineno++;
        if (memchr(line, '\0', (size_t)n)) {
            ok = auth_fail(&al, "line contains a NUL byte; is this a text file?");
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0' || *p == ';' || *p == '#')
            continue;
        ok = auth_line(cfg, &al, p);
    }
    if (ok && ferror(fp)) {
        conf_msgf(err, errlen, "%s: read error: %s", path, strerror(errno ? errno : EIO));
        ok = false;
    }
    free(line);
    free(al.lines);
    fclose(fp);
    return ok;
}
