"""The identity-map cache (cache_url set): primary-key reads answered from Redis.

Every check counts work twice: on the server with pg_stat_statements (calls
per statement text, read as the superuser) and on the proxy with its own
counters (GET /cache on the admin port, SHOW CACHE on the console). A table
is served from the cache only once the proxy's catalog lookup for it has
answered, and inside a transaction only once the pool's default isolation is
known to be READ COMMITTED, so each test first warms its reads up (polling
/cache until a read is a lookup) instead of sleeping.

  - OrmTest, DjangoTest: SQLAlchemy 1.4 `session.get()` (psycopg2, asyncpg
    through the async engine) and Django `objects.get(pk=)` loops stop
    reaching PostgreSQL after the first call, with the direct answers.
  - BytesTest: a hit is byte for byte what PostgreSQL sends (simple Query,
    Parse/Bind/Describe/Execute/Sync with text and binary results, int4,
    int8, text, uuid and composite keys, NULL columns, LIMIT 21).
  - InvalidationTest: writes through the proxy (by key however spelled, by
    another column, DELETE, ON CONFLICT, in autocommit and in transactions)
    are seen on the next read.
  - ReplicationTest (cache_invalidation = replication): writes made directly
    on PostgreSQL (UPDATE, DELETE, key change, TRUNCATE; every key type) are
    seen within 1 s; a fill racing an invalidation is refused; a commit
    streamed before it is visible is not left cached; a stream restart
    invalidates everything; a randomized 28 s workload of proxy and direct
    writers and proxy readers is checked against the history of committed
    versions.
  - OwnPublicationTest: the proxy makes publication pgcoalesce_cache itself
    when its user may, and says what to set when it may not.
  - PrivilegeTest: roles never share answers (table and column privileges,
    SET ROLE, REVOKE through the proxy).
  - BypassTest: row-level security, temp tables, unlogged tables, no primary
    key, locking clauses, REPEATABLE READ / SERIALIZABLE however chosen,
    search_path, aborted and written transactions never use the cache.
  - RedisFailureTest: Redis killed (SIGKILL), frozen (SIGSTOP) and its
    connection cut under load: no client error, correct answers, bounded
    latency, recovery.
  - LimitsTest: cache_max_value, empty answers, errors; two pgcoalesce on one
    Redis share entries and see each other's writes, also right after COMMIT.
  - CatalogLiveTest: the catalog unit test binary against this PostgreSQL.

Tests print (to stderr, "[measured]") what they measured: replication lag,
staleness, hit ratios, latencies.
"""

import asyncio
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import unittest
import uuid

import psycopg2
import psycopg2.errors

try:
    import psycopg  # psycopg 3
except ImportError:  # pragma: no cover - Debian has python3-psycopg
    psycopg = None

import adminlib
import harness
from adminlib import ADMIN_SETTINGS, ADMIN_USERS, admin_rows
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module
from harness import (bind_message, describe_message, execute_message, message, parse_message,
                     query_message, sync_message, wait_until)

import sqlalchemy as sa
from sqlalchemy.orm import Session, declarative_base

try:
    import asyncpg  # noqa: F401 - the SQLAlchemy dialect imports it
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
except ImportError:  # pragma: no cover - Debian has python3-asyncpg
    create_async_engine = None

try:
    import django
except ImportError:  # pragma: no cover - Debian has python3-django
    django = None

USER = harness.DEFAULT_USER
PASSWORD = harness.USERS[USER]
DB = harness.DATABASE

# Lookups normally answer in well under a millisecond; on a loaded 2-core test
# machine a 5 ms cache_timeout (the default) would turn some into bypasses and
# make "served from the cache" counts flaky. RedisFailureTest uses the default.
LOOKUP_TIMEOUT = "0.5"


def note(fmt, *args):
    """A measured number, for the person reading the test output."""
    sys.stderr.write("\n    [measured] " + (fmt % args if args else fmt) + "\n")
    sys.stderr.flush()


# ============================================================ observation


def cache_json(proxy):
    """GET /cache on the admin port, decoded."""
    status, headers, body = adminlib.http(proxy.admin_port, "/cache")
    assert status == 200, (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    return json.loads(body)


def show_cache(proxy):
    """SHOW CACHE on the console: {name: value text}."""
    return {r["name"]: r["value"] for r in admin_rows(proxy, "SHOW CACHE")}


def stmt_calls(pg, table, must=None, must_not=None):
    """pg_stat_statements calls of the SELECTs reading `table` (by name, quoted
    or not), optionally only those whose text matches must (a regex) and not
    must_not."""
    pat = re.compile(r'\bfrom\s+"?%s"?(?![\w"])' % re.escape(table), re.I)
    total = 0
    for query, calls in pg.query("SELECT query, calls FROM pg_stat_statements"):
        q = query.lstrip()
        if not q[:6].lower() == "select" or not pat.search(q):
            continue
        if must and not re.search(must, q, re.I | re.S):
            continue
        if must_not and re.search(must_not, q, re.I | re.S):
            continue
        total += calls
    return total


class CpuPressure:
    """Busy processes, one per core, for the duration of a with block: a race
    that needs one process to be descheduled at the wrong moment then shows in
    a few hundred tries instead of a few thousand."""

    def __init__(self, n=None):
        self.n = n or os.cpu_count() or 2
        self.procs = []

    def __enter__(self):
        code = "import time\nt = time.time() + 60\nwhile time.time() < t:\n    pass\n"
        self.procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
                      for _ in range(self.n)]
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def delta(after, before, *names):
    return {n: after[n] - before[n] for n in names}


class CacheCase(harness.ProxyTestCase):
    """A pgcoalesce with the cache on the module's Redis, its own namespace."""

    users = ADMIN_USERS
    cache_settings = {}

    @classmethod
    def setUpClass(cls):
        cls.redis = harness.redis()
        cls.proxy_settings = dict(ADMIN_SETTINGS, cache_url=cls.redis.url,
                                  cache_timeout=LOOKUP_TIMEOUT,
                                  cache_namespace="t" + cls.__name__.lower()[:20])
        cls.proxy_settings.update(cls.cache_settings)
        super().setUpClass()
        try:
            cls.make_schema(cls.pg)
        except BaseException:
            cls.proxy.cleanup()  # tearDownClass does not run when setUpClass fails
            raise

    @classmethod
    def make_schema(cls, pg):
        pass

    def stats(self, proxy=None):
        return cache_json(proxy or self.proxy)

    def warm(self, read, proxy=None, timeout=15, message="a read that is a cache lookup"):
        """Run read() until one of its runs was a cache lookup (the catalog knows
        the table and, in a transaction, the pool's isolation), then once more
        so that its answer is stored."""
        proxy = proxy or self.proxy

        def once():
            before = cache_json(proxy)["lookups"]
            read()
            return cache_json(proxy)["lookups"] > before

        wait_until(once, timeout=timeout, interval=0.05, message=message)
        read()

    def assert_hit(self, read, proxy=None):
        """read() once; it must have been answered from the cache. Returns its result."""
        proxy = proxy or self.proxy
        before = cache_json(proxy)
        result = read()
        after = cache_json(proxy)
        self.assertEqual(after["hits"] - before["hits"], 1,
                         "expected one hit: %r" % delta(after, before, "hits", "misses", "lookups",
                                                        *[k for k in after if
                                                          k.startswith("bypass_")]))
        return result


def direct_row(pg, sql, args=None):
    rows = pg.query(sql, args)
    return rows[0] if rows else None


# ============================================================ 1. ORMs

Base = declarative_base()


class CUser(Base):
    __tablename__ = "cache_users"
    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.String(50), nullable=False)
    email = sa.Column(sa.String(100), nullable=True)


NCUSERS = 40


def user_tuple(u):
    return None if u is None else (u.id, u.name, u.email)


class OrmTest(CacheCase):
    """SQLAlchemy 1.4 `session.get(User, id)` with a new Session each time (so
    SQLAlchemy really queries): the first get reaches PostgreSQL, the next 49
    are answered from Redis, every answer equal to the direct one."""

    LOOPS = 50

    @classmethod
    def make_schema(cls, pg):
        pg.execute("DROP TABLE IF EXISTS cache_users")
        pg.execute("CREATE TABLE cache_users (id int PRIMARY KEY, name varchar(50) NOT NULL, "
                   "email varchar(100))")
        pg.execute("INSERT INTO cache_users SELECT i, 'user ' || i, "
                   "CASE WHEN i %% 3 = 0 THEN NULL ELSE 'u' || i || '@example.org' END "
                   "FROM generate_series(1, %d) i" % NCUSERS)
        pg.execute("GRANT ALL ON cache_users TO PUBLIC")

    def direct(self, uid):
        return direct_row(self.pg, "SELECT id, name, email FROM cache_users WHERE id = %s", (uid,))

    def check_loop(self, get, warm_id, uid, label):
        """warm with warm_id, then LOOPS gets of uid: pg_stat_statements calls grow
        by 1 or 2 (the first, a miss), hits by the rest."""
        self.warm(lambda: get(warm_id), message="%s: a get that is a cache lookup" % label)
        expected = self.direct(uid)
        calls0, st0 = stmt_calls(self.pg, "cache_users"), self.stats()
        seen = []
        for i in range(self.LOOPS):
            seen.append(get(uid))
            if i == 0:
                self.assertEqual(stmt_calls(self.pg, "cache_users") - calls0, 1,
                                 "%s: the first get of a new id must reach PostgreSQL" % label)
        calls1, st1 = stmt_calls(self.pg, "cache_users"), self.stats()
        self.assertEqual(seen, [expected] * self.LOOPS, label)
        self.assertLessEqual(calls1 - calls0, 2,
                             "%s: %d gets of one id reached PostgreSQL %d times; cache %r"
                             % (label, self.LOOPS, calls1 - calls0,
                                delta(st1, st0, "hits", "misses", "fills", "bypass_catalog",
                                      "bypass_isolation", "bypass_timeout")))
        d = delta(st1, st0, "hits", "misses", "fills")
        self.assertGreaterEqual(d["hits"], self.LOOPS - 2, d)
        self.assertGreaterEqual(d["fills"], 1, d)
        note("%s: %d gets, %d reached PostgreSQL, %d hits", label, self.LOOPS, calls1 - calls0,
             d["hits"])
        return st1

    def test_sqlalchemy_psycopg2_get_loop(self):
        engine = sa.create_engine(
            self.proxy.dsn().replace("postgresql://", "postgresql+psycopg2://"), future=True)
        try:
            def get(uid):
                with Session(engine) as s:  # its own transaction: BEGIN ... ROLLBACK
                    return user_tuple(s.get(CUser, uid))
            st = self.check_loop(get, 1, 3, "SQLAlchemy psycopg2")
            # the console and the HTTP view tell the same story
            console = show_cache(self.proxy)
            self.assertEqual(console["redis_ready"], "yes")
            self.assertGreaterEqual(int(console["hits"]), st["hits"])
            self.assertGreaterEqual(int(console["fills"]), st["fills"])
            # a get of an id without a row is answered (None), never from the cache
            self.assertIsNone(get(NCUSERS + 100))
        finally:
            engine.dispose()

    def test_sqlalchemy_psycopg2_expire_all(self):
        """One Session, expire_all() between gets: SQLAlchemy queries again each time."""
        engine = sa.create_engine(
            self.proxy.dsn().replace("postgresql://", "postgresql+psycopg2://"), future=True)
        try:
            with Session(engine) as s:
                def get(uid):
                    s.expire_all()
                    return user_tuple(s.get(CUser, uid))
                self.check_loop(get, 2, 5, "SQLAlchemy psycopg2, expire_all")
        finally:
            engine.dispose()

    @unittest.skipIf(create_async_engine is None, "asyncpg is not installed")
    def test_sqlalchemy_asyncpg_get_loop(self):
        """asyncpg: named prepared statements, binary parameters and results."""
        url = self.proxy.dsn().replace("postgresql://", "postgresql+asyncpg://")
        loop = asyncio.new_event_loop()
        engine = None
        try:
            async def make():
                return create_async_engine(url, connect_args={"ssl": False})
            engine = loop.run_until_complete(make())

            def get(uid):
                async def one():
                    async with AsyncSession(engine) as s:
                        return user_tuple(await s.get(CUser, uid))
                return loop.run_until_complete(one())
            self.check_loop(get, 4, 7, "SQLAlchemy asyncpg")
        finally:
            if engine is not None:
                loop.run_until_complete(engine.dispose())
            loop.close()


# ------------------------------------------------------------ Django

_django_ready = None  # None: not tried; True; or why Django cannot run here


def django_problem():
    """Why Django cannot run in this process, or None."""
    if django is None:
        return "Django is not installed"
    from django.conf import settings
    if settings.configured and "cachedjangoapp" not in settings.INSTALLED_APPS:
        return "Django was configured without cachedjangoapp in this process"
    return None


