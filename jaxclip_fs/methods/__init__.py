"""Few-shot methods as pure functions (init / precompute / terms / logits / loss), and a registry.

``get(name, **options)`` returns a :class:`~jaxclip_fs.methods.base.Method`;
``get_variant(label)`` the same from a variant label (``ldc[fusion=concat]``).
The shipped methods are the cards of :data:`jaxclip_fs.catalogue.CARDS`: each
card names its factory (``jaxclip_fs.methods.<name>.<name>``), registered here
in card order; ``register(factory)`` adds a method defined anywhere (its
:class:`~jaxclip_fs.catalogue.Card` travels with it). A method says what it
reads (``card.inputs``: features, paired features or images) and the engine
feeds it accordingly -- nothing outside a method's own module and its card
routes on its name. Every factory is checked when registered
(:func:`~jaxclip_fs.methods.base.check_method`). Imports point down: nothing
here imports ``clip/``, ``data/``, ``features/`` or above.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable

from jaxclip_fs.catalogue import CARDS, Card, split_label
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.methods.base import (
    Compute, Hyperparameters, Method, Official, Training, check_method, cross_entropy, logits,
    training_loss,
)
from jaxclip_fs.methods.optimizers import COSINE_ADAMW, Optimizer
from jaxclip_fs.methods.task import EvalSet, Task

Factory = Callable[..., Method]
_FACTORIES: dict[str, Factory] = {}


@functools.lru_cache(maxsize=None)
def _instance(name: str, options: tuple[tuple[str, str], ...]) -> Method:
    """One :class:`Method` per (name, options): equal requests share compiled programs."""
    return _FACTORIES[name](**dict(options))


def register(factory: Factory) -> None:
    """Adds a method factory to the registry under its method's name (checked first).

    The factory takes the method's options as keyword arguments (all with defaults).

    Raises:
      ValueError: the method's declarations are inconsistent (names the rule).
    """
    method = check_method(factory())
    for option in method.options:
        for choice in option.choices:
            check_method(factory(**{option.name: choice}))
    _FACTORIES[method.name] = factory
    _instance.cache_clear()


def unregister(name: str) -> None:
    """Removes a method from the registry (e.g. one a notebook registered)."""
    _FACTORIES.pop(name, None)
    _instance.cache_clear()


def shipped_factory(card: Card) -> Factory:
    """The factory a shipped card names (imports its module).

    Raises:
      ValueError: the module has no such factory, or its method carries another card.
    """
    module, function = card.factory_path
    factory = getattr(importlib.import_module(module), function, None)
    if factory is None:
        raise ValueError(f"method '{card.name}': {module} has no factory '{function}'")
    if factory().card is not card:
        raise ValueError(f"method '{card.name}': its factory must build it with its catalogue "
                         f"card (catalogue.card('{card.name}'))")
    return factory


for _card in CARDS:
    register(shipped_factory(_card))


def names() -> tuple[str, ...]:
    """All registered method names."""
    return tuple(_FACTORIES)


def get(name: str, **options: str) -> Method:
    """The method called ``name``, built with ``options``.

    Raises:
      ConfigError: unknown name (lists the known ones) or option (lists the valid ones).
    """
    if name not in _FACTORIES:
        raise ConfigError(f"unknown method '{name}'; known methods: {', '.join(names())}")
    if options:
        declared = {o.name: o for o in _instance(name, ()).options}
        for key, value in options.items():
            if key not in declared:
                valid = ", ".join(declared) or "(none)"
                raise ConfigError(f"method '{name}' has no option '{key}'; its options: {valid}")
            if value not in declared[key].choices:
                raise ConfigError(f"option {name}.{key} must be one of "
                                  f"{', '.join(declared[key].choices)}, got '{value}'")
    return _instance(name, tuple(sorted(options.items())))


def get_variant(label: str) -> Method:
    """The method of a variant label (``"ldc[ablation=maf_only]"``, or a plain name)."""
    name, options = split_label(label)
    return get(name, **options)


__all__ = ["COSINE_ADAMW", "Card", "Compute", "EvalSet", "Hyperparameters", "Method", "Official",
           "Optimizer", "Task", "Training", "cross_entropy", "get", "get_variant", "logits",
           "names", "register", "training_loss", "unregister"]
