"""Session parameters follow the client in transaction mode.

pool_size=1 (max_overflow=0), so every client of the pool shares one backend:
whatever one client SETs would be seen by the next unless the proxy re-sets
each client's values before its statements. Each scenario is a script of
(client, SQL) steps run twice: through the proxy, where the clients share the
backend (checked with pg_backend_pid()), and directly against PostgreSQL with
one backend per client; the results must be identical, and some are also
checked against the values we expect.
"""

import threading
import unittest

import psycopg2
import psycopg2.extensions

import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module

try:
    import psycopg
except ImportError:
    psycopg = None

TS = "SELECT '2024-01-01 00:00:00+00'::timestamptz::text"


class ParamsBase(harness.ProxyTestCase):
    """One pgcoalesce, pool_size 1; schemas s_a and s_b with a table marker each."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 1, "max_overflow": 0}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for schema, v in (("s_a", "from s_a"), ("s_b", "from s_b")):
            cls.pg.execute("DROP SCHEMA IF EXISTS %s CASCADE" % schema)
            cls.pg.execute("CREATE SCHEMA %s AUTHORIZATION app_scram" % schema)
            cls.pg.execute("CREATE TABLE %s.marker (v text)" % schema)
            cls.pg.execute("INSERT INTO %s.marker VALUES (%%s)" % schema, (v,))
            cls.pg.execute("GRANT ALL ON %s.marker TO PUBLIC" % schema)
            cls.pg.execute("GRANT USAGE ON SCHEMA %s TO PUBLIC" % schema)
        row = cls.pg.query("SELECT current_setting('TimeZone')")
        cls.default_tz = row[0][0]

    # -- connections --

    def proxy_conn(self, autocommit=True, **kw):
        c = self.proxy.connect(autocommit=autocommit, **kw)
        self.addCleanup(c.close)
        return c

    def direct_conn(self, autocommit=True, **kw):
        c = psycopg2.connect(host="127.0.0.1", port=self.pg.port, user="app_scram",
                             password="scram_pw", dbname="app", connect_timeout=30, **kw)
        c.autocommit = autocommit
        self.addCleanup(c.close)
        return c

    def run_script(self, clients, steps, direct):
        """clients: {name: connect kwargs}; steps: [(name, sql)] with sql a
        statement, "COMMIT"/"ROLLBACK" (via the connection) or a callable
        (conn) -> value. Returns ([result per step], {name: backend pid})."""
        make = self.direct_conn if direct else self.proxy_conn
        conns = {n: make(**kw) for n, kw in clients.items()}
        out = []
        for name, sql in steps:
            c = conns[name]
            if callable(sql):
                out.append(sql(c))
            elif sql == "COMMIT":
                c.commit()
                out.append("committed")
            elif sql == "ROLLBACK":
                c.rollback()
                out.append("rolled back")
            else:
                try:
                    with c.cursor() as cur:
                        cur.execute(sql)
                        out.append(cur.fetchall() if cur.description else cur.statusmessage)
                except psycopg2.Error as e:
                    out.append(("error", e.pgcode, (e.pgerror or str(e)).splitlines()[0]))
                    if not c.autocommit:
                        c.rollback()
        pids = {}
        for n, c in conns.items():
            if c.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                c.rollback()
            with c.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pids[n] = cur.fetchone()[0]
            if not c.autocommit:
                c.commit()
        return out, pids

    def compare(self, clients, steps):
        """Run the script both ways; assert equal results, that the proxy's
        clients shared one backend and the direct ones did not. Returns the
        proxy's results."""
        via_proxy, ppids = self.run_script(clients, steps, direct=False)
        direct, dpids = self.run_script(clients, steps, direct=True)
        self.assertEqual(len(set(ppids.values())), 1,
                         "the proxy's clients did not share one backend: %r" % ppids)
        self.assertEqual(len(set(dpids.values())), len(clients))
        for i, (step, p, d) in enumerate(zip(steps, via_proxy, direct)):
            self.assertEqual(p, d, "step %d %r: through the proxy %r, directly %r"
                             % (i, step, p, d))
        return via_proxy


