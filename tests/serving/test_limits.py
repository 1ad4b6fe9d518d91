"""The service under misuse: connections that send nothing or trickle, accept errors when
descriptors run out, images whose decoding costs far more than their bytes, uploads cut short,
files in formats training does not read, clients that hang up, models that fail only when run.
Each case is refused with its own 4xx (or a 503 with Retry-After), and the server keeps
answering."""

from __future__ import annotations

import http.client
import io
import json
import resource
import socket
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from serving_models import (call, colour_images, multipart, onnx_failing_when_run, png16_rgba,
                            png_1_bit, replace_file, serving)
from vgg_mobile.serving.app import ServeConfig, create_app


def client_for(artifact, **config) -> TestClient:
    return TestClient(create_app(ServeConfig(artifact=artifact, **config)),
                      client=("127.0.0.1", 50000))


def errors(address_or_client, reason: str) -> float:
    if isinstance(address_or_client, TestClient):
        text = address_or_client.get("/metrics").text
    else:
        connection = http.client.HTTPConnection(*address_or_client, timeout=30)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vgg_mobile_errors_total" and sample.labels.get("reason") == reason:
                return sample.value
    return 0.0


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (reading whatever it sends first)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True


def test_idle_and_trickling_connections_are_closed_and_the_server_keeps_answering(tiny):
    app = create_app(ServeConfig(artifact=tiny.export_dir, header_timeout=1, body_timeout=1.5))
    with serving(app) as address:
        idle = socket.create_connection(address)
        trickle = socket.create_connection(address)
        slow_body = socket.create_connection(address)
        slow_body.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                          b"Content-Length: 100000\r\n\r\n" + tiny.requests[0][:100])
        began = time.monotonic()
        cut = False
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":  # a byte at a time: too slow
            try:
                trickle.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            time.sleep(0.1)
        # Each is closed by its own deadline (1 s, 1 s, 1.5 s), well before 10 s.
        assert closed_within(idle, 10) and (cut or closed_within(trickle, 10))
        assert closed_within(slow_body, 10)
        assert time.monotonic() - began < 9
        status, body = call(address, "GET", "/health")
        assert status == 200 and body["status"] == "ok"
        deadline = time.monotonic() + 10
        while errors(address, "body_timeout") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert errors(address, "body_timeout") == 1 and errors(address, "internal") == 0
        for sock in (idle, trickle, slow_body):
            sock.close()


