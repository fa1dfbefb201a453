/*
 * Tests for conf/: loading (good and bad files, every error with its
 * file:line), the auth_file, config_from_url, lookups, config_item, and the
 * example config and docs staying in step with the settings table.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/config.h"

#define NSETTINGS 54

/* ---- helpers ------------------------------------------------------------------------- */

/* A temporary directory holding the files of one test. */
typedef struct TmpDir {
    char path[64];
    char files[4][PATH_MAX];
    int nfiles;
} TmpDir;

static void tmp_open(TmpDir *t)
{
    memset(t, 0, sizeof(*t));
    strcpy(t->path, "/tmp/pgc_conf_XXXXXX");
    assert_non_null(mkdtemp(t->path));
}

/* Write a file of len bytes into t; returns its full path (owned by t). */
static const char *tmp_write_n(TmpDir *t, const char *name, const char *data, size_t len)
{
    char buf[PATH_MAX];
    char *path;
    FILE *fp;

    assert_true(t->nfiles < 4);
    snprintf(buf, sizeof(buf), "%s/%s", t->path, name);
    path = t->files[t->nfiles++];
    memcpy(path, buf, sizeof(buf));
    fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
    return path;
}

static const char *tmp_write(TmpDir *t, const char *name, const char *data)
{
    return tmp_write_n(t, name, data, strlen(data));
}

static void tmp_close(TmpDir *t)
{
    for (int i = 0; i < t->nfiles; i++)
        unlink(t->files[i]);
    assert_int_equal(rmdir(t->path), 0);
}

static const char *data_dir(void)
{
    const char *d = getenv("PGC_TEST_DATA");

    if (!d)
        fail_msg("PGC_TEST_DATA is not set; run the tests through ctest");
    return d;
}

/* data_dir()/rel into buf. */
static const char *data_path(char *buf, size_t len, const char *rel)
{
    snprintf(buf, len, "%s/%s", data_dir(), rel);
    return buf;
}

/* Load a config from text in a temporary directory. */
static Config *load_text(const char *ini, char *err, size_t errlen)
{
    TmpDir t;
    Config *cfg;

    tmp_open(&t);
    cfg = config_load(tmp_write(&t, "pgcoalesce.ini", ini), err, errlen);
    tmp_close(&t);
    return cfg;
}

static char *read_all(const char *path)
{
    FILE *fp = fopen(path, "r");
    char *buf;
    long len;

    if (!fp)
        fail_msg("%s: %s", path, strerror(errno));
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    len = ftell(fp);
    assert_true(len >= 0);
    rewind(fp);
    buf = malloc((size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, fp), (size_t)len);
    buf[len] = '\0';
    fclose(fp);
    return buf;
}

#define MINIMAL "[pgcoalesce]\nauth_type = trust\n[databases]\n* = host=127.0.0.1\n"

/* ---- bad files: each must name the file, the line and what is wrong ------------------- */

typedef struct BadCase {
    const char *ini;   /* contents of pgcoalesce.ini, or "@name" for data/config/name */
    const char *users; /* contents of users.txt beside it, or NULL */
    const char *where; /* file the message must start with */
    int line;          /* line it must name; 0 for a message about the whole file */
    const char *want;  /* text the message must contain */
} BadCase;