def django_setup(proxy_port):
    """Configure Django once per process (settings cannot be configured twice),
    pointing its default connection at proxy_port."""
    global _django_ready
    if _django_ready is None:
        if django is None:
            _django_ready = "Django is not installed"
        else:
            from django.conf import settings
            if settings.configured and "cachedjangoapp" not in settings.INSTALLED_APPS:
                _django_ready = "Django was configured without cachedjangoapp in this process"
            else:
                if not settings.configured:
                    settings.configure(
                        DATABASES={"default": {
                            "ENGINE": "django.db.backends.postgresql", "NAME": DB,
                            "USER": USER, "PASSWORD": PASSWORD, "HOST": "127.0.0.1",
                            "PORT": str(proxy_port)}},
                        INSTALLED_APPS=["cachedjangoapp"], USE_TZ=True,
                        DEFAULT_AUTO_FIELD="django.db.models.AutoField")
                    django.setup()
                _django_ready = True
    if _django_ready is not True:
        raise unittest.SkipTest(_django_ready)
    from django.db import connections
    conn = connections["default"]
    conn.close()
    conn.settings_dict.update(HOST="127.0.0.1", PORT=str(proxy_port), NAME=DB, USER=USER,
                              PASSWORD=PASSWORD)
    conn.settings_dict["OPTIONS"] = {"sslmode": "disable", "application_name": "cache-django"}


class DjangoTest(CacheCase):
    """Django 3.2: `Member.objects.get(pk=...)` (SELECT ... WHERE id = N LIMIT 21)
    in autocommit and in atomic(): answered from Redis after the first call."""

    LOOPS = 50

    @classmethod
    def setUpClass(cls):
        problem = django_problem()
        if problem:
            raise unittest.SkipTest(problem)
        super().setUpClass()

    @classmethod
    def make_schema(cls, pg):
        django_setup(cls.proxy.port)
        from django.db import connection
        from cachedjangoapp.models import Member
        pg.execute("DROP TABLE IF EXISTS cachedjangoapp_member")
        with connection.schema_editor() as editor:
            editor.create_model(Member)
        Member.objects.bulk_create([Member(id=i, name="member %d" % i,
                                           nickname=None if i % 2 else "nick %d" % i,
                                           score=i * 1000003) for i in range(1, 21)])
        connection.close()

    @classmethod
    def tearDownClass(cls):
        if _django_ready is True:
            from django.db import connections
            connections["default"].close()
        super().tearDownClass()

    def get(self, pk):
        from cachedjangoapp.models import Member
        m = Member.objects.get(pk=pk)
        return (m.id, m.name, m.nickname, m.score)

    def direct(self, pk):
        return direct_row(self.pg, "SELECT id, name, nickname, score FROM cachedjangoapp_member "
                          "WHERE id = %s", (pk,))

    def calls(self):
        # pg_stat_statements shows LIMIT 21 as LIMIT $2
        return stmt_calls(self.pg, "cachedjangoapp_member", must=r"LIMIT (21|\$\d+)")

    def loop(self, warm_id, pk, atomic, label):
        from django.db import transaction

        def get(k):
            if atomic:
                with transaction.atomic():
                    return self.get(k)
            return self.get(k)
        self.warm(lambda: get(warm_id), message="%s: a get that is a cache lookup" % label)
        expected = self.direct(pk)
        calls0, st0 = self.calls(), self.stats()
        seen = [get(pk) for _ in range(self.LOOPS)]
        calls1, st1 = self.calls(), self.stats()
        self.assertEqual(seen, [expected] * self.LOOPS)
        self.assertGreaterEqual(calls1 - calls0, 1, "the first get must reach PostgreSQL")
        self.assertLessEqual(calls1 - calls0, 2,
                             "%s: %d gets reached PostgreSQL %d times; cache %r"
                             % (label, self.LOOPS, calls1 - calls0,
                                delta(st1, st0, "hits", "misses", "bypass_catalog",
                                      "bypass_isolation", "bypass_timeout")))
        self.assertGreaterEqual(st1["hits"] - st0["hits"], self.LOOPS - 2)
        note("%s: %d gets, %d reached PostgreSQL, %d hits", label, self.LOOPS, calls1 - calls0,
             st1["hits"] - st0["hits"])

    def test_get_by_pk_autocommit(self):
        self.loop(1, 2, False, "Django autocommit")

    def test_get_by_pk_in_atomic(self):
        self.loop(3, 4, True, "Django atomic()")

    def test_update_through_django_is_seen(self):
        """Model.save() through the proxy: the next get has the new value."""
        from cachedjangoapp.models import Member
        self.warm(lambda: self.get(5))
        self.assert_hit(lambda: self.get(5))
        m = Member.objects.get(pk=5)
        m.nickname = "renamed"
        m.save()
        self.assertEqual(self.get(5), self.direct(5))
        self.assertEqual(self.get(5)[2], "renamed")


# ============================================================ 2. byte identity


def bind_formats(params=(), param_formats=(), result_formats=(), statement=""):
    """Bind with explicit parameter formats; params are bytes (or None for NULL)."""
    body = harness.cstr("") + harness.cstr(statement) + harness.i16(len(param_formats))
    body += b"".join(harness.i16(f) for f in param_formats) + harness.i16(len(params))
    for p in params:
        body += harness.i32(-1) if p is None else harness.i32(len(p)) + p
    body += harness.i16(len(result_formats)) + b"".join(harness.i16(f) for f in result_formats)
    return message("B", body)


def extended(sql, params=(), types=(), result_formats=(), describe=True, param_formats=None):
    """Parse/Bind/[Describe]/Execute/Sync of an unnamed statement; params as text
    (str) unless param_formats says binary (then bytes)."""
    if param_formats is None:
        bind = bind_message(params, result_formats=result_formats)
    else:
        bind = bind_formats(params, param_formats, result_formats)
    return (parse_message(sql, param_types=types) + bind
            + (describe_message("P") if describe else b"") + execute_message() + sync_message())


UUID1 = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
UUID2 = "6f1b2a3c-0000-4000-8000-00000000beef"
BIG = 1099511627779  # 2^40 + 3

# (label, setup frames sent once per connection, frames of one execution)
BYTE_CASES = [
    ("simple int4 key, NULL columns",
     b"", query_message("SELECT id, name, note, n, ts, flag, arr FROM cb_i4 WHERE id = 3")),
    ("simple SELECT *", b"", query_message("SELECT * FROM cb_i4 WHERE id = 4")),
    ("simple int8 key", b"", query_message("SELECT * FROM cb_i8 WHERE id = %d" % BIG)),
    ("simple int8 negative key, all NULL", b"",
     query_message("SELECT id, payload, j FROM cb_i8 WHERE id = -5")),
    ("simple text key with quote and backslash", b"",
     query_message("SELECT k, v FROM cb_text WHERE k = 'it''s \\ key'")),
    ("simple uuid key in upper case", b"",
     query_message("SELECT * FROM cb_uuid WHERE u = '%s'" % UUID1.upper())),
    ("simple composite key", b"", query_message("SELECT v FROM cb_comp WHERE a = 1 AND b = 'y'")),
    ("simple composite key, columns the other way", b"",
     query_message("SELECT v, a, b FROM cb_comp WHERE b = 'x' AND a = 2")),
    ("simple Django LIMIT 21", b"",
     query_message('SELECT "cb_i4"."id", "cb_i4"."name", "cb_i4"."note" FROM "cb_i4" '
                   'WHERE "cb_i4"."id" = 5 LIMIT 21')),
    ("extended int4, text results", b"",
     extended("SELECT id, name, note FROM cb_i4 WHERE id = $1", ["6"])),
    ("extended int4, binary results", b"",
     extended("SELECT id, name, note, n, ts, flag, arr FROM cb_i4 WHERE id = $1", ["7"],
              result_formats=(1,))),
    ("extended int4 binary parameter, binary results", b"",
     extended("SELECT id, name, note FROM cb_i4 WHERE id = $1", [struct.pack("!i", 8)],
              types=(23,), result_formats=(1,), param_formats=(1,))),
    ("extended int8 binary parameter", b"",
     extended("SELECT id, payload, j FROM cb_i8 WHERE id = $1", [struct.pack("!q", BIG)],
              types=(20,), result_formats=(1,), param_formats=(1,))),
    ("extended text key, mixed result formats", b"",
     extended("SELECT v, k FROM cb_text WHERE k = $1", ["\u00fcn\u00ef"],
              result_formats=(0, 1))),
    ("extended uuid binary parameter, binary results", b"",
     extended("SELECT u, v FROM cb_uuid WHERE u = $1", [uuid.UUID(UUID2).bytes], types=(2950,),
              result_formats=(1,), param_formats=(1,))),
    ("extended composite key", b"",
     extended("SELECT a, b, v FROM cb_comp WHERE a = $1 AND b = $2", ["1", "x"],
              result_formats=(1, 0, 1))),
    ("extended Django LIMIT 21", b"",
     extended('SELECT "cb_i4"."id", "cb_i4"."name" FROM "cb_i4" WHERE "cb_i4"."id" = $1 '
              'LIMIT 21', ["9"])),
    ("extended LIMIT as a parameter", b"",
     extended("SELECT id, note FROM cb_i4 WHERE id = $1 LIMIT $2", ["10", "21"])),
    ("extended without Describe", b"",
     extended("SELECT id, name FROM cb_i4 WHERE id = $1", ["2"], describe=False)),
    ("extended named statement", parse_message("SELECT name, id FROM cb_i4 WHERE id = $1",
                                               name="cb_named") + sync_message(),
     bind_message(["1"], statement="cb_named", result_formats=(1,)) + describe_message("P")
     + execute_message() + sync_message()),
    ("extended inside a transaction", query_message("BEGIN"),
     extended("SELECT name, note FROM cb_i4 WHERE id = $1", ["3"], result_formats=(1,))),
]


class BytesTest(CacheCase):
    """A hit is exactly the messages PostgreSQL itself sends for the statement:
    every message (type and body) received through the proxy, on the miss that
    filled the entry and on the hit, equals what a direct connection receives."""

    @classmethod
    def make_schema(cls, pg):
        pg.execute("DROP TABLE IF EXISTS cb_i4, cb_i8, cb_text, cb_uuid, cb_comp")
        pg.execute("CREATE TABLE cb_i4 (id int PRIMARY KEY, name text NOT NULL, note text, "
                   "n numeric, ts timestamptz, flag bool, arr int[])")
        pg.execute("INSERT INTO cb_i4 SELECT i, 'name ' || i, "
                   "CASE WHEN i % 2 = 0 THEN 'note ' || i END, i * 1.25, "
                   "'2024-02-29 12:34:56.789+01'::timestamptz + i * interval '1 day', "
                   "CASE WHEN i % 3 = 0 THEN NULL ELSE i % 3 = 1 END, ARRAY[i, NULL, -i] "
                   "FROM generate_series(1, 12) i")
        pg.execute("CREATE TABLE cb_i8 (id bigint PRIMARY KEY, payload bytea, j jsonb)")
        pg.execute("INSERT INTO cb_i8 VALUES (%s, '\\x00ff10'::bytea, '{\"a\": [1, 2.5]}'), "
                   "(-5, NULL, NULL)", (BIG,))
        pg.execute("CREATE TABLE cb_text (k text PRIMARY KEY, v int)")
        pg.execute("INSERT INTO cb_text VALUES ('it''s \\ key', 1), ('plain', 2), "
                   "('\u00fcn\u00ef', 3)")
        pg.execute("CREATE TABLE cb_uuid (u uuid PRIMARY KEY, v text)")
        pg.execute("INSERT INTO cb_uuid VALUES (%s, 'first'), (%s, NULL)", (UUID1, UUID2))
        pg.execute("CREATE TABLE cb_comp (a int, b text, v text, PRIMARY KEY (a, b))")
        pg.execute("INSERT INTO cb_comp VALUES (1, 'x', 'one-x'), (1, 'y', 'one-y'), "
                   "(2, 'x', 'two-x')")
        pg.execute("GRANT SELECT ON cb_i4, cb_i8, cb_text, cb_uuid, cb_comp TO PUBLIC")

    def run_frames(self, conn, frames):
        """Send frames; every message up to ReadyForQuery as (type, body bytes)."""
        conn.send(frames)
        msgs = []
        while True:
            kind, body = conn.read_message()
            msgs.append((kind, body))
            if kind == "Z":
                return msgs

    def test_hits_are_byte_identical(self):
        for label, setup, frames in BYTE_CASES:
            with self.subTest(label):
                self.check_case(label, setup, frames)

    def check_case(self, label, setup, frames):
        direct = harness.RawConn(self.pg.port)
        proxied = self.proxy.raw_login()
        try:
            direct.login(USER, DB, PASSWORD)
            if setup:
                self.run_frames(direct, setup)
                self.run_frames(proxied, setup)
            want = self.run_frames(direct, frames)
            self.assertNotIn("E", [k for k, _ in want], "the case itself fails: %r" % want)
            self.assertIn("D", [k for k, _ in want], "the case has no row: %r" % want)
            # until the catalog knows the table and the entry is filled: misses
            # and bypasses, each of them relayed as PostgreSQL sent it
            hit = False
            for _ in range(40):
                before = self.stats()
                got = self.run_frames(proxied, frames)
                self.assertEqual(got, want, "%s: a relayed answer differs" % label)
                if self.stats()["hits"] > before["hits"]:
                    hit = True
                    break
                time.sleep(0.02)
            self.assertTrue(hit, "%s: never answered from the cache" % label)
            # one more: a hit, not reaching PostgreSQL, the same bytes
            calls0, st0 = stmt_calls(self.pg, "cb_\\w+"), self.stats()
            got = self.run_frames(proxied, frames)
            calls1, st1 = stmt_calls(self.pg, "cb_\\w+"), self.stats()
            self.assertEqual(st1["hits"] - st0["hits"], 1, label)
            self.assertEqual(calls1, calls0, "%s: the hit reached PostgreSQL" % label)
            self.assertEqual(got, want, "%s: the hit differs from PostgreSQL's answer" % label)
        finally:
            direct.close()
            proxied.close()


