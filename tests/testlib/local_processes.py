"""Helpers for tests that run real servers (kldriftd, nginx, Prometheus, Alertmanager) on loopback.

Standard library only; import with the tests/testlib folder on sys.path.
"""

import ctypes
import signal
import socket
import subprocess

STOP_TIMEOUT_S = 10


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parent_death_signal(sig):
    """A Popen preexec_fn: the child gets `sig` when the test process dies, even by SIGKILL
    (a ctest timeout), so no server outlives its test."""
    def set_signal():
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, sig)
    return set_signal


def stop_process(process, first_signal=signal.SIGTERM):
    """`first_signal`, then SIGKILL if it has not exited within STOP_TIMEOUT_S; nothing if not
    running."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(first_signal)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


class Checks:
    """Named assertions that keep going: each prints "ok" or "FAIL" as it runs, and the failures
    are listed at the end, so one run reports every broken thing rather than the first."""

    def __init__(self):
        self.count = 0
        self.failures = []

    def check(self, name, condition, detail=""):
        self.count += 1
        if condition:
            print(f"ok   {name}", flush=True)
        else:
            print(f"FAIL {name}: {detail}", flush=True)
            self.failures.append(f"{name}: {detail}")
        return condition
