"""Content-addressed cache of computed arrays, stored in checksummed chunks.

An entry is named by the sha256 of a canonical JSON *spec* of everything that
shapes its content (:func:`content_key`): for image features the model
architecture and weights identity, the dataset identity, split and exact
image list, preprocessing, views and augmentation, taps, compute dtype and
:data:`CACHE_FORMAT`. Anything not in the spec cannot change the content, so
a spec match is a valid hit; anything in it changes the key.

Layout under the cache directory (``--cache-dir``, else ``$JAXCLIP_FS_CACHE``,
else ``~/.cache/jaxclip-fs``)::

    <dir>/<key[:2]>/<key>/spec.json          the spec, for people (not read back)
    <dir>/<key[:2]>/<key>/chunk-00000.npz    items [0, chunk_size)
    <dir>/<key[:2]>/<key>/chunk-00001.npz    items [chunk_size, 2 chunk_size) ...

Each chunk is written atomically (:mod:`jaxclip_fs.io.atomic`) and carries
its own checksum, ``__checksum__`` = sha256 over the entry key, the chunk
number and every array's name, dtype, shape and bytes. A chunk that is
missing, unreadable, or whose checksum does not match is reported by
:meth:`ChunkedEntry.load` as absent (a corrupt one is logged and deleted), so
the caller recomputes exactly that chunk. An interrupted run therefore loses
at most the chunk it was computing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import zipfile
from typing import Any, Mapping

import numpy as np

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.io import atomic

#: Bump when the meaning or layout of cached arrays changes; old entries are then ignored.
CACHE_FORMAT = 1
CACHE_ENV_VAR = "JAXCLIP_FS_CACHE"
CHECKSUM_KEY = "__checksum__"

log = logging.getLogger(__name__)


def default_cache_dir() -> str:
    """``$JAXCLIP_FS_CACHE`` if set, else ``~/.cache/jaxclip-fs``."""
    return os.environ.get(CACHE_ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "jaxclip-fs")


def canonical_json(spec: Mapping[str, Any]) -> str:
    """``spec`` as JSON with sorted keys and no whitespace (tuples become lists).

    Raises:
      TypeError: a value that is not plain JSON (str, int, float, bool, None,
        list/tuple, dict with str keys) -- a programming error, not a user one.
    """
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_key(spec: Mapping[str, Any]) -> str:
    """sha256 (hex) of :func:`canonical_json` ``(spec)``."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def _checksum(key: str, chunk: int, arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256(f"{key}\n{chunk}\n".encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\t{arr.dtype.str}\t{list(arr.shape)}\n".encode())
        h.update(memoryview(arr).cast("B") if arr.size else b"")
    return h.hexdigest()


class ChunkedEntry:
    """One cache entry: ``num_items`` items stored in chunks of ``chunk_size``.

    Chunk ``i`` holds items ``[i * chunk_size, min((i + 1) * chunk_size, num_items))``
    as a dict of arrays whose first axis runs over those items.
    ``chunk_size`` and ``num_items`` are part of the key (they shape the chunks).
    """

    def __init__(self, cache_dir: str | os.PathLike, spec: Mapping[str, Any], num_items: int,
                 chunk_size: int):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.spec = {**spec, "cache_format": CACHE_FORMAT, "num_items": int(num_items),
                     "chunk_size": int(chunk_size)}
        self.key = content_key(self.spec)
        self.directory = os.path.join(os.fspath(cache_dir), self.key[:2], self.key)
        self.num_items = int(num_items)
        self.chunk_size = int(chunk_size)

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_items / self.chunk_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        """Item range ``[start, stop)`` of ``chunk``."""
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.num_items)

    def path(self, chunk: int) -> str:
        return os.path.join(self.directory, f"chunk-{chunk:05d}.npz")

    def load(self, chunk: int) -> dict[str, np.ndarray] | None:
        """The arrays of ``chunk``, or None when it is missing or corrupt.

        A corrupt chunk (unreadable, no or wrong checksum, wrong item count)
        is logged as a warning naming the file and deleted.
        """
        path = self.path(chunk)
        if not os.path.exists(path):
            return None
        problem = None
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
            problem = f"unreadable ({' '.join(str(exc).split()) or type(exc).__name__})"
        else:
            stored = arrays.pop(CHECKSUM_KEY, None)
            start, stop = self.bounds(chunk)
            if stored is None or str(stored) != _checksum(self.key, chunk, arrays):
                problem = "checksum mismatch"
            elif any(a.shape[:1] != (stop - start,) for a in arrays.values()):
                problem = "wrong number of items"
        if problem is None:
            return arrays
        log.warning("cache chunk %s is corrupt (%s); recomputing it", path, problem)
        with contextlib.suppress(OSError):
            os.remove(path)
        return None

    def save(self, chunk: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Writes ``chunk`` atomically with its checksum (and ``spec.json`` once).

        Raises:
          ConfigError: the cache directory cannot be written (names it).
        """
        arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
        spec_path = os.path.join(self.directory, "spec.json")
        try:
            if not os.path.exists(spec_path):
                atomic.write_json(spec_path, self.spec)
            atomic.save_npz(self.path(chunk), **arrays,
                            **{CHECKSUM_KEY: np.asarray(_checksum(self.key, chunk, arrays))})
        except OSError as exc:
            raise ConfigError(f"{self.directory}: cannot write the feature cache "
                              f"({exc.strerror or exc}); choose another execution.cache_dir or "
                              "execution.use_cache=false"
                              ) from None
