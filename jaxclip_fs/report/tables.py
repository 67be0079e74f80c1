"""The papers' tables from :class:`~jaxclip_fs.report.collect.Cell` s: Markdown and CSV.

Layout (as the LDC / APE / Tip-Adapter papers): one table per setting and
shot count, a row per method, a column per dataset, then the average over
the datasets. An entry is ``mean ± std`` over seeds; where a published
number exists for the same backbone, dataset and shots (and the weights are
real), it follows in brackets: ``66.10 ± 0.20 [65.51]``. One seed has no std:
its entry is the bare accuracy (``66.10``).

The average column: when every dataset of the table has the method's record
for the same seeds, each seed's accuracies are averaged over the datasets
and the entry is mean ± std of those per-seed averages (its mean is the
mean of the dataset means); with seeds missing somewhere it is the mean of
the dataset means, without std; with a dataset missing it is empty.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Sequence

import numpy as np

from jaxclip_fs.report.collect import Cell, Setting
from jaxclip_fs.catalogue import AVERAGE, display_name, published


@dataclasses.dataclass(frozen=True)
class Entry:
    """One table entry: mean and std over ``seeds`` (None when undefined: one seed, or seeds
    that differ between datasets); the published number; whether test data chose or formed
    it (marked ``*``); ``signed``: a difference (``+1.20``)."""

    mean: float
    std: float | None
    seeds: tuple[int, ...]
    published: float | None = None
    optimistic: bool = False
    signed: bool = False

    def text(self) -> str:
        out = f"{self.mean:+.2f}" if self.signed else f"{self.mean:.2f}"
        out += f" ± {self.std:.2f}" if self.std is not None else ""
        out += "*" if self.optimistic else ""
        return out + (f" [{self.published:.2f}]" if self.published is not None else "")


@dataclasses.dataclass(frozen=True)
class Table:
    """Rows x columns of optional entries.

    Attributes:
      title: e.g. ``"16-shot -- RN50, weights ..."``.
      corner: header of the row-label column.
      rows, columns: labels (registry names, shot counts as strings, ``average``).
      entries: ``{(row, column): Entry}``; absent = no result.
    """

    title: str
    corner: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    entries: dict[tuple[str, str], Entry]


def cell_entry(cell: Cell) -> Entry:
    return Entry(cell.mean, cell.std, cell.seeds,
                 published(cell.setting.backbone, cell.setting.weights, cell.shots, cell.method,
                           cell.dataset), cell.optimistic)


def average_entry(cells: Sequence[Cell], datasets: Sequence[str]) -> Entry | None:
    """The average over ``datasets`` of one method's cells at one shot count (module docstring)."""
    by_dataset = {c.dataset: c for c in cells}
    if not datasets or any(d not in by_dataset for d in datasets):
        return None
    chosen = [by_dataset[d] for d in datasets]
    first = chosen[0]
    pub = published(first.setting.backbone, first.setting.weights, first.shots, first.method,
                    AVERAGE)
    seed_sets = {c.seeds for c in chosen}
    optimistic = any(c.optimistic for c in chosen)
    if len(seed_sets) == 1:
        per_seed = np.mean([c.accuracies for c in chosen], axis=0)  # [S]
        std = float(np.std(per_seed)) if len(per_seed) > 1 else None
        return Entry(float(np.mean(per_seed)), std, first.seeds, pub, optimistic)
    common = tuple(sorted(set.intersection(*(set(c.seeds) for c in chosen))))
    return Entry(float(np.mean([c.mean for c in chosen])), None, common, pub, optimistic)


def shot_table(cells: Sequence[Cell], setting: Setting, shots: int) -> Table:
    """Methods x datasets (+ average) at ``shots`` for one setting."""
    mine = [c for c in cells if c.setting == setting and c.shots == shots]
    methods = tuple(dict.fromkeys(c.method for c in mine))
    datasets = tuple(dict.fromkeys(c.dataset for c in mine))
    entries = {(c.method, c.dataset): cell_entry(c) for c in mine}
    columns = datasets
    if len(datasets) > 1:
        columns = datasets + (AVERAGE,)
        for method in methods:
            avg = average_entry([c for c in mine if c.method == method], datasets)
            if avg is not None:
                entries[(method, AVERAGE)] = avg
    return Table(f"{shots}-shot -- {setting.title()}", "method", methods, columns, entries)


#: The protocol gaps the report shows: (minuend, subtrahend, what the difference says).
PROTOCOL_GAPS = (
    ("paper", "fair", "how much of a published figure is protocol"),
    ("fair", "validation_free", "how much each method loses without validation"),
)


