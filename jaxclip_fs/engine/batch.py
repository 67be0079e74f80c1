"""Host-side arrays of one program: the stacked, padded, masked tasks of its cells.

For a program (one method, datasets ``g = 1..G``, cells (shots, seed) per
dataset) the arrays are built over its *sets*: with the nested sampler one
per seed (its K-shot support, K the program's largest shot count, serves
every shot count through masks); with an official sampler, whose draws are
not nested, one per (seed, shots). Then:

shared per dataset (leading axis G; replicated over devices)
  ``supports`` [G, S, V, C, K, D]  per set its support (class-major, rows of
                                  the feature file's few-shot index / draw,
                                  shot axis padded to K);
  ``text`` [G, C, D], ``class_mask`` [G, C], ``logit_scale`` [G];
  ``val`` [G, S, Mv, D], ``val_labels`` [G, S, Mv], ``val_rank`` [G, S, Mv]:
                                  per set the validation rows and each row's
                                  position in its class's nested order (CoOp:
                                  the first ``min(K, 4)`` of the class's fixed
                                  random order; an official draw's or
                                  ``full``: every row, rank 0; padding rows rank ∞);
  ``test`` [G, M, D], ``test_labels`` [G, M], ``test_mask`` [G, M];
  with out-of-distribution sets (G = 1): ``ood`` [1, O, Mo, D], ``ood_labels``
  (parent class indices), ``ood_mask`` [1, O, Mo], ``ood_class_mask`` [1, O, C].
per cell (leading axes [G, T]; T split over devices)
  ``seed``, ``set_index`` (into S), ``shots``, ``val_take`` (= ``min(shots, 4)``),
  ``hp`` {name: [G, T]},
  ``grid`` {name: [G, T, L]}.

Inside the program a cell's task is ``supports[set_index]`` with
``support_mask[c, k] = class_mask[c] · (k < shots)`` and its validation set
the rows with ``val_rank < val_take`` -- exactly the sets
``evaluate`` builds for one (shots, seed) -- it is the same engine on a
one-cell grid. C, Mv and M are padded to the group's largest (masked); T
is padded to a multiple of the device count with copies of a real cell
(their results are dropped).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Hashable, Mapping, Sequence

import jax
import numpy as np

from jaxclip_fs.data.fewshot import capped_val_shots, official_val_rows, ranked_val_rows
from jaxclip_fs.experiment.plan import Cell, Program, Resolved
from jaxclip_fs.features.featfile import FeatureSet, support_index
from jaxclip_fs.methods.base import Method
from jaxclip_fs.pipelines.ood import OODSet
from jaxclip_fs.pipelines.sizes import InputSizes

PADDING_RANK = np.inf


def fusion_signature(method: Method, fs: FeatureSet, resolved: Resolved) -> Hashable:
    """Datasets with equal signatures can be padded into one program for ``method``."""
    batch_size, _ = resolved.static(method)
    return (fs.num_views, fs.dim, batch_size, tuple(sorted(resolved.values)),
            tuple((name, len(g)) for name, g in resolved.grid.items()))


@dataclasses.dataclass(frozen=True)
class ProgramBatch:
    """The arrays of one program (module docstring) and what sits where.

    Attributes:
      shared, per_cell: numpy pytrees.
      slots: ``slots[g][t]`` the cell at (g, t), None for padding.
      resolved: per dataset its :class:`Resolved`.
      batch_size, max_epochs: static training settings of the program.
      val_sizes: per real cell, the number of validation rows it selects on.
    """

    shared: dict
    per_cell: dict
    slots: tuple[tuple[Cell | None, ...], ...]
    resolved: dict[str, Resolved]
    batch_size: int
    max_epochs: int
    val_sizes: dict[Cell, int]


def _pad(array: np.ndarray, axis: int, size: int, value=0) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, size - array.shape[axis])
    return np.pad(array, widths, constant_values=value)


def program_sets(program: Program, sampler: str) -> list[tuple[int, int]]:
    """The program's sets ``(seed, shots)``: per seed at its largest shot count (nested), or
    per (seed, shots) of its cells (official draws)."""
    if sampler == "nested":
        kmax = max(c.shots for c in program.cells)
        return [(seed, kmax) for seed in sorted({c.seed for c in program.cells})]
    return sorted({(c.seed, c.shots) for c in program.cells})


def set_of(cell: Cell, sampler: str, kmax: int) -> tuple[int, int]:
    return (cell.seed, kmax if sampler == "nested" else cell.shots)


def _val_set(fs: FeatureSet, seed: int, shots: int, sampler: str,
             val_rows: str) -> tuple[np.ndarray, np.ndarray]:
    """A set's validation rows and their ranks (module docstring); none for ``"none"``."""
    if val_rows == "none":
        return np.zeros((0,), np.int64), np.zeros((0,), np.float32)
    if sampler == "nested" or val_rows == "full":
        return ranked_val_rows(fs.val_labels, fs.num_classes, seed, val_rows,
                               capped_val_shots(shots))
    rows = official_val_rows(fs.val_draws, sampler, seed, shots)
    return rows, np.zeros(len(rows), np.float32)


