"""TFLite model metadata (name, version, normalization, labels) with tflite-support.

The metadata is what lets Android Studio's ML model binding and the TFLite Task Library's
ImageClassifier use a model without extra code: they read the input normalization and the
label file packed inside the `.tflite`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.core.resources import load_libusb


def _metadata_modules():
    """Imports tflite-support's metadata writers, which work under protobuf >= 4.

    `import tflite_support` itself fails under the protobuf TensorFlow 2.21 needs (its task
    library's generated files are old), so the writers are imported through their own package.
    Their native module links against libusb-1.0; loading the copy shipped by the
    libusb-package wheel first makes that work without a system package.
    """
    load_libusb()
    from tensorflow_lite_support.metadata import metadata_schema_py_generated as schema
    from tensorflow_lite_support.metadata.python import metadata
    from tensorflow_lite_support.metadata.python.metadata_writers import (
        image_classifier,
        metadata_info,
        writer_utils,
    )

    return schema, metadata, image_classifier, metadata_info, writer_utils


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Descriptive fields written into the model's metadata."""

    name: str
    description: str
    version: str
    author: str = "vgg-mobile"
    license: str = "Apache-2.0"


def add_metadata(model_content: bytes, labels: list[str], info: ModelInfo) -> bytes:
    """Returns the model with image-classifier metadata and its labels file packed in.

    The models take raw RGB pixels in [0, 255] and normalise inside the graph, so the
    metadata's input normalization is mean 0, std 1 (an identity for float inputs; integer
    inputs are fed as they are).

    Args:
        model_content: A classifier `.tflite` (one image input, one probability output).
        labels: Class names in output order.
        info: Name, description, version, author, license.

    Returns:
        The `.tflite` bytes with metadata.
    """
    schema, _, image_classifier, metadata_info, writer_utils = _metadata_modules()
    buffer = bytearray(model_content)
    with tempfile.TemporaryDirectory() as tmp:
        labels_path = os.path.join(tmp, "labels.txt")
        Path(labels_path).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        general = metadata_info.GeneralMd(name=info.name, version=info.version,
                                          description=info.description, author=info.author,
                                          licenses=info.license)
        input_md = metadata_info.InputImageTensorMd(
            name="image",
            description="RGB image, pixel values 0 to 255, resized (bilinear) to the input size.",
            norm_mean=[0.0], norm_std=[1.0],
            color_space_type=schema.ColorSpaceType.RGB,
            tensor_type=writer_utils.get_input_tensor_types(buffer)[0])
        output_md = metadata_info.ClassificationTensorMd(
            name="probability", description="Probabilities of the classes in labels.txt.",
            label_files=[metadata_info.LabelFileMd(file_path=labels_path)],
            tensor_type=writer_utils.get_output_tensor_types(buffer)[0])
        with _quiet_populator_teardown():
            try:
                writer = image_classifier.MetadataWriter.create_from_metadata_info(
                    buffer, general_md=general, input_md=input_md, output_md=output_md)
                return bytes(writer.populate())
            except Exception as err:  # noqa: BLE001 - re-raised below
                # Without its traceback, the half-built populator that the traceback holds is
                # freed as this clause ends, inside the quiet teardown. (A full disk arrives
                # here as TensorFlow's OutOfRangeError: its file_io writes the copy.)
                failure = err.with_traceback(None)
        raise failure


@contextlib.contextmanager
def _quiet_populator_teardown():
    """Frees a half-built tflite-support populator without a stray traceback.

    Its constructor writes the model to a temporary file; when that write fails (a full disk),
    its `__del__` raises AttributeError on the attribute the constructor never set, and Python
    prints "Exception ignored in ..." with a traceback under the real error.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        # The object is the `__del__` function that raised.
        if str(getattr(unraisable.object, "__module__", "")).startswith("tensorflow_lite_support"):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def read_metadata(model_content: bytes) -> dict:
    """Reads a model's metadata back.

    Returns:
        `{"metadata": <the metadata as a dict, or None>, "associated_files": {name: text}}`.
    """
    _, metadata, *_ = _metadata_modules()
    try:
        displayer = metadata.MetadataDisplayer.with_model_buffer(bytearray(model_content))
    except ValueError:
        return {"metadata": None, "associated_files": {}}
    files = {}
    for name in displayer.get_packed_associated_file_list():
        files[name] = displayer.get_associated_file_buffer(name).decode("utf-8", errors="replace")
    return {"metadata": json.loads(displayer.get_metadata_json()), "associated_files": files}


def labels_from_metadata(model_content: bytes) -> list[str]:
    """The label file packed in a model's metadata, as a list.

    Raises:
        BadInputError: The model has no metadata or no label file.
    """
    files = read_metadata(model_content)["associated_files"]
    if not files:
        raise BadInputError("the model has no label file in its metadata")
    text = next(iter(files.values()))
    return [line for line in text.splitlines() if line]
