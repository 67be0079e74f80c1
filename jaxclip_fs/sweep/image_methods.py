"""Image methods -- LDC, TA++, TX++: dataset + CLIP → fitted, selected on validation → records.

The public API (``jaxclip-fs evaluate`` and the sweep engine call these):

* :func:`run_image_method` ``(method, dataset, clip, *, shots, seeds, hp, options)``
  → one :class:`ImageCell` per (shots, seed): result record, test logits,
  fitted params, and for LDC the confusion analysis. All cells of a call
  run as *one* compiled program (``vmap`` over the seeds x shots tasks).
* :func:`run_ldc` -- LDC: the union of the seeds' few-shot sets is the support
  pool; every task (seed, shots) indexes it with its nested set and mask;
  :func:`~jaxclip_fs.train.ldc.fit_ldc` trains all tasks in one program (the
  task axis sharded over the devices, shared inputs replicated) on
  the tap cache or with the trunk in the step
  (:func:`~jaxclip_fs.train.ldc_inputs.choose_train_path`); val and test
  images go through the trunk once and every task's heads
  (:func:`~jaxclip_fs.train.ldc_inputs.predict_split`); β is searched per
  task on its validation rows (:func:`~jaxclip_fs.methods.ldc.search_beta`).
* :func:`run_imo_method` -- TA++ / TX++: :func:`imo_paired_features` extracts
  the features of the original and the IMO-adapted encoder (same pool, same
  augmented views, both cached) side by side; then the ordinary
  :func:`~jaxclip_fs.train.fit.fit_select_predict`, vmapped over tasks.
  The paired :class:`~jaxclip_fs.features.featfile.FeatureSet` is also
  usable directly by the sweep engine's feature-level programs.
* :func:`write_cell` -- ``test_logits.npy``, ``result.json`` (and for LDC
  ``confusion.json`` / ``confusion.png`` and an orbax ``params`` checkpoint).

Randomness: a task's key is ``fold_in(key(ROOT_SEED), seed)`` as in
``evaluate``; validation follows the same policies (CoOp ``min(K, 4)`` per
class, nested, same seed; or the full split); the test split is scored once.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs import methods
from jaxclip_fs.clip.tokenizer import load_tokenizer
from jaxclip_fs.data.fewshot import VAL_POLICIES, fewshot_val
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features import augment, featfile
from jaxclip_fs.features.extract import extract_features, select_train_pool
from jaxclip_fs.features.text_classifier import text_classifier
from jaxclip_fs.io import atomic, checkpoints, records
from jaxclip_fs.methods import ldc as ldc_lib
from jaxclip_fs.methods.base import as_arrays
from jaxclip_fs.methods.task import pad_evalset, stack, with_shots
from jaxclip_fs.report.confusion import confusion_analysis, summary_lines, write_confusion
from jaxclip_fs.sweep import sharding
from jaxclip_fs.sweep.evaluate import (
    build_evalset, build_task, stderr_log, task_key, val_rows,
)
from jaxclip_fs.train import ldc_inputs
from jaxclip_fs.train.fit import fit_select_predict
from jaxclip_fs.train.imo import load_imo_adapters
from jaxclip_fs.train.ldc import LDCData, fit_ldc

IMAGE_METHODS = methods.IMAGE_METHODS


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """Settings of the image pipeline (flags of ``evaluate`` for image methods).

    Attributes:
      fusion, ablation, vit_taps: LDC switches (:mod:`~jaxclip_fs.methods.ldc`).
      train_path: ``auto`` / ``trunk`` / ``cache`` (LDC training path).
      tap_cache_budget: bytes the LDC tap cache may take (``auto``).
      tap_cache_views: V views per support image in the tap cache (view 0 clean).
      imo_adapters: TA++/TX++: the ``jaxclip-fs train-imo`` checkpoint directory.
      views: TA++/TX++ cache-model views per train image (Tip-Adapter: 10).
      aug_seed: seed of the host-side augmented views.
      val_policy: ``coop`` or ``full``.
      select_on_test: choose β (α, γ) on the test set (optimistic; recorded).
      batch_size: images per compiled encoding batch.
      cache_dir, use_cache: the feature cache.
      workers: image loader threads.
      progress: progress bars on stderr.
      devices: LDC training spreads its tasks over the first N devices (default: all,
        at most one per task); the results do not depend on it.
    """

    fusion: str = "fixed"
    ablation: str = "full"
    vit_taps: str = "proportional"
    train_path: str = "auto"
    tap_cache_budget: int = ldc_inputs.DEFAULT_TAP_CACHE_BUDGET
    tap_cache_views: int = 10
    imo_adapters: str | None = None
    views: int = 10
    aug_seed: int = 0
    val_policy: str = "coop"
    select_on_test: bool = False
    batch_size: int = 64
    cache_dir: str | None = None
    use_cache: bool = True
    workers: int | None = None
    progress: bool = True
    devices: int | None = None


@dataclasses.dataclass(frozen=True)
class ImageCell:
    """The result of one (method, shots, seed) cell.

    Attributes:
      record: the result record (``io/records.py`` fields + method details).
      test_logits: float32 [T, C] of the reported prediction.
      params: the fitted params (numpy pytree): LDC ``{"params", "batch_stats"}``,
        TA++/TX++ the cache keys.
      confusion: LDC: :func:`~jaxclip_fs.report.confusion.confusion_analysis`
        of ``s`` vs ``ada`` on the cell's validation rows; else None.
    """

    method: str
    shots: int
    seed: int
    record: dict
    test_logits: np.ndarray
    params: dict
    confusion: dict | None = None


def _check_grid(shots: Sequence[int], seeds: Sequence[int]
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shots = tuple(sorted({int(k) for k in shots}))
    seeds = tuple(dict.fromkeys(int(s) for s in seeds))
    if not shots or shots[0] < 1:
        raise ConfigError(f"--shots must be >= 1, got {list(shots)}")
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"--seeds must be >= 0, got {list(seeds)}")
    return shots, seeds


def _check_options(options: ImageOptions) -> None:
    if options.val_policy not in VAL_POLICIES:
        raise ConfigError(f"unknown validation policy '{options.val_policy}'; choose one of "
                          f"{', '.join(VAL_POLICIES)}")
    if options.tap_cache_views < 1 or options.views < 1:
        raise ConfigError("--views and --tap-cache-views must be >= 1")


def task_keys(seeds: Sequence[int]) -> jax.Array:
    """``fold_in(key(ROOT_SEED), seed)`` per seed (as ``evaluate``)."""
    return jnp.stack([task_key(s) for s in seeds])


def _provenance(clip, dataset, pool_policy: str, val_policy: str, select_on_test: bool) -> dict:
    val = ("the test split (select-on-test)" if select_on_test else
           f"{'min(K, 4) per class, nested, same seed' if val_policy == 'coop' else 'whole'} "
           f"val split ({dataset.split_origin.get('val', 'val split')})")
    return {"backbone": clip.config.name,
            "weights": "random" if clip.is_random else clip.weights_id,
            "dataset": dataset.name,
            "split_policy": {"train": pool_policy, "val": val,
                             "test": f"whole test split "
                                     f"({dataset.split_origin.get('test', 'test split')})"}}


def _used_hparams(method, values: Mapping[str, float], chosen: Mapping[str, float]) -> dict:
    specs = method.hparam_specs
    merged = {**values, **chosen}
    return {name: int(v) if specs[name].integer else float(v) for name, v in merged.items()}


def _selection_rows(dataset, shots: int, seed: int, options: ImageOptions) -> np.ndarray:
    """Split indices the task selects on: its validation rows, or the whole test split."""
    if options.select_on_test:
        return np.arange(len(dataset.split("test")))
    return fewshot_val(dataset, shots, seed, options.val_policy)


# --- LDC -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _compiled_ldc_training(model, fetch, batch_size: int, max_epochs: int, mesh=None):
    """``jit(vmap(fit_ldc))`` over tasks (pool and frozen arguments shared).

    With a ``mesh`` the outputs are gathered replicated; the inputs bring their
    own shardings (tasks split over the mesh, shared arguments replicated).
    """
    fit = functools.partial(fit_ldc, model, fetch, batch_size=batch_size, max_epochs=max_epochs)
    vmapped = jax.vmap(fit, in_axes=(None, LDCData(None, 0, 0), 0, 0))
    if mesh is None:
        return jax.jit(vmapped)
    return jax.jit(vmapped, out_shardings=sharding.replicated(mesh))


def _train_ldc_sharded(model, fetch, batch_size: int, max_epochs: int, frozen, pool,
                       index: np.ndarray, mask: np.ndarray, seeds: Sequence[int],
                       settings: Mapping[str, np.ndarray], devices: int | None):
    """All T tasks in one program, the task axis spread over up to T devices.

    T is padded to a multiple of the mesh size by repeating the last task (its
    copies are computed and dropped); each task's numbers do not depend on the
    layout. Returns host ``(params, batch_stats, info)`` stacked over the T
    tasks, and the mesh size.
    """
    num_tasks = len(index)
    mesh = sharding.cell_mesh(min(devices or jax.device_count(), num_tasks))
    padded = sharding.padded_length(num_tasks, mesh)
    take = np.minimum(np.arange(padded), num_tasks - 1)
    key_data = np.asarray(jax.random.key_data(task_keys([seeds[t] for t in take])))
    per_task = sharding.place((index[take].astype(np.int32), mask[take].astype(np.float32),
                               key_data, {k: v[take] for k, v in settings.items()}),
                              sharding.task_sharding(mesh))
    shared = sharding.place(jax.device_get((frozen, pool)), sharding.replicated(mesh))
    train = _compiled_ldc_training(model, fetch, batch_size, max_epochs, mesh)
    outputs = train(shared[0], LDCData(shared[1], per_task[0], per_task[1]),
                    jax.random.wrap_key_data(per_task[2]), per_task[3])
    host = jax.tree.map(lambda leaf: np.asarray(leaf)[:num_tasks], jax.device_get(outputs))
    return host, mesh.devices.size


def run_ldc(dataset, clip, *, shots: Sequence[int], seeds: Sequence[int],
            hp: Sequence[str] | Mapping[str, float] = (), options: ImageOptions = ImageOptions(),
            tokenizer=None, log: Callable[[str], None] | None = stderr_log) -> list[ImageCell]:
    """Trains and evaluates LDC for every (shots, seed) in one compiled program (module docstring).

    Args:
      dataset: a :class:`~jaxclip_fs.data.dataset.Dataset` with train, val, test.
      clip: a :class:`~jaxclip_fs.convert.load.LoadedCLIP`.
      shots, seeds: the grid; all cells train together.
      hp: fixed hyperparameters (``beta``, ``epochs``, ``lr``, ``batch_size``,
        ``eps``, ``weight_decay``); β is searched unless fixed.
      options: :class:`ImageOptions`.
      tokenizer: default :func:`~jaxclip_fs.clip.tokenizer.load_tokenizer` of the CLIP.
      log: progress messages (None: silent).

    Returns:
      :class:`ImageCell` s in (seed, shots) order.
    """
    started = time.perf_counter()
    say = log or (lambda message: None)
    shots, seeds = _check_grid(shots, seeds)
    _check_options(options)
    method = methods.get("ldc")
    values, grid = method.resolve(dataset.name, clip.config.embed_dim, hp)
    tokenizer = tokenizer or load_tokenizer(clip.source_dir)
    text = text_classifier(clip, tokenizer, dataset.classnames, dataset.templates,
                           batch_size=options.batch_size, cache_dir=options.cache_dir,
                           use_cache=options.use_cache, progress=options.progress)
    frozen = ldc_inputs.frozen_arguments(clip, text)
    model, tap_names = ldc_inputs.ldc_for_clip(clip, dataset.num_classes, fusion=options.fusion,
                                               ablation=options.ablation, vit_rule=options.vit_taps)
    pool = select_train_pool(dataset, max(shots), seeds)
    pool_arrays, fetch, path = _ldc_training_pool(clip, dataset, pool.indices, tap_names, options,
                                                  say)

    cells = [(k, s) for s in seeds for k in shots]
    kmax = max(shots)
    index = np.stack([pool.fewshot[s] for _, s in cells])
    mask = np.stack([np.broadcast_to(np.arange(kmax) < k, index.shape[1:]) for k, _ in cells])
    settings = {name: np.full((len(cells),), values[name], np.float32)
                for name in ("epochs", "lr", "eps", "weight_decay")}
    batch_size, max_epochs = int(values["batch_size"]), int(values["epochs"])
    (params, stats, info), devices = _train_ldc_sharded(
        model, fetch, batch_size, max_epochs, frozen, pool_arrays, index, mask,
        [s for _, s in cells], settings, options.devices)
    say(f"ldc: trained {len(cells)} task(s) x {max_epochs} epochs in one program on "
        f"{devices} device(s)")

    predict = functools.partial(ldc_inputs.predict_split, clip, dataset, model=model,
                                tap_names=tap_names, params=params, batch_stats=stats,
                                frozen=frozen, batch_size=options.batch_size,
                                workers=options.workers, progress=options.progress)
    selection_rows = [_selection_rows(dataset, k, s, options) for k, s in cells]
    selection_split = "test" if options.select_on_test else "val"
    union = np.unique(np.concatenate(selection_rows))
    selection = predict(split_name=selection_split, indices=union)
    selection_labels = dataset.split(selection_split).labels[union]
    rows = [np.searchsorted(union, r) for r in selection_rows]
    betas, val_accuracy = _select_betas(selection, selection_labels, rows, grid, values)
    test_split = dataset.split("test")
    test = predict(split_name="test", indices=np.arange(len(test_split)), beta=np.asarray(betas))
    test_labels = test_split.labels
    seconds = time.perf_counter() - started
    provenance = _provenance(clip, dataset, pool.policy, options.val_policy, options.select_on_test)
    host = (params, stats, info)
    out = []
    for t, (k, s) in enumerate(cells):
        test_logits = np.asarray(test["fused"][:, t], np.float32)
        confusion = confusion_analysis(selection["s"][rows[t]], selection["ada"][rows[t], t],
                                       selection_labels[rows[t]], dataset.classnames)
        record = records.build_record(
            method="ldc", shots=k, seed=s,
            hyperparameters=_used_hparams(method, values, {"beta": betas[t]}),
            provenance=provenance, searched=list(grid), val_policy=options.val_policy,
            selection="test" if options.select_on_test else "validation",
            accuracy=_accuracy(test_logits, test_labels), val_accuracy=val_accuracy[t],
            best_epoch=None, num_classes=dataset.num_classes, val_size=int(len(rows[t])),
            test_size=len(test_split), zero_shot_accuracy=_accuracy(test["s"], test_labels),
            head_accuracies={name: 100.0 * float(np.mean(test[f"pred_{name}"][:, t] == test_labels))
                             for name in ldc_inputs.HEADS},
            ldc={"fusion": options.fusion, "ablation": options.ablation, "taps": list(tap_names),
                 "train_path": path,
                 "tap_cache_views": options.tap_cache_views if path == "cache" else None,
                 "epoch_losses": [float(x) for x in host[2]["losses"][t]],
                 "epoch_selection": "final epoch (official; no selection)"},
            seconds=round(seconds / len(cells), 3), program_cells=len(cells),
            program_seconds=round(seconds, 3), devices=devices,
        )
        task_params, task_stats = jax.tree.map(lambda leaf: np.asarray(leaf[t]), host[:2])
        out.append(ImageCell("ldc", k, s, record, test_logits,
                             {"params": task_params, "batch_stats": task_stats}, confusion))
    return out


def _ldc_training_pool(clip, dataset, indices: np.ndarray, tap_names: Sequence[str],
                       options: ImageOptions, say: Callable[[str], None]):
    """The support pool on the chosen path → (pool arrays, fetch, path name)."""
    needed = ldc_inputs.tap_cache_bytes(clip.config, tap_names, len(indices),
                                        options.tap_cache_views)
    path = ldc_inputs.choose_train_path(options.train_path, needed, options.tap_cache_budget)
    say(f"ldc: {len(indices)} support images, taps {', '.join(tap_names)}; training path "
        f"'{path}' (a tap cache of {options.tap_cache_views} views needs {needed / 2**20:.1f} MiB, "
        f"budget {options.tap_cache_budget / 2**20:.0f} MiB)")
    if path == "cache":
        arrays = ldc_inputs.tap_cache_pool(
            clip, dataset, indices, tap_names, views=options.tap_cache_views,
            aug_seed=options.aug_seed, batch_size=options.batch_size, cache_dir=options.cache_dir,
            use_cache=options.use_cache, workers=options.workers, progress=options.progress)
        return arrays, ldc_inputs.cache_fetch, path
    arrays = ldc_inputs.support_pixels(dataset, indices, clip.config.image_size,
                                       workers=options.workers)
    return arrays, ldc_inputs.trunk_fetch(clip.model, tap_names, augment_views=True), path


def _select_betas(selection: Mapping[str, np.ndarray], labels: np.ndarray,
                  rows: Sequence[np.ndarray], grid: Mapping, values: Mapping[str, float]
                  ) -> tuple[list[float], list[float]]:
    """Per task: β (searched on its selection rows, or fixed) and the selection accuracy in %."""
    betas, accuracies = [], []
    for t, r in enumerate(rows):
        mlp, ada = selection["mlp"][r, t], selection["ada"][r, t]
        if "beta" in grid:
            chosen, _ = ldc_lib.search_beta(mlp, ada, labels[r], np.ones(len(r), np.float32),
                                            np.asarray(grid["beta"]))
            betas.append(float(np.asarray(grid["beta"])[int(chosen)]))
        else:
            betas.append(float(values["beta"]))
        accuracies.append(_accuracy(np.asarray(ldc_lib.fuse(mlp, ada, betas[t])), labels[r]))
    return betas, accuracies


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in % (first maximum)."""
    return 100.0 * float(np.mean(np.argmax(np.asarray(logits), axis=-1) == np.asarray(labels)))


