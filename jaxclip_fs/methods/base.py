"""The method protocol: small records that compose into a :class:`Method`, the optax way.

A method (one module each, built by a factory like optax's ``adam()``) is a
:class:`Method` made of independent parts, each a small frozen record:

* :class:`~jaxclip_fs.catalogue.Card` -- who it is (no jax): name, display
  name, what it reads (``inputs``), paper, formula line, published figures.
* :class:`Compute` -- what it computes, pure functions of arrays:

  - ``init(key, task, hp) -> params`` -- everything computed from the support
    set (cache keys, precision matrices, a closed-form solve, learnable
    weights at their initial values);
  - ``precompute(params, task, queries, query_mask) -> pre`` -- the
    hyperparameter-independent work for one evaluation set, done once;
  - ``terms(pre, params, task, hp) -> (base, residuals)`` -- the logits
    decomposed along the hyperparameters they are *linear* in:
    ``logits = base + Σ_h hp[h] · residuals[h]`` for ``h`` in ``linear``
    (default: ``pre`` *is* the logits, no linear hyperparameter);
  - ``loss`` -- the training loss (default: cross-entropy of :func:`logits`);
    ``heads`` / ``confusion`` -- further predictions it reports.

* :class:`Hyperparameters` -- its declared hyperparameters, per-dataset
  defaults and search grids, optionally ``neutral`` values (the logits become
  zero-shot's) and ``validation_free`` values (the fixed choice where nothing
  may be selected).
* :class:`Training` (None for a method that does not train) -- which
  ``params`` keys are learned (``trainable``) or updated by the forward pass
  (``state``), the optimizer (:class:`~jaxclip_fs.methods.optimizers.Optimizer`,
  default cosine AdamW), whether the loop counts ``epochs`` or ``steps``,
  minibatches or the full batch, and which iterate is kept (the best epoch
  on validation or the final one).
* :class:`Official` -- what its official code did (the ``paper`` protocol).

So a closed-form method is ``Method(card, Compute(init=solve, precompute=predict))``;
a trained one adds ``Training(trainable=("w",))`` (and an optimizer if not
AdamW). :func:`logits` is written once, and the grid search
(``methods/search.py``) evaluates ``terms`` once per point of the non-linear
grid and scores every linear combination by additions only. Hyperparameters
are a mapping of name -> scalar array, never closure constants, so grids and
seeds are ``jax.vmap`` s without retracing.

**Inputs.** ``card.inputs`` says what the method reads (``catalogue.INPUT_KINDS``):
``features`` (CLIP features: queries [M, D]), ``paired`` (the
``[adapted | original]`` features of TA++ / TX++, [M, 2D]) or ``images``
(the frozen CLIP's outputs per image, :class:`~jaxclip_fs.methods.images.ImageInputs`).
The engine gives each kind its inputs; nothing outside a method's module
tests its name. An image method is *bound* to the CLIP its images go
through (``bind(spec)``, :class:`~jaxclip_fs.methods.images.ImageSpec`) and its
``precompute`` must work row by row (queries arrive in batches).

**Options** are structural choices (LDC's fusion, ablation): the factory
takes them as keyword arguments, the method lists them in ``options`` and
the values it was built with in ``option_values``; every combination is its
own variant (``catalogue.variant_label``), so they can be swept.

A :class:`Method` also reads through to its parts (``method.init``,
``method.grid``, ``method.trainable`` ...), so code that runs methods need not
know which record holds what.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.catalogue import Card, variant_label
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.methods import hparams as hparams_lib
from jaxclip_fs.methods.cache import mask_logits
from jaxclip_fs.methods.optimizers import COSINE_ADAMW, Optimizer
from jaxclip_fs.methods.task import Task

Params = Mapping[str, Any]
HP = Mapping[str, Any]
EPOCH_SELECTIONS = ("validation", "final")
#: What a training loop counts: passes over the support (``epochs``) or optimizer updates.
TRAINING_UNITS = ("epochs", "steps")


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
#: then 1, 2, 4, 8, 16 shots drawn in turn from one stream (GDA, IMO); ``nested`` -- each
#: class permuted per seed and its first K kept (big_vision), as our nested sampler does.
OFFICIAL_SAMPLERS = ("reseeded", "chained", "nested")
#: Where the official code searched its hyperparameters; ``none``: nowhere (fixed values).
OFFICIAL_SEARCH_SPLITS = ("val", "test", "none")


@dataclasses.dataclass(frozen=True)
class Official:
    """What a method's official code did -- the ``paper`` protocol follows it.

    Attributes:
      source: the repository and files it was read from.
      search_on: the split its hyperparameter search used (``val``: the whole
        val split; ``test``; ``none``: it searched nothing, the
        ``validation_free`` values are its fixed ones). Datasets without an
        official val split (ImageNet) search on test in every official code that
        searches, whatever this says.
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


