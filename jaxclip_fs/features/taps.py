"""Intermediate image-tower outputs ("taps", for LDC): names, shapes and storage size.

Taps are what :meth:`~jaxclip_fs.clip.model.CLIP.encode_image` returns besides
the embedding: ViT ``block<i>`` = the residual stream after block i, all
``1 + (S/p)^2`` tokens of width W; ModifiedResNet ``layer<i>`` = the NHWC map
after stage i, ``S / 2^(i+1)`` pixels square with ``4 w 2^(i-1)`` channels
(RN50 at 224: layer1 56x56x256, layer2 28x28x512, layer3 14x14x1024,
layer4 7x7x2048). They are stored as float32 whatever the compute dtype.

They are large -- RN50 ``layer1`` is 3.2 MB per image and view -- so
:func:`tap_nbytes` tells the size of a tap cache from the config alone,
before anything is computed.
"""

from __future__ import annotations

import math
from typing import Sequence

from jaxclip_fs.clip.variants import CLIPConfig
from jaxclip_fs.errors import ConfigError

#: Bytes per stored tap value (float32).
TAP_ITEMSIZE = 4


def tap_shape(config: CLIPConfig, tap: str) -> tuple[int, ...]:
    """Shape of one image's ``tap``: ViT [1 + N, W], ResNet [h, h, C].

    Raises:
      ConfigError: ``tap`` is not one of ``config.tap_names()``.
    """
    valid = config.tap_names()
    if tap not in valid:
        raise ConfigError(f"unknown tap '{tap}' for {config.name}; valid: {', '.join(valid)}")
    if config.is_vit:
        return (config.num_patches + 1, config.vision_width)
    stage = int(tap[len("layer"):])
    side = config.image_size // 2 ** (stage + 1)
    return (side, side, 4 * config.vision_width * 2 ** (stage - 1))


def tap_nbytes(config: CLIPConfig, taps: Sequence[str], num_images: int,
               views: int = 1) -> dict[str, int]:
    """Storage bytes of ``taps`` for ``num_images`` images x ``views`` views (float32).

    Nothing is computed: ``prod(tap_shape) * 4 * num_images * views`` per tap.
    """
    return {tap: math.prod(tap_shape(config, tap)) * TAP_ITEMSIZE * num_images * views
            for tap in taps}
