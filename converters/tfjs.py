"""Keras -> TensorFlow.js graph-model bundle (run in Node by `vgg_mobile.runtimes.tfjs_node`).

A bundle is a folder: `model.json` + weight shards (optionally uint8- or float16-quantized),
`labels.json` and `manifest.json`, ready for the web demo.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.runtimes.tfjs_node import TFJSNode

from vgg_mobile.converters.tflite import variables_of

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


def predict_tfjs(bundle_dir: str | Path, images: np.ndarray, backend: str = "wasm") -> np.ndarray:
    """The probabilities of a graph-model bundle run in TensorFlow.js under Node
    (`vgg_mobile.runtimes.tfjs_node`)."""
    return TFJSNode.load(bundle_dir, backend=backend).predict(images)
