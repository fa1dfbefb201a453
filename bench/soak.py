#!/usr/bin/python3
"""Soak: many client connections on a few server connections, under load.

Starts a private PostgreSQL and one pgcoalesce (transaction mode, pool_size
20, max_overflow 0), then:

  1. measures pgcoalesce's RSS with no client (the base);
  2. opens --clients client connections (raw protocol v3, trust auth: a
     StartupMessage, then wait for ReadyForQuery) and keeps them open; the
     RSS per idle client is (RSS now - base) / clients;
  3. for --seconds runs pgbench -S (--pgbench-clients, default 64) through
     pgcoalesce while every idle client also runs `SELECT 1` about every
     --idle-query-every seconds (idle and active mixed), samples pgcoalesce's
     RSS every few seconds (drift = last sample - first sample), and checks
     the admin port (GET /healthz, and SHOW POOLS through psql) every 2 s;
  4. reports: connections held, errors (pgbench failures, idle clients that
     got an error or lost their connection, admin checks that failed or took
     over 2 s), RSS per idle client, RSS drift, the longest admin answer.

    /usr/bin/python3 bench/soak.py                          # 10,000 clients, 5 minutes
    /usr/bin/python3 bench/soak.py --clients 1000 --seconds 30 --json out.json   # CI's size

Open files: the script raises its own soft limit to the hard limit, and
pgcoalesce inherits it; 10,000 clients need about 10,100 descriptors in each
(this machine allows 20,000). The exit status is 0 only with zero errors.
"""

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgbench_compare as pc  # noqa: E402

log = pc.log


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10000, help="idle client connections held")
    p.add_argument("--seconds", type=int, default=300, help="length of the load phase")
    p.add_argument("--pgbench-clients", type=int, default=64)
    p.add_argument("--pool-size", type=int, default=20)
    p.add_argument("--idle-query-every", type=float, default=20.0,
                   help="each idle client runs SELECT 1 about this often (seconds; 0: never)")
    p.add_argument("--scale", type=int, default=5, help="pgbench -i -s")
    p.add_argument("--build", default=os.path.join(pc.REPO_ROOT, "build"))
    p.add_argument("--pg-bin", default=pc.PG_BIN_DEFAULT)
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--pgc-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra pgcoalesce setting (repeatable), e.g. n1_mode=off")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    a = p.parse_args(argv)
    a.pgcoalesce = os.path.join(a.build, "pgcoalesce")
    if not os.access(a.pgcoalesce, os.X_OK):
        p.error(f"no pgcoalesce in {a.build} (build it or pass --build DIR)")
    # what pgbench_compare.Bench reads
    a.clients_list = [a.pgbench_clients]
    a.unsafe_fast = True
    a.mode = "simple"
    return a


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---- a minimal protocol-v3 client: startup, simple queries ----------------------------------

def startup_message(user, database):
    body = struct.pack("!I", 196608)
    for k, v in (("user", user), ("database", database), ("application_name", "soak")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def query_message(sql):
    b = sql.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(b) + 4) + b


class IdleClient:
    """One connection: log in, then answer run_query() calls; errors are counted."""

    def __init__(self, stats):
        self.stats = stats
        self.reader = self.writer = None

    async def read_until_ready(self):
        """Messages up to ReadyForQuery; returns the ErrorResponse text if any."""
        error = None
        while True:
            head = await self.reader.readexactly(5)
            typ, n = head[:1], struct.unpack("!I", head[1:])[0]
            body = await self.reader.readexactly(n - 4)
            if typ == b"E":
                fields = dict((f[:1], f[1:]) for f in body.split(b"\0") if f)
                error = "%s %s" % (fields.get(b"C", b"?").decode(), fields.get(b"M", b"").decode())
            elif typ == b"R" and struct.unpack("!I", body[:4])[0] != 0:
                raise RuntimeError("soak needs trust auth")
            elif typ == b"Z":
                return error

    async def connect(self, port, user, database):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(startup_message(user, database))
        await self.writer.drain()
        err = await self.read_until_ready()
        if err:
            raise RuntimeError(err)

    async def run_query(self, sql="SELECT 1"):
        try:
            self.writer.write(query_message(sql))
            await self.writer.drain()
            err = await self.read_until_ready()
            self.stats["idle_queries"] += 1
            if err:
                self.stats["idle_errors"] += 1
                self.stats.setdefault("idle_error_samples", []).append(err)
        except (OSError, asyncio.IncompleteReadError) as e:
            self.stats["idle_errors"] += 1
            self.stats.setdefault("idle_error_samples", []).append(repr(e))

    def close(self):
        if self.writer:
            try:
                self.writer.write(b"X\0\0\0\4")
                self.writer.close()
            except OSError:
                pass


