"""CLIP-LoRA (Zanella & Ben Ayed, CVPR-W'24): low-rank factors in the attention of both towers.

The adaptation is ``{"visual": ..., "text": ...}`` of LoRA factors
(:func:`jaxclip_fs.clip.lora.init_lora`; B = 0, so training starts from the
frozen CLIP). Every step both towers run through their adapters (official
``lora.py`` ``run_lora``, ``encoder = "both"``)::

    t_c = text(tokens of "a photo of a {class}." ; LoRA)        recomputed every step
    f   = image(RandomResizedCrop(scale 0.08-1) + flip of x ; LoRA)
    logits = 100 · f̂ t̂ᵀ                                          loss = CE(logits, y)

(``logit_scale = 100`` fixed in ``main.py``; the one template
``"a photo of a {}."`` for every dataset: the datasets' own templates are
commented out in ``datasets/*.py``; ``_`` in class names read as spaces.)
With ``encoder = "vision"`` the text side is the frozen zero-shot
classifier; with ``"text"`` the image tower runs frozen.

Official optimisation (``lora.py``, ``main.py``, ``run_utils.py``):
AdamW(lr 2e-4, betas (0.9, 0.999), weight decay 1e-2, eps 1e-8),
``CosineAnnealingLR(T = 500 · K, eta_min = 1e-6)`` stepped every iteration,
batch 32 (``DataLoader(shuffle=True)``, last batch kept), epochs repeated
until T iterations; the final iterate is evaluated (``VALIDATION = False``:
no selection). Augmentation ``RandomResizedCrop(224, scale=(0.08, 1),
bicubic) + RandomHorizontalFlip`` on the training images.

Where we differ: the official code trains under ``torch.autocast(float16)``
with a ``GradScaler`` (float32 master weights); here the compute dtype is the
CLIP module's (float32, or bfloat16 as an option) with float32 factors and
optimiser. The crops are taken on device
(:func:`~jaxclip_fs.features.augment.jax_random_resized_crop`) from the pool's
stored S x S view, not from the original image file.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxclip_fs.clip.lora import Lora, LoraSpec, init_lora, tower_blocks
from jaxclip_fs.clip.preprocess import CLIP_MEAN, CLIP_STD
from jaxclip_fs.clip.text import trim_after_eot
from jaxclip_fs.features.augment import jax_random_resized_crop
from jaxclip_fs.methods.base import cross_entropy
from jaxclip_fs.methods.cache import l2_normalize
from jaxclip_fs.train.towers import StepCounts, TowerRecipe, identity_fetch, iteration_counts, \
    task_shots

LR = 2e-4
MIN_LR = 1e-6
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 1e-2
ITERATIONS_PER_SHOT = 500
BATCH_SIZE = 32
LOGIT_SCALE = 100.0
TEMPLATE = "a photo of a {}."
CROP_SCALE = (0.08, 1.0)


def template_tokens(tokenizer, classnames: Sequence[str], template: str = TEMPLATE,
                    context_length: int = 77) -> np.ndarray:
    """int32 [C, L]: ``template`` filled with each class name (``_`` read as a space), cut
    after the longest one's EOT (:func:`~jaxclip_fs.clip.text.trim_after_eot`: the same text
    features for a fraction of the official 77 positions' work)."""
    return trim_after_eot(tokenizer([template.format(name.replace("_", " "))
                                     for name in classnames],
                                    context_length=context_length, truncate=False))


def cosine_learning_rate(count, total, lr=LR, min_lr=MIN_LR) -> jax.Array:
    """``CosineAnnealingLR``: ``min_lr + (lr - min_lr) · ½ (1 + cos(π t / T))``."""
    t = jnp.asarray(count, jnp.float32)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * t /
                                                         jnp.asarray(total, jnp.float32)))


def optimizer(counts: StepCounts, lr=LR, min_lr=MIN_LR,
              weight_decay=WEIGHT_DECAY) -> optax.GradientTransformation:
    """PyTorch ``AdamW(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay)`` with the cosine
    of :func:`cosine_learning_rate` over the task's ``total`` iterations (decay scaled by lr,
    as PyTorch)."""
    return optax.adamw(lambda count: cosine_learning_rate(count, counts.total, lr, min_lr),
                       b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=weight_decay)


def normalize_pixels(pixels: jax.Array) -> jax.Array:
    """uint8 (or float 0..255) [..., 3] -> CLIP-normalised float32."""
    mean = jnp.asarray(CLIP_MEAN, jnp.float32)
    std = jnp.asarray(CLIP_STD, jnp.float32)
    return (pixels.astype(jnp.float32) / jnp.float32(255.0) - mean) / std


