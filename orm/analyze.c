/*
 * Shape analysis: libpg_query's protobuf parse tree of a normalised
 * statement turned into a ShapeInfo (kind, tables, keys, flags, verdicts).
 * Runs once per new shape; the policies are written down in analyze.h.
 */
#include "orm/analyze.h"

#include <pg_query.h>
#if !__has_include(<protobuf-c/protobuf-c.h>)
#error "pg_query.pb-c.h needs protobuf-c's header: install libprotobuf-c-dev (scripts/deps.sh)"
#endif
#include <pg_query/pg_query.pb-c.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orm/session.h"

#define ARENA_MAX   8192 /* names copied out of one parse tree */
#define MAX_DEPTH   300  /* deeper trees are "too complex": volatile, no verdicts */
#define MAX_SCOPE   16   /* items of the top-level FROM that can qualify a column */
#define MAX_CTES    16
#define FN_NAME_MAX 64

/* What a qualifier in the top-level FROM names. */
typedef struct Scope {
    const char *ref; /* alias, or the relation name when there is none */
    int table;       /* tables[] index, -1 for a subquery, function or CTE */
} Scope;

/* Analysis state; the ShapeInfo template is copied into its final,
 * single allocation at the end. */
typedef struct Ctx {
    ShapeInfo t;
    char arena[ARENA_MAX];
    size_t used;
    const char *out_cols[SHAPE_MAX_OUTCOLS];
    const char *ctes[MAX_CTES]; /* point into the parse tree */
    int nctes;
    Scope scope[MAX_SCOPE];
    int nscope;
    int nfrom_other; /* top-level FROM items that are not tables */
    int nothers;     /* WHERE conjuncts that are not keys */
    char volatile_fn[FN_NAME_MAX];
    char stable_fn[FN_NAME_MAX];
    char write_fn[FN_NAME_MAX];
    bool too_deep;
} Ctx;

/* ---- function lists (lower case, pg_catalog) ---- */

/* clang-format off */
static const char *const fn_immutable[] = {
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "mod", "power", "sqrt", "cbrt",
    "exp", "ln", "log", "log10", "div", "width_bucket", "lower", "upper", "initcap", "length",
    "char_length", "character_length", "octet_length", "bit_length", "substring", "substr",
    "position", "strpos", "trim", "btrim", "ltrim", "rtrim", "lpad", "rpad", "replace",
    "split_part", "concat", "concat_ws", "left", "right", "reverse", "repeat", "md5", "encode",
    "decode", "starts_with", "translate", "ascii", "chr", "quote_ident", "quote_literal",
    "quote_nullable", "regexp_replace", "regexp_match", "array_length", "array_lower",
    "array_upper", "array_position", "array_positions", "array_to_string", "array_append",
    "array_prepend", "array_cat", "array_remove", "array_replace", "array_ndims", "cardinality",
    "string_to_array", "jsonb_build_object", "json_build_object", "jsonb_build_array",
    "json_build_array", "jsonb_extract_path", "jsonb_extract_path_text", "json_extract_path",
    "json_extract_path_text", "jsonb_array_length", "json_array_length", "jsonb_typeof",
    "json_typeof", "jsonb_strip_nulls", "jsonb_set", "jsonb_insert", "jsonb_pretty", "lower_inc",
    "upper_inc", "isempty", "coalesce", "nullif", "greatest", "least", "num_nulls", "num_nonnulls",
    "int4", "int8", "text", "numeric", "float8", "bool", "uuid", "make_date", "make_time",
    "host", "masklen", "family", "bool_and", "isfinite",
};

static const char *const fn_stable[] = {
    "now", "statement_timestamp", "transaction_timestamp", "current_setting", "current_schema",
    "current_schemas", "current_database", "to_char", "to_timestamp", "to_date", "to_number",
    "date_part", "date_trunc", "extract", "age", "timezone", "format", "to_json", "to_jsonb",
    "row_to_json", "array_to_json", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
    "make_timestamptz", "pg_backend_pid", "version", "has_table_privilege", "has_schema_privilege",
    "pg_has_role", "obj_description", "col_description", "pg_get_userbyid", "to_regclass",
    "inet_client_addr", "date",
};

