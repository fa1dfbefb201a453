"""Helpers for the admin-port tests: console connections, HTTP requests and a
strict parser of the Prometheus text exposition format (0.0.4)."""

import math
import os
import re
import shutil
import socket
import subprocess
import threading

import psycopg2

import harness

ADMIN_USER = "admin_user"
ADMIN_PW = "admin_pw"
STATS_USER = "stats_user"
STATS_PW = "stats_pw"
ADMIN_USERS = dict(harness.USERS, **{ADMIN_USER: ADMIN_PW, STATS_USER: STATS_PW})
ADMIN_SETTINGS = {"admin_users": ADMIN_USER, "stats_users": STATS_USER}


def admin_connect(proxy, user=ADMIN_USER, password=None, dbname="pgcoalesce"):
    """A psycopg2 connection to the admin console (autocommit)."""
    if password is None:
        password = ADMIN_USERS.get(user, "")
    c = psycopg2.connect(host="127.0.0.1", port=proxy.admin_port, user=user, password=password,
                         dbname=dbname, connect_timeout=10)
    c.autocommit = True
    return c


def admin_rows(proxy, command, user=ADMIN_USER):
    """Rows of one console command as dicts keyed by column name."""
    c = admin_connect(proxy, user)
    try:
        with c.cursor() as cur:
            cur.execute(command)
            if cur.description is None:
                return []
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        c.close()


def admin_command(proxy, command, user=ADMIN_USER):
    """Run a console command; returns the command tag (statusmessage)."""
    c = admin_connect(proxy, user)
    try:
        with c.cursor() as cur:
            cur.execute(command)
            return cur.statusmessage
    finally:
        c.close()


def pool_row(proxy, database=harness.DATABASE, user=harness.DEFAULT_USER):
    for r in admin_rows(proxy, "SHOW POOLS"):
        if r["database"] == database and r["user"] == user:
            return r
    return None


def psql(proxy, command, user=ADMIN_USER, password=None, dbname="pgcoalesce"):
    """Run psql -c against the admin port; returns the CompletedProcess."""
    env = dict(os.environ, PGPASSWORD=ADMIN_USERS.get(user, "") if password is None else password,
               PGCONNECT_TIMEOUT="10")
    return subprocess.run(
        [shutil.which("psql") or "/usr/bin/psql", "-X", "-h", "127.0.0.1", "-p",
         str(proxy.admin_port), "-U", user, "-d", dbname, "-A", "-F", "|", "-c", command],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, timeout=30)


