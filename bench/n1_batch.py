#!/usr/bin/python3
"""N+1 lazy loading through SQLAlchemy, timed against a PostgreSQL that is a
(simulated) network round trip away: direct, through PgBouncer, through
pgcoalesce with n1_mode = detect and with n1_mode = batch.

The workload is what a lazy-loading ORM does by default: load a list of rows,
then touch a relationship on each, one SELECT per row (1 + N statements).
With the server 1 ms away, those N round trips dominate; pgcoalesce's
n1_mode = batch is meant to answer them with a few batched statements.

Starts, in one temp dir: a private PostgreSQL (with pg_stat_statements, to
count the statements that reach the server), bench/delay_relay.py in front of
it (--delay-ms each way), a PgBouncer and pgcoalesce processes, each with its
upstream either through the relay or straight to PostgreSQL. The app (this
script) always talks to a proxy over plain loopback: the proxy sits next to
the app, PostgreSQL is the round trip away. Targets are alternated in every
repetition (order rotated) and medians reported.

Reuses bench/pgbench_compare.py for the process handling. Needs Debian's
python3-sqlalchemy (1.4), python3-psycopg2 and, for the asyncpg driver,
python3-asyncpg: run with /usr/bin/python3.

    /usr/bin/python3 bench/n1_batch.py --quick
    /usr/bin/python3 bench/n1_batch.py --reps 9 --drivers psycopg2 --delay-ms 0.5

See bench/README.md.
"""

import argparse
import asyncio
import datetime
import hashlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgbench_compare as pc  # noqa: E402

log = pc.log
HERE = os.path.dirname(os.path.abspath(__file__))
RELAY_PY = os.path.join(HERE, "delay_relay.py")

# Targets: (kind, through the relay?). "+relay" = PostgreSQL is --delay-ms
# each way away from whatever talks to it (the app for direct, else the proxy).
TARGET_DEFS = {
    "direct": ("direct", False),
    "direct+relay": ("direct", True),
    "pgbouncer": ("pgbouncer", False),
    "pgbouncer+relay": ("pgbouncer", True),
    "detect": ("detect", False),
    "detect+relay": ("detect", True),
    "batch": ("batch", False),
    "batch+relay": ("batch", True),
}
DEFAULT_TARGETS = ["direct", "direct+relay", "pgbouncer+relay", "detect+relay",
                   "batch+relay", "batch"]

# Data sets: suffix -> (parents, children per parent)
DATASETS = {"s": (100, 10), "l": (1000, 3)}
# Workloads: name -> (relationship touched, data set, label)
WORKLOADS = {
    "o2m-100x10": ("o2m", "s", "100 parents x 10 children, parent.children"),
    "o2m-1000x3": ("o2m", "l", "1000 parents x 3 children, parent.children"),
    "m2o-100x10": ("m2o", "s", "1000 children -> 100 parents, child.parent"),
    "m2o-1000x3": ("m2o", "l", "3000 children -> 1000 parents, child.parent"),
}
DRIVERS = ("psycopg2", "asyncpg")


# ---------------------------------------------------------------- ORM side


def import_sqlalchemy():
    """The driver versions for the report; exits when the modules are missing."""
    try:
        import sqlalchemy
        import psycopg2
    except ImportError as e:
        sys.exit(f"n1_batch.py needs SQLAlchemy and psycopg2 ({e}); run it with "
                 f"/usr/bin/python3 (Debian's python3-sqlalchemy, python3-psycopg2), "
                 f"not {sys.executable}")
    return [f"SQLAlchemy {sqlalchemy.__version__}",
            f"psycopg2 {psycopg2.__version__.split()[0]}"]


def make_models(suffix):
    """Parent/Child mapped to parent_<suffix>/child_<suffix>; both
    relationships lazy="select" (SQLAlchemy's default)."""
    from sqlalchemy import Column, ForeignKey, Integer, String
    from sqlalchemy.orm import declarative_base, relationship

    Base = declarative_base()

    class Parent(Base):
        __tablename__ = f"parent_{suffix}"
        id = Column(Integer, primary_key=True)
        name = Column(String, nullable=False)
        children = relationship("Child", back_populates="parent")

    class Child(Base):
        __tablename__ = f"child_{suffix}"
        id = Column(Integer, primary_key=True)
        parent_id = Column(Integer, ForeignKey(f"parent_{suffix}.id"), nullable=False)
        name = Column(String, nullable=False)
        value = Column(Integer, nullable=False)
        parent = relationship("Parent", back_populates="children")

    return Parent, Child


