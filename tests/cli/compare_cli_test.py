#!/usr/bin/python3
"""End-to-end tests of `kldrift compare`, run against the real binary.

Usage: compare_cli_test.py PATH/TO/kldrift [unittest args]

Standard library only. Prints "N passed, M failed" last and exits non-zero on any failure.
"""

import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

KLDRIFT = None  # Set from sys.argv[1] in __main__.

MEASURES = [
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
JSON_KEYS = set(MEASURES) | {
    "samples_current",
    "samples_reference",
    "alpha",
    "top_bins",
}
TOP_BIN_KEYS = {"bin", "label", "current_share", "reference_share", "contribution"}

EDGES = [0.0, 0.2, 0.4, 0.6, 0.8]


def as_float(value):
    """JSON numbers, plus the "Infinity" / "-Infinity" / "NaN" strings the CLI writes."""
    if isinstance(value, str):
        return float(value)
    return float(value)


def g_label(x):
    # absl::StrCat formats doubles like printf's %g (six significant digits).
    return "%g" % x


def numeric_labels(edges):
    labels = ["< " + g_label(edges[0])]
    for i in range(1, len(edges)):
        labels.append("[%s, %s)" % (g_label(edges[i - 1]), g_label(edges[i])))
    labels.append(">= " + g_label(edges[-1]))
    labels.append("NaN")
    return labels


class CompareCliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="kldrift_cli_test_")
        cls.dir = cls._tmp.name

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    # -- helpers ----------------------------------------------------------------------------

    def write(self, name, content):
        path = os.path.join(self.dir, name)
        if not isinstance(content, str):
            content = json.dumps(content)
        with open(path, "w", newline="") as f:
            f.write(content)
        return path

    def run_kldrift(self, *args):
        return subprocess.run(
            [KLDRIFT] + [str(a) for a in args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            timeout=60,
        )

    def run_ok(self, *args):
        proc = self.run_kldrift(*args)
        self.assertEqual(
            proc.returncode, 0, "kldrift %s failed: %s" % (" ".join(map(str, args)), proc.stderr)
        )
        self.assertEqual(proc.stderr, "")
        return proc

    def compare_json(self, *args):
        proc = self.run_ok("compare", "--json", *args)
        self.assertTrue(proc.stdout.endswith("\n"))
        return json.loads(proc.stdout)

    def assert_usage_error(self, args, *fragments):
        proc = self.run_kldrift(*args)
        self.assertEqual(proc.returncode, 2, "args %r: stdout %r stderr %r" % (args, proc.stdout, proc.stderr))
        self.assertNotEqual(proc.stderr.strip(), "", "args %r: no message on stderr" % (args,))
        for fragment in fragments:
            self.assertIn(fragment, proc.stderr, "args %r" % (args,))
        self.assertEqual(proc.stdout, "", "args %r: errors must not print results" % (args,))
        return proc

    def numeric_pair(self):
        ref = self.write("num_ref.json", {"counts": [10, 20, 30, 40], "edges": EDGES})
        cur = self.write("num_cur.json", {"counts": [40, 30, 25, 5], "edges": EDGES})
        return ref, cur

    def assert_consistent(self, out, ref_total, cur_total, alpha):
        self.assertEqual(set(out.keys()), JSON_KEYS)
        kl_pq = as_float(out["kl_current_reference"])
        kl_qp = as_float(out["kl_reference_current"])
        self.assertEqual(as_float(out["jeffreys"]), kl_pq + kl_qp)
        self.assertEqual(as_float(out["psi"]), as_float(out["jeffreys"]))
        self.assertEqual(out["samples_current"], cur_total)
        self.assertEqual(out["samples_reference"], ref_total)
        self.assertEqual(out["alpha"], alpha)
        for name in MEASURES:
            value = as_float(out[name])
            self.assertFalse(math.isnan(value), name)
            self.assertGreaterEqual(value, 0.0, name)
        for name in ("js_bits", "hellinger", "total_variation", "l_inf", "g_test_p_value"):
            self.assertLessEqual(as_float(out[name]), 1.0, name)

    # -- output -----------------------------------------------------------------------------

    def test_table_lists_every_measure(self):
        ref, cur = self.numeric_pair()
        proc = self.run_ok("compare", "--reference", ref, "--current", cur)
        for name in MEASURES:
            self.assertRegex(proc.stdout, r"(?m)^\s+%s\s+\S+" % name)
        self.assertIn("samples: current 100, reference 100", proc.stdout)
        self.assertIn("top bins", proc.stdout)
        with self.assertRaises(ValueError):
            json.loads(proc.stdout)

    def test_json_keys_and_consistency(self):
        ref, cur = self.numeric_pair()
        out = self.compare_json("--reference", ref, "--current", cur, "--alpha", "0.25", "--top", "3")
        self.assert_consistent(out, 100, 100, 0.25)
        self.assertGreater(as_float(out["kl_current_reference"]), 0)
        self.assertGreater(as_float(out["kl_reference_current"]), 0)
        self.assertLess(out["g_test_p_value"], 0.05)

    def test_default_alpha_is_echoed(self):
        ref, cur = self.numeric_pair()
        out = self.compare_json("--reference", ref, "--current", cur)
        self.assertEqual(out["alpha"], 0.5)
        self.assertEqual(len(out["top_bins"]), 5)

    def test_top_bins(self):
        ref, cur = self.numeric_pair()
        labels = numeric_labels(EDGES)
        self.assertEqual(labels[2], "[0.2, 0.4)")
        ref_counts = [0, 10, 20, 30, 40, 0, 0]
        cur_counts = [0, 40, 30, 25, 5, 0, 0]
        alpha = 0.5
        k = len(labels)
        for top in (0, 1, 3, 7, 50):
            out = self.compare_json("--reference", ref, "--current", cur, "--top", top)
            bins = out["top_bins"]
            self.assertEqual(len(bins), min(top, k))
            contributions = [as_float(b["contribution"]) for b in bins]
            self.assertEqual(contributions, sorted(contributions, reverse=True))
            self.assertEqual(len({b["bin"] for b in bins}), len(bins))
            for b in bins:
                self.assertEqual(set(b.keys()), TOP_BIN_KEYS)
                i = b["bin"]
                self.assertEqual(b["label"], labels[i])
                p = (cur_counts[i] + alpha) / (sum(cur_counts) + k * alpha)
                q = (ref_counts[i] + alpha) / (sum(ref_counts) + k * alpha)
                self.assertAlmostEqual(b["current_share"], p, places=12)
                self.assertAlmostEqual(b["reference_share"], q, places=12)
                self.assertAlmostEqual(b["contribution"], p * math.log(p / q), places=12)
            if top >= k:
                # Every bin listed: the contributions add up to KL(current || reference).
                self.assertAlmostEqual(
                    sum(contributions), out["kl_current_reference"], places=12
                )
                self.assertEqual(bins[0]["label"], "[0, 0.2)")

    def test_alpha_zero_with_empty_reference_bin_is_infinite_not_nan(self):
        ref = self.write("zero_ref.json", {"counts": [10, 0, 30, 40], "edges": EDGES})
        cur = self.write("zero_cur.json", {"counts": [40, 30, 0, 10], "edges": EDGES})
        proc = self.run_ok(
            "compare", "--json", "--reference", ref, "--current", cur, "--alpha", "0", "--top", "7"
        )
        out = json.loads(proc.stdout)
        # No value is NaN (the NaN bucket's *label* is "NaN", which is fine).
        values = [v for k, v in out.items() if k != "top_bins"]
        for b in out["top_bins"]:
            values += [v for k, v in b.items() if k != "label"]
        for v in values:
            self.assertNotEqual(v, "NaN")
            self.assertFalse(math.isnan(as_float(v)))
        self.assertIn("NaN", [b["label"] for b in out["top_bins"]])
        self.assertEqual(set(out.keys()), JSON_KEYS)
        self.assertEqual(out["kl_current_reference"], "Infinity")
        self.assertEqual(out["kl_reference_current"], "Infinity")  # current is empty in bin 3.
        self.assertEqual(out["jeffreys"], "Infinity")
        self.assertEqual(out["psi"], "Infinity")
        self.assertEqual(out["alpha"], 0)
        self.assertEqual(out["samples_reference"], 80)
        self.assertEqual(out["top_bins"][0]["contribution"], "Infinity")
        self.assertEqual(out["top_bins"][0]["label"], "[0.2, 0.4)")
        contributions = [as_float(b["contribution"]) for b in out["top_bins"]]
        self.assertEqual(contributions, sorted(contributions, reverse=True))
        # The two-sample G-test needs no smoothing: strong evidence, but a finite p-value.
        self.assertGreaterEqual(out["g_test_p_value"], 0)
        self.assertLess(out["g_test_p_value"], 1e-10)
        # Bounded measures stay bounded.
        for name in ("js_bits", "hellinger", "total_variation", "l_inf"):
            self.assertLessEqual(out[name], 1.0)
        # Total variation at alpha 0 is exact: 1/2 sum |p - q|.
        p = [0, 40 / 80, 30 / 80, 0, 10 / 80, 0, 0]
        q = [0, 10 / 80, 0, 30 / 80, 40 / 80, 0, 0]
        self.assertAlmostEqual(
            out["total_variation"], 0.5 * sum(abs(a - b) for a, b in zip(p, q)), places=12
        )
        # The table says inf too, never nan.
        table = self.run_ok("compare", "--reference", ref, "--current", cur, "--alpha", "0")
        self.assertIn("inf", table.stdout)
        self.assertNotIn("nan", table.stdout)

    def test_identical_files(self):
        ref, _ = self.numeric_pair()
        out = self.compare_json("--reference", ref, "--current", ref, "--alpha", "0")
        self.assert_consistent(out, 100, 100, 0)
        for name in MEASURES:
            if name != "g_test_p_value":
                self.assertEqual(out[name], 0, name)
        self.assertEqual(out["g_test_p_value"], 1)
        for b in out["top_bins"]:
            self.assertEqual(b["contribution"], 0)
            self.assertEqual(b["current_share"], b["reference_share"])

    def test_identical_files_default_alpha(self):
        ref, _ = self.numeric_pair()
        out = self.compare_json("--reference", ref, "--current", ref)
        for name in MEASURES:
            if name != "g_test_p_value":
                self.assertEqual(out[name], 0, name)
        self.assertGreater(out["g_test_p_value"], 0)
        self.assertLessEqual(out["g_test_p_value"], 1)

    # -- formats ----------------------------------------------------------------------------

    def test_categorical_order_and_unseen_label(self):
        ref = self.write("cat_ref.json", {"counts": [5, 3, 2], "categories": ["cat", "dog", "eel"]})
        cur = self.write(
            "cat_cur.json", {"counts": [1, 4, 6, 2], "categories": ["eel", "cat", "yak", "dog"]}
        )
        # The same histogram in the reference's order, with "yak" as the unseen count.
        positional = self.write("cat_cur_positional.json", {"counts": [4, 2, 1, 6]})
        out = self.compare_json("--reference", ref, "--current", cur, "--top", "4")
        self.assert_consistent(out, 10, 13, 0.5)
        self.assertEqual(
            out, self.compare_json("--reference", ref, "--current", positional, "--top", "4")
        )
        labels = {b["bin"]: b["label"] for b in out["top_bins"]}
        self.assertEqual(labels, {0: "cat", 1: "dog", 2: "eel", 3: "<unseen>"})
        unseen = [b for b in out["top_bins"] if b["label"] == "<unseen>"][0]
        self.assertAlmostEqual(unseen["current_share"], (6 + 0.5) / (13 + 4 * 0.5), places=12)
        self.assertAlmostEqual(unseen["reference_share"], 0.5 / (10 + 4 * 0.5), places=12)
        # The unseen label is what drifted most.
        self.assertEqual(out["top_bins"][0]["label"], "<unseen>")

    def test_categorical_same_labels_reordered_is_zero(self):
        ref = self.write("cat2_ref.json", {"counts": [5, 3, 2], "categories": ["a", "b", "c"]})
        cur = self.write("cat2_cur.json", {"counts": [2, 5, 3], "categories": ["c", "a", "b"]})
        out = self.compare_json("--reference", ref, "--current", cur, "--alpha", "0")
        self.assertEqual(out["kl_current_reference"], 0)
        self.assertEqual(out["total_variation"], 0)
        self.assertEqual(out["g_test_p_value"], 1)

    def test_csv_inputs(self):
        ref_csv = self.write("ref.csv", "count\r\n10\r\n20,\r\n\r\n# comment\r\n30\r\n40\r\n")
        cur_csv = self.write("cur.csv", "# current\n40\n30\n\n25\n5\n")
        ref_json = self.write("ref_bare.json", {"counts": [10, 20, 30, 40]})
        cur_json = self.write("cur_bare.json", {"counts": [40, 30, 25, 5]})
        out = self.compare_json("--reference", ref_csv, "--current", cur_csv, "--top", "4")
        self.assert_consistent(out, 100, 100, 0.5)
        self.assertEqual(
            out, self.compare_json("--reference", ref_json, "--current", cur_json, "--top", "4")
        )
        self.assertEqual(sorted(b["label"] for b in out["top_bins"]), ["bin 0", "bin 1", "bin 2", "bin 3"])
        # A CSV current file against a numeric reference is positional over the interior bins.
        ref_num, cur_num = self.numeric_pair()
        self.assertEqual(
            self.compare_json("--reference", ref_num, "--current", cur_csv),
            self.compare_json("--reference", ref_num, "--current", cur_num),
        )

    # -- Gaussians --------------------------------------------------------------------------

    @staticmethod
    def gaussian_kl(m1, v1, m2, v2):
        return 0.5 * sum(
            a / b + (x - y) ** 2 / b - 1 - math.log(a / b) for x, a, y, b in zip(m1, v1, m2, v2)
        )

    def test_gaussian_standard_normal(self):
        mean, var = [0.5, -1.0, 0.0], [2.0, 0.5, 1.0]
        cur = self.write("g_cur.json", {"mean": mean, "var": var})
        out = self.compare_json("--gaussian", "--current", cur)
        self.assertEqual(
            set(out.keys()),
            {"kl_current_reference", "kl_reference_current", "jeffreys", "dimensions", "reference"},
        )
        self.assertEqual(out["reference"], "standard_normal")
        self.assertEqual(out["dimensions"], 3)
        forward = 0.5 * sum(v + m * m - 1 - math.log(v) for m, v in zip(mean, var))
        reverse = 0.5 * sum(1 / v + m * m / v - 1 + math.log(v) for m, v in zip(mean, var))
        self.assertAlmostEqual(out["kl_current_reference"], forward, places=12)
        self.assertAlmostEqual(out["kl_reference_current"], reverse, places=12)
        self.assertEqual(out["jeffreys"], out["kl_current_reference"] + out["kl_reference_current"])
        table = self.run_ok("compare", "--gaussian", "--current", cur)
        for name in ("kl_current_reference", "kl_reference_current", "jeffreys"):
            self.assertIn(name, table.stdout)
        self.assertIn("N(0, I)", table.stdout)

    def test_gaussian_with_reference(self):
        m1, v1 = [0.3, -0.2], [1.5, 0.25]
        m2, v2 = [-0.1, 0.4], [0.5, 2.0]
        cur = self.write("g1.json", {"mean": m1, "var": v1})
        ref = self.write("g2.json", {"mean": m2, "var": v2})
        out = self.compare_json("--gaussian", "--current", cur, "--reference", ref)
        self.assertEqual(out["reference"], "file")
        self.assertEqual(out["dimensions"], 2)
        self.assertAlmostEqual(out["kl_current_reference"], self.gaussian_kl(m1, v1, m2, v2), places=12)
        self.assertAlmostEqual(out["kl_reference_current"], self.gaussian_kl(m2, v2, m1, v1), places=12)
        same = self.compare_json("--gaussian", "--current", cur, "--reference", cur)
        self.assertEqual(same["kl_current_reference"], 0)
        self.assertEqual(same["kl_reference_current"], 0)

    # -- errors -----------------------------------------------------------------------------

    def test_missing_file(self):
        ref, _ = self.numeric_pair()
        missing = os.path.join(self.dir, "does_not_exist.json")
        self.assert_usage_error(["compare", "--reference", ref, "--current", missing], "does_not_exist.json")
        self.assert_usage_error(["compare", "--reference", missing, "--current", ref], "cannot open")

    def test_malformed_json(self):
        ref, _ = self.numeric_pair()
        bad = self.write("malformed.json", '{"counts": [1, 2')
        self.assert_usage_error(["compare", "--reference", ref, "--current", bad], "malformed.json", "invalid JSON")

    def test_negative_count(self):
        ref, _ = self.numeric_pair()
        bad = self.write("negative.json", {"counts": [1, -2, 3, 4], "edges": EDGES})
        self.assert_usage_error(["compare", "--reference", ref, "--current", bad], "counts[1]", "-2")
        bad_csv = self.write("negative.csv", "1\n2\n-3\n")
        self.assert_usage_error(["compare", "--reference", bad_csv, "--current", ref], "line 3")

    def test_fractional_count(self):
        ref, _ = self.numeric_pair()
        bad = self.write("fractional.json", {"counts": [1, 2.5, 3, 4], "edges": EDGES})
        self.assert_usage_error(["compare", "--reference", ref, "--current", bad], "counts[1]", "2.5")

    def test_mismatched_edges(self):
        ref, _ = self.numeric_pair()
        bad = self.write("edges_moved.json", {"counts": [1, 2, 3, 4], "edges": [0, 0.2, 0.5, 0.6, 0.8]})
        self.assert_usage_error(["compare", "--reference", ref, "--current", bad], "edges[2]")
        fewer = self.write("edges_fewer.json", {"counts": [1, 2, 3], "edges": [0, 0.2, 0.4, 0.6]})
        self.assert_usage_error(["compare", "--reference", ref, "--current", fewer], "edges")

    def test_mismatched_bin_count(self):
        ref, _ = self.numeric_pair()
        bad = self.write("three_bins.json", {"counts": [1, 2, 3]})
        self.assert_usage_error(["compare", "--reference", ref, "--current", bad], "3 counts")
        bad_ref = self.write("bad_ref_len.json", {"counts": [1, 2, 3], "edges": EDGES})
        self.assert_usage_error(["compare", "--reference", bad_ref, "--current", ref], "bad_ref_len.json", "3 counts")
        pre = self.write("pre3.json", {"counts": [1, 2, 3]})
        pre4 = self.write("pre4.json", {"counts": [1, 2, 3, 4]})
        self.assert_usage_error(["compare", "--reference", pre, "--current", pre4], "4 bins")

    def test_duplicate_categories(self):
        dup = self.write("dup.json", {"counts": [1, 2, 3], "categories": ["a", "b", "a"]})
        ok = self.write("abc.json", {"counts": [1, 2, 3], "categories": ["a", "b", "c"]})
        self.assert_usage_error(["compare", "--reference", dup, "--current", ok], '"a" appears twice')
        self.assert_usage_error(["compare", "--reference", ok, "--current", dup], '"a" appears twice')

    def test_non_increasing_edges(self):
        bad = self.write("flat_edges.json", {"counts": [1, 2, 3, 4], "edges": [0, 0.2, 0.2, 0.6, 0.8]})
        _, cur = self.numeric_pair()
        self.assert_usage_error(["compare", "--reference", bad, "--current", cur], "strictly increasing")

    def test_mixed_kinds(self):
        ref, _ = self.numeric_pair()
        cat = self.write("abc2.json", {"counts": [1, 2, 3], "categories": ["a", "b", "c"]})
        self.assert_usage_error(["compare", "--reference", ref, "--current", cat], "not categorical")

    def test_unknown_flag(self):
        ref, cur = self.numeric_pair()
        self.assert_usage_error(["compare", "--reference", ref, "--current", cur, "--bogus"], "--bogus")

    def test_missing_current(self):
        ref, _ = self.numeric_pair()
        self.assert_usage_error(["compare", "--reference", ref], "--current")
        self.assert_usage_error(["compare", "--gaussian"], "--current")
        self.assert_usage_error(["compare"], "--current")

    def test_bad_top(self):
        ref, cur = self.numeric_pair()
        self.assert_usage_error(["compare", "--reference", ref, "--current", cur, "--top", "-1"], "--top")
        self.assert_usage_error(["compare", "--reference", ref, "--current", cur, "--top", "x"], "--top")

    def test_bad_alpha(self):
        ref, cur = self.numeric_pair()
        for value in ("-1", "abc", "nan", "inf"):
            self.assert_usage_error(
                ["compare", "--reference", ref, "--current", cur, "--alpha", value], "--alpha"
            )

    def test_gaussian_errors(self):
        zero = self.write("g_zero_var.json", {"mean": [0.0, 1.0], "var": [1.0, 0.0]})
        self.assert_usage_error(["compare", "--gaussian", "--current", zero], "var[1]")
        cur = self.write("g_ok.json", {"mean": [0.0], "var": [1.0]})
        two = self.write("g_two.json", {"mean": [0.0, 0.0], "var": [1.0, 1.0]})
        self.assert_usage_error(["compare", "--gaussian", "--current", cur, "--reference", two], "dimensions")
        self.assert_usage_error(["compare", "--gaussian", "--current", cur, "--alpha", "1"], "--alpha")

    def test_unknown_command(self):
        self.assert_usage_error(["frobnicate"], "frobnicate", "usage")

    def test_no_arguments(self):
        self.assert_usage_error([], "usage")

    def test_help(self):
        proc = self.run_ok("--help")
        self.assertIn("compare", proc.stdout)
        proc = self.run_ok("compare", "--help")
        for flag in ("--reference", "--current", "--alpha", "--top", "--json", "--gaussian"):
            self.assertIn(flag, proc.stdout)


def main():
    global KLDRIFT
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.stderr.write("usage: %s PATH/TO/kldrift [unittest args]\n" % sys.argv[0])
        return 2
    KLDRIFT = os.path.abspath(sys.argv.pop(1))
    if not os.access(KLDRIFT, os.X_OK):
        sys.stderr.write("%s is not an executable\n" % KLDRIFT)
        return 2
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped) - len(result.expectedFailures)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
