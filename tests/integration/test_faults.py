"""Faults: PostgreSQL, a server connection, the config file, the proxy's own
shutdown and Redis failing while clients use pgcoalesce.

  - PostgresKilledTest: the postmaster is killed with SIGKILL and started
    again (same data directory and port) under pgbench -S and TPC-B and
    psycopg2 clients: pgcoalesce stays up, the transactions that died get
    errors, no transaction is half applied, no client hangs, and new
    transactions succeed within 10 s of the restart (the recovery time is
    printed).
  - PostgresDownTest: PostgreSQL stopped: clients get SQLSTATE class 08 at
    once (well under pool_timeout), alone or many at a time, and are served
    again once PostgreSQL is back, without restarting the proxy.
  - ServerTerminatedTest: pg_terminate_backend() of a client's server
    connection inside its transaction (idle or running a query): that client
    gets 57P01 or class 08 and can reconnect, the others are not disturbed,
    the pool opens server connections again as needed.
  - BrokenReloadTest: SIGHUP with a config file (or auth_file) that has a
    syntax error or a bad value: nothing of the file applies, the log names
    file:line, the old values stay in force (SHOW CONFIG and the pool_timeout
    a waiting client gets); the fixed file applies on the next SIGHUP.
    (test_admin covers RELOAD of a bad value; test_signals a good SIGHUP.)
  - ShutdownUnderLoadTest: SIGTERM while clients commit transactions: every
    acknowledged COMMIT is in the table, no transaction under way at SIGTERM
    is cut, nothing half-done is left, exit status 0.
  - RedisKilledTest: with the identity-map cache, Redis is killed and started
    again under a primary-key read + update workload: no client error, each
    read after an update returns that update, the proxy reconnects to Redis
    (test_cache.RedisFailureTest checks the cache's own counters in depth).

PostgreSQL and Redis are the module's (harness.postgres(), harness.redis());
the helpers below kill and restart them in place, so every class leaves them
running for the next.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import unittest

import psycopg2

import adminlib
import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module
from harness import wait_until


def note(fmt, *args):
    """A measured number, for the person reading the test output."""
    sys.stderr.write("\n    [measured] " + (fmt % args if args else fmt) + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- PostgreSQL in place


def _children(pid):
    """Process ids of pid's children (the postmaster's backends and workers)."""
    out = set()
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                out.update(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def _running(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pg_running(pg):
    return pg.proc is not None and pg.proc.poll() is None


def pg_kill(pg, sig=signal.SIGKILL):
    """Send sig to the postmaster and wait until it and every process it had
    started are gone (a new postmaster refuses to start while orphaned
    backends still hold the old shared memory)."""
    kids = _children(pg.proc.pid)
    pg.proc.send_signal(sig)
    pg.proc.wait(30)
    wait_until(lambda: not [k for k in kids if _running(k)], timeout=30,
               message="the killed postmaster's backends gone")


def pg_stop(pg):
    """Fast shutdown (SIGINT), keeping the data directory."""
    pg_kill(pg, signal.SIGINT)


def pg_start(pg):
    """Start the postmaster again on the same data directory and port, as
    harness.Postgres.start does the first time; returns once it accepts
    connections (after crash recovery when it was killed)."""
    log = open(pg.logfile, "ab")
    try:
        pg.proc = subprocess.Popen(
            [os.path.join(harness.PG_BINDIR, "postgres"), "-D", os.path.join(pg.dir, "data")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=pg.dir,
            preexec_fn=harness._die_with_parent(signal.SIGKILL), **harness._as_postgres())
    finally:
        log.close()

    def ready():
        if pg.proc.poll() is not None:
            raise AssertionError("postgres exited with %s on restart:\n%s"
                                 % (pg.proc.returncode, harness.tail(pg.logfile)))
        try:
            pg.connect(dbname="postgres").close()
            return True
        except psycopg2.OperationalError:
            return False

    wait_until(ready, timeout=60, interval=0.05, message="PostgreSQL accepting connections again")


def pg_ensure_running(pg):
    if not pg_running(pg):
        pg_start(pg)


def stats_json(proxy):
    status, _, body = adminlib.http(proxy.admin_port, "/stats")
    assert status == 200, (status, body)
    return json.loads(body)


def pool_stats(proxy, user=harness.DEFAULT_USER, database=harness.DATABASE):
    for p in stats_json(proxy)["pools"]:
        if p["user"] == user and p["database"] == database:
            return p
    return None


def proxy_server_count(proxy, user=harness.DEFAULT_USER):
    p = pool_stats(proxy, user)
    return sum(p["servers"].values()) if p else 0


def assert_proxy_up(test, proxy):
    """The process is alive and its admin port answers."""
    test.assertTrue(proxy.running(), "pgcoalesce exited with %s" % proxy.proc.poll())
    status, _, _ = adminlib.http(proxy.admin_port, "/healthz", timeout=5)
    test.assertEqual(status, 200, "/healthz")


def sqlstate_of(exc):
    """SQLSTATE of a psycopg2 error, or of a harness.ServerError."""
    return getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)


# ---------------------------------------------------------------- pgbench


PGBENCH_ENV = dict(os.environ, PGPASSWORD=harness.USERS[harness.DEFAULT_USER],
                   PGCONNECT_TIMEOUT="10")


def pgbench_init(pg):
    r = subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(pg.port),
                        "-U", harness.DEFAULT_USER, harness.DATABASE],
                       env=PGBENCH_ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError("pgbench -i failed:\n" + r.stdout)


class Pgbench:
    """One pgbench run through the proxy, in the background."""

    def __init__(self, proxy, label, script_args, seconds, clients=8, threads=2):
        self.label = label
        argv = ["pgbench", "-n", "-c", str(clients), "-j", str(threads), "-T", str(seconds),
                "-h", "127.0.0.1", "-p", str(proxy.port), "-U", harness.DEFAULT_USER]
        argv += list(script_args) + [harness.DATABASE]
        self.seconds = seconds
        self.proc = subprocess.Popen(argv, env=PGBENCH_ENV, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.rc = self.out = self.err = None

    def finish(self, grace):
        """Wait at most `seconds` + grace; AssertionError (after killing it) if
        it is still running then: a client hung."""
        try:
            self.out, self.err = self.proc.communicate(timeout=self.seconds + grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out, self.err = self.proc.communicate()
            raise AssertionError("pgbench %s still running %d s after its -T %d: a client hung\n"
                                 "%s\n%s" % (self.label, grace, self.seconds, self.out, self.err))
        self.rc = self.proc.returncode
        return self

    def number(self, pattern):
        m = re.search(pattern, self.out or "")
        return int(m.group(1)) if m else None

    @property
    def processed(self):
        return self.number(r"number of transactions actually processed: (\d+)")

    @property
    def failed(self):
        return self.number(r"number of failed transactions: (\d+)")

    @property
    def aborted(self):
        """pgbench's "client N ... aborted ..." lines."""
        return [line for line in (self.err or "").splitlines()
                if re.search(r"client \d+ .*aborted", line)]

    def error_kinds(self):
        """How the aborted clients' errors read, counted."""
        kinds = {}
        for line in self.aborted:
            m = re.search(r"(FATAL|ERROR): +(.*)$", line)
            if m:
                k = "%s %s" % m.groups()
            else:
                k = re.sub(r"client \d+ ", "", line.split("error: ")[-1])
            k = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "HOST:PORT", k)
            kinds[k] = kinds.get(k, 0) + 1
        return kinds

    def summary(self):
        return ("pgbench %s: exit %s, %s transactions, %s failed, %d clients aborted %r"
                % (self.label, self.rc, self.processed, self.failed, len(self.aborted),
                   self.error_kinds()))


