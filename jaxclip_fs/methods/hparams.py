"""Hyperparameters: declarations, per-dataset defaults and grids, user overrides.

Every method declares its hyperparameters as :class:`HParam` s with a role:

* ``"search"`` -- chosen on validation over the method's grid unless the
  user fixes it (``--hp alpha=2``); its default (if any) is the value used
  while training (e.g. Tip-Adapter-F trains with ``init_alpha``).
* ``"fixed"`` -- a model setting, never searched (APE's ``k``, ``lambda1``).
* ``"train"`` -- an optimiser setting (``epochs``, ``lr``, ``batch_size`` ...).

Values travel as float32 arrays (``k`` and ``epochs`` included, so they can
be vmapped); only ``batch_size`` and the largest ``epochs`` of a batch must be
Python ints (they set shapes and scan lengths).
Defaults and grids are keyed by the dataset registry names
(:data:`DATASETS`); an unknown or missing dataset gets the method's generic
default.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from jaxclip_fs.catalogue import BENCHMARK_DATASETS
from jaxclip_fs.errors import ConfigError

# The dataset registry's names (jaxclip_fs/data); methods/ may not import data/.
DATASETS = BENCHMARK_DATASETS
# Feature width the official configs were written for (RN50).
REFERENCE_DIM = 1024

ROLES = ("search", "fixed", "train")


@dataclasses.dataclass(frozen=True)
class HParam:
    """One hyperparameter of a method.

    Attributes:
      name: as in ``docs/methods.md`` (``alpha``, ``beta``, ``k`` ...).
      role: ``"search"``, ``"fixed"`` or ``"train"`` (module docstring).
      doc: one line for ``--help`` and error messages.
      minimum: smallest allowed value (inclusive) or None.
      maximum: largest allowed value (inclusive) or None; the string ``"dim"``
        means the feature width D.
      strictly_positive: the value must be > minimum (``lr``, ``eps``).
      integer: the value must be a whole number (``k``, ``epochs``, ``batch_size``).
    """

    name: str
    role: str
    doc: str
    minimum: float | None = None
    maximum: float | str | None = None
    strictly_positive: bool = False
    integer: bool = False

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")


def table_row(table: Mapping[str, object], dataset: str | None, default_dataset: str):
    """``table[dataset]``; datasets not in the table use ``table[default_dataset]``."""
    return table[dataset] if dataset in table else table[default_dataset]


def official_grid(maximum: float, steps: int, start: float = 0.1) -> np.ndarray:
    """Tip-Adapter / APE search grid ``start + i (maximum - start) / steps``, i < steps.

    Float64, as the official Python lists; cast to float32 where computed on.
    """
    return start + np.arange(steps, dtype=np.float64) * (maximum - start) / steps


def scale_channels(k_reference: int, dim: int) -> int:
    """A channel count tuned for D = 1024 (RN50) rescaled to width ``dim``.

    The official APE configs exist only for RN50; for another width we keep
    the same fraction of channels, ``round(k · dim / 1024)`` (at least 1).
    """
    return max(1, int(round(k_reference * dim / REFERENCE_DIM)))


def check_value(spec: HParam, value: float, dim: int) -> float:
    """Validates one value against its declaration; returns it as float.

    Raises:
      ConfigError: one line naming the hyperparameter and the rule broken.
    """
    if not math.isfinite(value):
        raise ConfigError(f"hyperparameter '{spec.name}' must be finite, got {value}")
    if spec.integer and value != int(value):
        raise ConfigError(f"hyperparameter '{spec.name}' must be a whole number, got {value}")
    if spec.minimum is not None:
        if spec.strictly_positive and value <= spec.minimum:
            raise ConfigError(
                f"hyperparameter '{spec.name}' must be > {spec.minimum:g}, got {value:g}")
        if value < spec.minimum:
            raise ConfigError(
                f"hyperparameter '{spec.name}' must be >= {spec.minimum:g}, got {value:g}")
    maximum = dim if spec.maximum == "dim" else spec.maximum
    if maximum is not None and value > maximum:
        what = f"the feature width {dim}" if spec.maximum == "dim" else f"{maximum:g}"
        raise ConfigError(f"hyperparameter '{spec.name}' must be <= {what}, got {value:g}")
    return float(value)


def parse_assignments(assignments, valid: Mapping[str, HParam], method: str) -> dict[str, float]:
    """Parses ``["alpha=1.5", "beta=2"]`` (or a mapping) into ``{name: float}``.

    Raises:
      ConfigError: malformed item, unknown name (lists the valid names),
        a repeated name or a non-numeric value.
    """
    items = assignments.items() if isinstance(assignments, Mapping) else None
    if items is None:
        items = []
        for text in assignments:
            name, sep, value = str(text).partition("=")
            if not sep or not name.strip():
                raise ConfigError(f"a hyperparameter is NAME=VALUE, got '{text}'")
            items.append((name.strip(), value.strip()))
    parsed: dict[str, float] = {}
    names = ", ".join(valid) if valid else "(none)"
    for name, value in items:
        if name not in valid:
            raise ConfigError(
                f"unknown hyperparameter '{name}' for method '{method}'; valid names: {names}")
        if name in parsed:
            raise ConfigError(f"hyperparameter '{name}' given twice")
        try:
            parsed[name] = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"hyperparameter '{name}' needs a number, got '{value}'") from None
    return parsed


# Hyperparameters shared by every method; named once here.
ALPHA = HParam("alpha", "search", "weight of the adapter's logits added to the zero-shot logits",
               minimum=0.0)
BETA = HParam("beta", "search", "sharpness of the cache affinity exp(-beta (1 - A))", minimum=0.0)
EPOCHS = HParam("epochs", "train", "training epochs (best epoch chosen on validation)", minimum=1,
                integer=True)
STEPS = HParam("steps", "train",
               "training steps (optimizer updates), however many epochs they span",
               minimum=1, integer=True)
BATCH_SIZE = HParam("batch_size", "train", "minibatch size", minimum=1, integer=True)
LR = HParam("lr", "train", "AdamW peak learning rate (cosine decay per step)", minimum=0.0,
            strictly_positive=True)
EPS = HParam("eps", "train", "AdamW epsilon", minimum=0.0, strictly_positive=True)
WEIGHT_DECAY = HParam("weight_decay", "train", "AdamW decoupled weight decay", minimum=0.0)
#: The default training's hyperparameters: the loop's epochs and batch size, cosine AdamW's
#: lr, eps and weight decay (``methods.base.Training`` declares them for a method).
TRAINING = (EPOCHS, LR, BATCH_SIZE, EPS, WEIGHT_DECAY)
#: The norm at which a probe's class prototypes start (``norm · text``). Feature files hold
#: unit class embeddings; the CoOp-family codes train the text encoder's raw outputs, whose
#: norm sets their step sizes (docs/methods.md, "The probes' prototype norm").
TEXT_NORM = HParam("text_norm", "fixed", "norm of the class prototypes at initialisation "
                   "(the text encoder's raw output norm in the official code; 1: unit)",
                   minimum=0.0, strictly_positive=True)
