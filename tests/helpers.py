"""Helpers shared by tests that run the CLI in subprocesses."""

import collections
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: What ``shutil.disk_usage`` returns (for tests that fake a full disk).
DiskUsage = collections.namedtuple("DiskUsage", "total used free")

# Runs argv[1:] without root's power to ignore file permissions (CAP_DAC_OVERRIDE and
# CAP_DAC_READ_SEARCH dropped from the bounding set, so not even exec gives them back).
_DROP_AND_EXEC = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2):
    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        sys.exit(99)
os.execv(sys.argv[1], sys.argv[1:])
"""


def subprocess_env(**extra) -> dict:
    """The test environment for a CLI subprocess: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_unprivileged(argv, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    """``argv`` with ordinary file permissions enforced, even when the tests run as root."""
    if os.geteuid() == 0:
        argv = [sys.executable, "-c", _DROP_AND_EXEC, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=kwargs.pop("env", subprocess_env()), **kwargs)
    if proc.returncode == 99 and os.geteuid() == 0:
        pytest.skip("cannot drop root's permission override here (no CAP_SETPCAP)")
    return proc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
