/*
 * Reload: read the config file again and apply it to the running worker
 * without dropping a client. A file with an error changes nothing. Settings
 * that need a restart keep their running values (and say so); TLS files are
 * read again; pools take their new sizes, mode and upstream target;
 * everything looked up through w->cfg (timeouts, auth_type, the auth_file's
 * users) applies at once.
 */
#include "daemon/log.h"
#include "daemon/ops.h"
#include "daemon/orm_feed.h"

#include <stdlib.h>
#include <string.h>

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Replace *field by a copy of value; false (field untouched) when out of memory. */
static bool set_str(char **field, const char *value)
{
    char *copy = NULL;

    if (value && !(copy = strdup(value)))
        return false;
    free(*field);
    *field = copy;
    return true;
}

/* Close idle servers beyond pool_size now; busy ones close when given back. */
static void reload_trim_pool(Pool *p)
{
    ListNode *n;

    while (p->idle_servers.count > p->pool_size && (n = list_first(&p->idle_servers)) != NULL)
        server_close(list_entry(n, Server), "pool_size lowered by a reload");
}

/*
 * The pool's copies of its settings, as pool_new takes them, from the new
 * config. A changed upstream target (host, port, dbname, user, password)
 * retires the existing server connections as they become idle.
 */
static void reload_apply_pool(Pool *p, const Config *cfg)
{
    const DbConf *dbc = config_find_db(cfg, p->db_name);
    const char *password, *dbname, *user;
    int port;
    bool moved;

    if (!dbc) {
        log_warning("database \"%s\" is no longer in [databases]: its connected clients keep "
                    "their pool, new logins are refused",
                    p->db_name);
        return;
    }
    password = dbc->password;
    if (!dbc->user && !password)
        password = config_find_user(cfg, p->user_name);
    dbname = dbc->dbname ? dbc->dbname : p->db_name;
    user = dbc->user ? dbc->user : p->user_name;
    port = dbc->port > 0 ? dbc->port : 5432;
    moved = !same_str(p->host, dbc->host) || p->port != port || !same_str(p->dbname, dbname) ||
            !same_str(p->server_user, user) || !same_str(p->server_password, password);
    if (moved) {
        if (!set_str(&p->host, dbc->host) || !set_str(&p->dbname, dbname) ||
            !set_str(&p->server_user, user) || !set_str(&p->server_password, password)) {
            log_error("out of memory applying a reload to pool %s/%s", p->db_name, p->user_name);
            return;
        }
        p->port = port;
        log_info("pool %s/%s: upstream changed to %s:%d/%s as %s; reconnecting as servers "
                 "become idle",
                 p->db_name, p->user_name, p->host, p->port, p->dbname, p->server_user);
        ops_reconnect_pool(p, "upstream changed by a reload");
    }
    p->pool_size = dbconf_pool_size(cfg, dbc);
    p->max_overflow = dbconf_max_overflow(cfg, dbc);
    p->mode = dbconf_pool_mode(cfg, dbc);
    reload_trim_pool(p);
}

/* Apply what the logging settings say; false with err set. */
static bool reload_logging(const Ops *ops, const Config *cfg, char *err, size_t errlen)
{
    if (!log_setup(cfg->logfile, cfg->syslog, cfg->syslog_ident, err, errlen))
        return false;
    log_level = cfg->log_level;
    return true;
}

bool ops_reload(Ops *ops, char *err, size_t errlen)
{
    Worker *w = ops->w;
    Config *next, *cur = (Config *)w->cfg;
    char fixed[512];
    int nfixed;

    notify_reloading();
    if (!ops->config_path) {
        snprintf(err, errlen, "nothing to reload: started with --upstream, not a config file");
        goto out_fail;
    }
    next = config_load(ops->config_path, err, errlen);
    if (!next)
        goto out_fail;
    nfixed = config_carry_fixed(next, cur, fixed, sizeof(fixed));
    if (nfixed < 0) {
        snprintf(err, errlen, "out of memory");
        config_free(next);
        goto out_fail;
    }
    /* TLS certificates and keys are read again; new connections use them. */
    if (!worker_load_tls(w, next, err, errlen) || !reload_logging(ops, next, err, errlen)) {
        config_free(next);
        goto out_fail;
    }
    if (nfixed > 0)
        log_warning("reload: %s changed in %s but take%s a restart; still running with the old "
                    "value%s",
                    fixed, ops->config_path, nfixed == 1 ? "s" : "", nfixed == 1 ? "" : "s");
    w->cfg = next;
    orm_worker_configure(w); /* n1_threshold, n1_result_memory */
    for (ListNode *n = list_first(&w->pools); n; n = list_next(&w->pools, n))
        reload_apply_pool(list_entry(n, Pool), next);
    /* Kept for now: the running callback may still hold cur. The one
     * replaced before it is certainly unused by now. */
    config_free(ops->retired);
    ops->retired = cur;
    ops->reloads++;
    log_info("reloaded %s", ops->config_path);
    notify_ready(ops);
    return true;

out_fail:
    ops->reload_failures++;
    log_error("reload failed, keeping the running configuration: %s", err);
    notify_ready(ops);
    return false;
}
