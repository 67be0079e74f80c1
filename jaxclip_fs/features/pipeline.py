"""Host-side input pipeline: threaded, ordered prefetching and fixed-size row batches.

Decoding, preprocessing and augmenting images is Python + Pillow work that
releases the GIL for most of its time, so a small thread pool keeps the
encoder fed: :func:`ordered_prefetch` runs ``load(item)`` for up to ``ahead``
items beyond the one the consumer is waiting for, and yields results in item
order. :func:`row_batches` packs the per-item row blocks (e.g. the V views of
an image) into batches of exactly ``batch_size`` rows -- the last one padded
with zeros -- so a jitted encoder always sees one shape.

Threads rather than grain: the work per item is a Pillow decode and a few
resizes, the sources are arbitrary Python objects (files, in-memory arrays,
TFDS records) and the outputs must come back in order; a bounded
``ThreadPoolExecutor`` does exactly that with no extra dependency.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

Item = TypeVar("Item")
Result = TypeVar("Result")


def default_workers() -> int:
    """Loader threads: the machine's CPU count, at least 1."""
    return max(1, os.cpu_count() or 1)


def ordered_prefetch(load: Callable[[Item], Result], items: Iterable[Item], workers: int,
                     ahead: int) -> Iterator[tuple[Item, concurrent.futures.Future]]:
    """Runs ``load`` on ``items`` in a thread pool, keeping ``ahead`` calls in flight.

    Yields ``(item, future)`` in the order of ``items``; ``future.result()``
    returns ``load(item)`` or re-raises its exception, so the consumer decides
    what a failure means. When the consumer stops early (break, exception,
    Ctrl-C) the queued calls are cancelled and the pool shut down.

    Args:
      load: called once per item, from worker threads.
      items: any iterable; consumed lazily.
      workers: number of threads (>= 1).
      ahead: maximum number of submitted but not yet yielded calls (>= 1).
    """
    if workers < 1 or ahead < 1:
        raise ValueError(f"workers and ahead must be >= 1, got {workers}, {ahead}")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                 thread_name_prefix="jaxclip-fs-load")
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append((item, pool.submit(load, item)))
            if len(pending) >= ahead:
                yield pending.popleft()
        while pending:
            yield pending.popleft()
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass(frozen=True)
class RowBatch:
    """``batch_size`` rows for the encoder; rows ``count:`` are zero padding.

    ``owner[r]`` is the item position and ``sub[r]`` the row within that
    item (e.g. the view) of row ``r < count``.
    """

    rows: np.ndarray
    count: int
    owner: np.ndarray
    sub: np.ndarray


def row_batches(blocks: Iterable[tuple[int, np.ndarray]], batch_size: int,
                row_shape: Sequence[int], dtype=np.float32) -> Iterator[RowBatch]:
    """Packs per-item row blocks into fixed-size batches.

    Args:
      blocks: ``(position, rows)`` with rows [R_i, *row_shape]; R_i may be 0.
      batch_size: B, rows per batch.
      row_shape: shape of one row (e.g. (S, S, 3)).
      dtype: dtype of the batch buffer.

    Yields:
      :class:`RowBatch` es of exactly B rows; only the last may have
      ``count < B`` (zero-padded). Nothing is yielded for zero rows in total.
    """
    row_shape = tuple(row_shape)
    rows = np.zeros((batch_size, *row_shape), dtype)
    owner = np.zeros(batch_size, np.int64)
    sub = np.zeros(batch_size, np.int64)
    fill = 0
    for position, block in blocks:
        if block.shape[1:] != row_shape:
            raise ValueError(f"item {position}: rows of shape {list(block.shape[1:])}, "
                             f"expected {list(row_shape)}")
        taken = 0
        while taken < block.shape[0]:
            n = min(batch_size - fill, block.shape[0] - taken)
            rows[fill:fill + n] = block[taken:taken + n]
            owner[fill:fill + n] = position
            sub[fill:fill + n] = np.arange(taken, taken + n)
            fill += n
            taken += n
            if fill == batch_size:
                yield RowBatch(rows, fill, owner.copy(), sub.copy())
                rows = np.zeros_like(rows)  # fresh: the encoder may still read the last one
                fill = 0
    if fill:
        yield RowBatch(rows, fill, owner[:fill], sub[:fill])
