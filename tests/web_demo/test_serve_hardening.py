"""`vgg-mobile serve` on hostile requests: only the folder's visible files, always an answer."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from vgg_mobile.cli.main import main
from vgg_mobile.core.errors import BadInputError
from vgg_mobile.web_demo import make_server


@pytest.fixture()
def folder(tmp_path):
    """A demo-like folder with hidden files, a symbolic-link loop and links out and in."""
    web_demo = tmp_path / "web_demo"
    (web_demo / "model").mkdir(parents=True)
    (web_demo / "index.html").write_text("<h1>demo</h1>")
    (web_demo / "model" / "labels.json").write_text('["a", "b"]')
    (web_demo / "model" / ".hidden").write_text("hidden")
    (web_demo / ".env").write_text("SECRET=1")
    (web_demo / ".git").mkdir()
    (web_demo / ".git" / "config").write_text("[core]")
    (web_demo / "loop_a").symlink_to("loop_b")
    (web_demo / "loop_b").symlink_to("loop_a")
    (web_demo / "env_link").symlink_to(".env")
    (tmp_path / "secret.txt").write_text("private")
    (web_demo / "out_link").symlink_to(tmp_path / "secret.txt")
    return web_demo


@pytest.fixture()
def server(folder):
    """The server on a free port in a background thread, logging to stderr (captured)."""
    httpd = make_server(folder, port=0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _get(port, path, method="GET"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _raw(port, request: bytes) -> int:
    """Sends raw bytes; returns the status code of the answer (the connection is answered).

    A request line without a version is answered HTTP/0.9 style: the error page alone.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer, f"connection closed without an answer to {request[:60]!r}"
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer) or re.search(rb"Error code: (\d{3})", answer)
    assert match, answer[:200]
    return int(match.group(1))


def _still_serves(port):
    assert _get(port, "/index.html") == (200, b"<h1>demo</h1>")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_dotfiles_and_dot_folders_are_never_served(server, capsys, method):
    for path in ("/.env", "/.git/config", "/.git/", "/model/.hidden", "/%2eenv", "/.%65nv",
                 "/model/../.env", "/env_link", "/.env?download=1"):
        status, body = _get(server, path, method)
        assert status == 404, path
        assert b"SECRET" not in body and b"hidden" not in body
        _still_serves(server)
    assert _get(server, "/model/labels.json")[0] == 200
    assert "Traceback" not in capsys.readouterr().err


def test_odd_paths_get_a_clean_4xx_and_the_server_keeps_serving(server, capsys):
    for path in ("/%00", "/index.html%00.txt", "/model/%00/x", "/loop_a", "/loop_b/x",
                 "/" + "x" * 5000, "/" + "d/" * 3000, "/%ff%fe", "/%ed%a0%80", "/out_link",
                 "/../secret.txt", "/%2e%2e/secret.txt", "//etc/passwd", "*"):
        status, _ = _get(server, path)
        assert status in (400, 404), (path[:40], status)
        _still_serves(server)
    assert _get(server, "/%00")[0] == 400
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err


def test_malformed_requests_are_answered(server, capsys):
    for request in (b"GET\r\n\r\n", b"\x00\x01\x02 garbage\r\n\r\n",
                    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
                    b"GET /index.html HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n"):
        assert 400 <= _raw(server, request) < 500, request[:60]
        _still_serves(server)
    # A client that hangs up mid-request leaves no trace either.
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"GET /index.html HTTP/1.1\r\n")
    _still_serves(server)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err


def test_exposure_warning_only_beyond_loopback():
    from vgg_mobile.web_demo import exposure_warning

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert exposure_warning(host, 8000, "web_demo") is None, host
    for host in ("0.0.0.0", "::"):
        warning = exposure_warning(host, 8000, "web_demo")
        assert "every network interface" in warning and "beyond this machine" in warning
        assert "anyone who can reach port 8000 can fetch the files of web_demo" in warning
    assert "192.168.1.7" in exposure_warning("192.168.1.7", 8000, "web_demo")


def test_serve_on_every_interface_warns_and_still_serves(folder):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vgg_mobile", "serve", str(folder), "--host", "0.0.0.0",
         "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        match = re.search(r"http://0\.0\.0\.0:(\d+)/", line)
        assert match, (line, process.stderr.read() if process.poll() is not None else "")
        port = int(match.group(1))
        _still_serves(port)
        assert _get(port, "/.env")[0] == 404
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert f"warning: --host 0.0.0.0 binds every network interface, beyond this machine: " \
           f"anyone who can reach port {port} can fetch the files of {folder}" in err
    assert "Traceback" not in err


def test_serve_on_loopback_does_not_warn(folder):
    process = subprocess.Popen(
        [sys.executable, "-m", "vgg_mobile", "serve", str(folder), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert "http://127.0.0.1:" in process.stdout.readline()
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "warning" not in err


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http"])
def test_a_port_out_of_range_exits_2(folder, port):
    result = CliRunner().invoke(main, ["serve", str(folder), "--port", port])
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Invalid value for '--port'" in result.stderr
    assert "internal error" not in result.output + result.stderr


def test_a_bundle_naming_weights_outside_itself_is_refused(tmp_path):
    from vgg_mobile.web_demo import find_bundle

    bundle = tmp_path / "tfjs"
    bundle.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"x")
    for name, content in (("labels.json", '["a", "b"]'), ("manifest.json", "{}")):
        (bundle / name).write_text(content)
    for shard in ("../secret.bin", str(tmp_path / "secret.bin")):
        (bundle / "model.json").write_text(json.dumps({"weightsManifest": [{"paths": [shard]}]}))
        with pytest.raises(BadInputError, match="weight file"):
            find_bundle(bundle)
