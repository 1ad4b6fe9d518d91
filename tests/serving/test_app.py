"""The prediction service through FastAPI's TestClient: answers equal LiteRT's and ONNX
Runtime's on the same pixels, every bad input gets its 4xx and the next request still works,
the metrics move, reload and rollback swap whole models."""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import harness
from serving_models import CLASSES, SIZE, colour_images, png_bytes, replace_file
from vgg_mobile.converters import onnx, tflite
from vgg_mobile.data import dataset
from vgg_mobile.serving.app import INLINE_SECONDS, TITLE, ServeConfig, create_app, sniff_image
from vgg_mobile.serving.models import ModelChoice

TOKEN = "s3cret-token-for-tests"


def client_for(artifact, loopback=True, **config) -> TestClient:
    app = create_app(ServeConfig(artifact=artifact, **config))
    return TestClient(app, client=("127.0.0.1", 50000) if loopback else ("203.0.113.9", 4000))


@pytest.fixture(scope="module")
def client(tiny):
    return client_for(tiny.files["int8"], max_upload_bytes=64 * 1024, max_images=4,
                      max_pixels=1_000_000)


def reference_pixels(tmp_path, images: list[bytes]) -> np.ndarray:
    """The images as the training pipeline reads files: `decode_and_resize` on saved copies."""
    paths = []
    for i, data in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(data)
    return np.stack([dataset.decode_and_resize(str(p), SIZE).numpy() for p in paths]).astype(np.float32)


def metric(client, name: str, **labels) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def assert_same_answers(responses, probs):
    """Each response's probabilities equal the reference row, label by label."""
    for response, row in zip(responses, probs):
        got = {p["label"]: p["probability"] for p in response["predictions"]}
        assert len(got) == len(CLASSES)
        for label, value in got.items():
            assert value == pytest.approx(float(row[CLASSES.index(label)]), abs=1e-6)
        assert response["predictions"][0]["label"] == CLASSES[int(row.argmax())]


