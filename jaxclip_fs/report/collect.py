"""Reading result records and aggregating them over seeds.

A record is one JSON object per (method, dataset, shots, seed) as written by
``io/records.py`` (``evaluate`` and ``run`` both write them). Records are
grouped by their :class:`Setting` -- what must be equal for numbers to be
comparable: backbone, weights and protocol (``fair``, ``fewshot``, ``paper``,
``validation_free``) -- then by (method, dataset, shots); each group becomes
a :class:`Cell` holding the per-seed accuracies and their mean and standard
deviation.

The standard deviation is the population one (``numpy.std``, ddof = 0) over
the seeds present, as the papers' ``mean ± std`` over 3 seeds is usually
computed; a single seed has no std (None: shown without ``±``, an empty CSV
field), as a spread of 0.00 would claim a measured zero spread.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from jaxclip_fs import catalogue
from jaxclip_fs.catalogue import is_random_weights
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.io.paths import printable

REQUIRED_FIELDS = ("method", "dataset", "shots", "seed", "accuracy")

# Display order of datasets: as the papers' tables (methods: the catalogue's order).
DATASET_ORDER = catalogue.BENCHMARK_DATASETS + (
    "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")


@dataclasses.dataclass(frozen=True, order=True)
class Setting:
    """What makes two records comparable.

    Attributes:
      backbone: CLIP variant (``RN50`` ...), ``synthetic`` for generated features.
      weights: weights identity, ``"random"`` for random init.
      protocol: ``fair``, ``fewshot``, ``paper`` or ``validation_free`` (how epochs /
        hyperparameters were selected and the figure formed).
    """

    backbone: str
    weights: str
    protocol: str

    @property
    def random_weights(self) -> bool:
        return is_random_weights(self.weights)

    def title(self) -> str:
        """One line naming the setting, with the random-weights warning when it applies."""
        text = f"{self.backbone}, weights {self.weights}, protocol {self.protocol}"
        if self.protocol == "paper":
            text += (" (as the official codes: entries marked * are OPTIMISTIC -- test data "
                     "chose or formed them)")
        if self.random_weights:
            text += " -- RANDOM WEIGHTS: accuracies only exercise the pipeline"
        return text


@dataclasses.dataclass(frozen=True)
class Cell:
    """The seeds of one (setting, method, dataset, shots).

    Attributes:
      seeds: the seeds, ascending; ``accuracies`` in the same order (in %).
      mean, std: over the seeds (population std; None for one seed).
      optimistic: some of its records selected on test or report a maximum over test figures.
    """

    setting: Setting
    method: str
    dataset: str
    shots: int
    seeds: tuple[int, ...]
    accuracies: tuple[float, ...]
    optimistic: bool = False

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float | None:
        return float(np.std(self.accuracies)) if len(self.accuracies) > 1 else None


def _record_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: no such records directory or file")
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if f.endswith(".json") and not f.startswith(".")]
    return found


def malformed(record: Mapping) -> str | None:
    """Why ``record`` cannot enter a table (None: it can).

    A record's ``method`` and ``dataset`` are non-empty strings (``average`` is the
    tables' own column), ``shots`` and ``seed`` whole numbers (shots >= 1), its
    ``accuracy`` a finite number in [0, 100], and ``backbone``, ``weights``,
    ``protocol`` strings where given.
    """
    for key in ("method", "dataset"):
        if not isinstance(record[key], str) or not record[key].strip():
            return f"{key} {record[key]!r} is not a name"
    if record["dataset"] == catalogue.AVERAGE:
        return f"dataset {catalogue.AVERAGE!r} is the tables' average column"
    for key, low in (("shots", 1), ("seed", None)):
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, int) or (low and value < low):
            return f"{key} {value!r} is not a whole number{' >= 1' if low else ''}"
    accuracy = record["accuracy"]
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)):
        return f"accuracy {accuracy!r} is not a number"
    if not (math.isfinite(accuracy) and 0 <= accuracy <= 100):
        return f"accuracy {accuracy!r} is not a percentage"
    for key in ("backbone", "weights", "protocol"):
        if key in record and not isinstance(record[key], str):
            return f"{key} {record[key]!r} is not a string"
    return None


def load_records(path: str | os.PathLike,
                 warn: Callable[[str], None] | None = None) -> list[dict]:
    """Every result record under ``path`` (a record file or a directory searched recursively).

    JSON files that are not records (a run manifest, a confusion analysis)
    are skipped: a record is an object with ``method``, ``dataset``,
    ``shots``, ``seed`` and ``accuracy``. A file that cannot be read, and a
    record that is :func:`malformed`, is left out, and ``warn`` names it and
    why (one line each). Each record gains ``"_path"``; its names are made
    :func:`~jaxclip_fs.io.paths.printable`.

    Raises:
      ConfigError: ``path`` does not exist.
    """
    warn = warn or (lambda message: None)
    out = []
    for file in _record_files(os.fspath(path)):
        try:
            with open(file, encoding="utf-8") as f:
                obj = json.load(f)
        except (OSError, ValueError) as exc:
            warn(f"warning: {file} is not a readable JSON file "
                 f"({' '.join(str(exc).split()) or type(exc).__name__}): left out")
            continue
        if not (isinstance(obj, dict) and all(k in obj for k in REQUIRED_FIELDS)):
            continue
        problem = malformed(obj)
        if problem is not None:
            warn(f"warning: record {file} is malformed ({printable(problem)}): left out")
            continue
        names = {k: printable(obj[k]) for k in ("method", "dataset", "backbone", "weights",
                                                 "protocol") if k in obj}
        out.append({**obj, **names, "_path": file})
    return out


def setting_of(record: Mapping) -> Setting:
    """The :class:`Setting` of a record (missing fields read ``unknown``)."""
    return Setting(backbone=str(record.get("backbone", "unknown")),
                   weights=str(record.get("weights", "unknown")),
                   protocol=str(record.get("protocol", "unknown")))


def is_optimistic(record: Mapping) -> bool:
    """Did test data select something for this record, or form its figure?"""
    selection = record.get("selection")
    return bool(selection.get("optimistic")) if isinstance(selection, Mapping) else False


def summarize(records: Iterable[Mapping]) -> list[Cell]:
    """Groups records into :class:`Cell` s, sorted by setting, method, dataset, shots.

    Raises:
      ConfigError: two records of the same cell and seed disagree on the
        accuracy (names both files).
    """
    by_cell: dict[tuple, dict[int, tuple[float, str]]] = {}
    optimistic: set[tuple] = set()
    for record in records:
        key = (setting_of(record), str(record["method"]), str(record["dataset"]),
               int(record["shots"]))
        seeds = by_cell.setdefault(key, {})
        seed, accuracy = int(record["seed"]), float(record["accuracy"])
        path = str(record.get("_path", "?"))
        if seed in seeds and seeds[seed][0] != accuracy:
            raise ConfigError(f"records {seeds[seed][1]} and {path} disagree on "
                              f"{key[1]} / {key[2]} / {key[3]}-shot / seed {seed}")
        seeds[seed] = (accuracy, path)
        if is_optimistic(record):
            optimistic.add(key)
    cells = [Cell(setting, method, dataset, shots, tuple(sorted(seeds)),
                  tuple(seeds[s][0] for s in sorted(seeds)),
                  (setting, method, dataset, shots) in optimistic)
             for (setting, method, dataset, shots), seeds in by_cell.items()]
    return sorted(cells, key=lambda c: (c.setting, catalogue.order_key(c.method),
                                        order_key(c.dataset, DATASET_ORDER), c.shots))


def order_key(name: str, order: Sequence[str]) -> tuple[int, str]:
    """Sort key: names of ``order`` first, in that order, then the rest alphabetically."""
    return (order.index(name), "") if name in order else (len(order), name)
