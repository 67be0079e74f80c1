"""The program of an image method (LDC): train on images, then select and predict on streams.

An image method reads a frozen CLIP's outputs per image
(:mod:`~jaxclip_fs.pipelines.images`), so its cells run in three compiled
stages over the T cells (seeds x shots) of one dataset:

1. **fit** -- ``init`` and, if it trains, the library's trainer on the
   support pool (:func:`~jaxclip_fs.train.fit.train_params` with the
   pipeline's ``fetch``: the frozen trunk with fresh crops each step, or the
   tap cache), all tasks in one ``jit(vmap)``, the task axis sharded over
   the devices (padded by repeating the last task; shared inputs
   replicated);
2. **select** -- the selection images (the union of the cells' validation
   rows, or the test split where the protocol searches on test) go through the frozen
   trunk once per batch and every cell's ``precompute``; then the method's
   grid is searched per cell on its own rows (:func:`~jaxclip_fs.train.fit.select`,
   the same search as the feature methods', e.g. LDC's β) -- skipped under
   ``validation_free``, whose hyperparameters are fixed;
3. **predict** -- the test images (and each OOD set) stream through the
   trunk once; each cell predicts with its chosen hyperparameters, and the
   method's reported heads are scored too.

A cell therefore equals the same cell computed alone: keys are
:func:`~jaxclip_fs.train.fit.task_key` ``(seed)``, and every per-cell
computation is independent of its neighbours.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.data.fewshot import fewshot_val, official_val_rows
from jaxclip_fs.engine import sharding, watchdog
from jaxclip_fs.experiment.plan import Program, Resolved
from jaxclip_fs.experiment.protocol import Rules
from jaxclip_fs.methods.base import Method, as_arrays, logits_from
from jaxclip_fs.methods.cache import mask_logits
from jaxclip_fs.methods.images import ImageSpec
from jaxclip_fs.methods.task import EvalSet, Task
from jaxclip_fs.pipelines.images import ImageData, QuerySet
from jaxclip_fs.train.fit import init_params, select, task_key, train_params
from jaxclip_fs.train.trainer import TrainData


@functools.lru_cache(maxsize=32)
def bind(method: Method, spec: ImageSpec) -> Method:
    """``method.bind(spec)``, once per (method, CLIP) so compiled programs are reused."""
    return method.bind(spec)


def _task(frozen: dict, mask: jax.Array) -> Task:
    """A cell's :class:`Task`: support mask [C, K], every class real, the CLIP's arrays."""
    return Task(support=None, support_mask=mask,
                class_mask=jnp.ones(mask.shape[:1], jnp.float32), text=frozen["text"],
                logit_scale=frozen["logit_scale"], frozen={"projector": frozen["clip"]})


def fit_one(method: Method, fetch: Callable, frozen, pool, index, mask, seed, hp, *,
            batch_size: int, max_epochs: int):
    """Initialises (and trains) one cell → ``(params, info)``."""
    key = task_key(seed)
    task = _task(frozen, mask)
    params = init_params(method, key, task, hp)
    if not method.trainable:
        return params, {}
    data = TrainData(pool, index, mask)
    return train_params(method, params, key, task, data, None, hp, batch_size=batch_size,
                        max_epochs=max_epochs,
                        fetch=lambda step_key, rows: fetch(frozen, step_key, rows))


@functools.lru_cache(maxsize=16)
def _compiled_fit(method: Method, fetch: Callable, batch_size: int, max_epochs: int, mesh):
    fit = functools.partial(fit_one, method, fetch, batch_size=batch_size, max_epochs=max_epochs)
    vmapped = jax.vmap(fit, in_axes=(None, None, 0, 0, 0, 0))
    return jax.jit(vmapped, out_shardings=sharding.replicated(mesh))


def fit_mesh(mesh, cells: int):
    """The devices an image program's fit spreads its ``cells`` over: at most one per cell
    (:func:`~jaxclip_fs.engine.sharding.sub_mesh`)."""
    return sharding.sub_mesh(mesh, min(mesh.devices.size, cells))


def fit_cells(method: Method, data: ImageData, index: np.ndarray, mask: np.ndarray,
              seeds: Sequence[int], hp: dict, resolved: Resolved, mesh, *, name: str = "fit",
              limits: dict | None = None) -> tuple[Any, dict]:
    """All T cells in one program, the cell axis spread over (at most T devices of) the mesh
    -- with several processes, the same number of each process's devices
    (:func:`~jaxclip_fs.engine.sharding.sub_mesh`); host ``(params, info)``."""
    num = len(seeds)
    mesh = fit_mesh(mesh, num)
    padded = sharding.padded_length(num, mesh)
    take = np.minimum(np.arange(padded), num - 1)
    per_cell = sharding.place(
        (index[take].astype(np.int32), mask[take].astype(np.float32),
         np.asarray(seeds, np.int32)[take], {k: np.asarray(v)[take] for k, v in hp.items()}),
        sharding.task_sharding(mesh))
    shared = sharding.place(jax.device_get((data.frozen, data.pool)), sharding.replicated(mesh))
    batch_size, max_epochs = resolved.static(method)
    fit = _compiled_fit(method, data.fetch, batch_size, max_epochs, mesh)
    out = watchdog.call(lambda: jax.device_get(fit(shared[0], shared[1], *per_cell)), name,
                        **(limits or {}))
    return jax.tree.map(lambda leaf: np.asarray(leaf)[:num], out)


# --- streamed stages -------------------------------------------------------------------------


def _swap(tree):
    """[T, B, ...] leaves -> [B, T, ...] (the stream's batch axis first)."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), tree)


@functools.lru_cache(maxsize=32)
def precompute_fn(method: Method) -> Callable:
    """``(frozen, (params [T], masks [T]), inputs) -> {name: [B, T, ...]}``: every cell's
    ``precompute`` on one batch (image methods return a dict of row arrays)."""
    def fn(frozen, bundle, inputs):
        params, masks = bundle
        rows = jnp.ones(inputs.s.shape[:1], jnp.float32)
        pre = jax.vmap(lambda p, m: method.precompute(p, _task(frozen, m), inputs, rows))(
            params, masks)
        return _swap(pre)
    return fn


@functools.lru_cache(maxsize=32)
def predict_fn(method: Method, keep_logits: bool) -> Callable:
    """``(frozen, (params, masks, hp, class_mask), inputs) -> {"pred": [B, T], "finite":
    [B, T], "head_<h>": [B, T], "logits"?: [B, T, C]}`` with every cell's chosen
    hyperparameters (``finite``: the row's logits are)."""
    def fn(frozen, bundle, inputs):
        params, masks, hp, class_mask = bundle
        rows = jnp.ones(inputs.s.shape[:1], jnp.float32)

        def one(p, m, h):
            task = _task(frozen, m)._replace(class_mask=class_mask)
            pre = method.precompute(p, task, inputs, rows)
            logits = logits_from(method, pre, p, task, h)
            out = {"pred": jnp.argmax(logits, axis=-1),
                   "finite": jnp.all(jnp.isfinite(logits), axis=-1)}
            if method.heads is not None:
                out.update({f"head_{name}": jnp.argmax(mask_logits(value, class_mask), axis=-1)
                            for name, value in method.heads(pre).items()})
            if keep_logits:
                out["logits"] = logits
            return out

        return _swap(jax.vmap(one)(params, masks, hp))
    return fn


@functools.lru_cache(maxsize=32)
def _compiled_select(method: Method):
    def one(params, mask, frozen, pre, labels, rows, hp, grid):
        return select(method, params, _task(frozen, mask), EvalSet(None, labels, rows), hp, grid,
                      pre=pre)
    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0, None, 0, 0, 0)))


