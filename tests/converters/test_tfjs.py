"""TF.js conversion through the tensorflowjs import shim, run by TensorFlow.js itself (Node)."""

from __future__ import annotations

import json

import pytest

import harness
from vgg_mobile.converters import tfjs
from vgg_mobile.core.errors import BadInputError


@pytest.fixture(scope="module")
def model_and_images(teacher_images):
    model, images, _, reference = teacher_images
    return model, images, reference


@pytest.mark.parametrize("quantization,max_diff,min_agreement", [
    ("none", 1e-4, 1.0), ("uint8", 0.15, 0.85)])
def test_bundle_runs_in_tensorflow_js_and_agrees_with_keras(model_and_images, tmp_path,
                                                           quantization, max_diff, min_agreement):
    model, images, reference = model_and_images
    bundle = tfjs.convert_to_tfjs(model, tmp_path / "bundle", quantization)
    topology = json.loads((bundle / "model.json").read_text())
    assert topology["format"] == "graph-model"
    dtypes = {w["dtype"] for group in topology["weightsManifest"] for w in group["weights"]}
    quantized = {w.get("quantization", {}).get("dtype") for group in topology["weightsManifest"]
                 for w in group["weights"]}
    assert "float32" in dtypes
    assert ("uint8" in quantized) == (quantization == "uint8")
    harness.assert_matches(reference, tfjs.predict_tfjs(bundle, images), max_diff, min_agreement)


def test_uint8_weights_make_the_bundle_about_four_times_smaller(model_and_images, tmp_path):
    model, *_ = model_and_images

    def size(path):
        return sum(p.stat().st_size for p in path.iterdir())

    full = size(tfjs.convert_to_tfjs(model, tmp_path / "f", "none"))
    small = size(tfjs.convert_to_tfjs(model, tmp_path / "q", "uint8"))
    assert 0.2 < small / full < 0.3


def test_unknown_quantization_and_broken_bundle(model_and_images, tmp_path):
    from vgg_mobile.core.errors import VggMobileError

    model, images, _ = model_and_images
    with pytest.raises(BadInputError, match="uint8, float16"):
        tfjs.convert_to_tfjs(model, tmp_path / "x", "int4")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    with pytest.raises(VggMobileError, match="TensorFlow.js could not run the bundle"):
        tfjs.predict_tfjs(broken, images[:1])


def test_tfjs_import_shim_leaves_no_stand_in_modules_behind():
    # Converting to TF.js first and pruning afterwards, in one process (as a notebook does):
    # tfmot imports Keras 3, which fails on an empty stand-in `jax` module.
    import subprocess
    import sys

    code = ("import sys, vgg_mobile; from vgg_mobile.converters import tfjs; tfjs._import_tensorflowjs(); "
            "assert 'jax' not in sys.modules and 'tensorflow_decision_forests' not in sys.modules; "
            "import tensorflow_model_optimization as tfmot; "
            "from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper; "
            "print('ok', tfmot.sparsity.keras.prune_low_magnitude.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok prune_low_magnitude" in result.stdout, result.stderr[-2000:]
