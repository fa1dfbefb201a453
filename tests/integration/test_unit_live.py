"""The cmocka tests that need a live PostgreSQL (tests/unit/test_*_live.c:
the cache's catalog lookups, the replication stream) run here against a
PostgreSQL the harness starts for this module alone (the replication test
drops and creates a publication and roles). Every test of each must run
(none skipped for want of a server) and pass."""
import os
import re
import subprocess
import sys
import unittest

import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module


class LiveUnitTest(harness.PgTestCase):
    def run_live(self, name):
        binary = os.path.join(os.path.dirname(harness.PGC_BIN), "tests", name)
        self.assertTrue(os.access(binary, os.X_OK), "%s not built" % binary)
        r = subprocess.run([binary], env=dict(os.environ, PGC_TEST_PG_PORT=str(self.pg.port)),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=300, text=True)
        out = r.stdout
        self.assertEqual(r.returncode, 0, out)
        self.assertNotIn("SKIPPED", out, out)
        self.assertNotIn("FAILED", out, out)
        self.assertRegex(out, r"\[  PASSED  \] \d+ test", out)
        sys.stderr.write("%s: %s\n" % (name, re.findall(r"\[  PASSED  \] \d+ tests?", out)))

    def test_catalog_live(self):
        self.run_live("test_catalog_live")

    def test_repl_live(self):
        self.run_live("test_repl_live")


if __name__ == "__main__":
    unittest.main()
