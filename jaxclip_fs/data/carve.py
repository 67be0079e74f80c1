"""Deterministic per-class carving of validation (and test) items out of a pool.

Used wherever a source has no validation split (ImageNet, Fashion-MNIST,
TFDS sets without one, image folders) and, for image folders without
``train/ val/ test/`` subfolders and for ``digits``, to make all three.

Rule, per class: its items are ranked by a keyed hash of their id,
``blake2b(id, person="jxfs-carve-v1")``, then the first
``max(1, round(f * n))`` go to the first carved part (optionally capped), the
next ones to the second, and what is left stays in the pool. The ranking
depends only on each item's own id -- not on the listing order, on the other
classes, on a seed or on earlier calls -- so adding or removing an image
shifts other items only across part boundaries. Carved items leave the pool.
``round`` here rounds halves up.

Fractions used by the sources (CoOp's own carving, ``split_trainval`` and
``read_and_split_data`` in its dataset code, uses the same 20 % / 50-20-30):

* :data:`VAL_FROM_TRAIN` -- validation from a train split: 20 % per class
  (ImageNet capped at 50 per class, i.e. 50 000 images, like its test set).
* :data:`TRAIN_VAL_TEST` -- a single pool to three splits: 50 % / 20 % / 30 %
  (train = the rest after val 20 % and test 30 %).
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np

from jaxclip_fs.data.dataset import Split
from jaxclip_fs.errors import DataError

#: (fraction of each class) for a validation split carved from train.
VAL_FROM_TRAIN: Mapping[str, float] = {"val": 0.2}
#: ImageNet's carved validation keeps at most this many per class (50 000 in all).
IMAGENET_VAL_CAP = 50
#: fractions carved from one pool into val and test; train keeps the rest (50 %).
TRAIN_VAL_TEST: Mapping[str, float] = {"val": 0.2, "test": 0.3}

_PERSON = b"jxfs-carve-v1"


def _rank_key(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8, person=_PERSON).digest(),
                          "big")


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def carve(
    ids: Sequence[str],
    labels: np.ndarray,
    num_classes: int,
    fractions: Mapping[str, float],
    *,
    max_per_class: int | None = None,
    classnames: Sequence[str] | None = None,
    what: str = "train",
) -> dict[str, np.ndarray]:
    """Splits a pool per class into carved parts and the remaining pool.

    Args:
      ids: N unique item ids (their hashes fix the order).
      labels: int [N].
      num_classes: C.
      fractions: part name -> fraction of each class, carved in this order.
      max_per_class: cap on each carved part's size per class (None: no cap).
      classnames: used to name a class in errors.
      what: the pool's name, for errors.

    Returns:
      ``{part: indices, ..., "rest": indices}``, int64 indices into the pool,
      each sorted ascending (pool order is kept inside every part).

    Raises:
      DataError: a class would be left with no item in some part (names it).
    """
    labels = np.asarray(labels)
    keys = np.array([_rank_key(i) for i in ids], dtype=np.uint64)
    by_class = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[by_class], np.arange(num_classes + 1))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (*fractions, "rest")}
    for c in range(num_classes):
        members = by_class[bounds[c]:bounds[c + 1]]
        if members.size == 0:
            continue
        order = members[np.lexsort((members, keys[members]))]
        start = 0
        for name, fraction in fractions.items():
            n = max(1, _round_half_up(fraction * members.size))
            if max_per_class is not None:
                n = min(n, max_per_class)
            parts[name].append(order[start:start + n])
            start += n
        if start >= members.size:
            cname = classnames[c] if classnames is not None else str(c)
            spec = ", ".join(f"{name} {fraction:.0%}" for name, fraction in fractions.items())
            raise DataError(
                f"class '{cname}' has {members.size} {what} images: too few to carve {spec} "
                f"and keep at least one (needs {start + 1})")
        parts["rest"].append(order[start:])
    return {name: np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, np.int64)
            for name, chunks in parts.items()}


def carve_val(train: Split, classnames: Sequence[str], source: str,
              max_per_class: int | None = None) -> tuple[dict[str, Split], dict[str, str]]:
    """Carves :data:`VAL_FROM_TRAIN` off ``train``.

    Args:
      train: the train split (its ids fix the carving).
      classnames: the C class names.
      source: what ``train`` is, for the split-origin notes.
      max_per_class: optional cap on validation items per class.

    Returns:
      ``({"train": rest, "val": carved}, {"train": note, "val": note})``.
    """
    parts = carve(train.ids, train.labels, len(classnames), VAL_FROM_TRAIN,
                  max_per_class=max_per_class, classnames=classnames)
    cap = f", at most {max_per_class}" if max_per_class is not None else ""
    return ({"train": train.subset(parts["rest"]), "val": train.subset(parts["val"])},
            {"train": f"{source} minus the carved validation items",
             "val": f"carved from {source}: {VAL_FROM_TRAIN['val']:.0%} per class{cap} "
                    f"(hash of id)"})


def carve_train_val_test(pool: Split, classnames: Sequence[str], source: str,
                         what: str) -> tuple[dict[str, Split], dict[str, str]]:
    """Carves one pool into train / val / test by :data:`TRAIN_VAL_TEST` (50/20/30).

    ``source`` names the pool in the split-origin notes, ``what`` in errors.
    """
    parts = carve(pool.ids, pool.labels, len(classnames), TRAIN_VAL_TEST,
                  classnames=classnames, what=what)
    shares = {"train": 1 - sum(TRAIN_VAL_TEST.values()), **TRAIN_VAL_TEST}
    return ({s: pool.subset(parts["rest" if s == "train" else s]) for s in shares},
            {s: f"carved from {source}: {share:.0%} per class (hash of id)"
             for s, share in shares.items()})
