"""Out-of-distribution test sets (ImageNet → -V2 / -Sketch / -A / -R): features and their file.

The OOD protocol of the papers: fit a method on the parent dataset's few-shot
task (ImageNet), choose its hyperparameters on the parent's validation set,
then score the parent's classifier on another test set whose classes are the
parent's (V2, Sketch: all 1000) or a subset of them (A, R: 200 -- prediction
among those 200 only, as CoOp evaluates them).

An :class:`OODSet` holds the test features with labels **in the parent's
class indices** and a ``class_mask`` over the parent's classes. Its file
(``DIR/features/<name>.ood.npz``, keys ``test``, ``test_labels``, ``class_mask``,
``meta``) is not a feature file: it has no train / val / text.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from jaxclip_fs.errors import ConfigError, FeatureFileError
from jaxclip_fs.features import featfile
from jaxclip_fs.io import atomic

IMAGENET = "imagenet"  # the parent of every registered OOD set (data/coop.py)


@dataclasses.dataclass(frozen=True)
class OODSet:
    """An out-of-distribution test set of a parent dataset.

    Attributes:
      name: registry name (``imagenet_v2`` ...).
      parent: the dataset whose few-shot fit is scored here.
      test: float32 [M, D] image features (view 0).
      test_labels: int32 [M] labels as parent class indices.
      class_mask: float32 [C_parent], 1 for the classes this set has.
      meta: provenance (backbone, weights, ...).
    """

    name: str
    parent: str
    test: np.ndarray
    test_labels: np.ndarray
    class_mask: np.ndarray
    meta: dict


def parent_classes(dataset, num_parent_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """An OOD set's test labels as parent class indices, and its mask over the parent's classes.

    Raises:
      ConfigError: ``dataset`` is not an out-of-distribution test set.
    """
    if not dataset.parent:
        raise ConfigError(f"data.ood {dataset.name}: not an out-of-distribution test set "
                          "(imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r)")
    parent_index = np.asarray(dataset.parent_class_index, np.int64)
    class_mask = np.zeros(num_parent_classes, np.float32)
    class_mask[parent_index] = 1.0
    return parent_index[dataset.split("test").labels].astype(np.int32), class_mask


def extract_ood(dataset, clip, num_parent_classes: int, *, dtype: str = "float32",
                batch_size: int = 64, cache_dir=None, use_cache: bool = True,
                workers: int | None = None, progress: bool = True) -> OODSet:
    """Encodes the test split of an OOD ``dataset`` (needs ``dataset.parent``) with ``clip``."""
    from jaxclip_fs.features.image_encoder import encode_split, make_image_encoder
    from jaxclip_fs.io.records import code_version

    labels, class_mask = parent_classes(dataset, num_parent_classes)
    encoder = make_image_encoder(clip, dtype=dtype, batch_size=batch_size)
    encoded = encode_split(encoder, dataset, "test", cache_dir=cache_dir, use_cache=use_cache,
                           workers=workers, progress=progress)
    meta = {"dataset": dataset.name, "parent": dataset.parent, "backbone": clip.config.name,
            "weights": "random" if clip.is_random else clip.weights_id,
            "split_policy": {"test": dataset.split_origin.get("test", "test split")},
            "dataset_identity": dataset.identity, "dtype": dtype, "code_version": code_version()}
    return OODSet(dataset.name, dataset.parent, encoded.features[0], labels, class_mask, meta)


def save_ood(path: str, ood: OODSet) -> None:
    atomic.save_npz(path, test=ood.test.astype(np.float32), test_labels=ood.test_labels,
                    class_mask=ood.class_mask, meta=np.asarray(json.dumps(ood.meta)))


def load_ood(path: str) -> OODSet:
    """Reads an OOD file written by :func:`save_ood`.

    Raises:
      FeatureFileError: missing or malformed (names the file and key).
    """
    data = featfile.read_npz(path, "an OOD feature file")
    for key in ("test", "test_labels", "class_mask", "meta"):
        if key not in data:
            raise FeatureFileError(f"{path}: missing key '{key}'")
    meta = json.loads(str(data["meta"]))
    return OODSet(meta["dataset"], meta["parent"], data["test"].astype(np.float32),
                  data["test_labels"].astype(np.int32), data["class_mask"].astype(np.float32), meta)


def parent_of(name: str) -> str:
    """The dataset whose few-shot fit an OOD set scores (``imagenet`` for the four ImageNet shifts).

    Raises:
      ConfigError: ``name`` is not an out-of-distribution test set.
    """
    from jaxclip_fs.data.registry import OOD_DATASETS

    if name not in OOD_DATASETS:
        raise ConfigError(f"data.ood {name}: not an out-of-distribution test set "
                          f"(choose from {', '.join(OOD_DATASETS)})")
    return IMAGENET
