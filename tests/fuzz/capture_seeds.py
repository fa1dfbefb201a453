"""Write the seed corpora of tests/fuzz/corpus/ from real traffic.

Run by /usr/bin/python3 from the repository root, after a normal build
(build/pgcoalesce), as the integration tests are:

    /usr/bin/python3 tests/fuzz/capture_seeds.py

It starts a throwaway PostgreSQL 15 and pgcoalesce (tests/integration/harness.py),
puts a recording TCP relay in front of each, and drives them with the
clients users run: libpq (psycopg2, with SCRAM and md5),
asyncpg (its own SCRAM, named prepared statements, binary results),
psycopg 3 (server-side binding), psql on the admin console and curl on the
admin port's HTTP. The recorded bytes are cut into the inputs each fuzz
target takes (see the comment at the top of each fuzz_<name>.c). Seeds
that traffic cannot give (RFC 7677's SCRAM exchange, statements from
tests/data/orm/statements.txt, config files from tests/data/config, odd
URLs, ...) are written too. Existing files of the same name are replaced;
other files (minimised crashes kept as regression inputs) are left alone.
"""

import asyncio
import faulthandler
import signal
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import harness  # noqa: E402

CORPUS = os.path.join(HERE, "corpus")
SEP = b"\n%%\n"  # FUZZ_SEP in fuzz.h


def seed(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- recording relay


class Relay:
    """Accepts on a free port and forwards to target_port, keeping each
    connection's client->server and server->client bytes."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []  # [bytearray c2s, bytearray s2c]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target_port))
            rec = [bytearray(), bytearray()]
            with self.lock:
                self.conns.append(rec)
            threading.Thread(target=self._pump, args=(c, s, rec[0]), daemon=True).start()
            threading.Thread(target=self._pump, args=(s, c, rec[1]), daemon=True).start()

    @staticmethod
    def _pump(src, dst, rec):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                rec += b
                dst.sendall(b)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def take(self):
        """The connections recorded so far (after a short settle), and forget them."""
        time.sleep(0.3)
        with self.lock:
            conns, self.conns = self.conns, []
        return [(bytes(a), bytes(b)) for a, b in conns]


# ---------------------------------------------------------------- stream cutting


def client_packets(stream):
    """Untyped startup-phase packets (SSLRequest, StartupMessage, CancelRequest),
    then the typed messages: ([body, ...], [(type, body), ...])."""
    untyped, typed, off = [], [], 0
    while off + 8 <= len(stream):
        n, code = struct.unpack("!ii", stream[off:off + 8])
        if stream[off] != 0 or n < 8 or off + n > len(stream):
            break
        untyped.append(stream[off + 4:off + n])
        off += n
        if code not in (harness.SSL_REQUEST_CODE, harness.GSSENC_REQUEST_CODE):
            break
    return untyped, typed_messages(stream[off:]), stream[off:]


def typed_messages(stream):
    out, off = [], 0
    while off + 5 <= len(stream):
        t = stream[off:off + 1]
        (n,) = struct.unpack("!i", stream[off + 1:off + 5])
        if n < 4 or off + 1 + n > len(stream):
            break
        out.append((t, stream[off + 5:off + 1 + n]))
        off += 1 + n
    return out


def server_stream(stream):
    """The server's bytes without the one-byte answer to an SSLRequest."""
    if stream[:1] in (b"N", b"S") and stream[1:2] != b"\0":
        return stream[1:]
    return stream


# ---------------------------------------------------------------- traffic


def run_psycopg2(relay, user, password, tag):
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=relay.port, user=user, password=password,
                            dbname="app", application_name="fuzz-" + tag)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS fz_users (id int PRIMARY KEY, name text)")
    cur.execute("CREATE TABLE IF NOT EXISTS fz_posts (id int PRIMARY KEY, user_id int, title text)")
    cur.execute("INSERT INTO fz_users VALUES (%s, %s) ON CONFLICT DO NOTHING", (1, "ann's"))
    cur.execute("INSERT INTO fz_users VALUES (%s, %s) ON CONFLICT DO NOTHING", (2, "bob"))
    cur.execute("INSERT INTO fz_posts VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", (10, 1, "a\\b"))
    cur.execute("SELECT users.id AS users_id, users.name AS users_name FROM fz_users AS users "
                "WHERE users.id = %s", (1,))
    cur.fetchall()
    cur.execute("SELECT * FROM fz_posts WHERE user_id IN %s ORDER BY id LIMIT %s", ((1, 2), 5))
    cur.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
    try:
        cur.execute("INSERT INTO fz_users VALUES (1, 'dup')")
    except psycopg2.Error:
        pass
    try:
        cur.execute("SELEC 1")
    except psycopg2.Error:
        pass
    conn.autocommit = False
    cur.execute("SELECT pg_sleep(0)")
    conn.rollback()
    # a batched statement as daemon/batch.c builds it, in text format
    cur.execute("SELECT pgc_k.pgc_ord, pgc_s.* FROM unnest(%s::int8[]) WITH ORDINALITY AS "
                "pgc_k(pgc_val, pgc_ord) CROSS JOIN LATERAL (SELECT fz_posts.id, fz_posts.title "
                "FROM fz_posts WHERE fz_posts.user_id = pgc_k.pgc_val\nOFFSET 0\n) AS pgc_s "
                "ORDER BY pgc_k.pgc_ord", ([1, 2, 1],))
    conn.commit()
    # (no conn.cancel(): it holds the GIL while connecting to this process's relay)
    conn.close()


