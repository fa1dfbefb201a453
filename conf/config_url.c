/*
 * The quick start: a Config built from one postgresql:// URL (the upstream)
 * and a listen address, with no config file.
 */
#include "conf/config_internal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_LISTEN_ADDR "127.0.0.1"
#define DEFAULT_LISTEN_PORT "6432"
#define DEFAULT_UPSTREAM    "127.0.0.1"

#define ENCODE_HINT "percent-encode special characters in the user name and password, e.g. @ as %40"

/* The pieces of an upstream URL, each a new string or NULL. */
typedef struct UrlParts {
    char *user;
    char *password;
    char *host;
    int port;
    char *dbname;
} UrlParts;

static void url_parts_free(UrlParts *u)
{
    free(u->user);
    free(u->password);
    free(u->host);
    free(u->dbname);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/*
 * Percent-decode len bytes of s into a new string at *out. what names the
 * part for messages (values are not echoed: they may be secrets).
 */
CONF_CHECK static bool pct_decode(const char *s, size_t len, const char *what, char **out,
                                  char *err, size_t errlen)
{
    char *buf = malloc(len + 1), *w = buf;

    if (!buf) {
        conf_msgf(err, errlen, "out of memory");
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        int hi, lo;

        if (s[i] != '%') {
            *w++ = s[i];
            continue;
        }
        hi = i + 2 < len ? hex_value(s[i + 1]) : -1;
        lo = i + 2 < len ? hex_value(s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(buf);
            conf_msgf(err, errlen,
                      "upstream URL: bad percent-encoding in the %s: '%%' must be followed by "
                      "two hex digits (and not %%00)",
                      what);
            return false;
        }
        *w++ = (char)(hi * 16 + lo);
        i += 2;
    }
    *w = '\0';
    *out = buf;
    return true;
}

/* "user[:password]" of len bytes. */
CONF_CHECK static bool url_userinfo(const char *s, size_t len, UrlParts *u, char *err,
                                    size_t errlen)
{
    const char *colon = memchr(s, ':', len);
    size_t ulen = colon ? (size_t)(colon - s) : len;

    if (colon && colon + 1 < s + len) {
        if (!pct_decode(colon + 1, len - ulen - 1, "password", &u->password, err, errlen))
            return false;
    }
    if (ulen > 0 && !pct_decode(s, ulen, "user name", &u->user, err, errlen))
        return false;
    if (u->password && !u->user) {
        conf_msgf(err, errlen, "upstream URL has a password but no user name (%s)", ENCODE_HINT);
        return false;
    }
    return true;
}

CONF_CHECK static bool url_port(const char *s, size_t len, UrlParts *u, char *err, size_t errlen)
{
    char buf[16];

    if (len == 0 || len >= sizeof(buf)) {
        conf_msgf(err, errlen, "upstream URL: the port after ':' must be a number from 1 to 65535");
        return false;
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (!conf_parse_port(buf, &u->port)) {
        conf_msgf(err, errlen,
                  "upstream URL: the port must be a number from 1 to 65535, not \"%s\" (%s)", buf,
                  ENCODE_HINT);
        return false;
    }
    return true;
}

/* "host[:port]", "[ipv6][:port]", ":port" or "" of len bytes. */
CONF_CHECK static bool url_hostport(const char *s, size_t len, UrlParts *u, char *err,
                                    size_t errlen)
{
    const char *end = s + len, *colon;

    if (memchr(s, ',', len)) {
        conf_msgf(err, errlen, "upstream URL: only one host is supported");
        return false;
    }
    if (len > 0 && *s == '[') {
        const char *close = memchr(s, ']', len);

        if (!close || close == s + 1 || (close + 1 < end && close[1] != ':')) {
            conf_msgf(err, errlen,
                      "upstream URL: an IPv6 address goes in brackets, as in [::1]:5432");
            return false;
        }
        if (!pct_decode(s + 1, (size_t)(close - s - 1), "host", &u->host, err, errlen))
            return false;
        return close + 1 == end || url_port(close + 2, (size_t)(end - close - 2), u, err, errlen);
    }
    colon = memchr(s, ':', len);
    if (colon && memchr(colon + 1, ':', (size_t)(end - colon - 1))) {
        conf_msgf(err, errlen, "upstream URL: put an IPv6 address in brackets, as in [::1]:5432");
        return false;
    }
    if (colon && !url_port(colon + 1, (size_t)(end - colon - 1), u, err, errlen))
        return false;
    len = colon ? (size_t)(colon - s) : len;
    return len == 0 || pct_decode(s, len, "host", &u->host, err, errlen);
}

/* "?a=b&host=/dir": only host= is used (a unix socket directory or a host). */
CONF_CHECK static bool url_query(const char *q, UrlParts *u, char *err, size_t errlen)
{
    while (*q) {
        size_t len = strcspn(q, "&");

        if (len > 5 && strncmp(q, "host=", 5) == 0) {
            free(u->host);
            u->host = NULL;
            if (!pct_decode(q + 5, len - 5, "host parameter", &u->host, err, errlen))
                return false;
        }
        q += len;
        if (*q == '&')
            q++;
    }
    return true;
}

/* Split a postgresql:// URL into u (port 5432 and host 127.0.0.1 unless given). */
CONF_CHECK static bool url_parse(const char *url, UrlParts *u, char *err, size_t errlen)
{
    const char *p, *auth_end, *at;
    size_t slen;

    if (strncasecmp(url, "postgresql://", 13) == 0)
        p = url + 13;
    else if (strncasecmp(url, "postgres://", 11) == 0)
        p = url + 11;
    else {
        slen = strcspn(url, ":");
        conf_msgf(err, errlen,
                  "upstream URL must start with postgresql:// or postgres://, not \"%.*s\"",
                  (int)(slen < 20 ? slen : 20), url);
        return false;
    }
    if (strchr(p, '#')) {
        conf_msgf(err, errlen, "upstream URL contains '#' (%s, # as %%23)", ENCODE_HINT);
        return false;
    }
    u->port = 5432;
    auth_end = p + strcspn(p, "/?");
    at = memrchr(p, '@', (size_t)(auth_end - p));
    if (at && !url_userinfo(p, (size_t)(at - p), u, err, errlen))
        return false;
    if (at)
        p = at + 1;
    if (!url_hostport(p, (size_t)(auth_end - p), u, err, errlen))
        return false;
    p = auth_end;
    if (*p == '/') {
        slen = strcspn(p + 1, "?");
        if (slen > 0 && !pct_decode(p + 1, slen, "database name", &u->dbname, err, errlen))
            return false;
        p += 1 + slen;
    }
    if (*p == '?' && !url_query(p + 1, u, err, errlen))
        return false;
    if (!u->host && !(u->host = strdup(DEFAULT_UPSTREAM))) {
        conf_msgf(err, errlen, "out of memory");
        return false;
    }
    return true;
}

/* Apply "port", "host:port", "[ipv6]:port", "host" or NULL to listen_addr/listen_port. */
CONF_CHECK static bool listen_apply(Config *cfg, const char *listen, char *err, size_t errlen)
{
    char msg[512], *addr = NULL;
    const char *port = DEFAULT_LISTEN_PORT, *colon;
    bool want_addr = true, ok;

    if (!listen)
        return true;
    if (*listen != '\0' && strspn(listen, "0123456789") == strlen(listen)) {
        port = listen;
        want_addr = false;
    } else if (*listen == '[') {
        const char *close = strchr(listen, ']');

        if (!close || (close[1] != '\0' && close[1] != ':'))
            goto out_bad;
        addr = strndup(listen + 1, (size_t)(close - listen - 1));
        if (close[1] == ':')
            port = close + 2;
    } else {
        colon = strchr(listen, ':');
        if (colon && strchr(colon + 1, ':')) {
            conf_msgf(err, errlen,
                      "listen address \"%s\": put an IPv6 address in brackets, as in [::1]:6432",
                      listen);
            return false;
        }
        addr = colon ? strndup(listen, (size_t)(colon - listen)) : strdup(listen);
        if (colon)
            port = colon + 1;
    }
    if (want_addr && !addr) {
        conf_msgf(err, errlen, "out of memory");
        return false;
    }
    if (addr && *addr == '\0')
        goto out_bad;
    ok = (!addr || conf_set(cfg, "listen_addr", addr, msg, sizeof(msg))) &&
         conf_set(cfg, "listen_port", port, msg, sizeof(msg));
    free(addr);
    if (!ok)
        conf_msgf(err, errlen, "listen address \"%s\": %s", listen, msg);
    return ok;

out_bad:
    free(addr);
    conf_msgf(err, errlen,
              "listen address must be \"port\", \"host:port\" or \"[ipv6]:port\" (* for all "
              "addresses), not \"%s\"",
              listen);
    return false;
}

/* The one "*" database and, with a password, the one user clients must log in as. */
CONF_CHECK static bool url_apply(Config *cfg, UrlParts *u, char *err, size_t errlen)
{
    DbConf *db;

    cfg->dbs = calloc(1, sizeof(*cfg->dbs));
    if (!cfg->dbs)
        goto out_oom;
    db = &cfg->dbs[0];
    conf_dbconf_init(db);
    cfg->ndbs = 1;
    db->name = strdup("*");
    if (!db->name)
        goto out_oom;
    db->host = u->host;
    db->port = u->port;
    db->dbname = u->dbname;
    db->user = u->user ? strdup(u->user) : NULL;
    db->password = u->password ? strdup(u->password) : NULL;
    u->host = u->dbname = NULL;
    if ((u->user && !db->user) || (u->password && !db->password))
        goto out_oom;
    cfg->auth_type = AUTH_TRUST;
    if (!u->password)
        return true;
    cfg->auth_type = AUTH_SCRAM;
    cfg->users = calloc(1, sizeof(*cfg->users));
    if (!cfg->users)
        goto out_oom;
    cfg->nusers = 1;
    cfg->users[0].name = u->user;
    cfg->users[0].secret = u->password;
    u->user = u->password = NULL;
    return true;

out_oom:
    conf_msgf(err, errlen, "out of memory");
    return false;
}

Config *config_from_url(const char *url, const char *listen, char *err, size_t errlen)
{
    UrlParts u = {0};
    Config *cfg;

    if (!url || !*url) {
        conf_msgf(err, errlen,
                  "no upstream URL given; expected postgresql://user:password@host:port/dbname");
        return NULL;
    }
    cfg = conf_new_defaults(err, errlen);
    if (!cfg)
        return NULL;
    if (!url_parse(url, &u, err, errlen) || !listen_apply(cfg, listen, err, errlen) ||
        !url_apply(cfg, &u, err, errlen))
        goto out_free;
    /* The admin port sits next to the listen port, so two quick starts on
     * different ports do not fight over one admin port. */
    cfg->admin_port = cfg->listen_port < 65535 ? cfg->listen_port + 1 : 0;
    url_parts_free(&u);
    return cfg;

out_free:
    url_parts_free(&u);
    config_free(cfg);
    return NULL;
}
