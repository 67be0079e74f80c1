"""A generic optax trainer: ``lax.scan`` over epochs and steps, one pure function.

``train`` is jit-compilable and ``jax.vmap`` -able over tasks (seeds, shot
counts, datasets), so S seeds train in one compiled program:

* **Minibatches** come from the support's augmented views: each epoch the
  real (masked-in) items are put in a random order and cut into batches of
  ``batch_size`` (the last one partial, like a PyTorch loader with
  ``shuffle=True, drop_last=False``), and each item gets a random augmented
  view (as the official loaders draw a fresh augmentation each epoch). The
  randomness of item ``(c, k)`` in epoch ``e`` is a hash of
  ``(fold_in(key, e), c, k)`` (:func:`item_hashes`) -- independent of array
  shapes, so a task padded into a batch draws what it draws alone.
* **Per-task schedules**: a task with ``n`` real items takes
  ``ceil(n / batch_size)`` steps per epoch for ``epochs`` epochs; steps past
  its own count (the batch holds larger tasks) leave params and optimiser
  state untouched, so a task trained in a batch equals the task trained alone.
* **Optimiser**: AdamW (PyTorch semantics: decoupled decay, eps outside
  the square root) with a cosine decay per step over the task's own
  ``epochs · steps_per_epoch`` (PyTorch ``CosineAnnealingLR``, eta_min 0).
* **Epoch selection**: after every epoch ``eval_fn`` scores the params on
  validation; the best epoch's params are carried in the scan with
  ``jnp.where`` (first best wins) and returned. (The official loops start
  from ``best_acc = 0``; here the first epoch always counts.)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainData(NamedTuple):
    """The items to train on, class-major.

    Attributes:
      inputs: [V, C, K, ...] one slab per view (view 0 un-augmented).
      mask: [C, K] 1 for real items; item ``(c, k)`` has label ``c``.
    """

    inputs: jax.Array
    mask: jax.Array


def first_augmented_view(num_views: int) -> int:
    """Views ``1..V-1`` are augmented; a single-view pool trains on view 0."""
    return 1 if num_views > 1 else 0


def _mix32(x):
    """MurmurHash3's 32-bit finaliser: a bijective avalanche mix of uint32 values."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def item_hashes(key, epoch, num_classes: int, shots: int):
    """Random uint32 [C, K] for epoch ``epoch``, a function of (key, epoch, c, k) only.

    ``fold_in(key, epoch)`` gives the epoch's salt; item ``(c, k)`` hashes
    ``(salt, c, k)`` with :func:`_mix32`. The values of a class or shot do not
    depend on how far the grid is padded, and the program stays small (one
    threefry call per epoch, not one per item -- threefry is slow to compile on CPU).
    """
    salt = jax.random.bits(jax.random.fold_in(key, epoch), (), jnp.uint32)
    classes = jnp.arange(num_classes, dtype=jnp.uint32)
    shot_index = jnp.arange(shots, dtype=jnp.uint32)
    per_class = _mix32(salt ^ _mix32(classes + jnp.uint32(0x9E3779B9)))
    return _mix32(per_class[:, None] + shot_index[None, :] * jnp.uint32(0x27D4EB2F))


def epoch_plan(key, mask, num_views: int, epoch):
    """Item order and view choice for one epoch.

    Returns:
      ``(order, views)``: ``order`` int [C·K] flat item indices, real items
      first in random order; ``views`` int [C·K] the (augmented) view of each
      flat item, uniform over ``first_augmented_view .. V-1``.
    """
    hashes = item_hashes(key, epoch, *mask.shape)
    rank = jnp.where(mask > 0, hashes >> 1, jnp.uint32(0xFFFFFFFF))  # padding sorts last
    order = jnp.argsort(rank.reshape(-1), stable=True)
    low = first_augmented_view(num_views)
    draws = _mix32(hashes ^ jnp.uint32(0x68E31DA4)) % jnp.uint32(num_views - low)
    views = low + draws.astype(jnp.int32)
    return order, views.reshape(-1)


def cosine_adamw(lr, total_steps, eps, weight_decay) -> optax.GradientTransformation:
    """AdamW whose step size decays as ``lr · ½ (1 + cos(π t / T))``; arguments may be traced."""
    def learning_rate(count):
        return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * count / total_steps))

    return optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=eps, weight_decay=weight_decay)


class Schedule(NamedTuple):
    """A masked pool's step counts and optimiser (see :func:`schedule`)."""

    steps_scanned: int  # static: ceil(C·K / batch_size), the scan length of an epoch
    num_real: jax.Array  # real (masked-in) items n
    steps_per_epoch: jax.Array  # ceil(n / batch_size); scanned steps past it are idle
    epochs: jax.Array  # int32 epochs this task trains
    optimizer: optax.GradientTransformation  # cosine AdamW over epochs · steps_per_epoch


