"""Prompt templates per dataset.

The benchmark sets use the single templates of CoOp / Tip-Adapter; ImageNet
and its out-of-distribution variants use the 7-template ensemble Tip-Adapter
and APE use (CLIP's
selected subset). The offline sets' templates (``digits``,
``fashion_mnist``, image folders) are ours, not from any paper.
"""

from __future__ import annotations


def clean_classname(name: str) -> str:
    """Class-name cleaning of CoOp's and Tip-Adapter's prompt code: ``_`` -> space."""
    return name.replace("_", " ")


IMAGENET_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "imagenet": IMAGENET_TEMPLATES,
    "imagenet_v2": IMAGENET_TEMPLATES,
    "imagenet_sketch": IMAGENET_TEMPLATES,
    "imagenet_a": IMAGENET_TEMPLATES,
    "imagenet_r": IMAGENET_TEMPLATES,
    "caltech101": ("a photo of a {}.",),
    "oxford_pets": ("a photo of a {}, a type of pet.",),
    "stanford_cars": ("a photo of a {}.",),
    "oxford_flowers": ("a photo of a {}, a type of flower.",),
    "food101": ("a photo of {}, a type of food.",),
    "fgvc_aircraft": ("a photo of a {}, a type of aircraft.",),
    "sun397": ("a photo of a {}.",),
    "dtd": ("{} texture.",),
    "eurosat": ("a centered satellite photo of {}.",),
    "ucf101": ("a photo of a person doing {}.",),
    # ours:
    "digits": ("a photo of the digit {}.",),
    "fashion_mnist": ("a photo of a {}.",),
    "folder": ("a photo of a {}.",),
}
