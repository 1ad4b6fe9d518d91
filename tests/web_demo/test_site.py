"""The web demo in a real browser (headless Chromium driven by Playwright), against Keras."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from vgg_mobile.data import dataset
from vgg_mobile.core.errors import BadInputError
from vgg_mobile.web_demo import assemble_demo, find_bundle, serve_in_background

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "web_demo.png"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
PHONE = {"viewport": {"width": 393, "height": 851}, "device_scale_factor": 2.75,
         "is_mobile": True, "has_touch": True}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def demo(teacher_export, tmp_path_factory):
    base, _ = teacher_export
    folder = assemble_demo(tmp_path_factory.mktemp("demo") / "web_demo", base / "out")
    server, url = serve_in_background(folder)
    yield folder, url
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is installed by .ci/run (Debian package chromium)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _open(browser, url, **options):
    page = browser.new_page(**(options or {"viewport": {"width": 1000, "height": 760}}))
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(url)
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)", timeout=90_000)
    return page, requests


def _classify(page, path):
    page.evaluate("document.body.dataset.state = 'working'")
    page.set_input_files("#file", str(path))
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=60_000)
    return page.evaluate("document.body.dataset.state")


@pytest.mark.slow
def test_browser_predictions_match_keras(browser, demo, teacher_run, sample_dir):
    from vgg_mobile.core.run_dir import load_run

    folder, url = demo
    page, requests = _open(browser, url)
    assert page.evaluate("document.body.dataset.state") == "ready", page.text_content("#error")
    assert "using wasm" in page.text_content("#backend-status")
    assert page.evaluate("window.crossOriginIsolated") is True
    # One PNG and one JPEG per class: the same files Python reads.
    files = [sorted((sample_dir / c).glob(f"*.{ext}"))[0]
             for c in ("circle", "cross", "square", "triangle") for ext in ("png", "jpg")]
    images = np.concatenate([x.numpy() for x, _ in dataset.make_dataset(
        tuple(dataset.Example(f, 0) for f in files), 32, 16, 4)])
    keras_probs = load_run(teacher_run.run_dir).load_model()(images).numpy()
    assert len(set(keras_probs.argmax(1))) >= 3  # the model's answers vary across these images
    labels = ["circle", "cross", "square", "triangle"]
    for path, expected in zip(files, keras_probs):
        assert _classify(page, path) == "done", page.text_content("#error")
        probs = np.array(json.loads(page.get_attribute("#predictions", "data-probs")))
        tolerance = 1e-3 if path.suffix == ".png" else 0.05  # two JPEG decoders may differ slightly
        assert np.abs(probs - expected).max() < tolerance, (path.name, probs, expected)
        assert page.get_attribute("#predictions", "data-top1") == labels[int(expected.argmax())]
        assert page.locator("li.prediction").count() == 4
        assert "ms on wasm" in page.text_content("#timing")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    # Nothing but the demo folder's own files was requested: images never leave the page.
    assert requests and all(r.startswith(url) or r.startswith(("blob:", "data:")) for r in requests)
    page.close()


@pytest.mark.slow
def test_bad_files_show_a_message_and_the_page_keeps_working(browser, demo, sample_dir, tmp_path):
    folder, url = demo
    page, _ = _open(browser, url)
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not a picture")
    assert _classify(page, fake) == "error"
    message = page.text_content("#error")
    assert "holiday.png" in message and "not an image" in message
    assert page.is_visible("#error")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(sorted((sample_dir / "cross").glob("*.jpg"))[0].read_bytes()[:200])
    assert _classify(page, truncated) == "error"
    # The page still classifies after errors, on another backend too.
    page.select_option("#backend", "cpu")
    page.wait_for_function("document.getElementById('backend-status').textContent.includes('cpu')")
    assert _classify(page, sorted((sample_dir / "square").glob("*.png"))[0]) == "done"
    assert page.is_hidden("#error")
    assert "ms on cpu" in page.text_content("#timing")
    page.close()


@pytest.mark.slow
def test_missing_or_mismatched_bundle_shows_a_message(browser, demo, tmp_path):
    folder, _ = demo
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    labels = json.loads((broken / "model" / "labels.json").read_text())
    (broken / "model" / "labels.json").write_text(json.dumps(labels + ["hexagon"]))
    server, url = serve_in_background(broken)
    try:
        page, _ = _open(browser, url)
        assert page.evaluate("document.body.dataset.state") == "error"
        assert "4 outputs but labels.json lists 5 classes" in page.text_content("#error")
        page.close()
        shutil.rmtree(broken / "model")
        page, _ = _open(browser, url)
        assert "Could not load the model bundle" in page.text_content("#error")
        page.close()
    finally:
        server.shutdown()


@pytest.mark.slow
def test_dropped_and_pasted_images_are_classified(browser, demo, sample_dir):
    import base64

    folder, url = demo
    page, _ = _open(browser, url)
    image = sorted((sample_dir / "triangle").glob("*.png"))[0]
    payload = base64.b64encode(image.read_bytes()).decode()
    make_transfer = f"""() => {{
        const bytes = Uint8Array.from(atob('{payload}'), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], '{image.name}', {{ type: 'image/png' }}));
        return transfer;
    }}"""
    results = []
    for script in (
        f"document.getElementById('dropzone').dispatchEvent(new DragEvent('drop', "
        f"{{ dataTransfer: ({make_transfer})(), bubbles: true, cancelable: true }}))",
        f"document.dispatchEvent(new ClipboardEvent('paste', "
        f"{{ clipboardData: ({make_transfer})(), bubbles: true }}))",
    ):
        page.evaluate("document.body.dataset.state = 'working'")
        page.evaluate(script)
        page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)",
                               timeout=60_000)
        assert page.evaluate("document.body.dataset.state") == "done", page.text_content("#error")
        assert page.text_content("#image-name") == image.name
        results.append(json.loads(page.get_attribute("#predictions", "data-probs")))
    assert results[0] == results[1]
    page.close()


@pytest.mark.slow
def test_phone_sized_screen_and_keyboard(browser, demo, sample_dir):
    folder, url = demo
    page = browser.new_page(viewport={"width": 375, "height": 740}, device_scale_factor=2)
    page.goto(url)
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=90_000)
    assert _classify(page, sorted((sample_dir / "circle").glob("*.png"))[0]) == "done"
    page.wait_for_function("document.getElementById('preview').complete")
    # Nothing wider than the screen; the result comes first, the small image beside it.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width
    image_box = page.locator("#preview").bounding_box()
    result_box = page.locator("#predictions").bounding_box()
    assert 32 <= image_box["height"] <= 224 and image_box["width"] <= 224, image_box
    assert result_box["y"] <= image_box["y"] + 1, (image_box, result_box)
    # The drop zone is reachable with Tab and opens the file chooser with Enter.
    page.focus("#backend")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.id")
    assert focused == "dropzone", focused
    page.evaluate("""document.getElementById('file').addEventListener('click', (event) => {
        window.chooserOpened = true; event.preventDefault(); })""")
    page.keyboard.press("Enter")
    page.wait_for_function("window.chooserOpened === true", timeout=15_000)
    page.close()


def test_server_sends_isolation_headers_and_only_its_own_files(demo, tmp_path):
    folder, url = demo
    with urllib.request.urlopen(url + "vendor/tfjs-backend-wasm-simd.wasm") as response:
        assert response.headers["Content-Type"] == "application/wasm"
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    secret = folder.parent / "secret.txt"
    secret.write_text("private")
    (folder / "link.txt").symlink_to(secret)
    for path in ("../secret.txt", "%2e%2e/secret.txt", "link.txt", "model/"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + path)
        assert info.value.code == 404, path


def test_demo_folder_needs_a_complete_bundle(teacher_export, tmp_path):
    base, _ = teacher_export
    assert find_bundle(base / "out") == base / "out" / "tfjs"
    with pytest.raises(BadInputError, match="model.json: missing"):
        assemble_demo(tmp_path / "web_demo", tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(base / "out" / "tfjs", partial)
    next(partial.glob("*.bin")).unlink()
    with pytest.raises(BadInputError, match="weight file missing"):
        assemble_demo(tmp_path / "web_demo", partial)
    web_demo = assemble_demo(tmp_path / "web_demo", base / "out")
    versions = json.loads((web_demo / "vendor" / "VERSIONS.json").read_text())
    assert versions == {"@tensorflow/tfjs": "4.22.0", "@tensorflow/tfjs-backend-wasm": "4.22.0",
                        "@mediapipe/tasks-vision": "1.1.0"}
    runtimes = json.loads((web_demo / "runtimes.json").read_text())
    assert runtimes["mediapipe"]["model"] == "model/model_int8.tflite"
    assert (web_demo / "model" / "model_int8.tflite").read_bytes() == next(
        (base / "out").glob("*_int8.tflite")).read_bytes()
    for name in ("vision_bundle.mjs", "wasm/vision_wasm_internal.wasm",
                 "wasm/vision_wasm_nosimd_internal.js"):
        assert (web_demo / "vendor" / "mediapipe" / name).is_file(), name
    with pytest.raises(BadInputError, match="already holds a finished vgg-mobile web demo"):
        assemble_demo(web_demo, base / "out")
    assert assemble_demo(web_demo, base / "out", force=True) == web_demo
    # The bundle's own folder is an input: --force never replaces it.
    export_before = sorted(p.name for p in (base / "out").iterdir())
    for out in (base / "out", base / "out" / "tfjs", base / "out" / "web_demo"):
        with pytest.raises(BadInputError, match="input"):
            assemble_demo(out, base / "out", force=True)
    assert sorted(p.name for p in (base / "out").iterdir()) == export_before


def _files(sample_dir):
    """One PNG and one JPEG per class."""
    return [sorted((sample_dir / c).glob(f"*.{ext}"))[0]
            for c in ("circle", "cross", "square", "triangle") for ext in ("png", "jpg")]


def _save_screenshot(page, tmp_path, name):
    """Writes a full-page screenshot under the test's tmp path and copies it to build/screenshots/."""
    folder = tmp_path / "screenshots"
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / name, SCREENSHOTS / name)


