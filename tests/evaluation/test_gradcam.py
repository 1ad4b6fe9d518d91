"""Grad-CAM: the heatmap must sit on the object and move with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.evaluation.gradcam import ExplainOptions, conv_layers, default_layer, explain_images, gradcam

SIZE, SQUARE = 32, 8


def _scene(rng, colour: int, top: int, left: int) -> np.ndarray:
    """Grey noise with one red (colour 0) or blue (colour 1) square."""
    image = rng.normal(128, 20, (SIZE, SIZE, 3)).clip(0, 255)
    image[top:top + SQUARE, left:left + SQUARE] = (220, 30, 30) if colour == 0 else (30, 30, 220)
    return image.astype(np.float32)


@pytest.fixture(scope="module")
def square_model():
    """A small CNN that tells a red square from a blue one anywhere in the image: its evidence
    is the square, wherever it is, so a correct Grad-CAM follows the square."""
    import tensorflow as tf
    import tf_keras as keras

    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    corners = rng.integers(0, SIZE - SQUARE + 1, (400, 2))
    x = np.stack([_scene(rng, c, t, left) for c, (t, left) in zip(labels, corners)])
    pixels = keras.Input((SIZE, SIZE, 3), name="pixels")
    h = keras.layers.Rescaling(1 / 255, name="preprocess")(pixels)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(h)
    h = keras.layers.MaxPooling2D(2, name="pool1")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="head_pool")(h)
    logits = keras.layers.Dense(2, name="logits")(h)
    model = keras.Model(pixels, keras.layers.Activation("softmax", name="probs")(logits))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, labels, epochs=8, batch_size=32, verbose=0)
    return model


def test_the_heatmap_sits_on_the_square_and_moves_with_it(square_model):
    rng = np.random.default_rng(1)
    places = [(0, 0), (0, 24), (24, 0), (24, 24), (12, 12)]
    images = np.stack([_scene(rng, colour, *place) for colour in (0, 1) for place in places])
    truth = np.repeat([0, 1], len(places))
    result = gradcam(square_model, images)
    assert result["layer"] == "conv2" and result["heatmaps"].shape == (10, SIZE, SIZE)
    assert (result["classes"] == truth).all(), "the model must be right for the test to mean anything"
    peaks = []
    for heatmap, (top, left) in zip(result["heatmaps"], places * 2):
        row, col = np.unravel_index(heatmap.argmax(), heatmap.shape)
        peaks.append((row, col))
        # The hottest pixel is on the square (give or take the 16x16 map's half-cell).
        assert top - 2 <= row < top + SQUARE + 2 and left - 2 <= col < left + SQUARE + 2, (
            (row, col), (top, left))
        inside = heatmap[top:top + SQUARE, left:left + SQUARE].mean()
        outside = (heatmap.sum() - heatmap[top:top + SQUARE, left:left + SQUARE].sum()) / (
            SIZE * SIZE - SQUARE * SQUARE)
        assert inside > 3 * outside
    assert len(set(peaks)) >= len(places)  # different squares, different peaks


def test_explaining_the_other_class_finds_no_evidence_for_it(square_model):
    rng = np.random.default_rng(2)
    red = np.stack([_scene(rng, 0, 4, 4), _scene(rng, 0, 20, 20)])
    own = gradcam(square_model, red, class_index=0)
    other = gradcam(square_model, red, class_index=1)
    assert (own["classes"] == 0).all() and (other["classes"] == 1).all()
    for i, (top, left) in enumerate([(4, 4), (20, 20)]):
        square = (slice(top, top + SQUARE), slice(left, left + SQUARE))
        assert own["heatmaps"][i][square].mean() > other["heatmaps"][i][square].mean()


def test_layers_are_listed_and_checked(square_model):
    assert conv_layers(square_model) == ["conv1", "pool1", "conv2"]
    assert default_layer(square_model) == "conv2"
    assert gradcam(square_model, np.zeros((1, SIZE, SIZE, 3), np.float32), layer="conv1")["maps"].shape == (1, 32, 32)
    with pytest.raises(BadInputError, match="no feature-map layer 'logits'.*valid: conv1, pool1, conv2"):
        gradcam(square_model, np.zeros((1, SIZE, SIZE, 3), np.float32), layer="logits")
    with pytest.raises(BadInputError, match="class index out of range 0..1"):
        gradcam(square_model, np.zeros((1, SIZE, SIZE, 3), np.float32), class_index=2)


def test_explain_writes_heatmaps_of_a_run(teacher_run, sample_dir, tmp_path, cli):
    """The session VGG16 teacher, through the command: files, manifest, bad input."""
    images = sorted((sample_dir / "circle").iterdir())[:2] + sorted((sample_dir / "square").iterdir())[:1]
    odd = tmp_path / "in" / "my photo (1).PNG"
    odd.parent.mkdir()
    odd.write_bytes(images[0].read_bytes())
    out = tmp_path / "explain"
    result = cli("explain", teacher_run.run_dir, *images, odd, "--out", out, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["layer"] == "block5_conv3" and report["layer_size"] == [2, 2]
    assert [e["file"] for e in report["images"]][3] == "003_my_photo__1_.png"
    from PIL import Image

    for entry in report["images"]:
        picture = Image.open(out / entry["file"])
        assert picture.size == (2 * 32 * 4, 32 * 4)  # image | overlay, 4 times enlarged
        assert entry["explained"] == entry["top1"] and 0 < entry["probability"] <= 1
    assert json.loads((out / "manifest.json").read_text()) == report

    # Another layer and class; an existing output needs --force; bad input exits 2 naming it.
    again = cli("explain", teacher_run.run_dir, images[0], "--out", out, "--layer", "block4_conv3",
                "--label", "cross", "--force", "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["layer"] == "block4_conv3"
    assert json.loads(again.stdout)["images"][0]["explained"] == "cross"
    assert cli("explain", teacher_run.run_dir, images[0], "--out", out).returncode == 2
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    for args, words in (([bad], "bad.png"), ([tmp_path / "missing.png"], "missing.png: no such image file"),
                        ([images[0], "--layer", "nope"], "no feature-map layer 'nope'"),
                        ([images[0], "--label", "dog"], "no class 'dog'")):
        failed = cli("explain", teacher_run.run_dir, *args, "--out", tmp_path / "other")
        assert failed.returncode == 2 and words in failed.stderr, failed.stderr[-1000:]
        assert not (tmp_path / "other").exists()
    # The output may not be inside an input folder, and --force never replaces a run.
    assert cli("explain", teacher_run.run_dir, odd, "--out", odd.parent / "x").returncode == 2


def test_explain_options_are_validated():
    with pytest.raises(BadInputError, match="scale must be 1 to 16"):
        ExplainOptions(scale=0)
    with pytest.raises(BadInputError, match="at least one image"):
        explain_images("unused", [], "unused")
