"""``jaxclip-fs report DIR``: records -> Markdown, CSV and PNG files.

Written to ``OUT`` (default ``DIR/report``), atomically:

* ``report.md`` -- per setting: one methods x datasets table per shot count
  (with the average column and published numbers), then accuracy-vs-shots
  tables per dataset and for the average;
* ``results.csv`` -- one row per (setting, method, dataset, shots) and per
  average: seeds, mean, std, published, difference;
* ``table_<K>shot.csv`` -- the per-shot tables, wide (mean / std per dataset);
* ``accuracy_vs_shots_<dataset>.png`` and ``accuracy_vs_shots_average.png``
  (prefixed by a setting tag when ``DIR`` holds several settings; the dataset
  made a safe path component, :func:`~jaxclip_fs.io.paths.safe_name`).

Records come from other people (shared runs, downloaded results): every
file is checked to land inside ``OUT``, and a record that cannot enter a table
(unreadable, a non-numeric or non-finite accuracy ...) is named on stderr and
left out while the rest is reported.

Random-weights settings are flagged in the titles of every table, in the CSV
``random_weights`` column, on every plot, and in a banner atop ``report.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Callable, Sequence

from jaxclip_fs.errors import ConfigError, OutputError
from jaxclip_fs.io import atomic
from jaxclip_fs.io.console import stderr_log
from jaxclip_fs.io.outputs import show_unsaved, writing
from jaxclip_fs.io.paths import inside, safe_name
from jaxclip_fs import catalogue
from jaxclip_fs.report.collect import Cell, Setting, load_records, summarize
from jaxclip_fs.report.plots import plot_curves
from jaxclip_fs.report.tables import (
    PROTOCOL_GAPS, Table, curve_table, gap_table, long_csv, shot_table, table_csv, table_markdown,
)

RANDOM_BANNER = ("**RANDOM WEIGHTS** -- results marked so were computed with randomly "
                 "initialised CLIP weights: they only show that the pipeline runs, not what the "
                 "methods achieve.")


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote, and the text to print.

    Attributes:
      out_dir: the report directory.
      markdown, results_csv: paths.
      shot_csvs: ``{shots: path}``.
      plots: paths of the PNGs.
      summary: the main tables as Markdown (what ``jaxclip-fs report`` prints).
      cells: the aggregated cells.
    """

    out_dir: str
    markdown: str
    results_csv: str
    shot_csvs: dict[int, str]
    plots: tuple[str, ...]
    summary: str
    cells: tuple[Cell, ...]


def setting_tag(setting: Setting) -> str:
    """A file-name-safe tag for a setting (no ``_``, at most 80 characters; not unique:
    :func:`setting_tags`)."""
    text = f"{setting.backbone}_{setting.weights}_{setting.protocol}"
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[:80] or "setting"


def setting_tags(settings: Sequence[Setting]) -> dict[Setting, str]:
    """A distinct :func:`setting_tag` per setting: tags that two settings share get a digest of
    their setting appended, so no setting's plots overwrite another's."""
    tags = {s: setting_tag(s) for s in settings}
    shared = {t for t in tags.values() if list(tags.values()).count(t) > 1}
    for s in settings:
        if tags[s] in shared:
            digest = hashlib.sha256(repr(dataclasses.astuple(s)).encode(
                "utf-8", "backslashreplace")).hexdigest()[:10]
            tags[s] = f"{tags[s][:69]}-{digest}"
    return tags


def plot_name(prefix: str, dataset: str) -> str:
    """``<prefix>accuracy_vs_shots_<dataset>.png``, the dataset's name made a safe path
    component (:func:`~jaxclip_fs.io.paths.safe_name`; the average keeps its name)."""
    return f"{prefix}accuracy_vs_shots_{safe_name(dataset)}.png"


def _settings(cells: Sequence[Cell]) -> list[Setting]:
    return list(dict.fromkeys(c.setting for c in cells))


#: What each protocol gap's section says (``PROTOCOL_GAPS`` order).
GAP_NOTES = {
    ("paper", "fair"): (
        "Each entry: the `paper` protocol's mean minus the `fair` protocol's (same backbone, "
        "weights, dataset, shots): how much of a published gain comes from the official "
        "protocol (selection on test, maxima over test heads, other prompts, other few-shot "
        "draws) rather than from the method."),
    ("fair", "validation_free"): (
        "Each entry: the `fair` protocol's mean minus the `validation_free` protocol's (same "
        "backbone, weights, dataset, shots): how much each method owes to its validation set "
        "-- `fair` chooses epochs and hyperparameters on the whole val split, "
        "`validation_free` runs fixed default hyperparameters to the final epoch and reads no "
        "validation image."),
}


def protocol_gaps(cells: Sequence[Cell], settings: Sequence[Setting],
                  pair: tuple[str, str] = ("paper", "fair")) -> list[Table]:
    """``first - second`` tables of the protocols in ``pair`` (:data:`PROTOCOL_GAPS`), per shot
    count, for every backbone and weights run both ways."""
    meaning = {(a, b): m for a, b, m in PROTOCOL_GAPS}[pair]
    tables = []
    for first in (s for s in settings if s.protocol == pair[0]):
        second = dataclasses.replace(first, protocol=pair[1])
        if second not in settings:
            continue
        for shots in sorted({c.shots for c in cells if c.setting == first}, reverse=True):
            table = gap_table(cells, first, second, shots, meaning)
            if table is not None:
                tables.append(table)
    return tables


