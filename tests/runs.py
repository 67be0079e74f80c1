"""Test-only helpers over the library: one complete run on features, zero-padded tasks.

The library runs methods through the engine's programs; tests call the pieces
directly: :func:`fit_select_predict` (fit, select on validation, score the test
set once), and :func:`pad_task` / :func:`pad_evalset` (a task or evaluation set
zero-padded to a larger shape, as the engine pads datasets to share a program).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxclip_fs.methods.base import Method, logits
from jaxclip_fs.methods.search import DEFAULT_MEMORY_BYTES, accuracy
from jaxclip_fs.methods.task import EvalSet, Task
from jaxclip_fs.train.fit import fit, select


def fit_select_predict(method: Method, key, task: Task, val: EvalSet, test: EvalSet,
                       hp: Mapping[str, Any], grid: Mapping[str, jax.Array], *,
                       batch_size: int = 0, max_epochs: int = 0,
                       memory_bytes: int = DEFAULT_MEMORY_BYTES,
                       progress: Callable[[Any, Any], None] | None = None) -> dict:
    """One complete run on features: fit, search ``grid`` on ``val``, score ``test`` once.

    Args:
      hp: values of all hyperparameters (search ones at their training
        values, if the method trains).
      grid: name -> candidate values for the hyperparameters to search
        (empty: none; ``hp`` is used as is).
      progress: optional host callback ``(epoch, val_accuracy)`` while training.

    Returns:
      dict: ``params`` (fitted), ``test_logits`` [T, C], ``hp`` (values used),
      ``val_accuracy``, ``test_accuracy`` (in %), ``best_epoch`` (-1 if not
      trained), and ``index`` (name -> grid index of the chosen value) when searched.
    """
    params, info = fit(method, key, task, val, hp, batch_size=batch_size, max_epochs=max_epochs,
                       progress=progress)
    out = select(method, params, task, val, hp, grid, memory_bytes=memory_bytes)
    test_logits = logits(method, params, task, test.features, out["hp"], test.mask)
    out.update(params=params, test_logits=test_logits, test_accuracy=accuracy(test_logits, test),
               best_epoch=info.get("best_epoch", jnp.asarray(-1, jnp.int32)))
    return out


def pad_task(task: Task, num_classes: int, shots: int) -> Task:
    """Pads a task with zero classes / items up to ``[num_classes, shots]``."""
    _, c, k, _ = task.support.shape
    if num_classes < c or shots < k:
        raise ValueError(f"cannot pad a [{c}, {k}] task down to [{num_classes}, {shots}]")
    dc, dk = num_classes - c, shots - k
    return Task(
        support=jnp.pad(task.support, ((0, 0), (0, dc), (0, dk), (0, 0))),
        support_mask=jnp.pad(task.support_mask, ((0, dc), (0, dk))),
        class_mask=jnp.pad(task.class_mask, (0, dc)),
        text=jnp.pad(task.text, ((0, dc), (0, 0))),
        logit_scale=task.logit_scale,
    )


def pad_evalset(evalset: EvalSet, size: int) -> EvalSet:
    """Pads an evaluation set with masked zero rows up to ``size`` rows."""
    extra = size - evalset.features.shape[0]
    if extra < 0:
        raise ValueError(f"cannot pad {evalset.features.shape[0]} rows down to {size}")
    return EvalSet(
        features=jnp.pad(evalset.features, ((0, extra), (0, 0))),
        labels=jnp.pad(evalset.labels, (0, extra)),
        mask=jnp.pad(evalset.mask, (0, extra)),
    )
