"""CLIP image features of a dataset split: V views per image, optional taps, cached.

For every requested image of a split, view 0 is CLIP's evaluation transform
and views 1..V-1 are Tip-Adapter's training augmentation
(:func:`~jaxclip_fs.features.augment.augmented_view`: RandomResizedCrop with
area ``scale``, ratio 3/4..4/3, bicubic, then a horizontal flip with p = 0.5),
drawn from ``(aug_seed, image id, view)`` alone -- so any image's views are
the same in every run, order and process. The image is decoded once for all
its views, in a loader thread. The encoder is
``CLIP.encode_image`` jit-compiled for one batch shape, in float32 or
bfloat16 compute (outputs stored as float32).

The cache key (:func:`image_cache_spec`) covers the architecture and weights
identity, the dataset identity, split name and exact (id, label) list, the
preprocessing and augmentation, the views, taps and compute dtype.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from jaxclip_fs.clip.model import check_taps
from jaxclip_fs.clip.preprocess import CLIP_MEAN, CLIP_STD
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features import augment
from jaxclip_fs.features.cache import ChunkedEntry, default_cache_dir
from jaxclip_fs.features.encode import FixedBatchEncoder, compute_dtype, encode_items
from jaxclip_fs.features.pipeline import default_workers

FEATURES_KEY = "features"
TAP_PREFIX = "tap_"
DEFAULT_CHUNK_IMAGES = 256


def image_encode_fn(model, taps: Sequence[str] = ()):
    """``fn(variables, images [B, S, S, 3]) -> {"features": [B, E], "tap_<t>": [B, ...]}``.

    Outputs are float32 whatever the model's compute dtype.
    """
    taps = tuple(taps)

    def fn(variables, images):
        emb, tapped = model.apply(variables, images, taps=taps, method="encode_image")
        out = {FEATURES_KEY: emb.astype(jnp.float32)}
        out.update({TAP_PREFIX + t: tapped[t].astype(jnp.float32) for t in taps})
        return out

    return fn


@dataclasses.dataclass(frozen=True)
class ImageEncoder:
    """``CLIP.encode_image`` of ``clip`` compiled once for [B, S, S, 3] batches.

    Attributes:
      clip: the :class:`~jaxclip_fs.convert.load.LoadedCLIP`.
      taps: intermediate outputs it returns besides the embedding.
      dtype: compute dtype name ("float32" / "bfloat16"); outputs are float32.
      batches: the :class:`FixedBatchEncoder` (batch size B = ``batches.batch_size``).
    """

    clip: Any
    taps: tuple[str, ...]
    dtype: str
    batches: FixedBatchEncoder


def make_image_encoder(clip, *, taps: Sequence[str] = (), dtype: str = "float32",
                       batch_size: int = 64) -> ImageEncoder:
    """Builds the :class:`ImageEncoder` (checks taps and dtype; compiles on first use).

    Raises:
      ConfigError: unknown tap or dtype, batch_size < 1.
    """
    taps = tuple(taps)
    check_taps(clip.config, taps)
    if batch_size < 1:
        raise ConfigError(f"extraction.batch_size must be >= 1, got {batch_size}")
    model = clip.model.clone(dtype=compute_dtype(dtype))
    size = clip.config.image_size
    batches = FixedBatchEncoder(image_encode_fn(model, taps), clip.params, batch_size,
                                (size, size, 3))
    return ImageEncoder(clip, taps, dtype, batches)


def load_views(split, index: int, size: int, views: int, aug_seed: int,
               aug_scale: tuple[float, float]) -> np.ndarray:
    """The V views of image ``index`` of ``split``: float32 [V, S, S, 3].

    Raises:
      DataError: the image is missing or corrupt (names the file).
    """
    img = split.image(index)
    image_id = split.ids[index]
    return np.stack([augment.augmented_view(img, size, aug_seed, image_id, v, scale=aug_scale)
                     for v in range(views)])


def check_view_args(views: int, aug_seed: int, aug_scale: Sequence[float]) -> None:
    """ConfigError naming ``extraction.views`` / ``aug_seed`` / ``aug_scale`` when out of range."""
    if views < 1:
        raise ConfigError(f"extraction.views must be >= 1, got {views}")
    if aug_seed < 0:
        raise ConfigError(f"extraction.aug_seed must be >= 0, got {aug_seed}")
    if len(aug_scale) != 2 or not 0 < aug_scale[0] <= aug_scale[1] <= 1:
        raise ConfigError(f"extraction.aug_scale must satisfy 0 < low <= high <= 1, "
                          f"got {tuple(aug_scale)}")


def image_cache_spec(encoder: ImageEncoder, dataset, split_name: str, indices: np.ndarray, *,
                     views: int, aug_seed: int, aug_scale: tuple[float, float]
                     ) -> dict[str, Any]:
    """Everything that shapes the features of ``dataset.split(split_name)[indices]``.

    The content of the cache key: ``items`` is the sha256 of the selected
    (id, label) list in order (``Split.fingerprint`` of the subset).
    """
    clip = encoder.clip
    return {
        "kind": "clip_image_features",
        "model": clip.config.architecture(),
        "weights": clip.weights_id,
        "dataset": dataset.identity,
        "split": split_name,
        "items": dataset.split(split_name).subset(indices).fingerprint,
        "preprocess": {"size": clip.config.image_size, "mean": list(CLIP_MEAN),
                       "std": list(CLIP_STD), "resize": "short side, bicubic",
                       "crop": "center"},
        "views": int(views),
        "augment": None if views == 1 else {
            "transform": "RandomResizedCrop+HorizontalFlip(0.5)", "scale": list(aug_scale),
            "ratio": list(augment.DEFAULT_RATIO), "interpolation": "bicubic",
            "seed": int(aug_seed)},
        "taps": list(encoder.taps),
        "dtype": encoder.dtype,
    }


@dataclasses.dataclass(frozen=True)
class SplitFeatures:
    """Image features of some items of a split.

    Attributes:
      features: float32 [V, N, E], ``features[v, i]`` = view v of item i.
      taps: ``{tap: float32 [V, N, ...]}``.
      valid: bool [N]; False for skipped (unreadable) items, whose rows are 0.
      skipped: ``{item position: error message}``.
      loaded_chunks, computed_chunks: cache statistics.
    """

    features: np.ndarray
    taps: dict[str, np.ndarray]
    valid: np.ndarray
    skipped: dict[int, str]
    loaded_chunks: int
    computed_chunks: int


def encode_split(
    encoder: ImageEncoder,
    dataset,
    split_name: str,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    views: int = 1,
    aug_seed: int = 0,
    aug_scale: tuple[float, float] = augment.TIP_ADAPTER_SCALE,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    chunk_images: int = DEFAULT_CHUNK_IMAGES,
    skip_corrupt: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> SplitFeatures:
    """Encodes ``dataset.split(split_name)[indices]`` with ``views`` views each.

    Args:
      encoder: from :func:`make_image_encoder` (model, weights, taps, dtype,
        batch size); reusable across splits, compiled once.
      dataset: a :class:`~jaxclip_fs.data.dataset.Dataset`.
      split_name: "train", "val" or "test".
      indices: items of the split, in output order (default: all).
      views: V >= 1; view 0 un-augmented.
      aug_seed: augmentation seed (>= 0).
      aug_scale: RandomResizedCrop area range (Tip-Adapter 0.5-1, LDC 0.8-1).
      cache_dir: default :func:`~jaxclip_fs.features.cache.default_cache_dir`.
      use_cache: False: compute everything, write nothing.
      chunk_images: images per cache chunk (an interrupt loses at most one).
      skip_corrupt: skip unreadable images (``valid`` False) instead of raising.
      workers: loader threads (default: CPU count).
      progress: tqdm bar with images/s on stderr.

    Returns:
      :class:`SplitFeatures`.

    Raises:
      ConfigError: bad views / scale / seed. DataError: unreadable
      image without ``skip_corrupt`` (names the file).
    """
    check_view_args(views, aug_seed, aug_scale)
    split = dataset.split(split_name)
    indices = np.arange(len(split)) if indices is None else np.asarray(indices, np.int64)
    size = encoder.clip.config.image_size
    entry = None
    if use_cache:
        spec = image_cache_spec(encoder, dataset, split_name, indices, views=views,
                                aug_seed=aug_seed, aug_scale=aug_scale)
        entry = ChunkedEntry(cache_dir or default_cache_dir(), spec, len(indices), chunk_images)

    def load(position: int) -> np.ndarray:
        return load_views(split, int(indices[position]), size, views, aug_seed, tuple(aug_scale))

    result = encode_items(
        encoder.batches, load, len(indices), views, entry, skip_errors=skip_corrupt,
        workers=workers or default_workers(), progress=progress,
        desc=f"{dataset.name} {split_name}")
    as_view_major = {name: np.ascontiguousarray(np.moveaxis(value, 1, 0))
                     for name, value in result.outputs.items()}
    return SplitFeatures(
        features=as_view_major[FEATURES_KEY],
        taps={t: as_view_major[TAP_PREFIX + t] for t in encoder.taps},
        valid=result.valid, skipped=result.errors,
        loaded_chunks=result.loaded_chunks, computed_chunks=result.computed_chunks)
