"""The report's charts, read back from the matplotlib figures: ticks, titles, legends."""

from __future__ import annotations

import pytest

import numpy as np

from vgg_mobile.core.budgets import Budgets
from vgg_mobile.evaluation.plots import (LEGEND_FONT_SIZE, _pyplot, gradcam_grid_figure,
                                         log_ticks, number_label, training_curves_figure)
from vgg_mobile.reporting.report import artifacts_figure, chart_gaps


def _row(artifact, fmt, size, accuracy, latency):
    return {"artifact": artifact, "format": fmt, "size_bytes": size, "accuracy": accuracy,
            "latency_ms": latency, "budget": "pass" if fmt != "keras" else "-"}


ROWS = [_row("float teacher", "keras", 60_000_000, 0.8, 40.0),
        # Just under the 10 MB budget: the Keras file is not what ships.
        _row("QAT student", "keras", 9_800_000, 0.75, 9.0),
        _row("TFLite int8 (student_qat)", "tflite", 600_000, 0.73, 1.2),
        _row("ONNX int8 (student_qat)", "onnx", 700_000, 0.72, 1.5),
        _row("ONNX float32 (student_qat)", "onnx", 2_400_000, 0.73, 2.5),
        _row("TF.js (student)", "tfjs", 11_000_000, 0.74, 6.0)]


def _visible_labels(ax):
    low, high = ax.get_xlim()
    return [t.get_text() for t in ax.get_xticklabels()
            if low <= t.get_position()[0] <= high and t.get_text()]


@pytest.mark.parametrize("epochs", [1, 2, 3])
def test_epoch_ticks_are_whole_numbers(epochs):
    history = {"loss": [1.0, 0.8, 0.7][:epochs], "val_loss": [1.1, 0.9, 0.8][:epochs],
               "accuracy": [0.5, 0.6, 0.7][:epochs], "val_accuracy": [0.4, 0.5, 0.6][:epochs]}
    fig = training_curves_figure(history)
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        if epochs == 1:
            # A single point says what it is.
            assert ticks == [1] and all("(1 epoch)" in text for text in legend), legend
    _pyplot().close(fig)


def _boxes(fig, ax):
    renderer = fig.canvas.get_renderer()
    return renderer, [t.get_window_extent(renderer) for t in ax.texts]


def _overlap(a, b) -> bool:
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


def test_size_and_latency_chart_says_what_it_shows_with_units_and_a_readable_legend():
    fig = artifacts_figure(ROWS, Budgets(max_size=10_000_000, min_agreement=0.9))
    fig.canvas.draw()
    size_ax, latency_ax = fig.axes
    assert "agreement" not in size_ax.get_title()  # no agreement is drawn
    assert "size" in size_ax.get_title() and "10 MB" in size_ax.get_title()
    assert "latency" in latency_ax.get_title() and "not shipped" in latency_ax.get_title()
    size_labels, latency_labels = _visible_labels(size_ax), _visible_labels(latency_ax)
    assert size_labels and all(text.endswith(" MB") for text in size_labels), size_labels
    assert latency_labels and all(text.endswith(" ms") for text in latency_labels), latency_labels
    assert not any("10^" in text or "$" in text for text in size_labels + latency_labels)
    legend = fig.legends[0]
    assert all(t.get_fontsize() >= LEGEND_FONT_SIZE for t in legend.get_texts())
    # Below the axes: it hides no point and is not squeezed beside them.
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert all(box.y1 <= ax.get_tightbbox(renderer).y0 + 1 for ax in fig.axes)
    # Every point is numbered, and the legend keys the numbers; Keras models are marked.
    entries = [t.get_text() for t in legend.get_texts()]
    assert entries[:2] == ["1: float teacher (Keras, not shipped)",
                           "2: QAT student (Keras, not shipped)"]
    assert [t.get_text() for t in latency_ax.texts] == ["1", "2", "3", "4", "5", "6"]
    _pyplot().close(fig)


