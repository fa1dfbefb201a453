"""Named prepared statements in transaction mode.

Drivers that prepare server-side statements (asyncpg always, psycopg 3 with
prepare_threshold=0, pgbench -M prepared, hand-written Parse/Bind) run through
pgcoalesce in transaction mode with fewer server connections than clients, so
a client's Parse and its later Bind/Describe/Close land on whatever backend it
gets. Every workload is also run directly against PostgreSQL, and the results
must be identical. Protocol-level checks compare the exact message sequence
(types, rows, SQLSTATEs) with a direct connection doing the same.

The server side is observed in pg_prepared_statements (which only shows the
current backend: we query it inside a transaction, so it is the backend that
just ran the client's statements).
"""

import asyncio
import datetime
import decimal
import gc
import os
import random
import re
import shutil
import struct
import subprocess
import threading
import unittest
import uuid

import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module

try:
    import asyncpg
except ImportError:
    asyncpg = None

try:
    import psycopg
    import psycopg.errors
except ImportError:
    psycopg = None

UTC = datetime.timezone.utc
N_CLIENTS = 20
TX_PER_CLIENT = 30  # 600 transactions per run

COLUMNS = ("id bigint PRIMARY KEY, client int NOT NULL, n int NOT NULL, big bigint, name text, "
           "u uuid, amount numeric(20,6), ts timestamptz, tags text[], nums int[]")
SELECT_MINE = ("SELECT id, n, big, name, u, amount, ts, tags, nums FROM {t} "
               "WHERE client = $1 ORDER BY id")


def random_row(rnd, client, rid):
    return (rid, client, rnd.randrange(-1000, 1000), rnd.randrange(-2 ** 62, 2 ** 62),
            "name-%d-%d-\u00e9" % (client, rid), uuid.UUID(int=rnd.getrandbits(128)),
            decimal.Decimal(rnd.randrange(-10 ** 12, 10 ** 12)).scaleb(-6),
            datetime.datetime(2020, 1, 1, tzinfo=UTC)
            + datetime.timedelta(seconds=rnd.randrange(10 ** 8),
                                 microseconds=rnd.randrange(10 ** 6)),
            ["t%d" % rnd.randrange(5) for _ in range(rnd.randrange(4))],
            [rnd.randrange(-100, 100) for _ in range(rnd.randrange(5))])


# ---------------------------------------------------------------- raw protocol


def close_message(kind, name):
    return harness.message("C", kind.encode() + harness.cstr(name))


def raw_exchange(conn, payload, n_ready):
    """Send payload, read until n_ready ReadyForQuery; the messages, with
    ErrorResponse/NoticeResponse reduced to their SQLSTATE and ParameterStatus
    left out (the proxy may re-set parameters; a direct session does not)."""
    conn.send(payload)
    out = []
    while n_ready > 0:
        kind, body = conn.read_message()
        if kind == "S":
            continue
        if kind in ("E", "N"):
            out.append((kind, harness.parse_error_fields(body).get("C")))
        else:
            out.append((kind, body))
        if kind == "Z":
            n_ready -= 1
    return out


def kinds(msgs):
    return "".join(k for k, _ in msgs)


def rows_of(msgs):
    """Text values of the DataRows in msgs."""
    rows = []
    for k, body in msgs:
        if k != "D":
            continue
        n = struct.unpack("!h", body[:2])[0]
        pos, row = 2, []
        for _ in range(n):
            ln = struct.unpack("!i", body[pos:pos + 4])[0]
            pos += 4
            row.append(None if ln < 0 else body[pos:pos + ln].decode())
            pos += max(ln, 0)
        rows.append(row)
    return rows


class PreparedBase(harness.ProxyTestCase):
    def direct_raw(self):
        c = harness.RawConn(self.pg.port, timeout=30)
        c.login("app_scram", "app", "scram_pw")
        return c

    def proxy_raw(self):
        return self.proxy.raw_login(timeout=30)

    def run_raw_script(self, script, conn_factory):
        """script(conns: list of 2 RawConn) -> list of results; run on fresh connections."""
        conns = [conn_factory(), conn_factory()]
        try:
            return script(conns)
        finally:
            for c in conns:
                c.close()

    def compare_raw(self, script):
        """Run script through the proxy and directly; assert identical messages."""
        via = self.run_raw_script(script, self.proxy_raw)
        direct = self.run_raw_script(script, self.direct_raw)
        self.assertEqual(len(via), len(direct))
        for i, (p, d) in enumerate(zip(via, direct)):
            self.assertEqual(kinds(p), kinds(d), "exchange %d: message types through the proxy "
                             "%r, directly %r" % (i, p, d))
            self.assertEqual(p, d, "exchange %d differs" % i)
        return via

    def make_table(self, name, cols=COLUMNS):
        self.pg.execute("DROP TABLE IF EXISTS %s" % name)
        self.pg.execute("CREATE TABLE %s (%s)" % (name, cols))
        self.pg.execute("GRANT ALL ON %s TO PUBLIC" % name)
        return name

    def pgc_statements_here(self, conn):
        """On a RawConn: (count of pgc_ statements on the backend serving this
        transaction, that backend's pid), read inside one transaction."""
        r = conn.query("BEGIN; SELECT count(*) FILTER (WHERE name LIKE 'pgc\\_%'), "
                       "count(*), pg_backend_pid() FROM pg_prepared_statements; COMMIT")
        self.assertEqual(r.errors, [])
        row = r.sets[1]["rows"][0]
        return int(row[0]), int(row[1]), int(row[2])


