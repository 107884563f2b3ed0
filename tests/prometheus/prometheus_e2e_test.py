#!/usr/bin/env python3
"""End to end with the real thing: Debian's Prometheus scrapes a real kldriftd and runs the shipped
rules (deploy/prometheus/kldrift.rules.yml, `for:` durations shortened, nothing else changed).

Checks, through Prometheus' HTTP API:
  - the scrape is up and `promtool check metrics` accepts kldriftd's exposition;
  - every drift gauge of a window equals what GetDrift (`kldrift drift --json`) reports;
  - batches, acks and reconnects are counted;
  - drifted data makes KldriftDriftCritical go pending, then firing (and kldriftd's own
    kldrift_alert_state reach 2); data back in the reference's shape resolves it.
Everything listens on 127.0.0.1; every wait is bounded.

Usage: prometheus_e2e_test.py --kldriftd BIN --kldrift BIN --prometheus BIN --promtool BIN
                              --rules FILE
"""

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

# The alerting window and how long an alert must hold before firing in this test. The window holds
# 12 one-second sub-buckets, so drifted data is gone from it 12-13 s after the last batch.
ALERT_WINDOW = "12s"
LONG_WINDOW = "1h"
FOR_SECONDS = 4
MODEL, SIGNAL = "ranker", "score"
CATEGORIES = ["a", "b", "c"]
REFERENCE_COUNTS = [500, 300, 200]


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)
    print(f"ok: {message}")


