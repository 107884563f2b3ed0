#!/usr/bin/python3
"""Checks the deployment artefacts under deploy/ with the real tools.

Usage: deploy_config_test.py REPO_ROOT [KLDRIFTD KLDRIFT]

- yamllint (deploy/.yamllint, --strict) on every YAML file under deploy/;
- promtool check config on deploy/prometheus/prometheus.yml (and its rule files), and the scrape
  job, intervals, rule files and Alertmanager it names;
- amtool check-config and `amtool config routes test` on deploy/alertmanager/alertmanager.yml, then
  a real Alertmanager shows the inhibit rule muting a warning under a critical alert of the same
  window (and not of another window);
- kubectl kustomize deploy/k8s (offline): the kinds, the StatefulSet's shard count (SHARDS),
  probes, ports, volume, security context, resources and termination grace, the Services and the
  ServiceMonitor wiring, and a PrometheusRule equal to deploy/k8s/make_prometheusrule.py's output
  and to the rules file;
- the Envoy front (deploy/k8s/proxy.yaml, envoy.yaml in a generated ConfigMap): Envoy v3 config
  parsed, listener port = the proxy container's and Service's port, every route to the shard
  cluster with a hash_policy on the client's shard-key header (client/kldrift_client.h), no
  timeouts or retries that would cut streams or move models, RING_HASH over one STRICT_DNS
  endpoint per StatefulSet ordinal (by host name) on the container's gRPC port, gRPC health checks;
- deploy/nginx: the upstream hashes the same header consistently, never retries elsewhere, and
  every shard line has max_fails=0 (tests/shard runs the configuration in a real nginx);
- deploy/docker-compose.yml: services, bind-mounted paths, volumes, and the host names of the
  Prometheus and Grafana configurations; the Dockerfile's ports and entrypoint;
- deploy/grafana: datasource uid, dashboard uid and schema, variables, panels, and every PromQL
  expression of the dashboard (Grafana variables substituted) accepted by a real Prometheus started
  on a loopback port with the shipped rules loaded;
- with KLDRIFTD and KLDRIFT (as CTest runs it): a real kldriftd fed one drifted stream exports every
  metric the dashboard and the rules use, and exactly KNOWN_METRICS; the Prometheus scrapes it and
  every panel's expression returns data (recording rules and ALERTS aside: they take minutes).

Every kldriftd flag used by a deployment must be defined in server/ (ABSL_FLAG), and every metric
name used by the dashboard or the rules must be in KNOWN_METRICS (the README's metric list). Missing
tools fail the test (deploy/install-deps.sh installs them). Bounded in time: every command and wait
has a timeout, and the servers it starts die with it, even on SIGKILL.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testlib"))
from local_processes import Checks, free_port, parent_death_signal, stop_process  # noqa: E402

import yaml

STARTED = time.monotonic()
COMMAND_TIMEOUT_S = 60
READY_TIMEOUT_S = 30
HTTP_TIMEOUT_S = 5

DATASOURCE_UID = "kldrift-prometheus"
DASHBOARD_UID = "kldrift-drift"
JOB = "kldrift"
GRPC_PORT = 50051
METRICS_PORT = 9464
DATA_DIR = "/var/lib/kldrift/data"
RUN_AS_USER = 10001
SHARDS = 3  # StatefulSet replicas; Envoy's endpoint list must match.
ENVOY_CLUSTER = "kldriftd_shards"

# What kldriftd exports (the README's metric list). Histograms also expose _bucket, _sum, _count.
KNOWN_METRICS = {
    "kldrift_drift_kl_current_reference_nats", "kldrift_drift_kl_reference_current_nats",
    "kldrift_drift_jeffreys_nats", "kldrift_drift_js_divergence", "kldrift_drift_psi",
    "kldrift_drift_hellinger_distance", "kldrift_drift_total_variation_distance",
    "kldrift_drift_linf_distance", "kldrift_drift_chi_squared_divergence",
    "kldrift_drift_g_test_p_value", "kldrift_policy_kl_estimate_nats", "kldrift_window_samples",
    "kldrift_window_enough_samples", "kldrift_alert_measure_value", "kldrift_alert_warn_threshold",
    "kldrift_alert_critical_threshold", "kldrift_alert_clear_threshold", "kldrift_alert_eligible",
    "kldrift_alert_state", "kldrift_top_bin_kl_contribution_nats", "kldrift_reference_version",
    "kldrift_stream_ingested_observations_total", "kldrift_stream_nan_observations_total",
    "kldrift_ingested_batches_total",
    "kldrift_ingested_observations_total", "kldrift_rejected_batches_total",
    "kldrift_duplicate_batches_total", "kldrift_ingest_acks_total",
    "kldrift_ingest_streams_opened_total", "kldrift_ingest_reconnects_total",
    "kldrift_ingest_streams_active", "kldrift_evaluated_windows", "kldrift_streams",
    "kldrift_streams_limit", "kldrift_ingest_clients", "kldrift_storage_bytes",
    "kldrift_store_errors_total", "kldrift_watch_streams_active",
    "kldrift_watch_reports_dropped_total", "kldrift_build_info", "kldrift_start_time_seconds",
    "kldrift_requests_total",
    # The Prometheus client libraries' process collector, read from /proc/self at scrape time.
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
    "process_open_fds", "process_max_fds", "process_start_time_seconds",
}
KNOWN_HISTOGRAMS = {"kldrift_evaluation_duration_seconds", "kldrift_request_duration_seconds"}
for _h in KNOWN_HISTOGRAMS:
    KNOWN_METRICS |= {_h, _h + "_bucket", _h + "_sum", _h + "_count"}

# Panels the dashboard must have, by a metric their expressions use.
REQUIRED_DASHBOARD_METRICS = [
    "kldrift_alert_measure_value", "kldrift_alert_warn_threshold", "kldrift_alert_critical_threshold",
    "kldrift_drift_kl_current_reference_nats", "kldrift_drift_kl_reference_current_nats",
    "kldrift_drift_js_divergence", "kldrift_drift_psi", "kldrift_drift_hellinger_distance",
    "kldrift_drift_total_variation_distance", "kldrift_alert_state", "kldrift_window_samples",
    "kldrift_ingested_observations_total", "kldrift_ingested_batches_total",
    "kldrift_rejected_batches_total", "kldrift_top_bin_kl_contribution_nats",
    "kldrift_evaluation_duration_seconds_bucket", "kldrift_streams", "kldrift_storage_bytes",
    "kldrift_request_duration_seconds_bucket", "kldrift_requests_total",
]
DASHBOARD_VARIABLES = ["model", "model_version", "signal", "window"]
# Grafana's built-in variables, with values Prometheus accepts where Grafana would put them.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000", "__range": "6h",
    "__range_s": "21600", "__range_ms": "21600000",
}
# What the variables become in an expression: a multi-value selection is a regex alternation, "All"
# the variables' allValue. Matches the stream the live check feeds (no model version: label "").
VARIABLE_VALUES = {
    "model": "(fraud-scorer|demo)", "model_version": ".*", "signal": "(score|decision)",
    "window": "(5m|1h)",
}

CHECKS = Checks()
check = CHECKS.check


def run(args, **kwargs):
    """Runs a command with a timeout; returns the CompletedProcess (text, output captured)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, **kwargs)


