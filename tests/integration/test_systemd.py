"""Living under systemd and without it: sd_notify messages (READY, RELOADING,
STOPPING, STATUS) on a NOTIFY_SOCKET the test owns, socket activation
(systemd-socket-activate, and LISTEN_FDS passed by hand), the unit files
(systemd-analyze verify, sysusers, tmpfiles), daemon mode and the pidfile."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import adminlib
import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module

UNIT_DIR = os.path.join(harness.SOURCE_DIR, "systemd")


class NotifySocket:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pgc-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []

    def wait_for(self, predicate, timeout=10, after=-1):
        """Receive until a message later than index after satisfies
        predicate; returns its index."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.messages):
                if i > after and predicate(m):
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching sd_notify message; got %r" % self.messages)
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def fields(message):
    return dict(line.split("=", 1) for line in message.split("\n") if "=" in line)


class NotifyTest(harness.PgTestCase):
    def test_ready_reloading_stopping_in_order(self):
        notify = NotifySocket()
        self.addCleanup(notify.close)
        proxy = harness.Proxy(self.pg, dict(adminlib.ADMIN_SETTINGS), users=adminlib.ADMIN_USERS)
        self.addCleanup(proxy.cleanup)
        os.environ["NOTIFY_SOCKET"] = notify.path
        try:
            proxy.start()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        ready = notify.wait_for(lambda m: "READY=1" in m)
        self.assertIn("STATUS=clients: 0", notify.messages[ready])
        first = notify.wait_for(lambda m: m.startswith("STATUS="))
        c = proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        # STATUS lines come every few seconds with the counts
        status = notify.wait_for(lambda m: m.startswith("STATUS=clients: 1 "), timeout=12,
                                 after=first)
        self.assertIn("servers: 1", notify.messages[status])
        before = time.monotonic_ns() // 1000
        proxy.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for(lambda m: "RELOADING=1" in m)
        usec = int(fields(notify.messages[reloading])["MONOTONIC_USEC"])
        self.assertTrue(before <= usec <= time.monotonic_ns() // 1000, (before, usec))
        notify.wait_for(lambda m: "READY=1" in m, after=reloading)
        c.close()
        proxy.proc.send_signal(signal.SIGTERM)
        notify.wait_for(lambda m: "STOPPING=1" in m)
        proxy.proc.wait(10)
        self.assertEqual(proxy.proc.returncode, 0)
        kinds = [k for m in notify.messages for k in ("READY=1", "RELOADING=1", "STOPPING=1")
                 if k in m]
        self.assertEqual(kinds, ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
                         notify.messages)

    def test_failed_reload_still_reports_ready(self):
        notify = NotifySocket()
        self.addCleanup(notify.close)
        proxy = harness.Proxy(self.pg, dict(adminlib.ADMIN_SETTINGS), users=adminlib.ADMIN_USERS)
        self.addCleanup(proxy.cleanup)
        os.environ["NOTIFY_SOCKET"] = notify.path
        try:
            proxy.start()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        notify.wait_for(lambda m: "READY=1" in m)
        with open(proxy.config_path, "a") as f:
            f.write("nonsense line\n")
        proxy.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for(lambda m: "RELOADING=1" in m)
        notify.wait_for(lambda m: "READY=1" in m, after=reloading)
        self.assertIn("pgcoalesce.ini:", proxy.log_since(0))
        proxy.check_stopped_cleanly()


class ActivatedProxy:
    """pgcoalesce started with listening sockets made by someone else. Its
    config listens elsewhere, so only the passed sockets can serve."""

    def __init__(self, case, launcher):
        self.case = case
        self.proxy = harness.Proxy(case.pg, dict(adminlib.ADMIN_SETTINGS),
                                   users=adminlib.ADMIN_USERS)
        case.addCleanup(self.proxy.cleanup)
        self.config_port = self.proxy.port  # in the config, never bound
        self.client_port = harness.find_free_port()
        self.proxy.write_config()
        self.proxy.port = self.client_port
        self.popen_extra = {}
        argv = launcher(self)  # may bind sockets and set popen_extra
        log = open(self.proxy.logfile, "ab")
        try:
            self.proxy.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.proxy.dir, preexec_fn=harness._die_with_parent(signal.SIGTERM),
                **self.popen_extra)
        finally:
            log.close()
        harness.wait_until(lambda: self.proxy.proc.poll() is not None
                           or harness.port_accepts(self.client_port), timeout=15)
        harness.wait_until(lambda: self.proxy.proc.poll() is not None
                           or "started" in self.proxy.log_since(0), timeout=15)
        if self.proxy.proc.poll() is not None:
            raise AssertionError("exited with %s:\n%s" % (self.proxy.proc.returncode,
                                                          self.proxy.log_since(0)))

    def check(self):
        c = self.proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 40 + 2")
            self.case.assertEqual(cur.fetchone(), (42,))
        c.close()
        self.case.assertEqual(adminlib.http(self.proxy.admin_port, "/healthz")[0], 200)
        self.case.assertFalse(harness.port_accepts(self.config_port),
                              "bound listen_port although sockets were passed")
        log = self.proxy.log_since(0)
        self.case.assertIn("from systemd", log)
        self.proxy.check_stopped_cleanly()


