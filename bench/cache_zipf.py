#!/usr/bin/python3
"""Zipf-distributed primary-key reads: pgcoalesce with the identity-map cache
on, the same pgcoalesce with it off, PgBouncer 1.18 and PostgreSQL direct.

A table `items` (--rows rows, int primary key and a few columns) is read by
--clients concurrent client processes, each doing point lookups
`SELECT * FROM items WHERE id = %s` in autocommit (psycopg2, simple protocol;
or psycopg 3, extended protocol, --prepare-threshold 0 by default). The keys
follow a Zipf distribution (P(rank k) ~ 1/k^s, s = --zipf-s, default 1.1)
over the key space; ranks are mapped to ids through a fixed shuffle, so the
hot rows are spread over the table. Everything is seeded (--seed): every
target reads the same key sequence in a given repetition, and each
repetition (and the warm-up) has its own.

Started in one temp dir (stopped and removed on exit): a private PostgreSQL
with pg_stat_statements, a redis-server (no persistence), two pgcoalesce from
the same copied binary (cache_url pointing at that Redis, and no cache_url;
both n1_mode = detect by default, since the cache needs statement shapes),
and a PgBouncer, all with the same pool size. The cache-on target is warmed
up first (reported as its own "warm-up" row: the cache starts empty); then
--reps repetitions run all targets alternated, the order rotated each time.

Per target: client reads/s, server statements per 1000 reads (calls of the
lookup in pg_stat_statements, reset before every run), PostgreSQL backend CPU
seconds per 1000 reads (utime+stime from /proc/PID/stat of the client
backends of the bench database, sampled while the run's connections are
still open), pg_stat_statements execution time per 1000 reads, proxy and
Redis CPU, and for the cache the hit ratio from the admin port's GET /cache
(hits / (hits + misses), as a difference over the run) next to the hit ratio
a perfect cache would have had on the same key sequence.

Reuses bench/pgbench_compare.py and bench/n1_batch.py for the processes.
Needs Debian's python3-psycopg2 (and python3-psycopg for --driver psycopg3),
redis-server, pgbouncer, postgresql-15 and postgresql-contrib: run it with
/usr/bin/python3. Never asserts timings. See bench/README.md.

    /usr/bin/python3 bench/cache_zipf.py                          # 8 clients, 20 s, 3 reps
    /usr/bin/python3 bench/cache_zipf.py --seconds 3 --reps 1 --clients 4
"""

import argparse
import array
import datetime
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgbench_compare as pc  # noqa: E402
import n1_batch as nb  # noqa: E402

log = pc.log

TARGETS = ("cache-on", "cache-off", "pgbouncer", "direct")
TARGET_DESC = {
    "cache-on": "pgcoalesce, cache_url = the script's redis-server",
    "cache-off": "pgcoalesce, same binary and settings, no cache_url",
    "pgbouncer": "PgBouncer, pool_mode = transaction",
    "direct": "PostgreSQL, one backend per client",
}
LOOKUP_SQL = "SELECT * FROM items WHERE id = %s"
# pg_stat_statements' normalised text of the lookup (both drivers)
LOOKUP_RE = re.compile(r"^\s*select \* from items where id = \$1\s*;?\s*$", re.I)
CHUNK = 1024  # keys are drawn in chunks of this many (the replay draws the same)

# Issue targets, checked (never asserted) in the report.
TARGET_HIT = 0.95
TARGET_STMT_RATIO = 0.2  # cache-on / cache-off server statements: at least 5x fewer
TARGET_TPS_RATIO = 1.0   # cache-on / cache-off client tps


# ---------------------------------------------------------------- keys


class Zipf:
    """A finite Zipf distribution over ids 1..n: rank k drawn with weight
    1/k^s, ranks mapped to ids by a fixed shuffle. Each (stream, client)
    pair has its own seeded sequence, drawn in chunks of CHUNK."""

    def __init__(self, n, s, seed):
        self.n, self.s, self.seed = n, s, seed
        self.cum = list(itertools.accumulate(k ** -s for k in range(1, n + 1)))
        ids = list(range(1, n + 1))
        random.Random(f"{seed}:perm").shuffle(ids)
        self.ids = ids  # rank - 1 -> id

    def stream(self, stream, client):
        rng = random.Random(f"{self.seed}:{stream}:{client}")
        while True:
            yield from rng.choices(self.ids, cum_weights=self.cum, k=CHUNK)

    def first(self, stream, client, count):
        return itertools.islice(self.stream(stream, client), count)

    def top_mass(self, k):
        """Share of the reads that go to the k hottest keys."""
        return self.cum[min(k, self.n) - 1] / self.cum[-1]


# ---------------------------------------------------------------- client processes


def connect(driver, port, prepare_threshold):
    if driver == "psycopg2":
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=pc.BENCH_USER,
                                dbname=pc.BENCH_DB, connect_timeout=10)
        conn.autocommit = True
        return conn
    import psycopg
    return psycopg.connect(f"host=127.0.0.1 port={port} user={pc.BENCH_USER} "
                           f"dbname={pc.BENCH_DB} connect_timeout=10",
                           autocommit=True, prepare_threshold=prepare_threshold)


