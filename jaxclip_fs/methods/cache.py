"""Formulas shared by the cache-model methods, each written once.

Notation (``docs/methods.md``): ``f`` an L2-normalised query feature, ``W`` the
text classifier [C, D], ``F`` the cache keys, ``L`` their one-hot labels.
With the class-major support (``task.py``) ``A @ L`` is a sum over the
shot axis.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jaxclip_fs.methods.task import Task

# Logit given to padding classes: far below any real logit, yet finite so
# that softmax / cross-entropy stay NaN-free.
MASKED_LOGIT = -1e9
#: The hyperparameters of a cache form: the sharpness β and the scale α.
SHARPNESS, SCALE = "beta", "alpha"


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """``x / ‖x‖`` along ``axis``; zero rows (padding) stay zero, with zero gradient."""
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, 1e-24))


def augmented_views(support: jax.Array) -> jax.Array:
    """The augmented views ``support[1:]`` of a [V, ...] support; all of it if V = 1.

    The official code builds caches from, and trains on, augmented crops only
    (10 RandomResizedCrop + flip views). View 0 of a feature file is the
    un-augmented image; it is used only when the file has no other view.
    """
    return support[1:] if support.shape[0] > 1 else support


def cache_keys(task: Task) -> jax.Array:
    """Tip-Adapter's keys: the mean of the raw augmented views, then L2-normalised.

    Returns:
      float [C, K, D] (padding items are zero).
    """
    return l2_normalize(jnp.mean(augmented_views(task.support), axis=0))


def zero_shot_logits(task: Task, queries: jax.Array, text: jax.Array | None = None) -> jax.Array:
    """``s = logit_scale · f Wᵀ`` for raw ``queries`` [M, D] → [M, C].

    ``text`` replaces ``task.text`` when given (APE-T's refined classifier).
    """
    text = task.text if text is None else text
    return task.logit_scale * l2_normalize(queries) @ text.T


def affinity(normalized_queries: jax.Array, keys: jax.Array) -> jax.Array:
    """``A = f Fᵀ``: [M, D] x [C, K, D] → [K, M, C] (shot-major, see :func:`cache_logits`)."""
    return jnp.einsum("md,ckd->kmc", normalized_queries, keys)


def cache_logits(affinity_: jax.Array, beta, values: jax.Array) -> jax.Array:
    """Tip-Adapter's cache term ``exp(-β (1 - A)) (L ⊙ v)`` → [M, C].

    Args:
      affinity_: [K, M, C] query-key affinities.
      beta: [] sharpness β.
      values: [C, K] value weight of every cache item (the support mask for
        plain one-hot values; APE's KL weights, APE-T's learned weights),
        zero for padding items.

    The sum over the K shots is a ``fori_loop`` over [M, C] slabs: on XLA:CPU
    this runs several times faster than a masked reduction over a minor
    axis and compiles faster than an unrolled sum; under ``vmap`` over
    ``values`` (APE's γ) the exponentials are computed once.
    """
    def add_shot(k, total):
        return total + jnp.exp(-beta * (1.0 - affinity_[k])) * values[:, k]

    return jax.lax.fori_loop(0, affinity_.shape[0], add_shot,
                             jnp.zeros(affinity_.shape[1:], affinity_.dtype))


class CacheForm(NamedTuple):
    """A method's logits as an exponential-affinity cache (``Compute.cache_form``)::

        logits = base + α · exp(-β (1 - A)) (L ⊙ values) + Σ_h hp[h] · others[h]

    Attributes:
      base: [M, C], independent of every searched hyperparameter.
      affinity: ``A`` [K, M, C] (:func:`affinity`'s layout), independent of them too.
      values: [C, K] weight of every cache item (zero for padding items); may
        depend on non-linear hyperparameters other than β (APE's γ).
      others: residuals [M, C] of further linear names (Tip-X's γ), independent
        of the non-linear ones.
    """

    base: jax.Array
    affinity: jax.Array
    values: jax.Array
    others: Mapping[str, jax.Array] = {}


CacheFormFn = Callable[[Any, Any, Task, Mapping[str, Any]], CacheForm]


def form_terms(form: CacheFormFn):
    """A method's ``terms`` from its cache form: ``(base, {α: cache term, **others})``."""
    def terms(pre, params, task, hp):
        parts = form(pre, params, task, hp)
        residual = cache_logits(parts.affinity, hp[SHARPNESS], parts.values)
        return parts.base, {SCALE: residual, **parts.others}

    terms.__doc__ = form.__doc__
    return terms


def mask_logits(logits: jax.Array, class_mask: jax.Array) -> jax.Array:
    """Sets the logits of padding classes to :data:`MASKED_LOGIT`."""
    return jnp.where(class_mask > 0, logits, MASKED_LOGIT)


def masked_log_softmax(logits: jax.Array, class_mask: jax.Array) -> jax.Array:
    """``log softmax`` over the real classes only; padding classes get 0 (not -inf).

    Zero (rather than -inf) keeps products ``p · log p`` NaN-free; the
    padding entries of the matching probabilities are exactly 0.
    """
    log_p = jax.nn.log_softmax(mask_logits(logits, class_mask), axis=-1)
    return jnp.where(class_mask > 0, log_p, 0.0)
