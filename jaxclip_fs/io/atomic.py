"""Atomic writes: a reader never sees a half-written file.

Everything is written to a temporary file in the destination's directory and
moved into place with :func:`os.replace` (atomic on POSIX), so an interrupted
run leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path next to ``path``; moves it onto ``path`` on success.

    ``suffix`` is appended to the temporary name (``np.savez`` insists on
    ``.npz``). On an exception the temporary file is removed and ``path`` is
    left untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp" + suffix, dir=directory
    )
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically writes ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON (keys in insertion order)."""
    write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """Atomically writes ``arrays`` to an ``.npz`` file at ``path``."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
