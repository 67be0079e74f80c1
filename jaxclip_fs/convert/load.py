"""``load_clip``: one entry point from a backbone name and a weights spec to a ready CLIP.

``weights`` may be:

==================== =========================================================
``random``           random init (``random:SEED`` for another seed); id ``random(seed=0)``
a directory          transformers ``CLIPModel`` dir (``config.json`` + safetensors or
                     ``pytorch_model.bin``, sharded or not), an open_clip hub dir
                     (``open_clip_config.json`` + weights), or a ``jaxclip-fs convert`` dir
a file               OpenAI / open_clip state dict: ``.safetensors``, pickled ``.bin`` /
                     ``.pt``, or OpenAI's TorchScript ``.pt`` (torch needed for the latter two)
``openai``           OpenAI's release of ``backbone`` (``~/.cache/clip`` or the hub, see
                     :mod:`~jaxclip_fs.convert.hub`); a variant name (``ViT-B/32``) means
                     the same for that variant
``owner/name``       a Hugging Face hub repository (cache first, then download)
==================== =========================================================

The architecture comes from ``backbone`` (the variant table). When the
checkpoint reveals its own architecture (``config.json``, tensor shapes, a
converted dir's config) the two must agree, else a one-line error says which
variant the checkpoint holds. ``backbone=None`` (or ``"auto"``) takes the
checkpoint's architecture, so any size loads. The activation follows the
checkpoint when it declares one (``hidden_act`` in ``config.json``,
``quick_gelu`` in ``open_clip_config.json``); bare state dicts get the
variant's (QuickGELU for all OpenAI variants). The loaded tree is then
checked against ``jax.eval_shape(init)`` (:func:`~jaxclip_fs.convert.assemble.assemble`).

``weights_id`` is stable: ``sha256:<16 hex>`` of the weight files' bytes,
``hf:<repo>@<commit>`` for hub snapshots, the source's id for converted dirs,
``random(seed=S)`` for random init.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from jaxclip_fs.clip.model import CLIP, abstract_variables, init_variables
from jaxclip_fs.clip.variants import (
    CLIPConfig, architecture_diff, canonical_name, config_from_hf, config_from_openai_shapes,
    get_config, match_variant,
)
from jaxclip_fs.convert import hub, saved
from jaxclip_fs.convert.assemble import assemble
from jaxclip_fs.convert.layouts import NATIVE, Layout, detect_layout
from jaxclip_fs.convert.tensors import files_digest, read_tensors
from jaxclip_fs.errors import CheckpointError, ConfigError


@dataclasses.dataclass(frozen=True)
class LoadedCLIP:
    """A CLIP ready for ``model.apply(params, ..., method=...)``.

    Attributes:
      config: the architecture.
      model: ``CLIP(config, dtype)``.
      params: the variables dict (``params`` [+ ``batch_stats``]), jax arrays, float32.
      weights_id: stable identity of the weights (module docstring).
      is_random: True for random init (outputs are meaningless).
      source_dir: a directory that may hold tokenizer files, or None.
    """

    config: CLIPConfig
    model: CLIP
    params: dict
    weights_id: str
    is_random: bool
    source_dir: str | None


@dataclasses.dataclass
class _Checkpoint:
    """What a weights spec resolved to, before matching it to a config."""

    label: str  # for messages: path or hub id
    tensors: dict
    layout: Layout
    weights_id: str
    found: CLIPConfig | None = None  # architecture the checkpoint reveals, if any
    declared: dict = dataclasses.field(default_factory=dict)  # config fields it declares
    source_dir: str | None = None
    is_random: bool = False


def load_clip(backbone: str | None, weights: str, *, dtype: Any = jnp.float32) -> LoadedCLIP:
    """Loads CLIP ``backbone`` with ``weights`` (see module docstring).

    Args:
      backbone: a variant name (``"ViT-B/32"``, ``"RN50"``, ``"tiny-vit"`` ...),
        or None / ``"auto"`` to take the architecture from the checkpoint.
      weights: ``random[:SEED]``, a path, ``openai``, or a hub id.
      dtype: compute dtype of the returned model (parameters stay float32).
    Raises:
      CheckpointError / ConfigError: one line naming the file, key or argument.
    """
    if backbone == "auto":
        backbone = None
    if backbone is not None:
        backbone = canonical_name(backbone)
    release = _variant_name(weights)
    if release is not None:  # "--weights ViT-B/32": OpenAI's release of that variant
        if backbone not in (None, release):
            raise CheckpointError(f"model.weights {weights} is OpenAI's {release}, not {backbone}")
        backbone, weights = release, "openai"
    if weights == "random" or weights.startswith("random:"):
        return _random(backbone, weights, dtype)
    ckpt = _resolve(backbone, weights)
    config = _choose_config(backbone, ckpt)
    variables = assemble(abstract_variables(config), ckpt.tensors, ckpt.layout, config.name,
                         ckpt.label)
    return LoadedCLIP(config, CLIP(config, dtype), jax.tree_util.tree_map(jnp.asarray, variables),
                      ckpt.weights_id, ckpt.is_random, ckpt.source_dir)


def _variant_name(weights: str) -> str | None:
    if os.path.exists(weights):
        return None
    try:
        return canonical_name(weights)
    except ConfigError:
        return None


def _random(backbone: str | None, weights: str, dtype: Any) -> LoadedCLIP:
    if backbone is None:
        raise CheckpointError("model.weights random needs an explicit model.backbone")
    seed_text = weights.partition(":")[2] or "0"
    if not seed_text.isdigit():
        raise CheckpointError(f"model.weights {weights}: expected 'random' or 'random:SEED'")
    config = get_config(backbone)
    seed = int(seed_text)
    return LoadedCLIP(config, CLIP(config, dtype), init_variables(config, seed),
                      f"random(seed={seed})", True, None)


def _resolve(backbone: str | None, weights: str) -> _Checkpoint:
    if os.path.isdir(weights):
        return _from_directory(weights)
    if os.path.isfile(weights):
        return _from_state_dict_file(weights)
    if weights == "openai":
        if backbone is None:
            raise CheckpointError("model.weights openai needs an explicit model.backbone")
        cached = hub.openai_cache_file(backbone)
        if cached:
            return _from_state_dict_file(cached)
        return _from_hub(hub.default_hub_id(backbone))
    if hub.HUB_ID.fullmatch(weights):
        if os.path.splitext(weights)[1] in (".pt", ".bin", ".pth", ".safetensors"):
            raise CheckpointError(f"{weights}: no such checkpoint file")
        return _from_hub(weights)
    raise CheckpointError(f"{weights}: no such checkpoint file or directory (nor 'random', "
                          f"'openai' or a hub id 'owner/name')")


def _from_hub(repo_id: str) -> _Checkpoint:
    directory, commit = hub.snapshot(repo_id)
    return _from_directory(directory, label=repo_id, weights_id=f"hf:{repo_id}@{commit}")


def _from_directory(path: str, label: str | None = None,
                    weights_id: str | None = None) -> _Checkpoint:
    """A HF / open_clip directory or a ``convert`` output; ``weights_id`` overrides the
    content digest (hub snapshots are identified by repo and commit, no hashing)."""
    label = label or path
    if saved.is_converted_dir(path):
        manifest = saved.read_manifest(path)
        found = CLIPConfig.from_dict(manifest["config"])
        declared = {k: getattr(found, k) for k in
                    ("act", "adapter_dim", "adapter_scale", "adapter_dropout")}
        return _Checkpoint(label, saved.read_variables(path), NATIVE,
                           weights_id or manifest["weights_id"],
                           found, declared, saved.tokenizer_dir(path), bool(manifest["is_random"]))
    weight_file = hub.find_weight_file(path)
    if weight_file is None:
        raise CheckpointError(
            f"{label}: no CLIP weights in this directory (looked for model.safetensors, "
            f"pytorch_model.bin, open_clip_model.safetensors, open_clip_pytorch_model.bin, "
            f"or a jaxclip-fs convert manifest)")
    ckpt = _from_state_dict_file(weight_file, label=label, weights_id=weights_id)
    ckpt.source_dir = path
    hf_config = os.path.join(path, "config.json")
    open_clip_config = os.path.join(path, "open_clip_config.json")
    if ckpt.layout.name == "hf" and os.path.isfile(hf_config):
        ckpt.found = config_from_hf(_read_json(hf_config), source=hf_config)
        ckpt.declared = {"act": ckpt.found.act}
    elif os.path.isfile(open_clip_config):
        model_cfg = _read_json(open_clip_config).get("model_cfg", {})
        if "quick_gelu" in model_cfg:
            ckpt.declared = {"act": "quick_gelu" if model_cfg["quick_gelu"] else "gelu"}
    return ckpt


def _from_state_dict_file(path: str, label: str | None = None,
                          weights_id: str | None = None) -> _Checkpoint:
    label = label or path
    tensors = read_tensors(path)
    layout = detect_layout(tensors)
    if layout is None:
        first = ", ".join(sorted(tensors)[:4]) or "none"
        raise CheckpointError(f"{label}: not a CLIP state dict (unrecognised keys: {first})")
    found = None
    if layout.name == "openai":
        try:
            found = config_from_openai_shapes({k: v.shape for k, v in tensors.items()})
        except (KeyError, IndexError, ValueError):
            found = None  # incomplete: assemble() will list what is missing
    return _Checkpoint(label, tensors, layout,
                       weights_id or files_digest(_weight_files(path)), found)


def _weight_files(path: str) -> list[str]:
    if not path.endswith(".index.json"):
        return [path]
    directory = os.path.dirname(path)
    shards = sorted(set(_read_json(path)["weight_map"].values()))
    return [os.path.join(directory, s) for s in shards]


def _choose_config(backbone: str | None, ckpt: _Checkpoint) -> CLIPConfig:
    found = ckpt.found
    if backbone is None:
        if found is None:
            raise CheckpointError(
                f"{ckpt.label}: cannot infer the architecture; pass model.backbone")
        name = match_variant(found) or "custom"
        return dataclasses.replace(found, name=name, **ckpt.declared)
    want = get_config(backbone)
    if found is not None:
        diff = architecture_diff(found, want)
        if diff:
            holds = match_variant(found) or "a different architecture"
            raise CheckpointError(f"{ckpt.label}: holds {holds}, not {want.name} "
                                  f"({'; '.join(diff[:4])})")
    return dataclasses.replace(want, **ckpt.declared)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None