static const char *const fn_write[] = {
    "nextval", "setval", "set_config", "txid_current", "pg_current_xact_id", "pg_notify", "setseed",
    "dblink_exec", "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_switch_wal",
    "pg_create_restore_point", "pg_stat_reset",
};

static const char *const fn_aggregate[] = {
    "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and", "bool_or", "every",
    "bit_and", "bit_or", "bit_xor", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
    "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp", "corr", "covar_pop",
    "covar_samp", "percentile_cont", "percentile_disc", "mode", "xmlagg", "range_agg",
};

static const char *const fn_window[] = {
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
};

static const char *const fn_srf[] = {
    "generate_series", "generate_subscripts", "unnest", "json_array_elements",
    "jsonb_array_elements", "json_array_elements_text", "jsonb_array_elements_text", "json_each",
    "jsonb_each", "json_each_text", "jsonb_each_text", "json_object_keys", "jsonb_object_keys",
    "regexp_matches", "regexp_split_to_table", "json_to_recordset", "jsonb_to_recordset",
    "json_populate_recordset", "jsonb_populate_recordset", "string_to_table", "jsonb_path_query",
};
/* clang-format on */

#define IN_LIST(name, list) in_list(name, list, sizeof(list) / sizeof(list[0]))

static bool in_list(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(name, list[i]) == 0)
            return true;
    return false;
}

/* ---- small helpers ---- */

static const char *arena_dup(Ctx *c, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p;

    if (c->used + n > ARENA_MAX)
        return NULL;
    p = c->arena + c->used;
    memcpy(p, s, n);
    c->used += n;
    return p;
}

/* Remember the first name of a kind of function, for the reason text. */
static void note_fn(char *slot, const char *name)
{
    if (!slot[0])
        snprintf(slot, FN_NAME_MAX, "%s", name);
}

static const char *node_str(const PgQuery__Node *n)
{
    return n && n->node_case == PG_QUERY__NODE__NODE_STRING ? n->string->sval : NULL;
}

/* $n of a parameter node, also under a cast; 0 otherwise. */
static int param_of(const PgQuery__Node *n)
{
    if (!n)
        return 0;
    if (n->node_case == PG_QUERY__NODE__NODE_TYPE_CAST)
        n = n->type_cast->arg;
    if (n && n->node_case == PG_QUERY__NODE__NODE_PARAM_REF)
        return n->param_ref->number;
    return 0;
}

/*
 * $n of a key's parameter: as param_of, but not in "type $n", the typed
 * literal TYPE 'x' as shaped (libpg_query reads it with a parameter too):
 * that value cannot be replaced by an expression, as batching does.
 */
static int key_param_of(const PgQuery__Node *n)
{
    const PgQuery__TypeCast *tc;

    if (n && n->node_case == PG_QUERY__NODE__NODE_TYPE_CAST) {
        tc = n->type_cast;
        if (tc->arg && tc->arg->node_case == PG_QUERY__NODE__NODE_PARAM_REF && tc->type_name &&
            tc->type_name->location >= 0 && tc->type_name->location < tc->arg->param_ref->location)
            return 0;
    }
    return param_of(n);
}

static void mark_page_param(Ctx *c, const PgQuery__Node *n)
{
    int p = param_of(n);
    if (p >= 1 && p <= 64)
        c->t.page_params |= 1ULL << (p - 1);
}

/* ---- the tree walk ---- */