def augment_fetch(image_size: int, scale=CROP_SCALE):
    """``fetch(key, pixels uint8 [B, S0, S0, 3]) -> CLIP-normalised crops [B, S, S, 3]``."""
    def fetch(key, pixels):
        return normalize_pixels(jax_random_resized_crop(key, pixels, image_size, scale=scale))
    return fetch


def text_features(model, variables, factors, spec: LoraSpec, tokens: jax.Array,
                  key: jax.Array | None = None) -> jax.Array:
    """Class embeddings [C, E] float32 through the text tower's adapters (dropout iff ``key``)."""
    lora = Lora.of(factors["text"], spec)
    if key is None:
        return model.apply(variables, tokens, None, lora, method="encode_text")
    return model.apply(variables, tokens, None, lora, False, method="encode_text",
                       rngs={"dropout": key})


def image_features(model, variables, factors, spec: LoraSpec, images: jax.Array,
                   key: jax.Array | None = None) -> jax.Array:
    """Image embeddings [B, E] float32 through the image tower's adapters (dropout iff ``key``)."""
    lora = Lora.of(factors["visual"], spec)
    if key is None:
        return model.apply(variables, images, (), True, lora, method="encode_image")[0]
    return model.apply(variables, images, (), False, lora, method="encode_image",
                       rngs={"dropout": key})[0]


def logits(model, variables, factors, spec: LoraSpec, frozen_text: jax.Array | None,
           tokens: jax.Array | None, images: jax.Array, key: jax.Array | None = None,
           logit_scale: float = LOGIT_SCALE) -> jax.Array:
    """``100 · f̂ t̂ᵀ`` [B, C] through the adapted towers (module docstring).

    Args:
      factors: the adaptation (its towers follow ``spec.encoder``).
      frozen_text: [C, E] the zero-shot classifier, read when the text tower is not adapted.
      tokens: int [C, L] the template tokens, read when it is.
      images: CLIP-normalised [B, S, S, 3].
      key: dropout key (training), or None (evaluation: no dropout).
    """
    keys = (None, None) if key is None or spec.dropout == 0.0 else \
        (jax.random.fold_in(key, 0), jax.random.fold_in(key, 1))
    if "text" in spec.towers:
        text = text_features(model, variables, factors, spec, tokens, keys[0])
    else:
        text = frozen_text
    if "visual" in spec.towers:
        image = image_features(model, variables, factors, spec, images, keys[1])
    else:
        image = jax.lax.stop_gradient(model.apply(variables, images, method="encode_image")[0])
    return logit_scale * l2_normalize(image) @ l2_normalize(text).T


def recipe(model, spec: LoraSpec = LoraSpec(), *, iterations_per_shot: int = ITERATIONS_PER_SHOT,
           total=None, batch_size: int = BATCH_SIZE, augment: bool = True,
           crop_scale=CROP_SCALE) -> TowerRecipe:
    """CLIP-LoRA as a :class:`~jaxclip_fs.train.towers.TowerRecipe` on a pool of images.

    Args:
      model: the :class:`~jaxclip_fs.clip.model.CLIP` module (compute dtype, remat).
      spec: where the adapters go (default: CLIP-LoRA's, q k v of both towers, r 2).
      iterations_per_shot: T = this · K (official 500), unless ``total`` is given.
      augment: crop + flip each batch on device (the pool holds uint8 pixels
        [V, N, S0, S0, 3]); False: the pool holds CLIP-normalised images used as they are.

    The loss reads ``frozen = {"clip": variables, "tokens": int [C, L]}``
    (:func:`template_tokens`), plus ``"text"`` [C, E] (the normalised
    zero-shot classifier) when ``spec.encoder == "vision"``.

    Raises:
      ConfigError: a ResNet backbone with the image tower adapted (one line).
    """
    tower_blocks(spec, model.config)  # refuses what the official code cannot run
    fetch = augment_fetch(model.config.image_size, crop_scale) if augment else identity_fetch

    def init(key):
        return init_lora(key, model.config, spec)

    def loss(adaptation, frozen, images, labels, weights, key):
        out = logits(model, frozen["clip"], adaptation, spec, frozen.get("text"),
                     frozen.get("tokens"), images, key)
        return cross_entropy(out, labels, weights)

    def counts(mask):
        steps = iterations_per_shot * task_shots(mask) if total is None else total
        return iteration_counts(mask, batch_size, steps)

    return TowerRecipe(init, loss, fetch, counts, optimizer, batch_size)