@pytest.mark.parametrize("flavour", ["int8", "float32"])
def test_predictions_equal_litert_on_the_same_pixels(client, tiny, tmp_path, flavour):
    # The float32 model tells resizes apart (another resize moves its outputs by 1e-4 here);
    # the int8 model's output steps of 1/256 would hide that, but it is the one that ships.
    if flavour != "int8":
        client = client_for(tiny.files[flavour])
    reference = tflite.predict_tflite(tiny.files[flavour].read_bytes(),
                                      reference_pixels(tmp_path, tiny.requests))
    harness.assert_varies(reference)
    answers = []
    for data in tiny.requests:
        response = client.post("/predict?top_k=3", content=data,
                               headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
        answers.append(response.json())
    assert_same_answers(answers, reference)
    sha = __import__("hashlib").sha256(tiny.files[flavour].read_bytes()).hexdigest()
    assert {(a["model_version"], a["model_sha256"], a["format"]) for a in answers} == {
        ("1", sha, "tflite")}


def test_small_requests_of_a_fast_model_move_to_the_event_loop_with_the_same_answers(tiny):
    # The first requests run on a thread and are timed; once the model is known to be fast,
    # small images are classified on the event loop: the answers must not change.
    client = client_for(tiny.files["int8"])
    classifier = client.app.state.classifier
    model = client.app.state.service.current
    first = [client.post("/predict", content=data).json() for data in tiny.requests]
    assert classifier.typical[model.sha256] < INLINE_SECONDS
    threads = set()
    original = classifier._timed

    def timed(uploads, served):
        threads.add(threading.current_thread().name)
        return original(uploads, served)

    classifier._timed = timed
    again = [client.post("/predict", content=data).json() for data in tiny.requests]
    assert threads and not any(name.startswith("predict") for name in threads)
    assert all(one.pop("request_id") != two.pop("request_id") for one, two in zip(first, again))
    assert again == first
    # A slow model's requests stay on the executor's threads.
    classifier.typical[model.sha256] = 10 * INLINE_SECONDS
    client.post("/predict", content=tiny.requests[0])
    assert any(name.startswith("predict") for name in threads)


def test_multipart_requests_answer_each_image_in_order(client, tiny, tmp_path):
    reference = tflite.predict_tflite(tiny.files["int8"].read_bytes(),
                                      reference_pixels(tmp_path, tiny.requests[:4]))
    files = [("files", (f"img{i}.png", data, "image/png")) for i, data in enumerate(tiny.requests[:4])]
    response = client.post("/predict", files=files, params={"top_k": 99})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [image["filename"] for image in body["images"]] == [f"img{i}.png" for i in range(4)]
    assert_same_answers(body["images"], reference)


# What clients send with a raw image when nobody sets an image type: none at all, curl's
# `--data-binary` default, a text type, a JSON type.
UNTYPED = [None, "application/x-www-form-urlencoded", "text/plain; charset=utf-8",
           "application/json"]


@pytest.mark.parametrize("content_type", UNTYPED)
def test_a_raw_image_is_read_whatever_its_content_type(client, tiny, tmp_path, content_type):
    reference = tflite.predict_tflite(tiny.files["int8"].read_bytes(),
                                      reference_pixels(tmp_path, tiny.requests))
    # Bytes that a form parser would split or unescape reach the decoder untouched.
    assert any(b"&" in data or b"=" in data or b"%" in data for data in tiny.requests)
    headers = {} if content_type is None else {"content-type": content_type}
    answers = []
    for data in tiny.requests:
        response = client.post("/predict?top_k=3", content=data, headers=headers)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    assert_same_answers(answers, reference)


def test_top_k_is_bounded_by_the_classes_and_checked(client, tiny):
    post = lambda query: client.post(f"/predict{query}", content=tiny.requests[0],  # noqa: E731
                                     headers={"content-type": "application/octet-stream"})
    assert len(post("").json()["predictions"]) == 3
    assert len(post("?top_k=1").json()["predictions"]) == 1
    assert len(post("?top_k=50").json()["predictions"]) == len(CLASSES)
    for bad in ("0", "-2", "two"):
        response = post(f"?top_k={bad}")
        assert response.status_code == 400 and response.json()["error"] == "bad_top_k"


def _jpeg_with_exif_rotation() -> bytes:
    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[:, :10] = (255, 0, 0)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("name,data", [
    ("exif_rotated_jpeg", _jpeg_with_exif_rotation()),
    ("palette_with_transparency", _encoded(Image.new("P", (9, 7), 3), "PNG")),
    ("rgba", _encoded(Image.new("RGBA", (9, 7), (10, 200, 30, 100)), "PNG")),
    ("sixteen_bit_gray", _encoded(Image.fromarray(np.arange(80, dtype=np.uint16).reshape(8, 10) * 800), "PNG")),
    ("cmyk_jpeg", _encoded(Image.new("CMYK", (9, 7), (10, 200, 30, 5)), "JPEG")),
    ("gray_la", _encoded(Image.new("LA", (9, 7), (100, 50)), "PNG")),
])
def test_the_service_decodes_like_the_training_pipeline(tmp_path, name, data):
    from vgg_mobile.data.images import decode_rgb, load_rgb

    path = tmp_path / f"{name}.{'jpg' if 'jpeg' in name else 'png'}"
    path.write_bytes(data)
    np.testing.assert_array_equal(decode_rgb(data), load_rgb(path))
    np.testing.assert_array_equal(decode_rgb(io.BytesIO(data)), load_rgb(path))
    np.testing.assert_array_equal(dataset.resize_pixels(decode_rgb(data), SIZE).numpy(),
                                  dataset.decode_and_resize(str(path), SIZE).numpy())


@pytest.mark.parametrize("fmt,name", [("JPEG", "JPEG"), ("GIF", "GIF"), ("BMP", "BMP"),
                                      ("WEBP", "WebP"), ("TIFF", "TIFF")])
def test_each_image_format_training_reads_is_known_by_its_bytes(client, tiny, fmt, name):
    data = _encoded(Image.open(io.BytesIO(tiny.requests[3])).convert("RGB"), fmt)
    assert sniff_image(data) == name
    declared = client.post("/predict?top_k=3", content=data,
                           headers={"content-type": "application/octet-stream"})
    sniffed = client.post("/predict?top_k=3", content=data,
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert declared.status_code == 200, declared.text
    assert sniffed.status_code == 200, sniffed.text
    assert sniffed.json()["predictions"] == declared.json()["predictions"]


def _big_png(side: int) -> bytes:
    return _encoded(Image.new("RGB", (side, side), (0, 0, 0)), "PNG")


def _chunks(data: bytes, size: int = 4096):
    for start in range(0, len(data), size):
        yield data[start:start + size]


BAD_REQUESTS = {
    "not_an_image": (dict(content=b"hello, not a picture", headers={"content-type": "image/png"}),
                     400, "not_an_image"),
    "truncated": ("truncated", 400, "corrupt_image"),
    "decompression_bomb": (dict(content=_big_png(1200), headers={"content-type": "image/png"}),
                           413, "too_many_pixels"),
    "too_large_declared": (dict(content=os.urandom(70 * 1024), headers={"content-type": "image/png"}),
                           413, "upload_too_large"),
    "too_large_chunked": (dict(content=_chunks(os.urandom(70 * 1024)),
                               headers={"content-type": "image/png"}), 413, "upload_too_large"),
    "too_large_multipart": (dict(files=[("f", ("a.png", os.urandom(70 * 1024), "image/png"))]),
                            413, "upload_too_large"),
    "wrong_content_type": (dict(content=b"{}", headers={"content-type": "application/json"}),
                           415, "unsupported_media_type"),
    "no_content_type": (dict(content=b"abc"), 415, "unsupported_media_type"),
    "form_not_an_image": (dict(content=b"name=cat&file=cat.jpg", headers={
        "content-type": "application/x-www-form-urlencoded"}), 415, "unsupported_media_type"),
    "bytes_not_an_image": (dict(content=b"hello", headers={
        "content-type": "application/octet-stream"}), 400, "not_an_image"),
    # Sniffed as a PNG by its first bytes, then refused by the decoder like any broken PNG.
    "truncated_without_content_type": ("truncated_untyped", 400, "corrupt_image"),
    "empty_body": (dict(content=b"", headers={"content-type": "image/jpeg"}), 400, "empty_body"),
    "too_many_images": ("five", 413, "too_many_images"),
    "no_file_parts": (dict(content=b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\n'
                               b"hi\r\n--b--\r\n",
                           headers={"content-type": "multipart/form-data; boundary=b"}),
                      400, "no_images"),
    "broken_multipart": (dict(content=b"--x\r\nnonsense", headers={
        "content-type": "multipart/form-data"}), 400, "bad_multipart"),
    "empty_file_part": (dict(files=[("f", ("a.png", b"", "image/png"))]), 400, "empty_body"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_its_4xx_and_the_next_request_succeeds(client, tiny, case):
    request, status, reason = BAD_REQUESTS[case]
    if request == "truncated":
        request = dict(content=tiny.requests[0][:len(tiny.requests[0]) // 2],
                       headers={"content-type": "image/png"})
    elif request == "truncated_untyped":
        request = dict(content=tiny.requests[0][:len(tiny.requests[0]) // 2])
    elif request == "five":
        request = dict(files=[("f", (f"{i}.png", tiny.requests[0], "image/png")) for i in range(5)])
    before = metric(client, "vgg_mobile_errors_total", reason=reason)
    response = client.post("/predict", **request)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == reason and "\n" not in body["detail"] and body["detail"]
    assert metric(client, "vgg_mobile_errors_total", reason=reason) == before + 1
    good = client.post("/predict", content=tiny.requests[1], headers={"content-type": "image/png"})
    assert good.status_code == 200 and good.json()["predictions"]


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/nowhere").json()["error"] == "not_found"
    response = client.get("/predict")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_the_root_names_the_service_its_model_and_every_endpoint(client):
    response = client.get("/")
    assert response.status_code == 200, response.text
    root = response.json()
    assert root["service"] == TITLE and root["model_version"] == "1"
    assert root["model"]["name"] == "colours" and root["model"]["format"] == "tflite"
    listed = {(endpoint["method"], endpoint["path"]) for endpoint in root["endpoints"]}
    assert {("POST", "/predict"), ("GET", "/"), ("GET", "/health"), ("GET", "/model"),
            ("GET", "/metrics"), ("POST", "/admin/reload"), ("POST", "/admin/rollback"),
            ("GET", "/openapi.json"), ("GET", "/docs")} <= listed
    for method, path in listed:
        if method == "GET":
            assert client.get(path).status_code == 200, path


def _refs(value):
    if isinstance(value, dict):
        if "$ref" in value:
            yield value["$ref"]
        for item in value.values():
            yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def test_openapi_spec_documents_predict(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    spec = response.json()
    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == TITLE
    assert {"/", "/predict", "/health", "/model", "/metrics", "/admin/reload",
            "/admin/rollback"} <= set(spec["paths"])
    predict = spec["paths"]["/predict"]["post"]
    assert {"image/*", "application/octet-stream", "multipart/form-data"} <= set(
        predict["requestBody"]["content"])
    assert [(p["name"], p["in"], p["schema"]["type"]) for p in predict["parameters"]] == [
        ("top_k", "query", "integer")]
    assert {"200", "400", "413", "415"} <= set(predict["responses"])
    # The reasons each status names are the ones the service answers with it.
    for status, reasons in {"400": ("not_an_image", "corrupt_image", "empty_body", "bad_top_k"),
                            "413": ("upload_too_large", "too_many_pixels", "too_many_images"),
                            "415": ("unsupported_media_type",)}.items():
        assert all(reason in predict["responses"][status]["description"] for reason in reasons)
    schemas = spec["components"]["schemas"]
    assert {"PredictAnswer", "BatchAnswer", "ErrorAnswer"} <= set(schemas)
    assert all(ref.split("/")[-1] in schemas for ref in _refs(spec))
    assert set(schemas["PredictAnswer"]["properties"]) == set(client.post(
        "/predict", content=png_bytes(colour_images(1, seed=3)[0][0])).json())


def test_docs_page_loads_nothing_from_anywhere(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    for loads_something in ("<script", "<link", "<img", "<iframe", "src=", "@import", "url("):
        assert loads_something not in page.lower(), loads_something
    # The only addresses are the service's own, in the curl examples.
    urls = re.findall(r"(?:https?:)?//[^\s\"'<>&]+", page)
    assert urls and all(url.startswith("http://testserver/") for url in urls), urls
    spec = client.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method in methods:
            assert f"{method.upper()}</span> <code>{html.escape(path)}</code>" in page
    assert "curl -s --data-binary @photo.jpg &#x27;http://testserver/predict?top_k=3&#x27;" in page
    assert "<code>top_k</code>" in page and "<code>unsupported_media_type</code>" in page


def _strings(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def assert_no_absolute_path(answer, *roots):
    found = [text for text in _strings(answer) if text.startswith("/")
             or re.match(r"[A-Za-z]:[\\/]", text) or any(root in text for root in roots)]
    assert not found, found


def test_model_shows_no_absolute_path(tiny, tmp_path):
    deploy = tmp_path / "deploy"
    export = shutil.copytree(tiny.export_dir, deploy / "export")
    runs, images = tmp_path / "runs", tmp_path / "images"
    manifest = json.loads((export / "manifest.json").read_text())
    # What `vgg-mobile convert` records, as resolved paths of the machine that ran it, and a
    # record of a run made on Windows.
    manifest.update({
        "parent": str((runs / "student_qat").resolve()),
        "command": ["/opt/venv/bin/vgg-mobile", "convert", str(runs / "student_qat"), "--out",
                    str(export), f"--data={images}"],
        "data": {"path": str(images.resolve()), "verification_split": "val",
                 "skipped_files": [{"path": str(images / "red" / "x.png"), "problem":
                                    f"{images / 'red' / 'x.png'}: not an image (Pillow cannot "
                                    "identify the format)"}]},
        "teacher": {"run": "C:\\Users\\me\\runs\\teacher", "weights": f"file://{tmp_path}/w.h5"},
    })
    (export / "manifest.json").write_text(json.dumps(manifest))
    roots = (str(tmp_path), str(tmp_path.resolve()))
    with pytest.raises(AssertionError):  # the check finds what the manifest holds
        assert_no_absolute_path(manifest, *roots)

    client = client_for(export)
    model = client.get("/model").json()
    assert_no_absolute_path(model, *roots)
    assert (model["path"], model["source"]) == ("colours_int8.tflite", "export")
    recorded = model["manifest"]
    assert recorded["parent"] == "student_qat" and recorded["data"]["path"] == "images"
    assert recorded["command"] == ["vgg-mobile", "convert", "student_qat", "--out", ".",
                                   "--data=images"]
    assert recorded["data"]["skipped_files"] == [{"path": "x.png", "problem": "x.png: not an "
                                                  "image (Pillow cannot identify the format)"}]
    assert recorded["teacher"] == {"run": "teacher", "weights": "w.h5"}
    assert recorded["artifacts"] == manifest["artifacts"] and recorded["classes"] == list(CLASSES)

    replace_file(export / "colours_int8.tflite", tiny.files["v2_int8"].read_bytes())
    assert client.post("/admin/reload").json()["previous"]["path"] == "colours_int8.tflite"
    model = client.get("/model").json()
    assert_no_absolute_path(model, *roots)
    assert model["previous"]["path"] == "colours_int8.tflite"
    # A pipeline output folder: the model's path is relative to it.
    model = client_for(deploy).get("/model").json()
    assert_no_absolute_path(model, *roots)
    assert (model["path"], model["source"]) == ("export/colours_int8.tflite", "deploy")


def test_health_and_model_describe_what_serves(client, tiny):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["model_version"] == "1"
    model = client.get("/model").json()
    assert model["classes"] == list(CLASSES) and model["input_size"] == [SIZE, SIZE]
    assert model["format"] == "tflite" and model["path"] == "colours_int8.tflite"
    assert model["source"] == "colours_int8.tflite"
    assert model["metadata"]["name"] == "colours" and model["loaded_at"]
    assert model["previous"] is None and model["rollback_available"] is False


def test_metrics_count_requests_images_classes_and_latency(client, tiny):
    ok = dict(endpoint="/predict", status="200")
    before = {"requests": metric(client, "vgg_mobile_requests_total", **ok),
              "images": metric(client, "vgg_mobile_images_predicted_total"),
              "latency": metric(client, "vgg_mobile_request_seconds_count", endpoint="/predict")}
    labels = [client.post("/predict", content=data, headers={"content-type": "image/png"}
                          ).json()["predictions"][0]["label"] for data in tiny.requests]
    per_class_before = {c: metric(client, "vgg_mobile_predictions_total", label=c) for c in CLASSES}
    client.post("/predict", files=[("f", ("a.png", tiny.requests[0], "image/png")),
                                   ("f", ("b.png", tiny.requests[1], "image/png"))])
    n = len(tiny.requests)
    assert metric(client, "vgg_mobile_requests_total", **ok) == before["requests"] + n + 1
    assert metric(client, "vgg_mobile_images_predicted_total") == before["images"] + n + 2
    assert metric(client, "vgg_mobile_request_seconds_count", endpoint="/predict") >= before["latency"] + n + 1
    assert sum(metric(client, "vgg_mobile_predictions_total", label=c) - per_class_before[c]
               for c in CLASSES) == 2
    assert metric(client, "vgg_mobile_predictions_total", label=labels[0]) >= 1
    assert metric(client, "vgg_mobile_model_info", version="1", format="tflite") == 1
    assert metric(client, "vgg_mobile_model_loads_total", result="ok") == 1


def test_admin_endpoints_are_loopback_only_without_a_token(tiny):
    remote = client_for(tiny.files["int8"], loopback=False)
    response = remote.post("/admin/reload")
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    assert remote.post("/admin/rollback").status_code == 403
    local = TestClient(remote.app, client=("127.0.0.1", 5))
    assert local.post("/admin/reload").json()["changed"] is False
    # A proxy on this machine makes every client look local: a forwarded request is refused.
    assert local.post("/admin/reload", headers={"x-forwarded-for": "203.0.113.9"}).status_code == 403
    assert TestClient(remote.app, client=("::1", 5)).post("/admin/reload").status_code == 200


def test_admin_endpoints_need_the_token_when_one_is_set(tiny):
    remote = client_for(tiny.files["int8"], loopback=False, admin_token=TOKEN)
    assert remote.post("/admin/reload").status_code == 401
    assert remote.post("/admin/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
    response = remote.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.json()["changed"] is False
    assert metric(remote, "vgg_mobile_errors_total", reason="unauthorized") == 2


def test_reload_swaps_in_the_new_version_and_rollback_restores_the_old(tiny, tmp_path):
    path = tmp_path / "model.tflite"
    shutil.copy(tiny.files["int8"], path)
    client = client_for(path)
    v1 = client.get("/health").json()
    assert client.post("/admin/rollback").status_code == 409
    replace_file(path, tiny.files["v2_int8"].read_bytes())
    response = client.post("/admin/reload")
    assert response.status_code == 200, response.text
    v2 = client.get("/health").json()
    assert (v1["model_version"], v2["model_version"]) == ("1", "2")
    assert v2["model_sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    model = client.get("/model").json()
    assert model["previous"]["sha256"] == v1["model_sha256"] and model["rollback_available"]
    answer = client.post("/predict", content=tiny.requests[0], headers={"content-type": "image/png"})
    assert answer.json()["model_sha256"] == v2["model_sha256"]

    back = client.post("/admin/rollback")
    assert back.status_code == 200 and back.json()["model"]["sha256"] == v1["model_sha256"]
    assert client.get("/health").json()["model_sha256"] == v1["model_sha256"]
    answer = client.post("/predict", content=tiny.requests[0], headers={"content-type": "image/png"})
    assert answer.json()["model_version"] == "1"
    assert client.post("/admin/rollback").json()["model"]["sha256"] == v2["model_sha256"]
    assert metric(client, "vgg_mobile_model_rollbacks_total", result="ok") == 2
    assert metric(client, "vgg_mobile_model_info", sha256=v2["model_sha256"]) == 1
    assert metric(client, "vgg_mobile_model_info", sha256=v1["model_sha256"]) == 0


@pytest.mark.parametrize("broken", ["truncated", "garbage", "wrong_labels"])
def test_a_broken_new_model_is_refused_and_the_old_one_keeps_serving(tiny, tmp_path, broken):
    folder = shutil.copytree(tiny.export_dir, tmp_path / "export")
    path = folder / "colours_int8.tflite"
    client = client_for(folder)
    before = client.get("/health").json()
    good = path.read_bytes()
    if broken == "truncated":
        replace_file(path, good[:len(good) // 2])
    elif broken == "garbage":
        replace_file(path, b"TFL3" + os.urandom(5000))
    else:
        # Labels and manifest agree with each other, not with the model's three outputs.
        (folder / "labels.txt").write_text("red\ngreen\nblue\nviolet\n")
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.update(classes=["red", "green", "blue", "violet"], num_classes=4)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    response = client.post("/admin/reload")
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "model_refused" and str(path) in response.json()["detail"]
    assert client.get("/health").json() == before
    answer = client.post("/predict", content=tiny.requests[0], headers={"content-type": "image/png"})
    assert answer.status_code == 200 and answer.json()["model_sha256"] == before["model_sha256"]
    assert metric(client, "vgg_mobile_model_loads_total", result="refused") == 1
    assert client.get("/model").json()["rollback_available"] is False


def test_onnx_predictions_equal_onnx_runtime_on_the_same_pixels(tiny, tmp_path):
    for flavour in ("float32", "int8"):
        client = client_for(tiny.export_dir, choice=ModelChoice("onnx", flavour))
        model = client.get("/model").json()
        assert (model["format"], model["flavour"], model["classes"]) == ("onnx", flavour, list(CLASSES))
        content = (tiny.export_dir / f"colours_{flavour}.onnx").read_bytes()
        reference = onnx.predict_onnx(content, reference_pixels(tmp_path, tiny.requests))
        harness.assert_varies(reference)
        answers = [client.post("/predict", content=data, headers={"content-type": "image/png"}).json()
                   for data in tiny.requests]
        assert_same_answers(answers, reference)
        assert answers[0]["format"] == "onnx"


def test_a_bare_onnx_file_serves_with_the_labels_in_its_metadata(tiny):
    client = client_for(tiny.files["onnx_float32"])
    model = client.get("/model").json()
    assert model["classes"] == list(CLASSES) and model["version"] == "1"
    assert model["metadata"]["name"] == "colours" and model["input_size"] == [SIZE, SIZE]
    pixels = colour_images(1, seed=3)[0]
    answer = client.post("/predict", content=png_bytes(pixels[0]), headers={"content-type": "image/png"})
    assert answer.json()["predictions"][0]["label"] == "red"


@pytest.mark.parametrize("manifest", ["[" * 100_000 + "]" * 100_000,
                                      None])  # None: a manifest whose "input" is not an object
def test_a_hostile_export_manifest_is_refused_naming_the_file(tiny, tmp_path, manifest):
    from vgg_mobile.core.errors import BadInputError
    from vgg_mobile.serving.models import load_model

    folder = shutil.copytree(tiny.export_dir, tmp_path / "export")
    if manifest is None:
        data = json.loads((folder / "manifest.json").read_text())
        manifest = json.dumps({**data, "input": "big"})
    (folder / "manifest.json").write_text(manifest)
    try:
        model = load_model(folder)
    except BadInputError as err:
        assert str(folder / "manifest.json") in str(err) and len(str(err)) < 1000
    else:
        # "input": "big" names no size to check: the model's own input shape serves.
        assert list(model.input_size) == json.loads(
            (tiny.export_dir / "manifest.json").read_text())["input"]["size"]
