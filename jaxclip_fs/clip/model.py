"""The CLIP module: an image tower (ViT or ModifiedResNet), the text tower, ``logit_scale``.

Use it through ``init`` / ``apply`` only::

    model = CLIP(get_config("ViT-B/32"))
    variables = init_variables(model.config)                    # or convert.load_clip
    emb, taps = model.apply(variables, images, taps=("block6",), method="encode_image")
    txt = model.apply(variables, tokens, method="encode_text")
    z = model.apply(variables, fused_tokens, method="proj")     # ViT: no ln_post (LDC)
    z = model.apply(variables, fused_map, method="attnpool")    # ResNet (LDC)

Images are NHWC float32, CLIP-normalised, ``image_size`` square. Embeddings
are returned in float32 and are *not* L2-normalised. ``dtype`` is the compute
dtype (e.g. ``jnp.bfloat16``); parameters stay float32; taps come back in the
compute dtype.

Variables: ``params`` always; ``batch_stats`` (frozen BatchNorm running
statistics) for ResNet towers. With ``config.adapter_dim > 0`` the ViT blocks
have IMO adapters, trained with ``deterministic=False`` and a ``"dropout"``
rng (``rngs={"dropout": key}``).

Adaptations trained through the towers are *arguments*, never parameters:
CoOp's context embeddings (``encode_text(tokens, prompts=...)``,
:mod:`jaxclip_fs.clip.prompts`) and CLIP-LoRA's low-rank factors
(``lora=`` of ``encode_image`` / ``encode_text``, :mod:`jaxclip_fs.clip.lora`).
Without them every method computes exactly what it computed before.
``CLIP(config, dtype, remat=True)`` rematerialises the transformer blocks
(``nn.remat``: activations recomputed in the backward pass; same parameters).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.clip.layers import BottleneckAdapter
from jaxclip_fs.clip.lora import Lora
from jaxclip_fs.clip.resnet import ModifiedResNet
from jaxclip_fs.clip.text import TextTransformer
from jaxclip_fs.clip.variants import CLIPConfig
from jaxclip_fs.clip.vit import VisionTransformer
from jaxclip_fs.errors import ConfigError

INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature; exp -> 14.3 (trained: 100)


class CLIP(nn.Module):
    """CLIP with ``encode_image``, ``encode_text``, ``attnpool``, ``ln_post``, ``proj``."""

    config: CLIPConfig
    dtype: Any = jnp.float32
    remat: bool = False

    def setup(self):
        if self.config.is_vit:
            self.visual = VisionTransformer(self.config, self.dtype, self.remat)
        else:
            self.visual = ModifiedResNet(self.config, self.dtype)
        self.text = TextTransformer(self.config, self.dtype, self.remat)
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(INIT_LOGIT_SCALE), (), jnp.float32)

    def __call__(self, images: jax.Array, tokens: jax.Array):
        """(image embeddings [B, E], text embeddings [M, E], logit_scale []) -- used by init."""
        return self.encode_image(images)[0], self.encode_text(tokens), self.logit_scale

    def encode_image(self, images: jax.Array, taps: tuple[str, ...] = (),
                     deterministic: bool = True, lora: Lora | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Images [B, S, S, 3] -> (embedding [B, E] float32, {tap: features}).

        Taps: ViT ``"block<i>"`` (1-based): the residual stream after block i,
        all tokens incl. the class token, [B, 1 + N, W]; ResNet ``"layer1"`` ..
        ``"layer4"``: NHWC feature maps. ``lora``: the image tower's LoRA
        factors (ViT only; :mod:`jaxclip_fs.clip.lora`); their dropout needs
        ``deterministic=False`` and ``rngs={"dropout": key}``.
        """
        check_taps(self.config, taps)
        if lora is None:
            emb, out = self.visual(images, tuple(taps), deterministic)
        else:
            self._require(vit=True, method="encode_image with LoRA")
            emb, out = self.visual(images, tuple(taps), deterministic, lora)
        return emb.astype(jnp.float32), out

    def encode_text(self, tokens: jax.Array, prompts: jax.Array | None = None,
                    lora: Lora | None = None, deterministic: bool = True) -> jax.Array:
        """Tokens int [B, L] -> embedding [B, E] float32 (EOT = argmax token id).

        ``prompts`` [B, L, W]: input embeddings used instead of the tokens'
        (CoOp's context, :func:`jaxclip_fs.clip.prompts.prompt_embeddings`);
        ``lora``: the text tower's LoRA factors (:mod:`jaxclip_fs.clip.lora`).
        """
        return self.text(tokens, prompts, lora, deterministic).astype(jnp.float32)

    def attnpool(self, feature_map: jax.Array) -> jax.Array:
        """ResNet only: the frozen attention pool, [B, h, w, 32 w] -> [B, E] float32."""
        self._require(vit=False, method="attnpool")
        return self.visual.attnpool(feature_map).astype(jnp.float32)

    def ln_post(self, x: jax.Array) -> jax.Array:
        """ViT only: the final LayerNorm, [..., W] -> [..., W]."""
        self._require(vit=True, method="ln_post")
        return self.visual.ln_post(x)

    def proj(self, x: jax.Array) -> jax.Array:
        """ViT only: the frozen projection ``x @ proj``, [..., W] -> [..., E] float32."""
        self._require(vit=True, method="proj")
        return self.visual.project(x).astype(jnp.float32)

    def _require(self, vit: bool, method: str) -> None:
        if self.config.is_vit != vit:
            kind = "ViT" if vit else "ResNet"
            raise ConfigError(
                f"{method} exists only for {kind} image towers, not {self.config.name}")