# ---------------------------------------------------------------- the big workloads


class Rollback(Exception):
    pass


async def asyncpg_client(dsn, i, table):
    """One client's deterministic workload; returns (results, backend pids seen)."""
    rnd = random.Random(1000 + i)
    conn = await asyncpg.connect(dsn, ssl=False, statement_cache_size=20)
    out, pids = [], set()
    base = i * 1_000_000
    next_id = 0
    count_stmt = None
    sel = SELECT_MINE.format(t=table)
    ins = "INSERT INTO %s VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)" % table
    try:
        for t in range(TX_PER_CLIENT):
            op = rnd.randrange(9) if t else 0
            if op == 0:  # executemany in a transaction
                rows = [random_row(rnd, i, base + next_id + k) for k in range(rnd.randrange(1, 6))]
                next_id += len(rows)
                async with conn.transaction():
                    await conn.executemany(ins, rows)
                out.append(("insert", len(rows)))
            elif op == 1:  # fetch, binary results of every type
                out.append(("fetch", [tuple(r) for r in await conn.fetch(sel, i)]))
            elif op == 2:  # fetchrow with binary parameters
                args = (rnd.randrange(-2 ** 31, 2 ** 31 - 1), rnd.randrange(-2 ** 62, 2 ** 62),
                        "txt%d" % rnd.randrange(1000), uuid.UUID(int=rnd.getrandbits(128)),
                        decimal.Decimal(rnd.randrange(10 ** 9)).scaleb(-4),
                        datetime.datetime(2021, 6, 1, tzinfo=UTC)
                        + datetime.timedelta(seconds=rnd.randrange(10 ** 7)),
                        [rnd.randrange(1000) for _ in range(rnd.randrange(4))])
                r = await conn.fetchrow(
                    "SELECT $1::int4::int8 + 1, $2::int8 - 1, $3::text || '!', $4::uuid, "
                    "$5::numeric * 2, $6::timestamptz + interval '1 day', "
                    "array_append($7::int4[], 99), pg_typeof($5)::text", *args)
                out.append(("row", tuple(r)))
            elif op == 3:  # an explicit prepared statement, reused across transactions
                if count_stmt is None:
                    count_stmt = await conn.prepare(
                        "SELECT count(*), coalesce(sum(n), 0), coalesce(max(name), '') "
                        "FROM %s WHERE client = $1" % table)
                out.append(("count", tuple(await count_stmt.fetchrow(i))))
            elif op == 4:  # a transaction rolled back
                try:
                    async with conn.transaction():
                        await conn.execute(
                            "UPDATE %s SET n = n + 1000 WHERE client = $1" % table, i)
                        out.append(("in tx", await conn.fetchval(
                            "SELECT coalesce(sum(n), 0) FROM %s WHERE client = $1" % table, i)))
                        raise Rollback()
                except Rollback:
                    pass
                out.append(("after rollback", await conn.fetchval(
                    "SELECT coalesce(sum(n), 0) FROM %s WHERE client = $1" % table, i)))
            elif op == 5:  # UPDATE ... RETURNING in a transaction
                async with conn.transaction():
                    rows = await conn.fetch(
                        "UPDATE %s SET n = n + 1, tags = array_append(tags, $2) "
                        "WHERE client = $1 AND id %% 2 = 0 RETURNING id, n, tags" % table,
                        i, "u%d" % t)
                out.append(("update", sorted(tuple(r) for r in rows)))
            elif op == 6:  # an error in a transaction, then on
                try:
                    async with conn.transaction():
                        await conn.fetchval("SELECT 1 / $1::int", 0)
                except asyncpg.DivisionByZeroError as e:
                    out.append(("error", e.sqlstate))
            elif op == 7:  # a cursor: named portal, Execute with a row limit
                async with conn.transaction():
                    got = [r[0] async for r in conn.cursor(
                        "SELECT g * $1::int FROM generate_series(1, 40) g", t, prefetch=7)]
                out.append(("cursor", got))
            else:  # many distinct statements (more than the client's cache of 20)
                k = rnd.randrange(40)
                out.append(("distinct", await conn.fetchval(
                    "SELECT %d::int8 * $1::int8 + length($2::text)" % k, t, "x" * k)))
            if t % 10 == 9:
                pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
    finally:
        await conn.close()
    return out, pids