static const BadCase bad_cases[] = {
    /* [pgcoalesce] settings */
    {"[pgcoalesce]\nauth_type = trust\nfrobnicate = 1\n", NULL, "pgcoalesce.ini", 3,
     "unknown setting \"frobnicate\" in [pgcoalesce]"},
    {"[pgcoalesce]\nPool_Size = 3\n", NULL, "pgcoalesce.ini", 2, "did you mean \"pool_size\"?"},
    {"[pgcoalesce]\npool_mode = txn\n", NULL, "pgcoalesce.ini", 2,
     "pool_mode must be session or transaction, not \"txn\""},
    {"[pgcoalesce]\nauth_type = password\n", NULL, "pgcoalesce.ini", 2,
     "auth_type must be trust, md5 or scram-sha-256, not \"password\""},
    {"[pgcoalesce]\nlog_level = verbose\n", NULL, "pgcoalesce.ini", 2,
     "log_level must be error, warning, info or debug, not \"verbose\""},
    {"[pgcoalesce]\npool_pre_ping = maybe\n", NULL, "pgcoalesce.ini", 2,
     "pool_pre_ping must be on or off (or true/false, yes/no, 1/0), not \"maybe\""},
    {"[pgcoalesce]\npool_size = 0\n", NULL, "pgcoalesce.ini", 2,
     "pool_size must be an integer from 1 to 10000, not \"0\""},
    {"[pgcoalesce]\npool_size = 10001\n", NULL, "pgcoalesce.ini", 2,
     "pool_size must be an integer from 1 to 10000, not \"10001\""},
    {"[pgcoalesce]\nmax_overflow = -1\n", NULL, "pgcoalesce.ini", 2,
     "max_overflow must be an integer from 0 to 10000, not \"-1\""},
    {"[pgcoalesce]\nlisten_port = abc\n", NULL, "pgcoalesce.ini", 2,
     "listen_port must be an integer from 1 to 65535, not \"abc\""},
    {"[pgcoalesce]\nlisten_port = 64 32\n", NULL, "pgcoalesce.ini", 2, "not \"64 32\""},
    {"[pgcoalesce]\nlisten_port = 5x\n", NULL, "pgcoalesce.ini", 2, "not \"5x\""},
    {"[pgcoalesce]\nlisten_port = 65536\n", NULL, "pgcoalesce.ini", 2, "not \"65536\""},
    {"[pgcoalesce]\nlisten_port =\n", NULL, "pgcoalesce.ini", 2, "not \"\""},
    {"[pgcoalesce]\nmax_client_conn = 99999999999999999999\n", NULL, "pgcoalesce.ini", 2,
     "max_client_conn must be an integer from 1 to 1000000"},
    {"[pgcoalesce]\npool_recycle = 0\n", NULL, "pgcoalesce.ini", 2,
     "pool_recycle must be -1 (off) or an integer from 1 to 2147483647, not \"0\""},
    {"[pgcoalesce]\npool_recycle = -2\n", NULL, "pgcoalesce.ini", 2, "not \"-2\""},
    {"[pgcoalesce]\npool_timeout = 0\n", NULL, "pgcoalesce.ini", 2,
     "pool_timeout must be a number of seconds greater than 0 and at most 2147483, not \"0\""},
    {"[pgcoalesce]\npool_timeout = 30s\n", NULL, "pgcoalesce.ini", 2, "not \"30s\""},
    {"[pgcoalesce]\npool_timeout = nan\n", NULL, "pgcoalesce.ini", 2, "not \"nan\""},
    {"[pgcoalesce]\npool_timeout = inf\n", NULL, "pgcoalesce.ini", 2, "not \"inf\""},
    {"[pgcoalesce]\npool_timeout = 1e10\n", NULL, "pgcoalesce.ini", 2, "not \"1e10\""},
    {"[pgcoalesce]\nserver_connect_timeout = -0.5\n", NULL, "pgcoalesce.ini", 2,
     "server_connect_timeout must be a number of seconds greater than 0"},
    {"[pgcoalesce]\npre_ping_idle = -1\n", NULL, "pgcoalesce.ini", 2,
     "pre_ping_idle must be a number of seconds from 0 to 2147483, not \"-1\""},
    {"[pgcoalesce]\nclient_login_timeout = soon\n", NULL, "pgcoalesce.ini", 2,
     "client_login_timeout must be a number of seconds from 0 to 2147483, not \"soon\""},
    {"[pgcoalesce]\nidle_transaction_timeout = -1\n", NULL, "pgcoalesce.ini", 2,
     "idle_transaction_timeout must be a number of seconds from 0 to 2147483, not \"-1\""},
    {"[pgcoalesce]\nclient_write_timeout = 1h\n", NULL, "pgcoalesce.ini", 2,
     "client_write_timeout must be a number of seconds from 0 to 2147483, not \"1h\""},
    {"[pgcoalesce]\nmax_packet_size = 1023\n", NULL, "pgcoalesce.ini", 2,
     "max_packet_size must be an integer from 1024 to 1073741824, not \"1023\""},
    {"[pgcoalesce]\nmax_packet_size = 1073741825\n", NULL, "pgcoalesce.ini", 2,
     "not \"1073741825\""},
    {"[pgcoalesce]\nauth_type = trust\nclient_tls_sslmode = require\n[databases]\n* = host=h\n",
     NULL, "pgcoalesce.ini", 3,
     "client_tls_sslmode require needs client_tls_cert_file and client_tls_key_file"},
    {"[pgcoalesce]\nauth_type = trust\nserver_tls_sslmode = verify-ca\n[databases]\n* = host=h\n",
     NULL, "pgcoalesce.ini", 3, "server_tls_sslmode verify-ca needs server_tls_ca_file"},
    {"[pgcoalesce]\nauth_type = trust\nserver_tls_cert_file = c.pem\n[databases]\n* = host=h\n",
     NULL, "pgcoalesce.ini", 3, "server_tls_cert_file and server_tls_key_file go together"},
    {"[pgcoalesce]\nserver_tls_sslmode = verify\n", NULL, "pgcoalesce.ini", 2,
     "server_tls_sslmode must be"},
    {"[pgcoalesce]\nclient_tls_min_version = tlsv1.1\n", NULL, "pgcoalesce.ini", 2,
     "client_tls_min_version must be"},
    {"[pgcoalesce]\nadmin_port = 65536\n", NULL, "pgcoalesce.ini", 2,
     "admin_port must be an integer from 0 to 65535, not \"65536\""},
    {"[pgcoalesce]\nadmin_users = admin,,ops\n", NULL, "pgcoalesce.ini", 2,
     "admin_users must be a comma-separated list of user names, or empty"},
    {"[pgcoalesce]\nstats_users = metrics,\n", NULL, "pgcoalesce.ini", 2,
     "stats_users must be a comma-separated list"},
    {"[pgcoalesce]\nshutdown_timeout = -1\n", NULL, "pgcoalesce.ini", 2,
     "shutdown_timeout must be a number of seconds from 0 to 2147483, not \"-1\""},
    {"[pgcoalesce]\nsyslog = maybe\n", NULL, "pgcoalesce.ini", 2, "syslog must be on or off"},
    {"[pgcoalesce]\nsyslog_ident =\n", NULL, "pgcoalesce.ini", 2,
     "syslog_ident must be a name of 1 to 64 characters"},
    {"[pgcoalesce]\nlisten_addr = 127.0.0.1,::1\n", NULL, "pgcoalesce.ini", 2,
     "listen_addr must be one IP address or host name"},
    {"[pgcoalesce]\nlisten_addr = [::1]\n", NULL, "pgcoalesce.ini", 2, "(IPv6 without brackets)"},
    {"[pgcoalesce]\nlisten_addr =\n", NULL, "pgcoalesce.ini", 2, "listen_addr must be"},
    {"[pgcoalesce]\nunix_socket_dir = run/pgc\n", NULL, "pgcoalesce.ini", 2,
     "unix_socket_dir must be an absolute directory path, or empty for no unix socket, not "
     "\"run/pgc\""},
    {"[pgcoalesce]\nunix_socket_dir = "
     "/0123456789/0123456789/0123456789/0123456789/0123456789/0123456789/0123456789/0123456789/"
     "0123\n",
     NULL, "pgcoalesce.ini", 2, "at most 92 bytes"},
    {"[pgcoalesce]\npool_size = 5\n\npool_size = 6\n", NULL, "pgcoalesce.ini", 4,
     "pool_size is already set on line 2"},
    {"[pgcoalesce]\npool_size = 5 # five\n", NULL, "pgcoalesce.ini", 2,
     "(a comment after a value starts with ';', not '#')"},

    /* [databases] entries */
    {"[databases]\n\napp = host=a\napp = host=b\n", NULL, "pgcoalesce.ini", 4,
     "database \"app\" is already defined on line 3"},
    {"[databases]\napp = port=5432 dbname=x\n", NULL, "pgcoalesce.ini", 2,
     "database \"app\": host is missing"},
    {"[databases]\napp =\n", NULL, "pgcoalesce.ini", 2, "database \"app\": host is missing"},
    {"[databases]\napp = hots=x\n", NULL, "pgcoalesce.ini", 2,
     "database \"app\": unknown key \"hots\"; the keys are host, port"},
    {"[databases]\napp = host\n", NULL, "pgcoalesce.ini", 2,
     "expected key=value, found \"host\" without '='"},
    {"[databases]\napp = host=a =b\n", NULL, "pgcoalesce.ini", 2, "a key is missing before '='"},
    {"[databases]\napp = host=a port=1 port=2\n", NULL, "pgcoalesce.ini", 2, "port is given twice"},
    {"[databases]\napp = host=a port=0\n", NULL, "pgcoalesce.ini", 2,
     "port must be an integer from 1 to 65535, not \"0\""},
    {"[databases]\napp = host=a port=54x\n", NULL, "pgcoalesce.ini", 2, "not \"54x\""},
    {"[databases]\napp = host=a pool_size=0\n", NULL, "pgcoalesce.ini", 2,
     "pool_size must be an integer from 1 to 10000, not \"0\""},
    {"[databases]\napp = host=a max_overflow=-1\n", NULL, "pgcoalesce.ini", 2,
     "max_overflow must be an integer from 0 to 10000, not \"-1\""},
    {"[databases]\napp = host=a pool_mode=statement\n", NULL, "pgcoalesce.ini", 2,
     "pool_mode must be session or transaction, not \"statement\""},
    {"[pgcoalesce]\nn1_mode = on\n", NULL, "pgcoalesce.ini", 2,
     "n1_mode must be off, detect or batch, not \"on\""},
    {"[pgcoalesce]\nn1_threshold = 1\n", NULL, "pgcoalesce.ini", 2,
     "n1_threshold must be an integer from 2 to 1000000, not \"1\""},
    {"[pgcoalesce]\nshape_cache_size = 0\n", NULL, "pgcoalesce.ini", 2,
     "shape_cache_size must be an integer from 1 to 10000000, not \"0\""},
    {"[databases]\napp = host=a password='abc\n", NULL, "pgcoalesce.ini", 2,
     "the quoted value of password has no closing quote"},
    {"[databases]\napp = host=a password='it\\'\n", NULL, "pgcoalesce.ini", 2, "no closing quote"},
    {"[databases]\napp = host=a password='ab ;cd'\n", NULL, "pgcoalesce.ini", 2,
     "(\" ;\" starts a comment, even inside quotes)"},
    {"[databases]\napp = host=a password='ab'cd\n", NULL, "pgcoalesce.ini", 2,
     "unexpected text after the closing quote of password"},
    {"[databases]\napp = host=''\n", NULL, "pgcoalesce.ini", 2, "host must not be empty"},
    {"[databases]\napp = host=a password=''\n", NULL, "pgcoalesce.ini", 2,
     "password must not be empty; leave it out to use the auth_file entry"},
    {"[databases]\na123456789b123456789c123456789d123456789e123456789f123456789g123 = host=a\n",
     NULL, "pgcoalesce.ini", 2, "is longer than 63 bytes"},

    /* INI structure */
    {"[pgcoalesce]\nauth_type = trust\n[users]\n", NULL, "pgcoalesce.ini", 3,
     "unknown section [users]; the sections are [pgcoalesce] and [databases]"},
    {"[pgcoalesce\n", NULL, "pgcoalesce.ini", 1, "section header has no closing ']'"},
    {"[databases] extra\n", NULL, "pgcoalesce.ini", 1,
     "unexpected text after the section header: \"extra\""},
    {"[pgcoalesce]\n; fine\njust some words\n", NULL, "pgcoalesce.ini", 3,
     "expected \"name = value\", a [section] or a comment, not \"just some words\""},
    {"[pgcoalesce]\nwords ; pool_size = 3\n", NULL, "pgcoalesce.ini", 2,
     "expected \"name = value\""},
    {"pool_size = 5\n", NULL, "pgcoalesce.ini", 1,
     "\"pool_size\" is outside any section; settings go under [pgcoalesce]"},
    {"[pgcoalesce]\n= 5\n", NULL, "pgcoalesce.ini", 2, "a name is missing before '='"},

    /* checks of the whole file */
    {"[pgcoalesce]\nauth_type = trust\n", NULL, "pgcoalesce.ini", 2, "no databases are defined"},
    {"", NULL, "pgcoalesce.ini", 1, "no databases are defined"},
    {"[pgcoalesce]\npool_size = 3\nauth_type = md5\n[databases]\n* = host=a\n", NULL,
     "pgcoalesce.ini", 3,
     "auth_type md5 needs auth_file, a list of \"user\" \"password\" lines; set auth_file or use "
     "auth_type = trust"},
    {"; comment\n[pgcoalesce]\npool_size = 3\n[databases]\n* = host=a\n", NULL, "pgcoalesce.ini", 2,
     "auth_type scram-sha-256 (the default) needs auth_file"},

    /* the auth_file */
    {"[pgcoalesce]\nauth_file = missing.txt\n[databases]\n* = host=a\n", NULL, "missing.txt", 0,
     "cannot open: No such file or directory (auth_file, set on line 2 of"},
    {"[pgcoalesce]\nauth_file = users.txt\n[databases]\n* = host=a\n", "\n# c\nbob \"x\"\n",
     "users.txt", 3, "expected the user name in double quotes: \"user\" \"secret\""},
    {"[pgcoalesce]\nauth_file = users.txt\n[databases]\n* = host=a\n", "\"bob\" \"x\n", "users.txt",
     1, "the secret has no closing '\"'"},
    {"[pgcoalesce]\nauth_file = users.txt\n[databases]\n* = host=a\n", "\"bob\n", "users.txt", 1,
     "the user name has no closing '\"'"},
    {"[pgcoalesce]\nauth_file = users.txt\n[databases]\n* = host=a\n", "\"bob\"\n", "users.txt", 1,
     "expected whitespace and then the quoted secret"},
    {"[pgcoalesce]\nauth_file = users.txt\n[databases]\n* = host=a\n", "\"a\"\"b\"\n", "users.txt",
     1, "expected whitespace and then the quoted secret"},
    {"[pgcoalesce]\nauth_file = users.txt\n[databases]\n* = host=a\n", "\"bob\" \"x\" extra\n",
     "users.txt", 1, "unexpected text after the secret"},
    {"[pgcoalesce]\nauth_file = users.txt\n[databases]\n* = host=a\n", "\"bob\" \"\"\n",
     "users.txt", 1, "the secret is empty"},
    {"[pgcoalesce]\nauth_file = users.txt\n[databases]\n* = host=a\n", "\"\" \"x\"\n", "users.txt",
     1, "the user name is empty"},
    {"[pgcoalesce]\nauth_file = users.txt\n[databases]\n* = host=a\n",
     "\"bob\" \"x\"\n\"amy\" \"y\"\n\"bob\" \"z\"\n", "users.txt", 3,
     "user \"bob\" is already listed on line 1"},
    {"@bad_auth.ini", NULL, "bad_users.txt", 3, "expected the secret in double quotes"},
};

