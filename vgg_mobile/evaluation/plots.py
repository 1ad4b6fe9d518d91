"""PNG charts: training curves, confusion matrices and Grad-CAM grids (matplotlib, no display
needed), and the helpers the report's charts share: log-axis ticks and point labels that stay
clear of each other."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from vgg_mobile.core.io import atomic_path

# Legend and tick text in points: readable at the PNG's natural size (100 dpi).
LEGEND_FONT_SIZE = 10
# A scatter chart of fewer points says less than a table row: the report writes them out.
MIN_CHART_POINTS = 3
# Ticks of a log axis, sparsest first: the first set that labels enough of the range wins.
_LOG_SUBS = ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0),
             tuple(float(k) for k in range(1, 10)))
# Where a point's label may go, in points from the point, nearest first.
_LABEL_OFFSETS = tuple((dx * r, dy * r) for r in (7, 12, 18)
                       for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1.4, 0), (-1.4, 0),
                                      (0, 1.4), (0, -1.4)))


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


def log_ticks(low: float, high: float, fewest: int = 3, most: int = 6) -> list[float]:
    """Tick values for a log axis from `low` to `high`, each a distinct round number.

    matplotlib's own log locator labels only whole decades, which leaves a range inside one
    decade with one or two labels, and with minor labels switched on it prints overlapping
    ones; here the sparsest of 1, 1-3, 1-2-5, ... per decade that gives at least `fewest`
    ticks is used, thinned to at most `most`.

    Args:
        low: The axis's lower limit (positive).
        high: Its upper limit.
        fewest: Ticks wanted at least, when the range allows. Defaults to `3`.
        most: Ticks at most. Defaults to `6`.

    Returns:
        The ticks, ascending.
    """
    if not 0 < low < high:
        raise ValueError(f"log axis limits must be positive and increasing. Received: "
                         f"low={low}, high={high}")
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    ticks: list[float] = []
    for subs in _LOG_SUBS:
        # Rounded: 3 * 10**-1 is 0.30000000000000004, and its label would say so.
        ticks = [float(f"{sub * 10.0 ** d:.6g}") for d in decades for sub in subs]
        ticks = [t for t in ticks if low <= t <= high]
        if len(ticks) >= fewest:
            break
    if len(ticks) < 2:
        # A range narrower than the gap between 1-9 multiples: evenly spaced round values.
        from matplotlib.ticker import MaxNLocator

        ticks = [float(t) for t in MaxNLocator(nbins=fewest, steps=[1, 2, 2.5, 5, 10])
                 .tick_values(low, high) if low <= t <= high]
    step = math.ceil(len(ticks) / most)
    return ticks[::step]


def number_label(value: float) -> str:
    """A tick value in its shortest form: `0.5`, `2`, `150`."""
    return f"{value:.6g}"


def place_labels(ax, points: Sequence[tuple[float, float]], texts: Sequence[str],
                 marker_radius: float = 6.0, avoid_x: Sequence[float] = (),
                 fontsize: float = 9) -> list:
    """Writes `texts[i]` next to `points[i]` where it hides no other label, no marker, no
    vertical line at `avoid_x` and stays inside the axes: the nearest free place of
    `_LABEL_OFFSETS`, or the least covered one when none is free. Call it after the axes'
    limits are final.

    Args:
        ax: The axes.
        points: Data coordinates of the points.
        texts: One label per point.
        marker_radius: The markers' radius in points. Defaults to `6.0`.
        avoid_x: Data x of vertical lines (a budget) that labels must not cross. Defaults
            to none.
        fontsize: Of the labels. Defaults to `9`.

    Returns:
        The annotations, in the order of `points`.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    pixels = fig.dpi / 72 * marker_radius
    centres = [ax.transData.transform(p) for p in points]
    taken = [Bbox.from_extents(x - pixels, y - pixels, x + pixels, y + pixels) for x, y in centres]
    frame = ax.get_window_extent(renderer)
    frame = Bbox.from_extents(frame.x0 + 1, frame.y0 + 1, frame.x1 - 1, frame.y1 - 1)
    low_y, high_y = frame.y0, frame.y1
    lines = [Bbox.from_extents(x - 2, low_y, x + 2, high_y)
             for x in (ax.transData.transform((v, points[0][1] if points else 1))[0]
                       for v in avoid_x)]

    def covered(box) -> float:
        area = sum(_overlap(box, other) for other in taken + lines)
        inside = _overlap(box, frame)
        return area + (box.width * box.height - inside) * 10  # outside the axes: worst

    placed = []
    for point, text in zip(points, texts):
        best = None
        for dx, dy in _LABEL_OFFSETS:
            label = ax.annotate(text, point, textcoords="offset points", xytext=(dx, dy),
                                fontsize=fontsize, ha="left" if dx > 0 else "right" if dx < 0
                                else "center", va="bottom" if dy > 0 else "top" if dy < 0
                                else "center")
            box = label.get_window_extent(renderer)
            cost = covered(box)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, label, box)
            else:
                label.remove()
            if cost == 0:
                break
        taken.append(best[2])
        placed.append(best[1])
    return placed


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


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


def gradcam_grid_png(rows: Sequence[dict], path: str | Path, colormap: str = "jet") -> None:
    """Draws `gradcam_grid_figure(rows, colormap)` to the PNG `path`."""
    save_png(gradcam_grid_figure(rows, colormap), path)


def gradcam_grid_figure(rows: Sequence[dict], colormap: str = "jet"):
    """One row per image: the image, then one Grad-CAM overlay per model, with titles, and a
    colour bar that keys the overlay's colours (`colormap`, as `gradcam.overlay` paints them)
    from "ignored" (0) to "looked at most" (1).

    Args:
        rows: Each `{"image": uint8 (h, w, 3), "title": str, "overlays": [(uint8 (h, w, 3),
            title), ...]}`; every row has the same number of overlays.
        colormap: The overlays' matplotlib colour map. Defaults to `"jet"`.
    """
    from matplotlib import cm, colors

    plt = _pyplot()
    columns = 1 + max(len(row["overlays"]) for row in rows)
    key_height = 0.9  # inches under the grid for the colour key
    height = 2.9 * len(rows) + key_height
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.9 * columns, height), squeeze=False)
    for ax_row, row in zip(axes, rows):
        panels = [(row["image"], row["title"]), *row["overlays"]]
        for ax, (pixels, title) in zip(ax_row, panels):
            ax.imshow(pixels, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout(rect=(0, key_height / height, 1, 1))
    # Under the grid: without a key the overlay's colours have no meaning.
    key = fig.add_axes((0.3, 0.3 / height, 0.4, 0.14 / height))
    bar = fig.colorbar(cm.ScalarMappable(colors.Normalize(0, 1), colormap), cax=key,
                       orientation="horizontal")
    bar.set_ticks([0, 0.5, 1], labels=["0: ignored", "0.5", "1: looked at most"])
    bar.ax.tick_params(labelsize=9)
    bar.ax.set_title("Grad-CAM weight: the overlays' colours", fontsize=9)
    return fig
