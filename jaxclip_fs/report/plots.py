"""Accuracy-vs-shots plots (PNG), drawn from the curve tables.

One line per method: the mean over seeds with a ±std band, shots on a log2
axis (1, 2, 4, 8, 16); published numbers for the same setting appear as
hollow stars. The figure is built on matplotlib's object API with the Agg
canvas -- no pyplot, so no global backend or figure state is touched.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxclip_fs.io import atomic
from jaxclip_fs.catalogue import display_name
from jaxclip_fs.report.tables import Table


def plot_curves(table: Table, path: str | os.PathLike, subtitle: str = "",
                random_weights: bool = False) -> None:
    """Writes the curves of a methods x shots :class:`Table` to ``path`` (PNG, atomically).

    Args:
      table: from :func:`~jaxclip_fs.report.tables.curve_table`.
      subtitle: second title line (the setting).
      random_weights: adds a red "RANDOM WEIGHTS" warning to the figure.
    """
    figure = Figure(figsize=(7.5, 5.0), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    shots = [int(k) for k in table.columns]
    for i, method in enumerate(table.rows):
        points = [(k, table.entries[(method, str(k))]) for k in shots
                  if (method, str(k)) in table.entries]
        if not points:
            continue
        x = np.array([k for k, _ in points], float)
        mean = np.array([e.mean for _, e in points])
        std = np.array([e.std or 0.0 for _, e in points])
        style = i // 10 % 3  # 10 colours, then the same colours dashed, then dotted
        (line,) = axes.plot(x, mean, marker="os^"[style], linestyle=("-", "--", ":")[style],
                            color=f"C{i % 10}", label=display_name(method))
        axes.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15,
                          linewidth=0)
        for k, entry in points:
            if entry.published is not None:
                axes.plot([k], [entry.published], marker="*", markersize=12, markerfacecolor="none",
                          color=line.get_color(), linestyle="none")
    axes.set_xscale("log", base=2)
    axes.set_xticks(shots, [str(k) for k in shots])
    axes.set_xlabel("shots per class")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.grid(True, alpha=0.3)
    lines = [table.title.split(" -- ")[0]] + textwrap.wrap(subtitle, 90)
    axes.set_title("\n".join(lines), fontsize=9)
    handles, labels = axes.get_legend_handles_labels()
    if any(e.published is not None for e in table.entries.values()):
        (star,) = axes.plot([], [], marker="*", markerfacecolor="none", color="grey",
                            linestyle="none")
        handles, labels = handles + [star], labels + ["published"]
    axes.legend(handles, labels, fontsize=8, loc="best")
    if random_weights:
        figure.text(0.5, 0.5, "RANDOM WEIGHTS\npipeline check only", ha="center", va="center",
                    fontsize=26, color="red", alpha=0.25, rotation=20)
    figure.tight_layout()
    with atomic.atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
