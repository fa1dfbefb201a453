"""N+1 batching (n1_mode = batch) must be invisible to the client.

Every loop of the corpus below runs twice, against two pgcoalesce of the same
class: one with n1_mode = detect, one with n1_mode = batch. Between each client
and its pgcoalesce sits a recording TCP relay (RecordingRelay) that keeps every
byte pgcoalesce sends to the client, per connection. The two recordings must be
identical message by message; only BackendKeyData ('K') contents are masked
(two connections never share a cancel key; no ParameterStatus differs). On a
difference the first differing backend message of each side is printed,
decoded, with the messages before it and what the client had just sent.

Then pg_stat_statements (reset as the superuser before each run) says how
often PostgreSQL ran the child statement (found by `FROM <child table>`): in
detect mode once per child execution the client made (N, counted on the
client side); in batch mode the plain child statement plus the batched one
(its text contains `unnest` and the child's text) at most
ceil(N / n1_batch_max) + n1_batch_after times, the batched one at least once
and at most ceil(N / n1_batch_max) times (when that bound is below N at all).

Corpus (tables n1b_*; all filled directly in PostgreSQL, not through pgcoalesce):
  - SQLAlchemy 1.4 ORM lazy loads through psycopg2 (simple protocol, literals
    inline) and asyncpg (async engine; named statements, binary): one-to-many
    with and without ORDER BY on the relationship, many-to-one (NULL foreign
    keys, identity-map hits); in the Session's transaction (READ COMMITTED),
    AUTOCOMMIT and REPEATABLE READ.
  - Django 3.2 (tests/integration/n1djangoapp): reverse FK manager .all() per
    author (no ORDER BY), forward FK per book (Django's `LIMIT 21`, repeated
    authors), in autocommit and in atomic().
  - hand-written `$1` loops as node-postgres / Rails send them: psycopg2,
    psycopg 3 with unnamed statements and with named ones (prepare_threshold
    0), asyncpg directly (named statements, binary parameters and results);
    integer, bigint, text and uuid keys; keys without child rows, text keys
    needing escapes (quotes, backslashes, unicode, %, $1, ''); NULL keys,
    repeated keys, both; parents of 1, 2, 3, 100 and 1000 rows; autocommit and
    BEGIN ISOLATION LEVEL READ COMMITTED / REPEATABLE READ ... COMMIT; children
    without ORDER BY, with and without an index (rows stored shuffled).
  - semantics (BatchSemanticsTest): writes by the same client between children
    (UPDATE, INSERT, DELETE of rows of keys the loop reads later), SAVEPOINT /
    ROLLBACK TO SAVEPOINT / RELEASE inside the loop, a child that fails for
    some keys (division by zero, a failing cast) in autocommit, in a
    transaction that aborts and in one that recovers with ROLLBACK TO
    SAVEPOINT; text keys longer than a batched key may be; one shape from
    clients of different formats one after the other.
  - SmallBatchTest: n1_batch_after 3, n1_batch_max 7 (many batches per loop).
  - PrefetchTtlTest (default n1_prefetch_ttl): a write by another session and
    a pause longer than the TTL in the middle of a batched loop: seen in
    autocommit and READ COMMITTED; in REPEATABLE READ and SERIALIZABLE not
    seen, and the prefetch outlives the TTL (no second batch).

Each raw statement carries a column alias naming its case, so that no case
shares a statement shape with another (what pgcoalesce learns about a shape
in one case cannot change the next one; shared shapes are tested on purpose).

Test names: test_bytes_<case> (the recordings are identical), test_calls_<case>
(pg_stat_statements: the calls fell) and test_batched_<case> (semantic cases:
a batched statement did run, per pg_stat_statements or, when it failed, per
the PostgreSQL log, so the case exercised batching).

PGC_N1_BATCH_SELFCHECK=1 runs both proxies with n1_mode = detect: every
test_bytes_* must then pass (a check of the relay, the masking and that the
corpus is deterministic); the calls and batched tests fail.
"""

import asyncio
import math
import os
import random
import re
import socket
import struct
import sys
import threading
import time
import unittest
import uuid

import psycopg2

import harness

try:
    import psycopg  # psycopg 3
except ImportError:  # pragma: no cover - Debian has python3-psycopg
    psycopg = None

try:
    import asyncpg
except ImportError:  # pragma: no cover - Debian has python3-asyncpg
    asyncpg = None

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, declarative_base, relationship
from sqlalchemy.pool import NullPool

try:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
except ImportError:  # pragma: no cover
    create_async_engine = None

try:
    import django
except ImportError:  # pragma: no cover - Debian has python3-django
    django = None

USER = harness.DEFAULT_USER
PASSWORD = harness.USERS[USER]
DB = harness.DATABASE

# What pgcoalesce documents as the defaults of the batching settings.
DEFAULT_BATCH_AFTER = 2
DEFAULT_BATCH_MAX = 500
BATCH_SETTING_NAMES = ("n1_batch_after", "n1_batch_max", "n1_prefetch_ttl")

# ParameterStatus parameters whose values may legitimately differ between two
# connections (none: both proxies talk to the same PostgreSQL).
MASKED_PARAMETERS = frozenset()


# ============================================================ recording relay


class Capture:
    """The bytes of one relayed connection, in arrival order: chunks of
    ('c', data) client to pgcoalesce and ('s', data) pgcoalesce to client."""

    def __init__(self):
        self.chunks = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error = None

    def add(self, direction, data):
        with self.lock:
            self.chunks.append((direction, data))

    def stream(self, direction):
        with self.lock:
            return b"".join(d for k, d in self.chunks if k == direction)

    def client_bytes_before(self, server_offset):
        """What the client had sent before the server byte at server_offset
        reached the relay."""
        out, s_off = [], 0
        with self.lock:
            for k, d in self.chunks:
                if k == "s":
                    if s_off + len(d) > server_offset:
                        break
                    s_off += len(d)
                else:
                    out.append(d)
        return b"".join(out)


