"""Training the teacher for real: it learns, it records what it did, it survives interruptions."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vgg_mobile.core.errors import RunDirError
from vgg_mobile.training.hyperparameters import TrainConfig
from vgg_mobile.models.architectures import ModelOptions
from vgg_mobile.data.sample import write_sample_data
from vgg_mobile.training.train import train

from harness import TEACHER_EPOCHS


def test_teacher_learns_the_sample_data_well_above_chance(teacher_run):
    # Four balanced classes: chance is 0.25. Eight epochs from scratch on 96 images land
    # between 0.54 and 0.75 from run to run (thread scheduling changes the float sums); 11 of
    # 24 right by chance has a probability of about 1%.
    assert teacher_run.metrics["accuracy"] >= 0.45, teacher_run.metrics
    assert teacher_run.metrics["num_images"] == 24
    history = teacher_run.history
    assert len(history["loss"]) == TEACHER_EPOCHS
    assert history["loss"][-1] < history["loss"][0]
    assert history["accuracy"][-1] > 0.5


def test_manifest_records_what_later_stages_need(teacher_run, sample_dir):
    run = teacher_run.run_dir
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["stage"] == "teacher"
    assert manifest["classes"] == ["circle", "cross", "square", "triangle"]
    assert (run / "labels.txt").read_text() == "circle\ncross\nsquare\ntriangle\n"
    assert manifest["input"]["size"] == [32, 32] and manifest["input"]["range"] == [0, 255]
    assert manifest["input"]["resize"]["method"] == "bilinear"
    assert manifest["preprocessing"]["in_graph"] is True
    assert manifest["config"]["model"]["weights"] == "none"
    assert manifest["config"]["train"]["epochs"] == TEACHER_EPOCHS
    assert manifest["command"] == ["pytest-fixture"]
    assert manifest["parent"] is None
    assert manifest["data"]["path"] == str(Path(sample_dir).resolve())
    assert manifest["data"]["train_images"] + manifest["data"]["val_images"] == 120
    assert manifest["metrics"]["accuracy"] == teacher_run.metrics["accuracy"]
    assert manifest["training"]["images_per_second"] > 0
    assert manifest["versions"]["tensorflow"].startswith("2.")
    assert json.loads((run / "history.json").read_text())["loss"] == teacher_run.history["loss"]
    assert (run / "training_curves.png").stat().st_size > 1000
    assert any((run / "logs").rglob("events.out.tfevents.*"))
    assert not (run / "checkpoints").exists()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return write_sample_data(tmp_path_factory.mktemp("small") / "data", images_per_class=10,
                             image_size=32, seed=1, colour_cue=True)


def _train_process(data, out, *extra):
    args = [sys.executable, "-m", "vgg_mobile", "train", str(data), "--out", str(out),
            "--image-size", "32", "--epochs", "6", "--batch-size", "8", "--weights", "none",
            "--quiet", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epoch(out: Path, epoch: int, process, timeout=300):
    state = out / "checkpoints" / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.exists():
            done = json.loads(state.read_text()).get("epochs_done", 0)
            if done >= epoch:
                return done
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    raise AssertionError(f"epoch {epoch} not reached in {timeout}s")


@pytest.mark.slow
def test_killed_and_interrupted_training_resumes_to_the_same_epoch_count(small_data, tmp_path):
    out = tmp_path / "run"
    first = _train_process(small_data, out)
    _wait_for_epoch(out, 2, first)
    first.kill()  # as a crash or an out-of-memory kill would
    first.wait()
    assert not (out / "manifest.json").exists() and not (out / "model.keras").exists()

    # Without --resume the interrupted run is protected.
    with pytest.raises(RunDirError, match="interrupted run"):
        train(small_data, out, ModelOptions(image_size=32, weights="none"),
              TrainConfig(epochs=6, batch_size=8))

    second = _train_process(small_data, out, "--resume")
    reached = _wait_for_epoch(out, 4, second)
    second.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr

    third = _train_process(small_data, out, "--resume", "--json")
    stdout, stderr = third.communicate(timeout=300)
    assert third.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["epochs"] == 6 and result["resumed_from_epoch"] >= reached
    manifest = json.loads((out / "manifest.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert manifest["training"]["epochs"] == 6
    assert len(history["loss"]) == 6 and len(history["val_accuracy"]) == 6
    assert not (out / "checkpoints").exists()


def test_resume_refuses_changed_options(small_data, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    config = TrainConfig(epochs=2, batch_size=8)
    state = {"config": {"model": {}, "train": {}}, "data_fingerprint": "x", "epochs_done": 1,
             "checkpoint": None, "history": {}}
    (out / "checkpoints" / "state.json").write_text(json.dumps(state))
    with pytest.raises(RunDirError, match="the settings differ"):
        train(small_data, out, ModelOptions(image_size=32), config, resume=True)


def test_progressive_fine_tuning_from_local_weights_freezes_then_unfreezes(small_data, tmp_path,
                                                                          keras_home):
    import numpy as np
    import tf_keras as keras

    keras.utils.set_random_seed(3)
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.save_weights(keras_home / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    result = train(small_data, tmp_path / "run", ModelOptions(image_size=32, weights="imagenet"),
                   TrainConfig(epochs=2, batch_size=8, fine_tune="progressive", unfreeze_blocks=1,
                               augment=False))
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["training"]["phases"] == [
        {"start": 0, "end": 1, "trainable_blocks": 0}, {"start": 1, "end": 2, "trainable_blocks": 1}]
    assert manifest["preprocessing"]["std_rgb"] == [1.0, 1.0, 1.0]
    model = keras.models.load_model(result.run_dir / "model.keras", compile=False)
    # Block 1-4 never trained: still the loaded weights (block1 with the BGR flip folded in).
    np.testing.assert_array_equal(model.get_layer("block4_conv3").get_weights()[0],
                                  base.get_layer("block4_conv3").get_weights()[0])
    np.testing.assert_array_equal(model.get_layer("block1_conv1").get_weights()[0],
                                  base.get_layer("block1_conv1").get_weights()[0][:, :, ::-1])
    # Block 5 trained in the second phase.
    assert not np.array_equal(model.get_layer("block5_conv3").get_weights()[0],
                              base.get_layer("block5_conv3").get_weights()[0])


@pytest.mark.slow
def test_a_full_disk_leaves_no_file_that_looks_finished(small_data, tmp_path, cli):
    import resource

    out = tmp_path / "run"

    def limit_file_size():
        # Any write past 8 MB fails with EFBIG, as a full disk fails with ENOSPC.
        resource.setrlimit(resource.RLIMIT_FSIZE, (8_000_000, 8_000_000))

    result = cli("train", small_data, "--out", out, "--image-size", "32", "--epochs", "1",
                 "--batch-size", "8", "--weights", "none", "--quiet", preexec_fn=limit_file_size)
    assert result.returncode == 1, result.stderr
    assert "error:" in result.stderr and "internal error" not in result.stderr
    # The first epoch's checkpoint could not be written, so there is nothing to resume from:
    # the new run's folder is removed rather than left to read as an interrupted run.
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def unbalanced_data(tmp_path_factory):
    """Two classes of 12 and 2 images (1:6), 32 px."""
    from harness import image_folder

    return image_folder(tmp_path_factory.mktemp("unbalanced") / "data", {"big": 12, "small": 2},
                        size=32)


def test_train_and_the_pipeline_s_teacher_stage_warn_of_unbalanced_classes(unbalanced_data,
                                                                             tmp_path):
    from click.testing import CliRunner

    from vgg_mobile.cli.main import main
    from vgg_mobile.pipeline.config import load_config
    from vgg_mobile.pipeline.stages import StageJob, get_stage

    result = CliRunner().invoke(main, [
        "train", str(unbalanced_data), "--out", str(tmp_path / "run"), "--weights", "none",
        "--architecture", "vgg16_bn_0.5", "--image-size", "32", "--epochs", "1", "--quiet",
        "--val-fraction", "0.5", "--focal-gamma", "2"])
    assert result.exit_code == 0, result.output
    # The folder is cut to a 1:6 split: 6 and 1 training images.
    assert ("warning: unbalanced classes: the smallest, 'small', has 1 training image, under "
            "a fifth of the largest, 'big', with 6: the focal loss is on (focal_gamma=2)"
            in result.stderr), result.stderr
    # The pipeline's teacher stage logs through the pipeline's log (its terminal output).
    lines = []
    config = load_config(text="[teacher]\nepochs = 1\nimage_size = 32\nweights = \"none\"\n"
                              "architecture = \"vgg16_bn_0.5\"\nval_fraction = 0.5\n")
    stage = get_stage("teacher")
    stage.run(StageJob(name="teacher", data_dir=unbalanced_data, out=tmp_path,
                       path=tmp_path / "teacher", parent=None, resume=False, command=["test"],
                       log=lines.append, verbose=0), config.teacher)
    assert any(line.startswith("warning: unbalanced classes") and "class_weights = true" in line
               for line in lines), lines
