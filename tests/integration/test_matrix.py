"""Compatibility matrix, the rows test_compat.py and test_sqlalchemy.py do not
cover: each workload runs once directly against PostgreSQL and once through
pgcoalesce (transaction mode, n1_mode = batch, the identity-map cache on), on
the same fresh schema (dropped and created before each run, through the
run's own connection target: directly, then through pgcoalesce), and
must produce the same JSON-able result both times.

  psql           the psql binary: CRUD, BEGIN/ROLLBACK, a unique violation with
                 ON_ERROR_STOP off, \\copy in and out; stdout and stderr compared
  pgbench        -M simple / extended / prepared, a custom script with -t: zero
                 failures, every transaction processed, the final table state
                 equal to the direct run's
  psycopg2       libpq at the raw level: execute, executemany, COPY in/out, a
                 unique violation caught and the transaction rolled back
  asyncpg        SQLAlchemy 1.4 async engine/session on asyncpg: CRUD, rollback,
                 explicit lazy loads (session.refresh, session.get in fresh
                 sessions), selectinload, joinedload, IntegrityError
  psycopg 3      server-side binding (prepare_threshold=0: named prepared
                 statements): CRUD, rollback, UniqueViolation, parent/child N+1
                 loops by primary key and by foreign key
  Django 3.2     matrixdjangoapp: ORM CRUD, atomic() rolled back by an exception,
                 select_related / prefetch_related, lazy FK access in a loop,
                 IntegrityError on a unique field

After each proxied run the delta of GET /cache (admin port) is printed
("[matrix]" lines); the rows that repeat a primary-key get in autocommit or in
a READ COMMITTED transaction that has not written assert hits > 0.
"""

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import psycopg2
import psycopg2.errors

import adminlib
import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module

try:
    import psycopg
    import psycopg.errors
except ImportError:  # pragma: no cover - Debian has python3-psycopg
    psycopg = None

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import declarative_base, joinedload, relationship, selectinload, sessionmaker

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
PG_BINDIR = harness.PG_BINDIR
CMD_TIMEOUT = 120


def note(fmt, *args):
    sys.stderr.write("\n    [matrix] " + (fmt % args if args else fmt) + "\n")
    sys.stderr.flush()


def jsonable(x):
    """x as JSON would give it back (tuples become lists, ...)."""
    return json.loads(json.dumps(x, sort_keys=True, default=str))


differences = harness.differences


def cache_stats(proxy):
    status, headers, body = adminlib.http(proxy.admin_port, "/cache")
    assert status == 200, (status, body)
    return json.loads(body)


def numeric_delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after
            if isinstance(after[k], (int, float)) and not isinstance(after[k], bool)}


def exec_sql(dsn, sql):
    """Run DDL as the application role on dsn: the direct run's schema is made
    directly, the proxied run's through pgcoalesce (as a migration would be,
    so that the proxy hears of it and forgets what it knew of the old tables)."""
    c = psycopg2.connect(dsn)
    c.autocommit = True
    try:
        with c.cursor() as cur:
            cur.execute(sql)
    finally:
        c.close()


def stmt_calls(pg, regex):
    """pg_stat_statements calls of statements matching regex (whitespace folded)."""
    total = 0
    for query, calls in pg.query("SELECT query, calls FROM pg_stat_statements"):
        if re.search(regex, " ".join(query.split()), re.I):
            total += calls
    return total


