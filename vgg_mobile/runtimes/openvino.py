"""`.onnx` models compiled by OpenVINO for the CPU (the `openvino` extra:
`pip install vgg-mobile[openvino]`), a second runtime for the same files as ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.runtimes.base import Runtime, read_bytes
from vgg_mobile.runtimes.onnxruntime import check_self_contained


def compile_model(model_content: bytes, num_threads: int = 1):
    """An ONNX model compiled by OpenVINO for the CPU, `num_threads` threads per inference.

    Float layers run in float32: OpenVINO's CPU plugin otherwise computes them in bfloat16 on
    CPUs with AVX512-BF16 or AMX (its default inference precision there), which moved a small
    float32 MobileNetV2's probabilities by 0.01 against ONNX Runtime, where float32 keeps them
    within 1e-3.

    Raises:
        BadInputError: Not self-contained, or OpenVINO cannot read or compile the model.
    """
    import openvino

    check_self_contained(model_content)
    core = openvino.Core()
    try:
        model = core.read_model(model=model_content, weights=b"")
        return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": num_threads,
                                                 "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_PRECISION_HINT": "f32"})
    except RuntimeError as err:
        raise BadInputError(f"OpenVINO cannot compile the ONNX model ({str(err).strip()[:300]})") from None


def _shape(port) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())


class OpenVINO(Runtime):
    """One compiled OpenVINO model, run one image at a time."""

    key = "openvino"
    label = "OpenVINO (CPU)"
    format = "onnx"
    suffix = ".onnx"
    module = "openvino"
    package = "openvino"

    def __init__(self, compiled, threads: int = 1):
        super().__init__(threads)
        self.compiled = compiled

    @classmethod
    def load(cls, source: str | Path | bytes, threads: int = 1) -> OpenVINO:
        return cls(compile_model(read_bytes(source), threads), threads)

    @property
    def input_shape(self) -> tuple:
        return _shape(self.compiled.inputs[0])

    @property
    def output_shape(self) -> tuple:
        return _shape(self.compiled.outputs[0])

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        request = self.compiled.create_infer_request()
        images = np.asarray(pixels, np.float32)
        return np.stack([np.asarray(request.infer([image[None]])[0])[0] for image in images]
                        ).astype(np.float32) if len(images) else np.zeros((0, 0), np.float32)

    def latency_ms(self, image: np.ndarray, repeats: int = 50, warmup: int = 3) -> float:
        from vgg_mobile.core.timing import median_ms

        request = self.compiled.create_infer_request()
        feed = [np.asarray(image, np.float32)[None]]
        return median_ms(lambda: request.infer(feed), repeats, warmup)
