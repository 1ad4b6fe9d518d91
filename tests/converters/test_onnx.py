"""ONNX export: tf2onnx's float model and ONNX Runtime's int8 QDQ model, run in ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import harness
from vgg_mobile.converters import onnx
from vgg_mobile.converters.convert import ConvertOptions, convert_run
from vgg_mobile.core.errors import BadInputError, BudgetError
from vgg_mobile.runtimes import onnxruntime, openvino


@pytest.fixture(scope="module")
def onnx_export(student_run, sample_dir, tmp_path_factory):
    """The shared distilled student exported with `onnx=True` (and one TFLite flavour)."""
    out = tmp_path_factory.mktemp("onnx") / "export"
    manifest = convert_run(student_run.run_dir, out,
                           ConvertOptions(flavours=("float32",), tfjs=False, onnx=True,
                                          max_size=None, verify_images=0),
                           data_dir=sample_dir, command=["test"])
    return out, manifest


def test_convert_writes_verified_float_and_int8_onnx_models(onnx_export, student_run, sample_dir):
    from vgg_mobile.core.run_dir import load_run

    out, manifest = onnx_export
    by_file = {a["file"]: a for a in manifest["artifacts"]}
    assert {"mobilenet_v2_0.35_student.onnx", "mobilenet_v2_0.35_student_int8.onnx"} <= set(by_file)
    run = load_run(student_run.run_dir)
    images, labels = harness.held_out_images(run, sample_dir)
    reference = run.load_model()(images, training=False).numpy()
    float_data = (out / "mobilenet_v2_0.35_student.onnx").read_bytes()
    int8_data = (out / "mobilenet_v2_0.35_student_int8.onnx").read_bytes()
    # tf2onnx's graph computes what Keras computes.
    harness.assert_matches(reference, onnx.predict_onnx(float_data, images), max_diff=1e-4,
                           min_agreement=1.0)
    int8_probs = onnx.predict_onnx(int8_data, images)
    harness.assert_matches(reference, int8_probs, max_diff=0.5, min_agreement=0.6)
    # This small student's answers are often near ties (0.36 against 0.32), which int8 may
    # flip: where Keras's top class leads by 0.1 or more, int8 keeps it.
    ordered = np.sort(reference, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] >= 0.1
    assert clear.sum() >= 3, "too few clear answers to compare"
    assert (int8_probs[clear].argmax(1) == reference[clear].argmax(1)).mean() >= 0.75
    # The manifest's figures are those of the files on disk, on every held-out image.
    for name, data, probs in (("mobilenet_v2_0.35_student.onnx", float_data, None),
                              ("mobilenet_v2_0.35_student_int8.onnx", int8_data, int8_probs)):
        artifact = by_file[name]
        assert artifact["format"] == "onnx" and artifact["size_bytes"] == len(data)
        assert artifact["verification"]["images"] == len(labels)
        if probs is not None:
            agreement = float((probs.argmax(1) == reference.argmax(1)).mean())
            assert artifact["verification"]["top1_agreement"] == pytest.approx(agreement, abs=1e-4)
    # int8 weights: a quarter of the float file, give or take the scales and the graph.
    assert len(int8_data) < 0.5 * len(float_data)


def test_onnx_models_carry_labels_preprocessing_and_version(onnx_export):
    out, manifest = onnx_export
    for flavour, name in (("float32", "mobilenet_v2_0.35_student.onnx"),
                          ("int8", "mobilenet_v2_0.35_student_int8.onnx")):
        props = onnx.read_metadata((out / name).read_bytes())
        assert json.loads(props["labels"]) == manifest["classes"]
        assert json.loads(props["input"]) == manifest["input"]
        assert json.loads(props["preprocessing"]) == manifest["preprocessing"]
        assert props["version"] == "1" and props["flavour"] == flavour
        assert props["producer"].startswith("vgg-mobile ")


def test_onnx_batch_is_dynamic(onnx_export, student_run, sample_dir):
    from vgg_mobile.core.run_dir import load_run

    out, _ = onnx_export
    data = (out / "mobilenet_v2_0.35_student.onnx").read_bytes()
    images, _ = harness.held_out_images(load_run(student_run.run_dir), sample_dir)
    session = onnxruntime.session(data)
    assert session.get_inputs()[0].name == "pixels" and session.get_outputs()[0].name == "probs"
    # Every held-out image, in batches of 7 and a last one of fewer: the small session student
    # can give one class to a handful of images, but not to all of them.
    whole = onnxruntime.ONNXRuntime(session, batch_size=7).predict(images)
    one_by_one = onnxruntime.ONNXRuntime(session, batch_size=1).predict(images)
    harness.assert_varies(whole, min_classes=2)
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)


def test_a_damaged_onnx_model_is_refused_with_a_reason(onnx_export):
    out, _ = onnx_export
    data = (out / "mobilenet_v2_0.35_student.onnx").read_bytes()
    for damaged in (data[: len(data) // 3], b"not a model", b""):
        with pytest.raises(BadInputError, match="not a valid ONNX model"):
            onnxruntime.session(damaged)


def test_onnx_artifacts_meet_the_size_budget_or_nothing_is_written(student_run, sample_dir, tmp_path):
    # The float MobileNetV2-0.35 is over 1 MB; its int8 TFLite and int8 ONNX are not.
    with pytest.raises(BudgetError, match=r"mobilenet_v2_0.35_student.onnx: .*over the size budget"):
        convert_run(student_run.run_dir, tmp_path / "export",
                    ConvertOptions(flavours=("int8",), tfjs=False, onnx=True, max_size=1_000_000,
                                   verify_images=8, calibration_images=8),
                    data_dir=sample_dir)
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob(".*"))


def test_cli_convert_onnx(cli, student_run, sample_dir, tmp_path):
    result = cli("convert", student_run.run_dir, "--out", tmp_path / "export", "--data", sample_dir,
                 "--flavour", "int8", "--no-tfjs", "--onnx", "--verify-images", "16", "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    formats = sorted((a["format"], a["flavour"]) for a in manifest["artifacts"])
    assert formats == [("onnx", "float32"), ("onnx", "int8"), ("tflite", "int8")]
    assert all((tmp_path / "export" / a["file"]).is_file() for a in manifest["artifacts"])


def test_a_normalization_layer_converts_with_its_constants_inside_the_model():
    """tf_keras's Normalization keeps a given mean and variance as tensors, which a trace
    captures by value; tf2onnx's `from_function` made them graph inputs that nothing feeds."""
    import onnx as onnx_lib
    import tf_keras as keras

    from vgg_mobile.models.architectures import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

    pixels = keras.Input((8, 8, 3))
    x = keras.layers.Normalization(mean=list(IMAGENET_MEAN_RGB),
                                   variance=[s * s for s in IMAGENET_STD_RGB], name="preprocess")(pixels)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(4, kernel_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=0))(x)
    model = keras.Model(pixels, keras.layers.Softmax(name="probs")(x))
    images = np.random.default_rng(0).uniform(0, 255, (32, 8, 8, 3)).astype(np.float32)

    data = onnx.convert_keras_model(model)
    assert [i.name for i in onnx_lib.load_from_string(data).graph.input] == ["pixels"]
    harness.assert_matches(model(images).numpy(), onnx.predict_onnx(data, images), max_diff=1e-5,
                           min_agreement=1.0)


