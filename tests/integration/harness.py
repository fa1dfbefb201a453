"""Integration-test harness: a real PostgreSQL, a real Redis and pgcoalesce.

Run by /usr/bin/python3 (Debian's, so psycopg2 and psycopg 3 are importable).
A test module typically starts with

    from harness import setUpModule, tearDownModule  # one PostgreSQL per module

and subclasses ProxyTestCase, which starts pgcoalesce once per class with the
class's `proxy_settings`, `databases` and `users`.

Environment: PGC_BIN (the pgcoalesce binary; default <source>/build/pgcoalesce),
PGC_SOURCE_DIR, PG_BINDIR (default /usr/lib/postgresql/15/bin),
PGC_TEST_LOG_LEVEL (pgcoalesce's log_level, default info),
PGC_TEST_TIMEOUT (seconds before a hung test dumps stacks and exits, default 240),
PGC_KEEP_TMP=1 (keep temp dirs for inspection).
"""

import atexit
import json
import base64
import ctypes
import faulthandler
import hashlib
import hmac
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import psycopg2
import psycopg2.extensions

try:
    import psycopg  # psycopg 3, for the extended protocol
except ImportError:  # reported by the tests that need it
    psycopg = None

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("PGC_SOURCE_DIR") or os.path.normpath(os.path.join(HERE, "..", ".."))
PGC_BIN = os.environ.get("PGC_BIN") or os.path.join(SOURCE_DIR, "build", "pgcoalesce")
PG_BINDIR = os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin")
LOG_LEVEL = os.environ.get("PGC_TEST_LOG_LEVEL", "info")
TEST_TIMEOUT = float(os.environ.get("PGC_TEST_TIMEOUT", "240"))
KEEP_TMP = os.environ.get("PGC_KEEP_TMP") == "1"

# The roles the harness's PostgreSQL has, their passwords and how PostgreSQL
# authenticates them on 127.0.0.1 (pg_hba.conf).
USERS = {
    "app_scram": "scram_pw",  # stored as SCRAM, hba scram-sha-256
    "app_md5": "md5_pw",  # stored as md5, hba md5
    "app_trust": "trust_pw",  # hba trust; the password only matters to the proxy
}
DEFAULT_USER = "app_scram"
DATABASE = "app"

PROTO_V3 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


# ---------------------------------------------------------------- utilities


def find_free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=10.0, interval=0.05, message=None):
    """Poll predicate() until it returns a truthy value, which is returned.

    For waiting on a state (a count in pg_stat_activity, a port accepting),
    never for asserting how long something took. Raises AssertionError with
    message (or the last value seen) on timeout.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                "%s (not reached within %.0f s; last value %r)"
                % (message or "condition", timeout, last)
            )
        time.sleep(interval)


def port_accepts(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def tail(path, offset=0, max_bytes=20000):
    """Text of a log file from offset, cut to its last max_bytes."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            start = max(offset, end - max_bytes)
            f.seek(start)
            data = f.read()
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)
    text = data.decode("utf-8", "replace")
    return ("...\n" if start > offset else "") + text


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig):
    """preexec_fn: have the child get sig when the test process dies, so a
    killed test run leaves no PostgreSQL or pgcoalesce behind."""

    def fn():
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return fn


