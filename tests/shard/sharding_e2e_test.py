#!/usr/bin/python3
"""Sharding by model behind a real nginx (issue 8), on loopback.

Usage: sharding_e2e_test.py KLDRIFT KLDRIFTD [NGINX]

Three kldriftd, each with its own data folder, behind Debian's nginx running
deploy/nginx/kldrift.conf unchanged but for its `listen` address (the upstream's `server` lines are
written with the parameters of deploy/nginx/kldrift-shards.conf). Through the proxy, the `kldrift`
CLI creates a reference for each of 50 models and ingests two batches into each. Then:

- each model's reference is on exactly one shard (`reference list --json` on every shard directly),
  and the 50 models are spread over all three;
- `kldrift drift --json` through the proxy equals the same on the owning shard (every field but
  the evaluation time: samples, every measure, alert state, top bins);
- after `kill -9` of one shard, each of its models fails through the proxy with UNAVAILABLE (exit 1,
  the proxy's gRPC status on stderr), no other shard picks it up, and every other model still
  answers drift and takes a new batch;
- restarted on the same port with the same data folder, the shard serves its models again with the
  samples they had (the kill lost nothing acknowledged), and takes new batches;
- if the CLI has `kldrift admin export/import`: one model exported from its shard and imported
  into another (directly) reports the same drift there; a second import needs --replace; deleted
  on the old shard, it is on the new one only. Without those subcommands this step is skipped,
  saying so.

Shard ports are picked once (bind port 0, read it back) and kept across the restart, so the nginx
configuration never changes. Bounded in time: every command has a timeout and the whole test a
deadline; every process it starts is stopped in a finally block and dies with the test (even on
SIGKILL). No network beyond 127.0.0.1.
"""
import concurrent.futures
import grp
import json
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

STARTED = time.monotonic()
DEADLINE_S = 150          # The whole test (CTest's TIMEOUT is 240).
COMMAND_TIMEOUT_S = 30    # One CLI call.
READY_TIMEOUT_S = 30      # A server coming up.
CLI_TIMEOUT = "10s"       # --timeout of every kldrift call (the deadline of its RPCs).
MODELS = 50
SHARDS = 3
SIGNAL = "score"
EDGES = "0,0.2,0.4,0.6,0.8,1"
REFERENCE_COUNTS = "120,340,310,160,70"
PARALLEL = 6              # CLI calls in flight at once.
ROOT = pathlib.Path(__file__).resolve().parents[2]
NGINX_DIR = ROOT / "deploy" / "nginx"

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testlib"))
from local_processes import Checks, free_port, parent_death_signal, stop_process  # noqa: E402

CHECKS = Checks()
check = CHECKS.check


def section(title):
    elapsed = time.monotonic() - STARTED
    if elapsed > DEADLINE_S:
        raise RuntimeError(f"over the test's deadline ({DEADLINE_S} s) before: {title}")
    print(f"== {title} ({elapsed:.1f} s)", flush=True)


# In the child: `sig` when the test process dies, even by SIGKILL (ctest timeout).
die_with_parent = parent_death_signal(signal.SIGKILL)


def wait_for(what, predicate, timeout_s=READY_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")


def tail(path, lines=30):
    try:
        return "".join(open(path, errors="replace").readlines()[-lines:])
    except OSError:
        return ""


class Shard:
    """One kldriftd on a fixed loopback port with its own data folder; restartable."""

    def __init__(self, kldriftd, index, work):
        self.kldriftd = kldriftd
        self.name = f"shard-{index}"
        self.folder = os.path.join(work, self.name)
        os.makedirs(self.folder)
        self.data_dir = os.path.join(self.folder, "data")
        self.process = None
        self.port = None
        self.starts = 0

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        """Starts kldriftd; on its first start picks a free port (retrying if it gets taken)."""
        for attempt in range(5):
            if self.starts == 0:
                self.port = free_port()
            if self._start_once():
                self.starts += 1
                return
            if self.starts > 0:
                break  # A restart must keep its port: nginx's configuration names it.
            print(f"     {self.name}: port {self.port} not usable (attempt {attempt + 1})", flush=True)
        raise RuntimeError(f"{self.name} did not start on {self.address}:\n{tail(self.log_path)}")

    def _start_once(self):
        run_id = self.starts
        self.log_path = os.path.join(self.folder, f"kldriftd.{run_id}.log")
        port_file = os.path.join(self.folder, f"port.{run_id}")
        metrics_port_file = os.path.join(self.folder, f"metrics-port.{run_id}")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [self.kldriftd, "--listen", self.address, "--port-file", port_file,
                 "--data-dir", self.data_dir, "--metrics-listen", "127.0.0.1:0",
                 "--metrics-port-file", metrics_port_file, "--eval-interval", "1s",
                 "--shutdown-grace", "1s"],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if int(open(port_file).read()) == self.port:
                    print(f"     {self.name} on {self.address} (data {self.data_dir})", flush=True)
                    return True
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        self.stop()
        return False

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self):
        stop_process(self.process)