@pytest.mark.slow
def test_clicking_the_drop_zone_text_opens_the_file_chooser(browser, demo):
    folder, url = demo
    page, _ = _open(browser, url)
    for target in ("#dropzone strong", "#drop-help", "#dropzone"):
        with page.expect_file_chooser(timeout=10_000) as chooser:
            page.click(target)
        assert chooser.value.element.get_attribute("id") == "file"
    page.close()


@pytest.mark.slow
def test_a_failed_upload_clears_the_previous_image_and_predictions(browser, demo, sample_dir,
                                                                   tmp_path):
    folder, url = demo
    page, _ = _open(browser, url)
    assert _classify(page, _files(sample_dir)[0]) == "done"
    assert page.locator("li.prediction").count() == 4
    assert page.is_visible("#preview")
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    assert _classify(page, fake) == "error"
    assert page.is_visible("#error")
    assert page.locator("li.prediction").count() == 0
    assert page.is_hidden("#preview")
    assert page.text_content("#timing") == "" and page.text_content("#image-name") == ""
    assert page.get_attribute("#predictions", "data-top1") is None
    page.close()


@pytest.mark.slow
def test_switching_backend_clears_the_result_and_times_a_warm_run(browser, demo, sample_dir,
                                                                  tmp_path):
    import re

    folder, url = demo
    page, _ = _open(browser, url, viewport={"width": 1280, "height": 800})
    image = _files(sample_dir)[2]
    assert _classify(page, image) == "done"
    timing = page.text_content("#timing")
    assert re.search(r"inference [0-9.]+ ms on wasm", timing), timing
    assert re.search(r"warm-up[^0-9]*[0-9]+ ms", timing), timing
    fake = tmp_path / "bad.jpg"
    fake.write_text("nope")
    assert _classify(page, fake) == "error"
    page.select_option("#backend", "cpu")
    # Cleared at once: no stale error, predictions or timing from the old backend.
    assert page.is_hidden("#error")
    assert page.locator("li.prediction").count() == 0 and page.text_content("#timing") == ""
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
    assert re.search(r"using cpu; warm-up [0-9]+ ms", page.text_content("#backend-status"))
    assert _classify(page, image) == "done"
    timing = page.text_content("#timing")
    assert re.search(r"inference [0-9.]+ ms on cpu", timing), timing
    assert re.search(r"warm-up[^0-9]*[0-9]+ ms", timing), timing
    page.select_option("#backend", "wasm")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
    assert _classify(page, image) == "done"
    page.wait_for_function("document.getElementById('preview').complete")
    _save_screenshot(page, tmp_path, "demo_desktop.png")
    page.close()


