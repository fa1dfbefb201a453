"""Bad input from clients (issue 8, item 2).

Each test makes one client misbehave on a raw socket and asserts the exact
error it gets (SQLSTATE and a message naming what is wrong), and that
well-behaved clients connected through the same pgcoalesce at the same time
keep working: `Bystander`s run queries in threads during the whole test, one
in the misbehaving client's own pool (so that a server connection the bad
client poisoned or leaked would hit it) and one in another pool.

test_protocol.py covers the basic cases (short and negative lengths, a Query
over max_packet_size, bad startup packets); this module covers the rest:
truncated frames, lengths that lie, unknown message types in every phase,
startup without a user, names that are not UTF-8, a client that stops
reading, slowloris logins, max_client_conn, idle-in-transaction clients and
queries longer than the maximum.
"""

import socket
import struct
import threading
import time
import unittest

import psycopg2

import harness
from harness import (  # noqa: F401 - setUpModule/tearDownModule: one PostgreSQL per module
    ServerError,
    cstr,
    i16,
    i32,
    message,
    query_message,
    setUpModule,
    startup_message,
    tearDownModule,
)

OTHER_USER = "app_md5"  # a second pool: same database, another user


class Bystander:
    """A well-behaved client: a psycopg2 connection (autocommit) running
    `SELECT n + 1` in a thread until closed, checking every answer."""

    def __init__(self, proxy, user=harness.DEFAULT_USER):
        self.user = user
        self.conn = proxy.connect(user=user, autocommit=True)
        self.lock = threading.Lock()
        self.done = 0
        self.errors = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        i = 0
        try:
            with self.conn.cursor() as cur:
                while not self.stopping.is_set():
                    i += 1
                    cur.execute("SELECT %s::int + 1", (i,))
                    got = cur.fetchone()[0]
                    if got != i + 1:
                        raise AssertionError("bystander got %r for %d + 1" % (got, i))
                    with self.lock:
                        self.done += 1
                    time.sleep(0.005)
        except Exception as e:  # reported by check()
            with self.lock:
                self.errors.append(e)

    def count(self):
        with self.lock:
            return self.done

    def check(self):
        with self.lock:
            if self.errors:
                raise AssertionError("bystander %s failed: %r" % (self.user, self.errors[0]))

    def wait_progress(self, n=3, timeout=60):
        """Wait until it has run n more queries (and had no error)."""
        start = self.count()
        harness.wait_until(lambda: self.count() >= start + n or self.errors, timeout=timeout,
                           message="bystander %s running queries" % self.user)
        self.check()

    def close(self):
        self.stopping.set()
        self.thread.join(60)
        try:
            self.conn.close()
        finally:
            self.check()


class BadInputCase(harness.ProxyTestCase):
    """A test class whose every test runs with bystanders in the misbehaving
    client's pool (app_scram) and in another pool (app_md5)."""

    bystander_users = (harness.DEFAULT_USER, OTHER_USER)

    def setUp(self):
        super().setUp()
        self.bystanders = []
        for user in self.bystander_users:
            b = Bystander(self.proxy, user)
            self.addCleanup(b.close)
            self.bystanders.append(b)
        for b in self.bystanders:
            b.wait_progress(1)

    @property
    def same_pool(self):
        return self.bystanders[0]

    @property
    def other_pool(self):
        return self.bystanders[1]

    def assert_others_fine(self):
        """Every bystander keeps running queries, and a new client is served."""
        for b in self.bystanders:
            b.wait_progress()
        with self.proxy.raw_login() as c:
            r = c.query("SELECT 'new client'")
            self.assertEqual((r.errors, r.sets[0]["rows"], r.status), ([], [["new client"]], "I"))

    def assert_error_then_closed(self, conn, sqlstate, text, severity="FATAL", timeout=15):
        """conn receives exactly one ErrorResponse, with this SQLSTATE and
        message, and is then closed by the proxy."""
        msgs = conn.read_until_closed(timeout=timeout)
        errors = [harness.parse_error_fields(b) for k, b in msgs if k == "E"]
        self.assertEqual([(e.get("V"), e.get("C"), e.get("M")) for e in errors],
                         [(severity, sqlstate, text)], "messages: %r" % msgs)
        self.assertNotIn("Z", [k for k, _ in msgs])
        return errors[0]

    def make_table(self):
        t = self.table_name()
        # A lock_timeout, so that a transaction a regression left open fails
        # the test here instead of hanging it.
        self.pg.execute("SET lock_timeout = '10s'; DROP TABLE IF EXISTS %s" % t)
        self.pg.execute("CREATE TABLE %s (id int)" % t)
        self.pg.execute("GRANT ALL ON %s TO PUBLIC" % t)
        return t

    def open_transaction(self, conn, table):
        """BEGIN and an INSERT on conn; returns its backend's pid."""
        r = conn.query("BEGIN; INSERT INTO %s VALUES (1); SELECT pg_backend_pid()" % table)
        self.assertEqual((r.errors, r.status), ([], "T"))
        return int(r.sets[-1]["rows"][0][0])

    def assert_rolled_back(self, table):
        harness.wait_until(lambda: self.pg.server_count(state="idle in transaction") == 0,
                           timeout=30, message="no transaction left open")
        self.assertEqual(self.pg.query("SELECT count(*) FROM %s" % table)[0][0], 0)

    def assert_backend_gone(self, pid):
        harness.wait_until(lambda: pid not in self.pg.backend_pids(), timeout=30,
                           message="backend %d closed" % pid)

    def assert_backend_kept(self, pid):
        """The backend was rolled back and given back to the pool, not closed."""
        harness.wait_until(
            lambda: [b["state"] for b in self.pg.backends(harness.DEFAULT_USER)
                     if b["pid"] == pid] in (["idle"], ["active"]),
            timeout=30, message="backend %d kept, out of its transaction" % pid)