class Nginx:
    """Debian's nginx as the current user, everything (pid, logs, temp files) under `work`."""

    def __init__(self, nginx, shards, work):
        self.nginx = nginx
        self.prefix = os.path.join(work, "nginx")
        conf = os.path.join(self.prefix, "conf")
        for d in ("conf", "logs", "temp"):
            os.makedirs(os.path.join(self.prefix, d))
        self.port = free_port()
        self.process = None

        # deploy/nginx/kldrift.conf as shipped, but for its one `listen` address.
        shipped = (NGINX_DIR / "kldrift.conf").read_text(encoding="utf-8")
        listen = re.compile(r"^(\s*listen\s+)\S+(\s+http2\s*;)", re.M)
        site, replaced = listen.subn(rf"\g<1>127.0.0.1:{self.port}\g<2>", shipped)
        if replaced != 1:
            raise RuntimeError(f"deploy/nginx/kldrift.conf: expected one `listen ... http2;` line, "
                               f"found {replaced}")
        with open(os.path.join(conf, "kldrift.conf"), "w") as f:
            f.write(site)
        # The shipped shards file's `server` parameters, on this test's shard addresses.
        params = server_parameters()
        with open(os.path.join(conf, "kldrift-shards.conf"), "w") as f:
            for s in shards:
                f.write(f"server {s.address} {params};\n")

        user = ""
        if os.geteuid() == 0:  # Workers would otherwise switch to `nobody`; stay who we are.
            user = (f"user {pwd.getpwuid(os.geteuid()).pw_name} "
                    f"{grp.getgrgid(os.getegid()).gr_name};\n")
        temp = os.path.join(self.prefix, "temp")
        logs = os.path.join(self.prefix, "logs")
        self.error_log = os.path.join(logs, "error.log")
        self.access_log = os.path.join(logs, "access.log")
        main_conf = f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {self.prefix}/nginx.pid;
error_log {self.error_log} info;
events {{
    worker_connections 1024;
}}
http {{
    log_format shard '$remote_addr "$request" $status model=$http_x_kldrift_model '
                     'upstream=$upstream_addr grpc_status=$sent_http_grpc_status';
    access_log {self.access_log} shard;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include kldrift.conf;
}}
"""
        self.conf_path = os.path.join(conf, "nginx.conf")
        with open(self.conf_path, "w") as f:
            f.write(main_conf)

    def args(self, *extra):
        return [self.nginx, "-p", self.prefix + "/", "-c", self.conf_path, "-e", self.error_log,
                *extra]

    def start(self):
        result = subprocess.run(self.args("-t"), capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S)
        check("nginx -t accepts deploy/nginx/kldrift.conf", result.returncode == 0,
              result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError("nginx configuration refused")
        self.log_path = os.path.join(self.prefix, "logs", "nginx.out")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_parent)

        def listening():
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited {self.process.returncode}:\n"
                                   f"{tail(self.log_path)}{tail(self.error_log)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for(f"nginx on 127.0.0.1:{self.port}", listening)
        print(f"     nginx {self.address} -> {SHARDS} shards (prefix {self.prefix})", flush=True)

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        stop_process(self.process, signal.SIGQUIT)  # Graceful: workers finish, then exit.


def server_parameters():
    """The parameters after the address on deploy/nginx/kldrift-shards.conf's `server` lines."""
    text = (NGINX_DIR / "kldrift-shards.conf").read_text(encoding="utf-8")
    lines = re.findall(r"^[ \t]*server[ \t]+[^ \t;]+[ \t]*([^;\n]*);", text, re.M)
    check("kldrift-shards.conf: `server` lines with the same parameters, max_fails=0 among them",
          lines and len(set(lines)) == 1 and "max_fails=0" in lines[0].split(), lines)
    return lines[0].strip() if lines else "max_fails=0"


