"""benchmarks/channel_pruning.py: its tables and targets, and `size` on a small model."""

from __future__ import annotations

import argparse

import pytest
from harness import benchmark_script

channel_pruning = benchmark_script("channel_pruning")


def _size_row(ratio, scope, megabytes, speedup):
    return {"ratio": ratio, "scope": scope, "parameters": 1000, "bytes": int(megabytes * 1e6),
            "ms": 10 / speedup, "speedup": speedup}


def test_speedups_are_against_the_reference():
    assert channel_pruning.speedups([10.0, 5.0, 2.5], 10.0) == [1.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="reference_ms=0"):
        channel_pruning.speedups([1.0], 0)


def test_size_targets_say_met_or_not_met_with_the_value():
    met = [_size_row(None, "-", 14.98, 1.0), _size_row(0.3, "layer", 7.4, 1.9)]
    assert [t.split(": ")[1].split(" (")[0] for t in channel_pruning.size_targets(met)] == [
        "met", "met"]
    missed = [_size_row(None, "-", 14.98, 1.0), _size_row(0.3, "global", 7.4, 2.0),
              _size_row(0.3, "layer", 10.5, 1.5)]
    targets = channel_pruning.size_targets(missed)
    assert "not met (10.50 MB)" in targets[0] and "not met (1.50x)" in targets[1]
    assert "not measured" in channel_pruning.size_targets(met[:1])[0]
    table = channel_pruning.format_size_table(met)
    assert "| none | - | 1,000 | 14.98 |" in table and "| 30% | layer |" in table
    assert table.rstrip().endswith("1.90x |")


def _accuracy_row(method, amount, teacher, int8, images=2000):
    return {"model": f"{method} {amount}", "method": method, "amount": amount,
            "teacher": teacher, "rebuilt": None, "pruned": int8, "int8": int8,
            "images": images, "bytes": 1_000_000, "ms": 1.0, "speedup": 1.0}


def test_accuracy_target_is_one_point_of_the_float_teacher():
    rows = [_accuracy_row("none", None, 0.90, 0.895), _accuracy_row("channels", 0.3, 0.90, 0.891),
            _accuracy_row("channels", 0.3, 0.90, 0.885), _accuracy_row("magnitude", 0.3, 0.90, 0.5)]
    targets = channel_pruning.accuracy_targets(rows)
    assert len(targets) == 2
    assert ": met (-0.9 points)" in targets[0] and ": not met (-1.5 points)" in targets[1]
    assert channel_pruning.misses_target(0.90, 0.885)
    assert not channel_pruning.misses_target(0.90, 0.891)
    assert "| -0.9 |" in channel_pruning.format_accuracy_table(rows[1:2])
    with pytest.raises(ValueError, match="same held-out images"):
        channel_pruning.format_accuracy_table([rows[0], _accuracy_row("channels", 0.5, 0.9, 0.8, 200)])


def test_retry_flag_is_epochs_and_learning_rate():
    assert channel_pruning.parse_retry("4:3e-4") == (4, 3e-4)
    for bad in ("4", "four:1e-4", "0:1e-4", "4:2"):
        with pytest.raises(argparse.ArgumentTypeError, match="Received"):
            channel_pruning.parse_retry(bad)
    assert channel_pruning.Variant("channels", 0.3, 4, 3e-4).folder == "channels-0.3-e4-lr0.0003"
    assert channel_pruning.Variant("magnitude", 0.5).label(2, 1e-4) == \
        "magnitude 50% sparsity, 2 ep, lr 0.0001"


def test_size_falls_as_more_channels_go():
    rows = channel_pruning.size_rows("vgg16_bn_0.5", image_size=32, classes=3, ratios=(0.3, 0.6),
                                     global_ratios=(), calibration=2, repeats=3,
                                     log=lambda message: None)
    assert [row["ratio"] for row in rows] == [None, 0.3, 0.6]
    assert rows[0]["parameters"] > rows[1]["parameters"] > rows[2]["parameters"]
    assert rows[0]["bytes"] > rows[1]["bytes"] > rows[2]["bytes"]
    assert rows[0]["speedup"] == 1.0 and all(row["ms"] > 0 for row in rows)