class ParamsTest(ParamsBase):
    def test_timezone_and_application_name_both_directions(self):
        check = ("SELECT current_setting('TimeZone'), current_setting('application_name'), "
                 "(%s), (SELECT application_name FROM pg_stat_activity "
                 "WHERE pid = pg_backend_pid())" % TS[7:])
        steps = [
            ("A", "SET TimeZone = 'Asia/Tokyo'"),
            ("A", "SET application_name = 'client_a'"),
            ("B", "SHOW TimeZone"),
            ("B", check),
            ("B", "SET TimeZone TO 'America/New_York'"),
            ("B", "SET application_name TO 'client_b'"),
            ("A", "SHOW TimeZone"),
            ("A", "SHOW application_name"),
            ("A", check),
            ("B", check),
            ("B", "SHOW TimeZone"),
            ("A", check),
            ("B", check),
            ("A", lambda c: (c.get_parameter_status("TimeZone"),
                             c.get_parameter_status("application_name"))),
            ("B", lambda c: (c.get_parameter_status("TimeZone"),
                             c.get_parameter_status("application_name"))),
        ]
        r = self.compare({"A": {}, "B": {}}, steps)
        self.assertEqual(r[2], [(self.default_tz,)])
        self.assertEqual(r[6], [("Asia/Tokyo",)])
        self.assertEqual(r[7], [("client_a",)])
        self.assertEqual(r[8], [("Asia/Tokyo", "client_a", "2024-01-01 09:00:00+09", "client_a")])
        self.assertEqual(r[9], [("America/New_York", "client_b", "2023-12-31 19:00:00-05",
                                 "client_b")])
        self.assertEqual(r[13], ("Asia/Tokyo", "client_a"))
        self.assertEqual(r[14], ("America/New_York", "client_b"))

    def test_set_in_transactions(self):
        """SET inside a rolled back transaction does not stick, committed it
        does, SET LOCAL ends with the transaction; the other client never sees
        any of it."""
        check = "SELECT current_setting('TimeZone'), current_setting('DateStyle')"
        # (B only runs while A is between transactions: they share one backend)
        steps = [
            ("A", "SET TimeZone = 'Asia/Tokyo'"),  # 0
            ("A", "COMMIT"),
            ("A", "SET TimeZone = 'Europe/Paris'"),  # 2
            ("A", "SET DateStyle = 'German'"),
            ("A", "ROLLBACK"),
            ("B", check),  # 5
            ("B", "COMMIT"),
            ("A", check),  # 7
            ("A", "COMMIT"),
            ("A", "SET TimeZone = 'Europe/Paris'"),  # 9
            ("A", "COMMIT"),
            ("B", check),  # 11
            ("B", "COMMIT"),
            ("A", "SET LOCAL TimeZone = 'Pacific/Auckland'"),  # 13
            ("A", check),
            ("A", "COMMIT"),
            ("B", check),  # 16
            ("B", "COMMIT"),
            ("A", check),  # 18
            ("A", "COMMIT"),
            ("A", lambda c: c.get_parameter_status("TimeZone")),  # 20
        ]
        r = self.compare({"A": {"autocommit": False}, "B": {"autocommit": False}}, steps)
        default = [(self.default_tz, "ISO, MDY")]
        self.assertEqual(r[5], default)
        self.assertEqual(r[7], [("Asia/Tokyo", "ISO, MDY")])
        self.assertEqual(r[11], default)
        self.assertEqual(r[14], [("Pacific/Auckland", "ISO, MDY")])
        self.assertEqual(r[16], default)
        self.assertEqual(r[18], [("Europe/Paris", "ISO, MDY")])
        self.assertEqual(r[20], "Europe/Paris")

    def test_startup_options_per_client(self):
        check = ("SELECT current_setting('search_path'), (SELECT v FROM marker), "
                 "current_setting('application_name')")
        clients = {
            "A": {"options": "-c search_path=s_a", "application_name": "opt_a"},
            "B": {"options": "-csearch_path=s_b -c statement_timeout=12345",
                  "application_name": "opt_b"},
            "C": {},
        }
        steps = []
        for _ in range(3):
            steps += [("A", check), ("B", check), ("B", "SHOW statement_timeout"), ("A", check),
                      ("C", "SHOW search_path"), ("C", "SHOW statement_timeout")]
        steps.append(("A", "SHOW statement_timeout"))
        r = self.compare(clients, steps)
        self.assertEqual(r[0], [("s_a", "from s_a", "opt_a")])
        self.assertEqual(r[1], [("s_b", "from s_b", "opt_b")])
        self.assertEqual(r[2], [("12345ms",)])
        self.assertEqual(r[4], [('"$user", public',)])
        self.assertEqual(r[5], [("0",)])
        self.assertEqual(r[-1], [("0",)])

    def test_startup_option_with_a_list_value(self):
        """-c search_path=s_b,public is a list of two schemas, as PostgreSQL
        parses it from the startup packet (not one schema named "s_b,public")."""
        check = "SELECT current_setting('search_path'), (SELECT v FROM marker)"
        clients = {"A": {"options": "-c search_path=s_b,public"}, "B": {}}
        steps = [("A", check), ("B", "SHOW search_path"), ("A", check)]
        r = self.compare(clients, steps)
        self.assertEqual(r[0], [("s_b,public", "from s_b")])

    def test_startup_option_with_an_escaped_blank(self):
        """A backslash in options escapes the next character, as PostgreSQL
        splits them: 'repeatable\\ read' is one value, and '\\\\' a backslash."""
        check = ("SELECT current_setting('default_transaction_isolation'), "
                 "current_setting('application_name')")
        clients = {"A": {"options": r"-c default_transaction_isolation=repeatable\ read "
                                    r"-c application_name=a\\b"}, "B": {}}
        steps = [("A", check), ("B", "SHOW default_transaction_isolation"), ("A", check)]
        r = self.compare(clients, steps)
        self.assertEqual(r[0], [("repeatable read", "a\\b")])
        self.assertEqual(r[2], [("repeatable read", "a\\b")])

    def test_datestyle_intervalstyle_extra_float_digits(self):
        probe = ("SELECT '2024-03-05'::date::text, interval '1 day 02:03:04'::text, "
                 "(1 / 3::float8)::text, '2024-03-05 06:07:08+00'::timestamptz::text")
        # (psycopg2 itself answers a non-ISO DateStyle with SET DateStyle TO
        # 'ISO' at connect, directly as through the proxy; raw clients below
        # keep theirs)
        clients = {
            "opts": {"options": "-c DateStyle=SQL,DMY -c IntervalStyle=iso_8601 "
                                "-c extra_float_digits=0 -c TimeZone=UTC"},
            "sets": {},
            "plain": {},
        }
        steps = [
            ("sets", "SET DateStyle = 'German'"),
            ("sets", "SET IntervalStyle = 'sql_standard'"),
            ("sets", "SET TimeZone = 'Australia/Adelaide'"),
        ]
        for _ in range(2):
            steps += [("opts", probe), ("sets", probe), ("plain", probe)]
        steps += [("opts", lambda c: (c.get_parameter_status("DateStyle"),
                                      c.get_parameter_status("IntervalStyle")))]
        r = self.compare(clients, steps)
        self.assertEqual(r[3], [("2024-03-05", "P1DT2H3M4S", "0.333333333333333",
                                 "2024-03-05 06:07:08+00")])
        self.assertEqual(r[4], [("05.03.2024", "1 2:03:04", "0.3333333333333333",
                                 "05.03.2024 16:37:08 ACDT")])
        self.assertEqual(r[5][0][:3], ("2024-03-05", "1 day 02:03:04", "0.3333333333333333"))
        self.assertEqual(r[-1], ("ISO, DMY", "iso_8601"))

        # raw clients: DateStyle from the startup options, kept
        def raw_run(direct):
            port = self.pg.port if direct else self.proxy.port
            x = harness.RawConn(port)
            y = harness.RawConn(port)
            try:
                x.login("app_scram", "app", "scram_pw",
                        options="-c DateStyle=SQL,DMY -c extra_float_digits=-2")
                y.login("app_scram", "app", "scram_pw", options="-c DateStyle=Postgres,YMD")
                out = [x.params.get("DateStyle"), y.params.get("DateStyle")]
                for _ in range(2):
                    for conn in (x, y):
                        res = conn.query(probe + ", pg_backend_pid()")
                        self.assertEqual(res.errors, [])
                        out.append(res.sets[0]["rows"][0])
                return out
            finally:
                x.close()
                y.close()

        proxied, direct = raw_run(False), raw_run(True)
        self.assertEqual(proxied[2][4], proxied[3][4])  # one backend through the proxy
        self.assertNotEqual(direct[2][4], direct[3][4])
        self.assertEqual([row[:4] for row in proxied[2:]], [row[:4] for row in direct[2:]])
        self.assertEqual(proxied[2][:3], ["05/03/2024", "1 day 02:03:04", "0.3333333333333"])
        self.assertEqual(proxied[3][:1], ["03-05-2024"])

    # Known gap: at login the proxy reports a startup option as the client
    # spelled it; PostgreSQL's own spelling reaches the client with the first
    # statement (the re-sync forwards ParameterStatus). Fixing it means a
    # server round trip at login for clients that send startup options.
    @unittest.expectedFailure
    def test_parameter_status_at_login_is_the_servers_spelling(self):
        """The ParameterStatus a client gets at login for a startup option is
        the value as PostgreSQL reports it ("SQL, DMY" for DateStyle=SQL,DMY,
        "UTC" for TimeZone=utc), as a direct connection would get."""
        opts = "-c DateStyle=SQL,DMY -c TimeZone=utc -c IntervalStyle=SQL_Standard"

        def status(port):
            with harness.RawConn(port) as x:
                x.login("app_scram", "app", "scram_pw", options=opts)
                return {k: x.params.get(k) for k in ("DateStyle", "TimeZone", "IntervalStyle")}

        self.assertEqual(status(self.proxy.port), status(self.pg.port))

    def test_extended_protocol_client_sees_its_own(self):
        """psycopg 3 (extended protocol) and psycopg2 (simple) side by side."""
        if psycopg is None:
            self.skipTest("psycopg 3 is not installed")
        a = self.proxy.connect3(autocommit=True, options="-c DateStyle=SQL,DMY")
        self.addCleanup(a.close)
        b = self.proxy_conn()
        a.execute("SET TimeZone = 'Asia/Kolkata'")
        with b.cursor() as cur:
            cur.execute("SET TimeZone = 'America/Sao_Paulo'")
        for _ in range(5):
            row = a.execute("SELECT %s::timestamptz::text, current_setting('DateStyle'), "
                            "pg_backend_pid()", ("2024-01-01 00:00:00+00",)).fetchone()
            self.assertEqual(row[:2], ("01/01/2024 05:30:00 IST", "SQL, DMY"))
            with b.cursor() as cur:
                cur.execute(TS + ", current_setting('DateStyle'), pg_backend_pid()")
                brow = cur.fetchone()
            self.assertEqual(brow[:2], ("2023-12-31 21:00:00-03", "ISO, MDY"))
            self.assertEqual(row[2], brow[2])
        self.assertEqual(a.info.parameter_status("TimeZone"), "Asia/Kolkata")
        self.assertEqual(b.get_parameter_status("TimeZone"), "America/Sao_Paulo")

    def test_standard_conforming_strings_and_client_encoding(self):
        scs = "SELECT length('a\\\\b'), current_setting('standard_conforming_strings')"
        with self.proxy.raw_login() as x, self.proxy.raw_login() as y:
            r = x.query("SET standard_conforming_strings = off")
            self.assertEqual(r.errors, [])
            self.assertIn(("S", b"standard_conforming_strings\0off\0"), r.messages)
            for _ in range(3):
                r = y.query(scs)
                self.assertEqual(r.sets[0]["rows"], [["4", "on"]])
                r = x.query(scs)
                self.assertEqual(r.sets[0]["rows"], [["3", "off"]])
        latin = self.proxy_conn()
        latin.set_client_encoding("LATIN1")
        utf = self.proxy_conn()
        for _ in range(3):
            with latin.cursor() as cur:
                cur.execute("SELECT 'caf\u00e9', current_setting('client_encoding'), "
                            "pg_backend_pid()")
                lrow = cur.fetchone()
            with utf.cursor() as cur:
                cur.execute("SELECT 'caf\u00e9 \u20ac', current_setting('client_encoding'), "
                            "pg_backend_pid()")
                urow = cur.fetchone()
            self.assertEqual(lrow[:2], ("caf\u00e9", "LATIN1"))
            self.assertEqual(urow[:2], ("caf\u00e9 \u20ac", "UTF8"))
            self.assertEqual(lrow[2], urow[2])

    def test_concurrent_clients_never_see_each_others_settings(self):
        zones = ["Asia/Tokyo", "Europe/Paris", "America/New_York", "Australia/Adelaide",
                 "Africa/Cairo", "UTC"]
        styles = ["ISO, MDY", "German, DMY", "SQL, DMY", "Postgres, MDY", "ISO, DMY",
                  "SQL, MDY"]
        barrier = threading.Barrier(len(zones))
        expect_ts = {}
        d = self.direct_conn()
        self.addCleanup(d.close)
        for z, st in zip(zones, styles):
            with d.cursor() as cur:
                cur.execute("SET TimeZone = %s", (z,))
                cur.execute("SET DateStyle = %s", (st,))
                cur.execute(TS)
                expect_ts[z] = cur.fetchone()[0]
        d.close()  # (not to be counted below)

        def client(i):
            c = self.proxy.connect(autocommit=(i % 2 == 0))
            try:
                with c.cursor() as cur:
                    cur.execute("SET TimeZone = %s", (zones[i],))
                    cur.execute("SET DateStyle = %s", (styles[i],))
                    cur.execute("SET application_name = %s", ("worker%d" % i,))
                if not c.autocommit:
                    c.commit()
                barrier.wait(timeout=60)
                seen = set()
                for _ in range(25):
                    with c.cursor() as cur:
                        cur.execute("SELECT current_setting('TimeZone'), "
                                    "current_setting('DateStyle'), "
                                    "current_setting('application_name'), (%s)" % TS[7:])
                        seen.add(cur.fetchone())
                    if not c.autocommit:
                        c.commit()
                return seen
            finally:
                c.close()

        results = harness.run_threads(client, len(zones))
        for i, seen in enumerate(results):
            self.assertEqual(seen, {(zones[i], styles[i], "worker%d" % i, expect_ts[zones[i]])})
        self.assertLessEqual(self.pg.server_count(), 1)


