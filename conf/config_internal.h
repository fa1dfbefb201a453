/*
 * Private glue between the conf/ files: the settings table lives in
 * config.c, [databases] values are read in config_db.c, the auth_file in
 * config_auth.c and quick-start URLs in config_url.c. Not for use outside
 * conf/.
 */
#ifndef PGC_CONF_CONFIG_INTERNAL_H
#define PGC_CONF_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "conf/config.h"

#define CONF_CHECK __attribute__((warn_unused_result))

/* Bounds that the settings table and the [databases] keys share. */
#define CONF_POOL_SIZE_MAX    10000
#define CONF_MAX_OVERFLOW_MAX 10000

/* snprintf into a message buffer; a too-long message is cut, never overrun. */
void conf_msgf(char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Full-string number parsers: no leading or trailing text, no overflow.
 * They return false without touching *out when s is not a number in
 * [min, max].
 */
bool conf_parse_long(const char *s, long min, long max, long *out) CONF_CHECK;
bool conf_parse_port(const char *s, int *out) CONF_CHECK;

/* A Config holding every setting's default and nothing else; NULL on OOM. */
Config *conf_new_defaults(char *err, size_t errlen) CONF_CHECK;

/*
 * Set one [pgcoalesce] setting by name from its text, with the same checks
 * as in a file. false with msg set ("x must be ..., not ...").
 */
bool conf_set(Config *cfg, const char *name, const char *value, char *msg,
              size_t msglen) CONF_CHECK;

/* session/transaction (any case) to a PoolMode; false for anything else. */
bool conf_pool_mode_from_word(const char *s, int *out) CONF_CHECK;

/* A DbConf with nothing set: port 5432, overrides -1, strings NULL. */
void conf_dbconf_init(DbConf *db);
/* Free the strings one DbConf owns (not the struct) and init it again. */
void conf_dbconf_clear(DbConf *db);

typedef enum {
    DBPARSE_OK = 0,
    DBPARSE_ERROR,        /* msg says what is wrong */
    DBPARSE_UNTERMINATED, /* a quote was opened and never closed; msg says which key */
} DbParseResult;

/*
 * Read the value of one [databases] line ("host=x port=5432 ...") into db,
 * whose name and line are already set. On failure msg holds the complaint
 * without a file:line prefix; strings already read stay in db for
 * conf_dbconf_clear.
 */
DbParseResult conf_parse_db(const char *value, DbConf *db, char *msg, size_t msglen) CONF_CHECK;

/*
 * Read an auth_file (path already resolved) into cfg->users. On error
 * returns false with "path:line: message", or "path: cannot open: ..."
 * followed by " (origin)" when origin is not NULL, in err.
 */
bool conf_load_auth_file(Config *cfg, const char *path, const char *origin, char *err,
                         size_t errlen) CONF_CHECK;

#endif
