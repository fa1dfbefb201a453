/*
 * Fuzz target: config_from_url, the quick start's postgresql:// URL and
 * --listen address (conf/config_url.c).
 *
 * Input: URL FUZZ_SEP listen address (absent: the default). Checks: a
 * config comes back with its one "*" database, or an error message that
 * never shows the URL's password: when the URL's userinfo is
 * "user:s3cr3tPW" and s3cr3tPW is nowhere else in it nor in the listen
 * address, "s3cr3tPW" must not be in the message.
 */
#include "tests/fuzz/fuzz.h"

#include "conf/config.h"

#define PASSWORD "s3cr3tPW"

/* Is PASSWORD the password of url's userinfo, and nowhere else in url? */
static bool has_password(const char *url)
{
    const char *scheme = strstr(url, "://"), *at = strstr(url, ":" PASSWORD "@");

    if (!scheme || !at || at < scheme + 3 || strstr(url, PASSWORD) != at + 1 ||
        strstr(at + 1 + strlen(PASSWORD), PASSWORD))
        return false;
    for (const char *p = scheme + 3; p < at; p++)
        if (*p == '@' || *p == '/' || *p == ':' || *p == '?' || *p == '#')
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzPart parts[2];
    int n = fuzz_split(data, size, parts, 2);
    char *url = fuzz_str(parts[0].p, parts[0].n);
    char *listen = n > 1 ? fuzz_str(parts[1].p, parts[1].n) : NULL;
    char err[512];
    Config *cfg;

    err[0] = '\0';
    cfg = config_from_url(url, listen, err, sizeof(err));
    if (cfg) {
        FUZZ_CHECK(cfg->ndbs == 1 && strcmp(cfg->dbs[0].name, "*") == 0);
        FUZZ_CHECK(cfg->listen_port > 0 && cfg->listen_port <= 65535);
        FUZZ_CHECK(cfg->nusers <= 1);
        config_free(cfg);
    } else {
        FUZZ_CHECK(err[0] != '\0' && memchr(err, 0, sizeof(err)));
        if (has_password(url) && !(listen && strstr(listen, PASSWORD)) && strstr(err, PASSWORD)) {
            fprintf(stderr, "url: %s\nerror: %s\n", url, err);
            FUZZ_CHECK(!"the password is never in an error message");
        }
    }
    free(url);
    free(listen);
    return 0;
}