async def open_clients(n, port, user, database, stats, batch=200):
    clients = []
    for start in range(0, n, batch):
        group = [IdleClient(stats) for _ in range(min(batch, n - start))]
        results = await asyncio.gather(*(c.connect(port, user, database) for c in group),
                                       return_exceptions=True)
        for c, r in zip(group, results):
            if isinstance(r, Exception):
                stats["connect_errors"] += 1
                stats.setdefault("connect_error_samples", []).append(repr(r))
            else:
                clients.append(c)
    return clients


async def idle_activity(clients, every, stop, stats):
    """Each client queries about every `every` seconds, spread evenly (one at a
    time, round robin: under load a round takes longer). Notes when every
    client has run a statement."""
    if every <= 0 or not clients:
        await stop.wait()
        return
    gap = every / len(clients)
    i = 0
    while not stop.is_set():
        t0 = time.monotonic()
        await clients[i % len(clients)].run_query()
        i += 1
        if i == len(clients):
            stats["all_active_at"] = time.monotonic()
        delay = gap - (time.monotonic() - t0)
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass


# ---- the admin port ---------------------------------------------------------------------------

def admin_check(admin_port, psql, stats):
    t0 = time.monotonic()
    ok = True
    try:
        with socket.create_connection(("127.0.0.1", admin_port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        ok = data.startswith(b"HTTP/1.1 200")
        out = subprocess.run([psql, "-h", "127.0.0.1", "-p", str(admin_port), "-U", "soak_admin",
                              "-d", "pgcoalesce", "-Atc", "SHOW POOLS"],
                             capture_output=True, text=True, timeout=10)
        ok = ok and out.returncode == 0 and "app" in out.stdout
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    took = time.monotonic() - t0
    stats["admin_checks"] += 1
    stats["admin_max_seconds"] = max(stats["admin_max_seconds"], took)
    if not ok or took > 2.0:
        stats["admin_failures"] += 1


def main(argv):
    a = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = a.clients + a.pgbench_clients + 200
    if hard < need:
        log(f"open files limit {hard} < {need} needed for {a.clients} clients")
        return 2
    b = pc.Bench(argparse.Namespace(**dict(vars(a), clients=a.clients_list)))
    stats = {"clients": a.clients, "connect_errors": 0, "idle_queries": 0, "idle_errors": 0,
             "admin_checks": 0, "admin_failures": 0, "admin_max_seconds": 0.0,
             "pgbench_failed": None, "pgbench_tps": None, "rss_samples_kib": []}
    rc = 1
    loop = asyncio.new_event_loop()
    clients = []
    try:
        b.make_tmp()
        b.start_postgres()
        port, admin_port = pc.free_port(), pc.free_port()
        b.write_file("userlist.txt", '"soak_admin" "soak"\n')
        ini = b.write_file(
            "pgcoalesce.ini",
            "[pgcoalesce]\nlisten_addr = 127.0.0.1\n"
            f"listen_port = {port}\nadmin_port = {admin_port}\n"
            "pool_mode = transaction\nauth_type = trust\nauth_file = userlist.txt\n"
            "admin_users = soak_admin\n"
            f"pool_size = {a.pool_size}\nmax_overflow = 0\n"
            f"max_client_conn = {a.clients + a.pgbench_clients + 100}\n"
            "pool_timeout = 60\nlog_level = warning\nserver_tls_sslmode = disable\n"
            + "".join(kv.replace("=", " = ", 1) + "\n" for kv in a.pgc_set)
            + f"[databases]\napp = host=127.0.0.1 port={b.ports['direct']} dbname={pc.BENCH_DB}\n",
        )
        proc = b.start("pgcoalesce", [a.pgcoalesce, "-c", ini], signal.SIGTERM, as_postgres=False)
        b.wait_port(proc, port, 20)
        # one transaction first so that the base includes a warm pool and its buffers
        subprocess.run([b.pgbench, "-h", "127.0.0.1", "-p", str(port), "-U", pc.BENCH_USER,
                        "-n", "-S", "-c", "4", "-T", "2", "app"], capture_output=True, check=True)
        time.sleep(1)
        base = rss_kib(proc.pid)
        log(f"pgcoalesce RSS with no client: {base} KiB; opening {a.clients} clients")
        t0 = time.monotonic()
        clients = loop.run_until_complete(open_clients(a.clients, port, pc.BENCH_USER, "app",
                                                       stats))
        time.sleep(1)
        held = rss_kib(proc.pid)
        stats.update(base_rss_kib=base, idle_rss_kib=held, connected=len(clients),
                     connect_seconds=round(time.monotonic() - t0, 1),
                     rss_per_idle_client_bytes=round((held - base) * 1024 / max(1, len(clients))))
        log(f"{len(clients)} clients connected in {stats['connect_seconds']} s; RSS {held} KiB: "
            f"{stats['rss_per_idle_client_bytes']} bytes per idle client")

        # load: pgbench in the background, idle clients' queries on this loop, admin checks
        stop = asyncio.Event()
        bench = subprocess.Popen(
            [b.pgbench, "-h", "127.0.0.1", "-p", str(port), "-U", pc.BENCH_USER, "-n", "-S",
             "-c", str(a.pgbench_clients), "-j", "2", "-T", str(a.seconds), "app"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        load_start = time.monotonic()
        times = []

        def watcher():
            next_rss = time.monotonic()
            while bench.poll() is None:
                if time.monotonic() >= next_rss:
                    stats["rss_samples_kib"].append(rss_kib(proc.pid))
                    times.append(time.monotonic() - load_start)
                    next_rss += max(1.0, a.seconds / 30)
                admin_check(admin_port, b.psql, stats)
                time.sleep(2)
            loop.call_soon_threadsafe(stop.set)

        th = threading.Thread(target=watcher, daemon=True)
        th.start()
        loop.run_until_complete(idle_activity(clients, a.idle_query_every, stop, stats))
        th.join()
        out = bench.stdout.read()
        m = re.search(r"tps = ([\d.]+)", out)
        stats["pgbench_tps"] = float(m.group(1)) if m else None
        m = re.search(r"number of failed transactions: (\d+)", out)
        stats["pgbench_failed"] = int(m.group(1)) if m else (0 if bench.returncode == 0 else -1)
        stats["pgbench_rc"] = bench.returncode
        if bench.returncode != 0:
            stats["pgbench_output"] = out[-2000:]
        # Every client gets its per-session state (the N+1 detector's) at its first
        # statement: growth until each idle client has run one is that, not a leak.
        # Drift is measured from then on.
        samples = stats["rss_samples_kib"]
        since = stats.pop("all_active_at", None)
        warm = [s for t, s in zip(times, samples)
                if since is not None and t >= since - load_start + 1]
        stats["all_active_after_seconds"] = (round(since - load_start, 1)
                                             if since is not None else None)
        stats["rss_drift_kib"] = warm[-1] - warm[0] if len(warm) >= 2 else None
        if warm:
            stats["rss_per_active_client_bytes"] = round(
                (warm[0] - stats["idle_rss_kib"]) * 1024 / max(1, len(clients)))
        stats["pgcoalesce_alive"] = proc.alive()
        errors = (stats["connect_errors"] + stats["idle_errors"] + stats["admin_failures"]
                  + (stats["pgbench_failed"] if stats["pgbench_failed"] and
                     stats["pgbench_failed"] > 0 else 0)
                  + (0 if bench.returncode == 0 else 1) + (0 if proc.alive() else 1))
        stats["errors"] = errors
        rc = 0 if errors == 0 else 1
    except KeyboardInterrupt:
        log("interrupted")
    except pc.BenchError as e:
        log(f"error: {e}")
        stats["error"] = str(e)
    finally:
        for c in clients:
            c.close()
        loop.close()
        for m in reversed(b.children):
            m.stop()
        if b.tmp and not a.keep:
            import shutil
            shutil.rmtree(b.tmp, ignore_errors=True)

    samples = stats["rss_samples_kib"]
    print()
    print(f"# soak: {a.clients} client connections on {a.pool_size} server connections, "
          f"{a.seconds} s of pgbench -S -c {a.pgbench_clients} plus SELECT 1 from every idle "
          f"client about every {a.idle_query_every:g} s")
    print()
    print("| measure | value |")
    print("|---|---|")
    for k, label in (("connected", "client connections held"),
                     ("connect_seconds", "seconds to open them"),
                     ("errors", "errors (all kinds)"),
                     ("connect_errors", "clients refused at connect"),
                     ("idle_queries", "queries from the idle clients"),
                     ("idle_errors", "... that failed or lost their connection"),
                     ("pgbench_tps", "pgbench tps"),
                     ("pgbench_failed", "pgbench failed transactions"),
                     ("base_rss_kib", "pgcoalesce RSS with no client (KiB)"),
                     ("rss_per_idle_client_bytes", "RSS per idle client (bytes)"),
                     ("rss_per_active_client_bytes",
                      "RSS per client once it has run statements (bytes)"),
                     ("all_active_after_seconds", "seconds until every client had run one"),
                     ("rss_drift_kib", "RSS drift from then to the end (KiB)"),
                     ("admin_checks", "admin checks (GET /healthz + SHOW POOLS)"),
                     ("admin_failures", "... failed or slower than 2 s"),
                     ("admin_max_seconds", "slowest admin check (s)")):
        v = stats.get(k)
        print(f"| {label} | {round(v, 3) if isinstance(v, float) else v} |")
    if samples:
        print(f"\nRSS samples (KiB): {', '.join(map(str, samples))}")
    for k in ("connect_error_samples", "idle_error_samples"):
        if stats.get(k):
            print(f"\n{k}: {stats[k][:5]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(stats, f, indent=1)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
