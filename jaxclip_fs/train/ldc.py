"""LDC's training loop: images (or their cached taps) through a frozen CLIP, BatchNorm state.

Why not the generic :func:`~jaxclip_fs.train.trainer.train`: LDC's step needs
three things that trainer's ``loss_fn(params, inputs, labels, weights)``
contract cannot carry -- (1) BatchNorm running statistics, a second state
updated by the forward pass and not by the optimiser; (2) a fresh PRNG key
per step for on-device augmentation; (3) the frozen trunk (and projector)
as an *argument*, not a closure constant (hundreds of MB). And the official
loop evaluates the final epoch, with no selection. This module therefore
writes its own step but reuses the trainer's pieces: the per-epoch item
order and view choice (:func:`~jaxclip_fs.train.trainer.epoch_plan`, the same
padding-independent hashes), per-task step counts with idle steps masked,
and the AdamW + per-step cosine optimiser (:func:`~jaxclip_fs.train.trainer.cosine_adamw`).

Data: a *pool* pytree whose leaves are [V, N, ...] (V views of N support
images -- images for the in-step trunk path, cached taps for the tap-cache
path, see :mod:`jaxclip_fs.train.ldc_inputs`) shared by every task, and per
task ``index`` [C, K] (pool rows of its class-major support) and ``mask``
[C, K]. A ``fetch(frozen, key, rows) -> LDCInputs`` turns the gathered rows
into CLIP outputs (running the trunk, or passing cached taps through).

Everything is a pure function of arrays: ``jax.vmap`` :func:`fit_ldc` over
tasks (key, index, mask, settings carry the task axis; pool and frozen do
not) and S seeds train in one compiled program.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxclip_fs.methods.ldc import LDCInputs, LDCModel, LDCOutputs
from jaxclip_fs.train.fit import INIT_STREAM, TRAIN_STREAM
from jaxclip_fs.train.trainer import epoch_plan, schedule, select_tree

#: ``fetch(frozen, key, rows) -> LDCInputs``; ``rows`` are the pool leaves gathered to [B, ...].
Fetch = Callable[[Any, jax.Array, Any], LDCInputs]
PLAN_STREAM, AUGMENT_STREAM = 0, 1


class LDCData(NamedTuple):
    """One task's view of the shared support pool.

    Attributes:
      pool: pytree, leaves [V, N, ...] (view 0 un-augmented when V > 1).
      index: int [C, K] pool row of item (c, k); item (c, k) has label c.
      mask: [C, K] 1 for real items (nested shots: the first ``shots`` columns).
    """

    pool: Any
    index: jax.Array
    mask: jax.Array


def gather_rows(pool: Any, views: jax.Array, rows: jax.Array) -> Any:
    """``pool[views[b], rows[b]]`` for every leaf → leaves [B, ...]."""
    return jax.tree.map(lambda leaf: leaf[views, rows], pool)


def fit_ldc(model: LDCModel, fetch: Fetch, frozen: Any, data: LDCData, key: jax.Array,
            settings: Mapping[str, jax.Array], *, batch_size: int, max_epochs: int
            ) -> tuple[dict, dict, dict]:
    """Initialises and trains one LDC task; returns the final epoch's weights.

    Per epoch: the real items in a random order (:func:`epoch_plan` with
    ``fold_in(key_train, 0)``), cut into batches of ``batch_size`` (last one
    partial, padding rows weighted 0, as a PyTorch loader with
    ``drop_last=False``); each item takes a random view of ``1..V-1`` (view 0
    only if V = 1). Step j of epoch e fetches with key
    ``fold_in(fold_in(key_augment, e), j)`` (fresh augmentation), computes
    the loss in train mode (BatchNorm on the batch, running stats updated)
    and applies AdamW. Steps past the task's own ``ceil(n / B)`` per epoch or
    past its ``epochs`` leave params, stats and optimiser state untouched.

    Args:
      model: the :class:`~jaxclip_fs.methods.ldc.LDCModel` (static).
      fetch: rows -> :class:`~jaxclip_fs.methods.ldc.LDCInputs` (static).
      frozen: the frozen arguments of ``fetch``; ``frozen["clip"]`` is passed
        to the model as its projector params.
      data: :class:`LDCData`.
      key: this task's key; ``fold_in(key, 0)`` initialises, ``fold_in(key, 1)`` trains.
      settings: ``epochs`` (<= ``max_epochs``), ``lr``, ``eps``, ``weight_decay`` scalars.
      batch_size: static B.
      max_epochs: static number of epochs scanned.

    Returns:
      ``(params, batch_stats, info)``; ``info["losses"]`` [max_epochs] is the
      mean loss of each epoch (NaN past the task's epochs).
    """
    params, stats = model.init(jax.random.fold_in(key, INIT_STREAM))
    train_key = jax.random.fold_in(key, TRAIN_STREAM)
    plan_key = jax.random.fold_in(train_key, PLAN_STREAM)
    augment_key = jax.random.fold_in(train_key, AUGMENT_STREAM)
    num_views = jax.tree.leaves(data.pool)[0].shape[0]
    num_classes, shots = data.mask.shape
    items = num_classes * shots
    steps_scanned, num_real, steps_per_epoch, epochs, optimizer = schedule(
        data.mask, batch_size, settings)
    grad_fn = jax.value_and_grad(model.loss, has_aux=True)

    def run_epoch(state, epoch):
        order, views = epoch_plan(plan_key, data.mask, num_views, epoch)
        epoch_key = jax.random.fold_in(augment_key, epoch)
        epoch_active = epoch < epochs

        def step(state, j):
            params, stats, opt_state = state
            position = j * batch_size + jnp.arange(batch_size)
            flat = order[jnp.minimum(position, items - 1)]
            labels = flat // shots
            rows = gather_rows(data.pool, views[flat], data.index[labels, flat % shots])
            weights = (position < num_real).astype(jnp.float32)
            inputs = fetch(frozen, jax.random.fold_in(epoch_key, j), rows)
            (loss, (_, new_stats)), grads = grad_fn(params, stats, frozen["clip"], inputs, labels,
                                                    weights)
            updates, new_opt_state = optimizer.update(grads, opt_state, params)
            active = epoch_active & (j < steps_per_epoch)
            new_state = (optax.apply_updates(params, updates), new_stats, new_opt_state)
            return select_tree(active, new_state, state), (loss, active)

        state, (losses, active) = jax.lax.scan(step, state, jnp.arange(steps_scanned))
        mean_loss = jnp.sum(jnp.where(active, losses, 0.0)) / jnp.maximum(jnp.sum(active), 1)
        return state, jnp.where(epoch_active, mean_loss, jnp.nan)

    (params, stats, _), losses = jax.lax.scan(
        run_epoch, (params, stats, optimizer.init(params)), jnp.arange(max_epochs))
    return params, stats, {"losses": losses}


def predict_tasks(model: LDCModel, params: dict, batch_stats: dict, projector_params: Any,
                  inputs: LDCInputs) -> LDCOutputs:
    """Eval-mode outputs of T trained tasks on the same images.

    ``params`` / ``batch_stats`` carry a leading task axis [T, ...]; the
    inputs (one trunk pass) are shared. Outputs are [T, B, C] ([T, B] for ``w``).
    """
    def one(p, s):
        return model.apply(p, s, projector_params, inputs, train=False)[0]

    return jax.vmap(one)(params, batch_stats)
