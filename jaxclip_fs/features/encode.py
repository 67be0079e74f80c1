"""Batched encoding with one compiled shape, fed by the prefetching pipeline, chunk-cached.

:class:`FixedBatchEncoder` jit-compiles ``fn(params, rows)`` for exactly one
input shape [B, *row_shape]; the caller pads the last batch (and drops the
padding after), so a whole extraction compiles once. The params are put on
the device once and passed as an argument -- not closed over as constants,
which would embed hundreds of MB of weights in the compiled program.

:func:`encode_items` is the engine: items (e.g. images) each give R rows
(e.g. views); it loads them with :func:`~jaxclip_fs.features.pipeline.ordered_prefetch`,
packs rows into fixed batches, dispatches batch i before collecting the
results of batch i-1 (so host work overlaps device work), and stores results
chunk by chunk in a :class:`~jaxclip_fs.features.cache.ChunkedEntry`:
finished chunks are loaded instead of computed, a Ctrl-C loses at most the
chunk in flight. It knows nothing about CLIP or images.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.errors import ConfigError, DataError
from jaxclip_fs.features.cache import ChunkedEntry
from jaxclip_fs.features.pipeline import ordered_prefetch, row_batches
from jaxclip_fs.io.console import progress_bar

#: Chunk arrays besides the outputs: per item, whether it was read, and why not.
VALID_KEY = "valid"
ERROR_KEY = "error"
#: Compute dtypes by name (``--dtype``); outputs are float32 either way.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """``"float32"`` or ``"bfloat16"`` -> the jnp dtype; ConfigError otherwise."""
    if name not in DTYPES:
        raise ConfigError(f"extraction.dtype must be one of {', '.join(DTYPES)}, got '{name}'")
    return DTYPES[name]


class FixedBatchEncoder:
    """``fn(params, rows)`` jit-compiled for rows of shape [B, *row_shape] only.

    Args:
      fn: pure function ``(params, rows [B, *row_shape]) -> {name: [B, ...]}``.
      params: its parameter pytree (device_put once here).
      batch_size: B.
      row_shape: shape of one input row.
      row_dtype: dtype of the input rows.

    Attributes:
      output_shapes: ``{name: ShapeDtypeStruct}`` of one batch's outputs,
        from :func:`jax.eval_shape` (nothing is computed).
    """

    def __init__(self, fn: Callable[[Any, jax.Array], Mapping[str, jax.Array]], params: Any,
                 batch_size: int, row_shape: Sequence[int], row_dtype=np.float32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.row_shape = tuple(row_shape)
        self.row_dtype = np.dtype(row_dtype)
        self._jitted = jax.jit(fn)
        self._params = jax.device_put(params)
        batch = jax.ShapeDtypeStruct((self.batch_size, *self.row_shape), self.row_dtype)
        self.output_shapes = dict(jax.eval_shape(fn, self._params, batch))

    def __call__(self, rows: np.ndarray) -> dict[str, jax.Array]:
        """Dispatches one batch [B, *row_shape]; returns device arrays (asynchronously)."""
        if rows.shape != (self.batch_size, *self.row_shape):
            raise ValueError(f"batch of shape {list(rows.shape)}, compiled for "
                             f"{[self.batch_size, *self.row_shape]}")
        return dict(self._jitted(self._params, rows))

    def program(self) -> tuple[Callable, tuple]:
        """``(jitted fn, abstract arguments of one batch)``: the compiled program, for lowering
        it elsewhere (e.g. for another platform: ``jax.export``) without running it."""
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self._params)
        rows = jax.ShapeDtypeStruct((self.batch_size, *self.row_shape), self.row_dtype)
        return self._jitted, (params, rows)

    @property
    def num_compilations(self) -> int:
        """How many shapes have been compiled (1 after any number of calls)."""
        return self._jitted._cache_size()


@dataclasses.dataclass(frozen=True)
class EncodedItems:
    """Results of :func:`encode_items`.

    Attributes:
      outputs: ``{name: [N, R, ...]}``, zeros for skipped items.
      valid: bool [N], False for skipped (unreadable) items.
      errors: ``{item position: message}`` of the skipped items.
      loaded_chunks: chunks read from the cache.
      computed_chunks: chunks encoded in this call.
    """

    outputs: dict[str, np.ndarray]
    valid: np.ndarray
    errors: dict[int, str]
    loaded_chunks: int
    computed_chunks: int


def encode_items(
    encoder: FixedBatchEncoder,
    load: Callable[[int], np.ndarray],
    num_items: int,
    rows_per_item: int,
    entry: ChunkedEntry | None,
    *,
    skip_errors: bool = False,
    workers: int = 2,
    ahead: int | None = None,
    progress: bool = True,
    desc: str = "encode",
    unit: str = "img",
) -> EncodedItems:
    """Encodes items ``0..num_items-1``, each of ``rows_per_item`` rows, through the cache.

    Per chunk of ``entry``: if the cache holds it, it is loaded (``encoder`` is
    not called for it); otherwise its items are loaded by ``load`` in worker
    threads (prefetching across chunk boundaries), encoded in fixed batches
    and the chunk is saved atomically before the next one is finished.

    Args:
      encoder: a :class:`FixedBatchEncoder` whose row shape is the shape of
        one row returned by ``load``.
      load: ``load(i) -> [R, *row_shape]`` for item i; raises
        :class:`DataError` for an unreadable item.
      num_items: N (must equal ``entry.num_items``).
      rows_per_item: R.
      entry: the cache entry, or None for no caching (one chunk, nothing saved).
      skip_errors: False: the first unreadable item raises its DataError
        (also when it was recorded as skipped in a cached chunk). True: it is
        recorded as invalid (zero outputs) and its message kept.
      workers: loader threads.
      ahead: items loaded ahead of the encoder; default ``2 * B / R + workers``.
      progress: show a tqdm bar (images/s) on stderr.
      desc, unit: the bar's label and item unit.

    Returns:
      :class:`EncodedItems`.
    """
    if entry is not None and entry.num_items != num_items:
        raise ValueError(f"entry holds {entry.num_items} items, asked for {num_items}")
    if ahead is None:
        ahead = 2 * max(1, encoder.batch_size // rows_per_item) + workers
    if entry is None:
        bounds = [(0, num_items)] if num_items else []
    else:
        bounds = [entry.bounds(c) for c in range(entry.num_chunks)]
    chunks: dict[int, dict[str, np.ndarray]] = {}
    if entry is not None:
        for c in range(len(bounds)):
            arrays = entry.load(c)
            if arrays is not None:
                _raise_recorded_error(arrays, skip_errors)
                chunks[c] = arrays
    missing = [c for c in range(len(bounds)) if c not in chunks]
    done_items = sum(len(a[VALID_KEY]) for a in chunks.values())
    bar = progress_bar(num_items, initial=done_items, unit=unit, desc=desc, disable=not progress,
                       leave=False)
    items = (i for c in missing for i in range(*bounds[c]))
    stream = ordered_prefetch(load, items, workers=workers, ahead=ahead)
    try:
        for c in missing:
            chunks[c] = _encode_chunk(encoder, stream, bounds[c], rows_per_item, skip_errors, bar)
            if entry is not None:
                entry.save(c, chunks[c])
    finally:
        stream.close()
        bar.close()
    ordered = [chunks[c] for c in range(len(bounds))] or [_empty_chunk(encoder, 0, rows_per_item)]
    valid = np.concatenate([a[VALID_KEY] for a in ordered]).astype(bool)
    messages = np.concatenate([a[ERROR_KEY] for a in ordered])
    errors = {int(i): str(messages[i]) for i in np.flatnonzero(~valid)}
    outputs = {name: np.concatenate([a[name] for a in ordered]) for name in encoder.output_shapes}
    return EncodedItems(outputs, valid, errors, loaded_chunks=len(bounds) - len(missing),
                        computed_chunks=len(missing))


def _raise_recorded_error(arrays: Mapping[str, np.ndarray], skip_errors: bool) -> None:
    if not skip_errors and not arrays[VALID_KEY].all():
        raise DataError(str(arrays[ERROR_KEY][np.flatnonzero(~arrays[VALID_KEY])[0]]))


def _empty_chunk(encoder: FixedBatchEncoder, n: int, rows_per_item: int) -> dict[str, np.ndarray]:
    """Zero outputs [n, R, ...], all valid, no errors."""
    out = {name: np.zeros((n, rows_per_item, *s.shape[1:]), s.dtype)
           for name, s in encoder.output_shapes.items()}
    out[VALID_KEY] = np.ones(n, bool)
    out[ERROR_KEY] = np.full(n, "", dtype=str)
    return out


def _encode_chunk(encoder: FixedBatchEncoder, stream, bounds: tuple[int, int],
                  rows_per_item: int, skip_errors: bool, bar) -> dict[str, np.ndarray]:
    """Encodes the items ``[start, stop)`` pulled in order from ``stream``."""
    start, stop = bounds
    chunk = _empty_chunk(encoder, stop - start, rows_per_item)
    errors = [""] * (stop - start)

    def blocks():
        for _ in range(stop - start):
            position, future = next(stream)
            try:
                rows = future.result()
            except DataError as exc:
                if not skip_errors:
                    raise
                chunk[VALID_KEY][position - start] = False
                errors[position - start] = str(exc)
                bar.update(1)
                continue
            if rows.shape[0] != rows_per_item:
                raise ValueError(f"item {position}: {rows.shape[0]} rows, expected {rows_per_item}")
            yield position - start, rows

    def collect(batch, outputs) -> None:
        for name, value in outputs.items():
            chunk[name][batch.owner, batch.sub] = np.asarray(value)[:batch.count]
        bar.update(int(np.count_nonzero(batch.sub == rows_per_item - 1)))

    in_flight = None
    for batch in row_batches(blocks(), encoder.batch_size, encoder.row_shape, encoder.row_dtype):
        outputs = encoder(batch.rows)  # dispatched; runs while the previous batch is collected
        if in_flight is not None:
            collect(*in_flight)
        in_flight = (batch, outputs)
    if in_flight is not None:
        collect(*in_flight)
    chunk[ERROR_KEY] = np.asarray(errors, dtype=str)
    return chunk