/* Run one bad case; returns NULL when it passed, else why not (static buffer). */
static const char *run_bad_case(const BadCase *c)
{
    static char why[2 * PATH_MAX];
    char err[512] = "", prefix[PATH_MAX + 32], path[PATH_MAX];
    const char *dir, *ini_path;
    Config *cfg;
    TmpDir t;

    if (c->ini[0] == '@') {
        snprintf(path, sizeof(path), "%s/config/%s", data_dir(), c->ini + 1);
        cfg = config_load(path, err, sizeof(err));
        snprintf(prefix, sizeof(prefix), "%s/config/%s:%d: ", data_dir(), c->where, c->line);
    } else {
        tmp_open(&t);
        dir = t.path;
        ini_path = tmp_write(&t, "pgcoalesce.ini", c->ini);
        if (c->users)
            tmp_write(&t, "users.txt", c->users);
        cfg = config_load(ini_path, err, sizeof(err));
        if (c->line > 0)
            snprintf(prefix, sizeof(prefix), "%s/%s:%d: ", dir, c->where, c->line);
        else
            snprintf(prefix, sizeof(prefix), "%s/%s: ", dir, c->where);
        tmp_close(&t);
    }
    if (cfg) {
        config_free(cfg);
        return "loaded, but must fail";
    }
    if (strncmp(err, prefix, strlen(prefix)) != 0) {
        snprintf(why, sizeof(why), "message \"%s\" does not start with \"%s\"", err, prefix);
        return why;
    }
    if (getenv("PGC_TEST_SHOW"))
        print_message("%s\n", err);
    if (!strstr(err, c->want)) {
        snprintf(why, sizeof(why), "message \"%s\" does not contain \"%s\"", err, c->want);
        return why;
    }
    return NULL;
}

