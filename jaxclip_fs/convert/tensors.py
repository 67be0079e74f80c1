"""Reading checkpoint files into ``{name: np.ndarray}`` (no layout knowledge here).

Formats:

- ``.safetensors`` (also sharded via ``*.safetensors.index.json``): read with
  the ``safetensors`` library (header and offsets checked there), any dtype
  incl. bfloat16; no torch needed.
- PyTorch pickles (``.bin``, ``.pt``, ``.pth``; sharded ``*.bin.index.json``):
  ``torch.load(weights_only=True)``; training checkpoints wrapping the
  weights in ``{"state_dict": ...}`` and DDP's ``module.`` prefix are unwrapped.
- TorchScript archives (OpenAI's released ``.pt`` files):
  ``torch.jit.load(...).state_dict()``.

torch is imported only for the pickle/TorchScript formats. Floating tensors
come back as float32 (OpenAI's checkpoints store float16). Every failure is
a one-line :class:`~jaxclip_fs.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from typing import Iterable

import jax.numpy as jnp
import numpy as np
import safetensors

from jaxclip_fs.errors import CheckpointError

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint file ``path`` (see module docstring)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.endswith(".index.json"):
        return _read_sharded(path)
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch(path)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file; floats as float32.

    The library checks the header and that the tensors cover the data; the
    bytes of each tensor are read here with :data:`_SAFETENSORS_DTYPES`
    (numpy has no bfloat16, so the library's own numpy conversion is not used).
    """
    try:
        with open(path, "rb") as f:
            entries = safetensors.deserialize(f.read())
    except safetensors.SafetensorError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a safetensors file, or truncated or corrupt "
                              f"({reason})") from None
    out = {}
    for name, info in entries:
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"].upper())
        if dtype is None:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}")
        data = np.frombuffer(info["data"], dtype=dtype).reshape(tuple(info["shape"]))
        out[name] = _as_float32(data)
    return out


def _kind_of(head: bytes) -> str | None:
    """``"zip"`` (PyTorch >= 1.6 / TorchScript), ``"pickle"`` (legacy PyTorch), or None."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return None


def read_torch(path: str) -> dict[str, np.ndarray]:
    """Tensors of a PyTorch pickle or TorchScript archive (imports torch).

    A file that is neither (checked from its first bytes, before torch is
    imported) is reported as not a checkpoint -- not as a missing torch.
    """
    with open(path, "rb") as f:
        head = f.read(16)
    if _kind_of(head) is None:
        what = ("an empty file" if not head else "a text file"
                if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "unknown binary data")
        raise CheckpointError(
            f"{path}: not a checkpoint ({what}: neither a PyTorch zip archive or pickle nor "
            f"safetensors)")
    torch = import_torch(path)
    try:
        if is_torchscript(path):
            state = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path}: cannot read as a PyTorch checkpoint (truncated or corrupt?): "
            f"{type(exc).__name__}: {msg}") from None
    return state_dict_to_numpy(_unwrap(state, path))


def import_torch(path: str):
    """``import torch`` or a one-line CheckpointError saying how to get it."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading PyTorch .pt/.bin files needs torch (pip install "
            f"'jaxclip-fs[torch]'), or use a .safetensors checkpoint") from None
    return torch


def is_torchscript(path: str) -> bool:
    """True for a TorchScript zip archive (it holds compiled ``code/`` and ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def state_dict_to_numpy(state) -> dict[str, np.ndarray]:
    """``{name: torch.Tensor}`` -> ``{name: np.ndarray}``, floats as float32."""
    out = {}
    for name, value in state.items():
        if hasattr(value, "detach"):
            t = value.detach().cpu()
            out[name] = t.float().numpy() if t.is_floating_point() else t.numpy()
        else:
            out[name] = np.asarray(value)
    return out


def _unwrap(state, path: str):
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no state dict ({type(state).__name__})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_sharded(index_path: str) -> dict[str, np.ndarray]:
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{index_path}: bad shard index ({exc})") from None
    directory = os.path.dirname(index_path)
    out: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        out.update(read_tensors(os.path.join(directory, shard)))
    missing = sorted(set(weight_map) - set(out))
    if missing:
        raise CheckpointError(f"{index_path}: shards lack tensors listed in the index: "
                              f"{', '.join(missing[:5])}")
    return out


def _as_float32(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.floating) or arr.dtype == jnp.bfloat16:
        return arr.astype(np.float32)
    return np.array(arr)


def files_digest(paths: Iterable[str]) -> str:
    """``sha256:<16 hex>`` of the files' contents, in the given order (their names excluded)."""
    total = hashlib.sha256()
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 23), b""):
                h.update(chunk)
        total.update(h.digest())
    return "sha256:" + total.hexdigest()[:16]
