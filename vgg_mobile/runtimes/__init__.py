"""Running an artifact: one module per runtime behind one interface (`base.Runtime`), and one
table from artifact format to the runtimes that run it.

Every caller that runs a model (convert's verification, the benchmark, the report, the
prediction server, the measurement scripts) goes through `RUNTIMES`: adding a runtime is one
module and one row. Importing this package is light: each runtime imports its library
(TensorFlow, LiteRT, ONNX Runtime, OpenVINO) when it first loads a model.
"""

from __future__ import annotations

from pathlib import Path

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.runtimes.base import Runtime
from vgg_mobile.runtimes.keras import Keras
from vgg_mobile.runtimes.litert import LiteRT
from vgg_mobile.runtimes.onnxruntime import ONNXRuntime
from vgg_mobile.runtimes.openvino import OpenVINO
from vgg_mobile.runtimes.tfjs_node import TFJSNode

# Artifact format -> the runtimes that run it, the reference runtime first; the others are
# second opinions on the same file, used when installed.
RUNTIMES: dict[str, tuple[type[Runtime], ...]] = {
    "keras": (Keras,),
    "tflite": (LiteRT,),
    "onnx": (ONNXRuntime, OpenVINO),
    "tfjs": (TFJSNode,),
}


def runtimes_for(fmt: str) -> tuple[type[Runtime], ...]:
    """Every runtime of an artifact format, the reference one first.

    Raises:
        BadInputError: An unknown format (the message lists the known ones).
    """
    try:
        return RUNTIMES[fmt]
    except (KeyError, TypeError):
        raise BadInputError(f"unknown artifact format {fmt!r}; valid: "
                            f"{', '.join(RUNTIMES)}") from None


def runtime_for(fmt: str) -> type[Runtime]:
    """The reference runtime of an artifact format (see `runtimes_for`)."""
    return runtimes_for(fmt)[0]


def format_of(path: str | Path) -> str:
    """The format of an artifact file (by suffix) or folder (a TF.js bundle holds `model.json`).

    Raises:
        BadInputError: Neither.
    """
    path = Path(path)
    if path.is_dir() and (path / "model.json").is_file():
        return TFJSNode.format
    for fmt, (runtime, *_) in RUNTIMES.items():
        if runtime.suffix and path.suffix.lower() == runtime.suffix:
            return fmt
    suffixes = ", ".join(r.suffix for r, *_ in RUNTIMES.values() if r.suffix)
    raise BadInputError(f"{path}: not a model artifact (expected {suffixes} or a TF.js bundle "
                        "folder)")


def load(source: str | Path | bytes, fmt: str | None = None, threads: int = 1) -> Runtime:
    """Loads an artifact in its format's reference runtime.

    Args:
        source: A file or bundle folder, or a one-file artifact's bytes (then `fmt` is needed).
        fmt: A key of `RUNTIMES`. Defaults to the format `format_of(source)` finds.
        threads: Threads of one inference. Defaults to `1`.

    Raises:
        BadInputError: An unknown format, or an artifact the runtime cannot load.
    """
    if fmt is None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            raise BadInputError(f"model bytes need a format; valid: {', '.join(RUNTIMES)}")
        fmt = format_of(source)
    return runtime_for(fmt).load(source, threads)


__all__ = ["RUNTIMES", "Keras", "LiteRT", "ONNXRuntime", "OpenVINO", "Runtime", "TFJSNode",
           "format_of", "load", "runtime_for", "runtimes_for"]