def logits_are_pre(pre, params, task, hp):
    """The default ``terms``: ``precompute`` returned the logits themselves (no linear name)."""
    del params, task, hp
    return pre, {}


@dataclasses.dataclass(frozen=True)
class Compute:
    """What a method computes (module docstring): pure functions of arrays.

    Attributes:
      init: ``(key, task, hp) -> params``.
      precompute: ``(params, task, queries, query_mask) -> pre``.
      terms: ``(pre, params, task, hp) -> (base, {name: residual})``
        (default: ``pre`` is the logits).
      linear: names ``h`` with ``logits = base + Σ h · residual_h``.
      loss: the training loss (default: cross-entropy of :func:`logits`).
      heads: further predictions to report (e.g. LDC's heads), or None.
      confusion: two heads whose class confusions the report compares
        (before, after), or None.
      cache_form: ``(pre, params, task, hp) -> CacheForm``: ``terms`` as an
        exponential-affinity cache (:class:`~jaxclip_fs.methods.cache.CacheForm`),
        which the grid search runs at its least-work limit
        (:mod:`~jaxclip_fs.methods.cache_search`); None for other methods.
    """

    init: InitFn
    precompute: PrecomputeFn
    terms: TermsFn = logits_are_pre
    linear: tuple[str, ...] = ()
    loss: LossFn | None = None
    heads: HeadsFn | None = None
    confusion: tuple[str, str] | None = None
    cache_form: Callable[..., Any] | None = None


def _no_values(dataset, dim) -> dict[str, float]:
    del dataset, dim
    return {}


def _no_grid(dataset) -> dict[str, np.ndarray]:
    del dataset
    return {}


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """A method's hyperparameters besides its training's (:class:`Training` adds those).

    Attributes:
      declared: the :class:`~jaxclip_fs.methods.hparams.HParam` s.
      defaults: ``(dataset, dim) -> {name: value}``: every value used when not
        searched -- the search ones at their official defaults (absent where the
        official code has none), the fixed ones, and the training settings.
      grid: ``dataset -> {name: float64 grid}`` for the search hyperparameters, keys
        in the official loop order (outermost first); ties go to the first best.
      neutral: values under which the logits are zero-shot CLIP's (property
        tests), or None when the method has none.
      validation_free: the documented fixed choice of search hyperparameters under
        the ``validation_free`` protocol, over ``defaults`` (needed for those
        without a default).
    """

    declared: tuple[hparams_lib.HParam, ...] = ()
    defaults: Callable[[str | None, int], dict[str, float]] = _no_values
    grid: Callable[[str | None], dict[str, np.ndarray]] = _no_grid
    neutral: Mapping[str, float] | None = None
    validation_free: Mapping[str, float] = dataclasses.field(default_factory=dict)


NO_HYPERPARAMETERS = Hyperparameters()


