/*
 * Session parameter sets: what a server connection currently has and what
 * a client expects, so that a server moving between clients can be brought
 * to the client's values.
 */
#ifndef PGC_DAEMON_PARAMS_H
#define PGC_DAEMON_PARAMS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct Param {
    char *name;
    char *value;
} Param;

typedef struct ParamSet {
    Param *v;
    int n;
    int cap;
    uint64_t digest; /* order-independent digest of the contents: equal sets, equal digests */
} ParamSet;

void params_init(ParamSet *ps);
void params_free(ParamSet *ps);
const char *params_get(const ParamSet *ps, const char *name);
/* Set (replacing) a value; false on allocation failure. */
bool params_set(ParamSet *ps, const char *name, const char *value)
    __attribute__((warn_unused_result));
bool params_copy(ParamSet *dst, const ParamSet *src) __attribute__((warn_unused_result));
/* Probably-equal test by digest and count, for the per-transaction fast path. */
static inline bool params_same(const ParamSet *a, const ParamSet *b)
{
    return a->n == b->n && a->digest == b->digest;
}
/* Make dst an exact copy of src. */
bool params_assign(ParamSet *dst, const ParamSet *src) __attribute__((warn_unused_result));
void params_remove(ParamSet *ps, const char *name);
/* True for parameters a client may not SET (server_version, is_superuser, ...). */
bool params_read_only(const char *name);
/*
 * Write into sql the statements that move a server from have to want:
 * set_config() for values that differ, RESET for settings want does not carry.
 * Returns the number of statements written (0: nothing to do), -1 on
 * allocation failure. *sql is malloc'ed when the result is > 0.
 */
int params_sync_sql(const ParamSet *have, const ParamSet *want, char **sql);

#endif
