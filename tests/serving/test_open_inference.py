"""The Open Inference Protocol (KServe v2) routes on real models: image files and pixel tensors
answer what `/predict` answers on the same images, metadata and health have the protocol's
shapes, every bad request is refused in the protocol's `{"error"}` naming its field, and a
model repository's version is the one in the route."""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import harness
from serving_models import CLASSES, SIZE, colour_images, metric, png_bytes
from vgg_mobile.data.images import decode_rgb
from vgg_mobile.serving.app import ServeConfig, create_app
from vgg_mobile.serving.models import ModelChoice

MODEL = "/v2/models/colours"
INFER = f"{MODEL}/infer"
LIMITS = dict(max_upload_bytes=64 * 1024, max_images=4, max_pixels=1_000_000,
              max_request_pixels=2_000_000)


def client_for(artifact, **config) -> TestClient:
    return TestClient(create_app(ServeConfig(artifact=artifact, **config)))


@pytest.fixture(scope="module")
def client(tiny):
    return client_for(tiny.files["int8"], **LIMITS)



def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def images_request(images: list[bytes], **fields) -> dict:
    return {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                        "data": [b64(data) for data in images]}], **fields}


def pixels_request(pixels: np.ndarray, datatype: str = "UINT8", nested: bool = False) -> dict:
    values = pixels.astype(np.float32 if datatype == "FP32" else np.uint8)
    return {"inputs": [{"name": "pixels", "shape": list(pixels.shape), "datatype": datatype,
                        "data": values.tolist() if nested else values.reshape(-1).tolist()}]}