def test_the_size_budget_is_drawn_against_exported_files_only():
    # A Keras model just under the budget line used to be drawn on it, its label hidden.
    fig = artifacts_figure(ROWS, Budgets(max_size=10_000_000))
    fig.canvas.draw()
    size_ax, latency_ax = fig.axes
    numbers = {t.get_text() for t in size_ax.texts}
    exported = {str(k + 1) for k, row in enumerate(ROWS) if row["format"] != "keras"}
    assert numbers == exported  # no Keras model on the panel with the budget
    assert len(size_ax.lines) == 1 and size_ax.lines[0].get_xdata()[0] == 10.0
    low, high = size_ax.get_xlim()
    assert low < 10.0 < high  # the budget is in view, with the files it applies to
    assert not latency_ax.lines  # no size budget against latency
    _pyplot().close(fig)


def test_no_point_or_label_is_clipped_or_hidden():
    fig = artifacts_figure(ROWS, Budgets(max_size=10_000_000))
    fig.canvas.draw()
    for ax in fig.axes:
        renderer, boxes = _boxes(fig, ax)
        frame = ax.get_window_extent(renderer)
        margin = 6 * fig.dpi / 72  # the markers' radius
        for collection in ax.collections:
            for x, y in ax.transData.transform(collection.get_offsets()):
                assert frame.x0 + margin <= x <= frame.x1 - margin
                assert frame.y0 + margin <= y <= frame.y1 - margin
        assert boxes and all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0
                             and b.y1 <= frame.y1 for b in boxes)
        assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        for line in ax.lines:  # the budget line crosses no label
            x = ax.transData.transform((line.get_xdata()[0], 0.5))[0]
            assert not any(b.x0 - 1 <= x <= b.x1 + 1 for b in boxes)
    _pyplot().close(fig)


@pytest.mark.parametrize("low, high", [(0.3, 12.0), (0.6, 0.95), (0.61, 0.69), (1.0, 5000.0),
                                        (0.002, 0.04), (140.0, 180.0)])
def test_log_ticks_are_distinct_round_values_inside_the_range(low, high):
    ticks = log_ticks(low, high)
    labels = [number_label(t) for t in ticks]
    assert 2 <= len(ticks) <= 6, ticks
    assert all(low <= t <= high for t in ticks) and ticks == sorted(set(ticks))
    assert len(set(labels)) == len(labels) and all(len(text) <= 5 for text in labels), labels


def test_log_axis_tick_labels_do_not_overlap():
    rows = [_row(f"TFLite {k}", "tflite", size, 0.7 + k / 100, 1.0 + k)
            for k, size in enumerate((310_000, 420_000, 980_000, 2_300_000, 8_800_000))]
    fig = artifacts_figure(rows, Budgets(max_size=10_000_000))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high]
        texts = [t.get_text() for t in shown]
        assert len(texts) >= 3 and len(set(texts)) == len(texts), texts
        boxes = [t.get_window_extent(renderer) for t in shown]
        assert not any(_overlap(a, b) for a, b in zip(boxes, boxes[1:])), texts
    _pyplot().close(fig)


def test_a_panel_of_fewer_than_three_points_is_not_drawn_and_the_report_says_why():
    two_files = ROWS[:2] + ROWS[2:3] + [_row("TF.js (student)", "tfjs", 900_000, 0.7, None)]
    fig = artifacts_figure(two_files, Budgets())
    fig.canvas.draw()
    (latency_ax,) = fig.axes  # 3 timed artifacts, 2 exported files
    assert "latency" in latency_ax.get_title()
    assert chart_gaps(two_files) == [
        "No chart of accuracy against file size: 2 exported files, fewer than 3; the table "
        "above has them."]
    _pyplot().close(fig)
    assert artifacts_figure(ROWS[:2], Budgets()) is None
    assert len(chart_gaps(ROWS[:2])) == 2


def test_gradcam_grid_has_a_colour_key():
    image = np.zeros((8, 8, 3), np.uint8)
    fig = gradcam_grid_figure([{"image": image, "title": "#1", "overlays": [(image, "teacher")]}])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (key,) = [ax for ax in fig.axes if "Grad-CAM weight" in ax.get_title()]
    labels = [t.get_text() for t in key.get_xticklabels()]
    assert labels == ["0: ignored", "0.5", "1: looked at most"]
    # Inside the picture, under the images, not on them.
    box, whole = key.get_tightbbox(renderer), fig.bbox
    assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0
    assert all(box.y1 < ax.get_window_extent(renderer).y0 for ax in fig.axes if ax is not key)
    _pyplot().close(fig)