def psycopg_client(dsn, i, table):
    """One psycopg 3 client, prepare_threshold=0: every statement is a named
    server-side prepared statement from its first execution."""
    rnd = random.Random(5000 + i)
    autocommit = i % 2 == 0
    conn = psycopg.connect(dsn, autocommit=autocommit, prepare_threshold=0, connect_timeout=30)
    out, pids = [], set()
    base = i * 1_000_000
    next_id = 0
    ins = "INSERT INTO %s VALUES (%%s, %%s, %%s, %%s, %%s, %%s, %%s, %%s, %%s, %%s)" % table
    sel = SELECT_MINE.format(t=table).replace("$1", "%s")
    try:
        for t in range(TX_PER_CLIENT):
            op = rnd.randrange(8) if t else 0
            try:
                if op == 0:
                    rows = [random_row(rnd, i, base + next_id + k)
                            for k in range(rnd.randrange(1, 6))]
                    next_id += len(rows)
                    with conn.cursor() as cur:
                        cur.executemany(ins, rows)
                    out.append(("insert", len(rows)))
                elif op == 1:
                    with conn.cursor(binary=bool(t % 2)) as cur:
                        cur.execute(sel, (i,))
                        out.append(("fetch", cur.fetchall()))
                elif op == 2:
                    args = (rnd.randrange(-2 ** 31, 2 ** 31 - 1), rnd.randrange(-2 ** 62, 2 ** 62),
                            "txt%d" % rnd.randrange(1000), uuid.UUID(int=rnd.getrandbits(128)),
                            decimal.Decimal(rnd.randrange(10 ** 9)).scaleb(-4),
                            datetime.datetime(2021, 6, 1, tzinfo=UTC)
                            + datetime.timedelta(seconds=rnd.randrange(10 ** 7)),
                            [rnd.randrange(1000) for _ in range(rnd.randrange(1, 4))])
                    with conn.cursor(binary=bool(t % 3)) as cur:
                        cur.execute("SELECT %s::int4 + 1, %s::int8 - 1, %s::text || '?', %s::uuid, "
                                    "%s::numeric / 4, %s::timestamptz - interval '1 hour', "
                                    "%s::int4[]", args)
                        out.append(("row", cur.fetchone()))
                elif op == 3:
                    with conn.transaction():
                        conn.execute("UPDATE %s SET n = n - 7 WHERE client = %%s" % table, (i,))
                        out.append(("in tx", conn.execute(
                            "SELECT coalesce(sum(n), 0) FROM %s WHERE client = %%s" % table,
                            (i,)).fetchone()))
                        raise psycopg.Rollback()
                elif op == 4:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1 / %s::int", (0,))
                elif op == 5:
                    k = rnd.randrange(25)
                    out.append(("distinct", conn.execute(
                        "SELECT %d AS k, %%s::int * %d" % (k, k), (t,)).fetchone()))
                elif op == 6:
                    with conn.pipeline():
                        c1 = conn.execute("SELECT count(*) FROM %s WHERE client = %%s" % table,
                                          (i,))
                        c2 = conn.execute("SELECT %s::text || %s::text", ("a", str(t)))
                        c3 = conn.execute("UPDATE %s SET n = n + 1 WHERE client = %%s "
                                          "AND id %%%% 3 = 0" % table, (i,))
                    out.append(("pipeline", c1.fetchone(), c2.fetchone(), c3.rowcount))
                else:
                    with conn.cursor() as cur:
                        cur.execute("UPDATE %s SET name = name || %%s WHERE client = %%s "
                                    "AND id %%%% 2 = 1 RETURNING id, name" % table, ("+", i))
                        out.append(("update", sorted(cur.fetchall())))
                if not autocommit:
                    conn.commit()
            except psycopg.errors.DivisionByZero as e:
                out.append(("error", e.sqlstate))
                if not autocommit:
                    conn.rollback()
            if t % 10 == 9:
                pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
                if not autocommit:
                    conn.commit()
    finally:
        conn.close()
    return out, pids