class Cli:
    """The real `kldrift` CLI."""

    def __init__(self, kldrift):
        self.kldrift = kldrift

    def run(self, server, *args):
        return subprocess.run([self.kldrift, "--server", server, "--timeout", CLI_TIMEOUT, *args],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)

    def ok(self, server, *args):
        result = self.run(server, *args)
        if result.returncode != 0:
            raise RuntimeError(f"kldrift --server {server} {' '.join(args)}: exit "
                               f"{result.returncode}\n{result.stdout}{result.stderr}")
        return result.stdout

    def models_on(self, server):
        refs = json.loads(self.ok(server, "reference", "list", "--json"))
        return {r["model"] for r in refs}

    def drift(self, server, model):
        return json.loads(self.ok(server, "drift", "--model", model, "--signal", SIGNAL, "--json"))


def parallel(function, items):
    """{item: function(item)} with PARALLEL calls in flight; exceptions are returned as values."""
    results = {}
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        futures = {pool.submit(function, item): item for item in items}
        for future in concurrent.futures.as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except Exception as e:  # Reported by the caller's check.
                results[futures[future]] = e
    return results


def model_name(i):
    return f"model-{i:02d}"


def batch(i, n):
    """The n-th batch of model i: a histogram in the reference's full layout (8 bins)."""
    return ",".join(str((i * 7 + b * (n + 3)) % 23 + b) for b in range(8))


def batch_total(i, n):
    return sum(int(c) for c in batch(i, n).split(","))


def comparable(reports):
    """Drift reports without the evaluation time (each call evaluates afresh)."""
    return [{k: v for k, v in r.items() if k != "evaluated_at"} for r in reports]


def errors_of(results):
    return {m: str(r) for m, r in results.items() if isinstance(r, Exception)}


def has_admin_transfer(cli):
    result = subprocess.run([cli.kldrift, "admin", "--help"], capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT_S)
    text = result.stdout + result.stderr
    return re.search(r"\bexport\b", text) is not None and re.search(r"\bimport\b", text) is not None


