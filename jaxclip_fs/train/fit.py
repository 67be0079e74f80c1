"""Fit a method to a task, select its hyperparameters on validation, predict the test set.

All pure functions of arrays (the method, batch size and epoch bound are
static): ``jax.jit`` them for one run, ``jax.vmap`` them over tasks for a
sweep -- S seeds (or shot counts, or padded datasets) in one program.

Keys: ``fold_in(key, 0)`` initialises, ``fold_in(key, 1)`` trains.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxclip_fs.methods.base import Method, logits, loss
from jaxclip_fs.methods.search import DEFAULT_MEMORY_BYTES, accuracy, grid_search
from jaxclip_fs.methods.task import EvalSet, Task
from jaxclip_fs.train.trainer import TrainData, train

INIT_STREAM, TRAIN_STREAM = 0, 1


def init_params(method: Method, key, task: Task, hp: Mapping[str, Any]):
    """``method.init`` with this module's init key."""
    return method.init(jax.random.fold_in(key, INIT_STREAM), task, hp)


def train_params(method: Method, params, key, task: Task, val: EvalSet, hp: Mapping[str, Any], *,
                 batch_size: int, max_epochs: int,
                 progress: Callable[[Any, Any], None] | None = None) -> tuple[dict, dict]:
    """Trains ``method.trainable`` on the task's augmented views; best epoch by validation accuracy.

    ``hp`` supplies the method's hyperparameters (the search ones at their
    training values) and ``epochs``, ``lr``, ``eps``, ``weight_decay``.
    """
    return train(
        lambda p, x, y, w: loss(method, p, task, x, y, w, hp),
        lambda p: accuracy(logits(method, p, task, val.features, hp, val.mask), val),
        params, method.trainable,
        TrainData(task.support, task.support_mask * task.class_mask[:, None]),
        jax.random.fold_in(key, TRAIN_STREAM), hp,
        batch_size=batch_size, max_epochs=max_epochs, progress=progress,
    )


def fit(method: Method, key, task: Task, val: EvalSet, hp: Mapping[str, Any], *,
        batch_size: int = 0, max_epochs: int = 0,
        progress: Callable[[Any, Any], None] | None = None) -> tuple[dict, dict]:
    """``init``, then training if the method has trainable params.

    Returns:
      ``(params, info)``; ``info`` is the trainer's (empty for training-free methods).
    """
    params = init_params(method, key, task, hp)
    if not method.trainable:
        return params, {}
    return train_params(method, params, key, task, val, hp, batch_size=batch_size,
                        max_epochs=max_epochs, progress=progress)


def fit_select_predict(method: Method, key, task: Task, val: EvalSet, test: EvalSet,
                       hp: Mapping[str, Any], grid: Mapping[str, jax.Array], *,
                       batch_size: int = 0, max_epochs: int = 0,
                       memory_bytes: int = DEFAULT_MEMORY_BYTES,
                       progress: Callable[[Any, Any], None] | None = None) -> dict:
    """One complete run: fit, search ``grid`` on ``val``, score ``test`` once.

    Args:
      hp: values of all hyperparameters (search ones at their training
        values, if the method trains).
      grid: name -> candidate values for the hyperparameters to search
        (empty: none; ``hp`` is used as is).
      progress: optional host callback ``(epoch, val_accuracy)`` while training.

    Returns:
      dict: ``test_logits`` [T, C], ``hp`` (values used), ``val_accuracy``,
      ``test_accuracy`` (in %), ``best_epoch`` (-1 if not trained), and
      ``index`` (name -> grid index of the chosen value) when searched.
    """
    params, info = fit(method, key, task, val, hp, batch_size=batch_size, max_epochs=max_epochs,
                       progress=progress)
    out: dict = {"best_epoch": info.get("best_epoch", jnp.asarray(-1, jnp.int32))}
    if grid:
        found = grid_search(method, params, task, val, hp, grid, memory_bytes=memory_bytes)
        hp = {**hp, **found["best"]}
        out["index"] = found["index"]
        out["val_accuracy"] = found["accuracy"]
    else:
        val_logits = logits(method, params, task, val.features, hp, val.mask)
        out["val_accuracy"] = accuracy(val_logits, val)
    test_logits = logits(method, params, task, test.features, hp, test.mask)
    out.update(test_logits=test_logits, hp=dict(hp), test_accuracy=accuracy(test_logits, test))
    return out
