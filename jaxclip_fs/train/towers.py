"""Training through CLIP's towers: one step, a scanned loop, S seeds vmapped in one program.

A method trained through the towers (CoOp's context vectors,
:mod:`jaxclip_fs.train.prompt_learning`; CLIP-LoRA's factors,
:mod:`jaxclip_fs.train.lora_tuning`) is a :class:`TowerRecipe` of pure
functions. Its *adaptation* -- a small pytree per seed -- is the only thing
trained; the frozen CLIP variables are one un-batched argument shared by
every seed, never copied (the CLIP module takes the adaptation as an
argument, :mod:`jaxclip_fs.clip.prompts`, :mod:`jaxclip_fs.clip.lora`).

The loop (:func:`train_task`) is ``lax.scan`` over a flat sequence of
steps: step t is batch ``j = t mod P`` of epoch ``e = t div P`` (P the
task's steps per epoch). Each epoch's item order and views are
:func:`jaxclip_fs.train.trainer.epoch_plan`'s (a hash of the task's plan
key, the epoch and the item -- the real items first in random order); batch j
holds order positions ``j·B .. j·B + B - 1``, positions past the task's n
real items are padding with weight 0 (PyTorch ``DataLoader(shuffle=True)``;
with ``drop_last`` -- Dassl's loader when n >= B -- P = floor(n / B) and no
batch is partial). Steps past the task's own count leave its adaptation and
optimiser state untouched, so tasks with different counts share a program
and each equals its run alone.

:func:`train_seeds` is that loop ``jax.vmap``-ped over S tasks (seeds; the
index, mask and key of each) and jit-compiled: per-seed adaptations, one
shared frozen CLIP and pool. A long run can go in chunks instead
(:func:`start_seeds`, then :func:`run_seeds` from step 0, n, 2n, ...: one
program for every chunk, the :class:`TowerState` in between to report
progress or checkpoint) with the same result. Keys: a task's ``key`` gives
``fold_in(key, 0)`` to :func:`init_seeds`, ``fold_in(key, 1)`` the plan,
``fold_in(key, 2)`` the steps (step t: ``fold_in(., t)``, then 0 for the
fetch's augmentation and 1 for the loss's dropout).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxclip_fs.train.trainer import epoch_plan, select_tree

INIT_STREAM, PLAN_STREAM, STEP_STREAM = 0, 1, 2
FETCH_STREAM, LOSS_STREAM = 0, 1


class StepCounts(NamedTuple):
    """One task's schedule (int32 scalars, may be traced).

    Attributes:
      steps_per_epoch: P, batches per epoch.
      epochs: epochs begun (the item order's epoch count; ``ceil(total / P)``).
      total: optimiser steps in all.
    """

    steps_per_epoch: jax.Array
    epochs: jax.Array
    total: jax.Array


#: ``loss(adaptation, frozen, inputs [B, ...], labels int [B], weights [B], key) -> scalar``.
TowerLoss = Callable[[Any, Any, Any, jax.Array, jax.Array, jax.Array], jax.Array]


class TowerRecipe(NamedTuple):
    """How one method trains through the towers (every field static).

    Attributes:
      init: ``key -> adaptation`` (one seed's trainable pytree).
      loss: :data:`TowerLoss`; ``weights`` is 0 on padding rows.
      fetch: ``(key, pool rows [B, ...]) -> loss inputs`` (augmentation; identity for features).
      counts: ``mask [C, K] -> StepCounts`` (jnp; works on traced and concrete masks).
      optimizer: ``StepCounts -> optax.GradientTransformation`` (the official one).
      batch_size: B.
    """

    init: Callable[[jax.Array], Any]
    loss: TowerLoss
    fetch: Callable[[jax.Array, Any], Any]
    counts: Callable[[jax.Array], StepCounts]
    optimizer: Callable[[StepCounts], optax.GradientTransformation]
    batch_size: int


class TowerTask(NamedTuple):
    """One run (seed) of a method: which pool rows it trains on and its key.

    Attributes:
      index: int32 [C, K], pool row of item (c, k); item (c, k) has label c.
      mask: float32 [C, K], 1 for real items (nested shots: the first columns).
      key: the run's PRNG key (module docstring).
    """

    index: jax.Array
    mask: jax.Array
    key: jax.Array


def identity_fetch(key: jax.Array, rows: Any) -> Any:
    """``fetch`` of a pool that already holds the loss inputs (e.g. image features)."""
    del key
    return rows


def epoch_counts(mask: jax.Array, batch_size: int, epochs, drop_last: bool) -> StepCounts:
    """Counts of ``epochs`` epochs over the real items of ``mask`` in batches of ``batch_size``.

    P = ceil(n / B), or with ``drop_last`` floor(n / B) when n >= B (Dassl:
    ``drop_last = is_train and len(data) >= batch_size``), else one partial batch.
    """
    n = jnp.sum(mask > 0).astype(jnp.int32)
    per_epoch = jnp.where(n >= batch_size, n // batch_size, 1) if drop_last else \
        (n + batch_size - 1) // batch_size
    epochs = jnp.asarray(epochs, jnp.int32)
    return StepCounts(per_epoch, epochs, epochs * per_epoch)


def iteration_counts(mask: jax.Array, batch_size: int, total) -> StepCounts:
    """Counts of ``total`` steps cycling over epochs of ceil(n / B) batches (the last partial)."""
    n = jnp.sum(mask > 0).astype(jnp.int32)
    per_epoch = jnp.maximum((n + batch_size - 1) // batch_size, 1)
    total = jnp.asarray(total, jnp.int32)
    return StepCounts(per_epoch, (total + per_epoch - 1) // per_epoch, total)


def task_shots(mask: jax.Array) -> jax.Array:
    """K of a [C, K] mask: the largest number of real items of a class (int32)."""
    return jnp.max(jnp.sum(mask > 0, axis=1)).astype(jnp.int32)


def max_steps(recipe: TowerRecipe, masks) -> int:
    """The scan length for tasks ``masks`` [S, C, K] (host side): the largest ``total``."""
    masks = np.asarray(masks)
    return max(int(recipe.counts(jnp.asarray(m)).total) for m in masks.reshape(
        (-1,) + masks.shape[-2:]))


def train_step(recipe: TowerRecipe, optimizer: optax.GradientTransformation, adaptation: Any,
               opt_state: Any, frozen: Any, inputs: Any, labels: jax.Array, weights: jax.Array,
               key: jax.Array) -> tuple[Any, Any, jax.Array]:
    """One optimiser step: the loss, its gradient w.r.t. the adaptation, the update.

    Returns:
      (new adaptation, new optimiser state, the batch loss).
    """
    loss, grads = jax.value_and_grad(recipe.loss)(adaptation, frozen, inputs, labels, weights,
                                                  key)
    updates, opt_state = optimizer.update(grads, opt_state, adaptation)
    return optax.apply_updates(adaptation, updates), opt_state, loss


def batch_at(recipe: TowerRecipe, pool: Any, task: TowerTask, counts: StepCounts,
             t: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
    """Step ``t``'s pool rows (leaves [B, ...]), labels int32 [B] and weights [B] (module doc)."""
    num_views = jax.tree.leaves(pool)[0].shape[0]
    num_classes, shots = task.mask.shape
    epoch, j = t // counts.steps_per_epoch, t % counts.steps_per_epoch
    order, views = epoch_plan(jax.random.fold_in(task.key, PLAN_STREAM), task.mask, num_views,
                              epoch, counts.epochs)
    position = j * recipe.batch_size + jnp.arange(recipe.batch_size)
    flat = order[jnp.minimum(position, num_classes * shots - 1)]
    labels = (flat // shots).astype(jnp.int32)
    rows = jax.tree.map(lambda leaf: leaf[views[flat], task.index[labels, flat % shots]], pool)
    weights = (position < jnp.sum(task.mask > 0)).astype(jnp.float32)
    return rows, labels, weights


class TowerState(NamedTuple):
    """What a run carries from step to step (a plain pytree: checkpoint it to resume).

    Attributes:
      adaptation: the trained pytree.
      opt_state: the optimiser's state (its step count drives the schedule).
    """

    adaptation: Any
    opt_state: Any


def start_task(recipe: TowerRecipe, task: TowerTask, adaptation: Any) -> TowerState:
    """The state before step 0: ``adaptation`` and the task's fresh optimiser state."""
    return TowerState(adaptation, recipe.optimizer(recipe.counts(task.mask)).init(adaptation))


def run_task(recipe: TowerRecipe, frozen: Any, pool: Any, task: TowerTask, state: TowerState,
             first_step, *, steps: int) -> tuple[TowerState, jax.Array]:
    """Steps ``first_step .. first_step + steps - 1`` of one task (module docstring).

    Args:
      frozen: what the loss reads besides the adaptation (the CLIP variables, prompt tokens).
      pool: pytree of leaves [V, N, ...] (image features, or uint8 pixels).
      task: the task's index, mask and key.
      state: the state after step ``first_step - 1`` (:func:`start_task` for 0).
      first_step: int, may be traced (one program serves every chunk of a long run).
      steps: static number of steps scanned.

    Returns:
      (the new state, losses [steps]: each step's batch loss, NaN past the task's total).
    """
    counts = recipe.counts(task.mask)
    optimizer = recipe.optimizer(counts)
    step_root = jax.random.fold_in(task.key, STEP_STREAM)

    def step(state, t):
        rows, labels, weights = batch_at(recipe, pool, task, counts, t)
        key = jax.random.fold_in(step_root, t)
        inputs = recipe.fetch(jax.random.fold_in(key, FETCH_STREAM), rows)
        adaptation, opt_state, loss = train_step(
            recipe, optimizer, state.adaptation, state.opt_state, frozen, inputs, labels,
            weights, jax.random.fold_in(key, LOSS_STREAM))
        active = t < counts.total
        new = select_tree(active, TowerState(adaptation, opt_state), state)
        return new, jnp.where(active, loss, jnp.nan)

    first_step = jnp.asarray(first_step, jnp.int32)
    return jax.lax.scan(step, state, first_step + jnp.arange(steps, dtype=jnp.int32))


def train_task(recipe: TowerRecipe, frozen: Any, pool: Any, task: TowerTask, adaptation: Any,
               *, steps: int) -> tuple[Any, jax.Array]:
    """All of one task's training in one scan of ``steps`` (>= its total) steps.

    Returns:
      (the final adaptation, losses [steps]).
    """
    state, losses = run_task(recipe, frozen, pool, task, start_task(recipe, task, adaptation), 0,
                             steps=steps)
    return state.adaptation, losses


def init_seeds(recipe: TowerRecipe, tasks: TowerTask) -> Any:
    """Initial adaptations of S tasks: ``vmap(init)`` over ``fold_in(key, 0)`` (leaves [S, ...])."""
    keys = jax.vmap(lambda k: jax.random.fold_in(k, INIT_STREAM))(tasks.key)
    return jax.vmap(recipe.init)(keys)


@functools.partial(jax.jit, static_argnames=("recipe", "steps"))
def train_seeds(recipe: TowerRecipe, frozen: Any, pool: Any, tasks: TowerTask, adaptations: Any,
                *, steps: int) -> tuple[Any, jax.Array]:
    """:func:`train_task` over S tasks in one compiled program.

    ``tasks`` and ``adaptations`` have a leading seed axis S (vmapped);
    ``frozen`` and ``pool`` are shared (not batched). Returns the S final
    adaptations and losses [S, steps].
    """
    return jax.vmap(functools.partial(train_task, recipe, steps=steps),
                    in_axes=(None, None, 0, 0))(frozen, pool, tasks, adaptations)


@functools.partial(jax.jit, static_argnames=("recipe",))
def start_seeds(recipe: TowerRecipe, tasks: TowerTask, adaptations: Any) -> TowerState:
    """:func:`start_task` over S tasks (leaves [S, ...])."""
    return jax.vmap(functools.partial(start_task, recipe))(tasks, adaptations)


@functools.partial(jax.jit, static_argnames=("recipe", "steps"))
def run_seeds(recipe: TowerRecipe, frozen: Any, pool: Any, tasks: TowerTask, state: TowerState,
              first_step, *, steps: int) -> tuple[TowerState, jax.Array]:
    """:func:`run_task` over S tasks: one chunk of a long run (progress, checkpoints, resume).

    Chunks ``[0, n), [n, 2n), ...`` give exactly :func:`train_seeds`' result.
    """
    return jax.vmap(functools.partial(run_task, recipe, steps=steps),
                    in_axes=(None, None, 0, 0, None))(frozen, pool, tasks, state, first_step)


@functools.lru_cache(maxsize=16)
def tower_model(config, dtype: str = "float32", remat: bool = False):
    """The :class:`~jaxclip_fs.clip.model.CLIP` module a tower method trains through: compute
    ``dtype`` (``float32`` / ``bfloat16``; parameters, adaptations and optimiser stay float32)
    and ``remat`` (each block's activations recomputed in the backward pass). Equal arguments
    give the same module (it keys compiled programs)."""
    from jaxclip_fs.clip.model import CLIP

    return CLIP(config, jnp.bfloat16 if dtype == "bfloat16" else jnp.float32, remat=remat)


def epoch_means(losses, counts: StepCounts) -> list[float]:
    """Per-epoch mean of one task's step losses [steps] (host side; steps past its total and
    NaN entries dropped): epoch e is steps ``e·P .. e·P + P - 1``."""
    losses = np.asarray(losses, np.float64)[:int(counts.total)]
    per = max(1, int(counts.steps_per_epoch))
    return [float(np.nanmean(losses[e:e + per])) for e in range(0, losses.shape[0], per)
            if np.isfinite(losses[e:e + per]).any()]
