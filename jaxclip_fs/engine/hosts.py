"""Multi-process runs (``--distributed``): start, watch the other processes, stop together.

Every process of a run executes the same programs; their collectives (the
gather of a program's outputs, the broadcast of which cells are finished)
wait for every process. A process that dies -- killed, out of memory, its
host lost -- would leave the others waiting inside a collective, and JAX
itself only notices after its heartbeat timeout, then aborts with a C++
stack trace. This module bounds that wait and says what happened:

* :func:`start` calls ``jax.distributed.initialize`` (JAX's heartbeat timeout
  set well above ``peer_timeout``, so the check below fires first) and starts
  a :class:`PeerMonitor` thread;
* every process publishes a heartbeat in the coordination service's
  key-value store every ``peer_timeout / 10`` seconds, and reads the others';
* a process whose heartbeat stops for ``peer_timeout`` seconds, or that
  published a failure (:func:`abandon`), makes every other process print one
  line -- which process, why, how to resume -- and exit with status
  :data:`EXIT_PEER_LOST` at once (``os._exit``: a normal exit would wait for
  the lost process in JAX's shutdown barrier);
* a process that fails itself (a user error, a hung program, Ctrl-C)
  publishes its message before it exits (:func:`abandon`), so the others stop
  at their next poll with that message;
* a process that finishes waits at a barrier for the others (:func:`finish`),
  still watching them, so the end of a run is bounded too.

When process 0 itself dies, the coordination service dies with it: JAX then
aborts the other processes at once with its own message ("Terminating
process because the JAX distributed service detected fatal errors ...
another task died"), a non-zero exit within a second or so.

Finished programs are saved by process 0 as they finish, so the way back
from any of these is to start every process again with the same command.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Sequence

from jaxclip_fs.errors import ConfigError, JaxclipError, ProgramHang
from jaxclip_fs.io.console import stderr_log

#: Exit status of a process that stopped because another one was lost or failed.
EXIT_PEER_LOST = 4
#: Default ``--peer-timeout``: this long without a heartbeat from a process means it is lost.
DEFAULT_PEER_TIMEOUT = 60.0
#: JAX's own heartbeat timeout is at least this many times ``peer_timeout`` (and >= 100 s).
JAX_HEARTBEAT_FACTOR = 3
PREFIX = "jaxclip-fs/"
RESUME = "Finished programs are saved: start every process again with the same command to resume"

_monitor: "PeerMonitor | None" = None


class PeerMonitor:
    """Heartbeats in a key-value store, and the check of everyone else's (module docstring).

    Args:
      store: ``key_value_set(key, value, allow_overwrite=True)`` and
        ``key_value_dir_get(prefix) -> [(key, value)]`` (JAX's distributed client).
      me, count: this process's index and the number of processes.
      timeout: seconds without a heartbeat (or without reaching the store) that mean lost.
      on_lost: called with the one-line message (default: print it, ``os._exit(4)``).
      clock: monotonic seconds (tests substitute it).
    """

    def __init__(self, store, me: int, count: int, timeout: float, *,
                 on_lost: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.store, self.me, self.count, self.timeout = store, me, count, float(timeout)
        self.on_lost = on_lost or _exit_lost
        self.clock = clock
        self.interval = min(2.0, max(0.1, self.timeout / 10))
        self.beats = 0
        start = clock()
        # per other process: its last heartbeat value, and when it last changed
        self.seen = {p: (None, start) for p in range(count) if p != me}
        self.last_ok = start
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> str | None:
        """One heartbeat and check; returns the message when a process is lost or failed."""
        now = self.clock()
        try:
            self.beats += 1
            _set(self.store, f"{PREFIX}beat/{self.me}", str(self.beats))
            entries = dict(self.store.key_value_dir_get(PREFIX))
        except Exception as exc:  # the coordination service is unreachable
            if now - self.last_ok >= self.timeout:
                return (f"error: process {self.me} lost the coordinator (process 0) for "
                        f"{now - self.last_ok:.0f} s ({_one_line(exc)}); it stops too. {RESUME}.")
            return None
        self.last_ok = now
        for key, value in sorted(entries.items()):
            if key.startswith(f"{PREFIX}failed/"):
                who = key.rsplit("/", 1)[1]
                if who != str(self.me):
                    return (f"error: process {who} of {self.count} failed ({value}); process "
                            f"{self.me} stops too. {RESUME} (after fixing the cause).")
        for peer, (beat, since) in list(self.seen.items()):
            now_beat = entries.get(f"{PREFIX}beat/{peer}")
            if now_beat != beat:
                self.seen[peer] = (now_beat, now)
            elif now - since >= self.timeout:
                return (f"error: process {peer} of {self.count} stopped: no heartbeat for "
                        f"{now - since:.0f} s (--peer-timeout {self.timeout:g}; killed, crashed "
                        f"or its host lost); process {self.me} stops too. {RESUME}.")
        return None

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            message = self.poll()
            if message is not None and not self.stopped.is_set():
                self.on_lost(message)
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="jaxclip-fs peer monitor",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()


def _set(store, key: str, value: str) -> None:
    try:
        store.key_value_set(key, value, allow_overwrite=True)
    except TypeError:  # an older jaxlib: no overwrite flag
        try:
            store.key_value_delete(key)
        except Exception:
            pass
        store.key_value_set(key, value)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + " ...") if len(text) > 200 else (text or type(exc).__name__)


def _exit_lost(message: str) -> None:
    stderr_log(message)
    os._exit(EXIT_PEER_LOST)


def _initialize_kwargs(initialize: Callable, peer_timeout: float) -> dict:
    """JAX's heartbeat timeout well above ``peer_timeout`` (where this JAX takes one)."""
    try:
        accepted = inspect.signature(initialize).parameters
    except (TypeError, ValueError):
        return {}
    if "heartbeat_timeout_seconds" not in accepted:
        return {}
    return {"heartbeat_timeout_seconds": int(max(100, JAX_HEARTBEAT_FACTOR * peer_timeout))}


def start(coordinator: str | None = None, num_processes: int | None = None,
          process_id: int | None = None, *, peer_timeout: float = DEFAULT_PEER_TIMEOUT,
          local_device_ids: Sequence[int] | None = None,
          initialize: Callable[..., None] | None = None) -> None:
    """``jax.distributed.initialize`` and, with several processes, the :class:`PeerMonitor`.

    Raises:
      ConfigError: ``peer_timeout`` is not positive, or the processes could not
        connect (one line: the coordinator address and JAX's reason).
    """
    global _monitor
    import jax

    from jaxclip_fs.engine import sharding

    if not peer_timeout or peer_timeout <= 0:
        raise ConfigError(f"--peer-timeout must be > 0 seconds, got {peer_timeout}")
    initialize = initialize or jax.distributed.initialize
    try:
        sharding.initialize_distributed(coordinator, num_processes, process_id, local_device_ids,
                                        initialize=initialize,
                                        **_initialize_kwargs(initialize, peer_timeout))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--distributed: could not start with coordinator "
                          f"{coordinator or '(auto)'} ({_one_line(exc)})") from None
    if jax.process_count() > 1:
        from jaxclip_fs.engine.jax_compat import distributed_client

        _monitor = PeerMonitor(distributed_client(), jax.process_index(),
                               jax.process_count(), peer_timeout)
        _monitor.start()


