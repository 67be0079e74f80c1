"""Low-rank adapters (LoRA) on the attention projections of CLIP's towers, passed as arguments.

CLIP-LoRA (Zanella & Ben Ayed, CVPR-W'24; official code MaxZanella/CLIP-LoRA,
``loralib/layers.py`` ``LinearLoRA``) adds to a frozen projection ``W`` of an
attention layer (q, k, v or the output o)::

    y = x W + b + s · (Dropout_p(x) A) B          s = alpha / sqrt(r)

with ``A`` [W_in, r] drawn like ``nn.Linear``'s default (PyTorch's
``kaiming_uniform_(a=sqrt(5))`` on the official [r, W_in] matrix: U(±1/sqrt(W_in))),
``B`` [r, W_out] zero -- so a fresh adapter leaves CLIP exactly as it was.
Defaults (``run_utils.py``): q, k, v of every block of both towers, r = 2,
alpha = 1, dropout 0.25 on the LoRA input (each projection its own mask).

Differences from the official code, all numerically neutral:

* ``A`` and ``B`` are stored transposed (``A_here = A_official.T``, same for
  ``B``), as JAX kernels are [in, out];
* the update is computed as ``(x A) B`` (O(T·W·r)), not ``x (B A)ᵀ`` with the
  merged [W_out, W_in] product (O(T·W²)) -- the same function, rounded differently;
* the scaling is the code's ``alpha / sqrt(r)`` (``LoRALayer.__init__``; the LoRA
  paper's ``alpha / r`` is commented out there), so r = 2, alpha = 1 gives s = 1/√2.

The factors never enter the parameter tree: the CLIP module takes a
:class:`Lora` per tower as an argument (``encode_image(..., lora=...)``,
``encode_text(..., lora=...)``), so S seeds' factors are vmapped over while
one copy of the frozen weights serves all of them.

Block positions (``--position`` of ``run_utils.py``; ``utils.py``'s
``INDEX_POSITIONS_*`` tables): the official tables list 12-layer towers
(ViT-B, every text tower) and, for ViT-L/14's 24 layers, ``half-up``,
``half-bottom`` and ``all`` only. Here each position is a share of the
tower's depth L, which reproduces those tables: ``bottom`` / ``mid`` / ``up``
the first / middle / last third, ``half-bottom`` / ``half-up`` the halves,
``top3`` the last three blocks, ``all`` every block.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxclip_fs.clip.variants import CLIPConfig
from jaxclip_fs.errors import ConfigError

PROJECTIONS = ("q", "k", "v", "o")
POSITIONS = ("all", "bottom", "mid", "up", "half-up", "half-bottom", "top3")
ENCODERS = ("both", "vision", "text")
TOWERS = ("visual", "text")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Where the adapters go and how they are scaled (CLIP-LoRA's command-line options).

    Attributes:
      rank: r (``--r``, default 2).
      alpha: alpha (``--alpha``, default 1); the update is scaled by alpha / sqrt(r).
      dropout: dropout rate on the LoRA input (``--dropout_rate``, default 0.25).
      params: projections of each chosen block (``--params``, default q k v; o = output).
      position: blocks of each tower (``--position``, default all; see module docstring).
      encoder: towers (``--encoder``: both, vision or text; default both).
    """

    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    params: tuple[str, ...] = ("q", "k", "v")
    position: str = "all"
    encoder: str = "both"

    def __post_init__(self):
        object.__setattr__(self, "params", tuple(self.params))
        if self.rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        unknown = [p for p in self.params if p not in PROJECTIONS]
        if unknown or not self.params or len(set(self.params)) != len(self.params):
            raise ConfigError(f"LoRA params must be distinct names among {PROJECTIONS}, "
                              f"got {self.params}")
        if self.position not in POSITIONS:
            raise ConfigError(f"LoRA position '{self.position}' unknown; use one of {POSITIONS}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"LoRA encoder '{self.encoder}' unknown; use one of {ENCODERS}")

    @property
    def scale(self) -> float:
        """s = alpha / sqrt(r), the official code's scaling."""
        return self.alpha / math.sqrt(self.rank)

    @property
    def towers(self) -> tuple[str, ...]:
        """The adapted towers, ``"visual"`` and/or ``"text"``."""
        return {"both": TOWERS, "vision": ("visual",), "text": ("text",)}[self.encoder]


def position_blocks(position: str, layers: int) -> tuple[int, ...]:
    """1-based blocks of an ``layers``-deep tower at ``position`` (module docstring)."""
    third, half = layers // 3, layers // 2
    ranges = {"all": (0, layers), "bottom": (0, third), "mid": (third, 2 * third),
              "up": (2 * third, layers), "half-bottom": (0, half), "half-up": (half, layers),
              "top3": (max(layers - 3, 0), layers)}
    low, high = ranges[position]
    return tuple(range(low + 1, high + 1))


def tower_blocks(spec: LoraSpec, config: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """``{tower: 1-based block indices}`` of the adapted towers.

    Raises:
      ConfigError: a ResNet image tower with ``encoder`` vision/both (the
        official code adapts ViT attention only), or a position that selects
        no block of a tower.
    """
    if "visual" in spec.towers and not config.is_vit:
        raise ConfigError(
            f"CLIP-LoRA adapts the attention of ViT image towers; {config.name} is a ResNet "
            "(the official code has no position table for it) -- use a ViT backbone or "
            "encoder=text")
    depth = {"visual": config.vision_layers, "text": config.text_layers}
    out = {}
    for tower in spec.towers:
        blocks = position_blocks(spec.position, depth[tower])
        if not blocks:
            raise ConfigError(f"LoRA position '{spec.position}' selects no block of the "
                              f"{depth[tower]}-layer {tower} tower of {config.name}")
        out[tower] = blocks
    return out


def init_lora(key: jax.Array, config: CLIPConfig, spec: LoraSpec) -> dict:
    """Fresh factors: ``{tower: {"block<i>": {proj: {"a": [W, r], "b": [r, W]}}}}``.

    ``a`` ~ U(±1/sqrt(W)) from ``fold_in(fold_in(fold_in(key, tower), block), proj)``
    (tower 0 visual / 1 text, proj the index in ``PROJECTIONS``), ``b`` = 0, float32.
    """
    width = {"visual": config.vision_width, "text": config.text_width}
    out: dict[str, Any] = {}
    for tower, blocks in tower_blocks(spec, config).items():
        w = width[tower]
        tower_key = jax.random.fold_in(key, TOWERS.index(tower))
        out[tower] = {}
        for i in blocks:
            block_key = jax.random.fold_in(tower_key, i)
            out[tower][f"block{i}"] = {
                p: {"a": jax.random.uniform(jax.random.fold_in(block_key, PROJECTIONS.index(p)),
                                            (w, spec.rank), jnp.float32, -w ** -0.5, w ** -0.5),
                    "b": jnp.zeros((spec.rank, w), jnp.float32)}
                for p in spec.params}
    return out


@struct.dataclass
class Lora:
    """The LoRA argument of one tower (or one block) of the CLIP module.

    Attributes:
      factors: ``{"block<i>": {proj: {"a", "b"}}}`` for a tower, ``{proj: {"a", "b"}}``
        for a block (the pytree leaves: what is vmapped over and differentiated).
      scale: s = alpha / sqrt(r) (static).
      dropout: rate of the dropout on the LoRA input (static); active only
        when the module runs with ``deterministic=False`` and a ``"dropout"`` rng.
    """

    factors: Any
    scale: float = struct.field(pytree_node=False)
    dropout: float = struct.field(pytree_node=False)

    @classmethod
    def of(cls, factors: Any, spec: LoraSpec) -> "Lora":
        return cls(factors, spec.scale, spec.dropout)

    def block(self, name: str) -> "Lora | None":
        """The argument of block ``name`` ("block<i>"), or None if it has no adapter."""
        if name not in self.factors:
            return None
        return Lora(self.factors[name], self.scale, self.dropout)


def lora_update(factors: dict, x: jax.Array, scale: float, dropout: float,
                rng: jax.Array | None) -> jax.Array:
    """``s · (Dropout_p(x) A) B`` in ``x``'s dtype; no dropout when ``rng`` is None or p = 0.

    Dropout as ``nn.Dropout``: keep with probability 1 - p (:func:`dropout_keep`),
    kept values scaled by 1 / (1 - p).
    """
    if rng is not None and dropout > 0.0:
        keep = dropout_keep(rng, x.shape, dropout)
        x = jnp.where(keep, x / jnp.asarray(1.0 - dropout, x.dtype), jnp.zeros((), x.dtype))
    a, b = factors["a"].astype(x.dtype), factors["b"].astype(x.dtype)
    return jnp.asarray(scale, x.dtype) * ((x @ a) @ b)


def _mix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijective avalanche mix of uint32 values."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def dropout_keep(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """bool ``shape``: True with probability 1 - ``rate`` per element, a function of ``key``.

    Element i keeps iff ``mix(mix(i ^ s0) + s1) < (1 - rate) · 2³²`` with ``mix``
    MurmurHash3's finaliser and ``(s0, s1) = bits(key)``: a counter-based
    hash, ~50x cheaper on CPU than drawing threefry bits per element (the
    masks of a CLIP-LoRA step are millions of elements), and like them a
    pure function of the key (the same under ``vmap`` and alone).
    """
    salt = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    threshold = min(round((1.0 - rate) * 2 ** 32), 2 ** 32 - 1)
    return _mix32(_mix32(index ^ salt[0]) + salt[1]) < jnp.uint32(threshold)