def selection_rows(data: ImageData, shots: int, seed: int, rules: Rules) -> tuple[str, np.ndarray]:
    """The split a cell searches on and its rows: its validation rows (``rules.val_rows``:
    ``full``, or ``coop`` -- CoOp's nested rows or the official draw's), or the whole test
    split (``rules.search_on == "test"``)."""
    if rules.search_on == "test":
        return "test", np.arange(len(data.dataset.split("test")))
    if rules.val_rows == "coop" and rules.sampler != "nested":
        return "val", official_val_rows(data.val_draws, rules.sampler, seed, shots)
    return "val", fewshot_val(data.dataset, shots, seed, rules.val_rows)


def support_rows(data: ImageData, cell, kmax: int, sampler: str) -> np.ndarray:
    """A cell's support: pool rows [C, kmax] (its nested set, or its official draw padded by
    repeating its last column -- masked out)."""
    if sampler == "nested":
        return data.fewshot[cell.seed][:, :kmax]
    rows = np.asarray(data.draws[(sampler, cell.seed, cell.shots)])
    return np.pad(rows, ((0, 0), (0, kmax - rows.shape[1])), mode="edge")


def _select_cells(program: Program, method: Method, data: ImageData, params, masks, hp: dict,
                  resolved: Resolved, rules: Rules, limits: dict | None):
    """Every cell's search on its selection rows, in one stream over their union →
    ``(split, heads' pre [T, M, ...], labels [M], member [T, M], chosen)``."""
    cells = program.cells
    picked = [selection_rows(data, c.shots, c.seed, rules) for c in cells]
    split = picked[0][0]
    union = np.unique(np.concatenate([rows for _, rows in picked]))
    member = np.stack([np.isin(union, rows) for _, rows in picked]).astype(np.float32)
    queries = data.queries(split, union)
    pre = data.stream(queries, precompute_fn(method), (params, masks),
                      desc=f"{program.name} {split}")
    pre_cells = jax.tree.map(lambda x: np.swapaxes(x, 0, 1), pre)  # [T, M, ...]
    grid = {name: np.broadcast_to(np.asarray(g, np.float32), (len(cells), len(g)))
            for name, g in resolved.grid.items()}
    chosen = watchdog.call(lambda: jax.device_get(_compiled_select(method)(
        params, masks, data.frozen, pre_cells, jnp.asarray(queries.labels), member,
        as_arrays(hp), grid)), f"{program.name} (select)", **(limits or {}))
    return split, pre_cells, queries.labels, member, chosen