def client_main(i, driver, port, prepare_threshold, prime, sql, keys, limit, q, go, close,
                abort, end):
    """One client process (forked): connect, say ready, wait for go, read
    until end.value (monotonic) or limit reads, report, then keep the
    connection open until close is set (so that the backends' CPU can be read
    before a direct backend exits)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        conn = connect(driver, port, prepare_threshold)
        cur = conn.cursor()
        if prime:  # --prime-session: one statement that is no lookup first
            cur.execute(prime)
            cur.fetchall()
    except Exception as e:
        what = "connect + prime" if prime else "connect"
        q.put(("error", i, f"{what}: {type(e).__name__}: {str(e).strip()[:200]}"))
        return
    q.put(("ready", i))
    if not go.wait(300) or abort.is_set():
        conn.close()
        return
    deadline = end.value
    lat = array.array("d")
    n = wrong = 0
    err = None
    mono, perf = time.monotonic, time.perf_counter
    t0 = perf()
    try:
        for k in keys:
            if n >= limit or mono() >= deadline:
                break
            t = perf()
            cur.execute(sql, (k,))
            rows = cur.fetchall()
            lat.append(perf() - t)
            n += 1
            # the rows are a function of the id (load_items): a wrong answer
            # must not pass as a fast one
            if len(rows) != 1 or rows[0][0] != k or rows[0][1] != f"item {k}" \
                    or rows[0][3] != k % 97:
                wrong += 1
    except Exception as e:
        err = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    elapsed = perf() - t0
    q.put(("done", i, n, elapsed, lat.tobytes(), wrong, err))
    close.wait(300)
    try:
        conn.close()
    except Exception:
        pass


# ---------------------------------------------------------------- processes


class CacheZipfBench(nb.N1BatchBench):
    def __init__(self, args):
        super().__init__(args)
        self.pgss = args.pgss
        # every direct client is a backend; the proxies' pools come on top
        self.max_connections = max(100, args.clients + 3 * args.pool_size + 20)
        self.admin_ports = {}

    def load_items(self):
        import psycopg2
        a = self.args
        conn = psycopg2.connect(host="127.0.0.1", port=self.ports["direct"],
                                user=pc.BENCH_USER, dbname=pc.BENCH_DB)
        conn.autocommit = True
        cur = conn.cursor()
        log(f"table items: {a.rows} rows")
        cur.execute(f"""
            create table items (
                id int primary key,
                name text not null,
                price numeric(10, 2) not null,
                qty int not null,
                updated_at timestamptz not null);
            insert into items
                select g, 'item ' || g, (g % 10000) / 100.0, g % 97,
                       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
                from generate_series(1, {a.rows}) g;""")
        cur.execute("vacuum analyze items")
        cur.execute("select count(*) from items")  # into shared_buffers
        cur.execute("select pg_size_pretty(pg_total_relation_size('items'))")
        self.table_size = cur.fetchone()[0]
        cur.execute("checkpoint")
        conn.close()

    def start_redis(self):
        port = pc.free_port()
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.tmp, "--daemonize", "no",
                "--protected-mode", "no"]
        log(f"starting redis-server on 127.0.0.1:{port}")
        self.redis = self.start("redis", argv, signal.SIGTERM, as_postgres=False)
        self.wait_port(self.redis, port, 20)
        self.ports["redis"] = port
        out = subprocess.run([redis, "--version"], capture_output=True, text=True)
        m = re.search(r"v=(\S+)", out.stdout)
        self.redis_version = f"Redis {m.group(1) if m else '?'}"

    def start_pgc(self, target, cache):
        a = self.args
        port, admin = pc.free_port(), pc.free_port()
        extra = "".join(f"{k} = {v}\n" for k, v in a.pgc_set)
        cache_lines = ""
        if cache:
            cache_lines = (f"cache_url = redis://127.0.0.1:{self.ports['redis']}/0\n"
                           f"cache_ttl = {a.cache_ttl}\n")
            if a.cache_timeout is not None:
                cache_lines += f"cache_timeout = {a.cache_timeout}\n"
        ini = self.write_file(
            f"pgcoalesce-{target}.ini",
            "[pgcoalesce]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "admin_addr = 127.0.0.1\n"
            f"admin_port = {admin}\n"
            "pool_mode = transaction\n"
            "auth_type = trust\n"
            f"pool_size = {a.pool_size}\n"
            "max_overflow = 0\n"
            f"max_client_conn = {max(100, a.clients + 10)}\n"
            "log_level = warning\n"
            "server_tls_sslmode = disable\n"
            f"n1_mode = {a.n1_mode}\n"
            + cache_lines + extra +
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.ports['direct']}\n",
        )
        as_pg = os.geteuid() == 0
        log(f"starting pgcoalesce ({target}) on 127.0.0.1:{port}, admin port {admin}")
        proc = self.start(f"pgcoalesce-{target}", [self.pgc_binary, "-c", ini], signal.SIGTERM,
                          as_postgres=as_pg)
        self.wait_port(proc, port, 20)
        self.ports[target] = port
        self.admin_ports[target] = admin
        self.procs[target] = proc

    def start_targets(self):
        a = self.args
        if "cache-on" in a.targets:
            self.start_redis()
        if "cache-on" in a.targets or "cache-off" in a.targets:
            self.copy_pgcoalesce()
        for t in a.targets:
            if t == "direct":
                continue  # self.ports["direct"] is PostgreSQL's
            if t == "pgbouncer":
                self.start_bouncer(t, False)
            else:
                self.start_pgc(t, t == "cache-on")
        if "cache-on" in a.targets:
            deadline = time.monotonic() + 15
            while True:
                st = self.cache_stats("cache-on")
                if st and st.get("redis_ready"):
                    break
                if st and st.get("enabled") is False:
                    self.cache_disabled = True
                    log("*** cache-on: GET /cache says the cache is off; pgcoalesce's log:\n"
                        + pc.tail(self.procs["cache-on"].logpath, 5))
                    break
                if time.monotonic() > deadline:
                    log(f"*** cache-on: Redis not ready after 15 s; /cache says {st}")
                    break
                time.sleep(0.2)

    # ---- measurements

    def cache_stats(self, target):
        port = self.admin_ports.get(target)
        if port is None:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/cache", timeout=5) as r:
                return json.loads(r.read().decode())
        except (OSError, ValueError) as e:
            log(f"GET /cache on {target} failed: {e}")
            return None

    def backend_cpu(self):
        """pid -> CPU ticks of the client backends of the bench database."""
        cur = self.admin.cursor()
        cur.execute("select pid from pg_stat_activity where datname = %s "
                    "and backend_type = 'client backend'", (pc.BENCH_DB,))
        out = {}
        for (pid,) in cur.fetchall():
            try:
                out[pid] = pc.proc_cpu_ticks(pid)
            except (OSError, IndexError, ValueError):
                pass
        return out

    def pgss_lookup(self):
        """(lookup calls, lookup exec ms, other statements) since the reset."""
        if not self.pgss:
            return None, None, None
        cur = self.admin.cursor()
        cur.execute("select query, calls, total_exec_time from pg_stat_statements "
                    "where dbid = %s", (self.bench_dbid,))
        calls = other = 0
        ms = 0.0
        for query, c, t in cur.fetchall():
            if LOOKUP_RE.match(query):
                calls += c
                ms += t
            else:
                other += c
        return calls, ms, other


def diff_cache(before, after):
    if not before or not after:
        return None
    d = {}
    for k, v in after.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) \
                and isinstance(before.get(k), (int, float)):
            d[k] = v - before[k]
    d["enabled"] = after.get("enabled")
    d["bypass"] = sum(v for k, v in d.items() if k.startswith("bypass_"))
    h, m = d.get("hits", 0), d.get("misses", 0)
    d["hit_ratio"] = h / (h + m) if h + m else None
    d["redis_latency_avg_ms"] = after.get("redis_latency_avg_ms")
    d["redis_last_error"] = after.get("redis_last_error")
    return d


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(math.ceil(p * len(sorted_vals))) - 1))
    return sorted_vals[k]


def run_one(b, ctx, zipf, target, phase, rep, stream, seconds, reads, key_lists=None):
    """One timed run of --clients processes against target. stream names the
    key sequence; key_lists (one list per client) replaces it (prefill)."""
    a = b.args
    r = {"target": target, "phase": phase, "rep": rep, "stream": stream}
    proxy = b.procs.get(target)
    if proxy is not None and not proxy.alive():
        code = proxy.popen.returncode
        how = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}")
        r["error"] = f"{target} not running ({how})"
        if target not in b.dead_logged:
            b.dead_logged.add(target)
            log(f"{target} exited; log {proxy.logpath}:\n" + pc.tail(proxy.logpath))
        return r
    n = a.clients
    q = ctx.Queue()
    go, close, abort = ctx.Event(), ctx.Event(), ctx.Event()
    end = ctx.Value("d", float("inf"), lock=False)
    limit = reads if reads else sys.maxsize
    procs = []
    for i in range(n):
        keys = iter(key_lists[i]) if key_lists is not None else zipf.stream(stream, i)
        p = ctx.Process(target=client_main, name=f"client-{i}",
                        args=(i, a.driver, b.ports[target], a.prepare_threshold, a.prime_session,
                              a.sql, keys, limit, q, go, close, abort, end), daemon=True)
        p.start()
        procs.append(p)
    b.live_clients = procs
    done = {}
    try:
        errors = []
        for _ in range(n):
            try:
                msg = q.get(timeout=60)
            except Exception:
                errors.append("a client did not connect within 60 s")
                break
            if msg[0] == "error":
                errors.append(msg[2])
        if errors:
            r["error"] = errors[0]
            abort.set()
            go.set()
            return r
        # before: everything reset or sampled while the clients wait
        b.pgss_reset()
        cache0 = b.cache_stats(target) if target in b.admin_ports else None
        be0 = b.backend_cpu()
        proxy0 = pc.tree_cpu_seconds(proxy.pid) if proxy else None
        redis0 = pc.tree_cpu_seconds(b.redis.pid) if getattr(b, "redis", None) else None
        t0 = time.monotonic()
        if not reads:
            end.value = t0 + seconds
        go.set()
        wait = (seconds + 120) if not reads else a.run_timeout
        deadline = time.monotonic() + wait
        while len(done) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                msg = q.get(timeout=min(left, 5))
            except Exception:  # queue.Empty
                if all(not procs[i].is_alive() for i in range(n) if i not in done):
                    break  # the rest died without reporting
                continue
            if msg[0] == "done":
                done[msg[1]] = msg
        wall = time.monotonic() - t0
        # after: sampled while the connections are still open
        be1 = b.backend_cpu()
        proxy1 = pc.tree_cpu_seconds(proxy.pid) if proxy else None
        redis1 = pc.tree_cpu_seconds(b.redis.pid) if getattr(b, "redis", None) else None
        calls, exec_ms, other = b.pgss_lookup()
        cache1 = b.cache_stats(target) if cache0 is not None else None
    finally:
        close.set()
        for p in procs:
            p.join(timeout=15)
        for p in procs:
            if p.is_alive():
                p.terminate()  # our own child, by its pid
                p.join(timeout=5)
        b.live_clients = []
        q.close()

    counts = [0] * n
    lat = array.array("d")
    elapsed = []
    wrong = 0
    errs = []
    for i, msg in done.items():
        _, _, cnt, el, latb, wr, err = msg
        counts[i] = cnt
        elapsed.append(el)
        lat.frombytes(latb)
        wrong += wr
        if err:
            errs.append(err)
    total = sum(counts)
    r["counts"] = counts
    r["reads"] = total
    if len(done) < n:
        errs.append(f"{n - len(done)} client(s) did not finish within {wait:.0f} s")
    if wrong:
        errs.append(f"{wrong} wrong answer(s)")
    if errs:
        r["error"] = "; ".join(sorted(set(errs)))[:300]
    secs = max(elapsed) if elapsed else wall
    r["secs"] = secs
    if not total:
        r["error"] = r.get("error") or "no reads"
        return r
    r["tps"] = total / secs
    lat = sorted(lat)
    r["lat_ms"] = statistics.fmean(lat) * 1e3
    r["p50_ms"] = percentile(lat, 0.50) * 1e3
    r["p99_ms"] = percentile(lat, 0.99) * 1e3
    per_k = 1000.0 / total
    ticks = sum(v - be0.get(pid, 0) for pid, v in be1.items())
    r["backends"] = len(set(be0) | set(be1))
    r["backends_gone"] = len(set(be0) - set(be1))
    r["pg_cpu"] = ticks / pc.CLK_TCK * per_k
    if proxy0 is not None and proxy1 is not None:
        r["proxy_cpu"] = (proxy1 - proxy0) * per_k
    if target == "cache-on" and redis0 is not None and redis1 is not None:
        r["redis_cpu"] = (redis1 - redis0) * per_k
    if calls is not None:
        r["stmts"] = calls * per_k
        r["exec_ms"] = exec_ms * per_k
        r["other_stmts"] = other
    c = diff_cache(cache0, cache1)
    if c is not None:
        r["cache"] = c
        if c.get("enabled") is not False and target == "cache-on":
            r["hit"] = c["hit_ratio"]
    return r


def ideal_hit(zipf, seen, r):
    """Hit ratio of a perfect cache (never evicts, no races, no TTL) on the
    keys this run read, given what earlier cache-on runs left in it; adds the
    run's keys to seen."""
    if not r.get("reads"):
        return None
    if r["stream"] is None:  # prefill: every id once
        return None
    new = set()
    for i, cnt in enumerate(r["counts"]):
        new.update(zipf.first(r["stream"], i, cnt))
    new -= seen
    seen |= new
    return 1.0 - len(new) / r["reads"]


