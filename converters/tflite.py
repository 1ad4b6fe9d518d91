"""Keras -> TFLite conversion in four flavours, and running the result in LiteRT.

Flavours (`FLAVOURS`, looked up by name):
  float32  no quantization
  float16  weights stored as float16
  dynamic  dynamic-range: int8 weights, float activations
  int8     full-integer: int8 weights and activations, ranges from a representative dataset
           (or from the fake-quant nodes of a quantization-aware-trained model)

Inputs are the models' raw RGB pixels in [0, 255]; for full-integer models the input and
output may be uint8 or int8 (`io_dtype`), and LiteRT's runtime (`vgg_mobile.runtimes.litert`,
which `predict_tflite` uses) quantizes and dequantizes with the tensors' own parameters, so
callers always pass pixels and get probabilities.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from vgg_mobile.core import quiet
from vgg_mobile.core.custom_objects import is_quantization_aware
from vgg_mobile.core.errors import BadInputError
from vgg_mobile.runtimes.litert import LiteRT

IO_DTYPES = ("float32", "uint8", "int8")


@dataclasses.dataclass(frozen=True)
class Flavour:
    name: str
    description: str
    needs_representative: bool


FLAVOURS: dict[str, Flavour] = {
    "float32": Flavour("float32", "float32 weights and activations", False),
    "float16": Flavour("float16", "float16 weights, float32 activations", False),
    "dynamic": Flavour("dynamic", "dynamic-range: int8 weights, float activations", False),
    "int8": Flavour("int8", "full-integer: int8 weights and activations", True),
}


def get_flavour(name: str) -> Flavour:
    """Looks up a flavour by name; the error lists the valid names."""
    try:
        return FLAVOURS[name]
    except KeyError:
        raise BadInputError(
            f"unknown TFLite flavour {name!r}; valid: {', '.join(FLAVOURS)}") from None


def convert_keras_model(
    model,
    flavour: str,
    representative: np.ndarray | None = None,
    io_dtype: str = "float32",
    sparse: bool = False,
) -> bytes:
    """Converts a tf_keras classifier to a TFLite flatbuffer.

    Args:
        model: A tf_keras model taking `(batch, h, w, 3)` float32 pixels in [0, 255].
        flavour: A name from `FLAVOURS`.
        representative: Float32 images `(n, h, w, 3)` in [0, 255] that calibrate the
            activation ranges of `int8`. Required for `int8`, also for a quantization-aware
            model: its in-graph preprocessing holds a tensor without a fake-quant range.
            Defaults to `None`.
        io_dtype: Input/output type of an `int8` model: `float32`, `uint8` or `int8`.
            Defaults to `"float32"`.
        sparse: Store pruned weights in TFLite's sparse encoding (pays only at high
            sparsity). Defaults to `False`.

    Returns:
        The `.tflite` file's bytes.

    Raises:
        BadInputError: Unknown flavour or I/O type, or `int8` without calibration data.
    """
    import tensorflow as tf

    spec = get_flavour(flavour)
    if io_dtype not in IO_DTYPES:
        raise BadInputError(f"io_dtype must be one of {', '.join(IO_DTYPES)}. Received: {io_dtype!r}")
    if io_dtype != "float32" and flavour != "int8":
        raise BadInputError(f"io_dtype={io_dtype!r} needs flavour 'int8'. Received: flavour={flavour!r}")
    qat = is_quantization_aware(model)
    if spec.needs_representative and (representative is None or len(representative) == 0):
        raise BadInputError("int8 conversion needs representative images (none were given)")

    height, width = model.input_shape[1:3]
    run = tf.function(lambda x: model(x, training=False))
    concrete = run.get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32, name="pixels"))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], variables_of(model))
    optimizations = []
    if flavour != "float32" or qat:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if flavour == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif flavour == "int8":
        if representative is not None and len(representative):
            images = np.asarray(representative, dtype=np.float32)

            def calibration() -> Iterable[list[np.ndarray]]:
                for image in images:
                    yield [image[None]]

            converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, io_dtype)
        converter.inference_output_type = getattr(tf, io_dtype)
    with quiet.captured_stderr():
        return bytes(converter.convert())


def variables_of(model):
    """A `tf.Module` that tracks `model`'s variables and nothing else, for saving a function
    of the model as a SavedModel.

    Saving the Keras model itself (or a module that holds it) also serialises every layer's
    call functions, each traced again, as Keras's own SavedModel format does: the int8
    conversion of a QAT MobileNetV2-0.35 took 81 s that way and 20 s with this module, for
    the same flatbuffer. The converters only need the variables their function captures.
    """
    import tensorflow as tf

    holder = tf.Module()
    holder.tracked_variables = list(model.variables)
    return holder


def predict_tflite(model_content: bytes, images: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """Runs a classifier `.tflite` on images in LiteRT (`vgg_mobile.runtimes.litert`).

    Args:
        model_content: The `.tflite` bytes.
        images: Float32 pixels `(n, h, w, 3)` in [0, 255].
        num_threads: Interpreter threads. Defaults to `1`.

    Returns:
        Float32 probabilities `(n, num_classes)`.
    """
    return LiteRT.load(model_content, num_threads).predict(images)


_NUMPY_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 9: np.int8}


def weight_sparsity(model_content: bytes, min_elements: int = 1024) -> dict:
    """Counts zero weights in the constant tensors of a `.tflite` model.

    Tensors stored in the sparse encoding count their implicit zeros. Parsed with LiteRT's copy
    of the flatbuffer schema, so it runs without TensorFlow (as `vgg_mobile.converters.inspection`'s
    reader does).

    Args:
        model_content: The `.tflite` bytes.
        min_elements: Only tensors at least this large count (weights, not biases or shapes).
            Defaults to `1024`.

    Returns:
        `{"zeros": int, "total": int, "fraction": float, "tensors": int}`.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_content))
    zeros = total = count = 0
    for subgraph in model.subgraphs or ():
        for tensor in subgraph.tensors or ():
            buffer = model.buffers[tensor.buffer]
            dtype = _NUMPY_TYPES.get(tensor.type)
            if buffer.data is None or dtype is None:
                continue
            size = int(np.prod(tensor.shape)) if tensor.shape is not None else 0
            if size < min_elements:
                continue
            values = np.frombuffer(bytes(bytearray(buffer.data)), dtype=dtype)
            stored_nonzero = int(np.count_nonzero(values))
            # A sparse-encoded tensor stores fewer values than its shape holds.
            zeros += size - stored_nonzero
            total += size
            count += 1
    return {"zeros": zeros, "total": total, "fraction": round(zeros / total, 4) if total else 0.0,
            "tensors": count}


def latency_ms(model_content: bytes, image: np.ndarray, num_threads: int = 1, repeats: int = 50,
               warmup: int = 3) -> float:
    """Median wall time in milliseconds of one single-image `invoke()` in LiteRT.

    Args:
        model_content: The `.tflite` bytes.
        image: One float32 image `(h, w, 3)` in [0, 255].
        num_threads: Interpreter threads. Defaults to `1`.
        repeats: Timed runs after `warmup` untimed ones. Defaults to `50`.
        warmup: Untimed runs first. Defaults to `3`.
    """
    return LiteRT.load(model_content, num_threads).latency_ms(image, repeats, warmup)
