"""The dataset object every source returns: class names, templates, splits.

A :class:`Dataset` is small and immutable (frozen; treat its mappings as
read-only) and picklable for the file-based and in-memory sources. Its :class:`Split` s ("train",
"val", "test"; out-of-distribution sets have only "test") hold

* ``ids[i]`` -- a stable name per image: the path relative to the dataset's
  image directory, or ``"<dataset>:<source split>:<index>"`` for in-memory
  and TFDS sets;
* ``labels`` -- int64 [N], class indices into ``Dataset.classnames``;
* ``image(i)`` -- the decoded RGB ``PIL.Image`` (raises ``DataError`` naming
  a corrupt or missing file; see :class:`~jaxclip_fs.data.images.ImageReader`
  to skip and count instead);
* ``fingerprint`` -- sha256 of the ids and labels.

``Dataset.identity`` is a sha256 of everything that shapes the content --
source kind, dataset name, class names, templates, every split's fingerprint
and source-specific digests (split files' bytes, in-memory pixels) -- but not
where the data sits on disk, so it can key a feature cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from jaxclip_fs.data.images import FileImages, ImageStore
from jaxclip_fs.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split: ``ids`` [N], ``labels`` int64 [N] and rows of an image store."""

    ids: tuple[str, ...]
    labels: np.ndarray
    store: ImageStore
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> Image.Image:
        """The RGB image of item ``i``; raises ``DataError`` naming a bad file."""
        return self.store.load(int(self.rows[i]))

    def describe(self, i: int) -> str:
        """Where item ``i`` comes from (its file path or record name)."""
        return self.store.describe(int(self.rows[i]))

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Split":
        """The split restricted to ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        return make_split([self.ids[i] for i in indices], self.labels[indices], self.store,
                          self.rows[indices])

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 (hex) of ``ids`` and ``labels``, in order."""
        h = hashlib.sha256()
        for item_id, label in zip(self.ids, self.labels.tolist()):
            h.update(f"{item_id}\t{label}\n".encode())
        return h.hexdigest()


def make_split(ids: Sequence[str], labels: Sequence[int] | np.ndarray, store: ImageStore,
               rows: Sequence[int] | np.ndarray | None = None) -> Split:
    """Builds a :class:`Split`; ``rows`` defaults to ``0..N-1`` (the store's own order)."""
    ids = tuple(ids)
    labels = np.array(labels, dtype=np.int64).reshape(-1)
    rows = np.arange(len(ids), dtype=np.int64) if rows is None else np.array(rows, dtype=np.int64)
    if not (len(ids) == labels.shape[0] == rows.shape[0]):
        raise ValueError(f"ids, labels and rows differ in length: {len(ids)}, {labels.shape[0]}, "
                         f"{rows.shape[0]}")
    labels.flags.writeable = False
    rows.flags.writeable = False
    return Split(ids=ids, labels=labels, store=store, rows=rows)


def file_splits(root: str,
                listed: Mapping[str, tuple[Sequence[str], np.ndarray]]) -> dict[str, Split]:
    """Splits whose images are files under ``root``, sharing one store.

    ``listed``: split name -> (paths relative to ``root``, which become the
    ids; int labels).
    """
    store = FileImages(root, [p for paths, _ in listed.values() for p in paths])
    splits, offset = {}, 0
    for name, (paths, labels) in listed.items():
        splits[name] = make_split(paths, labels, store, np.arange(offset, offset + len(paths)))
        offset += len(paths)
    return splits


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset with its prompts.

    Attributes:
      name: registry name (``"oxford_pets"``, ``"digits"``, ``"folder:/abs/path"``).
      classnames: C cleaned class names (what goes into the templates).
      templates: prompt templates with one ``{}`` each (:mod:`~jaxclip_fs.data.templates`).
      splits: ``"train"``/``"val"``/``"test"`` -> :class:`Split`.
      source: where it was read from, e.g. ``"coop:/data/oxford_pets"``.
      identity: sha256 of the content (see module docstring).
      split_origin: per split, how it was made (a split file, "carved from
        train: ...", ...) -- for result records.
      parent: for out-of-distribution sets, the dataset whose classifier they
        test (``"imagenet"``), else None.
      parent_class_index: with ``parent``, class c here is class
        ``parent_class_index[c]`` of the parent (ImageNet-A/-R: 200 of 1000).
    """

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    splits: Mapping[str, Split]
    source: str
    identity: str
    split_origin: Mapping[str, str]
    parent: str | None = None
    parent_class_index: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> Split:
        """The split ``name``; a one-line ``DataError`` when the dataset has none."""
        if name not in self.splits:
            hint = f" (an out-of-distribution test set for '{self.parent}')" if self.parent else ""
            raise DataError(f"dataset '{self.name}' has no '{name}' split{hint}; it has: "
                            f"{', '.join(self.splits)}")
        return self.splits[name]

    def prompts(self) -> tuple[tuple[str, ...], ...]:
        """[C][T] prompts: every template filled with every class name."""
        return tuple(tuple(t.format(c) for t in self.templates) for c in self.classnames)


def digest_bytes(*chunks: bytes) -> str:
    """sha256 (hex) of the concatenated chunks."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def digest_file(path: str) -> str:
    """sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_dataset(
    *,
    kind: str,
    name: str,
    classnames: Sequence[str],
    templates: Sequence[str],
    splits: Mapping[str, Split],
    location: str,
    split_origin: Mapping[str, str],
    content_digests: Mapping[str, str] | None = None,
    identity_name: str | None = None,
    parent: str | None = None,
    parent_class_index: Sequence[int] | None = None,
) -> Dataset:
    """Checks labels against the classes and computes the identity.

    Args:
      kind: source kind (``"coop"``, ``"tfds"``, ``"sklearn"``, ``"idx"``, ``"folder"``).
      name: registry name.
      location: where the data sits (goes into ``source``, not the identity).
      content_digests: source-specific digests that shape the content
        (split files, pixel arrays); enter the identity.
      identity_name: the name that enters the identity when ``name`` holds a
        location (``folder:PATH`` -> ``"folder"``); default ``name``.
    """
    classnames = tuple(classnames)
    for split_name, split in splits.items():
        if split_name not in SPLIT_NAMES:
            raise ValueError(f"unknown split name {split_name!r}")
        bad = (split.labels < 0) | (split.labels >= len(classnames))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{split.describe(i)}: label {int(split.labels[i])} outside the "
                            f"{len(classnames)} classes of '{name}'")
    identity = hashlib.sha256(json.dumps({
        "kind": kind,
        "name": name if identity_name is None else identity_name,
        "classnames": classnames,
        "templates": list(templates),
        "splits": {k: splits[k].fingerprint for k in sorted(splits)},
        "content": dict(sorted((content_digests or {}).items())),
        "parent": parent,
        "parent_class_index": None if parent_class_index is None else list(parent_class_index),
    }, sort_keys=True).encode()).hexdigest()
    return Dataset(
        name=name, classnames=classnames, templates=tuple(templates),
        splits={k: splits[k] for k in SPLIT_NAMES if k in splits},
        source=f"{kind}:{location}", identity=identity, split_origin=dict(split_origin),
        parent=parent,
        parent_class_index=(None if parent_class_index is None
                            else tuple(int(i) for i in parent_class_index)),
    )