# ---------------------------------------------------------------- report


def fmt(v, digits=0):
    return pc.fmt(v, digits)


def fmt_ratio(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


def med(rs, key):
    return pc.median_or_none(r.get(key) for r in rs if not r.get("error"))


def ratio_median(results, num, den, key):
    out = []
    for rep in sorted({r["rep"] for r in results if r["phase"] == "measure"}):
        by = {r["target"]: r for r in results if r["phase"] == "measure" and r["rep"] == rep}
        x, y = by.get(num), by.get(den)
        if x and y and not x.get("error") and not y.get("error") \
                and x.get(key) is not None and y.get(key):
            out.append(x[key] / y[key])
    return statistics.median(out) if out else None


def render(results, a):
    cols = ["target", "tps (reads/s)", "mean / p99 ms", "server stmts / 1000 reads",
            "PG backend CPU s / 1000 reads", "PG exec ms / 1000 reads (pgss)",
            "proxy CPU s / 1000 reads", "Redis CPU s / 1000 reads", "cache hit ratio",
            "perfect-cache hit ratio"]
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    rows = []
    warm = [r for r in results if r["phase"] == "warmup" and r["target"] == "cache-on"]
    if warm:
        rows.append(("cache-on, warm-up (cache empty at start)"
                     if not a.prefill else "cache-on, warm-up (after prefill)", warm))
    for t in a.targets:
        rows.append((t, [r for r in results if r["phase"] == "measure" and r["target"] == t]))
    for label, rs in rows:
        if not rs:
            continue
        nerr = sum(1 for r in rs if r.get("error"))
        tps = fmt(med(rs, "tps"))
        if nerr:
            tps += f" ({nerr} err)"
        lat = med(rs, "lat_ms")
        p99 = med(rs, "p99_ms")
        cells = [label, tps,
                 "–" if lat is None else f"{lat:.3f} / {p99:.2f}",
                 fmt(med(rs, "stmts"), 1), fmt(med(rs, "pg_cpu"), 4),
                 fmt(med(rs, "exec_ms"), 2), fmt(med(rs, "proxy_cpu"), 4),
                 fmt(med(rs, "redis_cpu"), 4),
                 fmt_ratio(med(rs, "hit"), 4), fmt_ratio(med(rs, "ideal_hit"), 4)]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)

    # ratios
    have = set(a.targets)
    rl = ["| ratio (median of per-repetition ratios) | cache-on / cache-off "
          "| cache-on / pgbouncer | issue target |",
          "|---|---:|---:|---|"]

    def cell(num, den, key, inverse_note=False):
        if num not in have or den not in have:
            return None, "–"
        v = ratio_median(results, num, den, key)
        if v is None:
            return None, "–"
        s = f"{v:.3f}"
        if inverse_note and v > 0:
            s += f" ({1 / v:.1f}× fewer)"
        return v, s

    def check(v, ok):
        return "" if v is None else (" ✓" if ok(v) else " ✗")

    v1, s1 = cell("cache-on", "cache-off", "tps")
    _, s2 = cell("cache-on", "pgbouncer", "tps")
    rl.append(f"| client tps | {s1} | {s2} | cache-on/cache-off ≥ {TARGET_TPS_RATIO:g}"
              f"{check(v1, lambda v: v >= TARGET_TPS_RATIO)} |")
    v1, s1 = cell("cache-on", "cache-off", "stmts", True)
    _, s2 = cell("cache-on", "pgbouncer", "stmts", True)
    rl.append(f"| server statements | {s1} | {s2} | cache-on/cache-off ≤ "
              f"{TARGET_STMT_RATIO:g} (5× fewer){check(v1, lambda v: v <= TARGET_STMT_RATIO)} |")
    _, s1 = cell("cache-on", "cache-off", "pg_cpu")
    _, s2 = cell("cache-on", "pgbouncer", "pg_cpu")
    rl.append(f"| PG backend CPU per read | {s1} | {s2} | – |")
    hit = med([r for r in results if r["phase"] == "measure" and r["target"] == "cache-on"],
              "hit")
    rl.append(f"| cache hit ratio (cache-on, median) | {fmt_ratio(hit, 4)} | | "
              f"≥ {TARGET_HIT:g}{check(hit, lambda v: v >= TARGET_HIT)} |")
    return table + "\n\n" + "\n".join(rl)


