/*
 * Session state a transaction-mode client leaves in its backend. The proxy
 * follows reported parameters (they are re-set per client) and
 * protocol-level prepared statements (renamed and prepared per backend);
 * everything else a statement can leave in a session -- a SET of a
 * parameter the server does not report (search_path, work_mem, role), a
 * temporary table, LISTEN, a session advisory lock, a WITH HOLD cursor, an
 * SQL-level PREPARE -- would be seen by the next client of that backend.
 * Such statements are spotted here by their words (no parse: a false alarm
 * only costs a DISCARD ALL), and the backend is reset with DISCARD ALL
 * before it serves anyone else (pool_release).
 */
#include "daemon/session.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "orm/shape.h"

/* Parameters PostgreSQL reports with ParameterStatus: the proxy re-sets those per client. */
static const char *const reported[] = {
    "application_name",
    "client_encoding",
    "datestyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "intervalstyle",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "timezone",
};

/* One word (letters, digits, _, $) lower-cased into w; p advanced past blanks and comments. */
static size_t next_word(const char *s, size_t n, size_t *p, char *w, size_t cap)
{
    size_t i = *p, k = 0;

    for (;;) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
            i++;
        if (i + 1 < n && s[i] == '-' && s[i + 1] == '-') {
            while (i < n && s[i] != '\n')
                i++;
        } else if (i + 1 < n && s[i] == '/' && s[i + 1] == '*') {
            i += 2;
            while (i + 1 < n && !(s[i] == '*' && s[i + 1] == '/'))
                i++;
            i = i + 2 < n ? i + 2 : n;
        } else {
            break;
        }
    }
    while (i < n && k + 1 < cap &&
           ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
            (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '$')) {
        char ch = s[i++];
        w[k++] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    w[k] = '\0';
    *p = i;
    return k;
}

/* Case-insensitive search of pat (lower case) in s[0..n). */
static bool has_word(const char *s, size_t n, const char *pat)
{
    size_t m = strlen(pat);

    for (size_t i = 0; i + m <= n; i++)
        if ((s[i] | 0x20) == pat[0] && strncasecmp(s + i, pat, m) == 0)
            return true;
    return false;
}

/* The SET that follows (after "set" and an optional "session"): a parameter the proxy
 * does not follow? */
static const char *set_effect(const char *s, size_t n, size_t p)
{
    char w[64];

    if (!next_word(s, n, &p, w, sizeof(w)))
        return "SET"; /* a quoted name: not looked at closer */
    if (strcmp(w, "local") == 0 || strcmp(w, "transaction") == 0 || strcmp(w, "constraints") == 0)
        return NULL; /* ends with the transaction */
    if (strcmp(w, "session") == 0) {
        if (!next_word(s, n, &p, w, sizeof(w)))
            return NULL;
        if (strcmp(w, "authorization") == 0)
            return "SET SESSION AUTHORIZATION";
        if (strcmp(w, "characteristics") == 0)
            return "SET SESSION CHARACTERISTICS";
    }
    if (strcmp(w, "role") == 0)
        return "SET ROLE";
    if (strcmp(w, "time") == 0 || strcmp(w, "names") == 0)
        return NULL; /* TimeZone, client_encoding: reported */
    for (size_t i = 0; i < sizeof(reported) / sizeof(reported[0]); i++)
        if (strcmp(w, reported[i]) == 0)
            return NULL;
    return "SET of a parameter the server does not report";
}

/* One statement's effect, or NULL. */
static const char *statement_effect(const char *s, size_t n)
{
    char w[64];
    size_t p = 0;

    if (!next_word(s, n, &p, w, sizeof(w)))
        return NULL;
    if (strcmp(w, "set") == 0)
        return set_effect(s, n, p);
    if (strcmp(w, "listen") == 0)
        return "LISTEN";
    if (strcmp(w, "load") == 0)
        return "LOAD";
    if (strcmp(w, "prepare") == 0) {
        if (next_word(s, n, &p, w, sizeof(w)) && strcmp(w, "transaction") == 0)
            return NULL;
        return "SQL PREPARE";
    }
    if (strcmp(w, "declare") == 0)
        return has_word(s, n, "with hold") ? "a WITH HOLD cursor" : NULL;
    if (strcmp(w, "create") == 0) {
        while (next_word(s, n, &p, w, sizeof(w))) {
            if (strcmp(w, "temp") == 0 || strcmp(w, "temporary") == 0)
                return "a temporary object";
            if (strcmp(w, "or") != 0 && strcmp(w, "replace") != 0 && strcmp(w, "local") != 0 &&
                strcmp(w, "global") != 0)
                break;
        }
        return NULL;
    }
    if (strcmp(w, "select") == 0 || strcmp(w, "with") == 0 || strcmp(w, "table") == 0)
        return has_word(s, n, "into temp") ? "a temporary table (SELECT INTO)" : NULL;
    return NULL;
}

const char *session_state_sql(const char *sql, size_t n)
{
    ShapeSpan spans[16];
    int k;

    /* functions that change the session: advisory locks outside a transaction's
     * scope, set_config(..., false) */
    if (memchr(sql, '(', n)) {
        if (has_word(sql, n, "pg_advisory_lock") || has_word(sql, n, "pg_try_advisory_lock"))
            return "a session advisory lock";
        if (has_word(sql, n, "set_config"))
            return "set_config()";
    }
    if (!memchr(sql, ';', n))
        return statement_effect(sql, n);
    k = shape_split(sql, n, spans, 16);
    for (int i = 0; i < k && i < 16; i++) {
        const char *e = statement_effect(sql + spans[i].off, spans[i].len);
        if (e)
            return e;
    }
    return k > 16 ? "a statement past the 16th of a query" : NULL;
}
