"""The runtime table: every runtime of every format loads an artifact the project makes, and
its answers agree with the Keras model's on held-out and on extreme images."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import harness
from vgg_mobile import runtimes
from vgg_mobile.core.errors import BadInputError

# Largest probability difference from Keras, and smallest top-1 agreement, of each runtime on
# the float artifacts below (the int8 TFLite file has its own test).
TOLERANCES = {"keras": (1e-5, 1.0), "litert": (1e-4, 1.0), "onnxruntime": (1e-4, 1.0),
              "openvino": (1e-3, 1.0), "tfjs": (1e-4, 1.0)}
PAIRS = [(fmt, runtime) for fmt, row in runtimes.RUNTIMES.items() for runtime in row]


def _extremes(side: int) -> np.ndarray:
    """Black, white, a gradient, saturated colours and seeded noise: inputs far from the
    training images, where a wrong resize, dtype or quantization shows first."""
    ramp = np.broadcast_to(np.linspace(0, 255, side, dtype=np.float32)[None, :, None], (side, side, 3))
    colours = [np.broadcast_to(np.asarray(c, np.float32), (side, side, 3))
               for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    noise = np.random.default_rng(3).uniform(0, 255, (2, side, side, 3)).astype(np.float32)
    return np.concatenate([np.stack([np.zeros((side, side, 3), np.float32),
                                     np.full((side, side, 3), 255, np.float32), ramp, *colours]),
                           noise])


@pytest.fixture(scope="module")
def inputs(teacher_images):
    """Held-out images and extreme ones, with the in-memory Keras model's answers on them."""
    model, images, _, _ = teacher_images
    pixels = np.concatenate([images, _extremes(images.shape[1])])
    return pixels, model(pixels, training=False).numpy()


@pytest.fixture(scope="module")
def artifacts(teacher_run, teacher_export, teacher_images, tmp_path_factory):
    """One artifact of each format in the table, as the project writes them: the teacher's
    run, its export's float32 TFLite file and (float) TF.js bundle, and its float ONNX model."""
    from vgg_mobile.converters import onnx

    base, manifest = teacher_export
    by_format = {(a["format"], a["flavour"]): a["file"] for a in manifest["artifacts"]}
    onnx_path = tmp_path_factory.mktemp("onnx") / "teacher.onnx"
    onnx_path.write_bytes(onnx.convert_keras_model(teacher_images[0]))
    return {"keras": teacher_run.run_dir / "model.keras",
            "tflite": base / "out" / by_format["tflite", "float32"],
            "onnx": onnx_path,
            "tfjs": base / "out" / "tfjs"}


def test_every_format_of_the_table_has_an_artifact_here(artifacts):
    assert set(artifacts) == set(runtimes.RUNTIMES)
    for fmt, path in artifacts.items():
        assert path.exists() and runtimes.format_of(path) == fmt


@pytest.mark.parametrize("fmt,runtime", PAIRS, ids=[r.key for _, r in PAIRS])
def test_every_runtime_agrees_with_keras(fmt, runtime, artifacts, inputs):
    pixels, reference = inputs
    if not runtime.available():
        pytest.fail(f"{runtime.label} is part of the development environment but not installed")
    loaded = runtime.load(artifacts[fmt], threads=2)
    assert loaded.image_size == pixels.shape[1] and loaded.output_shape[-1] == reference.shape[1]
    probs, latency = loaded.measure(pixels, repeats=3)
    max_diff, min_agreement = TOLERANCES[runtime.key]
    harness.assert_matches(reference, probs, max_diff, min_agreement)
    assert probs.dtype == np.float32 and latency > 0
    described = loaded.describe()
    assert (described["runtime"], described["format"]) == (runtime.label, fmt)
    assert described["version"], described


def test_the_reference_runtime_is_loaded_by_path_bytes_or_format(artifacts, inputs):
    pixels, reference = inputs
    path = artifacts["tflite"]
    by_path = runtimes.load(path)
    by_bytes = runtimes.load(path.read_bytes(), "tflite")
    assert type(by_path) is type(by_bytes) is runtimes.LiteRT
    np.testing.assert_array_equal(by_path.predict(pixels[:6]), by_bytes.predict(pixels[:6]))
    assert by_path.predict(pixels[:0]).shape == (0, reference.shape[1])


def test_int8_tflite_quantizes_pixels_and_dequantizes_probabilities(teacher_export, inputs):
    pixels, reference = inputs
    base, manifest = teacher_export
    int8 = next(a for a in manifest["artifacts"] if a["format"] == "tflite" and a["flavour"] == "int8")
    runtime = runtimes.load(base / "out" / int8["file"])
    assert runtime.interpreter.get_input_details()[0]["dtype"] == np.uint8
    n = len(reference) - len(_extremes(pixels.shape[1]))
    # Held to Keras on held-out images as convert's verification holds it; on the extreme
    # images, which calibration never saw, only to answering probabilities.
    harness.assert_matches(reference[:n], runtime.predict(pixels[:n]), 0.15, 0.9)
    extreme = runtime.predict(pixels[n:])
    np.testing.assert_allclose(extreme.sum(axis=1), 1.0, atol=0.02)


def test_bad_formats_and_artifacts_are_refused_with_the_value(tmp_path):
    with pytest.raises(BadInputError, match=r"unknown artifact format 'pt'; valid: keras, tflite, onnx, tfjs"):
        runtimes.runtime_for("pt")
    with pytest.raises(BadInputError, match="model bytes need a format"):
        runtimes.load(b"TFL3")
    model = tmp_path / "model.pt"
    model.write_bytes(b"x")
    with pytest.raises(BadInputError, match=r"model.pt: not a model artifact \(expected .keras, .tflite, .onnx"):
        runtimes.load(model)
    with pytest.raises(BadInputError, match="not a valid TFLite model"):
        runtimes.load(b"TFL3 but not really a model", "tflite")
    with pytest.raises(BadInputError, match="not a valid ONNX model"):
        runtimes.load(b"not a model", "onnx")


def test_importing_the_table_imports_no_runtime_library():
    code = ("import sys, vgg_mobile.runtimes; "
            "print(sorted(m for m in ('tensorflow', 'tf_keras', 'ai_edge_litert', 'onnxruntime', "
            "'openvino', 'onnx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]
