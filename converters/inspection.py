"""`vgg-mobile inspect`: what is inside a `.tflite` file.

A damaged `.tflite` can crash the native readers (LiteRT's interpreter, tflite-support's
metadata reader) instead of raising, so the file is read in a child process
(`python -m vgg_mobile.converters.inspection`, the bytes on stdin, a JSON answer on stdout): a crash
there becomes a `BadInputError` naming the file. The child runs without TensorFlow, which
neither reader needs, so it starts in about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from vgg_mobile.core.errors import BadInputError, VggMobileError

# Seconds the child may take; a file that keeps a reader busy longer counts as damaged.
READ_TIMEOUT = 120
FILE_IDENTIFIER = b"TFL3"
# The folder holding the `vgg_mobile` package: site-packages, or the checkout.
_PACKAGE_ROOT = Path(importlib.util.find_spec("vgg_mobile").origin).resolve().parents[1]


def inspect_tflite(path: str | Path) -> dict:
    """Reads a `.tflite` file's size, tensors, weight sparsity and metadata.

    Args:
        path: The `.tflite` file.

    Returns:
        `{"file", "size_bytes", "inputs", "outputs", "weight_sparsity", "metadata",
        "associated_files"}`.

    Raises:
        BadInputError: Missing file, or not a loadable TFLite model (truncated, damaged,
            corrupt metadata, or one that crashes the reader).
        VggMobileError: The reader could not start (a broken installation).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    content = path.read_bytes()
    check_structure(content, path)
    return {"file": str(path), "size_bytes": len(content),
            **_read_in_child(content, path, READ_TIMEOUT)}


def check_structure(content: bytes, path: str | Path) -> None:
    """The cheap checks of a flatbuffer's header, before any native reader sees the bytes.

    Raises:
        BadInputError: Shorter than a header, no `TFL3` file identifier at bytes 4 to 8, or a
            root table offset outside the file.
    """
    if len(content) < 8:
        raise BadInputError(f"{path}: not a valid TFLite model ({len(content)} bytes; a TFLite "
                            "file has at least an 8-byte header)")
    if content[4:8] != FILE_IDENTIFIER:
        raise BadInputError(f"{path}: not a valid TFLite model (no {FILE_IDENTIFIER.decode()} "
                            f"file identifier at bytes 4 to 8; found {content[4:8]!r})")
    root = int.from_bytes(content[:4], "little")
    if not 8 <= root <= len(content) - 4:
        raise BadInputError(f"{path}: not a valid TFLite model (root table offset {root} is "
                            f"outside the {len(content)}-byte file)")


def _child_env() -> dict[str, str]:
    """The child's environment, with the folder holding `vgg_mobile` on its PYTHONPATH.

    That folder is added only when the interpreter's own path lacks it (the checkout, run
    from elsewhere): an installed wheel's site-packages is already there, and put on PYTHONPATH
    it would come before the standard library.
    """
    on_path = {Path(p).resolve() for p in sys.path if p}
    if _PACKAGE_ROOT in on_path:
        return dict(os.environ)
    python_path = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH"))
                                  if p)
    return {**os.environ, "PYTHONPATH": python_path}


def _read_in_child(content: bytes, path: Path, timeout: float) -> dict:
    """Runs `_read` in a fresh interpreter; its crash, hang or garbage is the file's fault."""
    try:
        done = subprocess.run([sys.executable, "-m", "vgg_mobile.converters.inspection"], input=content,
                              capture_output=True, timeout=timeout, env=_child_env())
    except subprocess.TimeoutExpired:
        raise BadInputError(f"{path}: damaged TFLite file: the reader did not finish in "
                            f"{timeout:g} s") from None
    if done.returncode < 0:
        raise BadInputError(f"{path}: damaged TFLite file: the reader crashed "
                            f"({_signal_name(-done.returncode)})")
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise VggMobileError(f"{path}: the TFLite reader failed to run (exit {done.returncode}): "
                             f"{last}")
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ({"report", "error"} & answer.keys()):
        raise BadInputError(f"{path}: damaged TFLite file: the reader returned no result")
    if "error" in answer:
        raise BadInputError(f"{path}: {answer['error']}")
    return answer["report"]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _reason(err: Exception) -> str:
    """One line about an exception: its type and the start of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def _read(content: bytes) -> dict:
    """Tensors, weight sparsity and metadata of `.tflite` bytes (run in the child).

    Raises:
        BadInputError: The interpreter, the flatbuffer parser or the metadata reader refused
            the bytes.
    """
    from vgg_mobile.converters import metadata, tflite
    from vgg_mobile.runtimes.litert import interpreter

    try:
        runner = interpreter(content)
    except BadInputError:
        raise
    except Exception as err:  # noqa: BLE001 - any refusal of these bytes is the file's fault
        raise BadInputError(f"not a valid TFLite model ({_reason(err)})") from None

    def describe(detail):
        scale, zero_point = detail["quantization"]
        return {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
                "dtype": np.dtype(detail["dtype"]).name,
                "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None}

    try:
        tensors = {"inputs": [describe(d) for d in runner.get_input_details()],
                   "outputs": [describe(d) for d in runner.get_output_details()],
                   "weight_sparsity": tflite.weight_sparsity(content)}
    except Exception as err:  # noqa: BLE001
        raise BadInputError(f"damaged TFLite file: its tensors cannot be read ({_reason(err)})") from None
    try:
        found = metadata.read_metadata(content)
    except Exception as err:  # noqa: BLE001
        raise BadInputError(f"damaged TFLite metadata ({_reason(err)})") from None
    return {**tensors, **found}


def _child_main() -> int:
    """The child: `.tflite` bytes on stdin, `{"report": ...}` or `{"error": ...}` on stdout
    (the error on one line: LiteRT's messages span several).

    Native libraries may print to stdout, so the answer goes to a copy of the original stdout
    and stdout itself is pointed at stderr. TensorFlow is marked as absent: tflite-support
    then reads with plain file access instead of importing it.
    """
    answer_stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.modules["tensorflow"] = None
    content = sys.stdin.buffer.read()
    try:
        answer = {"report": _read(content)}
    except BadInputError as err:
        answer = {"error": re.sub(r"\s+", " ", str(err)).strip().replace(" )", ")")}
    json.dump(answer, answer_stream)
    answer_stream.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
