"""The one trainer: a train state with an auxiliary slot, one optimiser step, a scanned loop.

Every trained head of the library -- the feature methods (Tip-Adapter-F,
APE-T, CLIP-Adapter), the image methods (LDC, on CLIP taps) and the IMO
adapters -- trains through the pieces here:

* :class:`TrainState` -- ``learned`` (what the optimiser updates), ``aux``
  (what the forward pass updates: BatchNorm running statistics; ``{}`` if
  none) and the optimiser state; a plain pytree.
* :func:`update` -- one step: ``loss_fn(learned, aux, *batch) -> (loss, aux
  updates)``, its gradient, the optimiser update. IMO's host loop over a
  streamed image set calls it directly.
* :func:`train` -- the few-shot loop: ``lax.scan`` over epochs and steps, one
  pure function, ``jax.vmap`` -able over tasks (seeds, shot counts,
  datasets), so S seeds train in one compiled program:

  - **Minibatches** come from a *pool* of inputs ``[V, N, ...]`` (V views:
    feature rows, images, or cached CLIP taps) indexed by the task's
    class-major support ``index`` [C, K]. Each epoch the real (masked-in)
    items are put in a random order and cut into batches of ``batch_size``
    (the last one partial, like a PyTorch loader with ``shuffle=True,
    drop_last=False``), and each item gets a random augmented view. The
    randomness of item ``(c, k)`` in epoch ``e`` is a hash of
    ``(fold_in(plan_key, e), c, k)`` (:func:`item_hashes`) -- independent of
    array shapes, so a task padded into a batch draws what it draws alone.
    ``fetch(key, rows)`` turns the gathered rows into the loss's inputs
    (identity for features; the frozen CLIP trunk for images), with key
    ``fold_in(fold_in(step_key, e), j)`` at step j of epoch e.
  - **Per-task schedules**: a task with ``n`` real items takes
    ``ceil(n / batch_size)`` steps per epoch for ``epochs`` epochs; steps
    past its own count leave the whole train state untouched, so a task
    trained in a batch equals the task trained alone.
  - **Optimiser**: built per task by ``optimizer(steps)`` from the task's
    own number of updates ``steps = epochs · steps_per_epoch`` (the method's
    :class:`~jaxclip_fs.methods.optimizers.Optimizer`); by default AdamW
    (PyTorch semantics: decoupled decay, eps outside the square root) with a
    cosine decay per step over those steps (PyTorch ``CosineAnnealingLR``,
    eta_min 0), read from ``settings``.
  - **Full batch**: ``batch_size=0`` makes every step a pass over the whole
    support (one step per epoch).
  - **Steps instead of epochs** (``settings["steps"]``, ``unit="steps"``): the
    loop runs that many updates, taking the epochs' batches in turn (epoch
    ``e`` keeps its order and views) and cutting the last epoch short -- the
    iteration loops of CoOp-style code; the final iterate is kept, or, with
    ``eval_every = k``, the best on validation of the iterates after updates
    ``0, k, 2k, ...`` (0-based; the ``if i % k == 0`` check of an iteration loop
    after its update) -- updates after the last check are not run.
  - **Epoch selection**: ``"validation"`` scores the params on validation
    after every epoch (``eval_fn``) and returns the best epoch's (first best
    wins; the official loops start from ``best_acc = 0``, here the first
    epoch always counts); ``"final"`` returns the last epoch's (LDC's
    official loop), with no evaluation.
  - **Outer steps** (optional ``epoch_end``, epochs only): after every epoch's
    updates, ``epoch_end(params)`` replaces auxiliary entries -- e.g. the
    multipliers of an augmented Lagrangian, updated once per epoch.
  - **Re-estimated auxiliary state** (optional ``aux_estimate``): after
    training, the auxiliary state is replaced by the mean, over the batches
    of one more epoch (epoch ``epochs``: same loader, fresh order and views),
    of each batch's own statistics -- PyTorch's
    ``torch.optim.swa_utils.update_bn`` (running statistics reset, momentum
    ``None``, one train-mode pass, weights untouched).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxclip_fs.methods.optimizers import cosine_adamw

#: ``loss_fn(params, inputs [B, ...], labels int [B], weights [B]) -> (loss, aux updates)``.
LossFn = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, dict]]
#: ``fetch(key, rows) -> inputs``: the pool rows of a batch (leaves [B, ...]) made loss inputs.
Fetch = Callable[[jax.Array, Any], Any]
#: ``optimizer(steps) -> GradientTransformation``: a task's optimizer from its number of updates.
MakeOptimizer = Callable[[jax.Array], optax.GradientTransformation]
SELECTIONS = ("validation", "final")
UNITS = ("epochs", "steps")


class TrainData(NamedTuple):
    """The items to train on.

    Attributes:
      pool: pytree, leaves [V, N, ...] (view 0 un-augmented when V > 1).
      index: int [C, K] pool row of item (c, k); item (c, k) has label c.
      mask: [C, K] 1 for real items (nested shots: the first ``shots`` columns).
    """

    pool: Any
    index: jax.Array
    mask: jax.Array


def class_major_data(support: jax.Array, mask: jax.Array) -> TrainData:
    """:class:`TrainData` of a class-major support ``[V, C, K, ...]``: pool ``[V, C·K, ...]``."""
    num_views, num_classes, shots = support.shape[:3]
    pool = support.reshape((num_views, num_classes * shots) + support.shape[3:])
    return TrainData(pool, jnp.arange(num_classes * shots).reshape(num_classes, shots), mask)


class TrainState(NamedTuple):
    """What one optimiser step changes.

    Attributes:
      learned: the params the optimiser updates.
      aux: state the forward pass updates (BatchNorm statistics); ``{}`` if none.
      opt_state: the optimiser's state.
    """

    learned: Any
    aux: Any
    opt_state: Any


def update(loss_fn: Callable[..., tuple[jax.Array, dict]], optimizer: optax.GradientTransformation,
           state: TrainState, *batch) -> tuple[TrainState, jax.Array]:
    """One step: ``(loss, aux updates) = loss_fn(learned, aux, *batch)``, gradient, optimiser.

    Returns:
      (the new :class:`TrainState`, the batch loss).
    """
    (loss, aux_updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.learned, state.aux, *batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.learned)
    return TrainState(optax.apply_updates(state.learned, updates), {**state.aux, **aux_updates},
                      opt_state), loss


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


def fresh_views(num_views: int, epochs) -> jax.Array:
    """Does a pool of ``num_views`` views give every epoch its own augmented view?"""
    return (num_views - 1) >= jnp.asarray(epochs)


def epoch_views(num_views: int, epochs: int) -> str:
    """What a run's epochs read, for its record: ``fresh`` (epoch e reads view 1 + e of every
    item), ``drawn`` (each item one of the augmented views, per epoch) or ``plain`` (the
    single un-augmented view)."""
    if num_views <= 1:
        return "plain"
    return "fresh" if bool(fresh_views(num_views, epochs)) else "drawn"


def epoch_plan(key, mask, num_views: int, epoch, epochs=None):
    """Item order and view choice for one epoch.

    Args:
      epochs: the task's epoch count (may be traced); when the pool has at
        least that many augmented views, epoch e takes view ``1 + e`` for every
        item (a fresh augmentation per epoch) -- else (or without ``epochs``)
        each item draws one.

    Returns:
      ``(order, views)``: ``order`` int [C·K] flat item indices, real items
      first in random order; ``views`` int [C·K] the (augmented) view of each
      flat item: ``1 + epoch``, or uniform over ``first_augmented_view .. V-1``.
    """
    hashes = item_hashes(key, epoch, *mask.shape)
    rank = jnp.where(mask > 0, hashes >> 1, jnp.uint32(0xFFFFFFFF))  # padding sorts last
    order = jnp.argsort(rank.reshape(-1), stable=True)
    low = first_augmented_view(num_views)
    draws = _mix32(hashes ^ jnp.uint32(0x68E31DA4)) % jnp.uint32(num_views - low)
    views = low + draws.astype(jnp.int32)
    if epochs is not None and num_views > 1:
        fresh = jnp.minimum(1 + jnp.asarray(epoch, jnp.int32), num_views - 1)
        views = jnp.where(fresh_views(num_views, epochs), fresh, views)
    return order, views.reshape(-1)


def default_optimizer(settings: Mapping[str, Any]) -> MakeOptimizer:
    """Cosine AdamW from ``settings`` (``lr``, ``eps``, ``weight_decay``) over a task's steps."""
    return lambda steps: cosine_adamw(settings["lr"], steps, settings["eps"],
                                      settings["weight_decay"])


