"""Published accuracies, encoded once, with their source.

Source: the 16-shot RN50 comparison table of Li et al., "Logits DeConfusion
with CLIP for Few-Shot Learning" (CVPR 2025), which reports its baselines
(ZS-CLIP, Tip-Adapter, Tip-Adapter-F, APE, APE-T, GDA) next to LDC; restated
in this project's ``REFERENCE.md`` ("Published 16-shot top-1 (%), RN50").
The same paper gives LDC's ViT-B/16 average over the 11 datasets (82.87; its
ZS-CLIP 65.52), which only an average can be compared with.

These are the numbers of OpenAI's CLIP weights with the CoOp splits, seeds
1-3; a comparison is meaningful only for records with real weights (never
random ones), which :func:`published` enforces.
"""

from __future__ import annotations

SOURCE = ("Li et al., Logits DeConfusion with CLIP for Few-Shot Learning, CVPR 2025 "
          "(16-shot table; restated in REFERENCE.md)")

# Column order of the published table and the registry names of its datasets.
DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers",
            "food101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
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
    for dataset, value in zip(DATASETS + (AVERAGE,), row)
}
PUBLISHED.update({
    ("ViT-B/16", 16, "ldc", AVERAGE): 82.87,
    ("ViT-B/16", 16, "zero_shot", AVERAGE): 65.52,
})


def published(backbone: str, weights: str, shots: int, method: str, dataset: str) -> float | None:
    """The published accuracy for this setting, or None (no such number, or random weights).

    Args:
      dataset: a registry name, or :data:`AVERAGE` for the 11-dataset average.
    """
    if str(weights).startswith("random"):
        return None
    return PUBLISHED.get((backbone, int(shots), method, dataset))
