"""The report on a small pipeline folder with real models: tiny untrained CNNs as the teacher,
student and QAT student runs, and a real int8 TFLite as the shipped export, so the report runs
the shipped file in LiteRT and draws Grad-CAM. Seconds, not a pipeline run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vgg_mobile.pipeline.config import CONFIG_FILE, config_toml, load_config
from vgg_mobile.reporting.report import ASSETS

SIZE = 32
SCREENSHOT = Path(__file__).resolve().parents[2] / "build" / "screenshots" / "report.png"
CHROMIUM = "/usr/bin/chromium"
PHONE_WIDTH = 393


def _model(classes: int, seed: int):
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, keras.layers.Softmax(name="probs")(logits), name=f"tiny{seed}")


@pytest.fixture(scope="module")
def pipeline_out(tmp_path_factory):
    from vgg_mobile.data.dataset import load_images
    from vgg_mobile.converters.tflite import convert_keras_model
    from vgg_mobile.core.run_dir import Manifest, finish_run
    from vgg_mobile.data import dataset, splits
    from vgg_mobile.data.sample import write_sample_data
    from vgg_mobile.evaluation.metrics import classification_metrics

    base = tmp_path_factory.mktemp("report")
    data = write_sample_data(base / "data", images_per_class=12, image_size=SIZE, seed=0,
                             colour_cue=True)
    folder = dataset.scan_folder(data)
    choice = splits.choose_split(folder, None, 0.5, seed=0)
    record = splits.data_record(folder, choice)
    classes = tuple(folder.classes)
    out = base / "out"
    x_val, y_val = load_images(choice.parts.val, SIZE, len(classes))
    models = {}
    for seed, stage in enumerate(("teacher", "student", "student_qat")):
        model = models[stage] = _model(len(classes), seed)
        metrics = classification_metrics(model.predict(x_val, verbose=0), y_val, classes)
        finish_run(out / stage, model, Manifest(
            stage=stage, classes=classes, input={"size": [SIZE, SIZE], "channels": 3},
            architecture="tiny", data=record, metrics=metrics,
            # Never loaded by the report: it only walks up to the float run.
            quantization_aware=stage == "student_qat",
            sections={} if stage != "student_qat" else {"compression": {"history": {
                "loss": [1.0], "val_loss": [1.1], "accuracy": [0.5], "val_accuracy": [0.4]}}}))
    x_train, _ = load_images(choice.parts.train, SIZE, len(classes))
    tflite = convert_keras_model(models["student_qat"], "int8", representative=x_train)
    (out / "export").mkdir()
    (out / "export" / "student_int8.tflite").write_bytes(tflite)
    (out / "export" / "manifest.json").write_text(json.dumps(Manifest(
        stage="export", classes=classes, input={"size": [SIZE, SIZE], "channels": 3},
        model_file=None, sections={"artifacts": [
            {"file": "student_int8.tflite", "format": "tflite", "flavour": "int8",
             "size_bytes": len(tflite), "verification": {"top1_agreement": 0.9,
                                                         "accuracy": 0.3}}]}).to_json()))
    (out / "pipeline_state.json").write_text(json.dumps({"stages": {}}))
    (out / CONFIG_FILE).write_text(config_toml(load_config(text="[web_export]\nenabled = false\n")))
    return out, choice.parts.val, classes, tflite


@pytest.fixture(scope="module")
def report(pipeline_out):
    from vgg_mobile.reporting.report import write_report

    out = pipeline_out[0]
    write_report(out)
    return (out / "report.md").read_text(), (out / "report.html").read_text()


def _shipped_probs(pipeline_out):
    from vgg_mobile.data.dataset import load_images
    from vgg_mobile.converters.tflite import predict_tflite

    _, val, classes, tflite = pipeline_out
    # `[benchmark] images` is unset: every held-out image, in the split's order.
    x, y = load_images(val, SIZE, len(classes))
    return predict_tflite(tflite, x), y


def test_the_exported_confusion_matrix_is_the_shipped_tflite_s(pipeline_out, report):
    from vgg_mobile.evaluation.metrics import classification_metrics

    md, page = report
    _, val, classes, _ = pipeline_out
    probs, labels = _shipped_probs(pipeline_out)
    matrix = classification_metrics(probs, labels, classes)["confusion_matrix"]
    heading = ("per-class metrics: student_qat, exported as the shipped int8 TFLite (LiteRT), "
               f"{len(val)} images")
    assert heading in md and heading in page
    section = md[md.index(heading):]
    section = section[:section.index("\n## ", 1)]
    for name, counts in zip(classes, matrix):
        assert f"| {name} | " + " | ".join(map(str, counts)) + " |" in section
    # The Keras QAT run's recorded matrix is not what the report shows as the shipped one.
    assert "per-class metrics: student_qat (Keras run" not in md


def test_gradcam_section_lists_the_shipped_model_s_answers(pipeline_out, report):
    md, page = report
    out, val, classes, _ = pipeline_out
    probs, labels = _shipped_probs(pipeline_out)
    by_file = {Path(e.path).name: (classes[y], classes[p])
               for e, y, p in zip(val, labels, probs.argmax(1))}
    assert '<h2 id="gradcam">' in page and "## Where the teacher and the student look" in md
    assert "float `student` run" in md
    # The overlays' colours are keyed: a bar in the figure (tests/reporting/test_charts.py)
    # and a sentence in the caption.
    assert "dark red (looked at most, 1), as the colour bar under the figure shows" in md
    section = md[md.index("## Where the teacher and the student look"):]
    listed = re.findall(r"^\| (\d+) \| (\S+) \| (\S+) \| (\S+) \| (yes|no) \|", section, re.M)
    wrong = sum(p != y for y, p in by_file.values())
    assert len(listed) == min(wrong, 3) + min(len(val) - wrong, 3) > 0
    for _, file, true, predicted, right in listed:
        assert by_file[file] == (true, predicted) and (right == "yes") == (true == predicted)
    # The wrong ones first, then the right ones.
    rights = [r for *_, r in listed]
    assert rights == sorted(rights)
    figure = page[page.index('<h2 id="gradcam">'):]
    assert 'alt="Grad-CAM of the teacher and the student" src="data:image/png;base64,' in figure
    assert (out / ASSETS / "gradcam.png").is_file() and f"]({ASSETS}/gradcam.png)" in section


def test_report_screenshot(pipeline_out, report):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    out = pipeline_out[0]
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto((out / "report.html").resolve().as_uri())
            widths = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.alt, i.naturalWidth, i.clientWidth])")
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            # A phone (393 px, as wide as many): the page never scrolls sideways; a wide table
            # scrolls in its own box, and figures shrink to the page.
            phone = browser.new_page(viewport={"width": PHONE_WIDTH, "height": 852},
                                     is_mobile=True, has_touch=True)
            phone.goto((out / "report.html").resolve().as_uri())
            page_width = phone.evaluate("document.documentElement.scrollWidth")
            boxes = phone.eval_on_selector_all(
                ".table", "ds => ds.map(d => [d.scrollWidth, d.getBoundingClientRect().right])")
            images = phone.eval_on_selector_all(
                "img", "imgs => imgs.map(i => i.getBoundingClientRect().right)")
        finally:
            browser.close()
    assert page_width <= PHONE_WIDTH, page_width
    assert any(scroll > PHONE_WIDTH for scroll, _ in boxes), boxes  # the summary table is wider
    assert all(right <= PHONE_WIDTH for _, right in boxes) and boxes
    assert images and all(right <= PHONE_WIDTH for right in images), images
    shown = {alt: (natural, client) for alt, natural, client in widths}
    matrix = [v for alt, v in shown.items()
              if alt.startswith("confusion matrix:") and "shipped int8 TFLite" in alt]
    assert matrix and matrix[0][0] > 0
    # Figures are shown at their natural width, not shrunk.
    assert all(client == natural > 0 for natural, client in shown.values()), shown
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_report_says_what_tta_would_have_given_the_keras_teacher_and_student(pipeline_out,
                                                                                 report):
    from vgg_mobile.core.run_dir import load_run

    md, page = report
    out, val, _, _ = pipeline_out
    assert "## Test-time augmentation" in md and '<h2 id="tta">' in page
    section = md[md.index("## Test-time augmentation"):]
    section = section[:section.index("\n## ", 1)]
    assert f"on the same {len(val)} held-out images" in section
    assert "the shipped files stay single-pass" in section
    # The tiny runs record no training augmentation: no mirror, the image and five crops.
    assert "| Keras model | single pass | with TTA (6 views) | images | views |" in section
    for label, stage in (("float teacher", "teacher"), ("float student", "student")):
        row = re.search(rf"^\| {label} \({stage}/\) \| ([\d.]+) \| ([\d.]+) \| (\d+) \| image, ",
                        section, re.M)
        assert row, f"no TTA row for {stage}:\n{section}"
        single, tta, images = row.groups()
        # The single pass is the run's own accuracy on these images (recorded by the fixture).
        assert float(single) == pytest.approx(load_run(out / stage).manifest.metrics["accuracy"],
                                              abs=0.001)
        assert 0 <= float(tta) <= 1 and int(images) == len(val)
    # Only the Keras teacher and student: not the QAT run, nor any exported file.
    assert "student_qat" not in section
