"""The quick start: pgcoalesce --upstream URL [--listen host:port], no config file."""

import socket
import unittest

import psycopg2

import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module


class QuickStartCase(harness.PgTestCase):
    def start(self, url):
        self.proxy = harness.Proxy(self.pg)
        self.proxy.args = ["--upstream", url, "--listen", "127.0.0.1:%d" % self.proxy.port]
        self.proxy.start()
        self.addCleanup(self.proxy.cleanup)
        self.addCleanup(self.proxy.check_stopped_cleanly)

    def query(self, user, password):
        c = psycopg2.connect(host="127.0.0.1", port=self.proxy.port, user=user,
                             password=password, dbname="app", connect_timeout=30)
        try:
            with c.cursor() as cur:
                cur.execute("SELECT current_user, current_database()")
                return cur.fetchone()
        finally:
            c.close()


class QuickStartPasswordTest(QuickStartCase):
    def test_password_url(self):
        self.start("postgresql://app_scram:scram_pw@127.0.0.1:%d/app" % self.pg.port)
        self.assertEqual(self.query("app_scram", "scram_pw"), ("app_scram", "app"))
        with self.proxy.raw() as c:  # clients prove the password with SCRAM
            c.login("app_scram", "app", "scram_pw")
            self.assertEqual(c.auth_requests[0], 10)
        with self.proxy.raw() as c:
            with self.assertRaises(harness.ServerError) as cm:
                c.login("app_scram", "app", "wrong_pw")
            self.assertEqual(cm.exception.sqlstate, "28P01")
        with self.assertRaises(psycopg2.OperationalError):
            self.query("app_scram", "wrong_pw")
        self.assertEqual(self.query("app_scram", "scram_pw"), ("app_scram", "app"))


class QuickStartTrustTest(QuickStartCase):
    def test_url_without_password_means_trust(self):
        self.start("postgresql://app_trust@127.0.0.1:%d/app" % self.pg.port)
        self.assertEqual(self.query("app_trust", ""), ("app_trust", "app"))
        with self.proxy.raw() as c:
            c.login("app_trust", "app", "")
            self.assertEqual(c.auth_requests[0], 0)


class QuickStartAdminPortTest(QuickStartCase):
    def test_admin_port_next_to_listen_port(self):
        """The quick start's admin port is listen_port + 1."""
        self.start("postgresql://app_trust@127.0.0.1:%d/app" % self.pg.port)
        with socket.create_connection(("127.0.0.1", self.proxy.port + 1), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            self.assertIn(b"200", s.recv(4096).split(b"\r\n")[0])

    def test_taken_admin_port_does_not_stop_the_quick_start(self):
        """With listen_port + 1 already taken, the proxy still serves clients
        (the admin port is the quick start's own choice, not the user's)."""
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.proxy = harness.Proxy(self.pg)
        port = self.proxy.port
        try:
            blocker.bind(("127.0.0.1", port + 1))
        except OSError:
            blocker.close()
            self.skipTest("port %d is in use" % (port + 1))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        self.proxy.args = ["--upstream", "postgresql://app_trust@127.0.0.1:%d/app" % self.pg.port,
                           "--listen", "127.0.0.1:%d" % port]
        self.proxy.start()
        self.addCleanup(self.proxy.cleanup)
        self.addCleanup(self.proxy.check_stopped_cleanly)
        self.assertEqual(self.query("app_trust", ""), ("app_trust", "app"))


if __name__ == "__main__":
    unittest.main()