def send_quietly(conn, data):
    """Send, ignoring that the proxy may already have closed the socket."""
    try:
        conn.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def wait_log(proxy, offset, text, timeout=60):
    """Wait until the proxy's log since offset contains text; returns that log."""
    return harness.wait_until(lambda: (lambda t: t if text in t else None)(proxy.log_since(offset)),
                              timeout=timeout, message="%r in the pgcoalesce log" % text)


def raw_small_window(port, timeout=10):
    """A RawConn whose socket has a tiny receive buffer, so that a result it
    does not read backs up into the proxy at once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    c = harness.RawConn.__new__(harness.RawConn)
    c.sock, c.buf, c.params, c.backend_key, c.auth_requests = s, b"", {}, None, []
    return c


def read_big_result(sock, pause_every=0, pause=0.0, timeout=60):
    """Read one simple query's answer straight off the socket, counting
    DataRows without keeping them. Returns (rows, tag, status, end): status
    is the ReadyForQuery status, or None when the connection ended first, and
    end says how ("eof" or "reset"). With pause_every, sleeps `pause` after
    each pause_every bytes read."""
    sock.settimeout(timeout)
    buf, pos, rows, tag, since_pause = bytearray(), 0, 0, None, 0
    while True:
        while len(buf) - pos >= 5:
            kind = buf[pos]
            length = struct.unpack_from("!i", buf, pos + 1)[0]
            if len(buf) - pos < 1 + length:
                break
            if kind == ord("D"):
                rows += 1
            elif kind == ord("C"):
                tag = bytes(buf[pos + 5:pos + length]).decode()
            elif kind == ord("E"):
                raise ServerError(harness.parse_error_fields(bytes(buf[pos + 5:pos + 1 + length])))
            elif kind == ord("Z"):
                return rows, tag, chr(buf[pos + 5]), None
            pos += 1 + length
        if pos > (1 << 20):
            del buf[:pos]
            pos = 0
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return rows, tag, None, "reset"
        if not chunk:
            return rows, tag, None, "eof"
        buf += chunk
        since_pause += len(chunk)
        if pause_every and since_pause >= pause_every:
            since_pause = 0
            time.sleep(pause)


# ---------------------------------------------------------------- frames


class FrameTest(BadInputCase):
    """Truncated and oversized frames, lengths that lie, unknown message
    types. One server connection for the pool, so that a connection left
    with half a message (or an open transaction) would reach the bystander."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 1, "max_overflow": 0,
                      "pool_timeout": 60, "max_packet_size": 4096}

    # -- truncated frames --

    def test_truncated_header_then_eof(self):
        c = self.proxy.raw_login()
        c.send(b"Q\0\0")
        c.sock.shutdown(socket.SHUT_WR)
        self.assert_error_then_closed(c, "08P01",
                                      "incomplete message from client: 2 bytes missing at EOF")
        self.assert_others_fine()

    def test_truncated_body_then_eof(self):
        c = self.proxy.raw_login()
        c.send(b"Q" + i32(4 + 30) + b"SELECT 1")  # 22 bytes of the body never come
        c.sock.shutdown(socket.SHUT_WR)
        self.assert_error_then_closed(c, "08P01",
                                      "incomplete message from client: 22 bytes missing at EOF")
        self.assert_others_fine()

    def test_truncated_message_inside_a_transaction_closes_its_server(self):
        """Half a message already forwarded: the backend would read whatever
        came next (the proxy's ROLLBACK, the next client's query) as the rest
        of it, so the server connection is closed, not reused."""
        for kind, ending in ((b"H", "half-close"), (b"c", "reset"), (b"d", "reset")):
            with self.subTest(kind=kind, ending=ending):
                t = self.make_table()
                c = self.proxy.raw_login()
                pid = self.open_transaction(c, t)
                # Flush, and CopyDone or CopyData outside a COPY, get no
                # answer: the proxy forwards them as they come and owes nothing.
                c.send(kind + i32(4 + 1000) + b"0123456789")
                if ending == "half-close":
                    c.sock.shutdown(socket.SHUT_WR)
                    self.assert_error_then_closed(
                        c, "08P01", "incomplete message from client: 990 bytes missing at EOF")
                else:
                    c.abort()  # what it sent is read (and forwarded) before the reset
                self.assert_backend_gone(pid)
                self.assert_rolled_back(t)
                self.assert_others_fine()

    # -- oversized frames --

    def test_oversized_message_inside_a_transaction(self):
        t = self.make_table()
        c = self.proxy.raw_login()
        pid = self.open_transaction(c, t)
        c.send(b"P" + i32(5000))  # only the header: its length alone is refused
        self.assert_error_then_closed(c, "08P01",
                                      "message of 5000 bytes exceeds max_packet_size (4096)")
        self.assert_rolled_back(t)
        self.assert_backend_kept(pid)  # nothing of it reached the server: ROLLBACK, reuse
        self.assert_others_fine()

    def test_oversized_copy_data(self):
        t = self.make_table()
        c = self.proxy.raw_login()
        c.send(query_message("COPY %s FROM STDIN" % t))
        self.assertEqual(c.read_message()[0], "G")
        c.send(message("d", b"1\n2\n"))
        send_quietly(c, b"d" + i32(4097) + b"3\n" * 100)
        self.assert_error_then_closed(c, "08P01",
                                      "message of 4097 bytes exceeds max_packet_size (4096)")
        self.assertEqual(self.pg.query("SELECT count(*) FROM %s" % t)[0][0], 0)
        self.assert_others_fine()

    # -- lengths that lie --

    def test_length_longer_than_the_message(self):
        """A client announces more than it sends: no server connection is
        taken for a message still on its way (the pool has only one)."""
        c = self.proxy.raw_login()
        text = b"SELECT 'liar'\0"
        c.send(b"Q" + i32(4 + 100) + text)
        self.assert_others_fine()  # the same pool's only server is not held by the liar
        # The rest arrives: PostgreSQL finds the Query longer than its text.
        c.send(b"x" * (100 - len(text)))
        r = c.read_result()
        self.assertEqual([(e["C"], e["M"]) for e in r.errors], [("08P01", "invalid message format")])
        self.assertEqual(r.status, "I")
        self.assertEqual(c.query("SELECT 'after'").sets[0]["rows"], [["after"]])
        c.close()
        self.assert_others_fine()

    def test_length_shorter_than_the_message(self):
        """The bytes after a too-short length are read as the next message."""
        c = self.proxy.raw_login()
        c.send(b"Q" + i32(4 + 8) + b"SELECT 1" + b"\0" + i32(4))
        self.assert_error_then_closed(c, "08P01", "invalid frontend message type 0")
        self.assert_others_fine()

    def test_lengths_inside_messages_that_lie(self):
        """Field lengths past the end of a Bind, unnamed and named statement
        (the proxy rewrites the name of the latter): PostgreSQL refuses them,
        the connection stays usable."""
        c = self.proxy.raw_login()
        over = i16(0) + i16(1) + i32(1000) + b"abc" + i16(0)  # parameter of 1000 bytes, 3 sent
        for statement in ("", "s1"):
            c.send(harness.parse_message("SELECT $1::text", name=statement)
                   + message("B", cstr("") + cstr(statement) + over)
                   + harness.execute_message() + harness.sync_message())
            r = c.read_result()
            self.assertEqual([(e["C"], e["M"]) for e in r.errors],
                             [("08P01", "insufficient data left in message")])
            self.assertEqual(r.status, "I")
        c.send(message("B", cstr("") + cstr("s1") + i16(7)) + harness.execute_message()
               + harness.sync_message())  # 7 parameter formats announced, none sent
        r = c.read_result()
        self.assertEqual([(e["C"], e["M"]) for e in r.errors],
                         [("08P01", "insufficient data left in message")])
        self.assertEqual(c.query("SELECT 'usable'").sets[0]["rows"], [["usable"]])
        c.close()
        self.assert_others_fine()

    # -- unknown message types --

    def test_unknown_type_inside_a_transaction(self):
        t = self.make_table()
        c = self.proxy.raw_login()
        pid = self.open_transaction(c, t)
        c.send(message(b"\xff", b"junk"))
        self.assert_error_then_closed(c, "08P01", "invalid frontend message type 255")
        self.assert_rolled_back(t)
        self.assert_backend_kept(pid)
        self.assert_others_fine()

    def test_backend_message_types_from_a_client(self):
        for kind in "TZRKA":
            with self.subTest(kind=kind):
                c = self.proxy.raw_login()
                c.send(message(kind, b"\0\0\0\0"))
                self.assert_error_then_closed(c, "08P01",
                                              "invalid frontend message type %d" % ord(kind))
        self.assert_others_fine()

    def test_password_message_after_login(self):
        """'p' only answers authentication requests; after login PostgreSQL
        would end the backend over it, so the proxy refuses it itself."""
        c = self.proxy.raw_login()
        pid = int(c.query("SELECT pg_backend_pid()").sets[0]["rows"][0][0])
        c.send(message("p", cstr("secret")))
        self.assert_error_then_closed(c, "08P01", "invalid frontend message type 112")
        self.assertIn(pid, self.pg.backend_pids())
        self.assert_others_fine()
        self.assertIn(pid, self.pg.backend_pids())  # the pool's one backend served them


