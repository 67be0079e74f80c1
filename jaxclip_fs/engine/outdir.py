"""The sweep output directory: where everything goes, the run manifest, what is finished (no jax).

Layout of ``DIR``::

    DIR/manifest.json                               settings, grid (union of all reruns), history
    DIR/features/<dataset>.npz                      extracted feature files (reused by reruns)
    DIR/features/<ood set>.ood.npz                  test features of out-of-distribution sets
    DIR/records/<method>/<dataset>/shots<K>_seed<S>.json   one result record per cell
    DIR/params/<method>/<datasets>-<digest>/        orbax checkpoint of a program's fitted params
    DIR/confusion/ldc/<dataset>/shots<K>_seed<S>.*  LDC's confusion analysis (JSON, PNG)
    DIR/report/                                     `jaxclip-fs report DIR` output

Every file is written atomically, and a cell's record is written only after
its program's params are saved, so **a record on disk means the cell is
finished**: a rerun skips it. An interruption loses at most the programs in
flight.

The manifest's ``settings`` (backbone, weights, views, validation policy,
fixed hyperparameters ...) shape every number, so a rerun into the same
directory must repeat them exactly -- otherwise a one-line error names the
conflicting argument. The ``grid`` (methods, datasets, shots, seeds) may grow:
a rerun with more of them extends the directory, and the manifest keeps the union.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Mapping, Sequence

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.io import atomic
from jaxclip_fs.io.records import code_version
from jaxclip_fs.sweep.cells import Cell, Program

MANIFEST = "manifest.json"
FORMAT = "jaxclip-fs run"
FORMAT_VERSION = 1
GRID_FLAGS = ("--method", "--dataset", "--shots", "--seeds", "--ood")


def safe_name(name: str) -> str:
    """A dataset name usable as a path component (``folder:/a/b`` -> ``folder__a_b``)."""
    return name.replace(os.sep, "_").replace(":", "_")


def record_path(out_dir: str, cell: Cell) -> str:
    return os.path.join(out_dir, "records", cell.method, safe_name(cell.dataset),
                        f"shots{cell.shots}_seed{cell.seed}.json")


def params_path(out_dir: str, program: Program) -> str:
    return os.path.join(out_dir, "params", program.method, program.key)


def save_params(out_dir: str, program: Program, tree, slots) -> str:
    """Saves a program's params (leaves ``[G, T, ...]``) with which cell each row is; returns
    the checkpoint's path relative to ``out_dir`` (for the records)."""
    from jaxclip_fs.io import checkpoints

    path = params_path(out_dir, program)
    checkpoints.save_tree(path, tree, {
        "program": program.name, "method": program.method, "datasets": list(program.datasets),
        "layout": "leaves are [G, T, ...]: slots[g][t] is the cell (null: padding)",
        "slots": [[None if c is None else dataclasses.asdict(c) for c in row] for row in slots],
    })
    return os.path.relpath(path, out_dir)


def features_path(out_dir: str, dataset: str) -> str:
    return os.path.join(out_dir, "features", f"{safe_name(dataset)}.npz")


def confusion_prefix(out_dir: str, cell: Cell) -> str:
    """``<prefix>.json`` / ``.png``: LDC's confusion analysis of a cell."""
    return os.path.join(out_dir, "confusion", cell.method, safe_name(cell.dataset),
                        f"shots{cell.shots}_seed{cell.seed}")


def ood_features_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, "features", f"{safe_name(name)}.ood.npz")


def is_finished(out_dir: str, cell: Cell) -> bool:
    """A record on disk means the cell is finished (records are written last, atomically)."""
    return os.path.isfile(record_path(out_dir, cell))


def read_manifest(out_dir: str) -> dict | None:
    """The manifest of ``out_dir``, or None if it has none.

    Raises:
      ConfigError: unreadable, or not a run manifest (names the file).
    """
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable run manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a '{FORMAT}' manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: manifest version {manifest.get('format_version')}, "
                          f"this code writes {FORMAT_VERSION}; use another --out")
    return manifest


def _canonical(value: Any) -> Any:
    """JSON round trip, so tuples compare equal to the lists read back."""
    return json.loads(json.dumps(value))


def merge_manifest(out_dir: str, settings: Mapping[str, Any], grid: Mapping[str, Sequence],
                   argv: Sequence[str] | None = None) -> dict:
    """Checks this invocation against ``out_dir``'s manifest and returns the updated manifest.

    Args:
      settings: ``{flag: value}`` of every argument that shapes the numbers.
      grid: ``{flag: values}`` for :data:`GRID_FLAGS`.
      argv: the command line, recorded in the history.

    Raises:
      ConfigError: a setting differs from the one the directory was made with
        (one line naming the argument and both values).
    """
    settings = _canonical(dict(settings))
    grid = _canonical({flag: list(grid.get(flag, [])) for flag in GRID_FLAGS})
    old = read_manifest(out_dir)
    if old is None:
        merged_grid = grid
        history = []
    else:
        previous = old.get("settings", {})
        for flag in sorted(set(previous) | set(settings)):
            if previous.get(flag) != settings.get(flag):
                raise ConfigError(
                    f"{out_dir} was run with {flag} {_show(previous.get(flag))}, not "
                    f"{_show(settings.get(flag))}: repeat it to resume or extend, "
                    "or use another --out")
        merged_grid = {}
        for flag in GRID_FLAGS:
            values = list(old["grid"].get(flag, [])) + [v for v in grid[flag]
                                                        if v not in old["grid"].get(flag, [])]
            merged_grid[flag] = sorted(values) if flag in ("--shots", "--seeds") else values
        history = list(old.get("invocations", []))
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    history.append({"time": now, "code_version": code_version(), "grid": grid,
                    **({"argv": list(argv)} if argv is not None else {})})
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings,
            "grid": merged_grid, "invocations": history}


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value)


def write_manifest(out_dir: str, manifest: Mapping[str, Any]) -> None:
    atomic.write_json(os.path.join(out_dir, MANIFEST), dict(manifest))