class RecordingRelay:
    """127.0.0.1:<port> -> 127.0.0.1:<target>, recording every connection."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.captures = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while True:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            cap = Capture()
            with self.lock:
                self.captures.append(cap)
            threading.Thread(target=self._serve, args=(client, cap), daemon=True).start()

    def _serve(self, client, cap):
        try:
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=30)
                server.settimeout(None)
            except OSError as e:
                cap.error = "cannot connect to pgcoalesce: %s" % e
                return
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            back = threading.Thread(target=self._pump, args=(server, client, cap, "s"),
                                    daemon=True)
            back.start()
            self._pump(client, server, cap, "c")
            back.join()
            server.close()
        finally:
            client.close()
            cap.done.set()

    @staticmethod
    def _pump(src, dst, cap, direction):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                cap.add(direction, data)
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def take(self, timeout=30):
        """The captures since the last take(), once all of them are closed."""
        deadline = time.monotonic() + timeout
        with self.lock:
            caps = list(self.captures)
        for i, cap in enumerate(caps):
            if not cap.done.wait(max(0.0, deadline - time.monotonic())):
                raise AssertionError("relayed connection %d of %d still open %d s after the "
                                     "client finished" % (i + 1, len(caps), timeout))
        with self.lock:
            self.captures = self.captures[len(caps):]
        return caps

    def close(self):
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        self.thread.join(5)


# ============================================================ protocol decoding

_REQUEST_CODES = {80877103: "SSLRequest", 80877104: "GSSENCRequest",
                  80877102: "CancelRequest", harness.PROTO_V3: "StartupMessage"}


def frontend_messages(data):
    """[(type, body, offset)] of a client stream; the untyped start-up packets
    get names in <>. Also returns how many SSL/GSSENC requests came first (the
    server answers each with one untyped byte)."""
    msgs, pos, requests = [], 0, 0
    while len(data) - pos >= 8:
        length, code = struct.unpack("!ii", data[pos:pos + 8])
        if length < 8 or len(data) - pos < length:
            return msgs, requests
        name = _REQUEST_CODES.get(code, "startup code %d" % code)
        msgs.append(("<%s>" % name, data[pos + 8:pos + length], pos))
        pos += length
        if code in (80877103, 80877104):
            requests += 1
            continue
        break
    while len(data) - pos >= 5:
        length = struct.unpack("!i", data[pos + 1:pos + 5])[0]
        if length < 4 or len(data) - pos - 1 < length:
            break
        msgs.append((chr(data[pos]), data[pos + 5:pos + 1 + length], pos))
        pos += 1 + length
    return msgs, requests


def backend_messages(data, untyped_replies=0):
    """[(type, body, offset)] of a server stream, and the bytes left over
    (an incomplete message: must be empty for a finished connection)."""
    msgs, pos = [], 0
    for _ in range(untyped_replies):
        if pos < len(data):
            msgs.append(("<reply to request>", data[pos:pos + 1], pos))
            pos += 1
    while len(data) - pos >= 5:
        length = struct.unpack("!i", data[pos + 1:pos + 5])[0]
        if length < 4:
            break
        if len(data) - pos - 1 < length:
            break
        msgs.append((chr(data[pos]), data[pos + 5:pos + 1 + length], pos))
        pos += 1 + length
    return msgs, data[pos:]


def mask(msg):
    kind, body, _ = msg
    if kind == "K":
        return (kind, b"\0" * len(body))
    if kind == "S":
        name = body.split(b"\0", 1)[0]
        if name.decode("utf-8", "replace") in MASKED_PARAMETERS:
            return (kind, name + b"\0<masked>\0")
    return (kind, body)


def _short(b, n=80):
    r = repr(b)
    return r if len(r) <= n else r[:n] + "..."


def _cstrings(body):
    return [p.decode("utf-8", "replace") for p in body.split(b"\0")]


def describe_backend(kind, body):
    try:
        if kind == "R":
            return "Authentication code=%d %s" % (struct.unpack("!i", body[:4])[0],
                                                  _short(body[4:]))
        if kind == "S":
            k, v = _cstrings(body)[:2]
            return "ParameterStatus %s=%r" % (k, v)
        if kind == "K":
            return "BackendKeyData pid=%d key=%d" % struct.unpack("!ii", body[:8])
        if kind == "Z":
            return "ReadyForQuery %r" % chr(body[0])
        if kind == "T":
            n = struct.unpack("!h", body[:2])[0]
            cols, pos = [], 2
            for _ in range(n):
                end = body.index(b"\0", pos)
                name = body[pos:end].decode("utf-8", "replace")
                tbl, att, typ, tlen, tmod, fmt = struct.unpack("!ihihih", body[end + 1:end + 19])
                cols.append("%s(table=%d att=%d type=%d len=%d mod=%d fmt=%d)"
                            % (name, tbl, att, typ, tlen, tmod, fmt))
                pos = end + 19
            return "RowDescription [%s]" % ", ".join(cols)
        if kind == "D":
            n = struct.unpack("!h", body[:2])[0]
            vals, pos = [], 2
            for _ in range(n):
                ln = struct.unpack("!i", body[pos:pos + 4])[0]
                pos += 4
                if ln < 0:
                    vals.append("NULL")
                else:
                    vals.append(_short(body[pos:pos + ln], 60))
                    pos += ln
            return "DataRow [%s]" % ", ".join(vals)
        if kind == "C":
            return "CommandComplete %r" % body.rstrip(b"\0").decode("utf-8", "replace")
        if kind in "EN":
            fields = harness.parse_error_fields(body)
            return "%s %s" % ("ErrorResponse" if kind == "E" else "NoticeResponse",
                              " ".join("%s=%r" % kv for kv in fields.items()))
        names = {"1": "ParseComplete", "2": "BindComplete", "3": "CloseComplete",
                 "n": "NoData", "s": "PortalSuspended", "I": "EmptyQueryResponse"}
        if kind in names:
            return names[kind]
        if kind == "t":
            n = struct.unpack("!h", body[:2])[0]
            return "ParameterDescription %r" % (list(struct.unpack("!%di" % n, body[2:2 + 4 * n])),)
    except (struct.error, ValueError, IndexError):
        pass
    return "%r %s" % (kind, _short(body, 120))


def describe_frontend(kind, body):
    try:
        if kind == "Q":
            return "Query %r" % body.rstrip(b"\0").decode("utf-8", "replace")
        if kind == "P":
            name, sql = _cstrings(body)[:2]
            return "Parse name=%r %r" % (name, sql)
        if kind == "B":
            portal, stmt = _cstrings(body)[:2]
            pos = len(portal.encode()) + len(stmt.encode()) + 2
            nf = struct.unpack("!h", body[pos:pos + 2])[0]
            pos += 2 + 2 * nf
            n = struct.unpack("!h", body[pos:pos + 2])[0]
            pos += 2
            vals = []
            for _ in range(n):
                ln = struct.unpack("!i", body[pos:pos + 4])[0]
                pos += 4
                if ln < 0:
                    vals.append("NULL")
                else:
                    vals.append(_short(body[pos:pos + ln], 60))
                    pos += ln
            return "Bind portal=%r statement=%r values=[%s]" % (portal, stmt, ", ".join(vals))
        if kind == "E":
            return "Execute portal=%r" % _cstrings(body)[0]
        if kind == "D":
            return "Describe %s %r" % (chr(body[0]), _cstrings(body[1:])[0])
        if kind == "C":
            return "Close %s %r" % (chr(body[0]), _cstrings(body[1:])[0])
        names = {"S": "Sync", "H": "Flush", "X": "Terminate", "p": "PasswordMessage"}
        if kind in names:
            return names[kind]
    except (struct.error, ValueError, IndexError):
        pass
    return "%s %s" % (kind, _short(body, 120))


def first_difference(det, bat):
    """None when the two lists of captures carry the same backend messages
    (after masking), else a report of the first difference."""
    if len(det) != len(bat):
        return ("detect mode had %d client connections, batch mode %d"
                % (len(det), len(bat)))
    for ci, (a, b) in enumerate(zip(det, bat)):
        for cap, mode in ((a, "detect"), (b, "batch")):
            if cap.error:
                return "%s mode, connection %d: %s" % (mode, ci + 1, cap.error)
        streams = []
        for cap in (a, b):
            _, requests = frontend_messages(cap.stream("c"))
            msgs, rest = backend_messages(cap.stream("s"), requests)
            streams.append((msgs, rest))
        (ma, ra), (mb, rb) = streams
        xa, xb = [mask(m) for m in ma], [mask(m) for m in mb]
        if xa == xb and ra == rb:
            continue
        i = 0
        while i < len(xa) and i < len(xb) and xa[i] == xb[i]:
            i += 1
        lines = ["connection %d of %d: the backend messages differ at message #%d "
                 "(detect: %d messages, batch: %d)" % (ci + 1, len(det), i + 1, len(xa), len(xb))]
        for mode, msgs, rest in (("detect", ma, ra), ("batch", mb, rb)):
            lines.append("  %-6s: %s" % (mode, describe_backend(msgs[i][0], msgs[i][1])
                                         if i < len(msgs) else
                                         "(end of stream; %d bytes of an incomplete message "
                                         "left: %s)" % (len(rest), _short(rest))))
        lines.append("  the same before it in both:")
        for m in ma[max(0, i - 5):i]:
            lines.append("          %s" % describe_backend(m[0], m[1]))
        for mode, cap, msgs in (("detect", a, ma), ("batch", b, mb)):
            offset = msgs[i][2] if i < len(msgs) else len(cap.stream("s"))
            sent, _ = frontend_messages(cap.client_bytes_before(offset))
            lines.append("  the client's last messages before it (%s):" % mode)
            for m in sent[-5:]:
                lines.append("          %s" % describe_frontend(m[0], m[1]))
        return "\n".join(lines)
    return None


# ============================================================ data

TYPES = ("int", "bigint", "text", "uuid")
SQLTYPE = {"int": "integer", "bigint": "bigint", "text": "text", "uuid": "uuid"}
NPARENTS = 1000
UUID_NS = uuid.UUID("6b1d3c52-8a2e-4f0e-9a7c-3d1f5e2b7a90")
SPECIAL_TEXT = [
    "O'Brien", "back\\slash", "na\u00efve caf\u00e9 \u2603 \U0001d11e", 'say "hi"',
    "tab\there\nnew line", "100% %s %(k)s", "semi;colon -- not a comment", "$1 and $$dollar$$",
    "E'\\x41'", "", "  padded  ", "''", "\\", "\u00fcn\u00ef'\\'c\u00f6d\u00e9 \u2713",
]
LONG_ROWS = range(1001, 1011)  # text parents with keys longer than N1_RAW_MAX at odd ids


FLAVORS = {
    # parent table suffix: what its k column holds (rows 1..1000)
    "": "clean: key j = row i, distinct, never NULL",
    "null": "every 17th row NULL",
    "rep": "every 13th row repeats the row before, every 29th the row 10 before",
    "mix": "both: NULL keys and repeated keys",
}


def row_key_index(i, flavor=""):
    """Key index of parent row i in a parent table of that flavor (None: NULL)."""
    if flavor in ("null", "mix") and i % 17 == 0:
        return None
    if flavor in ("rep", "mix"):
        if i % 13 == 0:
            return row_key_index(i - 1, flavor)
        if i % 29 == 0:
            return row_key_index(i - 10, flavor)
    return i


def key_value(t, j):
    if t == "int":
        return 1000 + 3 * j
    if t == "bigint":
        v = 5000000000 + 7919 * j
        return -v if j % 5 == 0 else v
    if t == "uuid":
        return str(uuid.uuid5(UUID_NS, "k%d" % j))
    if j in LONG_ROWS and j % 2:
        return ("L%d-" % j) + "x\u00e9'" * 120  # > 256 bytes
    if j <= len(SPECIAL_TEXT):
        return SPECIAL_TEXT[j - 1]
    if j % 10 == 0:
        return "%s #%d" % (SPECIAL_TEXT[(j // 10) % len(SPECIAL_TEXT)], j)
    return "key-%04d" % j


def child_count(j):
    return j % 4  # keys j % 4 == 0 have no child rows


def parent_rows(t, flavor):
    ids = list(range(1, NPARENTS + 1))
    if t == "text" and flavor == "":
        ids += list(LONG_ROWS)
    rows = []
    for i in ids:
        j = row_key_index(i, flavor) if i <= NPARENTS else i
        rows.append((i, None if j is None else key_value(t, j), "parent %d's label" % i))
    return rows


def child_rows(t, seed):
    """(id, ref, body, n) in a shuffled physical order; ids follow the keys;
    key j has child_count(j) rows."""
    keys = list(range(1, NPARENTS + 1))
    if t == "text":
        keys += list(LONG_ROWS)
    rows, cid = [], 0
    for j in keys:
        for m in range(child_count(j)):
            cid += 1
            body = "child %d of key %d" % (m, j)
            if m == 1:
                body += " it's \\ \u00fcn\u00efc\u00f8d\u00e9 \u2713"
            rows.append((cid, key_value(t, j), body, j * 10 + m))
    random.Random(seed).shuffle(rows)
    return rows


def insert_rows(cur, table, rows, ncols):
    from psycopg2.extras import execute_values
    execute_values(cur, "INSERT INTO %s VALUES %%s" % table, rows, page_size=1000,
                   template="(" + ",".join(["%s"] * ncols) + ")")


ERR_DIV_KEYS = (3, 10, 25)  # children with n = 7: 100 / (n - 7) fails
ERR_CAST_KEYS = (14,)  # children whose payload is not an integer


def create_raw_schema(pg):
    c = pg.connect()
    try:
        with c.cursor() as cur:
            for t in TYPES:
                st = SQLTYPE[t]
                for flavor in FLAVORS:
                    par = "n1b_par%s_%s" % (flavor, t)
                    cur.execute("DROP TABLE IF EXISTS %s" % par)
                    cur.execute("CREATE TABLE %s (id int PRIMARY KEY, k %s, label text)"
                                % (par, st))
                    insert_rows(cur, par, parent_rows(t, flavor), 3)
                cur.execute("DROP TABLE IF EXISTS n1b_kid_%s" % t)
                cur.execute("CREATE TABLE n1b_kid_%s (id int PRIMARY KEY, ref %s, body text, "
                            "n int)" % (t, st))
                insert_rows(cur, "n1b_kid_%s" % t, child_rows(t, seed=len(t)), 4)
                cur.execute("CREATE INDEX ON n1b_kid_%s (ref)" % t)
            # int children without an index on ref (a seq scan per child)
            cur.execute("DROP TABLE IF EXISTS n1b_kid_noidx, n1b_kid_err, n1b_kid_w, "
                        "n1b_kid_w_orig")
            cur.execute("CREATE TABLE n1b_kid_noidx (id int PRIMARY KEY, ref int, body text, "
                        "n int)")
            insert_rows(cur, "n1b_kid_noidx", child_rows("int", seed=99), 4)
            # children that make a child statement fail for some keys
            cur.execute("CREATE TABLE n1b_kid_err (id int PRIMARY KEY, ref int, body text, "
                        "n int, payload text)")
            err = []
            for cid, ref, body, n in child_rows("int", seed=7):
                j = n // 10
                if j > 40:
                    continue
                err.append((cid, ref, body, 7 if j in ERR_DIV_KEYS else n,
                            "x%d" % n if j in ERR_CAST_KEYS else str(n)))
            insert_rows(cur, "n1b_kid_err", err, 5)
            cur.execute("CREATE INDEX ON n1b_kid_err (ref)")
            # children the write tests change (restored before each run)
            cur.execute("CREATE TABLE n1b_kid_w_orig (id int PRIMARY KEY, ref int, body text, "
                        "n int)")
            insert_rows(cur, "n1b_kid_w_orig",
                        [r for r in child_rows("int", seed=5) if r[3] // 10 <= 40], 4)
            cur.execute("CREATE TABLE n1b_kid_w (LIKE n1b_kid_w_orig INCLUDING ALL)")
            cur.execute("CREATE INDEX ON n1b_kid_w (ref)")
            cur.execute("ANALYZE")
            cur.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC")
    finally:
        c.close()


def restore_written(pg):
    pg.execute("TRUNCATE n1b_kid_w; INSERT INTO n1b_kid_w SELECT * FROM n1b_kid_w_orig")


# ------------------------------------------------------------ SQLAlchemy

SaBase = declarative_base()


class SaAuthor(SaBase):
    __tablename__ = "n1b_sa_author"
    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.Text, nullable=False)
    articles_ordered = relationship("SaArticle", order_by="SaArticle.id", viewonly=True)
    articles_unordered = relationship("SaArticle", viewonly=True)


class SaArticle(SaBase):
    __tablename__ = "n1b_sa_article"
    id = sa.Column(sa.Integer, primary_key=True)
    author_id = sa.Column(sa.Integer, sa.ForeignKey("n1b_sa_author.id"), nullable=True)
    title = sa.Column(sa.Text, nullable=False)
    author = relationship("SaAuthor", viewonly=True)


SA_AUTHORS = 100
SA_ARTICLES = 250
SA_M2O_PARENTS = 150


def sa_article_author(k):
    """Authors 10, 20, ..., 90 and 98..100 have no articles; every 11th
    article has none (a NULL foreign key); the rest repeat, scattered."""
    if k % 11 == 0:
        return None
    a = (k * 37) % 97 + 1
    return a + 1 if a % 10 == 0 else a


def create_sa_schema(pg):
    pg.execute("DROP TABLE IF EXISTS n1b_sa_article, n1b_sa_author")
    pg.execute("CREATE TABLE n1b_sa_author (id int PRIMARY KEY, name text NOT NULL)")
    # no index on author_id: SQLAlchemy does not make one for a foreign key
    pg.execute("CREATE TABLE n1b_sa_article (id int PRIMARY KEY, "
               "author_id int REFERENCES n1b_sa_author, title text NOT NULL)")
    c = pg.connect()
    try:
        with c.cursor() as cur:
            insert_rows(cur, "n1b_sa_author",
                        [(i, "author %d%s" % (i, " O'Neil \\ \u00fcn\u00ef" if i % 7 == 0 else ""))
                         for i in range(1, SA_AUTHORS + 1)], 2)
            arts = [(k, sa_article_author(k), "article %d%s" % (k, " \"q\" 'a' \u2603"
                                                                if k % 5 == 0 else ""))
                    for k in range(1, SA_ARTICLES + 1)]
            random.Random(3).shuffle(arts)
            insert_rows(cur, "n1b_sa_article", arts, 3)
            cur.execute("ANALYZE n1b_sa_author, n1b_sa_article")
            cur.execute("GRANT ALL ON n1b_sa_author, n1b_sa_article TO PUBLIC")
    finally:
        c.close()


class ChildCounter:
    """Counts the statements an SQLAlchemy engine sends whose text matches."""

    def __init__(self, engine, pattern):
        self.pattern = re.compile(pattern, re.I | re.S)
        self.count = 0
        event.listen(engine, "before_cursor_execute", self.before)

    def before(self, conn, cursor, statement, parameters, context, executemany):
        if self.pattern.search(statement):
            self.count += 1


def sa_o2m(attr):
    def fn(session):
        authors = session.execute(sa.select(SaAuthor).where(SaAuthor.id <= SA_AUTHORS)
                                  .order_by(SaAuthor.id)).scalars().all()
        return [(a.id, a.name, [(x.id, x.author_id, x.title) for x in getattr(a, attr)])
                for a in authors]
    return fn


def sa_m2o(session):
    arts = session.execute(sa.select(SaArticle).where(SaArticle.id <= SA_M2O_PARENTS)
                           .order_by(SaArticle.id)).scalars().all()
    return [(x.id, x.author_id, x.author.name if x.author is not None else None) for x in arts]


SA_KINDS = {
    # kind: (loop, child table, client-side child pattern)
    "o2m_ordered": (sa_o2m("articles_ordered"), "n1b_sa_article",
                    r"= n1b_sa_article\.author_id ORDER BY"),
    "o2m_unordered": (sa_o2m("articles_unordered"), "n1b_sa_article",
                      r"= n1b_sa_article\.author_id\s*$"),
    "m2o": (sa_m2o, "n1b_sa_author", r"WHERE n1b_sa_author\.id = "),
}


def sa_psycopg2_loop(kind, isolation=None):
    fn, _, pattern = SA_KINDS[kind]

    def loop(port):
        url = ("postgresql+psycopg2://%s:%s@127.0.0.1:%d/%s?sslmode=disable&gssencmode=disable"
               "&application_name=n1b-sa-psycopg2" % (USER, PASSWORD, port, DB))
        kw = {"isolation_level": isolation} if isolation else {}
        engine = sa.create_engine(url, future=True, poolclass=NullPool, **kw)
        counter = ChildCounter(engine, pattern)
        try:
            with Session(engine) as s:
                result = fn(s)
        finally:
            engine.dispose()
        return result, counter.count
    return loop


def sa_asyncpg_loop(kind, isolation=None):
    fn, _, pattern = SA_KINDS[kind]

    def loop(port):
        url = "postgresql+asyncpg://%s:%s@127.0.0.1:%d/%s" % (USER, PASSWORD, port, DB)

        async def main():
            kw = {"isolation_level": isolation} if isolation else {}
            engine = create_async_engine(url, poolclass=NullPool, connect_args={
                "ssl": False, "server_settings": {"application_name": "n1b-sa-asyncpg"}}, **kw)
            counter = ChildCounter(engine.sync_engine, pattern)
            try:
                async with AsyncSession(engine) as s:
                    result = await s.run_sync(fn)
            finally:
                await engine.dispose()
            return result, counter.count

        return asyncio.run(main())
    return loop


# ------------------------------------------------------------ Django

DJ_AUTHORS = 100
DJ_BOOKS = 200
DJ_FORWARD_PARENTS = 120
_django_ready = None  # None: not tried; True; or the reason it cannot run


def dj_book_author(k):
    """Books cycle through authors 1..89 in a scattered order (repeated
    authors); authors 90..100 have no books."""
    return (k * 31) % 89 + 1


def django_setup(pg):
    """Configure Django (unless test_n1 did in this process) and create and
    fill n1djangoapp's tables directly in PostgreSQL."""
    global _django_ready
    if _django_ready is not None:
        return _django_ready
    if django is None:
        _django_ready = "Django is not installed"
        return _django_ready
    from django.conf import settings
    if not settings.configured:
        settings.configure(
            DATABASES={"default": {
                "ENGINE": "django.db.backends.postgresql", "NAME": DB, "USER": USER,
                "PASSWORD": PASSWORD, "HOST": "127.0.0.1", "PORT": str(pg.port)}},
            INSTALLED_APPS=["n1djangoapp"], USE_TZ=True,
            DEFAULT_AUTO_FIELD="django.db.models.AutoField")
        django.setup()
    from django.db import connection
    from n1djangoapp.models import Author, Book
    django_target(pg.port)
    pg.execute("DROP TABLE IF EXISTS n1djangoapp_book, n1djangoapp_author")
    with connection.schema_editor() as editor:  # makes the index on book.author_id
        editor.create_model(Author)
        editor.create_model(Book)
    Author.objects.bulk_create([Author(id=i, name="author %d%s" % (
        i, " d'Art \\ \u00e9\u2713" if i % 6 == 0 else "")) for i in range(1, DJ_AUTHORS + 1)])
    books = [Book(id=k, author_id=dj_book_author(k), title="book %d%s" % (
        k, " \"x\" \u00fc" if k % 4 == 0 else "")) for k in range(1, DJ_BOOKS + 1)]
    random.Random(11).shuffle(books)
    Book.objects.bulk_create(books)
    connection.close()
    pg.execute("ANALYZE n1djangoapp_author, n1djangoapp_book")
    _django_ready = True
    return True


