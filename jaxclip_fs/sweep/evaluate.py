"""Feature file → few-shot task → fit → select on validation → score test once.

The pipeline behind ``jaxclip-fs evaluate`` (DESIGN.md, "Contracts"),
importable as :func:`evaluate_features` / :func:`evaluate_file`:

* the support set is the file's ``fewshot_index`` for (seed, shots) when the
  file has one, else ``nested_fewshot`` on the training pool;
* validation follows CoOp by default (policy ``"coop"``: ``min(K, 4)``
  images per class from the val split, nested, same seed); ``"full"`` uses
  the whole val split;
* epochs and searched hyperparameters are chosen on validation, the test
  set is scored once. ``select_on_test=True`` reproduces the official
  Tip-Adapter-F protocol (epoch and search on test) and is recorded as such;
* the result record (``io/records.py``) takes backbone, weights, dataset and
  split policy from the file's ``meta`` ("unknown" when absent).

:func:`build_task` and :func:`build_evalset` are the feature-file → array
helpers the sweeps reuse.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs import methods
from jaxclip_fs.data.fewshot import VAL_POLICIES, coop_val_rows, nested_fewshot
from jaxclip_fs.errors import ConfigError, DataError
from jaxclip_fs.features import featfile
from jaxclip_fs.io import atomic, records
from jaxclip_fs.methods.base import as_arrays
from jaxclip_fs.methods.task import EvalSet, Task, make_evalset, make_task
from jaxclip_fs.train.fit import fit_select_predict

ROOT_SEED = 0  # root PRNG key; a run's key is fold_in(key(ROOT_SEED), seed)


def support_index(fs: featfile.FeatureSet, shots: int, seed: int) -> np.ndarray:
    """Rows of ``fs.train`` forming the (seed, shots) support set → int [C, shots].

    Raises:
      DataError: the file's few-shot index lacks the seed or has too few
        shots; or the pool has a class with fewer than ``shots`` images.
    """
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    if fs.fewshot:
        if seed not in fs.fewshot:
            raise DataError(f"the feature file's fewshot_index holds seeds {sorted(fs.fewshot)}, "
                            f"not seed {seed}")
        index = np.asarray(fs.fewshot[seed])
        if index.shape[1] < shots:
            raise DataError(f"the feature file's fewshot_index holds {index.shape[1]} shots per "
                            f"class for seed {seed}; {shots} asked")
        return index[:, :shots]
    return nested_fewshot(fs.train_labels, fs.num_classes, shots, seed, fs.classnames)


def val_rows(fs: featfile.FeatureSet, shots: int, seed: int, policy: str) -> np.ndarray:
    """Rows of ``fs.val`` used for selection under ``policy`` (``"coop"`` or ``"full"``)."""
    if policy == "full":
        return np.arange(fs.val_labels.shape[0])
    if policy == "coop":  # the datasets' rule (fewshot_val) and the sweep's (batch._val_rows)
        return coop_val_rows(fs.val_labels, fs.num_classes, shots, seed)
    raise ConfigError(
        f"unknown validation policy '{policy}'; choose one of {', '.join(VAL_POLICIES)}")


def build_task(fs: featfile.FeatureSet, shots: int, seed: int) -> Task:
    """The (seed, shots) few-shot :class:`Task` of a feature set (class-major support)."""
    return make_task(fs.train[:, support_index(fs, shots, seed)], fs.text, fs.logit_scale)


def build_evalset(features: np.ndarray, labels: np.ndarray,
                  rows: np.ndarray | None = None) -> EvalSet:
    """An :class:`EvalSet` of ``features[rows]`` (all rows by default)."""
    if rows is not None:
        features, labels = features[rows], labels[rows]
    return make_evalset(features, labels)


def _print_progress(log: Callable[[str], None], max_epochs: int):
    """A trainer callback logging about 20 lines per run (every epoch for short runs)."""
    every = max(1, max_epochs // 20)

    def progress(epoch, score):
        epoch = int(epoch) + 1
        if epoch % every == 0 or epoch == max_epochs:
            log(f"  epoch {epoch}/{max_epochs}: selection accuracy {float(score):.2f}%")
    return progress


@functools.lru_cache(maxsize=32)
def _compiled_run(method: str, batch_size: int, max_epochs: int, log: Callable[[str], None] | None):
    """The jitted :func:`fit_select_predict` of a method (cached: equal shapes compile once)."""
    progress = None if log is None else _print_progress(log, max_epochs)
    return jax.jit(functools.partial(fit_select_predict, methods.get(method), batch_size=batch_size,
                                     max_epochs=max_epochs, progress=progress))


def _silent(message: str) -> None:
    del message


def task_key(seed) -> jax.Array:
    """A run's PRNG key: ``fold_in(key(ROOT_SEED), seed)`` (``seed`` may be traced)."""
    return jax.random.fold_in(jax.random.key(ROOT_SEED), seed)