static void test_bad_files(void **state)
{
    int failures = 0;

    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const char *why = run_bad_case(&bad_cases[i]);

        if (why) {
            print_error("bad case %zu (%s): %s\n", i, bad_cases[i].want, why);
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

static void test_missing_file(void **state)
{
    char err[512];

    assert_null(config_load("/nonexistent/pgcoalesce.ini", err, sizeof(err)));
    assert_string_equal(err, "/nonexistent/pgcoalesce.ini: cannot open: No such file or directory");
}

static void test_long_line(void **state)
{
    char ini[600], err[512], want[64];
    size_t n;

    n = (size_t)snprintf(ini, sizeof(ini),
                         "[pgcoalesce]\nauth_type = trust\n[databases]\n"
                         "app = host=a");
    memset(ini + n, 'x', 300);
    strcpy(ini + n + 300, "\n");
    assert_null(load_text(ini, err, sizeof(err)));
    /* "app = host=a" and 300 x */
    snprintf(want, sizeof(want), "pgcoalesce.ini:4: line is %d characters long", 12 + 300);
    if (!strstr(err, want))
        fail_msg("\"%s\" lacks \"%s\"", err, want);
    assert_non_null(strstr(err, "; the limit is"));
}

static void test_nul_byte(void **state)
{
    static const char ini[] = "[pgcoalesce]\nauth_type = trust\0junk\n";
    char err[512];
    TmpDir t;
    Config *cfg;

    tmp_open(&t);
    cfg = config_load(tmp_write_n(&t, "pgcoalesce.ini", ini, sizeof(ini) - 1), err, sizeof(err));
    tmp_close(&t);
    assert_null(cfg);
    assert_non_null(strstr(err, "pgcoalesce.ini:2: line contains a NUL byte"));
}

static void test_directory_is_not_a_config(void **state)
{
    char err[512];

    assert_null(config_load("/tmp", err, sizeof(err)));
    assert_non_null(strstr(err, "/tmp: "));
}

/* ---- good files ---------------------------------------------------------------------- */

static void test_defaults(void **state)
{
    char err[512] = "";
    Config *cfg = load_text(MINIMAL, err, sizeof(err));
    const DbConf *db;

    if (!cfg)
        fail_msg("%s", err);
    assert_string_equal(cfg->listen_addr, "127.0.0.1");
    assert_int_equal(cfg->listen_port, 6432);
    assert_string_equal(cfg->unix_socket_dir, "");
    assert_int_equal(cfg->pool_mode, POOL_TRANSACTION);
    assert_int_equal(cfg->auth_type, AUTH_TRUST);
    assert_string_equal(cfg->auth_file, "");
    assert_int_equal(cfg->pool_size, 5);
    assert_int_equal(cfg->max_overflow, 10);
    assert_true(cfg->pool_timeout == 30.0);
    assert_int_equal(cfg->pool_recycle, -1);
    assert_false(cfg->pool_pre_ping);
    assert_true(cfg->pre_ping_idle == 1.0);
    assert_int_equal(cfg->max_client_conn, 10000);
    assert_true(cfg->client_login_timeout == 60.0);
    assert_true(cfg->client_write_timeout == 0.0);
    assert_true(cfg->idle_transaction_timeout == 0.0);
    assert_true(cfg->server_connect_timeout == 15.0);
    assert_int_equal(cfg->max_packet_size, 268435456);
    assert_int_equal(cfg->log_level, LOG_INFO);
    assert_int_equal(cfg->n1_mode, N1_MODE_BATCH);
    assert_int_equal(cfg->n1_threshold, 5);
    assert_int_equal(cfg->n1_result_memory, 20000);
    assert_int_equal(cfg->n1_max_patterns, 1000);
    assert_int_equal(cfg->shape_cache_size, 10000);
    assert_int_equal(cfg->nusers, 0);
    assert_null(cfg->users);
    assert_null(config_find_user(cfg, "anyone"));
    assert_int_equal(cfg->ndbs, 1);
    db = &cfg->dbs[0];
    assert_string_equal(db->name, "*");
    assert_string_equal(db->host, "127.0.0.1");
    assert_int_equal(db->port, 5432);
    assert_null(db->dbname);
    assert_null(db->user);
    assert_null(db->password);
    assert_int_equal(db->pool_size, -1);
    assert_int_equal(db->max_overflow, -1);
    assert_int_equal(db->pool_mode, -1);
    assert_int_equal(db->line, 4);
    assert_non_null(cfg->path);
    assert_non_null(strstr(cfg->path, "/pgcoalesce.ini"));
    config_free(cfg);
}

static void test_full_config(void **state)
{
    char err[512] = "", path[PATH_MAX], users[PATH_MAX];
    Config *cfg = config_load(data_path(path, sizeof(path), "config/full.ini"), err, sizeof(err));
    const DbConf *db;

    if (!cfg)
        fail_msg("%s", err);
    assert_string_equal(cfg->path, path);
    assert_string_equal(cfg->listen_addr, "*");
    assert_int_equal(cfg->listen_port, 7432);
    assert_string_equal(cfg->unix_socket_dir, "/tmp/pgc");
    assert_string_equal(cfg->admin_addr, "127.0.0.2");
    assert_int_equal(cfg->admin_port, 7433);
    assert_string_equal(cfg->admin_users, "admin, ops");
    assert_string_equal(cfg->stats_users, "metrics");
    assert_true(cfg->shutdown_timeout == 5.0);
    assert_string_equal(cfg->pidfile, "/run/pgcoalesce/pgcoalesce.pid");
    assert_string_equal(cfg->logfile, "/var/log/pgcoalesce/pgcoalesce.log");
    assert_true(cfg->syslog);
    assert_string_equal(cfg->syslog_ident, "pgc-test");
    assert_int_equal(cfg->max_prepared_statements, 50);
    assert_int_equal(cfg->client_tls_sslmode, CLIENT_TLS_REQUIRE);
    assert_string_equal(cfg->client_tls_cert_file, "/etc/pgc/server.crt");
    assert_string_equal(cfg->client_tls_key_file, "/etc/pgc/server.key");
    assert_int_equal(cfg->client_tls_min_version, TLS_V1_3);
    assert_int_equal(cfg->server_tls_sslmode, SERVER_TLS_VERIFY_FULL);
    assert_string_equal(cfg->server_tls_ca_file, "/etc/pgc/ca.crt");
    assert_string_equal(cfg->server_tls_cert_file, "/etc/pgc/client.crt");
    assert_string_equal(cfg->server_tls_key_file, "/etc/pgc/client.key");
    assert_int_equal(cfg->server_tls_min_version, TLS_V1_3);
    assert_int_equal(cfg->pool_mode, POOL_SESSION);
    assert_int_equal(cfg->auth_type, AUTH_MD5);
    assert_string_equal(cfg->auth_file, data_path(users, sizeof(users), "config/full_users.txt"));
    assert_int_equal(cfg->pool_size, 7);
    assert_int_equal(cfg->max_overflow, 0);
    assert_true(cfg->pool_timeout == 2.5);
    assert_int_equal(cfg->pool_recycle, 3600);
    assert_true(cfg->pool_pre_ping);
    assert_true(cfg->pre_ping_idle == 0.25);
    assert_int_equal(cfg->max_client_conn, 500);
    assert_true(cfg->client_login_timeout == 0.0);
    assert_true(cfg->client_write_timeout == 1.5);
    assert_true(cfg->idle_transaction_timeout == 120.0);
    assert_true(cfg->server_connect_timeout == 0.5);
    assert_int_equal(cfg->max_packet_size, 1048576);
    assert_int_equal(cfg->log_level, LOG_DEBUG);

    assert_int_equal(cfg->ndbs, 3);
    db = &cfg->dbs[0];
    assert_string_equal(db->name, "app");
    assert_string_equal(db->host, "db1.example.com");
    assert_int_equal(db->port, 5433);
    assert_string_equal(db->dbname, "app_prod");
    assert_string_equal(db->user, "app_user");
    assert_string_equal(db->password, "it's a 'secret'");
    assert_int_equal(db->pool_size, 20);
    assert_int_equal(db->max_overflow, 3);
    assert_int_equal(db->pool_mode, POOL_TRANSACTION);
    assert_int_equal(db->line, 60);
    db = &cfg->dbs[1];
    assert_string_equal(db->name, "reports");
    assert_string_equal(db->host, "/var/run/postgresql");
    assert_int_equal(db->port, 5432);
    assert_string_equal(db->dbname, "reporting");
    assert_string_equal(db->user, "back\\slash");
    assert_null(db->password);
    assert_int_equal(db->pool_size, -1);
    assert_int_equal(db->line, 61);
    db = &cfg->dbs[2];
    assert_string_equal(db->name, "*");
    assert_string_equal(db->host, "127.0.0.1");

    assert_int_equal(cfg->nusers, 2);
    assert_string_equal(cfg->users[0].name, "app_user");
    assert_string_equal(cfg->users[0].secret, "md5c3a5b7ad2ea2f1fbc5d4b8c1e8a14d7e");
    assert_string_equal(cfg->users[1].name, "we\"ird");
    assert_string_equal(cfg->users[1].secret, "pa ss\"word");
    assert_string_equal(config_find_user(cfg, "we\"ird"), "pa ss\"word");
    assert_null(config_find_user(cfg, "weird"));
    config_free(cfg);
}

/* Spellings the parser must take: case, indentation, CRLF, a BOM, inline comments. */
static void test_lenient_syntax(void **state)
{
    static const char ini[] = "\xEF\xBB\xBF; BOM first\r\n"
                              "[pgcoalesce]\r\n"
                              "auth_type = TRUST\r\n"
                              "    pool_size = 9 ; indented, and a comment\r\n"
                              "pool_pre_ping = YES\r\n"
                              "pool_mode=Session\r\n"
                              "log_level: warning\r\n"
                              "\r\n"
                              "[databases]\r\n"
                              "\t* = host=h   port = 6000\r\n"
                              "[pgcoalesce]\r\n"
                              "max_overflow = 2\r\n";
    char err[512] = "";
    Config *cfg = load_text(ini, err, sizeof(err));

    if (!cfg)
        fail_msg("%s", err);
    assert_int_equal(cfg->auth_type, AUTH_TRUST);
    assert_int_equal(cfg->pool_size, 9);
    assert_true(cfg->pool_pre_ping);
    assert_int_equal(cfg->pool_mode, POOL_SESSION);
    assert_int_equal(cfg->log_level, LOG_WARNING);
    assert_int_equal(cfg->max_overflow, 2);
    assert_int_equal(cfg->ndbs, 1);
    assert_string_equal(cfg->dbs[0].host, "h");
    assert_int_equal(cfg->dbs[0].port, 6000);
    assert_int_equal(cfg->dbs[0].line, 10);
    config_free(cfg);
}

/* Every boolean spelling, both ways. */
static void test_bool_words(void **state)
{
    static const struct {
        const char *word;
        bool value;
    } words[] = {{"on", true},  {"off", false}, {"true", true}, {"false", false}, {"yes", true},
                 {"no", false}, {"1", true},    {"0", false},   {"On", true},     {"OFF", false}};
    char ini[256], err[512];

    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        Config *cfg;

        snprintf(ini, sizeof(ini),
                 "[pgcoalesce]\nauth_type=trust\npool_pre_ping = %s\n"
                 "[databases]\n*=host=a\n",
                 words[i].word);
        cfg = load_text(ini, err, sizeof(err));
        if (!cfg)
            fail_msg("%s: %s", words[i].word, err);
        assert_int_equal(cfg->pool_pre_ping, words[i].value);
        config_free(cfg);
    }
}

/* An auth_file with an absolute path, read also under auth_type = trust. */
static void test_auth_file_absolute(void **state)
{
    char ini[PATH_MAX + 128], err[512] = "";
    const char *users;
    Config *cfg;
    TmpDir t;

    tmp_open(&t);
    users = tmp_write(&t, "u.txt", "\"u1\" \"s1\"\n\"u2\" \"s2\"\n");
    snprintf(ini, sizeof(ini),
             "[pgcoalesce]\nauth_type = trust\nauth_file = %s\n[databases]\n"
             "* = host=a\n",
             users);
    cfg = load_text(ini, err, sizeof(err));
    tmp_close(&t);
    if (!cfg)
        fail_msg("%s", err);
    assert_string_equal(cfg->auth_file, users);
    assert_int_equal(cfg->nusers, 2);
    assert_string_equal(config_find_user(cfg, "u2"), "s2");
    assert_string_equal(config_find_user(cfg, "u1"), "s1");
    config_free(cfg);
}

/* Many databases and users: the arrays must grow without losing anything. */
static void test_many_entries(void **state)
{
    size_t cap = 64 * 1024;
    char *ini = malloc(cap), *users = malloc(cap), err[512] = "", name[32];
    size_t n = 0, u = 0;
    Config *cfg;
    TmpDir t;

    assert_non_null(ini);
    assert_non_null(users);
    n += (size_t)snprintf(ini + n, cap - n, "[pgcoalesce]\nauth_file = users.txt\n[databases]\n");
    for (int i = 0; i < 300; i++) {
        n += (size_t)snprintf(ini + n, cap - n, "db%d = host=h%d pool_size=%d\n", i, i, i + 1);
        u += (size_t)snprintf(users + u, cap - u, "\"user%d\" \"pw%d\"\n", i, i);
    }
    tmp_open(&t);
    tmp_write(&t, "users.txt", users);
    cfg = config_load(tmp_write(&t, "pgcoalesce.ini", ini), err, sizeof(err));
    tmp_close(&t);
    free(ini);
    free(users);
    if (!cfg)
        fail_msg("%s", err);
    assert_int_equal(cfg->ndbs, 300);
    assert_int_equal(cfg->nusers, 300);
    for (int i = 0; i < 300; i += 37) {
        const DbConf *db;
        char want[32];

        snprintf(name, sizeof(name), "db%d", i);
        db = config_find_db(cfg, name);
        assert_non_null(db);
        snprintf(want, sizeof(want), "h%d", i);
        assert_string_equal(db->host, want);
        assert_int_equal(dbconf_pool_size(cfg, db), i + 1);
        assert_int_equal(db->line, i + 4);
        snprintf(name, sizeof(name), "user%d", i);
        snprintf(want, sizeof(want), "pw%d", i);
        assert_string_equal(config_find_user(cfg, name), want);
    }
    assert_null(config_find_db(cfg, "db300"));
    config_free(cfg);
}

/* ---- lookups ------------------------------------------------------------------------- */

static void test_find_db_precedence(void **state)
{
    static const char ini[] = "[pgcoalesce]\n"
                              "auth_type = trust\n"
                              "pool_size = 4\n"
                              "max_overflow = 6\n"
                              "pool_mode = session\n"
                              "[databases]\n"
                              "* = host=fallback pool_size=11\n"
                              "app = host=apphost max_overflow=0 pool_mode=transaction\n"
                              "App = host=other-case\n";
    char err[512] = "";
    Config *cfg = load_text(ini, err, sizeof(err));
    const DbConf *app, *star, *upper;

    if (!cfg)
        fail_msg("%s", err);
    app = config_find_db(cfg, "app");
    star = config_find_db(cfg, "anything");
    upper = config_find_db(cfg, "App");
    assert_non_null(app);
    assert_non_null(star);
    assert_non_null(upper);
    assert_string_equal(app->host, "apphost");
    assert_string_equal(star->name, "*");
    assert_string_equal(star->host, "fallback");
    assert_string_equal(upper->host, "other-case");
    assert_ptr_equal(config_find_db(cfg, "APP"), star);
    assert_ptr_equal(config_find_db(cfg, "*"), star);
    assert_null(config_find_db(cfg, NULL));

    /* entry overrides win, unset ones fall back to the globals */
    assert_int_equal(dbconf_pool_size(cfg, app), 4);
    assert_int_equal(dbconf_max_overflow(cfg, app), 0);
    assert_int_equal(dbconf_pool_mode(cfg, app), POOL_TRANSACTION);
    assert_int_equal(dbconf_pool_size(cfg, star), 11);
    assert_int_equal(dbconf_max_overflow(cfg, star), 6);
    assert_int_equal(dbconf_pool_mode(cfg, star), POOL_SESSION);
    config_free(cfg);

    cfg = load_text("[pgcoalesce]\nauth_type = trust\n[databases]\nonly = host=a\n", err,
                    sizeof(err));
    if (!cfg)
        fail_msg("%s", err);
    assert_non_null(config_find_db(cfg, "only"));
    assert_null(config_find_db(cfg, "other"));
    config_free(cfg);
}

/* ---- config_from_url ----------------------------------------------------------------- */

typedef struct UrlCase {
    const char *url;
    const char *host;
    int port;
    const char *user;     /* NULL = none */
    const char *password; /* NULL = none: trust */
    const char *dbname;   /* NULL = the client's */
} UrlCase;

static const UrlCase good_urls[] = {
    {"postgresql://app:secret@db.example.com:5433/appdb", "db.example.com", 5433, "app", "secret",
     "appdb"},
    {"postgres://app@db/x", "db", 5432, "app", NULL, "x"},
    {"postgresql://localhost", "localhost", 5432, NULL, NULL, NULL},
    {"postgresql://localhost/", "localhost", 5432, NULL, NULL, NULL},
    {"POSTGRESQL://h:1", "h", 1, NULL, NULL, NULL},
    {"postgresql://us%40er:p%40ss%3Aw%2Fd%25@host/my%20db", "host", 5432, "us@er", "p@ss:w/d%",
     "my db"},
    {"postgresql://u:p@ss@host", "host", 5432, "u", "p@ss", NULL},
    {"postgresql://u:@host", "host", 5432, "u", NULL, NULL},
    {"postgresql://u:p@[::1]:6543/db", "::1", 6543, "u", "p", "db"},
    {"postgresql://[fe80::1%25eth0]/db", "fe80::1%eth0", 5432, NULL, NULL, "db"},
    {"postgresql://[2001:db8::5]", "2001:db8::5", 5432, NULL, NULL, NULL},
    {"postgresql:///db", "127.0.0.1", 5432, NULL, NULL, "db"},
    {"postgresql://", "127.0.0.1", 5432, NULL, NULL, NULL},
    {"postgresql://:7000", "127.0.0.1", 7000, NULL, NULL, NULL},
    {"postgresql:///db?host=%2Fvar%2Frun%2Fpostgresql&sslmode=disable", "/var/run/postgresql", 5432,
     NULL, NULL, "db"},
    {"postgresql://u@ignored/db?sslmode=require&host=/tmp", "/tmp", 5432, "u", NULL, "db"},
};

static void check_good_url(const UrlCase *c)
{
    char err[512] = "";
    Config *cfg = config_from_url(c->url, NULL, err, sizeof(err));
    const DbConf *db;

    if (!cfg)
        fail_msg("%s: %s", c->url, err);
    assert_null(cfg->path);
    assert_int_equal(cfg->ndbs, 1);
    db = config_find_db(cfg, "whatever");
    assert_ptr_equal(db, &cfg->dbs[0]);
    assert_string_equal(db->name, "*");
    assert_string_equal(db->host, c->host);
    assert_int_equal(db->port, c->port);
    if (c->user)
        assert_string_equal(db->user, c->user);
    else
        assert_null(db->user);
    if (c->dbname)
        assert_string_equal(db->dbname, c->dbname);
    else
        assert_null(db->dbname);
    assert_int_equal(db->pool_size, -1);
    if (c->password) {
        assert_string_equal(db->password, c->password);
        assert_int_equal(cfg->auth_type, AUTH_SCRAM);
        assert_int_equal(cfg->nusers, 1);
        assert_string_equal(cfg->users[0].name, c->user);
        assert_string_equal(config_find_user(cfg, c->user), c->password);
    } else {
        assert_null(db->password);
        assert_int_equal(cfg->auth_type, AUTH_TRUST);
        assert_int_equal(cfg->nusers, 0);
    }
    /* everything else keeps its default */
    assert_string_equal(cfg->listen_addr, "127.0.0.1");
    assert_int_equal(cfg->listen_port, 6432);
    assert_int_equal(cfg->pool_size, 5);
    assert_int_equal(cfg->pool_mode, POOL_TRANSACTION);
    config_free(cfg);
}

static void test_url_good(void **state)
{
    for (size_t i = 0; i < sizeof(good_urls) / sizeof(good_urls[0]); i++)
        check_good_url(&good_urls[i]);
}

static const struct {
    const char *url;
    const char *want;
} bad_urls[] = {
    {"mysql://u:p@h/db",
     "upstream URL must start with postgresql:// or postgres://, not \"mysql\""},
    {"http://h", "must start with postgresql://"},
    {"db.example.com:5432", "must start with postgresql://"},
    {"", "no upstream URL given"},
    {"postgresql://h:abc/db", "the port must be a number from 1 to 65535, not \"abc\""},
    {"postgresql://h:0", "not \"0\""},
    {"postgresql://h:70000/db", "not \"70000\""},
    {"postgresql://h:/db", "the port after ':' must be a number"},
    {"postgresql://[::1]:x/db", "not \"x\""},
    {"postgresql://u:%zz@h", "bad percent-encoding in the password"},
    {"postgresql://u%4@h", "bad percent-encoding in the user name"},
    {"postgresql://u:p@h/db%", "bad percent-encoding in the database name"},
    {"postgresql://u:p%00@h", "bad percent-encoding in the password"},
    {"postgresql://:pw@h", "has a password but no user name"},
    {"postgresql://h1,h2/db", "only one host is supported"},
    {"postgresql://::1/db", "put an IPv6 address in brackets"},
    {"postgresql://[::1/db", "an IPv6 address goes in brackets"},
    {"postgresql://[]/db", "an IPv6 address goes in brackets"},
    {"postgresql://[::1]x/db", "an IPv6 address goes in brackets"},
    {"postgresql://u:pa#ss@h/db", "# as %23"},
};

static void test_url_bad(void **state)
{
    char err[512];

    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
        Config *cfg;

        err[0] = '\0';
        cfg = config_from_url(bad_urls[i].url, NULL, err, sizeof(err));
        if (cfg) {
            config_free(cfg);
            fail_msg("%s: loaded, but must fail", bad_urls[i].url);
        }
        if (!strstr(err, bad_urls[i].want))
            fail_msg("%s: \"%s\" lacks \"%s\"", bad_urls[i].url, err, bad_urls[i].want);
    }
    assert_null(config_from_url(NULL, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "no upstream URL"));
}