# ---------------------------------------------------------------- startup


class StartupTest(BadInputCase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0}

    def raw_startup(self, body_params):
        """Send a v3 startup packet of raw name/value byte pairs."""
        c = self.proxy.raw()
        body = i32(harness.PROTO_V3) + b"".join(k + b"\0" + v + b"\0" for k, v in body_params)
        c.send(i32(len(body) + 5) + body + b"\0")
        return c

    def test_startup_without_user(self):
        for params in ([(b"database", b"app")], [(b"user", b""), (b"database", b"app")],
                       [(b"application_name", b"no user")]):
            with self.subTest(params=params):
                c = self.raw_startup(params)
                self.assert_error_then_closed(
                    c, "28000", "no PostgreSQL user name specified in startup packet")
        self.assert_others_fine()

    def test_names_that_are_not_utf8(self):
        """Refused before any server connection is tried: such bytes could
        not be set on a UTF-8 server anyway, and would reach logs, reports
        and the proxy's own SET statements."""
        offset = self.proxy.log_offset()
        user = [(b"user", harness.DEFAULT_USER.encode()), (b"database", b"app")]
        cases = [
            ([(b"user", b"app\xff"), (b"database", b"app")], '"user": 0xff'),
            ([(b"user", b"app_scram"), (b"database", b"ap\xc3p")], '"database": 0xc3'),
            (user + [(b"application_name", b"caf\xe9")], '"application_name": 0xe9'),
            (user + [(b"options", b"-c search_path=\xc0\xaf")], '"options": 0xc0'),
            (user + [(b"application_name", b"cut \xe2\x82")], '"application_name": 0xe2'),
            (user + [(b"\xed\xa0\x80", b"1")], None),  # a UTF-16 surrogate as a name
        ]
        for params, where in cases:
            with self.subTest(params=params):
                c = self.raw_startup(params)
                if where:
                    want = ('invalid byte sequence for encoding "UTF8" in startup parameter '
                            + where)
                else:
                    want = ('invalid byte sequence for encoding "UTF8" in the name of startup '
                            'parameter 3: 0xed')
                self.assert_error_then_closed(c, "22021", want)
        # Valid UTF-8 passes.
        c = self.raw_startup(user + [(b"application_name", "café ☕".encode())])
        self.assertEqual(c.authenticate(harness.DEFAULT_USER, ""), "I")
        self.assertEqual(c.params.get("application_name"), "café ☕")
        self.assertEqual(c.query("SELECT 'ok'").sets[0]["rows"], [["ok"]])
        c.close()
        self.assertNotIn("internal query failed", self.proxy.log_since(offset))
        self.assert_others_fine()

    def test_control_characters_in_names_stay_on_one_log_line(self):
        offset = self.proxy.log_offset()
        c = self.raw_startup([(b"user", b"evil\nFORGED LOG LINE"), (b"database", b"app")])
        with self.assertRaises(ServerError) as cm:
            c.authenticate("evil", "")  # trust here, but no password for the server login
        self.assertEqual(cm.exception.sqlstate, "28P01")
        self.assertIn('user "evil\nFORGED LOG LINE"', cm.exception.fields["M"])
        c.close()
        log = wait_log(self.proxy, offset, "evil?FORGED LOG LINE")
        self.assertFalse([ln for ln in log.splitlines() if ln.startswith("FORGED")], log)
        self.assert_others_fine()