static void visit_func(Ctx *c, const PgQuery__FuncCall *f)
{
    const char *name = f->n_funcname ? node_str(f->funcname[f->n_funcname - 1]) : NULL;
    const char *schema = f->n_funcname > 1 ? node_str(f->funcname[f->n_funcname - 2]) : NULL;
    bool agg_syntax =
        f->agg_star || f->agg_distinct || f->n_agg_order || f->agg_filter || f->agg_within_group;

    if (!name)
        return;
    if (schema && strcmp(schema, "pg_catalog") != 0) {
        c->t.flags |= SHAPE_F_VOLATILE;
        note_fn(c->volatile_fn, name);
        return;
    }
    if (f->over) {
        c->t.flags |= SHAPE_F_WINDOW;
        if (IN_LIST(name, fn_window) || IN_LIST(name, fn_aggregate))
            return;
    } else if (agg_syntax || IN_LIST(name, fn_aggregate)) {
        c->t.flags |= SHAPE_F_AGGREGATE;
    }
    if (IN_LIST(name, fn_aggregate) && !IN_LIST(name, fn_stable))
        return;
    if (IN_LIST(name, fn_srf)) {
        c->t.flags |= SHAPE_F_SRF;
        return;
    }
    if (IN_LIST(name, fn_immutable))
        return;
    if (IN_LIST(name, fn_stable)) {
        c->t.flags |= SHAPE_F_STABLE;
        note_fn(c->stable_fn, name);
        return;
    }
    if (IN_LIST(name, fn_write) || strncmp(name, "pg_advisory", 11) == 0 ||
        strncmp(name, "pg_try_advisory", 15) == 0 || strncmp(name, "lo_", 3) == 0) {
        c->t.flags |= SHAPE_F_WRITE_FN;
        note_fn(c->write_fn, name);
    }
    c->t.flags |= SHAPE_F_VOLATILE;
    note_fn(c->volatile_fn, name);
}

static void visit_range_var(Ctx *c, const PgQuery__RangeVar *rv)
{
    const char *schema = rv->schemaname && rv->schemaname[0] ? rv->schemaname : NULL;
    ShapeTableRef *tr;

    for (int i = 0; i < c->t.ntables; i++) {
        tr = &c->t.tables[i];
        if (strcmp(tr->name, rv->relname) == 0 &&
            (schema ? tr->schema && strcmp(tr->schema, schema) == 0 : !tr->schema))
            return;
    }
    if (c->t.ntables == SHAPE_MAX_TABLES) {
        c->t.flags |= SHAPE_F_MANY_TABLES;
        return;
    }
    tr = &c->t.tables[c->t.ntables];
    tr->name = arena_dup(c, rv->relname);
    tr->schema = schema ? arena_dup(c, schema) : NULL;
    tr->alias = rv->alias && rv->alias->aliasname[0] ? arena_dup(c, rv->alias->aliasname) : NULL;
    if (tr->name)
        c->t.ntables++;
}

static void visit_select(Ctx *c, const PgQuery__SelectStmt *s)
{
    if (s->n_locking_clause)
        c->t.flags |= SHAPE_F_LOCKING;
    if (s->into_clause)
        c->t.flags |= SHAPE_F_INTO;
    if (s->n_sort_clause)
        c->t.flags |= SHAPE_F_ORDER_BY;
    if (s->n_distinct_clause)
        c->t.flags |= SHAPE_F_DISTINCT;
    if (s->n_group_clause || s->having_clause)
        c->t.flags |= SHAPE_F_GROUP_BY;
    if (s->n_window_clause)
        c->t.flags |= SHAPE_F_WINDOW;
    if (s->limit_count) {
        c->t.flags |= SHAPE_F_LIMIT;
        mark_page_param(c, s->limit_count);
    }
    if (s->limit_offset) {
        c->t.flags |= SHAPE_F_OFFSET;
        mark_page_param(c, s->limit_offset);
    }
}

static void visit_cte(Ctx *c, const PgQuery__CommonTableExpr *cte)
{
    const PgQuery__Node *q = cte->ctequery;

    c->t.flags |= SHAPE_F_CTE;
    if (c->nctes < MAX_CTES)
        c->ctes[c->nctes++] = cte->ctename;
    if (q && (q->node_case == PG_QUERY__NODE__NODE_INSERT_STMT ||
              q->node_case == PG_QUERY__NODE__NODE_UPDATE_STMT ||
              q->node_case == PG_QUERY__NODE__NODE_DELETE_STMT ||
              q->node_case == PG_QUERY__NODE__NODE_MERGE_STMT))
        c->t.flags |= SHAPE_F_WRITE_CTE;
}

/*
 * Visit every message of the tree through protobuf-c's descriptors, so that
 * no node type can hide a function call or a table: the handful of types
 * that matter get a look first, everything is then descended into.
 */