/* A password must never appear in a message, even when the URL around it is wrong. */
static void test_url_error_hides_password(void **state)
{
    char err[512];

    assert_null(config_from_url("postgresql://u:hunter2@h:port/db", NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "port"));
    assert_null(strstr(err, "hunter2"));
    assert_null(config_from_url("postgresql://u:hunter2%zz@h/db", NULL, err, sizeof(err)));
    assert_null(strstr(err, "hunter2"));
}

static void test_url_listen(void **state)
{
    static const struct {
        const char *listen;
        const char *addr;
        int port;
    } good[] = {
        {NULL, "127.0.0.1", 6432},
        {"7000", "127.0.0.1", 7000},
        {"0.0.0.0:7000", "0.0.0.0", 7000},
        {"[::1]:7001", "::1", 7001},
        {"[::]", "::", 6432},
        {"*:6000", "*", 6000},
        {"localhost", "localhost", 6432},
    };
    static const struct {
        const char *listen;
        const char *want;
    } bad[] = {
        {"::1:6432", "put an IPv6 address in brackets, as in [::1]:6432"},
        {":6432", "listen address must be \"port\", \"host:port\" or \"[ipv6]:port\""},
        {"", "listen address must be"},
        {"[::1", "listen address must be"},
        {"[::1]6432", "listen address must be"},
        {"h:abc", "listen_port must be an integer from 1 to 65535, not \"abc\""},
        {"h:0", "not \"0\""},
        {"99999", "not \"99999\""},
        {"a,b:1", "listen_addr must be one IP address or host name"},
    };
    char err[512];
    Config *cfg;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        cfg = config_from_url("postgresql://db", good[i].listen, err, sizeof(err));
        if (!cfg)
            fail_msg("%s: %s", good[i].listen ? good[i].listen : "NULL", err);
        assert_string_equal(cfg->listen_addr, good[i].addr);
        assert_int_equal(cfg->listen_port, good[i].port);
        config_free(cfg);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        cfg = config_from_url("postgresql://db", bad[i].listen, err, sizeof(err));
        if (cfg) {
            config_free(cfg);
            fail_msg("%s: accepted, but must fail", bad[i].listen);
        }
        if (!strstr(err, bad[i].want))
            fail_msg("%s: \"%s\" lacks \"%s\"", bad[i].listen, err, bad[i].want);
    }
}