def run_image_program(program: Program, method: Method, data: ImageData, resolved: Resolved, *,
                      oods: Sequence[QuerySet], rules: Rules, mesh,
                      keep_logits: bool = False, limits: dict | None = None) -> dict:
    """Runs one image program (module docstring); returns host outputs in cell order.

    Returns:
      dict with per cell (leading axis T, ``program.cells`` order): ``params``,
      ``info`` (``losses``, ``best_epoch``), ``index`` (name -> grid index),
      ``val_accuracy``, ``test_accuracy``, ``test_finite`` (every test row's logits are
      finite), ``heads`` (name -> test accuracy),
      ``ood_accuracy`` [T, O], ``val_size`` [T], ``selection`` (the split's
      name; None when ``rules`` select nothing -- then no selection row is
      read and the next three are None / empty), ``selection_pre`` (the heads
      on the selection rows, for the confusion analysis) with
      ``selection_labels`` / ``selection_rows``,
      ``devices`` (how many the fit ran on) and ``test_logits`` [T, M, C]
      with ``keep_logits``.
    """
    cells = program.cells
    kmax = max(c.shots for c in cells)
    index = np.stack([support_rows(data, c, kmax, rules.sampler) for c in cells])
    mask = np.stack([np.broadcast_to(np.arange(kmax) < c.shots, index.shape[1:]) for c in cells])
    seeds = [c.seed for c in cells]
    hp = {name: np.full((len(cells),), value, np.float32)
          for name, value in resolved.values.items()}
    params, info = fit_cells(method, data, index, mask, seeds, hp, resolved, mesh,
                             name=f"{program.name} (fit)", limits=limits)
    masks = jnp.asarray(mask, jnp.float32)

    if rules.searches:
        split, pre_cells, labels, member, chosen = _select_cells(
            program, method, data, params, masks, hp, resolved, rules, limits)
    else:  # validation_free: the fixed hyperparameters, no selection split read at all
        split, pre_cells, labels, member = None, None, None, np.zeros((len(cells), 0))
        chosen = {"hp": as_arrays(hp), "val_accuracy": np.full(len(cells), np.nan, np.float32)}

    # predict: test, then each OOD set, with every cell's chosen hyperparameters
    def predict(q: QuerySet) -> dict:
        bundle = (params, masks, chosen["hp"], jnp.asarray(q.class_mask))
        out = data.stream(q, predict_fn(method, keep_logits), bundle,
                          desc=f"{program.name} {q.name} {q.split}")
        hits = lambda pred: 100.0 * np.mean(pred == q.labels[:, None], axis=0)  # noqa: E731
        result = {"accuracy": hits(out["pred"]), "finite": out["finite"].all(axis=0),
                  "heads": {k[len("head_"):]: hits(v) for k, v in out.items()
                            if k.startswith("head_")}}
        if keep_logits:
            result["logits"] = np.swapaxes(out["logits"], 0, 1)
        return result

    test = predict(data.queries("test"))
    ood = [predict(q)["accuracy"] for q in oods]
    outputs = {
        "params": params, "info": info, "index": chosen.get("index", {}),
        "val_accuracy": np.asarray(chosen["val_accuracy"]), "test_accuracy": test["accuracy"],
        "test_finite": test["finite"],
        "heads": test["heads"],
        "ood_accuracy": np.stack(ood, axis=1) if ood else np.zeros((len(cells), 0)),
        "val_size": member.sum(axis=1).astype(int), "selection": split,
        "selection_pre": pre_cells, "selection_labels": labels, "selection_rows": member,
        "devices": fit_mesh(mesh, len(cells)).devices.size,
    }
    if keep_logits:
        outputs["test_logits"] = test["logits"]
    return outputs
