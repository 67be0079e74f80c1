"""Which classes does LDC de-confuse? Confusion of the zero-shot logits ``s`` vs ICD's ``ada``.

The LDC paper motivates ICD by inter-class confusion in CLIP's logits but
never shows which classes it de-confuses. From the validation logits of
zero-shot CLIP (``s``) and of the de-confused ``ada = s + Δ`` this module
computes (numpy only -- ``report/`` never imports jax):

* both confusion matrices, ``count[i, j]`` = validation images of class i
  predicted as j (argmax; ties to the lower index, as ``argmax`` does);
* per ordered pair (true i → predicted j, i ≠ j) the confusion *rate*
  ``count[i, j] / n_i`` under ``s`` and under ``ada``, and the reduction
  ``rate_s - rate_ada`` (positive: ICD removed confusion);
* the ``top`` pairs most confused under ``s`` (ties by class indices).

:func:`write_confusion` saves the analysis as JSON and a PNG (both
row-normalised matrices side by side, and the top pairs' rates as paired bars).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jaxclip_fs.io import atomic

DEFAULT_TOP = 10


def confusion_matrix(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C]: ``out[i, j]`` = rows of label i whose argmax is j."""
    predicted = np.argmax(np.asarray(logits), axis=-1)
    out = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(out, (np.asarray(labels, np.int64), predicted), 1)
    return out


def row_rates(matrix: np.ndarray) -> np.ndarray:
    """``matrix[i] / n_i`` (rows of absent classes stay 0), float64."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, np.float64), where=totals > 0)


def confusion_analysis(s_logits: np.ndarray, ada_logits: np.ndarray, labels: np.ndarray,
                       classnames: Sequence[str], top: int = DEFAULT_TOP) -> dict:
    """The analysis of the module docstring.

    Args:
      s_logits, ada_logits: [M, C] validation logits; labels: int [M].
      classnames: C names.
      top: number of pairs reported (those with a non-zero rate under ``s``).

    Returns:
      JSON-ready dict: ``num_images``, ``accuracy_s``, ``accuracy_ada`` (in %),
      ``confusion_s`` / ``confusion_ada`` (count matrices as lists),
      ``off_diagonal_s`` / ``off_diagonal_ada`` (misclassified images), and
      ``pairs``: ``[{"true", "predicted", "true_name", "predicted_name",
      "count_s", "count_ada", "rate_s", "rate_ada", "reduction"}]``.
    """
    labels = np.asarray(labels, np.int64)
    num_classes = len(classnames)
    m_s = confusion_matrix(s_logits, labels, num_classes)
    m_ada = confusion_matrix(ada_logits, labels, num_classes)
    r_s, r_ada = row_rates(m_s), row_rates(m_ada)
    off = ~np.eye(num_classes, dtype=bool)
    candidates = np.argwhere(off & (m_s > 0))
    ranked = sorted(candidates.tolist(), key=lambda ij: (-r_s[ij[0], ij[1]], ij[0], ij[1]))
    pairs = [{"true": i, "predicted": j, "true_name": classnames[i],
              "predicted_name": classnames[j], "count_s": int(m_s[i, j]),
              "count_ada": int(m_ada[i, j]), "rate_s": float(r_s[i, j]),
              "rate_ada": float(r_ada[i, j]), "reduction": float(r_s[i, j] - r_ada[i, j])}
             for i, j in ranked[:top]]
    n = max(int(labels.size), 1)
    return {
        "num_images": int(labels.size),
        "classnames": list(classnames),
        "accuracy_s": 100.0 * float(np.trace(m_s)) / n,
        "accuracy_ada": 100.0 * float(np.trace(m_ada)) / n,
        "off_diagonal_s": int(m_s[off].sum()),
        "off_diagonal_ada": int(m_ada[off].sum()),
        "confusion_s": m_s.tolist(),
        "confusion_ada": m_ada.tolist(),
        "pairs": pairs,
    }


def plot_confusion(analysis: dict, path: str | os.PathLike, title: str = "") -> None:
    """PNG: row-normalised matrices of ``s`` and ``ada`` and the top pairs' rates (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = analysis["classnames"]
    rates = [row_rates(np.asarray(analysis[k])) for k in ("confusion_s", "confusion_ada")]
    pairs = analysis["pairs"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.8), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1.25]})
    ticks = len(names) <= 30
    for ax, rate, label, acc in zip(axes[:2], rates, ("zero-shot s", "de-confused ada"),
                                    (analysis["accuracy_s"], analysis["accuracy_ada"])):
        image = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_title(f"{label}: {acc:.1f}% on {analysis['num_images']} val images")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if ticks:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(image, ax=axes[1], fraction=0.046, label="rate (row-normalised)")
    ax = axes[2]
    if pairs:
        y = np.arange(len(pairs))
        ax.barh(y - 0.2, [p["rate_s"] for p in pairs], 0.4, label="s (zero-shot)", color="#d62728")
        ax.barh(y + 0.2, [p["rate_ada"] for p in pairs], 0.4, label="ada (after ICD)",
                color="#1f77b4")
        ax.set_yticks(y, [f"{p['true_name']} → {p['predicted_name']}" for p in pairs], fontsize=8)
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no confusion under s", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("confusion rate (true → predicted)")
    ax.set_title(f"top {len(pairs)} confused pairs under s")
    if title:
        fig.suptitle(title)
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_confusion(prefix: str | os.PathLike, analysis: dict, title: str = "") -> tuple[str, str]:
    """Writes ``<prefix>.json`` and ``<prefix>.png``; returns both paths."""
    prefix = os.fspath(prefix)
    atomic.write_json(prefix + ".json", analysis)
    plot_confusion(analysis, prefix + ".png", title)
    return prefix + ".json", prefix + ".png"


def summary_lines(analysis: dict, limit: int = 5) -> list[str]:
    """Human-readable lines for the most confused pairs."""
    lines = [f"confusion on {analysis['num_images']} val images: s {analysis['accuracy_s']:.1f}% "
             f"-> ada {analysis['accuracy_ada']:.1f}% ({analysis['off_diagonal_s']} -> "
             f"{analysis['off_diagonal_ada']} misclassified)"]
    for p in analysis["pairs"][:limit]:
        lines.append(f"  {p['true_name']} -> {p['predicted_name']}: {100 * p['rate_s']:.0f}% -> "
                     f"{100 * p['rate_ada']:.0f}%")
    return lines