# ============================================================ 3. writes through the proxy


class InvalidationTest(CacheCase):
    """A write through the proxy is seen by the very next read, from the writer
    and from another client: UPDATE by primary key (autocommit, explicit
    transaction with COMMIT, extended protocol with a parameter), DELETE, an
    UPDATE whose WHERE is not the key (the table's generation moves on), and
    INSERT ... ON CONFLICT DO UPDATE. Each read checked was a hit just before,
    so a missed invalidation would return the old row."""

    @classmethod
    def make_schema(cls, pg):
        pg.execute("DROP TABLE IF EXISTS ci")
        pg.execute("CREATE TABLE ci (id int PRIMARY KEY, v int NOT NULL, grp int NOT NULL)")
        pg.execute("INSERT INTO ci SELECT i, 0, i % 5 FROM generate_series(1, 50) i")
        # a composite key whose order (a, b) is not the columns' order (b, a)
        pg.execute("DROP TABLE IF EXISTS ci_comp")
        pg.execute("CREATE TABLE ci_comp (b text, a int, v int NOT NULL, PRIMARY KEY (a, b))")
        pg.execute("INSERT INTO ci_comp VALUES ('x', 1, 0), ('y', 1, 0), ('x', 2, 0)")
        pg.execute("GRANT ALL ON ci, ci_comp TO PUBLIC")

    def setUp(self):
        super().setUp()
        self.a = self.proxy.connect(autocommit=True)
        self.b = self.proxy.connect(autocommit=True)
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)

    def read(self, conn, k):
        with conn.cursor() as cur:
            cur.execute("SELECT v FROM ci WHERE id = %s", (k,))
            row = cur.fetchone()
            return None if row is None else row[0]

    def cached(self, k):
        """Row k is in the cache, for both clients."""
        self.warm(lambda: self.read(self.a, k))
        self.assert_hit(lambda: self.read(self.a, k))
        self.assert_hit(lambda: self.read(self.b, k))
        return self.read(self.b, k)

    def direct(self, k):
        row = direct_row(self.pg, "SELECT v FROM ci WHERE id = %s", (k,))
        return None if row is None else row[0]

    def test_update_autocommit(self):
        old = self.cached(1)
        st0 = self.stats()
        with self.a.cursor() as cur:
            cur.execute("UPDATE ci SET v = v + 1 WHERE id = 1 RETURNING v")
            new = cur.fetchone()[0]
        self.assertEqual(new, old + 1)
        self.assertEqual(self.read(self.a, 1), new)
        self.assertEqual(self.read(self.b, 1), new)
        st1 = self.stats()
        self.assertGreater(st1["invalidations_statement"], st0["invalidations_statement"])
        # and the new value is cached in turn
        self.assertEqual(self.assert_hit(lambda: self.read(self.b, 1)), new)

    def test_update_in_transaction_with_commit(self):
        old = self.cached(2)
        w = self.proxy.connect()  # psycopg2: BEGIN before the first statement
        self.addCleanup(w.close)
        with w.cursor() as cur:
            cur.execute("UPDATE ci SET v = v + 10 WHERE id = 2")
            cur.execute("SELECT v FROM ci WHERE id = 2")  # its own write, not the cache
            self.assertEqual(cur.fetchone()[0], old + 10)
        # not committed: another client sees the old value (and may cache it)
        self.assertEqual(self.read(self.b, 2), old)
        self.assertEqual(self.read(self.b, 2), old)
        st0 = self.stats()
        w.commit()
        self.assertEqual(self.read(self.b, 2), old + 10)
        self.assertEqual(self.read(self.a, 2), old + 10)
        self.assertGreater(self.stats()["invalidations_commit"], st0["invalidations_commit"])

    def test_explicit_begin_commit_statements(self):
        old = self.cached(3)
        with self.a.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("UPDATE ci SET v = v + 5 WHERE id = 3")
            cur.execute("COMMIT")
        self.assertEqual(self.read(self.a, 3), old + 5)
        self.assertEqual(self.read(self.b, 3), old + 5)

    def test_rollback_keeps_the_old_value(self):
        old = self.cached(4)
        with self.a.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("UPDATE ci SET v = v + 7 WHERE id = 4")
            cur.execute("ROLLBACK")
        self.assertEqual(self.read(self.b, 4), old)
        self.assertEqual(self.read(self.a, 4), old)

    def test_update_extended_protocol_parameter(self):
        """psycopg 3 (Parse/Bind): the key of the UPDATE is a Bind value."""
        old = self.cached(5)
        with self.proxy.connect3(autocommit=True) as c3:
            c3.execute("UPDATE ci SET v = v + 1 WHERE id = %s", (5,))
            self.assertEqual(c3.execute("SELECT v FROM ci WHERE id = %s", (5,)).fetchone()[0],
                             old + 1)
        self.assertEqual(self.read(self.b, 5), old + 1)
        # and in a psycopg 3 transaction
        with self.proxy.connect3() as c3:
            with c3.transaction():
                c3.execute("UPDATE ci SET v = v + 1 WHERE id = %s", (5,))
        self.assertEqual(self.read(self.b, 5), old + 2)

    def test_delete_then_no_row(self):
        self.assertIsNotNone(self.cached(6))
        with self.a.cursor() as cur:
            cur.execute("DELETE FROM ci WHERE id = 6")
        self.assertIsNone(self.read(self.a, 6))
        self.assertIsNone(self.read(self.b, 6))
        self.assertIsNone(self.read(self.b, 6))
        # in a transaction too
        self.assertIsNotNone(self.cached(16))
        w = self.proxy.connect()
        self.addCleanup(w.close)
        with w.cursor() as cur:
            cur.execute("DELETE FROM ci WHERE id = 16")
        w.commit()
        self.assertIsNone(self.read(self.b, 16))

    def test_update_not_by_key_bumps_the_table(self):
        """WHERE grp = 2: the rows are not known, the whole table's entries go."""
        old7, old12 = self.cached(7), self.cached(12)  # both in group 2
        other = self.cached(8)  # group 3
        st0 = self.stats()
        with self.a.cursor() as cur:
            cur.execute("UPDATE ci SET v = v + 100 WHERE grp = 2")
        self.assertEqual(self.read(self.b, 7), old7 + 100)
        self.assertEqual(self.read(self.b, 12), old12 + 100)
        self.assertEqual(self.read(self.b, 8), other)
        self.assertGreater(self.stats()["table_bumps"], st0["table_bumps"])
        self.assertEqual([self.read(self.b, k) for k in (7, 12)], [self.direct(7), self.direct(12)])

    def test_insert_on_conflict_update(self):
        old = self.cached(9)
        with self.a.cursor() as cur:
            cur.execute("INSERT INTO ci VALUES (9, 0, 4) ON CONFLICT (id) DO UPDATE "
                        "SET v = ci.v + 1000")
        self.assertEqual(self.read(self.b, 9), old + 1000)

    def test_composite_key_in_another_order(self):
        """PRIMARY KEY (a, b) on columns (b, a): reads and writes naming the key
        columns in either order meet on one entry."""
        def read(conn, a, b, reverse=False):
            with conn.cursor() as cur:
                if reverse:
                    cur.execute("SELECT v FROM ci_comp WHERE b = %s AND a = %s", (b, a))
                else:
                    cur.execute("SELECT v FROM ci_comp WHERE a = %s AND b = %s", (a, b))
                return cur.fetchone()[0]
        for reverse_read, write in ((False, "UPDATE ci_comp SET v = v + 1 WHERE a = 1 AND b = 'x'"),
                                    (True, "UPDATE ci_comp SET v = v + 1 WHERE b = 'x' AND a = 1"),
                                    (False, "UPDATE ci_comp SET v = v + 1 WHERE b = 'x' AND a = 1"),
                                    (True, "UPDATE ci_comp SET v = v + 1 WHERE a = 1 AND b = 'x'")):
            with self.subTest(write=write, reverse_read=reverse_read):
                self.warm(lambda: read(self.a, 1, "x", reverse_read))
                old = self.assert_hit(lambda: read(self.b, 1, "x", reverse_read))
                with self.a.cursor() as cur:
                    cur.execute(write)
                self.assertEqual(read(self.b, 1, "x", reverse_read), old + 1)
                self.assertEqual(read(self.b, 1, "y", reverse_read), 0)

    def test_key_spellings_of_the_write(self):
        """However the UPDATE spells the key, the entry the read filled goes."""
        spellings = [
            "UPDATE ci SET v = v + 1 WHERE id = '21'",
            "UPDATE ci SET v = v + 1 WHERE ci.id = 21",
            "UPDATE ci SET v = v + 1 WHERE 21 = id",
            "UPDATE public.ci SET v = v + 1 WHERE id = 21",
            "UPDATE ci AS x SET v = x.v + 1 WHERE x.id = 21",
            "UPDATE ci SET v = v + 1 WHERE id = 21::bigint",
            "UPDATE ci SET v = v + 1 WHERE id = +21",
            "UPDATE ci SET v = v + 1 WHERE id IN (21)",
            "UPDATE ci SET v = v + 1 WHERE id = 21 AND grp = 1",
            "UPDATE ci SET v = v + 1 WHERE id BETWEEN 21 AND 21",
            "WITH u AS (UPDATE ci SET v = v + 1 WHERE id = 21 RETURNING v) SELECT v FROM u",
            "UPDATE ci SET v = v + 1 FROM (SELECT 21 AS k) s WHERE ci.id = s.k",
        ]
        for sql in spellings:
            with self.subTest(sql):
                old = self.cached(21)
                with self.a.cursor() as cur:
                    cur.execute(sql)
                self.assertEqual(self.read(self.b, 21), old + 1)
        with self.subTest("psycopg 3 named prepared UPDATE"):
            with self.proxy.connect3(autocommit=True, prepare_threshold=0) as c3:
                for _ in range(3):
                    old = self.cached(22)
                    c3.execute("UPDATE ci SET v = v + 1 WHERE id = %s", (22,))
                    self.assertEqual(self.read(self.b, 22), old + 1)


# ============================================================ 6. what never uses the cache


