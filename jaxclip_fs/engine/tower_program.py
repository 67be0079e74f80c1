"""The program of a method trained through CLIP's towers (CoOp, CLIP-LoRA): train, then predict.

A tower method (``Method.towers``: :class:`~jaxclip_fs.methods.images.TowerTraining`)
trains a small per-seed *adaptation* through the frozen CLIP, so its T cells
(seeds x shots) of one dataset run as:

1. **train** -- one compiled program (:func:`~jaxclip_fs.train.towers.train_seeds`):
   every cell's adaptation ``jax.vmap``-ped, one copy of the CLIP and of the
   support pool shared, the cell axis sharded over (at most T of) the devices
   and padded by repeating the last cell like the image programs'. Cells with
   fewer shots are masked (nested sets) and stop stepping at their own total,
   so each cell equals its run alone. The pool is the frozen image tower's
   features of augmented views for CoOp (``pool = "features"``), the uint8
   pixels cropped on device every step for CLIP-LoRA (``"pixels"``);
2. **classify** -- each cell's class embeddings, once;
3. **predict** -- the test images (and each OOD set) stream once; every cell
   predicts each batch (CLIP-LoRA: through its adapted image tower).

The final iterate is kept and nothing is selected under every protocol (the
official codes validate nothing; the methods search no hyperparameter), so
no validation image is read: records have ``val_size`` 0 and no validation
accuracy. Keys: :func:`~jaxclip_fs.train.fit.task_key` ``(seed)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.engine import sharding, watchdog
from jaxclip_fs.engine.image_program import fit_mesh, support_rows
from jaxclip_fs.experiment.plan import Program, Resolved
from jaxclip_fs.io.console import progress_bar
from jaxclip_fs.experiment.protocol import Rules
from jaxclip_fs.methods.base import Method
from jaxclip_fs.pipelines.images import ImageData, QuerySet
from jaxclip_fs.train import tower_methods, towers
from jaxclip_fs.train.fit import task_key


def tower_model(clip_config, train_dtype: str, remat: bool = False):
    """The CLIP module the towers train in (``--compute-dtype``; ``remat``)."""
    return towers.tower_model(clip_config, train_dtype, remat)


def cell_tasks(program: Program, data: ImageData, sampler: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(index int32 [T, C, K], mask float32 [T, C, K], seeds int32 [T])`` of the cells."""
    cells = program.cells
    kmax = max(c.shots for c in cells)
    index = np.stack([support_rows(data, c, kmax, sampler) for c in cells]).astype(np.int32)
    mask = np.stack([np.broadcast_to(np.arange(kmax) < c.shots, index.shape[1:])
                     for c in cells]).astype(np.float32)
    return index, mask, np.asarray([c.seed for c in cells], np.int32)


def training_pool(method: Method, data: ImageData):
    """The pool the recipe reads: features [V, N, E] (CoOp) or pixels [1, N, S, S, 3]."""
    return data.pool["features"] if method.towers.pool == "features" else data.pool


def place_tasks(index, mask, seeds, mesh) -> tuple[towers.TowerTask, Any]:
    """The cells as :class:`~jaxclip_fs.train.towers.TowerTask` s, padded to the mesh (the last
    cell repeated) and sharded over it → ``(tasks, the fit mesh)``."""
    num = len(seeds)
    mesh = fit_mesh(mesh, num)
    take = np.minimum(np.arange(sharding.padded_length(num, mesh)), num - 1)
    index, mask, seeds = sharding.place((index[take], mask[take], seeds[take]),
                                        sharding.task_sharding(mesh))
    keys = jax.vmap(task_key)(seeds)
    return towers.TowerTask(index, mask, keys), mesh


#: Steps per dispatch of a long training (a progress report between chunks).
CHUNK_STEPS = 250


