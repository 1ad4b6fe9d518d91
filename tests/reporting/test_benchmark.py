"""`vgg-mobile benchmark`: every artifact of a pipeline folder measured in one process.

These run the session teacher and its export in every runtime: slow.
"""

from __future__ import annotations

import json

import pytest

from vgg_mobile.pipeline.config import CONFIG_FILE, load_config
from vgg_mobile.pipeline.state import STATE_FILE
from vgg_mobile.pipeline.summary import summary_rows
from vgg_mobile.reporting.benchmark import benchmark_pipeline, format_benchmark

pytestmark = pytest.mark.slow

CONFIG = """
[export]
source = "teacher"
max_size = "none"
min_agreement = 0.9
[benchmark]
repeats = 3
images = 24
"""


@pytest.fixture(scope="module")
def pipeline_folder(teacher_run, teacher_export, tmp_path_factory):
    """A pipeline output folder holding the session teacher and its export (TFLite, TF.js)."""
    out = tmp_path_factory.mktemp("bench") / "out"
    out.mkdir()
    (out / STATE_FILE).write_text(json.dumps({"stages": {}}))
    (out / CONFIG_FILE).write_text(CONFIG)
    (out / "teacher").symlink_to(teacher_run.run_dir.resolve(), target_is_directory=True)
    (out / "export").symlink_to((teacher_export[0] / "out").resolve(), target_is_directory=True)
    return out


def test_every_artifact_is_measured_against_its_parent(pipeline_folder, teacher_run, sample_dir):
    from vgg_mobile.converters import tflite
    from vgg_mobile.data.dataset import load_images
    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.data import dataset, splits

    result = benchmark_pipeline(pipeline_folder)
    rows = {row["artifact"]: row for row in result.rows}
    assert set(rows) == {"float teacher", "TFLite float32 (teacher)", "TFLite int8 (teacher)",
                         "TF.js (teacher)"}
    assert [r["runtime"] for r in result.rows] == ["TensorFlow (tf_keras)", "LiteRT", "LiteRT",
                                                   "TF.js wasm (Node)"]

    # The same numbers, computed here without the harness, on a model whose outputs vary.
    run = load_run(teacher_run.run_dir)
    folder = dataset.scan_folder(sample_dir, classes=run.classes)
    examples, split = splits.held_out(run.manifest.data, folder, "auto")
    assert split == "val" and result.info["images"] == 24
    x, y = load_images(splits.stratified_sample(examples, 24), run.image_size, len(run.classes))
    assert len(set(y.tolist())) == len(run.classes)  # every class measured, not the first ones
    reference = run.load_model().predict(x, verbose=0).argmax(1)
    assert len(set(reference.tolist())) >= 3  # a trained model: its answers differ per image
    assert rows["float teacher"]["accuracy"] == pytest.approx(float((reference == y).mean()), abs=1e-4)
    for flavour in ("float32", "int8"):
        name = f"TFLite {flavour} (teacher)"
        data = (pipeline_folder / "export" / rows[name]["path"].split("/")[-1]).read_bytes()
        top = tflite.predict_tflite(data, x).argmax(1)
        assert rows[name]["agreement"] == pytest.approx(float((top == reference).mean()), abs=1e-4)
        assert rows[name]["accuracy"] == pytest.approx(float((top == y).mean()), abs=1e-4)
        # Per-class recall on the same images, with each class's count.
        for label, class_name in enumerate(run.classes):
            recall = rows[name]["per_class"][class_name]
            assert recall["support"] == int((y == label).sum())
            assert recall["recall"] == pytest.approx(float((top[y == label] == label).mean()),
                                                     abs=1e-4)
    assert rows["TFLite float32 (teacher)"]["agreement"] == 1.0
    assert rows["float teacher"]["agreement"] is None  # the teacher has no parent

    teacher_ms = rows["float teacher"]["latency_ms"]
    for row in result.rows:
        assert row["latency_ms"] > 0 and 0 < row["gzip_bytes"] < row["size_bytes"]
        # 2 decimals, from latencies before their rounding to 3 decimals (a 0.07 ms latency
        # rounds by up to 1%).
        assert row["speedup"] == pytest.approx(teacher_ms / row["latency_ms"], rel=0.01, abs=0.006)
        assert row["budget"] in (("-",) if row["format"] == "keras" else ("pass", "fail"))

    # Written: the JSON last, the Markdown with every artifact; the summary reads them back.
    saved = json.loads(result.json_path.read_text())
    assert saved["rows"] == list(result.rows) and saved["repeats"] == 3
    assert result.markdown_path.read_text().strip() == format_benchmark(list(result.rows), result.info)
    config = load_config(pipeline_folder / CONFIG_FILE)
    summary = {row["artifact"]: row for row in summary_rows(pipeline_folder, config)}
    assert summary["float teacher"]["latency_ms"] == teacher_ms
    assert summary["TF.js (teacher)"]["speedup"] == rows["TF.js (teacher)"]["speedup"]


