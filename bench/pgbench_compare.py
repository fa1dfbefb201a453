#!/usr/bin/python3
"""Side-by-side pgbench comparison: PostgreSQL direct vs PgBouncer vs pgcoalesce.

Starts a private PostgreSQL cluster, a PgBouncer and a pgcoalesce in front of
it, runs pgbench against each target in turn (alternating the targets across
repetitions so that drift on a noisy machine hits them all alike), and prints
a markdown table of median tps, latency and proxy CPU cost.

Everything it starts lives in one temporary directory and is stopped and
removed on exit, including on Ctrl-C, SIGTERM or an error.

Standard library only; run with /usr/bin/python3. See bench/README.md.
"""

import argparse
import datetime
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PG_BIN_DEFAULT = "/usr/lib/postgresql/15/bin"
BENCH_USER = "bench"
BENCH_DB = "bench"
ALL_TARGETS = ("direct", "pgbouncer", "pgcoalesce", "pgcoalesce-off")
DEFAULT_TARGETS = ("direct", "pgbouncer", "pgcoalesce")
PROXIES = ("pgbouncer", "pgcoalesce", "pgcoalesce-off")
# pgcoalesce targets: name -> settings added to its [pgcoalesce] section.
# "pgcoalesce" runs the defaults (n1_mode = batch); "pgcoalesce-off" the
# pooler alone, without statement shapes and N+1 detection.
PGCOALESCE_TARGETS = {"pgcoalesce": "", "pgcoalesce-off": "n1_mode = off\n"}
WORKLOADS = {
    # name -> (pgbench flags, label in the table)
    "select": (["-S"], "select-only (-S)"),
    "tpcb": ([], "TPC-B-like"),
}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Workloads whose transactions span several statements (BEGIN ... COMMIT).
MULTI_STATEMENT = ("tpcb",)


