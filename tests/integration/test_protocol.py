"""Malformed and unusual input on raw sockets: the offending connection gets
08P01 and is closed (or is simply closed during startup), and a client that
was already connected keeps working."""

import struct
import time
import unittest

import harness
from harness import i32, message, setUpModule, tearDownModule  # noqa: F401


class ProtocolTest(harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 2, "max_overflow": 0,
                      "max_packet_size": 1024, "client_login_timeout": 2}

    def setUp(self):
        # A bystander logged in before the bad input; it must be unaffected.
        self.bystander = self.proxy.raw_login()
        self.addCleanup(self.bystander.close)
        self.assertEqual(self.bystander.query("SELECT 1").status, "I")

    def assert_bystander_fine(self):
        r = self.bystander.query("SELECT 'still here'")
        self.assertEqual((r.errors, r.sets[0]["rows"], r.status), ([], [["still here"]], "I"))
        with self.proxy.raw_login() as c:  # and new clients are served
            self.assertEqual(c.query("SELECT 2").sets[0]["rows"], [["2"]])

    def assert_08P01_then_closed(self, conn):
        msgs = conn.read_until_closed()
        errors = [harness.parse_error_fields(b) for k, b in msgs if k == "E"]
        self.assertTrue(errors, "no ErrorResponse before the close: %r" % msgs)
        self.assertEqual(errors[0].get("C"), "08P01", errors[0])
        return errors[0]

    def test_length_below_four(self):
        c = self.proxy.raw_login()
        c.send(b"Q" + i32(3))
        self.assert_08P01_then_closed(c)
        self.assert_bystander_fine()

    def test_negative_length(self):
        c = self.proxy.raw_login()
        c.send(b"Q" + struct.pack("!i", -20))
        self.assert_08P01_then_closed(c)
        self.assert_bystander_fine()

    def test_message_over_max_packet_size(self):
        c = self.proxy.raw_login()
        sql = "SELECT '" + "x" * 900 + "'"  # under the limit: fine
        r = c.query(sql)
        self.assertEqual((r.errors, len(r.sets[0]["rows"][0][0])), ([], 900))
        c.send(b"Q" + i32(2000 + 4))  # header only: the length alone must be refused
        err = self.assert_08P01_then_closed(c)
        self.assertIn("max_packet_size", err.get("M", "") + err.get("H", "") + err.get("D", ""))
        self.assert_bystander_fine()

    def test_message_over_max_packet_size_with_body(self):
        c = self.proxy.raw_login()
        body = b"SELECT '" + b"y" * 3000 + b"'\0"
        try:
            c.send(message("Q", body))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy may close before it all arrived
        try:
            self.assert_08P01_then_closed(c)
        except ConnectionResetError:
            pass  # our unread body made the close an RST; the close is what counts
        self.assert_bystander_fine()

    def test_startup_length_too_small(self):
        c = self.proxy.raw()
        c.send(i32(3) + i32(harness.PROTO_V3))
        msgs = c.read_until_closed()
        self.assertNotIn("R", [k for k, _ in msgs], "authentication began after a bad startup")
        self.assert_bystander_fine()

    def test_startup_too_large(self):
        c = self.proxy.raw()
        c.send(i32(100000) + i32(harness.PROTO_V3) + b"user\0" + b"u" * 2000)
        try:
            msgs = c.read_until_closed()
        except ConnectionResetError:
            msgs = []
        self.assertNotIn("R", [k for k, _ in msgs])
        self.assert_bystander_fine()

    def test_truncated_startup_then_eof(self):
        c = self.proxy.raw()
        full = harness.startup_message({"user": "app_scram", "database": "app"})
        c.send(full[:11])
        c.sock.shutdown(1)  # SHUT_WR: we will send nothing more
        msgs = c.read_until_closed()
        self.assertNotIn("R", [k for k, _ in msgs])
        self.assert_bystander_fine()

    def test_truncated_startup_hits_login_timeout(self):
        c = self.proxy.raw(timeout=15)
        full = harness.startup_message({"user": "app_scram", "database": "app"})
        c.send(full[:11])  # and then nothing: client_login_timeout (2 s) ends it
        msgs = c.read_until_closed(timeout=15)
        self.assertNotIn("R", [k for k, _ in msgs])
        self.assert_bystander_fine()

    def test_startup_without_user(self):
        c = self.proxy.raw()
        c.send(harness.startup_message({"database": "app"}))
        msgs = c.read_until_closed()
        self.assertIn("E", [k for k, _ in msgs])
        self.assertNotIn("Z", [k for k, _ in msgs])
        self.assert_bystander_fine()

    def test_unterminated_startup_parameters(self):
        c = self.proxy.raw()
        body = i32(harness.PROTO_V3) + b"user\0app_scram\0database\0ap"  # no NULs at the end
        c.send(i32(len(body) + 4) + body)
        msgs = c.read_until_closed()
        self.assertNotIn("R", [k for k, _ in msgs])
        self.assert_bystander_fine()

    def test_bogus_cancel_request(self):
        c = self.proxy.raw()
        c.send(harness.cancel_request(12345, 67890))
        self.assertEqual(c.read_until_closed(), [])
        self.assert_bystander_fine()

    def test_terminate(self):
        c = self.proxy.raw_login()
        c.send(harness.terminate_message())
        self.assertEqual(c.read_until_closed(), [])
        self.assert_bystander_fine()

    def test_terminate_mid_transaction_rolls_back(self):
        t = self.table_name()
        self.pg.execute("DROP TABLE IF EXISTS %s" % t)
        self.pg.execute("CREATE TABLE %s (id int)" % t)
        self.pg.execute("GRANT ALL ON %s TO PUBLIC" % t)
        c = self.proxy.raw_login()
        r = c.query("BEGIN; INSERT INTO %s VALUES (1)" % t)
        self.assertEqual((r.errors, r.status), ([], "T"))
        c.send(harness.terminate_message())
        c.read_until_closed()
        harness.wait_until(lambda: self.pg.server_count(state="idle in transaction") == 0,
                           message="no transaction left open")
        self.assertEqual(self.pg.query("SELECT count(*) FROM %s" % t)[0][0], 0)
        self.assert_bystander_fine()

    def test_unknown_message_type(self):
        c = self.proxy.raw_login()
        c.send(message("z", b"junk"))
        c.sock.settimeout(10)
        kind, body = c.read_message()
        self.assertEqual(kind, "E")
        self.assertEqual(harness.parse_error_fields(body).get("C"), "08P01")
        c.close()
        self.assert_bystander_fine()

    def test_split_and_coalesced_messages(self):
        """Frames arriving a byte at a time, and several in one packet."""
        c = self.proxy.raw_login()
        data = harness.query_message("SELECT 'split'")
        for i in range(len(data)):
            c.send(data[i:i + 1])
            time.sleep(0.001)
        r = c.read_result()
        self.assertEqual(r.sets[0]["rows"], [["split"]])
        c.send(harness.query_message("SELECT 1") + harness.query_message("SELECT 2")
               + harness.query_message("SELECT 3"))
        got = [c.read_result().sets[0]["rows"][0][0] for _ in range(3)]
        self.assertEqual(got, ["1", "2", "3"])
        c.close()
        self.assert_bystander_fine()

    def test_extended_protocol_by_hand(self):
        c = self.proxy.raw_login()
        c.send(harness.parse_message("SELECT $1::int + 1")
               + harness.bind_message(["41"]) + harness.describe_message("P")
               + harness.execute_message() + harness.sync_message())
        r = c.read_result()
        kinds = [k for k, _ in r.messages]
        self.assertEqual(kinds, ["1", "2", "T", "D", "C", "Z"])
        self.assertEqual(r.sets[0]["rows"], [["42"]])
        # An error skips to Sync, then the connection is usable again.
        c.send(harness.parse_message("SELECT 1/$1::int") + harness.bind_message(["0"])
               + harness.execute_message() + harness.sync_message())
        r = c.read_result()
        self.assertEqual([e["C"] for e in r.errors], ["22012"])
        self.assertEqual(r.status, "I")
        self.assertEqual(c.query("SELECT 3").sets[0]["rows"], [["3"]])
        c.close()
        self.assert_bystander_fine()


if __name__ == "__main__":
    unittest.main()
