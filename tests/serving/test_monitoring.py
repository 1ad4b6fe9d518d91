"""The monitoring that ships with the service (`vgg-mobile monitoring`): the alert rules run by
the real `promtool` (Debian's `prometheus` package, installed by .ci/run), and a real
Prometheus scraping a real server, evaluating every query of the Grafana dashboard and raising
the drift alert."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from serving_models import (CLASSES, colour_images, free_port, png_bytes, serving,
                            two_versions)
from vgg_mobile.serving.app import ServeConfig, create_app
from vgg_mobile.serving.monitoring import FILES, shipped, write_monitoring

HERE = Path(__file__).resolve().parent


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is not installed: apt-get install prometheus (.ci/run does)"
    return found


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def test_the_command_writes_a_configuration_promtool_accepts(cli, tmp_path):
    out = tmp_path / "monitoring"
    written = cli("monitoring", out, "--target", "127.0.0.1:8500", "--target", "[::1]:8501",
                  "--scrape-interval", "30s")
    assert written.returncode == 0, written.stderr
    assert written.stdout.split() == [str(out / name) for name in
                                      ("prometheus.yml", "alerts.yml", "dashboard.json")]
    checked = run(tool("promtool"), "check", "config", out / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    assert '- targets: ["127.0.0.1:8500", "[::1]:8501"]' in (out / "prometheus.yml").read_text()
    again = cli("monitoring", out)
    assert again.returncode == 2 and "pass --force to replace it" in again.stderr
    assert cli("monitoring", out, "--force").returncode == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = cli("monitoring", mine, "--force")
    assert refused.returncode == 2 and (mine / "notes.txt").read_text() == "keep me"
    for bad, message in ((["--target", 'x:1"]\n  - job_name: evil'], "not HOST:PORT"),
                         (["--target", "host:99999"], "not HOST:PORT"),
                         (["--scrape-interval", "soon"], "not a duration")):
        answer = cli("monitoring", tmp_path / "bad", *bad)
        assert answer.returncode == 2 and message in answer.stderr, answer.stderr
        assert not (tmp_path / "bad").exists()


def test_each_alert_fires_on_its_trouble_and_not_on_a_healthy_replica(tmp_path):
    (tmp_path / "alerts.yml").write_text(shipped("alerts.yml"))
    shutil.copy(HERE / "alerts_test.yml", tmp_path)
    tested = run(tool("promtool"), "test", "rules", tmp_path / "alerts_test.yml")
    print(tested.stdout, tested.stderr)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_dashboard_is_one_grafana_dashboard_over_the_prometheus_variable():
    dashboard = json.loads(shipped("dashboard.json"))
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels) >= 10
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["allValue"] == ".*"


class Prometheus:
    """A real Prometheus on a loopback port, reading `config`."""

    def __init__(self, config: Path, storage: Path):
        self.port = free_port()
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={storage}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.wait_for(lambda: self.get("/-/ready", raw=True) is not None, "to start")

    def get(self, path: str, raw: bool = False, **params):
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = answer.read()
        except OSError:
            return None
        return body if raw else json.loads(body)

    def query(self, expr: str) -> list:
        answer = self.get("/api/v1/query", query=expr)
        assert answer is not None and answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def wait_for(self, condition, what: str, seconds: float = 60):
        deadline = time.monotonic() + seconds
        while not condition():
            assert self.process.poll() is None, self.process.stderr.read()[-2000:]
            assert time.monotonic() < deadline, f"Prometheus took over {seconds} s {what}"
            time.sleep(0.5)

    def stop(self):
        self.process.terminate()
        self.process.wait(20)


def test_prometheus_scrapes_a_server_answers_every_dashboard_query_and_raises_drift(
        tiny, tmp_path):
    """A shadow policy over two versions (so agreement is measured), labelled feedback, a
    refused image, a drifted window, then a rollback: every panel of the dashboard has data,
    and the drift alert is raised for the statistics that moved."""
    import http.client

    repository = two_versions(tmp_path / "colours", tiny, colour_images(300, seed=40))
    policy = tmp_path / "shadow.toml"
    policy.write_text("stable = 1\n[shadow]\nversion = 2\n")
    app = create_app(ServeConfig(artifact=repository, policy=policy, drift_window=30))
    with serving(app) as (host, port):
        folder = write_monitoring(tmp_path / "monitoring", [f"{host}:{port}"], "1s")
        prometheus = Prometheus(folder / "prometheus.yml", tmp_path / "tsdb")
        try:
            def post(path: str, body: bytes, kind: str):
                connection = http.client.HTTPConnection(host, port, timeout=30)
                try:
                    connection.request("POST", path, body=body, headers={"content-type": kind})
                    answer = connection.getresponse()
                    return answer.status, json.loads(answer.read())
                finally:
                    connection.close()

            pixels, labels = colour_images(30, seed=41)
            for image, label in zip(pixels, labels):
                status, answer = post("/predict", png_bytes(image), "image/png")
                assert status == 200
                assert post("/feedback", json.dumps({"request_id": answer["request_id"],
                                                     "label": CLASSES[label]}).encode(),
                            "application/json")[0] == 200
            assert post("/predict", b"not an image", "image/png")[0] == 400
            for image in np.round(pixels * 0.7).astype(np.uint8):
                assert post("/predict", png_bytes(image), "image/png")[0] == 200
            prometheus.wait_for(lambda: any(
                alert["labels"]["alertname"] == "VggMobileDrift"
                and alert["labels"]["statistic"] == "red" and alert["labels"]["version"] == "1"
                for alert in prometheus.get("/api/v1/alerts")["data"]["alerts"]),
                "to raise VggMobileDrift")
            assert post("/admin/rollback", b"", "application/json")[0] == 200
            # The counters start at 0, so increase() sees the first rollback (as the
            # VggMobileRolledBack alert must).
            prometheus.wait_for(lambda: prometheus.query(
                'increase(vgg_mobile_model_rollbacks_total{result="ok"}[1m]) > 0'),
                "to see the rollback")

            drifted = {alert["labels"]["statistic"]
                       for alert in prometheus.get("/api/v1/alerts")["data"]["alerts"]
                       if alert["labels"]["alertname"] == "VggMobileDrift"}
            assert {"red", "green", "blue"} <= drifted
            instances = prometheus.get("/api/v1/label/instance/values",
                                       **{"match[]": "vgg_mobile_model_info"})["data"]
            assert instances == [f"{host}:{port}"]
            empty = []
            for panel in json.loads(shipped("dashboard.json"))["panels"]:
                for target in panel["targets"]:
                    expr = target["expr"].replace("$instance", ".*").replace(
                        "$__rate_interval", "1m")
                    if not prometheus.query(expr):
                        empty.append(f"{panel['title']}: {expr}")
            assert empty == [], "dashboard queries with no data:\n" + "\n".join(empty)
        finally:
            prometheus.stop()
    assert FILES == ("alerts.yml", "dashboard.json")
