"""The method protocol: a bundle of pure functions plus its hyperparameter table.

A method (one module each, built by a factory like optax's ``adam()``) is:

* ``init(key, task, hp) -> params`` -- everything computed from the support
  set (cache keys, channel masks, precision matrices, learnable weights).
* ``precompute(params, task, queries, query_mask) -> pre`` -- the
  hyperparameter-independent work for one evaluation set, done once
  (zero-shot logits, affinities, KL terms; an image method's head outputs).
* ``terms(pre, params, task, hp) -> (base, residuals)`` -- the logits
  decomposed along the hyperparameters they are *linear* in:
  ``logits = base + Σ_h hp[h] · residuals[h]`` for ``h`` in ``linear``.
  ``base`` and the residuals may depend on the non-linear hyperparameters.

So :func:`logits` is written once, and the grid search
(``methods/search.py``) evaluates ``terms`` once per point of the non-linear
grid and scores every linear combination by additions only.
Hyperparameters are a mapping of name -> scalar array, never closure
constants, so grids and seeds are ``jax.vmap`` s without retracing.

**Inputs.** ``inputs`` says what the method reads (``catalogue.INPUT_KINDS``):
``features`` (CLIP features: queries [M, D]), ``paired`` (the
``[adapted | original]`` features of TA++ / TX++, [M, 2D]) or ``images``
(the frozen CLIP's outputs per image, :class:`~jaxclip_fs.methods.images.ImageInputs`).
The engine gives each kind its inputs; nothing outside a method's module
tests its name. An image method is *bound* to the CLIP its images go
through (``bind(spec)``, :class:`~jaxclip_fs.methods.images.ImageSpec`) and its
``precompute`` must work row by row (queries arrive in batches).

**Training.** Trainable methods list the top-level ``params`` keys they
learn in ``trainable`` and the keys the forward pass updates (BatchNorm
statistics) in ``state``; :func:`training_loss` is cross-entropy of
:func:`logits` unless the method gives its own ``loss``. The trainer
(``jaxclip_fs.train``) keeps the best epoch on validation
(``epoch_selection="validation"``) or the last (``"final"``).

**Options** are structural choices (LDC's fusion, ablation): the factory
takes them as keyword arguments, the method lists them in ``options`` and
the values it was built with in ``option_values``; every combination is its
own variant (``catalogue.variant_label``), so they can be swept.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.catalogue import INPUT_KINDS, variant_label
from jaxclip_fs.methods import hparams as hparams_lib
from jaxclip_fs.methods.cache import mask_logits
from jaxclip_fs.methods.task import Task

Params = Mapping[str, Any]
HP = Mapping[str, Any]
EPOCH_SELECTIONS = ("validation", "final")


class InitFn(Protocol):
    def __call__(self, key: jax.Array, task: Task, hp: HP) -> Params: ...


class PrecomputeFn(Protocol):
    def __call__(self, params: Params, task: Task, queries: Any, query_mask: jax.Array) -> Any: ...


class TermsFn(Protocol):
    def __call__(self, pre: Any, params: Params, task: Task,
                 hp: HP) -> tuple[jax.Array, dict[str, jax.Array]]: ...


class LossFn(Protocol):
    """``(params, task, inputs [B, ...], labels [B], weights [B], hp) -> (loss, state updates)``."""

    def __call__(self, params: Params, task: Task, inputs: Any, labels: jax.Array,
                 weights: jax.Array, hp: HP) -> tuple[jax.Array, dict]: ...


class HeadsFn(Protocol):
    """``pre -> {head name: logits [M, C]}``: further predictions a method reports."""

    def __call__(self, pre: Any) -> dict[str, jax.Array]: ...


@dataclasses.dataclass(frozen=True)
class Option:
    """A structural choice of a method (a factory keyword argument).

    Attributes:
      name: keyword (``fusion``).
      choices: allowed values, the default first.
      doc: one line.
    """

    name: str
    choices: tuple[str, ...]
    doc: str

    @property
    def default(self) -> str:
        return self.choices[0]


#: Where the official code chose a method's epochs and hyperparameters.
OFFICIAL_SPLITS = ("val", "test", "final")
#: How the official code formed the figure its paper reports (see :class:`Official`).
REPORTED_RULES = ("final", "max_heads", "max_epoch_or_search")
#: How the official code drew its few-shot sets: ``reseeded`` -- ``random.seed(seed)`` before
#: each shot count's draw (CoOp / Tip-Adapter / APE / LDC); ``chained`` -- seeded once per seed,
#: then 1, 2, 4, 8, 16 shots drawn in turn from one stream (GDA, IMO).
OFFICIAL_SAMPLERS = ("reseeded", "chained")


@dataclasses.dataclass(frozen=True)
class Official:
    """What a method's official code did -- the ``paper`` protocol follows it.

    Attributes:
      source: the repository and files it was read from.
      search_on: the split its hyperparameter search used (``val``: the whole
        val split; ``test``). Datasets without an official val split (ImageNet)
        search on test in every official code, whatever this says.
      epochs_on: trained methods: the split its best epoch was chosen on
        (``val``, ``test``) or ``final`` (the last epoch, no selection).
      reported: how the published figure was formed from test accuracies:
        ``final`` -- the final prediction; ``max_heads`` -- the maximum over the
        final prediction and every head the method reports (LDC's tables);
        ``max_epoch_or_search`` -- the maximum of the best epoch's test score
        and the final prediction's (Tip-Adapter-F's ``max(best_acc, acc)``).
      prompts: the text classifier adds CuPL prompt sentences to the templates.
      sampler: how the few-shot sets were drawn (:data:`OFFICIAL_SAMPLERS`).
      seeds: the seeds behind the published numbers.
      dtype: image methods: the compute dtype of the official training.
    """

    source: str
    search_on: str = "val"
    epochs_on: str = "val"
    reported: str = "final"
    prompts: bool = False
    sampler: str = "reseeded"
    seeds: tuple[int, ...] = (1, 2, 3)
    dtype: str = "float32"


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean cross-entropy ``Σ w_i CE(logits_i, y_i) / Σ w_i``.

    Args:
      logits: [B, C]; labels: int [B]; weights: [B] (0 for padding rows).
    """
    log_p = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Method:
    """A few-shot method: pure functions + declarations (module docstring).

    Compared and hashed by identity (it keys compiled programs); the registry
    returns one instance per (name, options).

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
      state: top-level ``params`` keys updated by the training forward pass.
      neutral: hyperparameter values under which the logits are the
        zero-shot logits (property tests).
      inputs: one of ``catalogue.INPUT_KINDS``.
      loss: the training loss (default: cross-entropy of :func:`logits`).
      state_estimate: ``(params, task, inputs, labels, weights, hp) -> state``:
        a batch's own values of the ``state`` entries; when given, the trainer
        replaces the trained state by their mean over one more epoch (PyTorch's
        ``swa_utils.update_bn``).
      epoch_selection: ``validation`` (best epoch) or ``final`` (last epoch).
      heads: further predictions to report (e.g. LDC's heads), or None.
      confusion: two heads whose class confusions the report compares
        (before, after), or None.
      options: the structural options the factory accepts.
      option_values: the options this instance was built with.
      bind: image methods: ``ImageSpec -> Method`` bound to a CLIP.
      taps: a bound image method: the CLIP taps its inputs need.
      official: what its official code did (the ``paper`` protocol), or None.
    """

    name: str
    summary: str
    hparams: tuple[hparams_lib.HParam, ...]
    defaults: Callable[[str | None, int], dict[str, float]]
    grid: Callable[[str | None], dict[str, np.ndarray]]
    init: InitFn
    precompute: PrecomputeFn
    terms: TermsFn
    linear: tuple[str, ...] = ()
    trainable: tuple[str, ...] = ()
    state: tuple[str, ...] = ()
    neutral: Mapping[str, float] = dataclasses.field(default_factory=dict)
    inputs: str = "features"
    loss: LossFn | None = None
    state_estimate: LossFn | None = None
    epoch_selection: str = "validation"
    heads: HeadsFn | None = None
    confusion: tuple[str, str] | None = None
    options: tuple[Option, ...] = ()
    option_values: Mapping[str, str] = dataclasses.field(default_factory=dict)
    bind: Callable[[Any], "Method"] | None = None
    taps: tuple[str, ...] = ()
    official: Official | None = None

    @property
    def hparam_specs(self) -> dict[str, hparams_lib.HParam]:
        return {h.name: h for h in self.hparams}

    @property
    def label(self) -> str:
        """The variant label: the name, with the options that differ from their defaults."""
        changed = {o.name: self.option_values[o.name] for o in self.options
                   if self.option_values.get(o.name, o.default) != o.default}
        return variant_label(self.name, changed)

    @property
    def trains(self) -> bool:
        return bool(self.trainable)

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

    def used(self, values: Mapping[str, float], grid: Mapping[str, np.ndarray],
             index: Mapping[str, int]) -> dict[str, float | int]:
        """The hyperparameters a run used: ``values``, with each searched one read from its
        float64 grid at the chosen ``index`` (the official lists' value, not a float32 copy)."""
        used = dict(values)
        for name, g in grid.items():
            used[name] = float(np.asarray(g)[int(index[name])])
        specs = self.hparam_specs
        return {name: int(v) if specs[name].integer else float(v) for name, v in used.items()}


