"""Traffic policies: a canary share, an A/B split sticky per client, a shadow; what a policy
file may say, what the service refuses at start, and the rollback that ends a policy."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serving_models import SIZE, two_versions
from vgg_mobile.converters.tflite import predict_tflite
from vgg_mobile.core.errors import BadInputError
from vgg_mobile.data.dataset import resize_array
from vgg_mobile.data.images import decode_rgb
from vgg_mobile.serving.app import ServeConfig, create_app
from vgg_mobile.serving.traffic import Policy, build_policy, read_policy


@pytest.fixture(scope="module")
def repository(tiny, tmp_path_factory) -> Path:
    """Versions 1 and 2 of the colour classifier (two trainings), int8 `.tflite` each."""
    return two_versions(tmp_path_factory.mktemp("traffic") / "colours", tiny)


def policy_file(tmp_path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def client_with(repository, policy_path) -> TestClient:
    app = create_app(ServeConfig(artifact=repository, policy=policy_path))
    return TestClient(app, client=("127.0.0.1", 50000))


def samples(client, name: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def settled(client, name: str, want: float, timeout: float = 60) -> dict:
    """The samples of `name` once their sum is `want` (comparisons run after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        found = samples(client, name)
        if sum(found.values()) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def post(client, data: bytes, key: str | None = None):
    headers = {"content-type": "image/png", **({"x-client-id": key} if key else {})}
    response = client.post("/predict", content=data, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == response.json()["model_version"]
    return response.json()


@pytest.mark.parametrize("text, message", [
    ("stable = 1\ncolour = 2", "colour = 2: unknown key; the keys are ab, canary, rollback, "
     "shadow, stable"),
    ("stable = 1\n[canary]\nversion = 2\nshare = 0.1\nweight = 3",
     "canary.weight = 3: unknown key; the keys are header, share, version"),
    ("[canary]\nversion = 2\nshare = 0.1", "stable is missing"),
    ("stable = 1\n[canary]\nversion = 2\nshare = 1.5", "canary.share = 1.5: a share is a number "
     "between 0 and 1"),
    ("stable = 1\n[canary]\nversion = 2\nshare = 0", "canary.share = 0: a share"),
    ("stable = 1\n[canary]\nversion = 2", "canary.share is missing"),
    ("stable = 1\n[canary]\nversion = 1\nshare = 0.1", "canary.version = 1: the canary is the "
     "stable version"),
    ("stable = '1'", "stable = '1': a version is a whole number"),
    ("stable = 1\n[ab]\nheader = 'X-Client-Id'\nshares = { '1' = 0.5, '2' = 0.4 }",
     "the shares add up to 0.9, not 1"),
    ("stable = 1\n[ab]\nheader = 'X-Client-Id'\nshares = { '2' = 0.5, '3' = 0.5 }",
     "stable version 1 has no share"),
    ("stable = 1\n[ab]\nshares = { '1' = 0.5, '2' = 0.5 }", "ab.header is missing"),
    ("stable = 1\n[ab]\nheader = 'X Client'\nshares = { '1' = 0.5, '2' = 0.5 }",
     "ab.header = 'X Client': a header name"),
    ("stable = 1\n[shadow]\nversion = 2\n[canary]\nversion = 3\nshare = 0.1",
     "[canary] and [shadow] together"),
    ("stable = 1\ncanary = 2", "canary = 2: must be a table"),
])
def test_a_policy_file_is_refused_with_its_key_and_value(tmp_path, text, message):
    path = policy_file(tmp_path, text)
    with pytest.raises(BadInputError) as raised:
        read_policy(path)
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_policies_route_by_their_shares_and_keep_a_client_on_its_side():
    canary = build_policy({"stable": 1, "canary": {"version": 2, "share": 0.25,
                                                    "header": "X-Client-Id"}})
    assert canary.versions == (1, 2) and canary.header == "x-client-id"
    placed = [canary.route(f"client-{i}") for i in range(4000)]
    assert placed.count((2, 1)) / len(placed) == pytest.approx(0.25, abs=0.03)
    assert set(placed) == {(1, None), (2, 1)}  # the canary's answers are compared with 1
    assert all(canary.route(f"client-{i}") == placed[i] for i in range(200))  # sticky
    ab = build_policy({"stable": 2, "ab": {"header": "X-Client-Id",
                                           "shares": {"1": 0.5, "2": 0.5}}})
    assert {ab.route(f"c{i}") for i in range(200)} == {(1, 2), (2, None)}
    shadow = build_policy({"stable": 1, "shadow": {"version": 2}})
    assert shadow.route("anyone") == (1, 2) and shadow.route(None) == (1, 2)
    assert Policy(1).route("x") == (1, None)


def test_a_policy_naming_a_version_that_cannot_serve_is_refused_at_start(repository,
                                                                         tmp_path, tiny):
    path = policy_file(tmp_path, "stable = 1\n[canary]\nversion = 7\nshare = 0.1")
    with pytest.raises(BadInputError, match=r"canary.version names version 7, which is not in "
                       r".*colours \(versions: 1, 2\)"):
        create_app(ServeConfig(artifact=repository, policy=path))
    with pytest.raises(BadInputError, match="a traffic policy splits requests between the "
                       "versions of a model repository"):
        create_app(ServeConfig(artifact=repository / "1", policy=path))
    from vgg_mobile.cli.main import main

    result = CliRunner().invoke(main, ["serve-model", str(repository), "--port", "0",
                                       "--policy", str(path)])
    assert result.exit_code == 2 and "canary.version names version 7" in result.output


def test_a_canary_answers_its_share_sticky_per_client_and_is_compared(repository, tmp_path,
                                                                      tiny):
    path = policy_file(tmp_path, "stable = 1\n[canary]\nversion = 2\nshare = 0.5\n"
                                 "header = 'X-Client-Id'")
    with client_with(repository, path) as client:
        answers = {f"client-{i}": post(client, tiny.requests[i % 6], f"client-{i}")
                   for i in range(40)}
        versions = [body["model_version"] for body in answers.values()]
        assert set(versions) == {"1", "2"}
        for key, body in list(answers.items())[:10]:  # the same client, the same side
            assert post(client, tiny.requests[0], key)["model_version"] == body["model_version"]
        answered = samples(client, "vgg_mobile_answered_by_version_total")
        canary = versions.count("2") + sum(b["model_version"] == "2"
                                           for b in list(answers.values())[:10])
        assert answered[(("version", "2"),)] == canary
        compared = settled(client, "vgg_mobile_compared_images_total", canary)
        assert compared == {(("reference", "1"), ("version", "2")): canary}
        agreed = samples(client, "vgg_mobile_agreed_images_total")
        rate = samples(client, "vgg_mobile_agreement")[(("reference", "1"), ("version", "2"))]
        assert rate == pytest.approx(agreed[(("reference", "1"), ("version", "2"))] / canary)
        model = client.get("/model").json()
        assert model["traffic"] == {"mode": "canary", "stable": 1, "shares": {"1": 0.5, "2": 0.5},
                                    "shadow": None, "header": "x-client-id", "rollback": None,
                                    "active": True}
        assert model["rollback_available"] is True
        # The policy pins its versions: a reload is refused, a rollback ends the canary.
        reload = client.post("/admin/reload")
        assert reload.status_code == 409 and reload.json()["error"] == "policy_pins_versions"
        assert client.post("/admin/rollback").json()["policy"] == "ended"
        assert {post(client, tiny.requests[0], f"client-{i}")["model_version"]
                for i in range(20)} == {"1"}
        assert client.get("/model").json()["traffic"]["active"] is False


def test_a_shadow_sees_every_request_and_only_stable_answers(repository, tmp_path, tiny):
    path = policy_file(tmp_path, "stable = 1\n[shadow]\nversion = 2")
    with client_with(repository, path) as client:
        bodies = [post(client, data) for data in tiny.requests * 3]
        assert {body["model_version"] for body in bodies} == {"1"}
        compared = settled(client, "vgg_mobile_compared_images_total", len(bodies))
        assert compared == {(("reference", "1"), ("version", "2")): len(bodies)}
        agreed = samples(client, "vgg_mobile_agreed_images_total")[
            (("reference", "1"), ("version", "2"))]
        # Agreement counts where the two answers' top-1 classes match, image by image.
        pixels = np.stack([resize_array(decode_rgb(data), SIZE) for data in tiny.requests * 3])
        first = predict_tflite(tiny.files["int8"].read_bytes(), pixels.astype(np.float32))
        second = predict_tflite(tiny.files["v2_int8"].read_bytes(), pixels.astype(np.float32))
        assert agreed == int((first.argmax(1) == second.argmax(1)).sum())


def test_an_ab_split_keeps_each_client_and_the_policy_reaches_the_workers(repository, tmp_path,
                                                                          tiny):
    path = policy_file(tmp_path, "stable = 1\n[ab]\nheader = 'X-Client-Id'\n"
                                 "shares = { '1' = 0.5, '2' = 0.5 }")
    config = ServeConfig(artifact=repository, policy=path)
    assert ServeConfig.from_json(config.to_json()) == config
    with client_with(repository, path) as client:
        seen = {}
        for i in range(30):
            seen[i] = post(client, tiny.requests[i % 6], f"user-{i}")["model_version"]
        assert set(seen.values()) == {"1", "2"}
        assert all(post(client, tiny.requests[1], f"user-{i}")["model_version"] == seen[i]
                   for i in range(30))


def test_comparisons_beyond_the_waiting_limit_are_skipped_and_counted():
    from vgg_mobile.serving.metrics import ServingMetrics
    from vgg_mobile.serving.traffic import Comparisons

    metrics = ServingMetrics()
    comparisons = Comparisons(metrics, limit=2)
    assert comparisons.admit() and comparisons.admit() and not comparisons.admit()
    assert metrics.comparisons_skipped._value.get() == 1
    comparisons.done()
    assert comparisons.admit()
    assert comparisons.record("2", "1", [True, False, True, True]) == (0.75, 4)
    # The rolling agreement is over the last 500 images: the first two fall out.
    assert comparisons.record("2", "1", [False] * 498) == (pytest.approx(2 / 500), 500)


@pytest.mark.parametrize("flags, message", [
    ({"canary": "2:0.1"}, "--canary 2:0.1: a policy from flags needs --stable VERSION"),
    ({"stable": 1}, "--stable 1: a policy from flags needs --stable VERSION and one of"),
    ({"stable": 1, "canary": "2"}, "--canary '2': not VERSION:SHARE (for example 2:0.1)"),
    ({"stable": 1, "canary": "2:0.1,3:0.1"}, "--canary names one version and its share"),
    ({"stable": 1, "canary": "2:1.5"}, "--stable 1 --canary 2:1.5: canary.share = 1.5: a "
                                       "share is a number between 0 and 1"),
    ({"stable": 1, "canary": "1:0.1"}, "canary.version = 1: the canary is the stable version"),
    ({"stable": 1, "ab": "1:0.5,2:0.5"}, "--ab needs --client-header NAME"),
    ({"stable": 1, "ab": "1:0.5,2:0.4", "client_header": "X-Id"}, "add up to 0.9, not 1"),
    ({"stable": 1, "shadow": 2, "client_header": "X-Id"}, "a shadow runs every request"),
    ({"stable": 1, "shadow": 2, "canary": "3:0.1"}, "[canary] and [shadow] together"),
])
def test_policy_flags_are_refused_with_the_flags(flags, message):
    from vgg_mobile.serving.traffic import policy_from_flags

    with pytest.raises(BadInputError) as caught:
        policy_from_flags(flags)
    assert message in str(caught.value)


def test_flags_make_the_policy_a_file_makes(repository, tmp_path, tiny):
    from vgg_mobile.serving.traffic import policy_from_flags

    flags = {"stable": 1, "canary": "2:0.25", "client_header": "X-Client-Id"}
    from_file = read_policy(policy_file(tmp_path, "stable = 1\n[canary]\nversion = 2\n"
                                                  "share = 0.25\nheader = 'X-Client-Id'"))
    assert policy_from_flags(flags).describe() == from_file.describe()
    assert policy_from_flags({"stable": 1, "shadow": 2}).describe()["shadow"] == 2
    config = ServeConfig(artifact=repository, policy_flags=flags)
    assert ServeConfig.from_json(config.to_json()) == config  # how --workers hands it over
    with TestClient(create_app(config)) as client:
        assert client.get("/model").json()["traffic"]["shares"] == {"1": 0.75, "2": 0.25}
        assert {post(client, tiny.requests[i % 6], f"c{i}")["model_version"]
                for i in range(30)} == {"1", "2"}
    from vgg_mobile.cli.main import main

    both = CliRunner().invoke(main, ["serve-model", str(repository), "--port", "0", "--policy",
                                     str(tmp_path / "policy.toml"), "--stable", "1",
                                     "--shadow", "2"])
    assert both.exit_code == 2 and "do not go together" in both.output
    bad = CliRunner().invoke(main, ["serve-model", str(repository), "--port", "0",
                                    "--stable", "1", "--canary", "9:0.1"])
    assert bad.exit_code == 2 and "canary.version names version 9, which is not in" in bad.output