def train_in_chunks(recipe, shared, tasks, start, steps: int, name: str, limits, progress):
    """:func:`~jaxclip_fs.train.towers.train_seeds` 's result, run as ``n`` equal chunks of
    at most :data:`CHUNK_STEPS` steps (one compiled program for every chunk,
    :func:`~jaxclip_fs.train.towers.run_seeds`; the last chunk's steps past every cell's
    total change nothing) with a progress bar → ``(adaptations, losses [T, steps])``."""
    if steps <= CHUNK_STEPS:
        return watchdog.call(lambda: jax.block_until_ready(towers.train_seeds(
            recipe, shared[0], shared[1], tasks, start, steps=steps)), name, **(limits or {}))
    chunks = -(-steps // CHUNK_STEPS)
    size = -(-steps // chunks)
    state = towers.start_seeds(recipe, tasks, start)
    found = []
    bar = progress_bar(steps, desc=name, unit="step", disable=not progress)
    try:
        for first in range(0, steps, size):
            state, losses = watchdog.call(lambda: jax.block_until_ready(towers.run_seeds(
                recipe, shared[0], shared[1], tasks, state, first, steps=size)), name,
                **(limits or {}))
            found.append(np.asarray(losses))
            bar.update(min(size, steps - first))
    finally:
        bar.close()
    return state.adaptation, np.concatenate(found, axis=1)[:, :steps]


def run_tower_program(program: Program, method: Method, data: ImageData, resolved: Resolved, *,
                      oods: Sequence[QuerySet], rules: Rules, mesh, model, tokenizer,
                      keep_logits: bool = False, limits: dict | None = None,
                      log=None, progress: bool = False) -> dict:
    """Runs one tower program (module docstring); host outputs in cell order.

    Args:
      model: the CLIP module trained through (:func:`tower_model`).
      tokenizer: the CLIP's tokenizer (the prompts).
      progress: a progress bar over the steps of a long training.

    Returns:
      dict with per cell (leading axis T): ``params`` (the adaptations),
      ``losses`` [T, steps] (NaN past a cell's total), ``counts``
      (:class:`~jaxclip_fs.train.towers.StepCounts` of numpy [T]), ``test_accuracy``,
      ``test_finite``, ``ood_accuracy`` [T, O], ``devices``, ``test_logits`` [T, M, C]
      with ``keep_logits``.
    """
    declared = method.towers
    num = len(program.cells)
    imagenet = data.dataset.name == "imagenet"
    recipe = tower_methods.recipe(declared, model, resolved.values, imagenet)
    index, mask, seeds = cell_tasks(program, data, rules.sampler)
    tasks, used_mesh = place_tasks(index, mask, seeds, mesh)
    variables = data.frozen["clip"]
    tokens = tower_methods.tokens(declared, tokenizer, data.dataset.classnames)
    frozen = tower_methods.frozen_inputs(declared, variables, tokens, data.text)
    pool = training_pool(method, data)
    shared = sharding.place(jax.device_get((frozen, pool)), sharding.replicated(used_mesh))
    start = tower_methods.initial(declared, recipe, tasks, variables, tokenizer)
    steps = towers.max_steps(recipe, mask)
    if log:
        log(f"{program.name}: training {num} cells through the towers in one program "
            f"({steps} steps, batch {recipe.batch_size}, {used_mesh.devices.size} device(s))")
    adaptations, losses = train_in_chunks(recipe, shared, tasks, start, steps,
                                          f"{program.name} (train)", limits, progress)
    text = tower_methods.classifiers(declared, model, variables, adaptations, tokens, data.text)

    def predict(q: QuerySet) -> dict:
        fn = tower_methods.predict_fn(declared, model, keep_logits)
        bundle = (adaptations, text, jnp.asarray(q.class_mask))
        out = data.stream(q, fn, bundle, desc=f"{program.name} {q.name} {q.split}",
                          trunk=declared.pool == "features")
        accuracy = 100.0 * np.mean(out["pred"] == q.labels[:, None], axis=0)
        result = {"accuracy": accuracy[:num], "finite": out["finite"].all(axis=0)[:num]}
        if keep_logits:
            result["logits"] = np.swapaxes(out["logits"], 0, 1)[:num]
        return result

    test = predict(data.queries("test"))
    ood = [predict(q)["accuracy"] for q in oods]
    counts = jax.vmap(recipe.counts)(jnp.asarray(mask))
    outputs = {
        "params": jax.tree.map(lambda leaf: np.asarray(leaf)[:num], jax.device_get(adaptations)),
        "losses": np.asarray(losses)[:num], "counts": jax.tree.map(np.asarray, counts),
        "test_accuracy": test["accuracy"], "test_finite": test["finite"],
        "ood_accuracy": np.stack(ood, axis=1) if ood else np.zeros((num, 0)),
        "devices": used_mesh.devices.size,
    }
    if keep_logits:
        outputs["test_logits"] = test["logits"]
    return outputs
