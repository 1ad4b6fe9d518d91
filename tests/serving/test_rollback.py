"""Rollback of a traffic policy: its `[rollback]` thresholds, labelled feedback by request id,
and the automatic rollback when the version tried out crosses a threshold."""

from __future__ import annotations

import logging
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving_models import CLASSES, SIZE, metric, png_bytes, two_versions
from vgg_mobile.converters.tflite import predict_tflite
from vgg_mobile.core.errors import BadInputError
from vgg_mobile.serving.app import ServeConfig, create_app
from vgg_mobile.serving.rollback import Judge, Rules
from vgg_mobile.serving.traffic import build_policy


@pytest.fixture(scope="module")
def repository(tiny, tmp_path_factory) -> Path:
    return two_versions(tmp_path_factory.mktemp("rollback") / "colours", tiny)


@pytest.fixture(scope="module")
def disputed(tiny) -> list[bytes]:
    """Noise images the two versions classify apart (the two trainings disagree on some)."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (60, SIZE, SIZE, 3), dtype=np.uint8)
    first = predict_tflite(tiny.files["int8"].read_bytes(), pixels.astype(np.float32))
    second = predict_tflite(tiny.files["v2_int8"].read_bytes(), pixels.astype(np.float32))
    apart = np.flatnonzero(first.argmax(1) != second.argmax(1))
    assert len(apart) >= 3, "the two versions agree on every noise image"
    return [png_bytes(pixels[i]) for i in apart]


def client_with(repository, tmp_path, policy: str) -> TestClient:
    path = tmp_path / "policy.toml"
    path.write_text(policy)
    return TestClient(create_app(ServeConfig(artifact=repository, policy=path)),
                      client=("127.0.0.1", 50000))



def active(client) -> bool:
    return client.get("/model").json()["traffic"]["active"]


def post(client, data: bytes, key: str | None = None) -> dict:
    headers = {"content-type": "image/png", **({"x-client-id": key} if key else {})}
    response = client.post("/predict", content=data, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == response.json()["request_id"]
    return response.json()


@pytest.mark.parametrize("section, message", [
    ("[rollback]\nwindow = 0", "rollback.window = 0: a whole number >= 1"),
    ("[rollback]\nmax_error_rate = 1.5", "rollback.max_error_rate = 1.5: a fraction"),
    ("[rollback]\nmin_agreement = -1", "rollback.min_agreement = -1: a number >= 0"),
    ("[rollback]\nmax_p99 = 5", "rollback.max_p99 = 5: unknown key; the keys are "
     "max_accuracy_drop, max_error_rate, max_p99_ms, min_agreement, min_requests, window"),
    ("[rollback]\nwindow = 10\nmin_requests = 20", "rollback.min_requests = 20: more than the "
     "window (10) holds"),
])
def test_rollback_rules_are_refused_with_their_key_and_value(section, message):
    data = tomllib.loads("stable = 1\n[shadow]\nversion = 2\n" + section)
    with pytest.raises(BadInputError) as raised:
        build_policy(data, "policy.toml")
    assert message in str(raised.value)
    with pytest.raises(BadInputError, match=r"\[rollback\] without \[canary\], \[ab\] or "):
        build_policy({"stable": 1, "rollback": {"window": 5}})


def test_the_judge_names_the_first_threshold_crossed():
    judge = Judge(Rules(window=10, min_requests=5, max_error_rate=0.2, max_p99_ms=50,
                        min_agreement=0.9, max_accuracy_drop=5), stable="1")
    for _ in range(4):
        judge.request("2", True, 0.01)
    assert judge.verdict("2") is None  # under min_requests: not judged yet
    judge.request("2", False, 0.01)
    assert judge.verdict("2").startswith("error rate 80.0% over its last 5 requests, above "
                                         "max_error_rate 0.2")
    for _ in range(10):
        judge.request("3", False, 0.2)
    assert judge.verdict("3").startswith("p99 200.0 ms over its last 10 requests")
    assert judge.verdict("4", agreement=0.8, compared=5).startswith(
        "agreement with version 1 80.0% over its last 5 compared images")
    assert judge.verdict("4", agreement=0.8, compared=4) is None
    for right in [True] * 10:
        judge.feedback("1", right)
    for right in [True] * 9 + [False]:
        judge.feedback("4", right)
    assert "accuracy 90.0% on 10 labelled requests, 10.0 points under version 1's 100.0%" in (
        judge.verdict("4"))


def test_feedback_is_counted_once_for_a_known_request_and_never_for_an_unknown_one(
        repository, tmp_path, tiny):
    with client_with(repository, tmp_path, "stable = 1\n[canary]\nversion = 2\nshare = 0.5\n"
                                           "header = 'X-Client-Id'") as client:
        answer = post(client, tiny.requests[1], "client-1")
        label = answer["predictions"][0]["label"]
        version = answer["model_version"]
        unknown = client.post("/feedback", json={"request_id": "0" * 32, "label": label})
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_request_id"
        assert metric(client, "vgg_mobile_feedback_images_total") == 0
        wrong = client.post("/feedback", json={"request_id": answer["request_id"],
                                               "label": "purple"})
        assert wrong.status_code == 400 and "purple" in wrong.json()["detail"]
        for body in ({"request_id": answer["request_id"]}, {"label": label}, [1, 2]):
            assert client.post("/feedback", json=body).status_code == 400
        first = client.post("/feedback", json={"request_id": answer["request_id"],
                                               "label": label})
        assert first.status_code == 200, first.text
        assert first.json() == {"request_id": answer["request_id"], "model_version": version,
                                "correct": [True], "accuracy": 1.0, "labelled": 1}
        again = client.post("/feedback", json={"request_id": answer["request_id"],
                                               "label": label})
        assert again.status_code == 409 and again.json()["error"] == "already_labelled"
        assert metric(client, "vgg_mobile_feedback_images_total", version=version,
                      correct="true") == 1
        assert metric(client, "vgg_mobile_feedback_accuracy", version=version) == 1.0


def test_feedback_remembers_the_last_answers_only(repository, tiny):
    app = create_app(ServeConfig(artifact=repository / "1", feedback_memory=2))
    with TestClient(app) as client:
        ids = [post(client, data)["request_id"] for data in tiny.requests[:3]]
        label = CLASSES[0]
        forgotten = client.post("/feedback", json={"request_id": ids[0], "label": label})
        assert forgotten.status_code == 404 and "the last 2 answers are" in (
            forgotten.json()["detail"])
        assert client.post("/feedback", json={"request_id": ids[2],
                                              "label": label}).status_code == 200
        big = client.post("/feedback", content=b"{" + b" " * 70_000 + b"}",
                          headers={"content-type": "application/json"})
        assert big.status_code == 413


def test_a_shadow_that_disagrees_is_rolled_back_automatically_and_logged(
        repository, tmp_path, disputed, caplog):
    caplog.set_level(logging.WARNING, logger="vgg_mobile.serving")
    policy = ("stable = 1\n[shadow]\nversion = 2\n"
              "[rollback]\nwindow = 20\nmin_requests = 3\nmin_agreement = 0.95\n")
    with client_with(repository, tmp_path, policy) as client:
        for data in disputed:
            assert post(client, data)["model_version"] == "1"
        deadline = time.monotonic() + 60
        while active(client):
            assert time.monotonic() < deadline, "the shadow was not rolled back"
            time.sleep(0.05)
        assert metric(client, "vgg_mobile_model_rollbacks_total", result="automatic") == 1
        compared = metric(client, "vgg_mobile_compared_images_total", version="2",
                          reference="1")
        post(client, disputed[0])
        time.sleep(0.2)  # no comparison runs any more
        assert metric(client, "vgg_mobile_compared_images_total", version="2",
                      reference="1") == compared
    lines = [record.getMessage() for record in caplog.records
             if "automatically rolled back" in record.getMessage()]
    assert len(lines) == 1
    assert "the shadow policy of" in lines[0]
    assert "version 2: agreement with version 1 " in lines[0]
    assert "under min_agreement 0.95" in lines[0]


def test_feedback_showing_the_canary_worse_rolls_it_back(repository, tmp_path, tiny, caplog):
    caplog.set_level(logging.WARNING, logger="vgg_mobile.serving")
    policy = ("stable = 1\n[canary]\nversion = 2\nshare = 0.5\nheader = 'X-Client-Id'\n"
              "[rollback]\nwindow = 50\nmin_requests = 4\nmax_accuracy_drop = 5\n")
    with client_with(repository, tmp_path, policy) as client:
        answers = [post(client, tiny.requests[i % 6], f"client-{i}") for i in range(40)]
        by_version = {"1": [], "2": []}
        for answer in answers:
            by_version[answer["model_version"]].append(answer)
        assert len(by_version["1"]) >= 4 and len(by_version["2"]) >= 4
        for answer in by_version["1"][:4]:  # stable right every time
            label = answer["predictions"][0]["label"]
            client.post("/feedback", json={"request_id": answer["request_id"], "label": label})
        for answer in by_version["2"][:4]:  # the canary wrong every time
            label = answer["predictions"][0]["label"]
            other = next(c for c in CLASSES if c != label)
            assert client.post("/feedback", json={"request_id": answer["request_id"],
                                                  "label": other}).json()["correct"] == [False]
        assert not active(client)
        assert {post(client, tiny.requests[0], f"client-{i}")["model_version"]
                for i in range(20)} == {"1"}
    line = next(r.getMessage() for r in caplog.records
                if "automatically rolled back" in r.getMessage())
    assert ("version 2: accuracy 0.0% on 4 labelled requests, 100.0 points under version 1's"
            in line)


def test_the_serve_admin_verb_rolls_back_and_reports_refusals(repository, tmp_path, tiny):
    from click.testing import CliRunner

    from serving_models import serving
    from vgg_mobile.cli.main import main

    path = tmp_path / "policy.toml"
    path.write_text("stable = 1\n[shadow]\nversion = 2\n")
    app = create_app(ServeConfig(artifact=repository, policy=path, admin_token="token-1234"))
    with serving(app) as (host, port):
        url = f"http://{host}:{port}"
        runner = CliRunner()
        refused = runner.invoke(main, ["serve-admin", "rollback", "--url", url])
        assert refused.exit_code == 1 and "refused the rollback (401): unauthorized" in (
            refused.output)
        status = runner.invoke(main, ["serve-admin", "status", "--url", url])
        assert status.exit_code == 0 and '"active": true' in status.output
        done = runner.invoke(main, ["serve-admin", "rollback", "--url", url,
                                    "--admin-token", "token-1234"])
        assert done.exit_code == 0, done.output
        assert '"policy": "ended"' in done.output
        assert app.state.service.policy_active is False
        reload = runner.invoke(main, ["serve-admin", "reload", "--url", url],
                               env={"VGG_MOBILE_ADMIN_TOKEN": "token-1234"})
        assert reload.exit_code == 1 and "policy_pins_versions" in reload.output
    gone = CliRunner().invoke(main, ["serve-admin", "status", "--url", url])
    assert gone.exit_code == 1 and f"cannot reach {url}" in gone.output