class MatrixCase(harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "transaction", "n1_mode": "batch", "pool_size": 3,
                      "max_overflow": 2, "cache_timeout": "0.5"}

    @classmethod
    def setUpClass(cls):
        cls.proxy_settings = dict(cls.proxy_settings, cache_url=harness.redis().url,
                                  cache_namespace="m" + cls.__name__.lower()[:20])
        super().setUpClass()

    def run_both(self, workload, schema=None, label=None):
        """workload(target) with target "direct" or "proxied" -> JSON-able result.
        schema(target): drop and create the tables (before each run, on the target).
        Returns (direct result, proxied result, cache delta of the proxied run)."""
        label = label or self._testMethodName
        if schema:
            schema("direct")
        self.pg.execute("SELECT pg_stat_statements_reset()")
        direct = jsonable(workload("direct"))
        if schema:
            schema("proxied")
        self.pg.execute("SELECT pg_stat_statements_reset()")
        before = cache_stats(self.proxy)
        proxied = jsonable(workload("proxied"))
        cache = numeric_delta(cache_stats(self.proxy), before)
        note("%s: cache lookups %s, hits %s, misses %s (delta %s)", label,
             cache.get("lookups"), cache.get("hits"), cache.get("misses"),
             {k: v for k, v in sorted(cache.items()) if v})
        diff = differences(direct, proxied)
        self.assertFalse(diff, "%s: results through pgcoalesce differ from direct ones:\n  %s"
                         % (label, "\n  ".join(diff)))
        self.assertEqual(direct, proxied)
        return direct, proxied, cache

    def port(self, target):
        return self.pg.port if target == "direct" else self.proxy.port

    def dsn(self, target):
        return self.pg.dsn() if target == "direct" else self.proxy.dsn()

    def libpq_env(self):
        return dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="disable", TZ="UTC",
                    LC_ALL="C.UTF-8", PGAPPNAME="matrix", PSQLRC="/dev/null")

    def warm(self, target, read, timeout=15):
        """Proxied only: run read() (a primary-key get, its answer not recorded)
        until one run was a cache lookup, i.e. the proxy's catalog knows the
        table (looked up asynchronously after the schema changed)."""
        if target != "proxied":
            return
        deadline = time.monotonic() + timeout
        while True:
            before = cache_stats(self.proxy)["lookups"]
            read()
            if cache_stats(self.proxy)["lookups"] > before:
                return
            if time.monotonic() > deadline:
                self.fail("no cache lookup within %d s of repeated primary-key gets: %r"
                          % (timeout, cache_stats(self.proxy)))
            time.sleep(0.05)

    def mark(self, target):
        """Proxied only: the cache counters now, for loop_delta."""
        return cache_stats(self.proxy) if target == "proxied" else None

    def loop_delta(self, target, before, name):
        if target == "proxied":
            self.loops[name] = numeric_delta(cache_stats(self.proxy), before)

    def assert_hits(self, name):
        d = self.loops[name]
        note("%s loop: lookups %s, hits %s, misses %s", name, d.get("lookups"), d.get("hits"),
             d.get("misses"))
        self.assertGreater(d.get("hits", 0), 0,
                           "%s repeats primary-key gets, yet no cache hit through pgcoalesce: "
                           "%r" % (name, d))

    def setUp(self):
        super().setUp()
        self.loops = {}


# ================================================================ psql

PSQL_SCRIPT = r"""
\set ON_ERROR_STOP off
\set VERBOSITY default
\pset pager off
CREATE TABLE mq_items (id int PRIMARY KEY, name text NOT NULL UNIQUE, qty int NOT NULL);
INSERT INTO mq_items VALUES (1, 'apple', 3), (2, 'pear', 5), (3, 'plum', 7);
SELECT * FROM mq_items ORDER BY id;
UPDATE mq_items SET qty = qty * 10 WHERE id >= 2;
DELETE FROM mq_items WHERE id = 1;
SELECT * FROM mq_items WHERE id = 2;
SELECT * FROM mq_items WHERE id = 2;
BEGIN;
INSERT INTO mq_items VALUES (10, 'ghost', 1);
SELECT count(*) AS inside FROM mq_items;
ROLLBACK;
SELECT count(*) AS after_rollback FROM mq_items;
INSERT INTO mq_items VALUES (4, 'pear', 1);
SELECT 'still running after the error' AS status;
BEGIN;
INSERT INTO mq_items VALUES (5, 'fig', 2);
INSERT INTO mq_items VALUES (6, 'fig', 2);
SELECT 1;
ROLLBACK;
\copy mq_items (id, name, qty) from '{copy_in}' with (format csv)
SELECT * FROM mq_items ORDER BY id;
\copy (SELECT id, name, qty FROM mq_items WHERE qty > 4 ORDER BY id) to stdout with (format csv, header)
\copy mq_items to '{copy_out}'
SELECT id, name FROM mq_items WHERE id = 21;
SELECT id, name FROM mq_items WHERE id = 21;
SELECT id, name FROM mq_items WHERE id = 21;
"""


class PsqlTest(MatrixCase):

    def test_psql_script(self):
        psql = shutil.which("psql") or os.path.join(PG_BINDIR, "psql")
        tmp = tempfile.mkdtemp(prefix="pgc-matrix-psql-")
        self.addCleanup(shutil.rmtree, tmp, True)
        copy_in = os.path.join(tmp, "in.csv")
        with open(copy_in, "w") as f:
            for i in range(20, 40):
                f.write("%d,item %d,%d\n" % (i, i, i % 9))
        script = os.path.join(tmp, "script.sql")

        def schema(target):
            exec_sql(self.dsn(target), "DROP TABLE IF EXISTS mq_items")

        def workload(target):
            copy_out = os.path.join(tmp, "out-%s.txt" % target)
            with open(script, "w") as f:
                # the same script text both times: \copy to a file named by a variable
                f.write(PSQL_SCRIPT.format(copy_in=copy_in, copy_out=os.path.join(tmp, "out.txt")))
            r = subprocess.run([psql, "-X", "-d", self.dsn(target), "-f", script],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=CMD_TIMEOUT,
                               env=self.libpq_env())
            os.replace(os.path.join(tmp, "out.txt"), copy_out)
            with open(copy_out) as f:
                out_file = f.read()
            return {"rc": r.returncode, "stdout": r.stdout.splitlines(),
                    "stderr": r.stderr.splitlines(), "copy_out": out_file.splitlines()}

        out, _, cache = self.run_both(workload, schema)
        self.assertEqual(out["rc"], 0, out)
        stdout = "\n".join(out["stdout"])
        errors = [l for l in out["stderr"] if "ERROR" in l]
        self.assertEqual(len(errors), 3, out["stderr"])  # unique, unique, aborted transaction
        self.assertIn("duplicate key value violates unique constraint \"mq_items_name_key\"",
                      errors[0])
        self.assertIn("current transaction is aborted", errors[2])
        self.assertIn("still running after the error", stdout)
        self.assertRegex(stdout, r"inside\s*\n-+\s*\n\s*3\b")
        self.assertRegex(stdout, r"after_rollback\s*\n-+\s*\n\s*2\b")
        self.assertIn("COPY 20", stdout)
        self.assertIn("id,name,qty", stdout)
        self.assertEqual(len(out["copy_out"]), 22)  # 2 rows left + 20 copied in
        self.assertIn("21\titem 21\t3", out["copy_out"])
        self.assertNotIn("10", [l.split("\t")[0] for l in out["copy_out"]])


