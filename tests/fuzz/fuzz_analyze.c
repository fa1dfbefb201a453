/*
 * Fuzz target: orm/analyze.c, shape_analyze on the normalised text of a
 * statement (what the proxy does once per new shape), which runs
 * libpg_query's parser and walks its protobuf tree.
 *
 * Input: SQL text, normalised with shape_normalize first (inputs that do
 * not normalise are not analysed, as in the proxy). Checks: the ShapeInfo
 * is self-consistent (counts within bounds, keys name existing tables and
 * placeholders, strings terminated, verdicts with reasons), the key
 * helpers stay within their buffers, and references count down to a free.
 */
#include "tests/fuzz/fuzz.h"

#include "orm/analyze.h"
#include "orm/shape.h"

static ShapeBuf sb;

static void check_info(const ShapeInfo *info)
{
    char name[16];

    FUZZ_CHECK(info->hash == sb.hash && info->refs == 1);
    FUZZ_CHECK(info->sql_len == sb.text_len && memcmp(info->sql, sb.text, sb.text_len + 1) == 0);
    FUZZ_CHECK(info->kind >= SHAPE_KIND_UNKNOWN && info->kind <= SHAPE_KIND_OTHER);
    FUZZ_CHECK(strcmp(shape_kind_name(info->kind), "?") != 0);
    FUZZ_CHECK(info->ntables >= 0 && info->ntables <= SHAPE_MAX_TABLES);
    FUZZ_CHECK(info->nkeys >= 0 && info->nkeys <= SHAPE_MAX_KEYS);
    FUZZ_CHECK(info->nout >= 0 && info->nout <= SHAPE_MAX_OUTCOLS);
    for (int i = 0; i < info->ntables; i++) {
        FUZZ_CHECK(info->tables[i].name != NULL);
        (void)strlen(info->tables[i].name);
        if (info->tables[i].schema)
            (void)strlen(info->tables[i].schema);
        if (info->tables[i].alias)
            (void)strlen(info->tables[i].alias);
    }
    for (int i = 0; i < info->nkeys; i++) {
        const ShapeKey *k = &info->keys[i];
        FUZZ_CHECK(k->table >= -1 && k->table < info->ntables);
        FUZZ_CHECK(k->column && k->param >= 1 && (uint32_t)k->param <= sb.nparams);
        FUZZ_CHECK(k->side == SHAPE_KEY_COL_LEFT || k->side == SHAPE_KEY_COL_RIGHT);
        FUZZ_CHECK(shape_info_key_for_param(info, k->param) != NULL);
        shape_key_name(info, k, name, sizeof(name));
        FUZZ_CHECK(strlen(name) < sizeof(name));
    }
    FUZZ_CHECK((shape_info_key(info) != NULL) == (info->nkeys == 1));
    for (int i = 0; i < info->nout; i++)
        if (info->out_cols[i])
            FUZZ_CHECK(strchr(info->out_cols[i], '.') != NULL);
    FUZZ_CHECK(info->limit_param >= 0 && (uint32_t)info->limit_param <= sb.nparams);
    FUZZ_CHECK(info->offset_param >= 0 && (uint32_t)info->offset_param <= sb.nparams);
    FUZZ_CHECK(memchr(info->batch_reason, 0, SHAPE_REASON_MAX) != NULL);
    FUZZ_CHECK(memchr(info->cache_reason, 0, SHAPE_REASON_MAX) != NULL);
    if (info->batchable) {
        FUZZ_CHECK(info->kind == SHAPE_KIND_SELECT && (info->flags & SHAPE_F_READ_ONLY));
        FUZZ_CHECK(info->nkeys >= 1 && info->batch_reason[0] == '\0');
    } else {
        FUZZ_CHECK(info->batch_reason[0] != '\0');
    }
    if (info->cacheable)
        FUZZ_CHECK(info->batchable && info->ntables == 1);
    if (info->kind == SHAPE_KIND_UNKNOWN)
        FUZZ_CHECK(!info->batchable && !info->cacheable);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *sql = (char *)fuzz_dup(data, size);
    ShapeInfo *info;

    if (!shape_normalize(sql, size, &sb))
        goto out;
    info = shape_analyze(sb.text, sb.text_len, sb.hash);
    FUZZ_CHECK(info != NULL);
    check_info(info);
    shape_info_ref(info);
    shape_info_unref(info);
    FUZZ_CHECK(info->refs == 1);
    shape_info_unref(info);
out:
    free(sql);
    return 0;
}