def _as_postgres():
    """Popen keyword arguments that run a command as the postgres user when we
    are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _chown_postgres(path):
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _rmtree(path):
    if path and not KEEP_TMP:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- PostgreSQL


class Postgres:
    """A throwaway PostgreSQL 15 in a temp dir, on a free port, with the
    roles in USERS and a database `app` they can all use."""

    def __init__(self):
        self.dir = None
        self.port = None
        self.proc = None
        self.logfile = None

    @property
    def sockdir(self):
        return os.path.join(self.dir, "sock")

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="pgc-pg-")
        _chown_postgres(self.dir)
        os.chmod(self.dir, 0o755)
        try:
            self._init_and_start()
        except BaseException:
            self.stop()
            raise

    def _init_and_start(self):
        data = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "postgresql.log")
        run_as = _as_postgres()
        for d in (data, self.sockdir):
            os.mkdir(d, 0o700)
            _chown_postgres(d)
        with open(self.logfile, "wb"):
            pass
        _chown_postgres(self.logfile)
        r = subprocess.run(
            [os.path.join(PG_BINDIR, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--no-locale", "--no-sync"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.dir, **run_as,
        )
        if r.returncode != 0:
            raise RuntimeError("initdb failed:\n" + r.stdout.decode(errors="replace"))
        self.port = find_free_port()
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(
                "\n# pgcoalesce integration tests\n"
                "listen_addresses = '127.0.0.1'\n"
                "port = %d\n"
                "unix_socket_directories = '%s'\n"
                "max_connections = 300\n"
                "shared_preload_libraries = 'pg_stat_statements'\n"
                "password_encryption = 'scram-sha-256'\n"
                "log_connections = on\n"
                "log_line_prefix = '%%m [%%p] %%q%%u@%%d '\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "shared_buffers = 32MB\n"
                "wal_level = logical\n"
                "max_wal_senders = 20\n"
                "max_replication_slots = 20\n" % (self.port, self.sockdir)
            )
        with open(os.path.join(data, "pg_hba.conf"), "w") as f:
            f.write(
                "# TYPE DATABASE USER ADDRESS METHOD\n"
                "local all all trust\n"
                "host all postgres 127.0.0.1/32 trust\n"
                "host all app_scram 127.0.0.1/32 scram-sha-256\n"
                "host all app_md5 127.0.0.1/32 md5\n"
                "host all app_trust 127.0.0.1/32 trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(
                [os.path.join(PG_BINDIR, "postgres"), "-D", data],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir,
                preexec_fn=_die_with_parent(signal.SIGKILL), **run_as,
            )
        finally:
            log.close()

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "postgres exited with %s:\n%s" % (self.proc.returncode, tail(self.logfile))
                )
            try:
                self.connect(dbname="postgres").close()
                return True
            except psycopg2.OperationalError:
                return False

        wait_until(ready, timeout=60, interval=0.1, message="PostgreSQL accepting connections")
        self._create_roles()

    def _create_roles(self):
        c = self.connect(dbname="postgres")
        with c.cursor() as cur:
            cur.execute("SET password_encryption = 'scram-sha-256'")
            cur.execute("CREATE ROLE app_scram LOGIN PASSWORD 'scram_pw'")
            cur.execute("SET password_encryption = 'md5'")
            cur.execute("CREATE ROLE app_md5 LOGIN PASSWORD 'md5_pw'")
            cur.execute("CREATE ROLE app_trust LOGIN")
            cur.execute("CREATE DATABASE app OWNER app_scram")
            cur.execute("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE app TO app_md5, app_trust")
        c.close()
        c = self.connect()
        with c.cursor() as cur:
            cur.execute("CREATE EXTENSION pg_stat_statements")
            cur.execute("GRANT ALL ON SCHEMA public TO app_md5, app_trust")
            for owner in USERS:
                others = ", ".join(u for u in USERS if u != owner)
                cur.execute(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA public "
                    "GRANT ALL ON TABLES TO %s" % (owner, others)
                )
                cur.execute(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA public "
                    "GRANT ALL ON SEQUENCES TO %s" % (owner, others)
                )
        c.close()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        _rmtree(self.dir)

    # -- observation (as the superuser, over the unix socket) --

    def connect(self, dbname=DATABASE, user="postgres", autocommit=True, **kw):
        """A direct connection over the unix socket (trust)."""
        c = psycopg2.connect(host=self.sockdir, port=self.port, dbname=dbname, user=user,
                             connect_timeout=10, **kw)
        c.autocommit = autocommit
        return c

    def dsn(self, user=DEFAULT_USER, password=None, dbname=DATABASE):
        """libpq URL for a direct TCP connection to PostgreSQL."""
        if password is None:
            password = USERS.get(user, "")
        return "postgresql://%s:%s@127.0.0.1:%d/%s" % (user, password, self.port, dbname)

    def query(self, sql, args=None, dbname=DATABASE):
        """Rows of one statement run directly as the superuser."""
        c = self.connect(dbname=dbname)
        try:
            with c.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else []
        finally:
            c.close()

    def execute(self, sql, args=None, dbname=DATABASE):
        self.query(sql, args, dbname)

    def backends(self, user=None):
        """Client backends (not ours), as dicts, optionally of one role."""
        rows = self.query(
            "SELECT pid, usename, datname, state, backend_start, xact_start, query, "
            "application_name FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
            "AND (%s::text IS NULL OR usename = %s) ORDER BY pid",
            (user, user),
        )
        keys = ("pid", "usename", "datname", "state", "backend_start", "xact_start", "query",
                "application_name")
        return [dict(zip(keys, r)) for r in rows]

    def server_count(self, user=DEFAULT_USER, state=None):
        """How many server connections role `user` has open (optionally in one state)."""
        return sum(1 for b in self.backends(user) if state is None or b["state"] == state)

    def backend_pids(self, user=DEFAULT_USER):
        return {b["pid"] for b in self.backends(user)}

    def wait_no_backends(self, users=tuple(USERS), timeout=15):
        """Wait until none of `users` has a backend (after a proxy stopped)."""
        wait_until(
            lambda: not [b for b in self.backends() if b["usename"] in users],
            timeout=timeout, message="backends of %s gone" % (users,),
        )

    def log_offset(self):
        return file_size(self.logfile) if self.logfile else 0

    def log_since(self, offset):
        return tail(self.logfile, offset) if self.logfile else ""

    def rolpassword(self, user):
        return self.query("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (user,),
                          dbname="postgres")[0][0]

    # -- TLS (ssl is reloadable: no restart) --

    def set_ssl(self, on, cert_file=None, key_file=None, timeout=30):
        """Turn PostgreSQL's ssl on (with this certificate and key, copied into
        the cluster's dir as postgres with the key 0600) or off, by ALTER SYSTEM
        and a reload; returns once new connections see the change."""
        settings = {"ssl": "on" if on else "off"}
        if on:
            ssl_dir = os.path.join(self.dir, "ssl")
            if not os.path.isdir(ssl_dir):
                os.mkdir(ssl_dir, 0o700)
                _chown_postgres(ssl_dir)
            self._ssl_generation = getattr(self, "_ssl_generation", 0) + 1
            for kind, src in (("crt", cert_file), ("key", key_file)):
                dst = os.path.join(ssl_dir, "server%d.%s" % (self._ssl_generation, kind))
                shutil.copyfile(src, dst)
                os.chmod(dst, 0o600 if kind == "key" else 0o644)
                _chown_postgres(dst)
                settings["ssl_cert_file" if kind == "crt" else "ssl_key_file"] = dst
        c = self.connect(dbname="postgres")
        try:
            with c.cursor() as cur:
                for k, v in settings.items():
                    cur.execute("ALTER SYSTEM SET %s = %%s" % k, (v,))
                cur.execute("SELECT pg_reload_conf()")
        finally:
            c.close()

        def applied():
            # A new backend forks from a postmaster that has reloaded (and
            # re-read its certificate) when it shows the new values.
            c = self.connect(dbname="postgres")
            try:
                with c.cursor() as cur:
                    for k, v in settings.items():
                        cur.execute("SELECT current_setting(%s)", (k,))
                        if cur.fetchone()[0] != v:
                            return False
                return True
            finally:
                c.close()

        wait_until(applied, timeout=timeout, message="PostgreSQL ssl settings %r" % settings)


# ---------------------------------------------------------------- TLS material


class TlsFiles:
    """A throwaway PKI made with the openssl command line, in one temp dir:

    ca_cert/ca_key            the test CA
    server_cert/server_key    signed by it, CN=localhost,
                              subjectAltName=DNS:localhost,IP:127.0.0.1
    wrongname_cert/_key       signed by the same CA for CN/SAN otherhost.invalid
    other_ca_cert/_key        a second, unrelated CA
    other_server_cert/_key    signed by the unrelated CA, same names as server_cert
    """

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pgc-tls-")
        try:
            self._make()
        except BaseException:
            self.cleanup()
            raise

    def path(self, name):
        return os.path.join(self.dir, name)

    def _openssl(self, *args):
        r = subprocess.run(["openssl"] + list(args), cwd=self.dir, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("openssl %s failed:\n%s"
                               % (" ".join(args), r.stdout.decode(errors="replace")))

    def _ca(self, name, cn):
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", name + ".key", "-out", name + ".crt", "-days", "3",
                      "-subj", "/CN=" + cn,
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return self.path(name + ".crt"), self.path(name + ".key")

    def _leaf(self, name, cn, san, ca):
        self._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn)
        with open(self.path(name + ".ext"), "w") as f:
            f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n" % san)
        self._openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey",
                      ca + ".key", "-CAcreateserial", "-out", name + ".crt", "-days", "3",
                      "-extfile", name + ".ext")
        os.chmod(self.path(name + ".key"), 0o600)
        return self.path(name + ".crt"), self.path(name + ".key")

    def _make(self):
        self.ca_cert, self.ca_key = self._ca("ca", "pgcoalesce test CA")
        self.other_ca_cert, self.other_ca_key = self._ca("other_ca", "unrelated test CA")
        self.server_cert, self.server_key = self._leaf(
            "server", "localhost", "DNS:localhost,IP:127.0.0.1", "ca")
        self.wrongname_cert, self.wrongname_key = self._leaf(
            "wrongname", "otherhost.invalid", "DNS:otherhost.invalid", "ca")
        self.other_server_cert, self.other_server_key = self._leaf(
            "other_server", "localhost", "DNS:localhost,IP:127.0.0.1", "other_ca")

    def cleanup(self):
        _rmtree(self.dir)


# ---------------------------------------------------------------- Redis


class Redis:
    """A throwaway redis-server on a free port and a unix socket, no persistence."""

    def __init__(self):
        self.dir = None
        self.port = None
        self.proc = None
        self.logfile = None

    @property
    def socket_path(self):
        return os.path.join(self.dir, "redis.sock")

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="pgc-redis-")
        self.port = find_free_port()
        self.logfile = os.path.join(self.dir, "redis.log")
        args = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--unixsocket", self.socket_path, "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", self.dir,
            "--daemonize", "no", "--logfile", self.logfile,
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent(signal.SIGKILL))

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited:\n" + tail(self.logfile))
            try:
                return self.command("PING") == "PONG"
            except OSError:
                return False

        try:
            wait_until(ready, timeout=20, message="redis answering PING")
        except BaseException:
            self.stop()
            raise

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        _rmtree(self.dir)

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def command(self, *args):
        """Send one command over RESP and return the decoded reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            return _resp_read(s.makefile("rb"))


