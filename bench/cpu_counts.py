#!/usr/bin/python3
"""Proxy cost per transaction in counts that a noisy machine does not change:
user-space instructions (callgrind), system calls and epoll_wait calls
(strace -c), and context switches (/proc/PID/task/*/status), for pgcoalesce
(n1_mode off, detect, batch) against PgBouncer 1.18, on a fixed-count
pgbench run (-t N per client).

Per workload and target it starts the proxy twice in front of one private
PostgreSQL (reusing bench/pgbench_compare.py for PostgreSQL, pgbench and the
process handling):

- natively: a warm-up run (opens the server pool), then one measured run with
  the context switches read before and after, then strace -c -f attached for
  one more measured run of the same length;
- under valgrind --tool=callgrind: a warm-up run, callgrind_control --zero,
  one measured run, callgrind_control --dump, and the dump's total Ir.

Counts include the pgbench clients' connection set-up and login (8 per run
with -c 8), amortised over -c x -t transactions. strace and callgrind slow the
proxy down, so each wakeup finds more to do than at full speed: the epoll_wait
and syscall counts are for the strace run, the context switches for the
native one. Compare the ratios.

Standard library only; run with /usr/bin/python3 from the repository root:

    /usr/bin/python3 bench/cpu_counts.py                          # all, -c 8 -j 2
    /usr/bin/python3 bench/cpu_counts.py --workloads select --targets pgbouncer,batch
    /usr/bin/python3 bench/cpu_counts.py --pgcoalesce /tmp/old/pgcoalesce --keep
"""

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgbench_compare as pc  # noqa: E402

TARGETS = ("pgbouncer", "off", "detect", "batch")
WORKLOADS = {
    # name -> (pgbench flags, label)
    "select": (["-S", "-M", "simple"], "-S"),
    "prepared": (["-S", "-M", "prepared"], "-S -M prepared"),
    "tpcb": (["-M", "simple"], "TPC-B"),
}
READS = ("read", "recvfrom", "recvmsg", "recv", "readv")
WRITES = ("write", "sendto", "sendmsg", "send", "writev")


def ctx_switches(pid):
    """Voluntary and involuntary context switches of every thread of pid."""
    vol = invol = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            continue
    return vol, invol


def parse_strace_summary(text):
    """strace -c output -> {syscall: calls}."""
    calls = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or not re.match(r"^[\d.]+$", parts[0]):
            continue
        name = parts[-1]
        # % time, seconds, usecs/call, calls, [errors,] syscall
        try:
            n = int(parts[3])
        except ValueError:
            continue
        if name != "total":
            calls[name] = calls.get(name, 0) + n
    return calls


def callgrind_events(path):
    """Totals of a callgrind dump by event name (Ir; with --cache-sim also D1mr, DLmr, ...)."""
    names = ["Ir"]
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith("summary:") or line.startswith("totals:"):
                return dict(zip(names, (int(x) for x in line.split()[1:])))
    raise pc.BenchError(f"no totals in {path}")


def callgrind_total(path):
    """Total instructions (Ir) of a callgrind dump."""
    return callgrind_events(path)["Ir"]


def callgrind_calls(path, names):
    """Calls made to the functions named (e.g. libc's epoll_wait) in a callgrind dump."""
    ids, total, callee = {}, 0, None
    with open(path) as f:
        for line in f:
            if line.startswith("cfn=") or line.startswith("fn="):
                m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m:
                    if m.group(2):
                        ids[m.group(1)] = m.group(2)
                    if line.startswith("cfn="):
                        callee = ids.get(m.group(1))
            elif line.startswith("calls=") and callee is not None:
                if callee.split("@")[0] in names:
                    total += int(line.split()[0][len("calls="):])
                callee = None
    return total