def digest(rows):
    return hashlib.sha1(repr(rows).encode()).hexdigest()[:12]


def orm_o2m(session, Parent, Child):
    """Load all parents, then touch each parent's children: 1 + N SELECTs."""
    from sqlalchemy import select
    parents = session.execute(select(Parent).order_by(Parent.id)).scalars().all()
    rows = []
    for p in parents:
        kids = p.children  # lazy load: SELECT ... FROM child WHERE ? = child.parent_id
        rows.append((p.id, tuple(sorted(c.id for c in kids)), sum(c.value for c in kids)))
    return digest(rows), len(parents)


def orm_m2o(session, Parent, Child):
    """Load all children, then touch each child's parent: 1 + (distinct
    parents) SELECTs; the identity map answers the repeats."""
    from sqlalchemy import select
    children = session.execute(select(Child).order_by(Child.id)).scalars().all()
    rows = []
    for c in children:
        p = c.parent  # lazy load: SELECT ... FROM parent WHERE parent.id = ?
        rows.append((c.id, p.id, p.name))
    return digest(rows), len(children)


ORM_FUNCS = {"o2m": orm_o2m, "m2o": orm_m2o}


def expected_digest(cur, kind, suffix):
    """The same digest, computed with plain SQL (to check every ORM run)."""
    if kind == "o2m":
        cur.execute(f"""
            select p.id, coalesce(array_agg(c.id order by c.id) filter (where c.id is not null),
                                  '{{}}'), coalesce(sum(c.value), 0)
            from parent_{suffix} p left join child_{suffix} c on c.parent_id = p.id
            group by p.id order by p.id""")
        return digest([(i, tuple(ids), int(s)) for i, ids, s in cur.fetchall()])
    cur.execute(f"""select c.id, p.id, p.name from child_{suffix} c
                    join parent_{suffix} p on p.id = c.parent_id order by c.id""")
    return digest([tuple(r) for r in cur.fetchall()])


class Client:
    """One SQLAlchemy engine (pool of one connection, kept for the whole run,
    as an app's pool would be) for one target and driver."""

    def __init__(self, driver, port, loop, run_timeout):
        self.driver = driver
        self.port = port
        self.loop = loop
        self.run_timeout = run_timeout
        self.engine = None
        self.dbapi_conn = None  # psycopg2 connection, for the watchdog

    def _make(self):
        url_driver = "psycopg2" if self.driver == "psycopg2" else "asyncpg"
        url = f"postgresql+{url_driver}://{pc.BENCH_USER}@127.0.0.1:{self.port}/{pc.BENCH_DB}"
        if self.driver == "psycopg2":
            from sqlalchemy import create_engine, event
            self.engine = create_engine(url, future=True, pool_size=1, max_overflow=0,
                                        connect_args={"connect_timeout": 10})

            @event.listens_for(self.engine, "checkout")
            def _checkout(dbapi_conn, rec, proxy):
                self.dbapi_conn = dbapi_conn
        else:
            from sqlalchemy.ext.asyncio import create_async_engine
            self.engine = create_async_engine(url, pool_size=1, max_overflow=0,
                                              connect_args={"timeout": 10})

    def run(self, func, models):
        """Run one ORM unit of work in a fresh session; returns (seconds, result)."""
        if self.engine is None:
            self._make()
        if self.driver == "psycopg2":
            return self._run_sync(func, models)
        return self.loop.run_until_complete(
            asyncio.wait_for(self._run_async(func, models), self.run_timeout))

    def _run_sync(self, func, models):
        from sqlalchemy.orm import Session
        fired = threading.Event()
        done = threading.Event()

        def watchdog():
            # psycopg2 blocks in libpq; cut its socket if a run hangs.
            if not done.wait(self.run_timeout) and self.dbapi_conn is not None:
                fired.set()
                try:
                    s = socket.socket(fileno=os.dup(self.dbapi_conn.fileno()))
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass

        wd = threading.Thread(target=watchdog, daemon=True)
        wd.start()
        try:
            t0 = time.perf_counter()
            with Session(self.engine, future=True) as s:
                res = func(s, *models)
            # closing the session returns the connection: ROLLBACK, timed too
            return time.perf_counter() - t0, res
        except Exception as e:
            if fired.is_set():
                raise TimeoutError(f"run took more than {self.run_timeout} s") from e
            raise
        finally:
            done.set()
            wd.join()

    async def _run_async(self, func, models):
        from sqlalchemy.ext.asyncio import AsyncSession
        t0 = time.perf_counter()
        async with AsyncSession(self.engine) as s:
            # lazy loads need the greenlet bridge: run the same sync code
            res = await s.run_sync(func, *models)
        return time.perf_counter() - t0, res

    def dispose(self):
        if self.engine is None:
            return
        try:
            if self.driver == "psycopg2":
                self.engine.dispose()
            else:
                self.loop.run_until_complete(asyncio.wait_for(self.engine.dispose(), 10))
        except Exception:
            pass
        self.engine = None
        self.dbapi_conn = None