def django_target(port):
    """Point Django's default connection at 127.0.0.1:port (closing it)."""
    from django.db import connections
    conn = connections["default"]
    conn.close()
    conn.settings_dict.update(HOST="127.0.0.1", PORT=str(port), NAME=DB, USER=USER,
                              PASSWORD=PASSWORD)
    conn.settings_dict["OPTIONS"] = {"sslmode": "disable", "gssencmode": "disable",
                                     "application_name": "n1b-django"}


def django_loop(kind, atomic=False):
    def loop(port):
        from django.db import connection, transaction
        from django.test.utils import CaptureQueriesContext
        from n1djangoapp.models import Author, Book
        django_target(port)
        if kind == "reverse":
            child = r'FROM "n1djangoapp_book" WHERE "n1djangoapp_book"\."author_id" = '

            def body():
                return [(a.id, a.name, [(b.id, b.title) for b in a.book_set.all()])
                        for a in Author.objects.filter(id__lte=DJ_AUTHORS).order_by("id")]
        else:
            child = r'FROM "n1djangoapp_author" WHERE "n1djangoapp_author"\."id" = .* LIMIT 21'

            def body():
                return [(b.id, b.author.id, b.author.name)
                        for b in Book.objects.filter(id__lte=DJ_FORWARD_PARENTS).order_by("id")]
        try:
            with CaptureQueriesContext(connection) as ctx:
                if atomic:
                    with transaction.atomic():
                        result = body()
                else:
                    result = body()
        finally:
            connection.close()
        children = sum(1 for q in ctx.captured_queries if re.search(child, q["sql"]))
        return result, children
    return loop