static void walk(Ctx *c, const ProtobufCMessage *m, int depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;

    if (depth > MAX_DEPTH) {
        c->too_deep = true;
        return;
    }
    if (d == &pg_query__func_call__descriptor)
        visit_func(c, (const PgQuery__FuncCall *)m);
    else if (d == &pg_query__range_var__descriptor)
        visit_range_var(c, (const PgQuery__RangeVar *)m);
    else if (d == &pg_query__select_stmt__descriptor)
        visit_select(c, (const PgQuery__SelectStmt *)m);
    else if (d == &pg_query__common_table_expr__descriptor)
        visit_cte(c, (const PgQuery__CommonTableExpr *)m);
    else if (d == &pg_query__sub_link__descriptor || d == &pg_query__range_subselect__descriptor)
        c->t.flags |= SHAPE_F_SUBQUERY;
    else if (d == &pg_query__range_function__descriptor)
        c->t.flags |= SHAPE_F_SRF;
    else if (d == &pg_query__sqlvalue_function__descriptor) {
        c->t.flags |= SHAPE_F_STABLE;
        note_fn(c->stable_fn, "CURRENT_*");
    }

    for (unsigned f = 0; f < d->n_fields; f++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[f];
        const char *base = (const char *)m;

        if (fd->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + fd->quantifier_offset) != fd->id)
            continue;
        if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + fd->quantifier_offset);
            ProtobufCMessage *const *v = *(ProtobufCMessage *const *const *)(base + fd->offset);
            for (size_t i = 0; i < n; i++)
                if (v[i])
                    walk(c, v[i], depth + 1);
        } else {
            const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)(base + fd->offset);
            if (sub)
                walk(c, sub, depth + 1);
        }
    }
}

/* ---- the top-level statement: scope, keys, output columns ---- */

/* Tables named like a WITH query are the query, not a table. */
static void drop_cte_tables(Ctx *c)
{
    int k = 0;

    for (int i = 0; i < c->t.ntables; i++) {
        bool cte = false;
        for (int j = 0; j < c->nctes && !c->t.tables[i].schema; j++)
            cte |= strcmp(c->ctes[j], c->t.tables[i].name) == 0;
        if (!cte)
            c->t.tables[k++] = c->t.tables[i];
    }
    c->t.ntables = k;
}

static int find_table(const Ctx *c, const char *schema, const char *name)
{
    for (int i = 0; i < c->t.ntables; i++) {
        const ShapeTableRef *tr = &c->t.tables[i];
        if (strcmp(tr->name, name) == 0 &&
            (schema && schema[0] ? tr->schema && strcmp(tr->schema, schema) == 0 : true))
            return i;
    }
    return -1;
}

static void scope_push(Ctx *c, const char *ref, int table)
{
    if (c->nscope < MAX_SCOPE)
        c->scope[c->nscope++] = (Scope){ref, table};
}

static void scope_range_var(Ctx *c, const PgQuery__RangeVar *rv)
{
    const char *ref = rv->alias && rv->alias->aliasname[0] ? rv->alias->aliasname : rv->relname;
    scope_push(c, ref, find_table(c, rv->schemaname, rv->relname));
}

/* Add one item of a top-level FROM (or USING) to the scope. */
static void scope_from(Ctx *c, const PgQuery__Node *n)
{
    switch (n->node_case) {
    case PG_QUERY__NODE__NODE_RANGE_VAR:
        scope_range_var(c, n->range_var);
        break;
    case PG_QUERY__NODE__NODE_JOIN_EXPR:
        c->t.flags |= SHAPE_F_JOIN;
        if (n->join_expr->larg)
            scope_from(c, n->join_expr->larg);
        if (n->join_expr->rarg)
            scope_from(c, n->join_expr->rarg);
        break;
    case PG_QUERY__NODE__NODE_RANGE_SUBSELECT:
        c->nfrom_other++;
        if (n->range_subselect->alias)
            scope_push(c, n->range_subselect->alias->aliasname, -1);
        break;
    case PG_QUERY__NODE__NODE_RANGE_FUNCTION:
        c->nfrom_other++;
        if (n->range_function->alias)
            scope_push(c, n->range_function->alias->aliasname, -1);
        break;
    default:
        c->nfrom_other++;
        break;
    }
}

