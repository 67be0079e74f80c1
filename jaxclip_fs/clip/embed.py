"""``jaxclip-fs embed``: L2-normalised CLIP embeddings of image files and texts.

Output ``.npz`` (DESIGN.md, "Contracts"):

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

import argparse
import json
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs import __version__
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.io import atomic

RANDOM_BANNER = (
    "*** RANDOM WEIGHTS ({weights_id}): these embeddings are meaningless, for testing the "
    "pipeline only. For real ones pass --weights PATH, 'openai' or a hub id. ***")


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


def embed_command(args: argparse.Namespace) -> int:
    """Runs ``jaxclip-fs embed`` (flags: backbone, weights, image, text, out, batch_size)."""
    from jaxclip_fs.clip.tokenizer import load_tokenizer
    from jaxclip_fs.convert import load_clip

    if not args.image and not args.text:
        raise ConfigError("nothing to embed: give --image PATH ... and/or --text STR ...")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    loaded = load_clip(args.backbone, args.weights)
    if loaded.is_random:
        print(RANDOM_BANNER.format(weights_id=loaded.weights_id), file=sys.stderr)
    tokenizer = load_tokenizer(loaded.source_dir)
    if args.text:
        print(f"tokenizer: {tokenizer.name}", file=sys.stderr)
    image = embed_images(loaded, args.image, args.batch_size)
    text = embed_texts(loaded, tokenizer, args.text, args.batch_size)
    weights = "random" if loaded.is_random else loaded.weights_id
    meta = {"backbone": loaded.config.name, "weights": weights, "weights_id": loaded.weights_id,
            "is_random": loaded.is_random, "tokenizer": tokenizer.name,
            "images": list(args.image), "texts": list(args.text),
            "jaxclip_fs_version": __version__}
    atomic.save_npz(args.out, image=image, text=text, backbone=np.str_(loaded.config.name),
                    weights=np.str_(weights), is_random=np.bool_(loaded.is_random),
                    tokenizer=np.str_(tokenizer.name), meta=np.str_(json.dumps(meta)))
    print(f"wrote {args.out}: image {list(image.shape)}, text {list(text.shape)} "
          f"({loaded.config.name}, weights {weights})")
    return 0