def run_test(kldrift, kldriftd, nginx_binary, work):
    cli = Cli(kldrift)
    shards = [Shard(kldriftd, i, work) for i in range(SHARDS)]
    nginx = None
    try:
        section(f"{SHARDS} kldriftd and nginx")
        for s in shards:
            s.start()
        nginx = Nginx(nginx_binary, shards, work)
        nginx.start()
        proxy = nginx.address
        models = [model_name(i) for i in range(MODELS)]
        index = {m: i for i, m in enumerate(models)}

        section(f"{MODELS} models through the proxy: a reference and two batches each")

        def create(model):
            i = index[model]
            stream = ["--model", model, "--signal", SIGNAL]
            cli.ok(proxy, "reference", "put", *stream, "--edges", EDGES, "--counts", REFERENCE_COUNTS)
            for n in (0, 1):
                cli.ok(proxy, "ingest", *stream, "--counts", batch(i, n))
            return batch_total(i, 0) + batch_total(i, 1)

        created = parallel(create, models)
        check(f"{MODELS} references put and 2 x {MODELS} batches ingested through nginx",
              not errors_of(created), errors_of(created))
        expected_samples = {m: v for m, v in created.items() if not isinstance(v, Exception)}

        section("each model on exactly one shard")
        on_shard = {s.name: cli.models_on(s.address) for s in shards}
        owners = {m: [s for s in shards if m in on_shard[s.name]] for m in models}
        misplaced = {m: [s.name for s in o] for m, o in owners.items() if len(o) != 1}
        check("every model's reference is on exactly one shard (reference list on each shard)",
              not misplaced, f"{misplaced} (does the CLI send x-kldrift-model?)")
        spread = {name: len(ms) for name, ms in on_shard.items()}
        print(f"     models per shard: {spread}", flush=True)
        check(f"the {MODELS} models are spread over all {SHARDS} shards",
              all(spread.values()) and sum(spread.values()) == MODELS, spread)
        owner = {m: o[0] for m, o in owners.items() if len(o) == 1}

        section("drift through the proxy equals drift on the owning shard")
        direct = parallel(lambda m: cli.drift(owner[m].address, m), list(owner))
        proxied = parallel(lambda m: cli.drift(proxy, m), list(owner))
        check("drift --json answers for every model, through the proxy and directly",
              not errors_of(direct) and not errors_of(proxied),
              (errors_of(direct), errors_of(proxied)))
        different = [m for m in owner
                     if isinstance(direct.get(m), list) and isinstance(proxied.get(m), list)
                     and comparable(direct[m]) != comparable(proxied[m])]
        check("drift --json through nginx == on the owning shard (samples, measures, alert state, "
              "top bins)", not different, different[:5])
        wrong_samples = {m: [r["samples"] for r in reports] for m, reports in direct.items()
                         if isinstance(reports, list)
                         and any(r["samples"] != expected_samples.get(m) for r in reports)}
        check("every window holds exactly the observations ingested", not wrong_samples,
              {m: (v, expected_samples.get(m)) for m, v in list(wrong_samples.items())[:5]})
        before_kill = {m: comparable(r) for m, r in direct.items() if isinstance(r, list)}

        victim = max(shards, key=lambda s: spread[s.name])  # The shard with the most models.
        lost = sorted(m for m in owner if owner[m] is victim)
        kept = sorted(m for m in owner if owner[m] is not victim)
        section(f"kill -9 {victim.name} ({len(lost)} models); the other {len(kept)} keep working")
        victim.kill9()

        def fails_unavailable(model):
            result = cli.run(proxy, "drift", "--model", model, "--signal", SIGNAL, "--json")
            return result.returncode, result.stderr.strip()

        refused = parallel(fails_unavailable, lost)
        wrong = {m: r for m, r in refused.items()
                 if isinstance(r, Exception) or r[0] != 1 or "UNAVAILABLE" not in r[1]}
        check(f"drift of each of {victim.name}'s {len(lost)} models through nginx: exit 1, "
              "UNAVAILABLE", not wrong, wrong)
        sample = refused.get(lost[0]) if lost else None
        print(f"     e.g. {lost[0] if lost else '-'}: {sample}", flush=True)
        check("the UNAVAILABLE comes from deploy/nginx/kldrift.conf's gRPC error mapping",
              isinstance(sample, tuple) and "replica holding this model is unavailable" in sample[1],
              sample)
        i = index[lost[0]]
        result = cli.run(proxy, "ingest", "--model", lost[0], "--signal", SIGNAL,
                         "--counts", batch(i, 2))
        check(f"ingest of {lost[0]} through nginx: exit 1, UNAVAILABLE (not re-routed)",
              result.returncode == 1 and "UNAVAILABLE" in result.stderr,
              (result.returncode, result.stderr))
        result = cli.run(proxy, "reference", "put", "--model", lost[0], "--signal", SIGNAL,
                         "--edges", EDGES, "--counts", REFERENCE_COUNTS)
        check(f"reference put of {lost[0]} through nginx: exit 1, UNAVAILABLE (not created "
              "elsewhere)", result.returncode == 1 and "UNAVAILABLE" in result.stderr,
              (result.returncode, result.stderr))

        still = parallel(lambda m: cli.drift(proxy, m), kept)
        changed = [m for m in kept if isinstance(still.get(m), list)
                   and comparable(still[m]) != before_kill.get(m)]
        check(f"drift of the other {len(kept)} models through nginx: answered, unchanged",
              not errors_of(still) and not changed, (errors_of(still), changed[:5]))

        def ingest_third(model):
            cli.ok(proxy, "ingest", "--model", model, "--signal", SIGNAL,
                   "--counts", batch(index[model], 2))
            expected_samples[model] += batch_total(index[model], 2)
            return cli.drift(owner[model].address, model)

        third = parallel(ingest_third, kept)
        wrong_samples = {m: [r["samples"] for r in reports] for m, reports in third.items()
                         if isinstance(reports, list)
                         and any(r["samples"] != expected_samples[m] for r in reports)}
        check(f"a new batch for each of the other {len(kept)} models through nginx lands on its "
              "shard", not errors_of(third) and not wrong_samples,
              (errors_of(third), list(wrong_samples.items())[:5]))
        after = {s.name: cli.models_on(s.address) for s in shards if s is not victim}
        check("no surviving shard took any of the dead shard's models",
              all(after[name] == on_shard[name] for name in after),
              {name: sorted(after[name] ^ on_shard[name]) for name in after})

        section(f"restart {victim.name} on {victim.address} with its data folder")
        victim.start()
        check(f"{victim.name} restored its {len(lost)} models from disk",
              cli.models_on(victim.address) == set(lost),
              sorted(cli.models_on(victim.address) ^ set(lost)))

        def back(model):
            # gRPC clients see the replica again at once; nginx too (max_fails=0, no memory).
            return cli.drift(proxy, model)

        restored = parallel(back, lost)
        changed = [m for m in lost if isinstance(restored.get(m), list)
                   and comparable(restored[m]) != before_kill[m]]
        check(f"drift of {victim.name}'s models through nginx: the same reports as before the kill",
              not errors_of(restored) and not changed, (errors_of(restored), changed[:5]))
        i = index[lost[0]]
        cli.ok(proxy, "ingest", "--model", lost[0], "--signal", SIGNAL, "--counts", batch(i, 2))
        reports = cli.drift(victim.address, lost[0])
        check(f"a new batch for {lost[0]} through nginx lands on the restarted shard",
              all(r["samples"] == expected_samples[lost[0]] + batch_total(i, 2) for r in reports),
              [r["samples"] for r in reports])

        section("hand-over of one model between shards (kldrift admin export/import)")
        if not has_admin_transfer(cli):
            print("SKIP hand-over: this kldrift has no `admin export`/`admin import` subcommands "
                  "(`kldrift admin --help`)", flush=True)
        else:
            check_hand_over(cli, shards, owner, kept, work)
    finally:
        if nginx:
            nginx.stop()
        for s in shards:
            s.stop()
        for s in shards:
            if s.starts and s.process and s.process.returncode not in (0, -signal.SIGKILL, None):
                print(f"     {s.name} exited {s.process.returncode}:\n{tail(s.log_path)}", flush=True)


