"""Nested, deterministic few-shot sampling.

For a (pool, seed) every class's members are put in one fixed random order,
drawn from ``SeedSequence([seed, class_index])``; the k-shot set is the first
k of that order. Hence k-shot ⊂ 2k-shot, and the answer depends only on the
labels, the seed and the class, never on call order or on how many shots
anyone else asked for (big_vision ``fewshot_lsr``: permute, take ``[:k]``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jaxclip_fs.errors import DataError


def class_order(labels: np.ndarray, class_index: int, seed: int) -> np.ndarray:
    """The fixed random order of the members of one class (indices into ``labels``)."""
    members = np.flatnonzero(np.asarray(labels) == class_index)
    seed_seq = np.random.SeedSequence([int(seed), int(class_index)])
    rng = np.random.Generator(np.random.PCG64(seed_seq))
    return members[rng.permutation(members.size)]


def nested_fewshot(
    labels: np.ndarray,
    num_classes: int,
    shots: int,
    seed: int,
    classnames: Sequence[str] | None = None,
    what: str = "train",
) -> np.ndarray:
    """Per-class few-shot indices, nested in their column order.

    Args:
      labels: int [N] class of every pool item.
      num_classes: C.
      shots: K, items per class.
      seed: sampling seed.
      classnames: used only to name a class in errors.
      what: the split's name, for errors.

    Returns:
      int [C, K] indices into ``labels``; ``out[:, :k]`` is the k-shot set
      for every k ≤ K.

    Raises:
      DataError: a class has fewer than K items (names the class).
    """
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    labels = np.asarray(labels)
    out = np.empty((num_classes, shots), dtype=np.int64)
    for c in range(num_classes):
        order = class_order(labels, c, seed)
        if order.size < shots:
            name = classnames[c] if classnames is not None else str(c)
            raise DataError(
                f"class '{name}' (index {c}) has {order.size} {what} images; {shots} shots asked"
            )
        out[c] = order[:shots]
    return out


def capped_val_shots(shots: int, cap: int = 4) -> int:
    """CoOp's few-shot validation size: ``min(shots, cap)`` per class."""
    return min(int(shots), int(cap))


# --- over a Dataset --------------------------------------------------------------------

#: Validation policies: "coop" -- min(K, 4) per class of the val split, drawn
#: with the same seed (CoOp: ``generate_fewshot_dataset(val, min(K, 4))``);
#: "full" -- the whole val split (as Tip-Adapter and APE search on it).
VAL_POLICIES = ("coop", "full")


def fewshot_train(dataset, shots: int, seed: int) -> np.ndarray:
    """The nested K-shot training set of ``dataset`` for ``seed``.

    Args:
      dataset: a :class:`~jaxclip_fs.data.dataset.Dataset` with a "train" split.
      shots: K per class.
      seed: sampling seed (papers: 1, 2, 3).

    Returns:
      int [C, K] indices into ``dataset.split("train")``; ``[:, :k]`` is the
      k-shot set (k-shot ⊂ 2k-shot), independent of call order.

    Raises:
      DataError: no train split, or a class with fewer than K train images
        (names the class).
    """
    train = dataset.split("train")
    return nested_fewshot(train.labels, dataset.num_classes, shots, seed,
                          classnames=dataset.classnames, what=f"{dataset.name} train")


def fewshot_val(dataset, shots: int, seed: int, policy: str = "coop") -> np.ndarray:
    """The validation items used to select hyperparameters for a K-shot run.

    ``"coop"``: per class the first ``min(K, 4)`` of the class's fixed random
    order for ``seed`` (:func:`class_order` on the val labels), so nested in K
    like the train set; a class with fewer val images gives all it has (as
    Dassl's ``generate_fewshot_dataset`` without ``repeat``). ``"full"``: the
    whole val split.

    Returns:
      int [M] indices into ``dataset.split("val")``, class by class for
      "coop", ascending for "full".

    Raises:
      DataError: unknown policy, or no val split.
    """
    if policy not in VAL_POLICIES:
        raise DataError(f"val policy must be one of {', '.join(VAL_POLICIES)}, got '{policy}'")
    val = dataset.split("val")
    if policy == "full":
        return np.arange(len(val), dtype=np.int64)
    return coop_val_rows(val.labels, dataset.num_classes, shots, seed)