/* ---- config_item --------------------------------------------------------------------- */

static const struct {
    const char *name;
    const char *default_value;
    bool reloadable;
    const char *full_value; /* as config/full.ini has it */
} expected_items[NSETTINGS] = {
    {"listen_addr", "127.0.0.1", false, "*"},
    {"listen_port", "6432", false, "7432"},
    {"unix_socket_dir", "", false, "/tmp/pgc"},
    {"admin_addr", "127.0.0.1", false, "127.0.0.2"},
    {"admin_port", "6433", false, "7433"},
    {"admin_users", "", true, "admin, ops"},
    {"stats_users", "", true, "metrics"},
    {"pool_mode", "transaction", true, "session"},
    {"auth_type", "scram-sha-256", true, "md5"},
    {"auth_file", "", true, NULL /* resolved path, checked apart */},
    {"pool_size", "5", true, "7"},
    {"max_overflow", "10", true, "0"},
    {"pool_timeout", "30", true, "2.5"},
    {"pool_recycle", "-1", true, "3600"},
    {"pool_pre_ping", "off", true, "on"},
    {"pre_ping_idle", "1", true, "0.25"},
    {"max_client_conn", "10000", true, "500"},
    {"client_login_timeout", "60", true, "0"},
    {"client_write_timeout", "0", true, "1.5"},
    {"idle_transaction_timeout", "0", true, "120"},
    {"server_connect_timeout", "15", true, "0.5"},
    {"max_packet_size", "268435456", true, "1048576"},
    {"max_prepared_statements", "200", true, "50"},
    {"client_tls_sslmode", "disable", true, "require"},
    {"client_tls_cert_file", "", true, "/etc/pgc/server.crt"},
    {"client_tls_key_file", "", true, "/etc/pgc/server.key"},
    {"client_tls_min_version", "tlsv1.2", true, "tlsv1.3"},
    {"server_tls_sslmode", "prefer", true, "verify-full"},
    {"server_tls_ca_file", "", true, "/etc/pgc/ca.crt"},
    {"server_tls_cert_file", "", true, "/etc/pgc/client.crt"},
    {"server_tls_key_file", "", true, "/etc/pgc/client.key"},
    {"server_tls_min_version", "tlsv1.2", true, "tlsv1.3"},
    {"shutdown_timeout", "30", true, "5"},
    {"pidfile", "", false, "/run/pgcoalesce/pgcoalesce.pid"},
    {"log_level", "info", true, "debug"},
    {"logfile", "", true, "/var/log/pgcoalesce/pgcoalesce.log"},
    {"syslog", "off", true, "on"},
    {"syslog_ident", "pgcoalesce", true, "pgc-test"},
    {"n1_mode", "batch", true, "off"},
    {"n1_threshold", "5", true, "8"},
    {"n1_result_memory", "20000", true, "250"},
    {"n1_max_patterns", "1000", false, "40"},
    {"n1_batch_after", "2", true, "3"},
    {"n1_batch_max", "500", true, "100"},
    {"n1_prefetch_ttl", "0.1", true, "0.25"},
    {"shape_cache_size", "10000", false, "300"},
    {"cache_url", "", false, "redis://:pw@cache.internal:6380/2"},
    {"cache_connect_timeout", "1", true, "0.5"},
    {"cache_timeout", "0.005", true, "0.002"},
    {"cache_ttl", "300", true, "60"},
    {"cache_max_value", "65536", true, "8192"},
    {"cache_invalidation", "proxy", false, "replication"},
    {"cache_publication", "", false, "app_pub"},
    {"cache_namespace", "pgc", false, "pgc-test"},
};