def render_raw(results):
    lines = ["| phase | rep | target | reads | s | tps | mean ms | p99 ms | stmts/1k | "
             "other stmts | PG CPU s/1k | backends | proxy CPU s/1k | hits | misses | bypass "
             "| fills | refused | skipped | hit | perfect | note |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
             "|---:|---:|---:|---:|---:|---|"]
    for r in results:
        c = r.get("cache") or {}
        byp = ", ".join(f"{k[7:]} {int(v)}" for k, v in c.items()
                        if k.startswith("bypass_") and v)
        note = r.get("error") or ""
        if byp:
            note = (note + "; " if note else "") + "bypass: " + byp
        if r.get("backends_gone"):
            note = (note + "; " if note else "") + f"{r['backends_gone']} backend(s) exited"
        lines.append("| " + " | ".join([
            r["phase"], "–" if r["rep"] is None else str(r["rep"] + 1), r["target"],
            fmt(r.get("reads")), fmt(r.get("secs"), 2), fmt(r.get("tps")),
            fmt(r.get("lat_ms"), 3), fmt(r.get("p99_ms"), 2), fmt(r.get("stmts"), 1),
            fmt(r.get("other_stmts")), fmt(r.get("pg_cpu"), 4), fmt(r.get("backends")),
            fmt(r.get("proxy_cpu"), 4),
            fmt(c.get("hits")), fmt(c.get("misses")), fmt(c.get("bypass")),
            fmt(c.get("fills")), fmt(c.get("fills_refused")), fmt(c.get("fills_skipped")),
            fmt_ratio(r.get("hit"), 4), fmt_ratio(r.get("ideal_hit"), 4),
            note.replace("|", "/")[:200],
        ]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Zipf primary-key reads: pgcoalesce cache on / off, PgBouncer, direct.")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated subset of {','.join(TARGETS)} (default all)")
    p.add_argument("--clients", type=int, default=8, help="client processes (default 8)")
    p.add_argument("--seconds", "-T", type=float, default=20.0,
                   help="seconds per timed run (default 20)")
    p.add_argument("--reads", type=int, default=None,
                   help="reads per client per run instead of --seconds")
    p.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of the cache-on warm-up run, reported as its own row "
                        "(default --seconds; with --reads it does --reads per client; 0 skips)")
    p.add_argument("--other-warmup", type=float, default=2.0,
                   help="untimed seconds for each other target before measuring, to open "
                        "the pools (default 2; 0 skips)")
    p.add_argument("--prefill", action="store_true",
                   help="before the warm-up, read every id once through cache-on, so the "
                        "cache holds the whole table")
    p.add_argument("--rows", type=int, default=100000, help="rows in items (default 100000)")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent (default 1.1)")
    p.add_argument("--seed", type=int, default=42, help="key sequence seed (default 42)")
    p.add_argument("--driver", choices=["psycopg2", "psycopg3"], default="psycopg2",
                   help="psycopg2 (simple protocol, literals inlined; default) or psycopg3 "
                        "(extended protocol)")
    p.add_argument("--prepare-threshold", default="0",
                   help="psycopg3 prepare_threshold: 0 = named prepared statements from the "
                        "first execution (default), 'none' = unnamed statements only")
    p.add_argument("--param-format", choices=["auto", "text", "binary"], default="auto",
                   help="psycopg3 placeholder: auto = %%s (psycopg 3 sends a Python int in "
                        "binary, as int2/int4/int8 by value), text = %%t, binary = %%b")
    p.add_argument("--prime-session", nargs="?", const="SELECT 1", default=None, metavar="SQL",
                   help="have every new connection run SQL (default SELECT 1) before its "
                        "first lookup, untimed and not counted")
    p.add_argument("--pool-size", type=int, default=4,
                   help="server connections per pool, both pgcoalesce and PgBouncer (default 4)")
    p.add_argument("--n1-mode", default="detect", choices=["off", "detect", "batch"],
                   help="n1_mode of both pgcoalesce targets (default detect: the cache needs "
                        "statement shapes, and detect changes no statement, so the cache is "
                        "measured alone; batch also batches the lookups of cache-off; off "
                        "turns the cache off too)")
    p.add_argument("--cache-ttl", type=int, default=3600,
                   help="cache_ttl of cache-on, seconds (default 3600: longer than the run)")
    p.add_argument("--cache-timeout", default=None,
                   help="cache_timeout of cache-on, seconds (default: pgcoalesce's own)")
    p.add_argument("--pgc-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra [pgcoalesce] setting for both pgcoalesce targets (repeatable)")
    p.add_argument("--run-timeout", type=float, default=600.0,
                   help="with --reads: seconds before a run counts as hung (default 600)")
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
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    bad = [t for t in a.targets if t not in TARGETS]
    if bad or not a.targets:
        p.error(f"unknown target(s) {bad}; choose from {','.join(TARGETS)}")
    a.targets = [t for t in TARGETS if t in a.targets]
    if a.clients < 1 or a.reps < 1 or a.rows < 1 or a.pool_size < 1:
        p.error("--clients, --reps, --rows and --pool-size must be >= 1")
    if a.reads is not None and a.reads < 1:
        p.error("--reads must be >= 1")
    if a.seconds <= 0:
        p.error("--seconds must be > 0")
    if a.warmup is None:
        a.warmup = a.seconds
    a.sql = LOOKUP_SQL
    if a.driver == "psycopg3":
        a.sql = LOOKUP_SQL.replace("%s", {"auto": "%s", "text": "%t", "binary": "%b"}
                                   [a.param_format])
    elif a.param_format != "auto":
        p.error("--param-format is for --driver psycopg3")
    pt = a.prepare_threshold.strip().lower()
    a.prepare_threshold = None if pt == "none" else int(pt)
    sets = []
    for kv in a.pgc_set:
        if "=" not in kv:
            p.error(f"--pgc-set takes KEY=VALUE, not {kv!r}")
        k, v = kv.split("=", 1)
        sets.append((k.strip(), v.strip()))
    a.pgc_set = sets
    if "pgbouncer" in a.targets and not os.access(a.pgbouncer, os.X_OK):
        p.error(f"pgbouncer not found: {a.pgbouncer} (apt-get install pgbouncer)")
    if "cache-on" in a.targets and a.n1_mode == "off":
        log("warning: pgcoalesce runs without the cache when n1_mode = off (it needs the "
            "statement shapes); cache-on will be a second cache-off")
    if "cache-on" in a.targets and not (shutil.which("redis-server")
                                        or os.access("/usr/bin/redis-server", os.X_OK)):
        p.error("redis-server not found (apt-get install redis-server)")
    return a


