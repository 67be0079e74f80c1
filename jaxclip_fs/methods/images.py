"""What image-input methods read: a frozen CLIP's outputs per image, and the CLIP's shape facts.

An image method (``Method.inputs == "images"``) never sees pixels or a CLIP
module (``methods/`` imports no ``clip/``): the image pipeline runs the
frozen CLIP and hands the method, per image, :class:`ImageInputs` -- the
intermediate outputs ("taps") it asked for, the zero-shot logits ``s`` and
the image embedding ``f``. Before that, the method is bound to the CLIP
(``Method.bind(spec)``) through an :class:`ImageSpec`: which taps exist and
their shapes, the embedding width, and the CLIP's frozen projector (ResNet:
the attention pool on a ``[B, h, w, c]`` map; ViT: ``@ proj`` on a
``[B, W]`` vector), whose variables arrive as ``task.frozen["projector"]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax

#: ``project(projector_variables, x) -> [B, E]``: the CLIP's frozen projector.
Projector = Callable[[Any, jax.Array], jax.Array]


class ImageInputs(NamedTuple):
    """The frozen CLIP's outputs for B images.

    Attributes:
      taps: the requested taps in the method's order: ``[B, h, w, c]``
        (ResNet layers) or ``[B, 1 + N, W]`` (ViT blocks, all tokens).
      s: [B, C] zero-shot logits ``logit_scale · f̂ Wᵀ``.
      features: [B, E] the image embedding ``f`` (not normalised).
    """

    taps: tuple[jax.Array, ...]
    s: jax.Array
    features: jax.Array


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """A frozen CLIP as an image method sees it (hashable: it keys compiled programs).

    Attributes:
      tower: ``"resnet"`` or ``"vit"``.
      taps: every tap the CLIP offers, in depth order, with its per-image
        shape: ``(("layer1", (56, 56, 256)), ...)`` or ``(("block1", (50, 768)), ...)``.
      embed_dim: E, the image embedding width.
      project: the frozen projector (module docstring).
    """

    tower: str
    taps: tuple[tuple[str, tuple[int, ...]], ...]
    embed_dim: int
    project: Projector

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.taps)

    def shape(self, tap: str) -> tuple[int, ...]:
        return dict(self.taps)[tap]


def needs_binding(*args, **kwargs):
    """Stands in for an image method's functions until ``Method.bind(spec)`` provides them."""
    raise RuntimeError("an image method must be bound to a CLIP first: Method.bind(spec)")


#: What a method trained through CLIP's towers adapts: ``context`` -- learned context
#: vectors the text tower reads (prompt learning); ``lora`` -- low-rank factors in the
#: attention projections of the towers.
ADAPTATIONS = ("context", "lora")
#: The support pool such a method trains on: the frozen image tower's ``features`` of
#: augmented views (computed once), or ``pixels`` (cropped on device every step).
TOWER_POOLS = ("features", "pixels")


@dataclasses.dataclass(frozen=True)
class TowerTraining:
    """How a method trains *through* the frozen CLIP's towers (hashable; the engine's tower
    program builds the training recipe from it -- ``methods/`` never sees the CLIP module).

    Attributes:
      adaptation: one of :data:`ADAPTATIONS`.
      pool: one of :data:`TOWER_POOLS`.
      crop_scale: RandomResizedCrop area range of the training views.
      options: the adaptation's structural settings, ``((name, value), ...)``
        (context: ``init`` -- ``random`` or a phrase, ``n_ctx``; LoRA: ``rank``,
        ``alpha``, ``dropout``, ``params``, ``position``, ``encoder``).
    """

    adaptation: str
    pool: str
    crop_scale: tuple[float, float] = (0.08, 1.0)
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.adaptation not in ADAPTATIONS:
            raise ValueError(f"adaptation must be one of {ADAPTATIONS}, got {self.adaptation!r}")
        if self.pool not in TOWER_POOLS:
            raise ValueError(f"pool must be one of {TOWER_POOLS}, got {self.pool!r}")

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)