# ---------------------------------------------------------------- login


class LoginTest(BadInputCase):
    """Slowloris logins and bad login messages, with SCRAM authentication."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0,
                      "auth_type": "scram-sha-256", "client_login_timeout": 2}
    TIMEOUT_MSG = "login not completed within client_login_timeout (2 s)"

    def start_sasl(self, c):
        """Send the startup packet and read AuthenticationSASL."""
        c.send(startup_message({"user": harness.DEFAULT_USER, "database": "app"}))
        kind, body = c.read_message()
        self.assertEqual((kind, struct.unpack("!i", body[:4])[0]), ("R", 10))

    def test_slowloris_logins_are_cut_at_client_login_timeout(self):
        conns = {}
        # Connects and sends nothing.
        conns["silent"] = self.proxy.raw(timeout=30)
        # Asks for TLS, hears no, then sends nothing.
        c = conns["after SSLRequest"] = self.proxy.raw(timeout=30)
        c.send(harness.ssl_request())
        self.assertEqual(c.recv_exact(1), b"N")
        # Stops at each step of SCRAM.
        c = conns["at SASL"] = self.proxy.raw(timeout=30)
        self.start_sasl(c)
        c = conns["at SASL continue"] = self.proxy.raw(timeout=30)
        self.start_sasl(c)
        first = harness.ScramClient(harness.USERS[harness.DEFAULT_USER]).first()
        c.send(message("p", cstr("SCRAM-SHA-256") + i32(len(first)) + first))
        self.assertEqual(c.read_message()[0], "R")
        c = conns["in a message header"] = self.proxy.raw(timeout=30)
        self.start_sasl(c)
        c.send(b"p\0\0")
        # Keeps sending, one byte of the startup packet at a time: the clock
        # runs from the connect, not from the last byte.
        c = conns["trickling"] = self.proxy.raw(timeout=30)
        packet = startup_message({"user": harness.DEFAULT_USER, "database": "app",
                                  "application_name": "x" * 40})
        stop = threading.Event()

        def trickle(sock):
            for i in range(len(packet)):
                if stop.wait(0.1):
                    return
                try:
                    sock.send(packet[i:i + 1])
                except OSError:
                    return

        t = threading.Thread(target=trickle, args=(c.sock,), daemon=True)
        t.start()
        try:
            # Meanwhile everyone else logs in and works.
            for _ in range(3):
                pc = self.proxy.connect(autocommit=True)
                try:
                    with pc.cursor() as cur:
                        cur.execute("SELECT 1")
                        self.assertEqual(cur.fetchone(), (1,))
                finally:
                    pc.close()
            self.assert_others_fine()
            for name, c in conns.items():
                with self.subTest(client=name):
                    self.assert_error_then_closed(c, "08006", self.TIMEOUT_MSG, timeout=30)
        finally:
            stop.set()
            t.join(10)
        self.assert_others_fine()

    def test_sasl_length_that_lies(self):
        c = self.proxy.raw()
        self.start_sasl(c)
        c.send(message("p", cstr("SCRAM-SHA-256") + i32(1000) + b"n,,n=,r=abc"))
        self.assert_error_then_closed(c, "08P01", "malformed SASLInitialResponse")
        self.assert_others_fine()

    def test_unknown_message_during_login(self):
        c = self.proxy.raw()
        self.start_sasl(c)
        c.send(query_message("SELECT 1"))
        self.assert_error_then_closed(c, "08P01", "expected a password message, got 'Q'")
        self.assert_others_fine()

    def test_oversized_message_during_login(self):
        c = self.proxy.raw()
        self.start_sasl(c)
        c.send(b"p" + i32(100000))
        self.assert_error_then_closed(c, "08P01",
                                      "message of 100000 bytes during login exceeds the 8192 "
                                      "allowed")
        self.assert_others_fine()

    def test_truncated_startup_then_eof(self):
        c = self.proxy.raw()
        packet = startup_message({"user": harness.DEFAULT_USER, "database": "app"})
        c.send(packet[:20])
        c.sock.shutdown(socket.SHUT_WR)
        self.assert_error_then_closed(
            c, "08P01", "incomplete startup packet: %d bytes missing at EOF" % (len(packet) - 20))
        self.assert_others_fine()


# ---------------------------------------------------------------- max_client_conn


class MaxClientConnTest(BadInputCase):
    """max_client_conn counts every client connection, the bystander's too."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0,
                      "max_client_conn": 4, "client_login_timeout": 2, "admin_users": "admin_user"}
    users = dict(harness.USERS, admin_user="admin_pw")
    bystander_users = (harness.DEFAULT_USER,)
    REFUSAL = "too many clients already (max_client_conn = 4)"

    def assert_refused(self):
        c = self.proxy.raw()
        c.send(startup_message({"user": harness.DEFAULT_USER, "database": "app"}))
        self.assert_error_then_closed(c, "53300", self.REFUSAL)

    def login_when_room(self):
        """Log in as soon as a place is free (a refused client lingers until
        it closes)."""
        def attempt():
            try:
                return self.proxy.raw_login()
            except ServerError as e:
                self.assertEqual((e.sqlstate, e.fields["M"]), ("53300", self.REFUSAL))
                return None
        return harness.wait_until(attempt, timeout=30, message="a client let in")

    def test_max_client_conn_reached(self):
        held = [self.proxy.raw_login() for _ in range(3)]  # with the bystander: 4
        try:
            self.assert_refused()
            with self.assertRaises(psycopg2.OperationalError) as cm:
                self.proxy.connect()
            self.assertIn("FATAL:  " + self.REFUSAL, str(cm.exception))
            # Those already in are served, and so is the admin console.
            for i, c in enumerate(held):
                self.assertEqual(c.query("SELECT %d" % i).sets[0]["rows"], [[str(i)]])
            self.same_pool.wait_progress()
            admin = psycopg2.connect(host="127.0.0.1", port=self.proxy.admin_port,
                                     user="admin_user", password="admin_pw", dbname="pgcoalesce")
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute("SHOW CLIENTS")
                self.assertGreaterEqual(len(cur.fetchall()), 4)
            admin.close()
            held.pop().close()
            c = self.login_when_room()
            self.assertEqual(c.query("SELECT 'in'").sets[0]["rows"], [["in"]])
            held.append(c)
            self.assert_refused()
        finally:
            for c in held:
                c.close()
        self.same_pool.wait_progress()

    def test_connections_that_never_log_in_count_until_client_login_timeout(self):
        silent = [self.proxy.raw(timeout=30) for _ in range(3)]  # with the bystander: 4
        try:
            # Counted from the accept (the listen queue is first in, first
            # out, so they are in before the next one): there is no room.
            self.assert_refused()
            self.same_pool.wait_progress()
            for c in silent:
                self.assert_error_then_closed(
                    c, "08006", "login not completed within client_login_timeout (2 s)",
                    timeout=30)
            c = self.login_when_room()
            self.assertEqual(c.query("SELECT 'in'").sets[0]["rows"], [["in"]])
            c.close()
        finally:
            for c in silent:
                c.close()
        self.same_pool.wait_progress()