# ================================================================ pgbench

PGBENCH_SCRIPT = r"""
\set aid :client_id + 1
BEGIN;
UPDATE mb_acct SET bal = bal + :aid, n = n + 1 WHERE id = :aid;
SELECT bal FROM mb_acct WHERE id = :aid;
INSERT INTO mb_hist (aid, delta) VALUES (:aid, :aid);
END;
SELECT id, bal, n FROM mb_acct WHERE id = 8;
UPDATE mb_total SET total = total + 1 WHERE id = 1;
"""


class PgbenchTest(MatrixCase):
    CLIENTS = 4
    TRANSACTIONS = 40

    def schema(self, target):
        exec_sql(self.dsn(target), """
            DROP TABLE IF EXISTS mb_acct, mb_hist, mb_total;
            CREATE TABLE mb_acct (id int PRIMARY KEY, bal bigint NOT NULL, n int NOT NULL);
            INSERT INTO mb_acct SELECT g, 0, 0 FROM generate_series(1, 8) g;
            CREATE TABLE mb_hist (hid serial PRIMARY KEY, aid int NOT NULL, delta int NOT NULL);
            CREATE TABLE mb_total (id int PRIMARY KEY, total int NOT NULL);
            INSERT INTO mb_total VALUES (1, 0);
        """)

    def pgbench(self, mode):
        pgbench = shutil.which("pgbench") or os.path.join(PG_BINDIR, "pgbench")
        tmp = tempfile.mkdtemp(prefix="pgc-matrix-pgbench-")
        self.addCleanup(shutil.rmtree, tmp, True)
        script = os.path.join(tmp, "bench.sql")
        with open(script, "w") as f:
            f.write(PGBENCH_SCRIPT)

        def workload(target):
            r = subprocess.run(
                [pgbench, "-n", "-M", mode, "-c", str(self.CLIENTS), "-j", "2",
                 "-t", str(self.TRANSACTIONS), "-f", script, "-h", "127.0.0.1",
                 "-p", str(self.port(target)), "-U", USER, DB],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, timeout=CMD_TIMEOUT, env=self.libpq_env())
            self.assertEqual(r.returncode, 0, "pgbench -M %s %s failed:\n%s%s"
                             % (mode, target, r.stdout, r.stderr[-3000:]))
            m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", r.stdout)
            f = re.search(r"number of failed transactions: (\d+)", r.stdout)
            self.assertTrue(m and f, r.stdout)
            state = {
                "acct": self.pg.query("SELECT id, bal, n FROM mb_acct ORDER BY id"),
                "hist": self.pg.query("SELECT aid, count(*), sum(delta) FROM mb_hist "
                                      "GROUP BY aid ORDER BY aid"),
                "total": self.pg.query("SELECT total FROM mb_total"),
            }
            return {"processed": [int(m.group(1)), int(m.group(2))],
                    "failed": int(f.group(1)), "state": state}

        out, _, cache = self.run_both(workload, self.schema, "pgbench -M %s" % mode)
        n = self.CLIENTS * self.TRANSACTIONS
        self.assertEqual(out["processed"], [n, n])
        self.assertEqual(out["failed"], 0)
        self.assertEqual(out["state"]["total"], [[n]])
        expected = [[i, (i * self.TRANSACTIONS) if i <= self.CLIENTS else 0,
                     self.TRANSACTIONS if i <= self.CLIENTS else 0] for i in range(1, 9)]
        self.assertEqual(out["state"]["acct"], expected)
        self.assertEqual(out["state"]["hist"],
                         [[i, self.TRANSACTIONS, i * self.TRANSACTIONS]
                          for i in range(1, self.CLIENTS + 1)])
        # mb_acct row 8 is never written: its autocommit pk read is a cache candidate
        self.assertGreater(cache.get("lookups", 0), 0, cache)

    def test_pgbench_simple(self):
        self.pgbench("simple")

    def test_pgbench_extended(self):
        self.pgbench("extended")

    def test_pgbench_prepared(self):
        self.pgbench("prepared")


