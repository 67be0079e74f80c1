"""Class counts and split sizes, without the images: from a loaded dataset or a table.

What a sweep's programs look like -- their shapes, FLOPs and memory --
depends on each dataset's class count and split sizes only, so a dry run
(``jaxclip-fs run --dry-run``) and the planner need no image. They come from
the dataset itself when it can be loaded (its split files or folders: labels,
no pixels) and otherwise, for the papers' benchmark sets, from
:data:`BENCHMARK_SIZES`.

:data:`BENCHMARK_SIZES` is CoOp's split files (``split_zhou_*.json``, and
FGVC-Aircraft's ``images_variant_*.txt``), as tabulated in the dataset
statistics of Zhou et al., *Learning to Prompt for Vision-Language Models*
(CoOp, IJCV 2022), with this library's ImageNet rule applied (the CoOp
layout's :mod:`~jaxclip_fs.data.coop`): ImageNet's test split is the 50 000
val images, and its validation split is carved from train, 50 per class
(:data:`~jaxclip_fs.data.carve.IMAGENET_VAL_CAP`) -- CoOp validates on the
test images instead. The out-of-distribution sets are test splits only.
The tests check the table against the real split files they ship.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxclip_fs.data.carve import IMAGENET_VAL_CAP


@dataclasses.dataclass(frozen=True)
class SplitSizes:
    """A dataset's class count and split sizes.

    Attributes:
      num_classes: C.
      train, val, test: images per split (0: no such split).
      val_per_class: per-class val counts when known (a loaded dataset), else None
        (a table: classes assumed balanced).
      origin: where the numbers come from (for reports).
    """

    num_classes: int
    train: int
    val: int
    test: int
    val_per_class: tuple[int, ...] | None = None
    origin: str = ""


_IMAGENET_TRAIN = 1_281_167  # ILSVRC-2012 train images (1000 classes)

#: name -> (classes, train, val, test) of CoOp's splits (module docstring).
_COOP = {
    "imagenet": (1000, _IMAGENET_TRAIN - 1000 * IMAGENET_VAL_CAP, 1000 * IMAGENET_VAL_CAP, 50_000),
    "caltech101": (100, 4_128, 1_649, 2_465),
    "oxford_pets": (37, 2_944, 736, 3_669),
    "stanford_cars": (196, 6_509, 1_635, 8_041),
    "oxford_flowers": (102, 4_093, 1_633, 2_463),
    "food101": (101, 50_500, 20_200, 30_300),
    "fgvc_aircraft": (100, 3_334, 3_333, 3_333),
    "sun397": (397, 15_880, 3_970, 19_850),
    "dtd": (47, 2_820, 1_128, 1_692),
    "eurosat": (10, 13_500, 5_400, 8_100),
    "ucf101": (101, 7_639, 1_898, 3_783),
    # out-of-distribution test sets of ImageNet (test split only)
    "imagenet_v2": (1000, 0, 0, 10_000),
    "imagenet_sketch": (1000, 0, 0, 50_889),
    "imagenet_a": (200, 0, 0, 7_500),
    "imagenet_r": (200, 0, 0, 30_000),
}
SOURCE = ("CoOp's split files, as tabulated by Zhou et al., Learning to Prompt for "
          "Vision-Language Models (IJCV 2022)")
_CARVED = "; val carved from ILSVRC-2012 train, 50 per class"

#: The papers' benchmark and OOD sets: sizes without the data (module docstring).
BENCHMARK_SIZES: dict[str, SplitSizes] = {
    name: SplitSizes(c, train, val, test,
                     origin=SOURCE + (_CARVED if name == "imagenet" else ""))
    for name, (c, train, val, test) in _COOP.items()}


def sizes_of_dataset(dataset) -> SplitSizes:
    """The exact sizes of a loaded :class:`~jaxclip_fs.data.dataset.Dataset` (labels only)."""
    def count(name: str) -> tuple[int, tuple[int, ...] | None]:
        if name not in dataset.splits:
            return 0, None
        labels = np.asarray(dataset.split(name).labels, np.int64)
        per_class = np.bincount(labels, minlength=dataset.num_classes)
        return int(labels.size), tuple(int(n) for n in per_class)

    (train, _), (val, val_pc), (test, _) = count("train"), count("val"), count("test")
    return SplitSizes(dataset.num_classes, train, val, test, val_pc,
                      origin=f"{dataset.name}'s splits ({dataset.source})")