async def asyncpg_work(relay):
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=relay.port, user="app_scram",
                                 password="scram_pw", database="app", ssl=False)
    stmt = await conn.prepare("SELECT id, user_id, title FROM fz_posts WHERE user_id = $1")
    for uid in (1, 2, 3):
        await stmt.fetch(uid)
    await conn.fetch("SELECT $1::text || $2::text AS t, $3::uuid AS u", "a", "b",
                     "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    await conn.fetch(
        "SELECT pgc_k.pgc_ord, pgc_s.* FROM unnest($1::int8[]) WITH ORDINALITY AS "
        "pgc_k(pgc_val, pgc_ord) CROSS JOIN LATERAL (SELECT fz_posts.id, fz_posts.title "
        "FROM fz_posts WHERE fz_posts.user_id = pgc_k.pgc_val\nOFFSET 0\n) AS pgc_s "
        "ORDER BY pgc_k.pgc_ord", [1, 2])
    try:
        await conn.execute("INSERT INTO fz_users VALUES (2, 'again')")
    except asyncpg.PostgresError:
        pass
    await conn.close()


def run_psycopg3(relay):
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=relay.port, user="app_trust", dbname="app",
                         prepare_threshold=0, sslmode="disable") as conn:
        for uid in (1, 2):
            conn.execute("SELECT id, name FROM fz_users WHERE id = %s", (uid,)).fetchall()
        conn.execute("SELECT %s::int AS a, %s::text AS b, %s::bool AS c", (5, "x'y", True))


def run_psql_admin(relay):
    env = dict(os.environ, PGCONNECT_TIMEOUT="5")
    subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(relay.port), "-U", "admin",
                    "-d", "pgcoalesce", "-c", "SHOW POOLS;", "-c", "SHOW HELP", "-c",
                    "show config; show version", "-c", "PAUSE app; RESUME app", "-c",
                    "SET x = 1", "-c", "SHOW N1", "-c", "SHOW QUERIES", "-c", "SHOW BATCH", "-c",
                    "SHOW CLIENTS", "-c", "SHOW SERVERS", "-c", "SHOW DATABASES", "-c",
                    "SHOW STATS", "-c", "RECONNECT", "-c", "SHOW NOPE", "-c", "KILL"],
                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(relay.port), "-U", "metrics",
                    "-d", "pgcoalesce", "-c", "SHOW STATS", "-c", "RELOAD"],
                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


