"""The flip rule decides from the images, not from their size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vgg_mobile.data import dataset
from vgg_mobile.data.augmentation import choose_augmentation
from vgg_mobile.data.mirror import MAX_MIRROR_COST, mirror_test, mirror_test_arrays


def _glyph(name: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A grey 'glyph' with jitter and noise. `left`/`right` are each other's mirror images (as
    b and d), `step_up`/`step_down` too; `bar`, `column` and `ring` are left-right symmetric."""
    image = np.zeros((size, size), np.float32)
    dy, dx = rng.integers(-2, 3, size=2)
    y, x = np.mgrid[:size, :size]
    y, x = y - dy, x - dx
    if name == "left":  # a stem on the left with a bowl at its foot: "b"
        image[(x >= 6) & (x < 10) & (y >= 4) & (y < 28)] = 255
        image[((x - 16) ** 2 + (y - 21) ** 2 < 49) & ((x - 16) ** 2 + (y - 21) ** 2 > 16)] = 255
    elif name == "right":  # "d"
        image[(x >= 22) & (x < 26) & (y >= 4) & (y < 28)] = 255
        image[((x - 16) ** 2 + (y - 21) ** 2 < 49) & ((x - 16) ** 2 + (y - 21) ** 2 > 16)] = 255
    elif name == "step_up":
        image[(y > 31 - x) & (y > 6) & (y < 26) & (x > 6) & (x < 26)] = 255
    elif name == "step_down":
        image[(y > x) & (y > 6) & (y < 26) & (x > 6) & (x < 26)] = 255
    elif name == "bar":
        image[(y >= 13) & (y < 19) & (x >= 4) & (x < 28)] = 255
    elif name == "column":
        image[(x >= 13) & (x < 19) & (y >= 4) & (y < 28)] = 255
    elif name == "ring":
        r2 = (x - 16) ** 2 + (y - 16) ** 2
        image[(r2 < 100) & (r2 > 36)] = 255
    image += rng.normal(0, 20, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write(root: Path, classes: tuple[str, ...], per_class: int = 16, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(_glyph(name, rng, size)).save(root / name / f"{i}.png")
    return root


GLYPHS = ("left", "right", "step_up", "step_down")
SYMMETRIC = ("bar", "column", "ring")


def test_glyphs_whose_mirror_is_another_class_get_no_flip(tmp_path):
    folder = dataset.scan_folder(_write(tmp_path / "glyphs", GLYPHS))
    test = mirror_test(folder.train, seed=0)
    assert test.accuracy > 0.9 and test.mirrored_accuracy < 0.2, test
    assert test.cost > MAX_MIRROR_COST and not test.flip
    assert not test.colour


def test_symmetric_shapes_get_flips(tmp_path):
    folder = dataset.scan_folder(_write(tmp_path / "shapes", SYMMETRIC))
    test = mirror_test(folder.train, seed=0)
    assert test.accuracy > 0.9 and test.cost <= MAX_MIRROR_COST and test.flip, test


def test_the_decision_follows_the_data_at_any_size(tmp_path):
    # Before the rule, every input up to 64 px lost its flips and every larger one had them.
    glyphs = dataset.scan_folder(_write(tmp_path / "glyphs", GLYPHS)).train
    shapes = dataset.scan_folder(_write(tmp_path / "shapes", SYMMETRIC)).train
    for size in (32, 224):
        assert not choose_augmentation(True, "standard", "auto", size, glyphs).augmentation.flip
        assert choose_augmentation(True, "standard", "auto", size, shapes).augmentation.flip
    # Set by hand, the flip is what was asked, measured or not.
    chosen = choose_augmentation(True, "standard", "on", 32, glyphs)
    assert chosen.augmentation.flip and chosen.record["mirror_test"] is None
    assert not choose_augmentation(True, "standard", "off", 224, shapes).augmentation.flip
    assert choose_augmentation(False, "trivialaugment", "auto", 32, shapes).augmentation \
        == dataset.NO_AUGMENTATION


def test_the_choice_is_described_and_recorded(tmp_path):
    glyphs = dataset.scan_folder(_write(tmp_path / "glyphs", GLYPHS)).train
    chosen = choose_augmentation(True, "trivialaugment", "auto", 32, glyphs, seed=3)
    assert chosen.line.startswith("augmentation: trivialaugment, flip: auto → off (mirrored "
                                  "nearest-mean accuracy")
    record = json.loads(json.dumps(chosen.record))
    assert record["flip"] is False and record["flip_setting"] == "auto"
    assert record["policy"] == "trivialaugment" and record["colour"] is False
    assert record["mirror_test"]["cost"] > MAX_MIRROR_COST
    assert chosen.augmentation.policy == "trivialaugment" and not chosen.augmentation.colour
    # The same seed reads the same sample and measures the same.
    again = choose_augmentation(True, "trivialaugment", "auto", 32, glyphs, seed=3)
    assert again.record == chosen.record


def test_a_margin_near_chance_says_nothing_against_flips():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(60, 16, 16))
    test = mirror_test_arrays(noise, np.repeat([0, 1, 2], 20))
    assert abs(test.accuracy - test.chance) < 0.1
    assert test.flip and "within 0.1 of chance" in test.describe()


@pytest.mark.parametrize("per_class", [1, 3])
def test_tiny_classes_are_measured_without_error(tmp_path, per_class):
    folder = dataset.scan_folder(_write(tmp_path / "g", GLYPHS, per_class=per_class))
    test = mirror_test(folder.train)
    assert test.images == 4 * per_class and 0 <= test.mirrored_accuracy <= 1
