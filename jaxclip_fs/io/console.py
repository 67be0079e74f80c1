"""Messages and progress bars on stderr.

On a terminal, progress is a tqdm bar. When stderr is not a terminal (a log
file, a batch job), bars write no ANSI escapes or carriage returns: a plain
line ``desc: n/total`` at most every :data:`PLAIN_EVERY_SECONDS` and at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any


PLAIN_EVERY_SECONDS = 30.0


def stderr_log(message: str) -> None:
    """The default ``log``: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """A tqdm-like counter that prints plain lines (no escapes) every so often."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, disable: bool = False, stream=None, **unused: Any):
        del unused
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.disable = disable
        self.stream = sys.stderr if stream is None else stream
        self._last = time.monotonic()
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.disable and time.monotonic() - self._last >= PLAIN_EVERY_SECONDS:
            self._print()

    def set_postfix_str(self, text: str) -> None:
        self._postfix = text

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _print(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        extra = f" ({self._postfix})" if self._postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}{extra}", file=self.stream, flush=True)
        self._last = time.monotonic()

    def close(self) -> None:
        if not self.disable and self.n:
            self._print()
        self.disable = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress_bar(total: int | None = None, *, desc: str = "", unit: str = "it",
                 disable: bool = False, **options: Any):
    """A progress bar on stderr: tqdm on a terminal, :class:`PlainProgress` otherwise."""
    if disable or not is_terminal():
        return PlainProgress(total=total, desc=desc, unit=unit, disable=disable, **options)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                **options)


def random_weights_banner(weights_id: str, what: str = "outputs") -> str:
    """The one-line warning printed whenever a CLIP with random weights is used."""
    return (f"*** RANDOM WEIGHTS ({weights_id}): these {what} only exercise the pipeline; they "
            "are meaningless for few-shot results. For real ones pass --weights PATH, 'openai' "
            "or a hub id. ***")
