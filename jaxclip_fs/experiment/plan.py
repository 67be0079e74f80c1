"""From a config to work: method variants, hyperparameters, cells, and programs (no jax).

A sweep is the grid (method variant) × dataset × shots × seed; each point is
a :class:`Cell` and gets one result record. Cells are computed by
**programs**: one compiled, vmapped computation per method variant and
dataset -- or, with fusion, per variant and *group* of datasets whose arrays
can be padded into one batch (same feature width and view count, same
static training settings, same search-grid lengths: :func:`fusion_groups`)
-- (:func:`plan_programs`); the engine's planner may then split a program
per shot count or into chunks of its cells (:func:`split_per_shots`,
:func:`split_chunks`).

Hyperparameters are resolved in one place, :meth:`Variant.resolve`: the
method's per-dataset defaults (under ``validation_free``, then its fixed
choices), then the config's global ``hp`` (for the names the method
declares), then the method's own ``hp``; the searched ones not fixed keep
their grids (none under ``validation_free``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

from jaxclip_fs import methods as methods_lib
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment.config import ExperimentConfig
from jaxclip_fs.io.paths import safe_name
from jaxclip_fs.methods import hparams as hparams_lib
from jaxclip_fs.methods.base import Method
from jaxclip_fs.methods.precision import in_compute_dtype


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One result record: a method variant on one dataset's (shots, seed) few-shot task, under
    one protocol (:mod:`~jaxclip_fs.experiment.protocol`)."""

    method: str
    dataset: str
    shots: int
    seed: int
    protocol: str = "fair"


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A method's hyperparameters on one dataset: values (defaults + fixed), grids to search."""

    values: dict[str, float]
    grid: dict[str, np.ndarray]

    def static(self, method: Method) -> tuple[int, int]:
        """(batch_size, epochs): the shape-setting training settings; (0, 0) without training.
        (A batch size of 0 is the full batch; a method trained in steps gives its steps.)"""
        return method.static(self.values)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A method built with its options, and the hyperparameters the config fixes for it."""

    label: str
    method: Method
    fixed: Mapping[str, float]

    def resolve(self, dataset: str | None, dim: int, *, search: bool = True) -> Resolved:
        """The variant's settings on ``dataset`` (registry name) at feature width ``dim``;
        ``search=False``: fixed values, no grid (a protocol that selects nothing)."""
        values, grid = self.method.resolve(dataset, dim, dict(self.fixed), search=search)
        return Resolved(values, grid)


def resolve_variants(config: ExperimentConfig) -> list[Variant]:
    """The config's method variants, built and checked against the registry; trained ones in
    the config's ``train_dtype`` (:func:`~jaxclip_fs.methods.precision.in_compute_dtype`).

    Raises:
      ConfigError: unknown method, option or value, a hyperparameter no
        method declares (names it and the valid ones), or a method whose own
        dtype option conflicts with ``train_dtype``.
    """
    variants = []
    declared: dict[str, None] = {}  # every declared name, in declaration order
    for label, method_config, options in config.variants():
        method = in_compute_dtype(methods_lib.get(method_config.name, **options),
                                  config.train_dtype)
        specs = method.hparam_specs
        declared.update(dict.fromkeys(specs))
        own = hparams_lib.parse_assignments(method_config.hp, specs, method_config.name)
        shared = {k: float(v) for k, v in config.hp.items() if k in specs}
        variants.append(Variant(label, method, {**shared, **own}))
    unknown = sorted(set(config.hp) - set(declared))
    if unknown:
        raise ConfigError(
            f"unknown hyperparameter '{unknown[0]}' for methods "
            f"{', '.join(m.name for m in config.methods)}; valid names: "
            f"{', '.join(declared) or '(none)'}")
    return variants


@dataclasses.dataclass(frozen=True)
class Program:
    """Cells computed by one compiled program: one variant, one or more (fused) datasets.

    Attributes:
      method: variant label.
      datasets: the datasets, in sweep order (several when fused).
      cells: the cells to compute, dataset-major, then seed, then shots.
      part: which part of its (variant, datasets) program this is, when the
        planner split it (``"shots 4"``, ``"cells 1-8 of 15"``); empty when whole.
    """

    method: str
    datasets: tuple[str, ...]
    cells: tuple[Cell, ...]
    part: str = ""

    @property
    def protocol(self) -> str:
        return self.cells[0].protocol

    @property
    def name(self) -> str:
        """``method/dataset`` or ``method/dataset1+dataset2``, with ``paper:`` etc. before it for
        protocols other than ``fair`` and its part after it (for messages and records):
        ``paper:tip_adapter_f/dtd [shots 4]``."""
        prefix = "" if self.protocol == "fair" else f"{self.protocol}:"
        whole = f"{prefix}{self.method}/{'+'.join(self.datasets)}"
        return f"{whole} [{self.part}]" if self.part else whole

    @property
    def key(self) -> str:
        """A file-name-safe identity: the datasets (:func:`~jaxclip_fs.io.paths.safe_name`, cut
        to 100 characters) and a digest of the cell list."""
        digest = hashlib.sha256(repr(self.cells).encode()).hexdigest()[:10]
        return f"{'+'.join(safe_name(d) for d in self.datasets)[:100]}-{digest}"

    @property
    def shots(self) -> tuple[int, ...]:
        return tuple(sorted({c.shots for c in self.cells}))

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(sorted({c.seed for c in self.cells}))

    def cells_of(self, dataset: str) -> tuple[Cell, ...]:
        return tuple(c for c in self.cells if c.dataset == dataset)


def ood_cells(cell: Cell, ood_of: Mapping[str, Sequence[str]]) -> list[Cell]:
    """The cells of the OOD sets scored with ``cell`` 's fits (``ood_of``: dataset -> sets)."""
    return [dataclasses.replace(cell, dataset=name) for name in ood_of.get(cell.dataset, ())]


