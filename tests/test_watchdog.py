"""engine.watchdog: a program's wait is bounded; a deadlock (no CPU used) becomes ProgramHang."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from jaxclip_fs.engine import watchdog
from jaxclip_fs.errors import ProgramHang


def test_result_and_exception_pass_through():
    assert watchdog.call(lambda: 41 + 1, "p", stall=5, deadline=5) == 42
    with pytest.raises(KeyError, match="boom"):
        watchdog.call(lambda: {}["boom"], "p", stall=5)
    assert watchdog.call(lambda: 1, "p", stall=0, deadline=0) == 1  # no limits: called in place


def test_idle_wait_is_a_stall_but_busy_work_is_not():
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(ProgramHang, match=r"program gda/digits made no progress for 0.5 s"):
        watchdog.call(release.wait, "gda/digits", stall=0.5)  # waits, uses no CPU
    assert time.monotonic() - started < 5
    release.set()

    def spin(seconds=2.0):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return "done"

    assert watchdog.call(spin, "busy", stall=0.5) == "done"


def test_deadline():
    release = threading.Event()
    with pytest.raises(ProgramHang, match="did not finish within 0.2 s"):
        watchdog.call(release.wait, "slow", stall=0, deadline=0.2,
                      cpu_clock=lambda: time.monotonic())  # counts as busy: only the deadline
    release.set()


def test_cli_exits_3_with_the_message_when_a_program_hangs(tmp_path):
    """A program that never finishes stops `run` with status 3 and one error line (the real
    deadlock of jaxlib's batched LAPACK calls is avoided by methods/linalg.py; see its test)."""
    script = textwrap.dedent("""
        import threading
        from jaxclip_fs import cli
        from jaxclip_fs.engine import feature_program, watchdog
        def run_program(method, batch, *, name, limits, **kwargs):
            return watchdog.call(threading.Event().wait, name, **limits)  # never returns
        feature_program.run_program = run_program
        from jaxclip_fs.features import featfile
        from jaxclip_fs.features.synthetic import make_task
        featfile.save("f.npz", make_task(0, num_classes=3, dim=8, shots=2, views=2,
                                         val_per_class=2, test_per_class=2, dataset="dtd"))
        cli.main(["run", "--features", "f.npz", "--method", "gda", "--shots", "1", "--seeds", "1",
                  "--out", "out", "--stall-timeout", "0.5", "--quiet"])
        print("not reached")
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 3, done.stderr
    assert "error: program gda/dtd made no progress for 0.5 s" in done.stderr
    assert "not reached" not in done.stdout


def test_in_flight_while_the_worker_runs():
    release, entered = threading.Event(), threading.Event()
    box = {}

    def work():
        entered.set()
        release.wait()
        return "ok"

    waiter = threading.Thread(target=lambda: box.update(r=watchdog.call(work, "p", stall=60)))
    waiter.start()
    assert entered.wait(10) and watchdog.in_flight()
    release.set()
    waiter.join(10)
    assert box["r"] == "ok" and not watchdog.in_flight()