@pytest.mark.slow
def test_phone_layout_results_first_no_keyboard_hints(browser, demo, sample_dir, tmp_path):
    folder, url = demo
    page, _ = _open(browser, url, **PHONE)
    assert page.evaluate("matchMedia('(hover: none) and (pointer: coarse)').matches")
    assert page.is_hidden("#drop-help")
    assert page.locator(".hint").count() >= 2
    for hint in page.locator(".hint").all():
        assert hint.is_hidden()
    assert _classify(page, _files(sample_dir)[0]) == "done"
    page.wait_for_function("document.getElementById('preview').complete")
    result = page.locator("#predictions").bounding_box()
    assert result["y"] + result["height"] <= 851, result
    preview = page.locator("#preview").bounding_box()
    assert preview["width"] <= 224 and preview["height"] <= 224, preview
    assert page.evaluate("getComputedStyle(document.getElementById('preview')).imageRendering") \
        == "pixelated"
    # The model line is its own section, not part of the image's caption.
    assert page.evaluate("document.getElementById('model-info').closest('figure') === null")
    assert page.evaluate("document.getElementById('model-info').tagName") == "P"
    assert "classes" in page.text_content("#model-info")
    assert page.evaluate("document.documentElement.scrollWidth") <= 393
    # A long file name without spaces (a camera's or a download's) wraps in place.
    long_name = tmp_path / ("IMG_20261204_" + "0123456789" * 12 + ".png")
    shutil.copyfile(_files(sample_dir)[0], long_name)
    assert _classify(page, long_name) == "done"
    assert long_name.stem[:40] in page.text_content("#image-name")
    assert page.evaluate("document.documentElement.scrollWidth") <= 393
    _save_screenshot(page, tmp_path, "demo_phone.png")
    page.close()
    # A desktop pointer keeps the hints.
    page, _ = _open(browser, url)
    assert page.is_visible("#drop-help")
    page.close()


