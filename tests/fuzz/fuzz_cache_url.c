/*
 * Fuzz target: redis_url_parse, the cache_url setting (daemon/redis.c):
 * redis://[[user]:password@]host[:port][/db] and
 * unix:/path[?db=N][&password=P].
 *
 * Input: the URL (it ends at the first NUL, as a setting's value does).
 *
 * Checks: an accepted URL gives a host or a socket path (exactly one), a
 * port in 1..65535, a db in 0..1000000, every string NUL-terminated in its
 * field, host and path taken from the URL as written (user and password
 * are percent-decoded; an IPv6 host loses its brackets); written back as a
 * URL of the same form from those fields (encoded again), it parses to the
 * same target. A refused URL has a message that
 * names cache_url and does not show the URL's password; with a small err
 * buffer the message is cut, NUL-terminated, and the verdict the same.
 * Parsing is deterministic (the whole RedisTarget compares equal).
 */
#include "tests/fuzz/fuzz.h"

#include <ctype.h>

#include "daemon/redis.h"

#define PASSWORD "s3cr3tPW"

static bool terminated(const char *s, size_t cap)
{
    return memchr(s, 0, cap) != NULL;
}

/* The URL the fields say, in the same form; NULL when it would not fit. */
/* Percent-encode s (every byte but unreserved ones) into o; returns the end. */
static char *encode(char *o, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~')
            *o++ = (char)ch;
        else
            o += sprintf(o, "%%%02X", ch);
    }
    *o = '\0';
    return o;
}

static char *unparse(const RedisTarget *t)
{
    size_t cap = 2048;
    char *u = malloc(cap), *o;
    int n;

    if (!u)
        abort();
    if (t->path[0]) {
        n = snprintf(u, cap, "unix:%s?db=%d&password=%s", t->path, t->db, t->password);
        FUZZ_CHECK(n > 0 && (size_t)n < cap);
        return u;
    }
    o = u + sprintf(u, "redis://");
    o = encode(o, t->user);
    *o++ = ':';
    o = encode(o, t->password);
    /* an IPv6 literal (or any host with a colon) goes in brackets */
    n = snprintf(o, cap - (size_t)(o - u), strchr(t->host, ':') ? "@[%s]:%d/%d" : "@%s:%d/%d",
                 t->host, t->port, t->db);
    FUZZ_CHECK(n > 0 && (size_t)(o - u) + (size_t)n < cap);
    return u;
}

static bool same_target(const RedisTarget *a, const RedisTarget *b)
{
    return strcmp(a->host, b->host) == 0 && strcmp(a->path, b->path) == 0 &&
           strcmp(a->user, b->user) == 0 && strcmp(a->password, b->password) == 0 &&
           a->port == b->port && a->db == b->db;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = fuzz_str(data, size);
    RedisTarget t, t2;
    char err[256];
    char *small = (char *)fuzz_alloc(12);
    bool ok, ok2;

    memset(&t, 0xa5, sizeof(t));
    memset(&t2, 0x5a, sizeof(t2));
    err[0] = '\0';
    ok = redis_url_parse(url, &t, err, sizeof(err));
    small[0] = '\0';
    ok2 = redis_url_parse(url, &t2, small, 12);
    FUZZ_CHECK(ok == ok2);
    FUZZ_CHECK(memcmp(&t, &t2, sizeof(t)) == 0);

    if (ok) {
        RedisTarget t3;
        char err3[256] = "";
        char *again;

        FUZZ_CHECK(terminated(t.host, sizeof(t.host)) && terminated(t.path, sizeof(t.path)));
        FUZZ_CHECK(terminated(t.user, sizeof(t.user)) &&
                   terminated(t.password, sizeof(t.password)));
        FUZZ_CHECK((t.host[0] != '\0') != (t.path[0] != '\0'));
        FUZZ_CHECK(t.port >= 1 && t.port <= 65535);
        FUZZ_CHECK(t.db >= 0 && t.db <= 1000000);
        /* user and password are percent-decoded; host and path are as written */
        FUZZ_CHECK(strstr(url, t.host) && strstr(url, t.path));
        if (t.path[0]) {
            FUZZ_CHECK(strstr(url, t.password));
            FUZZ_CHECK(strncmp(url, "unix:", 5) == 0 && t.path[0] == '/' && t.user[0] == '\0');
            FUZZ_CHECK(t.port == 6379 && !strchr(t.path, '?') && !strchr(t.password, '&'));
        } else {
            FUZZ_CHECK(strncmp(url, "redis://", 8) == 0 && !strchr(t.host, '/'));
            FUZZ_CHECK(!strchr(t.host, '[') && !strchr(t.host, ']'));
        }
        again = unparse(&t);
        if (!redis_url_parse(again, &t3, err3, sizeof(err3)) || !same_target(&t, &t3)) {
            fprintf(stderr, "url: %s\nwritten back: %s\nerror: %s\n", url, again, err3);
            FUZZ_CHECK(!"the fields written back parse to the same target");
        }
        free(again);
    } else {
        FUZZ_CHECK(err[0] != '\0' && terminated(err, sizeof(err)));
        FUZZ_CHECK(strstr(err, "cache_url") != NULL);
        FUZZ_CHECK(small[0] != '\0' && terminated(small, 12) && strncmp(err, small, 11) == 0);
        /* the password of a redis:// URL's userinfo, nowhere else in the URL */
        if (strncmp(url, "redis://", 8) == 0 && strstr(url, ":" PASSWORD "@") &&
            strstr(url, PASSWORD) == strstr(url, ":" PASSWORD "@") + 1 &&
            !strstr(strstr(url, PASSWORD) + 1, PASSWORD) && strstr(err, PASSWORD)) {
            fprintf(stderr, "url: %s\nerror: %s\n", url, err);
            FUZZ_CHECK(!"the password is never in an error message");
        }
    }
    free(small);
    free(url);
    return 0;
}
