"""The admin port: the psql console (SHOW, RELOAD, PAUSE/RESUME, RECONNECT,
KILL, SHUTDOWN), HTTP (/metrics, /stats, /healthz) on the same port, and who
may do what. Counts are checked against connections the tests open and
against pg_stat_activity."""

import json
import os
import signal
import threading
import time
import unittest

import psycopg2
import psycopg2.errors

import adminlib
import harness
from adminlib import ADMIN_SETTINGS, ADMIN_USERS, admin_command, admin_connect, admin_rows
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module


class Holders:
    """n clients through the proxy, each inside an open transaction until release()."""

    def __init__(self, proxy, n):
        self.conns = []
        for _ in range(n):
            c = proxy.connect()
            with c.cursor() as cur:  # psycopg2 sends BEGIN first: a transaction is open
                cur.execute("SELECT 1")
            self.conns.append(c)

    def release(self):
        for c in self.conns:
            c.commit()
            c.close()
        self.conns = []


class ConsoleTest(harness.ProxyTestCase):
    proxy_settings = dict(ADMIN_SETTINGS, pool_size=3, max_overflow=2, pool_timeout=30)
    users = ADMIN_USERS

    def test_show_pools_counts_match_connections(self):
        holders = Holders(self.proxy, 2)
        idle = self.proxy.connect(autocommit=True)
        with idle.cursor() as cur:
            cur.execute("SELECT 1")
        try:
            row = adminlib.pool_row(self.proxy)
            self.assertIsNotNone(row, admin_rows(self.proxy, "SHOW POOLS"))
            self.assertEqual((row["cl_active"], row["cl_idle"], row["cl_waiting"]), (2, 1, 0))
            self.assertEqual(row["sv_active"], 2)
            self.assertEqual(row["sv_active"] + row["sv_idle"] + row["sv_tested"]
                             + row["sv_login"], self.pg.server_count())
            self.assertEqual(row["pool_mode"], "transaction")
            self.assertEqual((row["pool_size"], row["max_overflow"]), (3, 2))
            # psql sees the same, in PgBouncer's column names
            r = adminlib.psql(self.proxy, "SHOW POOLS")
            self.assertEqual(r.returncode, 0, r.stderr)
            lines = r.stdout.strip().split("\n")
            cols = lines[0].split("|")
            for want in ("database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle",
                         "sv_used", "sv_login", "maxwait", "maxwait_us", "pool_mode",
                         "overflow_in_use"):
                self.assertIn(want, cols)
            rows = [dict(zip(cols, line.split("|"))) for line in lines[1:-1]]
            mine = [x for x in rows if x["database"] == "app" and x["user"] == "app_scram"]
            self.assertEqual(len(mine), 1, r.stdout)
            self.assertEqual((mine[0]["cl_active"], mine[0]["cl_idle"]), ("2", "1"))
        finally:
            holders.release()
            idle.close()
        harness.wait_until(lambda: adminlib.pool_row(self.proxy)["cl_active"] == 0)

    def test_waiting_client_and_overflow_show(self):
        holders = Holders(self.proxy, 5)  # pool_size 3 + max_overflow 2
        waiter = self.proxy.connect(autocommit=True)
        t = adminlib.QueryThread(waiter, "SELECT 42")
        try:
            row = adminlib.pool_row(self.proxy)
            self.assertEqual(row["overflow_in_use"], 2)
            t.start()
            row = harness.wait_until(
                lambda: (lambda r: r if r["cl_waiting"] == 1 else None)(
                    adminlib.pool_row(self.proxy)),
                message="the sixth client waits")
            time.sleep(1.1)
            row = adminlib.pool_row(self.proxy)
            self.assertEqual(row["cl_waiting"], 1)
            self.assertGreaterEqual(row["maxwait"], 1)
            clients = admin_rows(self.proxy, "SHOW CLIENTS")
            waiting = [c for c in clients if c["state"] == "waiting"]
            self.assertEqual(len(waiting), 1)
            self.assertGreaterEqual(waiting[0]["wait"], 1)
        finally:
            holders.release()
        self.assertTrue(t.done.wait(10))
        self.assertIsNone(t.error)
        self.assertEqual(t.result, [(42,)])
        waiter.close()

    def test_show_views_have_their_columns(self):
        c = self.proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        try:
            stats = admin_rows(self.proxy, "SHOW STATS")
            app = [s for s in stats if s["database"] == "app"]
            self.assertEqual(len(app), 1)
            self.assertGreaterEqual(app[0]["total_query_count"], 1)
            self.assertGreater(app[0]["total_received"], 0)
            clients = admin_rows(self.proxy, "SHOW CLIENTS")
            self.assertTrue(any(x["user"] == "app_scram" and x["database"] == "app"
                                and x["state"] == "idle" and x["addr"] == "127.0.0.1"
                                for x in clients), clients)
            servers = admin_rows(self.proxy, "SHOW SERVERS")
            pids = {s["remote_pid"] for s in servers if s["user"] == "app_scram"}
            self.assertEqual(pids, self.pg.backend_pids())
            dbs = {d["name"]: d for d in admin_rows(self.proxy, "SHOW DATABASES")}
            self.assertEqual(set(dbs), {"app", "*"})
            self.assertEqual(dbs["app"]["port"], self.pg.port)
            self.assertEqual(dbs["app"]["pool_size"], 3)
            config = {r["key"]: r for r in admin_rows(self.proxy, "show config")}
            self.assertEqual(config["admin_port"]["value"], str(self.proxy.admin_port))
            self.assertEqual(config["admin_port"]["changeable"], "no")
            self.assertEqual(config["pool_size"]["value"], "3")
            self.assertEqual(config["pool_size"]["changeable"], "yes")
            version = admin_rows(self.proxy, "SHOW VERSION")
            self.assertRegex(version[0]["version"], r"^pgcoalesce \d+\.\d+")
            helps = [h["command"] for h in admin_rows(self.proxy, "SHOW HELP")]
            for want in ("SHOW POOLS", "RELOAD", "PAUSE [db]", "RESUME [db]", "KILL db",
                         "SHUTDOWN [IMMEDIATE]"):
                self.assertIn(want, helps)
        finally:
            c.close()

    def test_unknown_command_says_see_show_help(self):
        conn = admin_connect(self.proxy)
        try:
            with conn.cursor() as cur:
                with self.assertRaises(psycopg2.Error) as cm:
                    cur.execute("FROBNICATE ALL")
                self.assertEqual(cm.exception.pgcode, "42601")
                self.assertIn('unknown command "FROBNICATE"', str(cm.exception))
                self.assertIn("SHOW HELP", str(cm.exception))
                with self.assertRaises(psycopg2.Error) as cm:
                    cur.execute("SHOW LOLLIPOPS")
                self.assertEqual(cm.exception.pgcode, "42601")
                self.assertIn("SHOW HELP", str(cm.exception))
                cur.execute("SHOW VERSION")  # the session goes on
                self.assertEqual(len(cur.fetchall()), 1)
        finally:
            conn.close()

    def test_psql_reports_unknown_command(self):
        r = adminlib.psql(self.proxy, "SELECT 1")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("unknown command", r.stderr)
        self.assertIn("SHOW HELP", r.stderr)

    def test_stats_user_may_only_show(self):
        rows = admin_rows(self.proxy, "SHOW POOLS", user=adminlib.STATS_USER)
        self.assertIsInstance(rows, list)
        for command in ("RELOAD", "PAUSE", "RESUME", "KILL app", "SHUTDOWN", "RECONNECT"):
            with self.assertRaises(psycopg2.Error) as cm:
                admin_command(self.proxy, command, user=adminlib.STATS_USER)
            self.assertEqual(cm.exception.pgcode, "42501", command)
            self.assertIn("admin_users", str(cm.exception))
        self.assertTrue(self.proxy.running())
        self.assertEqual(adminlib.http(self.proxy.admin_port, "/healthz")[0], 200)

    def test_user_not_listed_is_refused(self):
        with self.assertRaises(psycopg2.OperationalError) as cm:
            admin_connect(self.proxy, user="app_scram", password="scram_pw")
        self.assertIn("admin_users or stats_users", str(cm.exception))

    def test_wrong_database_is_refused(self):
        with self.assertRaises(psycopg2.OperationalError) as cm:
            admin_connect(self.proxy, dbname="app")
        self.assertIn('"pgcoalesce"', str(cm.exception))

    def test_extended_protocol_is_refused_clearly(self):
        with harness.RawConn(self.proxy.admin_port) as c:
            c.login(adminlib.ADMIN_USER, "pgcoalesce", adminlib.ADMIN_PW)
            c.send(harness.parse_message("SHOW POOLS") + harness.bind_message()
                   + harness.execute_message() + harness.sync_message())
            r = c.read_result()
            self.assertEqual(len(r.errors), 1)
            self.assertEqual(r.errors[0]["C"], "0A000")
            self.assertEqual(r.status, "I")
            r = c.query("SHOW VERSION; SHOW VERSION")  # two statements, two results
            self.assertEqual(len(r.sets), 2)
            self.assertEqual(r.sets[0]["tag"], "SHOW")

    def test_reconnect_replaces_idle_servers(self):
        c = self.proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        before = self.pg.backend_pids()
        self.assertTrue(before)
        self.assertEqual(admin_command(self.proxy, "RECONNECT app"), "RECONNECT")
        harness.wait_until(lambda: not (self.pg.backend_pids() & before),
                           message="old server connections closed")
        with c.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            self.assertNotIn(cur.fetchone()[0], before)
        c.close()

    def test_kill_drops_clients_of_database(self):
        c = self.proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        with self.assertRaises(psycopg2.Error) as cm:
            admin_command(self.proxy, "KILL")
        self.assertEqual(cm.exception.pgcode, "42601")
        with self.assertRaises(psycopg2.Error) as cm:
            admin_command(self.proxy, "KILL nosuchdb_anywhere_x")
        self.assertEqual(admin_command(self.proxy, "KILL app"), "KILL")
        with self.assertRaises(psycopg2.Error):
            with c.cursor() as cur:
                cur.execute("SELECT 1")
        c.close()
        self.pg.wait_no_backends()
        c = self.proxy.connect(autocommit=True)  # new clients are served again
        with c.cursor() as cur:
            cur.execute("SELECT 2")
            self.assertEqual(cur.fetchone(), (2,))
        c.close()