def _resp_read(f):
    line = f.readline()
    if not line:
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError("redis error: " + rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise RuntimeError("unexpected redis reply %r" % line)


# ------------------------------------------------- module-wide fixtures

_pg = None
_redis = None


def postgres():
    """The module's PostgreSQL, started on first use."""
    global _pg
    if _pg is None:
        pg = Postgres()
        pg.start()
        _pg = pg
    return _pg


def redis():
    """The module's Redis, started on first use."""
    global _redis
    if _redis is None:
        r = Redis()
        r.start()
        _redis = r
    return _redis


def setUpModule():
    postgres()


def tearDownModule():
    global _pg, _redis
    try:
        if _redis is not None:
            _redis.stop()
    finally:
        _redis = None
        if _pg is not None:
            _pg.stop()
        _pg = None


atexit.register(tearDownModule)


# ---------------------------------------------------------------- pgcoalesce


class Proxy:
    """pgcoalesce run in the foreground from a config file it writes.

    settings: [pgcoalesce] keys (values as written in the INI file).
    databases: {name: "host=... port=..."}; default `app` and `*` pointing at pg.
    users: {user: secret} for the auth_file; default USERS (plain passwords).
    """

    def __init__(self, pg, settings=None, databases=None, users=None, args=None):
        self.pg = pg
        self.dir = tempfile.mkdtemp(prefix="pgc-proxy-")
        self.port = find_free_port()
        self.settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            # a free admin port each, so that proxies never collide on 6433
            "admin_port": find_free_port(),
            "pool_mode": "transaction",
            "auth_type": "trust",
            "auth_file": "userlist.txt",
            "log_level": LOG_LEVEL,
            # Proxy.stop waits 5 s for a clean exit after SIGTERM
            "shutdown_timeout": 3,
        }
        self.settings.update(settings or {})
        self.port = int(self.settings["listen_port"])
        self.admin_port = int(self.settings["admin_port"])
        if databases is None:
            databases = {
                "app": "host=127.0.0.1 port=%d dbname=app" % pg.port,
                "*": "host=127.0.0.1 port=%d" % pg.port,
            }
        self.databases = dict(databases)
        self.users = dict(USERS if users is None else users)
        self.args = args  # full argv after the binary, instead of "-c config"
        self.config_path = os.path.join(self.dir, "pgcoalesce.ini")
        self.logfile = os.path.join(self.dir, "pgcoalesce.log")
        self.proc = None
        self.returncode = None
        self.last_start_offset = 0

    def write_config(self):
        lines = ["; written by tests/integration/harness.py", "[pgcoalesce]"]
        lines += ["%s = %s" % (k, v) for k, v in self.settings.items()]
        lines += ["", "[databases]"]
        lines += ["%s = %s" % (k, v) for k, v in self.databases.items()]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
            for u, secret in self.users.items():
                f.write('"%s" "%s"\n' % (u, secret))

    def start(self, timeout=10):
        """Start and wait until the listen port accepts; fails with the log."""
        if self.args is None:
            self.write_config()
            argv = [PGC_BIN, "-c", self.config_path]
        else:
            argv = [PGC_BIN] + list(self.args)
        if not os.access(PGC_BIN, os.X_OK):
            raise AssertionError("pgcoalesce binary not found at %s (set PGC_BIN)" % PGC_BIN)
        self.returncode = None
        self.last_start_offset = file_size(self.logfile)
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=self.dir, preexec_fn=_die_with_parent(signal.SIGTERM))
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not port_accepts(self.port):
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                self.proc = None
                raise AssertionError("pgcoalesce exited with %s at start; its log:\n%s"
                                     % (self.returncode, tail(self.logfile)))
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("pgcoalesce did not accept on port %d within %d s; log:\n%s"
                                     % (self.port, timeout, tail(self.logfile)))
            time.sleep(0.05)
        return self

    def stop(self):
        """SIGTERM, then SIGKILL after 5 s. Returns the exit status (negative:
        killed by that signal; None if it was not running)."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.returncode = "killed after 5 s (ignored SIGTERM)"
                self.proc = None
                return self.returncode
        self.returncode = self.proc.returncode
        self.proc = None
        return self.returncode

    def check_stopped_cleanly(self):
        """Stop and raise AssertionError (with the log) unless the exit status was 0.
        Under ASan this is where leaks and UB reports surface."""
        rc = self.stop()
        if rc not in (0, None):
            raise AssertionError("pgcoalesce exited with %s on SIGTERM; log:\n%s"
                                 % (rc, tail(self.logfile)))

    def restart(self, settings=None, databases=None, users=None):
        """Stop (expecting a clean exit), apply changed settings, start again."""
        self.check_stopped_cleanly()
        self.pg.wait_no_backends()
        if settings:
            self.settings.update(settings)
            self.port = int(self.settings["listen_port"])
            self.admin_port = int(self.settings["admin_port"])
        if databases is not None:
            self.databases = dict(databases)
        if users is not None:
            self.users = dict(users)
        return self.start()

    def cleanup(self):
        self.stop()
        _rmtree(self.dir)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_offset(self):
        return file_size(self.logfile)

    def log_since(self, offset=0):
        return tail(self.logfile, offset)

    # -- clients --

    def connect(self, user=DEFAULT_USER, password=None, dbname=DATABASE, autocommit=False, **kw):
        """A psycopg2 connection through the proxy."""
        if password is None:
            password = self.users.get(user, USERS.get(user, ""))
        c = psycopg2.connect(host="127.0.0.1", port=self.port, user=user, password=password,
                             dbname=dbname, connect_timeout=30, **kw)
        c.autocommit = autocommit
        return c

    def dsn(self, user=DEFAULT_USER, password=None, dbname=DATABASE):
        if password is None:
            password = self.users.get(user, USERS.get(user, ""))
        return "postgresql://%s:%s@127.0.0.1:%d/%s" % (user, password, self.port, dbname)

    def connect3(self, user=DEFAULT_USER, password=None, dbname=DATABASE, autocommit=False,
                 prepare_threshold=None, **kw):
        """A psycopg 3 connection through the proxy. prepare_threshold=None:
        only unnamed statements (the extended protocol without server-side
        prepared statements)."""
        if psycopg is None:
            raise unittest.SkipTest("psycopg 3 (python3-psycopg) is not installed")
        return psycopg.connect(self.dsn(user, password, dbname), autocommit=autocommit,
                               prepare_threshold=prepare_threshold, connect_timeout=30, **kw)

    def raw(self, timeout=10):
        return RawConn(self.port, timeout=timeout)

    def raw_login(self, user=DEFAULT_USER, password=None, dbname=DATABASE, timeout=10, **params):
        if password is None:
            password = self.users.get(user, USERS.get(user, ""))
        c = RawConn(self.port, timeout=timeout)
        c.login(user, dbname, password, **params)
        return c


def run_pgcoalesce(*args, timeout=30):
    """Run the binary to completion (for --version, --check, ...)."""
    return subprocess.run([PGC_BIN] + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          text=True)


# ---------------------------------------------------------------- test cases


class PgTestCase(unittest.TestCase):
    """A test case with the module's PostgreSQL as self.pg (cls.pg).

    A failing test prints what PostgreSQL and pgcoalesce logged during it.
    A test that hangs longer than PGC_TEST_TIMEOUT dumps every thread's stack
    and ends the process (its children die with it)."""

    pg = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pg = postgres()

    def _logs(self):
        """[(title, path, offset)] of the logs to print on failure."""
        out = []
        if self.pg is not None and self.pg.logfile:
            out.append(("PostgreSQL log", self.pg.logfile))
        proxy = getattr(self, "proxy", None)
        if proxy is not None:
            out.append(("pgcoalesce log", proxy.logfile))
        return out

    def run(self, result=None):
        offsets = {path: file_size(path) for _, path in self._logs()}
        bad_before = (len(result.failures) + len(result.errors)) if result is not None else 0
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
        try:
            return super().run(result)
        finally:
            faulthandler.cancel_dump_traceback_later()
            if result is not None and len(result.failures) + len(result.errors) > bad_before:
                proxy = getattr(self, "proxy", None)
                if proxy is not None and proxy.proc is not None and proxy.proc.poll() is not None:
                    sys.stderr.write("\n***** pgcoalesce is not running: exit status %s *****\n"
                                     % proxy.proc.returncode)
                for title, path in self._logs():
                    sys.stderr.write("\n----- %s (%s) during %s -----\n%s\n----- end -----\n"
                                     % (title, path, self.id(), tail(path, offsets.get(path, 0))))
                sys.stderr.flush()


class ProxyTestCase(PgTestCase):
    """Starts pgcoalesce once per class (cls.proxy) and expects it to exit 0
    on SIGTERM at the end of the class."""

    proxy_settings = {}
    databases = None  # None: `app` and `*` pointing at the harness's PostgreSQL
    users = None  # None: USERS with plain passwords

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pg.wait_no_backends()
        cls.crashes = []
        cls.proxy = Proxy(cls.pg, cls.proxy_settings, cls.databases, cls.users)
        try:
            cls.proxy.start()
        except BaseException:
            cls.proxy.cleanup()
            raise

    def setUp(self):
        super().setUp()
        # If an earlier test killed pgcoalesce, that test failed and the class
        # will fail at its end; start a new one so the tests after it still
        # give their own verdict.
        if not self.proxy.running():
            offset = self.proxy.last_start_offset
            rc = self.proxy.stop()
            self.crashes.append("exit status %s before %s; log:\n%s"
                                % (rc, self.id(), self.proxy.log_since(offset)))
            self.pg.wait_no_backends()
            self.proxy.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.proxy.check_stopped_cleanly()
            if cls.crashes:
                raise AssertionError("pgcoalesce died during the class:\n"
                                     + "\n".join(cls.crashes))
        finally:
            cls.proxy.cleanup()
            super().tearDownClass()

    def table_name(self, prefix="t"):
        """A table name unique to this test method."""
        return "%s_%s" % (prefix, self._testMethodName.lower()[-40:])


def run_threads(fn, n, *args):
    """Run fn(i, *args) in n threads; return the results in order, re-raising
    the first exception any thread raised."""
    results = [None] * n
    errors = [None] * n

    def body(i):
        try:
            results[i] = fn(i, *args)
        except BaseException as e:  # noqa: B902 - handed back to the caller
            errors[i] = e

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in errors:
        if e is not None:
            raise e
    return results


# ---------------------------------------------------------------- comparing runs


def differences(a, b, path="$", out=None, limit=12):
    """Paths where two JSON values differ, with both sides (cut short)."""
    if out is None:
        out = []
    if len(out) >= limit:
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append("%s.%s: only %s" % (path, k, "direct" if k in a else "proxied"))
            else:
                differences(a[k], b[k], "%s.%s" % (path, k), out, limit)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append("%s: %d items directly, %d through pgcoalesce" % (path, len(a), len(b)))
        for i, (x, y) in enumerate(zip(a, b)):
            differences(x, y, "%s[%d]" % (path, i), out, limit)
    elif a != b:
        out.append("%s: direct %s, proxied %s" % (path, json.dumps(a)[:300], json.dumps(b)[:300]))
    return out[:limit]


# ---------------------------------------------------------------- raw protocol


def i32(n):
    return struct.pack("!i", n)


def i16(n):
    return struct.pack("!h", n)


def message(kind, body=b""):
    """One typed frontend message: type byte, int32 length (counting itself), body."""
    if isinstance(kind, str):
        kind = kind.encode()
    return kind + i32(len(body) + 4) + body


def cstr(s):
    return (s if isinstance(s, bytes) else s.encode()) + b"\0"


def startup_message(params, version=PROTO_V3):
    """StartupMessage bytes: int32 length, int32 version, name\\0value\\0..., \\0."""
    body = i32(version) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return i32(len(body) + 4) + body


def ssl_request():
    return i32(8) + i32(SSL_REQUEST_CODE)


def gssenc_request():
    return i32(8) + i32(GSSENC_REQUEST_CODE)


def cancel_request(pid, key):
    return i32(16) + i32(CANCEL_REQUEST_CODE) + i32(pid) + i32(key)


def query_message(sql):
    return message("Q", cstr(sql))


def terminate_message():
    return message("X")


def parse_message(sql, name="", param_types=()):
    return message("P", cstr(name) + cstr(sql) + i16(len(param_types))
                   + b"".join(i32(t) for t in param_types))


def bind_message(params=(), portal="", statement="", result_formats=()):
    """Bind with text-format parameters (None is NULL)."""
    body = cstr(portal) + cstr(statement) + i16(0) + i16(len(params))
    for p in params:
        if p is None:
            body += i32(-1)
        else:
            v = p if isinstance(p, bytes) else str(p).encode()
            body += i32(len(v)) + v
    body += i16(len(result_formats)) + b"".join(i16(f) for f in result_formats)
    return message("B", body)


def describe_message(kind="P", name=""):
    return message("D", kind.encode() + cstr(name))


def execute_message(portal="", max_rows=0):
    return message("E", cstr(portal) + i32(max_rows))


def sync_message():
    return message("S")


def parse_error_fields(body):
    """ErrorResponse/NoticeResponse body -> {field code: value}, e.g. 'C' SQLSTATE."""
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


class ServerError(Exception):
    """An ErrorResponse received on a RawConn; .fields maps codes to values."""

    def __init__(self, fields):
        self.fields = fields
        self.sqlstate = fields.get("C")
        super().__init__("%s %s: %s" % (fields.get("S"), self.sqlstate, fields.get("M")))


class Result:
    """What one simple Query produced."""

    def __init__(self):
        self.sets = []  # [{"columns": [...], "rows": [[str|None...]], "tag": str}]
        self.errors = []  # [fields]
        self.notices = []  # [fields]
        self.status = None  # ReadyForQuery status: 'I', 'T' or 'E'
        self.messages = []  # [(type, body)] everything, in order


class RawConn:
    """A frontend speaking the v3 protocol by hand, for malformed input and
    for seeing exactly which messages the proxy sends."""

    def __init__(self, port, host="127.0.0.1", timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.params = {}
        self.backend_key = None
        self.auth_requests = []  # authentication request codes seen during login

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Close with an RST (SO_LINGER 0): a client that vanished."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed by the proxy")
            self.buf += chunk

    def recv_exact(self, n):
        self._fill(n)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_message(self):
        """(type as a 1-char str, body bytes)."""
        hdr = self.recv_exact(5)
        kind, length = chr(hdr[0]), struct.unpack("!i", hdr[1:])[0]
        if length < 4:
            raise AssertionError("bad length %d in a %r message from the proxy" % (length, kind))
        return kind, self.recv_exact(length - 4)

    def read_until_closed(self, timeout=10):
        """Read messages until the peer closes; returns them. AssertionError if
        it is still open after timeout."""
        self.sock.settimeout(timeout)
        msgs = []
        try:
            while True:
                msgs.append(self.read_message())
        except (EOFError, ConnectionResetError):
            self.close()
            return msgs
        except socket.timeout:
            raise AssertionError("connection still open after %s s; got %r" % (timeout, msgs))

    def login(self, user, database=DATABASE, password="", **params):
        """Startup plus whatever authentication the proxy asks for (cleartext,
        md5, SCRAM-SHA-256). Raises ServerError on an ErrorResponse."""
        p = {"user": user, "database": database}
        p.update(params)
        self.send(startup_message(p))
        return self.authenticate(user, password)

    def authenticate(self, user, password):
        scram = None
        while True:
            kind, body = self.read_message()
            if kind == "E":
                raise ServerError(parse_error_fields(body))
            if kind == "R":
                code = struct.unpack("!i", body[:4])[0]
                self.auth_requests.append(code)
                if code == 0:
                    continue
                if code == 3:
                    self.send(message("p", cstr(password)))
                elif code == 5:
                    self.send(message("p", cstr(md5_response(user, password, body[4:8]))))
                elif code == 10:
                    mechs = [m.decode() for m in body[4:].split(b"\0") if m]
                    if "SCRAM-SHA-256" not in mechs:
                        raise AssertionError("SASL without SCRAM-SHA-256: %r" % mechs)
                    scram = ScramClient(password)
                    first = scram.first()
                    self.send(message("p", cstr("SCRAM-SHA-256") + i32(len(first)) + first))
                elif code == 11:
                    self.send(message("p", scram.final(body[4:])))
                elif code == 12:
                    scram.verify(body[4:])
                else:
                    raise AssertionError("unsupported authentication request %d" % code)
            elif kind == "S":
                k, v = body.split(b"\0")[:2]
                self.params[k.decode()] = v.decode()
            elif kind == "K":
                self.backend_key = struct.unpack("!ii", body[:8])
            elif kind == "Z":
                return chr(body[0])
            elif kind == "N":
                continue
            else:
                raise AssertionError("unexpected %r during login" % kind)

    def query(self, sql):
        """Send a simple Query and collect everything up to ReadyForQuery."""
        self.send(query_message(sql))
        return self.read_result()

    def read_result(self):
        """Collect messages up to and including ReadyForQuery into a Result."""
        r = Result()
        cur = None
        while True:
            kind, body = self.read_message()
            r.messages.append((kind, body))
            if kind == "T":
                n = struct.unpack("!h", body[:2])[0]
                cols, pos = [], 2
                for _ in range(n):
                    end = body.index(b"\0", pos)
                    cols.append(body[pos:end].decode())
                    pos = end + 1 + 18
                cur = {"columns": cols, "rows": [], "tag": None}
                r.sets.append(cur)
            elif kind == "D":
                n = struct.unpack("!h", body[:2])[0]
                row, pos = [], 2
                for _ in range(n):
                    ln = struct.unpack("!i", body[pos:pos + 4])[0]
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(body[pos:pos + ln].decode())
                        pos += ln
                if cur is None:  # rows without RowDescription (extended protocol)
                    cur = {"columns": None, "rows": [], "tag": None}
                    r.sets.append(cur)
                cur["rows"].append(row)
            elif kind == "C":
                tag = body.rstrip(b"\0").decode()
                if cur is None:
                    cur = {"columns": None, "rows": [], "tag": None}
                    r.sets.append(cur)
                cur["tag"] = tag
                cur = None
            elif kind == "E":
                r.errors.append(parse_error_fields(body))
                cur = None
            elif kind == "N":
                r.notices.append(parse_error_fields(body))
            elif kind == "Z":
                r.status = chr(body[0])
                return r


def md5_response(user, password, salt):
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def md5_secret(user, password):
    """The "md5..." form PostgreSQL stores and an auth_file may hold."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


