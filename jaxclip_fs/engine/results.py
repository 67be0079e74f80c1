"""What a cell computed, and its result record -- built in one place for every program kind.

Both program kinds (:mod:`~jaxclip_fs.engine.feature_program`,
:mod:`~jaxclip_fs.engine.image_program`) report a cell as a
:class:`CellResult`; :func:`cell_records` turns it into the record of the
cell and one record per OOD set (``io/records.py`` fields first: method
variant, backbone, weights, dataset, split policy, shots, seed,
hyperparameters, code version; then the results and where they came from).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from jaxclip_fs.errors import NumericError
from jaxclip_fs.experiment.plan import Cell, Program
from jaxclip_fs.experiment.protocol import Rules
from jaxclip_fs.io import records
from jaxclip_fs.methods.base import Method


@dataclasses.dataclass(frozen=True)
class OODResult:
    """A cell's fit scored on an out-of-distribution test set."""

    name: str
    accuracy: float
    num_classes: int
    test_size: int
    meta: Mapping[str, Any]


@dataclasses.dataclass
class CellResult:
    """Everything a cell's record holds (see :func:`cell_records`).

    Attributes:
      cell: the cell (``cell.method`` is the variant label).
      method: the method (variant) that computed it.
      provenance: ``backbone``, ``weights``, ``dataset``, ``split_policy`` and
        further facts of the inputs (e.g. the IMO adapters of paired features).
      hyperparameters: the values used (searched ones as chosen).
      searched: the names chosen by search.
      accuracy: the protocol's figure in % (``rules.reported``; ``final``: the
        final prediction's test accuracy).
      final_accuracy: the final prediction's test accuracy in %.
      val_accuracy: the search set's accuracy in %; None where nothing was selected
        (``validation_free``).
      val_size, test_size, num_classes: sizes.
      best_epoch: trained methods: the epoch kept (0-based), else None.
      epoch_losses: trained methods: mean training loss per epoch.
      heads: test accuracy of each head the method reports.
      inputs: how the inputs were made (image methods: taps, training path ...).
      ood: the OOD sets scored with this fit.
      test_logits: [M, C] when kept (``evaluate``).
      confusion: the class-confusion analysis, for methods that name two heads.
      params_row: ``[g, t]`` of the cell in its program's params checkpoint.
      finite: the test logits were finite (else :func:`check_finite` refuses the cell).
    """

    cell: Cell
    method: Method
    provenance: Mapping[str, Any]
    hyperparameters: Mapping[str, Any]
    searched: Sequence[str]
    accuracy: float
    final_accuracy: float
    val_accuracy: float | None
    val_size: int
    test_size: int
    num_classes: int
    best_epoch: int | None = None
    epoch_losses: Sequence[float] | None = None
    heads: Mapping[str, float] = dataclasses.field(default_factory=dict)
    inputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    ood: Sequence[OODResult] = ()
    test_logits: np.ndarray | None = None
    confusion: dict | None = None
    params_row: Sequence[int] | None = None
    finite: bool = True


def check_finite(results: Sequence[CellResult], program: Program) -> None:
    """Every number of every cell is finite, and so were its test logits.

    Raises:
      NumericError: one line naming the first cell that is not, what is not finite,
        and how many cells of the program are affected (none of them gets a record).
    """
    bad = []
    for result in results:
        numbers = {"accuracy": result.accuracy, "final accuracy": result.final_accuracy,
                   "validation accuracy": result.val_accuracy,
                   **{f"head {k} accuracy": v for k, v in result.heads.items()},
                   **{f"{o.name} accuracy": o.accuracy for o in result.ood}}
        what = ([] if result.finite else ["its test logits"]) + [
            name for name, value in numbers.items() if not np.isfinite(float(value))]
        if what:
            bad.append((result.cell, what))
    if bad:
        cell, what = bad[0]
        others = f" (and {len(bad) - 1} more cells of program {program.name})" if len(bad) > 1 \
            else ""
        raise NumericError(
            f"{cell.method} on {cell.dataset}, {cell.shots}-shot, seed {cell.seed} "
            f"({cell.protocol}): {', '.join(what)} not finite (NaN or Inf){others}; no record "
            "is written -- check the inputs (e.g. features of zero norm)")


def losses_of(values) -> list[float]:
    """Per-epoch losses of the epochs that ran (NaN marks epochs past the cell's own)."""
    return [float(x) for x in np.asarray(values) if np.isfinite(x)]


def reported(rule: str, final: float, heads: Mapping[str, float],
             best_score: float | None) -> float:
    """The figure a protocol reports (:class:`~jaxclip_fs.methods.base.Official`): the final
    prediction's accuracy, or the maximum with the heads' (``max_heads``) or with the best
    epoch's score (``max_epoch_or_search``)."""
    if rule == "max_heads":
        return max([final, *heads.values()])
    if rule == "max_epoch_or_search" and best_score is not None and np.isfinite(best_score):
        return max(final, float(best_score))
    return final


def cell_records(result: CellResult, *, program: Program, rules: Rules, seconds: float,
                 devices: int, params_dir: str | None) -> list[tuple[Cell, dict]]:
    """The record of a cell and of each of its OOD sets."""
    method = result.method
    cell = result.cell
    common = dict(
        method_name=method.name, options=dict(method.option_values), inputs=method.inputs,
        searched=list(result.searched), protocol=rules.protocol, selection=rules.describe(),
        val_policy=rules.val_rows)
    results = dict(
        val_accuracy=None if result.val_accuracy is None else float(result.val_accuracy),
        best_epoch=result.best_epoch,
        epoch_selection=method.epoch_selection if method.trainable else None,
        val_size=int(result.val_size),
        seconds=round(seconds / len(program.cells), 4),
        program=program.name, program_cells=len(program.cells),
        program_seconds=round(seconds, 3), fused_datasets=list(program.datasets),
        devices=int(devices), params_checkpoint=params_dir,
        params_row=list(result.params_row) if params_dir and result.params_row else None)
    if result.epoch_losses is not None:
        results["epoch_losses"] = list(result.epoch_losses)
    if result.heads:
        results["head_accuracies"] = {k: float(v) for k, v in result.heads.items()}
    if result.inputs:
        results["input_details"] = dict(result.inputs)
    extra = {k: v for k, v in result.provenance.items()
             if k not in records.PROVENANCE_FIELDS and k in RECORDED_META}
    out = [(cell, records.build_record(
        method=cell.method, shots=cell.shots, seed=cell.seed,
        hyperparameters=result.hyperparameters, provenance=result.provenance, **common,
        accuracy=float(result.accuracy), final_accuracy=float(result.final_accuracy),
        num_classes=int(result.num_classes), test_size=int(result.test_size), **results,
        **extra))]
    ood_common = {**common, "selection": {**common["selection"], "reported": "final"}}
    for ood in result.ood:
        out.append((Cell(cell.method, ood.name, cell.shots, cell.seed, cell.protocol),
                    records.build_record(
            method=cell.method, shots=cell.shots, seed=cell.seed,
            hyperparameters=result.hyperparameters,
            provenance={**ood.meta, "dataset": ood.name,
                        "tokenizer_id": result.provenance.get("tokenizer_id")}, **ood_common,
            accuracy=float(ood.accuracy), final_accuracy=float(ood.accuracy),
            trained_on=cell.dataset,
            num_classes=int(ood.num_classes), test_size=int(ood.test_size), **results, **extra)))
    return out


#: Facts of the inputs' provenance copied into records (besides the required fields).
RECORDED_META = ("imo_adapters", "imo_weights_id", "feature_file", "compute_dtype")
