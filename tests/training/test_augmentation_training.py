"""A teacher and a student train end to end with the augmentation keys, and record them."""

from __future__ import annotations

import json
import math

import pytest

from vgg_mobile.data.sample import write_sample_data
from vgg_mobile.distillation.distill import DistillConfig, distill
from vgg_mobile.models.architectures import ModelOptions
from vgg_mobile.training.hyperparameters import TrainConfig
from vgg_mobile.training.train import train

pytestmark = pytest.mark.slow

OPTIONS = ModelOptions(architecture="vgg16_bn_0.5", image_size=32, weights="none")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_sample_data(tmp_path_factory.mktemp("aug") / "data", images_per_class=6,
                             image_size=32, seed=2, colour_cue=True)


def _train(data, out, **keys):
    lines = []
    result = train(data, out, OPTIONS, TrainConfig(epochs=1, batch_size=8, **keys),
                   log=lines.append)
    return result, json.loads((out / "manifest.json").read_text()), lines


def test_a_teacher_trains_with_mixup_cutmix_and_class_weights(tiny_data, tmp_path):
    result, manifest, lines = _train(tiny_data, tmp_path / "mix", mixup_alpha=0.4,
                                     cutmix_alpha=1.0, class_weights=True, flip="off",
                                     crop_scale=0.5, colour_jitter=0.05)
    assert all(math.isfinite(v) for v in result.history["loss"])
    record = manifest["training"]["augmentation"]
    assert record["mixup_alpha"] == 0.4 and record["cutmix_alpha"] == 1.0
    assert record["flip"] is False and record["mirror_test"] is None
    assert manifest["config"]["train"]["mixup_alpha"] == 0.4
    assert record["crop_scale"] == [0.5, 1.0] and record["crop_scale_setting"] == 0.5
    assert (record["brightness"], record["contrast"]) == (0.05, 0.1)
    assert "augmentation: standard, flip: off, crop_scale: 0.5, colour_jitter: 0.05" in lines


def test_a_teacher_trains_with_trivialaugment_and_the_flip_decided_from_the_data(tiny_data,
                                                                                  tmp_path):
    result, manifest, lines = _train(tiny_data, tmp_path / "ta", augmentation="trivialaugment")
    assert all(math.isfinite(v) for v in result.history["loss"])
    record = manifest["training"]["augmentation"]
    assert record["policy"] == "trivialaugment" and record["flip_setting"] == "auto"
    assert record["mirror_test"]["images"] > 0 and isinstance(record["flip"], bool)
    shown = next(line for line in lines if line.startswith("augmentation:"))
    assert shown.startswith("augmentation: trivialaugment, flip: auto → "
                            + ("on" if record["flip"] else "off") + " (mirrored nearest-mean")

    # The student is augmented by its own keys, and records them the same way.
    student_lines = []
    distill(tmp_path / "ta", tiny_data, tmp_path / "student",
            DistillConfig(epochs=1, batch_size=8, augmentation="trivialaugment", flip="on"),
            log=student_lines.append)
    student = json.loads((tmp_path / "student" / "manifest.json").read_text())
    recorded = student["distillation"]["augmentation"]
    assert recorded["policy"] == "trivialaugment" and recorded["flip"] is True
    assert "augmentation: trivialaugment, flip: on" in student_lines
