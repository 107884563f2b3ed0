#!/usr/bin/python3
"""Runs the kernel benchmarks and times NumPy and SciPy on the same data in the same run.

Usage: run_kernel_bench.py [--bench build/tests/bench/kernels_bench] [--min-time 0.3] [--json FILE]

Writes the benchmark inputs to a temporary folder, runs the Google Benchmark binary on them
(KLDRIFT_BENCH_DATA), times np.sum(p*np.log(p/q)) and scipy.stats.entropy(p, q) on the same
smoothed shares, and prints bins/s per core, cycles per bin and the ratios the kernels issue sets
as targets. Ratios, not absolute times, are what hold on a shared, noisy machine.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import timeit

import numpy as np
import scipy
from scipy import stats

SIZES = [16, 64, 256, 1024, 65536, 1048576]
ALPHA = 0.5


def best_seconds_per_call(fn, min_time):
    """Best-of-5 mean seconds per call, each repeat running for about min_time seconds."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * min_time / 0.2))
    return min(timer.repeat(repeat=5, number=number)) / number


def main():
    parser = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    default_bench = os.path.join(here, "..", "..", "build", "tests", "bench", "kernels_bench")
    parser.add_argument("--bench", default=default_bench)
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    rng = np.random.default_rng(7)
    data = {}
    with tempfile.TemporaryDirectory() as folder:
        for k in SIZES:
            counts = rng.integers(0, 1001, k).astype(np.float64)
            reference = rng.integers(0, 1001, k).astype(np.float64)
            counts.tofile(os.path.join(folder, f"counts_{k}.f64"))
            reference.tofile(os.path.join(folder, f"reference_{k}.f64"))
            data[k] = (counts, reference)
        env = dict(os.environ, KLDRIFT_BENCH_DATA=folder)
        run = subprocess.run(
            [args.bench, "--benchmark_format=json", f"--benchmark_min_time={args.min_time}"],
            env=env, capture_output=True, text=True, check=True)
    report = json.loads(run.stdout)
    mhz = report["context"].get("mhz_per_cpu", 0)
    ns = {}
    for b in report["benchmarks"]:
        name, _, arg = b["name"].partition("/")
        scale = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[b.get("time_unit", "ns")]
        ns[(name, int(arg) if arg.isdigit() else arg)] = b["real_time"] * scale

    rows = []
    for k in SIZES:
        counts, reference = data[k]
        p = (counts + ALPHA) / (counts.sum() + k * ALPHA)
        q = (reference + ALPHA) / (reference.sum() + k * ALPHA)
        numpy_ns = best_seconds_per_call(lambda: np.sum(p * np.log(p / q)), args.min_time) * 1e9
        scipy_ns = best_seconds_per_call(lambda: stats.entropy(p, q), args.min_time) * 1e9
        kl_ns = ns[("BM_KlCachedReference", k)]
        rows.append({
            "bins": k,
            "kldrift_kl_ns": kl_ns,
            "scalar_std_log_ns": ns[("BM_KlScalarStdLog", k)],
            "all_measures_ns": ns[("BM_DivergenceSums", k)],
            "drift_report_ns": ns[("BM_ComputeDriftMeasures", k)],
            "numpy_ns": numpy_ns,
            "scipy_entropy_ns": scipy_ns,
            "bins_per_second": k / kl_ns * 1e9,
            "cycles_per_bin": kl_ns * mhz / 1e3 / k if mhz else float("nan"),
            "x_numpy": numpy_ns / kl_ns,
            "x_scipy": scipy_ns / kl_ns,
            "x_scalar": ns[("BM_KlScalarStdLog", k)] / kl_ns,
        })

    print(f"kldrift kernel benchmark: {report['context'].get('num_cpus')} CPUs at {mhz} MHz, "
          f"NumPy {np.__version__}, SciPy {scipy.__version__}; one core, best of repeats\n")
    print("KL(current||reference) with a cached reference, times per call:")
    header = (f"{'bins':>8} {'kldrift':>11} {'scalar':>11} {'numpy':>11} {'scipy':>11} "
              f"{'Gbins/s':>8} {'cyc/bin':>8} {'x numpy':>8} {'x scipy':>8} {'x scalar':>8}")
    print(header)
    for r in rows:
        print(f"{r['bins']:>8} {r['kldrift_kl_ns']:>9.0f}ns {r['scalar_std_log_ns']:>9.0f}ns "
              f"{r['numpy_ns']:>9.0f}ns {r['scipy_entropy_ns']:>9.0f}ns "
              f"{r['bins_per_second'] / 1e9:>8.3f} {r['cycles_per_bin']:>8.2f} "
              f"{r['x_numpy']:>8.1f} {r['x_scipy']:>8.1f} {r['x_scalar']:>8.1f}")
    print("\nall measures in one pass / full drift report (validation, p-value, top-5 bins):")
    for r in rows:
        print(f"{r['bins']:>8} {r['all_measures_ns']:>10.0f}ns {r['drift_report_ns']:>10.0f}ns "
              f"({r['bins'] / r['all_measures_ns'] * 1e3:.0f} Mbins/s all measures)")
    others = [(name, arg, t) for (name, arg), t in sorted(ns.items())
              if name in ("BM_GaussianKl", "BM_PolicyKl", "BM_BinValues",
                          "BM_IncrementalKlAddAndRead")]
    print("\nother kernels:")
    for name, arg, t in others:
        print(f"  {name}/{arg}: {t:.0f} ns per call")

    by_k = {r["bins"]: r for r in rows}
    targets = [
        ("KL with cached reference >= 3x NumPy at K = 1M", by_k[1048576]["x_numpy"], 3.0),
        ("KL >= 200x scipy.stats.entropy per call at K = 64", by_k[64]["x_scipy"], 200.0),
    ] + [(f">= 3x the scalar std::log loop at K = {k}", by_k[k]["x_scalar"], 3.0)
         for k in SIZES if k >= 1024]
    print("\ntargets (kernels issue):")
    for label, ratio, goal in targets:
        print(f"  {'MET ' if ratio >= goal else 'MISS'} {label}: {ratio:.1f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"context": report["context"], "rows": rows}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