# ================================================================ psycopg2 (raw libpq)


class Psycopg2RawTest(MatrixCase):

    def test_psycopg2_raw(self):
        def schema(target):
            exec_sql(self.dsn(target), """
                DROP TABLE IF EXISTS mr_items;
                CREATE TABLE mr_items (id int PRIMARY KEY, code text NOT NULL UNIQUE,
                                       qty int NOT NULL, note text);
            """)

        def workload(target):
            out = {}
            c = psycopg2.connect(self.dsn(target))
            try:
                cur = c.cursor()
                cur.execute("INSERT INTO mr_items VALUES (%s, %s, %s, %s)", (1, "a", 1, None))
                cur.executemany("INSERT INTO mr_items VALUES (%s, %s, %s, %s)",
                                [(i, "c%d" % i, i * 2, "n%d" % i) for i in range(2, 30)])
                c.commit()
                out["executemany_rowcount"] = cur.rowcount
                cur.execute("UPDATE mr_items SET qty = qty + 100 WHERE id % 3 = 0")
                out["updated"] = cur.rowcount
                cur.execute("DELETE FROM mr_items WHERE id > %s", (25,))
                out["deleted"] = cur.rowcount
                c.commit()
                buf = io.StringIO("".join("%d\tcopy%d\t%d\t\\N\n" % (i, i, i) for i in range(100, 110)))
                cur.copy_expert("COPY mr_items (id, code, qty, note) FROM STDIN", buf)
                out["copy_in_rowcount"] = cur.rowcount
                c.commit()
                sink = io.StringIO()
                cur.copy_expert("COPY (SELECT * FROM mr_items WHERE id >= 20 ORDER BY id) "
                                "TO STDOUT WITH (FORMAT csv)", sink)
                out["copy_out"] = sink.getvalue().splitlines()
                c.commit()
                # a unique violation inside a transaction, caught, rolled back
                cur.execute("INSERT INTO mr_items VALUES (200, 'fresh', 0, NULL)")
                try:
                    cur.execute("INSERT INTO mr_items VALUES (201, 'a', 0, NULL)")
                    out["unique"] = "no error"
                except psycopg2.errors.UniqueViolation as e:
                    out["unique"] = e.pgcode
                    try:
                        cur.execute("SELECT 1")
                    except psycopg2.Error as e2:
                        out["aborted"] = e2.pgcode
                    c.rollback()
                cur.execute("SELECT count(*) FROM mr_items WHERE id IN (200, 201)")
                out["after_rollback"] = cur.fetchone()[0]
                c.commit()
                # repeated primary-key gets, autocommit
                c.autocommit = True

                def get7():
                    cur.execute("SELECT id, code, qty, note FROM mr_items WHERE id = %s", (7,))
                    return cur.fetchall()
                self.warm(target, get7)
                m = self.mark(target)
                out["gets"] = []
                for _ in range(25):
                    cur.execute("SELECT id, code, qty, note FROM mr_items WHERE id = %s", (7,))
                    out["gets"].append(cur.fetchall())
                self.loop_delta(target, m, "psycopg2 autocommit gets")
                cur.execute("SELECT * FROM mr_items ORDER BY id")
                out["final"] = cur.fetchall()
            finally:
                c.close()
            return out

        out, _, cache = self.run_both(workload, schema)
        self.assertEqual(out["unique"], "23505")
        self.assertEqual(out["aborted"], "25P02")
        self.assertEqual(out["after_rollback"], 0)
        self.assertEqual(out["copy_in_rowcount"], 10)
        self.assertEqual(len(out["final"]), 35)
        self.assertEqual(out["gets"], [[[7, "c7", 14, "n7"]]] * 25)
        self.assert_hits("psycopg2 autocommit gets")


# ================================================================ SQLAlchemy 1.4 + asyncpg

ABase = declarative_base()


class AUser(ABase):
    __tablename__ = "ma_users"
    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.String(50), nullable=False)
    email = sa.Column(sa.String(100), nullable=False, unique=True)
    posts = relationship("APost", back_populates="author", order_by="APost.id",
                         cascade="all, delete-orphan")


class APost(ABase):
    __tablename__ = "ma_posts"
    id = sa.Column(sa.Integer, primary_key=True)
    user_id = sa.Column(sa.Integer, sa.ForeignKey("ma_users.id"), nullable=False, index=True)
    title = sa.Column(sa.String(200), nullable=False)
    views = sa.Column(sa.Integer, nullable=False, default=0)
    author = relationship("AUser", back_populates="posts")


