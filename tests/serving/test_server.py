"""The service on a real uvicorn server on a loopback port: reloads under load drop no request,
limits hold on a real socket, and the `serve-model` command reloads on SIGHUP."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from serving_models import call, clients_under_load, free_port, replace_file, serving
from vgg_mobile.serving.app import ServeConfig, create_app


def test_reloads_and_rollbacks_under_load_drop_no_request(tiny, tmp_path):
    path = tmp_path / "model.tflite"
    shutil.copy(tiny.files["int8"], path)
    v1, v2 = tiny.files["int8"].read_bytes(), tiny.files["v2_int8"].read_bytes()
    app = create_app(ServeConfig(artifact=path, concurrency=2))

    with serving(app) as address:
        with clients_under_load(address, tiny.requests) as load:
            versions = []
            for data in (v2, v1, v2):
                time.sleep(0.4)
                replace_file(path, data)
                status, body = call(address, "POST", "/admin/reload")
                assert status == 200 and body["changed"], body
                versions.append(call(address, "GET", "/health")[1]["model_version"])
            time.sleep(0.3)
            status, body = call(address, "POST", "/admin/rollback")
            assert status == 200 and body["model"]["version"] == "1"
            time.sleep(0.4)
        seen = [(status, body.get("model_version")) for status, body, _ in load.in_order]
        assert versions == ["2", "1", "2"]
        assert not load.failures, load.failures[:5]
        assert len(seen) > 40 and {status for status, _ in seen} == {200}
        assert {version for _, version in seen} == {"1", "2"}
        assert seen[-1][1] == "1"
        _, model = call(address, "GET", "/model")
        assert model["version"] == "1" and model["previous"]["version"] == "2"


def test_limits_hold_on_a_real_socket_and_the_server_keeps_serving(tiny):
    app = create_app(ServeConfig(artifact=tiny.export_dir, max_upload_bytes=32 * 1024))
    with serving(app) as address:
        connection = http.client.HTTPConnection(*address, timeout=30)
        # Sent in chunks, no Content-Length: refused while reading, not after.
        connection.putrequest("POST", "/predict")
        connection.putheader("content-type", "image/png")
        connection.putheader("transfer-encoding", "chunked")
        connection.endheaders()
        for _ in range(12):
            chunk = os.urandom(4096)
            connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        assert response.status == 413 and json.loads(response.read())["error"] == "upload_too_large"
        connection.close()
        status, body = call(address, "POST", "/predict", tiny.requests[0][:300],
                            {"content-type": "image/png"})
        assert status == 400 and body["error"] == "corrupt_image"
        status, body = call(address, "POST", "/predict", tiny.requests[2],
                            {"content-type": "image/png"})
        assert status == 200 and body["format"] == "tflite" and len(body["predictions"]) == 3


def test_answers_are_sent_without_waiting_for_the_client_to_acknowledge(tiny):
    # uvicorn writes an answer's head and body apart; with Nagle's algorithm on, the body
    # waited for the client's delayed acknowledgement of the head (40 ms on Linux), and a
    # keep-alive client got 25 answers a second whatever the model's speed.
    app = create_app(ServeConfig(artifact=tiny.export_dir))
    with serving(app) as address:
        connection = http.client.HTTPConnection(*address, timeout=30)
        assert call(address, "GET", "/health", connection=connection)[0] == 200
        connections = list(app.state.uvicorn_server.server_state.connections)
        assert connections
        for protocol in connections:
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        connection.close()


def _start_cli(artifact, *flags):
    process = subprocess.Popen(
        [sys.executable, "-m", "vgg_mobile", "serve-model", str(artifact), "--port", "0",
         "--no-access-log", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if " at http://" not in line:
        process.kill()
        raise AssertionError(f"serve-model did not start: {line}{process.stderr.read()[-3000:]}")
    host_port = line.split(" at http://", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    return process, (host, int(port))


def _wait_for(address, want, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = call(address, "GET", "/health")
            if status == 200 and want(body):
                return body
        except OSError:
            pass
        assert time.monotonic() < deadline, "the server did not reach the expected state"
        time.sleep(0.1)


def test_the_command_serves_reloads_on_sighup_and_stops_cleanly(tiny, tmp_path):
    path = tmp_path / "model.tflite"
    shutil.copy(tiny.files["int8"], path)
    process, address = _start_cli(path)
    try:
        assert _wait_for(address, lambda body: True)["model_version"] == "1"
        status, body = call(address, "POST", "/predict", tiny.requests[1], {"content-type": "image/png"})
        assert status == 200 and body["predictions"][0]["label"] == "green"
        replace_file(path, tiny.files["v2_int8"].read_bytes())
        process.send_signal(signal.SIGHUP)
        _wait_for(address, lambda body: body["model_version"] == "2")
        status, body = call(address, "POST", "/predict", tiny.requests[1], {"content-type": "image/png"})
        assert status == 200 and body["model_version"] == "2"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught, as the exit status.
    assert process.returncode in (0, -signal.SIGTERM), stderr[-2000:]
    assert "Finished server process" in stderr
    assert "SIGHUP reload: now serving version 2" in stderr


def _connections_by_process(port: int, pids: list[int]) -> dict[int, int]:
    """Established connections to `port` that each process holds (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    counts = {}
    for pid in pids:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        counts[pid] = sum(link[8:-1] in inodes for link in links if link.startswith("socket:"))
    return counts


def test_workers_each_listen_and_share_the_keep_alive_clients(tiny):
    # uvicorn's workers shared one socket, and 16 keep-alive clients all went to one of them.
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "vgg_mobile", "serve-model", str(tiny.export_dir), "--port",
         str(port), "--workers", "2", "--no-access-log"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    connections = []
    try:
        assert "with 2 worker processes" in process.stdout.readline()
        address = ("127.0.0.1", port)
        # Printed once the workers answer: the first request after it gets in.
        assert call(address, "GET", "/health")[0] == 200
        # A second server on the port is refused, not handed half the connections.
        second = subprocess.run(
            [sys.executable, "-m", "vgg_mobile", "serve-model", str(tiny.export_dir), "--port",
             str(port), "--workers", "2"], capture_output=True, text=True, timeout=120)
        assert second.returncode != 0 and "a server already answers there" in second.stderr
        for _ in range(16):
            connection = http.client.HTTPConnection(*address, timeout=30)
            status, body = call(address, "POST", "/predict", tiny.requests[0],
                                {"content-type": "image/png"}, connection=connection)
            assert status == 200 and body["predictions"]
            connections.append(connection)
        children = [int(pid) for pid in open(f"/proc/{process.pid}/task/{process.pid}/children")
                    .read().split()]
        counts = _connections_by_process(port, children)
        assert sum(counts.values()) == 16 and sum(1 for n in counts.values() if n) == 2, counts
    finally:
        for connection in connections:
            connection.close()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode in (0, -signal.SIGTERM)


def test_the_command_refuses_a_bad_artifact_with_exit_code_2(tmp_path):
    from click.testing import CliRunner

    from vgg_mobile.cli.main import main

    (tmp_path / "notes.txt").write_text("hi")
    for target, message in ((tmp_path / "missing.tflite", "no such file or folder"),
                            (tmp_path / "notes.txt", "not a model file"),
                            (tmp_path, "not an export folder")):
        result = CliRunner().invoke(main, ["serve-model", str(target), "--port", "0"])
        assert result.exit_code == 2 and message in result.output, result.output
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"schema_version": 1, "stage": "student", '
                                       '"model_file": "model.keras"}')
    result = CliRunner().invoke(main, ["serve-model", str(run), "--port", "0"])
    assert result.exit_code == 2 and "a training run, not an export folder; convert it first" in result.output
    result = CliRunner().invoke(main, ["serve-model", str(tmp_path), "--max-upload-bytes", "lots"])
    assert result.exit_code == 2 and "not a size" in result.output


