"""Compatibility matrix: node-postgres, Sequelize and Rails ActiveRecord, each
run once directly against PostgreSQL and once through pgcoalesce (transaction
mode, n1_mode left at its default, batch; clients log in with SCRAM), with
the same results.

The workloads are scripts under compat/ (one process per run, the DSN in
argv), each printing one canonical JSON document of everything it read:

  compat/node_pg.js       node-postgres (`pg` from npm), unnamed statements
                          and, with --named, named prepared statements
  compat/sequelize.js     Sequelize 6 on node-postgres
  compat/activerecord.rb  ActiveRecord 6.1 + ruby-pg (Debian's packages),
                          prepared statements on (the default) and off

Each covers CRUD, a transaction rolled back, relationships loaded lazily (an
N+1 loop: a child SELECT per parent row) and eagerly, and a unique violation
handled by the driver/ORM. The two JSON documents must be equal, and
pg_stat_statements (reset before each run) must show that the N+1 child
statement reached PostgreSQL fewer times through pgcoalesce, counting the
batched statement (`unnest(...)`), than directly: batching happened.
test_password_login_with_an_idle_server checks, with a hand-written client,
the login every driver pool's second connection does.

Dependencies: Node.js (>= 18) with npm, and the npm packages pinned in
compat/package.json / package-lock.json, which setUpClass installs with
`npm ci` when compat/node_modules is missing or does not match the lock file;
ruby with Debian's ruby-activerecord and ruby-pg (scripts/deps.sh installs
them). A missing dependency fails the tests that need it, saying what to
install; nothing is skipped.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import unittest

import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module

COMPAT_DIR = os.path.join(harness.HERE, "compat")
SCRIPT_TIMEOUT = 180
DEPS_HINT = "run `sudo bash scripts/deps.sh` from the repository root"


def _run(argv, cwd=COMPAT_DIR, timeout=SCRIPT_TIMEOUT, env=None):
    return subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, env=env)


def _tail(text, n=3000):
    text = text or ""
    return text if len(text) <= n else "...\n" + text[-n:]


def _ends(text, n=1500):
    """The start and the end of a long output (ruby puts the error first)."""
    text = text or ""
    return text if len(text) <= 2 * n else text[:n] + "\n...\n" + text[-n:]


# ---------------------------------------------------------------- dependencies


def _lock_versions(path):
    """{package path: version} of an npm lock file (package-lock.json or
    node_modules/.package-lock.json), or None when unreadable."""
    try:
        with open(path) as f:
            lock = json.load(f)
    except (OSError, ValueError):
        return None
    return {k: v.get("version") for k, v in lock.get("packages", {}).items()
            if k.startswith("node_modules/")}


def node_setup():
    """(problem or None, versions). Installs compat/node_modules with `npm ci`
    when it is missing or differs from package-lock.json."""
    node = shutil.which("node")
    if node is None:
        return ("Node.js is not installed (the node-postgres and Sequelize workloads need "
                "`node` >= 18 and `npm`): %s, or install Debian's nodejs and npm" % DEPS_HINT), {}
    r = _run([node, "--version"], timeout=30)
    m = re.match(r"v(\d+)\.", r.stdout.strip())
    if r.returncode != 0 or not m or int(m.group(1)) < 18:
        return ("Node.js %r is too old: the pinned node-postgres and Sequelize need >= 18"
                % r.stdout.strip()), {}
    versions = {"node": r.stdout.strip()}
    wanted = _lock_versions(os.path.join(COMPAT_DIR, "package-lock.json"))
    if wanted is None:
        return "tests/integration/compat/package-lock.json is missing or unreadable", versions
    have = _lock_versions(os.path.join(COMPAT_DIR, "node_modules", ".package-lock.json"))
    if have != wanted:
        npm = shutil.which("npm")
        if npm is None:
            return ("npm is not installed, so the npm packages pinned in "
                    "tests/integration/compat/package-lock.json (pg, sequelize) cannot be "
                    "installed: %s, or install Debian's npm" % DEPS_HINT), versions
        sys.stderr.write("test_compat: npm ci in %s\n" % COMPAT_DIR)
        try:
            r = _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], timeout=600)
        except subprocess.TimeoutExpired:
            return "`npm ci` in tests/integration/compat did not finish within 600 s", versions
        if r.returncode != 0:
            return ("`npm ci` in tests/integration/compat failed (exit %d); it needs the npm "
                    "registry. Its output:\n%s"
                    % (r.returncode, _tail(r.stdout + r.stderr))), versions
    for pkg in ("pg", "sequelize"):
        try:
            with open(os.path.join(COMPAT_DIR, "node_modules", pkg, "package.json")) as f:
                versions[pkg] = json.load(f)["version"]
        except (OSError, ValueError, KeyError):
            return ("npm package %s is not installed in tests/integration/compat/node_modules: "
                    "run `npm ci` there" % pkg), versions
    return None, versions


def ruby_setup():
    """(problem or None, versions) for the ActiveRecord workload."""
    ruby = shutil.which("ruby")
    if ruby is None:
        return ("ruby is not installed (the ActiveRecord workload needs Debian's "
                "ruby-activerecord and ruby-pg): %s, or apt-get install ruby-activerecord "
                "ruby-pg" % DEPS_HINT), {}
    r = _run([ruby, "-e", 'require "active_record"; require "pg"; '
              'puts RUBY_VERSION, ActiveRecord.version, PG::VERSION, PG.library_version'],
             timeout=60)
    if r.returncode != 0:
        return ("ruby cannot load active_record and pg: install Debian's ruby-activerecord "
                "and ruby-pg (%s). ruby said:\n%s" % (DEPS_HINT, _tail(r.stderr))), {}
    rb, ar, pg, libpq = r.stdout.split()
    return None, {"ruby": rb, "activerecord": ar, "ruby-pg": pg, "libpq": libpq}


# ---------------------------------------------------------------- comparison


differences = harness.differences


def statement_calls(pg, plain_re, batched_re):
    """(calls of the plain N+1 child statement, calls of pgcoalesce's batched
    form of it, the matching texts) from pg_stat_statements; texts are
    compared with runs of whitespace as one space."""
    plain = batched = 0
    texts = []
    for query, calls in pg.query("SELECT query, calls FROM pg_stat_statements"):
        q = " ".join(query.split())
        if "unnest" in q.lower() and re.search(batched_re, q):
            batched += calls
            texts.append((calls, q))
        elif re.search(plain_re, q):
            plain += calls
            texts.append((calls, q))
    return plain, batched, texts


# ---------------------------------------------------------------- tests


class CompatTest(harness.ProxyTestCase):
    # Transaction mode, n1_mode at its default (batch); fewer server
    # connections than the workloads' pools hold clients.
    proxy_settings = {"pool_mode": "transaction", "auth_type": "scram-sha-256",
                      "pool_size": 3, "max_overflow": 2}

    @classmethod
    def setUpClass(cls):
        # ... and the identity-map cache on (the matrix's rows run with it).
        cls.proxy_settings = dict(cls.proxy_settings, cache_url=harness.redis().url)
        super().setUpClass()
        cls.node_problem, cls.node_versions = node_setup()
        cls.ruby_problem, cls.ruby_versions = ruby_setup()
        sys.stderr.write("test_compat: %s\n" % json.dumps(
            dict(cls.node_versions, **cls.ruby_versions), sort_keys=True))

    def need(self, problem):
        if problem:
            self.fail("missing dependency: " + problem)

    def workload(self, argv, dsn, what):
        env = dict(os.environ, TZ="UTC", LC_ALL="C.UTF-8", NODE_NO_WARNINGS="1")
        try:
            r = _run(argv[:1] + [argv[1], dsn] + argv[2:], env=env)
        except subprocess.TimeoutExpired:
            self.fail("%s (%s) did not finish within %d s"
                      % (" ".join(argv), what, SCRIPT_TIMEOUT))
        if r.returncode != 0:
            self.fail("%s failed %s (exit %d):\n%s" % (" ".join(argv), what, r.returncode,
                                                       _ends(r.stderr + r.stdout)))
        try:
            return json.loads(r.stdout)
        except ValueError:
            self.fail("%s %s printed no JSON:\n%s" % (" ".join(argv), what, _tail(r.stdout)))

    def direct_and_proxied(self, argv, plain_re, batched_re, min_children):
        """Run argv (argv[1] is the script; the DSN goes after it) directly and
        through pgcoalesce; assert equal output and fewer child statements."""
        self.pg.execute("SELECT pg_stat_statements_reset()")
        direct = self.workload(argv, self.pg.dsn(), "directly against PostgreSQL")
        d_plain, d_batched, d_texts = statement_calls(self.pg, plain_re, batched_re)
        self.pg.execute("SELECT pg_stat_statements_reset()")
        proxied = self.workload(argv, self.proxy.dsn(), "through pgcoalesce")
        p_plain, p_batched, p_texts = statement_calls(self.pg, plain_re, batched_re)

        diff = differences(direct, proxied)
        self.assertFalse(diff, "%s: results through pgcoalesce differ from direct ones:\n  %s"
                         % (" ".join(argv), "\n  ".join(diff)))
        self.assertEqual(direct, proxied)

        detail = ("directly: %d plain child calls, %d batched; through pgcoalesce: %d plain, "
                  "%d batched; statements:\n  direct %r\n  proxied %r"
                  % (d_plain, d_batched, p_plain, p_batched, d_texts, p_texts))
        self.assertEqual(d_batched, 0, detail)
        self.assertGreaterEqual(d_plain, min_children,
                                "the N+1 loop did not run as expected; " + detail)
        self.assertGreaterEqual(p_batched, 1, "no batched child statement reached PostgreSQL "
                                "through pgcoalesce; " + detail)
        self.assertLess(p_plain + p_batched, d_plain,
                        "the N+1 child statement did not reach PostgreSQL fewer times through "
                        "pgcoalesce; " + detail)
        return direct

    def check_common(self, out, unique_keys):
        """What every workload must have seen directly (so the comparison means something)."""
        for k in unique_keys:
            v = out[k]
            code = v.get("code") or v.get("sqlstate")
            self.assertEqual(code, "23505", "%s: expected a unique violation, got %r" % (k, v))

    # -- node-postgres --

    NODE_PG_PLAIN = (r"^SELECT id, title, views, score, tags, meta, published, flag, payload, "
                     r"note FROM np_posts WHERE user_id = \$1 ORDER BY id$")
    NODE_PG_BATCHED = r"FROM np_posts WHERE user_id = "

    def node_pg(self, *flags):
        self.need(self.node_problem)
        out = self.direct_and_proxied(["node", "node_pg.js"] + list(flags), self.NODE_PG_PLAIN,
                                      self.NODE_PG_BATCHED, min_children=5 * 23)
        self.check_common(out, ["unique_autocommit", "unique_in_transaction",
                                "unique_under_savepoint"])
        self.assertEqual(out["aborted_transaction"]["code"], "25P02")
        self.assertEqual(out["rolled_back"], {"inside": "24", "after": "23"})
        self.assertEqual(len(out["lazy_autocommit"]), 23)

    def test_node_pg_unnamed(self):
        """node-postgres, parameterised queries as unnamed statements."""
        self.node_pg()

    def test_node_pg_named(self):
        """node-postgres, every parameterised query a named prepared statement."""
        self.node_pg("--named")

    # -- Sequelize --

    def test_sequelize(self):
        self.need(self.node_problem)
        out = self.direct_and_proxied(
            ["node", "sequelize.js"],
            r'^SELECT .* FROM "sq_posts" AS "Post" WHERE "Post"\."user_id" = \$1( ORDER BY .*)?$',
            r'FROM "sq_posts" AS "Post" WHERE "Post"\."user_id" = ', min_children=3 * 19)
        self.check_common(out, ["unique_autocommit", "unique_in_transaction", "unique_tag"])
        self.assertEqual(out["unique_autocommit"]["name"], "SequelizeUniqueConstraintError")
        self.assertEqual(out["nested"]["inner"]["code"], "23505")
        self.assertEqual(out["managed_error"], "roll me back")
        self.assertEqual(out["managed_inside"], out["managed_after"] + 1)
        self.assertEqual(out["unmanaged_after"], out["after_delete"][1])
        self.assertEqual(out["counter"], 60)

    # -- ActiveRecord --

    AR_PLAIN = (r'^SELECT "ar_posts"\.\* FROM "ar_posts" WHERE "ar_posts"\."user_id" = \$1 '
                r'ORDER BY "ar_posts"\."id" ASC$')
    AR_BATCHED = r'FROM "ar_posts" WHERE "ar_posts"\."user_id" = '

    def activerecord(self, *flags):
        self.need(self.ruby_problem)
        out = self.direct_and_proxied(["ruby", "activerecord.rb"] + list(flags), self.AR_PLAIN,
                                      self.AR_BATCHED, min_children=3 * 19)
        self.check_common(out, ["unique_autocommit", "unique_in_transaction",
                                "unique_under_savepoint"])
        self.assertEqual(out["unique_autocommit"]["class"], "ActiveRecord::RecordNotUnique")
        self.assertEqual(out["rollback"][0], out["rollback"][1] + 1)
        self.assertEqual(out["first_rolled_back"], 0)
        self.assertEqual(out["kept"], ["kept"])

    def test_activerecord_prepared(self):
        """ActiveRecord's default: named prepared statements (a1, a2, ...)."""
        self.activerecord()

    def test_activerecord_unprepared(self):
        """prepared_statements: false (values inline, unnamed statements)."""
        self.activerecord("--no-prepared")

    # -- the login every pooled driver does --

    def test_password_login_with_an_idle_server(self):
        """A client logging in with a password (SCRAM here, as every workload
        above does) while its pool already has an idle server connection:
        nothing after ReadyForQuery until it sends a query, and the query
        works. (The drivers' pools open their second, third... connection
        exactly so.)"""
        for i in range(3):
            with self.proxy.raw_login() as c:
                c.send(harness.query_message("SELECT %d" % i))
                got = []
                try:
                    while not got or got[-1][0] != "Z":
                        kind, body = c.read_message()
                        got.append((kind, harness.parse_error_fields(body)
                                    if kind in "EN" else body))
                except (EOFError, ConnectionResetError):
                    got.append(("closed", None))
                self.assertEqual([k for k, _ in got], ["T", "D", "C", "Z"],
                                 "login %d of app_scram with SCRAM, then Query 'SELECT %d': "
                                 "pgcoalesce answered %r" % (i + 1, i, got))


if __name__ == "__main__":
    unittest.main()
