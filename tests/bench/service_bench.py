#!/usr/bin/python3
"""kldriftd's ingest and GetDrift against the transport ceiling, measured in the same run.

Usage: service_bench.py [BUILD_DIR] [--quick] [--rounds N] [--kldriftd PATH] [kldrift bench flags...]

BUILD_DIR defaults to build/release. One after another on loopback port 0, it starts
  echo     tests/bench/kldrift_echo_server: the KlDrift API over gRPC answering at once;
  memory   kldriftd --storage=memory;
  default  kldriftd with default durability (RocksDB in a temporary data folder),
  default, paced 12.5 / 25 / 50 %  the same with ingest paced (--ingest-rate) at those shares of
                  the rate default sustained (50 % is what the GetDrift target is checked at),
  default, 1/s    the same with every stream sending one histogram a second (the Recorder's
                  default flush interval: streams / --batch-streams batches a second),
  echo, paced ... and echo, 1/s   the echo server at those rates: the GetDrift latency of the
                  transport alone (an empty report answered at once) under the same load, which
                  the GetDrift target's 1 ms has to hold as well,
runs the same `kldrift bench --json --server-pid PID` against each (kldriftd also with --metrics),
and prints a Markdown table (machine, date, command) with every figure (for kldriftd also its own
time per GetDrift and per batch, from its kldrift_request_duration_seconds: what a client waits
beyond it is the transport's and the scheduler's share), the ratios default / echo,
memory / echo and default / memory, and issue 7's targets as met or missed. Flags after BUILD_DIR
are passed to `kldrift bench` and override the defaults below; --quick runs a small load for a
few seconds per server (for the test suite: it checks that all three rows print, not speed).
--kldriftd PATH measures another kldriftd binary (e.g. an older build) with this build's client.
--rounds N (default 3; 1 with --quick) repeats the whole sequence N times: on a shared 2-core
machine one run of a server can land 30 % below the next (where the scheduler puts the threads),
so the table gives each figure's median over the rounds, and each ratio is the median of the
rounds' own ratios (each round measures its servers back to back), printed with every round's.

The default load is 10,000 streams (100 models x 100 signals, 64 bins), which is what the GetDrift
target is stated for. Batch shape: --batch-streams 100, i.e. one IngestRequest carries every
signal of one model, 100 histograms of 64 bins (~52 KB). That is what a model service's Recorder
sends: once per flush interval, one batch with the delta of every stream it records, not one
request per stream. 4 clients with 8 batches in flight each keep the server busy without queueing
more than a real fleet would; GetDrift runs at 200 calls/s on random streams, like a few
dashboards and alert checks polling while ingest is at full speed. Paced batches and GetDrift calls
arrive as Poisson processes (`kldrift bench --arrivals poisson`, the default), as independent
services and dashboards do: on fixed grids the two schedules lock in phase, and GetDrift's tail then
depends on where the grids happened to fall in that run. A paced client sends its batches as they
fall due to the millisecond (its completion queue's timer), so at thousands of batches a second
they leave in small bursts (tests/bench/HISTORY.md has the paced runs' earlier shortfall).

Standard library only. Every wait is bounded; servers are stopped with SIGTERM (SIGKILL after a
grace period) whatever happens.
"""

import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

STARTUP_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 30
DEFAULT_LOAD = [
    "--models", "100", "--streams-per-model", "100", "--bins", "64",
    "--clients", "4", "--batch-streams", "100", "--in-flight", "8",
    "--duration", "10s", "--warmup", "3s", "--get-drift-qps", "200",
]
QUICK_LOAD = [
    "--models", "4", "--streams-per-model", "10", "--bins", "64",
    "--clients", "2", "--batch-streams", "10", "--in-flight", "8",
    "--duration", "1s", "--warmup", "0.5s", "--get-drift-qps", "50",
]
# Issue 7's targets.
TARGET_SHARE_OF_ECHO = 0.60
TARGET_BINS_PER_SECOND = 10e6
TARGET_GET_DRIFT_P99_MS = 1.0
TARGET_STREAMS = 10000
# The paced runs: default durability with --ingest-rate at these shares of its saturated rate;
# the GetDrift target is checked at PACED_SHARE, the others show how its p99 grows with the load.
PACED_SHARES = (0.125, 0.25, 0.5)
PACED_SHARE = 0.5


def paced(server, share):
    return "%s, paced %g %%" % (server, share * 100)


PACED = paced("default", PACED_SHARE)
# And at the rate of a fleet whose every stream flushes once a second.
PER_SECOND = "default, 1/s"
# The echo server at the same rates: GetDrift's transport floor.
ECHO_PACED = paced("echo", PACED_SHARE)
ECHO_PER_SECOND = "echo, 1/s"


