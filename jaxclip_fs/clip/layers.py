"""Transformer pieces shared by CLIP's text tower and its ViT image tower.

Parameters are float32; ``dtype`` is the compute dtype (e.g. bfloat16).
LayerNorm statistics and attention softmax are always computed in float32,
as OpenAI's fp16 ``LayerNorm`` subclass does.

Block (OpenAI ``ResidualAttentionBlock``, pre-norm)::

    x <- x + attn(ln_1(x))
    x <- x + mlp(ln_2(x)) [+ adapter(x)]         mlp = c_proj(act(c_fc(.)))

with ``act`` QuickGELU ``x * sigmoid(1.702 x)`` (OpenAI) or exact GELU.

IMO bottleneck adapter (Kravets & Namboodiri, BMVC'24, "intra-modal overlap
correction"), added in parallel to the MLP of every image block::

    adapter(x) = s * Up(Dropout_p(ReLU(Down(x))))     s = 0.03, p = 0.1

Placement as in the official code (``clip/model.py`` of akres001/CLIP_fewshot_imo,
``ResidualAttentionBlock.forward`` with ``apply_adapter``): the adapter reads
the residual stream *after* the attention update and *before* ``ln_2`` (no
LayerNorm of its own: ``ffn_adapter_layernorm_option='none'``), and its output
is added together with the MLP output. Initialisation is their ``'lora'``
option: Down ``W -> adapter_dim`` with PyTorch's
``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(W), 1/sqrt(W)); Up
zero-initialised; both biases zero -- so a fresh adapter leaves CLIP unchanged.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.clip.lora import Lora, lora_update

# PyTorch's kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1/sqrt(fan_in).
torch_linear_uniform = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI's activation: ``x * sigmoid(1.702 x)``."""
    return x * jax.nn.sigmoid(1.702 * x)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """``"quick_gelu"`` or ``"gelu"`` (exact, erf-based, as ``torch.nn.GELU()``)."""
    if name == "quick_gelu":
        return quick_gelu
    return lambda x: jax.nn.gelu(x, approximate=False)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, statistics in float32, output in ``dtype``."""

    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (width,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (width,), jnp.float32)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(self.dtype)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None) -> jax.Array:
    """``softmax(q k^T / sqrt(d) [masked]) v`` per head.

    Args:
      q: [B, Tq, H, d]; k, v: [B, Tk, H, d].
      mask: bool [Tq, Tk], True = may attend (e.g. causal), or None.
    Returns:
      [B, Tq, H, d] in q's dtype (softmax in float32).
    """
    scores = jnp.einsum("bqhd,bkhd->bhqk", q * (q.shape[-1] ** -0.5), k)
    scores = scores.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection.

    ``qkv/kernel`` [W, 3W] holds (q, k, v) side by side, as OpenAI's
    ``in_proj_weight`` (transposed); ``out`` is ``out_proj``.
    """

    heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None,
                 first_token_only: bool = False, lora: Lora | None = None,
                 deterministic: bool = True) -> jax.Array:
        """x [B, T, W] -> [B, T, W]; only the first token's output, [B, 1, W], if asked.

        ``lora`` (this block's factors, :mod:`jaxclip_fs.clip.lora`) adds
        ``s · (Dropout(x) A) B`` to each adapted projection (q, k, v of ``qkv``;
        o of ``out``); its dropout draws from the ``"dropout"`` rng unless
        ``deterministic``. Without ``lora`` the computation is the plain one.
        """
        batch, tokens, width = x.shape
        qkv = nn.Dense(3 * width, dtype=self.dtype, name="qkv")(x)
        if lora is not None:
            parts = jnp.split(qkv, 3, axis=-1)
            qkv = jnp.concatenate(
                [part + self._lora_update(lora, name, x, deterministic)
                 if name in lora.factors else part for name, part in zip("qkv", parts)], axis=-1)
        qkv = qkv.reshape(batch, tokens, 3, self.heads, width // self.heads)
        q = qkv[:, :1, 0] if first_token_only else qkv[:, :, 0]
        out = dot_product_attention(q, qkv[:, :, 1], qkv[:, :, 2], mask).reshape(batch, -1, width)
        projected = nn.Dense(width, dtype=self.dtype, name="out")(out)
        if lora is not None and "o" in lora.factors:
            projected = projected + self._lora_update(lora, "o", out, deterministic)
        return projected

    def _lora_update(self, lora: Lora, name: str, x: jax.Array, deterministic: bool) -> jax.Array:
        rng = None if deterministic or lora.dropout == 0.0 else self.make_rng("dropout")
        return lora_update(lora.factors[name], x, lora.scale, lora.dropout, rng)


class Mlp(nn.Module):
    """``c_proj(act(c_fc(x)))`` with hidden width ``hidden``."""

    hidden: int
    act: str = "quick_gelu"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = activation(self.act)(nn.Dense(self.hidden, dtype=self.dtype, name="c_fc")(x))
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="c_proj")(h)


class BottleneckAdapter(nn.Module):
    """IMO adapter ``scale * Up(Dropout(ReLU(Down(x))))`` (module docstring)."""

    dim: int
    scale: float = 0.03
    dropout: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        h = nn.Dense(self.dim, dtype=self.dtype, kernel_init=torch_linear_uniform,
                     bias_init=nn.initializers.zeros, name="down")(x)
        h = nn.Dropout(self.dropout)(jax.nn.relu(h), deterministic=deterministic)
        up = nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=nn.initializers.zeros,
                      bias_init=nn.initializers.zeros, name="up")(h)
        return self.scale * up


class ResidualAttentionBlock(nn.Module):
    """One pre-norm transformer block (module docstring), optional IMO adapter.

    Call positionally ``(x, mask, deterministic, first_token_only, lora)`` when
    rematerialised (:func:`block_class`): arguments 3 and 4 are static there.
    """

    heads: int
    mlp_dim: int
    act: str = "quick_gelu"
    eps: float = 1e-5
    adapter_dim: int = 0
    adapter_scale: float = 0.03
    adapter_dropout: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None,
                 deterministic: bool = True, first_token_only: bool = False,
                 lora: Lora | None = None) -> jax.Array:
        """x [B, T, W] -> [B, T, W], or the first token only, [B, 1, W].

        ``first_token_only`` computes exactly the first row of the full output
        (all tokens are still attended to) -- enough for a ViT's last block
        when only the class-token embedding is wanted. ``lora``: this block's
        attention adapters (:class:`SelfAttention`), or None.
        """
        attn = SelfAttention(self.heads, self.dtype, name="attn")(
            LayerNorm(self.eps, self.dtype, name="ln_1")(x), mask, first_token_only, lora,
            deterministic)
        x = (x[:, :1] if first_token_only else x) + attn
        y = x + Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(
            LayerNorm(self.eps, self.dtype, name="ln_2")(x))
        if self.adapter_dim:
            y = y + BottleneckAdapter(self.adapter_dim, self.adapter_scale, self.adapter_dropout,
                                      self.dtype, name="adapter")(x, deterministic)
        return y


def causal_mask(length: int) -> np.ndarray:
    """bool [L, L], True on and below the diagonal (token i sees tokens <= i)."""
    return np.tril(np.ones((length, length), dtype=bool))


def block_class(remat: bool) -> type[ResidualAttentionBlock]:
    """:class:`ResidualAttentionBlock`, or its ``nn.remat`` (activations recomputed in the
    backward pass; ``deterministic`` and ``first_token_only`` static). Same parameters."""
    if not remat:
        return ResidualAttentionBlock
    return nn.remat(ResidualAttentionBlock, static_argnums=(3, 4))