class Schedule(NamedTuple):
    """A masked pool's step counts and optimiser (see :func:`schedule`)."""

    steps_scanned: int  # static: ceil(C·K / batch_size), the scan length of an epoch
    num_real: jax.Array  # real (masked-in) items n
    steps_per_epoch: jax.Array  # ceil(n / batch_size); scanned steps past it are idle
    epochs: jax.Array  # int32 epochs this task trains (steps: the epochs its steps touch)
    steps: jax.Array  # int32 optimizer updates this task takes
    optimizer: optax.GradientTransformation  # optimizer(steps)


def schedule(mask: jax.Array, batch_size: int, settings: Mapping[str, Any],
             optimizer: MakeOptimizer | None = None, unit: str = "epochs") -> Schedule:
    """Step counts of a [C, K] masked pool and its optimiser.

    Args:
      batch_size: static; 0 for the full batch (every real item in one step).
      settings: ``epochs`` (or ``steps`` with ``unit="steps"``), and for the default
        optimizer ``lr``, ``eps``, ``weight_decay``.
      optimizer: ``steps -> GradientTransformation`` (default :func:`default_optimizer`).
    """
    batch_size = batch_size or mask.size
    steps_scanned = math.ceil(mask.size / batch_size)
    num_real = jnp.sum(mask > 0)
    steps_per_epoch = (num_real + batch_size - 1) // batch_size
    if unit == "steps":
        steps = jnp.asarray(settings["steps"]).astype(jnp.int32)
        epochs = (steps + steps_per_epoch - 1) // jnp.maximum(steps_per_epoch, 1)
    else:
        epochs = jnp.asarray(settings["epochs"]).astype(jnp.int32)
        steps = epochs * steps_per_epoch
    make = default_optimizer(settings) if optimizer is None else optimizer
    return Schedule(steps_scanned, num_real, steps_per_epoch, epochs, steps,
                    make(steps.astype(jnp.float32)))


