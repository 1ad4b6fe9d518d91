"""The prediction service through FastAPI's TestClient: answers equal LiteRT's and ONNX
Runtime's on the same pixels, every bad input gets its 4xx and the next request still works,
the metrics move, reload and rollback swap whole models."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import harness
from serving_models import CLASSES, SIZE, colour_images, png_bytes, replace_file
from converters import onnx, tflite
from vgg_mobile.data import dataset
from vgg_mobile.serving.app import ServeConfig, create_app
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


def test_multipart_requests_answer_each_image_in_order(client, tiny, tmp_path):
    reference = tflite.predict_tflite(tiny.files["int8"].read_bytes(),
                                      reference_pixels(tmp_path, tiny.requests[:4]))
    files = [("files", (f"img{i}.png", data, "image/png")) for i, data in enumerate(tiny.requests[:4])]
    response = client.post("/predict", files=files, params={"top_k": 99})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [image["filename"] for image in body["images"]] == [f"img{i}.png" for i in range(4)]
    assert_same_answers(body["images"], reference)


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


def test_health_and_model_describe_what_serves(client, tiny):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["model_version"] == "1"
    model = client.get("/model").json()
    assert model["classes"] == list(CLASSES) and model["input_size"] == [SIZE, SIZE]
    assert model["format"] == "tflite" and model["path"] == str(tiny.files["int8"])
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
        (folder / "labels.txt").write_text("red\ngreen\nblue\nviolet\n")
        manifest = (folder / "manifest.json").read_text().replace('"blue"', '"blue", "violet"')
        (folder / "manifest.json").write_text(manifest)
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