class BypassTest(CacheCase):
    """Reads the cache must not answer: every one of them reaches PostgreSQL
    (pg_stat_statements calls grow by the number of reads), no hit is counted,
    and the answers are PostgreSQL's. Each case is checked on a table whose
    plain reads *are* cached (test_plain_table_is_cached), so the bypass is the
    case's doing."""

    databases = None  # set in setUpClass: `app`, `*` and a session-mode alias of app

    @classmethod
    def setUpClass(cls):
        pg = harness.postgres()
        cls.databases = {
            "app": "host=127.0.0.1 port=%d dbname=app" % pg.port,
            "appsession": "host=127.0.0.1 port=%d dbname=app pool_mode=session" % pg.port,
            "*": "host=127.0.0.1 port=%d" % pg.port,
        }
        super().setUpClass()

    @classmethod
    def make_schema(cls, pg):
        pg.execute("DROP TABLE IF EXISTS cb_rls, cb_nopk, cb_plain, cb_unlogged")
        pg.execute("DROP SCHEMA IF EXISTS cb_other CASCADE")
        pg.execute("CREATE TABLE cb_rls (id int PRIMARY KEY, owner text NOT NULL, v text)")
        pg.execute("INSERT INTO cb_rls VALUES (1, 'app_scram', 'mine'), (2, 'app_md5', 'theirs')")
        pg.execute("ALTER TABLE cb_rls ENABLE ROW LEVEL SECURITY")
        pg.execute("CREATE POLICY own_rows ON cb_rls USING (owner = current_user)")
        pg.execute("CREATE TABLE cb_nopk (id int NOT NULL, v text)")
        pg.execute("CREATE UNIQUE INDEX ON cb_nopk (id)")
        pg.execute("INSERT INTO cb_nopk VALUES (1, 'one'), (2, 'two')")
        pg.execute("CREATE UNLOGGED TABLE cb_unlogged (id int PRIMARY KEY, v text)")
        pg.execute("INSERT INTO cb_unlogged VALUES (1, 'one')")
        pg.execute("CREATE TABLE cb_plain (id int PRIMARY KEY, v text)")
        pg.execute("INSERT INTO cb_plain SELECT i, 'public ' || i FROM generate_series(1, 30) i")
        pg.execute("CREATE SCHEMA cb_other")
        pg.execute("CREATE TABLE cb_other.cb_plain (id int PRIMARY KEY, v text)")
        pg.execute("INSERT INTO cb_other.cb_plain SELECT i, 'other ' || i "
                   "FROM generate_series(1, 30) i")
        pg.execute("GRANT USAGE ON SCHEMA cb_other TO PUBLIC")
        pg.execute("GRANT ALL ON cb_rls, cb_nopk, cb_plain, cb_unlogged, cb_other.cb_plain "
                   "TO PUBLIC")

    def setUp(self):
        super().setUp()
        self.conn = self.proxy.connect(autocommit=True)
        self.addCleanup(self.conn.close)

    def q(self, conn, sql, args=None):
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def plain(self, k, conn=None):
        return self.q(conn or self.conn, "SELECT v FROM cb_plain WHERE id = %s", (k,))

    def assert_bypassed(self, table, reads, n, reason=None, expect=None):
        """reads() makes n reads of table; none may be a hit, all reach PostgreSQL."""
        calls0, st0 = stmt_calls(self.pg, table), self.stats()
        got = reads()
        calls1, st1 = stmt_calls(self.pg, table), self.stats()
        d = delta(st1, st0, "hits", "lookups", *[k for k in st1 if k.startswith("bypass_")])
        d["hits_before"] = st0["hits"]
        self.assertEqual(d["hits"], 0, d)
        self.assertEqual(calls1 - calls0, n, "reads reaching PostgreSQL; cache %r" % d)
        if reason:
            self.assertGreaterEqual(d["bypass_" + reason], n - 2, d)
        if expect is not None:
            self.assertEqual(got, expect)
        return d

    def test_plain_table_is_cached(self):
        """The control: autocommit and READ COMMITTED transactions hit."""
        self.warm(lambda: self.plain(1))
        self.assertEqual(self.assert_hit(lambda: self.plain(1)), [("public 1",)])
        tx = self.proxy.connect()
        self.addCleanup(tx.close)

        def in_tx():
            r = self.plain(1, tx)
            tx.commit()
            return r
        self.warm(in_tx)
        self.assertEqual(self.assert_hit(in_tx), [("public 1",)])

    def warm_bypass(self, read, reason):
        """Run read() until one run was bypassed for reason (the catalog answered)."""
        def once():
            before = self.stats()["bypass_" + reason]
            read()
            return self.stats()["bypass_" + reason] > before
        wait_until(once, timeout=15, message="a read bypassed for %s" % reason)

    def test_row_level_security_table(self):
        rls = lambda: self.q(self.conn, "SELECT v FROM cb_rls WHERE id = 1")  # noqa: E731
        self.warm_bypass(rls, "table")
        d = self.assert_bypassed("cb_rls", lambda: [rls() for _ in range(20)], 20, "table",
                                 expect=[[("mine",)]] * 20)
        note("row-level security: 20 reads, bypass_table +%d, hits +%d", d["bypass_table"],
             d["hits"])
        # the policy is PostgreSQL's to apply, per role
        other = self.proxy.connect(user="app_md5", autocommit=True)
        self.addCleanup(other.close)
        self.assertEqual(self.q(other, "SELECT v FROM cb_rls WHERE id = 1"), [])
        self.assertEqual(self.q(other, "SELECT v FROM cb_rls WHERE id = 2"), [("theirs",)])
        self.assertEqual(self.q(self.conn, "SELECT v FROM cb_rls WHERE id = 2"), [])
        # extended protocol too
        with self.proxy.connect3(autocommit=True) as c3:
            for _ in range(5):
                self.assertEqual(c3.execute("SELECT v FROM cb_rls WHERE id = %s", (1,))
                                 .fetchall(), [("mine",)])
        self.assertEqual(self.stats()["hits"] - d["hits_before"], 0)

    def test_table_without_primary_key(self):
        nopk = lambda: self.q(self.conn, "SELECT v FROM cb_nopk WHERE id = 2")  # noqa: E731
        self.warm_bypass(nopk, "table")
        self.assert_bypassed("cb_nopk", lambda: [nopk() for _ in range(10)], 10, "table",
                             expect=[[("two",)]] * 10)

    def test_unlogged_table(self):
        unl = lambda: self.q(self.conn, "SELECT v FROM cb_unlogged WHERE id = 1")  # noqa: E731
        self.warm_bypass(unl, "table")
        self.assert_bypassed("cb_unlogged", lambda: [unl() for _ in range(10)], 10, "table",
                             expect=[[("one",)]] * 10)

    def test_bypass_counted_once_per_statement(self):
        """bypass_<reason> counts statements: n bypassed reads add exactly n."""
        nopk = lambda: self.q(self.conn, "SELECT v FROM cb_nopk WHERE id = 1")  # noqa: E731
        self.warm_bypass(nopk, "table")
        st0 = self.stats()
        for _ in range(5):
            nopk()
        self.assertEqual(self.stats()["bypass_table"] - st0["bypass_table"], 5,
                         "5 reads of a table without a primary key")

    def test_locking_clauses(self):
        self.warm(lambda: self.plain(2))
        for clause in ("FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE", "FOR KEY SHARE",
                       "FOR UPDATE NOWAIT", "FOR UPDATE SKIP LOCKED"):
            with self.subTest(clause):
                def reads():
                    out = [self.q(self.conn, "SELECT v FROM cb_plain WHERE id = 2 " + clause)
                           for _ in range(5)]
                    tx = self.proxy.connect()
                    try:
                        out += [self.q(tx, "SELECT v FROM cb_plain WHERE id = 2 " + clause)
                                for _ in range(5)]
                        tx.commit()
                    finally:
                        tx.close()
                    return out
                self.assert_bypassed("cb_plain", reads, 10, expect=[[("public 2",)]] * 10)

    def test_repeatable_read_and_serializable(self):
        self.warm(lambda: self.plain(3))
        tx = self.proxy.connect()
        self.addCleanup(tx.close)

        def rc():
            r = self.plain(3, tx)
            tx.commit()
            return r
        self.warm(rc)  # the pool's default isolation is known: RC transactions hit
        self.assert_hit(rc)
        begins = ["BEGIN ISOLATION LEVEL REPEATABLE READ",
                  "begin transaction isolation level   repeatable\tread",
                  "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
                  "BEGIN READ WRITE, ISOLATION LEVEL REPEATABLE READ",
                  "BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                  "BEGIN; SET transaction_isolation = 'serializable'",
                  "BEGIN; SET LOCAL transaction_isolation TO 'repeatable read'"]
        for begin in begins:
            with self.subTest(begin):
                def reads():
                    for part in begin.split("; "):
                        self.q_none(self.conn, part)
                    out = [self.plain(3) for _ in range(5)]
                    self.q_none(self.conn, "COMMIT")
                    return out
                self.assert_bypassed("cb_plain", reads, 5, "isolation",
                                     expect=[[("public 3",)]] * 5)

    def q_none(self, conn, sql):
        with conn.cursor() as cur:
            cur.execute(sql)

    def test_isolation_set_for_the_session(self):
        """The session's default isolation moved off READ COMMITTED: by SET, by
        SET SESSION CHARACTERISTICS, by psycopg2's set_session, by a startup option."""
        self.warm(lambda: self.plain(4))
        cases = [
            ("SET default_transaction_isolation", {},
             "SET default_transaction_isolation = 'repeatable read'"),
            ("SET SESSION CHARACTERISTICS", {},
             "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            ("startup option", {"options": "-c default_transaction_isolation=serializable"},
             None),
        ]
        for label, kw, setup in cases:
            with self.subTest(label):
                # session mode, so that a SET stays on the client's server connection
                conn = self.proxy.connect(dbname="appsession", autocommit=True, **kw)
                try:
                    if setup:
                        self.q_none(conn, setup)
                    self.warm(lambda: self.plain(4, conn))

                    def reads():
                        out = []
                        for _ in range(4):
                            self.q_none(conn, "BEGIN")
                            self.assertNotEqual(
                                self.q(conn, "SHOW transaction_isolation"), [("read committed",)])
                            out.append(self.plain(4, conn))
                            self.q_none(conn, "COMMIT")
                        return out
                    self.assert_bypassed("cb_plain", reads, 4, "isolation",
                                         expect=[[("public 4",)]] * 4)
                finally:
                    conn.close()
        with self.subTest("psycopg2 set_session"):
            conn = self.proxy.connect()
            try:
                conn.set_session(isolation_level="REPEATABLE READ")

                def reads():
                    out = []
                    for _ in range(4):
                        out.append(self.plain(4, conn))
                        conn.commit()
                    return out
                self.assert_bypassed("cb_plain", reads, 4, "isolation",
                                     expect=[[("public 4",)]] * 4)
            finally:
                conn.close()

    def test_role_default_isolation(self):
        """ALTER ROLE ... SET default_transaction_isolation: the pool's own
        default is not READ COMMITTED, so its transactions never use the cache
        (autocommit reads still may)."""
        self.pg.execute("ALTER ROLE app_trust SET default_transaction_isolation = "
                        "'repeatable read'")
        try:
            conn = self.proxy.connect(user="app_trust")
            self.addCleanup(conn.close)
            auto = self.proxy.connect(user="app_trust", autocommit=True)
            self.addCleanup(auto.close)
            self.warm(lambda: self.plain(5, auto))
            self.assert_hit(lambda: self.plain(5, auto))

            def reads():
                out = []
                for _ in range(5):
                    out.append(self.plain(5, conn))
                    conn.commit()
                return out
            self.assert_bypassed("cb_plain", reads, 5, "isolation", expect=[[("public 5",)]] * 5)
        finally:
            self.pg.execute("ALTER ROLE app_trust RESET default_transaction_isolation")

    def test_repeatable_read_snapshot_not_stored(self):
        """A REPEATABLE READ transaction reads a row, another client updates it
        through the proxy, the transaction reads it again (its snapshot: the
        old value). Had that second read filled the cache, later readers would
        get the old row: they must get the new one."""
        self.warm(lambda: self.plain(6))
        self.assert_hit(lambda: self.plain(6))
        rr = self.proxy.connect(autocommit=True)
        self.addCleanup(rr.close)
        self.q_none(rr, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        self.assertEqual(self.plain(6, rr), [("public 6",)])
        self.q_none(self.conn, "UPDATE cb_plain SET v = 'changed 6' WHERE id = 6")
        self.assertEqual(self.plain(6, rr), [("public 6",)])  # the snapshot
        self.assertEqual(self.plain(6, rr), [("public 6",)])
        self.assertEqual(self.plain(6), [("changed 6",)])
        self.q_none(rr, "COMMIT")
        self.assertEqual(self.plain(6), [("changed 6",)])
        self.assertEqual(self.plain(6, rr), [("changed 6",)])

    def test_temp_table_shadowing_a_cached_table(self):
        """A session's temp table of the same name hides public.cb_plain: its reads
        must be the temp table's, never the cached public rows."""
        self.warm(lambda: self.plain(7))
        self.assert_hit(lambda: self.plain(7))
        conn = self.proxy.connect(dbname="appsession", autocommit=True)
        self.addCleanup(conn.close)
        self.q_none(conn, "CREATE TEMP TABLE cb_plain (id int PRIMARY KEY, v text)")
        self.q_none(conn, "INSERT INTO cb_plain VALUES (7, 'temp 7')")
        self.assert_bypassed("cb_plain", lambda: [self.plain(7, conn) for _ in range(10)], 10,
                             "session", expect=[[("temp 7",)]] * 10)
        # transaction mode: a temp table inside one transaction
        tx = self.proxy.connect()
        self.addCleanup(tx.close)

        def in_tx():
            self.q_none(tx, "CREATE TEMP TABLE cb_plain (id int PRIMARY KEY, v text) "
                            "ON COMMIT DROP")
            self.q_none(tx, "INSERT INTO cb_plain VALUES (7, 'tx temp 7')")
            out = [self.plain(7, tx) for _ in range(5)]
            tx.commit()
            return out
        self.assert_bypassed("cb_plain", in_tx, 5, expect=[[("tx temp 7",)]] * 5)
        # a temp table of its own name
        self.q_none(conn, "CREATE TEMP TABLE cb_tmp_only (id int PRIMARY KEY, v text)")
        self.q_none(conn, "INSERT INTO cb_tmp_only VALUES (1, 'tmp')")
        self.assert_bypassed("cb_tmp_only", lambda: [
            self.q(conn, "SELECT v FROM cb_tmp_only WHERE id = 1") for _ in range(10)], 10,
            expect=[[("tmp",)]] * 10)
        # and the other clients still get (and hit) the public table (the DDL
        # made the catalog forget what it knew: warm again)
        self.warm(lambda: self.plain(7))
        self.assertEqual(self.assert_hit(lambda: self.plain(7)), [("public 7",)])

    def test_search_path(self):
        self.warm(lambda: self.plain(8))
        self.assert_hit(lambda: self.plain(8))
        conn = self.proxy.connect(dbname="appsession", autocommit=True)
        self.addCleanup(conn.close)
        self.q_none(conn, "SET search_path = cb_other, public")
        self.assert_bypassed("cb_plain", lambda: [self.plain(8, conn) for _ in range(10)], 10,
                             "session", expect=[[("other 8",)]] * 10)
        # SET LOCAL in a transaction-mode transaction
        tx = self.proxy.connect()
        self.addCleanup(tx.close)

        def in_tx():
            self.q_none(tx, "SET LOCAL search_path TO cb_other")
            out = [self.plain(8, tx) for _ in range(5)]
            tx.commit()
            return out
        self.assert_bypassed("cb_plain", in_tx, 5, "session", expect=[[("other 8",)]] * 5)
        # a startup search_path
        sp = self.proxy.connect(dbname="appsession", autocommit=True,
                                options="-c search_path=cb_other")
        self.addCleanup(sp.close)
        self.assert_bypassed("cb_plain", lambda: [self.plain(8, sp) for _ in range(5)], 5,
                             "session", expect=[[("other 8",)]] * 5)
        self.assertEqual(self.assert_hit(lambda: self.plain(8)), [("public 8",)])

    def test_aborted_transaction(self):
        """In a failed transaction a cached read gets PostgreSQL's error (25P02)."""
        self.warm(lambda: self.plain(9))
        self.assert_hit(lambda: self.plain(9))
        tx = self.proxy.connect()
        self.addCleanup(tx.close)
        with self.assertRaises(psycopg2.errors.DivisionByZero):
            self.q(tx, "SELECT 1 / 0")
        st0 = self.stats()
        with self.assertRaises(psycopg2.errors.InFailedSqlTransaction):
            self.plain(9, tx)
        self.assertEqual(self.stats()["hits"], st0["hits"])
        tx.rollback()
        self.assertEqual(self.plain(9, tx), [("public 9",)])

    def test_written_transaction(self):
        """After a write, the transaction reads PostgreSQL (its own writes)."""
        self.warm(lambda: self.plain(10))
        self.assert_hit(lambda: self.plain(10))
        tx = self.proxy.connect()
        self.addCleanup(tx.close)
        self.q_none(tx, "UPDATE cb_plain SET v = 'mine 11' WHERE id = 11")

        def reads():
            return [self.plain(10, tx) for _ in range(5)] + [self.plain(11, tx)]
        self.assert_bypassed("cb_plain", reads, 6, "wrote",
                             expect=[[("public 10",)]] * 5 + [[("mine 11",)]])
        tx.rollback()


# ============================================================ 5. roles and privileges


class PrivilegeTest(CacheCase):
    """Answers are kept per role: a role PostgreSQL would refuse never gets
    another role's cached answer. app_scram may read cp_secret; app_md5 at first
    may not read it at all, later only its id column."""

    databases = None

    @classmethod
    def setUpClass(cls):
        pg = harness.postgres()
        cls.databases = {
            "app": "host=127.0.0.1 port=%d dbname=app" % pg.port,
            "appsession": "host=127.0.0.1 port=%d dbname=app pool_mode=session" % pg.port,
        }
        super().setUpClass()

    @classmethod
    def make_schema(cls, pg):
        pg.execute("DROP TABLE IF EXISTS cp_secret")
        # made by postgres: no default privileges apply; only what is granted here
        pg.execute("CREATE TABLE cp_secret (id int PRIMARY KEY, secret text NOT NULL)")
        pg.execute("INSERT INTO cp_secret SELECT i, 'secret ' || i FROM generate_series(1, 10) i")
        pg.execute("GRANT SELECT ON cp_secret TO app_scram")

    def read(self, conn, sql):
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def assert_denied(self, conn, sql, times=5):
        st0 = self.stats()
        calls0 = stmt_calls(self.pg, "cp_secret")
        for _ in range(times):
            with self.assertRaises(psycopg2.errors.InsufficientPrivilege) as cm:
                self.read(conn, sql)
            self.assertEqual(cm.exception.pgcode, "42501")
            self.assertIn("permission denied", str(cm.exception))
        self.assertEqual(self.stats()["hits"], st0["hits"], "a refused role got a hit")
        # pg_stat_statements does not count failed statements: nothing to compare there
        self.assertEqual(stmt_calls(self.pg, "cp_secret"), calls0)

    def test_roles_never_share_answers(self):
        a = self.proxy.connect(autocommit=True)
        b = self.proxy.connect(user="app_md5", autocommit=True)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        sql = "SELECT id, secret FROM cp_secret WHERE id = 1"
        self.warm(lambda: self.read(a, sql))
        self.assertEqual(self.assert_hit(lambda: self.read(a, sql)), [(1, "secret 1")])
        # B has no privilege at all: PostgreSQL's error, every time
        self.assert_denied(b, sql)
        self.assert_denied(b, "SELECT id FROM cp_secret WHERE id = 1")
        with self.proxy.connect3(user="app_md5", autocommit=True) as c3:
            for _ in range(3):
                with self.assertRaises(psycopg.errors.InsufficientPrivilege):
                    c3.execute("SELECT id, secret FROM cp_secret WHERE id = %s", (1,))
        # column privileges: B may read id only
        self.pg.execute("GRANT SELECT (id) ON cp_secret TO app_md5")
        ids = "SELECT id FROM cp_secret WHERE id = 1"
        self.warm(lambda: self.read(b, ids))
        self.assertEqual(self.assert_hit(lambda: self.read(b, ids)), [(1,)])
        self.assert_denied(b, sql)
        self.assert_denied(b, "SELECT * FROM cp_secret WHERE id = 1")
        self.assert_denied(b, "SELECT secret FROM cp_secret WHERE id = 2")
        # A's answers are still there for A
        self.assertEqual(self.assert_hit(lambda: self.read(a, sql)), [(1, "secret 1")])

    def test_set_role_in_a_session(self):
        """SET ROLE to a role without the privilege: PostgreSQL's error, not the
        cached answer of the login role; RESET ROLE: answers again."""
        a = self.proxy.connect(autocommit=True)
        self.addCleanup(a.close)
        sql = "SELECT id, secret FROM cp_secret WHERE id = 3"
        self.warm(lambda: self.read(a, sql))
        self.assert_hit(lambda: self.read(a, sql))
        self.pg.execute("GRANT app_trust TO app_scram")
        try:
            s = self.proxy.connect(dbname="appsession", autocommit=True)
            self.addCleanup(s.close)
            self.assertEqual(self.read(s, sql), [(3, "secret 3")])
            self.read(s, "SELECT 1")
            with s.cursor() as cur:
                cur.execute("SET ROLE app_trust")
            self.assert_denied(s, sql)
            with s.cursor() as cur:
                cur.execute("RESET ROLE")
            self.assertEqual(self.read(s, sql), [(3, "secret 3")])
        finally:
            self.pg.execute("REVOKE app_trust FROM app_scram")

    def test_revoke_through_the_proxy_takes_effect(self):
        """REVOKE made through the proxy (by the table's owner): the role's cached
        answers are gone at once; PostgreSQL refuses the next read."""
        self.pg.execute("GRANT SELECT ON cp_secret TO app_trust")
        a = self.proxy.connect(user="app_trust", autocommit=True)
        owner = self.proxy.connect(user="postgres", autocommit=True)
        self.addCleanup(a.close)
        self.addCleanup(owner.close)
        sql = "SELECT id, secret FROM cp_secret WHERE id = 4"
        self.warm(lambda: self.read(a, sql))
        self.assert_hit(lambda: self.read(a, sql))
        with owner.cursor() as cur:
            cur.execute("REVOKE SELECT ON cp_secret FROM app_trust")
        self.assert_denied(a, sql)


# ============================================================ 4, 8, 9. logical replication

PUBLICATION = "pgcoalesce_cache"
# The harness runs PostgreSQL with synchronous_commit = off, which lets a commit
# reach the WAL (and so the replication stream) up to 3 x wal_writer_delay later.
# Direct writers here use PostgreSQL's default, on, so that the lag measured is
# the stream's and the proxy's, not the WAL writer's.
SYNC_COMMIT = "-c synchronous_commit=on"


def replication_ready(pg):
    """app_scram may stream; publication pgcoalesce_cache exists (made by postgres)."""
    pg.execute("ALTER ROLE app_scram REPLICATION")
    if not pg.query("SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION,)):
        pg.execute("CREATE PUBLICATION %s FOR ALL TABLES" % PUBLICATION)


def poll_until(read, want, timeout=2.0, interval=0.02):
    """Call read() every interval until it returns want; seconds it took, or None."""
    t0 = time.monotonic()
    while True:
        if read() == want:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)


class History:
    """Committed writes and reads of a table of counters (v = v + 1 per write),
    from many threads; checked once they have stopped."""

    def __init__(self):
        self.lock = threading.Lock()
        self.writes = []  # (key, version, time after the commit returned, source)
        self.reads = []  # (key, time before the read was sent, version read, mode)
        self.errors = []
        self.worst = None

    def write(self, key, version, done, source):
        with self.lock:
            self.writes.append((key, version, done, source))

    def read(self, key, start, version, mode):
        with self.lock:
            self.reads.append((key, start, version, mode))

    def check(self, initial):
        """(stale reads after a proxy write committed, worst staleness behind a
        direct write in seconds, reads of versions never written); self.worst
        describes the read behind that worst staleness."""
        by_key = {}
        for key, version, done, source in self.writes:
            by_key.setdefault(key, {})[version] = (done, source)
        inf = float("inf")
        proxy_stale, worst_direct, impossible = [], 0.0, []
        # per key: for version v, the earliest commit among versions > v (all / proxy only)
        suffix = {}
        for key, vers in by_key.items():
            top = max(vers)
            best_all, best_proxy = [inf] * (top + 2), [inf] * (top + 2)
            for v in range(top, 0, -1):
                done, source = vers.get(v, (inf, None))
                best_all[v - 1] = min(best_all[v], done)
                best_proxy[v - 1] = min(best_proxy[v], done if source == "proxy" else inf)
            suffix[key] = (top, best_all, best_proxy)
        for key, start, version, mode in self.reads:
            top, best_all, best_proxy = suffix.get(key, (initial, [inf], [inf]))
            if version is None or version < initial or version > top:
                impossible.append((key, start, version, mode))
                continue
            if version >= len(best_all):
                continue
            if best_proxy[version] < start:
                proxy_stale.append((key, version, mode, start - best_proxy[version]))
            elif best_all[version] < start and start - best_all[version] > worst_direct:
                worst_direct = start - best_all[version]
                self.worst = (key, version, mode)
        return proxy_stale, worst_direct, impossible


class ReplicationTest(CacheCase):
    """cache_invalidation = replication, cache_publication = pgcoalesce_cache
    (made beforehand by postgres; app_scram has REPLICATION)."""

    cache_settings = {"cache_invalidation": "replication", "cache_publication": PUBLICATION}

    @classmethod
    def make_schema(cls, pg):
        replication_ready(pg)
        pg.execute("DROP TABLE IF EXISTS cr, cr_trunc, cr_race, cr_conc")
        pg.execute("CREATE TABLE cr (id int PRIMARY KEY, v int NOT NULL)")
        pg.execute("INSERT INTO cr SELECT i, 0 FROM generate_series(1, 50) i")
        pg.execute("CREATE TABLE cr_trunc (id int PRIMARY KEY, v text)")
        pg.execute("INSERT INTO cr_trunc SELECT i, 'x' FROM generate_series(1, 5) i")
        pg.execute("CREATE TABLE cr_race (id int PRIMARY KEY, v int NOT NULL)")
        pg.execute("INSERT INTO cr_race SELECT i, 0 FROM generate_series(1, 10) i")
        pg.execute("CREATE TABLE cr_conc (id int PRIMARY KEY, v int NOT NULL)")
        pg.execute("INSERT INTO cr_conc SELECT i, 0 FROM generate_series(1, 20) i")
        pg.execute("DROP TABLE IF EXISTS cr_text, cr_uuid, cr_big, cr_comp")
        pg.execute("CREATE TABLE cr_text (k text PRIMARY KEY, v int NOT NULL)")
        pg.execute("INSERT INTO cr_text VALUES ('it''s \\ a key', 0), ('\u00fcn\u00ef', 0)")
        pg.execute("CREATE TABLE cr_uuid (u uuid PRIMARY KEY, v int NOT NULL)")
        pg.execute("INSERT INTO cr_uuid VALUES (%s, 0)", (UUID1,))
        pg.execute("CREATE TABLE cr_big (id bigint PRIMARY KEY, v int NOT NULL)")
        pg.execute("INSERT INTO cr_big VALUES (%s, 0), (-7, 0)", (BIG,))
        pg.execute("CREATE TABLE cr_comp (b text, a int, v int NOT NULL, PRIMARY KEY (a, b))")
        pg.execute("INSERT INTO cr_comp VALUES ('x', 1, 0), ('y', 1, 0)")
        pg.execute("GRANT ALL ON cr, cr_trunc, cr_race, cr_conc, cr_text, cr_uuid, cr_big, "
                   "cr_comp TO PUBLIC")
        # the stream starts with the pool's first cacheable read
        c = cls.proxy.connect(autocommit=True)
        try:
            def streaming():
                with c.cursor() as cur:
                    cur.execute("SELECT v FROM cr WHERE id = 50")
                    cur.fetchall()
                return cache_json(cls.proxy)["replication_streams"] == 1
            wait_until(streaming, timeout=20, message="replication_streams = 1: %r"
                       % (cache_json(cls.proxy),))
        finally:
            c.close()

    def setUp(self):
        super().setUp()
        self.conn = self.proxy.connect(autocommit=True)
        self.addCleanup(self.conn.close)
        self.direct = self.pg.connect(options=SYNC_COMMIT)
        self.addCleanup(self.direct.close)

    def read(self, table, k, conn=None):
        with (conn or self.conn).cursor() as cur:
            cur.execute("SELECT v FROM %s WHERE id = %%s" % table, (k,))
            row = cur.fetchone()
            return None if row is None else row[0]

    def write_direct(self, sql, args=None):
        with self.direct.cursor() as cur:
            cur.execute(sql, args)
            row = cur.fetchone() if cur.description else None
        return row[0] if row else None

    def seen_within(self, label, read, want):
        took = poll_until(read, want)
        self.assertIsNotNone(took, "%s: the direct write was not seen within 2 s (%r; %r)"
                             % (label, read(), self.stats()))
        self.assertLess(took, 1.0, "%s: seen after %.3f s" % (label, took))
        st = self.stats()
        note("%s: visible through the proxy %.0f ms after the commit returned "
             "(replication_lag_ms %s, replication_max_lag_ms %s)", label, took * 1e3,
             st["replication_lag_ms"], st["replication_max_lag_ms"])
        return took

    def cached(self, table, k):
        self.warm(lambda: self.read(table, k))
        return self.assert_hit(lambda: self.read(table, k))

    def test_direct_update_seen(self):
        old = self.cached("cr", 1)
        st0 = self.stats()
        new = self.write_direct("UPDATE cr SET v = v + 1 WHERE id = 1 RETURNING v")
        self.assertEqual(new, old + 1)
        self.seen_within("direct UPDATE", lambda: self.read("cr", 1), new)
        self.assertGreater(self.stats()["invalidations_replication"],
                           st0["invalidations_replication"])
        # and cached again
        self.assertEqual(self.assert_hit(lambda: self.read("cr", 1)), new)
        # several rows in one transaction
        for k in (2, 3, 4):
            self.cached("cr", k)
        with self.direct.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("UPDATE cr SET v = v + 7 WHERE id IN (2, 3, 4)")
            cur.execute("COMMIT")
        self.seen_within("direct UPDATE of 3 rows", lambda: [self.read("cr", k)
                                                             for k in (2, 3, 4)], [7, 7, 7])

    def test_direct_update_key_types(self):
        """The replication stream's key (text out of the WAL tuple) names the same
        entry as the lookup's (a literal, a text or binary Bind value): text,
        uuid (looked up in upper case), bigint (binary), a composite key in an
        order other than its columns'."""
        c3 = self.proxy.connect3(autocommit=True)
        self.addCleanup(c3.close)
        cases = [
            ("text", lambda: self.q1("SELECT v FROM cr_text WHERE k = 'it''s \\ a key'"),
             "UPDATE cr_text SET v = v + 1 WHERE k = 'it''s \\ a key'"),
            ("text, extended", lambda: c3.execute("SELECT v FROM cr_text WHERE k = %s",
                                                  ("\u00fcn\u00ef",)).fetchone()[0],
             "UPDATE cr_text SET v = v + 1 WHERE k = '\u00fcn\u00ef'"),
            ("uuid", lambda: self.q1("SELECT v FROM cr_uuid WHERE u = '%s'" % UUID1.upper()),
             "UPDATE cr_uuid SET v = v + 1 WHERE u = '%s'" % UUID1),
            ("uuid, binary", lambda: c3.execute("SELECT v FROM cr_uuid WHERE u = %b",
                                                (uuid.UUID(UUID1),)).fetchone()[0],
             "UPDATE cr_uuid SET v = v + 1 WHERE u = '%s'" % UUID1),
            ("bigint, binary", lambda: c3.execute("SELECT v FROM cr_big WHERE id = %b",
                                                  (BIG,)).fetchone()[0],
             "UPDATE cr_big SET v = v + 1 WHERE id = %d" % BIG),
            ("bigint negative", lambda: self.q1("SELECT v FROM cr_big WHERE id = -7"),
             "UPDATE cr_big SET v = v + 1 WHERE id = -7"),
            ("composite", lambda: self.q1("SELECT v FROM cr_comp WHERE a = 1 AND b = 'x'"),
             "UPDATE cr_comp SET v = v + 1 WHERE a = 1 AND b = 'x'"),
            ("composite, reversed", lambda: self.q1("SELECT v FROM cr_comp WHERE b = 'y' "
                                                    "AND a = 1"),
             "UPDATE cr_comp SET v = v + 1 WHERE a = 1 AND b = 'y'"),
        ]
        for label, read, write in cases:
            with self.subTest(label):
                self.warm(read)
                old = self.assert_hit(read)
                self.write_direct(write)
                self.seen_within("direct UPDATE, %s key" % label, read, old + 1)

    def q1(self, sql):
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]

    def test_direct_delete_seen(self):
        self.assertIsNotNone(self.cached("cr", 10))
        self.write_direct("DELETE FROM cr WHERE id = 10")
        self.seen_within("direct DELETE", lambda: self.read("cr", 10), None)

    def test_direct_key_change_seen(self):
        """UPDATE ... SET id = ...: the old key's entry goes."""
        self.assertIsNotNone(self.cached("cr", 11))
        self.write_direct("UPDATE cr SET id = 1011 WHERE id = 11")
        self.seen_within("direct UPDATE of the primary key", lambda: self.read("cr", 11), None)
        self.assertEqual(self.read("cr", 1011), 0)

    def test_direct_truncate_seen(self):
        for k in (1, 2):
            self.assertEqual(self.cached("cr_trunc", k), "x")
        st0 = self.stats()
        self.write_direct("TRUNCATE cr_trunc")
        self.seen_within("direct TRUNCATE", lambda: [self.read("cr_trunc", k) for k in (1, 2)],
                         [None, None])
        self.assertGreater(self.stats()["table_bumps"], st0["table_bumps"])

    def test_stream_restart_invalidates_everything(self):
        """The walsender is killed and a direct write lands while the stream is
        down: while it is down the cache is bypassed (writes made elsewhere are
        not heard), so the write is seen at once; the proxy reconnects and,
        having maybe missed changes, moves the epoch on; hits resume."""
        old = self.cached("cr", 20)
        st0 = self.stats()
        pids = self.pg.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender'")
        self.assertEqual(len(pids), 1, pids)
        self.pg.execute("SELECT pg_terminate_backend(%s)", pids[0])
        wait_until(lambda: self.stats()["replication_streams"] == 0, message="stream seen down")
        new = self.write_direct("UPDATE cr SET v = v + 1 WHERE id = 20 RETURNING v")
        self.assertEqual(new, old + 1)
        took = poll_until(lambda: self.read("cr", 20), new, timeout=10)
        st1 = self.stats()
        self.assertIsNotNone(took, "not seen while the stream was down: %r" % (st1,))
        wait_until(lambda: self.stats()["replication_streams"] == 1, message="streaming again")
        st2 = self.stats()
        self.assertGreater(st2["epoch_bumps"], st0["epoch_bumps"])
        self.assertGreater(st2["bypass_replication"], st0["bypass_replication"])
        self.assertEqual(self.cached("cr", 20), new)
        note("direct write during a replication reconnect: seen after %.0f ms", took * 1e3)

    def set_standby_names(self, value):
        """synchronous_standby_names for the whole server, applied when a new
        session shows it."""
        if value:
            self.pg.execute("ALTER SYSTEM SET synchronous_standby_names = %s", (value,))
        else:
            self.pg.execute("ALTER SYSTEM RESET synchronous_standby_names")
        self.pg.execute("SELECT pg_reload_conf()")
        wait_until(lambda: self.pg.query("SHOW synchronous_standby_names")[0][0] == value,
                   message="synchronous_standby_names = %r" % value)

    def test_commit_streamed_before_visible(self):
        """Logical decoding sends a commit once its WAL is flushed, which is
        before other sessions can see it (a synchronous standby, or just a
        descheduled backend, holds the committing session in between). A read
        in that window reaches PostgreSQL after the invalidation arrived and
        gets the old row; it must not stay cached once the commit is visible.

        Made deterministic with synchronous_standby_names naming a standby that
        does not exist: the direct UPDATE's commit is flushed and streamed but
        waits (SyncRep); then pg_cancel_backend lets it finish ("committed
        locally") and it becomes visible."""
        self.assertEqual(self.cached("cr", 30), 0)
        writer = self.pg.connect(options=SYNC_COMMIT)
        self.addCleanup(writer.close)
        pid = writer.get_backend_pid()
        self.set_standby_names("pgc_no_such_standby")
        done = {}
        try:
            st0 = self.stats()

            def update():
                try:
                    with writer.cursor() as cur:
                        cur.execute("UPDATE cr SET v = 99 WHERE id = 30")
                    done["ok"] = True
                except Exception as e:  # noqa: BLE001
                    done["error"] = e
            th = threading.Thread(target=update, daemon=True)
            th.start()
            wait_until(lambda: self.pg.query("SELECT wait_event FROM pg_stat_activity WHERE "
                                             "pid = %s", (pid,)) == [("SyncRep",)],
                       message="the commit waits for the standby")
            wait_until(lambda: self.stats()["invalidations_replication"]
                       > st0["invalidations_replication"], timeout=5,
                       message="the commit streamed")
            # not visible yet: PostgreSQL still has the old row, so does the proxy
            self.assertEqual(direct_row(self.pg, "SELECT v FROM cr WHERE id = 30"), (0,))
            self.assertEqual([self.read("cr", 30) for _ in range(3)], [0, 0, 0])
            self.pg.execute("SELECT pg_cancel_backend(%s)", (pid,))
            th.join(10)
            self.assertEqual(done, {"ok": True})
        finally:
            self.set_standby_names("")
        self.assertEqual(direct_row(self.pg, "SELECT v FROM cr WHERE id = 30"), (99,))
        took = poll_until(lambda: self.read("cr", 30), 99, timeout=3)
        st1 = self.stats()
        self.assertIsNotNone(took, "the commit is visible in PostgreSQL but the proxy still "
                                   "answers the old row (from the cache: %r)"
                             % delta(st1, st0, "hits", "misses", "fills", "fills_refused"))
        self.assertLess(took, 1.0)

    def test_fill_refused_after_invalidation(self):
        """A read that began before a write committed must not store what it read.

        T1 holds ACCESS EXCLUSIVE on cr_race; T2 queues for the same lock; the
        proxy's read of a cold key misses in Redis, reaches PostgreSQL and
        queues behind T2. T1 updates the row and commits: T2 gets the lock,
        the read still waits, and the change reaches the proxy through
        replication (invalidations_replication grows). T2 ends, the read
        completes, and its fill carries the row version its lookup saw, which
        has moved on: refused."""
        self.cached("cr_race", 2)  # the catalog knows the table
        waiting = ("SELECT count(*) FROM pg_locks WHERE relation = 'cr_race'::regclass "
                   "AND NOT granted")
        t1 = self.pg.connect(autocommit=False, options=SYNC_COMMIT)
        t2 = self.pg.connect(autocommit=False)
        self.addCleanup(t1.close)
        self.addCleanup(t2.close)
        release = threading.Event()
        result = {}

        def locker():
            try:
                with t2.cursor() as cur:
                    cur.execute("LOCK TABLE cr_race IN ACCESS EXCLUSIVE MODE")
                result["t2"] = "locked"
                release.wait(20)
                t2.rollback()
            except Exception as e:  # noqa: BLE001 - reported below
                result["t2"] = e

        def reader():
            try:
                c = self.proxy.connect(autocommit=True)
                try:
                    result["read"] = self.read("cr_race", 1, c)
                finally:
                    c.close()
            except Exception as e:  # noqa: BLE001
                result["read"] = e

        with t1.cursor() as cur:
            cur.execute("LOCK TABLE cr_race IN ACCESS EXCLUSIVE MODE")
        th2 = threading.Thread(target=locker, daemon=True)
        th2.start()
        wait_until(lambda: self.pg.query(waiting)[0][0] == 1, message="T2 queued")
        st0 = self.stats()
        thr = threading.Thread(target=reader, daemon=True)
        thr.start()
        wait_until(lambda: self.pg.query(waiting)[0][0] == 2, message="the read queued")
        self.assertEqual(self.stats()["misses"] - st0["misses"], 1, "the read's lookup missed")
        with t1.cursor() as cur:
            cur.execute("UPDATE cr_race SET v = 42 WHERE id = 1")
        t1.commit()
        wait_until(lambda: result.get("t2") is not None, message="T2 has the lock")
        wait_until(lambda: self.stats()["invalidations_replication"]
                   > st0["invalidations_replication"], timeout=5,
                   message="the UPDATE arrived through replication")
        self.assertTrue(thr.is_alive(), "the read must still be waiting for T2")
        release.set()
        thr.join(10)
        th2.join(10)
        self.assertEqual(result.get("read"), 42)
        wait_until(lambda: self.stats()["fills_refused"] > st0["fills_refused"], timeout=5,
                   message="fills_refused grew: %r" % (delta(self.stats(), st0, "fills",
                                                             "fills_refused", "fills_skipped"),))
        self.assertEqual(self.read("cr_race", 1), 42)
        self.assertEqual(self.read("cr_race", 1), 42)

    def test_fill_racing_a_direct_write(self):
        """The simpler race: T1 holds the lock, the proxy's read of a cold key
        waits, T1 updates that row and commits. Whichever of the fill and the
        invalidation reaches Redis first, nothing stale is kept."""
        self.cached("cr_race", 2)
        t1 = self.pg.connect(autocommit=False, options=SYNC_COMMIT)
        self.addCleanup(t1.close)
        result = {}

        def reader():
            c = self.proxy.connect(autocommit=True)
            try:
                result["read"] = self.read("cr_race", 3, c)
            finally:
                c.close()

        with t1.cursor() as cur:
            cur.execute("LOCK TABLE cr_race IN ACCESS EXCLUSIVE MODE")
        st0 = self.stats()
        thr = threading.Thread(target=reader, daemon=True)
        thr.start()
        wait_until(lambda: self.pg.query("SELECT count(*) FROM pg_locks WHERE relation = "
                                         "'cr_race'::regclass AND NOT granted")[0][0] == 1,
                   message="the read queued")
        with t1.cursor() as cur:
            cur.execute("UPDATE cr_race SET v = 43 WHERE id = 3")
        t1.commit()
        thr.join(10)
        self.assertEqual(result.get("read"), 43)
        time.sleep(0.2)  # let replication deliver whatever it will
        self.assertEqual([self.read("cr_race", 3) for _ in range(5)], [43] * 5)
        st1 = self.stats()
        note("fill racing a direct write: %r", delta(st1, st0, "fills", "fills_refused", "hits",
                                                     "misses"))

    def test_randomized_history(self):
        """28 s of proxy writers, a direct writer and proxy readers (autocommit
        and READ COMMITTED transactions) on 20 counters. No read that began
        after a through-proxy write committed may see an older version; behind
        direct writes a read may lag by the replication delay only (< 1 s)."""
        nkeys, duration = 20, 28.0
        hist = History()
        st0 = self.stats()
        deadline = time.monotonic() + duration

        def guarded(fn):
            def run(i):
                try:
                    fn(i)
                except Exception as e:  # noqa: BLE001 - every client error fails the test
                    hist.errors.append("%s %d: %r" % (fn.__name__, i, e))
            return run

        @guarded
        def proxy_writer(i):
            rnd = random.Random(1000 + i)
            conn = self.proxy.connect(autocommit=True)
            try:
                with conn.cursor() as cur:
                    while time.monotonic() < deadline:
                        k = rnd.randint(1, nkeys)
                        if rnd.random() < 0.5:
                            cur.execute("UPDATE cr_conc SET v = v + 1 WHERE id = %s "
                                        "RETURNING v", (k,))
                            v = cur.fetchone()[0]
                        else:
                            cur.execute("BEGIN")
                            cur.execute("UPDATE cr_conc SET v = v + 1 WHERE id = %s "
                                        "RETURNING v", (k,))
                            v = cur.fetchone()[0]
                            cur.execute("COMMIT")
                        hist.write(k, v, time.monotonic(), "proxy")
                        time.sleep(rnd.uniform(0.01, 0.06))
            finally:
                conn.close()

        @guarded
        def direct_writer(i):
            rnd = random.Random(2000 + i)
            conn = self.pg.connect(user=USER, autocommit=True, options=SYNC_COMMIT)
            try:
                with conn.cursor() as cur:
                    while time.monotonic() < deadline:
                        k = rnd.randint(1, nkeys)
                        cur.execute("UPDATE cr_conc SET v = v + 1 WHERE id = %s RETURNING v",
                                    (k,))
                        v = cur.fetchone()[0]
                        hist.write(k, v, time.monotonic(), "direct")
                        time.sleep(rnd.uniform(0.01, 0.06))
            finally:
                conn.close()

        @guarded
        def reader(i):
            rnd = random.Random(3000 + i)
            auto = self.proxy.connect(autocommit=True)
            tx = self.proxy.connect()
            try:
                while time.monotonic() < deadline:
                    if rnd.random() < 0.6:
                        k = rnd.randint(1, nkeys)
                        t = time.monotonic()
                        hist.read(k, t, self.read("cr_conc", k, auto), "autocommit")
                    else:
                        for _ in range(rnd.randint(1, 4)):
                            k = rnd.randint(1, nkeys)
                            t = time.monotonic()
                            hist.read(k, t, self.read("cr_conc", k, tx), "read committed")
                        tx.commit()
            finally:
                auto.close()
                tx.close()

        threads = ([threading.Thread(target=proxy_writer, args=(i,), daemon=True)
                    for i in range(2)]
                   + [threading.Thread(target=direct_writer, args=(0,), daemon=True)]
                   + [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(3)])
        for t in threads:
            t.start()
        for t in threads:
            t.join(duration + 30)
        st1 = self.stats()
        self.assertEqual(hist.errors, [])
        final = dict(self.pg.query("SELECT id, v FROM cr_conc"))
        # quiet now: within a second every key reads as PostgreSQL has it
        quiet = poll_until(lambda: [self.read("cr_conc", k) for k in range(1, nkeys + 1)],
                           [final[k] for k in range(1, nkeys + 1)], timeout=1.0, interval=0.05)
        self.assertIsNotNone(quiet, "after the workload, the proxy answers %r; PostgreSQL has %r"
                             % ([self.read("cr_conc", k) for k in range(1, nkeys + 1)],
                                [final[k] for k in range(1, nkeys + 1)]))
        for k in range(1, nkeys + 1):
            self.assertEqual(final[k], len([w for w in hist.writes if w[0] == k]),
                             "key %d: every write counted once" % k)
        proxy_stale, worst, impossible = hist.check(0)
        d = delta(st1, st0, "hits", "misses", "lookups", "fills", "fills_refused",
                  "bypass_timeout", "bypass_isolation", "bypass_catalog",
                  "invalidations_replication", "invalidations_statement",
                  "invalidations_commit")
        nreads = len(hist.reads)
        ratio = d["hits"] / nreads if nreads else 0.0
        nproxy = len([w for w in hist.writes if w[3] == "proxy"])
        note("randomized history: %d reads (%d in transactions), %d proxy writes, %d direct "
             "writes; hits %d (%.1f%% of reads), misses %d, fills %d, fills_refused %d, "
             "bypass_timeout %d; worst staleness behind a direct write %.1f ms "
             "(key, version read, mode: %r); replication_max_lag_ms %s", nreads,
             len([r for r in hist.reads if r[3] != "autocommit"]), nproxy,
             len(hist.writes) - nproxy, d["hits"], 100 * ratio, d["misses"], d["fills"],
             d["fills_refused"], d["bypass_timeout"], worst * 1e3, hist.worst,
             st1["replication_max_lag_ms"])
        self.assertEqual(impossible[:10], [], "reads of versions never written")
        self.assertEqual(proxy_stale[:10], [],
                         "%d reads older than a through-proxy write that had committed "
                         "before they began (key, version read, mode, seconds late)"
                         % len(proxy_stale))
        self.assertLess(worst, 1.0, "a read %.3f s behind a direct write" % worst)
        self.assertGreater(nreads, 1000)
        self.assertGreater(nproxy, 100)
        self.assertGreater(len(hist.writes) - nproxy, 50)
        self.assertGreater(d["hits"], 0)
        self.assertGreater(ratio, 0.4, "hits %r of %d reads" % (d, nreads))


