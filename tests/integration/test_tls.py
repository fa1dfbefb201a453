"""TLS on both sides of the proxy, with a throwaway PKI the harness makes
with `openssl req`/`openssl x509` (a CA, a server certificate for localhost
and 127.0.0.1 signed by it, one for another name, and an unrelated CA).

Client side: client_tls_sslmode require / allow / prefer, the minimum protocol
version, libpq's verify-full against the proxy (psql and psycopg2), the plain
client refused with 28000, a wrong CA refused by the client, certificates
re-read on reload.

Server side: PostgreSQL itself with ssl=on (turned on and off by reload), the
proxy's server connections checked in pg_stat_ssl, server_tls_sslmode
disable / prefer / require / verify-ca / verify-full as libpq defines them,
and a wrong CA or host name failing with an error that says so while the proxy
keeps running.
"""

import hashlib
import os
import shutil
import signal
import ssl
import subprocess
import unittest

import psycopg2

import harness

TLS = None  # harness.TlsFiles, made once per module


def setUpModule():
    global TLS
    harness.setUpModule()
    TLS = harness.TlsFiles()


def tearDownModule():
    global TLS
    try:
        harness.tearDownModule()
    finally:
        if TLS is not None:
            TLS.cleanup()
        TLS = None


PSQL = os.path.join(harness.PG_BINDIR, "psql")
if not os.access(PSQL, os.X_OK):
    PSQL = shutil.which("psql") or "psql"


