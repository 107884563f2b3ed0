#!/usr/bin/python3
"""Runs the README's walkthrough, verbatim, against a real kldriftd on a loopback port.

Usage: readme_test.py README.md KLDRIFTD KLDRIFT

The block after the `<!-- readme-walkthrough -->` marker is run with bash -euo pipefail, exactly as
a newcomer would paste it, in an empty folder, with the kldrift binary's folder on PATH and
KLDRIFT_SERVER pointing at a kldriftd this script starts (port 0, port file). Bounded in time.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

MARKER = "<!-- readme-walkthrough -->"
failures = []
checks = 0


def check(name, condition, detail=""):
    global checks
    checks += 1
    if not condition:
        failures.append(f"{name}: {detail}")


def walkthrough(readme_path):
    text = open(readme_path, encoding="utf-8").read()
    after = text.split(MARKER, 1)[1]
    block = after.split("```sh\n", 1)[1].split("\n```", 1)[0]
    return block


def main():
    readme, kldriftd, kldrift = sys.argv[1:4]
    block = walkthrough(readme)
    check("walkthrough found", "kldrift reference put" in block, block[:200])
    with tempfile.TemporaryDirectory() as work:
        port_file = os.path.join(work, "port")
        log = open(os.path.join(work, "kldriftd.log"), "w")
        server = subprocess.Popen(
            [kldriftd, "--listen", "127.0.0.1:0", "--port-file", port_file,
             "--metrics-listen", "127.0.0.1:0", "--eval-interval",
             "200ms", "--shutdown-grace", "1s", "--data-dir", os.path.join(work, "data")],
            stdout=log, stderr=log)
        try:
            deadline = time.time() + 20
            while not os.path.exists(port_file) and time.time() < deadline:
                time.sleep(0.05)
            port = int(open(port_file).read())
            env = dict(os.environ, KLDRIFT_SERVER=f"127.0.0.1:{port}",
                       PATH=os.path.dirname(os.path.abspath(kldrift)) + ":" + os.environ["PATH"])
            run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env,
                                 capture_output=True, text=True, timeout=120)
            check("walkthrough exits 0", run.returncode == 0,
                  f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}")
            out = run.stdout
            check("reference put prints version 1", "1" in out.splitlines()[0] if out else False, out[:200])
            check("drift table names the measures", "kl_current_reference" in out, out[:500])
            json_docs = []
            for line in out.splitlines():
                line = line.strip()
                if line.startswith("{"):
                    try:
                        json_docs.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
            windows = [d for d in json_docs if d.get("window") == "5m"]
            check("drift --window 5m --json is one object for 5m", len(windows) >= 1, out[-2000:])
            if windows:
                # 1000 counts from --counts plus 4 raw values (NaN counted in its bucket).
                check("5m window holds both ingests", windows[0].get("samples") == 1004,
                      windows[0])
            watched = [d for d in json_docs if "alert_state" in d and d.get("stream", {})]
            check("watch printed reports", len(watched) >= 2 or out.count("alert_state") >= 3,
                  out[-2000:])
            check("list shows the model", "fraud-scorer" in out, out[:500])
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                code = None
            check("kldriftd exits 0 on SIGTERM", code == 0, f"exit {code}")
    for failure in failures:
        print("FAIL", failure)
    print(f"readme walkthrough: {checks - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
