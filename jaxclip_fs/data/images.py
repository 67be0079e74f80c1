"""Reading images: decoding to RGB, image stores, and skipping corrupt files.

A :class:`~jaxclip_fs.data.dataset.Split` does not hold pixels; it holds rows
of an *image store* -- an object with ``load(row) -> PIL.Image.Image`` (RGB)
and ``describe(row) -> str`` (the file path or record name used in errors).
Stores here: :class:`FileImages` (files under a directory) and
:class:`ArrayImages` (uint8 pixels in memory). The TFDS store lives in
``tfds_source``.

Corrupt or missing images raise :class:`~jaxclip_fs.errors.DataError` naming
the file. A caller that prefers to skip them (when the user asks for it)
reads through an :class:`ImageReader` with ``on_error="skip"``: a bad image
then gives ``None`` and is counted in ``reader.skipped``.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from jaxclip_fs.errors import DataError

#: File name endings (lower-case) treated as images; other files are skipped.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
)

# What PIL raises on unreadable data: OSError (incl. UnidentifiedImageError,
# truncated files), SyntaxError (bad PNG chunks), ValueError / EOFError (bad
# headers), DecompressionBombError (absurd sizes).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def is_image_file(name: str) -> bool:
    """True when ``name`` ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_files(directory: str, seen: dict | None = None) -> list[str]:
    """Image files below ``directory`` (recursively), as sorted relative paths.

    Hidden files and folders (leading ``.``) and files that are not images
    (by :data:`IMAGE_EXTENSIONS`) are skipped. Symbolic links are followed,
    but never into a folder already on the way down (an ancestor: ``ln -s ..
    cat/up`` would list the tree again and again) nor twice into one folder,
    and each real file (by resolved path) is listed once, under its first path in
    sorted order.

    Args:
      seen: ``resolved path -> path`` of the files listed so far (updated), so that
        callers listing several folders can tell a file listed twice.
    """
    seen = {} if seen is None else seen
    found = []
    visited = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        here = os.path.realpath(dirpath)
        visited.add(here)
        kept = []
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            ancestor = here == real or here.startswith(real.rstrip(os.sep) + os.sep)
            if not name.startswith(".") and not ancestor and real not in visited:
                visited.add(real)
                kept.append(name)
        dirnames[:] = kept
        rel = os.path.relpath(dirpath, directory)
        for name in sorted(filenames):
            if name.startswith(".") or not is_image_file(name):
                continue
            path = os.path.join(dirpath, name)
            key = os.path.realpath(path)  # (hard links stay apart, as in any listing)
            if key in seen:
                continue
            seen[key] = path
            found.append(name if rel == "." else os.path.join(rel, name))
    return sorted(found)


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def open_image_file(path: str | os.PathLike) -> Image.Image:
    """Decodes the image file at ``path`` fully and returns it as RGB (alpha dropped).

    Converting at load time is what CoOp/Tip-Adapter's data loaders do
    (``Image.open(path).convert("RGB")``).

    Raises:
      DataError: the file is missing or cannot be decoded (names the path).
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # decodes fully: a truncated file fails here
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except _DECODE_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({_reason(exc)})") from None


def decode_image_bytes(data: bytes, what: str) -> Image.Image:
    """Decodes encoded image bytes (JPEG, PNG, ...) to RGB; ``what`` names them in errors."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except _DECODE_ERRORS as exc:
        raise DataError(f"{what}: cannot read image ({_reason(exc)})") from None


class ImageStore(Protocol):
    """Where a split's images come from (rows are the store's own numbering)."""

    def load(self, row: int) -> Image.Image: ...

    def describe(self, row: int) -> str: ...


class FileImages:
    """Image files ``os.path.join(root, relpaths[row])``."""

    def __init__(self, root: str, relpaths: Sequence[str]):
        self.root = root
        self.relpaths = tuple(relpaths)

    def describe(self, row: int) -> str:
        return os.path.join(self.root, self.relpaths[row])

    def load(self, row: int) -> Image.Image:
        return open_image_file(self.describe(row))


class ArrayImages:
    """In-memory uint8 pixels, [N, H, W] (grey) or [N, H, W, 3].

    ``load`` returns an RGB image (grey replicated to 3 channels), enlarged by
    nearest-neighbour to ``size`` x ``size`` when ``size`` is given.
    """

    def __init__(self, pixels: np.ndarray, name: str, size: int | None = None):
        if pixels.dtype != np.uint8 or pixels.ndim not in (3, 4):
            raise ValueError(f"pixels must be uint8 [N,H,W] or [N,H,W,3], got {pixels.dtype} "
                             f"{list(pixels.shape)}")
        self.pixels = pixels
        self.name = name
        self.size = size

    def describe(self, row: int) -> str:
        return f"{self.name}[{row}]"

    def load(self, row: int) -> Image.Image:
        img = Image.fromarray(self.pixels[row]).convert("RGB")
        if self.size is not None:
            img = img.resize((self.size, self.size), Image.Resampling.NEAREST)
        return img


class ImageReader:
    """Reads split images, raising on a bad one or skipping and counting it.

    ``on_error="raise"`` (default): a corrupt or missing image raises the
    one-line :class:`DataError` naming it. ``on_error="skip"``: it returns
    ``None`` instead and appends ``(id, message)`` to :attr:`skipped`, so the
    caller can drop the row and report how many were skipped. Thread-safe.

    Example::

        reader = ImageReader("skip")
        images = [reader(split, i) for i in range(len(split))]
        keep = [i for i, im in enumerate(images) if im is not None]
        print(f"skipped {reader.count} corrupt images")
    """

    ON_ERROR = ("raise", "skip")

    def __init__(self, on_error: str = "raise"):
        if on_error not in self.ON_ERROR:
            raise DataError(f"on_error must be one of {', '.join(self.ON_ERROR)}, got '{on_error}'")
        self.on_error = on_error
        self.skipped: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.skipped)

    def __call__(self, split, i: int) -> Image.Image | None:
        """The RGB image ``i`` of ``split`` (a :class:`~jaxclip_fs.data.dataset.Split`), or None."""
        try:
            return split.image(i)
        except DataError as exc:
            if self.on_error == "raise":
                raise
            with self._lock:
                self.skipped.append((split.ids[i], str(exc)))
            return None
