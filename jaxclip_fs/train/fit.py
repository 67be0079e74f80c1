"""Fit a method to a task, select its hyperparameters on validation, predict the test set.

All pure functions of arrays (the method, batch size and epoch bound are
static): ``jax.jit`` them for one run, ``jax.vmap`` them over tasks for a
sweep -- S seeds (or shot counts, or padded datasets) in one program.

Keys: a run's key is :func:`task_key` ``(seed)``; ``fold_in(key, 0)``
initialises, ``fold_in(key, 1)`` trains. Training on features orders the
epochs with the training key itself; training through a ``fetch`` with its
own randomness (image methods: fresh crops every step) splits it into
``fold_in(., 0)`` for the order and ``fold_in(., 1)`` for the crops.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from jaxclip_fs.methods.base import Method, logits, logits_from, training_loss
from jaxclip_fs.methods.search import DEFAULT_MEMORY_BYTES, accuracy, grid_search
from jaxclip_fs.methods.task import EvalSet, Task
from jaxclip_fs.train.trainer import Fetch, TrainData, class_major_data, train

ROOT_SEED = 0  # root PRNG key; a run's key is fold_in(key(ROOT_SEED), seed)
INIT_STREAM, TRAIN_STREAM = 0, 1
PLAN_STREAM, FETCH_STREAM = 0, 1


def task_key(seed) -> jax.Array:
    """A run's PRNG key: ``fold_in(key(ROOT_SEED), seed)`` (``seed`` may be traced)."""
    return jax.random.fold_in(jax.random.key(ROOT_SEED), seed)


def init_params(method: Method, key, task: Task, hp: Mapping[str, Any]):
    """``method.init`` with this module's init key."""
    return method.init(jax.random.fold_in(key, INIT_STREAM), task, hp)


def train_params(method: Method, params, key, task: Task, data: TrainData, val: EvalSet | None,
                 hp: Mapping[str, Any], *, batch_size: int, max_epochs: int,
                 fetch: Fetch | None = None,
                 progress: Callable[[Any, Any], None] | None = None) -> tuple[dict, dict]:
    """Trains ``method.trainable`` on ``data`` as ``method.training`` says: its optimizer
    (built from ``hp``, the task's number of updates and the initial ``params``), epochs or
    steps, minibatches or the full batch; the iterate kept follows its ``epoch_selection``.

    ``hp`` supplies the method's hyperparameters (the search ones at their
    training values) and its training's (``epochs`` or ``steps``, ``batch_size``, the
    optimizer's). ``val`` is scored after every epoch for ``"validation"`` selection.
    ``max_epochs`` is the static loop length (steps for a method trained in steps).
    """
    train_key = jax.random.fold_in(key, TRAIN_STREAM)
    streams = {}
    if fetch is not None:
        streams = dict(fetch=fetch, step_key=jax.random.fold_in(train_key, FETCH_STREAM))
        train_key = jax.random.fold_in(train_key, PLAN_STREAM)
    training = method.training
    validate = training.epoch_selection == "validation"
    if validate and val is None:
        raise ValueError(f"method '{method.name}' selects its epoch on validation; give val")
    estimate = (None if training.state_estimate is None else
                lambda p, x, y, w: training.state_estimate(p, task, x, y, w, hp))
    epoch_end = (None if training.epoch_end is None else
                 lambda p: training.epoch_end(p, task, hp))
    return train(
        lambda p, x, y, w: training_loss(method, p, task, x, y, w, hp),
        (lambda p: accuracy(logits(method, p, task, val.features, hp, val.mask), val))
        if validate else None,
        params, training.trainable, data, train_key, hp,
        batch_size=batch_size, max_epochs=max_epochs, aux=training.state,
        selection=training.epoch_selection, aux_estimate=estimate, progress=progress,
        optimizer=lambda steps: training.optimizer.make(hp, steps, params), unit=training.unit,
        eval_every=training.eval_every if validate else 0, epoch_end=epoch_end, **streams,
    )


def fit(method: Method, key, task: Task, val: EvalSet | None, hp: Mapping[str, Any], *,
        batch_size: int = 0, max_epochs: int = 0,
        progress: Callable[[Any, Any], None] | None = None) -> tuple[dict, dict]:
    """``init``, then training on the task's support features if the method trains.

    ``val`` is the epoch-selection set: None for a method that keeps its final
    epoch (or does not train) -- then no evaluation set enters the fit at all.

    Returns:
      ``(params, info)``; ``info`` is the trainer's (empty for training-free methods).
    """
    params = init_params(method, key, task, hp)
    if not method.trains:
        return params, {}
    data = class_major_data(task.support, task.support_mask * task.class_mask[:, None])
    return train_params(method, params, key, task, data, val, hp, batch_size=batch_size,
                        max_epochs=max_epochs, progress=progress)


def select(method: Method, params, task: Task, selection: EvalSet, hp: Mapping[str, Any],
           grid: Mapping[str, jax.Array], *, pre: Any = None,
           memory_bytes: int = DEFAULT_MEMORY_BYTES) -> dict:
    """Searches ``grid`` on ``selection`` (or scores ``hp`` as is when the grid is empty).

    Args:
      pre: ``method.precompute`` on the selection set, when already computed
        (image methods compute it batch by batch).

    Returns:
      dict: ``hp`` (values to use), ``val_accuracy`` (in %), and ``index``
      (name -> grid index of the chosen value) when searched.
    """
    if pre is None:
        pre = method.precompute(params, task, selection.features, selection.mask)
    if grid:
        found = grid_search(method, params, task, selection, hp, grid, pre=pre,
                            memory_bytes=memory_bytes)
        return {"hp": {**hp, **found["best"]}, "index": found["index"],
                "val_accuracy": found["accuracy"]}
    return {"hp": dict(hp),
            "val_accuracy": accuracy(logits_from(method, pre, params, task, hp), selection)}