def infer(client, request, path: str = INFER) -> dict:
    response = client.post(path, json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-model-version"] == body["model_version"]
    return body


def output(answer: dict, name: str):
    (tensor,) = [t for t in answer["outputs"] if t["name"] == name]
    return tensor


def probabilities(answer: dict) -> np.ndarray:
    tensor = output(answer, "probabilities")
    assert tensor["datatype"] == "FP32"
    return np.array(tensor["data"], np.float64).reshape(tensor["shape"])


def predict(client, image: bytes) -> np.ndarray:
    """`/predict`'s probabilities of one image file, in class order."""
    response = client.post("/predict?top_k=99", content=image,
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    got = {p["label"]: p["probability"] for p in response.json()["predictions"]}
    return np.array([got[c] for c in CLASSES])


def test_image_files_answer_what_predict_answers(client, tiny):
    jpeg = jpeg_bytes(colour_images(3, seed=40, size=40)[0][1])
    images = tiny.requests[:4]  # PNGs of 32, 48, 20 and 64 pixels
    expected = np.stack([predict(client, data) for data in images])
    harness.assert_varies(expected)
    answer = infer(client, images_request(images, id="req-7", parameters={"priority": 1}))
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("colours", "1",
                                                                            "req-7")
    probs = probabilities(answer)
    assert output(answer, "probabilities")["shape"] == [4, len(CLASSES)]
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    label = output(answer, "label")
    assert (label["datatype"], label["shape"]) == ("BYTES", [4])
    assert label["data"] == [CLASSES[i] for i in expected.argmax(axis=1)]
    # A JPEG, as {"b64": ...} items (TensorFlow Serving's clients) in shape [n, 1], nested.
    request = {"inputs": [{"name": "x", "shape": [2, 1], "datatype": "BYTES",
                           "data": [[{"b64": b64(jpeg)}], [{"b64": b64(images[1])}]]}]}
    np.testing.assert_allclose(probabilities(infer(client, request)),
                               [predict(client, jpeg), expected[1]], atol=1e-6)


@pytest.mark.parametrize("datatype,nested", [("UINT8", False), ("UINT8", True), ("FP32", False)])
def test_pixels_answer_what_the_decoded_image_answers(client, datatype, nested):
    # At the model's input size (nothing to resize) and smaller (resized as /predict resizes).
    for side in (SIZE, 24):
        pixels = colour_images(3, seed=50 + side, size=side)[0]
        expected = np.stack([predict(client, png_bytes(image)) for image in pixels])
        harness.assert_varies(expected)
        decoded = np.stack([decode_rgb(png_bytes(image)) for image in pixels])
        np.testing.assert_array_equal(decoded, pixels)
        answer = infer(client, pixels_request(decoded, datatype, nested))
        np.testing.assert_allclose(probabilities(answer), expected, atol=1e-6)


def test_an_onnx_model_answers_the_same_protocol(tiny):
    client = client_for(tiny.export_dir, choice=ModelChoice("onnx", "int8"))
    assert client.get(MODEL).json()["platform"] == "onnx_onnxv1"
    answer = infer(client, images_request(tiny.requests[:3]))
    np.testing.assert_allclose(probabilities(answer),
                               [predict(client, data) for data in tiny.requests[:3]], atol=1e-6)


def test_metadata_and_health_have_the_protocol_shapes(client):
    for path, expected in [
            ("/v2", {"name": "vgg-mobile", "version": client.get("/").json()["service_version"],
                     "extensions": ["binary_tensor_data"]}),
            ("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True}),
            (f"{MODEL}/ready", {"name": "colours", "ready": True}),
            (f"{MODEL}/versions/1/ready", {"name": "colours", "ready": True})]:
        response = client.get(path)
        assert response.status_code == 200 and response.json() == expected, path
        assert response.headers["x-model-version"] == "1", path
    metadata = {"name": "colours", "versions": ["1"], "platform": "litert_tflite",
                "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, 3]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32",
                             "shape": [-1, len(CLASSES)]},
                            {"name": "label", "datatype": "BYTES", "shape": [-1]}]}
    assert client.get(MODEL).json() == metadata
    assert client.get(f"{MODEL}/versions/1").json() == metadata


def test_the_versioned_route_and_the_outputs_asked_for(client, tiny):
    request = images_request(tiny.requests[:2], outputs=[{"name": "label"}])
    answer = infer(client, request, f"{MODEL}/versions/1/infer")
    assert [t["name"] for t in answer["outputs"]] == ["label"] and "id" not in answer
    request["outputs"] = [{"name": "label"}, {"name": "probabilities", "parameters": {}}]
    assert [t["name"] for t in infer(client, request)["outputs"]] == ["label", "probabilities"]


@pytest.mark.parametrize("method,path,named", [
    ("get", "/v2/models/dogs", "'dogs'"), ("get", "/v2/models/dogs/ready", "'dogs'"),
    ("post", "/v2/models/dogs/infer", "'dogs'"),
    ("get", f"{MODEL}/versions/7", "'7'"), ("get", f"{MODEL}/versions/7/ready", "'7'"),
    ("post", f"{MODEL}/versions/7/infer", "'7'"), ("post", "/v2/models/dogs/versions/1/infer",
                                                  "'dogs'")])
def test_an_unknown_model_or_version_is_a_404(client, tiny, method, path, named):
    kwargs = {"json": images_request(tiny.requests[:1])} if method == "post" else {}
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == 404, response.text
    assert list(response.json()) == ["error"] and named in response.json()["error"]
    assert response.headers["x-model-version"] == "1"


def _pixels(shape, values=None, datatype="UINT8") -> dict:
    data = [7] * int(np.prod(shape)) if values is None else values
    return {"inputs": [{"name": "pixels", "shape": shape, "datatype": datatype, "data": data}]}


def _with_value(value, datatype="UINT8") -> dict:
    data = [10] * (2 * 2 * 3)
    data[5] = value
    return _pixels([1, 2, 2, 3], data, datatype)


def _json(request) -> dict:
    return dict(content=json.dumps(request), headers={"content-type": "application/json"})


def _chunks(data: bytes, size: int = 4096):
    for start in range(0, len(data), size):
        yield data[start:start + size]


BIG = json.dumps(_pixels([1, 100, 100, 3])).encode()  # 90 KB of JSON: over the 64 KiB limit
BAD_REQUESTS = {
    "unknown_datatype": (_json({"inputs": [{"name": "p", "shape": [1, 2, 2, 3],
                                            "datatype": "uint8", "data": [1] * 12}]}),
                         400, "inputs[0].datatype", "'uint8'"),
    "datatype_not_taken": (_json(_pixels([1, 2, 2, 3], datatype="INT64")), 400,
                           "inputs[0].datatype", "INT64"),
    "data_shorter_than_shape": (_json(_pixels([1, 2, 2, 3], [1] * 10)), 400, "inputs[0].data",
                                "10 values"),
    "nested_data_of_another_shape": (_json(_pixels([1, 2, 2, 3], [[[[1, 2]] * 2] * 2])), 400,
                                     "inputs[0].data", "[1, 2, 2, 2]"),
    "nested_rows_against_shape": (_json(_pixels([1, 2, 2, 3], [[[[1, 2, 3]] * 2] * 2] * 2)),
                                  400, "inputs[0].data", "2 nested rows"),
    "ragged_data": (_json(_pixels([1, 2, 2, 3], [[[[1, 2, 3], [4, 5]]] * 2])), 400,
                    "inputs[0].data", "shape [1, 2, 2, 3]"),
    "shape_not_an_image_batch": (_json(_pixels([1, 2, 2])), 400, "inputs[0].shape", "[1, 2, 2]"),
    "shape_not_numbers": (_json(_pixels(["1", 2, 2, 3], [1] * 12)), 400, "inputs[0].shape",
                          '["1", 2, 2, 3]'),
    "bytes_count_against_shape": (_json({"inputs": [{"name": "i", "shape": [2],
                                                     "datatype": "BYTES",
                                                     "data": [b64(b"\x89PNG")]}]}),
                                  400, "inputs[0].data", "1 elements"),
    "too_many_images": (_json({"inputs": [{"name": "i", "shape": [5], "datatype": "BYTES",
                                           "data": ["AAAA"] * 5}]}), 413, "inputs[0].shape",
                        "--max-images"),
    "too_many_pixel_images": (_json(_pixels([5, 1, 1, 3])), 413, "inputs[0].shape",
                              "--max-images"),
    "too_many_pixels": (_json(_pixels([1, 1001, 1000, 3], [1])), 413, "inputs[0].shape",
                        "--max-pixels"),
    "too_many_pixels_in_request": (_json(_pixels([3, 1000, 1000, 3], [1])), 413,
                                   "inputs[0].shape", "--max-request-pixels"),
    "oversized_body": (dict(content=BIG), 413, "65,536 bytes", "--max-upload-bytes"),
    "oversized_chunked_body": (dict(content=_chunks(BIG)), 413, "65,536 bytes",
                               "--max-upload-bytes"),
    "not_json": (dict(content=b"inputs=1"), 400, "not JSON", "char 0"),
    "compressed": (dict(content=b"\x1f\x8b\x08\x00", headers={"content-encoding": "gzip"}),
                   415, "Content-Encoding", "'gzip'"),
    "empty_body": (dict(content=b""), 400, "empty", "inputs"),
    "json_not_an_object": (_json([1, 2]), 400, "JSON object", "a list"),
    "nested_too_deeply": (dict(content=b"[" * 30_000 + b"]" * 30_000), 400, "not JSON",
                          "nested"),
    "nan": (dict(content=json.dumps(_with_value(float("nan")))), 400, "element 5",
            "not a finite number"),
    "infinity": (_json(_with_value(1e999, "FP32")), 400, "element 5", "not a finite number"),
    "over_255": (_json(_with_value(256)), 400, "element 5", "outside [0, 255]"),
    "negative": (_json(_with_value(-0.5, "FP32")), 400, "element 5", "-0.5"),
    "fraction_as_uint8": (_json(_with_value(12.5)), 400, "element 5", "Received: 12.5"),
    "text_in_data": (_json(_with_value("abc")), 400, "inputs[0].data", "'abc'"),
    "bad_base64": (_json({"inputs": [{"name": "i", "shape": [1], "datatype": "BYTES",
                                      "data": ["not base64!"]}]}), 400, "inputs[0].data[0]",
                   "base64"),
    "base64_of_no_image": (_json({"inputs": [{"name": "i", "shape": [1], "datatype": "BYTES",
                                              "data": [b64(b"hello")]}]}), 400,
                           "inputs[0].data[0]", "not an image"),
    "two_inputs": (_json({"inputs": [_pixels([1, 2, 2, 3])["inputs"][0]] * 2}), 400, "inputs",
                   "2 inputs"),
    "no_inputs": (_json({"id": "1"}), 400, "inputs", "nothing"),
    "unknown_output": (_json({**_pixels([1, 2, 2, 3]), "outputs": [{"name": "logits"}]}), 400,
                       "outputs[0].name", "'logits'"),
    "id_not_a_string": (_json({**_pixels([1, 2, 2, 3]), "id": 42}), 400, "id", "42"),
    "bad_header_length": (dict(content=b"{}", headers={"inference-header-content-length":
                                                       "99"}), 400,
                          "Inference-Header-Content-Length", "'99'"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_are_refused_naming_the_field_and_the_value(client, tiny, case):
    request, status, field, value = BAD_REQUESTS[case]
    counted = dict(endpoint="/v2/models/{name}/infer", status=str(status))
    before = metric(client, "vgg_mobile_requests_total", **counted)
    response = client.post(INFER, **request)
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    assert field in body["error"] and value in body["error"], body["error"]
    assert response.headers["x-model-version"] == "1"
    assert metric(client, "vgg_mobile_requests_total", **counted) == before + 1
    infer(client, images_request(tiny.requests[:1]))


def test_requests_images_and_refusals_are_counted(client, tiny):
    ok = dict(endpoint="/v2/models/{name}/infer", status="200")
    before = (metric(client, "vgg_mobile_requests_total", **ok),
              metric(client, "vgg_mobile_images_predicted_total"),
              sum(metric(client, "vgg_mobile_predictions_total", label=c) for c in CLASSES),
              metric(client, "vgg_mobile_errors_total", reason="model_not_found"))
    infer(client, images_request(tiny.requests[:3]))
    client.post("/v2/models/dogs/infer", json=images_request(tiny.requests[:1]))
    assert metric(client, "vgg_mobile_requests_total", **ok) == before[0] + 1
    assert metric(client, "vgg_mobile_images_predicted_total") == before[1] + 3
    assert sum(metric(client, "vgg_mobile_predictions_total", label=c)
               for c in CLASSES) == before[2] + 3
    assert metric(client, "vgg_mobile_errors_total", reason="model_not_found") == before[3] + 1


def binary_body(request: dict, tensor: bytes) -> dict:
    """A request of Triton's binary tensor data extension: the JSON, then the tensor's bytes."""
    head = json.dumps(request).encode()
    return dict(content=head + tensor, headers={"content-type": "application/octet-stream",
                                                "inference-header-content-length": str(len(head))})


def split_binary(response) -> tuple[dict, bytes]:
    length = int(response.headers["inference-header-content-length"])
    return json.loads(response.content[:length]), response.content[length:]


def test_the_binary_tensor_data_extension_both_ways(client, tiny):
    pixels = colour_images(3, seed=60)[0]
    expected = probabilities(infer(client, pixels_request(pixels)))
    request = {"inputs": [{"name": "pixels", "shape": list(pixels.shape), "datatype": "UINT8",
                           "parameters": {"binary_data_size": pixels.nbytes}}],
               "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                           {"name": "label"}]}
    response = client.post(INFER, **binary_body(request, pixels.tobytes()))
    assert response.status_code == 200, response.text
    answer, data = split_binary(response)
    tensor = output(answer, "probabilities")
    assert tensor["parameters"] == {"binary_data_size": len(data)} and "data" not in tensor
    np.testing.assert_array_equal(np.frombuffer(data, "<f4").reshape(tensor["shape"]),
                                  expected.astype(np.float32))
    assert output(answer, "label")["data"] == [CLASSES[i] for i in expected.argmax(axis=1)]

    # Image files: each a 4-byte little-endian length, then its bytes; all outputs binary.
    files = tiny.requests[:2]
    tensor = b"".join(struct.pack("<I", len(data)) + data for data in files)
    request = {"parameters": {"binary_data_output": True},
               "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                           "parameters": {"binary_data_size": len(tensor)}}]}
    response = client.post(INFER, **binary_body(request, tensor))
    assert response.status_code == 200, response.text
    answer, data = split_binary(response)
    sizes = [t["parameters"]["binary_data_size"] for t in answer["outputs"]]
    probs = np.frombuffer(data[:sizes[0]], "<f4").reshape(2, len(CLASSES))
    np.testing.assert_allclose(probs, [predict(client, f) for f in files], atol=1e-6)
    labels, offset = [], sizes[0]
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        labels.append(data[offset + 4:offset + 4 + length].decode())
        offset += 4 + length
    assert labels == [CLASSES[i] for i in probs.argmax(axis=1)]

    # Bytes that no input claims, or fewer than it claims, are refused.
    request["inputs"][0]["parameters"]["binary_data_size"] = len(tensor) + 1
    response = client.post(INFER, **binary_body(request, tensor))
    assert response.status_code == 400 and "binary_data_size" in response.json()["error"]


def test_a_model_repository_serves_the_version_in_the_route(tiny, tmp_path):
    repository = tmp_path / "colours"
    shutil.copytree(tiny.export_dir, repository / "3")
    client = client_for(repository, poll_seconds=0)
    assert client.get(MODEL).json()["versions"] == ["3"]
    assert client.get(f"{MODEL}/versions/3/ready").json() == {"name": "colours", "ready": True}
    answer = infer(client, images_request(tiny.requests[:2]), f"{MODEL}/versions/3/infer")
    assert answer["model_version"] == "3"
    np.testing.assert_allclose(probabilities(answer),
                               [predict(client, data) for data in tiny.requests[:2]], atol=1e-6)
    response = client.post(f"{MODEL}/versions/1/infer", json=images_request(tiny.requests[:1]))
    assert response.status_code == 404 and "'3'" in response.json()["error"]


def test_the_spec_documents_infer(client):
    spec = client.get("/openapi.json").json()
    for path in (INFER.replace("colours", "{name}"), "/v2/models/{name}/versions/{version}/infer"):
        operation = spec["paths"][path]["post"]
        assert {"application/json", "application/octet-stream"} <= set(
            operation["requestBody"]["content"])
        assert {"200", "400", "404", "413"} <= set(operation["responses"])
    assert {"/v2", "/v2/health/live", "/v2/health/ready"} <= set(spec["paths"])