class Worker(threading.Thread):
    """A psycopg2 client running short read-write transactions through the
    proxy until `deadline`, reconnecting after an error. Records every
    transaction as (start, end, None or (exception class, SQLSTATE, text))."""

    def __init__(self, proxy, n, table, deadline):
        super().__init__(daemon=True)
        self.proxy, self.n, self.table, self.deadline = proxy, n, table, deadline
        self.log = []
        self.connects = 0

    def run(self):
        conn = None
        while time.monotonic() < self.deadline:
            t0 = time.monotonic()
            err = None
            try:
                if conn is None or conn.closed:
                    conn = self.proxy.connect()
                    self.connects += 1
                with conn.cursor() as cur:
                    cur.execute("UPDATE %s SET n = n + 1 WHERE id = %%s RETURNING n" % self.table,
                                (self.n,))
                    cur.fetchone()
                    cur.execute("SELECT sum(n) FROM %s" % self.table)
                    cur.fetchone()
                conn.commit()
            except psycopg2.Error as e:
                err = (type(e).__name__, e.pgcode, str(e).strip().splitlines()[0] if str(e) else "")
                try:
                    if conn is not None and not conn.closed:
                        conn.rollback()
                except psycopg2.Error:
                    pass
            self.log.append((t0, time.monotonic(), err))
            time.sleep(0.02 if err is None else 0.05)
        if conn is not None:
            conn.close()


# ---------------------------------------------------------------- 1. postmaster SIGKILL