@pytest.fixture(scope="module")
def half_width_vgg_run(sample_dir, tmp_path_factory):
    """A vgg16_bn_0.5 teacher, the pipeline's `sample` preset teacher, trained from scratch for
    two epochs at 32 px."""
    from vgg_mobile.models.architectures import ModelOptions
    from vgg_mobile.training.hyperparameters import TrainConfig
    from vgg_mobile.training.train import train

    return train(sample_dir, tmp_path_factory.mktemp("runs") / "vgg16_bn_0.5",
                 ModelOptions(architecture="vgg16_bn_0.5", image_size=32, weights="none"),
                 TrainConfig(epochs=2, batch_size=16, learning_rate=3e-4), command=["test"])


@pytest.mark.parametrize("architecture, run_fixture", [("vgg16", "teacher_run"),
                                                      ("vgg16_bn_0.5", "half_width_vgg_run")])
def test_cli_convert_onnx_of_a_vgg_run(architecture, run_fixture, request, cli, sample_dir, tmp_path):
    """VGG from scratch normalises its pixels with a Normalization layer (`preprocess`), whose
    constants once became ONNX graph inputs: int8 calibration fed `pixels` only and failed."""
    import onnx as onnx_lib

    from vgg_mobile.core.run_dir import load_run

    run = load_run(request.getfixturevalue(run_fixture).run_dir)
    assert run.manifest.architecture == architecture
    assert type(run.load_model().get_layer("preprocess")).__name__ == "Normalization"
    result = cli("convert", run.path, "--out", tmp_path / "export", "--data", sample_dir,
                 "--flavour", "float32", "--no-tfjs", "--onnx", "--max-size", "none", "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    by_flavour = {a["flavour"]: a for a in manifest["artifacts"] if a["format"] == "onnx"}
    assert sorted(by_flavour) == ["float32", "int8"]

    images, labels = harness.held_out_images(run, sample_dir)
    reference = run.load_model()(images, training=False).numpy()
    for flavour, max_diff, min_agreement in (("float32", 1e-4, 1.0), ("int8", 0.5, 0.75)):
        artifact = by_flavour[flavour]
        data = (tmp_path / "export" / artifact["file"]).read_bytes()
        assert [i.name for i in onnx_lib.load_from_string(data).graph.input] == ["pixels"]
        runtime = onnxruntime.ONNXRuntime.load(data)
        assert [i.name for i in runtime.session.get_inputs()] == ["pixels"]
        probs = runtime.predict(images)
        agreement = harness.assert_matches(reference, probs, max_diff=max_diff,
                                           min_agreement=min_agreement)
        # The manifest's figures are those of this file on the same held-out images.
        check = artifact["verification"]
        assert check["images"] == len(labels)
        assert check["top1_agreement"] == pytest.approx(agreement, abs=1e-4)
        assert check["max_probability_difference"] == pytest.approx(
            float(np.abs(probs - reference).max()), abs=2e-5)


def test_a_model_that_reads_an_external_file_is_refused(tmp_path, monkeypatch):
    """ONNX can keep weights in another file named inside the model; loaded from bytes, ONNX
    Runtime would look for it in the working directory. Such a model is never loaded."""
    import onnx as onnx_lib
    from onnx import TensorProto, helper, numpy_helper

    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.txt").write_bytes(b"0123456789abcdef")
    weights = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    weights.data_location = TensorProto.EXTERNAL
    weights.ClearField("raw_data")
    for key, value in (("location", "secret.txt"), ("offset", "0"), ("length", "16")):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["pixels", "w"], ["probs"])], "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 4])], [weights])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    # The same graph with its weights inside loads: the refusal is about the external file.
    inside = onnx_lib.load_from_string(data)
    inside.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones(4, np.float32), "w"))
    assert onnx.predict_onnx(inside.SerializeToString(), np.zeros((1, 4), np.float32)).tolist() == [[1.0] * 4]
    for load in (onnxruntime.session, onnx.read_metadata, openvino.compile_model):
        with pytest.raises(BadInputError, match="stored in an external file .'secret.txt'."):
            load(data)


