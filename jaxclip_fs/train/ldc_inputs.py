"""What LDC trains and predicts on: a CLIP's taps, from images on device or from a tap cache.

Two training paths feed :func:`~jaxclip_fs.train.ldc.fit_ldc` the same
:class:`~jaxclip_fs.methods.ldc.LDCInputs`:

* **trunk** (:func:`trunk_fetch`): the support images live on device as
  uint8 [V, N, S, S, 3] (CLIP's evaluation transform, exactly invertible to
  bytes); each step crops them afresh with
  :func:`~jaxclip_fs.features.augment.jax_random_resized_crop` (LDC: scale
  0.8-1, ratio 3/4-4/3, flip, bicubic), normalises and runs the frozen CLIP
  to the taps inside the compiled step (``stop_gradient``: nothing flows
  into the trunk). Memory: the images only. Deviation: the crop is taken
  from the preprocessed S x S center square, not the original image.
* **cache** (:func:`cache_fetch`): V views per support image (view 0
  un-augmented, views 1..V-1 the features package's host-side
  RandomResizedCrop(0.8-1) + flip) encoded once with taps through the
  content-addressed feature cache; minibatches index into them. Memory:
  :func:`tap_cache_bytes`.

:func:`choose_train_path` picks ``cache`` when it fits a byte budget (else
``trunk``), unless told. Given the same views (trunk path with augmentation
off on the V cached views), both paths compute the same numbers.

Prediction streams val / test images through the trunk once per batch and
applies every trained task's heads to the shared taps
(:func:`predict_split`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.clip.preprocess import CLIP_MEAN, CLIP_STD
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features import augment
from jaxclip_fs.features.encode import FixedBatchEncoder, encode_items
from jaxclip_fs.features.image_encoder import encode_split, load_views, make_image_encoder
from jaxclip_fs.features.pipeline import default_workers, ordered_prefetch
from jaxclip_fs.features.taps import TAP_ITEMSIZE, tap_nbytes, tap_shape
from jaxclip_fs.methods import ldc as ldc_lib
from jaxclip_fs.methods.cache import l2_normalize
from jaxclip_fs.methods.ldc import LDCInputs, LDCModel
from jaxclip_fs.train.ldc import predict_tasks

TRAIN_PATHS = ("auto", "trunk", "cache")
DEFAULT_TAP_CACHE_BUDGET = 4 * 2**30
_MEAN = np.asarray(CLIP_MEAN, np.float32)
_STD = np.asarray(CLIP_STD, np.float32)


# --- the model for a CLIP ------------------------------------------------------------------


def ldc_tap_names(clip_config, vit_rule: str = "proportional") -> tuple[str, ...]:
    """LDC's four taps: ``layer1..4``, or the ViT blocks of ``methods.ldc.vit_tap_blocks``."""
    if not clip_config.is_vit:
        return ("layer1", "layer2", "layer3", "layer4")
    return tuple(f"block{i}" for i in ldc_lib.vit_tap_blocks(clip_config.vision_layers, vit_rule))


def ldc_for_clip(clip, num_classes: int, *, fusion: str = "fixed", ablation: str = "full",
                 vit_rule: str = "proportional") -> tuple[LDCModel, tuple[str, ...]]:
    """The :class:`~jaxclip_fs.methods.ldc.LDCModel` of a loaded CLIP and the taps it reads.

    The projector is the CLIP's own frozen ``attnpool`` (ResNet) or ``proj``
    (ViT), applied with the variables passed at call time.
    """
    config = clip.config
    taps = ldc_tap_names(config, vit_rule)
    switches = dict(fusion=fusion, ablation=ablation)
    if config.is_vit:
        ldc_config = ldc_lib.vit_config(config.vision_width, config.embed_dim, num_classes,
                                        **switches)
        method = "proj"
    else:
        ldc_config = ldc_lib.resnet_config([tap_shape(config, t) for t in taps], config.embed_dim,
                                           num_classes, **switches)
        method = "attnpool"
    return LDCModel(ldc_config, _projector(clip.model, method)), taps


@functools.lru_cache(maxsize=32)
def _projector(model, method: str):
    """``project(variables, x)``; cached so equal models give the same (hashable) function."""
    def project(variables, x):
        return model.apply(variables, x, method=method)
    return project


def frozen_arguments(clip, text: np.ndarray) -> dict:
    """The frozen arguments of a fetch: CLIP variables, classifier W [C, E], exp(logit_scale)."""
    return {"clip": clip.params, "text": jnp.asarray(text, jnp.float32),
            "logit_scale": jnp.exp(clip.params["params"]["logit_scale"])}


