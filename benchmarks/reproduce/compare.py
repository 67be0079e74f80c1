"""Our records vs the published numbers, cell by cell, in tolerance bands.

For every (method, dataset or ``average``, shots) of a config, the mean over
its seeds of our records with the config's backbone, real weights and
protocol is compared with the published number (``jaxclip_fs.catalogue``):
it **passes** when ``|ours - published| <= band(method)``. Only ``paper``
records are held to the bands (they are made as the published numbers
were); a ``fair`` twin's records are *reported* beside the published
numbers -- the difference is the protocol gap, not a failure.

Bands (percentage points, in the config) are our choice, not the papers':
zero-shot CLIP is deterministic given the weights, so only preprocessing and
prompt details separate us (1.0); training-free methods add the difference
between our validation-only selection and the official searches (1.5);
trained methods also their training noise and the official code's selection
of epochs on test (2.0).

Statuses: ``pass``, ``FAIL``, ``missing`` (a published number but no record
for it), ``incomplete`` (fewer seeds than the config's), ``reported`` (ours,
no published number to compare with).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from jaxclip_fs.catalogue import AVERAGE, is_random_weights, published
from jaxclip_fs.report.collect import Cell, summarize
from jaxclip_fs.report.tables import average_entry

PASSING = ("pass", "reported")


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison: ours (mean, std over ``seeds``) vs published, within ``band``."""

    method: str
    dataset: str
    shots: int
    ours: float | None
    std: float | None
    seeds: tuple[int, ...]
    published: float | None
    band: float
    status: str


def _status(ours: float | None, seeds: Sequence[int], expected_seeds: int, pub: float | None,
            band: float, held: bool = True) -> str:
    if ours is None:
        return "missing" if pub is not None else "not run"
    if len(seeds) < expected_seeds:
        return "incomplete"
    if pub is None or not held:
        return "reported"
    return "pass" if abs(ours - pub) <= band else "FAIL"


def relevant_records(records: Sequence[Mapping], config: Mapping) -> list[Mapping]:
    """The records of the config's setting: backbone, real weights, protocol."""
    return [r for r in records
            if r.get("backbone") == config["backbone"]
            and not is_random_weights(r.get("weights", ""))
            and r.get("protocol") == config["protocol"] and r.get("method") in config["methods"]]


def compare(records: Sequence[Mapping], config: Mapping) -> list[Check]:
    """Every check of ``config`` (module docstring), in config order, averages last."""
    cells = summarize(relevant_records(records, config))
    weights = {c.setting.weights for c in cells}
    weight = next(iter(weights)) if len(weights) == 1 else "real"
    by_key: dict[tuple, Cell] = {(c.method, c.dataset, c.shots): c for c in cells}
    datasets = list(config["datasets"]) + list(config.get("ood", []))
    expected = len(config["seeds"])
    held = config["protocol"] == "paper"
    checks = []
    for shots in config["compare_shots"]:
        for method in config["methods"]:
            band = float(config["bands"].get(method, max(config["bands"].values())))
            for dataset in datasets:
                cell = by_key.get((method, dataset, shots))
                pub = published(config["backbone"], weight, shots, method, dataset)
                ours = None if cell is None else cell.mean
                seeds = () if cell is None else cell.seeds
                std = None if cell is None else cell.std
                checks.append(Check(method, dataset, shots, ours, std, seeds, pub, band,
                                    _status(ours, seeds, expected, pub, band, held)))
            if len(config["datasets"]) > 1:
                mine = [by_key[(method, d, shots)] for d in config["datasets"]
                        if (method, d, shots) in by_key]
                entry = average_entry(mine, config["datasets"])
                pub = published(config["backbone"], weight, shots, method, AVERAGE)
                ours = None if entry is None else entry.mean
                seeds = () if entry is None else entry.seeds
                std = None if entry is None else entry.std
                checks.append(Check(method, AVERAGE, shots, ours, std, seeds, pub, band,
                                    _status(ours, seeds, expected, pub, band, held)))
    return checks


def format_checks(checks: Sequence[Check]) -> str:
    """A fixed-width table, one line per check, then a count per status."""
    lines = [f"{'method':14s} {'dataset':16s} {'shots':>5s} {'ours':>14s} {'published':>9s} "
             f"{'diff':>6s} {'band':>5s}  status"]
    for c in checks:
        ours = "–" if c.ours is None else f"{c.ours:.2f}"
        if c.ours is not None and c.std is not None:
            ours += f" ± {c.std:.2f}"
        pub = "–" if c.published is None else f"{c.published:.2f}"
        diff = "" if c.ours is None or c.published is None else f"{c.ours - c.published:+.2f}"
        lines.append(f"{c.method:14s} {c.dataset:16s} {c.shots:5d} {ours:>14s} {pub:>9s} "
                     f"{diff:>6s} {c.band:5.1f}  {c.status}")
    counts: dict[str, int] = {}
    for c in checks:
        counts[c.status] = counts.get(c.status, 0) + 1
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items()))
    return "\n".join(lines)


def all_passed(checks: Sequence[Check]) -> bool:
    """True when nothing failed, is missing or incomplete ("not run": no published number)."""
    return all(c.status in PASSING or c.status == "not run" for c in checks)