/*
 * Resolve a column reference against the top-level scope. Returns false for
 * "*" or anything that is not a plain name list; *table is -1 when the
 * column's table is not known (unqualified with several FROM items).
 */
static bool resolve_column(const Ctx *c, const PgQuery__ColumnRef *cr, int *table, const char **col)
{
    size_t n = cr->n_fields;
    const char *q;

    if (n == 0 || n > 4)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!node_str(cr->fields[i]))
            return false;
    *col = node_str(cr->fields[n - 1]);
    *table = -1;
    if (n == 1) {
        if (c->nscope == 1 && c->nfrom_other == 0)
            *table = c->scope[0].table;
        return true;
    }
    q = node_str(cr->fields[n - 2]);
    if (n == 2) {
        for (int i = 0; i < c->nscope; i++)
            if (strcmp(c->scope[i].ref, q) == 0)
                *table = c->scope[i].table;
        return true;
    }
    *table = find_table(c, node_str(cr->fields[n - 3]), q);
    return true;
}

static void add_key(Ctx *c, const PgQuery__ColumnRef *cr, int param, ShapeKeySide side)
{
    ShapeKey *k;
    int table;
    const char *col;

    if (!resolve_column(c, cr, &table, &col) || c->t.nkeys == SHAPE_MAX_KEYS) {
        c->nothers++;
        return;
    }
    k = &c->t.keys[c->t.nkeys];
    k->column = arena_dup(c, col);
    k->table = table;
    k->param = param;
    k->side = side;
    if (k->column)
        c->t.nkeys++;
}

/* Collect the col = $n conjuncts of a WHERE; count the others. */
static void collect_keys(Ctx *c, const PgQuery__Node *w)
{
    const PgQuery__AExpr *e;
    const char *op;
    int lp, rp;

    if (!w)
        return;
    if (w->node_case == PG_QUERY__NODE__NODE_BOOL_EXPR &&
        w->bool_expr->boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR) {
        for (size_t i = 0; i < w->bool_expr->n_args; i++)
            collect_keys(c, w->bool_expr->args[i]);
        return;
    }
    if (w->node_case != PG_QUERY__NODE__NODE_A_EXPR) {
        c->nothers++;
        return;
    }
    e = w->a_expr;
    op = e->n_name == 1 ? node_str(e->name[0]) : NULL;
    if (e->kind != PG_QUERY__A__EXPR__KIND__AEXPR_OP || !op || strcmp(op, "=") != 0 || !e->lexpr ||
        !e->rexpr) {
        c->nothers++;
        return;
    }
    lp = key_param_of(e->lexpr);
    rp = key_param_of(e->rexpr);
    if (e->lexpr->node_case == PG_QUERY__NODE__NODE_COLUMN_REF && rp)
        add_key(c, e->lexpr->column_ref, rp, SHAPE_KEY_COL_LEFT);
    else if (e->rexpr->node_case == PG_QUERY__NODE__NODE_COLUMN_REF && lp)
        add_key(c, e->rexpr->column_ref, lp, SHAPE_KEY_COL_RIGHT);
    else
        c->nothers++;
}

/* "table.column" of output column i, or NULL. */
static void collect_out_cols(Ctx *c, PgQuery__Node **targets, size_t n)
{
    for (size_t i = 0; i < n && c->t.nout < SHAPE_MAX_OUTCOLS; i++) {
        const PgQuery__Node *v = NULL;
        const char *out = NULL;

        if (targets[i]->node_case == PG_QUERY__NODE__NODE_RES_TARGET)
            v = targets[i]->res_target->val;
        if (v && v->node_case == PG_QUERY__NODE__NODE_COLUMN_REF && v->column_ref->n_fields) {
            const PgQuery__ColumnRef *cr = v->column_ref;
            const PgQuery__Node *last = cr->fields[cr->n_fields - 1];
            int table;
            const char *col;
            if (last->node_case == PG_QUERY__NODE__NODE_A_STAR) {
                c->t.flags |= SHAPE_F_STAR;
                return;
            }
            if (resolve_column(c, cr, &table, &col) && table >= 0) {
                const ShapeTableRef *tr = &c->t.tables[table];
                char buf[256];
                snprintf(buf, sizeof(buf), "%s%s%s.%s", tr->schema ? tr->schema : "",
                         tr->schema ? "." : "", tr->name, col);
                out = arena_dup(c, buf);
            }
        }
        c->out_cols[c->t.nout++] = out;
    }
}