def http(port, path, method="GET", raw=None, timeout=10):
    """(status, headers dict with lower-case names, body bytes) of one request."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw if raw is not None else
                  ("%s %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n"
                   % (method, path)).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.1 (\d{3}) ", lines[0])
    if not m:
        raise AssertionError("bad status line %r" % lines[0])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if method != "HEAD" and "content-length" in headers:
        if int(headers["content-length"]) != len(body):
            raise AssertionError("Content-Length %s but %d bytes" % (headers["content-length"],
                                                                     len(body)))
    return int(m.group(1)), headers, body


# ---------------------------------------------------------------- Prometheus text format

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_LABELS = re.compile(r"^%s(?:,%s)*,?$" % (_LABEL, _LABEL))
_VALUE = r"(?:[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|[-+]?Inf|NaN)"
_REST = re.compile(r"^ (%s)(?: -?\d+)?$" % _VALUE)
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def _unescape(v):
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def _value(text):
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    return float(text)


def parse_prometheus(text):
    """Parse exposition text strictly. Returns {family: {"type", "help",
    "samples": [(name, labels dict, value)]}}; raises AssertionError on any
    deviation from the format: unknown lines, samples before their TYPE, a
    family split in two, duplicate series, counters without _total,
    histograms whose buckets are not cumulative or lack +Inf."""
    if not text.endswith("\n"):
        raise AssertionError("exposition must end with a newline")
    families = {}
    current = None
    closed = set()
    seen = set()
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d %r" % (n, line)
        if line.startswith("# HELP "):
            parts = line.split(" ", 3)
            if len(parts) < 4 or not re.fullmatch(_NAME, parts[2]):
                raise AssertionError("bad HELP at " + where)
            name = parts[2]
            if name in closed or (name in families and families[name].get("help")):
                raise AssertionError("family %s described twice (%s)" % (name, where))
            if current and current != name:
                closed.add(current)
            families.setdefault(name, {"samples": []})["help"] = parts[3]
            current = name
        elif line.startswith("# TYPE "):
            parts = line.split(" ")
            if len(parts) != 4 or parts[3] not in _TYPES:
                raise AssertionError("bad TYPE at " + where)
            name = parts[2]
            fam = families.setdefault(name, {"samples": []})
            if "type" in fam or fam["samples"]:
                raise AssertionError("TYPE of %s repeated or after samples (%s)" % (name, where))
            if current and current != name:
                closed.add(current)
            fam["type"] = parts[3]
            current = name
        elif line.startswith("#") or line == "":
            raise AssertionError("unexpected comment or blank line at " + where)
        else:
            if "{" in line:
                name, _, rest = line.partition("{")
                body, sep, rest = rest.rpartition("}")
                if not sep or (body and not _LABELS.match(body)):
                    raise AssertionError("malformed labels at " + where)
            else:
                name, sep, rest = line.partition(" ")
                body, rest = "", " " + rest
            if not re.fullmatch(_NAME, name):
                raise AssertionError("bad metric name at " + where)
            m = _REST.match(rest)
            if not m:
                raise AssertionError("malformed value at " + where)
            labels = dict((k, _unescape(v)) for k, v in re.findall(_LABEL, body))
            value = _value(m.group(1))
            family = name
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in families and \
                        families[name[: -len(suffix)]].get("type") == "histogram":
                    family = name[: -len(suffix)]
            if family not in families or "type" not in families[family]:
                raise AssertionError("sample of %s without a TYPE first (%s)" % (family, where))
            if family != current:
                raise AssertionError("samples of %s are not together (%s)" % (family, where))
            key = (name, tuple(sorted(labels.items())))
            if key in seen:
                raise AssertionError("duplicate series at " + where)
            seen.add(key)
            families[family]["samples"].append((name, labels, value))
    for name, fam in families.items():
        if "type" not in fam:
            raise AssertionError("family %s has HELP but no TYPE" % name)
        if fam["type"] == "counter":
            if not name.endswith("_total"):
                raise AssertionError("counter %s does not end in _total" % name)
            for _, _, v in fam["samples"]:
                if v < 0 or math.isnan(v):
                    raise AssertionError("counter %s has value %r" % (name, v))
        if fam["type"] == "histogram":
            _check_histogram(name, fam["samples"])
    return families


def _check_histogram(name, samples):
    series = {}
    for sname, labels, v in samples:
        base = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
        s = series.setdefault(base, {"buckets": [], "sum": None, "count": None})
        if sname == name + "_bucket":
            if "le" not in labels:
                raise AssertionError("%s bucket without le" % name)
            s["buckets"].append((_value(labels["le"]), v))
        elif sname == name + "_sum":
            s["sum"] = v
        elif sname == name + "_count":
            s["count"] = v
        else:
            raise AssertionError("%s: unexpected sample %s" % (name, sname))
    for base, s in series.items():
        bounds = [b for b, _ in s["buckets"]]
        counts = [c for _, c in s["buckets"]]
        if not bounds or bounds[-1] != float("inf"):
            raise AssertionError("%s%r lacks the +Inf bucket" % (name, base))
        if bounds != sorted(bounds) or counts != sorted(counts):
            raise AssertionError("%s%r buckets are not cumulative" % (name, base))
        if s["count"] != counts[-1] or s["sum"] is None:
            raise AssertionError("%s%r: _count %r differs from +Inf %r or _sum is missing"
                                 % (name, base, s["count"], counts[-1]))


def sample(families, name, **labels):
    """The value of one series (labels must match exactly), or None."""
    fam = name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            fam = name[: -len(suffix)]
    for sname, l, v in families.get(fam, {"samples": []})["samples"]:
        if sname == name and l == labels:
            return v
    return None


def promtool():
    return shutil.which("promtool")


def promtool_check(text):
    """(ok, output) of `promtool check metrics`, or None without promtool."""
    tool = promtool()
    if not tool:
        return None
    r = subprocess.run([tool, "check", "metrics"], input=text, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    return r.returncode == 0, r.stdout


class QueryThread(threading.Thread):
    """Run one query on a connection in the background; .result or .error."""

    def __init__(self, conn, sql):
        super().__init__(daemon=True)
        self.conn, self.sql = conn, sql
        self.result = self.error = None
        self.done = threading.Event()

    def run(self):
        try:
            with self.conn.cursor() as cur:
                cur.execute(self.sql)
                self.result = cur.fetchall() if cur.description else cur.statusmessage
        except Exception as e:  # handed to the test
            self.error = e
        finally:
            self.done.set()
