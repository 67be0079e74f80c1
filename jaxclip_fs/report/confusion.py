"""Which classes does a method de-confuse? Class confusions of two of its heads, compared.

LDC motivates its inter-class de-confusion (ICD) by confusion in CLIP's
zero-shot logits ``s`` but never shows which classes it de-confuses. A method
that names two heads in ``Method.confusion`` (LDC: zero-shot ``s`` before,
``ada = s + Δ`` after) gets, from those heads' logits on the rows it selected
on, this analysis (numpy only -- ``report/`` never imports jax):

* both confusion matrices, ``count[i, j]`` = images of class i predicted
  as j (argmax; ties to the lower index, as ``argmax`` does);
* per ordered pair (true i → predicted j, i ≠ j) the confusion *rate*
  ``count[i, j] / n_i`` before and after, and the reduction
  ``rate_before - rate_after`` (positive: the method removed confusion);
* the ``top`` pairs most confused before (ties by class indices).

:func:`write_confusion` saves the analysis as JSON and a PNG (both
row-normalised matrices side by side, and the top pairs' rates as paired
bars), labelled with the split it was computed on and, for random weights,
as a pipeline check only.
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


def confusion_analysis(before_logits: np.ndarray, after_logits: np.ndarray, labels: np.ndarray,
                       classnames: Sequence[str], top: int = DEFAULT_TOP, *,
                       heads: tuple[str, str] = ("s", "ada"), split: str = "val",
                       random_weights: bool = False) -> dict:
    """The analysis of the module docstring.

    Args:
      before_logits, after_logits: [M, C] logits of the two heads; labels: int [M].
      classnames: C names.
      top: number of pairs reported (those with a non-zero rate before).
      heads: the two heads' names; split: where the rows come from.
      random_weights: the CLIP had random weights (labelled in every output).

    Returns:
      JSON-ready dict: ``heads`` {before, after}, ``split``, ``random_weights``,
      ``num_images``, ``accuracy_before`` / ``accuracy_after`` (in %),
      ``confusion_before`` / ``confusion_after`` (count matrices as lists),
      ``off_diagonal_before`` / ``off_diagonal_after`` (misclassified images),
      and ``pairs``: ``[{"true", "predicted", "true_name", "predicted_name",
      "count_before", "count_after", "rate_before", "rate_after", "reduction"}]``.
    """
    labels = np.asarray(labels, np.int64)
    num_classes = len(classnames)
    m_b = confusion_matrix(before_logits, labels, num_classes)
    m_a = confusion_matrix(after_logits, labels, num_classes)
    r_b, r_a = row_rates(m_b), row_rates(m_a)
    off = ~np.eye(num_classes, dtype=bool)
    candidates = np.argwhere(off & (m_b > 0))
    ranked = sorted(candidates.tolist(), key=lambda ij: (-r_b[ij[0], ij[1]], ij[0], ij[1]))
    pairs = [{"true": i, "predicted": j, "true_name": classnames[i],
              "predicted_name": classnames[j], "count_before": int(m_b[i, j]),
              "count_after": int(m_a[i, j]), "rate_before": float(r_b[i, j]),
              "rate_after": float(r_a[i, j]), "reduction": float(r_b[i, j] - r_a[i, j])}
             for i, j in ranked[:top]]
    n = max(int(labels.size), 1)
    return {
        "heads": {"before": heads[0], "after": heads[1]},
        "split": split,
        "random_weights": bool(random_weights),
        "num_images": int(labels.size),
        "classnames": list(classnames),
        "accuracy_before": 100.0 * float(np.trace(m_b)) / n,
        "accuracy_after": 100.0 * float(np.trace(m_a)) / n,
        "off_diagonal_before": int(m_b[off].sum()),
        "off_diagonal_after": int(m_a[off].sum()),
        "confusion_before": m_b.tolist(),
        "confusion_after": m_a.tolist(),
        "pairs": pairs,
    }


RANDOM_LABEL = "RANDOM WEIGHTS: a pipeline check, not a result"


def plot_confusion(analysis: dict, path: str | os.PathLike, title: str = "") -> None:
    """PNG: row-normalised matrices of ``s`` and ``ada`` and the top pairs' rates (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = analysis["classnames"]
    before, after = analysis["heads"]["before"], analysis["heads"]["after"]
    rates = [row_rates(np.asarray(analysis[k])) for k in ("confusion_before", "confusion_after")]
    pairs = analysis["pairs"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.8), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1.25]})
    ticks = len(names) <= 30
    for ax, rate, label, acc in zip(axes[:2], rates, (before, after),
                                    (analysis["accuracy_before"], analysis["accuracy_after"])):
        image = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_title(f"{label}: {acc:.1f}% on {analysis['num_images']} {analysis['split']} images")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if ticks:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(image, ax=axes[1], fraction=0.046, label="rate (row-normalised)")
    ax = axes[2]
    if pairs:
        y = np.arange(len(pairs))
        ax.barh(y - 0.2, [p["rate_before"] for p in pairs], 0.4, label=before, color="#d62728")
        ax.barh(y + 0.2, [p["rate_after"] for p in pairs], 0.4, label=after, color="#1f77b4")
        ax.set_yticks(y, [f"{p['true_name']} → {p['predicted_name']}" for p in pairs], fontsize=8)
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no confusion under {before}", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("confusion rate (true → predicted)")
    ax.set_title(f"top {len(pairs)} confused pairs under {before}")
    if analysis.get("random_weights"):
        title = f"{title} -- {RANDOM_LABEL}" if title else RANDOM_LABEL
    if title:
        fig.suptitle(title, color="#b00000" if analysis.get("random_weights") else "black")
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
    before, after = analysis["heads"]["before"], analysis["heads"]["after"]
    lines = [f"confusion on {analysis['num_images']} {analysis['split']} images: {before} "
             f"{analysis['accuracy_before']:.1f}% -> {after} {analysis['accuracy_after']:.1f}% "
             f"({analysis['off_diagonal_before']} -> {analysis['off_diagonal_after']} "
             f"misclassified)" + (f" [{RANDOM_LABEL}]" if analysis.get("random_weights") else "")]
    for p in analysis["pairs"][:limit]:
        lines.append(f"  {p['true_name']} -> {p['predicted_name']}: "
                     f"{100 * p['rate_before']:.0f}% -> {100 * p['rate_after']:.0f}%")
    return lines
