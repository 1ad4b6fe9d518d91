"""`run_pipeline`: OUT folder checks, and an end-to-end run that is killed and resumed."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest

from vgg_mobile.core.errors import RunDirError
from vgg_mobile.pipeline.config import CONFIG_FILE, load_config
from vgg_mobile.pipeline.runner import run_pipeline
from vgg_mobile.pipeline.stages import STAGE_NAMES
from vgg_mobile.pipeline.state import STATE_FILE


def test_refuses_an_out_folder_that_is_not_its_own(sample_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a pipeline output folder"):
        run_pipeline(sample_dir, other)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(RunDirError, match="overlaps the data folder"):
        run_pipeline(sample_dir, sample_dir / "out")
    assert not (sample_dir / "out").exists()


def test_missing_data_or_weights_stop_before_anything_is_written(cli, sample_dir, tmp_path):
    out = tmp_path / "out"
    result = cli("pipeline", tmp_path / "missing", "--out", out)
    assert result.returncode == 2 and "missing" in result.stderr
    assert not out.exists()
    # The real preset wants ImageNet weights: from the local Keras cache when --offline...
    result = cli("pipeline", sample_dir, "--out", out, "--preset", "real", "--offline",
                 env={"KERAS_HOME": str(tmp_path / "empty_keras_home")})
    assert result.returncode == 2 and "--offline" in result.stderr, result.stderr[-2000:]
    assert str(tmp_path / "empty_keras_home") in result.stderr and not out.exists()
    # ... else downloaded, which fails here (conftest points downloads at a refusing port).
    result = cli("pipeline", sample_dir, "--out", out, "--preset", "real",
                 env={"KERAS_HOME": str(tmp_path / "empty_keras_home")})
    assert result.returncode == 1 and "connection refused" in result.stderr, result.stderr[-2000:]
    assert not out.exists() and not (tmp_path / "empty_keras_home").exists()


TINY_CONFIG = """
[teacher]
epochs = 2
[pruned]
epochs = 1
[pruned_qat]
epochs = 1
[student]
image_size = 32
epochs = 2
[student_qat]
epochs = 1
[export]
flavours = ["int8"]
max_size = "none"
min_agreement = "none"
verify_images = 16
calibration_images = 16
[teacher_export]
max_size = "none"
min_agreement = "none"
verify_images = 16
calibration_images = 16
[web_export]
max_size = "none"
min_agreement = "none"
verify_images = 16
calibration_images = 16
[benchmark]
repeats = 3
"""
CHANGED_QAT = TINY_CONFIG.replace("[pruned_qat]\nepochs = 1", "[pruned_qat]\nepochs = 1\nlearning_rate = 2e-5")


def _created(out, stage):
    path = out / stage / "manifest.json"
    return json.loads(path.read_text())["created"], path.stat().st_mtime_ns


@pytest.mark.slow
def test_pipeline_killed_during_distillation_resumes_and_exports(cli, tmp_path):
    from vgg_mobile.data.sample import write_sample_data

    data = write_sample_data(tmp_path / "data", images_per_class=8, image_size=32, seed=0,
                             colour_cue=True)
    config = tmp_path / "pipeline.toml"
    config.write_text(TINY_CONFIG)
    out = tmp_path / "out"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "vgg_mobile", "pipeline", str(data), "--out", str(out),
             "--config", str(config), "--quiet"],
            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            deadline = time.monotonic() + 400
            while "student: started" not in log_path.read_text():
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the distill stage never started"
                time.sleep(0.5)
            time.sleep(3)  # inside the distillation, with its run directory begun
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert not (out / "student" / "manifest.json").exists()
    before = {stage: _created(out, stage) for stage in ("teacher", "pruned", "pruned_qat")}

    # Re-run with one changed setting of an earlier stage: that stage and the ones after it
    # are redone, the finished ones before it are not.
    config.write_text(CHANGED_QAT)
    result = cli("pipeline", data, "--out", out, "--config", config, "--quiet", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("teacher", "pruned"):
        assert re.search(rf"{stage}: finished earlier, inputs unchanged; skipped", result.stderr)
        assert _created(out, stage) == before[stage], stage
    assert _created(out, "pruned_qat")[1] != before["pruned_qat"][1]
    assert re.search(r"student: done in \d+m\d\ds", result.stderr)
    summary = json.loads(result.stdout)
    statuses = {s["name"]: s["status"] for s in summary["stages"]}
    assert statuses == {"teacher": "skipped", "pruned": "skipped", "pruned_qat": "ran",
                        "student": "ran", "student_qat": "ran", "export": "ran",
                        "teacher_export": "ran", "web_export": "ran", "web_demo": "ran",
                        "benchmark": "ran"}
    # One name per stage: its section, its folder, its manifest's `stage`, its summary rows.
    for name in STAGE_NAMES:
        assert (out / name).is_dir(), name
        if (out / name / "manifest.json").is_file():
            assert json.loads((out / name / "manifest.json").read_text())["stage"] == name

    # The exported model is the QAT student's int8 TFLite, verified against Keras, with its
    # ONNX models beside it.
    export = json.loads((out / "export" / "manifest.json").read_text())
    assert export["parent"] == str((out / "student_qat").resolve())
    by_format = {(a["format"], a["flavour"]): a for a in export["artifacts"]}
    assert set(by_format) == {("tflite", "int8"), ("onnx", "float32"), ("onnx", "int8")}
    assert all((out / "export" / a["file"]).is_file() for a in export["artifacts"])
    assert by_format[("onnx", "float32")]["graph"] == "QDQ (quantization-aware model)"
    artifact = by_format[("tflite", "int8")]
    # Verified on the held-out images. These 2-epoch models of 32 images barely learn: their
    # outputs can be near uniform, where top-1 agreement is noise. How closely int8 follows
    # Keras is tested on models whose outputs vary (tests/converters/test_convert.py).
    check = artifact["verification"]
    assert check["images"] == export["data"]["verification_images"] > 0
    assert 0 <= check["top1_agreement"] <= 1 and check["max_probability_difference"] < 0.5
    assert (out / "android").is_dir() and (out / "web_demo" / "index.html").is_file()
    # The page offers MediaPipe on the int8 TFLite that ships (the export stage's).
    runtimes = json.loads((out / "web_demo" / "runtimes.json").read_text())
    assert runtimes["mediapipe"]["source"] == artifact["file"], runtimes
    assert ((out / "web_demo" / runtimes["mediapipe"]["model"]).read_bytes()
            == (out / "export" / artifact["file"]).read_bytes())
    # The compressed teacher ships too, the same way, its Android assets in a folder of its own.
    from vgg_mobile.core.export_dir import load_export

    teacher = load_export(out / "teacher_export")
    assert teacher.manifest.parent == str((out / "pruned_qat").resolve())
    # int8 only: a full VGG16's float32 ONNX is no file for a phone (`onnx_flavours`).
    assert {(a.format, a.flavour) for a in teacher.artifacts} == {("tflite", "int8"), ("onnx", "int8")}
    assert all(teacher.file(a).is_file() and a.verification["images"] > 0
               for a in teacher.artifacts)
    assert (out / "teacher_android").is_dir()
    assert sorted(p.name for p in (out / "android").rglob("*.tflite")) == [artifact["file"]]
    web = json.loads((out / "web_export" / "manifest.json").read_text())
    assert any(a["format"] == "tfjs_graph_model" for a in web["artifacts"])
    rows = {row["artifact"]: row for row in summary["summary"]}
    int8 = rows["TFLite int8 (student_qat)"]
    assert int8["budget"] == "pass" and rows["float teacher"]["size_bytes"] > int8["size_bytes"]
    # Channel pruning removed filters: the saved file itself is about half the size.
    assert rows["pruned teacher"]["size_bytes"] < 0.6 * rows["float teacher"]["size_bytes"]
    # The benchmark stage timed every artifact, in one process, against the float teacher;
    # a quantization-aware Keras run is not timed: its fake quantization is no product's.
    assert len(rows) == 12
    qat = {"pruned + QAT teacher", "QAT student"}
    assert all(rows[name]["latency_ms"] is None and rows[name]["speedup"] is None for name in qat)
    assert all(row["latency_ms"] > 0 for name, row in rows.items() if name not in qat)
    assert rows["TFLite int8 (pruned_qat)"]["budget"] == "pass"
    assert rows["ONNX int8 (pruned_qat)"]["latency_ms"] > 0
    assert "Quantization-aware Keras models run fake quantization" in " ".join(summary["notes"])
    # It ends with the choice among the shipped files, naming them.
    assert summary["what_to_ship"] and re.search(
        r"the (VGG16|student) (int8|float32|float16) (TFLite|ONNX)", summary["what_to_ship"][0])
    assert rows["ONNX int8 (student_qat)"]["budget"] == "pass"
    assert rows["float teacher"]["speedup"] == 1.0 and rows["TF.js (student)"]["speedup"] > 0
    assert all(0 <= row["agreement"] <= 1 for name, row in rows.items() if name != "float teacher")
    table = (out / "benchmark" / "benchmark.md").read_text()
    assert "TF.js wasm (Node)" in table and "ONNX Runtime (CPU)" in table
    assert {row["stage"] for row in summary["summary"]} == {
        "teacher", "pruned", "pruned_qat", "student", "student_qat", "export", "teacher_export",
        "web_export"}
    assert load_config(out / CONFIG_FILE) == load_config(config)
    assert summary["report"]["html"] == str(out / "report.html")

    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page)
    assert "<link" not in page and "<script" not in page
    assert page.count("data:image/png;base64,") >= 4  # curves, confusion matrices, size chart
    assert "<th>latency</th>" in page
    assert "per-class metrics: teacher" in page and "per-class metrics: student_qat" in page
    assert "size_accuracy.png" in (out / "report.md").read_text()
    assert (out / "report.md").read_text().rstrip().endswith(summary["what_to_ship"][-1])

    # Nothing changed: nothing is redone.
    finished = {stage: _created(out, stage) for stage in ("student_qat", "export")}
    result = cli("pipeline", data, "--out", out, "--config", config, "--quiet", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {s["status"] for s in json.loads(result.stdout)["stages"]} == {"skipped"}
    assert {stage: _created(out, stage) for stage in finished} == finished

    # The compressed teacher misses its size budget: the pipeline fails as for [export], and
    # leaves neither its export nor its Android assets.
    config.write_text(CHANGED_QAT.replace('[teacher_export]\nmax_size = "none"',
                                          '[teacher_export]\nmax_size = "1kB"'))
    result = cli("pipeline", data, "--out", out, "--config", config, "--quiet")
    assert result.returncode == 3 and "budget missed" in result.stderr, result.stderr[-2000:]
    assert not (out / "teacher_export").exists() and not (out / "teacher_android").exists()
    assert (out / "export" / "manifest.json").is_file() and (out / "android").is_dir()

    # A stage that fails: error and exit code of the stage, its folder gone, earlier ones kept.
    config.write_text(CHANGED_QAT.replace("[student_qat]\nepochs = 1",
                                          "[student_qat]\nepochs = 1\npreserve_sparsity = true"))
    student = _created(out, "student")
    result = cli("pipeline", data, "--out", out, "--config", config, "--quiet")
    assert result.returncode == 2 and "not pruned" in result.stderr, result.stderr[-2000:]
    assert not (out / "student_qat").exists() and _created(out, "student") == student
    state = json.loads((out / STATE_FILE).read_text())
    assert state["stages"]["student_qat"]["status"] == "running"
    assert state["stages"]["student"]["status"] == "finished"

    # The disk fills up during the redone stage: exit 1 with a clear message, the stage's
    # partial output discarded, the finished stages kept; with space again, it completes.
    def limit_file_size():
        # Any write past 1.5 MB fails with EFBIG, as a full disk fails with ENOSPC.
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))

    # (The benchmark stage is left out from here on: it was tested above, and takes a while.)
    config.write_text(CHANGED_QAT.replace("repeats = 3", "enabled = false"))
    result = cli("pipeline", data, "--out", out, "--config", config, "--quiet",
                 preexec_fn=limit_file_size)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "error:" in result.stderr and "internal error" not in result.stderr
    assert "student_qat: started" in result.stderr
    assert not (out / "student_qat").exists() and _created(out, "student") == student
    result = cli("pipeline", data, "--out", out, "--config", config, "--quiet", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    statuses = {s["name"]: s["status"] for s in json.loads(result.stdout)["stages"]}
    # The page reads the export stage's int8 TFLite: a redone export redoes the page, whose
    # MediaPipe runtime then runs the new file, not the one the failed runs discarded.
    assert [name for name, status in statuses.items() if status == "ran"] == [
        "student_qat", "export", "teacher_export", "web_demo"]
    export = json.loads((out / "export" / "manifest.json").read_text())
    runtimes = json.loads((out / "web_demo" / "runtimes.json").read_text())
    assert ((out / "web_demo" / runtimes["mediapipe"]["model"]).read_bytes()
            == (out / "export" / export["artifacts"][0]["file"]).read_bytes())
    # The earlier benchmark measured artifacts since redone: it is gone, not shown as theirs.
    assert not (out / "benchmark").exists()
    assert all(row["latency_ms"] is None for row in json.loads(result.stdout)["summary"])
    assert json.loads((out / "export" / "manifest.json").read_text())["artifacts"][0][
        "verification"]["top1_agreement"] >= 0.75


def test_a_redone_stage_discards_the_report_and_what_was_built_from_it(tmp_path):
    from vgg_mobile.pipeline.config import build_config
    from vgg_mobile.pipeline.runner import _discard_dependents, stage_plan
    from vgg_mobile.pipeline.state import REPORT_FILES

    plan = stage_plan(build_config({}, "sample"))
    names = [stage.name for stage, _ in plan]
    out = tmp_path / "out"
    for name in (*names, *REPORT_FILES):
        (out / name).mkdir(parents=True)
    # The export is redone (and may fail): the report, the benchmark that vouched for the old
    # export and the page that runs its int8 TFLite go at once; the student and its web export
    # do not read it.
    _discard_dependents(out, plan, names.index("export"))
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted(set(names) - {"benchmark", "web_demo"}), left
    # The teacher is redone: everything after it was built from it.
    _discard_dependents(out, plan, names.index("teacher"))
    assert sorted(p.name for p in out.iterdir()) == ["teacher"]


def test_every_stage_declares_the_stages_it_reads():
    from vgg_mobile.pipeline.config import build_config
    from vgg_mobile.pipeline.runner import stage_plan
    from vgg_mobile.pipeline.stages import get_stage

    config = build_config({}, "sample")
    names = [stage.name for stage, _ in stage_plan(config)]
    reads = {name: get_stage(name).inputs_of(getattr(config, name), names[:names.index(name)])
             for name in names}
    assert reads["web_demo"] == ("export", "web_export")
    assert reads["export"] == ("student_qat",) and reads["student"] == ("teacher",)
    # QAT of the student goes on distilling from the teacher.
    assert reads["student_qat"] == ("teacher", "student")
    assert reads["benchmark"] == tuple(names[:-1])
    # An export made from the float student instead: the page still reads the export stage.
    config = build_config({"export": {"source": "student"}}, "sample")
    assert get_stage("web_demo").inputs_of(config.web_demo, names) == ("export", "web_export")
