"""Pool behaviour as PostgreSQL sees it: how many server connections exist,
which backend serves whom, timeouts, recycling, pre-ping, vanished clients
and cancellation. Counts come from pg_stat_activity, never from the proxy."""

import threading
import time
import unittest

import psycopg2
import psycopg2.errors

import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module


def backend_pid(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


class Holders:
    """n clients through the proxy that each open a transaction and hold it
    until release() is called; records which backend served each."""

    def __init__(self, proxy, n):
        self.proxy = proxy
        self.lock = threading.Lock()
        self.holding = []  # client numbers that got a server connection
        self.pids = {}
        self.errors = []
        self.release_event = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _client(self, i):
        try:
            c = self.proxy.connect()
            try:
                pid = backend_pid(c)  # psycopg2 sends BEGIN first: a transaction is open
                with self.lock:
                    self.holding.append(i)
                    self.pids[i] = pid
                self.release_event.wait(120)
                c.commit()
            finally:
                c.close()
        except Exception as e:  # handed to the test through self.errors
            with self.lock:
                self.errors.append(e)

    def count(self):
        with self.lock:
            return len(self.holding)

    def release(self):
        self.release_event.set()
        for t in self.threads:
            t.join(120)
        if self.errors:
            raise self.errors[0]


class OverflowTest(harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 1,
                      "pool_timeout": 60}

    def test_pool_size_plus_overflow_then_settles_to_pool_size(self):
        h = Holders(self.proxy, 6)
        try:
            harness.wait_until(lambda: h.count() == 3, message="3 clients holding a server")
            harness.wait_until(lambda: self.pg.server_count() == 3,
                               message="pool_size + max_overflow server connections")
            # The other three wait: sample for a while, nothing more is opened.
            for _ in range(20):
                self.assertEqual(h.count(), 3)
                self.assertLessEqual(self.pg.server_count(), 3)
                time.sleep(0.05)
        finally:
            h.release()
        self.assertEqual(sorted(h.holding), list(range(6)))
        self.assertLessEqual(len(set(h.pids.values())), 3)
        # The overflow connection was closed when it came back to a pool that
        # already held pool_size idle ones; pool_size connections are kept.
        harness.wait_until(lambda: self.pg.server_count() == 2,
                           message="server connections settled to pool_size")
        for _ in range(10):
            self.assertEqual(self.pg.server_count(), 2)
            time.sleep(0.05)


class TransactionSharingTest(harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0}

    def test_ten_clients_share_two_servers(self):
        stop = threading.Event()
        seen = []

        def sampler():
            while not stop.is_set():
                seen.append(self.pg.server_count())
                time.sleep(0.02)

        def client(i):
            c = self.proxy.connect()
            pids, answers = set(), []
            try:
                for j in range(20):
                    with c.cursor() as cur:
                        cur.execute("SELECT pg_backend_pid(), %s * 100 + %s", (i, j))
                        pid, v = cur.fetchone()
                    c.commit()
                    pids.add(pid)
                    answers.append(v)
            finally:
                c.close()
            return pids, answers

        s = threading.Thread(target=sampler, daemon=True)
        s.start()
        try:
            results = harness.run_threads(client, 10)
        finally:
            stop.set()
            s.join()
        for i, (_, answers) in enumerate(results):
            self.assertEqual(answers, [i * 100 + j for j in range(20)])
        all_pids = set().union(*(p for p, _ in results))
        self.assertLessEqual(len(all_pids), 2, "10 clients used more than pool_size backends")
        self.assertTrue(seen)
        self.assertLessEqual(max(seen), 2, "more than pool_size server connections seen")
        # The clients really shared: some client saw a backend another one also used.
        shared = [p for p in all_pids if sum(p in r[0] for r in results) > 1]
        self.assertTrue(shared)


class ParameterFollowsClientTest(harness.ProxyTestCase):
    """Transaction mode: one server connection moves between clients, each
    keeps the session parameters it set (DESIGN.md, Pools)."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 1, "max_overflow": 0}

    def test_timezone_and_application_name_follow_the_client(self):
        a = self.proxy.connect(autocommit=True, application_name="alpha")
        b = self.proxy.connect(autocommit=True, application_name="beta")
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        with a.cursor() as cur:
            cur.execute("SET TimeZone = 'UTC'")
            cur.execute("SET DateStyle = 'ISO, MDY'")
        with b.cursor() as cur:
            cur.execute("SET TimeZone = 'Asia/Tokyo'")
            cur.execute("SET DateStyle = 'German'")
        for _ in range(3):
            for conn, tz, ds, app in ((a, "UTC", "ISO, MDY", "alpha"),
                                      (b, "Asia/Tokyo", "German, DMY", "beta")):
                with conn.cursor() as cur:
                    cur.execute("SELECT current_setting('TimeZone'), current_setting('DateStyle'),"
                                " current_setting('application_name'), pg_backend_pid()")
                    got = cur.fetchone()
                self.assertEqual(got[:3], (tz, ds, app))
        self.assertEqual(backend_pid(a), backend_pid(b), "pool_size 1 should mean one backend")


class SessionModeTest(harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "session", "pool_size": 5, "max_overflow": 0}

    def test_one_server_per_client(self):
        conns = [self.proxy.connect() for _ in range(4)]
        try:
            first = [backend_pid(c) for c in conns]
            for c in conns:
                c.commit()
            self.assertEqual(len(set(first)), 4)
            for _ in range(3):  # each client keeps its backend across transactions
                self.assertEqual([backend_pid(c) for c in conns], first)
                for c in conns:
                    c.commit()
            self.assertEqual(self.pg.server_count(), 4)
            self.assertTrue(set(first) <= self.pg.backend_pids())
        finally:
            for c in conns:
                c.close()


class SessionResetTest(harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "session", "pool_size": 1, "max_overflow": 0}

    def test_next_client_gets_a_clean_session(self):
        a = self.proxy.connect(autocommit=True)
        with a.cursor() as cur:
            cur.execute("CREATE TEMP TABLE left_behind (x int)")
            cur.execute("SET work_mem = '7MB'")
            cur.execute("SHOW work_mem")
            self.assertEqual(cur.fetchone()[0], "7MB")
        pid_a = backend_pid(a)
        a.close()
        b = self.proxy.connect(autocommit=True)
        self.addCleanup(b.close)
        self.assertEqual(backend_pid(b), pid_a, "the pooled server connection was not reused")
        with b.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_class WHERE relname = 'left_behind'")
            self.assertEqual(cur.fetchone()[0], 0)
            cur.execute("SELECT setting = boot_val FROM pg_settings WHERE name = 'work_mem'")
            self.assertTrue(cur.fetchone()[0], "work_mem set by the previous client survived")


class PoolTimeoutTest(harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 1, "max_overflow": 0,
                      "pool_timeout": 1}

    def test_waiting_client_gets_53300_and_stays_connected(self):
        a = self.proxy.connect()
        b = self.proxy.connect(autocommit=True)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        backend_pid(a)  # a now holds the only server connection in an open transaction
        with self.assertRaises(psycopg2.Error) as cm:
            with b.cursor() as cur:
                cur.execute("SELECT 2")
        e = cm.exception
        self.assertEqual(e.pgcode, "53300", str(e))
        self.assertIn("pool_timeout", e.pgerror or str(e))
        self.assertEqual(b.closed, 0, "the client was disconnected after the pool timeout")
        self.assertEqual(self.pg.server_count(), 1)
        a.commit()
        with b.cursor() as cur:
            cur.execute("SELECT 3")
            self.assertEqual(cur.fetchone()[0], 3)


class RecycleTest(harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 1, "max_overflow": 0,
                      "pool_recycle": 1}

    def test_old_connection_replaced(self):
        c = self.proxy.connect(autocommit=True)
        self.addCleanup(c.close)
        pid1 = backend_pid(c)
        # Keep using the pool until a younger backend serves us (pool_recycle
        # is 1 s; closures may be staggered, so poll rather than assume when).
        harness.wait_until(lambda: backend_pid(c) != pid1, timeout=20, interval=0.2,
                           message="a recycled server connection")
        harness.wait_until(lambda: pid1 not in self.pg.backend_pids(),
                           message="the old server connection closed")


class RecycleSessionHeldTest(harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "session", "pool_size": 1, "max_overflow": 0,
                      "pool_recycle": 1}

    def test_connection_held_by_a_session_is_not_recycled(self):
        c = self.proxy.connect(autocommit=True)
        self.addCleanup(c.close)
        pid1 = backend_pid(c)
        time.sleep(2.5)  # older than pool_recycle, but never idle
        self.assertEqual(backend_pid(c), pid1)


class NoRecycleTest(harness.ProxyTestCase):
    """Control for RecycleTest: with pool_recycle = -1 the backend is kept."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 1, "max_overflow": 0}

    def test_connection_kept(self):
        c = self.proxy.connect(autocommit=True)
        self.addCleanup(c.close)
        pid1 = backend_pid(c)
        time.sleep(2.5)
        for _ in range(5):
            self.assertEqual(backend_pid(c), pid1)


class PrePingTest(harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 3, "max_overflow": 0,
                      "pool_pre_ping": "on", "pre_ping_idle": 0}

    def wait_idle(self, pids):
        harness.wait_until(
            lambda: all(b["state"] == "idle" for b in self.pg.backends("app_scram")
                        if b["pid"] in pids),
            message="server connections idle")

    def terminate(self, pids):
        for pid in pids:
            self.pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
        harness.wait_until(lambda: not (set(pids) & self.pg.backend_pids()),
                           message="terminated backends gone")

    def test_killed_idle_server_replaced_without_error(self):
        c = self.proxy.connect(autocommit=True)
        self.addCleanup(c.close)
        pid1 = backend_pid(c)
        self.wait_idle({pid1})
        self.terminate([pid1])
        pid2 = backend_pid(c)  # must not raise
        self.assertNotEqual(pid2, pid1)
        with c.cursor() as cur:
            cur.execute("SELECT 5")
            self.assertEqual(cur.fetchone()[0], 5)

    def test_all_killed_idle_servers_replaced(self):
        h = Holders(self.proxy, 3)
        try:
            harness.wait_until(lambda: h.count() == 3, message="3 server connections open")
        finally:
            h.release()
        pids = set(h.pids.values())
        self.assertEqual(len(pids), 3)
        self.wait_idle(pids)
        self.terminate(pids)
        conns = [self.proxy.connect(autocommit=True) for _ in range(3)]
        try:
            for _ in range(3):
                for c in conns:
                    self.assertNotIn(backend_pid(c), pids)
        finally:
            for c in conns:
                c.close()


class ModeCases:
    """Vanished clients and cancellation, in both pool modes."""

    def make_counter(self):
        t = self.table_name("counter")
        self.pg.execute("DROP TABLE IF EXISTS %s" % t)
        self.pg.execute("CREATE TABLE %s (id int PRIMARY KEY, v int)" % t)
        self.pg.execute("INSERT INTO %s VALUES (1, 0)" % t)
        self.pg.execute("GRANT ALL ON %s TO PUBLIC" % t)
        return t

    def vanish_mid_transaction(self, how):
        t = self.make_counter()
        raw = self.proxy.raw_login()
        r = raw.query("BEGIN; UPDATE %s SET v = v + 1 WHERE id = 1" % t)
        self.assertEqual((r.errors, r.status), ([], "T"))
        harness.wait_until(lambda: self.pg.server_count(state="idle in transaction") == 1,
                           message="the row lock held by an idle-in-transaction backend")
        how(raw)
        harness.wait_until(lambda: self.pg.server_count(state="idle in transaction") == 0,
                           timeout=15, message="no transaction left open by the vanished client")
        c = self.proxy.connect()
        self.addCleanup(c.close)
        with c.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '10s'")
            cur.execute("UPDATE %s SET v = v + 10 WHERE id = 1" % t)  # lock released
        c.commit()
        self.assertEqual(self.pg.query("SELECT v FROM %s" % t), [(10,)])

    def test_client_reset_mid_transaction(self):
        self.vanish_mid_transaction(lambda raw: raw.abort())

    def test_client_closed_mid_transaction(self):
        self.vanish_mid_transaction(lambda raw: raw.close())

    def sleeping_backends(self):
        return [b["pid"] for b in self.pg.backends("app_scram")
                if b["state"] == "active" and "pg_sleep(30)" in (b["query"] or "")]

    def start_sleep(self, conn):
        box = {}

        def run():
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_sleep(30)")
                box["result"] = "finished without being cancelled"
            except Exception as e:  # examined by the test
                box["error"] = e

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t, box

    def assert_cancelled(self, t, box):
        t.join(25)
        self.assertFalse(t.is_alive(), "query still running after cancel")
        self.assertNotIn("result", box)
        self.assertIsInstance(box.get("error"), psycopg2.errors.QueryCanceled)
        self.assertEqual(box["error"].pgcode, "57014")

    def test_cancel(self):
        c = self.proxy.connect(autocommit=True)
        self.addCleanup(c.close)
        t, box = self.start_sleep(c)
        harness.wait_until(lambda: len(self.sleeping_backends()) == 1, message="pg_sleep running")
        c.cancel()
        self.assert_cancelled(t, box)
        harness.wait_until(lambda: not self.sleeping_backends(), message="pg_sleep ended")
        with c.cursor() as cur:
            cur.execute("SELECT 1")
            self.assertEqual(cur.fetchone()[0], 1)

    def test_cancel_reaches_only_its_own_query(self):
        a = self.proxy.connect(autocommit=True)
        b = self.proxy.connect(autocommit=True)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        ta, box_a = self.start_sleep(a)
        tb, box_b = self.start_sleep(b)
        harness.wait_until(lambda: len(self.sleeping_backends()) == 2, message="2 pg_sleep running")
        a.cancel()
        self.assert_cancelled(ta, box_a)
        harness.wait_until(lambda: len(self.sleeping_backends()) == 1, message="a's query ended")
        self.assertTrue(tb.is_alive(), "b's query was cancelled by a's cancel")
        b.cancel()
        self.assert_cancelled(tb, box_b)


class TransactionModeCasesTest(ModeCases, harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0}


class SessionModeCasesTest(ModeCases, harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "session", "pool_size": 2, "max_overflow": 0}


if __name__ == "__main__":
    unittest.main()
