"""Test-time augmentation: the views, the flip decision, the batched forward passes, and
`evaluate --tta` (on the session teacher, whose answers vary across images)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.core.run_dir import Manifest
from vgg_mobile.data import dataset
from vgg_mobile.evaluation.tta import (IDENTITY, TTA, predict_views, resolve_flip, training_flip,
                                       view_names, views)

SIZE = 32


def _pixels(n: int = 3, size: int = SIZE) -> np.ndarray:
    # A gradient plus noise: no crop, shift or mirror of it equals the image.
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, size)[None, None, :, None]
    noise = rng.integers(0, 50, (n, size, size, 3))
    return (ramp + noise).round().astype(np.float32)


def test_the_views_are_the_image_its_mirror_and_resized_crops():
    x = _pixels()
    out = views(x, flip=True, crop=0.9).numpy()
    names = view_names(True, 0.9)
    assert out.shape == (7, 3, SIZE, SIZE, 3) == (len(names), *x.shape)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], x)
    np.testing.assert_array_equal(out[names.index("mirror")], x[:, :, ::-1])
    side = round(0.9 * SIZE)
    corners = {"top-left": (0, 0), "bottom-right": (SIZE - side, SIZE - side),
               "centre": ((SIZE - side) // 2, (SIZE - side) // 2)}
    for name, (top, left) in corners.items():
        crop = x[:, top:top + side, left:left + side].astype(np.uint8)
        expected = dataset.resize_pixels(crop, SIZE).numpy()
        np.testing.assert_array_equal(out[names.index(name)], expected)
    for k in range(1, len(names)):
        assert np.abs(out[k] - x).mean() > 1, f"{names[k]} is the image itself"
    assert len({out[k].tobytes() for k in range(len(names))}) == len(names)


def test_view_choices_change_the_count():
    x = _pixels(2)
    assert views(x, flip=False, crop=1.0).shape[0] == 1 == len(view_names(False, 1.0))
    assert views(x, flip=True, crop=1.0).shape[0] == 2
    assert views(x, flip=False, crop=0.8).shape[0] == 6 == len(view_names(False, 0.8))


@pytest.mark.parametrize("bad", [{"flip": "yes"}, {"crop": 0.0}, {"crop": 1.5}])
def test_bad_settings_are_refused_naming_the_value(bad):
    with pytest.raises(BadInputError, match=str(list(bad.values())[0])):
        TTA(**bad)


def _manifest(size: int, config: dict, **sections) -> Manifest:
    return Manifest(stage="x", classes=("a", "b"), input={"size": [size, size]}, config=config,
                    sections=sections)


def test_the_mirror_follows_the_training_augmentation():
    # Recorded augmentation wins over what the config would give.
    recorded = _manifest(32, {"train": {"augment": True}}, training={"augmentation": {"flip": True}})
    assert training_flip(recorded) is True
    # Otherwise the config, through `dataset.augmentation_for`: no flips up to 64 px.
    assert training_flip(_manifest(32, {"train": {"augment": True}})) is False
    assert training_flip(_manifest(128, {"train": {"augment": True}})) is True
    assert training_flip(_manifest(128, {"train": {"augment": False}})) is False
    # A student is augmented at the larger of its and its teacher's sides.
    student = _manifest(64, {"distill": {"augment": True}}, teacher={"image_size": 96})
    assert training_flip(student) is True
    assert training_flip(_manifest(32, {})) is None
    assert resolve_flip(TTA(), _manifest(32, {})) == (False, "unknown training augmentation: no mirror")
    assert resolve_flip(TTA(flip="on"), _manifest(32, {"train": {"augment": True}}))[0] is True
    assert resolve_flip(TTA(), _manifest(128, {"train": {"augment": True}})) == (
        True, "training augmentation")


@pytest.fixture(scope="module")
def held_out(teacher_run, sample_dir):
    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.data import splits

    run = load_run(teacher_run.run_dir)
    examples, _ = splits.held_out(run.manifest.data, dataset.scan_folder(sample_dir), "auto")
    return run, run.load_model(), examples


def test_each_view_s_probabilities_are_the_model_s_on_that_view(held_out):
    import harness
    from vgg_mobile.evaluation.metrics import predict

    run, model, examples = held_out
    single, labels = predict(model, examples, SIZE, len(run.classes), batch_size=8)
    harness.assert_varies(single)
    # A batch size that does not divide the images: the last batch is a short one.
    probs, tta_labels = predict_views(model, examples, SIZE, len(run.classes), flip=True,
                                      crop=0.9, batch_size=7)
    assert probs.shape == (7, len(examples), len(run.classes))
    np.testing.assert_array_equal(tta_labels, labels)
    np.testing.assert_allclose(probs[0], single, atol=1e-5)
    x = np.concatenate([x.numpy() for x, _ in dataset.make_dataset(
        examples, SIZE, 64, len(run.classes), one_hot=False)])
    every = views(x, flip=True, crop=0.9)
    for k in range(1, 7):
        np.testing.assert_allclose(probs[k], model(every[k], training=False).numpy(), atol=1e-5)
    assert np.abs(probs[1:] - probs[0]).max() > 1e-3


def test_tta_with_the_image_alone_is_the_single_pass(teacher_run, sample_dir, tmp_path):
    from vgg_mobile.evaluation.metrics import evaluate_run

    report = evaluate_run(teacher_run.run_dir, sample_dir, out_dir=tmp_path, tta=IDENTITY)
    tta = report["tta"]
    assert tta["views"] == ["image"] and tta["num_views"] == 1
    assert tta["num_images"] == report["num_images"] > 0
    assert tta["accuracy"] == tta["single_pass_accuracy"] == report["accuracy"]
    assert tta["macro_f1"] == report["macro_f1"]
    plain = evaluate_run(teacher_run.run_dir, sample_dir, out_dir=tmp_path / "plain")
    assert "tta" not in plain and plain["accuracy"] == report["accuracy"]


def test_evaluate_tta_prints_both_accuracies_and_json_has_them(teacher_run, sample_dir, tmp_path):
    from click.testing import CliRunner

    from vgg_mobile.cli.main import main

    args = ["evaluate", str(teacher_run.run_dir), "--data", str(sample_dir), "--tta"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "text")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "text" / "metrics.json").read_text())
    tta = report["tta"]
    # The session teacher is 32 px: trained without flips, so no mirror view.
    assert tta["flip"] is False and tta["flip_from"] == "training augmentation"
    assert tta["views"] == view_names(False, 0.9) and tta["num_views"] == 6
    assert (f"test-time augmentation on the same {report['num_images']} images: accuracy "
            f"{report['accuracy']:.4f} single pass, {tta['accuracy']:.4f} with TTA (6 views"
            in result.output)
    result = CliRunner().invoke(main, [*args, "--tta-flip", "on", "--tta-crop", "1",
                                       "--out", str(tmp_path / "json"), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["tta"]["views"] == ["image", "mirror"] and printed["tta"]["flip_from"] == "asked"
    assert {"accuracy", "single_pass_accuracy", "num_images", "num_views",
            "macro_f1"} <= set(printed["tta"])
    assert printed["tta"]["single_pass_accuracy"] == printed["accuracy"]
    assert printed["tta"]["num_images"] == printed["num_images"]
    result = CliRunner().invoke(main, [*args, "--tta-crop", "0", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--tta-crop" in result.output


def test_the_tta_answer_is_the_mean_over_the_views():
    from vgg_mobile.evaluation.metrics import tta_summary

    # probs[view, image]: the single pass (view 0) gets image 1 right only; the mean over
    # the three views gets images 0 and 1 right.
    probs = np.array([
        [[0.4, 0.6], [0.2, 0.8], [0.3, 0.7]],
        [[0.9, 0.1], [0.4, 0.6], [0.6, 0.4]],
        [[0.8, 0.2], [0.5, 0.5], [0.4, 0.6]],
    ])
    labels = np.array([0, 1, 0])
    summary = tta_summary(probs, labels, ("a", "b"), flip=True, why="asked", crop=1.0)
    assert summary["single_pass_accuracy"] == round(1 / 3, 4)
    assert summary["accuracy"] == round(2 / 3, 4)
    probs[2, 2] = [0.9, 0.1]  # now the mean gets image 2 right as well
    summary = tta_summary(probs, labels, ("a", "b"), flip=True, why="asked", crop=1.0)
    assert summary["single_pass_accuracy"] == round(1 / 3, 4) and summary["accuracy"] == 1.0
    assert summary["num_views"] == 3 and summary["num_images"] == 3
