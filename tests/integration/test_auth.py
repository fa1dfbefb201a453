"""Authentication at both ends: clients logging in to the proxy (trust, md5,
scram-sha-256 against plain, md5 and SCRAM auth_file entries) and the proxy
logging in to PostgreSQL (scram-sha-256, md5, trust)."""

import unittest

import psycopg2

import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module

AUTH_OK, AUTH_MD5, AUTH_SASL = 0, 5, 10


class AuthCase(harness.ProxyTestCase):
    def assert_login(self, user, password, expect_user=None):
        c = self.proxy.connect(user=user, password=password, autocommit=True)
        try:
            with c.cursor() as cur:
                cur.execute("SELECT current_user")
                self.assertEqual(cur.fetchone()[0], expect_user or user)
        finally:
            c.close()

    def assert_refused(self, user, password, sqlstate="28P01"):
        """Raw login so the SQLSTATE can be checked exactly."""
        with self.proxy.raw() as c:
            with self.assertRaises(harness.ServerError) as cm:
                c.login(user, "app", password)
            if sqlstate is None:
                self.assertTrue(cm.exception.sqlstate.startswith("28"), cm.exception.fields)
            else:
                self.assertEqual(cm.exception.sqlstate, sqlstate, cm.exception.fields)
        with self.assertRaises(psycopg2.OperationalError):
            self.proxy.connect(user=user, password=password).close()

    def first_auth_request(self, user, password):
        with self.proxy.raw() as c:
            c.login(user, "app", password)
            return c.auth_requests[0]


class ScramClientAuthTest(AuthCase):
    """auth_type = scram-sha-256 with a plain password and a SCRAM secret."""

    @classmethod
    def setUpClass(cls):
        pg = harness.postgres()
        # A role whose auth_file entry is the SCRAM secret PostgreSQL stored
        # for it; upstream the pool logs in as app_trust, so only client
        # authentication depends on the secret.
        pg.execute("DROP ROLE IF EXISTS app_secret")
        pg.execute("SET password_encryption = 'scram-sha-256'; "
                   "CREATE ROLE app_secret LOGIN PASSWORD 'secret_pw'", dbname="postgres")
        secret = pg.rolpassword("app_secret")
        assert secret.startswith("SCRAM-SHA-256$"), secret
        cls.users = dict(harness.USERS, app_secret=secret)
        cls.databases = {
            "app": "host=127.0.0.1 port=%d dbname=app" % pg.port,
            "secretdb": "host=127.0.0.1 port=%d dbname=app user=app_trust" % pg.port,
        }
        cls.proxy_settings = {"auth_type": "scram-sha-256"}
        super().setUpClass()

    def test_plain_password_entry(self):
        self.assert_login("app_scram", "scram_pw")
        self.assertEqual(self.first_auth_request("app_scram", "scram_pw"), AUTH_SASL)

    def test_scram_secret_entry(self):
        c = self.proxy.connect(user="app_secret", password="secret_pw", dbname="secretdb",
                               autocommit=True)
        try:
            with c.cursor() as cur:
                cur.execute("SELECT current_user, current_database()")
                self.assertEqual(cur.fetchone(), ("app_trust", "app"))
        finally:
            c.close()
        with self.proxy.raw() as c:
            c.login("app_secret", "secretdb", "secret_pw")
            self.assertEqual(c.auth_requests[0], AUTH_SASL)

    def test_logins_while_a_server_is_idle(self):
        """Regression: the client's last SASL message was still in the input
        when its login completed, and went to the idle server its first query
        was given (PostgreSQL then ended that backend)."""
        for _ in range(3):
            self.assert_login("app_scram", "scram_pw")

    def test_wrong_password(self):
        self.assert_refused("app_scram", "not_scram_pw")
        with self.proxy.raw() as c:
            with self.assertRaises(harness.ServerError) as cm:
                c.login("app_secret", "secretdb", "not_secret_pw")
            self.assertEqual(cm.exception.sqlstate, "28P01")

    def test_unknown_user_refused(self):
        self.assert_refused("nobody_here", "whatever", sqlstate=None)

    def test_upstream_md5_and_trust_with_scram_clients(self):
        self.assert_login("app_md5", "md5_pw")
        self.assert_login("app_trust", "trust_pw")


class Md5ClientAuthTest(AuthCase):
    """auth_type = md5 with a plain password and an md5 hash. The md5 hash of
    app_md5 is also what the proxy logs in upstream with (hba md5)."""

    users = {
        "app_scram": "scram_pw",
        "app_md5": harness.md5_secret("app_md5", "md5_pw"),
        "app_trust": "trust_pw",
    }
    proxy_settings = {"auth_type": "md5"}

    def test_plain_password_entry(self):
        self.assert_login("app_scram", "scram_pw")
        self.assertEqual(self.first_auth_request("app_scram", "scram_pw"), AUTH_MD5)

    def test_md5_hash_entry_both_ends(self):
        self.assert_login("app_md5", "md5_pw")
        self.assertEqual(self.first_auth_request("app_md5", "md5_pw"), AUTH_MD5)

    def test_logins_while_a_server_is_idle(self):
        """Regression: the client's password message was still in the input
        when its login completed, and went to the idle server its first query
        was given."""
        for _ in range(3):
            self.assert_login("app_md5", "md5_pw")

    def test_wrong_password(self):
        self.assert_refused("app_scram", "not_scram_pw")
        self.assert_refused("app_md5", "not_md5_pw")

    def test_unknown_user_refused(self):
        self.assert_refused("nobody_here", "whatever", sqlstate=None)


class TrustClientAuthTest(AuthCase):
    proxy_settings = {"auth_type": "trust"}

    def test_any_password_accepted_without_asking(self):
        self.assertEqual(self.first_auth_request("app_scram", ""), AUTH_OK)
        self.assert_login("app_scram", "anything at all")

    def test_server_side_methods(self):
        """The proxy logs in to PostgreSQL with scram-sha-256, md5 and trust."""
        self.proxy.restart()  # empty pools: every login below reaches PostgreSQL
        offset = self.pg.log_offset()
        for user in ("app_scram", "app_md5", "app_trust"):
            self.assert_login(user, "")
        log = self.pg.log_since(offset)
        self.assertIn('identity="app_scram" method=scram-sha-256', log)
        self.assertIn('identity="app_md5" method=md5', log)

    def test_wrong_upstream_password_reported(self):
        """auth_file holds a wrong password for the upstream login: the
        client gets PostgreSQL's refusal rather than a hang or a crash."""
        self.proxy.restart(users=dict(harness.USERS, app_scram="wrong_upstream_pw"))
        try:
            with self.assertRaises(psycopg2.Error) as cm:
                c = self.proxy.connect(user="app_scram", autocommit=True)
                try:
                    c.cursor().execute("SELECT 1")
                finally:
                    c.close()
            self.assertIn("password authentication failed", str(cm.exception))
        finally:
            self.proxy.restart(users=dict(harness.USERS))
        self.assert_login("app_scram", "")


if __name__ == "__main__":
    unittest.main()