def _dataset_arrays(fsets: Sequence[FeatureSet], sets: Sequence[tuple[int, int]], shots: int,
                    num_classes: int, val_rows: str, sampler: str, prompts: bool) -> dict:
    """The ``shared`` arrays (module docstring) of the program's datasets, padded alike."""
    supports, vals, val_labels, val_ranks = [], [], [], []
    for fs in fsets:
        per_set = [_pad(fs.train[:, support_index(fs, k, s, sampler)], 2, shots)
                   for s, k in sets]  # [V, C, K, D] each
        supports.append(_pad(np.stack(per_set), 2, num_classes))
        rows = [_val_set(fs, s, k, sampler, val_rows) for s, k in sets]
        vals.append([fs.val[r] for r, _ in rows])
        val_labels.append([fs.val_labels[r] for r, _ in rows])
        val_ranks.append([rank for _, rank in rows])
    val_size = max(v.shape[0] for per_set in vals for v in per_set)
    test_size = max(fs.test.shape[0] for fs in fsets)

    def stacked(per_dataset, fill=0):  # [G, S, Mv, ...]
        return np.stack([np.stack([_pad(v, 0, val_size, fill) for v in per_set])
                         for per_set in per_dataset])

    def ones(rows: int, size: int) -> np.ndarray:
        return _pad(np.ones(rows, np.float32), 0, size)

    def text(fs: FeatureSet) -> np.ndarray:
        return fs.text_prompts if prompts else fs.text

    return {
        "supports": np.stack(supports).astype(np.float32),
        "text": np.stack([_pad(text(fs), 0, num_classes) for fs in fsets]).astype(np.float32),
        "class_mask": np.stack([ones(fs.num_classes, num_classes) for fs in fsets]),
        "logit_scale": np.asarray([fs.logit_scale for fs in fsets], np.float32),
        "val": stacked(vals).astype(np.float32),
        "val_labels": stacked(val_labels).astype(np.int32),
        "val_rank": stacked(val_ranks, PADDING_RANK).astype(np.float32),
        "test": np.stack([_pad(fs.test, 0, test_size) for fs in fsets]).astype(np.float32),
        "test_labels": np.stack([_pad(fs.test_labels, 0, test_size)
                                 for fs in fsets]).astype(np.int32),
        "test_mask": np.stack([ones(fs.test.shape[0], test_size) for fs in fsets]),
    }


def _cell_arrays(filled: Sequence[Sequence[Cell]], sets: Sequence[tuple[int, int]],
                 sampler: str, kmax: int, resolved: Mapping[str, Resolved]) -> dict:
    """The ``per_cell`` arrays (module docstring) of a [G, T] grid of cells."""
    first = resolved[filled[0][0].dataset]

    def table(value, dtype):
        return np.asarray([[value(c) for c in row] for row in filled], dtype)

    return {
        "seed": table(lambda c: c.seed, np.int32),
        "set_index": table(lambda c: sets.index(set_of(c, sampler, kmax)), np.int32),
        "shots": table(lambda c: c.shots, np.int32),
        "val_take": table(lambda c: capped_val_shots(c.shots), np.int32),
        "hp": {n: table(lambda c: resolved[c.dataset].values[n], np.float32) for n in first.values},
        "grid": {n: table(lambda c: resolved[c.dataset].grid[n], np.float32) for n in first.grid},
    }


def build_batch(program: Program, method: Method, features: Mapping[str, FeatureSet],
                resolved: Mapping[str, Resolved], *, val_rows: str,
                pad_cells: Callable[[int], int], ood: Sequence[OODSet] = (),
                sampler: str = "nested", prompts: bool = False) -> ProgramBatch:
    """Stacks the cells of ``program`` (module docstring).

    Args:
      features: dataset -> its feature set (every dataset of the program).
      resolved: dataset -> the method's settings there (equal batch sizes).
      val_rows: ``"coop"`` (min(K, 4) per class), ``"full"`` or ``"none"`` (no row).
      pad_cells: T -> the padded T (a multiple of the device count).
      ood: out-of-distribution sets of the program's (single) dataset.
      sampler: the few-shot sampler (``nested``, ``official``, ``official_chained``).
      prompts: the text classifier of the templates and the prompt sentences.
    """
    datasets = program.datasets
    fsets = [features[d] for d in datasets]
    sets = program_sets(program, sampler)
    num_classes = max(fs.num_classes for fs in fsets)
    shots = max(c.shots for c in program.cells)
    shared = _dataset_arrays(fsets, sets, shots, num_classes, val_rows, sampler, prompts)
    if ood:
        if len(datasets) != 1:
            raise ValueError(f"{program.name}: OOD sets need a single-dataset program")
        shared.update(_ood_arrays(ood, num_classes))

    slots, batch_size, max_epochs = _layout(program, method, resolved, pad_cells)
    filled = [[cell or row[0] for cell in row] for row in slots]  # padding repeats a real cell
    val_sizes = {
        c: int(np.sum(shared["val_rank"][g, sets.index(set_of(c, sampler, shots))]
                      < capped_val_shots(c.shots)))
        for g, d in enumerate(datasets) for c in program.cells_of(d)}
    return ProgramBatch(shared, _cell_arrays(filled, sets, sampler, shots, resolved), slots,
                        dict(resolved), batch_size, max_epochs, val_sizes)


