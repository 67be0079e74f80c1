"""Where each of our parameters lives in the two checkpoint layouts.

Our tree (see :mod:`jaxclip_fs.clip.model`) is addressed by
``(collection, *path)``, e.g. ``("params", "visual", "block3", "attn", "qkv",
"kernel")``. A layout maps such a target to the checkpoint tensor(s) it is
built from and how (:class:`Source`):

- **openai**: OpenAI's and open_clip's ``CLIP`` state dict (``visual.*``,
  ``transformer.resblocks.*``, ``token_embedding.weight``, ...), ViT and
  ModifiedResNet. ``attn.in_proj_weight`` [3W, W] is our fused ``qkv``.
- **hf**: transformers' ``CLIPModel`` (``vision_model.*``, ``text_model.*``,
  ``visual_projection``, ``text_projection``), ViT only. Its separate
  ``q_proj``/``k_proj``/``v_proj`` are concatenated into our ``qkv``.

Conversions: torch ``Linear`` weights [out, in] are transposed to Flax
kernels [in, out]; conv weights [O, I, kh, kw] become [kh, kw, I, O].
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

Target = tuple[str, ...]  # (collection, *path)


@dataclasses.dataclass(frozen=True)
class Source:
    """The checkpoint tensors behind one target and the conversion ``kind``.

    kinds: ``copy``; ``scalar`` (shape [] or [1] -> []); ``linear`` (transpose);
    ``conv`` (OIHW -> HWIO); ``concat_linear`` (transpose each, concatenate
    outputs); ``concat`` (concatenate 1-D).
    """

    keys: tuple[str, ...]
    kind: str = "copy"

    def expected_shapes(self, target_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """The checkpoint shape each key must have for ``target_shape``."""
        s = tuple(target_shape)
        if self.kind == "linear":
            return [s[::-1]]
        if self.kind == "conv":
            return [(s[3], s[2], s[0], s[1])]
        if self.kind == "concat_linear":
            return [(s[1] // len(self.keys), s[0])] * len(self.keys)
        if self.kind == "concat":
            return [(s[0] // len(self.keys),)] * len(self.keys)
        return [s]

    def shape_ok(self, shapes: Sequence[tuple[int, ...]], target_shape) -> bool:
        if self.kind == "scalar":
            return shapes[0] in ((), (1,))
        return list(shapes) == self.expected_shapes(target_shape)

    def build(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        if self.kind == "linear":
            return arrays[0].T
        if self.kind == "conv":
            return arrays[0].transpose(2, 3, 1, 0)
        if self.kind == "concat_linear":
            return np.concatenate([a.T for a in arrays], axis=1)
        if self.kind == "concat":
            return np.concatenate(arrays)
        if self.kind == "scalar":
            return arrays[0].reshape(())
        return arrays[0]


@dataclasses.dataclass(frozen=True)
class Layout:
    """A checkpoint naming scheme: ``source(target)`` and the keys to ignore."""

    name: str
    source: Callable[[Target], Source | None]
    ignorable: Callable[[str], bool]


_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight",
         "mean": "running_mean", "var": "running_var"}


def _leaf(target: Target, module_key: str) -> Source:
    """Generic module parameter: ``kernel`` (Linear/conv by rank), LN/BN ``scale``/``bias``..."""
    leaf = target[-1]
    kind = "copy"
    if leaf == "kernel":
        kind = "conv" if target[-2].startswith(("conv", "downsample_conv")) else "linear"
    return Source((f"{module_key}.{_LEAF[leaf]}",), kind)


# --- OpenAI / open_clip ---------------------------------------------------------------

_OPENAI_RAW = {  # parameters that are not inside a module
    ("params", "logit_scale"): Source(("logit_scale",), "scalar"),
    ("params", "text", "positional_embedding"): Source(("positional_embedding",)),
    ("params", "text", "text_projection"): Source(("text_projection",)),
    ("params", "visual", "class_embedding"): Source(("visual.class_embedding",)),
    ("params", "visual", "positional_embedding"): Source(("visual.positional_embedding",)),
    ("params", "visual", "proj"): Source(("visual.proj",)),
    ("params", "visual", "attnpool", "positional_embedding"):
        Source(("visual.attnpool.positional_embedding",)),
}


def _openai_module(path: Sequence[str]) -> str:
    """Our module path (without collection and leaf) -> OpenAI's dotted module name."""
    p = "/".join(path)
    p = re.sub(r"^text/block(\d+)", lambda m: f"transformer.resblocks.{int(m[1]) - 1}", p)
    p = re.sub(r"^visual/block(\d+)", lambda m: f"visual.transformer.resblocks.{int(m[1]) - 1}", p)
    p = re.sub(r"layer(\d)/block(\d+)", lambda m: f"layer{m[1]}.{int(m[2]) - 1}", p)
    p = re.sub(r"^text/", "", p)
    p = p.replace("downsample_conv", "downsample.0").replace("downsample_bn", "downsample.1")
    p = p.replace("attn/out", "attn.out_proj")
    return p.replace("/", ".")


