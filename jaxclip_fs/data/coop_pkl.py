"""CoOp's cached few-shot sets: ``<dataset dir>/split_fewshot/shot_{K}-seed_{S}.pkl``.

CoOp (``datasets/oxford_pets.py`` and its siblings) draws a dataset's few-shot
train set and its ``min(K, 4)`` validation set once per (K, seed) and pickles
them: ``{"train": [Datum, ...], "val": [Datum, ...]}`` (ImageNet: ``train``
only), each ``Datum`` a ``dassl.data.datasets.base_dataset.Datum`` whose state
is ``{"_impath", "_label", "_domain", "_classname"}`` with the *absolute*
image path of the machine that wrote it. Reading such a file needs no Dassl:
a restricted unpickler maps that one class to a plain record and refuses
every other global (a pickle can run code; this one can only build records),
and each path is matched to a split item by its trailing components (the
split file's relative path).
"""

from __future__ import annotations

import os
import pickle

import numpy as np

from jaxclip_fs.data.dataset import Dataset, Split
from jaxclip_fs.errors import DataError

DATUM = ("dassl.data.datasets.base_dataset", "Datum")
COOP_SOURCE = "coop:"


class Datum:
    """What a pickled Dassl ``Datum`` becomes: its state, nothing else."""

    @property
    def impath(self) -> str:
        return self.__dict__.get("_impath", "")

    @property
    def label(self) -> int:
        return int(self.__dict__.get("_label", -1))


class _DatumOnly(pickle.Unpickler):
    """Builds Dassl ``Datum`` s as :class:`Datum`; every other global is refused."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) == DATUM:
            return Datum
        raise DataError(f"{self.path}: not a CoOp few-shot file (it refers to {module}.{name}; "
                        "only Dassl's Datum is read)")


def read_fewshot_pkl(path: str | os.PathLike) -> dict[str, list[Datum]]:
    """The ``train`` (and ``val``) lists of a CoOp few-shot pickle.

    Raises:
      DataError: unreadable, not a pickle of that shape, or any other class (names the file).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = _DatumOnly(f, path).load()
    except DataError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError,
            TypeError, IndexError) as exc:
        raise DataError(f"{path}: not a readable CoOp few-shot file ({exc})") from None
    if not (isinstance(data, dict) and isinstance(data.get("train"), list)
            and all(isinstance(d, Datum) for v in data.values() if isinstance(v, list)
                    for d in v)):
        raise DataError(f"{path}: expected {{'train': [Datum, ...], 'val': [...]}}")
    return {k: v for k, v in data.items() if k in ("train", "val") and isinstance(v, list)}


def fewshot_pkl_path(dataset: Dataset, shots: int, seed: int) -> str | None:
    """Where CoOp keeps this dataset's (shots, seed) file, if the dataset is a CoOp-layout one."""
    if not dataset.source.startswith(COOP_SOURCE):
        return None
    return os.path.join(dataset.source[len(COOP_SOURCE):], "split_fewshot",
                        f"shot_{shots}-seed_{seed}.pkl")


def match_rows(split: Split, items: list[Datum], path: str, what: str) -> np.ndarray:
    """Split rows of pickled items, matched by the trailing components of their paths.

    Raises:
      DataError: an item that is no item of the split, or whose label differs (names it).
    """
    depth = {item_id.count("/") + 1 for item_id in split.ids}
    index = {item_id: row for row, item_id in enumerate(split.ids)}
    rows = []
    for item in items:
        parts = item.impath.replace("\\", "/").split("/")
        row = next((index[tail] for d in sorted(depth)
                    if (tail := "/".join(parts[-d:])) in index), None)
        if row is None:
            raise DataError(f"{path}: {what} image {item.impath} is not in the split")
        if int(split.labels[row]) != item.label:
            raise DataError(f"{path}: {what} image {item.impath} has label {item.label}, the "
                            f"split says {int(split.labels[row])}")
        rows.append(row)
    return np.asarray(rows, np.int64)


def coop_fewshot(dataset: Dataset, shots: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """CoOp's cached (shots, seed) set of a CoOp-layout dataset, if its file is there.

    Returns:
      ``(train int [C, K] train-split rows, val int [M] val-split rows or None)``
      (class-major, in file order within a class), or None without a file.

    Raises:
      DataError: an unreadable file, or one that does not fit the dataset (names it).
    """
    path = fewshot_pkl_path(dataset, shots, seed)
    if path is None or not os.path.isfile(path):
        return None
    data = read_fewshot_pkl(path)
    train_rows = match_rows(dataset.split("train"), data["train"], path, "train")
    labels = dataset.split("train").labels[train_rows]
    per_class = [train_rows[labels == c] for c in range(dataset.num_classes)]
    if any(len(rows) != shots for rows in per_class):
        raise DataError(f"{path}: expected {shots} train images for each of the "
                        f"{dataset.num_classes} classes")
    val = None
    if "val" in data and "val" in dataset.splits:
        val = match_rows(dataset.split("val"), data["val"], path, "val")
    return np.stack(per_class), val
