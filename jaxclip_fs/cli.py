"""The ``jaxclip-fs`` command line: parses flags and dispatches to ``jaxclip_fs.commands``.

Each subcommand is a module of :mod:`jaxclip_fs.commands` (``NAME``, ``HELP``,
``DESCRIPTION``, ``add_arguments(parser)``, ``run(args)``); the work itself
lives in the packages, importable from a notebook. User errors
(:class:`~jaxclip_fs.errors.JaxclipError`) are printed as one ``error: ...``
line with exit status 2; a program that hangs
(:class:`~jaxclip_fs.errors.ProgramHang`, :mod:`~jaxclip_fs.engine.watchdog`)
likewise, with status 3 and an immediate ``os._exit``. In a multi-process run
(``run --distributed``) a process that is lost or fails stops the others with
one line and status 4 (:mod:`~jaxclip_fs.engine.hosts`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

# XLA:CPU runs its LAPACK calls (eigh: GDA, ProKeR, the ridge probe) on scipy's OpenBLAS,
# whose own threads then compete with XLA's thread pool for the same cores; on a busy
# 2-core machine that made ProKeR's demo program 15x slower (79 s -> 5.4 s with one
# thread). Set before numpy / scipy load; a user's own setting wins. (Records unchanged.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from jaxclip_fs import __version__  # noqa: E402
from jaxclip_fs.commands import (  # noqa: E402
    convert, datasets, demo, embed, evaluate, extract, methods, report, run, train_imo, validate,
)
from jaxclip_fs.errors import JaxclipError, ProgramHang  # noqa: E402

COMMANDS = (embed, convert, datasets, extract, methods, evaluate, train_imo, validate, run,
            report, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxclip-fs",
        description="Few-shot adaptation of CLIP in JAX/Flax (LDC, APE, TA++/TX++, baselines).",
    )
    parser.add_argument("--version", action="version", version=f"jaxclip-fs {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in COMMANDS:
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
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        status = args.handler(args)
    except ProgramHang as exc:
        print(f"error: {exc}", file=sys.stderr)
        _exit_now(3)  # the hung program's thread cannot be stopped
    except JaxclipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume.",
              file=sys.stderr)
        if _program_in_flight():
            _exit_now(130)  # else exit would wait for the program, or abort on its thread
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
