"""The run directory: where everything goes, the manifest, what is finished (no jax).

Layout of ``DIR``::

    DIR/config.json                                 the experiment config of the last invocation
    DIR/manifest.json                               fixed settings, grid (all reruns), history
    DIR/features/<dataset>.npz                      extracted feature files (reused by reruns)
    DIR/features/<ood set>.ood.npz                  test features of out-of-distribution sets
    DIR/records/<protocol>/<method>/<dataset>/shots<K>_seed<S>.json   one record per cell
    DIR/params/<protocol>/<method>/<datasets>-<digest>/   orbax checkpoint of a program's params
    DIR/confusion/<protocol>/<method>/<dataset>/shots<K>_seed<S>.*   class-confusion analyses
    DIR/report/                                     `jaxclip-fs report DIR` output

(``<method>`` is the variant label, e.g. ``ldc--fusion-concat`` for
``ldc[fusion=concat]``: :func:`safe_name`.) Every file
is written atomically, and a cell's record is written only after its
program's params are saved, so **a record on disk means the cell is
finished**: a rerun skips it (a record file that is unreadable or incomplete
is reported, naming it, and its cell recomputed: :func:`is_finished`). An
interruption loses at most the programs in flight.

The manifest's ``settings`` (the config's ``fixed`` fields, as each field
declares: :data:`~jaxclip_fs.experiment.config.SETTINGS` -- plus the
provenance of given feature files) shape every number, so a rerun into the
same directory must repeat them exactly, and a variant's own
hyperparameters may not change -- otherwise a one-line error names the
field. The ``grid`` (the ``grid`` fields by axis: method variants, datasets,
OOD sets, protocols, shots, seeds) may grow: a rerun with more of them
extends the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment.plan import Cell, Program
from jaxclip_fs.io import atomic
from jaxclip_fs.io.paths import inside, safe_name
from jaxclip_fs.io.records import code_version

MANIFEST = "manifest.json"
CONFIG = "config.json"
FORMAT = "jaxclip-fs run"
FORMAT_VERSION = 2
GRID_KEYS = config_lib.GRID_AXES


def record_path(out_dir: str, cell: Cell) -> str:
    return inside(out_dir, "records", safe_name(cell.protocol), safe_name(cell.method),
                  safe_name(cell.dataset), f"shots{cell.shots}_seed{cell.seed}.json")


def params_path(out_dir: str, program: Program) -> str:
    return inside(out_dir, "params", safe_name(program.protocol), safe_name(program.method),
                  program.key)


def features_dir(out_dir: str) -> str:
    return inside(out_dir, "features")


def confusion_prefix(out_dir: str, cell: Cell) -> str:
    """``<prefix>.json`` / ``.png``: the class-confusion analysis of a cell."""
    return inside(out_dir, "confusion", safe_name(cell.protocol), safe_name(cell.method),
                  safe_name(cell.dataset), f"shots{cell.shots}_seed{cell.seed}")


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


#: Fields every record has (:func:`~jaxclip_fs.engine.results.cell_records`); one
#: without them is incomplete.
RECORD_FIELDS = ("method", "dataset", "shots", "seed", "accuracy", "hyperparameters",
                 "code_version")


def record_problem(path: str, cell: Cell) -> str | None:
    """Why the record file at ``path`` does not finish ``cell`` (None: it does).

    A record is finished when it is a readable JSON object with every
    :data:`RECORD_FIELDS` field, a finite numeric accuracy, and names this cell's
    method (variant label), shots, seed and protocol (the dataset is in its path; its
    ``dataset`` field is the provenance's name, e.g. of a folder dataset).
    """
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        return f"unreadable ({' '.join(str(exc).split()) or type(exc).__name__})"
    if not isinstance(record, dict):
        return f"incomplete (a JSON {type(record).__name__}, not a record)"
    missing = [k for k in RECORD_FIELDS if k not in record]
    if missing:
        return f"incomplete (no {', '.join(missing)})"
    accuracy = record["accuracy"]
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)):
        return f"incomplete (accuracy {accuracy!r} is not a number)"
    if not math.isfinite(accuracy):
        return f"malformed (accuracy {accuracy!r} is not a finite number)"
    expected = {"method": cell.method, "shots": cell.shots, "seed": cell.seed,
                "protocol": cell.protocol}
    for key, value in expected.items():
        if record.get(key) != value:
            return f"not this cell's record ({key} {record.get(key)!r}, expected {value!r})"
    return None


def is_finished(out_dir: str, cell: Cell, log: Callable[[str], None] | None = None) -> bool:
    """A complete record on disk means the cell is finished (records are written last,
    atomically). A record file that is unreadable or incomplete (:func:`record_problem`:
    truncated by a crash outside this code, edited, copied half-way) does not: ``log``
    names it, and the cell is recomputed (its record then replaced).
    """
    path = record_path(out_dir, cell)
    if not os.path.isfile(path):
        return False
    problem = record_problem(path, cell)
    if problem is None:
        return True
    if log is not None:
        log(f"warning: record {path} is {problem}: recomputing its cell")
    return False


# --- the manifest ------------------------------------------------------------------------------


def read_manifest(out_dir: str) -> dict | None:
    """The manifest of ``out_dir``, or None if it has none.

    Raises:
      ConfigError: unreadable, or not a run manifest of this version (names the file).
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


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for one-line messages naming a field)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def has_records(out_dir: str) -> bool:
    """Does ``out_dir`` hold any record file (a finished cell)?"""
    for _, dirs, files in os.walk(os.path.join(out_dir, "records")):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(f.endswith(".json") and not f.startswith(".") for f in files):
            return True
    return False