class WorkloadTest(PreparedBase):
    """20 concurrent clients on pool_size=2: hundreds of transactions of
    named prepared statements, identical to the direct run."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0}

    def check_statements_renamed(self):
        # what the backends hold are the proxy's names, never a client's
        with self.proxy_raw() as c:
            r = c.query("BEGIN; SELECT name FROM pg_prepared_statements; COMMIT")
            self.assertEqual(r.errors, [])
            names = [row[0] for row in r.sets[1]["rows"]]
        self.assertTrue(names, "no prepared statement on the backend")
        self.assertEqual([n for n in names if not n.startswith("pgc_")], [])

    def test_asyncpg_workload_equals_direct(self):
        if asyncpg is None:
            self.skipTest("asyncpg (python3-asyncpg) is not installed")
        table = self.make_table("pq_asyncpg")

        async def run_all(dsn):
            return await asyncio.gather(*[asyncpg_client(dsn, i, table) for i in range(N_CLIENTS)])

        via = asyncio.run(run_all(self.proxy.dsn()))
        via_rows = self.pg.query("SELECT * FROM %s ORDER BY id" % table)
        self.assertLessEqual(self.pg.server_count(), 2)
        pids = set().union(*[p for _, p in via])
        self.assertEqual(len(pids), 2, "20 clients should have shared 2 backends: %r" % pids)
        self.check_statements_renamed()

        self.pg.execute("TRUNCATE %s" % table)
        direct = asyncio.run(run_all(self.pg.dsn()))
        direct_rows = self.pg.query("SELECT * FROM %s ORDER BY id" % table)
        for i in range(N_CLIENTS):
            self.assertEqual(len(via[i][0]), TX_PER_CLIENT + len([x for x in via[i][0]
                                                                  if x[0] == "in tx"]))
            for j, (p, d) in enumerate(zip(via[i][0], direct[i][0])):
                self.assertEqual(p, d, "client %d, transaction %d" % (i, j))
            self.assertEqual(via[i][0], direct[i][0])
        self.assertEqual(via_rows, direct_rows)
        self.assertGreater(len(via_rows), N_CLIENTS)

    def test_psycopg3_prepare_threshold_0_equals_direct(self):
        if psycopg is None:
            self.skipTest("psycopg 3 is not installed")
        table = self.make_table("pq_psycopg")
        via = harness.run_threads(lambda i: psycopg_client(self.proxy.dsn(), i, table), N_CLIENTS)
        via_rows = self.pg.query("SELECT * FROM %s ORDER BY id" % table)
        self.assertLessEqual(self.pg.server_count(), 2)
        pids = set().union(*[p for _, p in via])
        self.assertEqual(len(pids), 2, "20 clients should have shared 2 backends: %r" % pids)
        self.check_statements_renamed()

        self.pg.execute("TRUNCATE %s" % table)
        direct = harness.run_threads(lambda i: psycopg_client(self.pg.dsn(), i, table), N_CLIENTS)
        direct_rows = self.pg.query("SELECT * FROM %s ORDER BY id" % table)
        for i in range(N_CLIENTS):
            for j, (p, d) in enumerate(zip(via[i][0], direct[i][0])):
                self.assertEqual(p, d, "client %d, step %d" % (i, j))
            self.assertEqual(via[i][0], direct[i][0])
        self.assertEqual(via_rows, direct_rows)


# ---------------------------------------------------------------- statement life cycle


class StatementLifecycleTest(PreparedBase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0}

    def test_close_then_reprepare_same_name_raw(self):
        def script(cs):
            c, other = cs
            res = []
            res.append(raw_exchange(c, harness.parse_message("SELECT 1 AS one, $1::text AS t", "n1")
                                    + harness.sync_message(), 1))
            # the other client keeps the second backend busy now and then
            res.append(raw_exchange(other, harness.query_message("SELECT 'other'"), 1))
            res.append(raw_exchange(c, harness.bind_message(["a"], statement="n1")
                                    + harness.describe_message("P")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, close_message("S", "n1") + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.bind_message(["a"], statement="n1")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.parse_message("SELECT $1::int * 10 AS ten", "n1")
                                    + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.bind_message(["7"], statement="n1")
                                    + harness.describe_message("P")
                                    + harness.execute_message() + harness.sync_message(), 1))
            # Close and Parse of the same name in one batch, then use it
            res.append(raw_exchange(c, close_message("S", "n1")
                                    + harness.parse_message("SELECT $1::text || '!' AS bang", "n1")
                                    + harness.bind_message(["x"], statement="n1")
                                    + harness.describe_message("P")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(other, harness.parse_message("SELECT $1::text || '!' AS bang",
                                                                 "n1")
                                    + harness.bind_message(["y"], statement="n1")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.bind_message(["z"], statement="n1")
                                    + harness.execute_message() + harness.sync_message(), 1))
            # Close of a name that never existed is no error
            res.append(raw_exchange(c, close_message("S", "never_there")
                                    + harness.sync_message(), 1))
            return res

        r = self.compare_raw(script)
        self.assertEqual(rows_of(r[2]), [["1", "a"]])
        self.assertEqual(r[4][0], ("E", "26000"))
        self.assertEqual(rows_of(r[6]), [["70"]])
        self.assertEqual(rows_of(r[7]), [["x!"]])
        self.assertEqual(rows_of(r[9]), [["z!"]])
        self.assertEqual(kinds(r[10]), "3Z")

    def test_parse_of_an_existing_name_is_an_error(self):
        """PostgreSQL refuses a Parse of a name the session already has
        (42P05) and keeps the old statement; so must the proxy."""
        def script(cs):
            c, other = cs
            res = []
            res.append(raw_exchange(c, harness.parse_message("SELECT 'old' AS v", "dup")
                                    + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.parse_message("SELECT 'new' AS v", "dup")
                                    + harness.bind_message([], statement="dup")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(other, harness.query_message("SELECT 1"), 1))
            res.append(raw_exchange(c, harness.bind_message([], statement="dup")
                                    + harness.execute_message() + harness.sync_message(), 1))
            return res

        r = self.compare_raw(script)
        self.assertEqual(r[1], [("E", "42P05"), ("Z", b"I")])
        self.assertEqual(rows_of(r[3]), [["old"]])

    def test_standalone_describe(self):
        def script(cs):
            c, other = cs
            res = []
            res.append(raw_exchange(c, harness.parse_message(
                "SELECT $1::int AS a, $2::text AS b, 2.5::numeric AS c", "d1", (23,))
                + harness.sync_message(), 1))
            for _ in range(3):  # whichever backend the client gets
                res.append(raw_exchange(other, harness.query_message("SELECT 1"), 1))
                res.append(raw_exchange(c, harness.describe_message("S", "d1")
                                        + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.describe_message("S", "d_unknown")
                                    + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.query_message("BEGIN"), 1))
            res.append(raw_exchange(c, harness.describe_message("S", "d1")
                                    + harness.bind_message(["5", "five"], statement="d1")
                                    + harness.execute_message()
                                    + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.query_message("COMMIT"), 1))
            return res

        r = self.compare_raw(script)
        self.assertEqual(kinds(r[2]), "tTZ")
        self.assertEqual(r[7][0], ("E", "26000"))
        self.assertEqual(kinds(r[9]), "tT2DCZ")

    def test_asyncpg_statement_gc_then_same_name_again(self):
        if asyncpg is None:
            self.skipTest("asyncpg (python3-asyncpg) is not installed")

        async def scenario(dsn):
            conn = await asyncpg.connect(dsn, ssl=False, statement_cache_size=3)
            out = []
            try:
                s = await conn.prepare("SELECT 1 AS x, $1::text AS y", name="reused")
                out.append(tuple(await s.fetchrow("a")))
                out.append([a.name for a in s.get_attributes()])
                del s
                gc.collect()
                # preparing anything makes asyncpg Close the collected statement
                out.append(await (await conn.prepare("SELECT 'trigger'")).fetchval())
                s2 = await conn.prepare("SELECT $1::int * 10 AS z", name="reused")
                out.append(await s2.fetchval(7))
                out.append([a.name for a in s2.get_attributes()])
                # the statement cache (3 entries) evicts and closes as it goes
                for rnd in range(3):
                    for k in range(8):
                        out.append(await conn.fetchval("SELECT %d + $1::int" % k, rnd))
                async with conn.transaction():
                    out.append(await s2.fetchval(8))
                return out
            finally:
                await conn.close()

        via = asyncio.run(scenario(self.proxy.dsn()))
        direct = asyncio.run(scenario(self.pg.dsn()))
        self.assertEqual(via, direct)
        self.assertEqual(via[3:5], [70, ["z"]])

    def test_psycopg3_deallocate_all_then_reprepare(self):
        """psycopg 3.1 forgets its prepared statements when a statement it ran
        reports DROP ... or ROLLBACK, and sends `DEALLOCATE ALL` before its next
        query, which it then prepares again under new names."""
        if psycopg is None:
            self.skipTest("psycopg 3 is not installed")

        def scenario(dsn, autocommit):
            conn = psycopg.connect(dsn, autocommit=autocommit, prepare_threshold=0)
            out = []
            try:
                for k in range(3):
                    out.append(conn.execute("SELECT %s::int + " + str(k), (k,)).fetchone())
                conn.execute("DROP TABLE IF EXISTS pq_never_there")
                if not autocommit:
                    conn.commit()
                for k in range(3):
                    out.append(conn.execute("SELECT %s::int + " + str(k), (10 + k,)).fetchone())
                    if not autocommit:
                        conn.commit()
                if not autocommit:
                    conn.execute("SELECT 1")
                    conn.execute("ROLLBACK")
                else:
                    conn.execute("BEGIN")
                    conn.execute("ROLLBACK")
                for k in range(3):
                    out.append(conn.execute("SELECT %s::int + " + str(k), (20 + k,)).fetchone())
                    if not autocommit:
                        conn.commit()
                out.append(conn.execute("SELECT count(*) FROM pg_prepared_statements "
                                        "WHERE name LIKE '_pg3%%'").fetchone())
                return out
            finally:
                conn.close()

        for autocommit in (True, False):
            via = scenario(self.proxy.dsn(), autocommit)
            direct = scenario(self.pg.dsn(), autocommit)
            # (the last value: a client's own names are never on the server)
            self.assertEqual(via[:-1], direct[:-1], "autocommit=%s" % autocommit)
            self.assertEqual(via[3], (10,))
            self.assertEqual(via[-1], (0,))

    def test_client_sees_only_its_own_statements_by_name(self):
        """EXECUTE/DEALLOCATE by name in SQL are session-mode only, but the
        server never has a client's names: a client cannot reach another's."""
        with self.proxy_raw() as a, self.proxy_raw() as b:
            raw_exchange(a, harness.parse_message("SELECT 'a secret'", "mine")
                         + harness.sync_message(), 1)
            r = raw_exchange(b, harness.bind_message([], statement="mine")
                             + harness.execute_message() + harness.sync_message(), 1)
            self.assertEqual(r[0], ("E", "26000"))
            r = raw_exchange(a, harness.bind_message([], statement="mine")
                             + harness.execute_message() + harness.sync_message(), 1)
            self.assertEqual(rows_of(r), [["a secret"]])

    def test_deallocate_all_raw(self):
        def script(cs):
            c, other = cs
            res = []
            res.append(raw_exchange(c, harness.parse_message("SELECT 'first'", "p1")
                                    + harness.parse_message("SELECT 'second'", "p2")
                                    + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.query_message("DEALLOCATE ALL"), 1))
            res.append(raw_exchange(other, harness.query_message("SELECT 1"), 1))
            res.append(raw_exchange(c, harness.bind_message([], statement="p1")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.parse_message("SELECT 'again'", "p1")
                                    + harness.bind_message([], statement="p1")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.query_message("DEALLOCATE PREPARE ALL"), 1))
            res.append(raw_exchange(c, harness.parse_message("SELECT 'third'", "p2")
                                    + harness.bind_message([], statement="p2")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.query_message("DISCARD ALL"), 1))
            res.append(raw_exchange(c, harness.bind_message([], statement="p2")
                                    + harness.execute_message() + harness.sync_message(), 1))
            return res

        r = self.compare_raw(script)
        self.assertEqual(r[3][0], ("E", "26000"))
        self.assertEqual(rows_of(r[4]), [["again"]])
        self.assertEqual(rows_of(r[6]), [["third"]])
        self.assertEqual(r[8][0], ("E", "26000"))

    def test_psycopg3_evicts_with_sql_deallocate(self):
        """psycopg 3.1 keeps at most prepared_max statements per connection and
        drops the oldest with a SQL `DEALLOCATE _pg3_N` (simple query) of the
        name it gave in Parse. Through the proxy that name must mean the
        client's statement, as it does directly."""
        if psycopg is None:
            self.skipTest("psycopg 3 is not installed")

        def scenario(dsn):
            conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
            conn.prepared_max = 4
            out = []
            try:
                for rnd in range(3):
                    for k in range(10):
                        out.append(conn.execute("SELECT %s::int * " + str(k), (rnd,)).fetchone())
                return out
            finally:
                conn.close()

        via_err = None
        try:
            via = scenario(self.proxy.dsn())
        except psycopg.Error as e:
            via, via_err = None, "%s: %s" % (type(e).__name__, e)
        direct = scenario(self.pg.dsn())
        self.assertIsNone(via_err, "through the proxy: %s" % via_err)
        self.assertEqual(via, direct)

    def test_asyncpg_deallocate_all_like_direct(self):
        """asyncpg does not notice a DEALLOCATE ALL: its next use of a cached
        statement fails with 26000 directly, and must fail the same way (not
        succeed, not hang) through the proxy; the connection then goes on."""
        if asyncpg is None:
            self.skipTest("asyncpg (python3-asyncpg) is not installed")

        async def scenario(dsn):
            conn = await asyncpg.connect(dsn, ssl=False)
            out = []
            try:
                out.append(await conn.fetchval("SELECT $1::int + 1", 1))
                await conn.execute("DEALLOCATE ALL")
                try:
                    out.append(await conn.fetchval("SELECT $1::int + 1", 2))
                except asyncpg.PostgresError as e:
                    out.append(("error", e.sqlstate))
                out.append(await conn.fetchval("SELECT $1::int + 2", 3))
                return out
            finally:
                await conn.close()

        self.assertEqual(asyncio.run(scenario(self.proxy.dsn())),
                         asyncio.run(scenario(self.pg.dsn())))