# ---------------------------------------------------------------- idle in transaction


class IdleTransactionTest(BadInputCase):
    """idle_transaction_timeout. With one server connection in the pool, the
    same-pool bystander waits while the idle client holds it and carries on
    once the proxy has taken it back; the other pool never waits."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 1, "max_overflow": 0,
                      "pool_timeout": 60, "idle_transaction_timeout": 1}
    ERROR = ("terminating connection due to idle-in-transaction timeout "
             "(idle_transaction_timeout = 1 s)")

    def test_idle_in_transaction_is_terminated(self):
        t = self.make_table()
        c = self.proxy.raw_login(timeout=30)
        pid = self.open_transaction(c, t)
        self.other_pool.wait_progress()  # while it sits idle
        self.assert_error_then_closed(c, "25P03", self.ERROR, timeout=30)
        self.assert_rolled_back(t)
        self.assert_backend_kept(pid)
        self.assert_others_fine()

    def test_failed_transaction_is_terminated(self):
        c = self.proxy.raw_login(timeout=30)
        r = c.query("BEGIN; SELECT 1/0")
        self.assertEqual(([e["C"] for e in r.errors], r.status), (["22012"], "E"))
        self.assert_error_then_closed(c, "25P03", self.ERROR, timeout=30)
        self.assert_others_fine()

    def test_psycopg2_client_is_disconnected(self):
        """libpq cannot show a FATAL that arrived while it was idle (the same
        happens with PostgreSQL's own idle_in_transaction_session_timeout):
        the application sees its connection closed."""
        offset = self.proxy.log_offset()
        conn = self.proxy.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                wait_log(self.proxy, offset, self.ERROR)
                with self.assertRaises(psycopg2.OperationalError):
                    cur.execute("SELECT 2")
            self.assertTrue(conn.closed)
        finally:
            conn.close()
        self.assert_others_fine()

    def test_busy_transaction_is_not_terminated(self):
        """Statements every 0.1 s, and one running longer than the timeout,
        keep a transaction that lasts several timeouts alive."""
        t = self.make_table()
        c = self.proxy.raw_login(timeout=30)
        self.open_transaction(c, t)
        for i in range(20):
            time.sleep(0.1)
            r = c.query("INSERT INTO %s VALUES (%d)" % (t, i))
            self.assertEqual((r.errors, r.status), ([], "T"))
        r = c.query("SELECT 1 FROM pg_sleep(1.5)")
        self.assertEqual((r.errors, r.status), ([], "T"))
        r = c.query("COMMIT")
        self.assertEqual((r.errors, r.status), ([], "I"))
        c.close()
        self.assertEqual(self.pg.query("SELECT count(*) FROM %s" % t)[0][0], 21)
        self.assert_others_fine()


class SessionIdleTransactionTest(IdleTransactionTest):
    """The same in session mode (a second server connection, since the
    same-pool bystander keeps one for its whole session); the server is
    rolled back, cleaned with DISCARD ALL and kept."""

    proxy_settings = dict(IdleTransactionTest.proxy_settings, pool_mode="session", pool_size=2)

    def test_idle_outside_a_transaction_is_not_terminated(self):
        c = self.proxy.raw_login(timeout=30)
        r = c.query("SET application_name = 'patient'")
        self.assertEqual((r.errors, r.status), ([], "I"))
        time.sleep(2.5)  # idle, but not in a transaction
        r = c.query("SELECT current_setting('application_name')")
        self.assertEqual((r.errors, r.sets[0]["rows"], r.status), ([], [["patient"]], "I"))
        c.close()
        self.assert_others_fine()


# ---------------------------------------------------------------- a client that stops reading


BIG_ROWS = 50000  # 2000-byte rows: 100 MB, far more than every buffer on the way
BIG_QUERY = "SELECT repeat('x', 2000) FROM generate_series(1, %d) AS stalled_reader" % BIG_ROWS


def proxy_rss_kb(proxy):
    with open("/proc/%d/status" % proxy.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class StalledReaderTest(BadInputCase):
    """A client that stops reading (client_write_timeout off): the proxy
    holds at most its output cap for it and stops reading its server
    connection (PostgreSQL then waits in ClientWrite); nothing else waits."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0,
                      "pool_timeout": 60}

    def stalled_query_waits_in_client_write(self):
        rows = self.pg.query("SELECT wait_event FROM pg_stat_activity "
                             "WHERE query LIKE '%%stalled_reader%%' AND pid <> pg_backend_pid()")
        return rows == [("ClientWrite",)]

    def test_stalled_reader_is_held_back_and_nothing_else_waits(self):
        c = raw_small_window(self.proxy.port)
        c.login(harness.DEFAULT_USER, "app", harness.USERS[harness.DEFAULT_USER])
        rss_before = proxy_rss_kb(self.proxy)
        c.send(query_message(BIG_QUERY))
        harness.wait_until(self.stalled_query_waits_in_client_write, timeout=60,
                           message="PostgreSQL blocked writing the unread result")
        # The proxy holds a bounded amount for it, not the 100 MB.
        self.assertLess(proxy_rss_kb(self.proxy) - rss_before, 32 * 1024)
        # Everyone else carries on: the same pool on its other connection,
        # the other pool, a new client reading a large result whole.
        self.assert_others_fine()
        pc = self.proxy.connect(user=OTHER_USER, autocommit=True)
        try:
            with pc.cursor() as cur:
                cur.execute("SELECT repeat('y', 1000) FROM generate_series(1, 5000)")
                self.assertEqual(len(cur.fetchall()), 5000)
        finally:
            pc.close()
        self.assertTrue(self.stalled_query_waits_in_client_write())  # still held back
        # It reads again: every row arrives.
        rows, tag, status, end = read_big_result(c.sock)
        self.assertEqual((rows, tag, status, end), (BIG_ROWS, "SELECT %d" % BIG_ROWS, "I", None))
        self.assertEqual(c.query("SELECT 'after'").sets[0]["rows"], [["after"]])
        c.close()
        self.assert_others_fine()