def check_hand_over(cli, shards, owner, kept, work):
    """Exports a model from its shard and imports it into another shard, both directly."""
    model = kept[0]
    source = owner[model]
    target = next(s for s in shards if s is not source)
    path = os.path.join(work, f"{model}.export")
    before = comparable(cli.drift(source.address, model))
    result = cli.run(source.address, "admin", "export", "--model", model, "--output", path)
    check(f"kldrift admin export --model {model} from {source.name}",
          result.returncode == 0 and os.path.getsize(path) > 0 if os.path.exists(path) else False,
          (result.returncode, result.stdout, result.stderr))
    result = cli.run(target.address, "admin", "import", "--input", path)
    check(f"kldrift admin import of {model} into {target.name}", result.returncode == 0,
          (result.returncode, result.stdout, result.stderr))
    if result.returncode != 0:
        return
    after = comparable(cli.drift(target.address, model))
    check(f"{model}'s drift on {target.name} after the import equals its drift on {source.name}",
          after == before, (after, before))
    result = cli.run(target.address, "admin", "import", "--input", path)
    check("a second import without --replace is refused (the model exists)",
          result.returncode != 0, (result.returncode, result.stdout, result.stderr))
    result = cli.run(target.address, "admin", "import", "--input", path, "--replace")
    check("import --replace over the existing model", result.returncode == 0,
          (result.returncode, result.stdout, result.stderr))
    after = comparable(cli.drift(target.address, model))
    check("drift after import --replace still equals the source's", after == before, (after, before))
    # The hand-over's last step (README "Sharding"): the old replica forgets the model.
    cli.ok(source.address, "reference", "delete", "--model", model, "--signal", SIGNAL)
    check(f"after the delete on {source.name}, {model} is on {target.name} only",
          model not in cli.models_on(source.address) and model in cli.models_on(target.address),
          (sorted(cli.models_on(source.address)), sorted(cli.models_on(target.address))))


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    kldrift, kldriftd = sys.argv[1:3]
    nginx = sys.argv[3] if len(sys.argv) == 4 else (shutil.which("nginx") or "/usr/sbin/nginx")
    if not os.access(nginx, os.X_OK):
        print(f"FAIL nginx not found at {nginx}: run deploy/install-deps.sh (as root)",
              file=sys.stderr)
        return 1
    # ctest's timeout and Ctrl-C: stop through the finally blocks, so started servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="kldrift-shard-test-") as work:
        try:
            run_test(kldrift, kldriftd, nginx, work)
        except Exception:  # A step that cannot finish is a failure, never a skip.
            import traceback
            check("the test ran to the end", False, traceback.format_exc())
            for path in sorted(pathlib.Path(work).rglob("*.log")):
                print(f"--- {path.relative_to(work)}\n{tail(path)}", flush=True)
    elapsed = time.monotonic() - STARTED
    print(f"sharding_e2e_test: {CHECKS.count} checks, {len(CHECKS.failures)} failed, {elapsed:.1f} s")
    for f in CHECKS.failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if CHECKS.failures else 0


if __name__ == "__main__":
    sys.exit(main())
