"""Augmented training views: Tip-Adapter's transform on the host, and an on-device JAX crop.

Host side (feature extraction, cache of V views per training image):
view 0 is CLIP's evaluation transform (:func:`~jaxclip_fs.clip.preprocess.preprocess`);
view v >= 1 is Tip-Adapter's training transform::

    Compose([RandomResizedCrop(size, scale=(0.5, 1), interpolation=BICUBIC),
             RandomHorizontalFlip(p=0.5), ToTensor(), Normalize(CLIP_MEAN, CLIP_STD)])

with its randomness drawn from :func:`view_rng` ``(seed, image_id, view)``, so
every view is reproducible on its own, in any order, in any process.

Device side (LDC: ``RandomResizedCrop(224, scale=(0.8, 1), bicubic)`` + flip,
fresh every step inside a compiled training step):
:func:`jax_random_resized_crop`.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxclip_fs.clip.preprocess import preprocess, to_clip_array
from jaxclip_fs.errors import ConfigError

DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
TIP_ADAPTER_SCALE = (0.5, 1.0)
LDC_SCALE = (0.8, 1.0)
# torchvision's RandomResizedCrop tries this many random boxes before its
# deterministic center-crop fallback.
CROP_ATTEMPTS = 10


class Draws(Protocol):
    """The part of :class:`numpy.random.Generator` the augmentations use.

    Draw order per view (torchvision's): for each crop attempt
    ``uniform(scale)``, ``uniform(log ratio)``; on success ``integers(top)``,
    ``integers(left)``; then ``random()`` for the flip.
    """

    def uniform(self, low: float, high: float) -> float: ...

    def integers(self, low: int, high: int) -> int: ...

    def random(self) -> float: ...


def random_resized_crop_params(
    rng: Draws, width: int, height: int,
    scale: tuple[float, float] = TIP_ADAPTER_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``, drawing from ``rng``.

    Up to 10 attempts: area fraction ``a ~ U(scale)``, aspect ratio
    ``r = exp(U(log ratio))``, ``w = round(sqrt(a·W·H·r))``,
    ``h = round(sqrt(a·W·H / r))``; the first box with ``0 < w <= W`` and
    ``0 < h <= H`` is placed at ``top ~ U{0..H-h}``, ``left ~ U{0..W-w}``.
    Otherwise the fallback is a center crop of the whole image with its
    aspect ratio clamped into ``ratio``. Same draw order as torchvision, so
    the same draws give the same box (computed here in float64; torch
    rounds its draws to float32, which can matter only for a box side
    within ~1e-5 of a .5 rounding boundary).

    Args:
      rng: a :class:`numpy.random.Generator` (or any :class:`Draws`).
      width, height: image size W, H.
      scale: range of the crop's area as a fraction of the image's.
      ratio: range of the crop's width / height.

    Returns:
      (top, left, h, w) in pixels.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def view_rng(seed: int, image_id: str, view: int) -> np.random.Generator:
    """The random generator of one augmented view, independent of any other call.

    Seeded by ``SeedSequence([seed, view, *sha256(image_id) as 8 uint32])``:
    a stable hash (unlike Python's salted ``hash``), so the same
    (seed, image, view) draws the same crop in every process and order.

    Raises:
      ConfigError: negative ``seed`` or ``view``.
    """
    if seed < 0 or view < 0:
        raise ConfigError(f"seed and view must be >= 0, got seed={seed}, view={view}")
    digest = np.frombuffer(hashlib.sha256(image_id.encode("utf-8")).digest(), dtype="<u4")
    entropy = [int(seed), int(view), *(int(word) for word in digest)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def random_view(img: Image.Image, size: int, rng: Draws,
                scale: tuple[float, float] = TIP_ADAPTER_SCALE) -> np.ndarray:
    """Tip-Adapter's training transform of one image with draws from ``rng``.

    ``RandomResizedCrop(size, scale, BICUBIC)`` (crop, then Pillow bicubic
    resize to ``size x size``, as torchvision's ``resized_crop`` on PIL),
    ``RandomHorizontalFlip(0.5)`` (flip when ``rng.random() < 0.5``),
    ``ToTensor``, ``Normalize`` -- HWC. The image is converted to RGB first
    (as the reference data loaders do when reading it).

    Returns:
      float32 [size, size, 3].
    """
    img = img if img.mode == "RGB" else img.convert("RGB")
    top, left, h, w = random_resized_crop_params(rng, img.width, img.height, scale=scale)
    img = img.crop((left, top, left + w, top + h))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_clip_array(img)


def augmented_view(img: Image.Image, size: int, seed: int, image_id: str, view: int,
                   scale: tuple[float, float] = TIP_ADAPTER_SCALE) -> np.ndarray:
    """View ``view`` of one training image: 0 is un-augmented, >= 1 random.

    Args:
      img: the decoded image (:func:`~jaxclip_fs.data.images.open_image_file`).
      size: output side S.
      seed: augmentation seed (>= 0).
      image_id: a stable identifier of the image (e.g. its relative path).
      view: 0 gives ``preprocess(img, size)``; v >= 1 gives
        ``random_view(img, size, view_rng(seed, image_id, v), scale)``.
      scale: RandomResizedCrop area range (Tip-Adapter: 0.5-1).

    Returns:
      float32 [S, S, 3].
    """
    if view == 0:
        return preprocess(img, size)
    return random_view(img, size, view_rng(seed, image_id, view), scale=scale)


# --- on device --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("height", "width"))
def jax_crop_box(key: jax.Array, height: int, width: int,
                 scale=LDC_SCALE, ratio=DEFAULT_RATIO) -> jax.Array:
    """One RandomResizedCrop box drawn on device with torchvision's rule.

    All 10 attempts are drawn at once; the first valid one is used, else the
    same ratio-clamped center-crop fallback as :func:`random_resized_crop_params`
    (arithmetic in float32). ``scale`` and ``ratio`` may be traced arrays.

    Args:
      key: PRNG key for this image.
      height, width: static image size H, W.
      scale, ratio: (low, high) pairs, as in torchvision.

    Returns:
      int32 [4]: (top, left, h, w) with ``0 <= top``, ``top + h <= H``,
      ``0 <= left``, ``left + w <= W``.
    """
    scale = jnp.asarray(scale, jnp.float32)
    ratio = jnp.asarray(ratio, jnp.float32)
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    target_area = height * width * jax.random.uniform(
        k_area, (CROP_ATTEMPTS,), minval=scale[0], maxval=scale[1])
    log_ratio = jnp.log(ratio)
    aspect = jnp.exp(jax.random.uniform(
        k_ratio, (CROP_ATTEMPTS,), minval=log_ratio[0], maxval=log_ratio[1]))
    ws = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
    hs = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
    valid = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = jnp.argmax(valid)

    in_ratio = width / height
    low, high = jnp.min(ratio), jnp.max(ratio)
    fallback_w = jnp.where(in_ratio > high, jnp.round(height * high), width).astype(jnp.int32)
    fallback_h = jnp.where(in_ratio < low, jnp.round(width / low), height).astype(jnp.int32)

    found = valid.any()
    h = jnp.where(found, hs[first], fallback_h)
    w = jnp.where(found, ws[first], fallback_w)

    def offset(k, room):  # uniform integer in [0, room], room = size - side
        draw = jnp.floor(jax.random.uniform(k) * (room + 1)).astype(jnp.int32)
        return jnp.where(found, jnp.minimum(draw, room), room // 2)

    return jnp.stack([offset(k_top, height - h), offset(k_left, width - w), h, w])


def _resample_box(image: jax.Array, box: jax.Array, out_size: int, method: str,
                  antialias: bool) -> jax.Array:
    """Resamples ``image[top:top+h, left:left+w]`` to [out_size, out_size, C].

    Output pixel centre ``y + 0.5`` samples input coordinate
    ``top + (y + 0.5) · h / out_size`` (half-pixel centres), likewise x.
    """
    top, left, h, w = (box[i].astype(jnp.float32) for i in range(4))
    scale = jnp.stack([out_size / h, out_size / w])
    translation = -jnp.stack([top, left]) * scale
    return jax.image.scale_and_translate(
        image, (out_size, out_size, image.shape[-1]), (0, 1), scale, translation,
        method=method, antialias=antialias)


@functools.partial(jax.jit, static_argnames=("out_size", "flip", "method", "antialias"))
def jax_random_resized_crop(
    key: jax.Array, images: jax.Array, out_size: int,
    scale=LDC_SCALE, ratio=DEFAULT_RATIO, flip: bool = True,
    method: str = "cubic", antialias: bool = True,
) -> jax.Array:
    """RandomResizedCrop (+ horizontal flip) of a batch, on device, jit-compiled.

    Image ``i`` uses ``k_i = fold_in(key, i)``: its box comes from
    :func:`jax_crop_box` ``(fold_in(k_i, 0), ...)`` and, when ``flip``, it is
    mirrored left-right if ``bernoulli(fold_in(k_i, 1), 0.5)``. The crop is
    resampled with :func:`jax.image.scale_and_translate` (``method`` "cubic"
    = Keys a = -0.5 as Pillow's bicubic, or "linear"; ``antialias`` widens
    the kernel when shrinking, as Pillow does). Resampling is linear, so it
    may run on raw or CLIP-normalised pixels alike.

    Not bit-equal to torchvision/Pillow: Pillow rounds to uint8 between its
    horizontal and vertical passes and clips to [0, 255]; Pillow resamples
    the cropped image (kernel weights renormalised at the box edge) while
    here the kernel near the box edge also reads the pixels just outside it
    (renormalised only at the image edge); the boxes come from JAX's PRNG,
    not torch's.

    Args:
      key: PRNG key (e.g. ``fold_in(train_key, step)``).
      images: [B, H, W, C], float (uint8 is converted to float32).
      out_size: static output side S.
      scale: area range (LDC: 0.8-1); may be traced.
      ratio: width/height range; may be traced.
      flip: static; draw a horizontal flip with p = 0.5.
      method: "cubic" or "linear".
      antialias: see above.

    Returns:
      [B, S, S, C], the input's float dtype (float32 for uint8 input).
    """
    if method not in ("cubic", "linear"):
        raise ConfigError(f"method must be 'cubic' or 'linear', got {method!r}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(jnp.float32)
    _, height, width, _ = images.shape

    def one(index, image):
        image_key = jax.random.fold_in(key, index)
        box = jax_crop_box(jax.random.fold_in(image_key, 0), height, width, scale, ratio)
        out = _resample_box(image, box, out_size, method, antialias)
        if flip:
            mirror = jax.random.bernoulli(jax.random.fold_in(image_key, 1), 0.5)
            out = jnp.where(mirror, out[:, ::-1], out)
        return out

    return jax.vmap(one)(jnp.arange(images.shape[0]), images)