class ParseErrorTest(PreparedBase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0}

    def test_parse_error_at_the_right_point_raw(self):
        def script(cs):
            c, other = cs
            res = []
            # a statement the other client already made the proxy prepare
            res.append(raw_exchange(other, harness.parse_message("SELECT 'shared' AS s", "o1")
                                    + harness.bind_message([], statement="o1")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.parse_message("SELECT 'shared' AS s", "c_ok")
                                    + harness.bind_message([], statement="c_ok")
                                    + harness.execute_message()
                                    + harness.parse_message("SELEC 'oops'", "c_bad")
                                    + harness.bind_message([], statement="c_bad")
                                    + harness.execute_message()
                                    + harness.parse_message("SELECT 'skipped'", "c_skipped")
                                    + harness.sync_message()
                                    + harness.bind_message([], statement="c_ok")
                                    + harness.execute_message() + harness.sync_message(), 2))
            res.append(raw_exchange(c, harness.bind_message([], statement="c_bad")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.bind_message([], statement="c_skipped")
                                    + harness.execute_message() + harness.sync_message(), 1))
            # a new statement, then a bad one, in one batch with nothing between
            res.append(raw_exchange(c, harness.parse_message("SELECT 'fresh' AS f", "c_new")
                                    + harness.parse_message("SELECT * FROM no_such_table_x",
                                                            "c_bad2")
                                    + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.bind_message([], statement="c_new")
                                    + harness.execute_message() + harness.sync_message(), 1))
            # the bad name is free: preparing it properly now works
            res.append(raw_exchange(c, harness.parse_message("SELECT 'fixed'", "c_bad")
                                    + harness.bind_message([], statement="c_bad")
                                    + harness.execute_message() + harness.sync_message(), 1))
            # in a transaction: the error aborts it
            res.append(raw_exchange(c, harness.query_message("BEGIN"), 1))
            res.append(raw_exchange(c, harness.parse_message("SELECT 1 +", "c_tx_bad")
                                    + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.bind_message([], statement="c_ok")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.query_message("ROLLBACK"), 1))
            res.append(raw_exchange(c, harness.bind_message([], statement="c_ok")
                                    + harness.execute_message() + harness.sync_message(), 1))
            return res

        r = self.compare_raw(script)
        self.assertEqual(kinds(r[1]), "12DCEZ2DCZ")
        self.assertEqual(r[1][4], ("E", "42601"))
        self.assertEqual(r[2][0], ("E", "26000"))
        self.assertEqual(r[3][0], ("E", "26000"))
        self.assertEqual([m for m in r[4] if m[0] == "E"], [("E", "42P01")])
        self.assertEqual(kinds(r[4]), "1EZ")
        self.assertEqual(rows_of(r[5]), [["fresh"]])
        self.assertEqual(rows_of(r[6]), [["fixed"]])
        self.assertEqual(r[8][0], ("E", "42601"))
        self.assertEqual(r[8][-1], ("Z", b"E"))
        self.assertEqual(r[9][0], ("E", "25P02"))
        self.assertEqual(rows_of(r[11]), [["shared"]])

    def test_parse_error_drivers(self):
        if psycopg is None or asyncpg is None:
            self.skipTest("psycopg 3 and asyncpg needed")
        for dsn in (self.proxy.dsn(), self.pg.dsn()):
            with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as c:
                with self.assertRaises(psycopg.errors.SyntaxError):
                    c.execute("SELEC %s::int", (1,))
                self.assertEqual(c.execute("SELECT %s::int + 1", (1,)).fetchone(), (2,))
            with psycopg.connect(dsn, prepare_threshold=0) as c:
                self.assertEqual(c.execute("SELECT 5").fetchone(), (5,))
                with self.assertRaises(psycopg.errors.UndefinedTable):
                    c.execute("SELECT * FROM nope_not_here WHERE x = %s", (1,))
                c.rollback()
                self.assertEqual(c.execute("SELECT 6").fetchone(), (6,))
                c.commit()

        async def a(dsn):
            conn = await asyncpg.connect(dsn, ssl=False)
            try:
                with self.assertRaises(asyncpg.PostgresSyntaxError):
                    await conn.fetch("SELEC $1::int", 1)
                return await conn.fetchval("SELECT $1::int * 3", 3)
            finally:
                await conn.close()

        self.assertEqual(asyncio.run(a(self.proxy.dsn())), 9)