# ============================================================ raw drivers


class Pg2Driver:
    """psycopg2: the simple protocol, parameters inline as literals."""

    def __init__(self, port):
        self.conn = psycopg2.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD,
                                     dbname=DB, sslmode="disable", gssencmode="disable",
                                     application_name="n1b-psycopg2", connect_timeout=30)
        self.conn.autocommit = True
        self.cur = self.conn.cursor()

    def q(self, sql, params=None):
        try:
            self.cur.execute(sql, params)
            return ("ok", [tuple(r) for r in self.cur.fetchall()]
                    if self.cur.description else None, self.cur.statusmessage)
        except psycopg2.Error as e:
            return ("error", e.pgcode, (e.pgerror or "").strip())

    def close(self):
        self.conn.close()


class Pg3Driver:
    """psycopg 3: the extended protocol with server-side binding; unnamed
    statements (prepare_threshold None, as node-postgres sends them) or named
    ones (prepare_threshold 0, as Rails' prepared statements)."""

    def __init__(self, port, prepare_threshold):
        if psycopg is None:
            raise unittest.SkipTest("psycopg 3 is not installed")
        self.conn = psycopg.connect(
            "postgresql://%s:%s@127.0.0.1:%d/%s?sslmode=disable&gssencmode=disable"
            "&application_name=n1b-psycopg3" % (USER, PASSWORD, port, DB),
            autocommit=True, prepare_threshold=prepare_threshold, connect_timeout=30)

    def q(self, sql, params=None):
        try:
            cur = self.conn.execute(sql, params)
            return ("ok", [tuple(r) for r in cur.fetchall()] if cur.description else None,
                    cur.statusmessage)
        except psycopg.Error as e:
            return ("error", e.sqlstate, str(e))

    def close(self):
        self.conn.close()