def check_taps(config: CLIPConfig, taps) -> None:
    """Raises ConfigError naming an unknown tap and the valid ones."""
    valid = config.tap_names()
    for tap in taps:
        if tap not in valid:
            raise ConfigError(
                f"unknown tap '{tap}' for {config.name}; valid: {valid[0]}..{valid[-1]}")


def dummy_inputs(config: CLIPConfig, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Zero images [batch, S, S, 3] float32 and tokens [batch, L] int32 for init / shapes."""
    images = np.zeros((batch, config.image_size, config.image_size, 3), np.float32)
    return images, np.zeros((batch, config.context_length), np.int32)


def init_variables(config: CLIPConfig, seed: int = 0) -> dict:
    """Random variables of ``CLIP(config)`` (``--weights random``), float32 jax arrays.

    Drawn with NumPy per leaf from ``default_rng([seed, crc32(path)])`` --
    deterministic, independent of order, and free of XLA compiles (jitting
    ``model.init`` costs tens of seconds on CPU for a few hundred random
    leaves). The scheme follows the modules' own initializers:

    - Dense / conv kernels N(0, 1/fan_in) (fan_in = product of all but the
      last axis); biases 0; LayerNorm / BatchNorm scale 1 (bottleneck ``bn3``:
      0, as open_clip), BatchNorm statistics mean 0, var 1;
    - token embedding N(0, 0.02^2), text positional embedding N(0, 0.01^2);
      class / positional embeddings N(0, 1/W) (W = last axis); ``proj`` and
      ``text_projection`` N(0, 1/W) (W = first axis); ``logit_scale`` log(1/0.07);
    - IMO adapters: Down U(+-1/sqrt(W)), Up 0.
    """
    flat = {}
    for path, leaf in flatten_variables(abstract_variables(config)).items():
        rng = np.random.default_rng([seed, zlib.crc32("/".join(path).encode())])
        flat[path] = jnp.asarray(_random_leaf(path, leaf.shape, rng))
    return unflatten_variables(flat)


def _random_leaf(path: tuple[str, ...], shape: tuple[int, ...], rng) -> np.ndarray:
    name, parent = path[-1], path[-2]
    normal = lambda std: (std * rng.standard_normal(shape)).astype(np.float32)
    if name == "logit_scale":
        return np.full(shape, INIT_LOGIT_SCALE, np.float32)
    if name == "bias" or name == "mean" or (name == "kernel" and parent == "up"):
        return np.zeros(shape, np.float32)
    if name == "scale" and parent == "bn3" and path[-3].startswith("block"):
        return np.zeros(shape, np.float32)  # a bottleneck's last BatchNorm (not the stem's)
    if name in ("var", "scale"):
        return np.ones(shape, np.float32)
    if name == "kernel" and parent == "down":
        bound = shape[0] ** -0.5
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    if name == "kernel":
        return normal(float(np.prod(shape[:-1])) ** -0.5)
    if name == "embedding":
        return normal(0.02)
    if path[1] == "text" and name == "positional_embedding":
        return normal(0.01)
    if name in ("proj", "text_projection"):
        return normal(shape[0] ** -0.5)
    return normal(shape[-1] ** -0.5)  # class / positional embeddings


def flatten_variables(tree) -> dict[tuple[str, ...], Any]:
    """``{"a": {"b": x}}`` -> ``{("a", "b"): x}`` (empty sub-dicts vanish)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update({(key,) + sub: leaf for sub, leaf in flatten_variables(value).items()})
        else:
            out[(key,)] = value
    return out


def unflatten_variables(flat) -> dict:
    """Inverse of :func:`flatten_variables`."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def abstract_variables(config: CLIPConfig) -> dict:
    """``jax.eval_shape`` of ``init``: the tree every loaded checkpoint must match."""
    return jax.tree_util.tree_map(lambda leaf: leaf, _abstract_variables(config))  # a fresh copy


@functools.lru_cache(maxsize=16)
def _abstract_variables(config: CLIPConfig) -> dict:
    model = CLIP(config)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), *dummy_inputs(config))


def add_adapters(variables: dict, config: CLIPConfig, key: jax.Array, adapter_dim: int = 64,
                 scale: float = 0.03, dropout: float = 0.1) -> tuple[CLIPConfig, dict]:
    """Fresh IMO adapters in every ViT image block of loaded (or random) CLIP variables.

    Down ``W -> adapter_dim`` is drawn U(-1/sqrt(W), 1/sqrt(W)) from
    ``fold_in(key, i)`` for block i; Up and both biases are zero, so the model
    computes exactly what it computed without adapters until Up is trained.

    Returns:
      (config with the adapter fields set, a new variables dict; the input is not modified).
    Raises:
      ConfigError: a ResNet config, or one that already has adapters.
    """
    if config.adapter_dim:
        raise ConfigError(f"{config.name} already has adapters (adapter_dim={config.adapter_dim})")
    new_config = dataclasses.replace(config, adapter_dim=adapter_dim, adapter_scale=scale,
                                     adapter_dropout=dropout)  # raises for ResNets
    init = jax.jit(BottleneckAdapter(adapter_dim, scale, dropout).init)  # one compile for all
    probe = jnp.zeros((1, 1, config.vision_width), jnp.float32)
    visual = dict(variables["params"]["visual"])
    for i in range(1, config.vision_layers + 1):
        block = dict(visual[f"block{i}"])
        block["adapter"] = init(jax.random.fold_in(key, i), probe)["params"]
        visual[f"block{i}"] = block
    params = {**variables["params"], "visual": visual}
    return new_config, {**variables, "params": params}