@pytest.mark.slow
def test_mediapipe_runs_the_int8_tflite_and_agrees_with_litert(browser, demo, teacher_export,
                                                               sample_dir):
    from vgg_mobile.converters.tflite import predict_tflite

    base, _ = teacher_export
    folder, url = demo
    tflite = (folder / "model" / "model_int8.tflite").read_bytes()
    files = _files(sample_dir)
    images = np.concatenate([x.numpy() for x, _ in dataset.make_dataset(
        tuple(dataset.Example(f, 0) for f in files), 32, 16, 4)])
    expected = predict_tflite(tflite, images).argmax(1)
    labels = json.loads((folder / "model" / "labels.json").read_text())
    page, requests = _open(browser, url)
    page.select_option("#runtime", "mediapipe")
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)",
                           timeout=90_000)
    assert page.evaluate("document.body.dataset.state") == "ready", page.text_content("#error")
    assert page.is_disabled("#backend")
    got = []
    for path in files:
        assert _classify(page, path) == "done", page.text_content("#error")
        assert page.get_attribute("#predictions", "data-runtime") == "mediapipe"
        assert "on MediaPipe" in page.text_content("#timing")
        got.append(page.get_attribute("#predictions", "data-top1"))
    assert got == [labels[i] for i in expected], (got, expected)
    assert len(set(got)) >= 2
    # Offline: MediaPipe's script, WASM and model all came from the demo folder.
    assert any(r.endswith("vision_wasm_internal.wasm") or r.endswith("nosimd_internal.wasm")
               for r in requests)
    assert all(r.startswith(url) or r.startswith(("blob:", "data:")) for r in requests)
    page.close()


@pytest.mark.slow
def test_mediapipe_is_disabled_with_a_reason_without_an_int8_tflite(browser, teacher_export,
                                                                    tmp_path):
    base, _ = teacher_export
    bundle = tmp_path / "bundle"
    shutil.copytree(base / "out" / "tfjs", bundle)
    web_demo = assemble_demo(tmp_path / "web_demo", bundle)
    runtimes = json.loads((web_demo / "runtimes.json").read_text())
    assert "model" not in runtimes["mediapipe"] and runtimes["mediapipe"]["disabled"]
    assert not (web_demo / "model" / "model_int8.tflite").exists()
    server, url = serve_in_background(web_demo)
    try:
        page, _ = _open(browser, url)
        assert page.evaluate("document.body.dataset.state") == "ready"
        assert page.is_disabled("#runtime option[value=mediapipe]")
        assert "MediaPipe is unavailable" in page.text_content("#runtime-note")
        page.close()
    finally:
        server.shutdown()


