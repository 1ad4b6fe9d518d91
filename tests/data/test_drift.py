"""The statistics a served model's traffic is compared with (`vgg_mobile.data.drift`): each
image's share of every histogram, and the population stability index of two histograms."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from vgg_mobile.data import drift


def photos(n: int, seed: int, size: int = 48) -> np.ndarray:
    """Smooth random scenes (blurred blobs of colour) with some texture: images whose
    histograms and sharpness vary from one to the next."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
    out = []
    for image in coarse:
        scene = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.float32)
        out.append(np.clip(scene + rng.normal(0, 12, scene.shape), 0, 255))
    return np.stack(out).astype(np.float32)


def test_each_image_counts_once_in_every_histogram():
    pixels = photos(5, seed=0)
    rows = drift.input_rows(pixels, [(480, 640), (640, 480), (100, 100), (20, 2000), (48, 48)])
    assert set(rows) == set(drift.INPUT_STATISTICS)
    for name, values in rows.items():
        assert values.shape == (5, drift.bins(name, 0)), name
        np.testing.assert_allclose(values.sum(axis=1), 1, rtol=1e-6, err_msg=name)
    # The channels, against NumPy's own histogram of the same values (every 2nd pixel of 48).
    for channel, name in enumerate(drift.CHANNELS):
        for image, row in zip(pixels, rows[name]):
            values = image[::2, ::2, channel].ravel()
            counts, _ = np.histogram(values, bins=np.arange(0, 257, 16))
            np.testing.assert_allclose(row, counts / values.size, atol=1e-6)
    aspect = rows["aspect"].argmax(axis=1)
    assert aspect[3] > aspect[0] > aspect[2] > aspect[1]  # strip, landscape, square, portrait
    size = rows["size"].argmax(axis=1)
    assert size[0] == size[1] > size[2] > size[4]


def test_blur_and_darkness_move_their_statistics():
    pixels = photos(20, seed=1)
    blurred = np.stack([np.asarray(Image.fromarray(p.astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(2)), np.float32) for p in pixels])
    sizes = [(48, 48)] * 20
    sharp = drift.input_rows(pixels, sizes)["sharpness"].argmax(axis=1)
    soft = drift.input_rows(blurred, sizes)["sharpness"].argmax(axis=1)
    assert (soft < sharp).all()
    bright = drift.input_rows(pixels, sizes)["red"] @ np.arange(16)
    dark = drift.input_rows(pixels * 0.7, sizes)["red"] @ np.arange(16)
    assert (dark < bright).all()


def test_answers_count_their_top_class_and_its_confidence():
    probs = np.array([[0.72, 0.18, 0.1], [0.1, 0.05, 0.85], [0.34, 0.33, 0.33]], np.float32)
    rows = drift.output_rows(probs)
    assert rows["predicted_class"].argmax(axis=1).tolist() == [0, 2, 0]
    # Confidence edges 0.2, 0.3, ... 0.9, 0.95, 0.99: 0.72 -> [0.7, 0.8), 0.85 -> [0.8, 0.9).
    assert rows["confidence"].argmax(axis=1).tolist() == [6, 7, 2]
    # A model whose outputs come in another order than the reference's classes.
    remapped = drift.output_rows(probs, order=np.array([2, 0, 1]))
    assert remapped["predicted_class"].argmax(axis=1).tolist() == [2, 1, 2]


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    reference = np.array([50.0, 30, 20, 0])
    assert drift.psi(reference, 100, reference * 3, 300) == pytest.approx(0, abs=1e-12)
    small = drift.psi(reference, 100, np.array([45.0, 33, 22, 0]), 100)
    large = drift.psi(reference, 100, np.array([20.0, 30, 30, 20]), 100)
    assert 0 < small < 0.1 < 0.25 < large
    # Symmetric: the two Kullback-Leibler divergences summed.
    assert drift.psi(np.array([20.0, 30, 30, 20]), 100, reference, 100) == pytest.approx(large)
    # An empty bin is floored, not infinite.
    assert np.isfinite(drift.psi(np.array([100.0, 0]), 100, np.array([0.0, 100]), 100))


def test_a_reference_reads_back_and_a_wrong_one_is_refused():
    pixels = photos(6, seed=2)
    probs = np.random.default_rng(0).dirichlet(np.ones(3), 6).astype(np.float32)
    section = drift.input_reference(pixels, [(48, 48)] * 6, "val")
    answers = drift.output_reference(probs, ("a", "b", "c"))
    reference = drift.read_reference(section, answers, ("a", "b", "c"), "manifest.json")
    assert (reference.images, reference.output_images, reference.split) == (6, 6, "val")
    assert set(reference.counts) == set(drift.STATISTICS)
    assert drift.read_reference(None, answers, ("a", "b", "c"), "m") is None
    with pytest.raises(Exception, match="m: drift_reference statistic 'predicted_class': "
                                        r"classes \['a', 'b', 'c'\] are not"):
        drift.read_reference(section, answers, ("a", "c", "b"), "m")
    section["statistics"]["sharpness"]["counts"][0] = float("nan")
    with pytest.raises(Exception, match="statistic 'sharpness': counts"):
        drift.read_reference(section, answers, ("a", "b", "c"), "m")