@pytest.mark.parametrize("choice,message", [
    (dict(format="onnx", flavour="float16"), "no onnx artifact of flavour float16; the folder "
                                             "has: tflite int8, tflite float32, onnx float32, onnx int8"),
])
def test_an_export_folder_without_the_chosen_artifact_lists_what_it_has(tiny, choice, message):
    from vgg_mobile.core.errors import BadInputError
    from vgg_mobile.serving.models import ModelChoice, resolve_artifact

    with pytest.raises(BadInputError, match=message):
        resolve_artifact(tiny.export_dir, ModelChoice(**choice))
    pipeline = tiny.export_dir.parent
    path, export, artifact = resolve_artifact(pipeline)
    assert path.name == "colours_int8.tflite" and artifact.flavour == "int8"
    assert export.path == tiny.export_dir
    path, _, _ = resolve_artifact(tiny.export_dir, ModelChoice(flavour="float32"))
    assert path.name == "colours_float32.tflite"


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def test_curl_uploads_and_the_docs_page_work_on_a_real_server(tiny):
    from playwright.sync_api import sync_playwright

    app = create_app(ServeConfig(artifact=tiny.export_dir))
    with serving(app) as address:
        # What `curl --data-binary @img.png URL` sends, and a client that names no type.
        for headers in ({"content-type": "application/x-www-form-urlencoded"}, {}):
            status, body = call(address, "POST", "/predict", tiny.requests[1], headers)
            assert status == 200 and body["predictions"][0]["label"] == "green", body
        status, body = call(address, "POST", "/predict", b"name=cat&size=3",
                            {"content-type": "application/x-www-form-urlencoded"})
        assert status == 415 and body["error"] == "unsupported_media_type"
        assert "'application/x-www-form-urlencoded'" in body["detail"]

        origin = f"http://{address[0]}:{address[1]}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                requests, failed, problems = [], [], []
                page.on("request", lambda request: requests.append(request.url))
                page.on("response", lambda answer: failed.append(answer.url)
                        if answer.status >= 400 else None)
                # A blocked load or a refused style would show here (a 404 shows in `failed`).
                page.on("console", lambda message: problems.append(message.text)
                        if message.type == "error"
                        and not message.text.startswith("Failed to load resource") else None)
                response = page.goto(f"{origin}/docs")
                assert response.status == 200
                page.wait_for_load_state("load")
                assert page.title() == "vgg-mobile prediction service"
                headings = page.locator("h2").all_inner_texts()
                assert "POST /predict" in [" ".join(text.split()) for text in headings]
                assert f"curl -s --data-binary @photo.jpg '{origin}/predict?top_k=3'" in (
                    page.locator("pre").all_inner_texts())
                page.click("a[href='/openapi.json']")
                page.wait_for_load_state("load")
                assert json.loads(page.locator("body").inner_text())["paths"]["/predict"]
            finally:
                browser.close()
        assert requests and all(url.startswith(origin + "/") for url in requests), requests
        # The browser asks for a favicon by itself; the page asks for nothing.
        assert failed in ([], [f"{origin}/favicon.ico"]), failed
        assert not problems, problems