static void analyze_select(Ctx *c, const PgQuery__SelectStmt *s)
{
    if (s->op != PG_QUERY__SET_OPERATION__SETOP_NONE &&
        s->op != PG_QUERY__SET_OPERATION__SET_OPERATION_UNDEFINED) {
        c->t.flags |= SHAPE_F_SET_OP;
        return;
    }
    for (size_t i = 0; i < s->n_from_clause; i++)
        scope_from(c, s->from_clause[i]);
    if (s->n_from_clause > 1)
        c->t.flags |= SHAPE_F_JOIN;
    collect_keys(c, s->where_clause);
    collect_out_cols(c, s->target_list, s->n_target_list);
    c->t.limit_param = param_of(s->limit_count);
    c->t.offset_param = param_of(s->limit_offset);
}

/* Kind of the statement and its top-level scope, keys and outputs. */
static void analyze_top(Ctx *c, const PgQuery__Node *st)
{
    switch (st->node_case) {
    case PG_QUERY__NODE__NODE_SELECT_STMT:
        c->t.kind = SHAPE_KIND_SELECT;
        analyze_select(c, st->select_stmt);
        break;
    case PG_QUERY__NODE__NODE_INSERT_STMT:
        c->t.kind = SHAPE_KIND_INSERT;
        scope_range_var(c, st->insert_stmt->relation); /* the cache invalidates upserts by it */
        if (st->insert_stmt->n_returning_list)
            c->t.flags |= SHAPE_F_RETURNING;
        break;
    case PG_QUERY__NODE__NODE_UPDATE_STMT:
        c->t.kind = SHAPE_KIND_UPDATE;
        scope_range_var(c, st->update_stmt->relation);
        for (size_t i = 0; i < st->update_stmt->n_from_clause; i++)
            scope_from(c, st->update_stmt->from_clause[i]);
        collect_keys(c, st->update_stmt->where_clause);
        if (st->update_stmt->n_returning_list)
            c->t.flags |= SHAPE_F_RETURNING;
        break;
    case PG_QUERY__NODE__NODE_DELETE_STMT:
        c->t.kind = SHAPE_KIND_DELETE;
        scope_range_var(c, st->delete_stmt->relation);
        for (size_t i = 0; i < st->delete_stmt->n_using_clause; i++)
            scope_from(c, st->delete_stmt->using_clause[i]);
        collect_keys(c, st->delete_stmt->where_clause);
        if (st->delete_stmt->n_returning_list)
            c->t.flags |= SHAPE_F_RETURNING;
        break;
    case PG_QUERY__NODE__NODE_TRANSACTION_STMT:
    case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT:
    case PG_QUERY__NODE__NODE_VARIABLE_SHOW_STMT:
    case PG_QUERY__NODE__NODE_DISCARD_STMT:
    case PG_QUERY__NODE__NODE_DEALLOCATE_STMT:
    case PG_QUERY__NODE__NODE_LISTEN_STMT:
    case PG_QUERY__NODE__NODE_UNLISTEN_STMT:
    case PG_QUERY__NODE__NODE_CHECK_POINT_STMT:
        c->t.kind = SHAPE_KIND_UTILITY;
        break;
    default:
        c->t.kind = SHAPE_KIND_OTHER;
        break;
    }
}

/* ---- verdicts ---- */

__attribute__((format(printf, 2, 3))) static void reason(char *slot, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(slot, SHAPE_REASON_MAX, fmt, ap);
    va_end(ap);
}