def _external(name: str, values, location: str = "../secret.bin"):
    from onnx import TensorProto, numpy_helper

    tensor = numpy_helper.from_array(np.asarray(values), name)
    size = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _crafted(place: str, location: str = "../secret.bin") -> bytes:
    """A 4-in, 4-out model whose weights `w` name `location` from `place`."""
    from onnx import TensorProto, helper, numpy_helper

    io = ([helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 4])],
          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])])
    add = helper.make_node("Add", ["pixels", "w"], ["probs"])
    nodes, initializers, sparse, functions = [add], [], [], []
    values = _external("w", np.zeros(4, np.float32), location)
    indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "w_indices")
    if place == "initializer":
        initializers.append(values)
    elif place == "sparse initializer":
        sparse.append(helper.make_sparse_tensor(values, indices, [4]))
    elif place == "sparse indices":
        inside = numpy_helper.from_array(np.zeros(4, np.float32), "w")
        sparse.append(helper.make_sparse_tensor(inside, _external("w_i", np.arange(4), location), [4]))
    elif place == "constant":
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=values))
    elif place == "sparse constant":
        nodes.insert(0, helper.make_node(
            "Constant", [], ["w"], sparse_value=helper.make_sparse_tensor(values, indices, [4])))
    elif place == "attribute list":
        nodes.insert(0, helper.make_node("Identity", ["pixels"], ["unused"]))
        nodes[0].attribute.append(helper.make_attribute("tensors", [values]))
        initializers.append(numpy_helper.from_array(np.zeros(4, np.float32), "w"))
    elif place == "function":
        body = helper.make_node("Constant", [], ["out"], value=values)
        functions.append(helper.make_function("crafted", "W", [], ["out"], [body],
                                              [helper.make_opsetid("", 18)]))
        nodes.insert(0, helper.make_node("W", [], ["w"], domain="crafted"))
    elif place == "subgraph":
        branch = helper.make_graph(
            [helper.make_node("Identity", ["inner"], ["branch_out"])], "branch", [],
            [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [4])],
            [_external("inner", np.zeros(4, np.float32), location)])
        initializers.append(numpy_helper.from_array(np.array(True), "cond"))
        nodes.insert(0, helper.make_node("If", ["cond"], ["w"], then_branch=branch,
                                         else_branch=branch))
    graph = helper.make_graph(nodes, "g", *io, initializers, sparse_initializer=sparse)
    model = helper.make_model(graph, functions=functions, opset_imports=[
        helper.make_opsetid("", 18), helper.make_opsetid("crafted", 1)])
    return model.SerializeToString()


