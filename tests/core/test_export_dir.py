"""The export-folder contract: a typed, validated record of what `convert` wrote."""

from __future__ import annotations

import json

import pytest

from vgg_mobile.core import export_dir
from vgg_mobile.core.errors import BadInputError, RunDirError
from vgg_mobile.core.run_dir import Manifest

ARTIFACTS = [
    {"file": "m_int8.tflite", "format": "tflite", "flavour": "int8", "size_bytes": 10,
     "gzip_bytes": 8, "io_dtype": "uint8", "verification": {"top1_agreement": 1.0}},
    {"file": "m.onnx", "format": "onnx", "flavour": "float32", "size_bytes": 20},
    {"file": "tfjs/", "format": "tfjs_graph_model", "flavour": "float16", "size_bytes": 30},
]


def _export(folder, artifacts=ARTIFACTS, **changes):
    folder.mkdir(parents=True)
    record = Manifest(stage="export", classes=("a", "b"), input={"size": [32, 32]},
                      model_file=None, sections={"artifacts": artifacts}).to_json()
    (folder / "manifest.json").write_text(json.dumps({**record, **changes}))
    return folder


def test_an_export_reads_back_typed(tmp_path):
    export = export_dir.load_export(_export(tmp_path / "e"))
    assert export.classes == ("a", "b") and export.manifest.model_file is None
    assert [a.format for a in export.artifacts] == ["tflite", "onnx", "tfjs_graph_model"]
    int8, = export.find("tflite", "int8")
    assert (int8.file, int8.size_bytes, int8.get("io_dtype")) == ("m_int8.tflite", 10, "uint8")
    assert int8.verification == {"top1_agreement": 1.0}
    assert export.find("onnx", "int8") == [] and export.artifacts[1].verification == {}
    assert export.file(int8) == tmp_path / "e" / "m_int8.tflite"
    assert export.record["artifacts"] == ARTIFACTS


def test_find_export_takes_the_folder_or_a_pipelines_export(tmp_path):
    _export(tmp_path / "pipe" / "export")
    assert export_dir.find_export(tmp_path / "pipe") == tmp_path / "pipe" / "export"
    assert export_dir.find_export(tmp_path / "pipe" / "export") == tmp_path / "pipe" / "export"
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(Manifest(
        stage="teacher", classes=("a",), input={"size": [8, 8]}).to_json()))
    assert export_dir.find_export(run) is None
    with pytest.raises(RunDirError, match="not an export folder"):
        export_dir.load_export(run)


@pytest.mark.parametrize("artifacts,words", [
    ("many", r"artifacts must be a list"),
    (["m.tflite"], r"artifacts\[0\] must be an object"),
    ([{"format": "tflite"}], r"artifacts\[0\].file must be a non-empty string"),
    ([{"file": "m.tflite", "format": 3}], r"artifacts\[0\].format must be a non-empty string"),
    ([{"file": "m.tflite", "format": "tflite", "size_bytes": -1}], r"artifacts\[0\].size_bytes must be an integer"),
    ([{"file": "m.tflite", "format": "tflite", "verification": []}], r"artifacts\[0\].verification must be an object"),
])
def test_a_damaged_export_manifest_is_refused_naming_the_file_and_field(tmp_path, artifacts, words):
    folder = _export(tmp_path / "e", artifacts)
    with pytest.raises(RunDirError, match=f"manifest.json: {words}"):
        export_dir.load_export(folder)


def test_an_artifact_path_never_leaves_the_export_folder(tmp_path):
    (tmp_path / "secret.tflite").write_bytes(b"x")
    export = export_dir.load_export(_export(tmp_path / "e", [
        {"file": "../secret.tflite", "format": "tflite", "flavour": "int8"}]))
    with pytest.raises(BadInputError, match="artifact file"):
        export.file(export.artifacts[0])
    (tmp_path / "e" / "manifest.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        export_dir.find_export(tmp_path / "e")