def pgbench_jobs(args, workload, clients):
    """pgbench -j for one run. With -M prepared, pgbench 15 prepares each
    client's statements with a synchronous PQprepare that blocks the client's
    whole thread; behind a transaction pooler with fewer server connections
    than clients, that thread can wait for a server held by another of its own
    clients in the middle of a BEGIN ... COMMIT, which never gets to send its
    next command: a deadlock that only pool_timeout ends. So multi-statement
    workloads get one thread per client in prepared mode (on every target,
    direct included, so that they stay comparable)."""
    if args.mode == "prepared" and workload in MULTI_STATEMENT:
        return clients
    return min(args.jobs, clients)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- helpers


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path, n=30):
    try:
        with open(path, "r", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def clean_env():
    """The environment for child processes, without libpq overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def proc_children():
    """Map pid -> list of child pids, from /proc."""
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(")") + 2:].split()
        kids.setdefault(int(rest[1]), []).append(int(name))
    return kids


def proc_cpu_ticks(pid):
    """utime+stime of one process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # Fields after "(comm) ": state ppid ... utime is field 14, stime 15.
    rest = data[data.rfind(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def tree_cpu_seconds(pid):
    """CPU seconds of a process and all its live descendants."""
    kids = proc_children()
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            total += proc_cpu_ticks(p)
        except (OSError, IndexError, ValueError):
            continue
        stack.extend(kids.get(p, []))
    return total / CLK_TCK


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0, suffix=""):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{suffix}"


# ---------------------------------------------------------------- processes


class Managed:
    """A long-running child we started: its Popen, log file and how to stop it."""

    def __init__(self, name, popen, logpath, stop_signal):
        self.name = name
        self.popen = popen
        self.logpath = logpath
        self.stop_signal = stop_signal

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self, grace=15.0):
        if not self.alive():
            return
        log(f"stopping {self.name} (pid {self.pid})")
        try:
            self.popen.send_signal(self.stop_signal)
            self.popen.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        log(f"{self.name} did not stop in {grace:.0f}s; killing it")
        try:
            self.popen.kill()
            self.popen.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


class Bench:
    def __init__(self, args):
        self.args = args
        self.pg_bin = args.pg_bin
        self.pgbench = shutil.which("pgbench") or os.path.join(self.pg_bin, "pgbench")
        self.psql = os.path.join(self.pg_bin, "psql")
        self.env = clean_env()
        self.children = []  # Managed, stopped in reverse order
        self.tmp = None
        self.ports = {}
        self.procs = {}  # target -> Managed (proxies only)
        # Root runs PostgreSQL and PgBouncer as postgres (both refuse root);
        # anyone else runs them as themselves.
        self.pg_user = pwd.getpwnam("postgres") if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
        self.dead_logged = set()

    # ---- setup

    def make_tmp(self):
        self.tmp = tempfile.mkdtemp(prefix="pgc-bench-", dir="/tmp")
        os.chmod(self.tmp, 0o755)
        self.chown(self.tmp)
        log(f"work dir {self.tmp}")

    def write_file(self, name, text, mode=0o644):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        self.chown(path)
        return path

    def chown(self, path):
        """Hand a file to postgres when we are root (we run its processes as it)."""
        if os.geteuid() == 0:
            os.chown(path, self.pg_user.pw_uid, self.pg_user.pw_gid)

    def as_postgres(self):
        if os.geteuid() != 0:
            return {}
        return {"user": self.pg_user.pw_uid, "group": self.pg_user.pw_gid, "extra_groups": []}

    def env_for_postgres(self):
        env = dict(self.env)
        env.update(HOME=self.tmp, USER="postgres", LOGNAME="postgres")
        return env

    def start(self, name, argv, stop_signal, as_postgres):
        logpath = os.path.join(self.tmp, f"{name}.log")
        logf = open(logpath, "ab")
        if as_postgres:
            self.chown(logpath)
        kwargs = self.as_postgres() if as_postgres else {}
        env = self.env_for_postgres() if as_postgres else self.env
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
            env=env,
            # Own session: Ctrl-C in the terminal reaches only this script,
            # which then stops the children in order.
            start_new_session=True,
            **kwargs,
        )
        logf.close()
        managed = Managed(name, popen, logpath, stop_signal)
        self.children.append(managed)
        return managed

    def wait_port(self, managed, port, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not managed.alive():
                raise BenchError(
                    f"{managed.name} exited with code {managed.popen.returncode} "
                    f"before accepting on port {port}; log {managed.logpath}:\n"
                    + tail(managed.logpath)
                )
            if port_accepts(port):
                return
            time.sleep(0.1)
        raise BenchError(
            f"{managed.name} did not accept on port {port} within {timeout:.0f}s; "
            f"log {managed.logpath}:\n" + tail(managed.logpath)
        )

    def run_checked(self, argv, as_postgres=False, timeout=600, what=None):
        kwargs = self.as_postgres() if as_postgres else {}
        env = self.env_for_postgres() if as_postgres else self.env
        res = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.tmp,
            env=env,
            timeout=timeout,
            **kwargs,
        )
        if res.returncode != 0:
            raise BenchError(
                f"{what or argv[0]} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
        return res.stdout

    def psql_direct(self, sql, db=BENCH_DB):
        return self.run_checked(
            [self.psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.ports["direct"]),
             "-U", BENCH_USER, "-d", db, "-c", sql],
            what=f"psql {sql!r}",
        )

    def start_postgres(self):
        a = self.args
        datadir = os.path.join(self.tmp, "pgdata")
        log("initdb")
        self.run_checked(
            [os.path.join(self.pg_bin, "initdb"), "-D", datadir, "-U", BENCH_USER,
             "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"],
            as_postgres=True, what="initdb",
        )
        port = free_port()
        self.ports["direct"] = port
        max_clients = max(a.clients)
        max_conn = max(400, max_clients + 2 * a.pool_size + 20)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{self.tmp}'",
            "max_connections": str(max_conn),
            "shared_buffers": "'256MB'",
            "fsync": "off" if a.unsafe_fast else "on",
            "synchronous_commit": "off" if a.unsafe_fast else "on",
            "full_page_writes": "off" if a.unsafe_fast else "on",
            "max_wal_size": "'2GB'",
            "checkpoint_timeout": "'30min'",
            "autovacuum": "on",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        with open(os.path.join(datadir, "postgresql.conf"), "a") as f:
            f.write("\n# pgbench_compare.py\n")
            for k, v in settings.items():
                f.write(f"{k} = {v}\n")
        with open(os.path.join(datadir, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        log(f"starting PostgreSQL on 127.0.0.1:{port} (max_connections={max_conn})")
        pg = self.start(
            "postgres", [os.path.join(self.pg_bin, "postgres"), "-D", datadir],
            signal.SIGINT, as_postgres=True,  # SIGINT = fast shutdown
        )
        self.wait_port(pg, port, 60)
        # Accepting TCP is not yet accepting queries (startup/recovery).
        deadline = time.monotonic() + 60
        while True:
            try:
                self.psql_direct("select 1", db="postgres")
                break
            except BenchError:
                if time.monotonic() > deadline or not pg.alive():
                    raise
                time.sleep(0.2)
        self.psql_direct(f"create database {BENCH_DB}", db="postgres")
        self.pg_version = self.psql_direct("show server_version").strip()
        log(f"pgbench -i -s {a.scale}")
        self.run_checked(
            [self.pgbench, "-i", "-q", "-s", str(a.scale),
             "-h", "127.0.0.1", "-p", str(port), "-U", BENCH_USER, BENCH_DB],
            timeout=1800, what="pgbench -i",
        )
        self.psql_direct("vacuum analyze")
        self.psql_direct("checkpoint")

    def start_pgbouncer(self):
        a = self.args
        port = free_port()
        self.ports["pgbouncer"] = port
        auth = self.write_file("pgbouncer_users.txt", f'"{BENCH_USER}" ""\n', 0o600)
        ini = self.write_file(
            "pgbouncer.ini",
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.ports['direct']}\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {auth}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {a.pool_size}\n"
            "max_client_conn = 1000\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
            "log_pooler_errors = 1\n",
        )
        log(f"starting PgBouncer on 127.0.0.1:{port} as {self.pg_user.pw_name}")
        # SIGINT = safe shutdown, SIGTERM = immediate shutdown (PgBouncer 1.18).
        bouncer = self.start("pgbouncer", [a.pgbouncer, ini], signal.SIGTERM,
                             as_postgres=True)
        self.wait_port(bouncer, port, 20)
        self.procs["pgbouncer"] = bouncer
        out = subprocess.run([a.pgbouncer, "--version"], capture_output=True, text=True)
        self.pgbouncer_version = (out.stdout.splitlines() or ["?"])[0]

    def start_pgcoalesce(self, name="pgcoalesce"):
        a = self.args
        port = free_port()
        self.ports[name] = port
        ini = self.write_file(
            f"{name}.ini",
            "[pgcoalesce]\n"
            + PGCOALESCE_TARGETS[name] +
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "pool_mode = transaction\n"
            "auth_type = trust\n"
            f"pool_size = {a.pool_size}\n"
            "max_overflow = 0\n"
            "max_client_conn = 1000\n"
            "log_level = warning\n"
            "admin_port = 0\n"
            "server_tls_sslmode = disable\n"
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.ports['direct']}\n",
        )
        user = a.pgcoalesce_user
        as_pg = user == "postgres"
        log(f"starting {name} ({a.pgcoalesce}) on 127.0.0.1:{port}"
            + (" as postgres" if as_pg else ""))
        proc = self.start(name, [a.pgcoalesce, "-c", ini], signal.SIGTERM,
                          as_postgres=as_pg)
        try:
            self.wait_port(proc, port, 20)
        except BenchError as e:
            if user == "auto" and not proc.alive() and "root" in str(e).lower() \
                    and os.geteuid() == 0:
                log("pgcoalesce seems to refuse root; retrying as postgres")
                port = free_port()
                self.ports[name] = port
                with open(ini) as f:
                    text = re.sub(r"listen_port = \d+", f"listen_port = {port}", f.read())
                self.write_file(f"{name}.ini", text)
                proc = self.start(name, [a.pgcoalesce, "-c", ini],
                                  signal.SIGTERM, as_postgres=True)
                self.wait_port(proc, port, 20)
            else:
                raise
        self.procs[name] = proc

    # ---- running

    def maintenance(self, workload):
        """What pgbench does before a run without -n, done directly (untimed)."""
        if workload == "tpcb":
            self.psql_direct("vacuum pgbench_branches")
            self.psql_direct("vacuum pgbench_tellers")
            self.psql_direct("truncate pgbench_history")

    def run_pgbench(self, target, workload, clients, seconds):
        a = self.args
        port = self.ports[target]
        argv = [self.pgbench, "-h", "127.0.0.1", "-p", str(port), "-U", BENCH_USER,
                "-n", "-M", a.mode, "-c", str(clients), "-j", str(pgbench_jobs(a, workload, clients)),
                "-T", str(seconds)]
        argv += WORKLOADS[workload][0] + [BENCH_DB]
        proxy = self.procs.get(target)
        if proxy is not None and not proxy.alive():
            # A proxy that died is a result, not a reason to drop the other
            # targets' numbers: its remaining runs are recorded as errors.
            code = proxy.popen.returncode
            if target not in self.dead_logged:
                self.dead_logged.add(target)
                log(f"{target} exited (code {code}); its remaining runs are skipped. "
                    f"Log {proxy.logpath}:\n" + tail(proxy.logpath))
            r = parse_pgbench("")
            r.update(target=target, workload=workload, clients=clients, rc=None,
                     wall=0.0, proxy_cpu=None, error=f"{target} not running (exit code {code})")
            return r
        cpu0 = tree_cpu_seconds(proxy.pid) if proxy else None
        t0 = time.monotonic()
        try:
            res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, env=self.env, timeout=seconds + 120)
            out, err, rc = res.stdout, res.stderr, res.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = "pgbench timed out"
            rc = -1
        wall = time.monotonic() - t0
        cpu = tree_cpu_seconds(proxy.pid) - cpu0 if proxy else None
        r = parse_pgbench(out)
        r.update(target=target, workload=workload, clients=clients, rc=rc,
                 wall=wall, proxy_cpu=cpu)
        if r.get("tps") is None or rc != 0:
            if rc == 0 and r.get("xacts") == 0:
                # pgbench's -T clock includes connecting; with many direct
                # clients on a slow-forking machine it can use up all of -T.
                r["error"] = f"0 transactions: connecting used up the {seconds} s run"
            else:
                r["error"] = (err.strip().splitlines() or [f"exit {rc}"])[-1][:200]
            errlog = os.path.join(self.tmp, "pgbench_errors.log")
            with open(errlog, "a") as f:
                f.write(f"--- {target} {workload} c={clients} rc={rc}\n{out}\n{err}\n")
        if cpu is not None and r.get("xacts"):
            r["cpu_per_10k"] = cpu / r["xacts"] * 10000
        return r