static void test_config_item(void **state)
{
    char err[512] = "", path[PATH_MAX], users[PATH_MAX];
    Config *cfg = config_load(data_path(path, sizeof(path), "config/full.ini"), err, sizeof(err));
    ConfigItem item;
    int i;

    if (!cfg)
        fail_msg("%s", err);
    for (i = 0; config_item(cfg, i, &item); i++) {
        assert_true(i < NSETTINGS);
        assert_string_equal(item.name, expected_items[i].name);
        assert_string_equal(item.default_value, expected_items[i].default_value);
        assert_int_equal(item.reloadable, expected_items[i].reloadable);
        if (expected_items[i].full_value)
            assert_string_equal(item.value, expected_items[i].full_value);
        else
            assert_string_equal(item.value,
                                data_path(users, sizeof(users), "config/full_users.txt"));
    }
    assert_int_equal(i, NSETTINGS);
    assert_false(config_item(cfg, -1, &item));
    assert_false(config_item(cfg, NSETTINGS, &item));
    config_free(cfg);

    /* without a config: the defaults */
    for (i = 0; config_item(NULL, i, &item); i++)
        assert_string_equal(item.value, expected_items[i].default_value);
    assert_int_equal(i, NSETTINGS);
}

/* The defaults as config_item writes them are the values a default Config holds. */
static void test_config_item_defaults_match(void **state)
{
    char err[512] = "";
    Config *cfg = load_text(MINIMAL, err, sizeof(err));
    ConfigItem item;

    if (!cfg)
        fail_msg("%s", err);
    for (int i = 0; config_item(cfg, i, &item); i++) {
        if (strcmp(item.name, "auth_type") == 0)
            assert_string_equal(item.value, "trust");
        else
            assert_string_equal(item.value, item.default_value);
    }
    config_free(cfg);
}

