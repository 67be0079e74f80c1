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


def run_cli(out, cache, *, fault=None, events=None, quiet=True):
    env = subprocess_env(XLA_FLAGS="--xla_backend_optimization_level=1",
                         JAX_COMPILATION_CACHE_DIR=os.environ.get(
                             "JAXCLIP_FS_TEST_JIT_CACHE", "/tmp/jaxclip-fs-test-jit-cache"),
                         JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
    env.pop("JAXCLIP_FS_TEST_FAULT", None)
    if fault:
        env["JAXCLIP_FS_TEST_FAULT"] = fault
    if events:
        env["JAXCLIP_FS_TEST_EVENTS"] = str(events)
    argv = [sys.executable, FAULT_RUN, "run", *GRID, "--cache-dir", str(cache), "--out", str(out)]
    return subprocess.run(argv + (["--quiet"] if quiet else []), capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, cwd=REPO)


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