def wait_for(what, predicate, timeout, interval=0.25):
    """Polls predicate() until it returns a truthy value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, urllib.error.URLError, ValueError, KeyError) as e:
            last_error = e
        time.sleep(interval)
    raise Failure(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


class Prometheus:
    def __init__(self, binary, workdir, config):
        self.binary, self.workdir, self.config = binary, workdir, config
        self.process = None
        self.port = None

    def start(self):
        # The port is picked free and then handed over; another process could take it in between,
        # so a start that does not become ready is retried on a new port.
        for attempt in range(3):
            self.port = free_port()
            log = open(os.path.join(self.workdir, f"prometheus-{attempt}.log"), "w")
            self.process = subprocess.Popen(
                [self.binary, f"--config.file={self.config}",
                 f"--storage.tsdb.path={os.path.join(self.workdir, f'tsdb-{attempt}')}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--web.enable-lifecycle", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for("Prometheus ready",
                         lambda: self.process.poll() is None and
                         "Ready" in http_get(f"{self.url}/-/ready"), timeout=30)
                return
            except Failure:
                self.stop()
        raise Failure("Prometheus did not start; see prometheus-*.log in " + self.workdir)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def api(self, path, **params):
        query = urllib.parse.urlencode(params)
        body = json.loads(http_get(f"{self.url}/api/v1/{path}?{query}"))
        if body.get("status") != "success":
            raise Failure(f"Prometheus API {path} {params}: {body}")
        return body["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def alerts(self, name):
        return [a for a in self.api("alerts")["alerts"] if a["labels"].get("alertname") == name]

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Kldriftd:
    def __init__(self, binary, cli, workdir):
        self.binary, self.cli, self.workdir = binary, cli, workdir
        self.process = None

    def start(self):
        port_file = os.path.join(self.workdir, "port")
        metrics_port_file = os.path.join(self.workdir, "metrics-port")
        self.log = open(os.path.join(self.workdir, "kldriftd.log"), "w")
        self.process = subprocess.Popen(
            [self.binary, "--listen", "127.0.0.1:0", "--port-file", port_file,
             "--metrics-listen", "127.0.0.1:0", "--metrics-port-file", metrics_port_file,
             "--data-dir", os.path.join(self.workdir, "data"), "--eval-interval", "250ms"],
            stdout=self.log, stderr=subprocess.STDOUT)

        def ports():
            if self.process.poll() is not None:
                raise Failure("kldriftd exited; see " + self.log.name)
            with open(port_file) as f, open(metrics_port_file) as g:
                return int(f.read()), int(g.read())
        self.port, self.metrics_port = wait_for("kldriftd port files", ports, timeout=30)

    def kldrift(self, *args, stdin=None, expect_ok=True):
        result = subprocess.run(
            [self.cli, "--server", f"127.0.0.1:{self.port}", "--timeout", "10s", *args],
            input=stdin, capture_output=True, text=True, timeout=30)
        if expect_ok and result.returncode != 0:
            raise Failure(f"kldrift {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def ingest(self, shares, total):
        """One batch of `total` labels in the given category shares."""
        labels = []
        for category, share in zip(CATEGORIES, shares):
            labels += [category] * int(round(share * total))
        self.kldrift("ingest", "--model", MODEL, "--signal", SIGNAL, "--labels-file", "-",
                     stdin="\n".join(labels) + "\n")

    def drift(self, window):
        out = self.kldrift("drift", "--model", MODEL, "--signal", SIGNAL, "--window", window,
                           "--json").stdout
        return json.loads(out)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def fast_rules(shipped_path, out_path):
    """The shipped rules with every `for:` shortened to FOR_SECONDS; fails if anything else would
    differ."""
    with open(shipped_path) as f:
        shipped = f.read().splitlines(keepends=True)
    fast = [re.sub(r"^(\s*for:\s*)\S+$", rf"\g<1>{FOR_SECONDS}s", line) for line in shipped]
    changed = [a for a, b in zip(shipped, fast) if a != b]
    check(changed and all(re.match(r"^\s*for:\s*\S+$", line) for line in changed),
          f"test rules differ from the shipped rules only in {len(changed)} `for:` lines")
    with open(out_path, "w") as f:
        f.writelines(fast)


def value_of(result):
    """The value of a query result that must hold exactly one series (ValueError otherwise)."""
    if len(result) != 1:
        raise ValueError(f"expected one series, got {result}")
    return float(result[0]["value"][1])


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)


def run(args, workdir):
    rules = os.path.join(workdir, "kldrift.rules.yml")
    fast_rules(args.rules, rules)

    server = Kldriftd(args.kldriftd, args.kldrift, workdir)
    server.start()
    prometheus = None
    try:
        config = os.path.join(workdir, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: kldrift
    static_configs:
      - targets: ['127.0.0.1:{server.metrics_port}']
""")
        subprocess.run([args.promtool, "check", "config", config], check=True,
                       capture_output=True, timeout=60)
        prometheus = Prometheus(args.prometheus, workdir, config)
        prometheus.start()

        # A reference: alerts on KL(current || reference), warn 0.05, critical 0.125, clear 0.04,
        # server-side `for` 0, so kldriftd's own state moves at once.
        server.kldrift("reference", "put", "--model", MODEL, "--signal", SIGNAL,
                       "--categories", ",".join(CATEGORIES),
                       "--counts", ",".join(map(str, REFERENCE_COUNTS)),
                       "--windows", f"{ALERT_WINDOW},{LONG_WINDOW}", "--for", "0s")
        wait_for("the scrape to be up", lambda: value_of(prometheus.query('up{job="kldrift"}')) == 1,
                 timeout=30)
        print("ok: Prometheus scrapes kldriftd")

        # A batch of drifted data, then nothing: the long window's gauges must equal GetDrift.
        drifted = [0.2, 0.1, 0.7]
        server.ingest(drifted, 400)
        selector = f'model="{MODEL}",signal="{SIGNAL}",window="{LONG_WINDOW}"'
        expected = server.drift(LONG_WINDOW)
        check(expected["samples"] == 400, f"GetDrift sees the 400 samples: {expected['samples']}")
        families = {
            "kldrift_drift_kl_current_reference_nats": "kl_current_reference",
            "kldrift_drift_kl_reference_current_nats": "kl_reference_current",
            "kldrift_drift_jeffreys_nats": "jeffreys",
            "kldrift_drift_js_divergence": "js_bits",
            "kldrift_drift_psi": "psi",
            "kldrift_drift_hellinger_distance": "hellinger",
            "kldrift_drift_total_variation_distance": "total_variation",
            "kldrift_drift_linf_distance": "l_inf",
            "kldrift_drift_chi_squared_divergence": "chi2",
            "kldrift_drift_g_test_p_value": "g_test_p_value",
            "kldrift_window_samples": "samples",
            "kldrift_alert_measure_value": "measure_value",
        }
        wait_for("Prometheus to have the drift gauge",
                 lambda: close(value_of(prometheus.query(
                     f"kldrift_drift_kl_current_reference_nats{{{selector}}}")),
                     expected["kl_current_reference"]), timeout=30)
        for family, field in families.items():
            got = value_of(prometheus.query(f"{family}{{{selector}}}"))
            check(close(got, expected[field]),
                  f"{family} in Prometheus = {got!r}, GetDrift {field} = {expected[field]!r}")
        top = prometheus.query(
            f'kldrift_top_bin_kl_contribution_nats{{{selector},rank="1"}}')
        check(len(top) == 1 and top[0]["metric"]["bin"] == expected["top_bins"][0]["label"],
              f"rank-1 bin in Prometheus is GetDrift's top bin {expected['top_bins'][0]['label']}")
        check(close(float(top[0]["value"][1]), expected["top_bins"][0]["contribution"]),
              "rank-1 bin contribution equals GetDrift's")
        thresholds = {"kldrift_alert_warn_threshold": 0.05,
                      "kldrift_alert_critical_threshold": 0.125,
                      "kldrift_alert_clear_threshold": 0.04}
        for family, want in thresholds.items():
            got = value_of(prometheus.query(f"{family}{{{selector}}}"))
            check(close(got, want), f"{family} = {got} (the policy's {want})")
        version = value_of(prometheus.query(
            f'kldrift_reference_version{{model="{MODEL}",signal="{SIGNAL}"}}'))
        check(version == 1, "kldrift_reference_version = 1")

        # kldriftd's exposition passes promtool's lint with every family populated.
        exposition = http_get(f"http://127.0.0.1:{server.metrics_port}/metrics")
        lint = subprocess.run([args.promtool, "check", "metrics"], input=exposition,
                              capture_output=True, text=True, timeout=60)
        check(lint.returncode == 0, f"promtool check metrics is clean: {lint.stdout}{lint.stderr}")

        # Two CLI runs with one client id: the second Ingest stream is a reconnect of a known client.
        for _ in range(2):
            server.kldrift("ingest", "--model", MODEL, "--signal", SIGNAL, "--counts", "1,1,1",
                           "--client-id", "e2e-reconnecting")
        wait_for("the reconnect in Prometheus",
                 lambda: value_of(prometheus.query("kldrift_ingest_reconnects_total")) == 1 and
                 value_of(prometheus.query("kldrift_ingested_batches_total")) == 3, timeout=30)
        print("ok: kldrift_ingest_reconnects_total = 1, kldrift_ingested_batches_total = 3")
        acks = value_of(prometheus.query("kldrift_ingest_acks_total"))
        check(acks >= 3, f"kldrift_ingest_acks_total counts an ack per batch at least: {acks}")

        # Drift: keep the short window full of drifted data until the critical alert fires,
        # observing it pending first.
        states = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            server.ingest(drifted, 400)
            alerts = [a for a in prometheus.alerts("KldriftDriftCritical")
                      if a["labels"].get("window") == ALERT_WINDOW]
            state = alerts[0]["state"] if alerts else "inactive"
            if not states or states[-1] != state:
                states.append(state)
                print(f"   KldriftDriftCritical ({ALERT_WINDOW}): {state}")
            if state == "firing":
                break
            time.sleep(0.5)
        check(states[-1] == "firing", f"KldriftDriftCritical fired (states seen: {states})")
        check("pending" in states and states.index("pending") < states.index("firing"),
              f"it was pending before firing: {states}")
        labels = alerts[0]["labels"]
        check(labels.get("severity") == "critical" and labels.get("job") == "kldrift" and
              labels.get("model") == MODEL and labels.get("measure") == "kl_current_reference",
              f"the alert carries severity, job, model and measure: {labels}")
        server_state = prometheus.query(
            f'kldrift_alert_state{{model="{MODEL}",signal="{SIGNAL}",window="{ALERT_WINDOW}"}}')
        check(len(server_state) == 1 and float(server_state[0]["value"][1]) == 2 and
              server_state[0]["metric"]["severity"] == "critical",
              f"kldriftd's own alert state is firing/critical: {server_state}")

        # Back to the reference's shape: the drifted batches leave the 12 s window, the measure
        # falls under the clear threshold and the alert resolves.
        shares = [c / sum(REFERENCE_COUNTS) for c in REFERENCE_COUNTS]
        deadline = time.monotonic() + 90
        resolved = False
        while time.monotonic() < deadline:
            server.ingest(shares, 400)
            alerts = [a for a in prometheus.alerts("KldriftDriftCritical") +
                      prometheus.alerts("KldriftDriftWarning")
                      if a["labels"].get("window") == ALERT_WINDOW]
            if not alerts:
                resolved = True
                break
            time.sleep(0.5)
        check(resolved, "the drift alerts resolved once the data returned to the reference")
        current = server.drift(ALERT_WINDOW)
        check(current["measure_value"] < 0.04,
              f"GetDrift agrees: {current['measure_value']:.4g} is under the clear threshold")
        wait_for("kldriftd's own alert state to return to ok",
                 lambda: value_of(prometheus.query(
                     f'kldrift_alert_state{{model="{MODEL}",window="{ALERT_WINDOW}"}}')) == 0,
                 timeout=30)
        print("ok: kldrift_alert_state returned to 0")
        observed = value_of(prometheus.query(
            f'kldrift_stream_ingested_observations_total{{model="{MODEL}",signal="{SIGNAL}"}}'))
        check(observed >= 806, f"kldrift_stream_ingested_observations_total counts them: {observed}")
    finally:
        if prometheus:
            prometheus.stop()
        server.stop()


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--kldriftd", "--kldrift", "--prometheus", "--promtool", "--rules"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="kldrift-prometheus-")
    started = time.monotonic()
    try:
        run(args, workdir)
    except (Failure, ValueError, subprocess.SubprocessError) as e:
        print(f"FAIL: {e}\nlogs kept in {workdir}", file=sys.stderr)
        for name in sorted(os.listdir(workdir)):
            if name.endswith(".log"):
                with open(os.path.join(workdir, name)) as f:
                    print(f"--- {name}\n{f.read()[-3000:]}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"prometheus e2e: passed in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
