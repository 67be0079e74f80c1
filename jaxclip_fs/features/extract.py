"""From a dataset and a CLIP to a feature file: the train pool, views, val/test, text classifier.

:func:`extract_features` is what ``jaxclip-fs extract`` and the sweep engine
call. It produces the feature file (:mod:`~jaxclip_fs.features.featfile`):

* ``text``: :func:`~jaxclip_fs.features.text_classifier.text_classifier` of
  the dataset's class names and templates;
* ``train`` [V, N, E]: the *training pool* -- with ``shots`` K and ``seeds``,
  the union over the seeds of each seed's nested K-shot set
  (:func:`~jaxclip_fs.data.fewshot.nested_fewshot`), in train-split order,
  with ``fewshot_index[s, c, :k]`` = the pool rows of seed s's k-shot set of
  class c, so ``evaluate --shots k --seed s`` uses exactly the images the
  sampler chose; without ``shots``, the whole train split. View 0 is
  un-augmented, views 1..V-1 augmented;
* ``val``, ``test``: the whole val and test splits, view 0;
* ``logit_scale``: ``exp`` of the model's ``logit_scale`` (100 for OpenAI's
  weights; 14.3 = 1/0.07 for random init);
* ``meta``: provenance (backbone, weights, dataset, split policy, views,
  augmentation, tokenizer, dtype, code version, skipped images).

Corrupt images raise a one-line ``DataError`` naming the file, or with
``skip_corrupt`` are skipped and counted. With ``shots``, skipping happens
*before* encoding: each candidate of a class's fixed random order is decoded
once to check it, and the K-shot set is the first K readable images of that
order (so still nested; identical to the sampler's when nothing is corrupt).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from jaxclip_fs.clip.tokenizer import load_tokenizer
from jaxclip_fs.data.fewshot import class_order, nested_fewshot, official_sets
from jaxclip_fs.errors import ConfigError, DataError
from jaxclip_fs.features import augment, featfile
from jaxclip_fs.features.image_encoder import (
    DEFAULT_CHUNK_IMAGES, SplitFeatures, check_view_args, encode_split, make_image_encoder,
)
from jaxclip_fs.features.pipeline import default_workers
from jaxclip_fs.features.text_classifier import prompt_classifier, prompts_digest, text_classifier
from jaxclip_fs.io import atomic
from jaxclip_fs.io.records import code_version

TAPS_SUFFIX = ".taps.npz"


@dataclasses.dataclass(frozen=True)
class TrainPool:
    """Which train-split items are encoded, and which of them form each seed's few-shot sets.

    Attributes:
      indices: int [N] train-split indices, ascending.
      fewshot: ``{seed: int [C, K]}`` rows of ``indices`` (empty for the whole split).
      policy: one-line description for ``meta``.
      draws: ``{(sampler, seed, shots): int [C, K]}`` rows of ``indices`` of the official
        codes' draws (not nested).
      val_draws: the same keys -> rows of the val split (CoOp's validation draw).
    """

    indices: np.ndarray
    fewshot: dict[int, np.ndarray]
    policy: str
    draws: dict = dataclasses.field(default_factory=dict)
    val_draws: dict = dataclasses.field(default_factory=dict)


def select_train_pool(dataset, shots: int | None, seeds: Sequence[int],
                      readable: Callable[[int], bool] | None = None,
                      draws: Sequence[tuple[str, int, int]] = ()) -> TrainPool:
    """The train pool for ``shots`` and ``seeds`` (module docstring), and official ``draws``.

    ``draws``: ``(sampler, seed, shots)`` of the official codes' draws the pool
    must hold too (:func:`~jaxclip_fs.data.fewshot.official_sets`).

    Args:
      dataset: a :class:`~jaxclip_fs.data.dataset.Dataset`.
      shots: K per class, or None for the whole train split.
      seeds: few-shot seeds (with ``shots``).
      readable: ``readable(i)`` tells whether train image i can be read;
        None: every image is taken as readable (a bad one fails later, when
        it is encoded).

    Raises:
      DataError: a class has fewer than K (readable) train images -- names
        the class and the counts.
    """
    train = dataset.split("train")
    origin = dataset.split_origin.get("train", "train split")
    if shots is None and draws:
        raise ConfigError("official draws need shots (the pool is their union)")
    if shots is None:
        return TrainPool(np.arange(len(train), dtype=np.int64), {},
                         f"whole train split ({origin})")
    chosen: dict[int, np.ndarray] = {}
    for seed in seeds:
        if readable is None:
            chosen[seed] = nested_fewshot(train.labels, dataset.num_classes, shots, seed,
                                          classnames=dataset.classnames,
                                          what=f"{dataset.name} train")
            continue
        rows = []
        for c in range(dataset.num_classes):
            order = class_order(train.labels, c, seed)
            good: list[int] = []
            for i in order.tolist():
                if len(good) == shots:
                    break
                if readable(i):
                    good.append(i)
            if len(good) < shots:  # every member was probed
                raise DataError(
                    f"class '{dataset.classnames[c]}' (index {c}) has {len(good)} readable "
                    f"{dataset.name} train images ({order.size - len(good)} unreadable); "
                    f"{shots} shots asked")
            rows.append(good)
        chosen[seed] = np.asarray(rows, np.int64).reshape(dataset.num_classes, shots)
    official = {key: official_sets(dataset, *key) for key in dict.fromkeys(draws)}
    indices = np.unique(np.concatenate([c.ravel() for c in chosen.values()]
                                       + [rows.ravel() for rows, _, _ in official.values()]))
    fewshot = {seed: np.searchsorted(indices, c) for seed, c in chosen.items()}
    policy = (f"few-shot pool: union over seeds {list(seeds)} of {shots} train images per "
              f"class (nested sampler{', unreadable images passed over' if readable else ''}) "
              f"from the train split ({origin})")
    if official:
        sources = sorted({what for _, _, what in official.values()})
        policy += (f", and the official draws {sorted(official)} ({'; '.join(sources)})")
    return TrainPool(indices, fewshot, policy,
                     {key: np.searchsorted(indices, rows)
                      for key, (rows, _, _) in official.items()},
                     {key: val for key, (_, val, _) in official.items() if val is not None})


class _ReadabilityProbe:
    """``probe(i)``: can train image i be decoded? Memoised; failures are recorded."""

    def __init__(self, split, workers: int):
        self.split = split
        self.workers = workers
        self.failures: dict[int, str] = {}
        self._known: dict[int, bool] = {}

    def prefetch(self, indices: Sequence[int]) -> None:
        """Checks ``indices`` in parallel threads."""
        todo = [i for i in dict.fromkeys(int(i) for i in indices) if i not in self._known]
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            for i, ok in zip(todo, pool.map(self._check, todo)):
                self._known[i] = ok

    def __call__(self, i: int) -> bool:
        if i not in self._known:
            self._known[i] = self._check(i)
        return self._known[i]

    def _check(self, i: int) -> bool:
        try:
            self.split.image(i)
        except DataError as exc:
            self.failures[i] = str(exc)
            return False
        return True


@dataclasses.dataclass(frozen=True)
class Extraction:
    """Result of :func:`extract_features`.

    Attributes:
      features: the :class:`~jaxclip_fs.features.featfile.FeatureSet`.
      taps: ``{"train": {tap: [V, N, ...]}, "val": {tap: [M, ...]}, "test": ...}``
        (empty without taps), rows aligned with the features.
      skipped: ``(split, image id, message)`` of every skipped image.
      cache: ``{split: (chunks loaded, chunks computed)}``.
    """

    features: featfile.FeatureSet
    taps: dict[str, dict[str, np.ndarray]]
    skipped: tuple[tuple[str, str, str], ...]
    cache: dict[str, tuple[int, int]]


def extract_features(
    dataset,
    clip,
    tokenizer=None,
    *,
    shots: int | None = None,
    seeds: Sequence[int] = (),
    views: int = 10,
    aug_scale: tuple[float, float] = augment.TIP_ADAPTER_SCALE,
    aug_seed: int = 0,
    taps: Sequence[str] = (),
    dtype: str = "float32",
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    chunk_images: int = DEFAULT_CHUNK_IMAGES,
    skip_corrupt: bool = False,
    workers: int | None = None,
    progress: bool = True,
    draws: Sequence[tuple[str, int, int]] = (),
    prompts: str | os.PathLike | None = None,
) -> Extraction:
    """Extracts the feature file of ``dataset`` with ``clip`` (module docstring).

    Args:
      dataset: a :class:`~jaxclip_fs.data.dataset.Dataset` with train, val
        and test splits.
      clip: a :class:`~jaxclip_fs.convert.load.LoadedCLIP`.
      tokenizer: default :func:`~jaxclip_fs.clip.tokenizer.load_tokenizer`
        ``(clip.source_dir)`` (CLIP's vocabulary required unless the weights are random).
      shots: K per class for a few-shot pool (with ``seeds``); None: the
        whole train split.
      seeds: the few-shot seeds (distinct, >= 0).
      views: V train views (Tip-Adapter: 10).
      aug_scale: RandomResizedCrop area range (Tip-Adapter 0.5-1, LDC 0.8-1).
      aug_seed: seed of the augmentations.
      taps: intermediate outputs to extract too (``block<i>``/``layer<i>``).
      dtype: compute dtype, "float32" or "bfloat16".
      batch_size: image views per compiled batch.
      cache_dir, use_cache, chunk_images: the feature cache
        (:mod:`~jaxclip_fs.features.cache`).
      skip_corrupt: skip and count unreadable images instead of failing.
      workers: image loader threads (default: CPU count).
      progress: progress bars on stderr.
      draws: ``(sampler, seed, shots)`` of official (not nested) few-shot draws
        the pool must hold too (with ``shots``).
      prompts: a CuPL-format prompt file: also the classifier of the templates
        plus its sentences (``text_prompts``).

    Returns:
      :class:`Extraction` (its ``features`` pass ``featfile.validate``).

    Raises:
      ConfigError: inconsistent arguments. DataError: unreadable image,
      too few images for ``shots``, missing split.
    """
    seeds = tuple(int(s) for s in seeds)
    if shots is None and seeds:
        raise ConfigError("seeds need shots (without shots the whole train split is used)")
    if shots is not None:
        if shots < 1:
            raise ConfigError(f"shots must be >= 1, got {shots}")
        if not seeds:
            raise ConfigError("shots need at least one seed")
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ConfigError(f"seeds must be distinct and >= 0, got {list(seeds)}")
    check_view_args(views, aug_seed, aug_scale)
    if workers is not None and workers < 1:
        raise ConfigError(f"execution.workers must be >= 1, got {workers}")
    workers = workers or default_workers()
    encoder = make_image_encoder(clip, taps=taps, dtype=dtype, batch_size=batch_size)
    if tokenizer is None:
        tokenizer = load_tokenizer(clip.source_dir, required=not clip.is_random)
    splits = {name: dataset.split(name) for name in ("train", "val", "test")}

    probe = None
    if skip_corrupt and shots is not None:
        probe = _ReadabilityProbe(splits["train"], workers)
        probe.prefetch([i for seed in seeds for c in range(dataset.num_classes)
                        for i in class_order(splits["train"].labels, c, seed)[:shots]])
    pool = select_train_pool(dataset, shots, seeds, readable=probe, draws=draws)

    text = text_classifier(clip, tokenizer, dataset.classnames, dataset.templates, dtype=dtype,
                           batch_size=batch_size, cache_dir=cache_dir, use_cache=use_cache,
                           progress=progress)
    text_prompts = None
    if prompts is not None:
        text_prompts = prompt_classifier(clip, tokenizer, dataset.classnames, dataset.templates,
                                         prompts, dtype=dtype, batch_size=batch_size,
                                         cache_dir=cache_dir, use_cache=use_cache,
                                         progress=progress)
    chosen = {"train": pool.indices, "val": np.arange(len(splits["val"])),
              "test": np.arange(len(splits["test"]))}
    common = dict(cache_dir=cache_dir, use_cache=use_cache, chunk_images=chunk_images,
                  skip_corrupt=skip_corrupt, workers=workers, progress=progress)
    encoded: dict[str, SplitFeatures] = {
        name: encode_split(encoder, dataset, name, indices,
                           **(dict(views=views, aug_seed=aug_seed, aug_scale=aug_scale)
                              if name == "train" else {}), **common)
        for name, indices in chosen.items()}

    skipped = [("train", splits["train"].ids[i], msg)
               for i, msg in sorted(probe.failures.items())] if probe else []
    for name, result in encoded.items():
        skipped += [(name, splits[name].ids[chosen[name][p]], msg)
                    for p, msg in sorted(result.skipped.items())]
    if pool.fewshot and not encoded["train"].valid.all():  # readable when probed, not now
        raise DataError(next(iter(encoded["train"].skipped.values())))

    def rows(name: str, array: np.ndarray) -> np.ndarray:
        """[V, N, ...] of the readable items; val/test without the view axis."""
        array = array[:, encoded[name].valid]
        return array if name == "train" else array[0]

    labels = {name: splits[name].labels[chosen[name][r.valid]] for name, r in encoded.items()}
    features = featfile.FeatureSet(
        text=text,
        train=rows("train", encoded["train"].features), train_labels=labels["train"],
        val=rows("val", encoded["val"].features), val_labels=labels["val"],
        test=rows("test", encoded["test"].features), test_labels=labels["test"],
        classnames=tuple(dataset.classnames),
        logit_scale=float(np.exp(np.asarray(clip.params["params"]["logit_scale"]))),
        meta=_meta(dataset, clip, tokenizer, pool, views=views, aug_scale=aug_scale,
                   aug_seed=aug_seed, taps=encoder.taps, dtype=dtype, skipped=skipped),
        fewshot=pool.fewshot, draws=pool.draws, val_draws=pool.val_draws,
        text_prompts=text_prompts,
    )
    if prompts is not None:
        features.meta["prompts"] = {"file": os.fspath(prompts), "sha256": prompts_digest(prompts)}
    featfile.validate(features, source=f"features of {dataset.name}")
    tap_arrays = {name: {t: rows(name, result.taps[t]) for t in encoder.taps}
                  for name, result in encoded.items()} if encoder.taps else {}
    return Extraction(features, tap_arrays, tuple(skipped),
                      {name: (r.loaded_chunks, r.computed_chunks) for name, r in encoded.items()})


def _meta(dataset, clip, tokenizer, pool: TrainPool, *, views: int,
          aug_scale: tuple[float, float], aug_seed: int, taps: Sequence[str], dtype: str,
          skipped: list[tuple[str, str, str]]) -> dict[str, Any]:
    return {
        "backbone": clip.config.name,
        "weights": "random" if clip.is_random else clip.weights_id,
        "weights_id": clip.weights_id,
        "is_random": bool(clip.is_random),
        "dataset": dataset.name,
        "data_source": dataset.source,
        "dataset_identity": dataset.identity,
        "split_policy": {
            "train": pool.policy,
            "val": f"whole val split ({dataset.split_origin.get('val', 'val split')})",
            "test": f"whole test split ({dataset.split_origin.get('test', 'test split')})",
        },
        "views": int(views),
        "augmentation": None if views == 1 else {
            "transform": "RandomResizedCrop + RandomHorizontalFlip(0.5), view 0 un-augmented",
            "scale": list(aug_scale), "ratio": list(augment.DEFAULT_RATIO),
            "interpolation": "bicubic", "seed": int(aug_seed)},
        "image_size": clip.config.image_size,
        "tokenizer": tokenizer.name,
        "tokenizer_id": getattr(tokenizer, "identity", None),
        "templates_per_class": len(dataset.templates),
        "taps": list(taps),
        "dtype": dtype,
        "code_version": code_version(),
        "skipped_images": {"count": len(skipped),
                           "items": [{"split": s, "id": i, "error": m} for s, i, m in skipped]},
    }


def taps_path(path: str | os.PathLike) -> str:
    """Where :func:`save_extraction` puts the taps of ``path``: ``X.npz`` -> ``X.taps.npz``."""
    path = os.fspath(path)
    return (path[:-4] if path.endswith(".npz") else path) + TAPS_SUFFIX


def save_extraction(path: str | os.PathLike, extraction: Extraction) -> list[str]:
    """Writes the feature file (and, with taps, ``taps_path(path)``) atomically.

    Taps file keys: ``<split>_<tap>`` (train [V, N, ...], val/test [M, ...]) and
    ``meta`` (the feature file's JSON meta).

    Returns:
      the paths written.
    """
    featfile.save(path, extraction.features)
    written = [os.fspath(path)]
    if extraction.taps:
        arrays = {f"{split}_{tap}": value for split, by_tap in extraction.taps.items()
                  for tap, value in by_tap.items()}
        atomic.save_npz(taps_path(path), **arrays,
                        meta=np.asarray(json.dumps(dict(extraction.features.meta))))
        written.append(taps_path(path))
    return written