def parse_pgbench(out):
    r = {"tps": None, "lat_ms": None, "xacts": None, "failed": None}
    m = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", out, re.M)
    if m:
        r["tps"] = float(m.group(1))
    m = re.search(r"^latency average = ([\d.]+) ms", out, re.M)
    if m:
        r["lat_ms"] = float(m.group(1))
    m = re.search(r"^number of transactions actually processed: (\d+)", out, re.M)
    if m:
        r["xacts"] = int(m.group(1))
    m = re.search(r"^number of failed transactions: (\d+)", out, re.M)
    if m:
        r["failed"] = int(m.group(1))
    m = re.search(r"^initial connection time = ([\d.]+) ms", out, re.M)
    r["conn_ms"] = float(m.group(1)) if m else None
    return r


# ---------------------------------------------------------------- report


def summarize(results, targets, workloads, clients):
    rows = []
    for w in workloads:
        for c in clients:
            cell = [r for r in results if r["workload"] == w and r["clients"] == c]
            row = {"workload": w, "clients": c}
            for t in targets:
                rs = [r for r in cell if r["target"] == t]
                row[f"{t}_tps"] = median_or_none(r["tps"] for r in rs)
                row[f"{t}_lat"] = median_or_none(r["lat_ms"] for r in rs)
                row[f"{t}_cpu"] = median_or_none(r.get("cpu_per_10k") for r in rs)
                row[f"{t}_err"] = sum(1 for r in rs if r.get("error"))
                row[f"{t}_retry"] = sum(1 for r in rs if r.get("note"))
            # Ratios are taken within one repetition (adjacent runs), then the median.
            for g_name in PGCOALESCE_TARGETS:
                tps_ratios, cpu_ratios = [], []
                for rep in sorted({r["rep"] for r in cell}):
                    by = {r["target"]: r for r in cell if r["rep"] == rep}
                    b, g = by.get("pgbouncer"), by.get(g_name)
                    if b and g and b.get("tps") and g.get("tps"):
                        tps_ratios.append(g["tps"] / b["tps"])
                    if b and g and b.get("cpu_per_10k") and g.get("cpu_per_10k"):
                        cpu_ratios.append(g["cpu_per_10k"] / b["cpu_per_10k"])
                row[f"{g_name}_tps_ratio"] = median_or_none(tps_ratios)
                row[f"{g_name}_cpu_ratio"] = median_or_none(cpu_ratios)
            rows.append(row)
    return rows