class AsyncpgDriver:
    """asyncpg: named prepared statements, binary parameters and results."""

    def __init__(self, port):
        if asyncpg is None:
            raise unittest.SkipTest("asyncpg is not installed")
        self.loop = asyncio.new_event_loop()
        try:
            self.conn = self.loop.run_until_complete(asyncpg.connect(
                host="127.0.0.1", port=port, user=USER, password=PASSWORD, database=DB,
                ssl=False, server_settings={"application_name": "n1b-asyncpg"}, timeout=30))
        except BaseException:
            self.loop.close()
            raise

    def q(self, sql, params=None):
        try:
            if params is None:
                return ("ok", None, self.loop.run_until_complete(self.conn.execute(sql)))
            n = iter(range(1, 100))
            sql = re.sub(r"%s", lambda _: "$%d" % next(n), sql)
            rows = self.loop.run_until_complete(self.conn.fetch(sql, *params))
            return ("ok", [tuple(r) for r in rows], None)
        except asyncpg.PostgresError as e:
            return ("error", e.sqlstate, e.message)

    def close(self):
        try:
            self.loop.run_until_complete(self.conn.close())
        finally:
            self.loop.close()


DRIVERS = {
    "psycopg2": Pg2Driver,
    "psycopg3_unnamed": lambda port: Pg3Driver(port, None),
    "psycopg3_named": lambda port: Pg3Driver(port, 0),
    "asyncpg": AsyncpgDriver,
}


def raw(driver, scenario):
    """A loop: open the driver's connection through the relay, run scenario(db)
    -> (result, child executions), close."""
    def loop(port):
        db = DRIVERS[driver](port)
        try:
            return scenario(db)
        finally:
            db.close()
    return loop


def parent_sql(t, tag, flavor="", where="id <= %s"):
    """The parent. `tag` makes the statement's shape the case's own (a column
    alias), so that what pgcoalesce learnt in one case cannot change another."""
    return ("SELECT id, k, label AS label_%s FROM n1b_par%s_%s WHERE %s ORDER BY id"
            % (tag, flavor, t, where))


def child_sql(table, tag, ordered=True):
    return ("SELECT id, body, n AS n_%s FROM %s WHERE ref = %%s%s"
            % (tag, table, " ORDER BY id" if ordered else ""))

ISOLATION = {"rc": "READ COMMITTED", "rr": "REPEATABLE READ", "serializable": "SERIALIZABLE"}


def simple_loop(t, n, child, parent, txn=None):
    """The parent's rows, then the child once per row with the row's key."""
    def scenario(db):
        out = []
        if txn:
            out.append(db.q("BEGIN ISOLATION LEVEL " + ISOLATION[txn]))
        parents = db.q(parent, (n,))
        assert parents[0] == "ok", parents
        for pid, key, _ in parents[1]:
            out.append(("child", pid, db.q(child, (key,))))
        if txn:
            out.append(db.q("COMMIT"))
        return out, len(parents[1])
    return scenario


def children_of(result):
    """{parent id: the child's answer} of a raw scenario's result."""
    return {e[1]: e[2] for e in result if isinstance(e, tuple) and e and e[0] == "child"}


def k(row):
    """The int key of row `row` of the clean parent table n1b_par_int."""
    return key_value("int", row)


def write_scenario(tag, txn=None):
    """Writes by the same client between children, of rows the loop reads
    later: before child 6 UPDATE key 10's children, INSERT one for key 12
    (which had none), DELETE key 15's; before child 22 UPDATE key 22's."""
    child = child_sql("n1b_kid_w", tag)

    def scenario(db):
        out = []
        if txn:
            out.append(db.q("BEGIN ISOLATION LEVEL " + ISOLATION[txn]))
        parents = db.q(parent_sql("int", tag), (30,))
        for i, (pid, key, _) in enumerate(parents[1], 1):
            if i == 6:
                out.append(db.q("UPDATE n1b_kid_w SET body = body || ' (edited)' "
                                "WHERE ref = %s", (k(10),)))
                out.append(db.q("INSERT INTO n1b_kid_w (id, ref, body, n) "
                                "VALUES (%s, %s, 'inserted', 0)", (900001, k(12))))
                out.append(db.q("DELETE FROM n1b_kid_w WHERE ref = %s", (k(15),)))
            if i == 22:
                out.append(db.q("UPDATE n1b_kid_w SET body = body || ' (just now)' "
                                "WHERE ref = %s", (k(22),)))
            out.append(("child", pid, db.q(child, (key,))))
        if txn:
            out.append(db.q("COMMIT"))
        return out, len(parents[1])
    return scenario


def check_write(tc, result):
    ch = children_of(result)
    tc.assertTrue(ch[10][1] and all("(edited)" in r[1] for r in ch[10][1]), ch[10])
    tc.assertEqual([r[1] for r in ch[12][1]], ["inserted"], ch[12])
    tc.assertEqual(ch[15][1], [], ch[15])
    tc.assertTrue(ch[22][1] and all("(just now)" in r[1] for r in ch[22][1]), ch[22])


def savepoint_scenario(tag):
    """In a transaction: SAVEPOINT sp1 before child 5; UPDATE keys 9 and 14,
    DELETE key 15 before child 7; ROLLBACK TO SAVEPOINT sp1 before child 11
    (key 9 was read edited, 14 and 15 are read as they were); SAVEPOINT sp2,
    UPDATE key 21, RELEASE sp2 before child 16."""
    child = child_sql("n1b_kid_w", tag)

    def scenario(db):
        out = [db.q("BEGIN")]
        parents = db.q(parent_sql("int", tag), (30,))
        for i, (pid, key, _) in enumerate(parents[1], 1):
            if i == 5:
                out.append(db.q("SAVEPOINT sp1"))
            if i == 7:
                out.append(db.q("UPDATE n1b_kid_w SET body = body || ' (rolled back)' "
                                "WHERE ref = %s OR ref = %s", (k(9), k(14))))
                out.append(db.q("DELETE FROM n1b_kid_w WHERE ref = %s", (k(15),)))
            if i == 11:
                out.append(db.q("ROLLBACK TO SAVEPOINT sp1"))
            if i == 16:
                out.append(db.q("SAVEPOINT sp2"))
                out.append(db.q("UPDATE n1b_kid_w SET body = body || ' (kept)' WHERE ref = %s",
                                (k(21),)))
                out.append(db.q("RELEASE SAVEPOINT sp2"))
            out.append(("child", pid, db.q(child, (key,))))
        out.append(db.q("COMMIT"))
        return out, len(parents[1])
    return scenario


def check_savepoint(tc, result):
    ch = children_of(result)
    tc.assertTrue(ch[9][1] and all("(rolled back)" in r[1] for r in ch[9][1]), ch[9])
    tc.assertTrue(ch[14][1] and not any("(rolled back)" in r[1] for r in ch[14][1]), ch[14])
    tc.assertEqual(len(ch[15][1]), child_count(15), ch[15])
    tc.assertTrue(ch[21][1] and all("(kept)" in r[1] for r in ch[21][1]), ch[21])


def err_div_child(tag):
    """Fails (22012) for keys 3, 10 and 25: their children have n = 7."""
    return ("SELECT id, body, 100 / (n - 7) AS q_%s FROM n1b_kid_err WHERE ref = %%s ORDER BY id"
            % tag)


def err_cast_child(tag):
    """Fails (22P02) for key 14: its children's payload is not a number."""
    return "SELECT id, payload::int AS v_%s FROM n1b_kid_err WHERE ref = %%s ORDER BY id" % tag