class OwnPublicationTest(harness.PgTestCase):
    """cache_publication empty: the proxy uses publication pgcoalesce_cache and
    creates it FOR ALL TABLES when missing, which only a superuser may; a pool
    of another user says what to do instead."""

    def setUp(self):
        super().setUp()
        self.pg.execute("ALTER ROLE app_scram REPLICATION")
        self.pg.execute("DROP PUBLICATION IF EXISTS %s" % PUBLICATION)
        self.pg.execute("DROP TABLE IF EXISTS cr_own")
        self.pg.execute("CREATE TABLE cr_own (id int PRIMARY KEY, v int NOT NULL)")
        self.pg.execute("INSERT INTO cr_own SELECT i, 0 FROM generate_series(1, 5) i")
        self.pg.execute("GRANT ALL ON cr_own TO PUBLIC")
        self.proxy = harness.Proxy(self.pg, dict(
            ADMIN_SETTINGS, cache_url=harness.redis().url, cache_timeout=LOOKUP_TIMEOUT,
            cache_namespace="townpub", cache_invalidation="replication"), users=ADMIN_USERS)
        self.proxy.start()
        self.addCleanup(self.proxy.cleanup)

    def tearDown(self):
        # the publication is left for other tests; put it back if this one dropped it
        replication_ready(self.pg)
        super().tearDown()

    def read(self, conn, k):
        with conn.cursor() as cur:
            cur.execute("SELECT v FROM cr_own WHERE id = %s", (k,))
            return cur.fetchone()[0]

    def test_superuser_pool_creates_the_publication(self):
        conn = self.proxy.connect(user="postgres", autocommit=True)
        self.addCleanup(conn.close)
        wait_until(lambda: self.read(conn, 1) is not None
                   and cache_json(self.proxy)["replication_streams"] == 1, timeout=20,
                   message="streaming: %r" % (cache_json(self.proxy),))
        self.assertEqual(self.pg.query("SELECT puballtables FROM pg_publication WHERE "
                                       "pubname = %s", (PUBLICATION,)), [(True,)])
        # and it works: a direct write is seen
        c2 = self.proxy.connect(user="postgres", autocommit=True)
        self.addCleanup(c2.close)

        def read():
            return self.read(c2, 2)

        def once():
            before = cache_json(self.proxy)["hits"]
            read()
            return cache_json(self.proxy)["hits"] > before
        wait_until(once, timeout=15, message="a hit")
        with self.pg.connect(options=SYNC_COMMIT) as d, d.cursor() as cur:
            cur.execute("UPDATE cr_own SET v = 5 WHERE id = 2")
        took = poll_until(read, 5)
        self.assertIsNotNone(took)
        self.assertLess(took, 1.0)
        self.proxy.check_stopped_cleanly()
        self.pg.wait_no_backends()

    def test_other_user_is_told_to_set_cache_publication(self):
        conn = self.proxy.connect(autocommit=True)
        self.addCleanup(conn.close)

        def failed():
            self.read(conn, 1)
            st = cache_json(self.proxy)
            return st["replication_failures"] > 0 and st
        st = wait_until(failed, timeout=20, message="the stream failed")
        self.assertEqual(st["replication_streams"], 0)
        self.assertIn("cache_publication", st["replication_last_error"])
        self.assertEqual(self.pg.query("SELECT 1 FROM pg_publication WHERE pubname = %s",
                                       (PUBLICATION,)), [])
        # reads are still answered, by PostgreSQL
        self.assertEqual(self.read(conn, 1), 0)
        self.proxy.check_stopped_cleanly()
        self.pg.wait_no_backends()


