"""Signals: SIGTERM lets running transactions finish (up to shutdown_timeout)
and exits 0, SIGINT also closes idle clients at once, a second signal exits
now, SIGHUP reloads (and reopens the logfile). SIGUSR1/SIGUSR2 are tested
with PAUSE in test_admin."""

import os
import signal
import time
import unittest

import psycopg2

import adminlib
import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module


class SignalCase(harness.PgTestCase):
    """Each test runs and stops its own proxy."""

    def start(self, **settings):
        s = dict(adminlib.ADMIN_SETTINGS, shutdown_timeout=20)
        s.update(settings)
        self.proxy = harness.Proxy(self.pg, s, users=adminlib.ADMIN_USERS)
        self.proxy.start()
        self.addCleanup(self.proxy.cleanup)
        self.pg.execute("CREATE TABLE IF NOT EXISTS sig (x int)")
        self.pg.execute("GRANT ALL ON sig TO app_scram")
        self.pg.execute("TRUNCATE sig")

    def open_transaction(self, value=1):
        tx = self.proxy.connect()
        with tx.cursor() as cur:
            cur.execute("INSERT INTO sig VALUES (%s)", (value,))
        return tx

    def idle_client(self):
        c = self.proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        return c

    def wait_exit(self, timeout=10):
        self.proxy.proc.wait(timeout)
        return self.proxy.proc.returncode

    def values(self):
        return [r[0] for r in self.pg.query("SELECT x FROM sig ORDER BY x")]


class SigtermTest(SignalCase):
    def test_sigterm_waits_for_transaction_then_exits_0(self):
        self.start()
        tx = self.open_transaction(1)
        idle = self.proxy.raw_login()
        self.assertEqual(idle.query("SELECT 1").status, "I")
        offset = self.proxy.log_offset()
        self.proxy.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        self.assertTrue(self.proxy.running(), "exited with a transaction open:\n"
                        + self.proxy.log_since(offset))
        self.assertFalse(harness.port_accepts(self.proxy.port))
        # an idle client asking for a new transaction is told to go
        idle.send(harness.query_message("SELECT 1"))
        msgs = idle.read_until_closed()
        self.assertEqual([m[0] for m in msgs], ["E"], msgs)
        fields = harness.parse_error_fields(msgs[0][1])
        self.assertEqual((fields["S"], fields["C"]), ("FATAL", "57P01"))
        self.assertIn("shutting down", fields["M"])
        with tx.cursor() as cur:  # the running transaction finishes
            cur.execute("INSERT INTO sig VALUES (2)")
        tx.commit()
        self.assertEqual(self.wait_exit(), 0)
        self.assertEqual(self.values(), [1, 2])
        self.assertIn("no transaction is running", self.proxy.log_since(offset))

    def test_shutdown_timeout_ends_a_long_transaction(self):
        self.start(shutdown_timeout=1)
        tx = self.open_transaction(1)
        t0 = time.monotonic()
        self.proxy.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.wait_exit(), 0)
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)
        self.pg.wait_no_backends()
        self.assertEqual(self.values(), [])  # never committed
        with self.assertRaises(psycopg2.Error):
            with tx.cursor() as cur:
                cur.execute("SELECT 1")
        self.assertIn("shutdown_timeout", self.proxy.log_since(0))

    def test_second_sigterm_exits_at_once(self):
        self.start()
        tx = self.open_transaction(1)
        self.proxy.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertTrue(self.proxy.running())
        self.proxy.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.wait_exit(5), 0)
        tx.close()


class SigintTest(SignalCase):
    def test_sigint_closes_idle_clients_at_once(self):
        self.start()
        tx = self.open_transaction(1)
        idle = self.idle_client()
        self.proxy.proc.send_signal(signal.SIGINT)
        # the idle client is gone while the transaction still runs
        harness.wait_until(lambda: adminlib.pool_row(self.proxy)["cl_idle"] == 0,
                           message="idle client closed")
        self.assertTrue(self.proxy.running())
        with self.assertRaises(psycopg2.OperationalError):
            with idle.cursor() as cur:
                cur.execute("SELECT 1")
        tx.commit()
        self.assertEqual(self.wait_exit(), 0)
        self.assertEqual(self.values(), [1])


class SighupTest(SignalCase):
    def test_sighup_reloads_and_reopens_logfile(self):
        self.start(logfile="pgc.log", pool_size=3)
        path = os.path.join(self.proxy.dir, "pgc.log")  # relative to the config's directory
        harness.wait_until(lambda: os.path.exists(path))
        with open(path) as f:
            self.assertIn("started", f.read())
        os.rename(path, path + ".1")  # log rotation
        self.proxy.settings["pool_size"] = 7
        self.proxy.write_config()
        self.proxy.proc.send_signal(signal.SIGHUP)
        harness.wait_until(lambda: os.path.exists(path), message="logfile reopened")
        harness.wait_until(lambda: "reloaded" in open(path).read())
        config = {r["key"]: r["value"] for r in adminlib.admin_rows(self.proxy, "SHOW CONFIG")}
        self.assertEqual(config["pool_size"], "7")
        self.assertEqual(config["logfile"], path)
        with open(path + ".1") as f:
            self.assertNotIn("reloaded", f.read())
        self.proxy.check_stopped_cleanly()


if __name__ == "__main__":
    unittest.main()