# ---------------------------------------------------------------- a small LRU


class SmallLruTest(PreparedBase):
    """max_prepared_statements=3, pool_size=2: a client cycling 10 distinct
    statements gets the right results while no backend ever holds more than 3
    of the proxy's statements."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0,
                      "max_prepared_statements": 3}

    def test_cycling_ten_statements_raw(self):
        c = self.proxy_raw()
        self.addCleanup(c.close)
        texts = ["SELECT %d AS k, $1::int * %d AS v" % (k, k) for k in range(10)]
        r = raw_exchange(c, b"".join(harness.parse_message(t, "s%d" % k)
                                     for k, t in enumerate(texts)) + harness.sync_message(), 1)
        self.assertEqual(kinds(r), "1" * 10 + "Z")
        seen = set()
        for rnd in range(3):
            for k in range(10):
                # BEGIN pins the backend: the count is of the one that ran s<k>
                r = raw_exchange(c, harness.query_message("BEGIN")
                                 + harness.bind_message([str(rnd + 1)], statement="s%d" % k)
                                 + harness.execute_message() + harness.sync_message(), 2)
                self.assertEqual(rows_of(r), [[str(k), str((rnd + 1) * k)]])
                pgc, total, pid = self.pgc_statements_here(c)
                seen.add(pid)
                self.assertLessEqual(pgc, 3, "backend %d holds %d pgc_ statements" % (pid, pgc))
                self.assertEqual(pgc, total)
                self.assertGreaterEqual(pgc, 1)
        # and each backend, both pinned at once
        a, b = self.proxy_raw(), self.proxy_raw()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        raw_exchange(a, harness.query_message("BEGIN"), 1)
        raw_exchange(b, harness.query_message("BEGIN"), 1)
        for x in (a, b):
            r = x.query("SELECT count(*), pg_backend_pid() FROM pg_prepared_statements "
                        "WHERE name LIKE 'pgc\\_%'")
            self.assertLessEqual(int(r.sets[0]["rows"][0][0]), 3)
        raw_exchange(a, harness.query_message("COMMIT"), 1)
        raw_exchange(b, harness.query_message("COMMIT"), 1)

    def test_cycling_psycopg3_clients(self):
        if psycopg is None:
            self.skipTest("psycopg 3 is not installed")
        stop = threading.Event()
        worst = []

        def watch():
            # a separate client samples both backends while the others work
            w = self.proxy_raw()
            try:
                while not stop.is_set():
                    pgc, _, _ = self.pgc_statements_here(w)
                    worst.append(pgc)
            finally:
                w.close()

        def client(i):
            conn = psycopg.connect(self.proxy.dsn(), autocommit=(i % 2 == 0), prepare_threshold=0)
            out = []
            try:
                for rnd in range(4):
                    for k in range(10):
                        out.append(conn.execute("SELECT %s::int * " + str(k) + " + " + str(i),
                                                (rnd,)).fetchone()[0])
                        if not conn.autocommit:
                            conn.commit()
                return out
            finally:
                conn.close()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            res = harness.run_threads(client, 4)
        finally:
            stop.set()
            watcher.join(30)
        self.assertEqual(res, [[rnd * k + i for rnd in range(4) for k in range(10)]
                               for i in range(4)])
        self.assertTrue(worst)
        self.assertLessEqual(max(worst), 3)

    def test_describe_and_close_after_eviction(self):
        def script(cs):
            c, other = cs
            res = []
            res.append(raw_exchange(c, harness.parse_message("SELECT $1::int AS a, 'd'::text AS b",
                                                             "d1", (23,))
                                    + harness.sync_message(), 1))
            # push d1 out of every backend's LRU
            for k in range(8):
                res.append(raw_exchange(other, harness.parse_message("SELECT %d" % k, "o%d" % k)
                                        + harness.bind_message([], statement="o%d" % k)
                                        + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.describe_message("S", "d1")
                                    + harness.sync_message(), 1))
            for k in range(8):
                res.append(raw_exchange(other, harness.bind_message([], statement="o%d" % k)
                                        + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.bind_message(["4"], statement="d1")
                                    + harness.execute_message() + harness.sync_message(), 1))
            for k in range(8):
                res.append(raw_exchange(other, harness.bind_message([], statement="o%d" % k)
                                        + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, close_message("S", "d1") + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.bind_message(["4"], statement="d1")
                                    + harness.execute_message() + harness.sync_message(), 1))
            return res

        r = self.compare_raw(script)
        self.assertEqual(kinds(r[9]), "tTZ")
        self.assertEqual(rows_of(r[18]), [["4", "d"]])
        self.assertEqual(kinds(r[27]), "3Z")
        self.assertEqual(r[28][0], ("E", "26000"))


class DeferredParseErrorTest(PreparedBase):
    """pool_size=1, max_prepared_statements=3: a statement evicted from the
    backend is prepared again just before the client's Bind; when that
    deferred Parse fails (its table was dropped meanwhile), the client gets
    the error where PostgreSQL would give it (in place of BindComplete), the
    rest of its batch is skipped to Sync, and the connection goes on."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 1, "max_overflow": 0,
                      "max_prepared_statements": 3}

    def test_deferred_parse_error(self):
        def script(cs):
            c, other = cs
            self.make_table("t_defer", "v text")
            self.pg.execute("INSERT INTO t_defer VALUES ('before')")
            res = []
            res.append(raw_exchange(c, harness.parse_message("SELECT v FROM t_defer", "sd")
                                    + harness.bind_message([], statement="sd")
                                    + harness.execute_message() + harness.sync_message(), 1))
            for k in range(5):  # evict sd
                res.append(raw_exchange(other, harness.parse_message("SELECT %d" % k, "x%d" % k)
                                        + harness.bind_message([], statement="x%d" % k)
                                        + harness.execute_message() + harness.sync_message(), 1))
            self.pg.execute("DROP TABLE t_defer")
            res.append(raw_exchange(c, harness.bind_message([], statement="sd")
                                    + harness.describe_message("P")
                                    + harness.execute_message()
                                    + harness.parse_message("SELECT 'not reached'", "sd2")
                                    + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.query_message("SELECT 'usable'"), 1))
            self.make_table("t_defer", "v text")
            self.pg.execute("INSERT INTO t_defer VALUES ('after')")
            res.append(raw_exchange(c, harness.bind_message([], statement="sd")
                                    + harness.execute_message() + harness.sync_message(), 1))
            res.append(raw_exchange(c, harness.bind_message([], statement="sd2")
                                    + harness.execute_message() + harness.sync_message(), 1))
            return res

        r = self.compare_raw(script)
        self.assertEqual(rows_of(r[0]), [["before"]])
        self.assertEqual(r[6], [("E", "42P01"), ("Z", b"I")])
        self.assertEqual(rows_of(r[7]), [["usable"]])
        self.assertEqual(rows_of(r[8]), [["after"]])
        self.assertEqual(r[9][0], ("E", "26000"))