def schedule(mask: jax.Array, batch_size: int, settings: Mapping[str, Any]) -> Schedule:
    """Step counts of a [C, K] masked pool and its cosine AdamW (``settings``: epochs, lr, eps,
    weight_decay)."""
    steps_scanned = math.ceil(mask.size / batch_size)
    num_real = jnp.sum(mask > 0)
    steps_per_epoch = (num_real + batch_size - 1) // batch_size
    epochs = jnp.asarray(settings["epochs"]).astype(jnp.int32)
    optimizer = cosine_adamw(settings["lr"], (epochs * steps_per_epoch).astype(jnp.float32),
                             settings["eps"], settings["weight_decay"])
    return Schedule(steps_scanned, num_real, steps_per_epoch, epochs, optimizer)


def select_tree(flag, new, old):
    """``new`` where ``flag`` else ``old``, leaf by leaf (idle steps keep their state)."""
    return jax.tree.map(lambda n, o: jnp.where(flag, n, o), new, old)


def train(
    loss_fn: Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array],
    eval_fn: Callable[[Any], jax.Array],
    params: Mapping[str, Any],
    trainable: tuple[str, ...],
    data: TrainData,
    key: jax.Array,
    settings: Mapping[str, jax.Array],
    *,
    batch_size: int,
    max_epochs: int,
    progress: Callable[[Any, Any], None] | None = None,
) -> tuple[dict, dict]:
    """Trains ``params[trainable]`` and returns the best-on-validation params.

    Args:
      loss_fn: ``(params, inputs [B, ...], labels int [B], weights [B]) -> scalar``;
        ``weights`` is 0 for the padding rows of a partial batch.
      eval_fn: ``params -> scalar`` validation score, higher is better.
      params: dict of arrays; keys not in ``trainable`` stay fixed.
      trainable: the keys of ``params`` to learn.
      data: the support items and their mask.
      key: PRNG key of this run.
      settings: ``epochs`` (≤ ``max_epochs``), ``lr``, ``eps``, ``weight_decay`` (scalars,
        may be traced).
      batch_size: static minibatch size.
      max_epochs: static number of epochs scanned (tasks with fewer
        ``epochs`` idle through the rest).
      progress: optional host callback ``(epoch, score)`` after every epoch.

    Returns:
      ``(best_params, info)`` with ``info`` = ``best_epoch`` (int),
      ``best_score``, ``scores`` [max_epochs] (NaN past the task's epochs),
      ``losses`` [max_epochs] mean training loss per epoch.
    """
    frozen = {k: v for k, v in params.items() if k not in trainable}
    learn = {k: params[k] for k in trainable}
    num_views, num_classes, shots = data.inputs.shape[:3]
    items = num_classes * shots
    steps_scanned, num_real, steps_per_epoch, epochs, optimizer = schedule(
        data.mask, batch_size, settings)

    def batch_loss(learned, inputs, labels, weights):
        return loss_fn({**frozen, **learned}, inputs, labels, weights)

    grad_fn = jax.value_and_grad(batch_loss)

    def run_epoch(carry, epoch):
        learned, opt_state, best, best_score, best_epoch = carry
        order, views = epoch_plan(key, data.mask, num_views, epoch)
        epoch_active = epoch < epochs

        def step(state, j):
            learned, opt_state = state
            position = j * batch_size + jnp.arange(batch_size)
            flat = order[jnp.minimum(position, items - 1)]
            labels = flat // shots
            inputs = data.inputs[views[flat], labels, flat % shots]
            weights = (position < num_real).astype(jnp.float32)
            loss, grads = grad_fn(learned, inputs, labels, weights)
            updates, new_opt_state = optimizer.update(grads, opt_state, learned)
            active = epoch_active & (j < steps_per_epoch)
            new_state = (optax.apply_updates(learned, updates), new_opt_state)
            return select_tree(active, new_state, (learned, opt_state)), (loss, active)

        (learned, opt_state), (losses, active) = jax.lax.scan(
            step, (learned, opt_state), jnp.arange(steps_scanned))
        score = jnp.asarray(eval_fn({**frozen, **learned}), jnp.float32)
        improved = epoch_active & (score > best_score)
        best = select_tree(improved, learned, best)
        best_score = jnp.where(improved, score, best_score)
        best_epoch = jnp.where(improved, epoch, best_epoch)
        if progress is not None:
            jax.debug.callback(progress, epoch, score)
        mean_loss = jnp.sum(jnp.where(active, losses, 0.0)) / jnp.maximum(jnp.sum(active), 1)
        record = (jnp.where(epoch_active, score, jnp.nan),
                  jnp.where(epoch_active, mean_loss, jnp.nan))
        return (learned, opt_state, best, best_score, best_epoch), record

    init = (learn, optimizer.init(learn), learn, jnp.asarray(-jnp.inf, jnp.float32),
            jnp.asarray(0, jnp.int32))
    (_, _, best, best_score, best_epoch), (scores, losses) = jax.lax.scan(
        run_epoch, init, jnp.arange(max_epochs))
    info = {"best_epoch": best_epoch, "best_score": best_score, "scores": scores, "losses": losses}
    return {**frozen, **best}, info