class ScramClient:
    """Client side of SCRAM-SHA-256 (RFC 5802/7677), no channel binding."""

    def __init__(self, password):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = "n=,r=" + self.nonce
        self.auth_message = None
        self.salted = None

    def first(self):
        return ("n,," + self.first_bare).encode()

    def final(self, server_first):
        sf = server_first.decode()
        attrs = dict(kv.split("=", 1) for kv in sf.split(","))
        if not attrs["r"].startswith(self.nonce):
            raise AssertionError("server nonce does not extend ours")
        salt = base64.b64decode(attrs["s"])
        self.salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, int(attrs["i"]))
        client_key = hmac.new(self.salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = "c=biws,r=" + attrs["r"]
        self.auth_message = ",".join([self.first_bare, sf, without_proof]).encode()
        sig = hmac.new(stored_key, self.auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        return (without_proof + ",p=" + base64.b64encode(proof).decode()).encode()

    def verify(self, server_final):
        attrs = dict(kv.split("=", 1) for kv in server_final.decode().split(","))
        server_key = hmac.new(self.salted, b"Server Key", "sha256").digest()
        expected = hmac.new(server_key, self.auth_message, "sha256").digest()
        if base64.b64decode(attrs.get("v", "")) != expected:
            raise AssertionError("wrong SCRAM server signature")
