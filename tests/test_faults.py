"""A run SIGKILLed at each stage resumes: the rerun finishes, recomputes only what was lost
(counted), and its records equal an uninterrupted run's.

The runs are real CLI subprocesses (``tests/fault_run.py`` kills them at a named point):
feature extraction into the chunked cache, inside a program, between a program's params and
its records, and during the report. Tiny CLIP with random weights on the built-in digits.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, subprocess_env
from test_sweep import assert_same_records, read_records

pytestmark = pytest.mark.slow

FAULT_RUN = os.path.join(REPO, "tests", "fault_run.py")
#: Two programs of two cells each: training-free Tip-Adapter, then Tip-Adapter-F (trains,
#: so it saves params).
GRID = ["--dataset", "digits", "--backbone", "tiny-vit", "--weights", "random", "--views", "1",
        "--method", "tip_adapter,tip_adapter_f", "--shots", "1,2", "--seeds", "1",
        "--hp", "tip_adapter_f.epochs=2"]
CELLS = 4
TIMEOUT = 240  # seconds a run may take (a few on an idle machine)


def cli_process(out, cache, *, fault=None, events=None, quiet=True, sig=None, start=False):
    """The run (``tests/fault_run.py``) with ``fault`` (``POINT:N``) sending ``sig`` (default
    SIGKILL; ``WAIT``: block there); finished, or started (``start``: a ``Popen``)."""
    env = subprocess_env(XLA_FLAGS="--xla_backend_optimization_level=1",
                         JAX_COMPILATION_CACHE_DIR=os.environ.get(
                             "JAXCLIP_FS_TEST_JIT_CACHE", "/tmp/jaxclip-fs-test-jit-cache"),
                         JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
    for name in ("JAXCLIP_FS_TEST_FAULT", "JAXCLIP_FS_TEST_SIGNAL"):
        env.pop(name, None)
    if fault:
        env["JAXCLIP_FS_TEST_FAULT"] = fault
    if sig:
        env["JAXCLIP_FS_TEST_SIGNAL"] = sig
    if events:
        env["JAXCLIP_FS_TEST_EVENTS"] = str(events)
    argv = [sys.executable, FAULT_RUN, "run", *GRID, "--cache-dir", str(cache), "--out", str(out)]
    argv += ["--quiet"] if quiet else []
    if start:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=REPO)
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=REPO)


run_cli = cli_process


def events_of(path, point):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split(" ", 1)[1].strip() for line in f if line.startswith(point + " ")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (progress bars on, stderr to a pipe) and its records."""
    root = tmp_path_factory.mktemp("reference")
    proc = run_cli(root / "run", root / "cache", events=root / "events", quiet=False)
    assert proc.returncode == 0, proc.stderr
    return {"records": read_records(str(root / "run")), "stderr": proc.stderr,
            "chunks": events_of(root / "events", "chunk"), "dir": root / "run"}


def test_reference_run_and_plain_progress_off_a_terminal(reference):
    assert len(reference["records"]) == CELLS and len(reference["chunks"]) >= 2
    err = reference["stderr"]
    assert "programs: 2/2" in err  # the progress lines are there, as plain lines
    assert "\x1b" not in err and "\r" not in err  # no ANSI escapes, no carriage returns


def _killed(proc):
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def test_killed_while_writing_feature_chunks(reference, tmp_path):
    events = tmp_path / "events"
    _killed(run_cli(tmp_path / "run", tmp_path / "cache", fault="chunk:2", events=events))
    saved = events_of(events, "chunk")
    assert len(saved) == 2 and all(os.path.exists(p) for p in saved)
    os.remove(events)
    rerun = run_cli(tmp_path / "run", tmp_path / "cache", events=events)
    assert rerun.returncode == 0, rerun.stderr
    again = events_of(events, "chunk")
    assert not set(again) & set(saved)  # the two saved chunks were loaded, not recomputed
    within = lambda paths, cache: sorted(os.path.relpath(p, cache) for p in paths)  # noqa: E731
    assert within(again + saved, tmp_path / "cache") == \
        within(reference["chunks"], reference["dir"].parent / "cache")  # nothing else was lost
    assert_same_records(read_records(str(tmp_path / "run")), reference["records"])


