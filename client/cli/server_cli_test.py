#!/usr/bin/python3
"""End-to-end tests of the `kldrift` commands that talk to a real kldriftd.

Usage: server_cli_test.py PATH/TO/kldrift PATH/TO/kldriftd [unittest args]

Starts kldriftd on a free loopback port (--listen 127.0.0.1:0 --port-file), runs the CLI against
it, and stops it with SIGTERM. Standard library only. Prints "N passed, M failed" last and exits
non-zero on any failure.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

KLDRIFT = None  # Set from sys.argv in __main__.
KLDRIFTD = None

STARTUP_TIMEOUT_S = 20
COMMAND_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 20
HISTOGRAM_MEASURES = [
    "kl_current_reference",
    "kl_reference_current",
    "jeffreys",
    "psi",
    "js_bits",
    "hellinger",
    "total_variation",
    "l_inf",
    "chi2",
    "g_test_p_value",
]
REPORT_KEYS = {
    "window",
    "samples",
    "alert_state",
    "severity",
    "reference_version",
    "top_bins",
} | set(HISTOGRAM_MEASURES)


class ServerCliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work_dir = tempfile.TemporaryDirectory()
        port_file = os.path.join(cls.work_dir.name, "port")
        cls.server_log = open(os.path.join(cls.work_dir.name, "kldriftd.log"), "w+")
        cls.server = subprocess.Popen(
            [
                KLDRIFTD,
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                port_file,
                "--storage=memory",
                "--metrics-listen",
                "127.0.0.1:0",
                "--eval-interval",
                "200ms",
            ],
            stdout=cls.server_log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not os.path.exists(port_file):
            if cls.server.poll() is not None or time.monotonic() > deadline:
                cls.server.kill()
                raise RuntimeError("kldriftd did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            cls.address = "127.0.0.1:%d" % int(f.read().strip())

    @classmethod
    def tearDownClass(cls):
        cls.server.send_signal(signal.SIGTERM)
        try:
            code = cls.server.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            cls.server.kill()
            code = None
        cls.server_log.close()
        cls.work_dir.cleanup()
        if code != 0:
            raise RuntimeError("kldriftd exited with %r after SIGTERM" % code)

    def kldrift(self, *args, stdin="", server=None, expect=0):
        """Runs the CLI; checks the exit code; returns (stdout, stderr)."""
        argv = [KLDRIFT, "--server", server or self.address, "--timeout", "10s"] + list(args)
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
        self.assertEqual(
            result.returncode,
            expect,
            "%s\nstdout: %s\nstderr: %s" % (" ".join(argv), result.stdout, result.stderr),
        )
        return result.stdout, result.stderr

    def put_numeric(self, model, signal_name, edges="0,1,2", counts="50,50", *extra):
        out, _ = self.kldrift(
            "reference", "put", "--model", model, "--signal", signal_name,
            "--edges", edges, "--counts", counts, *extra,
        )
        return int(out.strip())

    # --- reference ---

    def test_reference_put_get_list_delete(self):
        self.assertEqual(self.put_numeric("refs", "score", "0,1,2", "5,5", "--windows", "1m,1h"), 1)
        self.assertEqual(self.put_numeric("refs", "score", "0,1,2", "6,4", "--warn", "0.1"), 2)

        out, _ = self.kldrift("reference", "get", "--model", "refs", "--signal", "score", "--json")
        reference = json.loads(out)
        self.assertEqual(reference["version"], 2)
        self.assertEqual(reference["kind"], "numeric")
        self.assertEqual(reference["edges"], [0, 1, 2])
        self.assertEqual(reference["counts"], [0, 6, 4, 0, 0])  # Full layout.
        self.assertEqual(reference["policy"]["warn_threshold"], 0.1)
        self.assertEqual(reference["policy"]["critical_threshold"], 0.25)

        out, _ = self.kldrift(
            "reference", "get", "--model", "refs", "--signal", "score", "--version", "1", "--json"
        )
        self.assertEqual(json.loads(out)["policy"]["windows"], ["1m", "1h"])
        out, _ = self.kldrift("reference", "get", "--model", "refs", "--signal", "score")
        self.assertIn("refs//score", out)
        self.assertIn("[0, 1)", out)

        out, _ = self.kldrift(
            "reference", "put", "--model", "refs", "--model-version", "v2", "--signal", "label",
            "--categories", "cat,dog", "--values-file", "-", stdin="cat\ndog\ncat\nbird\n",
        )
        self.assertEqual(out.strip(), "1")
        out, _ = self.kldrift("reference", "list", "--model", "refs", "--json")
        streams = [(r["model_version"], r["signal"]) for r in json.loads(out)]
        self.assertEqual(sorted(streams), [("", "score"), ("v2", "label")])
        out, _ = self.kldrift("reference", "list", "--model", "nothing-here", "--json")
        self.assertEqual(json.loads(out), [])
        out, _ = self.kldrift("reference", "list")
        self.assertIn("refs/v2/label", out)

        out, _ = self.kldrift("reference", "delete", "--model", "refs", "--signal", "score")
        self.assertEqual(out.strip(), "deleted 2 versions of refs//score")
        _, err = self.kldrift(
            "reference", "get", "--model", "refs", "--signal", "score", expect=1
        )
        self.assertTrue(err.startswith("kldrift: NOT_FOUND: "), err)

    def test_exit_codes(self):
        _, err = self.kldrift("reference", "get", "--model", "m", "--signal", "none", expect=1)
        self.assertTrue(err.startswith("kldrift: NOT_FOUND: no reference for stream m//none"), err)
        # Rejected by the server: a server error.
        _, err = self.kldrift(
            "reference", "put", "--model", "m", "--signal", "s", "--edges", "1,0",
            "--counts", "1", expect=1,
        )
        self.assertTrue(err.startswith("kldrift: INVALID_ARGUMENT: "), err)
        # Bad usage never reaches the server.
        _, err = self.kldrift("reference", "put", "--model", "m", "--signal", "s", expect=2)
        self.assertIn("exactly one of --edges", err)
        self.kldrift("frobnicate", expect=2)
        self.kldrift("--timeout", "never", "drift", expect=2)
        # Nothing listening.
        _, err = self.kldrift(
            "drift", "--model", "m", "--signal", "s", server="127.0.0.1:1", expect=1
        )
        self.assertTrue(err.startswith("kldrift: UNAVAILABLE: "), err)

    def test_help(self):
        out, _ = self.kldrift("--help")
        for command in ["compare", "reference", "ingest", "drift", "watch", "simulate"]:
            self.assertIn(command, out)
        for command, flag in [
            (["reference", "put"], "--values-file"),
            (["ingest"], "--labels-file"),
            (["drift"], "--window"),
            (["watch"], "--changes-only"),
            (["simulate"], "--shift"),
            (["compare"], "--reference"),
        ]:
            out, _ = self.kldrift(*command, "--help")
            self.assertIn(flag, out)

    # --- ingest and drift ---

    def test_ingest_values_then_drift(self):
        self.put_numeric("ingest", "score", "0,1,2", "50,50")
        values = "\n".join(["0.5"] * 30 + ["1.5"] * 10 + ["5", "-1", "nan"]) + "\n"
        out, _ = self.kldrift(
            "ingest", "--model", "ingest", "--signal", "score", "--values-file", "-", stdin=values
        )
        self.assertEqual(out.strip(), "ingested 43 observations into ingest//score (reference version 1)")

        out, _ = self.kldrift("drift", "--model", "ingest", "--signal", "score", "--json")
        reports = json.loads(out)
        self.assertEqual([r["window"] for r in reports], ["5m", "1h", "24h"])
        for report in reports:
            self.assertTrue(REPORT_KEYS <= set(report), set(report) ^ REPORT_KEYS)
            self.assertEqual(report["samples"], 43)
            self.assertIn(report["alert_state"], ["ok", "pending", "firing"])
            self.assertEqual(report["reference_version"], 1)

        out, _ = self.kldrift(
            "drift", "--model", "ingest", "--signal", "score", "--window", "1h", "--json"
        )
        self.assertEqual(json.loads(out)["window"], "1h")
        out, _ = self.kldrift("drift", "--model", "ingest", "--signal", "score")
        self.assertIn("ingest//score  reference version 1", out)
        self.assertIn("top bins", out)
        _, err = self.kldrift(
            "drift", "--model", "ingest", "--signal", "score", "--window", "2m", expect=1
        )
        self.assertTrue(err.startswith("kldrift: NOT_FOUND: "), err)

    def test_ingest_counts_and_labels(self):
        self.put_numeric("counts", "score", "0,1,2", "50,50")
        self.kldrift("ingest", "--model", "counts", "--signal", "score", "--counts", "3,4")
        out, _ = self.kldrift(
            "drift", "--model", "counts", "--signal", "score", "--window", "5m", "--json"
        )
        self.assertEqual(json.loads(out)["samples"], 7)
        # A count per bucket of the full layout works too; the wrong length does not.
        self.kldrift("ingest", "--model", "counts", "--signal", "score", "--counts", "1,0,0,1,1")
        _, err = self.kldrift(
            "ingest", "--model", "counts", "--signal", "score", "--counts", "1,2,3", expect=2
        )
        self.assertIn("--counts", err)

        self.kldrift(
            "reference", "put", "--model", "counts", "--signal", "label",
            "--categories", "a,b", "--counts", "10,10",
        )
        self.kldrift(
            "ingest", "--model", "counts", "--signal", "label", "--labels-file", "-",
            stdin="a\nb\nb\nunknown\n",
        )
        out, _ = self.kldrift(
            "drift", "--model", "counts", "--signal", "label", "--window", "5m", "--json"
        )
        report = json.loads(out)
        self.assertEqual(report["samples"], 4)
        labels = {b["label"] for b in report["top_bins"]}
        self.assertIn("<unseen>", labels)
        # Labels for a numeric stream are bad input.
        _, err = self.kldrift(
            "ingest", "--model", "counts", "--signal", "score", "--labels-file", "-",
            stdin="a\n", expect=2,
        )
        self.assertIn("numeric reference", err)
        # No reference: the server says so.
        _, err = self.kldrift(
            "ingest", "--model", "counts", "--signal", "none", "--counts", "1", expect=1
        )
        self.assertTrue(err.startswith("kldrift: NOT_FOUND: "), err)

    # --- watch ---

    def test_watch_count_and_duration(self):
        self.put_numeric("watch", "score", "0,1,2", "50,50")
        self.kldrift("ingest", "--model", "watch", "--signal", "score", "--counts", "5,5")
        out, _ = self.kldrift("watch", "--model", "watch", "--count", "4")
        lines = out.strip().split("\n")
        self.assertEqual(len(lines), 4)
        for line in lines:
            report = json.loads(line)
            self.assertEqual(report["signal"], "score")
            self.assertIn(report["alert_state"], ["ok", "pending", "firing"])
        start = time.monotonic()
        self.kldrift(
            "watch", "--model", "watch", "--signal", "score", "--changes-only", "--duration", "1s"
        )
        self.assertLess(time.monotonic() - start, 10)
        self.kldrift("watch", "--model", "watch", "--model-version", "v", expect=2)

    # --- simulate (the Recorder against a real server) ---

    def test_simulate_creates_a_reference_and_streams_through_the_recorder(self):
        out, _ = self.kldrift(
            "simulate", "--model", "sim", "--signal", "score", "--shift", "2",
            "--rate", "500/s", "--duration", "2s", "--seed", "1",
        )
        self.assertIn("created reference version 1 of sim//score", out)
        self.assertIn("done: recorded 1000, acknowledged 1000, dropped 0", out)
        out, _ = self.kldrift("drift", "--model", "sim", "--signal", "score", "--window", "5m", "--json")
        report = json.loads(out)
        self.assertEqual(report["samples"], 1000)
        # N(2, 1) against N(0, 1): KL = 2, far above any threshold (binning lowers it a little).
        self.assertGreater(report["kl_current_reference"], 1)
        self.assertEqual(report["measure_value"], report["kl_current_reference"])

        out, _ = self.kldrift(
            "simulate", "--model", "sim", "--signal", "score", "--rate", "100", "--duration", "1s",
        )
        self.assertIn("using reference version 1", out)
        self.assertIn("acknowledged 100, dropped 0", out)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: server_cli_test.py PATH/TO/kldrift PATH/TO/kldriftd [unittest args]")
    KLDRIFT, KLDRIFTD = sys.argv[1], sys.argv[2]
    runner = unittest.TextTestRunner(verbosity=2)
    program = unittest.main(argv=[sys.argv[0]] + sys.argv[3:], testRunner=runner, exit=False)
    result = program.result
    failed = len(result.failures) + len(result.errors)
    print("%d passed, %d failed" % (result.testsRun - failed, failed))
    sys.exit(1 if failed else 0)
