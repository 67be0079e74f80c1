"""Few-shot methods as pure functions (init / precompute / terms / logits / loss), and a registry.

``get(name)`` returns a :class:`~jaxclip_fs.methods.base.Method`. The image
methods (``ldc``, ``ta_pp``, ``tx_pp``; ``Method.needs_images``) are registered
with their logit-level parts -- LDC's β fusion of its head logits, TA++ / TX++
on paired [adapted | original] features -- while their training and features
come from images (``jaxclip_fs.sweep.image_methods``). Imports point down:
nothing here imports ``clip/`` or ``data/``.
"""

from __future__ import annotations

from typing import Callable

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.methods import (
    ape, ape_t, clip_adapter, gda, ldc, ta_pp, tip_adapter, tip_adapter_f, tip_x, tx_pp, zero_shot,
)
from jaxclip_fs.methods.base import Method, cross_entropy, logits, loss
from jaxclip_fs.methods.task import EvalSet, Task

# Methods that need images (multi-level CLIP features or an adapted encoder).
IMAGE_METHODS = ("ldc", "ta_pp", "tx_pp")

_FACTORIES: dict[str, Callable[[], Method]] = {
    "zero_shot": zero_shot.zero_shot,
    "tip_adapter": tip_adapter.tip_adapter,
    "tip_adapter_f": tip_adapter_f.tip_adapter_f,
    "tip_x": tip_x.tip_x,
    "ape": ape.ape,
    "ape_t": ape_t.ape_t,
    "gda": gda.gda,
    "clip_adapter": clip_adapter.clip_adapter,
}
FEATURE_METHODS = tuple(_FACTORIES)
_FACTORIES.update({"ldc": ldc.ldc, "ta_pp": ta_pp.ta_pp, "tx_pp": tx_pp.tx_pp})


def register(factory: Callable[[], Method]) -> None:
    """Adds a method factory to the registry under its method's name."""
    _FACTORIES[factory().name] = factory


def names() -> tuple[str, ...]:
    """All registered method names."""
    return tuple(_FACTORIES)


def get(name: str) -> Method:
    """The method called ``name``.

    Raises:
      ConfigError: unknown name (lists the known ones).
    """
    if name in _FACTORIES:
        return _FACTORIES[name]()
    raise ConfigError(f"unknown method '{name}'; known methods: {', '.join(names())}")


__all__ = ["EvalSet", "FEATURE_METHODS", "IMAGE_METHODS", "Method", "Task", "cross_entropy", "get",
           "logits", "loss", "names", "register"]
