"""The summary rows, read from a hand-made pipeline folder of JSON manifests (no model runs)."""

from __future__ import annotations

import json
import shutil

from vgg_mobile.pipeline.config import load_config
from vgg_mobile.pipeline.summary import findings, summary_rows, table_notes


def _json(path, data):
    """Writes `data`; a manifest gets the fields every manifest has (`core.run_dir.Manifest`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name == "manifest.json":
        data = {"schema_version": 1, "stage": path.parent.name, "classes": ["a", "b"],
                "input": {"size": [32, 32]}, **({"model_file": None} if "artifacts" in data else {}),
                **data}
    path.write_text(json.dumps(data))


def _artifact(file, fmt, flavour, size, agreement, accuracy, drop):
    return {"file": file, "format": fmt, "flavour": flavour, "size_bytes": size,
            "gzip_bytes": size // 2, "verification": {"top1_agreement": agreement, "images": 40,
                                                      "accuracy": accuracy, "accuracy_drop": drop}}


def make_out(tmp_path):
    """A pipeline folder as the stages leave it: two runs, both exports, a benchmark."""
    out = tmp_path / "out"
    for stage, accuracy, size in (("teacher", 0.9, 4000), ("student_qat", 0.85, 1000)):
        (out / stage).mkdir(parents=True)
        (out / stage / "model.keras").write_bytes(b"\0" * size)
        _json(out / stage / "manifest.json", {"stage": stage, "model_file": "model.keras",
                                             "architecture": "x", "metrics": {"accuracy": accuracy,
                                             "per_class": {"a": {"support": 25}, "b": {"support": 15}}}})
    _json(out / "export" / "manifest.json", {"stage": "export", "architecture": "x", "artifacts": [
        # Agrees with Keras and is small, but lost five points of accuracy.
        _artifact("x_int8.tflite", "tflite", "int8", 300_000, 0.95, 0.80, 0.05)]})
    _json(out / "web_export" / "manifest.json", {"stage": "web_export", "artifacts": [
        _artifact("x_float16.tflite", "tflite", "float16", 600_000, 1.0, 0.85, 0.0),
        _artifact("tfjs/", "tfjs_graph_model", "uint8", 700_000, 0.99, 0.85, 0.0)]})
    _json(out / "pipeline_state.json", {"stages": {"teacher": {"gzip_bytes": 123}}})
    _json(out / "benchmark" / "benchmark.json", {"rows": [
        # Paths as the benchmark recorded them: OUT as it was given (here, relative).
        {"path": "out/teacher/model.keras", "stage": "teacher", "latency_ms": 8.0,
         "speedup": 1.0, "agreement": None, "accuracy": 0.5},
        {"path": str(out / "export" / "x_int8.tflite"), "stage": "export", "latency_ms": 2.0,
         "speedup": 4.0, "agreement": 0.1, "accuracy": 0.1}]})
    return out


def test_rows_per_artifact_with_their_stage_and_parent(tmp_path):
    out = make_out(tmp_path)
    rows = summary_rows(out, load_config(text=""))
    assert [(r["artifact"], r["stage"], r["format"], r["parent"]) for r in rows] == [
        ("float teacher", "teacher", "keras", None),
        ("QAT student", "student_qat", "keras", "student"),
        ("TFLite int8 (student_qat)", "export", "tflite", "student_qat"),
        ("TFLite float16 (student)", "web_export", "tflite", "student"),
        ("TF.js (student)", "web_export", "tfjs", "student")]
    teacher, student_qat, int8 = rows[:3]
    assert teacher["size_bytes"] == 4000 and teacher["gzip_bytes"] == 123  # from the state
    assert student_qat["gzip_bytes"] is None and student_qat["latency_ms"] is None
    assert int8["path"] == str(out / "export" / "x_int8.tflite") and int8["gzip_bytes"] == 150_000
    assert all(r["budget"] == "-" and r["misses"] == [] for r in rows[:2])
    # Every row says how many held-out images its accuracy is on.
    assert [r["images"] for r in rows] == [40] * 5
    assert [r["feeds_export"] for r in rows] == [True] * 5


def test_one_model_one_figure_the_benchmark_s_when_it_ran(tmp_path):
    out = make_out(tmp_path)
    # The stages measured the teacher at 0.9 and the int8 file at 0.80; the benchmark, which
    # ran both again on its own 36 images, measured 0.5 and 0.1: the table gives its figures.
    benchmark = json.loads((out / "benchmark" / "benchmark.json").read_text())
    (out / "benchmark" / "benchmark.json").write_text(json.dumps({**benchmark, "images": 36}))
    rows = summary_rows(out, load_config(text=""))
    teacher, student_qat, int8 = rows[:3]
    assert (teacher["accuracy"], teacher["images"], teacher["measured_by"]) == (0.5, 36, "benchmark")
    assert (teacher["latency_ms"], teacher["speedup"], teacher["agreement"]) == (8.0, 1.0, None)
    assert (int8["accuracy"], int8["agreement"], int8["images"]) == (0.1, 0.1, 36)
    # The budgets stay the rule `convert` enforced, on its own verification.
    assert int8["budget"] == "pass"
    # A row the benchmark did not measure keeps the stage's figure and says on what.
    assert (student_qat["accuracy"], student_qat["images"], student_qat["measured_by"]) == (
        0.85, 40, "stage")
    # A copied folder is still measured: the benchmark recorded the paths of the original.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    copied = summary_rows(copy, load_config(text=""))
    assert [r["accuracy"] for r in copied] == [r["accuracy"] for r in rows]
    assert copied[0]["path"] == str(copy / "teacher" / "model.keras")
    assert table_notes(rows)[0] == (
        "Accuracies on different numbers of held-out images: 40 (one image = 2.5 points): QAT "
        "student, TFLite float16 (student), TF.js (student); 36 (one image = 2.8 points): float "
        "teacher, TFLite int8 (student_qat).")
    assert "benchmark's" in table_notes(rows)[1]
    # Without the benchmark, every figure is the stage's.
    (out / "benchmark" / "benchmark.json").unlink()
    rows = summary_rows(out, load_config(text=""))
    assert [r["accuracy"] for r in rows[:3]] == [0.9, 0.85, 0.80]
    assert table_notes(rows) == ["Every accuracy is on 40 held-out images: one image = 2.5 "
                                 "points of accuracy."]


def test_rows_that_feed_no_export_say_so(tmp_path):
    out = make_out(tmp_path)
    for stage in ("pruned", "pruned_qat"):
        (out / stage / "model.keras").parent.mkdir(parents=True)
        (out / stage / "model.keras").write_bytes(b"\0" * 10)
        _json(out / stage / "manifest.json", {"stage": stage, "model_file": "model.keras",
                                             "metrics": {"accuracy": 0.8}})
    # The compressed teacher ships by default ([teacher_export]): both rows feed it.
    assert all(r["feeds_export"] for r in summary_rows(out, load_config(text="")))
    rows = summary_rows(out, load_config(text="[teacher_export]\nenabled = false\n"))
    idle = [r["artifact"] for r in rows if not r["feeds_export"]]
    assert idle == ["pruned teacher", "pruned + QAT teacher"]
    assert table_notes(rows)[-1] == (
        "Measured, not shipped: no exported file is made from the pruned teacher and pruned + "
        "QAT teacher rows; they feed nothing downstream.")
    # Exporting the pruned + QAT teacher makes both feed it; the student's chain then feeds
    # only the web export, and with that off, nothing.
    config = load_config(text='[export]\nsource = "pruned_qat"\n[web_export]\nenabled = false\n'
                              "[web_demo]\nenabled = false\n[teacher_export]\nenabled = false\n")
    rows = summary_rows(out, config)
    assert {r["stage"] for r in rows if not r["feeds_export"]} == {"student_qat"}
    assert table_notes(rows)[-1].endswith("the QAT student row; it feeds nothing downstream.")


def test_budgets_are_the_ones_convert_enforces_including_the_accuracy_drop(tmp_path):
    out = make_out(tmp_path)
    # The presets' budgets (10 MB, agreement 0.9) pass everything.
    assert {r["budget"] for r in summary_rows(out, load_config(text=""))[2:]} == {"pass"}

    rows = summary_rows(out, load_config(text="[export]\nmax_accuracy_drop = 0.01\n"))
    int8 = rows[2]
    assert int8["budget"] == "fail"
    (miss,) = int8["misses"]
    assert "export/x_int8.tflite" in miss and "accuracy drop 0.0500" in miss
    # Each export is held to its own section's budgets.
    assert [r["budget"] for r in rows[3:]] == ["pass", "pass"]

    rows = summary_rows(out, load_config(text='[web_export]\nmax_size = "650kB"\n'
                                              "min_agreement = 0.995\n"))
    assert [r["budget"] for r in rows[2:]] == ["pass", "pass", "fail"]
    assert len(rows[4]["misses"]) == 2 and "size budget" in rows[4]["misses"][0]
    assert "agreement" in rows[4]["misses"][1]


def test_a_missing_verification_value_misses_the_budget_that_needs_it(tmp_path):
    out = make_out(tmp_path)
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    del manifest["artifacts"][0]["verification"]["accuracy_drop"]
    (out / "export" / "manifest.json").write_text(json.dumps(manifest))
    rows = summary_rows(out, load_config(text="[export]\nmax_accuracy_drop = 0.5\n"))
    assert rows[2]["budget"] == "fail" and "unknown" in rows[2]["misses"][0]


def test_empty_or_unfinished_folder_has_no_rows(tmp_path):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "model.keras").write_bytes(b"x")  # no manifest: unfinished
    assert summary_rows(tmp_path, load_config(text="")) == []


def test_findings_say_whether_the_teacher_was_worth_learning_from(tmp_path):
    out = make_out(tmp_path)
    config = load_config(text="")
    assert findings(out, config) == []  # no student stage with a baseline
    per_class = {"a": {"support": 30}, "b": {"support": 10}}
    _json(out / "student" / "manifest.json", {
        "teacher": {"metrics": {"accuracy": 0.831}},
        "baseline": {"metrics": {"accuracy": 0.868, "per_class": per_class},
                     "distilled_metrics": {"accuracy": 0.847}, "accuracy_gain": -0.021,
                     "shipped": "baseline", "teacher_weaker": True, "reason": "..."}})
    said = findings(out, config)
    assert said[0] == ("Teacher 0.831, distilled student 0.847, the same student trained alone "
                       "0.868 on 40 held-out images (one image = 2.5 points).")
    assert "no more accurate than the student trained alone" in said[1]
    assert said[2] == "Distillation did not pay: -2.1 points against the student trained alone."
    assert "kept the student trained alone" in said[3]
    # The summary's row of the student stage names the model it holds.
    titles = {row["stage"]: row["artifact"] for row in summary_rows(out, config)
              if row["format"] == "keras"}
    assert titles["student"] == "student trained alone (kept: distillation did not pay)"
    assert titles["teacher"] == "float teacher"
    # The advice names a stronger teacher than the one that taught.
    manifest = json.loads((out / "student" / "manifest.json").read_text())
    for architecture, advice in (("vgg16", "vgg16_bn"), ("vgg16_bn_0.5", "the full-width vgg16_bn")):
        manifest["teacher"]["architecture"] = architecture
        _json(out / "student" / "manifest.json", manifest)
        assert f"train a stronger teacher (more epochs, {advice}," in findings(out, config)[1]
    # A student that also learnt from unlabelled images says how many, after the verdict.
    manifest["data"] = {"unlabeled": {"folder": "photos", "images": 1500, "duplicates": 3,
                                      "unreadable": 1}}
    _json(out / "student" / "manifest.json", manifest)
    said = findings(out, config)
    assert len(said) == 5 and said[-1] == (
        "The distilled student also learnt from 1500 unlabelled images, through the teacher's "
        "answers alone (3 left out as copies of labelled or held-out images, 1 unreadable); "
        "the student trained alone saw none of them.")


def _shipped(artifact, model, fmt, flavour, accuracy, size_mb, latency_ms, budget="pass"):
    """A summary row of an exported file, by hand."""
    return {"artifact": artifact, "stage": "x", "model": model, "format": fmt,
            "flavour": flavour, "accuracy": accuracy, "size_bytes": int(size_mb * 1e6),
            "latency_ms": latency_ms, "budget": budget}


def test_what_to_ship_is_the_pareto_front_with_one_sentence_per_best_file():
    from vgg_mobile.pipeline.summary import what_to_ship

    vgg = _shipped("v", "VGG16", "tflite", "int8", 0.899, 3.8, 1.4)
    student = _shipped("s", "student", "tflite", "int8", 0.880, 2.7, 1.0)
    # Less accurate, larger and slower than the student's TFLite: dominated.
    onnx = _shipped("o", "student", "onnx", "int8", 0.870, 2.8, 1.2)
    # Smallest, but misses a budget: not a candidate.
    failed = _shipped("f", "student", "tfjs", "uint8", 0.95, 0.5, 0.1, budget="fail")
    keras = {**student, "format": "keras", "accuracy": 0.99}  # a Keras run ships nothing
    choice = what_to_ship([keras, vgg, student, onnx, failed])
    assert choice.latency_measured and choice.front == (vgg, student)
    assert choice.best == {"accuracy": vgg, "size": student, "latency": student}
    assert choice.sentences == (
        "Best on accuracy: the VGG16 int8 TFLite is 1.9 points more accurate, 1.4x slower and "
        "1.1 MB larger than the student int8 TFLite.",
        "Best on size and latency: the student int8 TFLite is 1.9 points less accurate, 1.4x "
        "faster and 1.1 MB smaller than the VGG16 int8 TFLite.")


def test_what_to_ship_ties_and_a_single_winner():
    from vgg_mobile.pipeline.summary import what_to_ship

    a = _shipped("a", "student", "tflite", "int8", 0.9, 1.0, 1.0)
    twin = _shipped("b", "student", "onnx", "int8", 0.9, 1.0, 1.0)
    # Equal on every criterion: neither dominates, both stay; the earlier row is named.
    choice = what_to_ship([a, twin])
    assert choice.front == (a, twin) and set(map(id, choice.best.values())) == {id(a)}
    assert choice.sentences == ("Best on accuracy, size and latency: the student int8 TFLite, "
                                "with no trade-off to make.",)
    # Equal accuracy, one smaller: the larger one is dominated.
    big = _shipped("c", "student", "onnx", "float32", 0.9, 4.0, 1.0)
    assert what_to_ship([big, a]).front == (a,)
    assert what_to_ship([]).sentences == ()


def test_what_to_ship_without_latency_uses_accuracy_and_size_and_says_so():
    from vgg_mobile.pipeline.summary import what_to_ship

    vgg = _shipped("v", "VGG16", "onnx", "float32", 0.95, 15.0, None)
    student = _shipped("s", "student", "tflite", "int8", 0.95, 2.7, None)
    fast = _shipped("f", "VGG16", "tflite", "int8", 0.96, 3.8, None)
    choice = what_to_ship([vgg, student, fast])
    assert not choice.latency_measured and choice.front == (student, fast)
    assert set(choice.best) == {"accuracy", "size"}
    assert choice.sentences == (
        "Best on accuracy: the VGG16 int8 TFLite is 1.0 points more accurate and 1.1 MB larger "
        "than the student int8 TFLite.",
        "Best on size: the student int8 TFLite is 1.0 points less accurate and 1.1 MB smaller "
        "than the VGG16 int8 TFLite.",
        "Latency was not measured (the benchmark did not run): the choice is on accuracy and "
        "size only.")
    # One file timed and not the others: latency takes no part, and the sentence says why.
    choice = what_to_ship([vgg, {**student, "latency_ms": 1.0}, fast])
    assert not choice.latency_measured
    assert choice.sentences[-1].startswith("Latency was not measured for every exported file")


def test_per_class_recall_of_the_shipped_file_worst_first_on_the_benchmark_s_images(tmp_path):
    from vgg_mobile.pipeline.summary import class_recall_lines

    out = make_out(tmp_path)
    # Without the benchmark's per-class figures: the Keras runs the exports are made from.
    (out / "benchmark" / "benchmark.json").unlink()
    for stage in ("teacher", "student_qat"):
        path = out / stage / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["metrics"]["per_class"] = {"a": {"recall": 0.96, "support": 25},
                                            "b": {"recall": 0.4, "support": 15}}
        path.write_text(json.dumps(manifest))
    config = load_config(text="")
    lines = class_recall_lines(summary_rows(out, config))
    assert lines[-1] == ("Per-class recall of the QAT student on 40 held-out images (its "
                         "validation images; the Keras run, not an exported file), worst first: "
                         "'b' 0.400 (15 images), 'a' 0.960 (25 images).")
    benchmark = {"images": 36, "rows": [
        {"path": str(out / "teacher" / "model.keras"), "stage": "teacher", "accuracy": 0.5,
         "per_class": {"a": {"recall": 0.6, "support": 18}, "b": {"recall": 0.4, "support": 18}}},
        {"path": str(out / "export" / "x_int8.tflite"), "stage": "export", "accuracy": 0.1,
         "per_class": {"a": {"recall": 0.2, "support": 18}, "b": {"recall": 0.0, "support": 18}}}]}
    (out / "benchmark" / "benchmark.json").write_text(json.dumps(benchmark))
    rows = summary_rows(out, config)
    # One figure per model: the benchmark's accuracy comes with the benchmark's recall.
    assert rows[0]["per_class"] == benchmark["rows"][0]["per_class"] and rows[0]["images"] == 36
    assert class_recall_lines(rows, worst=1) == [
        "Per-class recall of the TFLite int8 (student_qat) on 36 held-out images (measured by "
        "the benchmark), worst first: 'b' 0.000 (18 images); the other 1 class 0.200 to 0.200."]