def error_scenario(tag, make_child, mode):
    """30 parents; the child fails for some keys. mode: "auto" (autocommit:
    the loop goes on), "abort" (in a transaction: the next 3 children fail
    with 25P02, then ROLLBACK, BEGIN and on), "savepoint" (in a transaction
    with SAVEPOINT s before the loop: ROLLBACK TO SAVEPOINT s after a failure)."""
    child = make_child(tag)

    def scenario(db):
        out = []
        if mode != "auto":
            out.append(db.q("BEGIN"))
        parents = db.q(parent_sql("int", tag), (30,))
        if mode == "savepoint":
            out.append(db.q("SAVEPOINT s"))
        aborted = 0
        for pid, key, _ in parents[1]:
            r = db.q(child, (key,))
            out.append(("child", pid, r))
            if r[0] != "error":
                continue
            if mode == "savepoint":
                out.append(db.q("ROLLBACK TO SAVEPOINT s"))
            elif mode == "abort":
                aborted += 1
                if aborted == 4:
                    out.append(db.q("ROLLBACK"))
                    out.append(db.q("BEGIN"))
                    aborted = 0
        if mode != "auto":
            out.append(db.q("COMMIT"))
        return out, len(parents[1])
    return scenario


def check_errors(first_row, sqlstate):
    """The first child to fail is row first_row's, with sqlstate."""
    def check(tc, result):
        errs = [(pid, r[1]) for pid, r in sorted(children_of(result).items()) if r[0] == "error"]
        tc.assertTrue(errs, "no child failed: the corpus does not do what it says")
        tc.assertEqual(errs[0], (first_row, sqlstate), errs)
    return check


def ttl_scenario(tag, txn=None):
    """Before child 6 another session (directly in PostgreSQL) edits key 10's
    children and the client pauses longer than n1_prefetch_ttl: child 10
    must see the edit."""
    child = child_sql("n1b_kid_w", tag)

    def scenario(db):
        out = []
        if txn:
            out.append(db.q("BEGIN ISOLATION LEVEL " + ISOLATION[txn]))
        parents = db.q(parent_sql("int", tag), (30,))
        for i, (pid, key, _) in enumerate(parents[1], 1):
            if i == 6:
                harness.postgres().execute("UPDATE n1b_kid_w SET body = body || ' (other "
                                           "session)' WHERE ref = %s", (k(10),))
                time.sleep(0.35)  # > the default n1_prefetch_ttl of 0.1 s
            out.append(("child", pid, db.q(child, (key,))))
        if txn:
            out.append(db.q("COMMIT"))
        return out, len(parents[1])
    return scenario


def check_ttl(tc, result):
    ch = children_of(result)
    tc.assertTrue(ch[10][1] and all("(other session)" in r[1] for r in ch[10][1]), ch[10])


def check_ttl_rr(tc, result):
    """REPEATABLE READ: the snapshot was taken before the other session's edit,
    so child 10 must not see it (with or without batching)."""
    ch = children_of(result)
    tc.assertTrue(ch[10][1] and not any("(other session)" in r[1] for r in ch[10][1]), ch[10])


def shared_shape_loop(drivers, tag):
    """The same parent and child shapes from several clients one after the
    other (different drivers: text and binary formats)."""
    def loop(port):
        out, n = [], 0
        for drv in drivers:
            r, c = raw(drv, simple_loop("int", 100, child_sql("n1b_kid_int", tag),
                                        parent_sql("int", tag)))(port)
            out.append(r)
            n += c
        return out, n
    return loop


# ============================================================ cases


class Case:
    """One loop of the corpus.

    loop(port) -> (result, child executions counted on the client side);
    child_table: the child statement's table (found in pg_stat_statements by
    `FROM <table>`); calls: check the pg_stat_statements bound; loops: how
    many loops of equal length the case runs (each may take the bound);
    batched: check that a batched statement ran (semantic cases);
    reset(pg) before each run; check(testcase, result) on both runs'
    results; needs: a reason to skip (a missing driver), "django" or None."""

    def __init__(self, name, loop, child_table, calls=True, batched=False, reset=None,
                 check=None, needs=None, loops=1):
        self.name = name
        self.loop = loop
        self.child_table = child_table
        self.calls = calls
        self.batched = batched
        self.reset = reset
        self.check = check
        self.needs = needs
        self.loops = loops


def _needs(*drivers):
    for driver in drivers:
        if driver.startswith("psycopg3") and psycopg is None:
            return "psycopg 3 is not installed"
        if driver == "asyncpg" and asyncpg is None:
            return "asyncpg is not installed"
    return None


def sa_case(name, driver, kind, isolation=None):
    needs = None
    if driver == "asyncpg" and (asyncpg is None or create_async_engine is None):
        needs = "asyncpg or sqlalchemy.ext.asyncio is not installed"
    make = sa_psycopg2_loop if driver == "psycopg2" else sa_asyncpg_loop
    return Case(name, make(kind, isolation), SA_KINDS[kind][1], needs=needs)


def dj_case(name, kind, atomic=False):
    table = '"n1djangoapp_book"' if kind == "reverse" else '"n1djangoapp_author"'
    return Case(name, django_loop(kind, atomic), table, needs="django")


def raw_case(name, driver, t, n=100, ordered=True, table=None, txn=None, flavor="",
             where="id <= %s", **kw):
    table = table or "n1b_kid_%s" % t
    scenario = simple_loop(t, n, child_sql(table, name, ordered),
                           parent_sql(t, name, flavor, where), txn)
    return Case(name, raw(driver, scenario), table, needs=_needs(driver), **kw)


def main_corpus():
    cases = []
    for drv in ("psycopg2", "asyncpg"):
        cases += [
            sa_case("sa_%s_o2m_ordered" % drv, drv, "o2m_ordered"),
            sa_case("sa_%s_o2m_unordered" % drv, drv, "o2m_unordered"),
            sa_case("sa_%s_m2o" % drv, drv, "m2o"),
            sa_case("sa_%s_o2m_autocommit" % drv, drv, "o2m_ordered", "AUTOCOMMIT"),
            sa_case("sa_%s_m2o_repeatable_read" % drv, drv, "m2o", "REPEATABLE READ"),
            sa_case("sa_%s_o2m_unordered_repeatable_read" % drv, drv, "o2m_unordered",
                    "REPEATABLE READ"),
        ]
    cases += [dj_case("django_reverse_fk", "reverse"),
              dj_case("django_forward_fk", "forward"),
              dj_case("django_reverse_fk_atomic", "reverse", atomic=True),
              dj_case("django_forward_fk_atomic", "forward", atomic=True)]
    # key types x drivers: 100 parents, distinct keys (some without children;
    # text keys with quotes, backslashes, unicode, %, $1, '')
    for drv in DRIVERS:
        for t in TYPES:
            cases.append(raw_case("raw_%s_%s" % (drv, t), drv, t))
    # NULL keys, repeated keys, both
    for drv in ("psycopg2", "psycopg3_unnamed", "asyncpg"):
        cases.append(raw_case("nullkeys_%s_int" % drv, drv, "int", flavor="null"))
        cases.append(raw_case("repeatkeys_%s_int" % drv, drv, "int", flavor="rep"))
    for drv, t in (("psycopg2", "text"), ("psycopg3_named", "uuid"), ("asyncpg", "bigint")):
        cases.append(raw_case("nullrepeatkeys_%s_%s" % (drv, t), drv, t, flavor="mix"))
    # children without ORDER BY: with the index on ref and with a seq scan
    for drv in ("psycopg2", "psycopg3_unnamed", "asyncpg"):
        cases.append(raw_case("unordered_index_%s" % drv, drv, "int", ordered=False))
        cases.append(raw_case("unordered_noindex_%s" % drv, drv, "int", ordered=False,
                              table="n1b_kid_noidx"))
    # parent sizes
    for n in (1, 2, 3, 1000):
        for drv, t in (("psycopg2", "text"), ("psycopg3_unnamed", "int"),
                       ("asyncpg", "uuid"), ("psycopg3_named", "bigint")):
            cases.append(raw_case("size%d_%s_%s" % (n, drv, t), drv, t, n=n))
    # explicit transactions
    for iso in ("rc", "rr"):
        for drv, t in (("psycopg2", "int"), ("psycopg3_named", "text"),
                       ("psycopg3_unnamed", "uuid"), ("asyncpg", "bigint")):
            cases.append(raw_case("txn_%s_%s_%s" % (iso, drv, t), drv, t, txn=iso))
    return cases


