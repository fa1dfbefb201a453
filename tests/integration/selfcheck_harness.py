"""Run by hand to check the harness itself, without pgcoalesce:

    /usr/bin/python3 tests/integration/selfcheck_harness.py

Starts PostgreSQL and Redis, checks the roles, server-side auth methods, the
raw protocol client (against PostgreSQL directly) and that everything is
stopped and removed afterwards.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import setUpModule, tearDownModule  # noqa: E402,F401


class HarnessSelfCheck(harness.PgTestCase):
    def test_roles_log_in_directly_with_their_methods(self):
        import psycopg2
        for user, pw in harness.USERS.items():
            c = psycopg2.connect(self.pg.dsn(user, pw))
            with c.cursor() as cur:
                cur.execute("SELECT current_user")
                self.assertEqual(cur.fetchone()[0], user)
            c.close()
        self.assertTrue(self.pg.rolpassword("app_scram").startswith("SCRAM-SHA-256$"))
        self.assertTrue(self.pg.rolpassword("app_md5").startswith("md5"))
        with self.assertRaises(psycopg2.OperationalError):
            psycopg2.connect(self.pg.dsn("app_scram", "wrong"))
        with self.assertRaises(psycopg2.OperationalError):
            psycopg2.connect(self.pg.dsn("app_md5", "wrong"))

    def test_raw_client_against_postgres(self):
        for user, pw, code in (("app_scram", "scram_pw", 10), ("app_md5", "md5_pw", 5),
                               ("app_trust", "", 0)):
            c = harness.RawConn(self.pg.port)
            self.assertEqual(c.login(user, "app", pw), "I")
            self.assertEqual(c.auth_requests[0], code)
            r = c.query("SELECT 1 AS a; SELECT NULL::text AS b, 'x' AS c")
            self.assertEqual([s["rows"] for s in r.sets], [[["1"]], [[None, "x"]]])
            self.assertEqual(r.status, "I")
            r = c.query("SELECT 1/0")
            self.assertEqual(r.errors[0]["C"], "22012")
            c.send(harness.terminate_message())
            c.read_until_closed()
        c = harness.RawConn(self.pg.port)
        c.send(harness.ssl_request())
        self.assertEqual(c.recv_exact(1), b"N")
        self.assertEqual(c.login("app_trust"), "I")
        c.close()
        c = harness.RawConn(self.pg.port)
        with self.assertRaises(harness.ServerError) as cm:
            c.login("app_scram", "app", "wrong")
        self.assertEqual(cm.exception.sqlstate, "28P01")

    def test_counts_and_redis(self):
        import psycopg2
        conns = [psycopg2.connect(self.pg.dsn("app_trust")) for _ in range(3)]
        self.assertEqual(self.pg.server_count("app_trust"), 3)
        for c in conns:
            c.close()
        self.pg.wait_no_backends(("app_trust",))
        r = harness.redis()
        self.assertEqual(r.command("SET", "k", "v"), "OK")
        self.assertEqual(r.command("GET", "k"), b"v")
        self.assertTrue(os.path.exists(r.socket_path))


if __name__ == "__main__":
    prog = unittest.main(exit=False, verbosity=2)
    pg_dirs = [d for d in os.listdir("/tmp") if d.startswith(("pgc-pg-", "pgc-redis-"))]
    print("leftover temp dirs (other runs may own some):", pg_dirs)
    sys.exit(0 if prog.result.wasSuccessful() else 1)