class PostgresKilledTest(harness.ProxyTestCase):
    """The postmaster SIGKILLed and restarted while pgbench -S and TPC-B (8
    clients each) and three psycopg2 clients run through the proxy."""

    proxy_settings = {"pool_size": 10, "max_overflow": 10}
    KILL_AT = 2.0  # seconds into the load
    DOWN_FOR = 1.0  # seconds PostgreSQL stays dead after its processes are gone
    BENCH_SECONDS = 8
    RECOVERY_BOUND = 10.0
    HANG_BOUND = 20.0  # no client call may take longer than this

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        pgbench_init(cls.pg)
        cls.pg.execute("DROP TABLE IF EXISTS fault_kill")
        cls.pg.execute("CREATE TABLE fault_kill (id int PRIMARY KEY, n int NOT NULL)")
        cls.pg.execute("INSERT INTO fault_kill SELECT i, 0 FROM generate_series(0, 9) i")
        cls.pg.execute("GRANT ALL ON fault_kill TO PUBLIC")

    def setUp(self):
        super().setUp()
        self.addCleanup(pg_ensure_running, self.pg)

    def probe(self):
        """One new client and one read-write transaction; None or the error."""
        try:
            c = self.proxy.connect()
            try:
                with c.cursor() as cur:
                    cur.execute("UPDATE fault_kill SET n = n + 1 WHERE id = 9")
                    cur.execute("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
                    cur.fetchone()
                c.commit()
            finally:
                c.close()
            return None
        except psycopg2.Error as e:
            return e

    def test_sigkill_postmaster_under_pgbench_then_restart(self):
        t_start = time.monotonic()
        deadline = t_start + self.BENCH_SECONDS - 1
        benches = [Pgbench(self.proxy, "-S", ["-S"], self.BENCH_SECONDS),
                   Pgbench(self.proxy, "TPC-B", [], self.BENCH_SECONDS)]
        workers = [Worker(self.proxy, i, "fault_kill", deadline) for i in range(3)]
        for w in workers:
            w.start()
        time.sleep(self.KILL_AT)
        before = pool_stats(self.proxy)["transactions"]
        self.assertGreater(before, 50, "the load did not get going before the kill")

        t_kill = time.monotonic()
        pg_kill(self.pg, signal.SIGKILL)
        t_gone = time.monotonic()
        time.sleep(self.DOWN_FOR)
        assert_proxy_up(self, self.proxy)  # PostgreSQL dead: the proxy answers
        t_restart = time.monotonic()
        pg_start(self.pg)
        t_ready = time.monotonic()

        # New clients, one after another, from the moment PostgreSQL accepts again.
        probes = []
        first_ok = None
        while time.monotonic() < t_ready + self.RECOVERY_BOUND + 5:
            t = time.monotonic()
            e = self.probe()
            probes.append((t, time.monotonic(), e))
            if e is None and first_ok is None:
                first_ok = t
            if first_ok is not None and t - first_ok > 1.5:
                break
            time.sleep(0.05)

        for b in benches:
            b.finish(grace=self.HANG_BOUND)
        for w in workers:
            w.join(self.HANG_BOUND)
        hung = [w.n for w in workers if w.is_alive()]

        # -- report
        for b in benches:
            note(b.summary())
        w_errors = [e for w in workers for (_, _, e) in w.log if e]
        kinds = {}
        for e in w_errors:
            k = "%s %s %s" % (e[0], e[1], re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "HOST:PORT", e[2]))
            kinds[k] = kinds.get(k, 0) + 1
        after_ready = [(t, e) for w in workers for (t, _, e) in w.log if t >= t_ready]
        last_fail = max([t for t, e in after_ready if e] + [t_ready])
        note("postmaster SIGKILL: its processes gone in %.2f s, restarted %.2f s after the kill, "
             "accepting %.2f s after that", t_gone - t_kill,
             t_restart - t_kill, t_ready - t_restart)
        note("recovery: first new transaction through the proxy succeeded %s s after "
             "PostgreSQL accepted again; %d probe failures before it; last psycopg2 worker "
             "failure %.2f s after it accepted",
             "%.2f" % (first_ok - t_ready) if first_ok else "never", sum(1 for p in probes if p[2]),
             last_fail - t_ready)
        note("psycopg2 workers: %d transactions, %d errors %r, %d connects, slowest call %.2f s",
             sum(len(w.log) for w in workers), len(w_errors), kinds,
             sum(w.connects for w in workers),
             max(end - start for w in workers for (start, end, _) in w.log))

        # -- no client hung
        self.assertEqual(hung, [], "psycopg2 workers still running: hung")
        slowest = max(end - start for w in workers for (start, end, _) in w.log)
        self.assertLess(slowest, self.HANG_BOUND, "a psycopg2 call took %.1f s" % slowest)

        # -- pgcoalesce stayed up
        assert_proxy_up(self, self.proxy)

        # -- the transactions that died got errors: TPC-B's clients are inside a
        # transaction nearly all the time, so some of them were when PostgreSQL died.
        tpcb = benches[1]
        self.assertNotEqual(tpcb.rc, 0, tpcb.summary())
        self.assertTrue(tpcb.aborted, tpcb.summary())
        self.assertTrue(w_errors or any(b.aborted for b in benches))
        for b in benches:
            self.assertIsNotNone(b.processed, "pgbench %s printed no result:\n%s\n%s"
                                 % (b.label, b.out, b.err))
            self.assertGreater(b.processed, 0, b.summary())
            for line in b.aborted:  # no client waited out pool_timeout
                self.assertNotIn("pool_timeout", line, b.summary())

        # -- no transaction half applied (a client moved to a new server in the
        # middle of its transaction would commit the rest of it on its own)
        acc, tel, br, hist = self.pg.query(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts),"
            " (SELECT sum(tbalance) FROM pgbench_tellers),"
            " (SELECT sum(bbalance) FROM pgbench_branches),"
            " (SELECT coalesce(sum(delta), 0) FROM pgbench_history)")[0]
        self.assertEqual((acc, tel, br), (hist, hist, hist),
                         "TPC-B balances disagree with pgbench_history")

        # -- recovery: new transactions succeed within the bound, and keep succeeding
        self.assertIsNotNone(first_ok, "no new transaction succeeded within %.0f s of the "
                             "restart: %r" % (self.RECOVERY_BOUND + 5, probes[-3:]))
        self.assertLess(first_ok - t_ready, self.RECOVERY_BOUND)
        late = [(round(t - t_ready, 2), repr(e)) for t, _, e in probes if e and t > first_ok]
        self.assertEqual(late, [], "new transactions failed after the first recovered one")
        self.assertLess(last_fail - t_ready, self.RECOVERY_BOUND,
                        "a psycopg2 worker still failed %.1f s after the restart"
                        % (last_fail - t_ready))
        for w in workers:  # every worker (some kept their client connection) is served again
            ok_after = [t for t, _, e in w.log if e is None and t > last_fail]
            self.assertTrue(ok_after, "worker %d never succeeded after the restart" % w.n)

        # -- and a fresh load runs without a single failure
        again = Pgbench(self.proxy, "after recovery", ["-b", "tpcb-like", "-b", "select-only"], 3)
        again.finish(grace=self.HANG_BOUND)
        note(again.summary())
        self.assertEqual((again.rc, again.failed, again.aborted), (0, 0, []), again.summary())
        self.assertGreater(again.processed, 0)


# ---------------------------------------------------------------- 2. PostgreSQL stopped


