"""Loading a run never runs code from it, never leaves it, and refuses a model or a manifest
that is not what the run-directory contract says."""

from __future__ import annotations

import json
import shutil
import warnings
import zipfile

import numpy as np
import pytest

from vgg_mobile.core import run_dir
from vgg_mobile.core.errors import RunDirError

CLASSES = ("a", "b")
SIZE = 16
LAMBDA_REFUSED = "refusing to load: layer 'evil' is a Lambda layer, which would run code from the file"


def tiny_model(classes: int = len(CLASSES), size: int = SIZE, middle=None):
    """A one-conv classifier named as the project names its layers; `middle(x)` adds layers."""
    import tf_keras as keras

    pixels = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(pixels)
    x = middle(x) if middle else x
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(classes, name="logits")(x)
    probs = keras.layers.Activation("softmax", dtype="float32", name="probs")(logits)
    return keras.Model(pixels, probs, name="tiny")


def write_run(path, model, classes=CLASSES, **fields):
    manifest = run_dir.Manifest(stage="teacher", classes=classes, input={"size": [SIZE, SIZE]},
                                output={"layer": "probs", "logits_layer": "logits"}, **fields)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HDF5 file.*")
        run_dir.finish_run(path, model, manifest)
    return path


def edit_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def edit_keras_config(path, edit):
    """Rewrites the `config.json` of a `.keras` zip with `edit(config)`."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(entries["config.json"])
    edit(config)
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def layer(config, name):
    return next(entry for entry in config["config"]["layers"] if entry["config"]["name"] == name)


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("runs") / "float", tiny_model())


@pytest.fixture()
def run_copy(float_run, tmp_path):
    return shutil.copytree(float_run, tmp_path / "run")


def _marker_lambda(marker):
    import tf_keras as keras

    path = str(marker)
    return keras.layers.Lambda(lambda x: (open(path, "w").close(), x)[1], name="evil")


# --- 1. no code runs --------------------------------------------------------------------------


def test_a_run_written_by_finish_run_still_loads(float_run):
    model = run_dir.load_run(float_run).load_model()
    x = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    assert model(x).shape == (3, len(CLASSES))


def test_a_model_saved_with_its_compile_state_still_loads(run_copy):
    model = tiny_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.save(run_copy / "model.keras")
    run_dir.load_run(run_copy).load_model()


@pytest.mark.parametrize("file_name", ["model.h5", "model.keras"])
def test_an_hdf5_lambda_is_refused_and_never_runs(tmp_path, file_name):
    marker = tmp_path / "marker"
    run = write_run(tmp_path / "run", tiny_model(middle=_marker_lambda(marker)), model_file="model.h5")
    if file_name != "model.h5":  # an HDF5 file named .keras: Keras's HDF5 loader opens it too
        (run / "model.h5").rename(run / file_name)
        edit_manifest(run, model_file=file_name)
    marker.unlink()  # written while the model was built, before saving
    with pytest.raises(RunDirError, match=f"{file_name}: {LAMBDA_REFUSED}"):
        run_dir.load_run(run).load_model()
    assert not marker.exists()


def test_a_keras_lambda_is_refused_with_the_same_message(tmp_path):
    marker = tmp_path / "marker"
    run = write_run(tmp_path / "run", tiny_model(middle=_marker_lambda(marker)))
    marker.unlink()
    with pytest.raises(RunDirError, match=f"model.keras: {LAMBDA_REFUSED}"):
        run_dir.load_run(run).load_model()
    assert not marker.exists()


def test_a_quantization_aware_model_loads_only_in_its_scope(tmp_path):
    import tensorflow_model_optimization as tfmot

    qat = tfmot.quantization.keras.quantize_model(tiny_model())
    x = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    run = write_run(tmp_path / "qat", qat, model_file="model.h5", quantization_aware=True)
    loaded = run_dir.load_run(run).load_model()
    np.testing.assert_allclose(loaded(x).numpy(), qat(x).numpy(), atol=1e-6)
    edit_manifest(run, quantization_aware=False)
    with pytest.raises(RunDirError, match="uses class 'Quantize.*quantization_aware: true"):
        run_dir.load_run(run).load_model()


def test_tensorflow_ops_load_but_only_pure_maths(tmp_path):
    import tensorflow as tf

    run = write_run(tmp_path / "run", tiny_model(middle=lambda x: tf.math.multiply(x, 0.5)))
    run_dir.load_run(run).load_model()

    def write_file(config):
        op = next(e for e in config["config"]["layers"] if e["class_name"] == "TFOpLambda")
        op["config"]["function"] = "io.write_file"

    edit_keras_config(run / "model.keras", write_file)
    with pytest.raises(RunDirError, match="calls TensorFlow function 'io.write_file'"):
        run_dir.load_run(run).load_model()


def _set(name, key, value):
    return lambda config: layer(config, name).__setitem__(key, value)


def _set_config(name, key, value):
    return lambda config: layer(config, name)["config"].__setitem__(key, value)


@pytest.mark.parametrize("edit,message", [
    (_set("logits", "module", "os"), "layer 'logits' names 'Dense' from module 'os', which is not part"),
    (_set("logits", "class_name", "Evil"), "layer 'logits' uses class 'Evil', which is neither"),
    (_set("logits", "registered_name", "Custom>Dense"), "layer 'logits' uses class 'Custom>Dense'"),
    (_set("logits", "class_name", ["Dense"]), "layer 'logits' has a malformed class_name"),
    (_set_config("conv", "activation", {"module": "builtins", "class_name": "function",
                                        "config": "exec", "registered_name": "function"}),
     "layer 'conv' names 'function' from module 'builtins'"),
    (_set_config("conv", "activation", {"module": "keras.activations", "class_name": "function",
                                        "config": "relu; import os", "registered_name": None}),
     "layer 'conv' names function 'relu; import os' from module 'keras.activations'; only Keras"),
    (_set_config("conv", "function", ["4wEAAAAAAAAA", None, None]), "layer 'conv' holds a Python function"),
    (_set_config("conv", "function_type", "lambda"), "layer 'conv' holds a Python function"),
    (_set_config("conv", "activation", {"class_name": "__lambda__", "config": {"value": "x"}}),
     "layer 'conv' holds a Python function"),
])
def test_a_keras_config_naming_code_or_foreign_classes_is_refused(run_copy, edit, message):
    edit_keras_config(run_copy / "model.keras", edit)
    with pytest.raises(RunDirError, match=f"model.keras: refusing to load: {message}"):
        run_dir.load_run(run_copy).load_model()


def test_a_file_that_is_no_model_names_the_file(run_copy):
    import h5py

    with h5py.File(run_copy / "weights.h5", "w") as file:
        file.create_dataset("w", data=np.zeros(3))
    edit_manifest(run_copy, model_file="weights.h5")
    with pytest.raises(RunDirError, match="weights.h5: cannot load the model; the HDF5 file holds no model"):
        run_dir.load_run(run_copy).load_model()
    (run_copy / "model.keras").write_bytes(b"PK\x03\x04 not a zip")
    edit_manifest(run_copy, model_file="model.keras")
    with pytest.raises(RunDirError, match="model.keras: cannot load the model; the file is damaged"):
        run_dir.load_run(run_copy).load_model()


# --- 2. paths stay in the run -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["../float/model.keras", "/etc/model.keras", "sub/model.keras",
                                   "sub\\model.keras", "..", ".", "", "model.txt", "labels.txt",
                                   "mo\0del.keras", "model\n.keras", 5, ["model.keras"], True])
def test_model_file_must_be_a_plain_name_in_the_run(run_copy, value):
    edit_manifest(run_copy, model_file=value)
    with pytest.raises(RunDirError, match=r"manifest.json: model_file must be the name of a .keras or "
                                          r"\.h5 file in the run folder. Received: model_file="):
        run_dir.load_run(run_copy)


def test_a_model_file_symlinked_out_of_the_run_is_refused(run_copy, float_run, tmp_path):
    (run_copy / "model.keras").unlink()
    (run_copy / "model.keras").symlink_to(float_run / "model.keras")
    with pytest.raises(RunDirError, match="manifest.json: model_file 'model.keras' leads outside the folder"):
        run_dir.load_run(run_copy)
    (run_copy / "model.keras").unlink()
    (run_copy / "models").mkdir()
    shutil.copy(float_run / "model.keras", run_copy / "models" / "real.keras")
    (run_copy / "model.keras").symlink_to(run_copy / "models" / "real.keras")
    run_dir.load_run(run_copy).load_model()  # a link inside the run is fine


def test_an_export_folder_has_no_model_to_load(run_copy):
    edit_manifest(run_copy, model_file=None)
    run = run_dir.load_run(run_copy)
    with pytest.raises(RunDirError, match="model_file is null, so this folder holds no Keras model"):
        run.load_model()


# --- 3. manifest fields have the types the stages read ----------------------------------------


@pytest.mark.parametrize("field,value,message", [
    ("schema_version", True, "schema_version True is not supported"),
    ("schema_version", "1", "schema_version '1' is not supported"),
    ("schema_version", 0, "schema_version 0 is not supported"),
    ("stage", 7, "stage must be a name of letters, digits and _. Received: stage=7"),
    ("stage", "", "stage must be a name"),
    ("stage", "../x", "stage must be a name"),
    ("classes", "ab", "classes must be a list of at least one distinct"),
    ("classes", [], "classes must be a list"),
    ("classes", ["a", "a"], "classes must be a list"),
    ("classes", ["a", 1], "classes must be a list"),
    ("classes", ["a", ""], "classes must be a list"),
    ("classes", ["a", "b\nc"], "classes must be a list"),
    ("classes", ["a", "b\x00"], "classes must be a list"),
    ("classes", [["a"], "b"], "classes must be a list"),
    ("num_classes", 3, r"num_classes must be the number of classes \(2\). Received: num_classes=3"),
    ("num_classes", "2", "num_classes must be"),
    ("input", [16, 16], r"input must be an object. Received: input=\[16, 16\]"),
    ("input", {"size": 16}, r"input.size must be \[side, side\] with a positive integer side"),
    ("input", {"size": [16]}, "input.size must be"),
    ("input", {"size": [16, "16"]}, "input.size must be"),
    ("input", {"size": [0, 0]}, "input.size must be"),
    ("input", {"size": [16.0, 16.0]}, "input.size must be"),
    ("input", {"size": [True, True]}, "input.size must be"),
    ("input", {"size": [16, 32]}, "input.size must be"),
    ("input", {}, "input.size must be"),
    ("preprocessing", [], "preprocessing must be an object or null"),
    ("output", "probs", "output must be an object or null"),
    ("metrics", 0.5, "metrics must be an object or null"),
    ("config", [1], "config must be an object or null"),
    ("data", "data/", "data must be an object or null"),
    ("data", {"path": 3}, "data.path must be a path or null"),
    ("data", {"path": "a\0b"}, "data.path must be a path or null"),
    ("data", {"seed": "0"}, "data.seed must be an integer"),
    ("data", {"seed": 1e300}, "data.seed must be an integer"),
    ("data", {"seed": -1}, "data.seed must be an integer >= 0"),
    ("data", {"path": "\ud800"}, "data.path must be a path or null"),
    ("data", {"val_fraction": "0.2"}, r"data.val_fraction must be a number in \[0, 1\)"),
    ("data", {"val_fraction": 2}, "data.val_fraction must be"),
    ("parent", ["/runs"], "parent must be a string or null"),
    ("kind", {}, "kind must be a string or null"),
    ("architecture", ["vgg16"], "architecture must be null or a name"),
    ("architecture", "../../x", "architecture must be null or a name"),
    ("quantization_aware", "yes", "quantization_aware must be true or false"),
])
def test_a_manifest_field_of_the_wrong_type_is_a_run_dir_error(run_copy, field, value, message):
    edit_manifest(run_copy, **{field: value})
    with pytest.raises(RunDirError, match=f"manifest.json: {message}"):
        run_dir.load_run(run_copy)


def test_unreadable_manifest_and_labels_are_run_dir_errors(run_copy):
    manifest = run_copy / "manifest.json"
    text = manifest.read_text()
    for bad in (b"\xff\xfe{", b"[" * 100_000, b'{"schema_version": ' + b"1" * 5000 + b"}"):
        manifest.write_bytes(bad)
        with pytest.raises(RunDirError, match="manifest.json: not valid JSON"):
            run_dir.load_run(run_copy)
    manifest.write_text(text)
    (run_copy / "labels.txt").write_bytes(b"a\n\xff\n")
    with pytest.raises(RunDirError, match="labels.txt: not UTF-8 text"):
        run_dir.load_run(run_copy)


def test_valid_optional_fields_still_load(run_copy):
    edit_manifest(run_copy, parent=None, data=None, architecture="mobilenet_v2_0.35",
                  preprocessing=None, metrics={}, config={}, kind="image_classifier")
    assert run_dir.load_run(run_copy).classes == CLASSES


# --- 4. the model fits its manifest -----------------------------------------------------------


def test_a_model_with_other_classes_than_the_manifest_is_refused(tmp_path):
    run = write_run(tmp_path / "run", tiny_model(classes=3))
    with pytest.raises(RunDirError, match="model.keras: the model outputs 3 classes but the manifest lists 2"):
        run_dir.load_run(run).load_model()


def test_a_model_with_another_input_size_than_the_manifest_is_refused(run_copy):
    edit_manifest(run_copy, input={"size": [32, 32]})
    with pytest.raises(RunDirError, match=r"model.keras: the model takes 16x16 images but the "
                                          r"manifest's input.size is \[32, 32\]"):
        run_dir.load_run(run_copy).load_model()


def test_a_model_that_is_not_an_image_classifier_is_refused(tmp_path):
    import tf_keras as keras

    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.Conv2D(2, 1, name="conv")(inputs)
    run = write_run(tmp_path / "run", keras.Model(inputs, features))
    with pytest.raises(RunDirError, match=r"the model outputs shape \(None, 16, 16, 2\), not one score"):
        run_dir.load_run(run).load_model()
    gray = keras.Input((SIZE, SIZE, 1))
    probs = keras.layers.Dense(2, name="probs")(keras.layers.Flatten()(gray))
    run = write_run(tmp_path / "gray", keras.Model(gray, probs))
    with pytest.raises(RunDirError, match="the model takes 1-channel images"):
        run_dir.load_run(run).load_model()
