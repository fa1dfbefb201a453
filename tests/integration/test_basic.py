"""Queries through the proxy in both pool modes: simple and extended protocol,
errors, COPY, notices, concurrency, and the startup-phase special requests."""

import decimal
import hashlib
import io
import socket
import tempfile
import unittest

import psycopg2
import psycopg2.errors

import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module

try:
    import psycopg
    import psycopg.errors
except ImportError:
    psycopg = None


class BasicCases:
    """The tests; subclasses choose the pool mode."""

    def connect(self, **kw):
        c = self.proxy.connect(**kw)
        self.addCleanup(c.close)
        return c

    def connect3(self, **kw):
        c = self.proxy.connect3(**kw)
        self.addCleanup(c.close)
        return c

    def make_table(self, cols="id int PRIMARY KEY, v text"):
        name = self.table_name()
        self.pg.execute("DROP TABLE IF EXISTS %s" % name)
        self.pg.execute("CREATE TABLE %s (%s)" % (name, cols))
        self.pg.execute("GRANT ALL ON %s TO PUBLIC" % name)
        return name

    # -- simple protocol --

    def test_simple_query(self):
        c = self.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1, current_user, current_database(), 'h\u00e9llo'::text, NULL,"
                        " 1.5::numeric, ARRAY[1,2]")
            self.assertEqual(cur.fetchone(), (1, "app_scram", "app", "h\u00e9llo", None,
                                              decimal.Decimal("1.5"), [1, 2]))
            cur.execute("SELECT g FROM generate_series(1, 1000) g")
            self.assertEqual([r[0] for r in cur.fetchall()], list(range(1, 1001)))

    def test_multi_statement_simple_query(self):
        with self.proxy.raw_login() as c:
            r = c.query("SELECT 1 AS a; SELECT 'two' AS b, NULL AS c; SELECT 3 AS d")
            self.assertEqual(r.errors, [])
            self.assertEqual([s["columns"] for s in r.sets], [["a"], ["b", "c"], ["d"]])
            self.assertEqual([s["rows"] for s in r.sets], [[["1"]], [["two", None]], [["3"]]])
            self.assertEqual([s["tag"] for s in r.sets], ["SELECT 1"] * 3)
            self.assertEqual(r.status, "I")
            # An error stops the rest of the string; the connection goes on.
            r = c.query("SELECT 1; SELECT 1/0; SELECT 3")
            self.assertEqual([s["rows"] for s in r.sets], [[["1"]]])
            self.assertEqual([e["C"] for e in r.errors], ["22012"])
            self.assertEqual(r.status, "I")
            r = c.query("BEGIN; SELECT 42")
            self.assertEqual(r.sets[-1]["rows"], [["42"]])
            self.assertEqual(r.status, "T")
            r = c.query("COMMIT")
            self.assertEqual(r.status, "I")

    def test_error_in_transaction_then_rollback(self):
        t = self.make_table()
        c = self.connect()
        cur = c.cursor()
        cur.execute("INSERT INTO %s VALUES (1, 'a')" % t)
        with self.assertRaises(psycopg2.errors.DivisionByZero):
            cur.execute("SELECT 1/0")
        with self.assertRaises(psycopg2.errors.InFailedSqlTransaction):
            cur.execute("SELECT 1")
        c.rollback()
        self.assertEqual(c.get_transaction_status(), psycopg2.extensions.TRANSACTION_STATUS_IDLE)
        cur.execute("SELECT count(*) FROM %s" % t)
        self.assertEqual(cur.fetchone()[0], 0)
        c.commit()
        self.assertEqual(self.pg.query("SELECT count(*) FROM %s" % t)[0][0], 0)
        cur.execute("INSERT INTO %s VALUES (2, 'b')" % t)
        c.commit()
        self.assertEqual(self.pg.query("SELECT id FROM %s" % t), [(2,)])

    def test_copy_in_and_out(self):
        t = self.make_table()
        rows = ["%d,value %d" % (i, i) for i in range(1, 5001)]
        c = self.connect()
        cur = c.cursor()
        cur.copy_expert("COPY %s FROM STDIN WITH (FORMAT csv)" % t, io.StringIO("\n".join(rows) + "\n"))
        c.commit()
        self.assertEqual(self.pg.query("SELECT count(*), sum(id) FROM %s" % t)[0],
                         (5000, 5000 * 5001 // 2))
        out = io.StringIO()
        cur.copy_expert("COPY (SELECT * FROM %s ORDER BY id) TO STDOUT WITH (FORMAT csv)" % t, out)
        c.commit()
        self.assertEqual(out.getvalue().splitlines(), rows)
        # A COPY that fails half way leaves nothing behind and the connection usable.
        with self.assertRaises(psycopg2.errors.InvalidTextRepresentation):
            cur.copy_expert("COPY %s FROM STDIN WITH (FORMAT csv)" % t,
                            io.StringIO("6000,x\nnot-a-number,y\n"))
        c.rollback()
        cur.execute("SELECT count(*) FROM %s" % t)
        self.assertEqual(cur.fetchone()[0], 5000)
        c.commit()

    def test_notice_reaches_client(self):
        c = self.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        self.assertTrue(any("hello 42" in n for n in c.notices), c.notices)
        with self.proxy.raw_login() as r:
            res = r.query("DO $$ BEGIN RAISE NOTICE 'raw %', 7; END $$")
            self.assertEqual([n.get("M") for n in res.notices], ["raw 7"])
            self.assertEqual(res.sets[0]["tag"], "DO")

    # -- extended protocol (psycopg 3, unnamed statements only) --

    def test_extended_protocol_parameters(self):
        c = self.connect3(autocommit=True)
        cur = c.cursor()
        cur.execute("SELECT %s::int + %s::int, %s::text, %s::text, %s::bool",
                    (1, 2, "it's", None, True))
        self.assertEqual(cur.fetchone(), (3, "it's", None, True))
        for i in range(20):  # the same text again and again, still unnamed
            cur.execute("SELECT %s::int * 2", (i,))
            self.assertEqual(cur.fetchone()[0], i * 2)
        with self.assertRaises(psycopg.errors.DivisionByZero):
            cur.execute("SELECT 1 / %s::int", (0,))
        cur.execute("SELECT %s::text || 'x'", ("after error ",))
        self.assertEqual(cur.fetchone()[0], "after error x")

    def test_extended_protocol_many_rows(self):
        c = self.connect3(autocommit=True)
        cur = c.cursor()
        n = 50000
        cur.execute("SELECT g, md5(g::text) FROM generate_series(1, %s) g", (n,))
        rows = cur.fetchall()
        self.assertEqual(len(rows), n)
        for i in (0, 1, 12345, n - 1):
            self.assertEqual(rows[i], (i + 1, hashlib.md5(str(i + 1).encode()).hexdigest()))

    def test_extended_protocol_binary(self):
        c = self.connect3(autocommit=True)
        cur = c.cursor(binary=True)
        blob = bytes(range(256)) * 40
        cur.execute("SELECT %b::int8, %b::float8, %b::bytea, %b::numeric, %b::text[]",
                    (2 ** 40 + 3, 1.5, blob, decimal.Decimal("12.25"), ["a", None, "c"]))
        self.assertEqual(cur.fetchone(), (2 ** 40 + 3, 1.5, blob, decimal.Decimal("12.25"),
                                          ["a", None, "c"]))
        cur.execute("SELECT g::int4, repeat('x', g)::bytea FROM generate_series(1, 300) g")
        rows = cur.fetchall()
        self.assertEqual(rows[-1], (300, b"x" * 300))

    def test_extended_protocol_transaction(self):
        t = self.make_table()
        c = self.connect3()
        with c.cursor() as cur:
            cur.executemany("INSERT INTO %s VALUES (%%s, %%s)" % t,
                            [(i, "v%d" % i) for i in range(200)])
        self.assertEqual(self.pg.query("SELECT count(*) FROM %s" % t)[0][0], 0)  # not committed
        c.commit()
        self.assertEqual(self.pg.query("SELECT count(*) FROM %s" % t)[0][0], 200)
        with c.cursor() as cur:
            cur.execute("DELETE FROM %s WHERE id < %%s" % t, (100,))
            with self.assertRaises(psycopg.errors.UniqueViolation):
                cur.execute("INSERT INTO %s VALUES (%%s, 'dup')" % t, (150,))
        c.rollback()
        self.assertEqual(self.pg.query("SELECT count(*) FROM %s" % t)[0][0], 200)

    def test_extended_protocol_pipeline(self):
        """psycopg 3 pipeline mode: many Parse/Bind/Execute with several Syncs in flight."""
        def client(i):
            with self.proxy.connect3(autocommit=True) as c:
                curs = []
                with c.pipeline():
                    for j in range(50):
                        cur = c.cursor()
                        cur.execute("SELECT %s::int * 1000 + %s::int", (i, j))
                        curs.append(cur)
                return [cur.fetchone()[0] for cur in curs]

        results = harness.run_threads(client, 4)
        self.assertEqual(results, [[i * 1000 + j for j in range(50)] for i in range(4)])

    # -- concurrency --

    def test_many_concurrent_clients(self):
        def client(i):
            out = []
            c = self.proxy.connect()
            try:
                for j in range(10):
                    with c.cursor() as cur:
                        cur.execute("SELECT %s * 1000 + %s, current_user", (i, j))
                        out.append(cur.fetchone())
                    c.commit()
            finally:
                c.close()
            return out

        n = 20
        results = harness.run_threads(client, n)
        self.assertEqual(results, [[(i * 1000 + j, "app_scram") for j in range(10)]
                                   for i in range(n)])
        self.assertLessEqual(self.pg.server_count(), 2)

    # -- startup phase --

    def test_ssl_request_answered_n(self):
        with self.proxy.raw() as c:
            c.send(harness.ssl_request())
            self.assertEqual(c.recv_exact(1), b"N")
            self.assertEqual(c.login("app_scram", "app", "scram_pw"), "I")
            self.assertEqual(c.query("SELECT 7").sets[0]["rows"], [["7"]])

    def test_gssenc_request_answered_n(self):
        with self.proxy.raw() as c:
            c.send(harness.gssenc_request())
            self.assertEqual(c.recv_exact(1), b"N")
            self.assertEqual(c.login("app_scram", "app", "scram_pw"), "I")
            self.assertEqual(c.query("SELECT 8").sets[0]["rows"], [["8"]])

    def test_protocol_2_rejected(self):
        with self.proxy.raw() as c:
            c.send(harness.startup_message({"user": "app_scram", "database": "app"},
                                           version=2 << 16))
            c.sock.settimeout(10)
            data = b""
            try:
                while True:
                    chunk = c.sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                pass
            except socket.timeout:
                self.fail("connection left open after a protocol 2.0 startup; got %r" % data)
            self.assertEqual(data[:1], b"E", "expected an error, got %r" % data)
        # and the proxy still serves others
        with self.proxy.raw_login() as c:
            self.assertEqual(c.query("SELECT 1").status, "I")

    def test_unknown_database_error_names_it(self):
        msg = None
        try:
            c = self.proxy.connect(dbname="nosuchdb_basic")
            try:
                c.cursor().execute("SELECT 1")
            finally:
                c.close()
        except psycopg2.Error as e:
            msg = str(e)
        self.assertIsNotNone(msg, "a client reached a database that does not exist")
        self.assertIn("nosuchdb_basic", msg)
        c = self.connect(autocommit=True)
        with c.cursor() as cur:  # the proxy goes on for others
            cur.execute("SELECT 1")
            self.assertEqual(cur.fetchone(), (1,))


class TransactionModeTest(BasicCases, harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0}


class SessionModeTest(BasicCases, harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "session", "pool_size": 2, "max_overflow": 0}


class NoWildcardTest(harness.ProxyTestCase):
    """Only `app` is configured: other names are refused by the proxy itself."""

    @classmethod
    def setUpClass(cls):
        cls.databases = {"app": "host=127.0.0.1 port=%d dbname=app" % harness.postgres().port}
        super().setUpClass()

    def test_unconfigured_database_refused_by_name(self):
        with self.assertRaises(psycopg2.OperationalError) as cm:
            self.proxy.connect(dbname="not_configured_db").close()
        self.assertIn("not_configured_db", str(cm.exception))
        c = self.proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT current_database()")
            self.assertEqual(cur.fetchone()[0], "app")
        c.close()


class UnixSocketTest(harness.ProxyTestCase):
    """unix_socket_dir: the proxy also listens on <dir>/.s.PGSQL.<listen_port>."""

    @classmethod
    def setUpClass(cls):
        cls.sockdir = tempfile.mkdtemp(prefix="pgc-sock-")
        cls.proxy_settings = {"unix_socket_dir": cls.sockdir}
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            harness._rmtree(cls.sockdir)

    def test_connect_over_unix_socket(self):
        c = psycopg2.connect(host=self.sockdir, port=self.proxy.port, user="app_scram",
                             password="scram_pw", dbname="app", connect_timeout=30)
        try:
            with c.cursor() as cur:
                cur.execute("SELECT current_user, inet_client_addr() IS NOT NULL")
                # upstream the proxy still connects over TCP to 127.0.0.1
                self.assertEqual(cur.fetchone(), ("app_scram", True))
        finally:
            c.close()


if __name__ == "__main__":
    unittest.main()