# ============================================================ 7. Redis failures


class OwnRedis(harness.Redis):
    """A Redis of the test's own, which it may kill, freeze and start again on
    the same port."""

    def start(self):
        super().start()
        self.argv = list(self.proc.args)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self._ping(), timeout=20, message="redis answering PING again")

    def _ping(self):
        try:
            return self.command("PING") == "PONG"
        except (OSError, RuntimeError):
            return False


class RedisFailureTest(CacheCase):
    """Redis dies or freezes under a workload: clients never see it. Readers and
    writers run in threads; every answer is checked against the history of
    committed versions; afterwards the cache works again. cache_timeout is the
    default (5 ms) here, except where a test says otherwise."""

    @classmethod
    def setUpClass(cls):
        cls.own_redis = OwnRedis()
        cls.own_redis.start()
        cls.cache_settings = {"cache_url": cls.own_redis.url, "cache_timeout": "0.005",
                              "cache_connect_timeout": "0.5"}
        try:
            super().setUpClass()
        except BaseException:
            cls.own_redis.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            if cls.own_redis.proc is not None and cls.own_redis.proc.poll() is None:
                cls.own_redis.proc.send_signal(signal.SIGCONT)
            cls.own_redis.stop()

    @classmethod
    def make_schema(cls, pg):
        pg.execute("DROP TABLE IF EXISTS crf")
        pg.execute("CREATE TABLE crf (id int PRIMARY KEY, v int NOT NULL)")
        pg.execute("INSERT INTO crf SELECT i, 0 FROM generate_series(1, 10) i")
        pg.execute("GRANT ALL ON crf TO PUBLIC")

    def read(self, conn, k):
        with conn.cursor() as cur:
            cur.execute("SELECT v FROM crf WHERE id = %s", (k,))
            return cur.fetchone()[0]

    def workload(self, seconds, during, nreaders=3, nwriters=2):
        """Readers and writers through the proxy for `seconds`; during(t0) runs
        in this thread meanwhile. Returns (history, slowest statement in s)."""
        hist = History()
        base = dict(self.pg.query("SELECT id, v FROM crf"))
        slowest = [0.0]
        deadline = time.monotonic() + seconds

        def timed(fn, *args):
            t = time.monotonic()
            r = fn(*args)
            took = time.monotonic() - t
            if took > slowest[0]:
                slowest[0] = took
            return t, r

        def reader(i):
            rnd = random.Random(i)
            try:
                conn = self.proxy.connect(autocommit=True)
                tx = self.proxy.connect()
                try:
                    while time.monotonic() < deadline:
                        k = rnd.randint(1, 10)
                        c = auto = conn if rnd.random() < 0.7 else tx
                        t, v = timed(self.read, c, k)
                        hist.read(k, t, v - base[k],
                                  "autocommit" if auto is conn else "read committed")
                        if c is tx:
                            tx.commit()
                finally:
                    conn.close()
                    tx.close()
            except Exception as e:  # noqa: BLE001
                hist.errors.append("reader %d: %r" % (i, e))

        def writer(i):
            rnd = random.Random(100 + i)
            try:
                conn = self.proxy.connect(autocommit=True)
                try:
                    with conn.cursor() as cur:
                        while time.monotonic() < deadline:
                            k = rnd.randint(1, 10)
                            t, _ = timed(cur.execute, "UPDATE crf SET v = v + 1 WHERE id = %s "
                                         "RETURNING v", (k,))
                            hist.write(k, cur.fetchone()[0] - base[k], time.monotonic(),
                                       "proxy")
                            time.sleep(rnd.uniform(0.005, 0.03))
                finally:
                    conn.close()
            except Exception as e:  # noqa: BLE001
                hist.errors.append("writer %d: %r" % (i, e))

        threads = ([threading.Thread(target=reader, args=(i,), daemon=True)
                    for i in range(nreaders)]
                   + [threading.Thread(target=writer, args=(i,), daemon=True)
                      for i in range(nwriters)])
        for t in threads:
            t.start()
        try:
            during(time.monotonic())
        finally:
            for t in threads:
                t.join(seconds + 30)
        return hist, slowest[0]

    def check_history(self, hist, label):
        self.assertEqual(hist.errors, [], "%s: client errors" % label)
        stale, _, impossible = hist.check(0)
        self.assertEqual(impossible[:10], [], label)
        self.assertEqual(stale[:10], [], "%s: %d reads older than a committed write"
                         % (label, len(stale)))
        self.assertGreater(len(hist.reads), 100, label)
        self.assertGreater(len(hist.writes), 20, label)

    def wait_hits(self):
        conn = self.proxy.connect(autocommit=True)
        try:
            def hit():
                before = self.stats()["hits"]
                self.read(conn, 1)
                return self.stats()["hits"] > before
            wait_until(hit, timeout=15, message="hits again")
        finally:
            conn.close()

    def test_redis_killed_and_restarted(self):
        self.wait_hits()
        st0 = self.stats()

        def during(t0):
            time.sleep(1.0)
            self.own_redis.kill()
            wait_until(lambda: not self.stats()["redis_ready"], timeout=5,
                       message="redis_ready false after SIGKILL")
            time.sleep(1.5)
            self.own_redis.restart()
        hist, slowest = self.workload(4.5, during)
        self.check_history(hist, "Redis killed")
        wait_until(lambda: self.stats()["redis_ready"], timeout=15,
                   message="redis_ready again after the restart")
        self.wait_hits()
        st1 = self.stats()
        d = delta(st1, st0, "hits", "misses", "bypass_redis", "bypass_error", "bypass_timeout",
                  "invalidations_lost", "epoch_bumps", "redis_failures")
        note("Redis killed: %d reads, %d writes, 0 client errors, slowest statement %.0f ms; %r",
             len(hist.reads), len(hist.writes), slowest * 1e3, d)
        self.assertGreater(d["bypass_redis"] + d["bypass_error"], 0, d)
        self.assertLess(slowest, 1.0, "a statement took %.3f s around the kill" % slowest)
        self.assertEqual(show_cache(self.proxy)["redis_ready"], "yes")

    def test_redis_frozen(self):
        """SIGSTOP: the connection stays up but nothing answers. Lookups give up
        after cache_timeout (bypass_timeout grows); statements stay fast."""
        self.wait_hits()
        st0 = self.stats()

        def during(t0):
            time.sleep(0.7)
            self.own_redis.proc.send_signal(signal.SIGSTOP)
            try:
                time.sleep(2.0)
            finally:
                self.own_redis.proc.send_signal(signal.SIGCONT)
        hist, slowest = self.workload(4.0, during)
        self.check_history(hist, "Redis frozen")
        st1 = self.stats()
        d = delta(st1, st0, "hits", "misses", "bypass_timeout", "bypass_redis", "bypass_error")
        note("Redis frozen 2 s: %d reads, %d writes, slowest statement %.0f ms; %r",
             len(hist.reads), len(hist.writes), slowest * 1e3, d)
        self.assertGreater(d["bypass_timeout"], 0, d)
        self.assertLess(slowest, 1.0, "a statement took %.3f s while Redis was frozen" % slowest)
        self.wait_hits()

    def test_redis_connection_cut_data_kept(self):
        """CLIENT KILL cuts the proxy's Redis connection again and again while
        writes pass; Redis keeps its data, so entries filled before a cut are
        still there after it: none may be served once a write it missed has
        committed (the proxy moves the epoch on when invalidations were lost)."""
        self.wait_hits()
        st0 = self.stats()

        def during(t0):
            for _ in range(6):
                time.sleep(0.4)
                try:
                    self.own_redis.command("CLIENT", "KILL", "TYPE", "normal")
                except (OSError, RuntimeError):
                    pass
        hist, slowest = self.workload(3.5, during)
        self.check_history(hist, "Redis connection cut")
        wait_until(lambda: self.stats()["redis_ready"], timeout=15, message="redis_ready")
        self.wait_hits()
        d = delta(self.stats(), st0, "hits", "misses", "bypass_redis", "bypass_error",
                  "invalidations_lost", "epoch_bumps", "redis_failures")
        note("Redis connection cut 6 times: %d reads, %d writes, slowest %.0f ms; %r",
             len(hist.reads), len(hist.writes), slowest * 1e3, d)
        self.assertLess(slowest, 1.0, "a statement took %.3f s around the cuts" % slowest)


