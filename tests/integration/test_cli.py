"""The command line: --version, --help, --check and option errors."""

import os
import re
import tempfile
import unittest

import harness


def project_version():
    with open(os.path.join(harness.SOURCE_DIR, "CMakeLists.txt")) as f:
        m = re.search(r"project\(\s*pgcoalesce\s+VERSION\s+([0-9.]+)", f.read())
    return m.group(1)


class CliTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="pgc-cli-")
        with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
            f.write('"app_scram" "scram_pw"\n')

    def tearDown(self):
        harness._rmtree(self.dir)

    def write(self, text, name="pgcoalesce.ini"):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    GOOD = (
        "[pgcoalesce]\n"                              # 1
        "listen_addr = 127.0.0.1\n"                   # 2
        "listen_port = 6432\n"                        # 3
        "pool_mode = transaction\n"                   # 4
        "auth_type = scram-sha-256\n"                 # 5
        "auth_file = userlist.txt\n"                  # 6
        "pool_size = 5\n"                             # 7
        "max_overflow = 10\n"                         # 8
        "pool_timeout = 2.5\n"                        # 9
        "pool_recycle = -1\n"                         # 10
        "pool_pre_ping = off\n"                       # 11
        "log_level = info\n"                          # 12
        "\n"                                          # 13
        "[databases]\n"                               # 14
        "app = host=127.0.0.1 port=5432 dbname=app pool_size=20 max_overflow=0 pool_mode=session\n"
        "* = host=127.0.0.1 port=5432\n"              # 16
    )

    def check(self, path):
        return harness.run_pgcoalesce("--check", "-c", path)

    def test_version(self):
        r = harness.run_pgcoalesce("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "pgcoalesce " + project_version())

    def test_help(self):
        r = harness.run_pgcoalesce("--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        for word in ("-c", "--check", "--upstream", "--listen", "--version"):
            self.assertIn(word, r.stdout)

    def test_check_accepts_good_config(self):
        r = self.check(self.write(self.GOOD))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_check_accepts_shipped_example(self):
        example = os.path.join(harness.SOURCE_DIR, "conf", "pgcoalesce.ini")
        r = self.check(example)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def assert_rejected_at(self, text, line, words=()):
        path = self.write(text)
        r = self.check(path)
        out = r.stdout + r.stderr
        self.assertNotEqual(r.returncode, 0, "accepted a bad config:\n" + text)
        self.assertIn("pgcoalesce.ini:%d:" % line, out)
        for w in words:
            self.assertIn(w, out)

    def test_check_rejects_bad_enum_with_line(self):
        self.assert_rejected_at(self.GOOD.replace("pool_mode = transaction", "pool_mode = bogus"),
                                4, ["pool_mode", "bogus"])

    def test_check_rejects_unknown_setting_with_line(self):
        self.assert_rejected_at(self.GOOD.replace("pool_size = 5\n", "pool_sise = 5\n"), 7,
                                ["pool_sise"])

    def test_check_rejects_bad_number_with_line(self):
        self.assert_rejected_at(self.GOOD.replace("max_overflow = 10", "max_overflow = ten"), 8,
                                ["max_overflow"])

    def test_check_rejects_bad_database_line(self):
        self.assert_rejected_at(self.GOOD.replace("* = host=127.0.0.1 port=5432",
                                                  "* = host=127.0.0.1 port=notaport"), 16)

    def test_check_rejects_missing_file(self):
        r = self.check(os.path.join(self.dir, "nope.ini"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("nope.ini", r.stdout + r.stderr)

    def test_check_rejects_missing_auth_file(self):
        path = self.write(self.GOOD.replace("auth_file = userlist.txt", "auth_file = missing.txt"))
        r = self.check(path)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("missing.txt", r.stdout + r.stderr)

    def test_unknown_option(self):
        r = harness.run_pgcoalesce("--no-such-option")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no-such-option", r.stderr)


if __name__ == "__main__":
    unittest.main()