@pytest.mark.parametrize("fault, redone", [
    ("program:2", ["tip_adapter_f/digits"]),  # inside Tip-Adapter-F's program
    ("params:1", ["tip_adapter_f/digits"]),  # its params saved, its records not yet written
])
def test_killed_in_a_program_or_before_its_records(reference, tmp_path, fault, redone):
    events = tmp_path / "events"
    cache = reference["dir"].parent / "cache"  # (extracted features: the reference's cache)
    _killed(run_cli(tmp_path / "run", cache, fault=fault, events=events))
    assert len(read_records(str(tmp_path / "run"))) == 2  # Tip-Adapter's cells are finished
    os.remove(events)
    rerun = run_cli(tmp_path / "run", cache, events=events)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming: 2 of 4 cells already finished" in rerun.stderr
    assert "computed 2 cells in 1 programs (2 already finished)" in rerun.stderr
    assert events_of(events, "program") == redone  # finished programs are not run again
    assert events_of(events, "chunk") == []  # features: the run directory's copy
    assert_same_records(read_records(str(tmp_path / "run")), reference["records"])


def test_killed_during_the_report(reference, tmp_path):
    events = tmp_path / "events"
    out = tmp_path / "run"
    cache = reference["dir"].parent / "cache"
    _killed(run_cli(out, cache, fault="report:1", events=events))
    assert len(read_records(str(out))) == CELLS
    os.remove(events)
    rerun = run_cli(out, cache, events=events)
    assert rerun.returncode == 0, rerun.stderr
    assert f"all {CELLS} cells already have records: nothing to compute" in rerun.stderr
    assert events_of(events, "program") == []
    assert events_of(events, "report") == ["accuracy_vs_shots_digits.png"]
    assert_same_records(read_records(str(out)), reference["records"])
    with open(out / "report" / "report.md") as f, \
            open(reference["dir"] / "report" / "report.md") as g:
        assert f.read().replace(str(out), "DIR") == g.read().replace(str(reference["dir"]), "DIR")


INTERRUPTED = "finished work is saved; rerun the same command to resume."


def _one_line_interruption(proc, status, name=""):
    """The process ended with ``status`` and a single line saying so: no traceback (orbax's
    background savers, XLA's threads), no crash."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, (proc.returncode, proc.stderr[-3000:])
    assert lines[-1] == f"interrupted{name}: {INTERRUPTED}", lines[-5:]
    assert not any("Traceback" in line or "Error" in line for line in lines), proc.stderr[-3000:]


@pytest.mark.parametrize("sig, status, name", [("INT", 130, ""), ("TERM", 143, " (SIGTERM)")])
def test_a_signal_during_a_params_save_is_one_line_and_the_rerun_resumes(
        reference, tmp_path, sig, status, name):
    cache = reference["dir"].parent / "cache"
    out = tmp_path / "run"
    _one_line_interruption(run_cli(out, cache, fault="save:1", sig=sig), status, name)
    assert len(read_records(str(out))) == 2  # Tip-Adapter's cells, finished before
    rerun = run_cli(out, cache)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming: 2 of 4 cells already finished" in rerun.stderr
    assert not [p for p in out.rglob(".*") if p.name != ".lock"]  # no temporary leftovers
    assert_same_records(read_records(str(out)), reference["records"])


def test_sigterm_inside_a_program_is_one_line_143_and_keeps_finished_work(reference, tmp_path):
    cache = reference["dir"].parent / "cache"
    out = tmp_path / "run"
    _one_line_interruption(run_cli(out, cache, fault="program:2", sig="TERM"), 143,
                           " (SIGTERM)")
    assert len(read_records(str(out))) == 2


@pytest.mark.parametrize("after", [0.5, 1.0, 2.0])
def test_an_early_ctrl_c_is_one_line(reference, tmp_path, after):
    """Ctrl-C while the package, JAX and its backend are still starting, or compiling (the
    real command: its handlers are in place before anything is imported)."""
    argv = [sys.executable, "-m", "jaxclip_fs.cli", "run", *GRID, "--cache-dir",
            str(reference["dir"].parent / "cache"), "--out", str(tmp_path / "run"), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(), cwd=REPO)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    _one_line_interruption(subprocess.CompletedProcess(proc.args, proc.returncode, stdout,
                                                       stderr), 130)


def test_a_second_run_into_a_directory_in_use_stops_naming_the_first(reference, tmp_path):
    cache = reference["dir"].parent / "cache"
    out, events = tmp_path / "run", tmp_path / "events"
    first = run_cli(out, cache, fault="program:1", sig="WAIT", events=events, start=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not events_of(events, "program") and time.monotonic() < deadline:
            time.sleep(0.1)  # the first run is inside its first program, holding DIR
        second = run_cli(out, cache)
        assert second.returncode == 2, second.stderr
        (line,) = [x for x in second.stderr.splitlines() if x.startswith("error")]
        assert f"{out} is in use by another run (pid {first.pid} on " in line
        assert "--wait-lock" in line and "--cache-dir" in line  # (the first's command)
    finally:
        open(f"{events}.go", "w").close()
        stdout, stderr = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, stderr
    assert_same_records(read_records(str(out)), reference["records"])