def psql(port, sql, sslmode, rootcert=None, host="127.0.0.1", user="app_scram", extra=""):
    """Run psql against host:port; returns CompletedProcess (text)."""
    conninfo = "host=%s port=%d user=%s dbname=app sslmode=%s connect_timeout=20 %s" % (
        host, port, user, sslmode, extra)
    if rootcert:
        conninfo += " sslrootcert=%s" % rootcert
    env = dict(os.environ, PGPASSWORD=harness.USERS[user], PGAPPNAME="test_tls")
    env.pop("PGSSLMODE", None)
    return subprocess.run([PSQL, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", conninfo, "-c", sql],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          timeout=60, stdin=subprocess.DEVNULL)


def backend_ssl_sql():
    return ("SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_ssl s "
            "WHERE s.pid = pg_backend_pid()")


class TlsCase(harness.ProxyTestCase):
    """Builds proxy_settings from the module's TLS files in setUpClass.

    pg_ssl: None leaves PostgreSQL's ssl as it is, "good" turns it on with the
    CA-signed certificate for localhost/127.0.0.1, "wrongname" with the one for
    otherhost.invalid, "off" turns it off."""

    pg_ssl = "off"

    @classmethod
    def tls_settings(cls):
        return {}

    @classmethod
    def setUpClass(cls):
        pg = harness.postgres()
        if cls.pg_ssl == "good":
            pg.set_ssl(True, TLS.server_cert, TLS.server_key)
        elif cls.pg_ssl == "wrongname":
            pg.set_ssl(True, TLS.wrongname_cert, TLS.wrongname_key)
        elif cls.pg_ssl == "off":
            pg.set_ssl(False)
        cls.proxy_settings = dict(cls.tls_settings())
        super().setUpClass()

    # -- helpers --

    def connect_tls(self, rootcert=None, sslmode="verify-full", **kw):
        c = self.proxy.connect(sslmode=sslmode, sslrootcert=rootcert or TLS.ca_cert, **kw)
        self.addCleanup(c.close)
        return c

    def assert_proxy_serves_plain(self):
        c = self.proxy.connect(autocommit=True, sslmode="disable")
        try:
            with c.cursor() as cur:
                cur.execute("SELECT 41 + 1")
                self.assertEqual(cur.fetchone(), (42,))
        finally:
            c.close()

    def upstream_ssl(self, conn):
        """(ssl, version) of the backend serving conn, from pg_stat_ssl."""
        with conn.cursor() as cur:
            cur.execute(backend_ssl_sql())
            row = cur.fetchone()
        if not conn.autocommit:
            conn.commit()
        return row

    def expect_server_failure(self, *needles):
        """A client's query cannot be served; the error (at login or at the
        query) mentions one of needles and has SQLSTATE class 08 (connection
        exception). The proxy keeps running. Returns the message."""
        msg = None
        try:
            c = self.proxy.connect(autocommit=True, sslmode="disable")
            try:
                with c.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchone()
            finally:
                c.close()
        except psycopg2.Error as e:
            msg = str(e)
        self.assertIsNotNone(msg, "a query was served although the server connection "
                                  "should have failed")
        self.assertTrue(any(n.lower() in msg.lower() for n in needles),
                        "error %r mentions none of %r" % (msg, needles))
        # the same through the raw protocol, for the SQLSTATE
        fields = None
        try:
            with self.proxy.raw_login(timeout=30) as raw:
                r = raw.query("SELECT 1")
                fields = r.errors[0] if r.errors else None
        except harness.ServerError as e:
            fields = e.fields
        except (EOFError, ConnectionResetError):
            pass
        self.assertIsNotNone(fields, "no ErrorResponse on a raw connection")
        self.assertTrue((fields.get("C") or "").startswith("08"), fields)
        self.assertTrue(self.proxy.running(), "pgcoalesce exited")
        return msg


def client_tls(mode, **more):
    s = {"client_tls_sslmode": mode, "client_tls_cert_file": TLS.server_cert,
         "client_tls_key_file": TLS.server_key}
    s.update(more)
    return s


# ---------------------------------------------------------------- client side


class ClientTlsRequireTest(TlsCase):
    pg_ssl = "off"  # client TLS ends at the proxy; upstream is plain here

    @classmethod
    def tls_settings(cls):
        return client_tls("require", server_tls_sslmode="disable")

    def test_psycopg2_verify_full(self):
        c = self.connect_tls(autocommit=True)
        self.assertTrue(c.info.ssl_in_use)
        self.assertIn(c.info.ssl_attribute("protocol"), ("TLSv1.2", "TLSv1.3"))
        with c.cursor() as cur:
            cur.execute("SELECT current_user, 'h\u00e9llo'::text, 6 * 7")
            self.assertEqual(cur.fetchone(), ("app_scram", "h\u00e9llo", 42))
        # TLS is terminated at the proxy: its server connection is plain.
        self.assertEqual(self.upstream_ssl(c)[0], False)

    def test_psql_verify_full_reports_tls(self):
        r = psql(self.proxy.port, "\\conninfo", "verify-full", TLS.ca_cert)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("SSL connection (protocol: TLSv1.", r.stdout)
        r = psql(self.proxy.port, "SELECT current_user || ':' || 6 * 7", "verify-full",
                 TLS.ca_cert)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "app_scram:42"), r.stderr)

    def test_verify_full_by_host_name(self):
        # localhost is in the certificate's subjectAltName as a DNS name
        r = psql(self.proxy.port, "SELECT 'by name'", "verify-full", TLS.ca_cert,
                 host="localhost")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "by name"), r.stderr)

    def test_plain_client_refused_with_28000(self):
        with self.proxy.raw() as raw:
            raw.send(harness.startup_message({"user": "app_scram", "database": "app"}))
            msgs = raw.read_until_closed()
        errors = [harness.parse_error_fields(b) for k, b in msgs if k == "E"]
        self.assertEqual([e.get("C") for e in errors], ["28000"], msgs)
        self.assertIn("TLS", errors[0].get("M", ""))
        with self.assertRaises(psycopg2.OperationalError) as cm:
            self.proxy.connect(sslmode="disable").close()
        self.assertIn("TLS is required", str(cm.exception))
        # a TLS client right after is served
        c = self.connect_tls(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
            self.assertEqual(cur.fetchone(), (1,))

    def test_ssl_request_answered_s_then_handshake(self):
        ctx = ssl.create_default_context(cafile=TLS.ca_cert)
        raw = self.proxy.raw()
        try:
            raw.send(harness.ssl_request())
            self.assertEqual(raw.recv_exact(1), b"S")
            raw.sock = ctx.wrap_socket(raw.sock, server_hostname="localhost")
            self.assertIn(raw.sock.version(), ("TLSv1.2", "TLSv1.3"))
            self.assertEqual(raw.login("app_scram", "app", "scram_pw"), "I")
            r = raw.query("SELECT g FROM generate_series(1, 20000) g")
            self.assertEqual(len(r.sets[0]["rows"]), 20000)
            self.assertEqual(r.sets[0]["rows"][-1], ["20000"])
        finally:
            raw.close()

    def test_wrong_ca_fails_on_the_client(self):
        r = psql(self.proxy.port, "SELECT 1", "verify-full", TLS.other_ca_cert)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("certificate verify failed", r.stderr)
        with self.assertRaises(psycopg2.OperationalError) as cm:
            self.proxy.connect(sslmode="verify-full", sslrootcert=TLS.other_ca_cert).close()
        self.assertIn("certificate verify failed", str(cm.exception))
        # verify-ca too (the chain is what is wrong, not the name)
        r = psql(self.proxy.port, "SELECT 1", "verify-ca", TLS.other_ca_cert)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertTrue(self.proxy.running())
        c = self.connect_tls(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 2")
            self.assertEqual(cur.fetchone(), (2,))

    def test_client_hangs_up_during_handshake(self):
        # half a ClientHello, then gone; and a client that never answers 'S'
        raw = self.proxy.raw()
        raw.send(harness.ssl_request())
        self.assertEqual(raw.recv_exact(1), b"S")
        raw.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        raw.abort()
        raw = self.proxy.raw()
        raw.send(harness.ssl_request())
        self.assertEqual(raw.recv_exact(1), b"S")
        raw.send(b"this is not a TLS record at all, it is plain text\0\0\0\0")
        try:
            raw.read_until_closed(timeout=10)
        except (ConnectionResetError, OSError):
            pass
        raw.close()
        self.assertTrue(self.proxy.running())
        c = self.connect_tls(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 3")
            self.assertEqual(cur.fetchone(), (3,))

    def test_concurrent_tls_clients(self):
        def client(i):
            c = self.proxy.connect(sslmode="verify-full", sslrootcert=TLS.ca_cert)
            try:
                out = []
                for j in range(10):
                    with c.cursor() as cur:
                        cur.execute("SELECT md5(%s), %s", ("%d-%d" % (i, j), j))
                        out.append(cur.fetchone())
                    c.commit()
                return out
            finally:
                c.close()

        res = harness.run_threads(client, 8)
        self.assertEqual(res, [[(hashlib.md5(("%d-%d" % (i, j)).encode()).hexdigest(), j)
                                for j in range(10)] for i in range(8)])


class ClientTlsMinVersionTest(TlsCase):
    pg_ssl = None

    @classmethod
    def tls_settings(cls):
        return client_tls("require", client_tls_min_version="tlsv1.3")

    def _handshake(self, max_version):
        ctx = ssl.create_default_context(cafile=TLS.ca_cert)
        ctx.maximum_version = max_version
        raw = self.proxy.raw()
        try:
            raw.send(harness.ssl_request())
            self.assertEqual(raw.recv_exact(1), b"S")
            raw.sock = ctx.wrap_socket(raw.sock, server_hostname="127.0.0.1")
            return raw.sock.version()
        finally:
            raw.close()

    def test_tls12_refused_tls13_accepted(self):
        with self.assertRaises((ssl.SSLError, ConnectionResetError, OSError)):
            self._handshake(ssl.TLSVersion.TLSv1_2)
        self.assertEqual(self._handshake(ssl.TLSVersion.TLSv1_3), "TLSv1.3")
        r = psql(self.proxy.port, "SELECT 1", "require", extra="ssl_max_protocol_version=TLSv1.2")
        self.assertNotEqual(r.returncode, 0, r.stdout)
        r = psql(self.proxy.port, "\\conninfo", "verify-full", TLS.ca_cert)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("protocol: TLSv1.3", r.stdout)


class ClientTlsAllowCases:
    def test_tls_and_plain_both_accepted(self):
        c = self.connect_tls(autocommit=True)
        self.assertTrue(c.info.ssl_in_use)
        with c.cursor() as cur:
            cur.execute("SELECT 'tls'")
            self.assertEqual(cur.fetchone(), ("tls",))
        p = self.proxy.connect(autocommit=True, sslmode="disable")
        self.addCleanup(p.close)
        self.assertFalse(p.info.ssl_in_use)
        with p.cursor() as cur:
            cur.execute("SELECT 'plain'")
            self.assertEqual(cur.fetchone(), ("plain",))
        # libpq's default (prefer) gets TLS when the proxy offers it
        d = self.proxy.connect(autocommit=True, sslmode="prefer")
        self.addCleanup(d.close)
        self.assertTrue(d.info.ssl_in_use)
        r = psql(self.proxy.port, "SELECT 'psql plain'", "disable")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "psql plain"), r.stderr)
        r = psql(self.proxy.port, "\\conninfo", "verify-full", TLS.ca_cert)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("SSL connection", r.stdout)


class ClientTlsAllowTest(ClientTlsAllowCases, TlsCase):
    pg_ssl = None

    @classmethod
    def tls_settings(cls):
        return client_tls("allow")


class ClientTlsPreferTest(ClientTlsAllowCases, TlsCase):
    pg_ssl = None

    @classmethod
    def tls_settings(cls):
        return client_tls("prefer")


class ClientTlsReloadTest(TlsCase):
    """Certificates are re-read on reload (SIGHUP)."""

    pg_ssl = None

    @classmethod
    def setUpClass(cls):
        cls.cert_dir = os.path.join(TLS.dir, "reload")
        os.makedirs(cls.cert_dir, exist_ok=True)
        cls.cert = os.path.join(cls.cert_dir, "proxy.crt")
        cls.key = os.path.join(cls.cert_dir, "proxy.key")
        shutil.copyfile(TLS.server_cert, cls.cert)
        shutil.copyfile(TLS.server_key, cls.key)
        super().setUpClass()

    @classmethod
    def tls_settings(cls):
        return {"client_tls_sslmode": "require", "client_tls_cert_file": cls.cert,
                "client_tls_key_file": cls.key}

    def test_new_certificate_after_sighup(self):
        old = self.connect_tls(autocommit=True)
        shutil.copyfile(TLS.other_server_cert, self.cert)
        shutil.copyfile(TLS.other_server_key, self.key)
        offset = self.proxy.log_offset()
        self.proxy.proc.send_signal(signal.SIGHUP)
        harness.wait_until(lambda: "reload" in self.proxy.log_since(offset).lower(),
                           message="the reload logged")

        def new_cert_served():
            r = psql(self.proxy.port, "SELECT 'new'", "verify-full", TLS.other_ca_cert)
            return r.returncode == 0 and r.stdout.strip() == "new"

        harness.wait_until(new_cert_served, timeout=15,
                           message="verify-full with the new certificate's CA succeeds")
        r = psql(self.proxy.port, "SELECT 1", "verify-full", TLS.ca_cert)
        self.assertNotEqual(r.returncode, 0, "the old CA still verifies: %s" % r.stdout)
        # a connection made before the reload goes on
        with old.cursor() as cur:
            cur.execute("SELECT 'still here'")
            self.assertEqual(cur.fetchone(), ("still here",))


# ---------------------------------------------------------------- server side


class ServerTlsVerifyFullTest(TlsCase):
    """TLS both ways: psql verify-full to the proxy, the proxy verify-full to
    PostgreSQL (ssl=on, CA-signed certificate for 127.0.0.1)."""

    pg_ssl = "good"

    @classmethod
    def tls_settings(cls):
        return client_tls("require", server_tls_sslmode="verify-full",
                          server_tls_ca_file=TLS.ca_cert, pool_size=2, max_overflow=0)

    def test_backend_in_pg_stat_ssl(self):
        c = self.connect_tls(autocommit=True)
        ssl_on, version = self.upstream_ssl(c)
        self.assertIs(ssl_on, True)
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        # every server connection of the proxy, as the superuser sees them
        rows = self.pg.query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.usename = 'app_scram' AND a.backend_type = 'client backend'")
        self.assertTrue(rows)
        self.assertEqual({r[0] for r in rows}, {True})

    def test_psql_verify_full_end_to_end(self):
        r = psql(self.proxy.port, "\\conninfo", "verify-full", TLS.ca_cert)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("SSL connection", r.stdout)
        r = psql(self.proxy.port, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                 "verify-full", TLS.ca_cert)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "t"), r.stderr)

    def test_large_results_and_copy_over_tls_both_ways(self):
        c = self.connect_tls()
        with c.cursor() as cur:
            cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 60000) g")
            rows = cur.fetchall()
        c.commit()
        self.assertEqual(len(rows), 60000)
        for i in (0, 777, 59999):
            self.assertEqual(rows[i], (i + 1, hashlib.md5(str(i + 1).encode()).hexdigest()))
        big = "x" * (3 * 1024 * 1024)
        with c.cursor() as cur:
            cur.execute("SELECT length(%s), md5(%s)", (big, big))
            self.assertEqual(cur.fetchone(), (len(big), hashlib.md5(big.encode()).hexdigest()))
        c.commit()

    def test_concurrent_clients_share_tls_servers(self):
        def client(i):
            c = self.proxy.connect(sslmode="verify-full", sslrootcert=TLS.ca_cert)
            try:
                out = []
                for j in range(15):
                    with c.cursor() as cur:
                        cur.execute("SELECT %s * 100 + %s, (SELECT ssl FROM pg_stat_ssl "
                                    "WHERE pid = pg_backend_pid())", (i, j))
                        out.append(cur.fetchone())
                    c.commit()
                return out
            finally:
                c.close()

        res = harness.run_threads(client, 10)
        self.assertEqual(res, [[(i * 100 + j, True) for j in range(15)] for i in range(10)])
        self.assertLessEqual(self.pg.server_count(), 2)


