"""Result records: one JSON object per run, with the provenance that makes it comparable.

Every record names backbone, weights (or "random"), dataset, split policy,
tokenizer, shots, seed, method, hyperparameters and code version; results (accuracy,
seconds, ...) follow. Written atomically, so a reader never sees half a record.
"""

from __future__ import annotations

import functools
import os
import subprocess
from typing import Any, Mapping

from jaxclip_fs import __version__
from jaxclip_fs.io import atomic

UNKNOWN = "unknown"
PROVENANCE_FIELDS = ("backbone", "weights", "dataset", "split_policy")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``"<package version>+g<commit>"`` in a git checkout, else the package version."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "-C", package_dir, "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" if commit else __version__


def build_record(*, method: str, shots: int, seed: int, hyperparameters: Mapping[str, Any],
                 provenance: Mapping[str, Any], **results: Any) -> dict:
    """A result record.

    Args:
      method: registry name.
      shots, seed: the few-shot set.
      hyperparameters: name -> value actually used.
      provenance: source of ``backbone``, ``weights``, ``dataset``,
        ``split_policy`` and ``tokenizer_id`` (recorded as ``tokenizer``: which
        vocabulary made the text classifier, e.g. a feature file's ``meta``);
        missing ones are recorded as ``"unknown"``.
      **results: anything else (``accuracy``, ``seconds`` ...), after the
        provenance fields.

    Returns:
      dict in a fixed key order, JSON-serialisable if ``results`` are.
    """
    record: dict[str, Any] = {"method": method}
    for field in PROVENANCE_FIELDS:
        value = provenance.get(field)
        record[field] = UNKNOWN if value in (None, "") else value
    record["tokenizer"] = provenance.get("tokenizer_id") or UNKNOWN
    record.update(shots=int(shots), seed=int(seed),
                  hyperparameters=dict(hyperparameters),
                  code_version=code_version())
    record.update(results)
    return record


def write_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Atomically writes ``record`` as JSON to ``path``."""
    atomic.write_json(path, dict(record))


def searched_summary(record: Mapping[str, Any]) -> str:
    """``"alpha=2, beta=1.5"``: the hyperparameters a record chose by search ("" if none)."""
    return ", ".join(f"{k}={v:g}" for k, v in record["hyperparameters"].items()
                     if k in record["searched"])
