"""PNG charts: training curves, confusion matrices and Grad-CAM grids (matplotlib, no display
needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vgg_mobile.core.io import atomic_path

# Legend and tick text in points: readable at the PNG's natural size (100 dpi).
LEGEND_FONT_SIZE = 10


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, **options) -> None:
    """Writes a figure as a PNG at 100 dpi, atomically, and closes it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, **options)
    _pyplot().close(fig)


def training_curves_png(history: dict[str, list[float]], path: str | Path) -> None:
    """Plots loss and accuracy per epoch (`training_curves_figure`) to a PNG."""
    save_png(training_curves_figure(history), path)


def training_curves_figure(history: dict[str, list[float]]):
    """Loss and accuracy per epoch, training and validation side by side.

    Epoch ticks are whole numbers; a stage of one epoch has one point per metric, drawn as
    a large marker with its value written beside it (a line needs two epochs).
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs_seen = max((len(v) for v in history.values() if v), default=0)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if not values:
                continue
            epochs = list(range(1, len(values) + 1))
            label = (prefix or "train_") + metric
            if len(values) == 1:
                ax.plot(epochs, values, linestyle="none", marker="o" if not prefix else "D",
                        markersize=9, label=f"{label}: {values[0]:.3f} (1 epoch)")
                ax.annotate(f"{values[0]:.3f}", (1, values[0]), textcoords="offset points",
                            xytext=(10, 0 if not prefix else -12), fontsize=9)
            else:
                ax.plot(epochs, values, style, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs_seen == 1:
            ax.set_xlim(0.5, 1.5)
            ax.set_xticks([1])
        ax.set_title(metric if epochs_seen != 1 else f"{metric} (one epoch: one point)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=LEGEND_FONT_SIZE - 1)
    fig.tight_layout()
    return fig


def confusion_matrix_png(matrix: list[list[int]], classes, path: str | Path,
                         title: str | None = None) -> None:
    """Draws a confusion matrix (rows: true class, columns: predicted) with counts."""
    import numpy as np

    plt = _pyplot()
    m = np.asarray(matrix)
    n = len(classes)
    side = max(3.5, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    threshold = m.max() / 2 if m.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > threshold else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def gradcam_grid_png(rows: Sequence[dict], path: str | Path) -> None:
    """One row per image: the image, then one Grad-CAM overlay per model, with titles.

    Args:
        rows: Each `{"image": uint8 (h, w, 3), "title": str, "overlays": [(uint8 (h, w, 3),
            title), ...]}`; every row has the same number of overlays.
        path: The PNG to write.
    """
    plt = _pyplot()
    columns = 1 + max(len(row["overlays"]) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.9 * columns, 2.9 * len(rows)),
                             squeeze=False)
    for ax_row, row in zip(axes, rows):
        panels = [(row["image"], row["title"]), *row["overlays"]]
        for ax, (pixels, title) in zip(ax_row, panels):
            ax.imshow(pixels, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