# --- TA++ / TX++ -------------------------------------------------------------------------------


def imo_paired_features(dataset, clip, adapters: str | os.PathLike, *, shots: int,
                        seeds: Sequence[int], views: int = 10, aug_seed: int = 0,
                        batch_size: int = 64, cache_dir=None, use_cache: bool = True,
                        workers: int | None = None, progress: bool = True,
                        tokenizer=None) -> featfile.FeatureSet:
    """Features of the IMO-adapted and the original encoder side by side: ``[adapted | original]``.

    Both extractions use the same few-shot pool and the same augmented views
    (Tip-Adapter's, scale 0.5-1), and are cached under their own weights id.
    ``text`` is the (shared) text classifier [C, E]; ``train`` [V, N, 2E],
    ``val`` / ``test`` [M, 2E] -- the layout :mod:`~jaxclip_fs.methods.ta_pp`
    and :mod:`~jaxclip_fs.methods.tx_pp` read. Not a valid feature *file*
    (the contract wants rows of the text width), hence never written as one.
    """
    adapted_clip = load_imo_adapters(adapters, clip)
    tokenizer = tokenizer or load_tokenizer(clip.source_dir)
    common = dict(shots=shots, seeds=seeds, views=views, aug_scale=augment.TIP_ADAPTER_SCALE,
                  aug_seed=aug_seed, batch_size=batch_size, cache_dir=cache_dir,
                  use_cache=use_cache, workers=workers, progress=progress)
    original = extract_features(dataset, clip, tokenizer, **common).features
    adapted = extract_features(dataset, adapted_clip, tokenizer, **common).features
    pair = lambda a, b: np.concatenate([a, b], axis=-1)
    meta = {**original.meta, "imo_adapters": os.fspath(adapters),
            "imo_weights_id": adapted_clip.weights_id,
            "paired_layout": "[adapted | original] along the feature axis"}
    return dataclasses.replace(original, train=pair(adapted.train, original.train),
                               val=pair(adapted.val, original.val),
                               test=pair(adapted.test, original.test), meta=meta)