class AdminAuthTest(harness.ProxyTestCase):
    proxy_settings = dict(ADMIN_SETTINGS, auth_type="scram-sha-256")
    users = dict(ADMIN_USERS, **{adminlib.STATS_USER: harness.md5_secret(adminlib.STATS_USER,
                                                                           adminlib.STATS_PW)})

    def test_scram_admin_login(self):
        r = adminlib.psql(self.proxy, "SHOW VERSION")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("pgcoalesce", r.stdout)
        with harness.RawConn(self.proxy.admin_port) as c:
            c.login(adminlib.ADMIN_USER, "pgcoalesce", adminlib.ADMIN_PW)
            self.assertEqual(c.auth_requests[0], 10)  # SASL

    def test_wrong_password_refused(self):
        r = adminlib.psql(self.proxy, "SHOW VERSION", password="nope")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("password authentication failed", r.stderr)
        with self.assertRaises(psycopg2.OperationalError):
            admin_connect(self.proxy, password="wrong")

    def test_md5_secret_under_scram_fails_like_postgres(self):
        # an md5 hash cannot answer SCRAM: PostgreSQL refuses such a login too
        with self.assertRaises(psycopg2.OperationalError):
            admin_connect(self.proxy, user=adminlib.STATS_USER)


class AdminMd5Test(harness.ProxyTestCase):
    proxy_settings = dict(ADMIN_SETTINGS, auth_type="md5")
    users = ADMIN_USERS

    def test_md5_login(self):
        with harness.RawConn(self.proxy.admin_port) as c:
            c.login(adminlib.STATS_USER, "pgcoalesce", adminlib.STATS_PW)
            self.assertEqual(c.auth_requests[0], 5)
            r = c.query("SHOW POOLS")
            self.assertEqual(r.status, "I")
            self.assertEqual(r.sets[0]["columns"][:3], ["database", "user", "cl_active"])
        with harness.RawConn(self.proxy.admin_port) as c:
            with self.assertRaises(harness.ServerError) as cm:
                c.login(adminlib.STATS_USER, "pgcoalesce", "bad")
            self.assertEqual(cm.exception.sqlstate, "28P01")