def tool(name, *candidates):
    """The path of a required tool; fails the test (not skips) if it is missing."""
    for c in candidates or (name,):
        path = shutil.which(c)
        if path:
            return path
    raise RuntimeError(f"{name} not found: run deploy/install-deps.sh (as root)")


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def kldriftd_flags(root):
    """Every flag kldriftd defines (ABSL_FLAG in server/), with dashes."""
    flags = set()
    for path in (root / "server").rglob("*.cc"):
        if path.name.endswith("_test.cc"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for name in re.findall(r"ABSL_FLAG\(\s*[^,]+,\s*([a-z0-9_]+)\s*,", text):
            flags.add("--" + name.replace("_", "-"))
    return flags


def flag_value(args, flag):
    """The value of `flag` in an argv list (--flag VALUE or --flag=VALUE), or None."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def check_flags(name, args, known):
    used = [a.split("=", 1)[0] for a in args if a.startswith("--")]
    unknown = [f for f in used if f not in known]
    check(f"{name}: every kldriftd flag exists ({', '.join(used)})", not unknown and used,
          f"unknown flags {unknown}; kldriftd defines {sorted(known)}")


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def parse_duration_s(text):
    """Seconds of an absl/Go duration such as 10s, 1m30s, 500ms."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"([0-9.]+)(h|ms|us|ns|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def metric_names(expr):
    """kldrift metric names (and recording-rule names) an expression refers to."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # Label values are not metric names.
    return set(re.findall(r"(?<![A-Za-z0-9_:])([a-zA-Z_:]*kldrift_[a-zA-Z0-9_:]*)", expr))


# --------------------------------------------------------------------------------------------------
# Servers started by the test: loopback, port picked by the kernel, killed with the test.

# In the child: `sig` when the test process dies, even by SIGKILL (ctest timeout).
die_with_parent = parent_death_signal(signal.SIGTERM)


def http_json(url, data=None):
    """(HTTP status, parsed JSON body) of a GET, or of a POST of `data` (JSON)."""
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw.strip() else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


class Server:
    """A real Prometheus or Alertmanager on 127.0.0.1, up until stop()."""

    def __init__(self, name, make_args, work):
        self.name = name
        self.log_path = os.path.join(work, f"{name}.log")
        self.process = None
        for attempt in range(5):
            self.port = free_port()
            log = open(self.log_path, "w")
            self.process = subprocess.Popen(make_args(f"127.0.0.1:{self.port}"), stdout=log,
                                            stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
            log.close()
            if self._wait_ready():
                print(f"     {name} ready on 127.0.0.1:{self.port}", flush=True)
                return
            self.stop()
            print(f"     {name} not ready (attempt {attempt + 1}):\n{self.log_tail()}", flush=True)
        raise RuntimeError(f"{name} did not become ready:\n{self.log_tail()}")

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # Exited: the port was taken meanwhile, or a bad configuration.
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=HTTP_TIMEOUT_S) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        return False

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def log_tail(self):
        try:
            return "".join(open(self.log_path, errors="replace").readlines()[-20:])
        except OSError:
            return ""

    def stop(self):
        stop_process(self.process)


class Kldriftd:
    """A real kldriftd on loopback ports picked by the kernel, fed one drifted stream."""

    def __init__(self, kldriftd, kldrift, work):
        folder = os.path.join(work, "kldriftd")
        os.makedirs(folder)
        self.log_path = os.path.join(folder, "kldriftd.log")
        port_file = os.path.join(folder, "port")
        metrics_port_file = os.path.join(folder, "metrics-port")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [kldriftd, "--listen", "127.0.0.1:0", "--port-file", port_file,
                 "--metrics-listen", "127.0.0.1:0", "--metrics-port-file", metrics_port_file,
                 "--eval-interval", "200ms", "--shutdown-grace", "1s",
                 "--data-dir", os.path.join(folder, "data")],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        try:
            self.port = self._read_port(port_file)
            self.metrics_port = self._read_port(metrics_port_file)
            print(f"     kldriftd on 127.0.0.1:{self.port}, /metrics on 127.0.0.1:{self.metrics_port}",
                  flush=True)
            self._feed(kldrift)
        except BaseException:  # The caller gets no object to stop.
            self.stop()
            raise

    def _feed(self, kldrift):
        cli = [kldrift, "--server", f"127.0.0.1:{self.port}", "--timeout", "10s"]
        stream = ["--model", "fraud-scorer", "--signal", "score"]
        for args in (["reference", "put", *stream, "--edges", "0,0.2,0.4,0.6,0.8,1",
                      "--counts", "120,340,310,160,70"],
                     ["ingest", *stream, "--counts", "0,60,210,330,250,150,0,0"]):
            result = run(cli + args)
            if result.returncode != 0:
                raise RuntimeError(f"kldrift {' '.join(args)}: exit {result.returncode}\n"
                                   f"{result.stdout}{result.stderr}")

    def _read_port(self, path):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                return int(open(path).read())
            except (OSError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"kldriftd wrote no {path}:\n{open(self.log_path).read()[-2000:]}")

    def exposition(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=HTTP_TIMEOUT_S) as response:
            return response.read().decode()

    def stop(self):
        stop_process(self.process)


def check_exposition(live, expressions, rules):
    """kldriftd exports every metric the dashboard and the rules use, and KNOWN_METRICS is its list."""
    text = ""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:  # Per-window series appear on the first evaluation.
        text = live.exposition()
        if re.search(r"^kldrift_top_bin_kl_contribution_nats\{", text, re.M):
            break
        time.sleep(0.1)
    exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        exported.add(name)
        if kind == "histogram":
            exported |= {name + "_bucket", name + "_sum", name + "_count"}
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    used = set()
    for _, expr in expressions:
        used |= metric_names(expr)
    for g in rules["groups"]:
        for r in g["rules"]:
            used |= metric_names(r["expr"])
    missing = sorted(used - recorded - exported)
    check(f"live: kldriftd exports all {len(used - recorded)} metrics the dashboard and rules use",
          not missing, f"not exported: {missing}")
    # Policy streams only (paired log-probabilities); this stream is a histogram.
    unexported = sorted(KNOWN_METRICS - exported - {"kldrift_policy_kl_estimate_nats"})
    unlisted = sorted(n for n in exported
                      if n.startswith(("kldrift_", "process_")) and n not in KNOWN_METRICS)
    check("live: KNOWN_METRICS is exactly what kldriftd exports", not unexported and not unlisted,
          f"listed, not exported: {unexported}; exported, not listed: {unlisted}")


# --------------------------------------------------------------------------------------------------
# Sections.

def check_yamllint(root, deploy):
    files = sorted(str(p) for p in deploy.rglob("*") if p.suffix in (".yml", ".yaml"))
    files.append(str(deploy / ".yamllint"))
    result = run([tool("yamllint"), "--strict", "-f", "parsable", "-c", str(deploy / ".yamllint"),
                  *files])
    names = ", ".join(os.path.relpath(f, root) for f in files)
    check(f"yamllint --strict on {len(files)} files ({names})", result.returncode == 0,
          result.stdout + result.stderr)
    for f in files:
        try:
            with open(f, encoding="utf-8") as stream:
                documents = list(yaml.safe_load_all(stream))
            check(f"{os.path.relpath(f, root)} parses", documents and all(documents), documents)
        except yaml.YAMLError as e:
            check(f"{os.path.relpath(f, root)} parses", False, e)


def check_prometheus_config(deploy, rules):
    config_path = deploy / "prometheus" / "prometheus.yml"
    result = run([tool("promtool"), "check", "config", str(config_path)])
    check("promtool check config deploy/prometheus/prometheus.yml (with its rule files)",
          result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr)
    config = load_yaml(config_path)
    check("prometheus.yml: scrape and evaluation intervals 15s",
          config["global"].get("scrape_interval") == "15s"
          and config["global"].get("evaluation_interval") == "15s", config["global"])
    rule_files = config.get("rule_files", [])
    check("prometheus.yml: rule_files is kldrift.rules.yml beside it",
          [(config_path.parent / f).resolve() for f in rule_files]
          == [(deploy / "prometheus" / "kldrift.rules.yml").resolve()], rule_files)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = [t for sc in jobs.get(JOB, {}).get("static_configs", []) for t in sc["targets"]]
    check(f"prometheus.yml: job {JOB} scrapes kldriftd:{METRICS_PORT}",
          targets == [f"kldriftd:{METRICS_PORT}"], jobs.get(JOB))
    alertmanagers = [t for am in config["alerting"]["alertmanagers"]
                     for sc in am["static_configs"] for t in sc["targets"]]
    check("prometheus.yml: alerts go to alertmanager:9093", alertmanagers == ["alertmanager:9093"],
          alertmanagers)
    down = [r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == "KldriftDown"]
    check(f"rules: KldriftDown watches up{{job=\"{JOB}\"}}, the job prometheus.yml scrapes",
          len(down) == 1 and f'job="{JOB}"' in down[0], down)
    return config


def check_alertmanager(deploy, work):
    path = deploy / "alertmanager" / "alertmanager.yml"
    amtool = tool("amtool")
    result = run([amtool, "check-config", str(path)])
    check("amtool check-config deploy/alertmanager/alertmanager.yml",
          result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr)
    routes = [
        ("pager", ["alertname=KldriftDriftCritical", "severity=critical", "model=fraud-scorer",
                   "model_version=3", "signal=score", "window=1h"]),
        ("tickets", ["alertname=KldriftDriftWarning", "severity=warning", "model=fraud-scorer",
                     "model_version=3", "signal=score", "window=1h"]),
        ("pager", ["alertname=KldriftDown", "severity=critical", "job=kldrift"]),
        ("tickets", ["alertname=KldriftNoData", "severity=warning"]),
    ]
    for receiver, labels in routes:
        result = run([amtool, "config", "routes", "test", f"--config.file={path}",
                      f"--verify.receivers={receiver}", *labels])
        check(f"amtool config routes test {' '.join(labels)} -> {receiver}",
              result.returncode == 0 and result.stdout.strip() == receiver,
              f"exit {result.returncode}: {result.stdout}{result.stderr}")
    config = load_yaml(path)
    check("alertmanager.yml: grouped by alertname, model, signal",
          config["route"].get("group_by") == ["alertname", "model", "signal"], config["route"])
    urls = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])]
    check("alertmanager.yml: webhook URLs are placeholders on .invalid",
          urls and all(urllib.parse.urlparse(u).hostname.endswith(".invalid") for u in urls), urls)

    # The inhibit rule, in a real Alertmanager: a critical alert mutes the warning of its window.
    binary = tool("prometheus-alertmanager", "prometheus-alertmanager", "alertmanager")
    data = os.path.join(work, "alertmanager-data")

    def args(address):
        return [binary, f"--config.file={path}", f"--storage.path={data}",
                f"--web.listen-address={address}", "--cluster.listen-address="]

    server = Server("alertmanager", args, work)
    try:
        stream = {"model": "fraud-scorer", "model_version": "3", "signal": "score"}
        alerts = [
            {"labels": dict(stream, alertname="KldriftDriftCritical", severity="critical",
                            window="1h", measure="kl_current_reference")},
            {"labels": dict(stream, alertname="KldriftDriftWarning", severity="warning",
                            window="1h", measure="kl_current_reference")},
            {"labels": dict(stream, alertname="KldriftDriftWarning", severity="warning",
                            window="5m", measure="kl_current_reference")},
        ]
        status, body = http_json(server.url("/api/v2/alerts"), alerts)
        check("alertmanager accepts three drift alerts", status == 200, f"{status} {body}")
        state = {}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            status, body = http_json(server.url("/api/v2/alerts"))
            if status == 200:
                state = {(a["labels"]["alertname"], a["labels"]["window"]):
                         (a["status"]["state"], a["status"]["inhibitedBy"]) for a in body}
                if state.get(("KldriftDriftWarning", "1h"), ("", []))[0] == "suppressed":
                    break
            time.sleep(0.1)
        check("inhibit rule: the 1h warning is suppressed by the 1h critical alert",
              state.get(("KldriftDriftWarning", "1h"), ("", []))[0] == "suppressed"
              and state[("KldriftDriftWarning", "1h")][1], state)
        check("inhibit rule: the 5m warning (another window) and the critical alert stay active",
              state.get(("KldriftDriftWarning", "5m"), ("",))[0] == "active"
              and state.get(("KldriftDriftCritical", "1h"), ("",))[0] == "active", state)
    finally:
        server.stop()


def selected(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_k8s(root, deploy, rules, flags):
    kubectl = tool("kubectl")
    result = run([kubectl, "kustomize", str(deploy / "k8s")])
    check("kubectl kustomize deploy/k8s (offline)", result.returncode == 0, result.stderr)
    if result.returncode != 0:
        return None
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    check("k8s: kinds are ConfigMap, Deployment, PrometheusRule, Service x3, ServiceMonitor, "
          "StatefulSet", kinds == ["ConfigMap", "Deployment", "PrometheusRule", "Service", "Service",
                                   "Service", "ServiceMonitor", "StatefulSet"], kinds)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    sts = by_kind["StatefulSet"][0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    check(f"StatefulSet: apps/v1, {SHARDS} replicas (shards)",
          sts["apiVersion"] == "apps/v1" and spec["replicas"] == SHARDS,
          (sts["apiVersion"], spec.get("replicas")))
    check("StatefulSet: podManagementPolicy Parallel (independent shards)",
          spec.get("podManagementPolicy") == "Parallel", spec.get("podManagementPolicy"))
    check("StatefulSet: selector matches the pod labels",
          selected(spec["selector"]["matchLabels"], pod_labels), (spec["selector"], pod_labels))
    containers = pod["containers"]
    check("StatefulSet: one container", len(containers) == 1, [c["name"] for c in containers])
    c = containers[0]
    argv = list(c.get("command", [])) + list(c.get("args", []))
    check("StatefulSet: runs kldriftd", argv[:1] == ["kldriftd"], argv)
    check_flags("StatefulSet", argv[1:], flags)
    check("StatefulSet: image set by the kustomization", c["image"].startswith("kldrift:")
          and c["image"] != "kldrift:latest", c["image"])

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(f"StatefulSet: ports grpc {GRPC_PORT} and metrics {METRICS_PORT}",
          ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}, ports)
    listen, metrics_listen = flag_value(argv, "--listen"), flag_value(argv, "--metrics-listen")
    check("StatefulSet: --listen and --metrics-listen on every address, at the container ports",
          listen == f"0.0.0.0:{GRPC_PORT}" and metrics_listen == f"0.0.0.0:{METRICS_PORT}",
          (listen, metrics_listen))
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        p = c.get(probe, {})
        check(f"StatefulSet: {probe} is a native gRPC probe on {GRPC_PORT} (grpc.health.v1)",
              p.get("grpc", {}).get("port") == GRPC_PORT and not p["grpc"].get("service")
              and "httpGet" not in p and "exec" not in p, p)
    resources = c.get("resources", {})
    check("StatefulSet: cpu and memory requests and limits",
          all(k in resources.get(kind, {}) for kind in ("requests", "limits") for k in ("cpu", "memory")),
          resources)

    security = pod.get("securityContext", {})
    check(f"StatefulSet: non-root, runAsUser {RUN_AS_USER} (the image's kldrift user)",
          security.get("runAsNonRoot") is True and security.get("runAsUser") == RUN_AS_USER, security)
    check("StatefulSet: container cannot escalate privileges",
          c.get("securityContext", {}).get("allowPrivilegeEscalation") is False,
          c.get("securityContext"))

    templates = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    data_dir = flag_value(argv, "--data-dir") or ""
    data_mounts = [mounts[n] for n in templates if n in mounts]
    check("StatefulSet: --data-dir lies on a volumeClaimTemplates volume",
          len(data_mounts) == 1 and pathlib.PurePosixPath(data_dir).is_relative_to(data_mounts[0]),
          (data_dir, mounts, list(templates)))
    for name, t in templates.items():
        check(f"StatefulSet: volume claim {name} is ReadWriteOnce with a size",
              t["spec"]["accessModes"] == ["ReadWriteOnce"]
              and "storage" in t["spec"]["resources"]["requests"], t["spec"])

    grace_flag = flag_value(argv, "--shutdown-grace")
    grace = parse_duration_s(grace_flag) if grace_flag else None
    termination = pod.get("terminationGracePeriodSeconds")
    check("StatefulSet: terminationGracePeriodSeconds >= --shutdown-grace + 10s (drain, final "
          f"evaluation): {termination} vs {grace_flag}",
          grace is not None and termination is not None and termination >= grace + 10,
          (termination, grace_flag))

    proxy = (by_kind.get("Deployment") or [None])[0]
    proxy_labels = proxy["spec"]["template"]["metadata"]["labels"] if proxy else {}
    proxy_ports = ({p["name"]: p["containerPort"] for c in proxy["spec"]["template"]["spec"]["containers"]
                    for p in c.get("ports", [])} if proxy else {})
    services = by_kind["Service"]
    server_services = [s for s in services if selected(s["spec"]["selector"], pod_labels)]
    proxy_services = [s for s in services if proxy and selected(s["spec"]["selector"], proxy_labels)]
    for s in services:
        name = s["metadata"]["name"]
        check(f"Service {name}: selects either the StatefulSet's pods or the proxy's, not both",
              (s in server_services) != (s in proxy_services), s["spec"]["selector"])
        targets = ports if s in server_services else proxy_ports
        for p in s["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            check(f"Service {name}: port {p['name']} targets a container port",
                  targets.get(target) == p["port"] or target in targets.values(), p)
    headless = [s for s in server_services if s["spec"].get("clusterIP") == "None"]
    cluster_ip = [s for s in server_services if s["spec"].get("clusterIP") != "None"]
    check("Services of the StatefulSet: one headless, one ClusterIP",
          len(headless) == 1 and len(cluster_ip) == 1, [s["metadata"]["name"] for s in server_services])
    check("Services of the proxy: one ClusterIP", len(proxy_services) == 1
          and proxy_services[0]["spec"].get("type", "ClusterIP") == "ClusterIP",
          [s["metadata"]["name"] for s in proxy_services])
    if len(headless) != 1 or len(cluster_ip) != 1:
        return by_kind
    check("StatefulSet: serviceName is the headless Service",
          spec["serviceName"] == headless[0]["metadata"]["name"], spec["serviceName"])
    headless_ports = {p["name"]: p["port"] for p in headless[0]["spec"]["ports"]}
    check(f"headless Service: grpc {GRPC_PORT} (Envoy and per-shard queries reach each replica by name)",
          headless_ports.get("grpc") == GRPC_PORT, headless_ports)
    check("headless Service: publishNotReadyAddresses (a replica that is starting keeps its name, "
          "so its models never move)", headless[0]["spec"].get("publishNotReadyAddresses") is True,
          headless[0]["spec"])
    api = cluster_ip[0]
    check("Service: type ClusterIP", api["spec"].get("type", "ClusterIP") == "ClusterIP", api["spec"])
    api_ports = {p["name"]: p["port"] for p in api["spec"]["ports"]}
    check(f"Service {api['metadata']['name']}: metrics {METRICS_PORT} only (a gRPC port on a virtual "
          "IP over the shards would send a model's calls to random replicas)",
          api_ports == {"metrics": METRICS_PORT}, api_ports)
    if proxy and len(proxy_services) == 1:
        check_envoy(root, deploy, by_kind, sts, headless[0], proxy_services[0])

    monitor = by_kind["ServiceMonitor"][0]
    check("ServiceMonitor: monitoring.coreos.com/v1", monitor["apiVersion"] == "monitoring.coreos.com/v1",
          monitor["apiVersion"])
    endpoints = monitor["spec"]["endpoints"]
    scraped = [s for s in services if selected(monitor["spec"]["selector"]["matchLabels"],
                                               s["metadata"].get("labels", {}))
               and any(p["name"] == e["port"] for p in s["spec"]["ports"] for e in endpoints)]
    check("ServiceMonitor: scrapes the metrics port of exactly one Service (no double scrape)",
          len(endpoints) == 1 and endpoints[0]["port"] == "metrics" and len(scraped) == 1,
          (endpoints, [s["metadata"]["name"] for s in scraped]))
    job_label = monitor["spec"].get("jobLabel")
    job = scraped[0]["metadata"]["labels"].get(job_label) if job_label and scraped else (
        scraped[0]["metadata"]["name"] if scraped else None)
    check(f"ServiceMonitor: job label is {JOB} (the rules' up{{job=\"{JOB}\"}})", job == JOB,
          (job_label, job))

    rule = by_kind["PrometheusRule"][0]
    check("PrometheusRule: monitoring.coreos.com/v1", rule["apiVersion"] == "monitoring.coreos.com/v1",
          rule["apiVersion"])
    check("PrometheusRule: spec.groups equal deploy/prometheus/kldrift.rules.yml's groups",
          rule["spec"]["groups"] == rules["groups"], "run deploy/k8s/make_prometheusrule.py")
    generated = run([sys.executable, str(deploy / "k8s" / "make_prometheusrule.py"), "--stdout"])
    committed = (deploy / "k8s" / "prometheusrule.yaml").read_text(encoding="utf-8")
    check("deploy/k8s/prometheusrule.yaml equals make_prometheusrule.py's output",
          generated.returncode == 0 and generated.stdout == committed,
          generated.stderr or "stale: run python3 deploy/k8s/make_prometheusrule.py")
    return by_kind


def shard_key_header(root):
    """The metadata key the client library puts the model in (client/kldrift_client.h)."""
    text = (root / "client" / "kldrift_client.h").read_text(encoding="utf-8")
    m = re.search(r'kModelMetadataKey\[\]\s*=\s*"([^"]+)"', text)
    check("client/kldrift_client.h defines kModelMetadataKey (the shard key)", m is not None)
    return m.group(1) if m else "x-kldrift-model"


def check_envoy(root, deploy, by_kind, sts, headless, service):
    """The Envoy front: its Deployment, the generated ConfigMap and the Envoy v3 configuration."""
    header = shard_key_header(root)
    proxy = by_kind["Deployment"][0]
    dspec = proxy["spec"]
    pod = dspec["template"]["spec"]
    check("proxy Deployment: selector matches the pod labels",
          selected(dspec["selector"]["matchLabels"], dspec["template"]["metadata"]["labels"]),
          dspec["selector"])
    check("proxy Deployment: at least 2 Envoy replicas", dspec.get("replicas", 1) >= 2,
          dspec.get("replicas"))
    containers = pod["containers"]
    check("proxy Deployment: one container", len(containers) == 1, [c["name"] for c in containers])
    c = containers[0]
    argv = list(c.get("command", [])) + list(c.get("args", []))
    image = c["image"]
    check("proxy: runs envoy with --disable-hot-restart (no shared memory on a read-only root)",
          argv[:1] == ["envoy"] and "--disable-hot-restart" in argv, argv)
    check("proxy: image envoyproxy/envoy pinned to a version by the kustomization",
          re.fullmatch(r"envoyproxy/envoy:v\d+\.\d+\.\d+", image) is not None, image)
    security = pod.get("securityContext", {})
    csecurity = c.get("securityContext", {})
    check("proxy: non-root, no privilege escalation, read-only root filesystem",
          security.get("runAsNonRoot") is True and csecurity.get("allowPrivilegeEscalation") is False
          and csecurity.get("readOnlyRootFilesystem") is True, (security, csecurity))
    for probe in ("readinessProbe", "livenessProbe"):
        p = c.get(probe, {})
        check(f"proxy: {probe} checks Envoy itself (not a gRPC health call routed to some shard)",
              p and "grpc" not in p, p)

    config_path = flag_value(argv, "--config-path") or flag_value(argv, "-c") or ""
    mount = next((m for m in c.get("volumeMounts", [])
                  if pathlib.PurePosixPath(config_path).parent == pathlib.PurePosixPath(m["mountPath"])),
                 None)
    volume = next((v for v in pod.get("volumes", []) if mount and v["name"] == mount["name"]), {})
    config_maps = {m["metadata"]["name"]: m for m in by_kind.get("ConfigMap", [])}
    config_map = config_maps.get(volume.get("configMap", {}).get("name"))
    key = pathlib.PurePosixPath(config_path).name
    check(f"proxy: --config-path {config_path} is a key of the generated ConfigMap it mounts",
          config_map is not None and key in config_map.get("data", {}),
          (config_path, mount, volume, sorted(config_maps)))
    if config_map is None or key not in config_map.get("data", {}):
        return
    envoy = yaml.safe_load(config_map["data"][key])
    check("proxy: the ConfigMap's Envoy configuration is deploy/k8s/envoy.yaml",
          envoy == load_yaml(deploy / "k8s" / "envoy.yaml"), "configMapGenerator out of step")

    admin = envoy.get("admin", {}).get("address", {}).get("socket_address", {})
    check("envoy: admin API on loopback only", admin.get("address") == "127.0.0.1", admin)
    resources = envoy["static_resources"]
    listeners = resources["listeners"]
    check("envoy: one listener", len(listeners) == 1, [x.get("name") for x in listeners])
    listener = listeners[0]
    socket_address = listener["address"]["socket_address"]
    container_ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    grpc = service_ports.get("grpc", {})
    target = grpc.get("targetPort", grpc.get("port"))
    target = container_ports.get(target, target)
    check(f"envoy: listener on 0.0.0.0:{socket_address.get('port_value')} = the proxy container's grpc "
          f"port = Service {service['metadata']['name']}'s target (port {GRPC_PORT})",
          socket_address.get("address") == "0.0.0.0"
          and socket_address.get("port_value") == container_ports.get("grpc") == target
          and grpc.get("port") == GRPC_PORT, (socket_address, container_ports, grpc))
    filters = [f for chain in listener["filter_chains"] for f in chain["filters"]]
    hcm = next((f["typed_config"] for f in filters
                if f["name"] == "envoy.filters.network.http_connection_manager"), None)
    check("envoy: the listener runs the HTTP connection manager (v3)", hcm is not None
          and hcm.get("@type", "").endswith("http_connection_manager.v3.HttpConnectionManager"), filters)
    if hcm is None:
        return
    check("envoy: downstream HTTP/2 (gRPC clients, plaintext prior knowledge)",
          hcm.get("codec_type") in ("HTTP2", "AUTO"), hcm.get("codec_type"))
    idle = hcm.get("stream_idle_timeout")
    check("envoy: stream_idle_timeout off or at least an hour (silent Ingest/WatchDrift streams)",
          idle is not None and (parse_duration_s(idle) == 0 or parse_duration_s(idle) >= 3600), idle)
    filters = hcm.get("http_filters", [])
    check("envoy: the router is the last HTTP filter",
          filters and filters[-1]["name"] == "envoy.filters.http.router", filters)
    routes = [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]
    check("envoy: routes exist", routes, hcm["route_config"])
    for r in routes:
        action = r.get("route", {})
        where = f"envoy route {r.get('match')}"
        check(f"{where}: to cluster {ENVOY_CLUSTER}", action.get("cluster") == ENVOY_CLUSTER, action)
        check(f"{where}: hash_policy on header {header} (client/kldrift_client.h's shard key)",
              action.get("hash_policy") == [{"header": {"header_name": header}}],
              action.get("hash_policy"))
        check(f"{where}: no route timeout (streams), no retries (they would go to another shard)",
              action.get("timeout") is not None and parse_duration_s(action["timeout"]) == 0
              and "retry_policy" not in action and "retry_policy" not in r, action)

    clusters = {x["name"]: x for x in resources["clusters"]}
    cluster = clusters.get(ENVOY_CLUSTER)
    check(f"envoy: cluster {ENVOY_CLUSTER} defined", cluster is not None, sorted(clusters))
    if cluster is None:
        return
    lb = cluster.get("common_lb_config", {})
    check("envoy cluster: lb_policy RING_HASH, replicas placed on the ring by host name "
          "(stable across pod restarts)",
          cluster.get("lb_policy") == "RING_HASH"
          and lb.get("consistent_hashing_lb_config", {}).get("use_hostname_for_hashing") is True, cluster)
    check("envoy cluster: healthy_panic_threshold 100 (an unhealthy shard stays on the ring: its "
          "models fail, none move)", lb.get("healthy_panic_threshold", {}).get("value") == 100, lb)
    options = cluster.get("typed_extension_protocol_options", {}).get(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
    check("envoy cluster: upstream HTTP/2 (explicit_http_config.http2_protocol_options)",
          "http2_protocol_options" in options.get("explicit_http_config", {}), options)
    checks_ = cluster.get("health_checks", [])
    check("envoy cluster: gRPC health checks (grpc.health.v1, the overall status)",
          checks_ and all("grpc_health_check" in h and not (h["grpc_health_check"] or {}).get("service_name")
                          for h in checks_), checks_)
    check("envoy cluster: no outlier detection (an ejected shard's models would move)",
          "outlier_detection" not in cluster, cluster.get("outlier_detection"))

    sts_name = sts["metadata"]["name"]
    replicas = sts["spec"]["replicas"]
    grpc_port = {p["name"]: p["containerPort"]
                 for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]}.get("grpc")
    headless_name = headless["metadata"]["name"]
    expected = [f"{sts_name}-{i}.{headless_name}" for i in range(replicas)]
    endpoints = [e["endpoint"] for group in cluster["load_assignment"]["endpoints"]
                 for e in group["lb_endpoints"]]
    names = [e.get("hostname") for e in endpoints]
    addresses = [e["address"]["socket_address"] for e in endpoints]
    check(f"envoy cluster: STRICT_DNS, one endpoint per StatefulSet ordinal ({', '.join(expected)})",
          cluster.get("type") == "STRICT_DNS" and names == expected
          and all(a["address"] == n or a["address"].startswith(n + ".") for a, n in zip(addresses, names)),
          (cluster.get("type"), names, addresses))
    check(f"envoy cluster: every endpoint on the StatefulSet's grpc container port {grpc_port}",
          grpc_port and all(a.get("port_value") == grpc_port for a in addresses), addresses)


def check_nginx(root, deploy):
    """deploy/nginx: the shard key, no retry elsewhere, no replica marked down (tests/shard runs it)."""
    header = shard_key_header(root)
    conf = (deploy / "nginx" / "kldrift.conf").read_text(encoding="utf-8")
    code = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    variable = "$http_" + header.lower().replace("-", "_")
    upstreams = re.findall(r"upstream\s+(\w+)\s*\{([^}]*)\}", code)
    check("nginx: one upstream", len(upstreams) == 1, [u[0] for u in upstreams])
    if len(upstreams) != 1:
        return
    name, body = upstreams[0]
    check(f"nginx: upstream {name} hashes {variable} consistently",
          re.search(rf"^\s*hash\s+{re.escape(variable)}\s+consistent\s*;", body, re.M) is not None, body)
    check(f"nginx: grpc_pass grpc://{name}",
          re.search(rf"^\s*grpc_pass\s+grpc://{name}\s*;", code, re.M) is not None, code)
    check("nginx: grpc_next_upstream off (never retried on another shard)",
          re.search(r"^\s*grpc_next_upstream\s+off\s*;", code, re.M) is not None, code)
    check("nginx: HTTP/2 listener", re.search(r"^\s*listen\s+\S+\s+(\S+\s+)*http2\s*;", code, re.M)
          is not None, code)
    includes = re.findall(r"^\s*include\s+(\S+)\s*;", body, re.M)
    shards_file = deploy / "nginx" / (includes[0] if includes else "")
    check(f"nginx: the upstream includes {shards_file.name}, which is shipped beside it",
          len(includes) == 1 and shards_file.is_file(), includes)
    if shards_file.is_file():
        servers = re.findall(r"^[ \t]*server[ \t]+([^;\n]*);", shards_file.read_text(encoding="utf-8"),
                             re.M)
        check(f"nginx: {len(servers)} shard lines, each with max_fails=0 and no weight/backup/down",
              servers and all("max_fails=0" in s.split() and not re.search(r"\b(weight|backup|down)\b", s)
                              for s in servers), servers)


def check_compose_and_dockerfile(root, deploy, prometheus_config, flags, k8s):
    compose_path = deploy / "docker-compose.yml"
    compose = load_yaml(compose_path)
    services = compose.get("services", {})
    check("compose: services kldriftd, prometheus, alertmanager, grafana",
          sorted(services) == ["alertmanager", "grafana", "kldriftd", "prometheus"], sorted(services))
    named_volumes = set((compose.get("volumes") or {}).keys())
    mounts = {}  # service -> {container path: host path or volume name}
    for name, service in services.items():
        for dep in service.get("depends_on", []):
            check(f"compose: {name} depends on an existing service {dep}", dep in services, dep)
        mounts[name] = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[name][target] = source
            if source.startswith((".", "/")):
                host = (compose_path.parent / source).resolve()
                check(f"compose: {name} bind-mounts {source}, which exists in the repo",
                      host.exists() and host.is_relative_to(root.resolve()), host)
            else:
                check(f"compose: {name} volume {source} is declared", source in named_volumes,
                      named_volumes)
    kldriftd = services.get("kldriftd", {})
    build = kldriftd.get("build", {})
    context = (compose_path.parent / build.get("context", "")).resolve()
    check("compose: kldriftd is built from the repo's Dockerfile",
          context == root.resolve() and (context / build.get("dockerfile", "")).is_file(), build)
    argv = list(kldriftd.get("entrypoint", [])) + list(kldriftd.get("command", []))
    check("compose: kldriftd runs kldriftd", argv[:1] == ["kldriftd"], argv)
    check_flags("compose kldriftd", argv[1:], flags)
    check("compose: kldriftd listens on every address, metrics on 9464, data in the volume",
          flag_value(argv, "--listen") == f"0.0.0.0:{GRPC_PORT}"
          and flag_value(argv, "--metrics-listen") == f"0.0.0.0:{METRICS_PORT}"
          and flag_value(argv, "--data-dir") == DATA_DIR
          and mounts["kldriftd"].get(DATA_DIR) in named_volumes, (argv, mounts["kldriftd"]))
    if k8s and "StatefulSet" in k8s:
        image = k8s["StatefulSet"][0]["spec"]["template"]["spec"]["containers"][0]["image"]
        check("compose and k8s use the same kldrift image", kldriftd.get("image") == image,
              (kldriftd.get("image"), image))

    # Host names in the configurations are Compose services, on the ports they listen on.
    prometheus_mounts = mounts.get("prometheus", {})
    config_in_container = next((t for t, s in prometheus_mounts.items()
                                if s.endswith("prometheus/prometheus.yml")), None)
    check("compose: prometheus mounts deploy/prometheus/prometheus.yml as its --config.file",
          config_in_container and f"--config.file={config_in_container}"
          in services["prometheus"].get("command", []), (prometheus_mounts, services["prometheus"]))
    for rule_file in prometheus_config.get("rule_files", []):
        in_container = str(pathlib.PurePosixPath(config_in_container or "/").parent / rule_file)
        check(f"compose: rule file {rule_file} is mounted beside the config ({in_container})",
              prometheus_mounts.get(in_container, "").endswith("prometheus/kldrift.rules.yml"),
              prometheus_mounts)
    targets = [t for j in prometheus_config["scrape_configs"] for sc in j.get("static_configs", [])
               for t in sc["targets"] if not t.startswith("localhost")]
    targets += [t for am in prometheus_config["alerting"]["alertmanagers"]
                for sc in am["static_configs"] for t in sc["targets"]]
    for t in targets:
        host, port = t.rsplit(":", 1)
        check(f"prometheus.yml target {t} is a Compose service", host in services, sorted(services))
    check(f"compose: kldriftd serves metrics where Prometheus scrapes (kldriftd:{METRICS_PORT})",
          f"kldriftd:{port_of(flag_value(argv, '--metrics-listen') or ':0')}" in targets, targets)
    datasource = load_yaml(deploy / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    url = urllib.parse.urlparse(datasource["datasources"][0]["url"])
    check(f"grafana datasource {url.geturl()} is the Compose prometheus service on 9090",
          url.hostname in services and url.hostname == "prometheus" and url.port == 9090, url.geturl())
    provider = load_yaml(deploy / "grafana" / "provisioning" / "dashboards" / "kldrift.yml")
    dashboards_path = provider["providers"][0]["options"]["path"]
    grafana_mounts = mounts.get("grafana", {})
    source = grafana_mounts.get(dashboards_path, "")
    check(f"compose: grafana mounts the dashboards at the provider's path {dashboards_path}",
          source and (compose_path.parent / source / "kldrift.json").is_file(), grafana_mounts)
    provisioning = grafana_mounts.get("/etc/grafana/provisioning", "")
    check("compose: grafana mounts deploy/grafana/provisioning at /etc/grafana/provisioning",
          provisioning and (compose_path.parent / provisioning / "datasources" / "prometheus.yml").is_file(),
          grafana_mounts)

    dockerfile = (root / "Dockerfile").read_text(encoding="utf-8")
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", dockerfile, re.M) for p in line.split()}
    check(f"Dockerfile: EXPOSE {GRPC_PORT} and {METRICS_PORT}", {GRPC_PORT, METRICS_PORT} <= exposed,
          exposed)
    entry = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile, re.M)
    entrypoint = json.loads(entry[-1]) if entry else []
    check_flags("Dockerfile ENTRYPOINT", entrypoint[1:], flags)
    check("Dockerfile: ENTRYPOINT serves gRPC on 50051, /metrics on 9464, data in the VOLUME",
          entrypoint[:1] == ["kldriftd"]
          and flag_value(entrypoint, "--listen") == f"0.0.0.0:{GRPC_PORT}"
          and flag_value(entrypoint, "--metrics-listen") == f"0.0.0.0:{METRICS_PORT}"
          and flag_value(entrypoint, "--data-dir") == DATA_DIR
          and re.search(rf"^VOLUME\s+{re.escape(DATA_DIR)}\s*$", dockerfile, re.M) is not None,
          entrypoint)


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def substitute(expr):
    """`expr` as Grafana would send it to Prometheus, with example variable values."""
    values = dict(GRAFANA_BUILTINS, **VARIABLE_VALUES)

    def replace(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", replace, expr)


def check_grafana(root, deploy, rules, work):
    datasource = load_yaml(deploy / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    sources = datasource["datasources"]
    check(f"grafana datasource: one Prometheus, uid {DATASOURCE_UID}",
          len(sources) == 1 and sources[0]["type"] == "prometheus" and sources[0]["uid"] == DATASOURCE_UID,
          sources)
    provider = load_yaml(deploy / "grafana" / "provisioning" / "dashboards" / "kldrift.yml")
    providers = provider["providers"]
    check("grafana dashboards provider: file provider reading /var/lib/grafana/dashboards",
          len(providers) == 1 and providers[0]["type"] == "file"
          and providers[0]["options"]["path"] == "/var/lib/grafana/dashboards", providers)

    dashboard_path = deploy / "grafana" / "dashboards" / "kldrift.json"
    try:
        dashboard = json.loads(dashboard_path.read_text(encoding="utf-8"))
        check("dashboard: kldrift.json parses", True)
    except ValueError as e:
        check("dashboard: kldrift.json parses", False, e)
        return
    check(f"dashboard: uid {DASHBOARD_UID}, schemaVersion >= 36, a title",
          dashboard.get("uid") == DASHBOARD_UID and dashboard.get("schemaVersion", 0) >= 36
          and dashboard.get("title"), (dashboard.get("uid"), dashboard.get("schemaVersion")))

    expressions = []  # (where, expr)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    check(f"dashboard: variables {', '.join(DASHBOARD_VARIABLES)}",
          list(variables) == DASHBOARD_VARIABLES, list(variables))
    for name, v in variables.items():
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        check(f"dashboard: variable {name} is label_values(kldrift_alert_measure_value..., {name}) "
              f"on {DATASOURCE_UID}",
              m is not None and m.group(2) == name
              and m.group(1).startswith("kldrift_alert_measure_value")
              and v["datasource"].get("uid") == DATASOURCE_UID, (query, v.get("datasource")))
        if m:
            expressions.append((f"variable {name}", m.group(1)))

    panels = list(walk_panels(dashboard["panels"]))
    data_panels = [p for p in panels if p["type"] != "row"]
    ids = [p["id"] for p in panels]
    check(f"dashboard: {len(data_panels)} panels (and {len(panels) - len(data_panels)} rows), ids unique",
          len(ids) == len(set(ids)) and len(data_panels) >= 10, ids)
    cells = {}
    for p in panels:
        g = p["gridPos"]
        inside = g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        if not inside:
            check(f"panel {p['title']!r}: inside the 24-column grid", False, g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    check(f"panel {p['title']!r}: does not overlap {cells[(x, y)]!r}", False, g)
                cells[(x, y)] = p["title"]
    for p in data_panels:
        targets = p.get("targets", [])
        uids = {p.get("datasource", {}).get("uid")} | {t.get("datasource", {}).get("uid", DATASOURCE_UID)
                                                       for t in targets}
        check(f"panel {p['title']!r}: {len(targets)} target(s), datasource uid {DATASOURCE_UID}",
              targets and all(t.get("expr", "").strip() for t in targets) and uids == {DATASOURCE_UID},
              (uids, targets))
        expressions += [(f"panel {p['title']!r} {t.get('refId')}", t["expr"]) for t in targets]
    for a in dashboard.get("annotations", {}).get("list", []):
        if a.get("expr"):
            check(f"annotation {a['name']!r}: datasource uid {DATASOURCE_UID}",
                  a["datasource"].get("uid") == DATASOURCE_UID, a["datasource"])
            expressions.append((f"annotation {a['name']!r}", a["expr"]))

    by_metric = {}
    for where, expr in expressions:
        for name in metric_names(expr):
            by_metric.setdefault(name, []).append(where)
    for name in REQUIRED_DASHBOARD_METRICS:
        check(f"dashboard: a panel shows {name}", name in by_metric, sorted(by_metric))
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    unknown = {n: w for n, w in by_metric.items() if n not in KNOWN_METRICS | recorded}
    check("dashboard: every metric name is one kldriftd exports or the rules record", not unknown, unknown)
    rule_names = set()
    for g in rules["groups"]:
        for r in g["rules"]:
            rule_names |= metric_names(r["expr"])
    unknown = sorted(rule_names - KNOWN_METRICS - recorded)
    check("rules: every metric name is one kldriftd exports or the rules record", not unknown, unknown)

    multi = {n for n, v in variables.items() if v.get("multi") or v.get("includeAll")}
    used = set()
    for where, expr in expressions:
        for op, name in re.findall(r'(=~|!~|!=|=)\s*"\$\{?(\w+)', expr):
            used.add(name)
            if name in multi and op not in ("=~", "!~"):
                check(f"{where}: multi-value ${name} is matched with =~", False, expr)
        used |= set(re.findall(r"\$\{?(\w+)", expr))
    check("dashboard: every variable is used by a panel",
          set(variables) <= used, sorted(set(variables) - used))
    alert_state = [p for p in data_panels
                   if any("kldrift_alert_state" in metric_names(t["expr"]) for t in p["targets"])]
    texts = {}
    for p in alert_state:
        for m in p.get("fieldConfig", {}).get("defaults", {}).get("mappings", []):
            for value, option in m.get("options", {}).items():
                texts[value] = option.get("text")
    check("dashboard: alert state mapped 0 ok, 1 pending, 2 firing",
          texts == {"0": "ok", "1": "pending", "2": "firing"}, texts)
    top_bins = [p for p in data_panels
                if any("kldrift_top_bin_kl_contribution_nats" in metric_names(t["expr"]) for t in p["targets"])]
    check("dashboard: top contributing bins shown as a table (instant query)",
          top_bins and all(p["type"] == "table" and all(t.get("instant") for t in p["targets"])
                           for p in top_bins), [(p["type"], p["targets"]) for p in top_bins])
    drift = [p for p in data_panels
             if {"kldrift_alert_measure_value", "kldrift_alert_warn_threshold",
                 "kldrift_alert_critical_threshold"} <= set().union(*(metric_names(t["expr"])
                                                                        for t in p["targets"]))]
    check("dashboard: drift over time drawn with its warn and critical thresholds",
          any(p["type"] == "timeseries" for p in drift), [p["title"] for p in drift])

    return expressions


def check_in_prometheus(deploy, rules, expressions, work, live):
    """Every expression, as Grafana sends it, in a real Prometheus loaded with the shipped rules;
    with `live` (a running kldriftd fed one stream), Prometheus scrapes it and every panel shows data.
    """
    binary = tool("prometheus", "/usr/bin/prometheus", "prometheus")
    config = {"global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
              "rule_files": [str(deploy / "prometheus" / "kldrift.rules.yml")], "scrape_configs": []}
    if live:
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["scrape_configs"] = [{"job_name": JOB, "static_configs": [
            {"targets": [f"127.0.0.1:{live.metrics_port}"]}]}]
    config_path = os.path.join(work, "prometheus.yml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    storage = os.path.join(work, "prometheus-data")

    def args(address):
        return [binary, f"--config.file={config_path}", f"--storage.tsdb.path={storage}",
                f"--web.listen-address={address}"]

    def query(promql):
        params = urllib.parse.urlencode({"query": promql, "time": f"{time.time():.3f}"})
        return http_json(server.url(f"/api/v1/query?{params}"))

    server = Server("prometheus", args, work)
    try:
        status, body = http_json(server.url("/api/v1/rules"))
        loaded = sorted(g["name"] for g in body["data"]["groups"]) if status == 200 else body
        check("prometheus loads deploy/prometheus/kldrift.rules.yml",
              loaded == sorted(g["name"] for g in rules["groups"]), loaded)
        queries = []
        for where, expr in expressions:
            try:
                queries.append((where, substitute(expr)))
            except KeyError as e:
                check(f"{where}: variables substituted", False, e)
        for where, promql in queries:
            status, body = query(promql)
            ok = status == 200 and isinstance(body, dict) and body.get("status") == "success"
            check(f"prometheus accepts {where}: {' '.join(promql.split())}", ok, f"HTTP {status}: {body}")
        # The check above must be able to fail: a broken expression is refused.
        status, body = query("sum(rate(kldrift_streams[5m])")
        check("prometheus refuses a malformed expression (the check can fail)",
              status == 400 and body.get("errorType") == "bad_data", f"HTTP {status}: {body}")
        if not live:
            return
        # Recording rules run every 30s and alerts need `for:`; everything else has data in seconds.
        recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
        expected = [(w, q) for w, q in queries if "ALERTS" not in q and not metric_names(q) & recorded]
        empty = dict(expected)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while empty and time.monotonic() < deadline:
            for where, promql in list(empty.items()):
                status, body = query(promql)
                if status == 200 and body["data"]["result"]:
                    del empty[where]
            time.sleep(0.5)
        for where, promql in expected:
            check(f"live: {where} shows data from kldriftd", where not in empty, promql)
    finally:
        server.stop()


def section(name, function, *args):
    """Runs one group of checks; one that cannot finish is a failure, never a skip."""
    print(f"== {name} ({time.monotonic() - STARTED:.1f} s)", flush=True)
    try:
        return function(*args)
    except Exception:
        check(f"{name} checks complete", False, traceback.format_exc())
        return None


def main():
    if len(sys.argv) not in (2, 4):
        print(__doc__, file=sys.stderr)
        return 2
    binaries = sys.argv[2:4]
    if not binaries:
        print("NOTE: no kldriftd given: metric names are checked against KNOWN_METRICS, not a live "
              "kldriftd (CTest passes both binaries)", flush=True)
    # ctest and Ctrl-C: stop through the finally blocks, so started servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    root = pathlib.Path(sys.argv[1]).resolve()
    deploy = root / "deploy"
    rules = load_yaml(deploy / "prometheus" / "kldrift.rules.yml")
    flags = kldriftd_flags(root)
    check("kldriftd flags found in server/ (ABSL_FLAG)", {"--listen", "--data-dir"} <= flags, flags)
    with tempfile.TemporaryDirectory(prefix="kldrift-deploy-test-") as work:
        section("yamllint", check_yamllint, root, deploy)
        prometheus_config = section("prometheus", check_prometheus_config, deploy, rules) or {}
        section("alertmanager", check_alertmanager, deploy, work)
        k8s = section("k8s", check_k8s, root, deploy, rules, flags)
        section("nginx", check_nginx, root, deploy)
        section("compose and Dockerfile", check_compose_and_dockerfile, root, deploy,
                prometheus_config, flags, k8s)
        expressions = section("grafana", check_grafana, root, deploy, rules, work) or []
        live = None
        try:
            if binaries:
                live = section("kldriftd", Kldriftd, *binaries, work)
                if live:
                    section("kldriftd exposition", check_exposition, live, expressions, rules)
            section("prometheus queries", check_in_prometheus, deploy, rules, expressions, work, live)
        finally:
            if live:
                live.stop()
    elapsed = time.monotonic() - STARTED
    print(f"deploy_config_test: {CHECKS.count} checks, {len(CHECKS.failures)} failed, {elapsed:.1f} s")
    for f in CHECKS.failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if CHECKS.failures else 0


if __name__ == "__main__":
    sys.exit(main())
