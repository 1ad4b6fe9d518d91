"""benchmarks/sample_shapes.py: the drawn test set and its per-factor accuracy (no training)."""

from __future__ import annotations

import numpy as np
import pytest
from harness import benchmark_script

from vgg_mobile.data.sample import SAMPLE_CLASSES

sample_shapes = benchmark_script("sample_shapes")


def test_drawn_set_is_seeded_stratified_and_varied():
    images, labels, factors = sample_shapes.drawn_set(per_class=30, seed=1)
    again, _, _ = sample_shapes.drawn_set(per_class=30, seed=1)
    other, _, _ = sample_shapes.drawn_set(per_class=30, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(images, again))
    assert not all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(images, other))
    assert np.bincount(labels).tolist() == [30] * len(SAMPLE_CLASSES)
    # Every factor the table reports shows up: the set is what the docstring says it is.
    assert {f["style"] for f in factors} == set(sample_shapes.STYLES)
    assert {f["background"] for f in factors} == set(sample_shapes.BACKGROUNDS)
    assert {f["side"] for f in factors} == {f"{s} px" for s in sample_shapes.SIDES}
    assert {"red", "black", "white", "any hue"} <= {f["fill"] for f in factors}
    assert {image.shape[0] for image in images} == set(sample_shapes.SIDES)


def test_every_shape_stands_out_from_its_background():
    images, _, _ = sample_shapes.drawn_set(per_class=10, seed=3)
    for image in images:
        pixels = image.reshape(-1, 3).astype(float)
        corner = image[0, 0].astype(float)
        # Some pixels differ from a corner by much more than noise: the shape is visible.
        assert np.linalg.norm(pixels - corner, axis=1).max() > 90


def test_accuracy_by_factor_counts_each_value():
    labels = np.array([0, 1, 2, 3])
    predicted = np.array([0, 1, 0, 0])
    factors = [{"style": "filled"}, {"style": "filled"}, {"style": "outline"},
               {"style": "outline"}]
    assert sample_shapes.accuracy_by_factor(predicted, labels, factors) == {
        "all": 0.5, "style: filled": 1.0, "style: outline": 0.0}


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown class 'star'"):
        sample_shapes.draw_shape("star", np.random.default_rng(0))
