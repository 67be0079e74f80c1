"""The zero-shot text classifier from prompt-template ensembles (Tip-Adapter's ``clip_classifier``).

Per class c with templates t = 1..T::

    e_ct = encode_text(tokenize(template_t.format(classname_c)))     [E]
    w_c  = normalize(mean_t normalize(e_ct))                         [E]

giving W [C, E] with unit rows. The raw prompt embeddings [C, T, E] are
cached under a key of the architecture, weights identity, the exact token
ids (so the tokenizer and the prompts are covered by what they produce) and
the compute dtype; the two normalisations are recomputed on every call.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from jaxclip_fs.features.cache import ChunkedEntry, default_cache_dir
from jaxclip_fs.features.encode import FixedBatchEncoder, compute_dtype, encode_items

TEXT_KEY = "text"


def classifier_from_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """``normalize(mean_t normalize(e[c, t]))``: [C, T, E] -> float32 [C, E] (unit rows)."""
    e = np.asarray(embeddings, np.float32)
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    w = e.mean(axis=1)
    return (w / np.linalg.norm(w, axis=-1, keepdims=True)).astype(np.float32)


def tokenize_prompts(tokenizer, classnames: Sequence[str], templates: Sequence[str],
                     context_length: int) -> np.ndarray:
    """int32 [C, T, L]: ``tokenizer(template.format(classname))`` for every class and template."""
    prompts = [t.format(c) for c in classnames for t in templates]
    tokens = np.asarray(tokenizer(prompts, context_length=context_length), np.int32)
    return tokens.reshape(len(classnames), len(templates), context_length)


def text_classifier(
    clip,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    dtype: str = "float32",
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> np.ndarray:
    """The classifier W [C, E] of ``classnames`` x ``templates`` (module docstring).

    Args:
      clip: a :class:`~jaxclip_fs.convert.load.LoadedCLIP`.
      tokenizer: callable ``(texts, context_length=L) -> int [N, L]`` with a
        ``name`` (:func:`~jaxclip_fs.clip.tokenizer.load_tokenizer`).
      classnames: C names; templates: T strings with one ``{}``.
      dtype: compute dtype, "float32" or "bfloat16".
      batch_size: prompts per compiled batch.
      cache_dir, use_cache: as for image features.
      progress: tqdm bar on stderr.

    Returns:
      float32 [C, E], L2-normalised rows.
    """
    length = clip.config.context_length
    tokens = tokenize_prompts(tokenizer, classnames, templates, length)
    model = clip.model.clone(dtype=compute_dtype(dtype))

    def fn(variables, rows):
        return {TEXT_KEY: model.apply(variables, rows, method="encode_text").astype(jnp.float32)}

    encoder = FixedBatchEncoder(fn, clip.params, batch_size, (length,), np.int32)
    entry = None
    if use_cache:
        spec = {"kind": "clip_text_embeddings", "model": clip.config.architecture(),
                "weights": clip.weights_id, "dtype": dtype,
                "tokens": hashlib.sha256(tokens.tobytes()).hexdigest(),
                "tokens_shape": list(tokens.shape)}
        entry = ChunkedEntry(cache_dir or default_cache_dir(), spec, len(classnames),
                             chunk_size=max(1, len(classnames)))
    result = encode_items(encoder, lambda c: tokens[c], len(classnames), len(templates), entry,
                          workers=1, progress=progress, desc="text", unit="class")
    return classifier_from_embeddings(result.outputs[TEXT_KEY])