class ServerTlsVerifyCaTest(TlsCase):
    """verify-ca checks the chain, not the name: a certificate for another
    host name signed by the right CA is accepted."""

    pg_ssl = "wrongname"

    @classmethod
    def tls_settings(cls):
        return {"server_tls_sslmode": "verify-ca", "server_tls_ca_file": TLS.ca_cert}

    def test_verify_ca_accepts_other_name(self):
        c = self.proxy.connect(autocommit=True)
        self.addCleanup(c.close)
        self.assertIs(self.upstream_ssl(c)[0], True)


class ServerTlsVerifyFullWrongNameTest(TlsCase):
    """verify-full also checks the name: a certificate for otherhost.invalid
    does not do for 127.0.0.1."""

    pg_ssl = "wrongname"

    @classmethod
    def tls_settings(cls):
        return {"server_tls_sslmode": "verify-full", "server_tls_ca_file": TLS.ca_cert}

    def test_name_mismatch_fails(self):
        self.expect_server_failure("certificate verify failed")
        self.expect_server_failure("certificate verify failed")
        self.assertEqual(self.pg.server_count(), 0)


class ServerTlsWrongCaTest(TlsCase):
    pg_ssl = "good"

    @classmethod
    def tls_settings(cls):
        return {"server_tls_sslmode": "verify-full", "server_tls_ca_file": TLS.other_ca_cert}

    def test_wrong_ca_fails_and_proxy_keeps_running(self):
        msg = self.expect_server_failure("certificate verify failed")
        # again: no crash, no half-open state
        msg2 = self.expect_server_failure("certificate verify failed")
        self.assertTrue(self.proxy.running())
        self.assertEqual(self.pg.server_count(), 0)
        self.assertEqual(msg.strip(), msg2.strip())


