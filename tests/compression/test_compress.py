"""Pruning and quantization-aware training on the session teacher: sparsity, int8, reload."""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import numpy as np
import pytest

from vgg_mobile.compression.qat import QATConfig, qat_run
from vgg_mobile.compression.prune import PruneConfig, prune_run
from vgg_mobile.core.errors import BadInputError

TARGET = 0.5


def _digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def _images(folder, classes, size):
    from vgg_mobile.data import dataset

    examples = dataset.scan_folder(folder, classes=classes).train
    ds = dataset.make_dataset(examples, size, 64, len(classes), one_hot=False)
    pixels, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(pixels), np.concatenate(labels)


@pytest.fixture(scope="module")
def sample_images(sample_dir, teacher_run):
    from vgg_mobile.core.run_dir import load_run

    run = load_run(teacher_run.run_dir)
    return _images(sample_dir, run.classes, run.image_size)


@pytest.fixture(scope="module")
def pruned(teacher_run, sample_dir, tmp_path_factory):
    before = _digest(teacher_run.run_dir)
    result = prune_run(teacher_run.run_dir, sample_dir, tmp_path_factory.mktemp("c") / "pruned",
                       PruneConfig(target_sparsity=TARGET, epochs=2, batch_size=16))
    assert _digest(teacher_run.run_dir) == before, "the input run was modified"
    return result


@pytest.fixture(scope="module")
def pqat(pruned, sample_dir, tmp_path_factory):
    return qat_run(pruned.run_dir, sample_dir, tmp_path_factory.mktemp("c") / "pqat",
                   QATConfig(epochs=1, batch_size=16, preserve_sparsity=True))


def test_configs_refuse_bad_values():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(BadInputError, match=f"target_sparsity={bad}"):
            PruneConfig(target_sparsity=bad)
    with pytest.raises(BadInputError, match="end_epoch"):
        PruneConfig(epochs=2, end_epoch=3)
    with pytest.raises(BadInputError, match="frequency"):
        PruneConfig(frequency=0)
    with pytest.raises(BadInputError, match="epochs"):
        QATConfig(epochs=0)


@pytest.mark.slow
def test_pruning_reaches_the_target_in_the_saved_kernels(pruned, teacher_run):
    from vgg_mobile.core.run_dir import load_run

    run = load_run(pruned.run_dir)
    manifest = run.manifest
    assert manifest["stage"] == "pruned"
    assert manifest["parent"] == str(teacher_run.run_dir.resolve())
    parent = load_run(teacher_run.run_dir).manifest
    for key in ("input", "preprocessing", "output", "architecture"):
        assert manifest[key] == parent[key]
    assert manifest["data"]["split_from"] == "parent"
    model = run.load_model()
    layers = {layer.name: layer for layer in model.layers}
    pruned_names = manifest["compression"]["pruned_layers"]
    assert "block1_conv1" not in pruned_names and "logits" not in pruned_names
    assert len(pruned_names) == 13  # 12 convolutions after the first, and the hidden dense
    for name in pruned_names:
        kernel = layers[name].kernel.numpy()
        assert (kernel == 0).mean() == pytest.approx(TARGET, abs=0.01), name
    for name in ("block1_conv1", "logits"):
        assert (layers[name].kernel.numpy() == 0).mean() < 0.01, name
    assert manifest["compression"]["sparsity"]["pruned_layers"] == pytest.approx(TARGET, abs=0.01)
    sizes = manifest["compression"]["sizes"]
    assert sizes["gzip_bytes_after"] < 0.8 * sizes["gzip_bytes_before"]
    assert manifest["metrics"]["accuracy"] == pruned.metrics["accuracy"]


@pytest.mark.slow
def test_pruned_run_reloads_and_evaluates(pruned, sample_images, sample_dir, tmp_path):
    from vgg_mobile.evaluation.metrics import evaluate_run
    from vgg_mobile.core.run_dir import load_run

    x, _ = sample_images
    expected = pruned.model(x, training=False).numpy()
    assert expected.std(axis=0).max() > 1e-3  # outputs vary across inputs
    reloaded = load_run(pruned.run_dir).load_model()
    np.testing.assert_allclose(reloaded(x, training=False).numpy(), expected, atol=1e-5)
    report = evaluate_run(pruned.run_dir, sample_dir, out_dir=tmp_path / "eval")
    assert report["split"] == "val" and report["accuracy"] == pruned.metrics["accuracy"]


@pytest.mark.slow
def test_sparsity_preserving_qat_keeps_zeros_in_int8_tflite(pqat, pruned, teacher_run,
                                                            sample_images):
    from converters import tflite
    from vgg_mobile.core.run_dir import load_run

    run = load_run(pqat.run_dir)
    assert run.manifest["stage"] == "pruned_qat" and run.manifest["model_file"] == "model.h5"
    assert run.manifest["compression"]["scheme"] == "prune_preserve_default_8bit"
    x, y = sample_images
    model = run.load_model()  # a reload round-trip: the same outputs as before saving
    np.testing.assert_allclose(model(x, training=False).numpy(),
                               pqat.model(x, training=False).numpy(), atol=1e-5)
    # The in-graph preprocessing computes (x - mean) / std in two ops; the range of the
    # tensor between them is the only one that the QAT model does not carry.
    content = tflite.convert_keras_model(model, "int8", representative=x[:16])
    sparsity = tflite.weight_sparsity(content)
    # Every conv and dense kernel counts; all but the first conv and the logits were pruned.
    assert sparsity["fraction"] >= 0.49, sparsity
    probs = tflite.predict_tflite(content, x)
    keras_probs = model(x, training=False).numpy()
    assert (probs.argmax(1) == keras_probs.argmax(1)).mean() >= 0.95
    int8_accuracy = (probs.argmax(1) == y).mean()
    float_model = load_run(teacher_run.run_dir).load_model()
    float_accuracy = (float_model(x, training=False).numpy().argmax(1) == y).mean()
    assert float_accuracy > 0.5  # the comparison means something: chance is 0.25
    assert abs(int8_accuracy - float_accuracy) <= 0.1, (int8_accuracy, float_accuracy)