def render_table(rows, targets):
    gs = [g for g in PGCOALESCE_TARGETS if g in targets] or ["pgcoalesce"]
    head = (["workload", "clients", "direct tps", "pgbouncer tps"]
            + [f"{g} tps" for g in gs] + [f"{g}/pgbouncer tps" for g in gs]
            + ["direct lat ms", "pgbouncer lat ms"] + [f"{g} lat ms" for g in gs]
            + ["pgbouncer CPU s/10k tx"] + [f"{g} CPU s/10k tx" for g in gs]
            + [f"{g}/pgbouncer CPU" for g in gs])
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]

    def tps(row, t):
        s = fmt(row.get(f"{t}_tps"), 0)
        if row.get(f"{t}_err"):
            s += f" ({row[f'{t}_err']} err)"
        if row.get(f"{t}_retry"):
            s += f" ({row[f'{t}_retry']}× long -T)"
        return s

    for row in rows:
        cells = ([WORKLOADS[row["workload"]][1], str(row["clients"]),
                  tps(row, "direct"), tps(row, "pgbouncer")]
                 + [tps(row, g) for g in gs]
                 + [fmt(row.get(f"{g}_tps_ratio"), 2) for g in gs]
                 + [fmt(row.get("direct_lat"), 2), fmt(row.get("pgbouncer_lat"), 2)]
                 + [fmt(row.get(f"{g}_lat"), 2) for g in gs]
                 + [fmt(row.get("pgbouncer_cpu"), 3)]
                 + [fmt(row.get(f"{g}_cpu"), 3) for g in gs]
                 + [fmt(row.get(f"{g}_cpu_ratio"), 2) for g in gs])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_raw(results):
    lines = ["| rep | workload | clients | target | tps | lat ms | xacts | failed | connect ms "
             "| proxy CPU s | CPU s/10k tx | note |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append("| " + " | ".join([
            str(r["rep"] + 1), r["workload"], str(r["clients"]), r["target"],
            fmt(r.get("tps"), 1), fmt(r.get("lat_ms"), 3), fmt(r.get("xacts"), 0),
            fmt(r.get("failed"), 0), fmt(r.get("conn_ms"), 0), fmt(r.get("proxy_cpu"), 2),
            fmt(r.get("cpu_per_10k"), 3),
            (r.get("error") or r.get("note") or "").replace("|", "/"),
        ]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="pgbench side by side: direct PostgreSQL, PgBouncer, pgcoalesce.")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help="comma-separated subset of direct,pgbouncer,pgcoalesce,pgcoalesce-off "
                        "(default direct,pgbouncer,pgcoalesce; pgcoalesce-off is the same "
                        "binary with n1_mode = off)")
    p.add_argument("--workloads", default="select,tpcb",
                   help="comma-separated subset of select (-S), tpcb (default script)")
    p.add_argument("--clients", default="8,64,256", help="client counts (default 8,64,256)")
    p.add_argument("-T", "--seconds", type=int, default=None,
                   help="pgbench -T per run (default 15, or 5 with --quick)")
    p.add_argument("--quick", action="store_true", help="5 s runs, 1 s warm-up")
    p.add_argument("--reps", type=int, default=3, help="repetitions per cell (default 3)")
    p.add_argument("-M", "--mode", default="simple", choices=["simple", "extended", "prepared"],
                   help="pgbench query protocol (default simple)")
    p.add_argument("-j", "--jobs", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    p.add_argument("--pool-size", type=int, default=20,
                   help="server connections per pool for both proxies (default 20)")
    p.add_argument("--warmup", type=int, default=None,
                   help="seconds of -S warm-up per target before measuring (default 3, 1 with --quick)")
    p.add_argument("--pgcoalesce", default=os.path.join(REPO_ROOT, "build", "pgcoalesce"),
                   help="pgcoalesce binary (default build/pgcoalesce in the repo)")
    p.add_argument("--pgcoalesce-user", default="auto", choices=["auto", "root", "postgres"],
                   help="run pgcoalesce as this user; auto = current user, retried as "
                        "postgres if it refuses root (default auto)")
    p.add_argument("--pgbouncer", default=shutil.which("pgbouncer") or "/usr/sbin/pgbouncer")
    p.add_argument("--pg-bin", default=PG_BIN_DEFAULT, help="PostgreSQL bin directory")
    p.add_argument("--safe", dest="unsafe_fast", action="store_false",
                   help="keep fsync/synchronous_commit on (default: off, proxies are compared)")
    p.add_argument("--out", help="also write the report (markdown) to this file")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) after exit")
    a = p.parse_args(argv)
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    bad = [t for t in a.targets if t not in ALL_TARGETS]
    if bad or not a.targets:
        p.error(f"unknown target(s) {bad}; choose from {','.join(ALL_TARGETS)}")
    # Keep the canonical order; alternation rotates it per repetition.
    a.targets = [t for t in ALL_TARGETS if t in a.targets]
    a.workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    bad = [w for w in a.workloads if w not in WORKLOADS]
    if bad or not a.workloads:
        p.error(f"unknown workload(s) {bad}; choose from {','.join(WORKLOADS)}")
    try:
        a.clients = [int(c) for c in a.clients.split(",") if c.strip()]
    except ValueError:
        p.error("--clients takes comma-separated integers")
    if not a.clients or min(a.clients) < 1:
        p.error("--clients needs positive integers")
    if a.seconds is None:
        a.seconds = 5 if a.quick else 15
    if a.warmup is None:
        a.warmup = 1 if a.quick else 3
    if a.reps < 1:
        p.error("--reps must be >= 1")
    if any(t in PGCOALESCE_TARGETS for t in a.targets) and not os.access(a.pgcoalesce, os.X_OK):
        p.error(f"pgcoalesce binary not found or not executable: {a.pgcoalesce} "
                "(build it, pass --pgcoalesce PATH, or leave it out of --targets)")
    if "pgbouncer" in a.targets and not os.access(a.pgbouncer, os.X_OK):
        p.error(f"pgbouncer not found: {a.pgbouncer} (apt-get install pgbouncer)")
    return a


