"""Soak, CI's size: 1,000 client connections on 20 server connections for 30 s
of pgbench -S, the idle clients running SELECT 1 now and then, through
bench/soak.py (which starts its own PostgreSQL and pgcoalesce; the full size,
10,000 clients for 5 minutes, is `bench/soak.py` with its defaults).

Asserts: every client connected, zero errors of any kind (pgbench, idle
clients, admin port checks), the admin port answered every check within 2 s,
and -- on a build without sanitizers, whose allocator keeps freed memory --
no RSS growth once every client has run a statement (a leak of one
allocation per statement would show as megabytes) and a bounded RSS per idle
client. The figures are printed for the record.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import harness

SOAK = os.path.join(harness.SOURCE_DIR, "bench", "soak.py")


def sanitized(path):
    with open(path, "rb") as f:
        return b"libasan" in f.read()


class SoakTest(unittest.TestCase):
    def test_thousand_clients(self):
        build = os.path.dirname(os.path.abspath(harness.PGC_BIN))
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "soak.json")
            run = subprocess.run([sys.executable, SOAK, "--clients", "1000", "--seconds", "30",
                                  "--idle-query-every", "5", "--build", build, "--json", out],
                                 capture_output=True, text=True, timeout=600)
            print(run.stdout[-3000:])
            self.assertTrue(os.path.exists(out), run.stdout[-3000:] + run.stderr[-3000:])
            with open(out) as f:
                r = json.load(f)
        self.assertEqual(r["connected"], 1000, r)
        self.assertEqual(r["errors"], 0, r)
        self.assertEqual(r["pgbench_failed"], 0, r)
        self.assertGreater(r["idle_queries"], 1000, r)
        self.assertGreater(r["admin_checks"], 5, r)
        self.assertEqual(r["admin_failures"], 0, r)
        self.assertEqual(run.returncode, 0, r)
        if not sanitized(harness.PGC_BIN):
            self.assertLess(r["rss_per_idle_client_bytes"], 8192, r)
            self.assertIsNotNone(r["rss_drift_kib"], r)
            self.assertLess(r["rss_drift_kib"], 2048, r)


if __name__ == "__main__":
    unittest.main()