/* The reasons shared by both verdicts; false (with the reason) when one applies. */
static bool common_ok(const Ctx *c, char *slot)
{
    uint32_t f = c->t.flags;

    if (c->t.kind != SHAPE_KIND_SELECT) {
        reason(slot, "not a SELECT (%s)", shape_kind_name(c->t.kind));
        return false;
    }
    if (f & SHAPE_F_MULTI_STMT) {
        reason(slot, "several statements in one query");
        return false;
    }
    if (c->too_deep) {
        reason(slot, "statement too deeply nested to analyse");
        return false;
    }
    if (f & SHAPE_F_INTO) {
        reason(slot, "SELECT INTO creates a table");
        return false;
    }
    if (f & SHAPE_F_WRITE_CTE) {
        reason(slot, "a WITH query writes (INSERT/UPDATE/DELETE)");
        return false;
    }
    if (f & SHAPE_F_LOCKING) {
        reason(slot, "locking clause (FOR UPDATE/SHARE)");
        return false;
    }
    if (f & SHAPE_F_WRITE_FN) {
        reason(slot, "function %s() writes", c->write_fn);
        return false;
    }
    if (f & SHAPE_F_VOLATILE) {
        reason(slot, "function %s() is not known to be immutable", c->volatile_fn);
        return false;
    }
    return true;
}

static void verdict_batch(Ctx *c)
{
    char *r = c->t.batch_reason;

    if (!common_ok(c, r))
        return;
    if (c->t.flags & SHAPE_F_SET_OP) {
        reason(r, "UNION/INTERSECT/EXCEPT at the top level");
        return;
    }
    if (c->t.nkeys == 0) {
        reason(r, "no WHERE equality between a column and a parameter");
        return;
    }
    c->t.batchable = true;
    r[0] = '\0';
}

static void verdict_cache(Ctx *c)
{
    char *r = c->t.cache_reason;
    uint32_t f = c->t.flags;

    if (!common_ok(c, r))
        return;
    if (f & SHAPE_F_STABLE) {
        reason(r, "%s() changes between transactions", c->stable_fn);
        return;
    }
    if (f & (SHAPE_F_SET_OP | SHAPE_F_CTE | SHAPE_F_SUBQUERY)) {
        reason(r, "%s",
               f & SHAPE_F_SET_OP ? "UNION/INTERSECT/EXCEPT"
               : f & SHAPE_F_CTE  ? "WITH query"
                                  : "subquery");
        return;
    }
    if (c->t.ntables != 1 || c->nscope != 1 || c->nfrom_other || (f & SHAPE_F_JOIN)) {
        reason(r, "reads %d tables; the cache holds single-table reads",
               c->t.ntables + c->nfrom_other);
        return;
    }
    if (f & SHAPE_F_OFFSET) {
        reason(r, "OFFSET");
        return;
    }
    if (c->t.nkeys == 0) {
        reason(r, "no WHERE equality between a column and a parameter");
        return;
    }
    if (c->nothers) {
        reason(r, "WHERE has conditions other than column = parameter");
        return;
    }
    c->t.cacheable = true;
    reason(r, "pk unknown");
}

/* ---- building the result ---- */

static const char *reloc(const Ctx *c, char *base, const char *p)
{
    return p ? base + (p - c->arena) : NULL;
}

/* One allocation: the struct, out_cols, the names, the SQL text. */
static ShapeInfo *finish(const Ctx *c, const char *sql, size_t len)
{
    size_t cols = (size_t)c->t.nout * sizeof(char *);
    ShapeInfo *info = malloc(sizeof(*info) + cols + c->used + len + 1);
    char *names, *text;

    if (!info)
        return NULL;
    *info = c->t;
    info->out_cols = (const char **)(info + 1);
    names = (char *)(info + 1) + cols;
    text = names + c->used;
    memcpy(names, c->arena, c->used);
    memcpy(text, sql, len);
    text[len] = '\0';
    info->sql = text;
    info->sql_len = (uint32_t)len;
    for (int i = 0; i < info->ntables; i++) {
        info->tables[i].schema = reloc(c, names, c->t.tables[i].schema);
        info->tables[i].name = reloc(c, names, c->t.tables[i].name);
        info->tables[i].alias = reloc(c, names, c->t.tables[i].alias);
    }
    for (int i = 0; i < info->nkeys; i++)
        info->keys[i].column = reloc(c, names, c->t.keys[i].column);
    for (int i = 0; i < info->nout; i++)
        info->out_cols[i] = reloc(c, names, c->out_cols[i]);
    info->refs = 1;
    return info;
}