PLACES = ("initializer", "sparse initializer", "sparse indices", "constant", "sparse constant",
          "attribute list", "function", "subgraph")


@pytest.mark.parametrize("place", PLACES)
def test_external_data_is_refused_wherever_the_model_names_it(place, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (tmp_path / "secret.bin").write_bytes(np.full(4, 7.0, np.float32).tobytes())
    data = _crafted(place)
    for load in (onnxruntime.check_self_contained, onnxruntime.session, onnx.read_metadata):
        with pytest.raises(BadInputError, match=r"stored in an external file .'\.\./secret\.bin'."):
            load(data)


def test_the_crafted_sparse_initializer_is_a_real_attack():
    """Without the guard, ONNX Runtime reads a file of the server's working directory into the
    weights (what an audit showed): the guard refuses models that would really leak a file."""
    import os
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "secret.bin").write_bytes(np.full(4, 7.0, np.float32).tobytes())
        here = os.getcwd()
        os.chdir(tmp)
        try:
            crafted = _crafted("sparse initializer", location="secret.bin")
            with pytest.raises(BadInputError, match="external file .'secret.bin'."):
                onnxruntime.session(crafted)
            session = ort.InferenceSession(crafted, providers=["CPUExecutionProvider"])
            leaked = session.run(None, {"pixels": np.zeros((1, 4), np.float32)})[0]
        finally:
            os.chdir(here)
    assert leaked.tolist() == [[7.0] * 4]