/* Writing every config_item value back as a file gives the same values. */
static void test_config_item_round_trip(void **state)
{
    char err[512] = "", path[PATH_MAX], ini[4096], tmpl[] = "/tmp/pgc_conf_rt_XXXXXX";
    Config *a = config_load(data_path(path, sizeof(path), "config/full.ini"), err, sizeof(err));
    ConfigItem ia, ib;
    size_t n = 0;
    Config *b;
    FILE *fp;
    int fd;

    if (!a)
        fail_msg("%s", err);
    n += (size_t)snprintf(ini + n, sizeof(ini) - n, "[pgcoalesce]\n");
    for (int i = 0; config_item(a, i, &ia); i++)
        n += (size_t)snprintf(ini + n, sizeof(ini) - n, "%s = %s\n", ia.name, ia.value);
    n += (size_t)snprintf(ini + n, sizeof(ini) - n, "[databases]\n* = host=a\n");
    assert_true(n < sizeof(ini));
    fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    fp = fdopen(fd, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(ini, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
    b = config_load(tmpl, err, sizeof(err));
    unlink(tmpl);
    if (!b)
        fail_msg("%s\n%s", err, ini);
    for (int i = 0; config_item(a, i, &ia); i++) {
        assert_true(config_item(b, i, &ib));
        assert_string_equal(ia.value, ib.value);
    }
    config_free(a);
    config_free(b);
}

/* ---- reload: settings that take a restart keep their running values ------------------- */

static void test_carry_fixed(void **state)
{
    char err[512] = "", changed[256];
    Config *cur = load_text("[pgcoalesce]\nauth_type = trust\nlisten_port = 7000\n"
                            "admin_port = 7001\npidfile = /run/a.pid\npool_size = 3\n"
                            "[databases]\n* = host=h\n",
                            err, sizeof(err));
    Config *same = load_text("[pgcoalesce]\nauth_type = trust\nlisten_port = 7000\n"
                             "admin_port = 7001\npidfile = /run/a.pid\npool_size = 9\n"
                             "[databases]\n* = host=h\n",
                             err, sizeof(err));
    Config *next = load_text("[pgcoalesce]\nauth_type = trust\nlisten_port = 7100\n"
                             "admin_port = 7001\npidfile = /run/b.pid\npool_size = 4\n"
                             "[databases]\n* = host=h\n",
                             err, sizeof(err));

    if (!cur || !same || !next)
        fail_msg("%s", err);
    assert_int_equal(config_carry_fixed(same, cur, changed, sizeof(changed)), 0);
    assert_string_equal(changed, "");
    assert_int_equal(same->pool_size, 9);
    assert_int_equal(config_carry_fixed(next, cur, changed, sizeof(changed)), 2);
    assert_string_equal(changed, "listen_port, pidfile");
    assert_int_equal(next->listen_port, 7000);
    assert_string_equal(next->pidfile, "/run/a.pid");
    assert_int_equal(next->pool_size, 4); /* reloadable: the new value stays */
    config_free(cur);
    config_free(same);
    config_free(next);
}

/* ---- the example config and the docs ------------------------------------------------- */

static void test_example_config_loads(void **state)
{
    char err[512] = "", path[PATH_MAX];
    Config *cfg =
        config_load(data_path(path, sizeof(path), "../../conf/pgcoalesce.ini"), err, sizeof(err));
    const DbConf *app, *star;

    if (!cfg)
        fail_msg("%s", err);
    app = config_find_db(cfg, "app");
    star = config_find_db(cfg, "elsewhere");
    assert_non_null(app);
    assert_non_null(star);
    assert_string_equal(app->host, "127.0.0.1");
    assert_int_equal(app->port, 5432);
    assert_string_equal(app->dbname, "app");
    assert_string_equal(app->user, "app");
    assert_string_equal(app->password, "secret");
    assert_int_equal(app->pool_size, 20);
    assert_string_equal(star->name, "*");
    assert_int_equal(star->port, 5432);
    assert_int_equal(cfg->auth_type, AUTH_SCRAM);
    assert_non_null(strstr(config_find_user(cfg, "app"), "SCRAM-SHA-256$4096:"));
    assert_non_null(config_find_user(cfg, "reporting"));
    assert_string_equal(config_find_user(cfg, "admin"), "say \"hi\"");
    config_free(cfg);
}

/*
 * The comment block (lines since the last blank line) before line_start in
 * text, as a new string.
 */
static char *comment_block_before(const char *text, const char *line_start)
{
    const char *start = line_start;

    while (start > text) {
        const char *prev = start - 1; /* the '\n' ending the line before */
        const char *bol = prev;

        while (bol > text && bol[-1] != '\n')
            bol--;
        if (bol == prev) /* blank line */
            break;
        start = bol;
    }
    return strndup(start, (size_t)(line_start - start));
}

/* Every setting appears in the example with its default, its reload flag and a comment. */
static void test_example_documents_every_setting(void **state)
{
    char path[PATH_MAX], want[512];
    char *text = read_all(data_path(path, sizeof(path), "../../conf/pgcoalesce.ini"));
    ConfigItem item;
    int failures = 0;

    for (int i = 0; config_item(NULL, i, &item); i++) {
        const char *line;
        char *block;

        /* shown commented out with its default, or set for real */
        snprintf(want, sizeof(want), "\n;%s =%s%s\n", item.name, item.value[0] ? " " : "",
                 item.value);
        line = strstr(text, want);
        if (!line) {
            snprintf(want, sizeof(want), "\n%s = ", item.name);
            line = strstr(text, want);
        }
        if (!line) {
            print_error("example: no line for %s\n", item.name);
            failures++;
            continue;
        }
        block = comment_block_before(text, line + 1);
        snprintf(want, sizeof(want), "Default: %s", item.value[0] ? item.value : "empty");
        if (!strstr(block, want) ||
            !strstr(block, item.reloadable ? "Reload: yes" : "Reload: no")) {
            print_error("example: %s needs \"%s\" and \"Reload: %s\" in:\n%s\n", item.name, want,
                        item.reloadable ? "yes" : "no", block);
            failures++;
        }
        free(block);
    }
    free(text);
    assert_int_equal(failures, 0);
}

/* docs/configuration.md has one table row per setting with the right default and flag. */
static void test_docs_list_every_setting(void **state)
{
    char path[PATH_MAX], want[512];
    char *text = read_all(data_path(path, sizeof(path), "../../docs/configuration.md"));
    ConfigItem item;
    int failures = 0, rows = 0;

    for (int i = 0; config_item(NULL, i, &item); i++) {
        if (item.default_value[0])
            snprintf(want, sizeof(want), "\n| `%s` | `%s` | %s |", item.name, item.default_value,
                     item.reloadable ? "yes" : "no");
        else
            snprintf(want, sizeof(want), "\n| `%s` | (empty) | %s |", item.name,
                     item.reloadable ? "yes" : "no");
        if (!strstr(text, want)) {
            print_error("docs/configuration.md lacks the row \"%s\"\n", want + 1);
            failures++;
        }
        rows++;
    }
    free(text);
    assert_int_equal(rows, NSETTINGS);
    assert_int_equal(failures, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_long_line),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_directory_is_not_a_config),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_lenient_syntax),
        cmocka_unit_test(test_bool_words),
        cmocka_unit_test(test_auth_file_absolute),
        cmocka_unit_test(test_many_entries),
        cmocka_unit_test(test_find_db_precedence),
        cmocka_unit_test(test_url_good),
        cmocka_unit_test(test_url_bad),
        cmocka_unit_test(test_url_error_hides_password),
        cmocka_unit_test(test_url_listen),
        cmocka_unit_test(test_config_item),
        cmocka_unit_test(test_config_item_defaults_match),
        cmocka_unit_test(test_config_item_round_trip),
        cmocka_unit_test(test_carry_fixed),
        cmocka_unit_test(test_example_config_loads),
        cmocka_unit_test(test_example_documents_every_setting),
        cmocka_unit_test(test_docs_list_every_setting),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