class WriteTimeoutTest(BadInputCase):
    """client_write_timeout: a client that reads nothing of its full output
    for that long is disconnected (with a reset: it would not read an
    ErrorResponse) and its server connection closed, which frees the pool's
    only connection; a client that reads slowly is left alone."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 1, "max_overflow": 0,
                      "pool_timeout": 60, "client_write_timeout": 2}

    def test_stalled_reader_is_disconnected(self):
        offset = self.proxy.log_offset()
        c = raw_small_window(self.proxy.port, timeout=30)
        c.login(harness.DEFAULT_USER, "app", harness.USERS[harness.DEFAULT_USER])
        c.send(query_message(BIG_QUERY))
        self.other_pool.wait_progress()  # while it holds the pool's only connection
        log = wait_log(self.proxy, offset, "client_write_timeout (2 s): disconnecting it")
        self.assertRegex(log, r"read none of the \d+ bytes waiting for it within "
                              r"client_write_timeout \(2 s\): disconnecting it")
        harness.wait_until(lambda: not self.pg.query(
            "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%%stalled_reader%%' "
            "AND pid <> pg_backend_pid()"), timeout=30, message="its backend gone")
        # What it gets when it reads again: the rows that were already on
        # their way, then the reset; never the end of the result.
        rows, tag, status, end = read_big_result(c.sock)
        self.assertLess(rows, BIG_ROWS)
        self.assertEqual((tag, status), (None, None))
        self.assertIn(end, ("reset", "eof"))
        c.close()
        self.assert_others_fine()  # the same pool got its only connection back

    def test_slow_reader_is_not_disconnected(self):
        """Pauses shorter than the timeout between reads: never dropped."""
        c = raw_small_window(self.proxy.port, timeout=30)
        c.login(harness.DEFAULT_USER, "app", harness.USERS[harness.DEFAULT_USER])
        rows = 10000  # 20 MB
        c.send(query_message(BIG_QUERY.replace(str(BIG_ROWS), str(rows))))
        got = read_big_result(c.sock, pause_every=2 * 1024 * 1024, pause=0.3)
        self.assertEqual(got, (rows, "SELECT %d" % rows, "I", None))
        c.close()
        self.assert_others_fine()


# ---------------------------------------------------------------- a query longer than the maximum


class LongQueryTest(BadInputCase):
    """max_packet_size: a message whose length word (which counts itself) is
    at the limit passes, one byte more is refused with 08P01 naming the
    setting, in the simple and the extended protocol."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 1, "max_overflow": 0,
                      "pool_timeout": 60, "max_packet_size": 65536}

    @staticmethod
    def sql_of_length_word(n):
        """SELECT length('xxx...') whose Query message has length word n."""
        head, tail = "SELECT length('", "')"
        pad = n - 4 - len(head) - len(tail) - 1
        return head + "x" * pad + tail, pad

    def test_query_at_the_limit_passes(self):
        c = self.proxy.raw_login()
        sql, pad = self.sql_of_length_word(65536)
        self.assertEqual(len(query_message(sql)), 65537)  # type byte + length word 65536
        r = c.query(sql)
        self.assertEqual((r.errors, r.sets[0]["rows"], r.status), ([], [[str(pad)]], "I"))
        c.close()
        self.assert_others_fine()

    def test_query_one_byte_longer_is_refused(self):
        c = self.proxy.raw_login()
        sql, _ = self.sql_of_length_word(65537)
        send_quietly(c, query_message(sql))
        self.assert_error_then_closed(c, "08P01",
                                      "message of 65537 bytes exceeds max_packet_size (65536)")
        self.assert_others_fine()

    def test_parse_over_the_limit_is_refused(self):
        c = self.proxy.raw_login()
        sql, _ = self.sql_of_length_word(200000)
        send_quietly(c, harness.parse_message(sql) + harness.sync_message())
        self.assert_error_then_closed(c, "08P01",
                                      "message of 200003 bytes exceeds max_packet_size (65536)")
        self.assert_others_fine()

    def test_long_query_inside_a_transaction(self):
        t = self.make_table()
        c = self.proxy.raw_login()
        pid = self.open_transaction(c, t)
        sql, _ = self.sql_of_length_word(70000)
        send_quietly(c, query_message(sql))
        self.assert_error_then_closed(c, "08P01",
                                      "message of 70000 bytes exceeds max_packet_size (65536)")
        self.assert_rolled_back(t)
        self.assert_backend_kept(pid)
        self.assert_others_fine()

    def test_psycopg2_long_query(self):
        """Through libpq: the query is refused and the connection closed;
        the next connection works."""
        conn = self.proxy.connect(autocommit=True)
        try:
            with conn.cursor() as cur:
                with self.assertRaises(psycopg2.OperationalError):
                    cur.execute(self.sql_of_length_word(100000)[0])
            self.assertTrue(conn.closed)
        finally:
            conn.close()
        conn = self.proxy.connect(autocommit=True)
        with conn.cursor() as cur:
            cur.execute(self.sql_of_length_word(60000)[0])
            self.assertEqual(cur.fetchone()[0], self.sql_of_length_word(60000)[1])
        conn.close()
        self.assert_others_fine()


if __name__ == "__main__":
    unittest.main()