def default_out_dir(records_path: str | os.PathLike) -> str:
    """``<records_path>/report`` (next to a records file: ``<its directory>/report``)."""
    records_path = os.fspath(records_path)
    base = records_path if os.path.isdir(records_path) else os.path.dirname(records_path)
    return os.path.join(base, "report")


def write_report(records_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 plots: bool = True, show=show_unsaved,
                 log: Callable[[str], None] | None = stderr_log) -> ReportFiles:
    """Builds every table and plot from the records under ``records_path``.

    Every file goes into ``out_dir``, checked (:func:`~jaxclip_fs.io.paths.inside`):
    names read from records become safe path components.

    Args:
      records_path: a sweep directory (or any directory / file of records).
      out_dir: default ``<records_path>/report`` (a directory path given).
      plots: draw the PNGs (matplotlib).
      show: prints the tables when the files cannot be written (default: stdout).
      log: names each file left out (unreadable, or a malformed record) on one line.

    Raises:
      ConfigError: no records found, or contradictory records.
      OutputError: a file could not be written (names it); the tables were shown first.
    """
    records_path = os.fspath(records_path)
    records = load_records(records_path, warn=log)
    if not records:
        raise ConfigError(f"{records_path}: no result records found (JSON files with method, "
                          "dataset, shots, seed, accuracy)")
    cells = summarize(records)
    out_dir = os.fspath(default_out_dir(records_path) if out_dir is None else out_dir)
    settings = _settings(cells)
    tags = setting_tags(settings)
    random_any = any(s.random_weights for s in settings)

    doc = [f"# Results: {len(records)} records from {records_path}", ""]
    if random_any:
        doc += [RANDOM_BANNER, ""]
    doc += ["Entries: mean ± std over seeds (top-1 %, std with ddof=0; one seed: no std). "
            f"[x] = published number ({catalogue.PUBLISHED_SOURCE}).", ""]
    summary: list[str] = []
    shot_tables: dict[int, list[tuple[Setting, Table]]] = {}
    averages = []
    plot_paths: list[str] = []
    plot_jobs: list[tuple[Table, str, Setting]] = []  # drawn once every table is composed
    for setting in settings:
        mine = [c for c in cells if c.setting == setting]
        datasets = list(dict.fromkeys(c.dataset for c in mine))
        doc += [f"## {setting.title()}", ""]
        for shots in sorted({c.shots for c in mine}, reverse=True):
            table = shot_table(cells, setting, shots)
            shot_tables.setdefault(shots, []).append((setting, table))
            doc.append(table_markdown(table))
            if len(datasets) > 1:
                summary.append(table_markdown(table))
                for method in table.rows:
                    avg = table.entries.get((method, catalogue.AVERAGE))
                    if avg is not None:
                        averages.append((setting, method, shots, avg))
        curve_names = datasets + ([catalogue.AVERAGE] if len(datasets) > 1 else [])
        prefix = "" if len(settings) == 1 else tags[setting] + "_"
        for name in curve_names:
            table = curve_table(cells, setting, name)
            doc.append(table_markdown(table))
            if plots:
                path = inside(out_dir, plot_name(prefix, name))
                plot_jobs.append((table, path, setting))
                plot_paths.append(path)
        # printed: per-shot tables and the average curve; for one dataset, its curve table
        summary.append(table_markdown(curve_table(cells, setting, curve_names[-1])))
    for first, second, _ in PROTOCOL_GAPS:
        gaps = protocol_gaps(cells, settings, (first, second))
        if gaps:
            doc += [f"## Protocol gap: {first} - {second}", "", GAP_NOTES[first, second], ""]
            doc += [table_markdown(t) for t in gaps]
            summary += [table_markdown(t) for t in gaps]

    head = [RANDOM_BANNER.replace("**", ""), ""] if random_any else []
    text = "\n".join(head + summary)
    markdown = inside(out_dir, "report.md")
    results_csv = inside(out_dir, "results.csv")
    files = [(markdown, "\n".join(doc)), (results_csv, long_csv(cells, averages))]
    shot_csvs = {}
    for shots, tables in sorted(shot_tables.items()):
        shot_csvs[shots] = inside(out_dir, f"table_{int(shots)}shot.csv")
        files.append((shot_csvs[shots], table_csv(tables)))
    try:
        for path, content in files:
            with writing(path):
                atomic.write_bytes(path, content.encode())
        for table, path, setting in plot_jobs:
            with writing(path):
                plot_curves(table, path, subtitle=setting.title(),
                            random_weights=setting.random_weights)
    except OutputError as exc:
        show(text)
        raise OutputError(f"{exc}; the report's tables are printed on stdout") from None
    return ReportFiles(out_dir, markdown, results_csv, shot_csvs, tuple(plot_paths), text,
                       tuple(cells))


__all__ = ["ReportFiles", "write_report"]