def main(argv):
    a = parse_args(argv)
    command = "/usr/bin/python3 bench/cache_zipf.py" + (" " + shlex.join(argv) if argv else "")
    try:
        import psycopg2
        versions = [f"psycopg2 {psycopg2.__version__.split()[0]}"]
        if a.driver == "psycopg3":
            import psycopg
            versions = [f"psycopg {psycopg.__version__}"]
    except ImportError as e:
        sys.exit(f"cache_zipf.py needs psycopg2 (and psycopg for --driver psycopg3): {e}; "
                 f"run it with /usr/bin/python3, not {sys.executable}")
    if a.pgss:
        a.pgss = nb.check_pgss(a)
    if a.driver == "psycopg3" and a.prepare_threshold is not None and "pgbouncer" in a.targets:
        log("warning: PgBouncer 1.18 has no protocol-level prepared statements in transaction "
            "mode; with --driver psycopg3 --prepare-threshold 0 expect pgbouncer errors "
            "(use --prepare-threshold none, or leave pgbouncer out of --targets)")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    ctx = multiprocessing.get_context("fork")
    b = CacheZipfBench(a)
    b.live_clients = []
    zipf = Zipf(a.rows, a.zipf_s, a.seed)
    seen = set()  # what a perfect cache would hold (cache-on runs so far)
    results = []
    started = datetime.datetime.now()
    load0 = os.getloadavg()
    interrupted = False
    secs, reads = a.seconds, a.reads

    def note(r, what):
        c = r.get("cache") or {}
        extra = ""
        if r.get("hit") is not None:
            extra += f", hit {r['hit']:.4f}"
        if r.get("ideal_hit") is not None:
            extra += f" (perfect cache {r['ideal_hit']:.4f})"
        if c.get("bypass"):
            extra += f", bypass {c['bypass']:.0f}"
        log(f"{what} {r['target']}: {fmt(r.get('reads'))} reads, tps {fmt(r.get('tps'))}, "
            f"stmts/1k {fmt(r.get('stmts'), 1)}, PG CPU s/1k {fmt(r.get('pg_cpu'), 4)}"
            + extra + (f"  ERROR: {r['error']}" if r.get("error") else ""))

    try:
        b.make_tmp()
        b.start_postgres()
        b.load_items()
        b.open_admin()
        b.start_targets()
        if "cache-on" in a.targets:
            if a.prefill:
                ids = list(range(1, a.rows + 1))
                lists = [ids[i::a.clients] for i in range(a.clients)]
                log(f"prefill: every id once through cache-on ({a.rows} reads)")
                r = run_one(b, ctx, zipf, "cache-on", "prefill", None, None, 1e9,
                            len(lists[0]), key_lists=lists)
                seen.update(ids)
                note(r, "prefill")
            if a.warmup > 0:
                log("warm-up cache-on" + (f": {a.warmup:g} s" if not reads else
                                          f": {reads} reads per client"))
                r = run_one(b, ctx, zipf, "cache-on", "warmup", None, "warmup", a.warmup, reads)
                r["ideal_hit"] = ideal_hit(zipf, seen, r)
                results.append(r)
                note(r, "warm-up")
        if a.other_warmup > 0:
            for t in a.targets:
                if t == "cache-on":
                    continue
                r = run_one(b, ctx, zipf, t, "other-warmup", None, "other-warmup",
                            a.other_warmup, None)
                note(r, "warm-up (untimed)")
        total = a.reps * len(a.targets)
        n = 0
        for rep in range(a.reps):
            k = rep % len(a.targets)
            order = a.targets[k:] + a.targets[:k]
            for t in order:
                n += 1
                r = run_one(b, ctx, zipf, t, "measure", rep, f"rep{rep}", secs, reads)
                if t == "cache-on":
                    r["ideal_hit"] = ideal_hit(zipf, seen, r)
                results.append(r)
                note(r, f"[{n}/{total}] rep {rep + 1}")
    except KeyboardInterrupt as e:
        log(f"interrupted ({str(e) or 'Ctrl-C'}); cleaning up")
        interrupted = True
    except pc.BenchError as e:
        log(f"error: {e}")
        interrupted = True
    finally:
        for p in getattr(b, "live_clients", []):
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        if getattr(b, "admin", None) is not None:
            b.admin.close()
        logs = {m.name: m.logpath for m in b.children}
        for m in reversed(b.children):
            try:
                m.stop()
            except Exception as ex:
                log(f"could not stop {m.name}: {ex}")
        for name in ("pgcoalesce-cache-on", "pgcoalesce-cache-off"):
            if name in logs:
                t = pc.tail(logs[name], 5).strip()
                if t and t != "(no log)":
                    log(f"last lines of {name}'s log:\n{t}")
        if b.tmp:
            if a.keep:
                log(f"kept {b.tmp}")
            else:
                shutil.rmtree(b.tmp, ignore_errors=True)

    if not results:
        return 1
    run_desc = (f"{reads} reads per client per run" if reads
                else f"{secs:g} s per run")
    drv = (f"psycopg 3, extended protocol, prepare_threshold={a.prepare_threshold}, "
           f"placeholder {a.sql.split()[-1]}"
           if a.driver == "psycopg3" else "psycopg2, simple protocol (literal inlined)")
    header = [
        f"# Zipf primary-key reads: pgcoalesce cache on / off vs PgBouncer vs direct "
        f"({started:%Y-%m-%d %H:%M})",
        "",
        f"- command: `{command}`",
        f"- workload: `{a.sql}` in autocommit, {a.clients} client processes, {drv}; "
        f"keys Zipf s={a.zipf_s:g} over {a.rows:,} ids (seed {a.seed}; "
        f"the hottest 1% of the ids get {zipf.top_mass(max(1, a.rows // 100)):.0%} of the "
        f"reads, the hottest 10% {zipf.top_mass(max(1, a.rows // 10)):.0%}); "
        f"table items {getattr(b, 'table_size', '?')}"
        + (f"; every new connection first runs `{a.prime_session}` (--prime-session, untimed)"
           if a.prime_session else ""),
        f"- {run_desc}, {a.reps} repetition(s), targets alternated (order rotated each "
        "repetition), every target reads the same key sequence within a repetition and each "
        "repetition has a new one; medians shown, ratios are medians of per-repetition ratios",
        "- warm-up: " + ("every id read once through cache-on (--prefill), then " if a.prefill
                         else "")
        + (f"one cache-on run ({'%g s' % a.warmup if not reads else '%d reads/client' % reads}"
           ", its own key sequence), shown as its own row"
           if a.warmup > 0 and "cache-on" in a.targets else "no cache-on warm-up run")
        + (f"; {a.other_warmup:g} s untimed for each other target" if a.other_warmup > 0
           else ""),
        "- targets: " + "; ".join(f"{t} = {TARGET_DESC[t]}" for t in a.targets),
        f"- proxies: pool size {a.pool_size} (pgcoalesce pool_size, max_overflow 0; PgBouncer "
        f"default_pool_size), pool_mode = transaction; pgcoalesce n1_mode = {a.n1_mode}, "
        f"cache_ttl = {a.cache_ttl}"
        + (f", cache_timeout = {a.cache_timeout}" if a.cache_timeout is not None
           else ", cache_timeout default")
        + (", " + ", ".join(f"{k} = {v}" for k, v in a.pgc_set) if a.pgc_set else "")
        + f"; {getattr(b, 'pgc_desc', 'pgcoalesce not run')}",
        f"- PostgreSQL {getattr(b, 'pg_version', '?')} (fsync off, shared_buffers 128MB); "
        f"{getattr(b, 'pgbouncer_version', 'PgBouncer not run')}; "
        f"{getattr(b, 'redis_version', 'Redis not run')}; {', '.join(versions)}; "
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, load average "
        f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at start",
        "- server stmts: calls of the lookup in pg_stat_statements (reset before each run) "
        "per 1000 client reads. PG backend CPU: utime+stime from /proc/PID/stat of the "
        "client backends of the bench database (pg_stat_activity), sampled before and after "
        "the run while its connections are open, clock ticks of "
        f"{1000 // pc.CLK_TCK} ms; PG exec ms: pg_stat_statements total_exec_time of the "
        "lookup. Proxy and Redis CPU: the same from /proc for those processes. Cache hit "
        "ratio: hits / (hits + misses) from GET /cache on pgcoalesce's admin port, the "
        "difference over the run (bypassed lookups are in neither; see --raw); "
        "perfect-cache hit ratio: a cache that never evicts or races, on the same keys",
    ]
    if getattr(b, "cache_disabled", False):
        header.append("- **cache-on ran without the cache**: GET /cache said enabled=false "
                      "(see pgcoalesce's log, e.g. n1_mode = off)")
    if not a.pgss:
        header.append("- pg_stat_statements not available: no server statement counts "
                      "(apt-get install -y postgresql-contrib)")
    if interrupted:
        header.append("- **run incomplete** (interrupted or failed); partial results")
    errs = [r for r in results if r.get("error")]
    if errs:
        header.append(f"- {len(errs)} run(s) had errors: "
                      + "; ".join(sorted({f"{r['target']}: {r['error'][:120]}"
                                          for r in errs})[:6]))
    report = "\n".join(header) + "\n\n" + render(results, a) + "\n"
    if a.raw:
        report += "\n### Raw runs\n\n" + render_raw(results) + "\n"
    print(report)
    print(f"command: {command}")
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)
        log(f"wrote {a.out}")
    if interrupted:
        return 1
    return 2 if errs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