def all_cells(labels: Sequence[str], datasets: Sequence[str], shots: Sequence[int],
              seeds: Sequence[int], protocols: Sequence[str] = ("fair",)) -> list[Cell]:
    """The full grid, protocol-major, then method, dataset, seed, shots."""
    return [Cell(m, d, k, s, p) for p in protocols for m in labels for d in datasets
            for s in seeds for k in shots]


def fusion_groups(datasets: Sequence[str], signature: Callable[[str], Hashable],
                  fuse: bool) -> list[tuple[str, ...]]:
    """Datasets that may share a program: equal ``signature`` (with ``fuse``), else one each.

    Groups keep the order of ``datasets`` (by first member).
    """
    if not fuse:
        return [(d,) for d in datasets]
    groups: dict[Hashable, list[str]] = {}
    for d in datasets:
        groups.setdefault(signature(d), []).append(d)
    return [tuple(g) for g in groups.values()]


def plan_programs(pending: Iterable[Cell], labels: Sequence[str],
                  groups_of: Callable[[str, str, Sequence[str]], list[tuple[str, ...]]]
                  ) -> list[Program]:
    """Programs covering the ``pending`` cells: per protocol and variant, per dataset group.

    Args:
      pending: cells still to compute.
      labels: variant order.
      groups_of: ``(protocol, label, datasets with pending cells) -> dataset groups``.
    """
    by_label: dict[tuple[str, str], list[Cell]] = {}
    for cell in pending:
        by_label.setdefault((cell.protocol, cell.method), []).append(cell)
    programs = []
    protocols = list(dict.fromkeys(protocol for protocol, _ in by_label))
    for protocol, label in ((p, m) for p in protocols for m in labels):
        cells = by_label.get((protocol, label), [])
        datasets = list(dict.fromkeys(c.dataset for c in cells))
        for group in groups_of(protocol, label, datasets) if datasets else ():
            mine = sorted((c for c in cells if c.dataset in group),
                          key=lambda c: (group.index(c.dataset), c.seed, c.shots))
            programs.append(Program(label, tuple(group), tuple(mine)))
    return programs


def split_per_shots(program: Program) -> list[Program]:
    """One program per shot count (in increasing shots; a single count: the program itself).

    A program pads every cell's training to its largest shot count (a 1-shot
    cell trains as many scanned steps as the 16-shot one) -- free where the
    cells run side by side, not on a saturated CPU; per-shot programs do no
    padding work, but each compiles on its own. Same records either way.
    """
    shots = program.shots
    if len(shots) == 1:
        return [program]
    prefix = f"{program.part}, " if program.part else ""
    return [dataclasses.replace(program, cells=tuple(c for c in program.cells if c.shots == k),
                                part=f"{prefix}shots {k}") for k in shots]


def split_chunks(program: Program, size: int) -> list[Program]:
    """Consecutive chunks of at most ``size`` cells (the program itself when it has no more)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    cells = program.cells
    if len(cells) <= size:
        return [program]
    prefix = f"{program.part}, " if program.part else ""
    return [dataclasses.replace(program, cells=cells[i:i + size],
                                part=f"{prefix}cells {i + 1}-{min(i + size, len(cells))} of "
                                     f"{len(cells)}")
            for i in range(0, len(cells), size)]


def ood_parents(config: ExperimentConfig, parent_of: Callable[[str], str]) -> dict[str, tuple]:
    """dataset -> the OOD sets scored with its fits.

    Raises:
      ConfigError: an OOD set whose parent is not among the datasets.
    """
    found: dict[str, tuple[str, ...]] = {d: () for d in config.data.datasets}
    for name in config.data.ood:
        parent = parent_of(name)
        if parent not in found:
            raise ConfigError(f"ood set {name} is scored with fits on '{parent}': "
                              "add it to the datasets")
        found[parent] += (name,)
    return found
