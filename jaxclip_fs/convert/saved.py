"""Converted-checkpoint directories (what ``jaxclip-fs convert`` writes).

Layout of ``DIR``::

    DIR/jaxclip_fs_clip.json   manifest: format, config, weights_id, is_random, source, version
    DIR/variables/             orbax checkpoint of the variables dict (params [+ batch_stats])
    DIR/vocab.json ...         tokenizer files copied from the source checkpoint, if it had any

The manifest keeps the *source's* ``weights_id``: a converted copy of some
weights has the same identity as the original, so feature caches keyed on it
stay valid. The directory is written under a temporary name and renamed into
place, so an interrupted convert leaves no half-written ``DIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import numpy as np

from jaxclip_fs import __version__
from jaxclip_fs.clip.variants import CLIPConfig
from jaxclip_fs.clip.model import flatten_variables
from jaxclip_fs.errors import CheckpointError, ConfigError
from jaxclip_fs.io import atomic

MANIFEST = "jaxclip_fs_clip.json"
FORMAT = "jaxclip-fs converted CLIP"
FORMAT_VERSION = 1
VARIABLES_DIR = "variables"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "bpe_simple_vocab_16e6.txt.gz", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json")


def is_converted_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST))


def save_converted(out_dir: str, config: CLIPConfig, variables: Mapping[str, Any],
                   weights_id: str, is_random: bool, source: str,
                   tokenizer_dir: str | None = None) -> None:
    """Writes ``variables`` and the manifest to ``out_dir`` (module docstring).

    Raises:
      ConfigError: ``out_dir`` exists and is not empty.
    """
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ConfigError(f"--out {out_dir}: already exists; remove it or choose another path")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=parent)
    try:
        host = {k: _to_numpy(v) for k, v in variables.items()}
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, VARIABLES_DIR), host)
            checkpointer.wait_until_finished()
        for name in TOKENIZER_FILES if tokenizer_dir else ():
            src = os.path.join(tokenizer_dir, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(tmp, name))
        atomic.write_json(os.path.join(tmp, MANIFEST), {
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
            "weights_id": weights_id, "is_random": is_random, "source": source,
            "jaxclip_fs_version": __version__,
        })
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path: str) -> dict[str, Any]:
    manifest_path = os.path.join(path, MANIFEST)
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{manifest_path}: not a '{FORMAT}' v{FORMAT_VERSION} manifest")
    for key in ("config", "weights_id", "is_random"):
        if key not in manifest:
            raise CheckpointError(f"{manifest_path}: key '{key}' missing")
    return manifest


def read_variables(path: str) -> dict[str, np.ndarray]:
    """The saved variables, flattened to ``{"params/visual/...": array}``."""
    import orbax.checkpoint as ocp

    target = os.path.join(os.path.abspath(path), VARIABLES_DIR)
    if not os.path.isdir(target):
        raise CheckpointError(f"{target}: missing (incomplete converted directory)")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(target)
    except Exception as exc:  # orbax / tensorstore raise many types for corrupt data
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"{target}: cannot restore ({type(exc).__name__}: {msg})") from None
    return {"/".join(k): np.asarray(v) for k, v in flatten_variables(restored).items()}


def tokenizer_dir(path: str) -> str | None:
    """``path`` if it holds tokenizer files, else None."""
    return path if any(os.path.isfile(os.path.join(path, n)) for n in TOKENIZER_FILES) else None


def _to_numpy(tree):
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