class Server:
    """A server process on a loopback port picked by the kernel, stopped on exit."""

    def __init__(self, argv, work_dir, metrics=False):
        self.work_dir = work_dir
        port_file = os.path.join(work_dir, "port")
        metrics_port_file = os.path.join(work_dir, "metrics-port")
        argv = list(argv) + ["--listen", "127.0.0.1:0", "--port-file", port_file]
        if metrics:
            argv += ["--metrics-listen", "127.0.0.1:0", "--metrics-port-file", metrics_port_file]
        self.log_path = os.path.join(work_dir, "server.log")
        self.log = open(self.log_path, "w+")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        wanted = [port_file] + ([metrics_port_file] if metrics else [])
        while not all(os.path.exists(f) for f in wanted):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("%s did not start:\n%s" % (argv[0], self.read_log()))
            time.sleep(0.05)
        self.port = read_port(port_file)
        self.metrics_port = read_port(metrics_port_file) if metrics else None

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    @property
    def pid(self):
        return self.process.pid

    def read_log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        """SIGTERM, then SIGKILL after the grace period; returns the exit code (None if killed)."""
        code = self.process.poll()
        if code is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
                code = None
        self.log.close()
        return code

    def __enter__(self):
        return self

    def __exit__(self, *unused):
        self.stop()


def read_port(path):
    with open(path) as f:
        return int(f.read().strip())


def binaries(build_dir):
    paths = {
        "kldrift": os.path.join(build_dir, "client", "cli", "kldrift"),
        "kldriftd": os.path.join(build_dir, "server", "kldriftd"),
        "echo": os.path.join(build_dir, "tests", "bench", "kldrift_echo_server"),
    }
    for name, path in paths.items():
        if not os.access(path, os.X_OK):
            raise RuntimeError("%s not found at %s; build it first" % (name, path))
    return paths


def run_bench(kldrift, server, bench_flags, timeout_s):
    """`kldrift bench --json` against `server`; the parsed JSON. Raises with stderr on failure."""
    argv = [kldrift, "--server", server.address, "--timeout", "30s", "bench", "--json",
            "--server-pid", str(server.pid)]
    if server.metrics_port is not None:
        argv += ["--metrics", "127.0.0.1:%d" % server.metrics_port]
    argv += bench_flags
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError("%s\nexit %d\n%s" % (" ".join(argv), result.returncode, result.stderr))
    return json.loads(result.stdout)


def machine():
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d cores, %s" % (model, os.cpu_count() or 0, platform.platform())


def fmt(value):
    """Three significant digits; thousands separated below a million; "-" for no value."""
    if value is None or value != value:
        return "-"
    if abs(value) >= 1e6:
        return "%.3g" % value
    if abs(value) >= 100:
        return "{:,.0f}".format(value)
    return "%.3g" % value


def number(value):
    """JSON numbers; NaN comes as the string "NaN"."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def request_time(result, method, field):
    """kldriftd's own time per request of `method` (bench --metrics), or None (the echo server)."""
    return result["server"].get("request_time", {}).get(method, {}).get(field)


def ratio(a, b):
    return a / b if b else float("nan")


def merge_flags(defaults, overrides):
    """`defaults` (--name value pairs) without those named in `overrides`, then `overrides`."""
    named = {a.split("=", 1)[0] for a in overrides if a.startswith("--")}
    kept = []
    for name, value in zip(defaults[::2], defaults[1::2]):
        if name not in named:
            kept += [name, value]
    return kept + overrides