def stderr_log(message: str) -> None:
    """The default ``log``: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def evaluate_features(
    fs: featfile.FeatureSet,
    method: str,
    *,
    shots: int = 16,
    seed: int = 1,
    hp: Sequence[str] | Mapping[str, float] = (),
    dataset: str | None = None,
    val_policy: str = "coop",
    select_on_test: bool = False,
    out_dir: str | os.PathLike | None = None,
    source: str | None = None,
    log: Callable[[str], None] | None = stderr_log,
) -> dict:
    """Runs one method on one (shots, seed) task of a feature set; returns the result record.

    Args:
      fs: the features.
      method: registry name of a feature-level method.
      shots, seed: the few-shot set.
      hp: hyperparameters to fix (``["alpha=2", ...]`` or a mapping); searched
        ones not given are searched on validation, the rest keep defaults.
      dataset: registry name choosing per-dataset defaults / grids (default:
        ``fs.meta["dataset"]``; unknown names use the generic default).
      val_policy: ``"coop"`` or ``"full"``.
      select_on_test: choose epochs and hyperparameters on *test* (the
        official Tip-Adapter-F protocol; optimistic, labelled in the record).
      out_dir: when given, writes ``test_logits.npy`` and ``result.json`` there.
      source: the feature file's path, for the record.
      log: progress sink (None: silent).

    Returns:
      The record written to ``result.json``.

    Raises:
      ConfigError / DataError: bad method, hyperparameter, policy, shots or seed.
    """
    started = time.perf_counter()
    say = log or _silent
    spec = methods.get(method)
    if spec.needs_images:
        raise ConfigError(
            f"method '{method}' needs images, not a feature file: use `jaxclip-fs run`")
    if val_policy not in VAL_POLICIES:
        raise ConfigError(
            f"unknown validation policy '{val_policy}'; choose one of {', '.join(VAL_POLICIES)}")
    dataset = dataset or fs.meta.get("dataset")
    values, grid = spec.resolve(dataset, fs.dim, hp)
    task = build_task(fs, shots, seed)
    val = build_evalset(fs.val, fs.val_labels, val_rows(fs, shots, seed, val_policy))
    test = build_evalset(fs.test, fs.test_labels)
    selection = test if select_on_test else val
    if select_on_test:
        say("warning: selecting epochs and hyperparameters on the TEST set "
            "(official protocol; optimistic)")

    batch_size = int(values["batch_size"]) if spec.trainable else 0
    max_epochs = int(values["epochs"]) if spec.trainable else 0
    if spec.trainable:
        say(f"{method}: training {max_epochs} epochs on {shots}-shot support (seed {seed})")
    if grid:
        sizes = " x ".join(f"{len(g)} {name}" for name, g in grid.items())
        say(f"{method}: searching {sizes} on {int(selection.mask.sum())} "
            f"{'test' if select_on_test else 'validation'} images")
    run = _compiled_run(method, batch_size, max_epochs, log if spec.trainable else None)
    key = task_key(seed)
    out = run(key, task, selection, test, as_arrays(values),
              {name: jnp.asarray(g, jnp.float32) for name, g in grid.items()})
    out = jax.device_get(out)

    used = dict(values)
    for name, g in grid.items():  # report the float64 grid value chosen, as the official lists hold
        used[name] = float(g[int(out["index"][name])])
    specs = spec.hparam_specs
    used = {name: int(v) if specs[name].integer else float(v) for name, v in used.items()}
    accuracy = float(out["test_accuracy"])
    record = records.build_record(
        method=method, shots=shots, seed=seed, hyperparameters=used,
        provenance={**fs.meta, "dataset": dataset},
        searched=list(grid), val_policy=val_policy,
        selection="test" if select_on_test else "validation",
        accuracy=accuracy, val_accuracy=float(out["val_accuracy"]),
        best_epoch=int(out["best_epoch"]) if spec.trainable else None,
        num_classes=fs.num_classes, val_size=int(selection.mask.sum()),
        test_size=int(test.mask.sum()),
        feature_file=source, seconds=round(time.perf_counter() - started, 3),
    )
    if out_dir is not None:
        with atomic.atomic_path(os.path.join(out_dir, "test_logits.npy"), suffix=".npy") as tmp:
            np.save(tmp, np.asarray(out["test_logits"], np.float32))
        records.write_record(os.path.join(out_dir, "result.json"), record)
    return record


def evaluate_file(path: str | os.PathLike, method: str, **kwargs) -> dict:
    """:func:`evaluate_features` on a feature file (validated on load)."""
    return evaluate_features(featfile.load(path), method, source=os.fspath(path), **kwargs)


def describe_features(fs: featfile.FeatureSet, source: str) -> list[str]:
    """A human-readable summary of a (validated) feature file, one line per fact."""
    lines = [
        f"{source}: valid feature file",
        f"  classes: {fs.num_classes} ({', '.join(fs.classnames[:5])}"
        f"{', ...' if fs.num_classes > 5 else ''})",
        f"  feature dim: {fs.dim}; logit_scale: {fs.logit_scale:g}",
        f"  train pool: {fs.train.shape[1]} images x {fs.num_views} views "
        f"(min {np.bincount(fs.train_labels, minlength=fs.num_classes).min()} per class)",
        f"  val: {fs.val.shape[0]} images; test: {fs.test.shape[0]} images",
    ]
    if fs.fewshot:
        shots = {seed: index.shape[1] for seed, index in fs.fewshot.items()}
        lines.append("  few-shot sets: "
                     + ", ".join(f"seed {s}: {k} shots" for s, k in sorted(shots.items())))
    for field in ("dataset", "backbone", "weights", "split_policy"):
        if field in fs.meta:
            lines.append(f"  {field}: {fs.meta[field]}")
    return lines


def evaluate_command(args) -> int:
    """``jaxclip-fs evaluate``: runs :func:`evaluate_file`, prints a one-line summary.

    Image methods (``ldc``, ``ta_pp``, ``tx_pp``) go to
    :func:`~jaxclip_fs.sweep.image_methods.evaluate_images_command`.
    """
    if methods.get(args.method).needs_images:
        from jaxclip_fs.sweep.image_methods import evaluate_images_command

        return evaluate_images_command(args)
    if not args.features:
        raise ConfigError(f"method '{args.method}' needs FEATURES.npz (a feature file)")
    record = evaluate_file(
        args.features, args.method, shots=args.shots, seed=args.seed, hp=args.hp,
        dataset=args.dataset, val_policy=args.val_policy, select_on_test=args.select_on_test,
        out_dir=args.out,
    )
    chosen = records.searched_summary(record)
    print(f"{record['method']} on {record['dataset']} "
          f"({record['shots']}-shot, seed {record['seed']}): "
          f"test accuracy {record['accuracy']:.2f}% (val {record['val_accuracy']:.2f}%"
          f"{'; searched ' + chosen if chosen else ''}) in {record['seconds']:.1f} s")
    if args.out:
        print(f"wrote {os.path.join(args.out, 'result.json')} and "
              f"{os.path.join(args.out, 'test_logits.npy')}")
    return 0


def validate_command(args) -> int:
    """``jaxclip-fs validate``: loads (and so validates) a feature file and prints a summary."""
    print("\n".join(describe_features(featfile.load(args.features), args.features)))
    return 0