# ---------------------------------------------------------------- processes


class N1BatchBench(pc.Bench):
    def start_postgres(self):
        datadir = os.path.join(self.tmp, "pgdata")
        log("initdb")
        self.run_checked(
            [os.path.join(self.pg_bin, "initdb"), "-D", datadir, "-U", pc.BENCH_USER,
             "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"],
            as_postgres=True, what="initdb",
        )
        port = pc.free_port()
        self.ports["direct"] = port
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{self.tmp}'",
            # a subclass may need more (bench/cache_zipf.py: one backend per client)
            "max_connections": str(getattr(self, "max_connections", 100)),
            "shared_buffers": "'128MB'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        if self.pgss:
            settings["shared_preload_libraries"] = "'pg_stat_statements'"
            settings["pg_stat_statements.max"] = "1000"
            settings["pg_stat_statements.track"] = "top"
        with open(os.path.join(datadir, "postgresql.conf"), "a") as f:
            f.write("\n# n1_batch.py\n")
            for k, v in settings.items():
                f.write(f"{k} = {v}\n")
        with open(os.path.join(datadir, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        log(f"starting PostgreSQL on 127.0.0.1:{port}")
        pg = self.start("postgres", [os.path.join(self.pg_bin, "postgres"), "-D", datadir],
                        signal.SIGINT, as_postgres=True)
        self.wait_port(pg, port, 60)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.psql_direct("select 1", db="postgres")
                break
            except pc.BenchError:
                if time.monotonic() > deadline or not pg.alive():
                    raise
                time.sleep(0.2)
        self.psql_direct(f"create database {pc.BENCH_DB}", db="postgres")
        self.pg_version = self.psql_direct("show server_version").strip()

    def load_data(self):
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=self.ports["direct"],
                                user=pc.BENCH_USER, dbname=pc.BENCH_DB)
        conn.autocommit = True
        cur = conn.cursor()
        for suffix, (np_, nc) in DATASETS.items():
            log(f"data set {suffix}: {np_} parents x {nc} children")
            cur.execute(f"""
                create table parent_{suffix} (id int primary key, name text not null);
                create table child_{suffix} (
                    id int primary key,
                    parent_id int not null references parent_{suffix}(id),
                    name text not null,
                    value int not null);
                create index on child_{suffix} (parent_id);
                insert into parent_{suffix}
                    select g, 'parent ' || g from generate_series(1, {np_}) g;
                insert into child_{suffix}
                    select (p - 1) * {nc} + k, p, 'child ' || p || '.' || k, (p * 31 + k * 7) % 1000
                    from generate_series(1, {np_}) p, generate_series(1, {nc}) k;
                analyze parent_{suffix};
                analyze child_{suffix};""")
        self.expected = {}
        for w, (kind, suffix, _) in WORKLOADS.items():
            self.expected[w] = expected_digest(cur, kind, suffix)
        conn.close()

    def open_admin(self):
        """A direct connection (no relay) to the postgres database, for
        pg_stat_statements; its own statements are in another database."""
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=self.ports["direct"],
                                user=pc.BENCH_USER, dbname="postgres")
        conn.autocommit = True
        self.admin = conn
        if self.pgss:
            cur = conn.cursor()
            cur.execute("create extension if not exists pg_stat_statements")
            cur.execute("select oid from pg_database where datname = %s", (pc.BENCH_DB,))
            self.bench_dbid = cur.fetchone()[0]

    def pgss_reset(self):
        if self.pgss:
            self.admin.cursor().execute("select pg_stat_statements_reset()")

    def pgss_counts(self, lazy_table):
        """(statements on lazy_table, all statements) executed in the bench
        database since the last reset."""
        if not self.pgss:
            return None, None
        cur = self.admin.cursor()
        cur.execute("select query, calls from pg_stat_statements where dbid = %s",
                    (self.bench_dbid,))
        lazy = total = 0
        pat = re.compile(rf"\b{re.escape(lazy_table)}\b", re.I)
        for query, calls in cur.fetchall():
            total += calls
            if pat.search(query):
                lazy += calls
        return lazy, total

    def start_relay(self):
        a = self.args
        port = pc.free_port()
        argv = [sys.executable, RELAY_PY, "--listen", str(port),
                "--target", f"127.0.0.1:{self.ports['direct']}", "--delay-ms", str(a.delay_ms)]
        log(f"starting delay_relay on 127.0.0.1:{port} -> PostgreSQL, {a.delay_ms} ms each way")
        relay = self.start("delay_relay", argv, signal.SIGTERM, as_postgres=False)
        self.wait_port(relay, port, 20)
        self.ports["relay"] = port

    def upstream(self, via_relay):
        return self.ports["relay"] if via_relay else self.ports["direct"]

    def start_bouncer(self, target, via_relay):
        a = self.args
        port = pc.free_port()
        name = target.replace("+", "-")
        auth = self.write_file(f"{name}_users.txt", f'"{pc.BENCH_USER}" ""\n', 0o600)
        ini = self.write_file(
            f"{name}.ini",
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.upstream(via_relay)}\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {auth}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {a.pool_size}\n"
            "max_client_conn = 100\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
            "log_pooler_errors = 1\n",
        )
        log(f"starting PgBouncer ({target}) on 127.0.0.1:{port}")
        proc = self.start(name, [a.pgbouncer, ini], signal.SIGTERM, as_postgres=True)
        self.wait_port(proc, port, 20)
        self.ports[target] = port
        self.procs[target] = proc
        out = subprocess.run([a.pgbouncer, "--version"], capture_output=True, text=True)
        self.pgbouncer_version = (out.stdout.splitlines() or ["?"])[0]

    def copy_pgcoalesce(self):
        """Copy the binary into the temp dir once (waiting for it if a rebuild
        has it missing just now), so that every pgcoalesce target runs the
        same build and a rebuild during the run does not matter."""
        a = self.args
        deadline = time.monotonic() + a.binary_wait
        while not os.access(a.pgcoalesce, os.X_OK):
            if time.monotonic() > deadline:
                raise pc.BenchError(f"no executable {a.pgcoalesce} after {a.binary_wait} s")
            log(f"{a.pgcoalesce} missing (being rebuilt?); waiting")
            time.sleep(5)
        time.sleep(0.5)  # let a linker that just wrote it finish
        dst = os.path.join(self.tmp, "pgcoalesce")
        shutil.copy2(a.pgcoalesce, dst)
        os.chmod(dst, 0o755)
        st = os.stat(dst)
        self.pgc_binary = dst
        built = datetime.datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M:%S")
        self.pgc_desc = f"{a.pgcoalesce} (built {built}, {st.st_size} bytes)"

    def start_pgcoalesce_target(self, target, n1_mode, via_relay):
        a = self.args
        port = pc.free_port()
        name = target.replace("+", "-")
        extra = "".join(f"{k} = {v}\n" for k, v in a.pgc_set)
        ini = self.write_file(
            f"pgcoalesce-{name}.ini",
            "[pgcoalesce]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "pool_mode = transaction\n"
            "auth_type = trust\n"
            f"pool_size = {a.pool_size}\n"
            "max_overflow = 0\n"
            "max_client_conn = 100\n"
            "log_level = warning\n"
            "admin_port = 0\n"
            "server_tls_sslmode = disable\n"
            f"n1_mode = {n1_mode}\n"
            + extra +
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.upstream(via_relay)}\n",
        )
        as_pg = os.geteuid() == 0
        log(f"starting pgcoalesce ({target}, n1_mode={n1_mode}) on 127.0.0.1:{port}")
        proc = self.start(f"pgcoalesce-{name}", [self.pgc_binary, "-c", ini], signal.SIGTERM,
                          as_postgres=as_pg)
        self.wait_port(proc, port, 20)
        self.ports[target] = port
        self.procs[target] = proc

    def start_targets(self):
        a = self.args
        if any(TARGET_DEFS[t][1] for t in a.targets) or a.calibrate:
            self.start_relay()
        if any(TARGET_DEFS[t][0] in ("detect", "batch") for t in a.targets):
            self.copy_pgcoalesce()
        for t in a.targets:
            kind, via = TARGET_DEFS[t]
            if kind == "direct":
                self.ports[t] = self.upstream(via)
            elif kind == "pgbouncer":
                self.start_bouncer(t, via)
            else:
                self.start_pgcoalesce_target(t, kind, via)

    def calibrate(self, n):
        """SELECT 1 round trips with psycopg2, direct vs through the relay,
        alternated twice; returns (direct ms, relay ms) medians."""
        import psycopg2
        res = {"direct": [], "relay": []}
        conns = {}
        for k in res:
            c = psycopg2.connect(host="127.0.0.1", port=self.ports[k], user=pc.BENCH_USER,
                                 dbname=pc.BENCH_DB)
            c.autocommit = True
            conns[k] = c
        try:
            for rnd in range(4):
                for k in (("direct", "relay") if rnd % 2 == 0 else ("relay", "direct")):
                    cur = conns[k].cursor()
                    for _ in range(50 if rnd == 0 else 10):
                        cur.execute("SELECT 1")
                    t0 = time.perf_counter()
                    for _ in range(n):
                        cur.execute("SELECT 1")
                        cur.fetchone()
                    res[k].append((time.perf_counter() - t0) / n * 1e3)
        finally:
            for c in conns.values():
                c.close()
        return statistics.median(res["direct"]), statistics.median(res["relay"])


