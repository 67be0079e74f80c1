"""``python tests/fault_run.py ARGS``: ``jaxclip-fs ARGS`` with fault points and event counting.

The tests' way to kill a run at a controlled point without hooks in the library:
this script wraps four functions of the package, then runs the CLI.

``JAXCLIP_FS_TEST_FAULT=POINT:N`` SIGKILLs the process at the N-th passage of POINT:

* ``chunk``   -- right after the N-th feature-cache chunk is saved (``ChunkedEntry.save``);
* ``program`` -- inside the N-th program, in the thread that runs it (``watchdog.call``);
* ``params``  -- right after the N-th program's params are saved, before its records;
* ``save``    -- during the N-th orbax save of params (the signal comes from another thread
  10 ms after the save started, while orbax's own threads write);
* ``report``  -- during the report, right after its N-th figure is written.

``JAXCLIP_FS_TEST_SIGNAL`` sends another signal instead of SIGKILL (``INT``: Ctrl-C,
``TERM``), or ``WAIT`` blocks at the point until the file ``<events file>.go`` exists
(a test then does something while the run holds its directory).

``JAXCLIP_FS_TEST_EVENTS=FILE`` appends one line per passage (``chunk <path>``,
``program <name>``, ``params <path>``, ``report <path>``), so a test counts what
a rerun recomputed.
"""

import os
import signal
import sys
import threading
import time

from jaxclip_fs.engine import outdir, watchdog
from jaxclip_fs.features import cache
from jaxclip_fs.io import checkpoints
from jaxclip_fs.report import write as report_write

FAULT = os.environ.get("JAXCLIP_FS_TEST_FAULT", "")
EVENTS = os.environ.get("JAXCLIP_FS_TEST_EVENTS")
counts: dict = {}


def passage(point: str, detail: str) -> bool:
    """Records a passage; True when this one is the fault's."""
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(f"{point} {detail}\n")
    counts[point] = counts.get(point, 0) + 1
    name, _, nth = FAULT.partition(":")
    return name == point and counts[point] == int(nth or 1)


SIGNAL = os.environ.get("JAXCLIP_FS_TEST_SIGNAL", "KILL")


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if SIGNAL == "WAIT":
        while not os.path.exists(f"{EVENTS}.go"):
            time.sleep(0.05)
        return
    os.kill(os.getpid(), getattr(signal, "SIG" + SIGNAL))
    time.sleep(30)  # (the handler exits; a signal handled elsewhere would show as a timeout)


real_save = cache.ChunkedEntry.save


def save_chunk(self, chunk, arrays):
    real_save(self, chunk, arrays)
    if passage("chunk", self.path(chunk)):
        die()


real_call = watchdog.call


def call(fn, what, **limits):
    if passage("program", what):
        if SIGNAL == "WAIT":
            die()  # (returns when told)
            return real_call(fn, what, **limits)
        return real_call(die, what, **limits)  # dies in the program's thread
    return real_call(fn, what, **limits)


real_save_params = outdir.save_params


def save_params(out_dir, program, tree, slots):
    path = real_save_params(out_dir, program, tree, slots)
    if passage("params", path):
        die()
    return path


real_checkpointer = checkpoints._checkpointer


class SignalledSave:
    """Orbax's checkpointer, its ``save`` signalled from another thread while it runs."""

    def __init__(self):
        self.inner = real_checkpointer()

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def save(self, *args, **kwargs):
        if passage("save", str(args[0])):
            threading.Timer(0.01, die).start()
        return self.inner.save(*args, **kwargs)

    def wait_until_finished(self):
        return self.inner.wait_until_finished()


real_plot = report_write.plot_curves


def plot_curves(table, path, **kwargs):
    real_plot(table, path, **kwargs)
    if passage("report", os.path.basename(path)):
        die()


checkpoints._checkpointer = SignalledSave
cache.ChunkedEntry.save = save_chunk
watchdog.call = call
outdir.save_params = save_params
report_write.plot_curves = plot_curves

if __name__ == "__main__":
    from jaxclip_fs import cli

    sys.exit(cli.main(sys.argv[1:]))