def gap_table(cells: Sequence[Cell], first: Setting, second: Setting, shots: int,
              meaning: str = PROTOCOL_GAPS[0][2]) -> Table | None:
    """``first - second`` (two protocols of one backbone and weights, e.g. ``paper - fair``)
    per method and dataset at ``shots`` (means over each side's seeds; the average column: the
    difference of the averages; entries starred where ``first`` 's are), or None when nothing
    is in both."""
    one, two = shot_table(cells, first, shots), shot_table(cells, second, shots)
    rows = tuple(m for m in one.rows if m in two.rows)
    columns = tuple(c for c in one.columns if c in two.columns)
    entries = {}
    for row in rows:
        for col in columns:
            a, b = one.entries.get((row, col)), two.entries.get((row, col))
            if a is not None and b is not None:
                entries[(row, col)] = Entry(a.mean - b.mean, None, a.seeds, None, a.optimistic,
                                            signed=True)
    if not entries:
        return None
    title = (f"{shots}-shot, {first.protocol} - {second.protocol} -- {first.backbone}, "
             f"weights {first.weights}: {meaning}")
    return Table(title, "method", rows, columns, entries)


def curve_table(cells: Sequence[Cell], setting: Setting, dataset: str) -> Table:
    """Methods x shots for one dataset, or for :data:`AVERAGE` over the setting's datasets."""
    mine = [c for c in cells if c.setting == setting]
    shots = tuple(sorted({c.shots for c in mine}))
    methods = tuple(dict.fromkeys(c.method for c in mine))
    entries: dict[tuple[str, str], Entry] = {}
    if dataset == AVERAGE:
        datasets = tuple(dict.fromkeys(c.dataset for c in mine))
        for method in methods:
            for k in shots:
                mine_k = [c for c in mine if c.method == method and c.shots == k]
                avg = average_entry(mine_k, datasets)
                if avg is not None:
                    entries[(method, str(k))] = avg
        label = f"average over {len(datasets)} datasets"
    else:
        entries = {(c.method, str(c.shots)): cell_entry(c) for c in mine if c.dataset == dataset}
        label = dataset
    return Table(f"accuracy vs shots, {label} -- {setting.title()}", "method \\ shots", methods,
                 tuple(str(k) for k in shots), entries)


def table_markdown(table: Table) -> str:
    """A Markdown table under a ``###`` title; missing entries are ``–``."""
    lines = [f"### {table.title}", "",
             "| " + " | ".join((table.corner,) + table.columns) + " |",
             "|" + "---|" * (len(table.columns) + 1)]
    for row in table.rows:
        texts = [table.entries[(row, col)].text() if (row, col) in table.entries else "–"
                 for col in table.columns]
        lines.append("| " + " | ".join([display_name(row)] + texts) + " |")
    return "\n".join(lines) + "\n"


def table_csv(tables: Sequence[tuple[Setting, Table]]) -> str:
    """Wide CSV of tables sharing one layout: setting fields, row, then mean/std per column."""
    if not tables:
        return ""
    columns = tuple(dict.fromkeys(c for _, t in tables for c in t.columns if c != AVERAGE))
    if any(AVERAGE in t.columns for _, t in tables):
        columns += (AVERAGE,)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["backbone", "weights", "protocol", "random_weights", "method"]
                    + [f"{c} {part}" for c in columns for part in ("mean", "std")])
    for setting, table in tables:
        for row in table.rows:
            values: list = []
            for col in columns:
                entry = table.entries.get((row, col))
                values += ["", ""] if entry is None else [
                    f"{entry.mean:.4f}", "" if entry.std is None else f"{entry.std:.4f}"]
            writer.writerow([setting.backbone, setting.weights, setting.protocol,
                             setting.random_weights, row] + values)
    return out.getvalue()


LONG_CSV_HEADER = ("backbone", "weights", "protocol", "random_weights", "method", "dataset",
                   "shots", "num_seeds", "seeds", "mean", "std", "optimistic", "published",
                   "ours_minus_published")


def long_csv(cells: Sequence[Cell], averages: Sequence[tuple[Setting, str, int, Entry]]) -> str:
    """One row per cell (and per average entry, dataset ``average``): machine-readable results."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LONG_CSV_HEADER)
    rows = [(c.setting, c.method, c.dataset, c.shots, cell_entry(c)) for c in cells]
    rows += [(s, m, AVERAGE, k, e) for s, m, k, e in averages]
    for setting, method, dataset, shots, entry in rows:
        pub = entry.published
        writer.writerow([
            setting.backbone, setting.weights, setting.protocol,
            setting.random_weights, method, dataset, shots, len(entry.seeds),
            " ".join(str(s) for s in entry.seeds), f"{entry.mean:.4f}",
            "" if entry.std is None else f"{entry.std:.4f}", entry.optimistic,
            "" if pub is None else f"{pub:.2f}", "" if pub is None else f"{entry.mean - pub:+.4f}",
        ])
    return out.getvalue()
