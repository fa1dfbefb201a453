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
#include "orm/session.h"

#include <stdbool.h>
#include <string.h>

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
    while (i < n && k + 1 < cap) {
        unsigned char ch = (unsigned char)s[i], low = ch | 0x20; /* a letter in lower case */
        if (low >= 'a' && low <= 'z')
            w[k++] = (char)low;
        else if ((ch >= '0' && ch <= '9') || ch == '_' || ch == '$')
            w[k++] = (char)ch;
        else
            break;
        i++;
    }
    w[k] = '\0';
    *p = i;
    return k;
}

/*
 * Case-insensitive search of pat (lower case, starting with a letter) in
 * s[0..n). Runs for every simple Query: memchr finds the places where the
 * first letter occurs, in either case, and only those are compared.
 */
static bool has_word(const char *s, size_t n, const char *pat)
{
    size_t m = strlen(pat);
    const char *last, *lo, *up;

    if (m > n)
        return false;
    last = s + (n - m); /* the last place a match can start */
    lo = memchr(s, pat[0], n - m + 1);
    up = memchr(s, pat[0] - ('a' - 'A'), n - m + 1);
    while (lo || up) {
        const char *at = !up || (lo && lo < up) ? lo : up;
        size_t k = 1;
        /* strncasecmp of the C locale, inline: ASCII letters fold */
        while (k < m &&
               ((unsigned)((unsigned char)at[k] - 'A') < 26u ? at[k] + 32 : at[k]) == pat[k])
            k++;
        if (k == m)
            return true;
        if (at == lo)
            lo = memchr(lo + 1, pat[0], (size_t)(last - lo));
        else
            up = memchr(up + 1, pat[0] - ('a' - 'A'), (size_t)(last - up));
    }
    return false;
}

/* Only blanks (as the lexer counts them) in s[0..n)? */
static bool all_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' && s[i] != '\f' &&
            s[i] != '\v')
            return false;
    return true;
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
    /* the most common first, and no string compares for the other words */
    if (strcmp(w, "select") == 0 || strcmp(w, "with") == 0 || strcmp(w, "table") == 0)
        return has_word(s, n, "into temp") ? "a temporary table (SELECT INTO)" : NULL;
    if (w[0] != 's' && w[0] != 'l' && w[0] != 'p' && w[0] != 'd' && w[0] != 'c')
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
    return NULL;
}

const char *session_state_sql(const char *sql, size_t n)
{
    ShapeSpan spans[16];
    const char *semi;
    int k;

    /* functions that change the session: advisory locks outside a transaction's
     * scope, set_config(..., false) */
    if (memchr(sql, '(', n)) {
        if (has_word(sql, n, "pg_advisory_lock") || has_word(sql, n, "pg_try_advisory_lock"))
            return "a session advisory lock";
        if (has_word(sql, n, "set_config"))
            return "set_config()";
    }
    semi = memchr(sql, ';', n);
    /* One statement, or one and its terminator ("...;", as pgbench sends
     * it): the split would give that statement alone (or the whole text, when
     * the ';' is in a comment or string), and statement_effect says the same
     * of both, as neither its words nor has_word's patterns go past a ';'. */
    if (!semi || all_blank(semi + 1, n - (size_t)(semi + 1 - sql)))
        return statement_effect(sql, n);
    k = shape_split(sql, n, spans, 16);
    for (int i = 0; i < k && i < 16; i++) {
        const char *e = statement_effect(sql + spans[i].off, spans[i].len);
        if (e)
            return e;
    }
    return k > 16 ? "a statement past the 16th of a query" : NULL;
}