def run_curl(relay):
    base = "http://127.0.0.1:%d" % relay.port
    for args in (["%s/metrics" % base], ["%s/stats" % base], ["%s/n1" % base],
                 ["%s/queries?x=1" % base], ["-I", "%s/healthz" % base],
                 ["-X", "POST", "%s/metrics" % base], ["%s/nope" % base]):
        subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "5"] + args,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


# ---------------------------------------------------------------- seeds from traffic


def seeds_from_pg(conns, tag):
    """Startup packets, message streams, errors, SCRAM and password messages."""
    for i, (c2s, s2c) in enumerate(conns):
        name = "%s-%d" % (tag, i)
        untyped, typed, rest = client_packets(c2s)
        for k, body in enumerate(untyped):
            seed("startup", "%s-%d" % (name, k), body)
        back = server_stream(s2c)
        if rest:
            seed("msg", name + "-frontend", bytes([40]) + rest[:16384])
        if back:
            seed("msg", name + "-backend", bytes([41]) + back[:16384])
        btyped = typed_messages(back)
        for k, (t, body) in enumerate(btyped):
            if t in (b"E", b"N"):
                seed("error", "%s-%s%d" % (name, t.decode(), k), body)
            if t == b"T" and b"pgc_ord" in body:
                seed("batch", "%s-rowdesc%d" % (name, k), b"\x04" + body)
        # DataRows of a batched statement: the rows after its RowDescription
        in_batch = False
        for k, (t, body) in enumerate(btyped):
            if t == b"T":
                in_batch = b"pgc_ord" in body
                binary = in_batch and body.endswith(b"\x00\x01")
            elif t == b"D" and in_batch:
                seed("batch", "%s-row%d" % (name, k), bytes([3, 1 if binary else 0]) + body)
        # password messages: an auth target step, SCRAM messages without framing
        pmsgs = [body for t, body in typed if t == b"p"]
        sasl = [body for t, body in btyped if t == b"R" and len(body) > 4]
        if pmsgs:
            seed("auth", name, bytes([2 | 8]) + SEP.join(pmsgs))
            seed("auth", name + "-md5", bytes([1 | 4]) + SEP.join(pmsgs))
        if len(pmsgs) >= 2 and pmsgs[0].startswith(b"SCRAM-SHA-256\0"):
            first = pmsgs[0][len(b"SCRAM-SHA-256\0") + 4:]
            final = pmsgs[1]
            seed("scram_server", name, first + SEP + final)
            # the same client nonce against the fuzz target's server nonce, with
            # the proof left for the target to fill in: reaches the success path
            m = re.match(rb"c=([^,]*),r=([^,]*),", final)
            cnonce = re.search(rb"r=([^,]*)", first).group(1)
            if m:
                fixed = b"c=" + m.group(1) + b",r=" + cnonce + b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="
                seed("scram_server", name + "-proof", first + SEP + fixed)
            sf = [b[4:] for b in sasl if struct.unpack("!i", b[:4])[0] == 11]
            sfin = [b[4:] for b in sasl if struct.unpack("!i", b[:4])[0] == 12]
            if sf:
                # the server's messages with RFC 7677's client nonce in place of ours
                srv_first = sf[0].replace(cnonce, b"rOprNGfwEbeRWgbNEkqO")
                seed("scram_client", name, b"\x00" + SEP.join([b""] + [srv_first] + sfin[:1]))


def seeds_from_admin(conns):
    for i, (c2s, s2c) in enumerate(conns):
        seed("admin", "psql-%d" % i, b"\x00" + c2s)
        seed("admin", "psql-%d-reads" % i, bytes([7 << 2]) + c2s)


def seeds_from_http(conns):
    for i, (c2s, s2c) in enumerate(conns):
        seed("http", "curl-%d" % i, c2s)


# ---------------------------------------------------------------- crafted seeds