# ---------------------------------------------------------------- pgbench


PGBENCH = os.path.join(harness.PG_BINDIR, "pgbench")
if not os.access(PGBENCH, os.X_OK):
    PGBENCH = shutil.which("pgbench") or "pgbench"


class PgbenchTest(PreparedBase):
    """pgbench -M prepared / -M extended through the proxy with fewer server
    connections (3) than pgbench clients: no errors, every transaction done.

    TPC-B with -M prepared runs with -j equal to -c: pgbench 15 prepares a
    client's statements with a synchronous PQprepare, which blocks its whole
    thread; with several clients per thread, the thread can wait for a server
    connection held by another of its own clients in the middle of a
    transaction (BEGIN sent, the next command never sent) - a deadlock only
    pool_timeout ends. One client per thread cannot do that. -S has no
    multi-statement transactions, so it runs with fewer threads."""

    proxy_settings = {"pool_mode": "transaction", "pool_size": 3, "max_overflow": 0}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        r = subprocess.run([PGBENCH, "-i", "-s", "1", "-q", "-h", "127.0.0.1",
                            "-p", str(cls.pg.port), "-U", "app_scram", "app"],
                           env=dict(os.environ, PGPASSWORD="scram_pw"), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError("pgbench -i failed:\n" + r.stdout)

    def pgbench(self, *args, clients, jobs, transactions):
        argv = [PGBENCH, "-n", "-h", "127.0.0.1", "-p", str(self.proxy.port), "-U", "app_scram",
                "-c", str(clients), "-j", str(jobs), "-t", str(transactions)] + list(args) + ["app"]
        r = subprocess.run(argv, env=dict(os.environ, PGPASSWORD="scram_pw"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=240)
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 0, "%s\n%s" % (" ".join(argv), out))
        m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out)
        self.assertIsNotNone(m, out)
        self.assertEqual((int(m.group(1)), int(m.group(2))),
                         (clients * transactions, clients * transactions), out)
        m = re.search(r"number of failed transactions: (\d+)", out)
        if m:
            self.assertEqual(int(m.group(1)), 0, out)
        self.assertNotIn("error", r.stderr.lower(), out)
        return out

    def check_tpcb_consistent(self):
        row = self.pg.query(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
            "(SELECT sum(bbalance) FROM pgbench_branches), "
            "(SELECT sum(tbalance) FROM pgbench_tellers), "
            "(SELECT coalesce(sum(delta), 0) FROM pgbench_history), "
            "(SELECT count(*) FROM pgbench_history)")[0]
        self.assertEqual(row[0], row[3])
        self.assertEqual(row[1], row[3])
        self.assertEqual(row[2], row[3])
        return row[4]

    def test_prepared_select_only(self):
        out = self.pgbench("-M", "prepared", "-S", clients=8, jobs=2, transactions=300)
        self.assertIn("query mode: prepared", out)
        self.assertLessEqual(self.pg.server_count(), 3)
        with self.proxy_raw() as c:
            pgc, _, _ = self.pgc_statements_here(c)
        self.assertGreaterEqual(pgc, 1)

    def test_extended_select_only(self):
        out = self.pgbench("-M", "extended", "-S", clients=8, jobs=2, transactions=300)
        self.assertIn("query mode: extended", out)

    def test_prepared_tpcb(self):
        before = self.check_tpcb_consistent()
        out = self.pgbench("-M", "prepared", clients=6, jobs=6, transactions=100)
        self.assertIn("query mode: prepared", out)
        self.assertEqual(self.check_tpcb_consistent() - before, 600)

    def test_extended_tpcb(self):
        before = self.check_tpcb_consistent()
        self.pgbench("-M", "extended", clients=6, jobs=2, transactions=100)
        self.assertEqual(self.check_tpcb_consistent() - before, 600)


if __name__ == "__main__":
    unittest.main()