def test_mediapipe_runs_the_int8_tflite_of_another_export_folder(teacher_export, tmp_path):
    """The pipeline's page: the browser's bundle from one export, MediaPipe's model from the
    export that ships to Android."""
    base, manifest = teacher_export
    bundle = tmp_path / "bundle"
    shutil.copytree(base / "out" / "tfjs", bundle)
    web_demo = assemble_demo(tmp_path / "web_demo", bundle, tflite_from=base / "out")
    int8 = next(a for a in manifest["artifacts"] if a["format"] == "tflite" and a["flavour"] == "int8")
    runtimes = json.loads((web_demo / "runtimes.json").read_text())
    assert runtimes["mediapipe"] == {"model": "model/model_int8.tflite", "source": int8["file"]}
    assert (web_demo / "model" / "model_int8.tflite").read_bytes() == (base / "out" / int8["file"]).read_bytes()


@pytest.fixture(scope="module")
def pipeline_web_demo(teacher_run, sample_dir, tmp_path_factory):
    """OUT/web_demo as `vgg-mobile pipeline` builds it: its export, web_export and web_demo
    stages run one after the other into one OUT folder (the export stage writes no TF.js bundle)."""
    from vgg_mobile.converters.convert import ConvertOptions
    from vgg_mobile.pipeline.sections import ExportConfig, WebDemoConfig, WebExportConfig
    from vgg_mobile.pipeline.stages import StageJob, get_stage

    out = tmp_path_factory.mktemp("pipeline") / "out"
    out.mkdir()
    # The session teacher stands in for the QAT student: a 32 px VGG16 is over the 10 MB
    # budget, which is not what this test is about.
    options = {"max_size": None, "verify_images": 48}
    settings = {
        "export": ExportConfig(android=False, options=ConvertOptions(
            flavours=("int8",), tfjs=False, **options)),
        "web_export": WebExportConfig(options=ConvertOptions(
            flavours=("float16",), tfjs=True, tfjs_quantization="none", **options)),
        "web_demo": WebDemoConfig()}
    parents = {"export": teacher_run.run_dir, "web_export": teacher_run.run_dir,
               "web_demo": out / "web_export"}
    for index, (name, section) in enumerate(settings.items()):
        # The folders of the stages it reads, as the runner hands them over.
        reads = get_stage(name).inputs_of(section, ["student_qat", *list(settings)[:index]])
        job = StageJob(name=name, data_dir=sample_dir, out=out, path=out / name,
                       parent=parents[name], resume=False, command=["test"], log=lambda _: None,
                       verbose=0, inputs={read: out / read for read in reads})
        get_stage(name).run(job, section)
    server, url = serve_in_background(out / "web_demo")
    yield out, url
    server.shutdown()


@pytest.mark.slow
def test_the_pipelines_page_runs_mediapipe_on_the_shipped_int8_tflite(browser, pipeline_web_demo,
                                                                      sample_dir):
    from vgg_mobile.converters.tflite import predict_tflite

    out, url = pipeline_web_demo
    assert not (out / "export" / "tfjs").exists()
    shipped = json.loads((out / "export" / "manifest.json").read_text())
    (int8,) = [a for a in shipped["artifacts"] if a["flavour"] == "int8"]
    runtimes = json.loads((out / "web_demo" / "runtimes.json").read_text())
    assert runtimes["mediapipe"] == {"model": "model/model_int8.tflite", "source": int8["file"]}
    tflite = (out / "web_demo" / "model" / "model_int8.tflite").read_bytes()
    assert tflite == (out / "export" / int8["file"]).read_bytes()
    files = _files(sample_dir)
    images = np.concatenate([x.numpy() for x, _ in dataset.make_dataset(
        tuple(dataset.Example(f, 0) for f in files), 32, 16, 4)])
    expected = predict_tflite(tflite, images)
    labels = json.loads((out / "web_demo" / "model" / "labels.json").read_text())
    page, _ = _open(browser, url)
    assert not page.is_disabled("#runtime option[value=mediapipe]")
    page.select_option("#runtime", "mediapipe")
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)",
                           timeout=90_000)
    assert page.evaluate("document.body.dataset.state") == "ready", page.text_content("#error")
    got = []
    for path in files:
        assert _classify(page, path) == "done", page.text_content("#error")
        assert page.get_attribute("#predictions", "data-runtime") == "mediapipe"
        got.append(page.get_attribute("#predictions", "data-top1"))
    assert got == [labels[i] for i in expected.argmax(1)], (got, expected.argmax(1))
    assert len(set(got)) >= 2
    page.close()