@dataclasses.dataclass(frozen=True)
class Training:
    """How a method trains: what is learned, by which optimizer, for how long, what is kept.

    Attributes:
      trainable: top-level ``params`` keys the optimizer learns.
      state: top-level ``params`` keys the training forward pass updates (BatchNorm
        statistics; the loss returns their new values).
      optimizer: the update rule and the hyperparameters it reads
        (:mod:`~jaxclip_fs.methods.optimizers`; default cosine AdamW).
      unit: ``"epochs"`` -- the loop runs ``epochs`` passes over the support,
        ``ceil(n / batch_size)`` steps each; ``"steps"`` -- it runs ``steps``
        optimizer updates, the support's batches in turn, epoch after epoch
        (the last epoch cut short); keeps the final iterate, or with
        ``eval_every`` the best on validation of its checks.
      full_batch: every step sees the whole support (one step per epoch; no
        ``batch_size`` hyperparameter).
      epoch_selection: ``"validation"`` (the best epoch on validation) or
        ``"final"`` (the last iterate).
      eval_every: steps with ``"validation"``: the iterates after updates 0, k,
        2k, ... (0-based) are scored on validation and the best is kept -- the
        ``if i % k == 0`` early stopping of an iteration loop (0: none).
      epoch_end: epochs: ``(params, task, hp) -> {state key: value}`` run after
        every epoch's updates (an outer step, e.g. an augmented Lagrangian's
        multiplier update); its keys are ``state`` entries.
      state_estimate: ``(params, task, inputs, labels, weights, hp) -> state``:
        a batch's own values of the ``state`` entries; when given, the trainer
        replaces the trained state by their mean over one more epoch (PyTorch's
        ``swa_utils.update_bn``).
    """

    trainable: tuple[str, ...]
    state: tuple[str, ...] = ()
    optimizer: Optimizer = COSINE_ADAMW
    unit: str = "epochs"
    full_batch: bool = False
    epoch_selection: str = "validation"
    state_estimate: LossFn | None = None
    eval_every: int = 0
    epoch_end: Callable[..., dict] | None = None

    @property
    def length(self) -> str:
        """The hyperparameter naming the loop's length: ``epochs`` or ``steps``."""
        return "steps" if self.unit == "steps" else "epochs"

    @property
    def hparams(self) -> tuple[hparams_lib.HParam, ...]:
        """The loop's hyperparameters (its length, the batch size) and the optimizer's."""
        loop = (hparams_lib.STEPS if self.unit == "steps" else hparams_lib.EPOCHS,)
        if not self.full_batch:
            loop += (hparams_lib.BATCH_SIZE,)
        return loop + self.optimizer.hparams

    def static(self, values: Mapping[str, float]) -> tuple[int, int]:
        """``(batch_size, length)``: the shape-setting settings of ``values`` (a batch size of 0
        means the full support)."""
        batch = 0 if self.full_batch else int(values["batch_size"])
        return batch, int(values[self.length])

    def epochs(self, values: Mapping[str, float], items: int) -> int:
        """The epochs a support of ``items`` real items trains for (steps: the epochs they
        touch, ``ceil(steps / ceil(items / batch_size))``)."""
        if self.unit == "epochs":
            return int(values["epochs"])
        batch = items if self.full_batch else int(values["batch_size"])
        return math.ceil(int(values["steps"]) / max(1, math.ceil(items / batch)))


