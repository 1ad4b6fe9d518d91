"""Quantization-aware training: zeros kept in the int8 TFLite, int8 close to float, export."""

from __future__ import annotations

import json

import numpy as np
import pytest



@pytest.mark.slow
def test_sparsity_preserving_qat_keeps_zeros_in_int8_tflite(pruned_qat, pruned, teacher_run,
                                                            sample_images):
    from vgg_mobile.converters import tflite
    from vgg_mobile.core.run_dir import load_run

    run = load_run(pruned_qat.run_dir)
    assert run.manifest.stage == "pruned_qat" and run.manifest.model_file == "model.h5"
    assert run.manifest.section("compression")["scheme"] == "prune_preserve_default_8bit"
    x, y = sample_images
    model = run.load_model()  # a reload round-trip: the same outputs as before saving
    np.testing.assert_allclose(model(x, training=False).numpy(),
                               pruned_qat.model(x, training=False).numpy(), atol=1e-5)
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
    from vgg_mobile.converters import tflite
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


def test_convert_exports_the_pruned_qat_run_with_its_zeros(pruned_qat, sample_dir, tmp_path):
    """The compressed run goes through `convert` like any run: verified, zeros kept."""
    from vgg_mobile.converters.convert import ConvertOptions, convert_run

    manifest = convert_run(pruned_qat.run_dir, tmp_path / "export",
                           ConvertOptions(flavours=("int8",), tfjs=False, max_size=None),
                           data_dir=sample_dir)
    (artifact,) = manifest["artifacts"]
    assert artifact["weight_sparsity"]["fraction"] >= 0.45
    assert artifact["verification"]["top1_agreement"] >= 0.9
    assert (tmp_path / "export" / artifact["file"]).stat().st_size == artifact["size_bytes"]


def test_convert_refuses_a_tfjs_bundle_of_a_qat_run_before_any_work(pruned_qat, sample_dir, tmp_path):
    """TF.js has no fake-quantization kernels: a one-line reason, exit 2, nothing written."""
    from vgg_mobile.converters.convert import ConvertOptions, convert_run
    from vgg_mobile.core.errors import BadInputError

    with pytest.raises(BadInputError, match="quantization-aware run cannot become a TF.js bundle.*--no-tfjs"):
        convert_run(pruned_qat.run_dir, tmp_path / "export", ConvertOptions(flavours=("int8",), tfjs=True),
                    data_dir=sample_dir)
    assert not (tmp_path / "export").exists() and not list(tmp_path.iterdir())