# ============================================================ 10. limits, several pgcoalesce


class LimitsTest(CacheCase):
    """cache_max_value = 2048: bigger answers are not stored; empty answers and
    errors are never stored; two pgcoalesce on one Redis and namespace share
    entries and see each other's writes."""

    cache_settings = {"cache_max_value": "2048"}

    @classmethod
    def make_schema(cls, pg):
        pg.execute("DROP TABLE IF EXISTS cl")
        pg.execute("CREATE TABLE cl (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL)")
        pg.execute("INSERT INTO cl SELECT i, 'small ' || i, i FROM generate_series(1, 20) i")
        pg.execute("UPDATE cl SET v = repeat('x', 5000) WHERE id = 2")
        pg.execute("UPDATE cl SET v = repeat('y', 1800) WHERE id = 3")  # fits
        # a DataRow over 1 MiB: relayed as it streams in, never kept whole
        pg.execute("UPDATE cl SET v = repeat('z', 3 * 1024 * 1024) WHERE id = 4")
        pg.execute("ALTER TABLE cl OWNER TO app_scram")  # it alters the table through the proxy

    def setUp(self):
        super().setUp()
        self.conn = self.proxy.connect(autocommit=True)
        self.addCleanup(self.conn.close)

    def q(self, sql, args=None, conn=None):
        with (conn or self.conn).cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None

    def read(self, k, conn=None):
        return self.q("SELECT v, n FROM cl WHERE id = %s", (k,), conn)

    def reads_reach_server(self, k, n, skipped=True):
        calls0, st0 = stmt_calls(self.pg, "cl"), self.stats()
        got = [self.read(k) for _ in range(n)]
        calls1, st1 = stmt_calls(self.pg, "cl"), self.stats()
        d = delta(st1, st0, "hits", "misses", "fills", "fills_skipped")
        self.assertEqual(d["hits"], 0, d)
        self.assertEqual(calls1 - calls0, n, d)
        if skipped:
            self.assertGreaterEqual(d["fills_skipped"], n - 1, d)
        self.assertEqual(d["fills"], 0, d)
        return got

    def test_answer_over_cache_max_value(self):
        self.warm(lambda: self.read(1))
        self.assert_hit(lambda: self.read(1))
        got = self.reads_reach_server(2, 10)
        self.assertEqual(got, [[("x" * 5000, 2)]] * 10)
        # just under the limit: stored
        self.read(3)
        self.assertEqual(self.assert_hit(lambda: self.read(3)), [("y" * 1800, 3)])

    def test_metrics_pass_promtool(self):
        """/metrics with the cache's families is valid Prometheus text, and its
        counters are the ones /cache reports."""
        import urllib.request
        self.warm(lambda: self.read(1))
        self.assert_hit(lambda: self.read(1))
        st = self.stats()
        url = "http://127.0.0.1:%d/metrics" % self.proxy.admin_port
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        checked = adminlib.promtool_check(text)
        if checked is not None:
            self.assertTrue(checked[0], checked[1])
        values = dict(l.rsplit(" ", 1) for l in text.splitlines()
                      if l.startswith("pgcoalesce_cache_") and not l.startswith("#"))
        self.assertEqual(values["pgcoalesce_cache_redis_up"], "1")
        self.assertGreaterEqual(int(values["pgcoalesce_cache_hits_total"]), st["hits"])
        self.assertGreaterEqual(int(values["pgcoalesce_cache_hits_total"]), 1)
        self.assertIn('pgcoalesce_cache_bypass_total{reason="catalog"}', values)
        self.assertIn('pgcoalesce_cache_invalidations_total{source="replication"}', values)

    def test_row_over_a_mebibyte(self):
        """The fill reads messages whole to keep them; a longer one (3 MiB) goes to
        the client as it comes: right answer, server connection kept, not stored."""
        self.warm(lambda: self.read(1))
        got = self.reads_reach_server(4, 3)
        self.assertEqual(got, [[("z" * (3 * 1024 * 1024), 4)]] * 3)
        self.assertEqual(self.read(1), [("small 1", 1)])

    def test_empty_answer_not_stored(self):
        self.warm(lambda: self.read(1))
        self.assertEqual(self.reads_reach_server(999, 10), [[]] * 10)
        # a row inserted behind the proxy's back (not through it: no invalidation)
        self.pg.execute("INSERT INTO cl VALUES (999, 'new', 999)")
        self.assertEqual(self.read(999), [("new", 999)])

    def test_error_not_stored(self):
        self.warm(lambda: self.read(1))
        st0 = self.stats()
        for _ in range(5):
            with self.assertRaises(psycopg2.errors.DivisionByZero):
                self.q("SELECT v, n / (n - n) FROM cl WHERE id = 5")
        d = delta(self.stats(), st0, "hits", "fills", "lookups", "fills_skipped")
        self.assertEqual((d["hits"], d["fills"]), (0, 0), d)
        self.assertEqual((d["lookups"], d["fills_skipped"]), (5, 5), "the cache was asked: %r" % d)

    def second(self):
        """Another pgcoalesce on the same Redis and namespace; (proxy, connection)."""
        other = harness.Proxy(self.pg, dict(self.proxy_settings), users=ADMIN_USERS)
        other.start()
        self.addCleanup(other.cleanup)
        c2 = other.connect(autocommit=True)
        self.addCleanup(c2.close)
        self.warm(lambda: self.read(10))
        self.warm(lambda: self.read(10, c2), proxy=other)
        return other, c2

    def test_two_instances_share_entries(self):
        other, c2 = self.second()
        # filled by the first, a hit on the second
        self.read(11)
        self.assert_hit(lambda: self.read(11))
        calls0 = stmt_calls(self.pg, "cl")
        self.assertEqual(self.assert_hit(lambda: self.read(11, c2), proxy=other),
                         [("small 11", 11)])
        self.assertEqual(stmt_calls(self.pg, "cl"), calls0)
        # DDL through one: the other's SELECT * shows the new column
        star = "SELECT * FROM cl WHERE id = 12"
        self.warm(lambda: self.q(star, conn=c2), proxy=other)
        self.assert_hit(lambda: self.q(star, conn=c2), proxy=other)
        self.q("ALTER TABLE cl ADD COLUMN extra int NOT NULL DEFAULT 7")
        try:
            self.assertEqual(self.q(star, conn=c2), [(12, "small 12", 12, 7)])
        finally:
            self.q("ALTER TABLE cl DROP COLUMN extra")
        self.assertEqual(self.q(star, conn=c2), [(12, "small 12", 12)])
        other.check_stopped_cleanly()

    def test_two_instances_see_each_others_writes(self):
        """An autocommit UPDATE through one: the other's next read has it, 50
        times each way; invalidations_remote grows on the reader's side."""
        other, c2 = self.second()
        ends = [(self.proxy, self.conn, other, c2), (other, c2, self.proxy, self.conn)]
        for n, (wproxy, wconn, rproxy, rconn) in enumerate(ends):
            r0 = cache_json(rproxy)["invalidations_remote"]
            h0 = cache_json(rproxy)["hits"]
            stale = []
            for i in range(50):
                self.read(13, rconn)
                self.read(13, rconn)  # cached on the reader's side
                self.q("UPDATE cl SET n = n + 1 WHERE id = 13 RETURNING n", conn=wconn)
                want = direct_row(self.pg, "SELECT n FROM cl WHERE id = 13")
                got = self.read(13, rconn)
                if got[0][1] != want[0]:
                    stale.append((i, got, want))
            self.assertEqual(stale, [], "direction %d: stale reads on the other instance" % n)
            self.assertGreaterEqual(cache_json(rproxy)["invalidations_remote"] - r0, 50)
            self.assertGreater(cache_json(rproxy)["hits"] - h0, 25, "the reader really cached")
        other.check_stopped_cleanly()

    def test_two_instances_commit_then_read(self):
        """BEGIN; UPDATE through one instance; a reader on the other refills the
        old row meanwhile (the transaction has not committed); COMMIT returns;
        the reader's very next read must have the new row. 200 times each way,
        under CPU pressure."""
        other, c2 = self.second()
        tx1 = self.proxy.connect()
        tx2 = other.connect()
        self.addCleanup(tx1.close)
        self.addCleanup(tx2.close)
        ends = [("first writes, second reads", tx1, c2), ("second writes, first reads", tx2,
                                                          self.conn)]
        for label, tx, rconn in ends:
            stale = []
            with CpuPressure():
                for i in range(200):
                    new = self.q("UPDATE cl SET n = n + 1 WHERE id = 14 RETURNING n",
                                 conn=tx)[0][0]
                    old = self.read(14, rconn)[0][1]
                    self.assertEqual(old, new - 1, "uncommitted: the old row")
                    self.read(14, rconn)
                    tx.commit()
                    got = self.read(14, rconn)[0][1]
                    if got != new:
                        stale.append((i, got, new))
            note("%s: %d of 200 reads right after COMMIT stale", label, len(stale))
            self.assertEqual(stale[:10], [], "%s: %d of 200 reads right after COMMIT returned "
                                             "were stale (iteration, read, committed)"
                             % (label, len(stale)))
        other.check_stopped_cleanly()


# ============================================================ 11. the catalog against PostgreSQL