async def asyncpg_workload(url, case, target):
    engine = create_async_engine(url, pool_size=3, max_overflow=2)
    statements = []
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda conn, cur, stmt, params, ctx, many: statements.append(stmt))
    Session = sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    out = {}
    try:
        async with Session() as s:
            for i in range(1, 9):
                u = AUser(name="user%d" % i, email="user%d@example.com" % i)
                u.posts = [APost(title="post %d.%d" % (i, j), views=i * j)
                           for j in range(1, (i % 3) + 2)]
                s.add(u)
            await s.commit()

        async with Session() as s:  # explicit lazy loads: one child SELECT per parent
            users = (await s.execute(sa.select(AUser).order_by(AUser.id))).scalars().all()
            n0 = len(statements)
            # real lazy loads (lazy="select"), run where the ORM may do IO
            out["lazy"] = await s.run_sync(lambda _: [
                [u.id, u.name, [[p.id, p.title, p.views] for p in u.posts]] for u in users])
            out["lazy_child_statements"] = len(statements) - n0

        async with Session() as s:  # many-to-one by primary key, a fresh session each
            posts = (await s.execute(sa.select(APost).order_by(APost.id))).scalars().all()
            pairs = [(p.id, p.user_id) for p in posts]
        authors = []
        for pid, uid in pairs:
            async with Session() as s2:
                authors.append([pid, (await s2.get(AUser, uid)).email])
        out["authors"] = authors
        async def get2():
            async with Session() as s2:
                await s2.get(AUser, 2)
        if target == "proxied":  # case.warm, awaited
            deadline = time.monotonic() + 15
            while True:
                before = cache_stats(case.proxy)["lookups"]
                await get2()
                if cache_stats(case.proxy)["lookups"] > before:
                    break
                case.assertLess(time.monotonic(), deadline, "no cache lookup within 15 s")
                await asyncio.sleep(0.05)
        m = case.mark(target)
        gets = []
        for _ in range(20):  # the same get repeated: READ COMMITTED, nothing written
            async with Session() as s2:
                u = await s2.get(AUser, 2)
                gets.append([u.id, u.name, u.email])
        out["gets"] = gets
        case.loop_delta(target, m, "SQLAlchemy asyncpg session.get")

        async with Session() as s:
            users = (await s.execute(sa.select(AUser).options(selectinload(AUser.posts))
                                     .order_by(AUser.id))).scalars().all()
            out["selectin"] = [[u.id, [p.title for p in u.posts]] for u in users]
        async with Session() as s:
            users = (await s.execute(sa.select(AUser).options(joinedload(AUser.posts))
                                     .where(AUser.id > 3).order_by(AUser.id))).unique().scalars().all()
            out["joined"] = [[u.id, [p.id for p in u.posts]] for u in users]

        async with Session() as s:  # update, delete with cascade
            u = await s.get(AUser, 3)
            u.name = "renamed"
            await s.execute(sa.update(APost).where(APost.user_id == 3)
                            .values(views=APost.views + 100))
            await s.commit()
        async with Session() as s:
            out["updated"] = [(await s.get(AUser, 3)).name,
                              (await s.execute(sa.select(sa.func.sum(APost.views)))).scalar_one()]
            u = await s.get(AUser, 4, options=[selectinload(AUser.posts)])
            await s.delete(u)
            await s.commit()
        async with Session() as s:
            out["deleted"] = [
                (await s.execute(sa.select(sa.func.count(AUser.id)))).scalar_one(),
                (await s.execute(sa.select(sa.func.count(APost.id)))).scalar_one()]

        async with Session() as s:  # a transaction rolled back
            s.add(AUser(name="ghost", email="ghost@example.com"))
            await s.flush()
            inside = (await s.execute(sa.select(sa.func.count(AUser.id)))).scalar_one()
            await s.rollback()
            after = (await s.execute(sa.select(sa.func.count(AUser.id)))).scalar_one()
            out["rolled_back"] = [inside, after]

        async with Session() as s:  # unique violation
            s.add(AUser(name="dup", email="user1@example.com"))
            try:
                await s.commit()
                out["integrity"] = "no error"
            except sa_exc.IntegrityError as e:
                await s.rollback()
                out["integrity"] = [getattr(e.orig, "sqlstate", None) or
                                    getattr(getattr(e.orig, "__cause__", None), "sqlstate", None),
                                    type(e.orig).__name__]
                out["after_integrity"] = (await s.execute(
                    sa.select(AUser.name).where(AUser.id == 1))).scalar_one()
        async with Session() as s:
            rows = (await s.execute(sa.select(AUser.id, AUser.name, AUser.email)
                                    .order_by(AUser.id))).all()
            out["final_users"] = [list(r) for r in rows]
    finally:
        await engine.dispose()
    return out


