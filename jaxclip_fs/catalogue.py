"""The shipped methods by name, without jax: display names, inputs, papers, published figures.

This is the one place besides each method's own module and the registry
(``jaxclip_fs.methods``) where a method is named: the report, the CLI's help
and the reproduction configs read it, so none of them needs to import jax or
to spell a method's name again.

A *variant* of a method is the method with structural options
(``ldc[ablation=maf_only,fusion=concat]``): :func:`variant_label` writes
that label, :func:`split_label` reads it, :func:`display_name` shows it.

Published figures: the 16-shot RN50 table of Li et al., "Logits DeConfusion
with CLIP for Few-Shot Learning" (CVPR 2025), which restates its baselines
next to LDC, plus LDC's ViT-B/16 average. They are OpenAI's CLIP weights on
the CoOp splits; :func:`published` never answers for random weights.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

#: What a method reads (``Method.inputs``): CLIP features; the paired
#: ``[adapted | original]`` features of an IMO-adapted and the original
#: encoder; or images through the frozen CLIP (taps, zero-shot logits).
INPUT_KINDS = ("features", "paired", "images")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A shipped method.

    Attributes:
      name: registry name.
      display: the papers' name for tables.
      inputs: one of :data:`INPUT_KINDS`.
      paper: where it comes from.
    """

    name: str
    display: str
    inputs: str
    paper: str


ENTRIES: tuple[Entry, ...] = (
    Entry("zero_shot", "ZS-CLIP", "features", "Radford et al., ICML 2021"),
    Entry("tip_adapter", "Tip-Adapter", "features", "Zhang et al., ECCV 2022"),
    Entry("tip_adapter_f", "Tip-Adapter-F", "features", "Zhang et al., ECCV 2022"),
    Entry("tip_x", "Tip-X", "features", "Udandarao et al., ICCV 2023"),
    Entry("ape", "APE", "features", "Zhu et al., ICCV 2023"),
    Entry("ape_t", "APE-T", "features", "Zhu et al., ICCV 2023"),
    Entry("gda", "GDA", "features", "Wang et al., ICLR 2024"),
    Entry("clip_adapter", "CLIP-Adapter", "features", "Gao et al., IJCV 2023"),
    Entry("ldc", "LDC", "images", "Li et al., CVPR 2025"),
    Entry("ta_pp", "TA++", "paired", "Kravets & Namboodiri, BMVC 2024"),
    Entry("tx_pp", "TX++", "paired", "Kravets & Namboodiri, BMVC 2024"),
)
_BY_NAME: Mapping[str, Entry] = {e.name: e for e in ENTRIES}
NAMES = tuple(_BY_NAME)


def entry(name: str) -> Entry | None:
    """The shipped method ``name`` (a variant label's method), or None for a user's method."""
    return _BY_NAME.get(split_label(name)[0])


def variant_label(name: str, options: Mapping[str, str] | None = None) -> str:
    """``name`` or ``name[k1=v1,k2=v2]`` (options sorted; pass only non-default ones)."""
    if not options:
        return name
    return name + "[" + ",".join(f"{k}={options[k]}" for k in sorted(options)) + "]"


def split_label(label: str) -> tuple[str, dict[str, str]]:
    """Inverse of :func:`variant_label`: ``"ldc[fusion=concat]"`` -> ``("ldc", {"fusion": "concat"})``."""
    name, bracket, rest = label.partition("[")
    if not bracket:
        return label, {}
    pairs = [p.partition("=") for p in rest.rstrip("]").split(",") if p]
    return name, {k: v for k, _, v in pairs}  # (a record's label may lack the '=')


def display_name(label: str) -> str:
    """The papers' name of a method or variant (``LDC [fusion=concat]``); the label otherwise."""
    name, options = split_label(label)
    found = _BY_NAME.get(name)
    shown = found.display if found else name
    if options:
        shown += " [" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + "]"
    return shown


def order_key(label: str) -> tuple:
    """Sort key: shipped methods in catalogue order, then others by name; variants after plain."""
    name, options = split_label(label)
    position = NAMES.index(name) if name in _BY_NAME else len(NAMES)
    return (position, name, sorted(options.items()))


# --- datasets and weights ------------------------------------------------------------------

#: The papers' 11 benchmark sets (dataset registry names), in their tables' column order.
BENCHMARK_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers",
                      "food101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
#: The weights id of randomly initialised CLIPs (loader ids such as ``random(seed=0)``).
RANDOM_WEIGHTS = "random"


def is_random_weights(weights: str) -> bool:
    """True for ``"random"`` and loader ids such as ``"random(seed=0)"``."""
    return str(weights).startswith(RANDOM_WEIGHTS)


# --- published figures ---------------------------------------------------------------------

PUBLISHED_SOURCE = ("Li et al., Logits DeConfusion with CLIP for Few-Shot Learning, CVPR 2025 "
                    "(16-shot RN50 table with its baselines; ViT-B/16 average)")
#: Column order of the published table (dataset registry names) and its last column.
PUBLISHED_DATASETS = BENCHMARK_DATASETS
AVERAGE = "average"

_RN50_16_SHOT = {
    #                 IN     Cal    Pets   Cars   Flo    Food   FGVC   SUN    DTD    Euro   UCF    avg  # noqa: E501
    "zero_shot":     (60.32, 85.92, 85.83, 55.74, 66.02, 77.32, 17.10, 58.52, 42.20, 37.52, 61.35, 58.89),  # noqa: E501
    "tip_adapter":   (62.01, 90.18, 88.14, 66.77, 89.89, 77.83, 29.76, 66.85, 60.93, 70.54, 70.58, 70.32),  # noqa: E501
    "tip_adapter_f": (65.51, 92.86, 89.70, 75.74, 94.80, 79.43, 35.55, 71.47, 66.55, 84.54, 78.03, 75.83),  # noqa: E501
    "ape":           (63.42, 92.49, 88.88, 70.31, 91.96, 78.50, 31.26, 69.72, 67.73, 78.16, 74.49, 73.36),  # noqa: E501
    "ape_t":         (66.07, 93.14, 90.24, 76.53, 96.14, 79.53, 39.62, 72.73, 69.66, 86.70, 79.73, 77.28),  # noqa: E501
    "gda":           (63.82, 92.55, 88.81, 75.12, 95.72, 79.05, 40.61, 70.70, 66.51, 86.12, 77.53, 76.05),  # noqa: E501
    "ldc":           (66.63, 93.63, 90.54, 81.21, 96.39, 79.28, 53.47, 72.72, 71.39, 90.20, 82.08, 79.78),  # noqa: E501
}

#: (backbone, shots, method, dataset or "average") -> published top-1 accuracy in %.
PUBLISHED: dict[tuple[str, int, str, str], float] = {
    ("RN50", 16, method, dataset): value
    for method, row in _RN50_16_SHOT.items()
    for dataset, value in zip(PUBLISHED_DATASETS + (AVERAGE,), row)
}
PUBLISHED.update({
    ("ViT-B/16", 16, "ldc", AVERAGE): 82.87,
    ("ViT-B/16", 16, "zero_shot", AVERAGE): 65.52,
})


def published(backbone: str, weights: str, shots: int, method: str, dataset: str) -> float | None:
    """The published accuracy for this setting, or None (no such number, or random weights).

    Only the plain method has published figures (not its variants).

    Args:
      dataset: a registry name, or :data:`AVERAGE` for the 11-dataset average.
    """
    if is_random_weights(weights):
        return None
    return PUBLISHED.get((backbone, int(shots), method, dataset))
