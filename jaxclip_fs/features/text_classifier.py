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
    tokens = tokenize_prompts(tokenizer, classnames, templates, clip.config.context_length)
    return classifier_from_embeddings(encode_texts(
        clip, tokens, "clip_text_embeddings", dtype=dtype, batch_size=batch_size,
        cache_dir=cache_dir, use_cache=use_cache, progress=progress, desc="text", unit="class"))


def text_encoder(clip, length: int, *, dtype: str, batch_size: int) -> FixedBatchEncoder:
    """``encode_text`` of int tokens [B, L] -> ``{"text": float32 [B, E]}``, computed in
    ``dtype``, compiled for one batch shape."""
    model = clip.model.clone(dtype=compute_dtype(dtype))

    def fn(variables, rows):
        return {TEXT_KEY: model.apply(variables, rows, method="encode_text").astype(jnp.float32)}

    return FixedBatchEncoder(fn, clip.params, batch_size, (length,), np.int32)


def encode_texts(clip, tokens: np.ndarray, kind: str, *, dtype: str, batch_size: int,
                 cache_dir: str | os.PathLike | None, use_cache: bool, progress: bool,
                 desc: str, unit: str) -> np.ndarray:
    """``encode_text`` of int tokens [N, T, L] → float32 [N, T, E], N items of T texts each,
    cached by content (``kind``, model, weights, dtype, tokens)."""
    length = tokens.shape[-1]
    encoder = text_encoder(clip, length, dtype=dtype, batch_size=batch_size)
    entry = None
    if use_cache:
        spec = {"kind": kind, "model": clip.config.architecture(),
                "weights": clip.weights_id, "dtype": dtype,
                "tokens": hashlib.sha256(tokens.tobytes()).hexdigest(),
                "tokens_shape": list(tokens.shape)}
        entry = ChunkedEntry(cache_dir or default_cache_dir(), spec, len(tokens),
                             chunk_size=max(1, len(tokens)))
    result = encode_items(encoder, lambda i: tokens[i], len(tokens), tokens.shape[1], entry,
                          workers=1, progress=progress, desc=desc, unit=unit)
    return np.asarray(result.outputs[TEXT_KEY], np.float32)


# --- templates plus prompt sentences (APE's CuPL classifier) -----------------------------


def read_prompts(path: str | os.PathLike) -> dict[str, list[str]]:
    """A CuPL-format prompt file: a JSON object ``{class name: [sentence, ...]}``.

    Raises:
      DataError: unreadable, not that shape (names the file).
    """
    import json

    from jaxclip_fs.errors import DataError

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the prompt file ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON prompt file ({exc})") from None
    if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values()):
        raise DataError(f"{path}: a prompt file maps class names to lists of sentences")
    return data


def prompts_digest(path: str | os.PathLike) -> str:
    """sha256 of a prompt file's bytes (it shapes the classifier: part of every cache key)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def class_sentences(classnames: Sequence[str], templates: Sequence[str],
                    prompts: dict[str, list[str]], source: str) -> list[list[str]]:
    """Per class: every template filled, then the prompt file's sentences of that class.

    APE's ``extract_text_feature`` (yangyangyang127/APE ``extract_features.py``):
    the class name with ``_`` replaced by a space is looked up exactly
    (case-sensitive) in the prompt file; the template sentences and the prompt
    sentences form one list.

    Raises:
      DataError: a class the prompt file has no sentences for (names it).
    """
    from jaxclip_fs.errors import DataError

    out = []
    for name in classnames:
        key = name.replace("_", " ")
        if key not in prompts:
            raise DataError(f"{source}: no prompt sentences for class '{key}'")
        out.append([t.format(name) for t in templates] + list(prompts[key]))
    return out


def prompt_classifier(
    clip,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    prompts_path: str | os.PathLike,
    *,
    dtype: str = "float32",
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> np.ndarray:
    """The classifier of the templates *and* a prompt file's sentences, pooled: [C, E].

    Per class ``w_c = normalize(mean_s normalize(encode_text(s)))`` over its
    template sentences and its prompt sentences together (one list, each
    sentence weighted equally -- APE's classifier with CuPL sentences, as
    CuPL's own "both" classifier); over-long sentences are truncated to the
    context length (``clip.tokenize(..., truncate=True)``, as APE does).
    """
    sentences = class_sentences(classnames, templates, read_prompts(prompts_path),
                                os.fspath(prompts_path))
    flat = [s for per_class in sentences for s in per_class]
    tokens = np.asarray(tokenizer(flat, context_length=clip.config.context_length,
                                  truncate=True), np.int32)
    embeddings = encode_texts(
        clip, tokens[:, None], "clip_sentence_embeddings", dtype=dtype, batch_size=batch_size,
        cache_dir=cache_dir, use_cache=use_cache, progress=progress, desc="prompts",
        unit="sentence")[:, 0]
    embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
    bounds = np.cumsum([0] + [len(c) for c in sentences])
    w = np.stack([embeddings[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
    return (w / np.linalg.norm(w, axis=-1, keepdims=True)).astype(np.float32)
