"""`vgg-mobile inspect`: what is inside a `.tflite` file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vgg_mobile.core.errors import BadInputError


def inspect_tflite(path: str | Path) -> dict:
    """Reads a `.tflite` file's size, tensors, weight sparsity and metadata.

    Raises:
        BadInputError: Missing file, or not a loadable TFLite model (e.g. truncated).
    """
    from converters import metadata, tflite

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    content = path.read_bytes()
    try:
        runner = tflite.interpreter(content)
    except BadInputError as err:
        raise BadInputError(f"{path}: {err}") from None

    def describe(detail):
        scale, zero_point = detail["quantization"]
        return {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
                "dtype": np.dtype(detail["dtype"]).name,
                "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None}

    return {"file": str(path), "size_bytes": len(content),
            "inputs": [describe(d) for d in runner.get_input_details()],
            "outputs": [describe(d) for d in runner.get_output_details()],
            "weight_sparsity": tflite.weight_sparsity(content),
            **metadata.read_metadata(content)}
