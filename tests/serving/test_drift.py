"""The drift watch of the prediction service: each served version's rolling window of image and
answer statistics against its export's held-out images, as PSI gauges, warnings and `/model`.

The export is written as `vgg-mobile convert` writes one, its drift reference computed from 300
held-out colour images (`write_export`); a real app answers real images through its routes.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving_models import colour_images, metric, png_bytes, two_versions, write_export
from vgg_mobile.core.errors import BadInputError
from vgg_mobile.data import drift as statistics
from vgg_mobile.serving.app import ServeConfig, create_app
from vgg_mobile.serving.drift import _Window
from vgg_mobile.serving.models import load_model

# Measured on these colour images: a fresh 90-image window of the held-out kind stays under
# 0.15 on every statistic (sharpness is the noisiest), the darkened one is over 0.3.
WINDOW = 90
THRESHOLD = 0.25
HELD_OUT = colour_images(300, seed=40)


@pytest.fixture(scope="module")
def export(tiny, tmp_path_factory):
    return write_export(tmp_path_factory.mktemp("drift") / "export",
                        {"colours_int8.tflite": tiny.files["int8"].read_bytes()}, HELD_OUT)


def client_for(artifact, **options) -> TestClient:
    config = ServeConfig(artifact=artifact, **{"drift_window": WINDOW, "drift_rate": 0,
                                               **options})
    return TestClient(create_app(config), client=("127.0.0.1", 50000))


def send(client, pixels: np.ndarray, per_request: int = 30) -> None:
    """The images as PNG files, `per_request` to a multipart request."""
    for start in range(0, len(pixels), per_request):
        files = [("images", (f"{start + i}.png", png_bytes(image), "image/png"))
                 for i, image in enumerate(pixels[start:start + per_request])]
        response = client.post("/predict", files=files)
        assert response.status_code == 200, response.text


def psi(client, version: str = "1") -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {sample.labels["statistic"]: sample.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples
            if sample.name == "vgg_mobile_drift_psi" and sample.labels["version"] == version}


def darkened(pixels: np.ndarray) -> np.ndarray:
    return np.round(pixels.astype(np.float32) * 0.7).astype(np.uint8)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("drift:")]


def test_the_held_out_kind_stays_under_the_threshold_and_darkened_images_cross_it(export, caplog):
    client = client_for(export)
    fresh = colour_images(WINDOW, seed=41)[0]
    send(client, fresh[:60])
    assert psi(client) == {}, "a PSI was reported before the window was full"
    assert metric(client, "vgg_mobile_drift_window_images", version="1") == 60
    caplog.set_level(logging.INFO, logger="vgg_mobile.serving")
    send(client, fresh[60:])
    values = psi(client)
    assert set(values) == set(statistics.STATISTICS)
    assert max(values.values()) < THRESHOLD, values
    assert min(values.values()) >= 0
    watch = client.get("/model").json()["drift"]["1"]
    assert watch == {"window": WINDOW, "threshold": THRESHOLD, "max_rate": 0, "watched": True,
                     "reference_images": len(HELD_OUT[0]), "images": WINDOW,
                     "psi": pytest.approx(values, abs=1e-4)}
    assert metric(client, "vgg_mobile_drift_threshold") == THRESHOLD
    assert warnings_of(caplog) == []

    send(client, darkened(fresh))
    values = psi(client)
    crossed = sorted(name for name, value in values.items() if value > THRESHOLD)
    assert {"red", "green", "blue", "sharpness"} <= set(crossed), values
    logged = warnings_of(caplog)
    assert len(logged) == len(crossed), logged  # one warning per statistic that crossed
    assert all("version 1" in line and "above the threshold 0.25" in line for line in logged)
    assert any(line.startswith("drift: version 1: red PSI") for line in logged)
    assert metric(client, "vgg_mobile_drift_warnings_total", version="1", statistic="red") == 1

    send(client, darkened(colour_images(WINDOW, seed=42)[0]))  # still drifted: no new warning
    assert metric(client, "vgg_mobile_drift_warnings_total", version="1", statistic="red") == 1
    send(client, colour_images(WINDOW, seed=43)[0])  # back: the warning is re-armed
    assert psi(client)["red"] < 0.8 * THRESHOLD
    send(client, darkened(colour_images(WINDOW, seed=44)[0]))
    assert metric(client, "vgg_mobile_drift_warnings_total", version="1", statistic="red") == 2


def test_images_of_one_class_move_the_predicted_class(export):
    client = client_for(export)
    pixels, labels = colour_images(3 * WINDOW, seed=45)
    send(client, pixels[labels == 0])
    values = psi(client)
    assert values["predicted_class"] > THRESHOLD, values
    assert values["size"] < 0.05 and values["aspect"] < 0.05  # same sizes as the reference


def test_open_inference_requests_are_watched_too(export):
    client = client_for(export)
    pixels = colour_images(WINDOW, seed=46)[0]
    for start in range(0, WINDOW, 30):
        batch = pixels[start:start + 30]
        response = client.post("/v2/models/colours/infer", json={"inputs": [{
            "name": "pixels", "shape": list(batch.shape), "datatype": "UINT8",
            "data": batch.ravel().tolist()}]})
        assert response.status_code == 200, response.text
    assert metric(client, "vgg_mobile_drift_window_images", version="1") == WINDOW
    assert max(psi(client).values()) < THRESHOLD


def test_an_export_without_a_reference_serves_unwatched(tiny, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vgg_mobile.serving")
    plain = write_export(tmp_path / "export", {"colours_int8.tflite":
                                               tiny.files["int8"].read_bytes()})
    client = client_for(plain)
    send(client, colour_images(WINDOW, seed=41)[0])
    assert psi(client) == {}
    assert client.get("/model").json()["drift"]["1"]["watched"] is False
    assert [r.getMessage() for r in caplog.records if "is not watched" in r.getMessage()] == [
        "drift: version 1 (colours_int8.tflite) is not watched: its export records no "
        "drift_reference (export it again with this version of vgg-mobile)"]


def test_a_window_of_0_turns_the_watch_off(export):
    client = client_for(export, drift_window=0)
    send(client, colour_images(WINDOW, seed=41)[0])
    from prometheus_client.parser import text_string_to_metric_families

    samples = [sample.name for family in text_string_to_metric_families(
        client.get("/metrics").text) for sample in family.samples]
    assert "vgg_mobile_images_predicted_total" in samples
    assert [name for name in samples if name.startswith("vgg_mobile_drift")] == []
    assert "drift" not in client.get("/model").json()


def test_a_new_version_takes_over_the_gauges(tiny, tmp_path):
    repository = two_versions(tmp_path / "colours", tiny, HELD_OUT)
    second = tmp_path / "hold" / "2"
    second.parent.mkdir()
    (repository / "2").rename(second)
    client = client_for(repository, poll_seconds=0)
    send(client, colour_images(WINDOW, seed=41)[0])
    assert set(psi(client, "1")) == set(statistics.STATISTICS)
    second.rename(repository / "2")
    assert client.post("/admin/reload").json()["changed"] is True
    assert psi(client, "1") == {}, "the gauges of a version no longer serving stayed"
    assert metric(client, "vgg_mobile_model_reference_accuracy", version="2") > 0.9
    assert "vgg_mobile_model_reference_accuracy{version=\"1\"}" not in client.get("/metrics").text
    send(client, colour_images(WINDOW, seed=42)[0])
    assert max(psi(client, "2").values()) < THRESHOLD


@pytest.mark.parametrize("change, message", [
    (lambda m: m["drift_reference"].update(schema=2), "drift_reference schema 2 is not 1"),
    (lambda m: m["drift_reference"]["statistics"]["red"]["edges"].pop(),
     "statistic 'red': bin edges"),
])
def test_a_reference_of_another_version_serves_unwatched_and_says_why(
        export, tmp_path, caplog, change, message):
    """Another schema or other bins: a sound export of another vgg-mobile version, which
    serves (upgrading the server must not refuse every model), but is not compared."""
    import shutil

    folder = shutil.copytree(export, tmp_path / "export")
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    caplog.set_level(logging.INFO, logger="vgg_mobile.serving")
    client = client_for(folder)
    send(client, colour_images(WINDOW, seed=41)[0])
    assert psi(client) == {}
    assert client.get("/model").json()["drift"]["1"]["watched"] is False
    [line] = [r.getMessage() for r in caplog.records if "is not watched" in r.getMessage()]
    assert message in line and "export the model again" in line


@pytest.mark.parametrize("change, message", [
    (lambda m: m["drift_reference"]["statistics"]["size"]["counts"].append(0),
     "statistic 'size': counts"),
    (lambda m: m["drift_reference"]["statistics"]["blue"]["counts"].__setitem__(0, -1),
     "statistic 'blue': counts [-1"),
    (lambda m: m["drift_reference"].update(images=True), "drift_reference images = True"),
    (lambda m: m["artifacts"][0]["drift_reference"]["statistics"]["predicted_class"].update(
        classes=["blue", "green", "red"]), "statistic 'predicted_class': classes ['blue'"),
    (lambda m: m["artifacts"][0]["drift_reference"]["statistics"]["confidence"].update(
        counts=[0] * 11), "statistic 'confidence': counts add up to 0"),
])
def test_a_damaged_reference_refuses_the_model_with_the_statistic_and_value(
        export, tmp_path, change, message):
    import shutil

    folder = shutil.copytree(export, tmp_path / "export")
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match="manifest.json: ") as caught:
        load_model(folder)
    assert message in str(caught.value)


def test_the_window_sums_its_last_rows(tmp_path):
    rng = np.random.default_rng(0)
    window, kept = _Window(7, 3), np.zeros((0, 3), np.float32)
    for count in (1, 3, 5, 2, 9, 1, 6, 14, 2):
        rows = rng.random((count, 3), dtype=np.float32)
        window.add(rows)
        kept = np.concatenate([kept, rows])[-7:]
        np.testing.assert_allclose(window.total, kept.sum(axis=0), rtol=1e-5)


def test_beyond_its_rate_the_watch_samples_the_requests(export):
    """At most `drift_rate` images a second are counted (a bucket of one second's worth): the
    cost stays bounded however fast requests come."""
    import time

    client = client_for(export, drift_rate=5, drift_window=200)
    pixels = colour_images(40, seed=47)[0]
    began = time.monotonic()
    for image in pixels:
        response = client.post("/predict", content=png_bytes(image),
                               headers={"content-type": "image/png"})
        assert response.status_code == 200
    elapsed = time.monotonic() - began
    client.get("/metrics")  # counts what waits for a batch
    counted = metric(client, "vgg_mobile_drift_window_images", version="1")
    assert 5 <= counted <= 5 + 5 * elapsed + 1 < 40, (counted, elapsed)
    assert client.get("/model").json()["drift"]["1"]["max_rate"] == 5