class HttpTest(harness.ProxyTestCase):
    proxy_settings = dict(ADMIN_SETTINGS)
    users = ADMIN_USERS

    def metrics(self):
        status, headers, body = adminlib.http(self.proxy.admin_port, "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        text = body.decode()
        return text, adminlib.parse_prometheus(text)

    def test_metrics_parse_and_move_with_traffic(self):
        c = self.proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        labels = {"database": "app", "user": "app_scram"}
        text, before = self.metrics()
        checked = adminlib.promtool_check(text)
        if checked is not None:
            self.assertTrue(checked[0], checked[1])
        for name in ("pgcoalesce_queries_total", "pgcoalesce_transactions_total",
                     "pgcoalesce_received_bytes_total", "pgcoalesce_sent_bytes_total",
                     "pgcoalesce_query_duration_seconds_count",
                     "pgcoalesce_wait_duration_seconds_count", "pgcoalesce_pool_size",
                     "pgcoalesce_overflow_in_use", "pgcoalesce_max_wait_seconds",
                     "pgcoalesce_pre_ping_failures_total", "pgcoalesce_recycled_total",
                     "pgcoalesce_pool_timeouts_total", "pgcoalesce_waiting_clients"):
            self.assertIsNotNone(adminlib.sample(before, name, **labels), name)
        self.assertEqual(adminlib.sample(before, "pgcoalesce_clients", state="idle", **labels), 1)
        self.assertEqual(before["pgcoalesce_query_duration_seconds"]["type"], "histogram")
        with c.cursor() as cur:
            for i in range(10):
                cur.execute("SELECT pg_sleep(0.002), %s", (i,))
        _, after = self.metrics()

        def moved(name):
            return adminlib.sample(after, name, **labels) - adminlib.sample(before, name, **labels)
        self.assertEqual(moved("pgcoalesce_queries_total"), 10)
        self.assertEqual(moved("pgcoalesce_transactions_total"), 10)
        self.assertEqual(moved("pgcoalesce_query_duration_seconds_count"), 10)
        self.assertEqual(moved("pgcoalesce_wait_duration_seconds_count"), 10)
        self.assertGreaterEqual(moved("pgcoalesce_query_duration_seconds_sum"), 0.02)
        # every query slept 2 ms: none is in the buckets up to 1 ms
        self.assertEqual(adminlib.sample(after, "pgcoalesce_query_duration_seconds_bucket",
                                         le="0.001", **labels)
                         - adminlib.sample(before, "pgcoalesce_query_duration_seconds_bucket",
                                           le="0.001", **labels), 0)
        self.assertGreater(moved("pgcoalesce_received_bytes_total"), 10 * 20)
        self.assertGreater(moved("pgcoalesce_sent_bytes_total"), 10 * 20)
        c.close()

    def test_stats_json(self):
        c = self.proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        status, headers, body = adminlib.http(self.proxy.admin_port, "/stats")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")
        doc = json.loads(body)
        pools = [p for p in doc["pools"] if p["database"] == "app" and p["user"] == "app_scram"]
        self.assertEqual(len(pools), 1)
        self.assertEqual(pools[0]["clients"]["idle"], 1)
        self.assertGreaterEqual(pools[0]["queries"], 1)
        self.assertEqual(pools[0]["query_duration"]["buckets"][-1]["le"], "+Inf")
        self.assertFalse(doc["paused"])
        c.close()

    def test_healthz_follows_pause(self):
        self.assertEqual(adminlib.http(self.proxy.admin_port, "/healthz")[:3:2],
                         (200, b"ok\n"))
        self.assertEqual(admin_command(self.proxy, "PAUSE"), "PAUSE")
        try:
            status, _, body = adminlib.http(self.proxy.admin_port, "/healthz")
            self.assertEqual((status, body), (503, b"paused\n"))
            _, fams = self.metrics()
            self.assertEqual(adminlib.sample(fams, "pgcoalesce_paused"), 1)
        finally:
            self.assertEqual(admin_command(self.proxy, "RESUME"), "RESUME")
        self.assertEqual(adminlib.http(self.proxy.admin_port, "/healthz")[0], 200)

    def test_http_errors(self):
        port = self.proxy.admin_port
        self.assertEqual(adminlib.http(port, "/nope")[0], 404)
        status, headers, _ = adminlib.http(port, "/metrics", method="POST")
        self.assertEqual(status, 405)
        self.assertEqual(headers["allow"], "GET, HEAD")
        status, headers, body = adminlib.http(port, "/metrics", method="HEAD")
        self.assertEqual((status, body), (200, b""))
        self.assertGreater(int(headers["content-length"]), 100)
        self.assertEqual(adminlib.http(port, "/metrics?x=1")[0], 200)
        self.assertEqual(adminlib.http(port, "", raw=b"GARBAGE\r\n\r\n")[0], 400)
        huge = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n"
        self.assertEqual(adminlib.http(port, "", raw=huge)[0], 431)
        # neither HTTP nor PostgreSQL: closed without an answer
        with harness.socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01junk")
            self.assertEqual(s.recv(100), b"")
        self.assertTrue(self.proxy.running())

    def test_slow_http_client_does_not_block_the_proxy(self):
        # half a request line, held open: clients keep being served
        with harness.socket.create_connection(("127.0.0.1", self.proxy.admin_port)) as s:
            s.sendall(b"GET /metr")
            c = self.proxy.connect(autocommit=True)
            with c.cursor() as cur:
                cur.execute("SELECT 7")
                self.assertEqual(cur.fetchone(), (7,))
            c.close()
            self.assertEqual(adminlib.http(self.proxy.admin_port, "/healthz")[0], 200)


class PauseTest(harness.ProxyTestCase):
    proxy_settings = dict(ADMIN_SETTINGS, pool_timeout=60)
    users = ADMIN_USERS

    def check_pause_and_resume(self, pause, resume, database_paused="app"):
        c = self.proxy.connect(autocommit=True)
        in_tx = self.proxy.connect()
        with in_tx.cursor() as cur:
            cur.execute("SELECT 1")  # holds its server through the pause
        pause()
        t = adminlib.QueryThread(c, "SELECT 'released'")
        t.start()
        try:
            self.assertFalse(t.done.wait(1.0), "a query ran while paused: %r" % (t.result,))
            row = adminlib.pool_row(self.proxy)
            self.assertEqual(row["cl_waiting"], 1)
            self.assertEqual(row["paused"], "yes")
            with in_tx.cursor() as cur:  # a transaction already running goes on
                cur.execute("SELECT 2")
                self.assertEqual(cur.fetchone(), (2,))
            in_tx.commit()
            self.assertFalse(t.done.is_set())
        finally:
            resume()
        self.assertTrue(t.done.wait(10), "RESUME did not release the waiting query")
        self.assertIsNone(t.error)
        self.assertEqual(t.result, [("released",)])
        c.close()
        in_tx.close()

    def test_pause_resume_all(self):
        self.check_pause_and_resume(lambda: admin_command(self.proxy, "PAUSE"),
                                    lambda: admin_command(self.proxy, "RESUME"))

    def test_pause_one_database(self):
        other = self.proxy.connect(dbname="postgres", autocommit=True)

        def pause():
            self.assertEqual(admin_command(self.proxy, "PAUSE app"), "PAUSE")
            with other.cursor() as cur:  # another database is not paused
                cur.execute("SELECT current_database()")
                self.assertEqual(cur.fetchone(), ("postgres",))
        self.check_pause_and_resume(pause, lambda: admin_command(self.proxy, "RESUME app"))
        other.close()
        with self.assertRaises(psycopg2.Error) as cm:
            admin_command(self.proxy, "PAUSE no_such_db_here")
        self.assertEqual(cm.exception.pgcode, "3D000")

    def test_sigusr1_pauses_sigusr2_resumes(self):
        self.check_pause_and_resume(lambda: self.proxy.proc.send_signal(signal.SIGUSR1),
                                    lambda: self.proxy.proc.send_signal(signal.SIGUSR2))


class ReloadTest(harness.ProxyTestCase):
    proxy_settings = dict(ADMIN_SETTINGS, pool_size=4, max_overflow=0, pool_timeout=30)
    users = ADMIN_USERS

    def reload_with(self, how="admin", **settings):
        self.proxy.settings.update(settings)
        self.proxy.write_config()
        if how == "admin":
            return admin_command(self.proxy, "RELOAD")
        self.proxy.proc.send_signal(signal.SIGHUP)
        return None

    def tearDown(self):
        self.proxy.settings.update(pool_size=4)
        self.proxy.settings.pop("listen_port_x", None)
        self.proxy.write_config()
        admin_command(self.proxy, "RELOAD")
        super().tearDown()

    def test_reload_pool_size_changes_server_count_keeps_clients(self):
        holders = Holders(self.proxy, 4)
        self.assertEqual(self.pg.server_count(), 4)
        holders.release()
        harness.wait_until(lambda: adminlib.pool_row(self.proxy)["sv_idle"] == 4)
        idle_client = self.proxy.connect(autocommit=True)
        with idle_client.cursor() as cur:
            cur.execute("SELECT 1")
        in_tx = self.proxy.connect()
        with in_tx.cursor() as cur:
            cur.execute("CREATE TEMP TABLE t (x int)")  # inside a transaction
        self.assertEqual(self.reload_with(pool_size=2), "RELOAD")
        harness.wait_until(lambda: self.pg.server_count() == 3,
                           message="idle servers beyond pool_size closed (one is in use)")
        with in_tx.cursor() as cur:  # the transaction was not disturbed
            cur.execute("INSERT INTO t VALUES (1)")
            cur.execute("SELECT count(*) FROM t")
            self.assertEqual(cur.fetchone(), (1,))
        in_tx.commit()
        harness.wait_until(lambda: self.pg.server_count() == 2,
                           message="pool_size 2 after the reload")
        with idle_client.cursor() as cur:  # no client was dropped
            cur.execute("SELECT 3")
            self.assertEqual(cur.fetchone(), (3,))
        self.assertEqual(adminlib.pool_row(self.proxy)["pool_size"], 2)
        # SIGHUP raises it again: five transactions at once now get five servers
        self.reload_with("sighup", pool_size=5)
        harness.wait_until(lambda: adminlib.pool_row(self.proxy)["pool_size"] == 5,
                           message="SIGHUP applied pool_size 5")
        holders = Holders(self.proxy, 5)
        self.assertEqual(self.pg.server_count(), 5)
        holders.release()
        idle_client.close()
        in_tx.close()

    def test_bad_config_is_refused_and_nothing_changes(self):
        offset = self.proxy.log_offset()
        with open(self.proxy.config_path, "a") as f:
            f.write("\n[pgcoalesce]\npre_ping_idle = soon\n")
        with self.assertRaises(psycopg2.Error) as cm:
            admin_command(self.proxy, "RELOAD")
        self.assertEqual(cm.exception.pgcode, "F0000")
        self.assertIn("pgcoalesce.ini:", str(cm.exception))
        self.assertIn("pre_ping_idle must be", str(cm.exception))
        config = {r["key"]: r["value"] for r in admin_rows(self.proxy, "SHOW CONFIG")}
        self.assertEqual(config["pool_size"], "4")
        self.assertIn("reload failed", self.proxy.log_since(offset))
        self.proxy.proc.send_signal(signal.SIGHUP)  # the same through SIGHUP: logged, kept
        harness.wait_until(lambda: self.proxy.log_since(offset).count("reload failed") >= 2)
        self.assertTrue(self.proxy.running())
        c = self.proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        c.close()

    def test_restart_only_settings_are_reported(self):
        offset = self.proxy.log_offset()
        old_port = self.proxy.settings["listen_port"]
        self.proxy.settings["listen_port"] = harness.find_free_port()
        try:
            self.proxy.write_config()
            self.assertEqual(admin_command(self.proxy, "RELOAD"), "RELOAD")
        finally:
            self.proxy.settings["listen_port"] = old_port
        self.assertIn("listen_port changed", self.proxy.log_since(offset))
        self.assertIn("restart", self.proxy.log_since(offset))
        config = {r["key"]: r["value"] for r in admin_rows(self.proxy, "SHOW CONFIG")}
        self.assertEqual(config["listen_port"], str(old_port))
        c = self.proxy.connect(autocommit=True)  # still on the old port
        c.close()

    def test_reload_applies_auth_file(self):
        self.proxy.users["late_admin"] = "late_pw"
        self.proxy.settings["admin_users"] = "%s, late_admin" % adminlib.ADMIN_USER
        try:
            self.proxy.write_config()
            self.assertEqual(admin_command(self.proxy, "RELOAD"), "RELOAD")
            rows = admin_rows(self.proxy, "SHOW VERSION", user=adminlib.ADMIN_USER)
            self.assertEqual(len(rows), 1)
            c = admin_connect(self.proxy, user="late_admin", password="late_pw")
            c.close()
        finally:
            del self.proxy.users["late_admin"]
            self.proxy.settings["admin_users"] = adminlib.ADMIN_USER


class ShutdownTest(harness.PgTestCase):
    """Each test stops its own proxy."""

    def start(self, **settings):
        s = dict(ADMIN_SETTINGS, shutdown_timeout=20)
        s.update(settings)
        self.proxy = harness.Proxy(self.pg, s, users=ADMIN_USERS)
        self.proxy.start()
        self.addCleanup(self.proxy.cleanup)
        self.pg.execute("CREATE TABLE IF NOT EXISTS shut (x int)")
        self.pg.execute("GRANT ALL ON shut TO app_scram")
        self.pg.execute("TRUNCATE shut")

    def test_shutdown_waits_for_open_transaction_to_commit(self):
        self.start()
        tx = self.proxy.connect()
        with tx.cursor() as cur:
            cur.execute("INSERT INTO shut VALUES (1)")
        self.assertEqual(admin_command(self.proxy, "SHUTDOWN"), "SHUTDOWN")
        time.sleep(1.0)
        self.assertTrue(self.proxy.running(), "exited with a transaction still open")
        self.assertFalse(harness.port_accepts(self.proxy.port), "still accepting clients")
        status, _, body = adminlib.http(self.proxy.admin_port, "/healthz")
        self.assertEqual((status, body), (503, b"shutting down\n"))
        with tx.cursor() as cur:
            cur.execute("INSERT INTO shut VALUES (2)")
        tx.commit()
        self.proxy.proc.wait(10)
        self.assertEqual(self.proxy.proc.returncode, 0)
        self.assertEqual(self.pg.query("SELECT x FROM shut ORDER BY x"), [(1,), (2,)])
        tx.close()

    def test_shutdown_immediate(self):
        self.start()
        tx = self.proxy.connect()
        with tx.cursor() as cur:
            cur.execute("INSERT INTO shut VALUES (1)")
        self.assertEqual(admin_command(self.proxy, "SHUTDOWN IMMEDIATE"), "SHUTDOWN")
        self.proxy.proc.wait(10)
        self.assertEqual(self.proxy.proc.returncode, 0)
        self.pg.wait_no_backends()
        self.assertEqual(self.pg.query("SELECT x FROM shut"), [])
        tx.close()


if __name__ == "__main__":
    unittest.main()
