#!/usr/bin/python3
"""What the shape path and N+1 detection cost: pgbench -S through pgcoalesce
with n1_mode = detect against n1_mode = off, in one run.

Two pgcoalesce processes (same binary, same settings but n1_mode) sit in
front of one private PostgreSQL; pgbench -S runs against each in turn, the
order alternating every repetition so that drift on a noisy machine hits
both alike. Prints per-run tps and proxy CPU, then the median detect/off tps
ratio (the issue's target: at most 3% loss, i.e. a ratio >= 0.97) and proxy
CPU per 10k transactions of each. Finally it runs bench/shape_bench (ns per
statement for the shape path alone) when that binary is found. --modes picks
the two modes: batch,off is the cost of the default against no ORM layer;
batch,detect what batching's per-statement hook adds where nothing batches.

Reuses bench/pgbench_compare.py for PostgreSQL, pgbench and the process
handling. Standard library only; run with /usr/bin/python3:

    /usr/bin/python3 bench/n1_overhead.py --build build            # 5 reps of 10 s, -c 8
    /usr/bin/python3 bench/n1_overhead.py --build build -c 32 --reps 9 -T 15
"""

import argparse
import os
import signal
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgbench_compare as pc  # noqa: E402



def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default=os.path.join(pc.REPO_ROOT, "build"),
                   help="build directory holding pgcoalesce and bench/shape_bench")
    p.add_argument("-c", "--clients", type=int, default=8, help="pgbench -c (default 8)")
    p.add_argument("-j", "--jobs", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("-T", "--seconds", type=int, default=10, help="pgbench -T per run (default 10)")
    p.add_argument("--reps", type=int, default=5, help="runs per mode (default 5)")
    p.add_argument("-M", "--mode", default="simple", choices=["simple", "extended", "prepared"],
                   help="pgbench -M (default simple: one Query per statement)")
    p.add_argument("--modes", default="detect,off",
                   help="two n1_mode values, measured and baseline (default detect,off; "
                        "batch,detect shows what batching's hook costs a workload it never batches)")
    p.add_argument("--pool-size", type=int, default=8, help="pool_size of both proxies")
    p.add_argument("-R", "--rate", type=int, default=0,
                   help="pgbench -R: a fixed rate (tps) for both, so that proxy CPU per "
                        "transaction is compared at the same load (default: as fast as possible)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per proxy")
    p.add_argument("--pg-bin", default=pc.PG_BIN_DEFAULT)
    p.add_argument("--shape-iterations", type=int, default=500000,
                   help="iterations per shape_bench round (0: skip shape_bench)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    a = p.parse_args(argv)
    a.modes = tuple(m.strip() for m in a.modes.split(","))
    if len(a.modes) != 2 or a.modes[0] == a.modes[1] or \
            any(m not in ("off", "detect", "batch") for m in a.modes):
        p.error("--modes takes two different n1_mode values, e.g. batch,off")
    a.build = os.path.abspath(a.build)  # the processes run in the temp dir
    a.pgcoalesce = os.path.join(a.build, "pgcoalesce")
    if not os.access(a.pgcoalesce, os.X_OK):
        p.error(f"no pgcoalesce in {a.build} (build it or pass --build DIR)")
    # what pgbench_compare.Bench reads
    a.clients_list, a.unsafe_fast = [a.clients], True
    return a


class N1Bench(pc.Bench):
    def start_proxy(self, n1_mode):
        a = self.args
        port = pc.free_port()
        ini = self.write_file(
            f"pgcoalesce-{n1_mode}.ini",
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
            f"n1_mode = {n1_mode}\n"
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.ports['direct']}\n",
        )
        pc.log(f"starting pgcoalesce n1_mode={n1_mode} on 127.0.0.1:{port}")
        as_pg = os.geteuid() == 0
        proc = self.start(f"pgcoalesce-{n1_mode}", [a.pgcoalesce, "-c", ini], signal.SIGTERM,
                          as_postgres=as_pg)
        self.wait_port(proc, port, 20)
        self.ports[n1_mode] = port
        self.procs[n1_mode] = proc


def shape_bench(a):
    path = os.path.join(a.build, "bench", "shape_bench")
    if a.shape_iterations <= 0:
        return None
    if not os.access(path, os.X_OK):
        return f"(no {path}: build the shape_bench target)"
    res = subprocess.run([path, str(a.shape_iterations)], capture_output=True, text=True,
                         timeout=600)
    return res.stdout.rstrip() if res.returncode == 0 else f"shape_bench failed: {res.stderr}"


def main(argv):
    a = parse_args(argv)
    if a.rate > 0:
        pc.WORKLOADS["select"] = (["-S", "-R", str(a.rate)], f"select-only (-S -R {a.rate})")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    # pgbench_compare.Bench reads args.clients as a list
    bench_args = argparse.Namespace(**vars(a))
    bench_args.clients = a.clients_list
    b = N1Bench(bench_args)
    modes = a.modes
    runs = {m: [] for m in modes}
    try:
        b.make_tmp()
        b.start_postgres()
        for m in modes:
            b.start_proxy(m)
        for m in modes:
            pc.log(f"warm-up {m}: -S, {a.clients} clients, {a.warmup}s")
            b.run_pgbench(m, "select", a.clients, a.warmup)
        for rep in range(a.reps):
            order = modes if rep % 2 == 0 else modes[::-1]
            for m in order:
                r = b.run_pgbench(m, "select", a.clients, a.seconds)
                runs[m].append(r)
                pc.log(f"rep {rep + 1} n1_mode={m}: tps {pc.fmt(r.get('tps'), 1)}, proxy CPU "
                       f"{pc.fmt(r.get('cpu_per_10k'), 3)} s/10k tx"
                       + (f"  ERROR: {r['error']}" if r.get("error") else ""))
    except KeyboardInterrupt:
        pc.log("interrupted; cleaning up")
    except pc.BenchError as e:
        pc.log(f"error: {e}")
    finally:
        for m in reversed(b.children):
            m.stop()
        if b.tmp and not a.keep:
            shutil.rmtree(b.tmp, ignore_errors=True)

    m1, m0 = modes
    pairs = [(d.get("tps"), o.get("tps")) for d, o in zip(runs[m1], runs[m0])
             if d.get("tps") and o.get("tps")]
    print()
    print(f"# n1_mode {m1} vs {m0}: pgbench -S -M {a.mode} -c {a.clients} -j {a.jobs} "
          f"-T {a.seconds}" + (f" -R {a.rate}" if a.rate > 0 else "")
          + f", {len(pairs)} alternated pair(s), {os.cpu_count()} cores")
    print()
    print("| n1_mode | median tps | proxy CPU s/10k tx (median) |")
    print("|---|---|---|")
    for m in modes:
        tps = pc.median_or_none([r.get("tps") for r in runs[m] if r.get("tps")])
        cpu = pc.median_or_none([r.get("cpu_per_10k") for r in runs[m]
                                 if r.get("cpu_per_10k") is not None])
        print(f"| {m} | {pc.fmt(tps, 1)} | {pc.fmt(cpu, 3)} |")
    cpu_pairs = [(d.get("cpu_per_10k"), o.get("cpu_per_10k"))
                 for d, o in zip(runs[m1], runs[m0])
                 if d.get("cpu_per_10k") and o.get("cpu_per_10k")]
    if cpu_pairs:
        extra = [(d - o) / 10000 * 1e6 for d, o in cpu_pairs]
        print()
        print(f"proxy CPU {m1} - {m0} per transaction: median {statistics.median(extra):.2f} µs "
              f"(per pair: {', '.join(f'{x:.2f}' for x in extra)}); ratio median "
              f"{statistics.median([d / o for d, o in cpu_pairs]):.3f}")
    if pairs:
        ratios = [d / o for d, o in pairs]
        print()
        print(f"tps ratio {m1}/{m0}: median {statistics.median(ratios):.3f} "
              f"(per pair: {', '.join(f'{x:.3f}' for x in ratios)}); target >= 0.970")
    sb = shape_bench(a)
    if sb:
        print()
        print("## shape path per statement (bench/shape_bench)")
        print()
        print(sb)
    return 0 if pairs else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
