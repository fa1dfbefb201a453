"""Isolation between the clients of one backend in transaction mode.

pool_size 1 (max_overflow 0): every client of the pool is served by the same
PostgreSQL backend (checked with pg_backend_pid()). Whatever one client
leaves in that backend's session must never reach the next client: a SET
(of a reported parameter, which the proxy re-sets per client, or of any
other, which makes the proxy reset the backend with DISCARD ALL once the
transaction ends), SET ROLE, set_config(), a temporary table, LISTEN, a
session advisory lock, an SQL PREPARE, a protocol-level prepared statement,
an open or an aborted transaction. Each test has client A do it, then
client B look for it on the same backend; most also check that ordinary
statements cost no reset (pgcoalesce_session_resets_total stays put).
"""

import unittest

import psycopg2

import adminlib
import harness
from adminlib import ADMIN_SETTINGS, ADMIN_USERS
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module

try:
    import psycopg  # psycopg 3: protocol-level prepared statements
except ImportError:  # pragma: no cover - Debian has python3-psycopg
    psycopg = None


class IsolationTest(harness.ProxyTestCase):
    proxy_settings = dict(ADMIN_SETTINGS, pool_mode="transaction", pool_size=1, max_overflow=0,
                          pool_timeout=1)
    users = ADMIN_USERS

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pg.execute("DROP ROLE IF EXISTS iso_other")
        cls.pg.execute("CREATE ROLE iso_other")
        cls.pg.execute("GRANT iso_other TO %s" % harness.DEFAULT_USER)
        cls.pg.execute("DROP TABLE IF EXISTS iso_t")
        cls.pg.execute("CREATE TABLE iso_t (id int PRIMARY KEY, v text)")
        cls.pg.execute("GRANT ALL ON iso_t TO PUBLIC")

    def setUp(self):
        super().setUp()
        self.pg.execute("TRUNCATE iso_t")
        self.a = self.client()
        self.b = self.client()
        self.assertEqual(self.one(self.a, "SELECT pg_backend_pid()"),
                         self.one(self.b, "SELECT pg_backend_pid()"),
                         "pool_size 1: both clients must share one backend")

    def client(self, autocommit=True):
        c = self.proxy.connect(autocommit=autocommit)
        self.addCleanup(c.close)
        return c

    @staticmethod
    def one(conn, sql, args=None):
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchone()[0] if cur.description else cur.statusmessage

    def resets(self):
        _, _, body = adminlib.http(self.proxy.admin_port, "/metrics")
        fams = adminlib.parse_prometheus(body.decode())
        return adminlib.sample(fams, "pgcoalesce_session_resets_total",
                               database=harness.DATABASE, user=harness.DEFAULT_USER) or 0

    def leaves_nothing(self, setup, probe, clean_value, a_value=None):
        """A runs setup (A sees a_value through probe in the same transaction
        when given); B, next on the backend, must see clean_value; the
        backend was reset once for it."""
        before = self.resets()
        self.assertEqual(self.one(self.b, probe), clean_value)
        if a_value is not None:
            with self.a:  # one transaction: the state is there while A holds the backend
                self.a.autocommit = False
                self.one(self.a, setup)
                self.assertEqual(self.one(self.a, probe), a_value)
            self.a.autocommit = True
        else:
            self.one(self.a, setup)
        self.assertEqual(self.one(self.b, probe), clean_value)
        self.assertEqual(self.one(self.a, "SELECT pg_backend_pid()"),
                         self.one(self.b, "SELECT pg_backend_pid()"))
        harness.wait_until(lambda: self.resets() == before + 1,
                           message="one DISCARD ALL for the state A left")

    def test_ordinary_statements_cost_no_reset(self):
        before = self.resets()
        for sql in ("SELECT 1", "INSERT INTO iso_t VALUES (1, 'x')", "UPDATE iso_t SET v = 'y'",
                    "SET TimeZone = 'Asia/Tokyo'", "SET application_name = 'iso'",
                    "SELECT pg_advisory_xact_lock(7)", "SHOW work_mem",
                    "SELECT 'set role x; create temp table' AS text_only"):
            self.one(self.a, sql)
        with self.a:
            self.a.autocommit = False
            self.one(self.a, "SET LOCAL work_mem = '64MB'")
            self.one(self.a, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        self.a.autocommit = True
        self.one(self.b, "SELECT 1")
        self.assertEqual(self.resets(), before)

    def test_reported_parameter(self):
        self.one(self.a, "SET TimeZone = 'Asia/Tokyo'")
        self.assertEqual(self.one(self.b, "SHOW TimeZone"), self.one(self.pg.connect(),
                                                                     "SHOW TimeZone"))
        self.assertEqual(self.one(self.a, "SHOW TimeZone"), "Asia/Tokyo")

    def test_search_path(self):
        self.leaves_nothing("SET search_path TO pg_catalog", "SHOW search_path",
                            '"$user", public', a_value="pg_catalog")

    def test_work_mem(self):
        self.leaves_nothing("SET work_mem = '77MB'", "SHOW work_mem", "4MB", a_value="77MB")

    def test_set_config(self):
        self.leaves_nothing("SELECT set_config('work_mem', '55MB', false)", "SHOW work_mem",
                            "4MB", a_value="55MB")

    def test_set_role(self):
        self.leaves_nothing("SET ROLE iso_other", "SELECT current_user", harness.DEFAULT_USER,
                            a_value="iso_other")

    def test_session_characteristics(self):
        self.leaves_nothing("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL "
                            "SERIALIZABLE", "SHOW default_transaction_isolation",
                            "read committed", a_value="serializable")

    def test_temp_table(self):
        self.leaves_nothing("CREATE TEMP TABLE iso_tmp (x int)",
                            "SELECT count(*) FROM pg_class WHERE relname = 'iso_tmp' "
                            "AND relpersistence = 't'", 0, a_value=1)

    def test_listen(self):
        self.leaves_nothing("LISTEN iso_chan", "SELECT count(*) FROM pg_listening_channels()", 0)

    def test_advisory_lock(self):
        self.leaves_nothing("SELECT pg_advisory_lock(4242)",
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND objid = 4242", 0, a_value=1)

    def test_sql_prepare(self):
        self.leaves_nothing("PREPARE iso_p AS SELECT 1",
                            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'iso_p'",
                            0, a_value=1)

    def test_in_a_multi_statement_query(self):
        before = self.resets()
        self.one(self.a, "SELECT 1; SET work_mem = '33MB'; SELECT 2")
        self.assertEqual(self.one(self.b, "SHOW work_mem"), "4MB")
        harness.wait_until(lambda: self.resets() == before + 1)

    @unittest.skipIf(psycopg is None, "python3-psycopg is not installed")
    def test_in_a_prepared_statement(self):
        """A protocol-level prepared SET: every execution resets, not just the first."""
        before = self.resets()
        with psycopg.connect(self.proxy.dsn(), autocommit=True, prepare_threshold=0) as a3:
            for i in range(2):
                a3.execute("SELECT set_config('work_mem', %s, false)", ("%dMB" % (20 + i),))
                self.assertEqual(self.one(self.b, "SHOW work_mem"), "4MB")
        # one per execution at least (psycopg 3 prepares in a Sync of its own: one more)
        self.assertGreaterEqual(self.resets(), before + 2)

    @unittest.skipIf(psycopg is None, "python3-psycopg is not installed")
    def test_protocol_prepared_statement(self):
        with psycopg.connect(self.proxy.dsn(), autocommit=True, prepare_threshold=0) as a3:
            a3.execute("SELECT %s::int + 1", (1,))
            a3.execute("SELECT %s::int + 1", (2,))
            names = [r[0] for r in a3.execute("SELECT name FROM pg_prepared_statements")]
            self.assertTrue(names, "psycopg 3 prepared nothing server-side")
        # B sees the proxy's own pgc_N names at most, never the client's
        with self.b.cursor() as cur:
            cur.execute("SELECT name FROM pg_prepared_statements")
            seen = [r[0] for r in cur.fetchall()]
        self.assertTrue(all(n.startswith("pgc_") for n in seen), seen)
        with self.b.cursor() as cur:
            with self.assertRaises(psycopg2.Error) as ctx:
                cur.execute("EXECUTE _pg3_0")
            self.assertEqual(ctx.exception.pgcode, "26000")

    def test_open_transaction(self):
        """B waits for the backend (pool_timeout 1 s: 53300) and never sees A's
        uncommitted row; after A commits, B sees it."""
        a = self.client(autocommit=False)
        self.one(a, "INSERT INTO iso_t VALUES (10, 'uncommitted')")
        with self.assertRaises(psycopg2.Error) as ctx:
            self.one(self.b, "SELECT count(*) FROM iso_t WHERE id = 10")
        self.assertEqual(ctx.exception.pgcode, "53300")
        a.commit()
        self.assertEqual(self.one(self.b, "SELECT count(*) FROM iso_t WHERE id = 10"), 1)

    def test_aborted_transaction(self):
        """A's failed transaction keeps the backend until A rolls back; B then
        runs normally (never 25P02)."""
        a = self.client(autocommit=False)
        with self.assertRaises(psycopg2.Error):
            self.one(a, "SELECT 1 / 0")
        with self.assertRaises(psycopg2.Error) as ctx:
            self.one(self.b, "SELECT 1")
        self.assertEqual(ctx.exception.pgcode, "53300")
        a.rollback()
        self.assertEqual(self.one(self.b, "SELECT 41 + 1"), 42)

    def test_client_gone_mid_transaction(self):
        """A leaves in the middle of a transaction with a temp table: B gets a
        clean backend (rolled back, nothing of A's left)."""
        a = self.client(autocommit=False)
        self.one(a, "CREATE TEMP TABLE iso_gone (x int)")
        self.one(a, "INSERT INTO iso_t VALUES (11, 'never')")
        a.close()
        self.assertEqual(self.one(self.b, "SELECT count(*) FROM iso_t WHERE id = 11"), 0)
        self.assertEqual(self.one(self.b, "SELECT count(*) FROM pg_class WHERE relname = "
                                          "'iso_gone' AND relpersistence = 't'"), 0)


if __name__ == "__main__":
    unittest.main()
