"""The compiled program of a sweep: every cell of a (method, dataset group) in one ``jax.jit``.

``cell`` runs one few-shot cell -- fit (train if the method trains, best
epoch on validation), search the hyperparameter grid on validation, score
the test set once -- with the library's own functions
(:func:`~jaxclip_fs.train.fit.fit`, :func:`~jaxclip_fs.train.fit.fit_select_predict`),
so a cell equals ``jaxclip-fs evaluate`` on the same (shots, seed).
``jax.vmap`` runs it over the T cells of a dataset (the dataset's arrays
shared, not copied), and a second ``jax.vmap`` over the G fused datasets;
``jax.jit`` with :mod:`~jaxclip_fs.sweep.sharding` shardings spreads the
cell axis over the devices. Array layout: :mod:`~jaxclip_fs.sweep.batch`.

Randomness: a cell's key is ``fold_in(key(ROOT_SEED), seed)``, as in
``evaluate`` -- independent of where the cell sits in the batch.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxclip_fs import methods
from jaxclip_fs.methods.base import Method, logits
from jaxclip_fs.methods.cache import mask_logits
from jaxclip_fs.methods.search import accuracy
from jaxclip_fs.methods.task import EvalSet, Task, with_shots
from jaxclip_fs.sweep import sharding
from jaxclip_fs.sweep.evaluate import task_key
from jaxclip_fs.train.fit import fit, fit_select_predict


def _frozen(method: Method, params) -> Method:
    """``method`` with its fitted ``params`` as init and nothing left to train.

    Lets :func:`fit_select_predict` do the search and the test scoring on
    params fitted here (whose best epoch we keep), without a second copy of
    its logic.
    """
    return dataclasses.replace(method, init=lambda key, task, hp: params, trainable=())


def cell(method: Method, per_cell: dict, shared: dict, *, batch_size: int, max_epochs: int,
         select_on_test: bool, keep_params: bool = True) -> dict:
    """One cell (unbatched; see :mod:`~jaxclip_fs.sweep.batch` for the fields).

    Returns:
      ``test_accuracy``, ``val_accuracy`` (on the selection set, in %),
      ``best_epoch`` (-1 if not trained), ``index`` (name -> chosen grid index),
      ``params`` (the fitted params; only with ``keep_params``, so unsaved params
      are never gathered to the host) and, with OOD sets, ``ood_accuracy`` [O]:
      the same fit and hyperparameters scored on each OOD test set, predicting
      among that set's classes only.
    """
    key = task_key(per_cell["seed"])
    seed_index = per_cell["seed_index"]
    num_classes, shots = shared["supports"].shape[-3:-1]
    class_mask = shared["class_mask"]
    task = with_shots(Task(
        support=shared["supports"][seed_index],
        support_mask=jnp.broadcast_to(class_mask[:, None], (num_classes, shots)),
        class_mask=class_mask, text=shared["text"], logit_scale=shared["logit_scale"],
    ), per_cell["shots"])
    test = EvalSet(shared["test"], shared["test_labels"], shared["test_mask"])
    val = EvalSet(shared["val"][seed_index], shared["val_labels"][seed_index],
                  (shared["val_rank"][seed_index] < per_cell["val_take"]).astype(jnp.float32))
    selection = test if select_on_test else val
    hp = per_cell["hp"]
    params, info = fit(method, key, task, selection, hp, batch_size=batch_size,
                       max_epochs=max_epochs)
    out = fit_select_predict(_frozen(method, params), key, task, selection, test, hp,
                             per_cell["grid"])
    result = {
        "test_accuracy": out["test_accuracy"], "val_accuracy": out["val_accuracy"],
        "best_epoch": info.get("best_epoch", jnp.asarray(-1, jnp.int32)),
        "index": out.get("index", {}),
    }
    if keep_params:
        result["params"] = params
    if "ood" in shared:
        def ood_accuracy(features, labels, mask, ood_classes):
            scores = logits(method, params, task, features, out["hp"], mask)
            scores = mask_logits(scores, ood_classes)
            return accuracy(scores, EvalSet(features, labels, mask))

        result["ood_accuracy"] = jax.vmap(ood_accuracy)(
            shared["ood"], shared["ood_labels"], shared["ood_mask"], shared["ood_class_mask"])
    return result


def program_fn(method: Method, *, batch_size: int, max_epochs: int, select_on_test: bool,
               keep_params: bool = True):
    """``(per_cell [G, T, ...], shared [G, ...]) -> outputs [G, T, ...]``: vmap cells, datasets."""
    one = functools.partial(cell, method, batch_size=batch_size, max_epochs=max_epochs,
                            select_on_test=select_on_test, keep_params=keep_params)
    over_cells = jax.vmap(one, in_axes=(0, None))
    return jax.vmap(over_cells, in_axes=(0, 0))


@functools.lru_cache(maxsize=64)
def compiled_program(method_name: str, batch_size: int, max_epochs: int, select_on_test: bool,
                     mesh: jax.sharding.Mesh, keep_params: bool = True):
    """The jitted, sharded program of a registered method (cached: equal shapes reuse it).

    Inputs: ``per_cell`` sharded along the cell axis, ``shared`` replicated;
    outputs gathered replicated.
    """
    program = program_fn(methods.get(method_name), batch_size=batch_size, max_epochs=max_epochs,
                         select_on_test=select_on_test, keep_params=keep_params)
    return jax.jit(program,
                   in_shardings=(sharding.cell_sharding(mesh), sharding.replicated(mesh)),
                   out_shardings=sharding.replicated(mesh))


def run_program(method: Method, batch, *, select_on_test: bool, mesh: jax.sharding.Mesh,
                keep_params: bool = True) -> dict:
    """Places a :class:`~jaxclip_fs.sweep.batch.ProgramBatch` on the mesh, runs it: host arrays."""
    program = compiled_program(method.name, batch.batch_size, batch.max_epochs, select_on_test,
                               mesh, keep_params)
    per_cell = sharding.place(batch.per_cell, sharding.cell_sharding(mesh))
    shared = sharding.place(batch.shared, sharding.replicated(mesh))
    return jax.device_get(program(per_cell, shared))