class PostgresDownTest(harness.ProxyTestCase):
    """PostgreSQL stopped (its port refuses connections). pool_timeout and
    server_connect_timeout are left long (30 s, 15 s): a client must hear of
    the refusal, not wait for them."""

    proxy_settings = {"pool_size": 4, "max_overflow": 6, "pool_timeout": 30,
                      "server_connect_timeout": 15}
    QUICK = 5.0

    def setUp(self):
        super().setUp()
        self.addCleanup(pg_ensure_running, self.pg)
        self.pid = self.proxy.proc.pid

    def stop_postgres(self):
        # a pool that has logged in once (the proxy knows the server's welcome)
        c = self.proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        c.close()
        pg_stop(self.pg)
        wait_until(lambda: proxy_server_count(self.proxy) == 0, timeout=10,
                   message="the proxy saw its server connections close")
        self.failures_before = pool_stats(self.proxy)["server_connect_failures"]

    def assert_class_08(self, exc, took, what):
        state = sqlstate_of(exc)
        self.assertIsNotNone(state, "%s: an error without SQLSTATE: %r" % (what, exc))
        self.assertTrue(state.startswith("08"), "%s: SQLSTATE %s, not class 08: %s"
                        % (what, state, exc))
        self.assertLess(took, self.QUICK, "%s: the error came after %.1f s" % (what, took))

    def start_again_and_check_served(self, conns=()):
        pg_start(self.pg)
        self.assertEqual(self.proxy.proc.pid, self.pid)
        # new clients, and the clients that stayed connected through the outage
        for user in (harness.DEFAULT_USER, "app_md5"):
            c = self.proxy.connect(user=user, autocommit=True)
            with c.cursor() as cur:
                cur.execute("SELECT current_user")
                self.assertEqual(cur.fetchone()[0], user)
            c.close()
        for c in conns:
            with c.cursor() as cur:
                cur.execute("SELECT 42")
                self.assertEqual(cur.fetchone()[0], 42)
        assert_proxy_up(self, self.proxy)

    def test_client_gets_class_08_at_once_and_is_served_after_restart(self):
        kept = self.proxy.connect(autocommit=True)  # connected before the outage
        self.addCleanup(kept.close)
        self.stop_postgres()

        # 1. a connected client's next statement: ERROR, it stays connected
        t = time.monotonic()
        with self.assertRaises(psycopg2.Error) as cm:
            with kept.cursor() as cur:
                cur.execute("SELECT 1")
        self.assert_class_08(cm.exception, time.monotonic() - t, "connected client")
        self.assertIn("refused", str(cm.exception))
        self.assertEqual(kept.closed, 0, "the client was disconnected")

        # 2. a new client of that pool: logs in, its first statement fails
        t = time.monotonic()
        with self.assertRaises(psycopg2.Error) as cm:
            c = self.proxy.connect(autocommit=True)
            try:
                with c.cursor() as cur:
                    cur.execute("SELECT 1")
            finally:
                c.close()
        self.assert_class_08(cm.exception, time.monotonic() - t, "new client")

        # 3. a new client of a pool that never reached PostgreSQL (the proxy
        # needs a server's welcome to finish the login): FATAL at login
        t = time.monotonic()
        with self.assertRaises(harness.ServerError) as cm:
            with self.proxy.raw() as raw:
                raw.login("app_md5", password=harness.USERS["app_md5"])
        self.assert_class_08(cm.exception, time.monotonic() - t, "first client of a new pool")
        self.assertEqual(cm.exception.fields.get("V"), "FATAL")

        assert_proxy_up(self, self.proxy)
        self.start_again_and_check_served([kept])

    def test_many_waiting_clients_get_class_08_at_once(self):
        """Eight connected clients send a statement at the same moment: each
        must hear of the refusal at once, not at pool_timeout (and the proxy
        must not retry the refused connection in a loop meanwhile)."""
        n = 8
        conns = [self.proxy.connect(autocommit=True) for _ in range(n)]
        for c in conns:
            self.addCleanup(c.close)
        self.stop_postgres()
        barrier = threading.Barrier(n)
        results = [None] * n

        def client(i):
            barrier.wait()
            t = time.monotonic()
            try:
                with conns[i].cursor() as cur:
                    cur.execute("SELECT 1")
                results[i] = (None, time.monotonic() - t)
            except psycopg2.Error as e:
                results[i] = (e, time.monotonic() - t)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(40)
        self.assertFalse([th for th in threads if th.is_alive()], "clients still waiting at 40 s")
        attempts = pool_stats(self.proxy)["server_connect_failures"] - self.failures_before
        note("%d clients at once with PostgreSQL down: %r; %d refused connection attempts",
             n, [(sqlstate_of(e), round(took, 2)) for e, took in results], attempts)
        for i, (e, took) in enumerate(results):
            self.assertIsNotNone(e, "client %d was served with PostgreSQL down" % i)
            self.assert_class_08(e, took, "client %d of %d" % (i, n))
        self.assertLess(attempts, 20 * n, "connection attempts in a loop")
        self.start_again_and_check_served(conns)


# ---------------------------------------------------------------- 3. pg_terminate_backend


class Bystander(threading.Thread):
    """A client in the same pool running short transactions until stopped."""

    def __init__(self, proxy, n):
        super().__init__(daemon=True)
        self.proxy, self.n = proxy, n
        self.done = 0
        self.errors = []
        self.stopping = threading.Event()
        self.start()

    def run(self):
        try:
            c = self.proxy.connect()
            try:
                i = 0
                while not self.stopping.is_set():
                    i += 1
                    with c.cursor() as cur:
                        cur.execute("SELECT %s::int * 2", (i,))
                        got = cur.fetchone()[0]
                        if got != 2 * i:
                            raise AssertionError("bystander %d got %r for %d * 2"
                                                 % (self.n, got, i))
                    c.commit()
                    self.done += 1
                    time.sleep(0.01)
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)

    def progress(self, n=5):
        start = self.done
        wait_until(lambda: self.done >= start + n or self.errors, timeout=20,
                   message="bystander %d running" % self.n)
        if self.errors:
            raise AssertionError("bystander %d failed: %r" % (self.n, self.errors[0]))

    def stop(self):
        self.stopping.set()
        self.join(20)
        if self.errors:
            raise AssertionError("bystander %d failed: %r" % (self.n, self.errors[0]))