class ParamsResetTest(ParamsBase):
    """RESET, RESET ALL and DISCARD ALL go back to the session's defaults,
    which for a client are what it gave at startup (options,
    application_name), not what the shared backend started with. Each test
    starts from a fresh pgcoalesce (and so a fresh backend), so that what one
    test leaves behind on the backend cannot decide another."""

    def setUp(self):
        super().setUp()
        self.proxy.restart()

    def test_reset_one_startup_parameter(self):
        check = "SELECT current_setting('TimeZone'), current_setting('application_name')"
        clients = {"A": {"options": "-c TimeZone=Asia/Tokyo", "application_name": "opt_a"},
                   "B": {}}
        steps = [
            ("A", "SET TimeZone = 'Europe/Paris'"),
            ("A", "SET application_name = 'changed_a'"),
            ("B", "SET TimeZone = 'America/New_York'"),
            ("A", check),  # 3
            ("A", "RESET TimeZone"),
            ("A", check),  # 5
            ("A", "RESET application_name"),
            ("A", check),  # 7
            ("B", check),  # 8
            ("A", lambda c: c.get_parameter_status("TimeZone")),
        ]
        r = self.compare(clients, steps)
        self.assertEqual(r[3], [("Europe/Paris", "changed_a")])
        self.assertEqual(r[5], [("Asia/Tokyo", "changed_a")])
        self.assertEqual(r[7], [("Asia/Tokyo", "opt_a")])
        self.assertEqual(r[8], [("America/New_York", "")])
        self.assertEqual(r[9], "Asia/Tokyo")

    def _reset_all(self, command):
        check = ("SELECT current_setting('search_path'), current_setting('application_name'), "
                 "current_setting('TimeZone')")
        clients = {"A": {"options": "-c search_path=s_a -c TimeZone=Asia/Tokyo",
                         "application_name": "opt_a"},
                   "B": {"application_name": "opt_b"}}
        steps = [
            ("A", "SET application_name = 'changed_a'"),
            ("A", "SET TimeZone = 'Europe/Paris'"),
            ("B", "SET TimeZone = 'America/New_York'"),
            ("A", check),  # 3
            ("A", command),
            ("A", check),  # 5
            ("B", check),  # 6
            ("B", command),
            ("B", check),  # 8
            ("A", check),  # 9
        ]
        r = self.compare(clients, steps)
        self.assertEqual(r[3], [("s_a", "changed_a", "Europe/Paris")])
        self.assertEqual(r[5], [("s_a", "opt_a", "Asia/Tokyo")])
        self.assertEqual(r[6], [('"$user", public', "opt_b", "America/New_York")])
        self.assertEqual(r[8], [('"$user", public', "opt_b", self.default_tz)])
        self.assertEqual(r[9], [("s_a", "opt_a", "Asia/Tokyo")])

    def test_reset_all(self):
        self._reset_all("RESET ALL")

    def test_discard_all(self):
        self._reset_all("DISCARD ALL")

    def test_next_client_after_reset_all_gets_its_startup_options(self):
        """X (search_path=s_a from its options) runs RESET ALL and leaves; Y,
        with the same options, must still get search_path s_a on the backend X
        used."""
        for command in ("RESET ALL", "DISCARD ALL", "RESET search_path"):
            x = self.proxy_conn(options="-c search_path=s_a")
            with x.cursor() as cur:
                cur.execute("SELECT current_setting('search_path'), pg_backend_pid()")
                self.assertEqual(cur.fetchone()[0], "s_a")
                cur.execute(command)
            x.close()
            y = self.proxy_conn(options="-c search_path=s_a")
            with y.cursor() as cur:
                cur.execute("SELECT current_setting('search_path')")
                self.assertEqual(cur.fetchone()[0], "s_a", "after another client's %s" % command)
                cur.execute("SELECT v FROM marker")
                self.assertEqual(cur.fetchone()[0], "from s_a")
            y.close()


if __name__ == "__main__":
    unittest.main()
