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
from vgg_mobile.site import assemble_demo, find_bundle, serve_in_background

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "web_demo.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def demo(teacher_export, tmp_path_factory):
    base, _ = teacher_export
    folder = assemble_demo(tmp_path_factory.mktemp("demo") / "site", base / "out")
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


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1000, "height": 760})
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
    # Nothing but the site's own files was requested: images never leave the page.
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
    # Nothing wider than the screen; the result stacks under the image.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width
    image_box = page.locator("#preview").bounding_box()
    result_box = page.locator("#predictions").bounding_box()
    assert image_box["height"] > 100
    assert result_box["y"] >= image_box["y"] + image_box["height"] - 1, (image_box, result_box)
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
        assemble_demo(tmp_path / "site", tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(base / "out" / "tfjs", partial)
    next(partial.glob("*.bin")).unlink()
    with pytest.raises(BadInputError, match="weight file missing"):
        assemble_demo(tmp_path / "site", partial)
    site = assemble_demo(tmp_path / "site", base / "out")
    versions = json.loads((site / "vendor" / "VERSIONS.json").read_text())
    assert versions == {"@tensorflow/tfjs": "4.22.0", "@tensorflow/tfjs-backend-wasm": "4.22.0"}
    with pytest.raises(BadInputError, match="already holds a finished vgg-mobile demo"):
        assemble_demo(site, base / "out")
    assert assemble_demo(site, base / "out", force=True) == site
    # The bundle's own folder is an input: --force never replaces it.
    export_before = sorted(p.name for p in (base / "out").iterdir())
    for out in (base / "out", base / "out" / "tfjs", base / "out" / "site"):
        with pytest.raises(BadInputError, match="input"):
            assemble_demo(out, base / "out", force=True)
    assert sorted(p.name for p in (base / "out").iterdir()) == export_before