@pytest.mark.slow
def test_qat_cli_converts_to_int8_close_to_float_and_evaluates(cli, teacher_run, sample_dir,
                                                               sample_images, tmp_path):
    from converters import tflite
    from vgg_mobile.evaluation.metrics import evaluate_run
    from vgg_mobile.core.run_dir import load_run

    out = tmp_path / "qat"
    result = cli("qat", teacher_run.run_dir, "--data", sample_dir, "--out", out, "--epochs", "1",
                 "--batch-size", "16", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["run"] == str(out) and summary["stage"] == "teacher_qat"
    report = evaluate_run(out, sample_dir, out_dir=tmp_path / "eval")
    assert report["split"] == "val" and report["accuracy"] == summary["val_accuracy"]

    x, y = sample_images
    model = load_run(out).load_model()
    content = tflite.convert_keras_model(model, "int8", representative=x[:16], io_dtype="int8")
    int8_accuracy = (tflite.predict_tflite(content, x).argmax(1) == y).mean()
    float_model = load_run(teacher_run.run_dir).load_model()
    float_accuracy = (float_model(x, training=False).numpy().argmax(1) == y).mean()
    assert abs(int8_accuracy - float_accuracy) <= 0.1, (int8_accuracy, float_accuracy)


def test_cli_refuses_bad_sparsity_quickly(cli, tmp_path):
    for command, flag in (("prune", "--target-sparsity"), ("qat", "--preserve-sparsity")):
        result = cli(command, "--help")
        assert result.returncode == 0 and flag in result.stdout
    start = time.perf_counter()
    result = cli("prune", tmp_path / "run", "--data", tmp_path, "--out", tmp_path / "out",
                 "--target-sparsity", "1.0")
    assert result.returncode == 2
    assert "target_sparsity must be in (0, 1). Received: target_sparsity=1.0" in result.stderr
    assert time.perf_counter() - start < 15
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_folder_without_manifest(cli, teacher_run, sample_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(teacher_run.run_dir, broken)
    (broken / "manifest.json").unlink()
    for command in ("prune", "qat"):
        result = cli(command, broken, "--data", sample_dir, "--out", tmp_path / command)
        assert result.returncode == 2, result.stderr
        assert f"{broken / 'manifest.json'}: missing" in result.stderr
        assert not (tmp_path / command).exists()


def test_refuses_nested_models_unpruned_preserve_and_writing_over_the_input(
        teacher_run, sample_dir, tmp_path):
    import tf_keras as keras

    from vgg_mobile.core.run_dir import finish_run, load_run

    parent = load_run(teacher_run.run_dir)
    inner = keras.Sequential([keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.GlobalAveragePooling2D()], name="inner")
    pixels = keras.Input((32, 32, 3))
    probs = keras.layers.Dense(4, activation="softmax", name="probs")(inner(pixels))
    nested_dir = finish_run(tmp_path / "nested", keras.Model(pixels, probs), dict(parent.manifest))
    before = _digest(nested_dir)
    with pytest.raises(BadInputError, match="nested model layer"):
        prune_run(nested_dir, sample_dir, tmp_path / "out")
    with pytest.raises(BadInputError, match="nested model layer"):
        qat_run(nested_dir, sample_dir, tmp_path / "out")
    assert _digest(nested_dir) == before and not (tmp_path / "out").exists()
    for field, value, message in (("architecture", "mobilenet_v3_small", "tfmot cannot wrap"),
                                  ("kind", "object_detector", "compression needs an image_classifier")):
        other = tmp_path / value
        shutil.copytree(nested_dir, other)
        manifest = json.loads((other / "manifest.json").read_text())
        (other / "manifest.json").write_text(json.dumps({**manifest, field: value}))
        with pytest.raises(BadInputError, match=message):
            prune_run(other, sample_dir, tmp_path / "out")
    with pytest.raises(BadInputError, match="not pruned"):
        qat_run(teacher_run.run_dir, sample_dir, tmp_path / "out", QATConfig(preserve_sparsity=True))
    with pytest.raises(BadInputError, match="not the input run"):
        prune_run(teacher_run.run_dir, sample_dir, teacher_run.run_dir, force=True)
    assert not (tmp_path / "out").exists()


def test_convert_exports_the_pruned_qat_run_with_its_zeros(pqat, sample_dir, tmp_path):
    """The compressed run goes through `convert` like any run: verified, zeros kept."""
    from converters.convert import ConvertOptions, convert_run

    manifest = convert_run(pqat.run_dir, tmp_path / "export",
                           ConvertOptions(flavours=("int8",), tfjs=False, max_size=None),
                           data_dir=sample_dir)
    (artifact,) = manifest["artifacts"]
    assert artifact["weight_sparsity"]["fraction"] >= 0.45
    assert artifact["verification"]["top1_agreement"] >= 0.9
    assert (tmp_path / "export" / artifact["file"]).stat().st_size == artifact["size_bytes"]