def select_tree(flag, new, old):
    """``new`` where ``flag`` else ``old``, leaf by leaf (idle steps keep their state)."""
    return jax.tree.map(lambda n, o: jnp.where(flag, n, o), new, old)


def _estimate_aux(aux_estimate, params, batch, steps_scanned, steps):
    """The mean over one epoch's real batches of ``aux_estimate`` (module docstring)."""
    def step(total, j):
        inputs, labels, weights = batch(j)
        found = aux_estimate(params, inputs, labels, weights)
        active = j < steps
        return jax.tree.map(lambda t, b: t + jnp.where(active, b, 0.0), total, found), None

    template = jax.eval_shape(lambda: aux_estimate(params, *batch(0)))
    zeros = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), template)
    total, _ = jax.lax.scan(step, zeros, jnp.arange(steps_scanned))
    return jax.tree.map(lambda t: t / jnp.maximum(steps, 1).astype(t.dtype), total)


def _identity_fetch(key, rows):
    del key
    return rows


def train(
    loss_fn: LossFn,
    eval_fn: Callable[[Any], jax.Array] | None,
    params: Mapping[str, Any],
    trainable: tuple[str, ...],
    data: TrainData,
    plan_key: jax.Array,
    settings: Mapping[str, jax.Array],
    *,
    batch_size: int,
    max_epochs: int,
    aux: tuple[str, ...] = (),
    fetch: Fetch = _identity_fetch,
    step_key: jax.Array | None = None,
    selection: str = "validation",
    aux_estimate: Callable[[Any, Any, jax.Array, jax.Array], dict] | None = None,
    progress: Callable[[Any, Any], None] | None = None,
    optimizer: MakeOptimizer | None = None,
    unit: str = "epochs",
    eval_every: int = 0,
    epoch_end: Callable[[Any], dict] | None = None,
) -> tuple[dict, dict]:
    """Trains ``params[trainable]`` (module docstring) and returns the selected epoch's params.

    Args:
      loss_fn: ``(params, inputs, labels int [B], weights [B]) -> (loss, aux updates)``;
        ``weights`` is 0 for the padding rows of a partial batch; ``params``
        is the whole dict (learned, aux and fixed entries).
      eval_fn: ``params -> scalar`` validation score, higher is better
        (``selection="validation"``; None with ``"final"``).
      params: dict of arrays; keys neither in ``trainable`` nor ``aux`` stay fixed.
      trainable: the keys of ``params`` the optimiser learns.
      data: the pool, the support index and its mask.
      plan_key: key of the per-epoch item order and view choice.
      settings: ``epochs`` (≤ ``max_epochs``; ``steps`` with ``unit="steps"``), and the
        default optimizer's ``lr``, ``eps``, ``weight_decay`` (scalars, may be traced).
      batch_size: static minibatch size; 0: the full batch.
      max_epochs: static length of the loop scanned: epochs (tasks with fewer
        ``epochs`` idle through the rest), or steps with ``unit="steps"``.
      aux: the keys of ``params`` the forward pass updates (returned by ``loss_fn``).
      fetch: ``(key, rows) -> inputs`` (default: the rows themselves).
      step_key: key of ``fetch``'s per-step randomness (default ``plan_key``).
      selection: ``"validation"`` or ``"final"`` (the only one with ``unit="steps"``).
      aux_estimate: ``(params, inputs, labels, weights) -> aux`` the batch's own
        auxiliary state (module docstring), or None to keep the trained one.
      progress: optional host callback ``(epoch, score)`` after every epoch.
      optimizer: ``steps -> optax.GradientTransformation`` given the task's number of
        updates (default: cosine AdamW from ``settings``).
      unit: ``"epochs"`` or ``"steps"`` (module docstring).
      eval_every: steps with ``"validation"``: score the iterate after updates
        0, k, 2k, ... (static k > 0) and keep the best.
      epoch_end: epochs: ``params -> {aux key: value}`` applied after every epoch.

    Returns:
      ``(params, info)``: ``info`` has ``best_epoch`` (int; the last trained
      epoch with ``"final"``; steps with validation: the epoch of the kept
      update), ``best_score``, ``scores`` [max_epochs] (NaN past the task's
      epochs, and everywhere with ``"final"``; steps with validation: one per
      check, NaN after the task's last), ``losses`` [max_epochs] the mean
      training loss per epoch (NaN past the task's epochs).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got '{selection}'")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got '{unit}'")
    if unit == "steps" and selection != "final" and eval_every <= 0:
        raise ValueError("training counted in steps keeps its final iterate (selection='final') "
                         "unless it is validated every eval_every > 0 updates")
    if epoch_end is not None and unit != "epochs":
        raise ValueError("epoch_end needs training counted in epochs")
    fixed = {k: v for k, v in params.items() if k not in trainable and k not in aux}
    num_views = jax.tree.leaves(data.pool)[0].shape[0]
    num_classes, shots = data.mask.shape
    items = num_classes * shots
    batch_size = batch_size or items
    steps_scanned, num_real, steps_per_epoch, epochs, steps, tx = schedule(
        data.mask, batch_size, settings, optimizer, unit)
    step_key = plan_key if step_key is None else step_key
    validate = selection == "validation"

    def batch_loss(learned, state, inputs, labels, weights):
        return loss_fn({**fixed, **learned, **state}, inputs, labels, weights)

    def whole(state: TrainState) -> dict:
        return {**fixed, **state.learned, **state.aux}

    def loader(epoch):
        """Epoch ``epoch``'s batches: ``j -> (inputs, labels [B], weights [B] 1 real / 0 pad)``."""
        order, views = epoch_plan(plan_key, data.mask, num_views, epoch, epochs)
        epoch_key = jax.random.fold_in(step_key, epoch)

        def batch(j):
            position = j * batch_size + jnp.arange(batch_size)
            flat = order[jnp.minimum(position, items - 1)]
            labels = flat // shots
            rows = jax.tree.map(lambda leaf: leaf[views[flat], data.index[labels, flat % shots]],
                                data.pool)
            inputs = fetch(jax.random.fold_in(epoch_key, j), rows)
            return inputs, labels, (position < num_real).astype(jnp.float32)
        return batch

    def step(state, batch, j, active):
        """One update on batch ``j`` of an epoch's ``batch`` (idle unless ``active``)."""
        inputs, labels, weights = batch(j)
        new_state, loss = update(batch_loss, tx, state, inputs, labels, weights)
        return select_tree(active, new_state, state), loss

    def run_epoch(carry, epoch):
        state, best, best_score, best_epoch = carry
        epoch_active = epoch < epochs
        batch = loader(epoch)

        def one(state, j):
            active = epoch_active & (j < steps_per_epoch)
            state, loss = step(state, batch, j, active)
            return state, (loss, active)

        state, (losses, active) = jax.lax.scan(one, state, jnp.arange(steps_scanned))
        if epoch_end is not None:
            outer = {**state.aux, **epoch_end(whole(state))}
            state = state._replace(aux=select_tree(epoch_active, outer, state.aux))
        mean_loss = jnp.sum(jnp.where(active, losses, 0.0)) / jnp.maximum(jnp.sum(active), 1)
        if validate:
            score = jnp.asarray(eval_fn(whole(state)), jnp.float32)
            improved = epoch_active & (score > best_score)
            best = select_tree(improved, (state.learned, state.aux), best)
            best_score = jnp.where(improved, score, best_score)
            best_epoch = jnp.where(improved, epoch, best_epoch)
            if progress is not None:
                jax.debug.callback(progress, epoch, score)
        else:
            score = jnp.asarray(jnp.nan, jnp.float32)
        record = (jnp.where(epoch_active, score, jnp.nan),
                  jnp.where(epoch_active, mean_loss, jnp.nan))
        return (state, best, best_score, best_epoch), record

    learned = {k: params[k] for k in trainable}
    state0 = TrainState(learned, {k: params[k] for k in aux}, tx.init(learned))
    if unit == "steps" and validate:
        best, best_score, best_epoch, scores, losses = _run_validated_steps(
            lambda state, epoch, j, active: step(state, loader(epoch), j, active),
            lambda state: jnp.asarray(eval_fn(whole(state)), jnp.float32),
            state0, steps, steps_per_epoch, max_epochs, eval_every)
    elif unit == "steps":
        state, scores, losses = _run_steps(
            lambda state, epoch, j, active: step(state, loader(epoch), j, active),
            state0, steps, steps_per_epoch, max_epochs)
        best_score = jnp.asarray(-jnp.inf, jnp.float32)
    else:
        init = (state0, (state0.learned, state0.aux) if validate else (),
                jnp.asarray(-jnp.inf, jnp.float32), jnp.asarray(0, jnp.int32))
        (state, best, best_score, best_epoch), (scores, losses) = jax.lax.scan(
            run_epoch, init, jnp.arange(max_epochs))
    if validate:
        learned, aux_state = best
    else:
        learned, aux_state = state.learned, state.aux
        best_epoch = epochs - 1
    if aux_estimate is not None:
        aux_state = _estimate_aux(aux_estimate, {**fixed, **learned, **aux_state}, loader(epochs),
                                  steps_scanned, steps_per_epoch)
    info = {"best_epoch": best_epoch, "best_score": best_score, "scores": scores,
            "losses": losses}
    return {**fixed, **learned, **aux_state}, info


