"""CLIP's image preprocessing on PIL images, equal to the torchvision pipeline.

OpenAI CLIP (and open_clip's ``image_transform(size, is_train=False)``)::

    Compose([Resize(size, BICUBIC), CenterCrop(size), convert("RGB"),
             ToTensor(), Normalize(CLIP_MEAN, CLIP_STD)])

:func:`preprocess` reproduces it with Pillow alone: the same output size
(short side -> ``size``, long side ``int(size * long / short)``), the same
crop offsets (``int(round((H - size) / 2))``, Python's half-to-even round),
the same float32 arithmetic ``(x / 255 - mean) / std``; only the layout
differs: HWC instead of CHW.
"""

from __future__ import annotations


import numpy as np
from PIL import Image

from jaxclip_fs.data.images import open_image_file
from jaxclip_fs.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MEAN32 = np.asarray(CLIP_MEAN, dtype=np.float32)
_STD32 = np.asarray(CLIP_STD, dtype=np.float32)


# Decoding a file (RGB, one-line DataError naming it) is the data layer's: one function for
# `embed` and the datasets.
load_image = open_image_file


def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(size)``: short side to ``size``.

    The long side becomes ``int(size * long / short)`` (truncated), as in
    ``torchvision.transforms.functional._compute_resized_output_size``.
    """
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def to_clip_array(img: Image.Image) -> np.ndarray:
    """``Normalize(mean, std)(ToTensor()(img))`` in HWC: float32 [H, W, 3].

    ``img`` must be RGB. Computed in float32 as torch does:
    ``(x / 255 - mean) / std``.
    """
    pixels = np.asarray(img, dtype=np.float32)
    return (pixels / np.float32(255.0) - _MEAN32) / _STD32


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """CLIP's evaluation transform of one PIL image.

    Bicubic resize of the short side to ``size`` (skipped when the size is
    already right, as torchvision does), center crop ``size x size``, convert
    to RGB, scale to [0, 1], normalise with ``CLIP_MEAN``/``CLIP_STD``. The
    resize runs in the image's own mode, as in CLIP (Pillow resizes palette
    images with nearest neighbour and RGBA premultiplied by alpha).

    Args:
      img: any PIL image.
      size: output side S (224 for most CLIP variants).

    Returns:
      float32 [S, S, 3].
    """
    if size < 1:
        raise ConfigError(f"image size must be >= 1, got {size}")
    width, height = img.size
    new_size = short_side_size(width, height, size)
    if new_size != (width, height):
        img = img.resize(new_size, Image.Resampling.BICUBIC)
    new_width, new_height = new_size
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return to_clip_array(img.convert("RGB"))