def coop_val_rows(labels: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
    """CoOp validation rows: per class the first ``min(K, 4)`` of its :func:`class_order`
    (all it has when fewer), class by class → int [M]."""
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    return ranked_val_rows(labels, num_classes, seed, "coop", capped_val_shots(shots))[0]


def ranked_val_rows(labels: np.ndarray, num_classes: int, seed: int, policy: str,
                    per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation rows of a seed and each row's rank in its class's nested order.

    ``"coop"``: per class the first ``per_class`` of its :func:`class_order`
    for ``seed``, ranked 0, 1, ...; the k-shot CoOp set is the rows of rank
    ``< min(k, 4)``, so one array serves every shot count up to
    ``per_class``. ``"full"``: every row, rank 0.

    Returns:
      ``(rows int64 [M], ranks float32 [M])``.
    """
    if policy == "full":
        rows = np.arange(np.asarray(labels).shape[0], dtype=np.int64)
        return rows, np.zeros(rows.shape, np.float32)
    if policy not in VAL_POLICIES:
        raise DataError(f"val policy must be one of {', '.join(VAL_POLICIES)}, got '{policy}'")
    orders = [class_order(labels, c, seed)[:per_class] for c in range(num_classes)]
    rows = np.concatenate(orders).astype(np.int64)
    ranks = np.concatenate([np.arange(o.size, dtype=np.float32) for o in orders])
    return rows, ranks


# --- the official codes' draws ---------------------------------------------------------

#: The shot counts the chained official draw visits, in order (GDA, IMO: ``for shots in
#: [1, 2, 4, 8, 16]`` on one random stream per seed).
CHAINED_SHOTS = (1, 2, 4, 8, 16)
OFFICIAL_SAMPLERS = ("official", "official_chained")


def by_label(labels: np.ndarray) -> dict[int, list[int]]:
    """Dassl's ``split_dataset_by_label``: label -> its indices in list order, the labels in
    the order of their first appearance (what :func:`dassl_draw` draws from)."""
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(np.asarray(labels).tolist()):
        groups.setdefault(int(label), []).append(index)
    return groups


def dassl_draw(labels: np.ndarray | dict[int, list[int]], shots: int, rng, *,
               fewer: str = "error",
               classnames: Sequence[str] | None = None) -> list[list[int]]:
    """Dassl's ``generate_fewshot_dataset`` on one list: per class, ``rng.sample(items, K)``.

    The classes are visited in the order of their first appearance in
    ``labels`` (Dassl's ``split_dataset_by_label``: a dict filled in list
    order) and each class's items keep their list order, so with ``rng`` a
    ``random.Random(seed)`` this is the official codes' draw after
    ``random.seed(seed)`` (Dassl ``dassl/data/datasets/base_dataset.py``
    ``generate_fewshot_dataset``; CoOp, Tip-Adapter, APE, GDA, LDC, IMO).

    Args:
      labels: int [N] the split's labels in its file order (or their :func:`by_label`
        grouping, computed once for several draws).
      shots: K.
      rng: a ``random.Random`` (consumed as the official code consumes Python's ``random``).
      fewer: a class with fewer than K items: ``"error"``, or ``"all"`` (take them
        all, drawing nothing -- Dassl's ``repeat=False``, as for CoOp's val).

    Returns:
      per class label c, the drawn indices into ``labels`` in the order drawn.

    Raises:
      DataError: a class with fewer than K items and ``fewer="error"``.
    """
    groups = labels if isinstance(labels, dict) else by_label(labels)
    drawn: dict[int, list[int]] = {}
    for label, items in groups.items():
        if len(items) >= shots:
            drawn[label] = rng.sample(items, shots)
        elif fewer == "all":
            drawn[label] = list(items)
        else:
            name = classnames[label] if classnames is not None else str(label)
            raise DataError(f"class '{name}' (index {label}) has {len(items)} train images; "
                            f"{shots} shots asked")
    return [drawn.get(c, []) for c in range(max(groups) + 1 if groups else 0)]


def official_fewshot(train_labels: np.ndarray, shots: int, seed: int, *,
                     sampler: str = "official", val_labels: np.ndarray | None = None,
                     classnames: Sequence[str] | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """The official codes' few-shot set for (shots, seed) -- not nested across shot counts.

    ``"official"``: ``random.seed(seed)`` then Dassl's draw of K per class
    from the train list (CoOp ``train.py`` seeds before building the data, one
    process per (dataset, K, seed); Tip-Adapter / APE ``random.seed(1)``,
    LDC ``setup_seed(2024)`` likewise); then, on the same stream, CoOp's
    validation draw of ``min(K, 4)`` per class (``val_labels`` given).
    ``"official_chained"``: seeded once, then 1, 2, 4, 8, 16 shots drawn in
    turn from the one stream (GDA ``main_few_shots.py``; IMO ``run.py`` on a
    fresh run): K must be one of :data:`CHAINED_SHOTS`.

    Returns:
      ``(train int [C, K], val int [M] or None)``: indices into the train
      labels (class-major, each class's items in draw order) and into the val labels.

    Raises:
      DataError: unknown sampler, a shot count off the chain, or too few images.
    """
    import random

    if sampler not in OFFICIAL_SAMPLERS:
        raise DataError(f"sampler must be one of {', '.join(OFFICIAL_SAMPLERS)}, got '{sampler}'")
    rng = random.Random(int(seed))
    train_labels = by_label(train_labels)  # grouped once for every draw below
    if sampler == "official_chained":
        if shots not in CHAINED_SHOTS:
            raise DataError(f"the chained official draw visits {list(CHAINED_SHOTS)} shots; "
                            f"{shots} asked")
        for k in CHAINED_SHOTS[:CHAINED_SHOTS.index(shots)]:
            dassl_draw(train_labels, k, rng, classnames=classnames)
    train = np.asarray(dassl_draw(train_labels, shots, rng, classnames=classnames), np.int64)
    val = None
    if val_labels is not None:
        drawn = dassl_draw(val_labels, capped_val_shots(shots), rng, fewer="all")
        val = np.asarray([i for per_class in drawn for i in per_class], np.int64)
    return train, val


def official_val_rows(val_draws: Mapping[tuple[str, int, int], Sequence[int]], sampler: str,
                      seed: int, shots: int) -> np.ndarray:
    """The val rows of CoOp's validation draw that came with an official (shots, seed) draw.

    Raises:
      DataError: that draw has none (the chained official codes draw none).
    """
    rows = val_draws.get((sampler, seed, shots))
    if rows is None:
        raise DataError(f"the {sampler} draw of seed {seed} at {shots} shots has no CoOp "
                        "validation draw (the chained official codes draw none): use the fair "
                        "protocol's whole val split, or the nested / official sampler")
    return np.asarray(rows, np.int64)


def official_sets(dataset, sampler: str, shots: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray | None, str]:
    """A dataset's official (shots, seed) draw: CoOp's cached file when the data root has it
    (``official`` only: CoOp's files are its reseeded draws), else :func:`official_fewshot`.

    Returns:
      ``(train int [C, K] train-split rows, val int [M] val-split rows or None, origin)``.
    """
    from jaxclip_fs.data.coop_pkl import coop_fewshot, fewshot_pkl_path

    if sampler == "official":
        cached = coop_fewshot(dataset, shots, seed)
        if cached is not None:
            return cached[0], cached[1], f"CoOp file {fewshot_pkl_path(dataset, shots, seed)}"
    train = dataset.split("train")
    val_labels = dataset.split("val").labels if "val" in dataset.splits else None
    rows, val = official_fewshot(train.labels, shots, seed, sampler=sampler,
                                 val_labels=val_labels, classnames=dataset.classnames)
    what = ("random.seed(seed), Dassl draw" if sampler == "official" else
            "random.seed(seed) once, Dassl draws of 1, 2, 4, 8, 16 shots in turn")
    return rows, val, what
