"""L2-normalised CLIP embeddings of image files and texts (``jaxclip-fs embed``).

Output ``.npz``:

=============== ================ ==============================================
``image``       float32 [N, E]   one row per ``--image``, in the order given
``text``        float32 [M, E]   one row per ``--text``, in the order given
``backbone``    str              variant name
``weights``     str              the weights id, or ``"random"`` for random init
``is_random``   bool             True when the weights are random
``tokenizer``   str              the tokenizer's ``name`` (which vocabulary)
``meta``        str (JSON)       all of the above plus ``weights_id``, inputs, version
=============== ================ ==============================================

Encoding is jit-compiled once per modality for a fixed batch shape
``[B, ...]`` with ``B = min(batch_size, count)``; the last batch is padded
with zeros and the padding rows dropped, so nothing recompiles.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _normalise(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def image_embedder(loaded) -> Callable[[np.ndarray], jax.Array]:
    """``images [B, S, S, 3] -> L2-normalised embeddings [B, E]``, jit-compiled.

    The variables are an argument of the compiled function (not baked-in constants).
    """
    model = loaded.model
    fn = jax.jit(lambda v, x: _normalise(model.apply(v, x, method="encode_image")[0]))
    return lambda x: fn(loaded.params, x)


def text_embedder(loaded) -> Callable[[np.ndarray], jax.Array]:
    """``tokens [B, L] -> L2-normalised embeddings [B, E]``, jit-compiled."""
    model = loaded.model
    fn = jax.jit(lambda v, t: _normalise(model.apply(v, t, method="encode_text")))
    return lambda t: fn(loaded.params, t)


def run_in_batches(fn: Callable[[np.ndarray], jax.Array], count: int,
                   load: Callable[[int, int], np.ndarray], batch_size: int, dim: int
                   ) -> np.ndarray:
    """``fn`` over rows ``0..count-1`` in fixed-size batches; float32 [count, dim].

    ``load(start, stop)`` returns the input rows ``start:stop``; the last
    batch is zero-padded to ``B = min(batch_size, count)`` rows so ``fn``
    always sees one shape.
    """
    if count == 0:
        return np.zeros((0, dim), np.float32)
    size = min(batch_size, count)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, size):
        stop = min(start + size, count)
        rows = load(start, stop)
        if stop - start < size:
            pad = np.zeros((size - (stop - start),) + rows.shape[1:], rows.dtype)
            rows = np.concatenate([rows, pad])
        out[start:stop] = np.asarray(fn(rows))[: stop - start]
    return out


def embed_images(loaded, paths: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """float32 [N, E]: CLIP-preprocessed image files, encoded and L2-normalised.

    Raises:
      DataError: a missing or corrupt image (names the file).
    """
    from jaxclip_fs.clip.preprocess import load_image, preprocess

    size = loaded.config.image_size
    load = lambda a, b: np.stack([preprocess(load_image(p), size) for p in paths[a:b]])
    return run_in_batches(image_embedder(loaded), len(paths), load, batch_size,
                          loaded.config.embed_dim)


def embed_texts(loaded, tokenizer, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """float32 [M, E]: texts tokenized with ``tokenizer``, encoded and L2-normalised."""
    length = loaded.config.context_length
    tokens = (np.asarray(tokenizer(list(texts), context_length=length), np.int32) if texts
              else np.zeros((0, length), np.int32))
    return run_in_batches(text_embedder(loaded), len(texts), lambda a, b: tokens[a:b],
                          batch_size, loaded.config.embed_dim)
