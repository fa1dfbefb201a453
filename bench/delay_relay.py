#!/usr/bin/python3
"""A TCP relay that adds a fixed one-way delay: a stand-in for netem.

Every chunk read from one side is held for --delay-ms and then written to the
other side, in order, separately for each direction. With --delay-ms 0.5 a
request/response pair through the relay takes about 1 ms longer than on plain
loopback, as if the server were 1 ms of round trip away.

Command line:

    /usr/bin/python3 bench/delay_relay.py --listen 6433 --target 127.0.0.1:5432 --delay-ms 0.5
    /usr/bin/python3 bench/delay_relay.py --selftest        # echo ping-pong, direct vs relay

It prints one line "delay_relay listening on HOST:PORT ..." on stdout once it
accepts (with --listen 0 the port is chosen by the kernel and shown there),
and its counters on stderr when it stops (SIGTERM or Ctrl-C).

As a module:

    import delay_relay
    with delay_relay.DelayRelay("127.0.0.1", 5432, delay_ms=0.5) as r:   # threads
        connect_to("127.0.0.1", r.port)
    proc = delay_relay.spawn("127.0.0.1", 5432, delay_ms=0.5)          # a subprocess
    ...; proc.stop()

Prefer spawn() when the calling process does CPU-heavy Python work of its own
(an ORM benchmark): the relay's threads need the GIL to forward every chunk,
and a busy interpreter can hold it for up to sys.getswitchinterval() (5 ms).

Why threads and not asyncio: asyncio sleeps in epoll_wait, whose timeout
Python rounds up to whole milliseconds, so a 0.5 ms delay would become 1 ms or
more. Here each direction of each connection has one thread, which stamps a
chunk when it arrives and, while chunks are held, waits in select() (whose
timeout has microsecond resolution) for more input or the first chunk's due
time. Two corrections keep the added delay close to the nominal one: a chunk's
delay runs from the kernel's receive timestamp (SO_TIMESTAMPNS), not from
when the relay's thread woke up to read it (--no-kernel-stamps); and a slack
is taken off every wait, starting at the measured overshoot of a select()
wait (timer slack and wake-up latency, about 0.1 ms on a VM) and then nudged
after every held chunk by how late it actually left, so that chunks leave on
time on average even when a busy machine wakes the relay late
(--no-compensate). On the 2-core development VM, 0.5 ms each way adds about
1.35-1.5 ms per round trip without them and 0.95-1.05 ms with them (1.1-1.2 ms
with both cores kept busy by other processes). Standard library only.
"""

import argparse
import collections
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

BUFSIZE = 65536


