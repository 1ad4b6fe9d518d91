"""The report's charts, read back from the matplotlib figures: ticks, titles, legends."""

from __future__ import annotations

import pytest

from vgg_mobile.core.budgets import Budgets
from vgg_mobile.evaluation.plots import LEGEND_FONT_SIZE, _pyplot, training_curves_figure
from vgg_mobile.reporting.report import artifacts_figure


def _row(artifact, fmt, size, accuracy, latency):
    return {"artifact": artifact, "format": fmt, "size_bytes": size, "accuracy": accuracy,
            "latency_ms": latency, "budget": "pass" if fmt != "keras" else "-"}


ROWS = [_row("float teacher", "keras", 60_000_000, 0.8, 40.0),
        _row("QAT student", "keras", 2_500_000, 0.75, 9.0),
        _row("TFLite int8 (student_qat)", "tflite", 600_000, 0.73, 1.2),
        _row("ONNX int8 (student_qat)", "onnx", 700_000, 0.72, 1.5)]


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


def test_size_and_latency_chart_says_what_it_shows_with_units_and_a_readable_legend():
    fig = artifacts_figure(ROWS, Budgets(max_size=10_000_000, min_agreement=0.9))
    fig.canvas.draw()
    size_ax, latency_ax = fig.axes
    assert "agreement" not in size_ax.get_title()  # no agreement is drawn
    assert "size" in size_ax.get_title() and "10 MB" in size_ax.get_title()
    assert "latency" in latency_ax.get_title()
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
    _pyplot().close(fig)