def semantics_corpus():
    cases = []
    # writes, savepoints
    for drv, txn in (("psycopg2", None), ("psycopg2", "rc"), ("psycopg3_unnamed", None),
                     ("psycopg3_named", "rr"), ("asyncpg", "rc")):
        name = "write_%s_%s" % (drv, txn or "autocommit")
        cases.append(Case(name, raw(drv, write_scenario(name, txn)), "n1b_kid_w", calls=False,
                          batched=True, reset=restore_written, check=check_write,
                          needs=_needs(drv)))
    for drv in ("psycopg2", "psycopg3_unnamed", "asyncpg"):
        name = "savepoint_%s" % drv
        cases.append(Case(name, raw(drv, savepoint_scenario(name)), "n1b_kid_w", calls=False,
                          batched=True, reset=restore_written, check=check_savepoint,
                          needs=_needs(drv)))
    # failing children
    for drv in ("psycopg2", "psycopg3_unnamed", "asyncpg"):
        for mode in ("auto", "abort", "savepoint"):
            name = "error_div_%s_%s" % (drv, mode)
            cases.append(Case(name, raw(drv, error_scenario(name, err_div_child, mode)),
                              "n1b_kid_err", calls=False, batched=True,
                              check=check_errors(3, "22012"), needs=_needs(drv)))
    for drv, mode in (("psycopg2", "auto"), ("psycopg2", "abort"), ("psycopg3_named", "auto"),
                      ("asyncpg", "savepoint")):
        name = "error_cast_%s_%s" % (drv, mode)
        cases.append(Case(name, raw(drv, error_scenario(name, err_cast_child, mode)),
                          "n1b_kid_err", calls=False, batched=True,
                          check=check_errors(14, "22P02"), needs=_needs(drv)))
    # text keys longer than the 256 bytes a parent value is kept for batching
    # (rows 991..1010 of n1b_par_text: 1001, 1003, ... have such keys)
    for drv in ("psycopg2", "asyncpg"):
        cases.append(raw_case("long_text_keys_%s" % drv, drv, "text", n=990, where="id > %s",
                              calls=False, batched=True))
    # one shape, several clients: text (psycopg2) and binary (asyncpg) formats
    for drvs in (("asyncpg", "psycopg2"), ("psycopg2", "asyncpg"),
                 ("psycopg3_unnamed", "asyncpg", "psycopg3_named")):
        name = "shared_shape_" + "_then_".join(d.replace("psycopg", "pg") for d in drvs)
        cases.append(Case(name, shared_shape_loop(drvs, name), "n1b_kid_int", loops=len(drvs),
                          needs=_needs(*drvs)))
    return cases


def small_batch_corpus():
    return [
        raw_case("raw_psycopg3_unnamed_int", "psycopg3_unnamed", "int"),
        raw_case("raw_psycopg2_text", "psycopg2", "text"),
        raw_case("raw_asyncpg_uuid", "asyncpg", "uuid"),
        raw_case("raw_psycopg3_named_bigint_rr", "psycopg3_named", "bigint", txn="rr"),
        raw_case("nullrepeatkeys_psycopg2_int", "psycopg2", "int", flavor="mix"),
        raw_case("size1000_psycopg2_int", "psycopg2", "int", n=1000),
        raw_case("size1000_asyncpg_text", "asyncpg", "text", n=1000),
        sa_case("sa_psycopg2_o2m_ordered", "psycopg2", "o2m_ordered"),
        sa_case("sa_asyncpg_o2m_unordered", "asyncpg", "o2m_unordered"),
        sa_case("sa_psycopg2_m2o", "psycopg2", "m2o"),
        dj_case("django_forward_fk", "forward"),
        dj_case("django_reverse_fk", "reverse"),
    ]


def ttl_corpus():
    return [
        Case("stale_after_ttl_psycopg2_autocommit",
             raw("psycopg2", ttl_scenario("stale_after_ttl_psycopg2_autocommit")),
             "n1b_kid_w", calls=False, batched=True, reset=restore_written, check=check_ttl),
        Case("stale_after_ttl_asyncpg_rc", raw("asyncpg", ttl_scenario("stale_after_ttl_asyncpg_rc",
                                                                        "rc")),
             "n1b_kid_w", calls=False, batched=True, reset=restore_written, check=check_ttl,
             needs=_needs("asyncpg")),
        # In REPEATABLE READ the snapshot cannot move: the prefetch outlives the
        # ttl, so the pause costs no second batch (calls stay within the bound).
        Case("snapshot_kept_psycopg2_rr",
             raw("psycopg2", ttl_scenario("snapshot_kept_psycopg2_rr", "rr")),
             "n1b_kid_w", calls=True, batched=True, reset=restore_written, check=check_ttl_rr),
        Case("snapshot_kept_asyncpg_serializable",
             raw("asyncpg", ttl_scenario("snapshot_kept_asyncpg_serializable", "serializable")),
             "n1b_kid_w", calls=True, batched=True, reset=restore_written, check=check_ttl_rr,
             needs=_needs("asyncpg")),
    ]


# ============================================================ pg_stat_statements


def child_calls(pg, table):
    """(calls of the plain child statement, calls of batched ones, texts):
    SELECTs whose text reads FROM table, split by whether they contain unnest."""
    pat = re.compile(r"\bfrom\s+%s(?![\w\"])" % re.escape(table), re.I)
    plain = batched = 0
    texts = []
    for query, calls in pg.query("SELECT query, calls FROM pg_stat_statements"):
        q = query.lstrip().lower()
        if not pat.search(query) or not q.startswith(("select", "with", "(")):
            continue
        if "unnest" in q:
            batched += calls
        else:
            plain += calls
        texts.append((calls, query))
    return plain, batched, texts


def settings_problem(pg, settings):
    """None when `pgcoalesce --check` accepts a config with these settings,
    else what it said."""
    p = harness.Proxy(pg, settings)
    try:
        p.write_config()
        r = harness.run_pgcoalesce("--check", "-c", p.config_path)
        if r.returncode == 0:
            return None
        return "pgcoalesce --check exit %d: %s" % (r.returncode, (r.stderr + r.stdout).strip())
    finally:
        p.cleanup()


# ============================================================ test classes