def _nodelay(sock):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def sleep_overshoot(delay_s, samples=200):
    """Median of how much longer than asked a select() timeout of delay_s
    takes here (timer slack plus wake-up latency: about 0.1 ms on a VM)."""
    if delay_s <= 0:
        return 0.0
    over = []
    for _ in range(samples):
        t0 = time.perf_counter()
        select.select([], [], [], delay_s)
        over.append(time.perf_counter() - t0 - delay_s)
    over.sort()
    return over[len(over) // 2]


# SO_TIMESTAMPNS (Linux: 35; not exported by the socket module): the kernel
# stamps received data with CLOCK_REALTIME, so a chunk's delay runs from when
# it reached this host, not from when the relay's thread woke up to read it.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_CMSG_SPACE = socket.CMSG_SPACE(16)


def _enable_stamps(sock):
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        return True
    except OSError:
        return False


def _kernel_stamp(anc, now):
    """Arrival time (time.monotonic() scale) from a SO_TIMESTAMPNS cmsg; now
    if there is none or it is implausible."""
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            arrived = sec + nsec / 1e9 - (time.time() - time.monotonic())
            if now - 1.0 < arrived <= now:
                return arrived
    return now


class _Conn:
    """One relayed connection: one thread per direction."""

    def __init__(self, relay, client, server):
        self.relay = relay
        self.socks = (client, server)
        self.lock = threading.Lock()
        self.open_dirs = 2
        self.closed = False

    def start(self):
        client, server = self.socks
        for name, src, dst in (("up", client, server), ("down", server, client)):
            threading.Thread(target=self._pump, args=(name, src, dst),
                             name=f"relay-{name}", daemon=True).start()

    def _pump(self, name, src, dst):
        """Read src, hold each chunk until it is due, write it to dst.

        While chunks are pending, wait for more input with select() and a
        timeout up to the first chunk's due time: select's timeout has
        microsecond resolution (unlike poll/epoll in Python, which round up to
        whole milliseconds), and new chunks are stamped when they arrive even
        while earlier ones are held."""
        relay = self.relay
        delay = relay.delay_s
        pending = collections.deque()
        eof = ok = timed = False
        use_select = src.fileno() < 1024  # FD_SETSIZE
        stamped = relay.kernel_stamps and delay > 0 and _enable_stamps(src)
        try:
            while True:
                now = time.monotonic()
                if pending and pending[0][0] - relay.slack_s <= now:
                    first_due = pending[0][0] if timed else None
                    while pending and pending[0][0] - relay.slack_s <= now:
                        data = pending.popleft()[1]
                        dst.sendall(data)
                        relay._count(name, len(data))
                        if first_due is not None:
                            # we slept for this one: how late did it leave?
                            relay._late(time.monotonic() - first_due)
                            first_due = None
                    timed = False
                if eof and not pending:
                    ok = True
                    break
                if pending:
                    wait = pending[0][0] - relay.slack_s - time.monotonic()
                    if wait <= 0:
                        continue
                    if eof:
                        time.sleep(wait)
                        timed = True
                        continue
                    if use_select:
                        readable, _, _ = select.select([src], [], [], wait)
                        if not readable:
                            timed = True
                            continue
                    else:
                        time.sleep(wait)  # then read what came meanwhile
                        timed = True
                if stamped:
                    data, anc, _, _ = src.recvmsg(BUFSIZE, _CMSG_SPACE)
                    now = time.monotonic()
                    arrived = _kernel_stamp(anc, now)
                else:
                    data = src.recv(BUFSIZE)
                    arrived = time.monotonic()
                if data:
                    pending.append((arrived + delay, data))
                else:
                    eof = True
        except (OSError, ValueError):
            ok = False
        if ok:
            try:
                dst.shutdown(socket.SHUT_WR)  # pass the half-close on
            except OSError:
                pass
        else:
            self.close()  # one side is gone: tear the whole connection down
        with self.lock:
            self.open_dirs -= 1
            last = self.open_dirs == 0
        if last:
            self.close()

    def close(self):
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        self.relay._forget(self)


class DelayRelay:
    """Listen on listen_host:listen_port (0 = any free port, see .port) and
    relay every connection to target_host:target_port, holding each chunk for
    delay_ms in each direction. start()/stop(), or use it as a context manager.

    compensate: take a slack off each wait, starting at the measured median
    overshoot of a select() timeout and adjusted by how late held chunks
    actually leave. kernel_stamps: count a chunk's delay from the kernel's
    receive timestamp. Both bring the added delay closer to delay_ms."""

    def __init__(self, target_host, target_port, delay_ms=0.5, listen_host="127.0.0.1",
                 listen_port=0, compensate=True, kernel_stamps=True):
        self.target = (target_host, int(target_port))
        self.delay_s = max(0.0, float(delay_ms)) / 1000.0
        self.listen_addr = (listen_host, int(listen_port))
        self.compensate = compensate
        self.kernel_stamps = kernel_stamps
        self.slack_s = 0.0
        self.gain = 0.05
        self.port = None
        self._listener = None
        self._thread = None
        self._stop = threading.Event()
        self._conns = set()
        self._lock = threading.Lock()
        self.stats = collections.Counter()

    def start(self):
        if self.compensate and self.delay_s > 0:
            self.slack_s = min(sleep_overshoot(self.delay_s), self.delay_s / 2)
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(self.listen_addr)
        ls.listen(128)
        ls.settimeout(0.2)  # so that the accept loop sees stop()
        self._listener = ls
        self.port = ls.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="relay-accept",
                                        daemon=True)
        self._thread.start()
        return self.port

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                time.sleep(0.05)
                continue
            client.settimeout(None)
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError as e:
                self.stats["connect_errors"] += 1
                print(f"delay_relay: cannot connect to {self.target[0]}:{self.target[1]}: {e}",
                      file=sys.stderr, flush=True)
                client.close()
                continue
            _nodelay(client)
            _nodelay(server)
            conn = _Conn(self, client, server)
            with self._lock:
                self._conns.add(conn)
                self.stats["connections"] += 1
            conn.start()

    def _late(self, late):
        """Feedback from a chunk that was held and then sent `late` seconds
        after it was due (negative: early): move the slack taken off every
        wait a little towards cancelling it, so that on average chunks leave
        on time even when a busy machine wakes the relay late. Samples are
        clipped so that one long stall does not swing it."""
        if not self.compensate:
            return
        d = self.delay_s
        late = max(-d / 2, min(late, d / 2))
        self.slack_s = max(0.0, min(self.slack_s + self.gain * late, 0.9 * d))
        self.stats["late_us_sum"] += int(late * 1e6)
        self.stats["late_n"] += 1

    def _count(self, direction, nbytes):
        # Updated from several threads without a lock: informational only.
        self.stats[f"{direction}_chunks"] += 1
        self.stats[f"{direction}_bytes"] += nbytes

    def _forget(self, conn):
        with self._lock:
            self._conns.discard(conn)

    def stop(self):
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()

    def summary(self):
        s = self.stats
        late = s["late_us_sum"] / s["late_n"] if s["late_n"] else 0.0
        return (f"connections {s['connections']}, client->server {s['up_chunks']} chunks "
                f"{s['up_bytes']} bytes, server->client {s['down_chunks']} chunks "
                f"{s['down_bytes']} bytes, connect errors {s['connect_errors']}; "
                f"held chunks left {late:+.0f} us from due on average (clipped), "
                f"wait slack now {self.slack_s * 1e6:.0f} us")

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