def test_cli_benchmark_json_and_bad_folders(cli, pipeline_folder, tmp_path):
    result = cli("benchmark", pipeline_folder, "--repeats", "2", "--images", "8", "--json",
                 "--output", tmp_path / "b")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["threads"]["tensorflow"] == "1" and report["images"] == 8
    assert len(report["rows"]) == 4 and (tmp_path / "b" / "benchmark.md").is_file()

    for folder, words in ((tmp_path / "missing", "not a pipeline output folder"),
                          (tmp_path / "b", "not a pipeline output folder")):
        result = cli("benchmark", folder)
        assert result.returncode == 2 and words in result.stderr and str(folder) in result.stderr


@pytest.fixture(scope="module")
def onnx_pipeline_folder(student_run, sample_dir, tmp_path_factory):
    """A pipeline folder whose reference run is the session's small student, exported with its
    ONNX models (a MobileNetV2 converts to ONNX in seconds; the VGG16 teacher would not)."""
    from vgg_mobile.converters.convert import ConvertOptions, convert_run

    base = tmp_path_factory.mktemp("bench_onnx")
    convert_run(student_run.run_dir, base / "export",
                ConvertOptions(flavours=("int8",), tfjs=False, onnx=True, max_size=None,
                               verify_images=24, calibration_images=24), data_dir=sample_dir)
    out = base / "out"
    out.mkdir()
    (out / STATE_FILE).write_text(json.dumps({"stages": {}}))
    (out / CONFIG_FILE).write_text(CONFIG)
    (out / "teacher").symlink_to(student_run.run_dir.resolve(), target_is_directory=True)
    (out / "export").symlink_to((base / "export").resolve(), target_is_directory=True)
    return out


def test_onnx_models_are_timed_in_onnx_runtime_and_openvino(onnx_pipeline_folder, student_run,
                                                            sample_dir):
    from vgg_mobile.converters import onnx
    from vgg_mobile.data.dataset import load_images
    from vgg_mobile.runtimes import OpenVINO
    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.data import dataset, splits

    result = benchmark_pipeline(onnx_pipeline_folder)
    rows = {row["artifact"]: row for row in result.rows}
    assert set(rows) == {"float teacher", "TFLite int8 (teacher)", "ONNX float32 (teacher)",
                         "ONNX int8 (teacher)"}
    run = load_run(student_run.run_dir)
    folder = dataset.scan_folder(sample_dir, classes=run.classes)
    examples, _ = splits.held_out(run.manifest.data, folder, "auto")
    x, y = load_images(splits.stratified_sample(examples, 24), run.image_size, len(run.classes))
    reference = run.load_model().predict(x, verbose=0)
    assert len(set(reference.argmax(1).tolist())) >= 3
    for flavour in ("float32", "int8"):
        row = rows[f"ONNX {flavour} (teacher)"]
        assert row["runtime"] == "ONNX Runtime (CPU)" and row["latency_ms"] > 0
        content = open(row["path"], "rb").read()
        probs = onnx.predict_onnx(content, x)
        assert row["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()), abs=1e-4)
        assert row["agreement"] == pytest.approx(
            float((probs.argmax(1) == reference.argmax(1)).mean()), abs=1e-4)
        # The OpenVINO figures are those of the same file in OpenVINO on the same images.
        other = OpenVINO.load(content).predict(x)
        assert row["openvino"]["latency_ms"] > 0
        assert row["openvino"]["accuracy"] == pytest.approx(
            float((other.argmax(1) == y).mean()), abs=1e-4)
        assert row["openvino"]["agreement_with_onnxruntime"] == pytest.approx(
            float((other.argmax(1) == probs.argmax(1)).mean()), abs=1e-4)
    # Float (computed in float32, not the bfloat16 OpenVINO picks on AVX512-BF16 CPUs): the
    # same answers. Int8: the two runtimes' integer kernels round differently, and this
    # few-second student's probabilities are so close that its answers flip (0.17 to 0.875
    # agreement seen), so their agreement is checked as recorded above, not bounded.
    assert rows["ONNX float32 (teacher)"]["agreement"] == 1.0
    assert rows["ONNX float32 (teacher)"]["openvino"]["agreement_with_onnxruntime"] == 1.0
    assert rows["ONNX float32 (teacher)"]["openvino"]["max_probability_difference"] < 1e-3
    table = result.markdown_path.read_text()
    assert "The ONNX models in OpenVINO" in table and "ONNX Runtime 1" in table