@dataclasses.dataclass(frozen=True, eq=False)
class Method:
    """A few-shot method: its parts (module docstring), composed.

    Compared and hashed by identity (it keys compiled programs); the registry
    returns one instance per (name, options).

    Attributes:
      card: who it is (:class:`~jaxclip_fs.catalogue.Card`).
      compute: what it computes (:class:`Compute`).
      hyper: its hyperparameters (:class:`Hyperparameters`).
      training: how it trains (:class:`Training`), or None.
      official: what its official code did (the ``paper`` protocol), or None.
      options: the structural options the factory accepts.
      option_values: the options this instance was built with.
      bind: image methods: ``ImageSpec -> Method`` bound to a CLIP.
      taps: a bound image method: the CLIP taps its inputs need.
      towers: a method trained through the CLIP's towers (CoOp, CLIP-LoRA): what it
        adapts (:class:`~jaxclip_fs.methods.images.TowerTraining`); the engine runs its
        training and prediction (``engine/tower_program.py``), not ``init`` / ``loss``.
    """

    card: Card
    compute: Compute
    hyper: Hyperparameters = NO_HYPERPARAMETERS
    training: Training | None = None
    official: Official | None = None
    options: tuple[Option, ...] = ()
    option_values: Mapping[str, str] = dataclasses.field(default_factory=dict)
    bind: Callable[[Any], "Method"] | None = None
    taps: tuple[str, ...] = ()
    towers: Any = None

    # --- who ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.card.name

    @property
    def inputs(self) -> str:
        return self.card.inputs

    @property
    def summary(self) -> str:
        return self.card.summary

    @property
    def label(self) -> str:
        """The variant label: the name, with the options that differ from their defaults."""
        changed = {o.name: self.option_values[o.name] for o in self.options
                   if self.option_values.get(o.name, o.default) != o.default}
        return variant_label(self.name, changed)

    # --- what it computes (read through to ``compute``) ----------------------------------------
    @property
    def init(self) -> InitFn:
        return self.compute.init

    @property
    def precompute(self) -> PrecomputeFn:
        return self.compute.precompute

    @property
    def terms(self) -> TermsFn:
        return self.compute.terms

    @property
    def linear(self) -> tuple[str, ...]:
        return self.compute.linear

    @property
    def loss(self) -> LossFn | None:
        return self.compute.loss

    @property
    def heads(self) -> HeadsFn | None:
        return self.compute.heads

    @property
    def confusion(self) -> tuple[str, str] | None:
        return self.compute.confusion

    # --- how it trains (read through to ``training``) -----------------------------------------
    @property
    def trains(self) -> bool:
        return self.training is not None and bool(self.training.trainable)

    @property
    def trainable(self) -> tuple[str, ...]:
        return self.training.trainable if self.training is not None else ()

    @property
    def state(self) -> tuple[str, ...]:
        return self.training.state if self.training is not None else ()

    @property
    def state_estimate(self) -> LossFn | None:
        return self.training.state_estimate if self.training is not None else None

    @property
    def epoch_selection(self) -> str | None:
        """Which iterate training keeps (``validation`` / ``final``); None without training."""
        return self.training.epoch_selection if self.trains else None

    def keeping_final(self) -> "Method":
        """This method keeping its final iterate (no epoch selection)."""
        if not self.trains or self.training.epoch_selection == "final":
            return self
        return dataclasses.replace(
            self, training=dataclasses.replace(self.training, epoch_selection="final"))

    # --- its hyperparameters ------------------------------------------------------------------
    @property
    def grid(self) -> Callable[[str | None], dict[str, np.ndarray]]:
        return self.hyper.grid

    @property
    def defaults(self) -> Callable[[str | None, int], dict[str, float]]:
        return self.hyper.defaults

    @property
    def hparams(self) -> tuple[hparams_lib.HParam, ...]:
        """Every declared hyperparameter: the method's, then its training's."""
        return self.hyper.declared + (self.training.hparams if self.trains else ())

    @property
    def hparam_specs(self) -> dict[str, hparams_lib.HParam]:
        return {h.name: h for h in self.hparams}

    def names(self, role: str) -> tuple[str, ...]:
        """Names of the hyperparameters with ``role``."""
        return tuple(h.name for h in self.hparams if h.role == role)

    def static(self, values: Mapping[str, float]) -> tuple[int, int]:
        """``(batch_size, length)`` that set a program's shapes; ``(0, 0)`` without training."""
        return self.training.static(values) if self.trains else (0, 0)

    def resolve(self, dataset: str | None, dim: int, overrides=(), *,
                search: bool = True) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Hyperparameter values and the grid still to search.

        Args:
          dataset: registry name choosing per-dataset defaults and grids
            (unknown / None -> the method's generic default).
          dim: feature width D (APE's channel count scales with it).
          overrides: ``["name=value", ...]`` or ``{name: value}`` fixed by the user.
          search: False: nothing is selected (``validation_free``): the
            ``validation_free`` choices over the defaults, and no grid.

        Returns:
          ``(values, grid)``: ``values`` holds defaults updated by the
          overrides, all validated; ``grid`` holds the search grids of the
          search hyperparameters the user did not fix (empty: no search).

        Raises:
          ConfigError: unknown name (listing the valid ones), bad value, or (without
            search) a search hyperparameter with no fixed value.
        """
        specs = self.hparam_specs
        fixed = hparams_lib.parse_assignments(overrides, specs, self.name)
        values = {**self.hyper.defaults(dataset, dim), **fixed}
        if not search:
            values = {**values, **self.hyper.validation_free, **fixed}
            missing = [n for n in self.names("search") if n not in values]
            if missing:
                raise ConfigError(
                    f"method '{self.name}' has no fixed value for {', '.join(missing)} to run "
                    f"without validation: give one (hp {self.name}.{missing[0]}=VALUE)")
        checked = {name: hparams_lib.check_value(specs[name], value, dim)
                   for name, value in values.items()}
        grid = {} if not search else {
            name: g for name, g in self.hyper.grid(dataset).items() if name not in fixed}
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

    if not isinstance(method.card, Card):
        fail("card must be a catalogue.Card")
    specs = method.hparam_specs
    if len(specs) != len(method.hparams):
        fail("a hyperparameter is declared twice")
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
    for field in ("neutral", "validation_free"):
        for name in getattr(method.hyper, field) or {}:
            if name not in specs:
                fail(f"{field} names '{name}', which is not declared")
    training = method.training
    if training is not None:
        if not training.trainable:
            fail("training learns nothing: list the trainable params keys (or drop training)")
        if training.unit not in TRAINING_UNITS:
            fail(f"training.unit must be one of {TRAINING_UNITS}, got '{training.unit}'")
        if training.epoch_selection not in EPOCH_SELECTIONS:
            fail(f"epoch_selection must be one of {EPOCH_SELECTIONS}")
        if (training.unit == "steps" and training.epoch_selection != "final"
                and training.eval_every <= 0):
            fail("a method trained in steps keeps its final iterate (epoch_selection='final') "
                 "unless it is validated every eval_every > 0 updates")
        if training.eval_every and (training.unit != "steps" or training.eval_every < 0):
            fail("eval_every (a positive number of updates) needs training counted in steps")
        if training.epoch_end is not None and (training.unit != "epochs" or not training.state):
            fail("epoch_end updates state once per epoch: it needs unit='epochs' and state keys")
        if training.state_estimate is not None and not training.state:
            fail("state_estimate re-estimates state, but the method declares none")
    for option in method.options:
        value = method.option_values.get(option.name, option.default)
        if value not in option.choices:
            fail(f"option {option.name}={value} is not one of {option.choices}")
    if method.inputs == "images":
        if method.bind is None and not method.taps and method.towers is None:
            fail("an image method needs bind(spec)")
        if method.trains and method.epoch_selection != "final":
            fail("an image method keeps its final epoch (validation per epoch would run the "
                 "frozen CLIP over the validation images every epoch)")
    if method.confusion and method.heads is None:
        fail("confusion names heads, but the method reports none")
    official = method.official
    if official is not None:
        if official.search_on not in OFFICIAL_SEARCH_SPLITS:
            fail(f"official.search_on must be one of {OFFICIAL_SEARCH_SPLITS}, "
                 f"got '{official.search_on}'")
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