def test_when_descriptors_run_out_accept_errors_are_logged_once_and_clients_get_in(tiny):
    # A server allowed 256 open files, and 400 connections that never send anything: before,
    # asyncio logged each failed accept (thousands a second) and nobody else got in.
    limit = 256

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    process = subprocess.Popen(
        [sys.executable, "-m", "vgg_mobile", "serve-model", str(tiny.export_dir), "--port", "0",
         "--no-access-log", "--header-timeout", "60"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, preexec_fn=low_limit)
    idle: list[socket.socket] = []
    try:
        line = process.stdout.readline().decode()
        assert " at http://" in line, process.stderr.read()[-3000:]
        port = int(line.split(" at http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        address = ("127.0.0.1", port)
        for _ in range(400):
            idle.append(socket.create_connection(address))
        time.sleep(3)  # the server is out of descriptors for a while
        status, body = call(address, "GET", "/health")
        assert status == 200 and body["status"] == "ok"
        status, _ = call(address, "POST", "/predict", tiny.requests[1], {"content-type": "image/png"})
        assert status == 200
    finally:
        for sock in idle:
            sock.close()
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    stderr = stderr.decode()
    assert stderr.count("out of system resource") == 0, stderr[-2000:]
    messages = stderr.count("cannot accept connections (Too many open files")
    assert 1 <= messages <= 3, stderr[-3000:]
    assert len(stderr) < 20_000


def test_a_request_with_too_many_pixels_in_all_is_refused_before_decoding(tiny):
    client = client_for(tiny.export_dir, max_pixels=40_000_000, max_request_pixels=100_000_000)
    # Three one-bit 6000 x 6000 PNGs: 13 KB on the wire, 108 million pixels to decode.
    body, headers = multipart([(f"{i}.png", png_1_bit(6000)) for i in range(3)])
    assert len(body) < 20_000
    response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "too_many_pixels_in_request"
    assert "108,000,000 pixels" in response.json()["detail"]
    assert "--max-request-pixels" in response.json()["detail"]
    assert client.get("/health").status_code == 200


def test_an_image_whose_decoding_would_take_too_much_memory_is_refused_from_its_header(tiny):
    client = client_for(tiny.export_dir, max_decode_memory=64 * 2**20)
    # A 16-bit RGBA PNG of 2000 x 2000 (4 million pixels, well under --max-pixels), cut right
    # after its header: refused for its cost, which shows nothing was decoded.
    header_only = png16_rgba(2000)[:33 + 12]
    response = client.post("/predict", content=header_only, headers={"content-type": "image/png"})
    assert response.status_code == 413, response.text
    answer = response.json()
    assert answer["error"] == "too_much_decode_memory"
    assert "2000x2000 RGBA" in answer["detail"] and "--max-decode-memory" in answer["detail"]
    status = client.post("/predict", content=tiny.requests[0],
                         headers={"content-type": "image/png"}).status_code
    assert status == 200


def test_decodes_beyond_the_memory_in_flight_wait_then_get_503_with_retry_after(tiny):
    app = create_app(ServeConfig(artifact=tiny.export_dir, max_decode_memory=300 * 2**20))
    app.state.budget.wait = 0.2  # do not wait the default 2 s for room: refuse at once
    bomb = png16_rgba(4000)  # 16 million pixels: about 290 MB estimated, over a second to decode
    with serving(app) as address:
        first: list[int] = []
        thread = threading.Thread(target=lambda: first.append(call(
            address, "POST", "/predict", bomb, {"content-type": "image/png"})[0]))
        thread.start()
        deadline = time.monotonic() + 20
        while not app.state.budget.used:
            assert time.monotonic() < deadline and thread.is_alive(), first
            time.sleep(0.01)
        connection = http.client.HTTPConnection(*address, timeout=30)
        connection.request("POST", "/predict", body=bomb, headers={"content-type": "image/png"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        assert response.status == 503, answer
        assert answer["error"] == "decode_busy" and "--max-decode-memory" in answer["detail"]
        assert int(response.getheader("Retry-After")) >= 1
        # Small requests still fit beside the large one.
        status, _ = call(address, "POST", "/predict", tiny.requests[0], {"content-type": "image/png"})
        assert status == 200 and call(address, "GET", "/health")[0] == 200
        thread.join(60)
        assert first == [200]
        assert app.state.budget.used == 0


def test_a_multipart_upload_cut_before_its_closing_boundary_is_refused(tiny):
    client = client_for(tiny.export_dir)
    parts = [(f"{i}.png", data) for i, data in enumerate(tiny.requests[:3])]
    body, headers = multipart(parts, closed=False)
    response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_multipart"
    assert "closing boundary" in response.json()["detail"]
    body, headers = multipart(parts)
    response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == 200 and len(response.json()["images"]) == 3


def _ppm_with_bad_maxval() -> bytes:
    return b"P6\n4 4\n70000\n" + bytes(96)


def _qoi_truncated() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(colour_images(1, seed=3)[0][0]).save(buffer, format="QOI")
    return buffer.getvalue()[:40]


def _eps() -> bytes:
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
            b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


@pytest.mark.parametrize("name,data", [("ppm_bad_header_number", _ppm_with_bad_maxval()),
                                       ("truncated_qoi", _qoi_truncated()), ("eps", _eps())])
def test_formats_training_does_not_read_are_not_images(tiny, name, data):
    # Before: the PPM and the QOI were 500 `internal` with a traceback, and the EPS went to
    # Ghostscript (installed or not).
    client = client_for(tiny.export_dir)
    response = client.post("/predict", content=data,
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "not_an_image", "detail": "image: not an image in a "
                               "format read here (JPEG, PNG, GIF, BMP, WebP or TIFF)"}
    assert errors(client, "internal") == 0


def test_a_client_that_hangs_up_mid_upload_is_counted_as_a_disconnect(tiny):
    app = create_app(ServeConfig(artifact=tiny.export_dir))
    with serving(app) as address:
        sock = socket.create_connection(address)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 50000\r\n\r\n" + tiny.requests[0][:200])
        time.sleep(0.3)
        sock.close()
        deadline = time.monotonic() + 10
        while errors(address, "client_disconnected") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert errors(address, "client_disconnected") == 1
        assert errors(address, "internal") == 0
        assert call(address, "GET", "/health")[0] == 200


def test_a_model_that_fails_only_when_run_is_refused_at_start_and_on_reload(tiny, tmp_path):
    from vgg_mobile.cli.main import main

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(onnx_failing_when_run())
    result = CliRunner().invoke(main, ["serve-model", str(broken), "--port", "0"])
    assert result.exit_code == 2, result.output
    assert "the model fails when run on probe images (InvalidArgument" in result.output
    served = tmp_path / "model.onnx"
    served.write_bytes(tiny.files["onnx_float32"].read_bytes())
    client = client_for(served)
    replace_file(served, broken.read_bytes())
    response = client.post("/admin/reload")
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "model_refused"
    assert "fails when run on probe images" in response.json()["detail"]
    assert client.get("/health").json()["model_version"] == "1"


def test_head_health_answers_like_get_without_a_body(tiny):
    app = create_app(ServeConfig(artifact=tiny.export_dir))
    with serving(app) as address:
        connection = http.client.HTTPConnection(*address, timeout=30)
        connection.request("HEAD", "/health")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b""
        assert response.getheader("content-type") == "application/json"
        connection.close()
    assert "head" not in app.openapi()["paths"]["/health"]


def test_the_limits_are_flags_of_serve_model():
    from vgg_mobile.cli.main import main

    help_text = " ".join(CliRunner().invoke(main, ["serve-model", "--help"]).output.split())
    for flag in ("--max-request-pixels", "--max-decode-memory", "--header-timeout",
                 "--body-timeout"):
        assert flag in help_text
    result = CliRunner().invoke(main, ["serve-model", ".", "--header-timeout", "0"])
    assert result.exit_code == 2 and "--header-timeout" in result.output
    with pytest.raises(Exception, match="body_timeout must be a number of seconds > 0"):
        ServeConfig(artifact=".", body_timeout=float("nan"))