@functools.lru_cache(maxsize=8)
def _compiled_search(name: str):
    """``jit(vmap(fit_select_predict))`` of a training-free method over tasks."""
    run = functools.partial(fit_select_predict, methods.get(name))
    return jax.jit(jax.vmap(run, in_axes=(0, 0, 0, None, None, None)))


def run_imo_method(method_name: str, dataset, clip, *, shots: Sequence[int], seeds: Sequence[int],
                   hp: Sequence[str] | Mapping[str, float] = (),
                   options: ImageOptions = ImageOptions(), tokenizer=None,
                   log: Callable[[str], None] | None = stderr_log) -> list[ImageCell]:
    """TA++ or TX++ for every (shots, seed), one vmapped search program (module docstring).

    Raises:
      ConfigError: no ``options.imo_adapters`` checkpoint, or a bad setting.
      CheckpointError: adapters that do not fit this CLIP.
    """
    started = time.perf_counter()
    say = log or (lambda message: None)
    if method_name not in ("ta_pp", "tx_pp"):
        raise ConfigError(f"run_imo_method runs ta_pp or tx_pp, not '{method_name}'")
    if not options.imo_adapters:
        raise ConfigError(f"method '{method_name}' needs IMO adapters: train them with "
                          "`jaxclip-fs train-imo` and pass --imo-adapters DIR")
    shots, seeds = _check_grid(shots, seeds)
    _check_options(options)
    method = methods.get(method_name)
    paired = imo_paired_features(
        dataset, clip, options.imo_adapters, shots=max(shots), seeds=seeds, views=options.views,
        aug_seed=options.aug_seed, batch_size=options.batch_size, cache_dir=options.cache_dir,
        use_cache=options.use_cache, workers=options.workers, progress=options.progress,
        tokenizer=tokenizer)
    values, grid = method.resolve(dataset.name, paired.dim, hp)
    cells = [(k, s) for s in seeds for k in shots]
    tasks = stack([with_shots(build_task(paired, max(shots), s), k) for k, s in cells])
    test = build_evalset(paired.test, paired.test_labels)
    if options.select_on_test:
        selections = [test] * len(cells)
    else:
        selections = [build_evalset(paired.val, paired.val_labels,
                                    val_rows(paired, k, s, options.val_policy)) for k, s in cells]
    size = max(int(e.features.shape[0]) for e in selections)
    sel = stack([pad_evalset(e, size) for e in selections])
    sizes = " x ".join(f"{len(g)} {n}" for n, g in grid.items()) or "nothing (all fixed)"
    say(f"{method_name}: searching {sizes} for {len(cells)} task(s) in one program")
    keys = task_keys([s for _, s in cells])
    out = jax.device_get(_compiled_search(method_name)(
        keys, tasks, sel, test, as_arrays(values),
        {n: jnp.asarray(g, jnp.float32) for n, g in grid.items()}))
    params = jax.device_get(jax.vmap(lambda key, task: method.init(key, task, {}))(keys, tasks))
    seconds = time.perf_counter() - started
    provenance = _provenance(clip, dataset, paired.meta["split_policy"]["train"],
                             options.val_policy, options.select_on_test)
    original_test = paired.test[:, paired.dim:]
    zero_shot = _accuracy(paired.logit_scale * _normalize(original_test) @ paired.text.T,
                          paired.test_labels)
    results = []
    for t, (k, s) in enumerate(cells):
        chosen = {n: float(np.asarray(g)[int(out["index"][n][t])]) for n, g in grid.items()}
        record = records.build_record(
            method=method_name, shots=k, seed=s,
            hyperparameters=_used_hparams(method, values, chosen), provenance=provenance,
            searched=list(grid), val_policy=options.val_policy,
            selection="test" if options.select_on_test else "validation",
            accuracy=float(out["test_accuracy"][t]), val_accuracy=float(out["val_accuracy"][t]),
            best_epoch=None, num_classes=paired.num_classes,
            val_size=int(np.sum(np.asarray(sel.mask[t]))), test_size=int(test.features.shape[0]),
            zero_shot_accuracy=zero_shot,
            imo={"adapters": os.fspath(options.imo_adapters),
                 "adapted_weights_id": paired.meta["imo_weights_id"], "views": options.views},
            seconds=round(seconds / len(cells), 3), program_cells=len(cells),
            program_seconds=round(seconds, 3),
        )
        results.append(ImageCell(method_name, k, s, record,
                                 np.asarray(out["test_logits"][t], np.float32),
                                 jax.tree.map(lambda leaf: np.asarray(leaf[t]), params)))
    return results


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- one entry point, outputs, the evaluate command ---------------------------------------------