def _run_steps(step, state, steps, steps_per_epoch, max_steps: int):
    """``steps`` updates, update ``t`` taking batch ``t mod spe`` of epoch ``t div spe`` (its
    order drawn afresh at every update: the epochs' plans are not kept); scans ``max_steps``.
    Returns the final state, NaN scores and per-epoch mean losses (both
    [max_steps]: a task touches at most that many epochs; NaN past its own)."""
    per_epoch = jnp.maximum(steps_per_epoch, 1)

    def one(state, t):
        epoch = t // per_epoch
        state, loss = step(state, epoch, t % per_epoch, t < steps)
        return state, (loss, epoch)

    state, (losses, epoch_of) = jax.lax.scan(one, state, jnp.arange(max_steps))
    active = (jnp.arange(max_steps) < steps).astype(jnp.float32)
    totals = jnp.zeros((max_steps,), jnp.float32).at[epoch_of].add(active * losses)
    counts = jnp.zeros((max_steps,), jnp.float32).at[epoch_of].add(active)
    losses = jnp.where(counts > 0, totals / jnp.maximum(counts, 1.0), jnp.nan)
    return state, jnp.full((max_steps,), jnp.nan, jnp.float32), losses


def _run_validated_steps(step, score, state, steps, steps_per_epoch, max_steps: int, every: int):
    """Steps mode with validation: block ``b`` runs updates ``t = (b-1)k+1 .. bk`` (block 0:
    update 0 only; k = ``every``), then scores the iterate after update ``bk`` if it ran; the
    first best is kept. ``ceil(max_steps / k)`` blocks are scanned (updates after the last
    check cannot be kept, so they are not run).

    Returns:
      ``((learned, aux), best score, best epoch (of the kept update), scores [blocks], losses
      [max_steps] per epoch)``.
    """
    if every <= 0:
        raise ValueError(f"eval_every must be a positive number of updates, got {every}")
    per_epoch = jnp.maximum(steps_per_epoch, 1)
    blocks = -(-max_steps // every)

    def block(carry, b):
        state, best, best_score, best_epoch = carry

        def one(state, i):
            t = b * every - (every - 1) + i
            epoch = jnp.maximum(t, 0) // per_epoch
            active = (t >= 0) & (t < steps)
            state, loss = step(state, epoch, jnp.maximum(t, 0) % per_epoch, active)
            return state, (loss, epoch, active)

        state, record = jax.lax.scan(one, state, jnp.arange(every))
        checked = b * every < steps
        value = jnp.where(checked, score(state), jnp.nan)
        improved = checked & (value > best_score)
        best = select_tree(improved, (state.learned, state.aux), best)
        best_score = jnp.where(improved, value, best_score)
        best_epoch = jnp.where(improved, (b * every) // per_epoch, best_epoch)
        return (state, best, best_score, best_epoch), (value, record)

    init = (state, (state.learned, state.aux), jnp.asarray(-jnp.inf, jnp.float32),
            jnp.asarray(0, jnp.int32))
    (_, best, best_score, best_epoch), (scores, (losses, epoch_of, active)) = jax.lax.scan(
        block, init, jnp.arange(blocks))
    losses, epoch_of = losses.reshape(-1), jnp.minimum(epoch_of.reshape(-1), max_steps - 1)
    active = active.reshape(-1).astype(jnp.float32)
    totals = jnp.zeros((max_steps,), jnp.float32).at[epoch_of].add(active * losses)
    counts = jnp.zeros((max_steps,), jnp.float32).at[epoch_of].add(active)
    per_epoch_losses = jnp.where(counts > 0, totals / jnp.maximum(counts, 1.0), jnp.nan)
    return best, best_score, best_epoch.astype(jnp.int32), scores, per_epoch_losses