def check_method(method: Method) -> Method:
    """Validates a method's declarations (called by ``register``); returns it.

    Raises:
      ValueError: naming the method and the broken rule.
    """
    def fail(rule: str):
        raise ValueError(f"method '{method.name}': {rule}")

    specs = method.hparam_specs
    if len(specs) != len(method.hparams):
        fail("a hyperparameter is declared twice")
    if method.inputs not in INPUT_KINDS:
        fail(f"inputs must be one of {INPUT_KINDS}, got '{method.inputs}'")
    if method.epoch_selection not in EPOCH_SELECTIONS:
        fail(f"epoch_selection must be one of {EPOCH_SELECTIONS}")
    grid = method.grid(None)
    if not isinstance(grid, dict):
        fail("grid(dataset) must return a dict (its key order is the search order)")
    for name, values in grid.items():
        if name not in specs or specs[name].role != "search":
            fail(f"grid names '{name}', which is not a declared search hyperparameter")
        values = np.asarray(values)
        if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
            fail(f"the grid of '{name}' must be a non-empty 1-D array of finite numbers")
    for name in method.linear:
        if name not in specs:
            fail(f"linear names '{name}', which is not declared")
    for name in method.neutral:
        if name not in specs:
            fail(f"neutral names '{name}', which is not declared")
    if method.trainable:
        missing = [h.name for h in hparams_lib.TRAINING if h.name not in specs]
        if missing:
            fail(f"trains but does not declare {', '.join(missing)}")
    for option in method.options:
        value = method.option_values.get(option.name, option.default)
        if value not in option.choices:
            fail(f"option {option.name}={value} is not one of {option.choices}")
    if method.inputs == "images":
        if method.bind is None:
            fail("an image method needs bind(spec)")
        if method.trainable and method.epoch_selection != "final":
            fail("an image method keeps its final epoch (validation per epoch would run the "
                 "frozen CLIP over the validation images every epoch)")
    if method.state_estimate is not None and not method.state:
        fail("state_estimate re-estimates state, but the method declares none")
    if method.confusion and method.heads is None:
        fail("confusion names heads, but the method reports none")
    official = method.official
    if official is not None:
        if official.search_on not in ("val", "test"):
            fail(f"official.search_on must be val or test, got '{official.search_on}'")
        if official.epochs_on not in OFFICIAL_SPLITS:
            fail(f"official.epochs_on must be one of {OFFICIAL_SPLITS}")
        if official.reported not in REPORTED_RULES:
            fail(f"official.reported must be one of {REPORTED_RULES}")
        if official.sampler not in OFFICIAL_SAMPLERS:
            fail(f"official.sampler must be one of {OFFICIAL_SAMPLERS}")
        if official.reported == "max_heads" and method.heads is None:
            fail("official.reported max_heads needs heads")
    return method