def run_image_method(method: str, dataset, clip, *, shots: Sequence[int], seeds: Sequence[int],
                     hp: Sequence[str] | Mapping[str, float] = (),
                     options: ImageOptions = ImageOptions(), tokenizer=None,
                     log: Callable[[str], None] | None = stderr_log) -> list[ImageCell]:
    """:func:`run_ldc` or :func:`run_imo_method` by name.

    Raises:
      ConfigError: ``method`` is not one of :data:`IMAGE_METHODS`.
    """
    if method == "ldc":
        return run_ldc(dataset, clip, shots=shots, seeds=seeds, hp=hp, options=options,
                       tokenizer=tokenizer, log=log)
    if method in IMAGE_METHODS:
        return run_imo_method(method, dataset, clip, shots=shots, seeds=seeds, hp=hp,
                              options=options, tokenizer=tokenizer, log=log)
    raise ConfigError(f"'{method}' is not an image method ({', '.join(IMAGE_METHODS)})")


def write_cell(out_dir: str | os.PathLike, cell: ImageCell, *,
               save_params: bool = True) -> list[str]:
    """Writes ``test_logits.npy``, ``result.json`` [``confusion.json/png``, ``params/``] atomically.

    Returns:
      the paths written.
    """
    out_dir = os.fspath(out_dir)
    written = []
    if save_params:
        params_dir = os.path.join(out_dir, "params")
        checkpoints.save_tree(params_dir, cell.params, {
            "method": cell.method, "shots": cell.shots, "seed": cell.seed,
            "backbone": cell.record["backbone"], "weights": cell.record["weights"],
            "dataset": cell.record["dataset"]})
        written.append(params_dir)
    if cell.confusion is not None:
        written += write_confusion(
            os.path.join(out_dir, "confusion"), cell.confusion,
            title=f"{cell.method} on {cell.record['dataset']}, {cell.shots}-shot, seed {cell.seed}")
    logits_path = os.path.join(out_dir, "test_logits.npy")
    with atomic.atomic_path(logits_path, suffix=".npy") as tmp:
        np.save(tmp, cell.test_logits)
    records.write_record(os.path.join(out_dir, "result.json"), cell.record)
    return written + [logits_path, os.path.join(out_dir, "result.json")]


