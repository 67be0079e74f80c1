"""CoOp (Zhou et al., IJCV'22): learned context vectors read by CLIP's frozen text tower.

The adaptation is ``{"ctx": [M, W]}`` (M = 16 shared context vectors,
:mod:`jaxclip_fs.clip.prompts`). For image features ``f`` (the frozen image
tower's embeddings of an augmented view) and class prompts ``t_c(ctx)``::

    logits = exp(logit_scale) · f̂ · t̂(ctx)ᵀ         loss = CE(logits, y)

(``CustomCLIP.forward`` of the official ``trainers/coop.py``; ``^`` = L2
normalised, ``logit_scale`` CLIP's own). The image tower is frozen and its
output does not depend on the context, so its features are computed once
per augmented view (the pool) instead of every step as the official code does.

Official optimisation (KaiyangZhou/CoOp ``configs/trainers/CoOp/*.yaml``;
Dassl.pytorch ``dassl/optim/optimizer.py``, ``lr_scheduler.py``,
``config/defaults.py``): SGD, lr 0.002, momentum 0.9, weight decay 5e-4
(added to the gradient, PyTorch's coupled form), batch 32; the learning rate
is set per *epoch*: epoch 0 at the constant warm-up 1e-5 (``WARMUP_EPOCH 1``,
``WARMUP_TYPE constant``), then epoch e >= 1 at
``0.002 · ½ (1 + cos(π (e - 1) / E))`` (``CosineAnnealingLR(E)`` stepped after
each epoch, the warm-up wrapper handing over at epoch 1). E by shot count
(``scripts/coop/README.md``: ``rn50_ep50`` for 1 shot, ``rn50_ep100`` for 2
and 4, ``rn50`` = 200 epochs for 8 and 16; ImageNet ``*_ep50`` for every
shot count); shot counts the scripts do not list take the next listed
one's rule (3 -> 100, 5..7 -> 200). Dassl's train loader drops the last
partial batch when the set holds at least one batch. The final iterate is
kept (``TEST.FINAL_MODEL = "last_step"``).

Where we differ: the official default precision is ``PREC = "fp16"`` (CLIP
and the context in half precision on GPU); here parameters and the optimiser
are float32 and the compute dtype is the CLIP module's (float32, or
bfloat16 as an option). The augmented views are the pool's (drawn per
epoch from V - 1 precomputed views, fresh each epoch when V - 1 >= E)
rather than a new random crop every epoch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxclip_fs.clip import prompts
from jaxclip_fs.methods.base import cross_entropy
from jaxclip_fs.methods.cache import l2_normalize
from jaxclip_fs.train.towers import StepCounts, TowerRecipe, epoch_counts, identity_fetch, \
    task_shots

LR = 0.002
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
WARMUP_LR = 1e-5
WARMUP_EPOCHS = 1
BATCH_SIZE = 32
IMAGENET_EPOCHS = 50


def official_epochs(shots, imagenet: bool = False) -> jax.Array:
    """E by shot count (module docstring): 1 -> 50, 2..4 -> 100, more -> 200; ImageNet 50."""
    shots = jnp.asarray(shots)
    if imagenet:
        return jnp.full(shots.shape, IMAGENET_EPOCHS, jnp.int32)
    return jnp.where(shots <= 1, 50, jnp.where(shots <= 4, 100, 200)).astype(jnp.int32)


def epoch_learning_rate(epoch, epochs, lr=LR, warmup_lr=WARMUP_LR) -> jax.Array:
    """Dassl's constant warm-up + cosine: ``warmup_lr`` in epoch 0, then
    ``lr · ½ (1 + cos(π (e - 1) / E))`` in epoch e >= 1."""
    epoch = jnp.asarray(epoch, jnp.float32)
    cosine = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * (epoch - WARMUP_EPOCHS) /
                                        jnp.asarray(epochs, jnp.float32)))
    return jnp.where(epoch < WARMUP_EPOCHS, warmup_lr, cosine)


def optimizer(counts: StepCounts, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
              warmup_lr=WARMUP_LR) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay, its learning rate set per epoch.

    PyTorch ``SGD(lr, momentum, weight_decay, dampening=0, nesterov=False)``:
    ``g += wd · p; buf = momentum · buf + g; p -= lr_e · buf`` with ``lr_e``
    :func:`epoch_learning_rate` of the step's epoch ``t div P``.
    """
    def schedule(count):
        return epoch_learning_rate(count // counts.steps_per_epoch, counts.epochs, lr, warmup_lr)

    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=momentum))


def feature_logits(model, variables, ctx: jax.Array, tokens: jax.Array,
                   image_features: jax.Array) -> jax.Array:
    """``exp(logit_scale) · f̂ t̂(ctx)ᵀ``: image features [N, E] -> logits [N, C] float32."""
    text = l2_normalize(prompts.text_features(model, variables, ctx, tokens))
    scale = jnp.exp(variables["params"]["logit_scale"])
    return scale * l2_normalize(image_features.astype(jnp.float32)) @ text.T


def recipe(model, *, context=None, n_ctx: int = prompts.DEFAULT_CONTEXT_LENGTH,
           epochs=None, imagenet: bool = False, batch_size: int = BATCH_SIZE) -> TowerRecipe:
    """CoOp as a :class:`~jaxclip_fs.train.towers.TowerRecipe` on a pool of image features.

    Args:
      model: the :class:`~jaxclip_fs.clip.model.CLIP` module (compute dtype, remat).
      context: initial context [M, W] shared by every seed (e.g.
        :func:`~jaxclip_fs.clip.prompts.phrase_context` of "a photo of a"), or
        None for N(0, 0.02²) drawn per seed from its init key.
      n_ctx: M for the random initialisation.
      epochs: E, or None for the official count by shots (``imagenet``: 50).
      batch_size: 32 officially.

    The loss reads ``frozen = {"clip": variables, "tokens": int [C, L]}``
    (the skeleton of :func:`~jaxclip_fs.clip.prompts.context_skeleton`, or of
    :func:`~jaxclip_fs.clip.prompts.phrase_skeleton` with a phrase context)
    and a batch of image features [B, E] (the pool: features [V, N, E]).
    """
    width = model.config.text_width

    def init(key):
        if context is not None:
            return {"ctx": jnp.asarray(context, jnp.float32)}
        return {"ctx": prompts.random_context(key, width, n_ctx)}

    def loss(adaptation, frozen, features, labels, weights, key):
        del key  # deterministic: no dropout in CoOp
        logits = feature_logits(model, frozen["clip"], adaptation["ctx"], frozen["tokens"],
                                features)
        return cross_entropy(logits, labels, weights)

    def counts(mask):
        shots = task_shots(mask)
        count = official_epochs(shots, imagenet) if epochs is None else epochs
        return epoch_counts(mask, batch_size, count, drop_last=True)

    return TowerRecipe(init, loss, identity_fetch, counts, optimizer, batch_size)