def logits(method: Method, params: Params, task: Task, queries: Any, hp: HP,
           query_mask: jax.Array | None = None) -> jax.Array:
    """A method's logits ``base + Σ_h hp[h] · residual_h`` with padding classes masked.

    Args:
      queries: [M, D] raw query features (image methods: their inputs of M images).
      hp: name -> scalar.
      query_mask: [M] real rows (only Tip-X's min-max rescale looks at it).

    Returns:
      float [M, C].
    """
    if query_mask is None:
        query_mask = jnp.ones(jax.tree.leaves(queries)[0].shape[:1], jnp.float32)
    pre = method.precompute(params, task, queries, query_mask)
    return logits_from(method, pre, params, task, hp)


def logits_from(method: Method, pre: Any, params: Params, task: Task, hp: HP) -> jax.Array:
    """:func:`logits` from a ``precompute`` output."""
    base, residuals = method.terms(pre, params, task, hp)
    total = base
    for name in method.linear:
        total = total + hp[name] * residuals[name]
    return mask_logits(total, task.class_mask)


def training_loss(method: Method, params: Params, task: Task, inputs: Any, labels: jax.Array,
                  weights: jax.Array, hp: HP) -> tuple[jax.Array, dict]:
    """The training loss and the new ``state`` entries of a batch.

    The method's own ``loss`` if it has one, else the weighted cross-entropy
    of :func:`logits` (no state).

    Args:
      inputs: [B, D] raw (augmented) support features, or an image method's
        inputs of B images; labels: int [B]; weights: [B], 0 for the padding
        rows of a partial batch.
    """
    if method.loss is not None:
        return method.loss(params, task, inputs, labels, weights, hp)
    return cross_entropy(logits(method, params, task, inputs, hp), labels, weights), {}


def as_arrays(hp: Mapping[str, float]) -> dict[str, jax.Array]:
    """``{name: float}`` -> ``{name: float32 scalar array}``."""
    return {name: jnp.asarray(value, jnp.float32) for name, value in hp.items()}
