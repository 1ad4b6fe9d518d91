"""Keras -> ONNX (tf2onnx) and int8 ONNX (ONNX Runtime static quantization).

Two flavours:
  float32  the model as it is, converted by tf2onnx. A quantization-aware-trained model keeps
           its fake-quantization as QuantizeLinear/DequantizeLinear pairs, so ONNX Runtime
           runs it with the ranges it was trained with.
  int8     ONNX Runtime's static quantization in QDQ form (weights per channel in 7 bits of an
           int8, int8 activations), its ranges calibrated on training images.

The input is `pixels`, float32 `[batch, h, w, 3]` RGB in [0, 255] with a dynamic batch; the
output is `probs`, `[batch, classes]`. The preprocessing stays inside the graph, as in every
other export. Labels, preprocessing and version go into the model's `metadata_props`.
ONNX Runtime and OpenVINO run the files (`vgg_mobile.runtimes.onnxruntime`, `.openvino`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.runtimes.onnxruntime import INPUT_NAME, OUTPUT_NAME, ONNXRuntime
# ONNX Runtime 1.2x runs opset 18 fully; tf2onnx 1.17 writes up to it.
DEFAULT_OPSET = 18


def convert_keras_model(model, opset: int | None = None) -> bytes:
    """Converts a tf_keras classifier to ONNX with tf2onnx.

    Args:
        model: A tf_keras model taking `(batch, h, w, 3)` float32 pixels in [0, 255].
        opset: ONNX opset. Defaults to `DEFAULT_OPSET`.

    Returns:
        The `.onnx` file's bytes: input `pixels` with a dynamic batch, output `probs`.
    """
    import tensorflow as tf
    import tf2onnx

    height, width = model.input_shape[1:3]
    spec = (tf.TensorSpec([None, height, width, 3], tf.float32, name=INPUT_NAME),)
    function = tf.function(lambda pixels: {OUTPUT_NAME: model(pixels, training=False)})
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec,
                                             opset=opset or DEFAULT_OPSET)
    # The same (cached) trace that tf2onnx converted.
    _inline_captured_constants(proto, function.get_concrete_function(*spec))
    return proto.SerializeToString()


def _inline_captured_constants(proto, concrete) -> None:
    """Turns the constants tf2onnx made graph inputs back into constants, in place.

    A layer may hold a constant as a TensorFlow tensor rather than a variable or a Python
    number: tf_keras's `Normalization` built with a given mean and variance (VGG's
    `preprocess` from scratch) does. Traced, such a tensor is captured by value: a `Const` in
    the function's graph that TensorFlow also lists among the function's inputs.
    `tf2onnx.convert.from_function` makes every non-resource input an ONNX graph input
    (`from_keras` leaves captures out), so the model would ask for the mean as a second
    input beside `pixels`, and ONNX Runtime refuses to run it (or calibrate it) without one.

    Each such input becomes an initializer holding the captured value, or goes when no node
    reads it (TensorFlow's graph optimizer folded the variance into a constant already).

    Args:
        proto: The `ModelProto` from tf2onnx.
        concrete: The concrete function tf2onnx converted.

    Raises:
        RuntimeError: A graph input other than `pixels` that is not a captured constant.
    """
    import tensorflow as tf
    from onnx import numpy_helper

    captured = {internal.name: external for external, internal in concrete.graph.captures
                if internal.dtype != tf.resource}
    graph = proto.graph
    read = set(_names_read(graph))
    for graph_input in list(graph.input):
        if graph_input.name == INPUT_NAME:
            continue
        if graph_input.name not in captured:
            raise RuntimeError(f"tf2onnx gave the ONNX model an input {graph_input.name!r} "
                               f"besides {INPUT_NAME!r} that is not a constant of the model")
        if graph_input.name in read:
            graph.initializer.append(numpy_helper.from_array(captured[graph_input.name].numpy(),
                                                             graph_input.name))
        graph.input.remove(graph_input)


def _names_read(graph):
    """The name of every tensor a node of `graph` or of its subgraphs reads."""
    for node in graph.node:
        yield from node.input
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _names_read(sub)


def quantize_int8(model_content: bytes, calibration: np.ndarray) -> bytes:
    """Full-integer QDQ model from an ONNX model and calibration images.

    Weights are int8 per output channel, activations int8 with min/max ranges measured on
    `calibration`: the signed-signed QDQ form that ONNX Runtime recommends for CPUs. Weights use
    7 of their 8 bits (`reduce_range`): x86 CPUs without VNNI (AVX2, most AVX-512) multiply u8 by
    s8 pairwise into a saturating 16-bit sum, and with full-range weights a MobileNet's sums
    overflow there; on such a CPU a distilled student's int8 model lost a third of its top-1
    agreement with Keras (docs/measurements.md). The file is run on CPUs we do not know, so it
    gives up one bit everywhere rather than its answers on some.

    Args:
        model_content: A float `.onnx` from `convert_keras_model`.
        calibration: Float32 images `(n, h, w, 3)` in [0, 255], at least one.

    Returns:
        The int8 `.onnx` file's bytes.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise BadInputError("int8 ONNX needs at least one calibration image")

    class Reader(CalibrationDataReader):
        """Feeds the calibration images one at a time to the range calibrator."""

        def __init__(self):
            self._images = iter(np.asarray(calibration, np.float32))

        def get_next(self):
            image = next(self._images, None)
            return None if image is None else {INPUT_NAME: image[None]}

    reader = Reader()
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, out = (os.path.join(tmp, name) for name in ("in.onnx", "pre.onnx", "q.onnx"))
        Path(source).write_bytes(model_content)
        # Shape inference and constant folding first, as ONNX Runtime's docs advise; the
        # symbolic pass needs sympy and adds nothing for a fixed-size image classifier.
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        # The quantizer logs a warning on the root logger for every 1-D tensor it leaves per
        # tensor (batch-norm vectors) and every bias it cannot fold: dozens of lines, none
        # actionable.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_static(prepared, out, reader, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            per_channel=True, reduce_range=True)
        finally:
            root.setLevel(level)
        return Path(out).read_bytes()


def add_metadata(model_content: bytes, props: dict[str, object]) -> bytes:
    """Returns the model with `props` in its `metadata_props` (non-strings stored as JSON)."""
    import onnx

    model = onnx.load_from_string(model_content)
    values = {key: value if isinstance(value, str) else json.dumps(value) for key, value in props.items()}
    onnx.helper.set_model_props(model, values)
    return model.SerializeToString()


def read_metadata(model_content: bytes) -> dict[str, str]:
    """The `metadata_props` of an ONNX model, as strings, read by ONNX Runtime (which loads
    only a self-contained model)."""
    return ONNXRuntime.load(model_content).metadata()


def predict_onnx(model, images: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """Runs a classifier `.onnx` on images in ONNX Runtime (`vgg_mobile.runtimes.onnxruntime`).

    Args:
        model: The `.onnx` bytes, or a loaded `ONNXRuntime`.
        images: Float32 pixels `(n, h, w, 3)` in [0, 255].
        num_threads: Threads, when `model` is bytes. Defaults to `1`.

    Returns:
        Float32 probabilities `(n, num_classes)`.
    """
    runner = ONNXRuntime.load(model, num_threads) if isinstance(model, bytes) else model
    return runner.predict(images)