ShapeInfo *shape_analyze(const char *sql, size_t len, uint64_t hash)
{
    Ctx *c = calloc(1, sizeof(*c));
    PgQueryProtobufParseResult r;
    PgQuery__ParseResult *tree = NULL;
    ShapeInfo *info = NULL;

    if (!c)
        return NULL;
    c->t.hash = hash;
    r = pg_query_parse_protobuf(sql);
    if (r.error) {
        reason(c->t.batch_reason, "unparseable: %s", r.error->message);
        reason(c->t.cache_reason, "unparseable: %s", r.error->message);
        goto out_build;
    }
    tree =
        pg_query__parse_result__unpack(NULL, r.parse_tree.len, (const uint8_t *)r.parse_tree.data);
    if (!tree || tree->n_stmts == 0 || !tree->stmts[0]->stmt) {
        reason(c->t.batch_reason, "no statement");
        reason(c->t.cache_reason, "no statement");
        goto out_build;
    }
    if (tree->n_stmts > 1)
        c->t.flags |= SHAPE_F_MULTI_STMT;
    for (size_t i = 0; i < tree->n_stmts; i++)
        walk(c, &tree->stmts[i]->base, 0);
    if (c->too_deep)
        c->t.flags |= SHAPE_F_VOLATILE;
    drop_cte_tables(c);
    analyze_top(c, tree->stmts[0]->stmt);
    if (c->t.kind == SHAPE_KIND_SELECT &&
        !(c->t.flags & (SHAPE_F_INTO | SHAPE_F_LOCKING | SHAPE_F_WRITE_CTE | SHAPE_F_WRITE_FN |
                        SHAPE_F_MULTI_STMT)))
        c->t.flags |= SHAPE_F_READ_ONLY;
    verdict_batch(c);
    verdict_cache(c);
    if (c->t.kind >= SHAPE_KIND_SELECT && c->t.kind <= SHAPE_KIND_UTILITY &&
        !(c->t.flags & SHAPE_F_MULTI_STMT)) {
        c->t.session_known = true;
        c->t.session = session_state_sql(sql, len);
    }
out_build:
    info = finish(c, sql, len);
    if (tree)
        pg_query__parse_result__free_unpacked(tree, NULL);
    pg_query_free_protobuf_parse_result(r);
    free(c);
    return info;
}

void shape_info_ref(const ShapeInfo *info)
{
    ((ShapeInfo *)info)->refs++;
}

void shape_info_unref(const ShapeInfo *info)
{
    if (info && --((ShapeInfo *)info)->refs == 0)
        free((ShapeInfo *)info);
}

const ShapeKey *shape_info_key(const ShapeInfo *info)
{
    return info && info->nkeys == 1 ? &info->keys[0] : NULL;
}

const ShapeKey *shape_info_key_for_param(const ShapeInfo *info, int param)
{
    for (int i = 0; info && i < info->nkeys; i++)
        if (info->keys[i].param == param)
            return &info->keys[i];
    return NULL;
}

void shape_key_name(const ShapeInfo *info, const ShapeKey *key, char *buf, size_t cap)
{
    const ShapeTableRef *tr = key->table >= 0 ? &info->tables[key->table] : NULL;

    if (!tr)
        snprintf(buf, cap, "%s", key->column);
    else
        snprintf(buf, cap, "%s%s%s.%s", tr->schema ? tr->schema : "", tr->schema ? "." : "",
                 tr->name, key->column);
}

const char *shape_kind_name(ShapeKind kind)
{
    switch (kind) {
    case SHAPE_KIND_UNKNOWN:
        return "unknown";
    case SHAPE_KIND_SELECT:
        return "select";
    case SHAPE_KIND_INSERT:
        return "insert";
    case SHAPE_KIND_UPDATE:
        return "update";
    case SHAPE_KIND_DELETE:
        return "delete";
    case SHAPE_KIND_UTILITY:
        return "utility";
    case SHAPE_KIND_OTHER:
        return "other";
    }
    return "?";
}

void shape_analyze_thread_exit(void)
{
    pg_query_exit();
}
