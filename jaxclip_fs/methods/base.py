"""The method protocol: a bundle of pure functions plus its hyperparameter table.

A method (one module each, built by a factory like optax's ``adam()``) is:

* ``init(key, task, hp) -> params`` -- everything computed from the support
  set (cache keys, channel masks, precision matrices, learnable weights).
* ``precompute(params, task, queries, query_mask) -> pre`` -- the
  hyperparameter-independent work for one evaluation set, done once
  (zero-shot logits, affinities, KL terms).
* ``terms(pre, params, task, hp) -> (base, residuals)`` -- the logits
  decomposed along the hyperparameters they are *linear* in:
  ``logits = base + Σ_h hp[h] · residuals[h]`` for ``h`` in ``linear``.
  ``base`` and the residuals may depend on the non-linear hyperparameters.

So :func:`logits` is written once, and the grid search
(``methods/search.py``) evaluates ``terms`` once per point of the non-linear
grid and scores every linear combination by additions only.
Hyperparameters are a mapping of name -> scalar array, never closure
constants, so grids and seeds are ``jax.vmap`` s without retracing.

Trainable methods list the top-level ``params`` keys they learn in
``trainable``; the trainer (``jaxclip_fs.train``) minimises :func:`loss`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.methods import hparams as hparams_lib
from jaxclip_fs.methods.cache import mask_logits
from jaxclip_fs.methods.task import Task

Params = Mapping[str, Any]
HP = Mapping[str, Any]


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean cross-entropy ``Σ w_i CE(logits_i, y_i) / Σ w_i``.

    Args:
      logits: [B, C]; labels: int [B]; weights: [B] (0 for padding rows).
    """
    log_p = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1.0)


@dataclasses.dataclass(frozen=True)
class Method:
    """A few-shot method: pure functions + hyperparameter declarations.

    Attributes:
      name: registry name (``tip_adapter`` ...).
      summary: one line.
      hparams: the declared hyperparameters (:class:`~jaxclip_fs.methods.hparams.HParam`).
      defaults: ``(dataset, dim) -> {name: value}`` (search hyperparameters
        without an official default are absent).
      grid: ``dataset -> {name: float64 grid}``, keys in the official loop
        order (outermost first); ties go to the first best in that order.
      init, precompute, terms: see the module docstring.
      linear: names ``h`` with ``logits = base + Σ h · residual_h``.
      trainable: top-level ``params`` keys learned by the trainer.
      neutral: hyperparameter values under which the method's logits are
        the zero-shot logits (used by property tests).
      needs_images: True for methods that need images, not a feature file.
    """

    name: str
    summary: str
    hparams: tuple[hparams_lib.HParam, ...]
    defaults: Callable[[str | None, int], dict[str, float]]
    grid: Callable[[str | None], dict[str, np.ndarray]]
    init: Callable[[jax.Array, Task, HP], Params]
    precompute: Callable[..., Any]
    terms: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
    linear: tuple[str, ...] = ()
    trainable: tuple[str, ...] = ()
    neutral: Mapping[str, float] = dataclasses.field(default_factory=dict)
    needs_images: bool = False

    @property
    def hparam_specs(self) -> dict[str, hparams_lib.HParam]:
        return {h.name: h for h in self.hparams}

    def names(self, role: str) -> tuple[str, ...]:
        """Names of the hyperparameters with ``role``."""
        return tuple(h.name for h in self.hparams if h.role == role)

    def resolve(self, dataset: str | None, dim: int,
                overrides=()) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Hyperparameter values and the grid still to search.

        Args:
          dataset: registry name choosing per-dataset defaults and grids
            (unknown / None -> the method's generic default).
          dim: feature width D (APE's channel count scales with it).
          overrides: ``["name=value", ...]`` or ``{name: value}`` fixed by the user.

        Returns:
          ``(values, grid)``: ``values`` holds defaults updated by the
          overrides, all validated; ``grid`` holds the search grids of the
          search hyperparameters the user did not fix (empty: no search).

        Raises:
          ConfigError: unknown name (listing the valid ones) or bad value.
        """
        specs = self.hparam_specs
        fixed = hparams_lib.parse_assignments(overrides, specs, self.name)
        values = {**self.defaults(dataset, dim), **fixed}
        checked = {name: hparams_lib.check_value(specs[name], value, dim)
                   for name, value in values.items()}
        grid = {name: g for name, g in self.grid(dataset).items() if name not in fixed}
        return checked, grid


def logits(method: Method, params: Params, task: Task, queries: jax.Array, hp: HP,
           query_mask: jax.Array | None = None) -> jax.Array:
    """A method's logits ``base + Σ_h hp[h] · residual_h`` with padding classes masked.

    Args:
      queries: [M, D] raw query features.
      hp: name -> scalar.
      query_mask: [M] real rows (only Tip-X's min-max rescale looks at it).

    Returns:
      float [M, C].
    """
    if query_mask is None:
        query_mask = jnp.ones(queries.shape[:1], jnp.float32)
    pre = method.precompute(params, task, queries, query_mask)
    base, residuals = method.terms(pre, params, task, hp)
    total = base
    for name in method.linear:
        total = total + hp[name] * residuals[name]
    return mask_logits(total, task.class_mask)


def loss(method: Method, params: Params, task: Task, features: jax.Array, labels: jax.Array,
         weights: jax.Array, hp: HP) -> jax.Array:
    """The training loss of the feature methods: weighted cross-entropy of :func:`logits`.

    Args:
      features: [B, D] raw (augmented) support features; labels: int [B];
      weights: [B], 0 for the padding rows of a partial batch.
    """
    return cross_entropy(logits(method, params, task, features, hp), labels, weights)


def as_arrays(hp: Mapping[str, float]) -> dict[str, jax.Array]:
    """``{name: float}`` -> ``{name: float32 scalar array}``."""
    return {name: jnp.asarray(value, jnp.float32) for name, value in hp.items()}