def zero_shot(features: jax.Array, text: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """``s = logit_scale · f̂ Wᵀ`` → [B, C] (``methods.cache.zero_shot_logits`` without a Task)."""
    return logit_scale * l2_normalize(features.astype(jnp.float32)) @ text.T


# --- the two training paths ----------------------------------------------------------------


def to_pixels(clip_arrays: np.ndarray) -> np.ndarray:
    """CLIP-normalised float32 images → the uint8 pixels they came from (exact).

    ``preprocess`` / ``augmented_view`` compute ``(p / 255 - mean) / std`` in
    float32 from uint8 ``p``; ``round((x·std + mean)·255)`` recovers ``p``
    (the float error is ~1e-5 of a grey level).
    """
    return np.clip(np.rint((clip_arrays * _STD + _MEAN) * 255.0), 0, 255).astype(np.uint8)


def normalize_pixels(pixels: jax.Array) -> jax.Array:
    """uint8 (or float 0..255) [..., 3] → CLIP-normalised float32, as ``to_clip_array``."""
    return (pixels.astype(jnp.float32) / jnp.float32(255.0) - _MEAN) / _STD


def trunk_fetch(model, tap_names: Sequence[str], *, augment_views: bool,
                scale: tuple[float, float] = augment.LDC_SCALE):
    """``fetch(frozen, key, pixels [B, S, S, 3] uint8) -> LDCInputs`` running the frozen trunk.

    With ``augment_views`` each image gets a fresh RandomResizedCrop(``scale``)
    + flip from ``key``; without, the pixels are used as they are (fixed views).
    Equal arguments return the same function (so compiled programs are reused).
    """
    return _trunk_fetch(model, tuple(tap_names), bool(augment_views), tuple(scale))


@functools.lru_cache(maxsize=32)
def _trunk_fetch(model, tap_names: tuple[str, ...], augment_views: bool,
                 scale: tuple[float, float]):
    unique = tuple(dict.fromkeys(tap_names))
    size = model.config.image_size

    def fetch(frozen, key, pixels):
        if augment_views:
            pixels = augment.jax_random_resized_crop(key, pixels, size, scale=scale)
        emb, taps = model.apply(frozen["clip"], normalize_pixels(pixels), taps=unique,
                                method="encode_image")
        emb, taps = jax.lax.stop_gradient((emb, taps))
        return LDCInputs(tuple(taps[t] for t in tap_names),
                         zero_shot(emb, frozen["text"], frozen["logit_scale"]), emb)

    return fetch


def cache_fetch(frozen, key, rows) -> LDCInputs:
    """``fetch`` of the tap-cache path: rows ``{"taps": (4 arrays), "features": [B, E]}``."""
    del key
    features = rows["features"]
    return LDCInputs(tuple(rows["taps"]), zero_shot(features, frozen["text"],
                                                    frozen["logit_scale"]), features)


def tap_cache_bytes(clip_config, tap_names: Sequence[str], num_images: int, views: int) -> int:
    """Bytes of a tap cache: the distinct taps plus the embeddings, float32, V x N."""
    unique = tuple(dict.fromkeys(tap_names))
    taps = sum(tap_nbytes(clip_config, unique, num_images, views).values())
    return taps + clip_config.embed_dim * TAP_ITEMSIZE * num_images * views


def choose_train_path(requested: str, needed_bytes: int, budget_bytes: int) -> str:
    """The training path: ``"cache"`` when asked, or on ``"auto"`` if it fits the budget.

    ``"auto"`` gives ``"cache"`` when ``needed_bytes <= budget_bytes``, else ``"trunk"``.

    Raises:
      ConfigError: unknown path name.
    """
    if requested not in TRAIN_PATHS:
        raise ConfigError(
            f"--train-path must be one of {', '.join(TRAIN_PATHS)}, got '{requested}'")
    if requested != "auto":
        return requested
    return "cache" if needed_bytes <= budget_bytes else "trunk"


def support_pixels(dataset, indices: np.ndarray, size: int, *, views: int = 1, aug_seed: int = 0,
                   aug_scale: tuple[float, float] = augment.LDC_SCALE,
                   workers: int | None = None) -> np.ndarray:
    """uint8 [V, N, S, S, 3]: the views of train images ``indices`` (view 0 = eval transform).

    Views v >= 1 are the features package's augmented views, so these pixels
    are exactly what the tap cache with the same ``views``/``aug_seed`` encodes.
    """
    split = dataset.split("train")
    out = np.empty((views, len(indices), size, size, 3), np.uint8)

    def load(position):
        return load_views(split, int(indices[position]), size, views, aug_seed, tuple(aug_scale))

    stream = ordered_prefetch(load, range(len(indices)), workers=workers or default_workers(),
                              ahead=8)
    for position, future in stream:
        out[:, position] = to_pixels(future.result())
    return out


def tap_cache_pool(clip, dataset, indices: np.ndarray, tap_names: Sequence[str], *, views: int,
                   aug_seed: int = 0, batch_size: int = 64, cache_dir=None, use_cache: bool = True,
                   workers: int | None = None, progress: bool = True) -> dict:
    """The tap-cache pool of train ``indices``: ``{"taps": 4 x [V, N, ...], "features": [V, N, E]}``

    Encoded through :func:`~jaxclip_fs.features.image_encoder.encode_split`
    (content-addressed cache; LDC's augmentation scale 0.8-1).
    """
    unique = tuple(dict.fromkeys(tap_names))
    encoder = make_image_encoder(clip, taps=unique, batch_size=batch_size)
    encoded = encode_split(encoder, dataset, "train", indices, views=views, aug_seed=aug_seed,
                           aug_scale=augment.LDC_SCALE, cache_dir=cache_dir, use_cache=use_cache,
                           workers=workers, progress=progress)
    return {"taps": tuple(encoded.taps[t] for t in tap_names), "features": encoded.features}


# --- prediction -----------------------------------------------------------------------------


HEADS = ("mlp", "ada", "tot")


@functools.lru_cache(maxsize=32)
def _predict_fn(model: LDCModel, fetch, fused: bool):
    """``fn((frozen, params, stats, beta), pixels) -> {name: [B, ...]}`` (:func:`predict_split`)."""
    def fn(bundle, pixels):
        frozen, params, batch_stats, beta = bundle
        inputs = fetch(frozen, None, pixels)
        out = predict_tasks(model, params, batch_stats, frozen["clip"], inputs)
        swap = lambda x: jnp.swapaxes(x, 0, 1)  # [T, B, ...] -> [B, T, ...]
        result = {"s": inputs.s}
        result.update({f"pred_{name}": swap(jnp.argmax(getattr(out, name), axis=-1))
                       for name in HEADS})
        if fused:
            result["fused"] = swap(ldc_lib.fuse(out.mlp, out.ada, beta[:, None, None]))
        else:
            result.update(mlp=swap(out.mlp), ada=swap(out.ada))
        return result
    return fn


def predict_split(clip, dataset, split_name: str, indices: np.ndarray, model: LDCModel,
                  tap_names: Sequence[str], params: dict, batch_stats: dict, frozen: dict, *,
                  beta: np.ndarray | None = None, batch_size: int = 64,
                  workers: int | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """Eval-mode LDC outputs of T trained tasks on ``dataset.split(split_name)[indices]``.

    Each batch of images (CLIP's evaluation transform) goes through the
    frozen trunk once; every task's heads read the same taps.

    Args:
      params, batch_stats: stacked over tasks [T, ...].
      beta: [T] fusion weights: return the reported logits ``fused`` instead
        of the two heads (a [M, T, C] array less to hold).

    Returns:
      numpy: ``s`` [M, C]; ``pred_mlp`` / ``pred_ada`` / ``pred_tot`` [M, T]
      (argmax of each head); and ``mlp``, ``ada`` [M, T, C], or with ``beta``
      ``fused`` [M, T, C].
    """
    fetch = trunk_fetch(clip.model, tap_names, augment_views=False)
    size = clip.config.image_size
    split = dataset.split(split_name)
    fused = beta is not None
    num_tasks = jax.tree.leaves(params)[0].shape[0]
    beta = jnp.asarray(beta if fused else np.zeros(num_tasks), jnp.float32)

    def load(position):
        return to_pixels(load_views(split, int(indices[position]), size, 1, 0, augment.LDC_SCALE))

    encoder = FixedBatchEncoder(_predict_fn(model, fetch, fused),
                                (frozen, params, batch_stats, beta), batch_size,
                                (size, size, 3), np.uint8)
    result = encode_items(encoder, load, len(indices), 1, None,
                          workers=workers or default_workers(), progress=progress,
                          desc=f"{dataset.name} {split_name}")
    return {name: value[:, 0] for name, value in result.outputs.items()}