_LAUNCHER = r"""
import fcntl, os, sys
# copies above 9 first, so that moving them to 3 and 4 never overwrites one
socks = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
for fd in sys.argv[1:3]:
    os.close(int(fd))
for i, fd in enumerate(socks):
    os.dup2(fd, 3 + i)  # a new descriptor: inheritable
    os.close(fd)
os.environ["LISTEN_FDS"] = "2"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[3], sys.argv[3:])
"""


class SocketActivationTest(harness.PgTestCase):
    def test_systemd_socket_activate(self):
        tool = shutil.which("systemd-socket-activate")
        if not tool:
            self.skipTest("systemd-socket-activate not installed (Debian package systemd)")

        def launcher(a):
            return [tool, "-l", "127.0.0.1:%d" % a.client_port,
                    "-l", "127.0.0.1:%d" % a.proxy.admin_port,
                    harness.PGC_BIN, "-c", a.proxy.config_path]
        ActivatedProxy(self, launcher).check()

    def test_listen_fds_passed_by_hand(self):
        socks = []
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            socks.append(s)
            self.addCleanup(s.close)

        def launcher(a):
            # the admin socket first: the order must not matter
            socks[0].bind(("127.0.0.1", a.proxy.admin_port))
            socks[1].bind(("127.0.0.1", a.client_port))
            for s in socks:
                s.listen(16)
            a.popen_extra = {"pass_fds": tuple(s.fileno() for s in socks)}
            return [sys.executable, "-c", _LAUNCHER, str(socks[0].fileno()),
                    str(socks[1].fileno()), harness.PGC_BIN, "-c", a.proxy.config_path]

        ActivatedProxy(self, launcher).check()


