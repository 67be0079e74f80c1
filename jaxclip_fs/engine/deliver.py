"""Handing a finished program's params and records to the sink, losing nothing on a failed write.

The order is the run directory's contract (:mod:`~jaxclip_fs.engine.outdir`):
params first, then one record per cell, so a record on disk means its cell
is finished. When a write fails (:class:`~jaxclip_fs.errors.OutputError`,
e.g. the disk filled up during the run), every record of the program not yet
written is printed on stdout as one JSON line
(:func:`~jaxclip_fs.io.outputs.show_unsaved`) before the error is raised;
records already written stay, and a rerun recomputes only the rest.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

from jaxclip_fs.errors import OutputError
from jaxclip_fs.io.outputs import show_unsaved


def deliver(sink, program, params, slots, results: Sequence,
            records_of: Callable[[object, str | None], list], *,
            show: Callable[[str], None] = show_unsaved) -> None:
    """Saves ``params`` (if any) and writes each result's records through ``sink``.

    Args:
      sink: a :class:`~jaxclip_fs.engine.run.Sink`.
      program, params, slots: the program and its fitted params (None: nothing to save).
      results: the program's cell results, in order.
      records_of: ``(result, params_dir) -> [(cell, record), ...]``.
      show: prints the unwritten records (default: stdout).

    Raises:
      OutputError: a write failed; the records not written were shown first.
    """
    def fail(exc: OutputError, pending: list) -> None:
        lines = [json.dumps(record, default=str) for _, record in pending]
        if lines:
            show("\n".join(lines))
        raise OutputError(f"{exc}; the {len(lines)} record(s) not written are printed on stdout "
                          "(rerun the same command to recompute them)") from None

    try:
        params_dir = sink.save_params(program, params, slots) if params is not None else None
    except OutputError as exc:
        fail(exc, [pair for result in results for pair in records_of(result, None)])
    for i, result in enumerate(results):
        written = records_of(result, params_dir)
        try:
            sink.write(result, written)
        except OutputError as exc:
            fail(exc, written + [pair for later in results[i + 1:]
                                 for pair in records_of(later, params_dir)])