def is_leftover(name: str) -> bool:
    """A temporary file or folder of an interrupted atomic write (``.<name>.<random>.tmp...``,
    ``....old``: :mod:`~jaxclip_fs.io.atomic`, :mod:`~jaxclip_fs.io.checkpoints`)."""
    return name.startswith(".") and (".tmp" in name or name.endswith(".old"))


#: The folders a run writes into (:func:`remove_leftovers` looks nowhere else).
WRITTEN_DIRS = ("records", "params", "features", "confusion", "report")


def remove_leftovers(out_dir: str) -> int:
    """Removes what interrupted writes left in the run's own files and folders of ``out_dir``
    (call with its lock held: no other run is writing); returns how many entries went."""
    removed = 0
    if os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            if is_leftover(name) and name.startswith((f".{MANIFEST}.", f".{CONFIG}.")):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(out_dir, name))
                    removed += 1
    for root, dirs, files in (entry for folder in WRITTEN_DIRS
                              for entry in os.walk(os.path.join(out_dir, folder))):
        for name in [d for d in dirs if is_leftover(d)]:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            dirs.remove(name)
            removed += 1
        for name in filter(is_leftover, files):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(root, name))
                removed += 1
    return removed


#: The path encoding of this version (:func:`~jaxclip_fs.io.paths.safe_name`); manifests
#: without it were written with :func:`_legacy_name`.
PATH_ENCODING = 2


def _legacy_name(name: str) -> str:
    """The path component earlier versions gave a name (not injective: ``/`` and ``:`` -> ``_``)."""
    name = name.replace("[", "--").replace("]", "").replace(",", "--").replace("=", "-")
    return name.replace(os.sep, "_").replace(":", "_")


def _check_path_encoding(out_dir: str, old: Mapping[str, Any], names: Sequence[str]) -> None:
    """A directory written before :data:`PATH_ENCODING` resumes where every name of this
    invocation's cells (method variants, datasets, protocols) keeps its path; else one
    line says why it cannot."""
    if old.get("path_encoding") == PATH_ENCODING:
        return
    for name in sorted(set(names)):
        if safe_name(name) != _legacy_name(name):
            raise ConfigError(
                f"{out_dir} was written by an earlier version, whose record paths for "
                f"'{name}' are not unique to it (now {safe_name(name)}): it cannot be resumed "
                "or extended; use another --out (`jaxclip-fs report` still reads it)")


def _migrated(settings: Mapping[str, Any]) -> dict:
    """Settings of an earlier manifest as this version writes them: IMO adapters are an input
    (:func:`check_input`), the source is ``data.source``, a fixed field the manifest lacks
    was written before it existed (it had its default), and relative paths are taken from
    the current directory."""
    settings = json.loads(json.dumps(settings))
    model = settings.get("model", {})
    model.pop("imo_adapters", None)
    if "source" in settings:
        settings.setdefault("data", {})["source"] = settings.pop("source")
    for s in (s for s in config_lib.SETTINGS if s.rerun == config_lib.FIXED):
        *sections, name = s.path.split(".")
        inner = settings
        for section in sections:
            inner = inner.setdefault(section, {})
        inner.setdefault(name, _canonical(s.default))
    for section, key in (("model", "weights"), ("protocol", "prompts")):
        value = settings.get(section, {}).get(key)
        if isinstance(value, str) and value and not os.path.isabs(value) and os.path.exists(value):
            settings[section][key] = os.path.abspath(value)
    return settings


