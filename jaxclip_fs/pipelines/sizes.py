"""The sizes of an experiment's inputs, without the inputs: what its programs' shapes depend on.

The planner and ``run --dry-run`` lower programs from abstract arguments
(``jax.ShapeDtypeStruct``), so they need each dataset's sizes, never its
images or features: :class:`InputSizes` for the feature programs, the
dataset's :class:`~jaxclip_fs.data.sizes.SplitSizes` for image programs.
Every input provider answers ``provider.sizes(dataset)``:

* feature files and sets in memory -- exactly, from their arrays (:func:`sizes_of`);
* datasets encoded here -- from the dataset's labels (its split files; no
  image is read), the CLIP variant's embedding width and the configured
  views -- the shapes extraction will give;
* with ``tables=True`` (a dry run on a machine without the data) -- the
  papers' benchmark sets from :data:`~jaxclip_fs.data.sizes.BENCHMARK_SIZES`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxclip_fs.data.fewshot import capped_val_shots
from jaxclip_fs.data.sizes import BENCHMARK_SIZES, SplitSizes, sizes_of_dataset
from jaxclip_fs.errors import DataError
from jaxclip_fs.features.featfile import FeatureSet


@dataclasses.dataclass(frozen=True)
class InputSizes:
    """What a feature program's shapes depend on, for one dataset: no arrays.

    Attributes:
      num_classes: C. dim: D, the classifier's width (``FeatureSet.dim``).
      views: V (train views).
      val: validation split size. test: test split size.
      val_per_class: validation images of each class (None: unknown; every
        class is then taken to have CoOp's ``min(K, 4)``).
      origin: where the sizes come from (for reports).
      feature_dim: the image rows' width when it differs from D (paired
        features: ``[adapted | original]`` rows of 2E, text of E).
    """

    num_classes: int
    dim: int
    views: int
    val: int
    test: int
    val_per_class: tuple[int, ...] | None = None
    origin: str = ""
    feature_dim: int | None = None

    @property
    def num_views(self) -> int:  # as FeatureSet's (fusion signatures read either)
        return self.views

    def val_rows(self, policy: str, shots: int) -> int:
        """Rows :func:`~jaxclip_fs.data.fewshot.ranked_val_rows` gives a seed for ``shots``
        (``"none"``: no validation at all)."""
        if policy == "none":
            return 0
        if policy == "full":
            return self.val
        cap = capped_val_shots(shots)
        if self.val_per_class is None:
            return min(self.num_classes * cap, self.val)
        return int(sum(min(cap, n) for n in self.val_per_class))


def sizes_of(fs: FeatureSet) -> InputSizes:
    """The exact :class:`InputSizes` of a feature set."""
    counts = np.bincount(np.asarray(fs.val_labels, np.int64), minlength=fs.num_classes)
    return InputSizes(fs.num_classes, fs.dim, fs.num_views, int(fs.val.shape[0]),
                      int(fs.test.shape[0]), tuple(int(n) for n in counts),
                      origin=f"features of {fs.meta.get('dataset', 'a feature set')}",
                      feature_dim=int(fs.train.shape[-1]))


def feature_sizes(split: SplitSizes, dim: int, views: int,
                  feature_dim: int | None = None) -> InputSizes:
    """The :class:`InputSizes` extraction will give a dataset of these split sizes."""
    return InputSizes(split.num_classes, dim, views, split.val, split.test, split.val_per_class,
                      origin=split.origin, feature_dim=feature_dim)


def split_sizes(session, name: str) -> SplitSizes:
    """A dataset's :class:`SplitSizes`: from its labels, else (``session.tables``) the table.

    Raises:
      DataError: the dataset cannot be loaded and is not in the table (or tables are off).
    """
    try:
        return sizes_of_dataset(session.dataset(name))
    except DataError:
        if getattr(session, "tables", False) and name in BENCHMARK_SIZES:
            return BENCHMARK_SIZES[name]
        raise


def embed_dim(session) -> int:
    """The CLIP's embedding width, from its variant table (no weights loaded)."""
    from jaxclip_fs.clip.variants import get_config

    return get_config(session.config.model.backbone).embed_dim


def pool_size_bound(split: SplitSizes, shots: int, seeds: Sequence[int],
                    draws: Sequence[tuple[str, int, int]] = ()) -> int:
    """At most how many support images ``seeds`` up to ``shots`` (their nested sets) and the
    official ``draws`` ``(sampler, seed, shots)`` hold, without the labels: C·K per nested
    seed plus C·k per draw, capped by the train split (exact: the image source's
    ``pool_size``, which draws them)."""
    bound = split.num_classes * (shots * len(seeds) + sum(k for _, _, k in draws))
    return int(min(split.train or bound, bound))
