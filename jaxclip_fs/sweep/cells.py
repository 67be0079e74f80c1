"""Sweep cells and how they are grouped into compiled programs (no jax).

A sweep is the grid methods × datasets × shots × seeds; each point is a
:class:`Cell` and gets one result record. Cells are run by **programs**: one
compiled, vmapped computation per method and dataset -- or, with fusion, per
method and *group* of datasets whose arrays can be padded into one batch
(same feature width and view count, same static training settings, same
search-grid lengths: :func:`fusion_groups`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Hashable, Iterable, Sequence

from jaxclip_fs.errors import ConfigError

@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One result record: a method on one dataset's (shots, seed) few-shot task."""

    method: str
    dataset: str
    shots: int
    seed: int


@dataclasses.dataclass(frozen=True)
class Program:
    """Cells computed by one compiled program: one method, one or more (fused) datasets.

    Attributes:
      method: registry name.
      datasets: the datasets, in sweep order (several when fused).
      cells: the cells to compute, dataset-major, then seed, then shots.
    """

    method: str
    datasets: tuple[str, ...]
    cells: tuple[Cell, ...]

    @property
    def name(self) -> str:
        """``method/dataset`` or ``method/dataset1+dataset2`` (for messages)."""
        return f"{self.method}/{'+'.join(self.datasets)}"

    @property
    def key(self) -> str:
        """A file-name-safe identity: the datasets and a digest of the cell list."""
        digest = hashlib.sha256(repr(self.cells).encode()).hexdigest()[:10]
        return f"{'+'.join(d.replace('/', '_').replace(':', '_') for d in self.datasets)}-{digest}"

    def cells_of(self, dataset: str) -> tuple[Cell, ...]:
        return tuple(c for c in self.cells if c.dataset == dataset)


def parse_int_list(text: str | Sequence[int], flag: str, minimum: int) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4), sorted and distinct.

    Raises:
      ConfigError: not integers, empty, or below ``minimum`` (names ``flag``).
    """
    if isinstance(text, str):
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"{flag} must be a comma list of integers, got '{text}'") from None
    else:
        values = [int(v) for v in text]
    if not values:
        raise ConfigError(f"{flag} must name at least one value")
    if min(values) < minimum:
        raise ConfigError(f"{flag} values must be >= {minimum}, got {min(values)}")
    return tuple(sorted(set(values)))


def parse_names(text: str | Sequence[str], flag: str) -> tuple[str, ...]:
    """``"a,b"`` -> ("a", "b") in the order given, without repeats.

    Raises:
      ConfigError: empty (names ``flag``).
    """
    parts = text.split(",") if isinstance(text, str) else text
    names = [str(p).strip() for p in parts if str(p).strip()]
    if not names:
        raise ConfigError(f"{flag} must name at least one value")
    return tuple(dict.fromkeys(names))


def all_cells(methods: Sequence[str], datasets: Sequence[str], shots: Sequence[int],
              seeds: Sequence[int]) -> list[Cell]:
    """The full grid, method-major, then dataset, seed, shots."""
    return [Cell(m, d, k, s) for m in methods for d in datasets for s in seeds for k in shots]


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


def plan_programs(pending: Iterable[Cell], methods: Sequence[str],
                  groups_of: Callable[[str, Sequence[str]], list[tuple[str, ...]]],
                  per_shots: bool = False) -> list[Program]:
    """Programs covering the ``pending`` cells: per method, per dataset group.

    Args:
      pending: cells still to compute.
      methods: method order.
      groups_of: ``(method, datasets with pending cells) -> dataset groups``.
      per_shots: one program per shot count as well. A program pads every
        cell to its largest shot count (a 1-shot cell trains as many scanned
        steps as the 16-shot one), which costs nothing on hardware that runs
        the cells in parallel but, for shots 1-16, 80 units of work where a
        loop does 31 on a saturated CPU; per-shot programs do no padding
        work. Same records either way.
    """
    by_method: dict[str, list[Cell]] = {}
    for cell in pending:
        by_method.setdefault(cell.method, []).append(cell)
    programs = []
    for method in methods:
        cells = by_method.get(method, [])
        datasets = list(dict.fromkeys(c.dataset for c in cells))
        for group in groups_of(method, datasets) if datasets else ():
            mine = sorted((c for c in cells if c.dataset in group),
                          key=lambda c: (group.index(c.dataset), c.seed, c.shots))
            parts = ([[c for c in mine if c.shots == k] for k in sorted({c.shots for c in mine})]
                     if per_shots else [mine])
            programs.extend(Program(method, tuple(group), tuple(part)) for part in parts)
    return programs
