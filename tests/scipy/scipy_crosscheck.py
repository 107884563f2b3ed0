#!/usr/bin/python3
"""Cross-checks every kldrift kernel against SciPy/NumPy on data this script generates.

Usage: scipy_crosscheck.py KERNEL_DRIVER
Runs the kernel driver (tests/scipy/kernel_driver.cc) on files of random inputs and compares each
result with SciPy to 1e-9 relative. Where a value is a sum of terms of both signs that nearly cancel,
the tolerance is 1e-9 of the sum of |terms| instead (the condition number of the sum), and that is
said where it applies. Needs Debian's /usr/bin/python3 with python3-scipy.
"""
import math
import subprocess
import sys

import numpy as np
from scipy import integrate, spatial, stats

RTOL = 1e-9
failures = []
checks = 0


def close(name, got, want, scale=0.0, rtol=RTOL):
    """Records a failure unless got == want within rtol * (|want| + scale)."""
    global checks
    checks += 1
    if math.isinf(want) or math.isinf(got):
        ok = got == want
    elif math.isnan(want) or math.isnan(got):
        ok = False
    else:
        ok = abs(got - want) <= rtol * (abs(want) + scale)
    if not ok:
        failures.append(f"{name}: kldrift {got!r} vs scipy {want!r} (scale {scale})")


def run(driver, mode, lines, *extra):
    text = "\n".join(" ".join(repr(float(x)) for x in line) for line in lines) + "\n"
    out = subprocess.run([driver, mode, *extra], input=text, capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"kernel_driver {mode} failed: {out.stderr}")
    return [[float(x) for x in row.split()] for row in out.stdout.splitlines()]


def check_divergences(driver, rng):
    for alpha in (0.5, 1.0, 1e-3):
        cases = []
        for k in (2, 3, 8, 17, 64, 1000, 65536):
            for shape in ("dense", "sparse", "tiny"):
                for _ in range(2):
                    if shape == "dense":
                        ref, cur = rng.integers(0, 1000, k), rng.integers(0, 1000, k)
                    elif shape == "sparse":
                        ref = rng.integers(0, 50, k) * (rng.random(k) < 0.1)
                        cur = rng.integers(0, 50, k) * (rng.random(k) < 0.1)
                    else:
                        ref, cur = rng.integers(0, 2, k), rng.integers(0, 2, k)
                    ref[0] += 1
                    cur[-1] += 1
                    cases.append((ref.astype(float), cur.astype(float)))
        lines = [line for case in cases for line in case]
        results = run(driver, "divergences", lines, repr(alpha))
        for (ref, cur), got in zip(cases, results):
            k = len(ref)
            p = (cur + alpha) / (cur.sum() + k * alpha)
            q = (ref + alpha) / (ref.sum() + k * alpha)
            tag = f"k={k} alpha={alpha}"
            # Sum of |terms|: the scale of cancellation in the KL sums.
            scale_pq = float(np.sum(np.abs(p * np.log(p))) + np.sum(np.abs(p * np.log(q))))
            scale_qp = float(np.sum(np.abs(q * np.log(q))) + np.sum(np.abs(q * np.log(p))))
            close(f"kl_current_reference {tag}", got[0], stats.entropy(p, q), 1e-3 * scale_pq)
            close(f"kl_reference_current {tag}", got[1], stats.entropy(q, p), 1e-3 * scale_qp)
            js = spatial.distance.jensenshannon(p, q, base=2) ** 2
            close(f"js_bits {tag}", got[2], js, 1e-3 * (scale_pq + scale_qp))
            hellinger = spatial.distance.euclidean(np.sqrt(p), np.sqrt(q)) / math.sqrt(2)
            close(f"hellinger {tag}", got[3], hellinger)
            close(f"total_variation {tag}", got[4], spatial.distance.cityblock(p, q) / 2)
            close(f"l_inf {tag}", got[5], spatial.distance.chebyshev(p, q))
            n = cur.sum()
            chi2 = stats.chisquare(f_obs=p * n, f_exp=q * n).statistic / n
            close(f"chi2 {tag}", got[6], chi2)
            # The G-test of homogeneity: SciPy's contingency test with the log-likelihood ratio,
            # on the bins where either histogram has data.
            occupied = (cur + ref) > 0
            if occupied.sum() >= 2:
                g = stats.chi2_contingency(np.array([cur[occupied], ref[occupied]]),
                                           correction=False, lambda_="log-likelihood")
                want_p = g[1]
            else:
                want_p = 1.0
            if want_p > 1e-300:
                close(f"g_test_p_value {tag}", got[7], want_p)
            else:
                close(f"g_test_p_value {tag} (underflow)", got[7] + 1.0, 1.0)


