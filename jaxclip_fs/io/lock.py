"""One writer per directory: an advisory lock on ``DIR/.lock``.

Two runs into one directory would both compute every cell and overwrite each
other's manifest. :class:`DirectoryLock` takes ``fcntl.flock`` (exclusive) on
``DIR/.lock`` and writes who holds it (pid, host, command, since when) into
the file; a second process stops with one line naming the holder, or waits
for it (``wait=True``). The kernel drops the lock when its holder exits, however
it exits, so a crashed run never leaves the directory locked (the file stays,
unlocked). Where the file system does not support locks, the run goes on
after a warning.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
from typing import Callable, Sequence

from jaxclip_fs.errors import OutputError

LOCK_FILE = ".lock"


def _holder(path: str) -> str:
    """Who holds the lock, from the lock file (best effort: it may be half-written)."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        command = " ".join(str(a) for a in info.get("argv", []))
        return (f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"
                + (f": {command}" if command else ""))
    except (OSError, ValueError, AttributeError):
        return "another process"


class DirectoryLock:
    """An exclusive advisory lock on ``directory`` (module docstring).

    Args:
      directory: the directory (created if missing).
      wait: wait for the holder to finish instead of failing.
      log: one-line messages (waiting, locks unsupported).
      argv: the holder's command line, shown to the processes it stops (default: sys.argv).
    """

    def __init__(self, directory: str | os.PathLike, *, wait: bool = False,
                 log: Callable[[str], None] | None = None, argv: Sequence[str] | None = None):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)
        self.wait = wait
        self.log = log or (lambda message: None)
        self.argv = ["jaxclip-fs", *(sys.argv[1:] if argv is None else argv)]
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
          OutputError: another process holds it (names it) and ``wait`` is off, or the
            lock file cannot be opened.
        """
        if self._fd is not None:
            return
        os.makedirs(self.directory, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot open the lock file "
                              f"({exc.strerror or exc})") from None
        try:
            self._lock(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since,
                           "argv": self.argv})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (info + "\n").encode(), 0)
        except OSError:
            pass  # (who holds it is a courtesy; the lock is what counts)

    def _lock(self, fd: int) -> None:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            self.log(f"warning: {self.directory}: the file system does not support locks; "
                     "make sure no other run writes into this directory")
            return
        holder = _holder(self.path)
        if not self.wait:
            raise OutputError(f"{self.directory} is in use by another run ({holder}): wait for "
                              "it to finish (or pass --wait-lock), or use another --out")
        self.log(f"waiting for the run using {self.directory} ({holder}) to finish")
        fcntl.flock(fd, fcntl.LOCK_EX)

    def release(self) -> None:
        """Releases the lock (the file stays)."""
        if self._fd is None:
            return
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
