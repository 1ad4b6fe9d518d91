"""`.onnx` models in ONNX Runtime (CPU execution provider).

Only self-contained models load (`check_self_contained`): ONNX lets a tensor's values live in
another file named inside the model, and a model loaded from bytes would read that file from
the working directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vgg_mobile.core.errors import BadInputError, clip
from vgg_mobile.runtimes.base import Runtime, read_bytes

# The input and output every vgg-mobile ONNX model has (`vgg_mobile.converters.onnx` writes them).
INPUT_NAME = "pixels"
OUTPUT_NAME = "probs"


def _external_tensors(message):
    """Every tensor anywhere in an ONNX message that names data outside the file.

    The whole message tree is walked by reflection, not a list of the places a tensor may
    sit: initializers, sparse initializers (their values and indices), node attributes
    (`t`, `tensors`, `sparse_tensor`, `sparse_tensors`), subgraphs, function bodies, and any
    place a later ONNX version adds. A list of known places is what a crafted model slips past.
    """
    from onnx import TensorProto

    stack = [message]
    while stack:
        current = stack.pop()
        if isinstance(current, TensorProto) and (
                current.data_location == TensorProto.EXTERNAL or len(current.external_data)):
            yield current
        for field, value in current.ListFields():
            if field.type != field.TYPE_MESSAGE:
                continue
            if field.is_repeated:
                stack.extend(value)
            else:
                stack.append(value)


def check_self_contained(model_content: bytes) -> None:
    """Refuses a model that is not one protobuf or that refers to external data files.

    ONNX lets a tensor's values live in another file named inside the model; loaded from bytes,
    ONNX Runtime resolves that name against the working directory, so a crafted model could
    read a file there into its weights. vgg-mobile's own models never use external data.

    Raises:
        BadInputError: Not parseable as ONNX, or a tensor stored in an external file.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_from_string(model_content)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise BadInputError(f"not a valid ONNX model (cannot parse it: {err})") from None
    if not model.graph.node:
        raise BadInputError("not a valid ONNX model (its graph has no nodes)")
    for tensor in _external_tensors(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise BadInputError(f"not a self-contained ONNX model: tensor {clip(repr(tensor.name))} "
                            f"is stored in an external file ({clip(repr(location))}); vgg-mobile "
                            "loads only models whose weights are inside the file")


def session(model_content: bytes, num_threads: int = 1):
    """An ONNX Runtime CPU session over a model held in memory.

    Args:
        model_content: The `.onnx` bytes.
        num_threads: Threads inside one inference. Defaults to `1`.

    Raises:
        BadInputError: Not a self-contained model ONNX Runtime can load (`check_self_contained`).
    """
    import onnxruntime as ort

    check_self_contained(model_content)

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model_content, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own unexported classes
        raise BadInputError(f"not a valid ONNX model ({str(err).strip().splitlines()[0][:300]})") from None


class ONNXRuntime(Runtime):
    """One ONNX Runtime session, run in batches; its `run` may be called from several threads."""

    key = "onnxruntime"
    label = "ONNX Runtime (CPU)"
    format = "onnx"
    suffix = ".onnx"
    module = "onnxruntime"
    package = "onnxruntime"
    thread_safe = True

    def __init__(self, runner, threads: int = 1, batch_size: int = 64):
        super().__init__(threads)
        self.session = runner
        self.batch_size = batch_size

    @classmethod
    def load(cls, source: str | Path | bytes, threads: int = 1) -> ONNXRuntime:
        return cls(session(read_bytes(source), threads), threads)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.session.get_inputs()[0].shape)

    @property
    def output_shape(self) -> tuple:
        return tuple(self.session.get_outputs()[0].shape)

    def metadata(self) -> dict[str, str]:
        """The model's `metadata_props`, as strings."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        images = np.asarray(pixels, np.float32)
        step = self.batch_size
        parts = [self.session.run([OUTPUT_NAME], {INPUT_NAME: images[start:start + step]})[0]
                 for start in range(0, len(images), step)]
        if not parts:
            return np.zeros((0, self.output_shape[-1]), np.float32)
        return np.concatenate(parts).astype(np.float32)

    def latency_ms(self, image: np.ndarray, repeats: int = 50, warmup: int = 3) -> float:
        from vgg_mobile.core.timing import median_ms

        feed = {INPUT_NAME: np.asarray(image, np.float32)[None]}
        return median_ms(lambda: self.session.run([OUTPUT_NAME], feed), repeats, warmup)