def main(argv):
    args = argv[1:]
    build_dir = "build/release"
    if args and not args[0].startswith("--"):
        build_dir = args.pop(0)
    kldriftd = None
    if "--kldriftd" in args:
        at = args.index("--kldriftd")
        kldriftd = args[at + 1] if at + 1 < len(args) else ""
        del args[at:at + 2]
    rounds = None
    if "--rounds" in args:
        at = args.index("--rounds")
        try:
            rounds = int(args[at + 1]) if at + 1 < len(args) else 0
        except ValueError:
            rounds = 0
        if not 1 <= rounds <= 20:
            raise RuntimeError("--rounds takes a count from 1 to 20")
        del args[at:at + 2]
    quick = "--quick" in args
    if rounds is None:
        rounds = 1 if quick else 3
    passthrough = [a for a in args if a != "--quick"]
    bench_flags = merge_flags(QUICK_LOAD if quick else DEFAULT_LOAD, passthrough)
    paths = binaries(build_dir)
    if kldriftd is not None:
        if not os.access(kldriftd, os.X_OK):
            raise RuntimeError("--kldriftd %r is not an executable" % kldriftd)
        paths["kldriftd"] = kldriftd
    duration_s = 600 + 120  # The bench's own bound plus setup and drain.

    setups = [
        ("echo", [paths["echo"]], False),
        ("memory", [paths["kldriftd"], "--storage=memory"], True),
        ("default", [paths["kldriftd"]], True),
    ]
    # Then default durability again with ingest paced at shares of what it sustained: GetDrift
    # latency under a steady ingest load rather than at saturation, where the bench's own threads
    # and the server compete for the same two cores; and the echo server at the same rates.
    paced_rates = {}  # Setup name: share of default's saturated rate.
    for server, per_second, server_argv, metrics in (
            ("default", PER_SECOND, [paths["kldriftd"]], True),
            ("echo", ECHO_PER_SECOND, [paths["echo"]], False)):
        for share in PACED_SHARES:
            paced_rates[paced(server, share)] = share
            setups.append((paced(server, share), server_argv, metrics))
        setups.append((per_second, server_argv, metrics))
    all_rounds = []  # One {server name: bench result} per round.
    with tempfile.TemporaryDirectory(prefix="kldrift-service-bench-") as tmp:
        for round_index in range(rounds):
            results = {}
            for name, server_argv, metrics in setups:
                work_dir = os.path.join(tmp, "%s%d.%d" % (name.split(",")[0], len(results),
                                                          round_index))
                os.mkdir(work_dir)
                flags = bench_flags
                if server_argv[0] == paths["kldriftd"] and "--storage=memory" not in server_argv:
                    server_argv = server_argv + ["--data-dir", os.path.join(work_dir, "data")]
                if name in paced_rates:
                    rate = paced_rates[name] * results["default"]["batches_per_second"]
                    flags = merge_flags(bench_flags, ["--ingest-rate", "%.1f" % rate])
                if name in (PER_SECOND, ECHO_PER_SECOND):
                    first = results["default"]
                    rate = first["streams"] / first["batch_streams"]
                    flags = merge_flags(bench_flags, ["--ingest-rate", "%.1f" % rate])
                print("service_bench: round %d of %d: %s ..." % (round_index + 1, rounds, name),
                      file=sys.stderr, flush=True)
                with Server(server_argv, work_dir, metrics=metrics) as server:
                    try:
                        results[name] = run_bench(paths["kldrift"], server, flags, duration_s)
                    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                        print("service_bench: FAILED against %s: %s\nserver log:\n%s"
                              % (name, e, server.read_log()[-4000:]), file=sys.stderr)
                        return 1
            all_rounds.append(results)

    def median(name, get):
        """The median over the rounds of get(result of server `name`)."""
        return statistics.median(number(get(r[name])) for r in all_rounds)

    def median_ratio(a, b):
        """The median of the rounds' batches/s ratios a / b, and each round's."""
        each = [ratio(r[a]["batches_per_second"], r[b]["batches_per_second"]) for r in all_rounds]
        return statistics.median(each), each

    first = all_rounds[0]["echo"]
    command = "/usr/bin/python3 tests/bench/service_bench.py %s" % " ".join(
        shlex.quote(a) for a in argv[1:])
    values_mode = first["mode"] == "values"
    print("## kldrift bench: echo ceiling, --storage=memory and default durability, same run\n")
    print("- machine: %s" % machine())
    print("- date: %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    print("- command: `%s`" % command.strip())
    print("- load: `kldrift bench %s` (%d streams, %s mode)"
          % (" ".join(bench_flags), first["streams"], first["mode"]))
    print("- rounds: %d (each figure the median over the rounds)\n" % rounds)
    header = ["server", "batches/s", "bins/s"] + (["values/s"] if values_mode else []) + [
        "ack p50 ms", "ack p99 ms", "ack p99.9 ms", "GetDrift p50 ms", "GetDrift p99 ms",
        "server CPU s / M bins", "RSS MiB", "RSS / stream KiB", "server µs / GetDrift",
        "server GetDrift > 1 ms %", "server µs / batch"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, _, _ in setups:
        row = [name, fmt(median(name, lambda r: r["batches_per_second"])),
               fmt(median(name, lambda r: r["bins_per_second"]))]
        if values_mode:
            row.append(fmt(median(name, lambda r: r["values_per_second"])))
        for get in (lambda r: r["ack_latency_ms"]["p50"], lambda r: r["ack_latency_ms"]["p99"],
                    lambda r: r["ack_latency_ms"]["p999"],
                    lambda r: r["get_drift"]["latency_ms"]["p50"],
                    lambda r: r["get_drift"]["latency_ms"]["p99"],
                    lambda r: r["server"]["cpu_seconds_per_million_bins"]):
            row.append(fmt(median(name, get)))
        row += [fmt(median(name, lambda r: r["server"]["rss_bytes"]) / 2**20),
                fmt(median(name, lambda r: r["server"]["rss_per_stream_bytes"]) / 1024),
                fmt(median(name, lambda r: request_time(r, "GetDrift", "mean_us"))),
                fmt(100 * median(name, lambda r: request_time(r, "GetDrift", "over_1ms_share"))),
                fmt(median(name, lambda r: request_time(r, "Ingest", "mean_us")))]
        print("| " + " | ".join(row) + " |")

    def ratio_text(a, b):
        value, each = median_ratio(a, b)
        if len(each) == 1:
            return "%.2f" % value
        return "%.2f (rounds: %s)" % (value, ", ".join("%.2f" % x for x in each))

    print("\nratios (batches/s; bins/s are in the same ratio): default / echo %s, "
          "memory / echo %s, default / memory %s"
          % (ratio_text("default", "echo"), ratio_text("memory", "echo"),
             ratio_text("default", "memory")))

    share_of_echo, _ = median_ratio("default", "echo")
    streams = first["streams"]
    p99 = median(PACED, lambda r: r["get_drift"]["latency_ms"]["p99"])
    p99_per_second = median(PER_SECOND, lambda r: r["get_drift"]["latency_ms"]["p99"])
    echo_p99 = median(ECHO_PACED, lambda r: r["get_drift"]["latency_ms"]["p99"])
    own_over_1ms = 100 * median(PACED, lambda r: request_time(r, "GetDrift", "over_1ms_share"))
    own_over_1ms_per_second = 100 * median(
        PER_SECOND, lambda r: request_time(r, "GetDrift", "over_1ms_share"))
    echo_p99_per_second = median(ECHO_PER_SECOND, lambda r: r["get_drift"]["latency_ms"]["p99"])
    per_second_rate = median(PER_SECOND, lambda r: r["batches_per_second"])
    bins = median("default", lambda r: r["bins_per_second"])
    checks = [
        ("default durability >= %d %% of the echo ceiling (batches/s)"
         % (TARGET_SHARE_OF_ECHO * 100), share_of_echo >= TARGET_SHARE_OF_ECHO,
         "%.0f %%" % (100 * share_of_echo)),
        ("default durability >= %s histogram bins/s" % fmt(TARGET_BINS_PER_SECOND),
         bins >= TARGET_BINS_PER_SECOND, fmt(bins)),
        ("GetDrift p99 <= %g ms with %d streams under ingest load (default durability, ingest "
         "paced at %d %% of its saturated rate)"
         % (TARGET_GET_DRIFT_P99_MS, TARGET_STREAMS, PACED_SHARE * 100), p99 <= TARGET_GET_DRIFT_P99_MS,
         "%s ms; the echo server's at the same rate: %s ms; kldriftd's own time over 1 ms in %s %% "
         "of calls" % (fmt(p99), fmt(echo_p99), fmt(own_over_1ms))),
        ("GetDrift p99 <= %g ms with %d streams under ingest load (default durability, every "
         "stream one histogram a second: %s batches/s)"
         % (TARGET_GET_DRIFT_P99_MS, TARGET_STREAMS, fmt(per_second_rate)),
         p99_per_second <= TARGET_GET_DRIFT_P99_MS,
         "%s ms; the echo server's at the same rate: %s ms; kldriftd's own time over 1 ms in %s %% "
         "of calls" % (fmt(p99_per_second), fmt(echo_p99_per_second), fmt(own_over_1ms_per_second))),
    ]
    print("\ntargets (issue 7):")
    for text, met, measured in checks:
        verdict = "met" if met else "MISSED"
        if "GetDrift" in text and streams < TARGET_STREAMS:
            verdict = "not checked (%d streams)" % streams
        print("- %s: %s (%s)" % (text, verdict, measured))
    sweep = []
    for share in PACED_SHARES:
        kldriftd_p99 = median(paced("default", share), lambda r: r["get_drift"]["latency_ms"]["p99"])
        floor_p99 = median(paced("echo", share), lambda r: r["get_drift"]["latency_ms"]["p99"])
        rate = median(paced("default", share), lambda r: r["batches_per_second"])
        sweep.append("%g %% (%s batches/s): %s ms, echo %s ms"
                     % (share * 100, fmt(rate), fmt(kldriftd_p99), fmt(floor_p99)))
    print("\nGetDrift p99 against the paced ingest rate (default durability; the echo server at the "
          "same rate): %s" % "; ".join(sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