class UnitFileTest(unittest.TestCase):
    def test_systemd_analyze_verify(self):
        tool = shutil.which("systemd-analyze")
        if not tool:
            self.skipTest("systemd-analyze not installed (Debian package systemd)")
        tmp = tempfile.mkdtemp(prefix="pgc-units-")
        self.addCleanup(shutil.rmtree, tmp, True)
        with open(os.path.join(UNIT_DIR, "pgcoalesce.service")) as f:
            unit = f.read()
        for want in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "User=pgcoalesce",
                     "LimitNOFILE=65536", "NoNewPrivileges=yes", "ProtectSystem=strict",
                     "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
                     "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                     "ExecStart=/usr/bin/pgcoalesce -c /etc/pgcoalesce/pgcoalesce.ini"):
            self.assertIn(want, unit)
        # verify checks that ExecStart's binary exists: point it at the build
        with open(os.path.join(tmp, "pgcoalesce.service"), "w") as f:
            f.write(unit.replace("/usr/bin/pgcoalesce", harness.PGC_BIN))
        shutil.copy(os.path.join(UNIT_DIR, "pgcoalesce.socket"), tmp)
        r = subprocess.run([tool, "verify", os.path.join(tmp, "pgcoalesce.service"),
                            os.path.join(tmp, "pgcoalesce.socket")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertNotIn("pgcoalesce.service:", r.stdout)  # no complaint about our units
        self.assertNotIn("pgcoalesce.socket:", r.stdout)

    def test_sysusers_and_tmpfiles_snippets(self):
        sysusers = shutil.which("systemd-sysusers")
        tmpfiles = shutil.which("systemd-tmpfiles")
        if not sysusers or not tmpfiles:
            self.skipTest("systemd-sysusers/systemd-tmpfiles not installed")
        root = tempfile.mkdtemp(prefix="pgc-root-")
        self.addCleanup(shutil.rmtree, root, True)
        os.mkdir(os.path.join(root, "etc"))
        r = subprocess.run([sysusers, "--root", root,
                            os.path.join(UNIT_DIR, "pgcoalesce.sysusers")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(r.returncode, 0, r.stdout)
        with open(os.path.join(root, "etc", "passwd")) as f:
            self.assertRegex(f.read(), r"(?m)^pgcoalesce:x:\d+:\d+:")
        r = subprocess.run([tmpfiles, "--create", "--root", root,
                            os.path.join(UNIT_DIR, "pgcoalesce.tmpfiles")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(r.returncode, 0, r.stdout)
        for d in ("etc/pgcoalesce", "run/pgcoalesce", "var/log/pgcoalesce"):
            self.assertTrue(os.path.isdir(os.path.join(root, d)), d)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class PidfileAndDaemonTest(harness.PgTestCase):
    def test_pidfile_written_and_removed(self):
        proxy = harness.Proxy(self.pg, {"pidfile": "pgc.pid"})
        self.addCleanup(proxy.cleanup)
        proxy.start()
        path = os.path.join(proxy.dir, "pgc.pid")
        harness.wait_until(lambda: os.path.exists(path))
        with open(path) as f:
            self.assertEqual(int(f.read()), proxy.proc.pid)
        # a second pgcoalesce with the same pidfile refuses to start
        second = harness.Proxy(self.pg, {"pidfile": path})
        self.addCleanup(second.cleanup)
        with self.assertRaises(AssertionError) as cm:
            second.start()
        self.assertIn("already runs as pid %d" % proxy.proc.pid, str(cm.exception))
        proxy.check_stopped_cleanly()
        self.assertFalse(os.path.exists(path), "pidfile left behind")

    def test_daemon_mode(self):
        proxy = harness.Proxy(self.pg, {"pidfile": "pgc.pid", "logfile": "pgc.log"})
        self.addCleanup(proxy.cleanup)
        proxy.write_config()
        pidfile = os.path.join(proxy.dir, "pgc.pid")
        r = subprocess.run([harness.PGC_BIN, "-d", "-c", proxy.config_path],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(pidfile) as f:
            pid = int(f.read())

        def kill():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.addCleanup(kill)
        self.assertTrue(pid_alive(pid))
        self.assertTrue(harness.port_accepts(proxy.port))  # listening before -d returned
        c = proxy.connect(autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        c.close()
        with open(os.path.join(proxy.dir, "pgc.log")) as f:
            self.assertIn("started", f.read())
        # a session of its own, and not its leader (it can never get a terminal)
        self.assertNotEqual(os.getsid(pid), os.getsid(0))
        self.assertNotEqual(os.getsid(pid), pid)
        os.kill(pid, signal.SIGTERM)
        harness.wait_until(lambda: not pid_alive(pid) and not os.path.exists(pidfile),
                           message="daemon exited and removed its pidfile")

    def test_daemon_mode_needs_a_log(self):
        proxy = harness.Proxy(self.pg)
        self.addCleanup(proxy.cleanup)
        proxy.write_config()
        r = subprocess.run([harness.PGC_BIN, "-d", "-c", proxy.config_path],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("logfile or syslog", r.stderr)

    def test_daemon_start_failure_is_reported(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        proxy = harness.Proxy(self.pg, {"logfile": "pgc.log",
                                        "listen_port": busy.getsockname()[1]})
        self.addCleanup(proxy.cleanup)
        proxy.write_config()
        r = subprocess.run([harness.PGC_BIN, "-d", "-c", proxy.config_path],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("did not start", r.stderr)
        with open(os.path.join(proxy.dir, "pgc.log")) as f:
            self.assertIn("could not listen", f.read())


if __name__ == "__main__":
    unittest.main()
