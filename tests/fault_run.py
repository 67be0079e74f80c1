"""``python tests/fault_run.py ARGS``: ``jaxclip-fs ARGS`` with fault points and event counting.

The tests' way to kill a run at a controlled point without hooks in the library:
this script wraps four functions of the package, then runs the CLI.

``JAXCLIP_FS_TEST_FAULT=POINT:N`` SIGKILLs the process at the N-th passage of POINT:

* ``chunk``   -- right after the N-th feature-cache chunk is saved (``ChunkedEntry.save``);
* ``program`` -- inside the N-th program, in the thread that runs it (``watchdog.call``);
* ``params``  -- right after the N-th program's params are saved, before its records;
* ``report``  -- during the report, right after its N-th figure is written.

``JAXCLIP_FS_TEST_EVENTS=FILE`` appends one line per passage (``chunk <path>``,
``program <name>``, ``params <path>``, ``report <path>``), so a test counts what
a rerun recomputed.
"""

import os
import signal
import sys

from jaxclip_fs.engine import outdir, watchdog
from jaxclip_fs.features import cache
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


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


real_save = cache.ChunkedEntry.save


def save_chunk(self, chunk, arrays):
    real_save(self, chunk, arrays)
    if passage("chunk", self.path(chunk)):
        die()


real_call = watchdog.call


def call(fn, what, **limits):
    if passage("program", what):
        return real_call(die, what, **limits)  # dies in the program's thread
    return real_call(fn, what, **limits)


real_save_params = outdir.save_params


def save_params(out_dir, program, tree, slots):
    path = real_save_params(out_dir, program, tree, slots)
    if passage("params", path):
        die()
    return path


real_plot = report_write.plot_curves


def plot_curves(table, path, **kwargs):
    real_plot(table, path, **kwargs)
    if passage("report", os.path.basename(path)):
        die()


cache.ChunkedEntry.save = save_chunk
watchdog.call = call
outdir.save_params = save_params
report_write.plot_curves = plot_curves

if __name__ == "__main__":
    from jaxclip_fs import cli

    sys.exit(cli.main(sys.argv[1:]))