def active() -> bool:
    """True in a multi-process run started by :func:`start` (and not yet finished)."""
    return _monitor is not None


def finish(timeout: float = 7 * 24 * 3600.0) -> None:
    """A successful end: wait for every process at a barrier (still watching them), then stop
    watching -- after this, JAX's own shutdown finds everyone there."""
    global _monitor
    if _monitor is None:
        return
    monitor, _monitor = _monitor, None
    try:
        monitor.store.wait_at_barrier(f"{PREFIX}end", int(timeout * 1000))
    except Exception as exc:
        monitor.on_lost(f"error: process {monitor.me} could not wait for the others at the end "
                        f"({_one_line(exc)}). {RESUME}.")
    monitor.stop()


def abandon(exc: BaseException) -> None:
    """A failed end of this process in a multi-process run: print the error as the CLI would,
    publish it to the other processes (which then stop too), and exit at once.

    Never returns. Statuses: 2 user error, 3 hung program, 130 Ctrl-C, 143 SIGTERM,
    :data:`EXIT_PEER_LOST` a failed collective (another process died), 1 anything else.
    """
    global _monitor
    monitor, _monitor = _monitor, None
    if monitor is not None:
        monitor.stop()  # (its checks continue here, in this thread)
    status, message = _describe(exc, monitor)
    stderr_log(message)
    if monitor is not None:
        summary = message.splitlines()[-1].removeprefix("error: ")
        try:
            _set(monitor.store, f"{PREFIX}failed/{monitor.me}", summary)
        except Exception:
            pass
        if monitor.me == 0:  # the coordination service lives here: let the others read the news
            time.sleep(min(5.0, 3 * monitor.interval))
    sys.stdout.flush()
    os._exit(status)


def _describe(exc: BaseException, monitor: PeerMonitor | None) -> tuple[int, str]:
    me = "" if monitor is None else f" (process {monitor.me})"
    if isinstance(exc, ProgramHang):
        return 3, f"error: {exc}"
    if isinstance(exc, JaxclipError):
        return 2, f"error: {exc}"
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C 130; SIGTERM (errors.Terminated) 143
        signum = getattr(exc, "signum", signal.SIGINT)
        name = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        return 128 + signum, f"interrupted{name}{me}: {RESUME}."
    if _is_collective_failure(exc):
        lost = _which_is_lost(monitor)  # usually: the peer's socket closed before its heartbeat
        return EXIT_PEER_LOST, lost or (
            f"error: a collective with the other processes failed{me} ({_one_line(exc)}): "
            f"another process stopped. {RESUME}.")
    return 1, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip() + (
        f"\nerror: unexpected {type(exc).__name__}{me}: {_one_line(exc)}")


def _which_is_lost(monitor: PeerMonitor | None) -> str | None:
    """The monitor's message once it sees which process is gone (within its timeout)."""
    if monitor is None:
        return None
    deadline = monitor.clock() + 1.5 * monitor.timeout + 2 * monitor.interval
    while monitor.clock() < deadline:
        message = monitor.poll()
        if message is not None:
            return message
        time.sleep(monitor.interval)
    return None


def _is_collective_failure(exc: BaseException) -> bool:
    text = str(exc)
    return type(exc).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and any(
        word in text for word in ("Gloo", "Connection reset", "Connection closed", "collective",
                                  "UNAVAILABLE", "peer"))


def run(work: Callable[[], Any]) -> Any:
    """``work()`` in a multi-process run: :func:`finish` after it, :func:`abandon` on any
    failure (single-process: just ``work()``)."""
    if not active():
        return work()
    try:
        result = work()
    except BaseException as exc:  # noqa: B902 -- every failure must reach the other processes
        abandon(exc)
    finish()
    return result
