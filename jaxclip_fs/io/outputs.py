"""Output paths: checked before any work starts, and results that cannot be written are shown.

Every command that writes (``run --out``, ``evaluate --out``, ``report --out``)
calls :func:`check_output_dir` first (``extract --out``, a file:
:func:`check_output_file`), so a path that exists as a file (or a directory
where a file goes), a directory that cannot be written or a full disk is a one-line
:class:`~jaxclip_fs.errors.OutputError` naming the flag and the path -- before
anything is loaded or computed. A write that still fails later (the disk
filled up during the run) is raised as an ``OutputError`` naming the file
(:func:`writing`), and the caller prints what it could not write on stdout
(:func:`show_unsaved`) before failing: nothing computed is lost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from typing import Iterator

from jaxclip_fs.errors import OutputError

#: Less free space than this in an output directory is "no space" (a record is ~2 KiB, a
#: report a few hundred KiB; params and feature files more).
MIN_FREE_BYTES = 16 << 20


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
    """Checks that ``path`` is, or can be made, a writable directory with room.

    A probe file is written (and removed) in it; directories created for the
    probe are removed again, so a check that passes changes nothing.

    Args:
      path: the output directory.
      flag: what gave it, for the message (``--out``).

    Raises:
      OutputError: one line naming ``flag`` and ``path``: it exists as a file,
        a parent is a file, it cannot be written, or its disk has less than
        :data:`MIN_FREE_BYTES` free.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{flag} {path}: exists and is not a directory")
    top_missing = None  # the highest directory the probe creates
    existing = path
    while not os.path.exists(existing):
        top_missing, existing = existing, os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f"{flag} {path}: {existing} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        try:
            fd, probe = tempfile.mkstemp(prefix=".jaxclip-fs-write-check.", dir=path)
            try:
                os.write(fd, b"jaxclip-fs\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.remove(probe)
            free = shutil.disk_usage(path).free
        finally:
            if top_missing is not None:
                shutil.rmtree(top_missing, ignore_errors=True)
    except OSError as exc:
        raise OutputError(f"{flag} {path}: not writable ({_reason(exc)})") from None
    if free < MIN_FREE_BYTES:
        raise OutputError(f"{flag} {path}: no space left ({free / 2**20:.1f} MiB free, at least "
                          f"{MIN_FREE_BYTES >> 20} MiB needed)")


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Checks, before any work, that the file ``path`` can be written: it is not a
    directory, and its directory is writable with room (:func:`check_output_dir`).

    Raises:
      OutputError: one line naming ``flag`` and ``path``.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{flag} {path}: is a directory; give a file name (e.g. "
                          f"{os.path.join(path, 'features.npz')})")
    parent = os.path.dirname(path)
    try:
        check_output_dir(parent, flag)
    except OutputError as exc:
        reason = str(exc).removeprefix(f"{flag} {parent}: ")
        raise OutputError(f"{flag} {path}: cannot write ({parent}: {reason})") from None


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Turns an ``OSError`` inside the block into a one-line :class:`OutputError` naming
    ``path``."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{os.fspath(path)}: cannot write {what + ' ' if what else ''}"
                          f"({_reason(exc)})") from None


def show_unsaved(text: str, stream=None) -> None:
    """Prints results that could not be written on stdout, so nothing computed is lost."""
    print(text, file=stream or sys.stdout, flush=True)