class ServerTlsRequireNoSslTest(TlsCase):
    pg_ssl = "off"

    @classmethod
    def tls_settings(cls):
        return {"server_tls_sslmode": "require"}

    def test_require_against_plain_server_fails_clearly(self):
        msg = self.expect_server_failure("does not support TLS")
        self.assertIn("server_tls_sslmode", msg)
        self.assertEqual(self.pg.server_count(), 0)


class ServerTlsPreferNoSslTest(TlsCase):
    pg_ssl = "off"

    @classmethod
    def tls_settings(cls):
        return {"server_tls_sslmode": "prefer"}

    def test_prefer_against_plain_server_works_plain(self):
        c = self.proxy.connect(autocommit=True)
        self.addCleanup(c.close)
        self.assertEqual(self.upstream_ssl(c)[0], False)


class ServerTlsPreferWithSslTest(TlsCase):
    pg_ssl = "good"

    @classmethod
    def tls_settings(cls):
        return {"server_tls_sslmode": "prefer"}  # also the default

    def test_prefer_uses_tls_when_offered(self):
        c = self.proxy.connect(autocommit=True)
        self.addCleanup(c.close)
        self.assertIs(self.upstream_ssl(c)[0], True)


class ServerTlsRequireWithSslTest(TlsCase):
    pg_ssl = "wrongname"  # require checks nothing about the certificate, like libpq

    @classmethod
    def tls_settings(cls):
        return {"server_tls_sslmode": "require"}

    def test_require_encrypts_without_verifying(self):
        c = self.proxy.connect(autocommit=True)
        self.addCleanup(c.close)
        self.assertIs(self.upstream_ssl(c)[0], True)


class ServerTlsDisableTest(TlsCase):
    pg_ssl = "good"

    @classmethod
    def tls_settings(cls):
        return {"server_tls_sslmode": "disable"}

    def test_disable_stays_plain(self):
        c = self.proxy.connect(autocommit=True)
        self.addCleanup(c.close)
        self.assertEqual(self.upstream_ssl(c)[0], False)


if __name__ == "__main__":
    unittest.main()
