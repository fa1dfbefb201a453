/*
 * Fuzz target: the config file loader (conf/): inih's reading of the file
 * as config_load drives it, every [pgcoalesce] setting's parser, the
 * [databases] lines, and the auth_file it names.
 *
 * There is no string-based loader, so the input is written to files in a
 * private temporary directory: the config file, and after FUZZ_SEP the
 * auth_file "users.txt" beside it. Inputs naming paths outside that
 * directory (/dev/zero would be read for ever) are skipped. Checks: a
 * loaded config answers every SHOW CONFIG row, its lookups work, and
 * loading the same file again and carrying the fixed settings over
 * reports no change.
 */
#include "tests/fuzz/fuzz.h"

#include <unistd.h>

#include "conf/config.h"

static char dir[64], ini_path[96], users_path[96];

static void cleanup(void)
{
    unlink(ini_path);
    unlink(users_path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    snprintf(dir, sizeof(dir), "%s/pgc-fuzz-config-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir))
        abort();
    snprintf(ini_path, sizeof(ini_path), "%s/pgcoalesce.ini", dir);
    snprintf(users_path, sizeof(users_path), "%s/users.txt", dir);
    atexit(cleanup);
    return 0;
}

static void write_file(const char *path, const uint8_t *p, size_t n)
{
    FILE *fp = fopen(path, "wb");

    if (!fp || fwrite(p, 1, n, fp) != n || fclose(fp) != 0)
        abort();
}

static void check_config(const Config *cfg)
{
    ConfigItem item;
    Config *again;
    char changed[512], err[1024];
    int i;

    for (i = 0; config_item(cfg, i, &item); i++)
        FUZZ_CHECK(item.name && memchr(item.value, 0, sizeof(item.value)));
    FUZZ_CHECK(i > 10);
    for (int d = 0; d < cfg->ndbs; d++) {
        const DbConf *db = &cfg->dbs[d];
        FUZZ_CHECK(db->name && db->host);
        FUZZ_CHECK(config_find_db(cfg, db->name) != NULL);
        FUZZ_CHECK(dbconf_pool_size(cfg, db) >= 0 && dbconf_max_overflow(cfg, db) >= 0);
        (void)dbconf_pool_mode(cfg, db);
    }
    for (int u = 0; u < cfg->nusers; u++)
        FUZZ_CHECK(config_find_user(cfg, cfg->users[u].name) != NULL);
    again = config_load(ini_path, err, sizeof(err));
    FUZZ_CHECK(again != NULL);
    FUZZ_CHECK(config_carry_fixed(again, cfg, changed, sizeof(changed)) == 0);
    config_free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const outside[] = {"/dev", "/proc", "/sys", "/run", ".."};
    FuzzPart parts[2];
    char err[1024];
    Config *cfg;
    int n = fuzz_split(data, size, parts, 2);

    for (size_t i = 0; i < sizeof(outside) / sizeof(outside[0]); i++)
        if (memmem(parts[0].p, parts[0].n, outside[i], strlen(outside[i])))
            return 0;
    write_file(ini_path, parts[0].p, parts[0].n);
    if (n > 1)
        write_file(users_path, parts[1].p, parts[1].n);
    else
        unlink(users_path);
    err[0] = '\0';
    cfg = config_load(ini_path, err, sizeof(err));
    if (cfg) {
        check_config(cfg);
        config_free(cfg);
    } else {
        FUZZ_CHECK(err[0] != '\0' && memchr(err, 0, sizeof(err)));
    }
    return 0;
}