# ---------------------------------------------------------------- report


def fmt_s(v):
    return "–" if v is None else f"{v:.3f}"


def fmt_x(v):
    return "–" if v is None else f"{v:.2f}×"


def ratio_median(results, driver, workload, num, den):
    """Median over repetitions of num/den, both from the same repetition."""
    out = []
    reps = sorted({r["rep"] for r in results})
    for rep in reps:
        by = {r["target"]: r for r in results
              if r["driver"] == driver and r["workload"] == workload and r["rep"] == rep}
        a, b = by.get(num), by.get(den)
        if a and b and a.get("secs") and b.get("secs") and not a.get("error") \
                and not b.get("error"):
            out.append(a["secs"] / b["secs"])
    return statistics.median(out) if out else None


RATIOS = [
    # (numerator, denominator, header, target check)
    ("direct+relay", "batch+relay", "direct+relay / batch+relay", (">=", 4.0)),
    ("batch+relay", "direct", "batch+relay / direct", ("<=", 1.5)),
    ("batch", "direct", "batch / direct", None),
]


def render(results, a, targets, workloads, drivers, pgss):
    lines = []
    for d in drivers:
        rs = [r for r in results if r["driver"] == d]
        if not rs:
            continue
        ratios = [x for x in RATIOS if x[0] in targets and x[1] in targets]
        lines.append(f"### {d}: median seconds per unit of work")
        lines.append("")
        head = ["workload"] + targets + [h + (f" ({c[0]} {c[1]:g})" if c else "")
                                         for _, _, h, c in ratios]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for w in workloads:
            cells = [w]
            for t in targets:
                cell = [r for r in rs if r["workload"] == w and r["target"] == t]
                ok = [r["secs"] for r in cell if r.get("secs") and not r.get("error")]
                s = fmt_s(statistics.median(ok) if ok else None)
                nerr = sum(1 for r in cell if r.get("error"))
                if nerr:
                    s += f" ({nerr} err)"
                cells.append(s)
            for num, den, _, check in ratios:
                v = ratio_median(rs, d, w, num, den)
                s = fmt_x(v)
                if v is not None and check:
                    good = v >= check[1] if check[0] == ">=" else v <= check[1]
                    s += " ✓" if good else " ✗"
                cells.append(s)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if pgss:
            lines.append(f"### {d}: statements that reached PostgreSQL per unit of work "
                         "(lazy-load table / all, from pg_stat_statements, median)")
            lines.append("")
            lines.append("| workload | " + " | ".join(targets) + " |")
            lines.append("|" + "|".join(["---"] + ["---:"] * len(targets)) + "|")
            for w in workloads:
                cells = [w]
                for t in targets:
                    cell = [r for r in rs if r["workload"] == w and r["target"] == t
                            and r.get("lazy") is not None and not r.get("error")]
                    if not cell:
                        cells.append("–")
                        continue
                    lz = statistics.median(r["lazy"] for r in cell)
                    tot = statistics.median(r["total"] for r in cell)
                    cells.append(f"{lz:g} / {tot:g}")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def render_raw(results):
    lines = ["| rep | driver | workload | target | seconds | lazy stmts | all stmts | note |",
             "|---:|---|---|---|---:|---:|---:|---|"]
    for r in results:
        lines.append("| " + " | ".join([
            str(r["rep"] + 1), r["driver"], r["workload"], r["target"], fmt_s(r.get("secs")),
            "–" if r.get("lazy") is None else str(r["lazy"]),
            "–" if r.get("total") is None else str(r["total"]),
            (r.get("error") or "").replace("|", "/")[:160],
        ]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="SQLAlchemy lazy loading (1 + N statements) through direct, PgBouncer "
                    "and pgcoalesce (n1_mode detect / batch), PostgreSQL behind a delay relay.")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated, from {','.join(TARGET_DEFS)} "
                        f"(default {','.join(DEFAULT_TARGETS)})")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS)} (default all)")
    p.add_argument("--drivers", default=",".join(DRIVERS),
                   help="comma-separated subset of psycopg2,asyncpg (default both)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions per cell (default 7, 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="3 repetitions")
    p.add_argument("--delay-ms", type=float, default=0.5,
                   help="relay delay each way in ms (default 0.5: +1 ms per round trip)")
    p.add_argument("--pool-size", type=int, default=4,
                   help="server connections per pool, PgBouncer and pgcoalesce (default 4)")
    p.add_argument("--pgc-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra [pgcoalesce] setting for every pgcoalesce target, e.g. "
                        "n1_batch_after=3 (repeatable)")
    p.add_argument("--calibrate", type=int, default=1000, metavar="N",
                   help="SELECT 1 round trips, direct vs relay, to measure the relay "
                        "(default 1000; 0 skips)")
    p.add_argument("--run-timeout", type=float, default=120.0,
                   help="seconds before one unit of work counts as hung (default 120)")
    p.add_argument("--binary-wait", type=float, default=300.0,
                   help="seconds to wait for a missing pgcoalesce binary (default 300)")
    p.add_argument("--no-pgss", dest="pgss", action="store_false",
                   help="do not count server statements with pg_stat_statements")
    p.add_argument("--pgcoalesce", default=os.path.join(pc.REPO_ROOT, "build", "pgcoalesce"))
    p.add_argument("--pgbouncer", default=shutil.which("pgbouncer") or "/usr/sbin/pgbouncer")
    p.add_argument("--pg-bin", default=pc.PG_BIN_DEFAULT)
    p.add_argument("--raw", action="store_true", help="also print one row per run")
    p.add_argument("--out", help="also write the report (markdown) to this file")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    a = p.parse_args(argv)

    def split(s):
        return [x.strip() for x in s.split(",") if x.strip()]

    a.targets = split(a.targets)
    bad = [t for t in a.targets if t not in TARGET_DEFS]
    if bad or not a.targets:
        p.error(f"unknown target(s) {bad}; choose from {','.join(TARGET_DEFS)}")
    a.workloads = split(a.workloads)
    bad = [w for w in a.workloads if w not in WORKLOADS]
    if bad or not a.workloads:
        p.error(f"unknown workload(s) {bad}; choose from {','.join(WORKLOADS)}")
    a.drivers = split(a.drivers)
    bad = [d for d in a.drivers if d not in DRIVERS]
    if bad or not a.drivers:
        p.error(f"unknown driver(s) {bad}; choose from {','.join(DRIVERS)}")
    if a.reps is None:
        a.reps = 3 if a.quick else 7
    if a.reps < 1:
        p.error("--reps must be >= 1")
    sets = []
    for kv in a.pgc_set:
        if "=" not in kv:
            p.error(f"--pgc-set takes KEY=VALUE, not {kv!r}")
        k, v = kv.split("=", 1)
        sets.append((k.strip(), v.strip()))
    a.pgc_set = sets
    if any(TARGET_DEFS[t][0] == "pgbouncer" for t in a.targets) \
            and not os.access(a.pgbouncer, os.X_OK):
        p.error(f"pgbouncer not found: {a.pgbouncer} (apt-get install pgbouncer)")
    return a


def check_pgss(a):
    libdir = os.path.join(os.path.dirname(a.pg_bin.rstrip("/")), "lib")
    if os.path.exists(os.path.join(libdir, "pg_stat_statements.so")):
        return True
    log("*** pg_stat_statements is not installed (no pg_stat_statements.so in "
        f"{libdir}): server statement counts are left out. Install it with "
        "`apt-get install -y postgresql-contrib` (or pass --no-pgss to silence this).")
    return False


def main(argv):
    a = parse_args(argv)
    versions = import_sqlalchemy()
    if a.pgss:
        a.pgss = check_pgss(a)
    if "asyncpg" in a.drivers:
        try:
            import asyncpg
            import greenlet  # SQLAlchemy's async engine needs it
            versions.append(f"asyncpg {asyncpg.__version__}, greenlet {greenlet.__version__}")
        except ImportError as e:
            log(f"asyncpg driver unavailable ({e}); running psycopg2 only")
            a.drivers = [d for d in a.drivers if d != "asyncpg"]
            if not a.drivers:
                return 1

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    b = N1BatchBench(a)
    b.pgss = a.pgss
    loop = asyncio.new_event_loop()
    models = {s: make_models(s) for s in DATASETS}
    clients = {}
    results = []
    calib = None
    started = datetime.datetime.now()
    load0 = os.getloadavg()[0]
    interrupted = False

    def one_run(driver, target, workload, rep=None):
        kind, suffix, _ = WORKLOADS[workload]
        lazy_table = f"child_{suffix}" if kind == "o2m" else f"parent_{suffix}"
        r = {"driver": driver, "target": target, "workload": workload,
             "rep": -1 if rep is None else rep}
        proxy = b.procs.get(target)
        if proxy is not None and not proxy.alive():
            r["error"] = f"{target} not running (exit code {proxy.popen.returncode})"
            if target not in b.dead_logged:
                b.dead_logged.add(target)
                log(f"{target} exited; log {proxy.logpath}:\n" + pc.tail(proxy.logpath))
            return r
        key = (driver, target)
        if key not in clients:
            clients[key] = Client(driver, b.ports[target], loop, a.run_timeout)
        c = clients[key]
        b.pgss_reset()
        try:
            secs, (dig, n) = c.run(ORM_FUNCS[kind], models[suffix])
            r["secs"] = secs
            if dig != b.expected[workload]:
                r["error"] = f"wrong result (digest {dig}, expected {b.expected[workload]})"
        except (KeyboardInterrupt, pc.BenchError):
            raise
        except BaseException as e:  # noqa: B902 (asyncio.TimeoutError, driver errors)
            if isinstance(e, asyncio.TimeoutError):
                r["error"] = f"TimeoutError: run took more than {a.run_timeout} s"
            else:
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
                r["error"] = f"{type(e).__name__}: {msg}"[:300]
            c.dispose()  # start over with a fresh connection next time
        lz, tot = b.pgss_counts(lazy_table)
        r["lazy"], r["total"] = lz, tot
        return r

    try:
        b.make_tmp()
        b.start_postgres()
        b.load_data()
        b.open_admin()
        b.start_targets()
        if a.calibrate:
            log(f"relay check: {a.calibrate} x SELECT 1 direct vs via relay (psycopg2)")
            calib = b.calibrate(a.calibrate)
            log(f"  direct {calib[0]:.3f} ms, via relay {calib[1]:.3f} ms per SELECT 1: "
                f"+{calib[1] - calib[0]:.3f} ms per round trip")
        for d in a.drivers:
            for t in a.targets:
                for w in a.workloads:
                    r = one_run(d, t, w)
                    if r.get("error"):
                        log(f"warm-up {d} {t} {w}: ERROR {r['error']}")
        log(f"warm-up done; {a.reps} repetition(s)")
        total = a.reps * len(a.drivers) * len(a.workloads) * len(a.targets)
        n = 0
        for rep in range(a.reps):
            k = rep % len(a.targets)
            order = a.targets[k:] + a.targets[:k]
            for d in a.drivers:
                for w in a.workloads:
                    for t in order:
                        n += 1
                        r = one_run(d, t, w, rep)
                        results.append(r)
                        log(f"[{n}/{total}] rep {rep + 1} {d} {w} {t}: {fmt_s(r.get('secs'))} s, "
                            f"statements {r.get('lazy', '–')} / {r.get('total', '–')}"
                            + (f"  ERROR: {r['error']}" if r.get("error") else ""))
    except KeyboardInterrupt as e:
        log(f"interrupted ({str(e) or 'Ctrl-C'}); cleaning up")
        interrupted = True
    except pc.BenchError as e:
        log(f"error: {e}")
        interrupted = True
    finally:
        for c in clients.values():
            c.dispose()
        loop.close()
        if getattr(b, "admin", None) is not None:
            b.admin.close()
        for m in reversed(b.children):
            try:
                m.stop()
            except Exception as ex:
                log(f"could not stop {m.name}: {ex}")
        if b.tmp:
            if a.keep:
                log(f"kept {b.tmp}")
            else:
                shutil.rmtree(b.tmp, ignore_errors=True)

    if not results:
        return 1
    rtt = 2 * a.delay_ms
    header = [
        f"# N+1 lazy loading: direct vs PgBouncer vs pgcoalesce, PostgreSQL {rtt:g} ms "
        f"round trip away ({started:%Y-%m-%d %H:%M})",
        "",
        f"- targets: {', '.join(a.targets)}; \"+relay\" = the link to PostgreSQL goes through "
        f"bench/delay_relay.py, {a.delay_ms:g} ms each way; the app reaches a proxy over "
        "plain loopback",
        f"- one unit of work = a fresh Session: load the list, touch the lazy relationship "
        f"(lazy=\"select\") on every row, close the session; {a.reps} timed repetition(s) "
        "after one warm-up per cell, targets alternated (order rotated each repetition); "
        "medians, ratios are medians of per-repetition ratios",
        f"- proxies: pool_mode=transaction, pool size {a.pool_size}; pgcoalesce "
        + (b.pgc_desc if hasattr(b, "pgc_desc") else "not run")
        + (f", extra settings: {', '.join(f'{k}={v}' for k, v in a.pgc_set)}"
           if a.pgc_set else ", n1_batch_* at their defaults")
        + f"; {getattr(b, 'pgbouncer_version', 'PgBouncer not run')}",
        f"- PostgreSQL {getattr(b, 'pg_version', '?')} (fsync off); {', '.join(versions)}; "
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"load average {load0:.2f} at start",
    ]
    if calib:
        header.append(f"- relay check ({a.calibrate} × SELECT 1, psycopg2, autocommit): "
                      f"direct {calib[0]:.3f} ms, via relay {calib[1]:.3f} ms per round trip: "
                      f"**+{calib[1] - calib[0]:.3f} ms** (nominal {rtt:g})")
    if not a.pgss:
        header.append("- pg_stat_statements not available: no server statement counts "
                      "(apt-get install -y postgresql-contrib)")
    if interrupted:
        header.append("- **run incomplete** (interrupted or failed); partial results")
    errs = [r for r in results if r.get("error")]
    if errs:
        header.append(f"- {len(errs)} run(s) had errors: "
                      + "; ".join(sorted({f"{r['driver']} {r['target']}: {r['error'][:120]}"
                                          for r in errs})[:6]))
    legend = ("Workloads: " + "; ".join(f"`{w}` = {WORKLOADS[w][2]}" for w in a.workloads)
              + ". Statements per unit of work include BEGIN and ROLLBACK; "
              "\"lazy-load table\" counts the statements on the table the loop reads "
              "(the child table for o2m, the parent table for m2o), batched ones included.")
    report = "\n".join(header) + "\n\n" + legend + "\n\n" \
        + render(results, a, a.targets, a.workloads, a.drivers, a.pgss)
    if a.raw:
        report += "\n### Raw runs\n\n" + render_raw(results) + "\n"
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)
        log(f"wrote {a.out}")
    if interrupted:
        return 1
    return 2 if errs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