def merge_manifest(out_dir: str, config: config_lib.ExperimentConfig,
                   provenance: Mapping[str, Any] | None = None,
                   argv: Sequence[str] | None = None, *,
                   old: Mapping[str, Any] | None | str = "read",
                   datasets: Sequence[str] | None = None) -> dict:
    """Checks this invocation against ``out_dir``'s manifest and returns the updated manifest.

    Args:
      config: this invocation's experiment config.
      provenance: further fixed settings (e.g. the backbone of given feature files).
      argv: the command line, recorded in the history.
      old: the manifest to check against (None: a fresh directory); default: read it.
      datasets: the names of this invocation's datasets (default: the config's; feature
        files name theirs).

    Raises:
      ConfigError: a fixed setting or a variant's hyperparameters differ from
        the directory's (one line naming the field and both values), or the
        directory's paths were written by an earlier version for names whose
        paths changed.
    """
    settings = _canonical({**config.fixed_settings(), **({"inputs": dict(provenance)}
                                                         if provenance else {})})
    method_hp = _canonical(config.method_hp())
    grid = _canonical(config.grid_lists())
    if old == "read":
        old = read_manifest(out_dir)
    if old is None:
        merged_grid, merged_hp, history, inputs = grid, method_hp, [], {}
    else:
        _check_path_encoding(out_dir, old, [*grid["methods"], *grid["protocols"], *grid["ood"],
                                            *(config.data.datasets if datasets is None
                                              else datasets)])
        field = settings_difference(old, settings)
        if field is not None:
            was, now = field[1:]
            raise ConfigError(
                f"{out_dir} was run with {field[0]} = {_show(was)}, not {_show(now)}: repeat it "
                "to resume or extend, or use another --out")
        merged_hp = dict(old.get("method_hp", {}))
        for label, hp in method_hp.items():
            if label in merged_hp and merged_hp[label] != hp:
                raise ConfigError(
                    f"{out_dir} ran {label} with hp {_show(merged_hp[label])}, not {_show(hp)}: "
                    "repeat it to resume, or use another --out")
            merged_hp[label] = hp
        merged_grid = {}
        for key in GRID_KEYS:
            before = list(old["grid"].get(key, []))
            values = before + [v for v in grid[key] if v not in before]
            merged_grid[key] = sorted(values) if key in ("shots", "seeds") else values
        history = list(old.get("invocations", []))
        inputs = dict(old.get("inputs", {}))
    now_time = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    history.append({"time": now_time, "code_version": code_version(), "grid": grid,
                    **({"argv": list(argv)} if argv is not None else {})})
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "path_encoding": PATH_ENCODING,
            "settings": settings, "inputs": inputs, "method_hp": merged_hp, "grid": merged_grid,
            "invocations": history}


def settings_difference(old: Mapping[str, Any],
                        settings: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first fixed setting (``field``, was, now) in which ``settings`` differ from the
    manifest ``old``'s, or None."""
    was, now = _flat(_migrated(old["settings"])), _flat(settings)
    for field in sorted(set(was) | set(now)):
        if was.get(field) != now.get(field):
            return field, was.get(field), now.get(field)
    return None


def describe_input(key: str) -> str:
    """``features:dtd`` -> ``the features of dtd`` (for messages)."""
    kind, _, name = key.partition(":")
    return {"features": f"the features of {name}", "dataset": f"the data of {name}",
            "weights": "the weights", "tokenizer": "the tokenizer",
            "imo_adapters": "the IMO adapters"}.get(kind, key)


def check_input(out_dir: str, manifest: dict, key: str, digest: str, source: str) -> bool:
    """Checks one input's identity against the run's (``manifest["inputs"]``) and adds it.

    Args:
      key: which input (``features:<dataset>``, ``dataset:<name>``, ``weights``,
        ``tokenizer``, ``imo_adapters``).
      digest: its content identity (a digest; for random weights their seed).
      source: where it came from (a path, a weights spec), for the message.

    Returns:
      True when the input is new to the manifest (added), False when it was there.

    Raises:
      ConfigError: the run directory's records were computed with other content
        (one line naming the input and both identities).
    """
    inputs = manifest.setdefault("inputs", {})
    known = inputs.get(key)
    if known is not None:
        if known.get("digest") == digest:
            return False
        was = known.get("source")
        raise ConfigError(
            f"{out_dir} was run with {describe_input(key)} {known.get('digest')}"
            f"{f' ({was})' if was != source else ''}, not {digest} ({source}): its records "
            "were computed from the earlier one; restore it to resume or extend, or use "
            "another --out")
    inputs[key] = {"digest": digest, "source": source}
    return True


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value)


def write_manifest(out_dir: str, manifest: Mapping[str, Any],
                   config: config_lib.ExperimentConfig) -> None:
    """Writes ``manifest.json`` and this invocation's ``config.json``."""
    atomic.write_json(os.path.join(out_dir, MANIFEST), dict(manifest))
    config_lib.save(os.path.join(out_dir, CONFIG), config)
