"""The compiled program of feature methods: every cell of a (variant, dataset group) in one jit.

``cell`` runs one few-shot cell -- fit (train if the method trains, best
epoch on validation), search the hyperparameter grid on the selection set,
score the test set (and any OOD test sets) once -- with the library's own
functions (:func:`~jaxclip_fs.train.fit.fit`, :func:`~jaxclip_fs.train.fit.select`).
``jax.vmap`` runs it over the T cells of a dataset (the dataset's arrays
shared, not copied), and a second ``jax.vmap`` over the G fused datasets;
``jax.jit`` with :mod:`~jaxclip_fs.engine.sharding` shardings spreads the
cell axis over the devices. Array layout: :mod:`~jaxclip_fs.engine.batch`.
Methods reading ``features`` and ``paired`` inputs both run here.

Randomness: a cell's key is :func:`~jaxclip_fs.train.fit.task_key` ``(seed)``
-- independent of where the cell sits in the batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxclip_fs.engine import sharding, watchdog
from jaxclip_fs.methods.base import Method, logits_from
from jaxclip_fs.methods.cache import mask_logits
from jaxclip_fs.methods.search import accuracy
from jaxclip_fs.methods.task import EvalSet, Task, with_shots
from jaxclip_fs.train.fit import fit, select, task_key


def head_accuracies(method: Method, pre, evalset: EvalSet, class_mask) -> dict:
    """Accuracy of each head the method reports (``Method.heads``), in %."""
    if method.heads is None:
        return {}
    return {name: accuracy(mask_logits(value, class_mask), evalset)
            for name, value in method.heads(pre).items()}


def cell(method: Method, per_cell: dict, shared: dict, *, batch_size: int, max_epochs: int,
         epochs_on: str | None = "val", search_on: str = "val", keep_params: bool = True,
         keep_logits: bool = False) -> dict:
    """One cell (unbatched; see :mod:`~jaxclip_fs.engine.batch` for the fields).

    Args:
      epochs_on: where a trained method's best epoch is chosen: ``val`` or ``test``
        (``final``: ``method`` keeps its last epoch; the caller gives such a method).
      search_on: where the hyperparameter grid is searched: ``val`` or ``test``;
        ``none``: nothing is searched or scored before test (``validation_free``:
        the hyperparameters are fixed and no validation row is read).

    Returns:
      ``test_accuracy``, ``val_accuracy`` (on the search set, in %; NaN without one),
      ``test_finite`` (every real test row's logits are finite: else the accuracy
      is no result),
      ``best_epoch`` (-1 if not trained), ``best_score`` (the selected epoch's
      score on the epoch-selection set), ``losses`` (per epoch; empty if not
      trained), ``index`` (name -> chosen grid index), ``heads`` (name -> test
      accuracy of each reported head), ``params`` (only with ``keep_params``,
      so unsaved params are never gathered to the host), ``test_logits``
      (only with ``keep_logits``) and, with OOD sets, ``ood_accuracy`` [O]:
      the same fit and hyperparameters scored on each OOD test set,
      predicting among that set's classes only.
    """
    key = task_key(per_cell["seed"])
    set_index = per_cell["set_index"]
    num_classes, shots = shared["supports"].shape[-3:-1]
    class_mask = shared["class_mask"]
    task = with_shots(Task(
        support=shared["supports"][set_index],
        support_mask=jnp.broadcast_to(class_mask[:, None], (num_classes, shots)),
        class_mask=class_mask, text=shared["text"], logit_scale=shared["logit_scale"],
    ), per_cell["shots"])
    test = EvalSet(shared["test"], shared["test_labels"], shared["test_mask"])
    val = EvalSet(shared["val"][set_index], shared["val_labels"][set_index],
                  (shared["val_rank"][set_index] < per_cell["val_take"]).astype(jnp.float32))
    hp = per_cell["hp"]
    params, info = fit(method, key, task, {"val": val, "test": test}.get(epochs_on), hp,
                       batch_size=batch_size, max_epochs=max_epochs)
    pre = method.precompute(params, task, test.features, test.mask)
    on_test = search_on == "test"  # (the test precompute serves the search too)
    if search_on == "none":
        chosen = {"hp": dict(hp), "val_accuracy": jnp.asarray(jnp.nan, jnp.float32)}
    else:
        chosen = select(method, params, task, test if on_test else val, hp, per_cell["grid"],
                        pre=pre if on_test else None)
    test_logits = logits_from(method, pre, params, task, chosen["hp"])
    result = {
        "test_accuracy": accuracy(test_logits, test), "val_accuracy": chosen["val_accuracy"],
        "test_finite": jnp.all(jnp.isfinite(test_logits) | (test.mask[:, None] == 0)),
        "best_epoch": info.get("best_epoch", jnp.asarray(-1, jnp.int32)),
        "best_score": info.get("best_score", jnp.asarray(jnp.nan, jnp.float32)),
        "losses": info.get("losses", jnp.zeros((0,), jnp.float32)),
        "index": chosen.get("index", {}),
        "heads": head_accuracies(method, pre, test, class_mask),
    }
    if keep_params:
        result["params"] = params
    if keep_logits:
        result["test_logits"] = test_logits
    if "ood" in shared:
        def ood_accuracy(features, labels, mask, ood_classes):
            scores = logits_from(method, method.precompute(params, task, features, mask), params,
                                 task, chosen["hp"])
            return accuracy(mask_logits(scores, ood_classes), EvalSet(features, labels, mask))

        result["ood_accuracy"] = jax.vmap(ood_accuracy)(
            shared["ood"], shared["ood_labels"], shared["ood_mask"], shared["ood_class_mask"])
    return result


def program_fn(method: Method, **static):
    """``(per_cell [G, T, ...], shared [G, ...]) -> outputs [G, T, ...]``: vmap cells, datasets."""
    one = functools.partial(cell, method, **static)
    over_cells = jax.vmap(one, in_axes=(0, None))
    return jax.vmap(over_cells, in_axes=(0, 0))


@functools.lru_cache(maxsize=64)
def compiled_program(method: Method, mesh: jax.sharding.Mesh, **static):
    """The jitted, sharded program of a method (cached: equal shapes reuse it).

    Inputs: ``per_cell`` sharded along the cell axis, ``shared`` replicated;
    outputs gathered replicated.
    """
    return jax.jit(program_fn(method, **static),
                   in_shardings=(sharding.cell_sharding(mesh), sharding.replicated(mesh)),
                   out_shardings=sharding.replicated(mesh))


def run_program(method: Method, batch, *, mesh: jax.sharding.Mesh, epochs_on: str | None = "val",
                search_on: str = "val", keep_params: bool = True, keep_logits: bool = False,
                name: str = "program", limits: dict | None = None) -> dict:
    """Places a :class:`~jaxclip_fs.engine.batch.ProgramBatch` on the mesh, runs it: host arrays.

    The wait is bounded (:func:`~jaxclip_fs.engine.watchdog.call` with ``limits``:
    ``stall`` / ``deadline`` seconds; ``name`` names the program in its error).

    Raises:
      ProgramHang: the program stalled or ran past its deadline.
    """
    program = compiled_program(method, mesh, batch_size=batch.batch_size,
                               max_epochs=batch.max_epochs, epochs_on=epochs_on,
                               search_on=search_on, keep_params=keep_params,
                               keep_logits=keep_logits)
    per_cell = sharding.place(batch.per_cell, sharding.cell_sharding(mesh))
    shared = sharding.place(batch.shared, sharding.replicated(mesh))
    return watchdog.call(lambda: jax.device_get(program(per_cell, shared)), name,
                         **(limits or {}))
