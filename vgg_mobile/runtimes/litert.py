"""`.tflite` models in LiteRT (`ai_edge_litert`), one image per `invoke()` as a phone runs them.

A full-integer model's uint8 or int8 input and output are quantized and dequantized with the
tensors' own scale and zero point, so callers pass pixels and get probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vgg_mobile.core import quiet
from vgg_mobile.core.errors import BadInputError
from vgg_mobile.runtimes.base import Runtime, read_bytes


def interpreter(model_content: bytes, num_threads: int = 1):
    """A LiteRT interpreter over a `.tflite` model held in memory, tensors allocated.

    Raises:
        BadInputError: LiteRT cannot load the bytes.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        with quiet.captured_stderr():
            runner = Interpreter(model_content=model_content, num_threads=num_threads)
            runner.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise BadInputError(f"not a valid TFLite model ({err})") from None
    return runner


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Casts float pixels to an input tensor's type, quantizing with its scale and zero point."""
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor's values as float32, dequantized with its scale and zero point."""
    if detail["dtype"] == np.float32:
        return y.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


class LiteRT(Runtime):
    """One LiteRT interpreter. Not thread-safe: a server keeps one per concurrent inference."""

    key = "litert"
    label = "LiteRT"
    format = "tflite"
    suffix = ".tflite"
    module = "ai_edge_litert"
    package = "ai-edge-litert"

    def __init__(self, runner, threads: int = 1):
        super().__init__(threads)
        self.interpreter = runner
        detail = runner.get_input_details()[0]
        if detail["shape"][0] != 1:
            # One image per invoke: a model saved with another batch size is resized to one.
            runner.resize_tensor_input(detail["index"], [1, *detail["shape"][1:]])
            runner.allocate_tensors()
        self._input = runner.get_input_details()[0]
        self._output = runner.get_output_details()[0]

    @classmethod
    def load(cls, source: str | Path | bytes, threads: int = 1) -> LiteRT:
        return cls(interpreter(read_bytes(source), threads), threads)

    @property
    def input_shape(self) -> tuple:
        return tuple(int(d) for d in self._input["shape"])

    @property
    def output_shape(self) -> tuple:
        return tuple(int(d) for d in self._output["shape"])

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        runner, inp, out = self.interpreter, self._input, self._output
        results = []
        for image in np.asarray(pixels, dtype=np.float32):
            runner.set_tensor(inp["index"], quantize_input(image[None], inp))
            runner.invoke()
            results.append(dequantize_output(runner.get_tensor(out["index"]), out)[0])
        return np.stack(results) if results else np.zeros((0, out["shape"][-1]), np.float32)

    def latency_ms(self, image: np.ndarray, repeats: int = 50, warmup: int = 3) -> float:
        from vgg_mobile.core.timing import median_ms

        runner, detail = self.interpreter, self._input
        tensor = quantize_input(np.asarray(image, np.float32)[None], detail)

        def invoke():
            runner.set_tensor(detail["index"], tensor)
            runner.invoke()

        return median_ms(invoke, repeats, warmup)
