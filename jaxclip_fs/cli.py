"""The ``jaxclip-fs`` command line: parses flags and dispatches to ``jaxclip_fs.commands``.

Each subcommand is a module of :mod:`jaxclip_fs.commands` (``NAME``, ``HELP``,
``DESCRIPTION``, ``add_arguments(parser)``, ``run(args)``); the work itself
lives in the packages, importable from a notebook. User errors
(:class:`~jaxclip_fs.errors.JaxclipError`) are printed as one ``error: ...``
line with exit status 2, the config fields they name written as the flags
that set them (``execution.devices`` -> ``--devices``); a program that hangs
(:class:`~jaxclip_fs.errors.ProgramHang`, :mod:`~jaxclip_fs.engine.watchdog`)
likewise, with status 3 and an immediate ``os._exit``. In a multi-process run
(``run --distributed``) a process that is lost or fails stops the others with
one line and status 4 (:mod:`~jaxclip_fs.engine.hosts`). JAX asked for a
platform this machine lacks (``JAX_PLATFORMS=cuda`` on a CPU) is one line
naming it and the platforms there are.

Signals: Ctrl-C (SIGINT) and SIGTERM -- from the first moment, as the
commands are imported only after the handlers are in place -- print one line
and exit with status 130 / 143 at once (``os._exit``: neither the threads still
inside XLA nor orbax's background savers get to print tracebacks or crash
the interpreter's shutdown). Finished work is on disk already (every file is
written atomically, records as each program finishes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Iterator, Sequence

# XLA:CPU runs its LAPACK calls (eigh: GDA, ProKeR, the ridge probe) on scipy's OpenBLAS,
# whose own threads then compete with XLA's thread pool for the same cores; on a busy
# 2-core machine that made ProKeR's demo program 15x slower (79 s -> 5.4 s with one
# thread). Set before numpy / scipy load; a user's own setting wins. (Records unchanged.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from jaxclip_fs import __version__  # noqa: E402
from jaxclip_fs.errors import JaxclipError, ProgramHang, Terminated  # noqa: E402

RESUME = "finished work is saved; rerun the same command to resume."


def build_parser() -> argparse.ArgumentParser:
    from jaxclip_fs.commands import (
        convert, datasets, demo, embed, evaluate, extract, methods, report, run, train_imo,
        validate,
    )

    parser = argparse.ArgumentParser(
        prog="jaxclip-fs",
        description="Few-shot adaptation of CLIP in JAX/Flax (LDC, APE, TA++/TX++, baselines).",
    )
    parser.add_argument("--version", action="version", version=f"jaxclip-fs {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in (embed, convert, datasets, extract, methods, evaluate, train_imo, validate, run,
                   report, demo):
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.DESCRIPTION,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def _program_in_flight() -> bool:
    watchdog = sys.modules.get("jaxclip_fs.engine.watchdog")  # (not loaded: nothing ran)
    return bool(watchdog and watchdog.in_flight())


def _exit_now(status: int) -> None:
    """Exits at once (``os._exit``), not waiting for threads still inside XLA."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(status)


def _on_signal(signum, frame) -> None:
    """Ctrl-C / SIGTERM: one line, then exit at once with 128 + signum.

    Not an exception: a handler's exception can land where Python swallows it
    (a garbage-collection callback inside an import, a ``__del__``), and
    unwinding runs into threads still inside XLA or orbax. Every file is
    written atomically, so what is finished is on disk and what was half-written
    is a hidden temporary file (removed by the next run into the directory).
    In a multi-process run the other processes are told first
    (:func:`~jaxclip_fs.engine.hosts.abandon`).
    """
    del frame
    exc = KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
    hosts = sys.modules.get("jaxclip_fs.engine.hosts")
    if hosts is not None and hosts.active():
        hosts.abandon(exc)  # (never returns)
    with contextlib.suppress(Exception):  # (stderr may be mid-write: exit all the same)
        print(_interrupted(exc), file=sys.stderr)
    _exit_now(128 + signum)


def _interrupted(exc: KeyboardInterrupt) -> str:
    signum = getattr(exc, "signum", signal.SIGINT)
    name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
    return f"interrupted{name}: {RESUME}"


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGINT and SIGTERM handled by :func:`_on_signal` (main thread only), then restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in wanted}
    for s in wanted:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    with _signals():
        try:
            args = build_parser().parse_args(argv)
            args.argv = argv
            status = args.handler(args)
        except ProgramHang as exc:
            print(f"error: {_for_the_user(exc, args)}", file=sys.stderr)
            _exit_now(3)  # the hung program's thread cannot be stopped
        except JaxclipError as exc:
            print(f"error: {_for_the_user(exc, args)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:  # (raised by code, not by a signal: _on_signal)
            print(_interrupted(exc), file=sys.stderr)
            status = 128 + getattr(exc, "signum", signal.SIGINT)
            if _program_in_flight():
                _exit_now(status)  # else exit would wait for the program, or abort on its thread
            return status
        except (AssertionError, RuntimeError):
            problem = _platform_problem()
            if problem is None:
                raise
            print(f"error: {problem}", file=sys.stderr)
            return 2
    return int(status or 0)


def _for_the_user(exc: Exception, args) -> str:
    """A library error as the user typed it: the config fields it names (``extraction.views``)
    written as their flags (``--views``); with ``--config FILE``, only those whose flag is on
    the command line (the others are FILE's keys)."""
    from jaxclip_fs.commands import flags

    if getattr(args, "config", None):
        return flags.to_flags(str(exc), only=flags.given_flags(args.argv))
    return flags.to_flags(str(exc))


def _platform_problem() -> str | None:
    """The one-line reason when JAX could not start the platform it was asked for."""
    if "jax" not in sys.modules:
        return None
    from jaxclip_fs.commands.common import platform_problem

    return platform_problem()


if __name__ == "__main__":
    sys.exit(main())
