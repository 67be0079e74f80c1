"""Real multi-process runs: 2 processes x 2 CPU devices on 127.0.0.1 (jax.distributed, gloo).

* feature methods and LDC: the records of two processes equal those of one;
* one process killed: the other exits non-zero with a one-line message within a bounded time
  (the heartbeat check of engine/hosts.py), and starting both again resumes;
* process 0 (the coordinator) killed: JAX stops the other one at once.

Every process is a CLI subprocess (tests/fault_run.py for the kills) with a hard timeout; ports
are chosen free. Tiny CLIP with random weights on the built-in digits.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, free_port, subprocess_env
from test_sweep import assert_same_records, read_records

pytestmark = pytest.mark.slow

FAULT_RUN = os.path.join(REPO, "tests", "fault_run.py")
FEATURE_GRID = ["--dataset", "digits", "--backbone", "tiny-vit", "--weights", "random",
                "--views", "1", "--method", "tip_adapter,gda", "--shots", "1,2", "--seeds", "1,2"]
LDC_GRID = ["--dataset", "digits", "--backbone", "tiny-vit", "--weights", "random", "--views", "1",
            "--method", "ldc", "--shots", "1", "--seeds", "1,2", "--hp", "epochs=1",
            "batch_size=16"]
PEER_TIMEOUT = 20  # seconds without a heartbeat that mean a process is lost (loaded CI: room)
TIMEOUT = 300  # a hard limit on every process of these tests


def _env(devices, fault=None):
    env = subprocess_env(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                  "--xla_backend_optimization_level=1",
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAXCLIP_FS_TEST_JIT_CACHE",
                                                 "/tmp/jaxclip-fs-test-jit-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
    env.pop("JAXCLIP_FS_TEST_FAULT", None)
    if fault:
        env["JAXCLIP_FS_TEST_FAULT"] = fault
    return env


def _argv(grid, out, cache):
    return [sys.executable, FAULT_RUN, "run", *grid, "--out", str(out), "--cache-dir", str(cache),
            "--quiet", "--no-report"]


def one_process(grid, out, cache, devices=2):
    proc = subprocess.run(_argv(grid, out, cache), capture_output=True, text=True,
                          timeout=TIMEOUT, env=_env(devices), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def two_processes(grid, out, cache, faults=(None, None)):
    """Both processes of a 2 x 2-device run; ``[(returncode, stderr, seconds)]`` per process.

    Each is waited for with the hard timeout; a process still running then is killed (and the
    test fails on its status)."""
    port = free_port()
    procs, started = [], time.monotonic()
    for i in range(2):
        argv = _argv(grid, out, cache) + [
            "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
            "--process-id", str(i), "--peer-timeout", str(PEER_TIMEOUT)]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=_env(2, faults[i]), cwd=REPO))
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(1.0, TIMEOUT - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        results.append((proc.returncode, err, time.monotonic() - started))
    return results


def _succeeded(results):
    for i, (code, err, _) in enumerate(results):
        assert code == 0, f"process {i}: status {code}\n{err[-3000:]}"


@pytest.fixture(scope="module")
def feature_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_process")
    one_process(FEATURE_GRID, root / "run", root / "cache")
    return read_records(str(root / "run")), root / "cache"


def test_two_processes_give_the_records_of_one(feature_reference, tmp_path):
    expected, _ = feature_reference
    out = tmp_path / "run"
    results = two_processes(FEATURE_GRID, out, tmp_path / "cache")  # (each process extracts)
    _succeeded(results)
    found = read_records(str(out))
    assert_same_records(found, expected)
    assert {r["devices"] for r in found.values()} == {4}  # 2 processes x 2 devices
    assert "8 cells in 2 programs on 4 cpu device(s)" in results[1][1]


def test_a_killed_process_stops_the_other_in_bounded_time_and_a_rerun_resumes(
        feature_reference, tmp_path):
    expected, cache = feature_reference
    out = tmp_path / "run"
    # process 1 dies inside the second program; process 0 waits for it in that program
    results = two_processes(FEATURE_GRID, out, cache, faults=(None, "program:2"))
    (code0, err0, seconds0), (code1, _, _) = results
    assert code1 == -signal.SIGKILL
    assert code0 == 4, err0[-3000:]
    last = err0.strip().splitlines()[-1]
    assert last.startswith("error: process 1 of 2 stopped: no heartbeat for"), last
    assert "start every process again with the same command to resume" in last
    assert seconds0 < TIMEOUT / 2  # bounded: the peer timeout, not a hang
    finished = read_records(str(out))
    assert len(finished) == 4  # the first program's cells, written by process 0

    results = two_processes(FEATURE_GRID, out, cache)
    _succeeded(results)
    assert "resuming: 4 of 8 cells already finished" in results[0][1]
    assert "computed 4 cells in 1 programs (4 already finished)" in results[0][1]
    assert_same_records(read_records(str(out)), expected)


def test_the_coordinator_killed_stops_the_other_at_once(feature_reference, tmp_path):
    _, cache = feature_reference
    results = two_processes(FEATURE_GRID, tmp_path / "run", cache, faults=("program:1", None))
    (code0, _, _), (code1, err1, seconds1) = results
    assert code0 == -signal.SIGKILL
    assert code1 not in (0, None) and seconds1 < TIMEOUT / 2, (code1, err1[-3000:])
    # JAX's own message (it stops the process as soon as the coordination service is gone), or
    # ours, should a JAX version leave that to the heartbeat check
    assert "another task died" in err1 or "lost the coordinator (process 0)" in err1, err1[-3000:]


def test_ldc_across_two_processes_gives_the_records_of_one(tmp_path):
    one_process(LDC_GRID, tmp_path / "one", tmp_path / "cache")
    results = two_processes(LDC_GRID, tmp_path / "two", tmp_path / "cache")
    _succeeded(results)
    one, two = read_records(str(tmp_path / "one")), read_records(str(tmp_path / "two"))
    assert_same_records(two, one)
    # the fit ran on one device of each process (2 tasks), not on process 0's two devices
    assert {r["input_details"]["devices"] for r in two.values()} == {2}
