"""TFLite conversion in every flavour, run in LiteRT and compared with Keras on real images."""

from __future__ import annotations

import numpy as np
import pytest

import harness
from vgg_mobile.converters import tflite
from vgg_mobile.data import dataset, splits
from vgg_mobile.core.errors import BadInputError
from vgg_mobile.runtimes.litert import interpreter


@pytest.fixture(scope="module")
def teacher(teacher_images, teacher_run, sample_dir):
    """The trained teacher, its held-out images, their reference outputs, calibration images."""
    model, images, _, reference = teacher_images
    folder = dataset.scan_folder(sample_dir)
    calibration_examples = splits.stratified_sample(splits.choose_split(folder).parts.train, 40)
    calibration = np.concatenate(
        [x.numpy() for x, _ in dataset.make_dataset(calibration_examples, 32, 40, 4)])
    return model, images, calibration, reference


@pytest.fixture(scope="module")
def converted(teacher):
    model, _, calibration, _ = teacher
    return {f: tflite.convert_keras_model(model, f, calibration, io_dtype="uint8" if f == "int8" else "float32")
            for f in tflite.FLAVOURS}


@pytest.mark.parametrize("flavour,max_diff,min_agreement", [
    ("float32", 1e-4, 1.0), ("float16", 1e-2, 0.97), ("dynamic", 0.15, 0.9), ("int8", 0.15, 0.9)])
def test_every_flavour_runs_and_agrees_with_keras(teacher, converted, flavour, max_diff, min_agreement):
    model, images, calibration, reference = teacher
    harness.assert_matches(reference, tflite.predict_tflite(converted[flavour], images),
                           max_diff, min_agreement)


def test_quantized_flavours_are_smaller(converted):
    sizes = {f: len(data) for f, data in converted.items()}
    assert sizes["float16"] < 0.55 * sizes["float32"]
    assert sizes["dynamic"] < 0.3 * sizes["float32"]
    assert sizes["int8"] < 0.3 * sizes["float32"]


@pytest.mark.parametrize("io_dtype,numpy_dtype", [("uint8", np.uint8), ("int8", np.int8)])
def test_int8_input_and_output_types(teacher, converted, io_dtype, numpy_dtype):
    model, images, calibration, reference = teacher
    data = (converted["int8"] if io_dtype == "uint8"
            else tflite.convert_keras_model(model, "int8", calibration, io_dtype=io_dtype))
    runner = interpreter(data)
    assert runner.get_input_details()[0]["dtype"] == numpy_dtype
    assert runner.get_output_details()[0]["dtype"] == numpy_dtype
    probs = tflite.predict_tflite(data, images[:12])
    assert (probs.argmax(1) == reference[:12].argmax(1)).mean() >= 0.8


def test_bad_requests_are_refused(teacher):
    model, *_ = teacher
    with pytest.raises(BadInputError, match="valid: float32, float16, dynamic, int8"):
        tflite.convert_keras_model(model, "int4")
    with pytest.raises(BadInputError, match="representative images"):
        tflite.convert_keras_model(model, "int8")
    with pytest.raises(BadInputError, match="needs flavour 'int8'"):
        tflite.convert_keras_model(model, "float16", io_dtype="uint8")
    with pytest.raises(BadInputError, match="not a valid TFLite model"):
        interpreter(b"TFL3 but not really a model")


def test_weight_sparsity_counts_zeros_dense_and_sparse_encoded(teacher, converted):
    import tf_keras as keras

    model, images, calibration, _ = teacher
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    for layer in pruned.layers:
        if layer.name.startswith("block") and layer.weights:
            kernel, bias = layer.get_weights()
            threshold = np.quantile(np.abs(kernel), 0.8)
            layer.set_weights([np.where(np.abs(kernel) < threshold, 0, kernel), bias])
    dense = tflite.convert_keras_model(pruned, "int8", calibration)
    sparse = tflite.convert_keras_model(pruned, "int8", calibration, sparse=True)
    assert tflite.weight_sparsity(converted["int8"])["fraction"] < 0.05
    for data in (dense, sparse):
        report = tflite.weight_sparsity(data)
        assert report["tensors"] >= 13
        assert 0.75 <= report["fraction"] <= 0.85, report
    assert len(sparse) < len(dense)  # at 80 % the sparse encoding pays
    np.testing.assert_allclose(tflite.predict_tflite(sparse, images[:8]),
                               tflite.predict_tflite(dense, images[:8]), atol=1e-5)


def test_converting_from_the_variables_alone_gives_the_flatbuffer_of_the_whole_model(teacher):
    """`variables_of` saves only the variables, not every Keras layer's functions: the
    converter must still write exactly what it writes from the model itself."""
    import tensorflow as tf

    model, _, calibration, _ = teacher

    def convert(trackable) -> bytes:
        run = tf.function(lambda x: model(x, training=False))
        concrete = run.get_concrete_function(
            tf.TensorSpec([1, *model.input_shape[1:3], 3], tf.float32, name="pixels"))
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], trackable)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return bytes(converter.convert())

    assert convert(tflite.variables_of(model)) == convert(model)
