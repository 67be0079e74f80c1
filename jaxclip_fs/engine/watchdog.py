"""A bounded wait for a compiled program: a hang becomes a clear error instead of a silent stall.

Waiting for a program's outputs (``jax.device_get``) happens inside XLA and
cannot be interrupted. :func:`call` therefore runs the program (dispatch and
``device_get``) in a daemon worker thread while the calling thread waits on
it, and raises :class:`~jaxclip_fs.errors.ProgramHang` when

* ``stall`` seconds pass in which the process uses no CPU (under 5 % of a core)
  -- the signature of a deadlock on an XLA:CPU backend, where computing always
  burns CPU. Checked only on a single-process CPU run: a GPU/TPU program or a
  process waiting for other hosts may rightly leave the CPU idle;
* or ``deadline`` seconds pass in all (any backend; off by default).

Why such a guard exists: jaxlib 0.10 - 0.11 can deadlock an XLA:CPU program
whose batched LAPACK calls run on as many devices as the CPU pool has threads
(:mod:`jaxclip_fs.methods.linalg`); any future bug of that kind becomes an
error naming the program, not a sweep that waits forever.

The stuck thread cannot be stopped, so the CLI exits with ``os._exit`` after
the message (:func:`jaxclip_fs.cli.main`); finished programs are already saved.
It does the same on Ctrl-C while a program is in flight (:func:`in_flight`):
a normal exit would wait for the program, or abort on its thread. The limits
come from the experiment config (``execution.stall_timeout`` /
``program_timeout``; ``jaxclip-fs run --stall-timeout/--program-timeout``).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

import jax

from jaxclip_fs.errors import ProgramHang

T = TypeVar("T")

#: Default ``stall``: this long without CPU while a CPU program is in flight is a hang.
DEFAULT_STALL_SECONDS = 300.0
#: Below this share of one core over a poll interval the process counts as idle.
BUSY_FRACTION = 0.05


_in_flight = 0
_in_flight_lock = threading.Lock()


def in_flight() -> bool:
    """True while a program started by :func:`call` in a worker thread has not returned."""
    return _in_flight > 0


def _count(step: int) -> None:
    global _in_flight
    with _in_flight_lock:
        _in_flight += step


def _stall_applies() -> bool:
    return jax.default_backend() == "cpu" and jax.process_count() == 1


def call(fn: Callable[[], T], what: str, *, stall: float | None = DEFAULT_STALL_SECONDS,
         deadline: float | None = None, cpu_clock: Callable[[], float] = time.process_time) -> T:
    """``fn()`` (a program's dispatch and ``device_get``) with a bounded wait.

    Args:
      fn: the work; its result is returned, its exception re-raised.
      what: names the program in the error (e.g. ``"gda/digits"``).
      stall, deadline: the limits in seconds (None or 0: no such limit).
      cpu_clock: the process's CPU seconds (tests substitute it).

    Raises:
      ProgramHang: a limit passed; ``fn`` is still running in its thread.
    """
    stall, deadline = stall or None, deadline or None
    if stall and not _stall_applies():
        stall = None
    if not stall and not deadline:
        return fn()

    box: dict = {}
    done = threading.Event()

    def work():
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc
        finally:
            _count(-1)
            done.set()

    _count(+1)
    threading.Thread(target=work, name=f"jaxclip-fs program {what}", daemon=True).start()
    poll = min(5.0, max(0.01, min(x for x in (stall, deadline) if x) / 20))
    started = last_busy = last_poll = time.monotonic()
    last_cpu = cpu_clock()
    while not done.wait(poll):
        now, cpu = time.monotonic(), cpu_clock()
        if cpu - last_cpu >= BUSY_FRACTION * (now - last_poll):
            last_busy = now
        last_poll, last_cpu = now, cpu
        if deadline and now - started >= deadline:
            raise ProgramHang(
                f"program {what} did not finish within {deadline:g} s (execution.program_timeout). "
                "Finished programs are saved: rerun the same command to resume.")
        if stall and now - last_busy >= stall:
            raise ProgramHang(
                f"program {what} made no progress for {stall:g} s: the process used no CPU "
                f"while waiting for it ({jax.device_count()} {jax.default_backend()} devices), "
                "so XLA is deadlocked. Finished programs are saved: rerun the same command to "
                "resume (execution.devices 1 avoids cross-device deadlocks); "
                "execution.stall_timeout "
                "changes the limit (0: off).")
    if "error" in box:
        raise box["error"]
    return box["result"]