def _openai_source(target: Target) -> Source | None:
    if target in _OPENAI_RAW:
        return _OPENAI_RAW[target]
    module = target[1:-1]
    if module[-2:] == ("attn", "qkv"):
        prefix = _openai_module(module[:-1])
        leaf = "in_proj_weight" if target[-1] == "kernel" else "in_proj_bias"
        return Source((f"{prefix}.{leaf}",), "linear" if target[-1] == "kernel" else "copy")
    return _leaf(target, _openai_module(module))


def _openai_ignorable(key: str) -> bool:
    return key in ("input_resolution", "context_length", "vocab_size", "attn_mask") or \
        key.endswith("num_batches_tracked")


OPENAI = Layout("openai", _openai_source, _openai_ignorable)


# --- Hugging Face transformers CLIPModel ----------------------------------------------

_HF_RAW = {
    ("params", "logit_scale"): Source(("logit_scale",), "scalar"),
    ("params", "text", "positional_embedding"):
        Source(("text_model.embeddings.position_embedding.weight",)),
    ("params", "text", "text_projection"): Source(("text_projection.weight",), "linear"),
    ("params", "text", "token_embedding", "embedding"):
        Source(("text_model.embeddings.token_embedding.weight",)),
    ("params", "visual", "class_embedding"): Source(("vision_model.embeddings.class_embedding",)),
    ("params", "visual", "positional_embedding"):
        Source(("vision_model.embeddings.position_embedding.weight",)),
    ("params", "visual", "proj"): Source(("visual_projection.weight",), "linear"),
    ("params", "visual", "conv1", "kernel"):
        Source(("vision_model.embeddings.patch_embedding.weight",), "conv"),
}
_HF_MODULES = {
    ("text", "ln_final"): "text_model.final_layer_norm",
    ("visual", "ln_pre"): "vision_model.pre_layrnorm",  # sic: transformers' spelling
    ("visual", "ln_post"): "vision_model.post_layernorm",
}
_HF_BLOCK = {("attn", "out"): "self_attn.out_proj", ("ln_1",): "layer_norm1",
             ("ln_2",): "layer_norm2", ("mlp", "c_fc"): "mlp.fc1", ("mlp", "c_proj"): "mlp.fc2"}


def _hf_source(target: Target) -> Source | None:
    if target in _HF_RAW:
        return _HF_RAW[target]
    module = target[1:-1]
    if module in _HF_MODULES:
        return _leaf(target, _HF_MODULES[module])
    m = re.fullmatch(r"block(\d+)", module[1]) if len(module) > 1 else None
    if not m:
        return None
    tower = "vision_model" if module[0] == "visual" else "text_model"
    prefix = f"{tower}.encoder.layers.{int(m[1]) - 1}"
    inner = module[2:]
    if inner == ("attn", "qkv"):
        leaf = "weight" if target[-1] == "kernel" else "bias"
        keys = tuple(f"{prefix}.self_attn.{n}_proj.{leaf}" for n in "qkv")
        return Source(keys, "concat_linear" if leaf == "weight" else "concat")
    if inner not in _HF_BLOCK:
        return None
    return _leaf(target, f"{prefix}.{_HF_BLOCK[inner]}")


def _hf_ignorable(key: str) -> bool:
    return key.endswith("position_ids")


HF = Layout("hf", _hf_source, _hf_ignorable)


# --- our own tree (directories written by `jaxclip-fs convert`) -----------------------

def _native_source(target: Target) -> Source:
    return Source(("/".join(target),))


NATIVE = Layout("jaxclip-fs", _native_source, lambda key: False)


def detect_layout(keys: Sequence[str]) -> Layout | None:
    """``HF`` for transformers' names, ``OPENAI`` for OpenAI/open_clip's, else None."""
    keys = set(keys)
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        return HF
    if any(k.startswith(("visual.", "transformer.resblocks.")) or k == "token_embedding.weight"
           for k in keys):
        return OPENAI
    return None
