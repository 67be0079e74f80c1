"""CLIP's vision transformer image tower (OpenAI ``VisionTransformer``).

Images NHWC [B, S, S, 3], S = ``image_size``, already CLIP-normalised::

    x = patches(images) @ conv1                      [B, N, W]   N = (S/p)^2
    x = ln_pre([class_embedding; x] + positional_embedding)      [B, 1+N, W]
    x = block_L(...block_1(x))                        taps "block<i>": x after block i
    embedding = ln_post(x[:, 0]) @ proj               [B, E]

``lora`` (:mod:`jaxclip_fs.clip.lora`) adds low-rank updates to the blocks'
attention; ``remat`` recomputes each block's activations in the backward pass.

Unless ``block<L>`` is tapped, the last block computes only the class
token's row (attention over all tokens, MLP on one): the same embedding for
1/T of that block's MLP and output projection.

The patch convolution (kernel = stride = p, no bias) is computed as one
matmul over flattened p x p x 3 patches; its parameter keeps the conv shape
[p, p, 3, W].
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxclip_fs.clip.layers import LayerNorm, block_class
from jaxclip_fs.clip.lora import Lora
from jaxclip_fs.clip.variants import CLIPConfig


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> width ``width`` (a conv with stride p, no bias)."""

    patch: int
    width: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.patch
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, 3, self.width),
                            jnp.float32)
        b, h, w, c = images.shape
        x = images.astype(self.dtype).reshape(b, h // p, p, w // p, p, c)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)
        return x @ kernel.astype(self.dtype).reshape(p * p * c, self.width)


class VisionTransformer(nn.Module):
    """ViT image tower; ``__call__`` gives (embedding, taps), see module docstring."""

    config: CLIPConfig
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def setup(self):
        c = self.config
        width = c.vision_width
        block = block_class(self.remat)
        self.conv1 = PatchEmbed(c.vision_patch_size, width, self.dtype)
        self.class_embedding = self.param(
            "class_embedding", nn.initializers.normal(width ** -0.5), (width,), jnp.float32)
        self.positional_embedding = self.param(
            "positional_embedding", nn.initializers.normal(width ** -0.5),
            (c.num_patches + 1, width), jnp.float32)
        self.ln_pre = LayerNorm(c.layer_norm_eps, self.dtype)
        self.blocks = [
            block(
                c.vision_heads, c.vision_mlp_dim, c.act, c.layer_norm_eps, c.adapter_dim,
                c.adapter_scale, c.adapter_dropout, self.dtype, name=f"block{i}")
            for i in range(1, c.vision_layers + 1)
        ]
        self.ln_post = LayerNorm(c.layer_norm_eps, self.dtype)
        self.proj = self.param(
            "proj", nn.initializers.normal(width ** -0.5), (width, c.embed_dim), jnp.float32)

    def __call__(self, images: jax.Array, taps: tuple[str, ...] = (),
                 deterministic: bool = True, lora: Lora | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        x = self.conv1(images)
        cls = jnp.broadcast_to(self.class_embedding.astype(self.dtype), (x.shape[0], 1, x.shape[2]))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding.astype(self.dtype)
        x = self.ln_pre(x)
        out = {}
        for i, block in enumerate(self.blocks, start=1):
            tapped = f"block{i}" in taps
            # The last block only needs the class token's row unless it is tapped.
            x = block(x, None, deterministic, i == len(self.blocks) and not tapped,
                      None if lora is None else lora.block(f"block{i}"))
            if tapped:
                out[f"block{i}"] = x
        return self.project(self.ln_post(x[:, 0])), out

    def project(self, x: jax.Array) -> jax.Array:
        """``x @ proj``: [..., W] -> [..., E] (no ``ln_post``)."""
        return x.astype(self.dtype) @ self.proj.astype(self.dtype)