class CountBench(pc.Bench):
    def proxy_ini(self, target, port):
        a = self.args
        if target == "pgbouncer":
            auth = self.write_file("pgbouncer_users.txt", f'"{pc.BENCH_USER}" ""\n', 0o600)
            return self.write_file(
                f"pgbouncer-{port}.ini",
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
        return self.write_file(
            f"pgcoalesce-{target}-{port}.ini",
            "[pgcoalesce]\n"
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
            f"n1_mode = {target}\n"
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.ports['direct']}\n",
        )

    def start_proxy(self, target, wrapper=(), label=None):
        """Start one proxy (under wrapper, e.g. valgrind); returns (Managed, port)."""
        a = self.args
        port = pc.free_port()
        ini = self.proxy_ini(target, port)
        binary = a.pgbouncer if target == "pgbouncer" else a.pgcoalesce
        argv = list(wrapper) + ([binary, ini] if target == "pgbouncer" else [binary, "-c", ini])
        name = f"{target}{'-' + label if label else ''}-{port}"
        # PgBouncer refuses root; pgcoalesce runs as whoever runs this script.
        proc = self.start(name, argv, signal.SIGTERM, as_postgres=target == "pgbouncer")
        self.wait_port(proc, port, 120 if wrapper else 20)
        self.ports[name] = port
        return proc, name

    def run_fixed(self, name, workload, per_client, what):
        """One fixed-count pgbench run; returns the transactions processed."""
        a = self.args
        self.maintenance("tpcb" if workload == "tpcb" else "select")
        argv = [self.pgbench, "-h", "127.0.0.1", "-p", str(self.ports[name]), "-U",
                pc.BENCH_USER, "-n", "-c", str(a.clients[0]), "-j", str(a.jobs),
                "-t", str(per_client)] + WORKLOADS[workload][0] + [pc.BENCH_DB]
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             env=self.env, timeout=a.run_timeout)
        r = pc.parse_pgbench(res.stdout)
        want = a.clients[0] * per_client
        if res.returncode != 0 or r.get("xacts") != want or r.get("failed"):
            raise pc.BenchError(f"pgbench {what} on {name}: rc {res.returncode}, "
                                f"{r.get('xacts')} of {want} transactions\n"
                                + res.stdout[-800:] + res.stderr[-800:])
        return want

    def measure_native(self, target, workload):
        a = self.args
        proc, name = self.start_proxy(target)
        try:
            self.run_fixed(name, workload, a.warmup_tx, "warm-up")
            v0, i0 = ctx_switches(proc.pid)
            cpu0 = pc.tree_cpu_seconds(proc.pid)
            t0 = time.monotonic()
            n = self.run_fixed(name, workload, a.tx, "native")
            wall = time.monotonic() - t0
            cpu = pc.tree_cpu_seconds(proc.pid) - cpu0
            v1, i1 = ctx_switches(proc.pid)
            out = {"vol": (v1 - v0) / n, "invol": (i1 - i0) / n, "ctx": (v1 - v0 + i1 - i0) / n,
                   "cpu_us": cpu / n * 1e6, "tps": n / wall}
            if not a.no_strace:
                out.update(self.measure_strace(proc, name, workload))
            return out
        finally:
            proc.stop()

    def measure_seccomp(self, target, workload):
        """epoll_wait and epoll_ctl per transaction with strace stopping the
        proxy at those calls only (--seccomp-bpf), so that the proxy runs
        closer to full speed than under the strace -p of every call. Counted
        from start to exit: the warm-up's transactions count too."""
        a = self.args
        outpath = os.path.join(self.tmp, f"strace-seccomp-{target}-{workload}.txt")
        wrapper = ["strace", "-f", "-c", "--seccomp-bpf", "-o", outpath,
                   "-e", "trace=epoll_wait,epoll_pwait,epoll_ctl"]
        proc, name = self.start_proxy(target, wrapper, label="seccomp")
        try:
            n = self.run_fixed(name, workload, a.warmup_tx, "seccomp warm-up")
            n += self.run_fixed(name, workload, a.tx, "seccomp")
        finally:
            # SIGTERM to the proxy itself; strace writes the summary when it exits.
            for kid in child_pids(proc.pid):
                try:
                    os.kill(kid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.stop()
        with open(outpath) as f:
            calls = parse_strace_summary(f.read())
        return {
            "epoll_wait_sc": sum(v for k, v in calls.items() if k.startswith("epoll_wait")
                                 or k.startswith("epoll_pwait")) / n,
            "epoll_ctl_sc": calls.get("epoll_ctl", 0) / n,
        }

    def measure_strace(self, proc, name, workload):
        a = self.args
        outpath = os.path.join(self.tmp, f"strace-{name}-{workload}.txt")
        st = subprocess.Popen(["strace", "-c", "-f", "-o", outpath, "-p", str(proc.pid)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        # strace says "Process N attached" once it is tracing.
        line = st.stderr.readline()
        if "attached" not in line:
            st.kill()
            raise pc.BenchError(f"strace did not attach to {proc.pid}: {line}")
        try:
            n = self.run_fixed(name, workload, a.tx, "strace")
        finally:
            st.send_signal(signal.SIGINT)
            st.communicate(timeout=30)
        with open(outpath) as f:
            calls = parse_strace_summary(f.read())
        total = sum(calls.values())
        return {
            "syscalls": total / n,
            "epoll_wait": sum(v for k, v in calls.items() if k.startswith("epoll_wait")
                              or k.startswith("epoll_pwait")) / n,
            "epoll_ctl": calls.get("epoll_ctl", 0) / n,
            "reads": sum(calls.get(k, 0) for k in READS) / n,
            "writes": sum(calls.get(k, 0) for k in WRITES) / n,
            "strace": {k: v / n for k, v in sorted(calls.items(), key=lambda kv: -kv[1])},
        }

    def measure_callgrind(self, target, workload):
        a = self.args
        base = os.path.join(self.tmp, f"callgrind-{target}-{workload}.out")
        wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={base}",
                   "--dump-instr=no", "--compress-strings=no", "--vgdb=yes"]
        if a.cache_sim:
            wrapper.append("--cache-sim=yes")
        proc, name = self.start_proxy(target, wrapper, label="callgrind")
        try:
            self.run_fixed(name, workload, a.warmup_tx_callgrind, "callgrind warm-up")
            self.callgrind_control(proc, "--zero", target)
            n = self.run_fixed(name, workload, a.tx_callgrind, "callgrind")
            before = set(glob.glob(base + "*"))
            self.callgrind_control(proc, "--dump=measured", target)
            deadline = time.monotonic() + 60
            while True:
                new = sorted(set(glob.glob(base + "*")) - before)
                if new:
                    break
                if time.monotonic() > deadline:
                    raise pc.BenchError(f"callgrind wrote no dump for {name}")
                time.sleep(0.2)
            time.sleep(0.5)  # written at once, but let it finish
            dump = new[0]
            self.dumps[(target, workload)] = dump
            ev = callgrind_events(dump)
            r = {"instr": ev["Ir"] / n,
                 "epoll_wait_cg": callgrind_calls(dump, ("epoll_wait", "epoll_pwait")) / n}
            if a.cache_sim:
                # valgrind's simulated caches (the host's sizes), data misses per transaction
                r["d1_miss"] = (ev.get("D1mr", 0) + ev.get("D1mw", 0)) / n
                r["ll_miss"] = (ev.get("DLmr", 0) + ev.get("DLmw", 0)) / n
            return r
        finally:
            proc.stop(grace=60)

    def callgrind_control(self, proc, arg, target):
        # vgdb finds valgrind's FIFOs by user name and ptraces the process
        # when it sleeps: it runs as the proxy's user, with its environment.
        pg = target == "pgbouncer"
        kwargs = self.as_postgres() if pg else {}
        res = subprocess.run(["callgrind_control", arg, str(proc.pid)], capture_output=True,
                             text=True, timeout=120, cwd=self.tmp,
                             env=self.env_for_postgres() if pg else self.env, **kwargs)
        if res.returncode != 0 or "OK." not in res.stdout:
            raise pc.BenchError(f"callgrind_control {arg} {proc.pid} failed:\n"
                                f"{res.stdout}{res.stderr}")


def child_pids(pid):
    """Direct children of pid (all its threads)."""
    kids = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            continue
    return kids


def ratio(x, y):
    return f"{x / y:.2f}" if x is not None and y else "–"


def render(results, targets, workloads):
    head = ["workload", "target", "instr/tx", "syscalls/tx", "epoll_wait/tx",
            "epoll_wait/tx (seccomp)", "epoll_wait/tx (callgrind)", "epoll_ctl/tx",
            "recv+read/tx", "send+write/tx", "ctx sw/tx (vol+invol)", "CPU µs/tx (native, noisy)",
            "instr ÷ pgb", "syscalls ÷ pgb", "epoll_wait ÷ pgb", "epoll_wait (seccomp) ÷ pgb",
            "ctx sw ÷ pgb"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for w in workloads:
        ref = results.get(("pgbouncer", w), {})
        for t in targets:
            r = results.get((t, w))
            if r is None:
                continue
            if r.get("skip"):
                lines.append(f"| {WORKLOADS[w][1]} | {t} | {r['skip']} |" + " |" * (len(head) - 3))
                continue
            ctx = (f"{r['ctx']:.2f} ({r['vol']:.2f}+{r['invol']:.2f})"
                   if r.get("ctx") is not None else "–")
            cells = [WORKLOADS[w][1], t if t == "pgbouncer" else f"pgcoalesce {t}",
                     pc.fmt(r.get("instr"), 0), pc.fmt(r.get("syscalls"), 2),
                     pc.fmt(r.get("epoll_wait"), 2), pc.fmt(r.get("epoll_wait_sc"), 2),
                     pc.fmt(r.get("epoll_wait_cg"), 2), pc.fmt(r.get("epoll_ctl"), 2),
                     pc.fmt(r.get("reads"), 2), pc.fmt(r.get("writes"), 2), ctx,
                     pc.fmt(r.get("cpu_us"), 1)]
            if t == "pgbouncer":
                cells += ["1"] * 5
            else:
                cells += [ratio(r.get("instr"), ref.get("instr")),
                          ratio(r.get("syscalls"), ref.get("syscalls")),
                          ratio(r.get("epoll_wait"), ref.get("epoll_wait")),
                          ratio(r.get("epoll_wait_sc"), ref.get("epoll_wait_sc")),
                          ratio(r.get("ctx"), ref.get("ctx"))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_syscalls(results, targets, workloads):
    lines = []
    for w in workloads:
        for t in targets:
            r = results.get((t, w)) or {}
            if r.get("strace"):
                top = ", ".join(f"{k} {v:.2f}" for k, v in r["strace"].items())
                lines.append(f"- {WORKLOADS[w][1]}, {t}: {top}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pgcoalesce", default=os.path.join(pc.REPO_ROOT, "build-perf", "pgcoalesce"),
                   help="pgcoalesce binary (default build-perf/pgcoalesce)")
    p.add_argument("--pgbouncer", default=shutil.which("pgbouncer") or "/usr/sbin/pgbouncer")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="subset of pgbouncer,off,detect,batch (pgcoalesce n1_mode values)")
    p.add_argument("--workloads", default="select,prepared,tpcb",
                   help="subset of select (-S), prepared (-S -M prepared), tpcb")
    p.add_argument("-c", "--clients", type=int, default=8, help="pgbench -c (default 8)")
    p.add_argument("-j", "--jobs", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("-t", "--tx", type=int, default=2000,
                   help="pgbench -t per client, native and strace runs (default 2000)")
    p.add_argument("--tx-callgrind", type=int, default=500,
                   help="pgbench -t per client under callgrind (default 500)")
    p.add_argument("--warmup-tx", type=int, default=200, help="-t of the warm-up runs")
    p.add_argument("--warmup-tx-callgrind", type=int, default=20,
                   help="-t of the warm-up runs under callgrind")
    p.add_argument("--pool-size", type=int, default=20, help="both proxies (default 20)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    p.add_argument("--no-callgrind", action="store_true", help="skip the callgrind runs")
    p.add_argument("--cache-sim", action="store_true",
                   help="callgrind with --cache-sim=yes: also data cache misses per transaction "
                        "(D1, last level; logged as d1_miss, ll_miss)")
    p.add_argument("--no-strace", action="store_true", help="skip the strace runs")
    p.add_argument("--run-timeout", type=int, default=900, help="seconds per pgbench run")
    p.add_argument("--pg-bin", default=pc.PG_BIN_DEFAULT)
    p.add_argument("--out", help="also write the report (markdown) to this file")
    p.add_argument("--keep", action="store_true",
                   help="keep the temp dir (logs, strace summaries, callgrind dumps)")
    a = p.parse_args(argv)
    a.targets = [t for t in TARGETS if t in a.targets.split(",")]
    a.workloads = [w for w in WORKLOADS if w in a.workloads.split(",")]
    if not a.targets or not a.workloads:
        p.error("nothing to run: check --targets and --workloads")
    if any(t != "pgbouncer" for t in a.targets) and not os.access(a.pgcoalesce, os.X_OK):
        p.error(f"no pgcoalesce at {a.pgcoalesce} (build it or pass --pgcoalesce)")
    for tool in (["strace"] if not a.no_strace else []) + \
            (["valgrind", "callgrind_control"] if not a.no_callgrind else []):
        if not shutil.which(tool):
            p.error(f"{tool} not found (apt-get install {'strace' if tool == 'strace' else 'valgrind'})")
    # what pgbench_compare.Bench reads
    a.unsafe_fast = True
    return a


def main(argv):
    a = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    bench_args = argparse.Namespace(**vars(a))
    bench_args.clients = [a.clients]
    b = CountBench(bench_args)
    b.dumps = {}
    results = {}
    status = 0
    try:
        b.make_tmp()
        b.start_postgres()
        if "pgbouncer" in a.targets:
            out = subprocess.run([a.pgbouncer, "--version"], capture_output=True, text=True)
            b.pgbouncer_version = (out.stdout.splitlines() or ["?"])[0]
        for w in a.workloads:
            for t in a.targets:
                if t == "pgbouncer" and w == "prepared":
                    # PgBouncer 1.18 has no protocol-level prepared statements.
                    results[(t, w)] = {"skip": "n/a (PgBouncer 1.18: no -M prepared in "
                                               "transaction mode)"}
                    continue
                r = {}
                pc.log(f"{w} / {t}: native" + ("" if a.no_strace else " + strace"))
                r.update(b.measure_native(t, w))
                if not a.no_strace:
                    pc.log(f"{w} / {t}: strace --seccomp-bpf (epoll calls only)")
                    r.update(b.measure_seccomp(t, w))
                if not a.no_callgrind:
                    pc.log(f"{w} / {t}: callgrind")
                    r.update(b.measure_callgrind(t, w))
                results[(t, w)] = r
                pc.log(f"{w} / {t}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in r.items() if isinstance(v, float)))
    except KeyboardInterrupt:
        pc.log("interrupted; cleaning up")
        status = 1
    except pc.BenchError as e:
        pc.log(f"error: {e}")
        status = 1
    finally:
        for m in reversed(b.children):
            m.stop()
        if b.tmp and not a.keep:
            shutil.rmtree(b.tmp, ignore_errors=True)
        elif b.tmp:
            pc.log(f"kept {b.tmp}")

    report = [
        f"# Proxy cost per transaction in counts: pgbench -n -c {a.clients} -j {a.jobs}, "
        f"-t {a.tx} (native, strace) / -t {a.tx_callgrind} (callgrind) per client",
        "",
        f"- pgcoalesce {a.pgcoalesce}; {getattr(b, 'pgbouncer_version', 'PgBouncer 1.18')} "
        f"({a.pgbouncer}); pool_mode=transaction, pool size {a.pool_size}, scale {a.scale}",
        "- instr/tx: callgrind Ir (user space, proxy process, libraries included) between "
        "--zero and --dump around the measured run",
        "- syscalls, epoll_wait, epoll_ctl, recv+read, send+write per tx: strace -c -f "
        "attached (-p) for one measured run; epoll_wait (seccomp): the proxy launched under "
        "strace -f -c --seccomp-bpf -e trace=epoll_wait,epoll_pwait,epoll_ctl (stopped at "
        "those calls only), warm-up and measured run counted; epoll_wait (callgrind): calls "
        "to libc's epoll_wait in the callgrind run; ctx sw/tx: /proc/PID/task/*/status over "
        "a native run",
        "",
        render(results, a.targets, a.workloads),
        "",
        "Syscalls per transaction (strace runs):",
        "",
        render_syscalls(results, a.targets, a.workloads),
    ]
    if a.keep and b.dumps:
        report += ["", "callgrind dumps (callgrind_annotate FILE):", ""]
        report += [f"- {w} / {t}: {d}" for (t, w), d in b.dumps.items()]
    text = "\n".join(report) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