class ServerTerminatedTest(harness.ProxyTestCase):
    """Two victims per test, each in its own transaction: a raw-protocol client
    (to see the exact messages) and a psycopg2 one (libpq reports a connection
    whose server sent FATAL and closed as "server closed the connection
    unexpectedly", without SQLSTATE, also when connected directly). Two
    bystanders in the same pool run short transactions throughout."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 4, "max_overflow": 0,
                      "pool_timeout": 20}

    def setUp(self):
        super().setUp()
        self.t = self.table_name("term")
        self.pg.execute("DROP TABLE IF EXISTS %s" % self.t)
        self.pg.execute("CREATE TABLE %s (x int)" % self.t)
        self.pg.execute("GRANT ALL ON %s TO PUBLIC" % self.t)
        self.bystanders = [Bystander(self.proxy, i) for i in range(2)]
        for b in self.bystanders:
            self.addCleanup(b.stop)
            b.progress()

    def victims(self):
        """(raw, its backend pid, psycopg2 connection, its backend pid), each
        inside a transaction that inserted a row."""
        raw = self.proxy.raw_login()
        self.addCleanup(raw.close)
        r = raw.query("BEGIN; INSERT INTO %s VALUES (1); SELECT pg_backend_pid()" % self.t)
        self.assertEqual((r.errors, r.status), ([], "T"))
        raw_pid = int(r.sets[-1]["rows"][0][0])
        conn = self.proxy.connect()
        self.addCleanup(conn.close)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO %s VALUES (1)" % self.t)
            cur.execute("SELECT pg_backend_pid()")
            conn_pid = cur.fetchone()[0]
        self.assertNotEqual(raw_pid, conn_pid)
        return raw, raw_pid, conn, conn_pid

    def terminate(self, *pids):
        for pid in pids:
            self.assertEqual(self.pg.query("SELECT pg_terminate_backend(%s)", (pid,)), [(True,)])
        wait_until(lambda: not set(pids) & self.pg.backend_pids(),
                   message="backends %r gone" % (pids,))

    def assert_raw_told(self, raw, sent=None):
        """raw gets PostgreSQL's FATAL 57P01 first, then at most errors of
        class 08, and is closed (no ReadyForQuery)."""
        if sent is not None:
            try:
                raw.send(sent)
            except OSError:
                pass
        msgs = raw.read_until_closed(timeout=10)
        errors = [harness.parse_error_fields(b) for k, b in msgs if k == "E"]
        note("raw client whose server was terminated got: %r",
             [(e.get("V"), e.get("C"), e.get("M")) for e in errors])
        self.assertTrue(errors, "closed without an ErrorResponse: %r" % msgs)
        self.assertEqual((errors[0].get("V"), errors[0].get("C")), ("FATAL", "57P01"), errors)
        for e in errors[1:]:
            self.assertTrue(e.get("C", "").startswith("08"), errors)
        self.assertNotIn("Z", [k for k, _ in msgs])

    def assert_psycopg2_told(self, exc, conn):
        self.assertIsInstance(exc, psycopg2.OperationalError, repr(exc))
        self.assertNotEqual(conn.closed, 0, "the psycopg2 victim's connection is still open")

    def assert_recovered(self, victim_pids):
        # a victim reconnects; nothing of the terminated transactions remains
        c = self.proxy.connect()
        with c.cursor() as cur:
            cur.execute("INSERT INTO %s VALUES (2)" % self.t)
        c.commit()
        c.close()
        self.assertEqual(self.pg.query("SELECT x FROM %s" % self.t), [(2,)])
        for b in self.bystanders:  # the others never noticed
            b.progress()
        # the pool opens server connections again as needed: four
        # transactions at once hold pool_size live server connections
        holders = [self.proxy.connect() for _ in range(4)]
        try:
            pids = set()
            for h in holders:
                with h.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid()")
                    pids.add(cur.fetchone()[0])
            self.assertEqual(len(pids), 4)
            self.assertFalse(pids & set(victim_pids))
            self.assertTrue(pids <= self.pg.backend_pids())
            self.assertEqual(self.pg.server_count(), 4)
        finally:
            for h in holders:
                h.close()
        for b in self.bystanders:
            b.progress()
        assert_proxy_up(self, self.proxy)

    def test_terminated_while_idle_in_transaction(self):
        raw, raw_pid, conn, conn_pid = self.victims()
        self.terminate(raw_pid, conn_pid)
        self.assert_raw_told(raw, harness.query_message("INSERT INTO %s VALUES (3)" % self.t))
        with self.assertRaises(psycopg2.Error) as cm:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO %s VALUES (3)" % self.t)
            conn.commit()
        self.assert_psycopg2_told(cm.exception, conn)
        self.assert_recovered([raw_pid, conn_pid])

    def test_terminated_during_a_query(self):
        raw, raw_pid, conn, conn_pid = self.victims()
        raw.send(harness.query_message("SELECT pg_sleep(30)"))
        box = {}

        def run():
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_sleep(30)")
                box["result"] = "finished"
            except psycopg2.Error as e:
                box["error"] = e

        th = threading.Thread(target=run, daemon=True)
        th.start()
        wait_until(lambda: len([b for b in self.pg.backends() if b["pid"] in (raw_pid, conn_pid)
                                and b["state"] == "active"
                                and "pg_sleep(30)" in (b["query"] or "")]) == 2,
                   message="both pg_sleep running")
        self.terminate(raw_pid, conn_pid)
        self.assert_raw_told(raw)
        th.join(10)
        self.assertFalse(th.is_alive(), "the client still waits 10 s after its server died")
        self.assertIn("error", box, box)
        self.assert_psycopg2_told(box["error"], conn)
        self.assert_recovered([raw_pid, conn_pid])


# ---------------------------------------------------------------- 4. SIGHUP with a broken file


class BrokenReloadTest(harness.ProxyTestCase):
    """The running config: pool_size 1, max_overflow 0, pool_timeout 1. Each
    broken file also sets pool_timeout = 1.5 on a good line, which must not
    apply either."""

    proxy_settings = dict(adminlib.ADMIN_SETTINGS, pool_size=1, max_overflow=0, pool_timeout=1)
    users = adminlib.ADMIN_USERS

    # (what, where the bad line goes: "config" or "auth", the line, words the error must have)
    BROKEN = [
        ("syntax: no '='", "config", "pool_size 7", ""),
        ("syntax: unclosed section", "config", "[databases", ""),
        ("bad value", "config", "server_tls_sslmode = sometimes", "server_tls_sslmode"),
        ("out of range", "config", "pool_recycle = 0", "pool_recycle"),
        ("set twice", "config", "pool_timeout = 2", "pool_timeout"),
        ("auth_file syntax", "auth", '"late_user" late_pw', ""),
    ]

    def config(self, name):
        return {r["key"]: r["value"] for r in adminlib.admin_rows(self.proxy, "SHOW CONFIG")}[name]

    def write_broken(self, where, bad):
        """Write the config (pool_timeout 1.5) and auth file with `bad` as one
        more line; returns (path, line number) of the bad line."""
        self.proxy.settings["pool_timeout"] = 1.5
        self.proxy.write_config()
        path = self.proxy.config_path if where == "config" else \
            os.path.join(self.proxy.dir, self.proxy.settings["auth_file"])
        with open(path) as f:
            lines = f.read().splitlines()
        at = lines.index("[databases]") if where == "config" else 1
        lines.insert(at, bad)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path, at + 1

    def sighup(self, offset, word, count):
        self.proxy.proc.send_signal(signal.SIGHUP)
        return wait_until(lambda: (lambda t: t if t.count(word) >= count else None)(
            self.proxy.log_since(offset)), timeout=10, message="%r in the log" % word)

    def waiter_message(self):
        """The 53300 a client gets waiting for the pool's one server: it names
        the pool_timeout in force."""
        holder = self.proxy.connect()
        waiter = self.proxy.connect(autocommit=True)
        try:
            with holder.cursor() as cur:
                cur.execute("SELECT 1")  # holds the only server connection
            with self.assertRaises(psycopg2.Error) as cm:
                with waiter.cursor() as cur:
                    cur.execute("SELECT 2")
            self.assertEqual(cm.exception.pgcode, "53300", str(cm.exception))
            return str(cm.exception)
        finally:
            holder.close()
            waiter.close()

    def tearDown(self):
        self.proxy.settings["pool_timeout"] = 1
        self.proxy.write_config()
        self.proxy.proc.send_signal(signal.SIGHUP)
        super().tearDown()

    def test_broken_file_changes_nothing_then_fixed_file_applies(self):
        connected = self.proxy.connect(autocommit=True)
        self.addCleanup(connected.close)
        failures0 = stats_json(self.proxy)["reload_failures"]
        offset = self.proxy.log_offset()
        for n, (what, where, bad, words) in enumerate(self.BROKEN, 1):
            with self.subTest(what):
                path, line = self.write_broken(where, bad)
                log = self.sighup(offset, "reload failed", n)
                failed = [ln for ln in log.splitlines() if "reload failed" in ln][n - 1]
                note("SIGHUP, %s: %s", what, failed.split("configuration: ", 1)[-1])
                self.assertIn("%s:%d:" % (os.path.basename(path), line), failed, failed)
                self.assertIn(words, failed)
                self.assertEqual(stats_json(self.proxy)["reload_failures"], failures0 + n)
                self.assertEqual(self.config("pool_timeout"), "1", "applied from " + what)
                self.assertEqual(self.config("pool_size"), "1")
                self.assertTrue(self.proxy.running())
        self.assertNotIn("reloaded", self.proxy.log_since(offset))
        # still in force, in behaviour too: no new user, a 1 s pool_timeout
        with self.assertRaises(psycopg2.Error):
            self.proxy.connect(user="late_user", password="late_pw").close()
        self.assertIn("pool_timeout (1 s)", self.waiter_message())
        with connected.cursor() as cur:  # nobody was disconnected
            cur.execute("SELECT 1")

        # fixed: the next SIGHUP applies it
        self.proxy.settings["pool_timeout"] = 1.5
        self.proxy.write_config()
        self.sighup(offset, "reloaded", 1)
        self.assertEqual(self.config("pool_timeout"), "1.5")
        self.assertIn("pool_timeout (1.5 s)", self.waiter_message())
        self.assertEqual(stats_json(self.proxy)["reload_failures"], failures0 + len(self.BROKEN))
        with connected.cursor() as cur:
            cur.execute("SELECT 1")


# ---------------------------------------------------------------- 5. SIGTERM under load


class ShutdownUnderLoadTest(harness.PgTestCase):
    """Six clients commit two-statement transactions (a pause between the
    statements, so that SIGTERM finds them in the middle), one more holds a
    transaction open across SIGTERM for 2 s; shutdown_timeout is 15 s."""

    SHUTDOWN_TIMEOUT = 15
    CLIENTS = 6

    def setUp(self):
        super().setUp()
        self.proxy = harness.Proxy(self.pg, {"shutdown_timeout": self.SHUTDOWN_TIMEOUT,
                                             "pool_size": 8, "max_overflow": 0})
        self.proxy.start()
        self.addCleanup(self.proxy.cleanup)
        self.pg.execute("DROP TABLE IF EXISTS fault_shut")
        self.pg.execute("CREATE TABLE fault_shut (client int, seq int, part int, "
                        "PRIMARY KEY (client, seq, part))")
        self.pg.execute("GRANT ALL ON fault_shut TO PUBLIC")

    def test_sigterm_loses_no_acknowledged_commit(self):
        sigterm_at = [None]
        sent = threading.Event()
        records = {}  # client -> [(seq, first INSERT answered at, ended at, outcome, error)]

        def client(i):
            rnd = random.Random(i)
            mine = records.setdefault(i, [])
            try:
                conn = self.proxy.connect()
            except psycopg2.Error as e:
                mine.append((None, None, time.monotonic(), "connect", e))
                return
            seq = 0
            try:
                while True:
                    seq += 1
                    first = None
                    try:
                        with conn.cursor() as cur:
                            cur.execute("INSERT INTO fault_shut VALUES (%s, %s, 1)", (i, seq))
                            first = time.monotonic()
                            time.sleep(rnd.uniform(0.05, 0.4))
                            cur.execute("INSERT INTO fault_shut VALUES (%s, %s, 2)", (i, seq))
                        conn.commit()
                        mine.append((seq, first, time.monotonic(), "committed", None))
                    except psycopg2.Error as e:
                        mine.append((seq, first, time.monotonic(), "error", e))
                        return
            finally:
                conn.close()

        def long_client():
            """BEGIN before SIGTERM, COMMIT 2 s after it."""
            mine = records.setdefault(-1, [])
            conn = self.proxy.connect()
            try:
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO fault_shut VALUES (-1, 1, 1)")
                    first = time.monotonic()
                    sent.wait(30)
                    time.sleep(2.0)
                    cur.execute("INSERT INTO fault_shut VALUES (-1, 1, 2)")
                conn.commit()
                mine.append((1, first, time.monotonic(), "committed", None))
            except psycopg2.Error as e:
                mine.append((1, first, time.monotonic(), "error", e))
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(self.CLIENTS)]
        threads.append(threading.Thread(target=long_client, daemon=True))
        for th in threads:
            th.start()
        wait_until(lambda: sum(len(r) for r in records.values()) >= 15, timeout=30,
                   message="transactions committing")
        sigterm_at[0] = time.monotonic()
        self.proxy.proc.send_signal(signal.SIGTERM)
        sent.set()
        try:
            rc = self.proxy.proc.wait(self.SHUTDOWN_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            rc = "still running"
        exited = time.monotonic() - sigterm_at[0]
        for th in threads:
            th.join(10)
        self.assertFalse([th for th in threads if th.is_alive()], "clients still running")

        t_sig = sigterm_at[0]
        flat = [(c, seq, first, end, outcome, err) for c, rs in records.items()
                for (seq, first, end, outcome, err) in rs]
        acked = {(c, seq) for c, seq, _, _, o, _ in flat if o == "committed"}
        # under way at SIGTERM: the first INSERT answered before it, the
        # transaction not over by then
        under_way = [(c, seq, o, err) for c, seq, first, end, o, err in flat
                     if first is not None and first < t_sig <= end]
        refused = [(c, seq, first, err) for c, seq, first, _, o, err in flat if o != "committed"]
        in_table = {}
        for c, seq, part in self.pg.query("SELECT client, seq, part FROM fault_shut"):
            in_table.setdefault((c, seq), set()).add(part)
        note("SIGTERM under load: %d commits acknowledged, %d transactions under way at "
             "SIGTERM, exit status %s %.2f s after SIGTERM; refusals %r",
             len(acked), len(under_way), rc, exited,
             sorted({"%s %s" % (type(e).__name__, str(e).strip().splitlines()[0])
                     for _, _, _, e in refused}))

        self.assertEqual(rc, 0, "exit status; log:\n" + self.proxy.log_since(0)[-3000:])
        # every transaction under way at SIGTERM finished and committed,
        # the one that went on 2 s after it included
        self.assertGreaterEqual(len(under_way), self.CLIENTS // 2,
                                "too few transactions under way at SIGTERM to tell")
        cut = [(c, seq, err) for c, seq, o, err in under_way if o != "committed"]
        self.assertEqual(cut, [], "transactions under way at SIGTERM were cut")
        self.assertIn((-1, 1), acked, "the transaction open across SIGTERM")
        # the transactions all ended within 2.5 s: the exit did not wait for the timeout
        self.assertLess(exited, self.SHUTDOWN_TIMEOUT,
                        "exited only at shutdown_timeout, after the last transaction had ended")
        # every acknowledged COMMIT is in the table, whole; nothing else is
        self.assertEqual(set(in_table), acked,
                         "transactions in the table vs COMMITs acknowledged to clients")
        half = {k: v for k, v in in_table.items() if v != {1, 2}}
        self.assertEqual(half, {}, "transactions half in the table")
        # the clients refused were refused at the start of a transaction (the
        # proxy sends FATAL 57P01 "shutting down", test_signals checks the
        # bytes; libpq reports a FATAL followed by the close as "server closed
        # the connection unexpectedly", without SQLSTATE)
        self.assertTrue(refused, "no client was refused after SIGTERM")
        for c, seq, first, err in refused:
            self.assertIsNone(first, "client %s transaction %s cut after its first statement: "
                              "%r" % (c, seq, err))
            self.assertIsInstance(err, psycopg2.OperationalError)
            self.assertIn(err.pgcode, (None, "57P01"), err)


# ---------------------------------------------------------------- 6. Redis killed


class RedisKilledTest(harness.ProxyTestCase):
    """Four clients each own three keys: UPDATE one through the proxy, then
    read it back by primary key (a cacheable read) and expect that value; two
    more read any key and expect at least its last acknowledged value. Redis
    is SIGKILLed in the middle and started again on its port."""

    KEYS = 12
    WRITERS = 4

    @classmethod
    def setUpClass(cls):
        cls.redis = harness.redis()
        cls.proxy_settings = dict(adminlib.ADMIN_SETTINGS, cache_url=cls.redis.url,
                                  cache_namespace="tfaults", cache_connect_timeout="0.5")
        cls.users = adminlib.ADMIN_USERS
        super().setUpClass()
        cls.pg.execute("DROP TABLE IF EXISTS fault_cache")
        cls.pg.execute("CREATE TABLE fault_cache (id int PRIMARY KEY, v int NOT NULL)")
        cls.pg.execute("INSERT INTO fault_cache SELECT i, 0 FROM generate_series(1, %d) i"
                       % cls.KEYS)
        cls.pg.execute("GRANT ALL ON fault_cache TO PUBLIC")

    def cache(self):
        status, _, body = adminlib.http(self.proxy.admin_port, "/cache")
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def kill_redis(self):
        self.redis.proc.send_signal(signal.SIGKILL)
        self.redis.proc.wait(10)

    def start_redis(self):
        self.redis.proc = subprocess.Popen(self.redis.proc.args, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           preexec_fn=harness._die_with_parent(signal.SIGKILL))

        def pong():
            try:
                return self.redis.command("PING") == "PONG"
            except (OSError, RuntimeError):
                return False
        wait_until(pong, timeout=20, message="Redis answering again")

    @staticmethod
    def read(cur, k):
        cur.execute("SELECT v FROM fault_cache WHERE id = %s", (k,))
        return cur.fetchone()[0]

    def wait_hit(self):
        c = self.proxy.connect(autocommit=True)
        try:
            with c.cursor() as cur:
                def hit():
                    before = self.cache()["hits"]
                    self.read(cur, 1)
                    return self.cache()["hits"] > before
                wait_until(hit, timeout=15, message="a read answered from the cache")
        finally:
            c.close()

    def test_redis_sigkill_under_pk_workload(self):
        self.addCleanup(lambda: self.redis.proc.poll() is None or self.start_redis())
        self.wait_hit()
        before = self.cache()
        committed = {k: 0 for k in range(1, self.KEYS + 1)}  # last acknowledged value per key
        lock = threading.Lock()
        errors, wrong = [], []
        counts = {"writes": 0, "reads": 0}
        stop = threading.Event()

        def writer(i):
            rnd = random.Random(i)
            keys = [k for k in committed if k % self.WRITERS == i]
            try:
                auto = self.proxy.connect(autocommit=True)
                tx = self.proxy.connect()
                try:
                    with auto.cursor() as cur, tx.cursor() as tcur:
                        while not stop.is_set():
                            k = rnd.choice(keys)
                            if rnd.random() < 0.5:
                                cur.execute("UPDATE fault_cache SET v = v + 1 WHERE id = %s "
                                            "RETURNING v", (k,))
                                v = cur.fetchone()[0]
                            else:
                                tcur.execute("UPDATE fault_cache SET v = v + 1 WHERE id = %s "
                                             "RETURNING v", (k,))
                                v = tcur.fetchone()[0]
                                tx.commit()
                            with lock:
                                committed[k] = v
                                counts["writes"] += 1
                            got = self.read(cur, k)  # the writer reads its own write
                            if got != v:
                                wrong.append((k, "wrote", v, "read", got))
                            got = self.read(cur, k)  # twice: the second may be a hit
                            if got != v:
                                wrong.append((k, "wrote", v, "read again", got))
                            with lock:
                                counts["reads"] += 2
                finally:
                    auto.close()
                    tx.close()
            except Exception as e:  # noqa: BLE001 - reported by the test
                errors.append("writer %d: %r" % (i, e))

        def reader(i):
            rnd = random.Random(100 + i)
            try:
                c = self.proxy.connect(autocommit=True)
                try:
                    with c.cursor() as cur:
                        while not stop.is_set():
                            k = rnd.randint(1, self.KEYS)
                            with lock:
                                floor = committed[k]
                            got = self.read(cur, k)
                            if got < floor:
                                wrong.append((k, "committed", floor, "read", got))
                            with lock:
                                counts["reads"] += 1
                finally:
                    c.close()
            except Exception as e:  # noqa: BLE001
                errors.append("reader %d: %r" % (i, e))

        threads = [threading.Thread(target=writer, args=(i,), daemon=True)
                   for i in range(self.WRITERS)]
        threads += [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(2)]
        for th in threads:
            th.start()
        try:
            time.sleep(1.0)
            self.kill_redis()
            wait_until(lambda: not self.cache()["redis_ready"], timeout=10,
                       message="redis_ready false after the SIGKILL")
            time.sleep(1.0)
            during = self.cache()
            self.start_redis()
            t_back = time.monotonic()
            wait_until(lambda: self.cache()["redis_ready"], timeout=15,
                       message="redis_ready true again after the restart")
            t_ready = time.monotonic()
            time.sleep(1.0)
        finally:
            stop.set()
            for th in threads:
                th.join(20)
        self.assertFalse([th for th in threads if th.is_alive()], "clients hung")
        self.wait_hit()  # the cache is used again, not only connected
        after = self.cache()
        note("Redis SIGKILL under load: %d writes, %d reads, %d errors, %d wrong reads; "
             "proxy saw it down, reconnected %.2f s after Redis was back; bypass_redis +%d, "
             "hits %d -> %d -> %d", counts["writes"], counts["reads"], len(errors), len(wrong),
             t_ready - t_back, after["bypass_redis"] - before["bypass_redis"], before["hits"],
             during["hits"], after["hits"])
        self.assertEqual(errors, [], "client errors")
        self.assertEqual(wrong[:10], [], "reads that missed an acknowledged update")
        self.assertGreater(counts["writes"], 20)
        self.assertGreater(during["bypass_redis"] + during["bypass_error"],
                           before["bypass_redis"] + before["bypass_error"],
                           "reads did not bypass the dead Redis: %r" % during)
        self.assertTrue(after["redis_ready"])
        self.assertGreater(after["hits"], during["hits"])
        console = {r["name"]: r["value"] for r in adminlib.admin_rows(self.proxy, "SHOW CACHE")}
        self.assertEqual(console["redis_ready"], "yes")
        # and the answers are PostgreSQL's
        c = self.proxy.connect(autocommit=True)
        try:
            with c.cursor() as cur:
                for k, v in self.pg.query("SELECT id, v FROM fault_cache ORDER BY id"):
                    self.assertEqual(self.read(cur, k), v)
        finally:
            c.close()


if __name__ == "__main__":
    unittest.main()
