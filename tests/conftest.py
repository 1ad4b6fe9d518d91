"""Shared fixtures: small generated data, one briefly trained teacher and student, made once
per session, and the CLI in a subprocess. Helpers live in `support/harness.py`.

Tests that train, convert or run the CLI in a subprocess (seconds to minutes each on 2 cores)
are the slow tier: a test that uses one of `SLOW_FIXTURES`, or is marked `slow`, runs only in
the full suite. `pytest -m "not slow"` is the inner loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import TEACHER_EPOCHS

import vgg_mobile  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# No test reaches the internet: a weights download that a test did not point elsewhere goes to
# a port that refuses (in this process and in every CLI subprocess, which inherit it).
os.environ["VGG_MOBILE_WEIGHTS_URL"] = "http://127.0.0.1:9/"
os.environ.pop("VGG_MOBILE_OFFLINE", None)

# Fixed settings of the session teacher; tests that train their own use smaller budgets.
TEACHER_SIZE = 32
STUDENT = "mobilenet_v2_0.35"

SLOW_FIXTURES = {"teacher_run", "teacher_export", "teacher_images", "student_run", "cli"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The built-in sample dataset with its colour cue (learnt in seconds), small: 4 classes x
    30 images of 32 px."""
    from vgg_mobile.data.sample import write_sample_data

    return write_sample_data(tmp_path_factory.mktemp("data") / "sample", images_per_class=30,
                             image_size=32, seed=0, colour_cue=True)


@pytest.fixture(scope="session")
def teacher_run(sample_dir, tmp_path_factory):
    """A VGG16 teacher trained from scratch on the sample data (about half a minute)."""
    from vgg_mobile.training.hyperparameters import TrainConfig
    from vgg_mobile.models.architectures import ModelOptions
    from vgg_mobile.training.train import train

    out = tmp_path_factory.mktemp("runs") / "teacher"
    return train(sample_dir, out, ModelOptions(image_size=TEACHER_SIZE, weights="none"),
                 TrainConfig(epochs=TEACHER_EPOCHS, batch_size=16, learning_rate=3e-4),
                 command=["pytest-fixture"])


@pytest.fixture(scope="session")
def teacher_images(teacher_run, sample_dir):
    """The teacher's model, its held-out images and labels, and its probabilities on them
    (checked to vary across images, so comparisons with it mean something)."""
    import harness
    from vgg_mobile.core.run_dir import load_run

    run = load_run(teacher_run.run_dir)
    model = run.load_model()
    images, labels = harness.held_out_images(run, sample_dir)
    reference = model(images, training=False).numpy()
    harness.assert_varies(reference)
    return model, images, labels, reference


@pytest.fixture(scope="session")
def student_run(teacher_run, sample_dir, tmp_path_factory):
    """A MobileNetV2 student distilled from the session teacher at 32 px: 12 epochs, enough for
    its answers to differ across images (6 gave one class for every image)."""
    from vgg_mobile.distillation.distill import DistillConfig, distill

    out = tmp_path_factory.mktemp("runs") / "student"
    return distill(teacher_run.run_dir, sample_dir, out,
                   DistillConfig(student=STUDENT, image_size=32, epochs=12, batch_size=16),
                   command=["pytest-fixture"])


@pytest.fixture(scope="session")
def teacher_export(teacher_run, sample_dir, tmp_path_factory):
    """The teacher converted by `convert_run`: float32 and int8 TFLite, a float TF.js bundle
    (so browser and Keras can be compared tightly), and Android assets."""
    from vgg_mobile.converters.convert import ConvertOptions, convert_run

    base = tmp_path_factory.mktemp("export")
    options = ConvertOptions(flavours=("float32", "int8"), max_size=None, verify_images=48,
                             tfjs_quantization="none")
    manifest = convert_run(teacher_run.run_dir, base / "out", options, data_dir=sample_dir,
                           android_dir=base / "android", command=["test"])
    return base, manifest


@pytest.fixture()
def keras_home(tmp_path, monkeypatch) -> Path:
    """An empty Keras home, so no test can see (or fill) the user's weight cache."""
    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def cli():
    """Runs the real `vgg-mobile` command in a subprocess: `cli("train", ...)`."""
    import subprocess
    import sys

    def run(*args: str, env: dict | None = None, timeout: float = 600, **kwargs):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([sys.executable, "-m", "vgg_mobile", *map(str, args)],
                              capture_output=True, text=True, env=full_env, timeout=timeout,
                              **kwargs)

    return run