def check_chi2(driver):
    rows = []
    for dof in (1, 2, 3, 5, 9.5, 10, 63, 100, 999, 1023, 65535, 2 ** 20 - 1, 2 ** 20):
        mean, sd = dof, math.sqrt(2 * dof)
        for z in (-0.99, -0.5, -0.1, 0.0, 0.1, 1.0, 3.0, 10.0, 30.0):
            x = max(mean + z * sd, 1e-3)
            rows.append((x, dof))
        rows.extend([(1e-6, dof), (dof * 0.01, dof), (dof * 3 + 50, dof)])
    results = run(driver, "chi2sf", rows)
    for (x, dof), got in zip(rows, results):
        want = stats.chi2.sf(x, dof)
        if want > 1e-300:
            close(f"chi2.sf({x}, {dof})", got[0], want)
        else:
            close(f"chi2.sf({x}, {dof}) (underflow)", got[0] + 1.0, 1.0)


def gaussian_kl_by_quadrature(m1, v1, m2, v2):
    """KL(N1||N2) summed over dimensions by numerical integration of p log(p/q)."""
    total = 0.0
    for a, va, b, vb in zip(m1, v1, m2, v2):
        sa = math.sqrt(va)
        f = lambda x: (stats.norm.pdf(x, a, sa) *
                       (stats.norm.logpdf(x, a, sa) - stats.norm.logpdf(x, b, math.sqrt(vb))))
        value, _ = integrate.quad(f, a - 40 * sa, a + 40 * sa, points=[a], epsabs=0,
                                  epsrel=1e-13, limit=500)
        total += value
    return total


def check_gaussian(driver, rng):
    cases = []
    for d in (1, 2, 5, 8, 13):
        for spread in (0.1, 1.0):
            m1, m2 = rng.normal(size=d), rng.normal(size=d)
            v1, v2 = np.exp(spread * rng.normal(size=d)), np.exp(spread * rng.normal(size=d))
            cases.append((m1, v1, m2, v2))
    lines = [line for case in cases for line in case]
    for (m1, v1, m2, v2), got in zip(cases, run(driver, "gaussian", lines)):
        close(f"gaussian forward d={len(m1)}", got[0], gaussian_kl_by_quadrature(m1, v1, m2, v2))
        close(f"gaussian reverse d={len(m1)}", got[1], gaussian_kl_by_quadrature(m2, v2, m1, v1))


def check_policy(driver, rng):
    cases = []
    for n in (2, 9, 100, 10000):
        for shift in (0.01, 0.3, 2.0):
            cur = np.log(rng.uniform(1e-6, 1.0, n))
            ref = np.minimum(0.0, cur + rng.normal(0, shift, n))
            cases.append((cur, ref))
    lines = [line for case in cases for line in case]
    for (cur, ref), got in zip(cases, run(driver, "policy", lines)):
        log_r = ref - cur
        estimators = (-log_r, log_r ** 2 / 2, np.expm1(log_r) - log_r)
        for j, k in enumerate(estimators):
            tag = f"k{j + 1} n={len(cur)}"
            close(f"{tag} mean", got[2 * j], float(np.mean(k)), float(np.mean(np.abs(k))))
            close(f"{tag} standard error", got[2 * j + 1], float(stats.sem(k)))


def check_binning(driver, rng):
    cases = []
    for e in (2, 3, 10, 64, 1000):
        edges = np.sort(rng.normal(size=e) * 2)
        edges = np.unique(edges)
        values = np.concatenate([rng.normal(size=2000) * 3, edges, [np.inf, -np.inf, np.nan]])
        cases.append((edges, values))
    lines = [line for case in cases for line in case]
    for (edges, values), got in zip(cases, run(driver, "binning", lines)):
        want = np.searchsorted(edges, values, side="right")
        want[np.isnan(values)] = len(edges) + 1
        global checks
        checks += 1
        if not np.array_equal(np.array(got, dtype=np.int64), want):
            bad = np.nonzero(np.array(got) != want)[0][:5]
            failures.append(f"binning with {len(edges)} edges differs at {bad.tolist()}")


def main():
    driver = sys.argv[1]
    rng = np.random.default_rng(20261124)
    check_divergences(driver, rng)
    check_chi2(driver)
    check_gaussian(driver, rng)
    check_policy(driver, rng)
    check_binning(driver, rng)
    for failure in failures:
        print("FAIL", failure)
    print(f"scipy cross-check: {checks - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
