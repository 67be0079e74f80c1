"""Orbax checkpoints of parameter pytrees, written atomically, with JSON metadata.

Layout of a checkpoint directory ``PATH``::

    PATH/tree/            orbax StandardCheckpointer checkpoint of the pytree (numpy leaves)
    PATH/metadata.json    what the tree is (e.g. which task each leading-axis row belongs to)

The whole directory is assembled under a temporary name next to ``PATH`` and
renamed into place, so a reader (or a resumed run) never sees half a
checkpoint; an existing ``PATH`` is replaced only once the new one is
complete. Leaves are copied to host memory first, so sharded arrays are
gathered.

Multi-host: the caller decides which process writes (the sweep engine:
process 0); that process saves alone (orbax is told it is the only active
process), so no cross-host barrier is entered.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import numpy as np

from jaxclip_fs.errors import CheckpointError
from jaxclip_fs.io import atomic

TREE_DIR = "tree"
METADATA_FILE = "metadata.json"


def _host_tree(tree):
    if isinstance(tree, Mapping):
        return {str(k): _host_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _host_tree(v) for i, v in enumerate(tree)}
    return np.asarray(tree)


def _checkpointer():
    import jax
    import orbax.checkpoint as ocp

    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.StandardCheckpointer(multiprocessing_options=options)


def save_tree(path: str | os.PathLike, tree: Any,
              metadata: Mapping[str, Any] | None = None) -> None:
    """Saves ``tree`` (nested dicts / lists of arrays) and ``metadata`` at ``path``, atomically.

    Lists and tuples are stored as dicts keyed ``"0", "1", ...``.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        with _checkpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, TREE_DIR), _host_tree(tree))
            checkpointer.wait_until_finished()
        atomic.write_json(os.path.join(tmp, METADATA_FILE), dict(metadata or {}))
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.rename(path, os.path.join(old, "previous"))
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def restore_tree(path: str | os.PathLike) -> tuple[dict, dict]:
    """Loads a checkpoint written by :func:`save_tree`.

    Returns:
      ``(tree, metadata)``: the tree with numpy leaves, and the metadata dict.

    Raises:
      CheckpointError: missing or unreadable checkpoint (names the path).
    """
    path = os.path.abspath(os.fspath(path))
    meta_path = os.path.join(path, METADATA_FILE)
    tree_path = os.path.join(path, TREE_DIR)
    if not os.path.isdir(tree_path) or not os.path.isfile(meta_path):
        raise CheckpointError(
            f"{path}: not a params checkpoint (needs {TREE_DIR}/ and {METADATA_FILE})")
    try:
        with open(meta_path) as f:
            metadata = json.load(f)
        with _checkpointer() as checkpointer:
            restored = checkpointer.restore(tree_path)
    except Exception as exc:  # json / orbax / tensorstore raise many types for corrupt data
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: cannot restore ({type(exc).__name__}: {message})") from None
    return _numpy(restored), metadata


def _numpy(tree):
    if isinstance(tree, Mapping):
        return {k: _numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
