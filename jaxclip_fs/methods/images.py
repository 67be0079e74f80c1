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