def main(argv):
    a = parse_args(argv)
    if a.mode == "prepared" and "pgbouncer" in a.targets:
        log("warning: PgBouncer 1.18 does not support protocol-level prepared "
            "statements in transaction mode; expect pgbouncer errors with -M prepared")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Started in the background by a non-interactive shell, SIGINT may arrive
    # ignored; make it (and SIGTERM/SIGHUP) stop the run and clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    b = Bench(a)
    results = []
    started = datetime.datetime.now()
    try:
        b.make_tmp()
        b.start_postgres()
        if "pgbouncer" in a.targets:
            b.start_pgbouncer()
        for name in PGCOALESCE_TARGETS:
            if name in a.targets:
                b.start_pgcoalesce(name)

        if a.warmup > 0:
            for t in a.targets:
                # Direct backends do not outlive a run, so a direct warm-up only
                # warms the caches; a proxy warm-up also opens its server pool.
                n = min(a.clients) if t == "direct" else max(a.clients)
                log(f"warm-up {t}: -S, {n} clients, {a.warmup}s")
                r = b.run_pgbench(t, "select", n, a.warmup)
                if r.get("error") and not (t == "direct" and r.get("xacts") == 0):
                    log(f"  warm-up {t} problem: {r['error']}")

        total = len(a.workloads) * len(a.clients) * a.reps * len(a.targets)
        n = 0
        for w in a.workloads:
            for c in a.clients:
                for rep in range(a.reps):
                    # Rotate the order each repetition: direct,pgbouncer,pgcoalesce;
                    # pgbouncer,pgcoalesce,direct; ... so no target always goes first.
                    k = rep % len(a.targets)
                    order = a.targets[k:] + a.targets[:k]
                    for t in order:
                        n += 1
                        b.maintenance(w)
                        r = b.run_pgbench(t, w, c, a.seconds)
                        if r.get("xacts") == 0 and r.get("rc") == 0:
                            # Connecting used up all of -T (many direct clients on
                            # a slow-forking machine): retry once with a longer -T
                            # so the cell gets a number; the raw table says so.
                            longer = 3 * a.seconds
                            log(f"{w} c={c} {t}: 0 transactions in {a.seconds}s "
                                f"(all spent connecting); retrying with -T {longer}")
                            b.maintenance(w)
                            r = b.run_pgbench(t, w, c, longer)
                            note = f"retried with -T {longer}: 0 tx in {a.seconds} s"
                            r["error"] = f"{note}; {r['error']}" if r.get("error") else None
                            r["note"] = note
                        r["rep"] = rep
                        results.append(r)
                        extra = ""
                        if r.get("proxy_cpu") is not None:
                            extra = f", proxy CPU {r['proxy_cpu']:.2f}s"
                            if r.get("cpu_per_10k") is not None:
                                extra += f" ({r['cpu_per_10k']:.3f} s/10k tx)"
                        if r.get("error"):
                            extra += f"  ERROR: {r['error']}"
                        log(f"[{n}/{total}] {w} c={c} rep {rep + 1} {t}: "
                            f"tps {fmt(r.get('tps'), 1)}, lat {fmt(r.get('lat_ms'), 3)} ms{extra}")
    except KeyboardInterrupt as e:
        log(f"interrupted ({str(e) or 'Ctrl-C'}); cleaning up")
        interrupted = True
    except BenchError as e:
        log(f"error: {e}")
        interrupted = True
    else:
        interrupted = False
    finally:
        for m in reversed(b.children):
            try:
                m.stop()
            except Exception as ex:  # keep cleaning up the rest
                log(f"could not stop {m.name}: {ex}")
        if b.tmp:
            if a.keep:
                log(f"kept {b.tmp}")
            else:
                shutil.rmtree(b.tmp, ignore_errors=True)

    if not results:
        return 1

    rows = summarize(results, a.targets, a.workloads, a.clients)
    cores = os.cpu_count()
    header = [
        f"# pgbench: direct vs PgBouncer vs pgcoalesce ({started:%Y-%m-%d %H:%M})",
        "",
        f"- targets: {', '.join(a.targets)}; workloads: {', '.join(a.workloads)}; "
        f"clients: {', '.join(map(str, a.clients))}",
        f"- pgbench -M {a.mode} -j {a.jobs} -T {a.seconds} -n, scale {a.scale}, "
        f"{a.reps} repetition(s) per cell, targets alternated (order rotated each repetition); "
        "medians shown, ratios are medians of per-repetition ratios",
    ] + ([
        "- -M prepared: multi-statement workloads (TPC-B) run with -j equal to -c on every "
        "target (pgbench's synchronous PQprepare would block a thread shared by several "
        "clients against a pool smaller than the client count); PgBouncer 1.18 cannot run "
        "-M prepared in transaction mode at all (no protocol-level prepared statements)"
    ] if a.mode == "prepared" else []) + [
        f"- proxies: pool_mode=transaction, pool size {a.pool_size} "
        f"(PgBouncer default_pool_size, pgcoalesce pool_size, max_overflow 0)",
        f"- PostgreSQL {getattr(b, 'pg_version', '?')}, shared_buffers 256MB, "
        + ("**fsync=off, synchronous_commit=off, full_page_writes=off** "
           "(not durable: fine for comparing proxies, not a database benchmark)"
           if a.unsafe_fast else "fsync and synchronous_commit on"),
        f"- {getattr(b, 'pgbouncer_version', 'PgBouncer not run')}; "
        f"pgcoalesce: {a.pgcoalesce if any(t in PGCOALESCE_TARGETS for t in a.targets) else 'not run'}"
        + (" (pgcoalesce: default settings, n1_mode = batch; pgcoalesce-off: n1_mode = off)"
           if "pgcoalesce-off" in a.targets else ""),
        f"- machine: {cores} cores, {platform.system()} {platform.release()}; "
        "pgbench, the proxy and PostgreSQL share these cores: compare ratios, "
        "not absolute numbers",
        "- direct runs open a fresh backend (a fork) per client each run; through a proxy "
        "the server connections stay open between runs. On a slow-forking machine that "
        "dominates short direct runs at high client counts: see 'connect ms' in the raw table",
        "- tps excludes connection time; latency is pgbench's average; CPU is "
        "utime+stime of the proxy process (and its descendants) from /proc during the run",
    ]
    if interrupted:
        header.append("- **run incomplete** (interrupted or failed); partial results")
    if any(r.get("note") for r in results):
        header.append(f"- \"long -T\": runs that finished 0 transactions in {a.seconds} s "
                      f"(connecting took it all) were rerun once with -T {3 * a.seconds}")
    errs = [r for r in results if r.get("error")]
    if errs:
        header.append(f"- {len(errs)} run(s) had errors; see the raw table")
    report = "\n".join(header) + "\n\n" + render_table(rows, a.targets) + "\n\n## Raw runs\n\n" \
        + render_raw(results) + "\n"
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