def crafted():
    def msg(t, body):
        return t + struct.pack("!i", len(body) + 4) + body

    def startup(params, version=harness.PROTO_V3):
        return struct.pack("!i", version) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in params) + b"\0"

    # startup packets
    seed("startup", "options", startup([("user", "app"), ("database", "app"),
                                        ("options", "-c search_path=a,b -c x=1"),
                                        ("application_name", "caf\xe9")]))
    seed("startup", "no-user", startup([("database", "app")]))
    seed("startup", "dup-user", startup([("user", "a"), ("user", "b")]))
    seed("startup", "v2", startup([("user", "a")], version=0x20000))
    seed("startup", "cancel", struct.pack("!iii", harness.CANCEL_REQUEST_CODE, 1234, 5678))
    seed("startup", "gssenc", struct.pack("!i", harness.GSSENC_REQUEST_CODE))

    # the console, logged in (mode 1: admin_users, 2: stats_users)
    q = lambda s: msg(b"Q", s.encode() + b"\0")  # noqa: E731
    seed("admin", "show-pools", b"\x01" + q("SHOW POOLS;"))
    seed("admin", "many", b"\x01" + q("show pools; SHOW \"stats\";;; show config") +
         q("PAUSE app") + q("RESUME app") + q("RECONNECT app") + q("KILL app") +
         q("SHUTDOWN NOW") + q("RELOAD") + q("begin; commit") + q("a b c d e f g h i j"))
    seed("admin", "stats-user", b"\x02" + q("SHOW CLIENTS") + q("PAUSE") + q(""))
    seed("admin", "extended", b"\x01" + msg(b"P", b"\0SHOW POOLS\0\0\0") +
         msg(b"B", b"\0\0\0\0\0\0\0\0") + msg(b"E", b"\0\0\0\0\0") + msg(b"S", b"") +
         q("SHOW VERSION") + msg(b"X", b""))
    seed("admin", "shutdown", b"\x01" + q("SHUTDOWN") + q("SHUTDOWN IMMEDIATE"))
    seed("admin", "bad-length", b"\x01" + b"Q\xff\xff\xff\xff")
    seed("admin", "ssl-then-startup",
         b"\x00" + struct.pack("!ii", 8, harness.SSL_REQUEST_CODE) +
         struct.pack("!i", 4 + len(startup([("user", "admin"), ("database", "pgcoalesce")]))) +
         startup([("user", "admin"), ("database", "pgcoalesce")]) + q("SHOW DATABASES"))
    seed("admin", "wrong-db", b"\x00" + struct.pack("!i", 4 + len(startup([("user", "x")]))) +
         startup([("user", "x")]))

    # HTTP
    seed("http", "metrics", b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    seed("http", "head-healthz", b"HEAD /healthz HTTP/1.0\n\n")
    seed("http", "bare-lf", b"GET /n1?limit=5 HTTP/1.1\nHost: x\n\n")
    seed("http", "post", b"POST /stats HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    seed("http", "no-version", b"GET /metrics\r\n\r\n")
    seed("http", "long-header", b"GET /queries HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
    seed("http", "mixed-ends", b"GET /stats HTTP/1.1\n\nX\r\n\r\n")

    # SCRAM, RFC 7677 section 3
    cn, sn = b"rOprNGfwEbeRWgbNEkqO", b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    sfirst = b"r=" + cn + sn + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    cfinal = b"c=biws,r=" + cn + sn + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    sfinal = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    seed("scram_server", "rfc7677", b"n,,n=user,r=" + cn + SEP + cfinal)
    seed("scram_server", "rfc7677-fixup", b"n,,n=user,r=" + cn + SEP + b"c=biws,r=" + cn + sn +
         b",p=")
    seed("scram_server", "y-flag-ext", b"y,,n=,r=" + cn + b",x=ext" + SEP + b"c=eSws,r=" + cn +
         sn + b",x=1,p=")
    seed("scram_server", "channel-binding", b"p=tls-server-end-point,,n=,r=abc" + SEP + b"c=cD0")
    seed("scram_server", "authzid", b"n,a=admin,n=,r=abc")
    seed("scram_client", "rfc7677", b"\x00user" + SEP + sfirst + SEP + sfinal)
    seed("scram_client", "error", b"\x00" + SEP + sfirst + SEP + b"e=invalid-proof")
    seed("scram_client", "extensions", b"\x00" + SEP + sfirst + b",x=y" + SEP + sfinal + b",z=1")
    seed("scram_client", "round-trip", b"\x03us,er=" + SEP + b"pencil" + SEP + cn + SEP + sn +
         SEP + b"salt")
    seed("scram_client", "round-trip-utf8", b"\x05" + "j\xf6rg".encode() + SEP +
         "p\xe4ss\u00a0w".encode() + SEP + b"abc" + SEP + b"def" + SEP + b"\x00\x01\x02")

    # secrets
    seed("secret", "scram", b"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7Bk"
         b"eZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=" + SEP + b"user" +
         SEP + b"md5")
    seed("secret", "md5", b"md52aea419619857e8a27f0f7aa641db0c6" + SEP + b"md5user" + SEP +
         b"md5911f527656472583a006e7727877b33e")
    seed("secret", "plain", b"secret" + SEP + b"app" + SEP + b"md5911f527656472583a006e7727877b33e")

    # auth exchanges: byte = auth_type | user << 2
    seed("auth", "md5-plain", b"\x01" + b"md5911f527656472583a006e7727877b33e\0")
    seed("auth", "scram-initial", b"\x02" + b"SCRAM-SHA-256\0" + struct.pack("!i", 32) +
         b"n,,n=,r=rOprNGfwEbeRWgbNEkqOabcd" + SEP + cfinal)
    seed("auth", "scram-no-data", b"\x0a" + b"SCRAM-SHA-256\0" + struct.pack("!i", -1))
    seed("auth", "other-mech", b"\x06" + b"SCRAM-SHA-256-PLUS\0" + struct.pack("!i", 3) + b"n,,")

    # config files: the test data and the example, auth_file pointed at users.txt
    def conf(path):
        with open(path, "rb") as f:
            text = f.read()
        return re.sub(rb"(?m)^(\s*auth_file\s*=).*$", rb"\1 users.txt", text)

    def users(path):
        with open(path, "rb") as f:
            return f.read()

    cdir = os.path.join(ROOT, "tests", "data", "config")
    seed("config", "full", conf(os.path.join(cdir, "full.ini")) + SEP +
         users(os.path.join(cdir, "full_users.txt")))
    seed("config", "bad_auth", conf(os.path.join(cdir, "bad_auth.ini")) + SEP +
         users(os.path.join(cdir, "bad_users.txt")))
    seed("config", "example", conf(os.path.join(ROOT, "conf", "pgcoalesce.ini")) + SEP +
         users(os.path.join(ROOT, "conf", "userlist.txt")))
    seed("config", "databases", b"[pgcoalesce]\nauth_type = trust\n[databases]\n"
         b"app = host=10.0.0.5 port=5432 dbname=app user=u password='p w''x' pool_size=3\n"
         b"* = host=/var/run/postgresql pool_mode=session max_overflow=0\n"
         b"bad = host='unterminated\n")
    seed("config", "continuation", b"[pgcoalesce]\nlisten_port = 6432\n  7\nauth_type=md5\n"
         b"auth_file=users.txt\n[nope]\nx=1\n" + SEP + b'"a" "b"\n"a" "c"\n')

    # quick-start URLs
    for name, url in (("plain", "postgresql://app:secret@db:5432/app"),
                      ("ipv6", "postgres://u@[::1]:5433/d?sslmode=require" + "\n%%\n[::1]:7000"),
                      ("encoded", "postgresql://us%40er:s3cr3tPW@h/db%2F1?application_name=x"),
                      ("socket", "postgresql:///app?host=/var/run/postgresql&port=5433"),
                      ("bad-port", "postgresql://u:s3cr3tPW@h:99999/db"),
                      ("listen", "postgresql://h/app\n%%\n0.0.0.0:6432")):
        seed("url", name, url.encode())

    # session parameters: byte = which pairs the server has
    seed("params", "switch", b"\x05" + SEP.join([
        b"application_name", b"psql", b"DateStyle", b"ISO, MDY", b"TimeZone", b"UTC",
        b"application_name", b"it's \\ here", b"search_path", b"\"$user\", public",
        b"options", b"-c x='1'", b"server_version", b"15"]))
    seed("params", "quotes", b"\x00" + SEP.join([b"we\"ird", b"'; DROP TABLE x; --", b"a\\",
                                                 b"\\'"]))

    # batch: arrays (type selector, buffer size, values), rows, wrapping
    seed("batch", "array-int8-binary", b"\x02\x02\xc8" + b"\x88" + struct.pack("!q", -7) +
         b"\x84" + struct.pack("!i", 42) + b"\xff" + b"\x03abc")
    seed("batch", "array-uuid", b"\x02\x0d\x40" + b"\x90" + bytes(range(16)) + b"\x02x\"")
    seed("batch", "array-text", b"\x02\x05\x20" + b"\x05a\"b\\c" + b"\x00" + b"\x81\x01")
    seed("batch", "cut-any", b"\x01" + struct.pack("<IIBBBB", 30, 1, 5, 0, 2, 1) +
         b"SELECT * FROM t WHERE id = 5 ; ")

    # SQL: every statement of tests/data/orm/statements.txt, one file each
    sql = []
    with open(os.path.join(ROOT, "tests", "data", "orm", "statements.txt"), encoding="utf-8") as f:
        cur = None
        for line in f:
            if line.startswith("sql: "):
                cur = line[5:].rstrip("\n")
                sql.append(cur)
            elif cur is not None and line.startswith("    "):
                sql[-1] += "\n" + line.rstrip("\n")
            else:
                cur = None
    for i, s in enumerate(sql):
        b = s.encode()
        seed("shape", "statements-%03d" % i, b)
        seed("analyze", "statements-%03d" % i, b)
        seed("batch", "statements-%03d" % i, b"\x00" + b)
    seed("shape", "too-long", b"SELECT " + b"1," * 16400 + b"1")
    seed("shape", "many-lits", b"SELECT * FROM t WHERE id IN (" + b",".join(
        b"%d" % i for i in range(4200)) + b")")
    seed("shape", "odd-strings", "SELECT U&'d\\0061t' UESCAPE '!', E'\\x41\\u00e9\\'', "
         "$tag$ $$ $tag$, B'01', X'1f', N'n''x', DATE '2020-01-01', -5, 1_000, 0x1F, .5e3 "
         "-- c\n/* a /* nested */ */;;".encode())


def main():
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    for d in os.listdir(CORPUS) if os.path.isdir(CORPUS) else []:
        os.makedirs(os.path.join(CORPUS, d), exist_ok=True)
    crafted()
    pg = harness.Postgres()
    pg.start()
    proxy = None
    try:
        relay = Relay(pg.port)
        run_psycopg2(relay, "app_scram", "scram_pw", "scram")
        seeds_from_pg(relay.take(), "psycopg2-scram")
        run_psycopg2(relay, "app_md5", "md5_pw", "md5")
        seeds_from_pg(relay.take(), "psycopg2-md5")
        asyncio.run(asyncpg_work(relay))
        seeds_from_pg(relay.take(), "asyncpg")
        run_psycopg3(relay)
        seeds_from_pg(relay.take(), "psycopg3")
        c = pg.connect()
        with c.cursor() as cur:
            cur.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL")
            for user, secret in cur.fetchall():
                seed("secret", "pg15-" + user, secret.encode() + SEP + user.encode())
        c.close()

        proxy = harness.Proxy(pg, settings={"admin_users": "admin", "stats_users": "metrics"})
        proxy.start()
        relay = Relay(proxy.admin_port)
        run_psql_admin(relay)
        seeds_from_admin(relay.take())
        run_curl(relay)
        seeds_from_http(relay.take())
    finally:
        if proxy:
            proxy.stop()
        pg.stop()


if __name__ == "__main__":
    main()