class AsyncpgTest(MatrixCase):

    def test_sqlalchemy_asyncpg(self):
        if create_async_engine is None:
            self.fail("asyncpg / sqlalchemy.ext.asyncio is not importable: install python3-asyncpg")

        def schema(target):
            eng = sa.create_engine("postgresql+psycopg2://%s:%s@127.0.0.1:%d/%s"
                                   % (USER, PASSWORD, self.port(target), DB), future=True)
            try:
                ABase.metadata.drop_all(eng)
                ABase.metadata.create_all(eng)
            finally:
                eng.dispose()

        def workload(target):
            url = "postgresql+asyncpg://%s:%s@127.0.0.1:%d/%s" % (USER, PASSWORD,
                                                                  self.port(target), DB)
            return asyncio.run(asyncpg_workload(url, self, target))

        out, _, cache = self.run_both(workload, schema)
        self.assertEqual(len(out["lazy"]), 8)
        self.assertEqual(out["lazy_child_statements"], 8, "one child SELECT per parent")
        self.assertEqual(out["rolled_back"][0], out["rolled_back"][1] + 1)
        self.assertEqual(out["deleted"][0], 7)
        self.assertEqual(out["integrity"], ["23505", "IntegrityError"])
        self.assertEqual(out["after_integrity"], "user1")
        self.assertEqual(out["gets"], [[2, "user2", "user2@example.com"]] * 20)
        self.assertEqual(out["updated"][0], "renamed")
        self.assert_hits("SQLAlchemy asyncpg session.get")


# ================================================================ psycopg 3, server-side binding


