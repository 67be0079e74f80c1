"""CLIP's text transformer (OpenAI ``CLIP.encode_text``).

Tokens int [B, L] (L = ``context_length``; sot 49406 ... eot 49407, then 0)::

    x = token_embedding[tokens] + positional_embedding          [B, L, W]
    x = ln_final(block_N(...block_1(x)))     causal self-attention
    embedding = x[b, argmax_l tokens[b, l]] @ text_projection   [B, E]

The end-of-text token has the largest id, so ``argmax`` finds it (OpenAI;
transformers' first-``eos_token_id`` pooling picks the same position for
CLIP-tokenized text).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.clip.layers import LayerNorm, block_class, causal_mask
from jaxclip_fs.clip.lora import Lora
from jaxclip_fs.clip.variants import CLIPConfig


class TextTransformer(nn.Module):
    """Text tower: tokens [B, L] int -> embedding [B, E] (not normalised).

    Adaptations are arguments: ``prompts`` [B, L, W] replaces the token
    embeddings (CoOp's learned context, :mod:`jaxclip_fs.clip.prompts`; the
    tokens still give the EOT position), ``lora`` adds low-rank updates to the
    blocks' attention (:mod:`jaxclip_fs.clip.lora`). ``remat`` recomputes each
    block's activations in the backward pass (same parameters, same outputs).
    """

    config: CLIPConfig
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array, prompts: jax.Array | None = None,
                 lora: Lora | None = None, deterministic: bool = True) -> jax.Array:
        c = self.config
        length = tokens.shape[1]
        if prompts is None:
            x = nn.Embed(c.vocab_size, c.text_width, embedding_init=nn.initializers.normal(0.02),
                         name="token_embedding")(tokens).astype(self.dtype)
        else:
            x = prompts.astype(self.dtype)
        pos = self.param("positional_embedding", nn.initializers.normal(0.01),
                         (c.context_length, c.text_width), jnp.float32)
        x = x + pos[:length].astype(self.dtype)
        mask = causal_mask(length)
        block = block_class(self.remat)
        for i in range(1, c.text_layers + 1):
            x = block(c.text_heads, c.text_mlp_dim, c.act, c.layer_norm_eps, dtype=self.dtype,
                      name=f"block{i}")(x, mask, deterministic, False,
                                        None if lora is None else lora.block(f"block{i}"))
        x = LayerNorm(c.layer_norm_eps, self.dtype, name="ln_final")(x)
        eot = jnp.argmax(tokens, axis=-1)
        pooled = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        proj = self.param("text_projection", nn.initializers.normal(c.text_width ** -0.5),
                          (c.text_width, c.embed_dim), jnp.float32)
        return pooled @ proj.astype(self.dtype)


def trim_after_eot(tokens: np.ndarray) -> np.ndarray:
    """``tokens[:, :max EOT position + 1]``: the same embeddings for a fraction of the work.

    The attention is causal, so a row's output at its EOT position reads
    only the tokens up to it; the padding after the longest row's EOT can be
    dropped (positions keep their embeddings). "a photo of a {class}." needs
    about 10 of CLIP's 77 positions.
    """
    tokens = np.asarray(tokens)
    return tokens[:, :int(tokens.argmax(axis=-1).max()) + 1]