# ---------------------------------------------------------------- subprocess


class RelayProcess:
    """A relay running as a child process (see spawn())."""

    def __init__(self, popen, host, port):
        self.popen = popen
        self.host = host
        self.port = port

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self, grace=5.0):
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        if self.popen.stdout:
            self.popen.stdout.close()


def spawn(target_host, target_port, delay_ms=0.5, listen_port=0, listen_host="127.0.0.1",
          python=None, stderr=None, timeout=10.0, compensate=True, kernel_stamps=True):
    """Start the relay as a subprocess of this Python file and return a
    RelayProcess once it listens (.port holds the port). stderr: where its
    messages go (default: inherited)."""
    argv = [python or sys.executable, os.path.abspath(__file__),
            "--listen", str(listen_port), "--listen-host", listen_host,
            "--target", f"{target_host}:{target_port}", "--delay-ms", str(delay_ms)]
    if not compensate:
        argv.append("--no-compensate")
    if not kernel_stamps:
        argv.append("--no-kernel-stamps")
    popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=stderr, start_new_session=True)
    ready, _, _ = select.select([popen.stdout], [], [], timeout)
    line = popen.stdout.readline().decode(errors="replace") if ready else ""
    parts = line.split()
    if len(parts) < 4 or parts[1] != "listening":
        popen.kill()
        popen.wait()
        raise RuntimeError(f"delay_relay did not start (got {line!r})")
    port = int(parts[3].rsplit(":", 1)[1])
    return RelayProcess(popen, listen_host, port)


# ---------------------------------------------------------------- self-test


def _echo_server():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)

    def serve(c):
        _nodelay(c)
        with c:
            while True:
                d = c.recv(BUFSIZE)
                if not d:
                    return
                c.sendall(d)

    def loop():
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return ls


def _pingpong(port, n):
    with socket.create_connection(("127.0.0.1", port)) as s:
        _nodelay(s)
        msg = b"x" * 64
        for _ in range(20):
            s.sendall(msg)
            s.recv(BUFSIZE)
        t0 = time.perf_counter()
        for _ in range(n):
            s.sendall(msg)
            got = 0
            while got < len(msg):
                got += len(s.recv(BUFSIZE))
        return (time.perf_counter() - t0) / n


def selftest(delay_ms, n, compensate=True, kernel_stamps=True):
    ls = _echo_server()
    port = ls.getsockname()[1]
    direct = _pingpong(port, n)
    relay = spawn("127.0.0.1", port, delay_ms, compensate=compensate,
                  kernel_stamps=kernel_stamps)
    try:
        via = _pingpong(relay.port, n)
    finally:
        relay.stop()
        ls.close()
    print(f"echo ping-pong, {n} round trips of 64 bytes: direct {direct * 1e3:.3f} ms, "
          f"via relay ({delay_ms} ms each way) {via * 1e3:.3f} ms, added "
          f"{(via - direct) * 1e3:.3f} ms per round trip (nominal {2 * delay_ms:.3f})")
    return 0


# ---------------------------------------------------------------- main


def main(argv):
    p = argparse.ArgumentParser(description="TCP relay that delays every chunk in each direction.")
    p.add_argument("--listen", type=int, default=0,
                   help="port to listen on (0: any free port, printed on stdout)")
    p.add_argument("--listen-host", default="127.0.0.1")
    p.add_argument("--target", help="HOST:PORT to relay to")
    p.add_argument("--delay-ms", type=float, default=0.5,
                   help="delay per direction in ms (default 0.5: 1 ms per round trip)")
    p.add_argument("--no-compensate", dest="compensate", action="store_false",
                   help="wait the full delay (no slack for select()'s overshoot and "
                        "wake-up latency)")
    p.add_argument("--no-kernel-stamps", dest="kernel_stamps", action="store_false",
                   help="delay from when the relay reads a chunk, not from the kernel's "
                        "receive timestamp")
    p.add_argument("--selftest", type=int, nargs="?", const=2000, metavar="N",
                   help="measure N echo round trips direct vs through a relay, and exit")
    a = p.parse_args(argv)
    if a.selftest:
        return selftest(a.delay_ms, a.selftest, a.compensate, a.kernel_stamps)
    if not a.target or ":" not in a.target:
        p.error("--target HOST:PORT is required")
    host, port = a.target.rsplit(":", 1)
    relay = DelayRelay(host, int(port), a.delay_ms, a.listen_host, a.listen, a.compensate,
                       a.kernel_stamps)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: stop.set())
    relay.start()
    print(f"delay_relay listening on {a.listen_host}:{relay.port} -> {host}:{port}, "
          f"delay {a.delay_ms} ms each way (sleep slack {relay.slack_s * 1e6:.0f} us)",
          flush=True)
    while not stop.is_set():
        stop.wait(0.5)
    relay.stop()
    print(f"delay_relay stopped: {relay.summary()}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