class Psycopg3Test(MatrixCase):
    PARENTS = 24

    def test_psycopg3_prepared(self):
        if psycopg is None:
            self.fail("psycopg 3 is not installed: install python3-psycopg")

        def schema(target):
            exec_sql(self.dsn(target), """
                DROP TABLE IF EXISTS m3_child, m3_parent;
                CREATE TABLE m3_parent (id int PRIMARY KEY, name text NOT NULL UNIQUE,
                                        fav_child int);
                CREATE TABLE m3_child (id int PRIMARY KEY,
                                       parent_id int NOT NULL REFERENCES m3_parent (id),
                                       label text NOT NULL, score numeric(10,2));
                CREATE INDEX ON m3_child (parent_id);
            """)

        prepared = {}

        def workload(target):
            out = {}
            with psycopg.connect(self.dsn(target), prepare_threshold=0,
                                 autocommit=False) as c:
                with c.cursor() as cur:
                    for i in range(1, self.PARENTS + 1):
                        cur.execute("INSERT INTO m3_parent (id, name) VALUES (%s, %s)",
                                    (i, "parent %d" % i))
                    cur.executemany(
                        "INSERT INTO m3_child VALUES (%s, %s, %s, %s)",
                        [(p * 10 + j, p, "child %d.%d" % (p, j), "%d.%02d" % (p, j))
                         for p in range(1, self.PARENTS + 1) for j in range(p % 3 + 1)])
                    cur.execute("UPDATE m3_parent SET fav_child = id * 10")
                    c.commit()
                    cur.execute("UPDATE m3_child SET score = score + 1 WHERE parent_id = %s", (5,))
                    out["updated"] = cur.rowcount
                    cur.execute("DELETE FROM m3_child WHERE id = %s", (242,))
                    out["deleted"] = cur.rowcount
                    c.commit()
                    # rollback
                    cur.execute("INSERT INTO m3_parent (id, name) VALUES (%s, %s)", (99, "ghost"))
                    cur.execute("SELECT count(*) FROM m3_parent")
                    inside = cur.fetchone()[0]
                    c.rollback()
                    cur.execute("SELECT count(*) FROM m3_parent")
                    out["rolled_back"] = [inside, cur.fetchone()[0]]
                    c.commit()
                    # unique violation
                    try:
                        cur.execute("INSERT INTO m3_parent (id, name) VALUES (%s, %s)",
                                    (100, "parent 1"))
                        out["unique"] = "no error"
                    except psycopg.errors.UniqueViolation as e:
                        out["unique"] = [e.sqlstate, type(e).__name__]
                        c.rollback()
                    cur.execute("SELECT count(*) FROM m3_parent WHERE id = 100")
                    out["after_unique"] = cur.fetchone()[0]
                    c.commit()
                    if target == "direct":  # through the proxy the server session varies
                        prepared[target] = cur.execute(
                            "SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
                    c.commit()
                c.autocommit = True
                with c.cursor() as cur:
                    # N+1 by primary key: each parent's favourite child
                    cur.execute("SELECT id, fav_child FROM m3_parent ORDER BY id")
                    parents = cur.fetchall()
                    by_pk = []
                    for pid, fav in parents:
                        cur.execute("SELECT id, parent_id, label, score FROM m3_child "
                                    "WHERE id = %s", (fav,))
                        by_pk.append([pid, cur.fetchall()])
                    out["by_pk"] = by_pk
                    # N+1 by foreign key: each parent's children
                    cur.execute("SELECT id, name FROM m3_parent ORDER BY id")
                    parents = cur.fetchall()
                    by_fk = []
                    for pid, name in parents:
                        cur.execute("SELECT id, label, score FROM m3_child "
                                    "WHERE parent_id = %s ORDER BY id", (pid,))
                        by_fk.append([pid, name, cur.fetchall()])
                    out["by_fk"] = by_fk
                    # the same get repeated in autocommit
                    self.warm(target, lambda: cur.execute(
                        "SELECT id, name, fav_child FROM m3_parent WHERE id = %s", (3,)).fetchall())
                    m = self.mark(target)
                    out["gets"] = [cur.execute("SELECT id, name, fav_child FROM m3_parent "
                                               "WHERE id = %s", (3,)).fetchall()
                                   for _ in range(25)]
                    self.loop_delta(target, m, "psycopg 3 autocommit gets")
            return out

        counts = {}

        def workload_counted(target):
            out = workload(target)
            counts[target] = {
                "by_pk": stmt_calls(self.pg, r"^SELECT id, parent_id, label, score FROM m3_child "
                                              r"WHERE id = \$1$"),
                "by_fk": stmt_calls(self.pg, r"^SELECT id, label, score FROM m3_child "
                                              r"WHERE parent_id = \$1 ORDER BY id$"),
                "batched": stmt_calls(self.pg, r"unnest.*m3_child|m3_child.*unnest"),
            }
            return out

        out, _, cache = self.run_both(workload_counted, schema)
        note("psycopg3 child statements reaching PostgreSQL: %r", counts)
        self.assertEqual(out["unique"], ["23505", "UniqueViolation"])
        self.assertEqual(out["rolled_back"], [self.PARENTS + 1, self.PARENTS])
        self.assertEqual(out["after_unique"], 0)
        self.assertGreater(prepared["direct"], 0,
                           "prepare_threshold=0 made no named prepared statements directly")
        self.assertEqual(len(out["by_pk"]), self.PARENTS)
        self.assertTrue(all(len(rows) == 1 for _, rows in out["by_pk"]), out["by_pk"])
        self.assertEqual(counts["direct"]["by_pk"], self.PARENTS)
        self.assertEqual(counts["direct"]["by_fk"], self.PARENTS)
        self.assertEqual(counts["direct"]["batched"], 0)
        self.assertGreaterEqual(counts["proxied"]["batched"], 1, counts)
        self.assertLess(counts["proxied"]["by_fk"], self.PARENTS,
                        "the foreign-key N+1 loop was not batched through pgcoalesce: %r" % counts)
        self.assertEqual(out["gets"], [[[3, "parent 3", 30]]] * 25)
        self.assert_hits("psycopg 3 autocommit gets")


# ================================================================ Django 3.2

_django_ready = None  # None: not tried; True; or why Django cannot run in this process


def django_setup():
    global _django_ready
    if _django_ready is None:
        if django is None:
            _django_ready = "Django is not installed (python3-django)"
        else:
            from django.conf import settings
            if settings.configured:
                if "matrixdjangoapp" in settings.INSTALLED_APPS:
                    _django_ready = True
                else:
                    _django_ready = ("Django was configured without matrixdjangoapp in this "
                                     "process (run test_matrix in its own process)")
            else:
                settings.configure(
                    DATABASES={"default": {
                        "ENGINE": "django.db.backends.postgresql", "NAME": DB, "USER": USER,
                        "PASSWORD": PASSWORD, "HOST": "127.0.0.1", "PORT": "5432"}},
                    INSTALLED_APPS=["matrixdjangoapp"], USE_TZ=True,
                    DEFAULT_AUTO_FIELD="django.db.models.AutoField")
                django.setup()
                _django_ready = True
    if _django_ready is not True:
        raise unittest.SkipTest(_django_ready)


def django_point_at(port):
    from django.db import connections
    conn = connections["default"]
    conn.close()
    conn.settings_dict.update(HOST="127.0.0.1", PORT=str(port), NAME=DB, USER=USER,
                              PASSWORD=PASSWORD)
    conn.settings_dict["OPTIONS"] = {"sslmode": "disable", "application_name": "matrix-django"}


class DjangoTest(MatrixCase):

    @classmethod
    def setUpClass(cls):
        django_setup()
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        from django.db import connections
        connections["default"].close()
        super().tearDownClass()

    def test_django(self):
        from django.db import IntegrityError, connection, transaction
        from django.test.utils import CaptureQueriesContext
        from matrixdjangoapp.models import Author, Book

        def schema(target):
            django_point_at(self.port(target))
            exec_sql(self.dsn(target), "DROP TABLE IF EXISTS matrixdjangoapp_book, "
                                 "matrixdjangoapp_author")
            with connection.schema_editor() as editor:
                editor.create_model(Author)
                editor.create_model(Book)
            connection.close()

        def workload(target):
            django_point_at(self.port(target))
            out = {}
            authors = [Author.objects.create(name="author %d" % i, email="a%d@example.com" % i)
                       for i in range(1, 7)]
            Book.objects.bulk_create([Book(author=a, title="book %d.%d" % (a.id, j), pages=j * 10)
                                      for a in authors for j in range(a.id % 3 + 1)])
            a = Author.objects.get(pk=2)
            a.name = "renamed"
            a.save()
            out["updated"] = Book.objects.filter(author_id=3).update(pages=999)
            out["deleted"] = Author.objects.filter(pk=6).delete()[1]
            # atomic() rolled back by an exception
            try:
                with transaction.atomic():
                    Author.objects.create(name="ghost", email="ghost@example.com")
                    out["inside_atomic"] = Author.objects.count()
                    raise RuntimeError("roll me back")
            except RuntimeError as e:
                out["atomic_error"] = str(e)
            out["after_atomic"] = Author.objects.count()
            # IntegrityError on the unique email
            try:
                with transaction.atomic():
                    Author.objects.create(name="dup", email="a1@example.com")
                out["integrity"] = "no error"
            except IntegrityError as e:
                out["integrity"] = [type(e).__name__, getattr(e.__cause__, "pgcode", None)]
            out["after_integrity"] = Author.objects.filter(email="a1@example.com").count()
            # eager
            with CaptureQueriesContext(connection) as q:
                out["select_related"] = [[b.id, b.title, b.author.name] for b in
                                         Book.objects.select_related("author").order_by("id")]
            out["select_related_queries"] = len(q.captured_queries)
            with CaptureQueriesContext(connection) as q:
                out["prefetch"] = [[a.id, [b.title for b in a.books.order_by("id")]]
                                   for a in Author.objects.prefetch_related("books")
                                   .order_by("id")]
            out["prefetch_queries"] = len(q.captured_queries)
            with CaptureQueriesContext(connection) as q:
                out["prefetch_all"] = [[a.id, [b.title for b in a.books.all()]]
                                       for a in Author.objects.prefetch_related("books")
                                       .order_by("id")]
            out["prefetch_all_queries"] = len(q.captured_queries)
            # lazy FK access in a loop: one author SELECT per book (by primary key)
            with CaptureQueriesContext(connection) as q:
                out["lazy_fk"] = [[b.id, b.author.name, b.author.email]
                                  for b in Book.objects.order_by("id")]
            out["lazy_fk_queries"] = len(q.captured_queries)
            # reverse lazy access: one book SELECT per author (by foreign key)
            with CaptureQueriesContext(connection) as q:
                out["lazy_reverse"] = [[a.id, list(a.books.order_by("id")
                                                   .values_list("title", flat=True))]
                                       for a in Author.objects.order_by("id")]
            out["lazy_reverse_queries"] = len(q.captured_queries)
            # the same get repeated, in autocommit and in atomic() (READ COMMITTED, no write)
            self.warm(target, lambda: Author.objects.get(pk=1))
            m = self.mark(target)
            out["gets"] = [[Author.objects.get(pk=1).name] for _ in range(15)]
            self.loop_delta(target, m, "Django autocommit gets")
            m = self.mark(target)
            for _ in range(10):
                with transaction.atomic():
                    out["gets"].append([Author.objects.get(pk=1).name])
            self.loop_delta(target, m, "Django atomic() gets")
            out["final"] = list(Author.objects.order_by("id").values_list("id", "name", "email"))
            out["final_books"] = list(Book.objects.order_by("id")
                                      .values_list("id", "author_id", "title", "pages"))
            connection.close()
            return out

        out, _, cache = self.run_both(workload, schema)
        books = len(out["final_books"])
        self.assertEqual(out["deleted"], {"matrixdjangoapp.Author": 1,
                                          "matrixdjangoapp.Book": 1})
        self.assertEqual(out["atomic_error"], "roll me back")
        self.assertEqual(out["inside_atomic"], out["after_atomic"] + 1)
        self.assertEqual(out["integrity"], ["IntegrityError", "23505"])
        self.assertEqual(out["after_integrity"], 1)
        self.assertEqual(out["select_related_queries"], 1)
        self.assertEqual(out["prefetch_all_queries"], 2)
        self.assertEqual(out["lazy_fk_queries"], 1 + books, "one author SELECT per book")
        self.assertEqual(out["lazy_reverse_queries"], 1 + len(out["final"]))
        self.assertEqual(out["gets"], [["author 1"]] * 25)
        self.assertEqual(out["final"][1][1], "renamed")
        self.assert_hits("Django autocommit gets")
        self.assert_hits("Django atomic() gets")


if __name__ == "__main__":
    unittest.main()
