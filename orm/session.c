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

/* The first byte at or after i that is not a blank or in a comment. */
static size_t skip_space(const char *s, size_t n, size_t i)
{
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
            return i;
        }
    }
}

/* One word (letters, digits, _, $) lower-cased into w; p advanced past blanks and comments. */
static size_t next_word(const char *s, size_t n, size_t *p, char *w, size_t cap)
{
    size_t i = skip_space(s, n, *p), k = 0;

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

/* Does pat (lower case, m bytes) occur at s[i..) of s[0..n), ASCII letters folded? */
static bool word_at(const char *s, size_t n, size_t i, const char *pat, size_t m)
{
    if (i > n || n - i < m)
        return false;
    for (size_t k = 0; k < m; k++) {
        unsigned char ch = (unsigned char)s[i + k];
        if ((unsigned)(ch - 'A') < 26u)
            ch += 'a' - 'A';
        if (ch != (unsigned char)pat[k])
            return false;
    }
    return true;
}

/*
 * Case-insensitive search of pat (lower case) in s[0..n). Runs for most
 * statements: memchr finds the places where pat's byte at anchor (chosen
 * rare in SQL) occurs, in either case, and only those are compared.
 */
static bool has_word(const char *s, size_t n, const char *pat, size_t anchor)
{
    size_t m = strlen(pat);
    char lo = pat[anchor];
    char up = lo >= 'a' && lo <= 'z' ? (char)(lo - ('a' - 'A')) : lo;

    if (m > n)
        return false;
    /* the anchor of a match lies in s[anchor .. n - m + anchor] */
    for (int pass = 0; pass < (lo == up ? 1 : 2); pass++) {
        char c = pass ? up : lo;
        const char *p = s + anchor, *end = s + (n - m) + anchor + 1;
        while (p < end && (p = memchr(p, c, (size_t)(end - p))) != NULL) {
            if (word_at(s, n, (size_t)(p - s) - anchor, pat, m))
                return true;
            p++;
        }
    }
    return false;
}

/*
 * Functions that change the session: advisory locks outside a
 * transaction's scope, set_config(..., false). Every name has an
 * underscore, which SQL has few of: one pass over them finds all three.
 */
static const char *session_function(const char *s, size_t n)
{
    static const struct {
        const char *name;
        size_t len, underscore; /* the name's first '_' */
        const char *what;
    } fns[] = {
        {"pg_advisory_lock", 16, 2, "a session advisory lock"},
        {"pg_try_advisory_lock", 20, 2, "a session advisory lock"},
        {"set_config", 10, 3, "set_config()"},
    };
    const char *found = NULL, *p = s, *end = s + n;

    while (p < end && (p = memchr(p, '_', (size_t)(end - p))) != NULL) {
        size_t at = (size_t)(p - s);
        for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++)
            if (at >= fns[i].underscore &&
                word_at(s, n, at - fns[i].underscore, fns[i].name, fns[i].len)) {
                if (i < 2)
                    return fns[i].what; /* a lock first, as it outlives a DISCARD ALL */
                found = fns[i].what;
            }
        p++;
    }
    return found;
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
/* Is the k-byte word w the literal lit? (A length test first: no call for most words.) */
static inline bool word_is(const char *w, size_t k, const char *lit, size_t len)
{
    return k == len && memcmp(w, lit, len) == 0;
}

static const char *statement_effect(const char *s, size_t n)
{
    char w[64];
    size_t p = skip_space(s, n, 0), k;

    /* Only statements whose first word begins with one of these letters can
     * leave anything (the words below): the others (UPDATE, INSERT, BEGIN,
     * END, ...) are not even read. */
    if (p >= n)
        return NULL;
    switch ((unsigned char)s[p] | 0x20) {
    case 's':
    case 'w':
    case 't':
    case 'l':
    case 'p':
    case 'd':
    case 'c':
        break;
    default:
        return NULL;
    }
    k = next_word(s, n, &p, w, sizeof(w));
    if (k == 0)
        return NULL;
    /* the most common first, and no string compares for the other words */
    if (word_is(w, k, "select", 6) || word_is(w, k, "with", 4) || word_is(w, k, "table", 5))
        return has_word(s, n, "into temp", 7) ? "a temporary table (SELECT INTO)" : NULL;
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
        return has_word(s, n, "with hold", 5) ? "a WITH HOLD cursor" : NULL;
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

    if (memchr(sql, '(', n)) {
        const char *fn = session_function(sql, n);
        if (fn)
            return fn;
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
