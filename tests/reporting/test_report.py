"""The report, written from a hand-made pipeline folder (manifests only, no model runs)."""

from __future__ import annotations

import json
import re

from vgg_mobile.pipeline.config import CONFIG_FILE, config_toml, load_config
from vgg_mobile.reporting.report import ASSETS, SUMMARY_COLUMNS, format_summary, write_report

CLASSES = ["cat", "<b>dog|wolf</b>"]


def _json(path, data):
    """Writes `data`; a manifest gets the fields every manifest has (`core.run_dir.Manifest`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name == "manifest.json":
        data = {"schema_version": 1, "stage": path.parent.name, "classes": CLASSES,
                "input": {"size": [32, 32]}, **({"model_file": None} if "artifacts" in data else {}),
                **data}
    path.write_text(json.dumps(data))


def _out(tmp_path, config_text: str):
    out = tmp_path / "out"
    metrics = {"accuracy": 0.75, "confusion_matrix": [[3, 1], [1, 3]],
               "per_class": {name: {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
                             for name in CLASSES}}
    for stage in ("teacher", "student_qat"):
        (out / stage).mkdir(parents=True)
        (out / stage / "model.keras").write_bytes(b"\0" * 2000)
        _json(out / stage / "manifest.json", {"stage": stage, "model_file": "model.keras",
                                             "classes": CLASSES, "metrics": metrics})
    _json(out / "student_qat" / "manifest.json", {
        "stage": "student_qat", "model_file": "model.keras", "classes": CLASSES,
        "metrics": metrics, "compression": {"history": {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7],
                                    "accuracy": [0.5, 0.7], "val_accuracy": [0.5, 0.75]}}})
    _json(out / "export" / "manifest.json", {"stage": "export", "artifacts": [
        {"file": "s_int8.tflite", "format": "tflite", "flavour": "int8", "size_bytes": 500,
         "gzip_bytes": 400, "verification": {"top1_agreement": 0.9, "accuracy": 0.7,
                                             "accuracy_drop": 0.05}}]})
    _json(out / "pipeline_state.json", {"stages": {}})
    (out / CONFIG_FILE).write_text(config_toml(load_config(text=config_text)))
    return out


def test_report_reads_the_folder_and_marks_the_accuracy_drop_budget(tmp_path):
    out = _out(tmp_path, "[export]\nmax_accuracy_drop = 0.01\n[web_export]\nenabled = false\n")
    files = write_report(out)  # the configuration comes from OUT/pipeline.toml
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert files == {"md": str(out / "report.md"), "html": str(out / "report.html")}
    assert format_summary([]).splitlines()[0] in md
    assert "| TFLite int8 (student_qat) |" in md and "| fail |" in md
    assert "Missed budgets:" in md and "accuracy drop 0.0500" in md
    assert '<td class="text fail">fail</td>' in page and "accuracy drop 0.0500" in page
    assert "web_export/" not in md  # switched off: not announced
    # The user's class names are escaped in both tables.
    assert "&lt;b&gt;dog|wolf&lt;/b&gt;" in page and "<b>dog" not in page
    assert "\\|wolf" in md
    # Self-contained: the two confusion matrices. One exported file and no latency make no
    # chart, and two epochs of QAT no curve: the report says so and lists the values.
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page)
    assert page.count("data:image/png;base64,") == 2
    assert not (out / ASSETS / "size_accuracy.png").exists()
    assert ("No chart of accuracy against file size: 1 exported file, fewer than 3; the table "
            "above has it.") in md
    assert "2 epochs: too few points for a curve" in md
    assert "| epoch | loss | val_loss | accuracy | val_accuracy |" in md
    assert "| 2 | 0.500 | 0.700 | 0.700 | 0.750 |" in md
    assert "per-class metrics: teacher (Keras run, 8 validation images)" in page
    # No shipped file to run here: the exported run's Keras metrics, labelled as such.
    assert ("per-class metrics: student_qat (Keras run, 8 validation images; not the shipped "
            "int8 TFLite" in page)
    assert "<th>latency</th>" in page and "<th>images</th>" in page and len(SUMMARY_COLUMNS) == 9


def test_report_without_budget_misses(tmp_path):
    out = _out(tmp_path, "")
    write_report(out, load_config(text=""))
    md = (out / "report.md").read_text()
    assert "Missed budgets" not in md and "| pass |" in md and "`web_export/`" in md


def test_a_quantization_aware_run_shows_no_latency_and_the_report_says_why(tmp_path):
    from vgg_mobile.pipeline.summary import QAT_LATENCY_NOTE

    out = _out(tmp_path, "")
    write_report(out)
    assert QAT_LATENCY_NOTE not in (out / "report.md").read_text()  # no QAT run here
    manifest = json.loads((out / "student_qat" / "manifest.json").read_text())
    _json(out / "student_qat" / "manifest.json", {**manifest, "quantization_aware": True})
    # A benchmark that timed it (an older one): its fake-quantization latency is not shown.
    _json(out / "benchmark" / "benchmark.json", {"rows": [
        {"path": str(out / "student_qat" / "model.keras"), "stage": "student_qat",
         "latency_ms": 80.0, "speedup": 0.1},
        {"path": str(out / "export" / "s_int8.tflite"), "stage": "export",
         "latency_ms": 2.0, "speedup": 4.0}]})
    write_report(out)
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "80.00 ms" not in md and "| 2.00 ms |" in md
    assert "| QAT student | 0.750 | 8 | - | 0.00 MB | - | - | - | - |" in md
    assert QAT_LATENCY_NOTE in md and QAT_LATENCY_NOTE in page
    # Under the table that would show the latency.
    assert md.index("| QAT student |") < md.index(QAT_LATENCY_NOTE) < md.index("## Training")


def test_the_report_ends_with_what_to_ship(tmp_path):
    out = _out(tmp_path, "")
    write_report(out)
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    tail = md[md.index("## What to ship"):]
    assert tail.splitlines()[2] == ("No exported file beats these on accuracy and size at "
                                    "once: the student int8 TFLite.")
    assert "Best on accuracy and size: the student int8 TFLite, with no trade-off" in tail
    assert "Latency was not measured (the benchmark did not run)" in tail
    assert page.index('<h2 id="ship">What to ship</h2>') > page.index("per-class metrics")


def test_the_report_gives_the_shipped_file_s_per_class_recall(tmp_path):
    out = _out(tmp_path, "[web_export]\nenabled = false\n")
    _json(out / "benchmark" / "benchmark.json", {"images": 8, "rows": [
        {"path": str(out / "export" / "s_int8.tflite"), "stage": "export", "accuracy": 0.625,
         "per_class": {CLASSES[0]: {"recall": 1.0, "support": 4},
                       CLASSES[1]: {"recall": 0.25, "support": 4}}}]})
    write_report(out)
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    line = ("Per-class recall of the TFLite int8 (student_qat) on 8 held-out images (measured by "
            "the benchmark), worst first: '<b>dog|wolf</b>' 0.250 (4 images), 'cat' 1.000 "
            "(4 images).")
    assert "## Per-class recall" in md and line in md
    assert '<h2 id="recall">Per-class recall</h2>' in page and line.replace("<", "&lt;").replace(
        ">", "&gt;").replace("'", "&#x27;") in page
