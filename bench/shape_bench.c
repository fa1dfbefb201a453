/*
 * Micro-benchmark of the shape path for known shapes: shape_normalize, then
 * the shape-table lookup, then the parameter hashes the N+1 detector takes.
 * Prints ns per statement for short (~60 B), long (~200 B) and very long
 * (~1000 B) statements. Usage: shape_bench [iterations]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "orm/shape.h"
#include "orm/shapes.h"

static const char *const stmts[] = {
    /* short: a primary-key lookup as psycopg2 sends it */
    "SELECT users.id, users.name FROM users WHERE users.id = 42",
    /* long: SQLAlchemy 1.4 lazy load of a one-to-many */
    "SELECT posts.id AS posts_id, posts.user_id AS posts_user_id, posts.title AS posts_title, "
    "posts.created_at AS posts_created_at FROM posts WHERE 5 = posts.user_id ORDER BY "
    "posts.created_at DESC LIMIT 10",
    /* very long: Django with many columns, an IN list and a string */
    "SELECT \"app_book\".\"id\", \"app_book\".\"title\", \"app_book\".\"subtitle\", "
    "\"app_book\".\"isbn\", \"app_book\".\"author_id\", \"app_book\".\"publisher_id\", "
    "\"app_book\".\"published_on\", \"app_book\".\"pages\", \"app_book\".\"price\", "
    "\"app_book\".\"currency\", \"app_book\".\"language\", \"app_book\".\"created_at\", "
    "\"app_book\".\"updated_at\", \"app_author\".\"id\", \"app_author\".\"name\", "
    "\"app_author\".\"email\", \"app_author\".\"born_on\", \"app_publisher\".\"id\", "
    "\"app_publisher\".\"name\", \"app_publisher\".\"country\" FROM \"app_book\" INNER JOIN "
    "\"app_author\" ON (\"app_book\".\"author_id\" = \"app_author\".\"id\") LEFT OUTER JOIN "
    "\"app_publisher\" ON (\"app_book\".\"publisher_id\" = \"app_publisher\".\"id\") WHERE "
    "(\"app_book\".\"author_id\" IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, "
    "18, 19, 20) AND \"app_book\".\"language\" = 'en' AND \"app_book\".\"price\" >= 10.50 AND "
    "\"app_book\".\"published_on\" > '2020-01-01'::date /* comment from an app */ AND NOT "
    "(\"app_book\".\"title\" LIKE '%draft%' ESCAPE '\\')) ORDER BY \"app_book\".\"published_on\" "
    "DESC, \"app_book\".\"id\" ASC LIMIT 21 OFFSET 40",
};

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Best of 5 rounds of iters calls, in ns per call. */
#define BEST_OF(iters, body)                                                                       \
    ({                                                                                             \
        double best = 1e30;                                                                        \
        for (int round = 0; round < 5; round++) {                                                  \
            double t0 = now_ns();                                                                  \
            for (long it = 0; it < (iters); it++) {                                                \
                body;                                                                              \
            }                                                                                      \
            double ns = (now_ns() - t0) / (double)(iters);                                         \
            if (ns < best)                                                                         \
                best = ns;                                                                         \
        }                                                                                          \
        best;                                                                                      \
    })

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 200000;
    ShapeBuf *sb = malloc(sizeof(*sb));
    ShapeTable *table = shapes_new(1024);
    uint64_t hashes[SHAPE_MAX_PARAMS];
    volatile uint64_t sink = 0;

    if (!sb || !table || iters <= 0) {
        fprintf(stderr, "shape_bench: out of memory or bad iterations\n");
        return 1;
    }
    printf("%-10s %6s %8s %14s %16s %20s\n", "statement", "bytes", "params", "normalize ns",
           "+ lookup ns", "+ param hashes ns");
    for (size_t i = 0; i < sizeof(stmts) / sizeof(stmts[0]); i++) {
        const char *sql = stmts[i];
        size_t len = strlen(sql);
        const char *name = i == 0 ? "short" : i == 1 ? "long" : "very long";
        double a, b, c;

        if (!shape_normalize(sql, len, sb) || !shapes_get(table, sb)) {
            fprintf(stderr, "shape_bench: statement %zu does not shape\n", i);
            return 1;
        }
        a = BEST_OF(iters, {
            if (shape_normalize(sql, len, sb))
                sink += sb->hash;
        });
        b = BEST_OF(iters, {
            if (shape_normalize(sql, len, sb))
                sink += (uintptr_t)shapes_get(table, sb);
        });
        c = BEST_OF(iters, {
            if (shape_normalize(sql, len, sb)) {
                sink += (uintptr_t)shapes_get(table, sb);
                sink += (uint64_t)shape_param_hashes(sb, sql, NULL, 0, hashes, SHAPE_MAX_PARAMS);
            }
        });
        printf("%-10s %6zu %8u %14.1f %16.1f %20.1f\n", name, len, sb->nparams, a, b, c);
    }
    shapes_free(table);
    free(sb);
    return sink == 42 ? 2 : 0;
}