def _layout(program: Program, method: Method, resolved: Mapping[str, Resolved],
            pad_cells: Callable[[int], int]) -> tuple[tuple, int, int]:
    """``(slots, batch_size, max_epochs)``: each dataset's cells padded with None to the
    padded width T, the datasets' (equal) batch size and their largest epoch count."""
    datasets = program.datasets
    width = pad_cells(max(len(program.cells_of(d)) for d in datasets))
    slots = tuple(program.cells_of(d) + (None,) * (width - len(program.cells_of(d)))
                  for d in datasets)
    statics = {resolved[d].static(method) for d in datasets}
    if len({b for b, _ in statics}) != 1:
        raise ValueError(f"{program.name}: datasets with different batch sizes in one program")
    return slots, next(iter(statics))[0], max(e for _, e in statics)


def _ood_arrays(ood: Sequence[OODSet], num_classes: int) -> dict:
    """``ood`` [1, O, Mo, D], ``ood_labels``, ``ood_mask`` [1, O, Mo], ``ood_class_mask``."""
    size = max(o.test.shape[0] for o in ood)
    return {
        "ood": np.stack([_pad(o.test, 0, size) for o in ood])[None].astype(np.float32),
        "ood_labels": np.stack([_pad(o.test_labels, 0, size) for o in ood])[None].astype(np.int32),
        "ood_mask": np.stack([_pad(np.ones(o.test.shape[0], np.float32), 0, size)
                              for o in ood])[None],
        "ood_class_mask": np.stack([_pad(o.class_mask, 0, num_classes) for o in ood])[None],
    }


# --- shapes without arrays (planning, dry runs) ---------------------------------------------


def abstract_batch(program: Program, method: Method, sizes: Mapping[str, InputSizes],
                   resolved: Mapping[str, Resolved], *, val_rows: str,
                   pad_cells: Callable[[int], int], ood_test: Sequence[int] = (),
                   sampler: str = "nested") -> ProgramBatch:
    """:func:`build_batch`'s arrays as ``jax.ShapeDtypeStruct`` s, from sizes alone.

    Same shapes and dtypes as :func:`build_batch` on feature sets of these
    sizes (a test checks it), so a program can be lowered, costed and
    compiled without its inputs (``jax.jit(...).lower(...)``).
    """
    datasets = program.datasets
    info = [sizes[d] for d in datasets]
    sets = program_sets(program, sampler)
    shots = max(c.shots for c in program.cells)
    g, s, c = len(datasets), len(sets), max(i.num_classes for i in info)
    views, dim = info[0].views, info[0].dim
    width_d = info[0].feature_dim or dim  # image rows (paired: 2E)
    mv = max(i.val_rows(val_rows, k) for i in info for _, k in sets)
    m = max(i.test for i in info)
    f32, i32 = np.float32, np.int32
    spec = jax.ShapeDtypeStruct
    shared = {
        "supports": spec((g, s, views, c, shots, width_d), f32), "text": spec((g, c, dim), f32),
        "class_mask": spec((g, c), f32), "logit_scale": spec((g,), f32),
        "val": spec((g, s, mv, width_d), f32), "val_labels": spec((g, s, mv), i32),
        "val_rank": spec((g, s, mv), f32), "test": spec((g, m, width_d), f32),
        "test_labels": spec((g, m), i32), "test_mask": spec((g, m), f32),
    }
    ood = tuple(ood_test)
    if ood:
        if g != 1:
            raise ValueError(f"{program.name}: OOD sets need a single-dataset program")
        o, mo = len(ood), max(ood)
        shared.update({"ood": spec((1, o, mo, width_d), f32), "ood_labels": spec((1, o, mo), i32),
                       "ood_mask": spec((1, o, mo), f32), "ood_class_mask": spec((1, o, c), f32)})
    slots, batch_size, max_epochs = _layout(program, method, resolved, pad_cells)
    width = len(slots[0])
    first = resolved[datasets[0]]
    per_cell = {name: spec((g, width), i32) for name in ("seed", "set_index", "shots", "val_take")}
    per_cell["hp"] = {n: spec((g, width), f32) for n in first.values}
    per_cell["grid"] = {n: spec((g, width, len(v)), f32) for n, v in first.grid.items()}
    return ProgramBatch(shared, per_cell, slots, dict(resolved), batch_size, max_epochs, {})


def slot_cells(batch: ProgramBatch) -> list[tuple[int, int, Cell]]:
    """``(g, t, cell)`` for every real slot."""
    return [(g, t, cell) for g, row in enumerate(batch.slots) for t, cell in enumerate(row)
            if cell is not None]
