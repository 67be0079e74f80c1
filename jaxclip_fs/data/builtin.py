"""Offline built-in datasets: scikit-learn's ``digits`` and ``fashion_mnist``.

``digits``: the 1797 8x8 greyscale digits bundled with scikit-learn (no
download). Pixels 0..16 become uint8 ``round(v * 255 / 16)``; each image is
served as a 32x32 RGB image (nearest-neighbour, grey replicated). Class names
"0".."9". Fixed split, per class 50 % train / 20 % val / 30 % test by the
hash rule of :mod:`~jaxclip_fs.data.carve` on ids ``"digits:all:<i>"``
(``i`` = row of ``sklearn.datasets.load_digits``).

``fashion_mnist``: the four idx files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each ``.gz`` or plain) from the directory given
as option ``path=``, else ``$JAXCLIP_FS_FASHION_MNIST``, else
``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
The 10 official class names; 28x28 RGB images; test = the 10 000 t10k
images; validation = 20 % of each train class carved off (hash rule), so
train 48 000 / val 12 000. Ids ``"fashion_mnist:<train|t10k>:<i>"``.

The templates of both ("a photo of the digit {}.", "a photo of a {}.") are ours.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from jaxclip_fs.data import carve
from jaxclip_fs.data.dataset import Dataset, build_dataset, digest_bytes, digest_file, make_split
from jaxclip_fs.data.images import ArrayImages
from jaxclip_fs.data.templates import TEMPLATES
from jaxclip_fs.errors import DataError

DIGITS_SIZE = 32

FASHION_MNIST_ENV = "JAXCLIP_FS_FASHION_MNIST"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_digits() -> Dataset:
    """scikit-learn's digits (see module docstring)."""
    from sklearn.datasets import load_digits as sklearn_digits  # lazily: slow to import

    bunch = sklearn_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # [1797, 8, 8]
    labels = bunch.target.astype(np.int64)
    ids = [f"digits:all:{i}" for i in range(len(labels))]
    pool = make_split(ids, labels, ArrayImages(pixels, "digits", size=DIGITS_SIZE))
    classnames = [str(d) for d in range(10)]
    splits, origin = carve.carve_train_val_test(pool, classnames, "sklearn digits", what="digits")
    return build_dataset(
        kind="sklearn", name="digits", classnames=classnames, templates=TEMPLATES["digits"],
        splits=splits, location="sklearn.datasets.load_digits", split_origin=origin,
        content_digests={"pixels": digest_bytes(pixels.tobytes(), labels.tobytes())},
    )


def read_idx(path: str) -> np.ndarray:
    """Reads an idx file (``.gz`` or plain) of unsigned bytes: labels [N] or images [N, H, W].

    Raises:
      DataError: bad magic number, unsupported type, or truncated data (names the file).
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read idx file ({exc})") from None
    if len(data) < 4 or data[0:2] != b"\x00\x00":
        raise DataError(f"{path}: not an idx file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: idx element type 0x{dtype_code:02x} unsupported "
                        f"(want 0x08, uint8)")
    header = 4 + 4 * ndim
    if ndim not in (1, 3) or len(data) < header:
        raise DataError(f"{path}: idx file must hold labels [N] or images [N,H,W], got {ndim} dims")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise DataError(f"{path}: idx data has {len(data) - header} bytes, header says "
                        f"{list(shape)} = {size}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: str, stem: str) -> str:
    for candidate in (os.path.join(directory, stem + ".gz"), os.path.join(directory, stem)):
        if os.path.isfile(candidate):
            return candidate
    raise DataError(f"{os.path.join(directory, stem + '.gz')}: not found -- fashion_mnist wants "
                    f"the four idx files there (install Debian's dataset-fashion-mnist, or pass "
                    f"path=DIR / set {FASHION_MNIST_ENV})")


def load_fashion_mnist(path: str | None = None) -> Dataset:
    """Fashion-MNIST from idx files (see module docstring for the lookup order)."""
    directory = path or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR
    directory = os.path.abspath(os.path.expanduser(directory))
    arrays, digests = {}, {}
    for part, stems in _FASHION_FILES.items():
        files = [_find_idx(directory, stem) for stem in stems]
        images, labels = (read_idx(f) for f in files)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"{files[0]}: expected images [N,H,W] matching the {labels.shape[0]} "
                            f"labels of {files[1]}, got {list(images.shape)}")
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{files[1]}: label {int(labels.max())} outside the 10 classes")
        arrays[part] = (images, labels.astype(np.int64))
        digests.update({os.path.basename(f): digest_file(f) for f in files})
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["t10k"]
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{directory}: train images are {list(train_x.shape[1:])}, t10k images "
                        f"{list(test_x.shape[1:])}")
    store = ArrayImages(np.concatenate([train_x, test_x]), "fashion_mnist")
    ids = [f"fashion_mnist:train:{i}" for i in range(len(train_y))]
    train = make_split(ids, train_y, store)
    test = make_split([f"fashion_mnist:t10k:{i}" for i in range(len(test_y))], test_y, store,
                      np.arange(len(train_y), len(train_y) + len(test_y)))
    splits, origin = carve.carve_val(train, FASHION_MNIST_CLASSES, "the train idx files")
    return build_dataset(
        kind="idx", name="fashion_mnist", classnames=FASHION_MNIST_CLASSES,
        templates=TEMPLATES["fashion_mnist"], splits={**splits, "test": test}, location=directory,
        split_origin={**origin, "test": "the t10k idx files"}, content_digests=digests,
    )
