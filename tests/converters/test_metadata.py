"""Metadata written with tflite-support and read back the way Android tooling reads it."""

from __future__ import annotations

import numpy as np
import pytest

from vgg_mobile.converters import metadata, tflite
from vgg_mobile.core.errors import BadInputError


@pytest.fixture(scope="module")
def small_tflite(teacher_run):
    from vgg_mobile.core.run_dir import load_run

    model = load_run(teacher_run.run_dir).load_model()
    return tflite.convert_keras_model(model, "dynamic")


def test_metadata_round_trips_and_leaves_predictions_alone(small_tflite):
    labels = ["circle", "cross", "square", "triangle"]
    info = metadata.ModelInfo(name="shapes", description="Shapes classifier", version="3",
                              author="Team", license="MIT")
    with_meta = metadata.add_metadata(small_tflite, labels, info)
    assert 0 < len(with_meta) - len(small_tflite) < 5000
    read = metadata.read_metadata(with_meta)
    meta = read["metadata"]
    assert (meta["name"], meta["version"], meta["author"], meta["license"]) == (
        "shapes", "3", "Team", "MIT")
    assert meta["description"] == "Shapes classifier"
    tensor = meta["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert tensor["content"]["content_properties"]["color_space"] == "RGB"
    norm = tensor["process_units"][0]["options"]
    assert norm == {"mean": [0.0], "std": [1.0]}
    out = meta["subgraph_metadata"][0]["output_tensor_metadata"][0]
    assert out["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    assert read["associated_files"] == {"labels.txt": "circle\ncross\nsquare\ntriangle\n"}
    assert metadata.labels_from_metadata(with_meta) == labels
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(tflite.predict_tflite(with_meta, x),
                                  tflite.predict_tflite(small_tflite, x))


def test_a_model_without_metadata(small_tflite):
    assert metadata.read_metadata(small_tflite) == {"metadata": None, "associated_files": {}}
    with pytest.raises(BadInputError, match="no label file"):
        metadata.labels_from_metadata(small_tflite)