def failed_batches(pg, offset):
    """Batched statements PostgreSQL logged as failed since log offset
    (log_min_error_statement = error logs the STATEMENT of each ERROR);
    pg_stat_statements counts only the statements that succeeded."""
    with open(pg.logfile, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    return sum(1 for line in text.splitlines()
               if "STATEMENT:" in line and "unnest(" in line)


class Run:
    def __init__(self, result, children, captures, calls, failed, error=None):
        self.result = result
        self.children = children
        self.captures = captures
        self.plain, self.batched, self.texts = calls
        self.failed = failed  # batched statements that failed
        self.error = error


class EquivalenceCase(harness.PgTestCase):
    """Two pgcoalesce, n1_mode = detect and n1_mode = batch, each behind a
    recording relay; the class's cases run through both."""

    common_settings = {"n1_result_memory": 100000}
    batch_settings = {}
    # PGC_N1_BATCH_SELFCHECK=1: both proxies detect, so every test_bytes_* must
    # pass (a check of the relay, the masking and the corpus' determinism).
    batch_mode = "detect" if os.environ.get("PGC_N1_BATCH_SELFCHECK") == "1" else "batch"
    cases = ()

    @classmethod
    def batch_after(cls):
        return int(cls.batch_settings.get("n1_batch_after", DEFAULT_BATCH_AFTER))

    @classmethod
    def batch_max(cls):
        return int(cls.batch_settings.get("n1_batch_max", DEFAULT_BATCH_MAX))

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pg.wait_no_backends()
        cls.runs = {}
        cls.crashes = []
        cls.proxies = {}
        cls.relays = {}
        batch = dict(cls.common_settings, n1_mode=cls.batch_mode, **cls.batch_settings)
        cls.settings_problem = None
        if cls.batch_settings:
            problem = settings_problem(cls.pg, batch)
            if problem:
                # The byte-equivalence tests still run (without these settings);
                # the calls tests fail with this.
                cls.settings_problem = ("the batch proxy's settings %r were refused (%s); it "
                                        "ran without them" % (cls.batch_settings, problem))
                sys.stderr.write("\n%s: %s\n" % (cls.__name__, cls.settings_problem))
                batch = dict(cls.common_settings, n1_mode=cls.batch_mode)
        try:
            for mode, settings in (("detect", dict(cls.common_settings, n1_mode="detect")),
                                   ("batch", batch)):
                cls.proxies[mode] = harness.Proxy(cls.pg, settings)
                cls.proxies[mode].start()
                cls.relays[mode] = RecordingRelay(cls.proxies[mode].port)
        except BaseException:
            cls._cleanup()
            raise

    @classmethod
    def _cleanup(cls):
        for relay in cls.relays.values():
            relay.close()
        for proxy in cls.proxies.values():
            proxy.cleanup()

    @classmethod
    def tearDownClass(cls):
        try:
            problems = []
            for mode, proxy in cls.proxies.items():
                try:
                    proxy.check_stopped_cleanly()
                except AssertionError as e:
                    problems.append("%s proxy: %s" % (mode, e))
            if cls.crashes:
                problems.append("pgcoalesce died during the class:\n" + "\n".join(cls.crashes))
            if problems:
                raise AssertionError("\n".join(problems))
        finally:
            cls._cleanup()
            super().tearDownClass()

    def setUp(self):
        super().setUp()
        for mode, proxy in self.proxies.items():
            if not proxy.running():
                offset = proxy.last_start_offset
                rc = proxy.stop()
                self.crashes.append("%s proxy: exit status %s before %s; log:\n%s"
                                    % (mode, rc, self.id(), proxy.log_since(offset)))
                self.pg.wait_no_backends()
                proxy.start()

    def _logs(self):
        out = []
        if self.pg is not None and self.pg.logfile:
            out.append(("PostgreSQL log", self.pg.logfile))
        for mode, proxy in getattr(self, "proxies", {}).items():
            out.append(("pgcoalesce (n1_mode = %s) log" % mode, proxy.logfile))
        return out

    # -- running a case through both proxies, once per class --

    def run_case(self, case):
        if case.needs == "django":
            ready = django_setup(self.pg)
            if ready is not True:
                self.skipTest(ready)
        elif case.needs:
            self.skipTest(case.needs)
        if case.name not in self.runs:
            try:
                self.runs[case.name] = {mode: self._run(case, mode)
                                        for mode in ("detect", "batch")}
            except BaseException as e:  # noqa: B902 - handed to every test of the case
                self.runs[case.name] = e
        r = self.runs[case.name]
        if isinstance(r, BaseException):
            raise r
        return r["detect"], r["batch"]

    def _run(self, case, mode):
        relay = self.relays[mode]
        relay.take()
        if case.reset:
            case.reset(self.pg)
        self.pg.execute("SELECT pg_stat_statements_reset()")
        log_at = self.pg.log_offset()
        error = None
        try:
            result, children = case.loop(relay.port)
        except Exception as e:  # noqa: B902 - a batch run that broke the client
            if mode == "detect":
                raise
            result, children, error = None, None, "%s: %s" % (type(e).__name__, e)
        captures = relay.take()
        calls = child_calls(self.pg, case.child_table)
        return Run(result, children, captures, calls, failed_batches(self.pg, log_at), error)

    # -- the checks --

    def check_bytes(self, case):
        det, bat = self.run_case(case)
        self.assertTrue(det.captures and det.captures[0].stream("s"), "nothing was recorded")
        diff = first_difference(det.captures, bat.captures)
        if diff:
            self.fail("the client received different bytes with n1_mode = batch than with "
                      "detect (case %s)%s:\n%s"
                      % (case.name, "; the batch run's client failed with " + bat.error
                         if bat.error else "", diff))
        self.assertIsNone(bat.error)
        self.assertEqual(det.children, bat.children)
        self.assertEqual(det.result, bat.result)
        if case.check:
            case.check(self, det.result)
            case.check(self, bat.result)

    def check_calls(self, case):
        det, bat = self.run_case(case)
        if self.settings_problem:
            self.fail(self.settings_problem)
        n = det.children
        self.assertEqual(bat.children, n, bat.error)
        self.assertEqual((det.plain, det.batched), (n, 0),
                         "detect mode: the child ran %d times + %d batched for %d executions "
                         "of the client; pg_stat_statements has %r"
                         % (det.plain, det.batched, n, det.texts))
        after, most = self.batch_after(), self.batch_max()
        per_loop = n // case.loops
        texts = "pg_stat_statements: %r" % (bat.texts,)
        batches = case.loops * math.ceil(per_loop / most)
        bound = batches + case.loops * after
        what = ("the child ran %d times + %d batched for %d executions (%d loop(s) of %d); "
                "at most %d x (ceil(%d / n1_batch_max %d) + n1_batch_after %d) = %d"
                % (bat.plain, bat.batched, n, case.loops, per_loop, case.loops, per_loop, most,
                   after, bound))
        if bound >= n:  # e.g. 3 executions: batching the last key saves nothing
            self.assertLessEqual(bat.plain + bat.batched, n, "batch mode: %s; %s" % (what, texts))
            return
        self.assertGreater(bat.batched, 0, "batch mode: no batched (unnest) statement ran: %s; %s"
                           % (what, texts))
        self.assertLessEqual(bat.batched, batches, "batch mode: too many batched statements: "
                             "%s; %s" % (what, texts))
        self.assertLessEqual(bat.plain + bat.batched, bound, "batch mode: %s; %s" % (what, texts))

    def check_batched(self, case):
        det, bat = self.run_case(case)
        if self.settings_problem:
            self.fail(self.settings_problem)
        self.assertEqual((det.batched, det.failed), (0, 0))
        self.assertGreater(bat.batched + bat.failed, 0,
                           "no batched (unnest) statement ran in batch mode, so this case did "
                           "not exercise batching (plain child calls: %d for %d executions); %r"
                           % (bat.plain, bat.children or 0, bat.texts))


def install_tests(cls):
    """test_bytes_<case>, and test_calls_<case> or test_batched_<case>."""
    for case in cls.cases:
        def make(check, case=case):
            def test(self):
                getattr(self, check)(case)
            test.__doc__ = "%s: %s" % (check.replace("check_", ""), case.name)
            return test
        setattr(cls, "test_bytes_" + case.name, make("check_bytes"))
        if case.calls:
            setattr(cls, "test_calls_" + case.name, make("check_calls"))
        if case.batched:
            setattr(cls, "test_batched_" + case.name, make("check_batched"))
    return cls


@install_tests
class BatchEquivalenceTest(EquivalenceCase):
    """Default n1_batch_after (2) and n1_batch_max (500); n1_prefetch_ttl 10 s
    so that a prefetched answer is still valid when the loop gets to it (the
    1000-row loops, the writes: the TTL is not what these cases test)."""

    batch_settings = {"n1_prefetch_ttl": 10}
    cases = main_corpus()


@install_tests
class BatchSemanticsTest(EquivalenceCase):
    """Writes, savepoints and failing children inside a batched loop, keys
    too long to be batched, and one shape from clients of different formats
    (the same settings as BatchEquivalenceTest, other proxies)."""

    batch_settings = {"n1_prefetch_ttl": 10}
    cases = semantics_corpus()


@install_tests
class SmallBatchTest(EquivalenceCase):
    """n1_batch_after 3, n1_batch_max 7: many batches per loop."""

    batch_settings = {"n1_batch_after": 3, "n1_batch_max": 7, "n1_prefetch_ttl": 10}
    cases = small_batch_corpus()


@install_tests
class PrefetchTtlTest(EquivalenceCase):
    """The default n1_prefetch_ttl (0.1 s): an answer fetched before another
    session's write and a pause longer than the TTL is not used."""

    cases = ttl_corpus()


class BatchSettingsTest(harness.PgTestCase):
    """The batching settings are known to the binary (pgcoalesce --check)."""

    def test_batch_settings_accepted(self):
        problem = settings_problem(self.pg, {"n1_mode": "batch", "n1_batch_after": 3,
                                             "n1_batch_max": 7, "n1_prefetch_ttl": 0.25})
        self.assertIsNone(problem)


# ============================================================ module fixtures


def setUpModule():
    harness.setUpModule()
    pg = harness.postgres()
    create_raw_schema(pg)
    create_sa_schema(pg)


def tearDownModule():
    harness.tearDownModule()


if __name__ == "__main__":
    unittest.main()