def options_from_args(args) -> ImageOptions:
    """:class:`ImageOptions` from ``evaluate``'s flags."""
    budget = args.tap_cache_budget
    return ImageOptions(
        fusion=args.ldc_fusion, ablation=args.ldc_ablation, vit_taps=args.ldc_vit_taps,
        train_path=args.train_path,
        tap_cache_budget=int(budget * 2**30) if budget is not None
        else ldc_inputs.DEFAULT_TAP_CACHE_BUDGET,
        tap_cache_views=args.tap_cache_views, imo_adapters=args.imo_adapters, views=args.views,
        aug_seed=args.aug_seed, val_policy=args.val_policy, select_on_test=args.select_on_test,
        batch_size=args.batch_size, cache_dir=args.cache_dir, use_cache=not args.no_cache,
        workers=args.workers, progress=not args.quiet)


def evaluate_images_command(args) -> int:
    """``jaxclip-fs evaluate --method ldc|ta_pp|tx_pp --dataset D --backbone B --weights W``."""
    if args.features:
        raise ConfigError(
            f"method '{args.method}' needs images, not a feature file: drop {args.features} and "
            "give --dataset D --backbone B --weights W (or use `jaxclip-fs run`)")
    missing = [flag for flag, value in (("--dataset", args.dataset), ("--backbone", args.backbone),
                                        ("--weights", args.weights)) if not value]
    if missing:
        raise ConfigError(f"method '{args.method}' needs images: give {', '.join(missing)}")
    from jaxclip_fs.convert import load_clip
    from jaxclip_fs.data import get_dataset

    dataset = get_dataset(args.dataset, args.data_root, source=args.source)
    clip = load_clip(args.backbone, args.weights)
    log = None if args.quiet else stderr_log
    if args.select_on_test and log:
        log("warning: selecting hyperparameters on the TEST set (optimistic)")
    (cell,) = run_image_method(args.method, dataset, clip, shots=(args.shots,), seeds=(args.seed,),
                               hp=args.hp, options=options_from_args(args), log=log)
    record = cell.record
    chosen = records.searched_summary(record)
    print(f"{record['method']} on {record['dataset']} ({record['shots']}-shot, seed "
          f"{record['seed']}): test accuracy {record['accuracy']:.2f}% (val "
          f"{record['val_accuracy']:.2f}%{'; searched ' + chosen if chosen else ''}; zero-shot "
          f"{record['zero_shot_accuracy']:.2f}%) in {record['seconds']:.1f} s")
    if cell.confusion is not None:
        print("\n".join(summary_lines(cell.confusion)))
    if args.out:
        written = write_cell(args.out, cell, save_params=cell.method == "ldc")
        print("wrote " + ", ".join(written))
    return 0


def train_imo_command(args) -> int:
    """``jaxclip-fs train-imo``: IMO adapters on a dataset split → orbax checkpoint at ``--out``."""
    from jaxclip_fs.convert import load_clip
    from jaxclip_fs.data import get_dataset
    from jaxclip_fs.train.imo import IMOSettings, describe, save_imo_adapters, train_imo

    settings = IMOSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                           weight_decay=args.weight_decay, seed=args.seed,
                           adapter_dim=args.adapter_dim, scale=args.adapter_scale,
                           dropout=args.adapter_dropout, normalize=not args.unnormalized)
    settings.check()
    dataset = get_dataset(args.dataset, args.data_root, source=args.source)
    clip = load_clip(args.backbone, args.weights)
    trained = train_imo(clip, dataset, settings, split=args.split, workers=args.workers,
                        progress=not args.quiet, log=None if args.quiet else stderr_log)
    save_imo_adapters(args.out, trained)
    print(describe(trained))
    print(f"wrote {args.out} (use it with: jaxclip-fs evaluate --method ta_pp --imo-adapters "
          f"{args.out} ...)")
    return 0
