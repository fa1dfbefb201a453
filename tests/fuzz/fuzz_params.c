/*
 * Fuzz target: daemon/params.c, the SQL that moves a server connection's
 * session parameters to a client's (params_sync_sql). The names and values
 * come from clients' startup packets and from servers' ParameterStatus
 * messages, so they are untrusted text pasted into SQL.
 *
 * Input: one byte, then name FUZZ_SEP value FUZZ_SEP name FUZZ_SEP value
 * ...; pair i goes to the server's set ("have") when bit i of the byte is
 * set, else to the client's ("want"). Checks, against libpg_query's parser
 * and the proxy's own lexer: the SQL parses, holds one SELECT of
 * set_config() calls (when any) and one RESET per dropped setting, and the
 * literals of the set_config() calls are exactly the names and values.
 */
#include "tests/fuzz/fuzz.h"

#include <pg_query.h>
#include <strings.h>

#include "daemon/params.h"
#include "orm/shape.h"

#define MAX_PAIRS 8

static ShapeBuf sb;

static void check_sql(const ParamSet *have, const ParamSet *want, const char *sql, int count)
{
    PgQuerySplitResult split = pg_query_split_with_parser(sql);
    int nset = 0, nreset = 0;
    uint32_t lit = 0;
    char text[256];

    if (split.error)
        fprintf(stderr, "sql: %s\nerror: %s\n", sql, split.error->message);
    FUZZ_CHECK(split.error == NULL);
    for (int i = 0; i < want->n; i++) {
        const char *cur = params_get(have, want->v[i].name);
        if (!params_read_only(want->v[i].name) && !(cur && strcmp(cur, want->v[i].value) == 0))
            nset++;
    }
    for (int i = 0; i < have->n; i++)
        if (!params_read_only(have->v[i].name) && !params_get(want, have->v[i].name))
            nreset++;
    FUZZ_CHECK(count == nset + nreset);
    FUZZ_CHECK(split.n_stmts == (nset > 0) + nreset);
    pg_query_free_split_result(split);

    /* the literals: name, value, false for each set_config() */
    if (strlen(sql) > SHAPE_MAX_SQL)
        return;
    FUZZ_CHECK(shape_normalize(sql, strlen(sql), &sb));
    for (int i = 0; i < want->n; i++) {
        const Param *p = &want->v[i];
        const char *cur = params_get(have, p->name);
        if (params_read_only(p->name) || (cur && strcmp(cur, p->value) == 0))
            continue;
        FUZZ_CHECK(lit + 3 <= sb.nlits);
        if (strlen(p->name) < 200) {
            FUZZ_CHECK(shape_lit_text(sql, &sb.lits[lit], text, sizeof(text)) == strlen(p->name));
            FUZZ_CHECK(strcmp(text, p->name) == 0);
        }
        if (strlen(p->value) < 200) {
            FUZZ_CHECK(shape_lit_text(sql, &sb.lits[lit + 1], text, sizeof(text)) ==
                       strlen(p->value));
            FUZZ_CHECK(strcmp(text, p->value) == 0);
        }
        FUZZ_CHECK(sb.lits[lit + 2].kind == SHAPE_LIT_BOOL);
        lit += 3;
    }
    FUZZ_CHECK(lit == sb.nlits);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzPart parts[2 * MAX_PAIRS];
    ParamSet have, want;
    char *sql = NULL;
    int n, count;

    if (size < 1)
        return 0;
    params_init(&have);
    params_init(&want);
    n = fuzz_split(data + 1, size - 1, parts, 2 * MAX_PAIRS);
    for (int i = 0; i + 1 < n; i += 2) {
        char *name = fuzz_str(parts[i].p, parts[i].n);
        char *value = fuzz_str(parts[i + 1].p, parts[i + 1].n);
        ParamSet *ps = data[0] & (1u << (i / 2)) ? &have : &want;

        /* a name is never empty: the startup packet's list ends at one, and
         * PostgreSQL reports none */
        if (name[0]) {
            FUZZ_CHECK(params_set(ps, name, value));
            FUZZ_CHECK(strcmp(params_get(ps, name), value) == 0);
        }
        free(name);
        free(value);
    }
    count = params_sync_sql(&have, &want, &sql);
    FUZZ_CHECK(count >= 0);
    if (count > 0)
        check_sql(&have, &want, sql, count);
    free(sql);
    params_free(&have);
    params_free(&want);
    return 0;
}
