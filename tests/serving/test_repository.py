"""A model repository (numbered version folders of exports, TF Serving's layout): its newest
valid version serves, a new version is picked up without a restart once it is whole, a broken
one is refused and reported while the old one serves, and every answer names its version."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serving_models import call, clients_under_load, free_port, serving, write_export
from vgg_mobile.serving.app import ServeConfig, create_app
from vgg_mobile.serving.repository import (fingerprint, incomplete_reason, is_repository,
                                           version_folders)

# The watcher's period in these tests, and how long a condition may take to come true: a load
# reads the model in a child process, and the machine may be busy.
POLL = 0.2
WAIT = 90
MODEL = "colours_int8.tflite"


def wait_for(condition, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def deploy(source: Path, repository: Path, number: int) -> Path:
    """Copies an export beside the repository, then renames it into place, as a careful
    deployer does: the repository never holds it half-copied."""
    staging = repository.parent / f"staging-{repository.name}-{number}"
    shutil.copytree(source, staging)
    repository.mkdir(exist_ok=True)
    target = repository / str(number)
    os.rename(staging, target)
    return target


def corrupt(folder: Path) -> bytes:
    """Zeroes the served model's bytes after its header, keeping its length: the folder is
    complete by its manifest and the model is broken. Returns the good bytes."""
    path = folder / MODEL
    good = path.read_bytes()
    path.write_bytes(good[:8] + bytes(len(good) - 8))
    return good


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metric(client, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def predict(client, tiny):
    response = client.post("/predict", content=tiny.requests[1],
                           headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == response.headers["x-model-version"], body
    return body


def states(client) -> dict[str, tuple]:
    return {v["version"]: (v["state"], v.get("reason"), v.get("folder"))
            for v in client.get("/model").json()["versions"]}


def local_client(app) -> TestClient:
    """A client on this machine (the admin endpoints answer it); entered, it runs the app's
    lifespan, so the repository watcher runs."""
    return TestClient(app, client=("127.0.0.1", 50000))


@pytest.fixture(scope="module")
def second(tiny, tmp_path_factory) -> Path:
    """An export folder of the second model (metadata version 2), its int8 `.tflite` only."""
    return write_export(tmp_path_factory.mktemp("second") / "export",
                        {MODEL: tiny.files["v2_int8"].read_bytes()})


def test_a_new_version_is_picked_up_and_every_answer_names_it(tiny, second, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vgg_mobile.serving")
    repository = tmp_path / "colours"
    deploy(tiny.export_dir, repository, 1)
    # Not versions: a hidden folder, a name that is not all digits, files.
    shutil.copytree(second, repository / ".2")
    shutil.copytree(second, repository / "3.partial")
    (repository / "notes.txt").write_text("hi")
    (repository / "4").write_text("a file, not a folder")
    app = create_app(ServeConfig(artifact=repository, poll_seconds=POLL))
    with local_client(app) as client:
        body = predict(client, tiny)
        assert body["model_version"] == "1" and body["model_sha256"] == sha256(tiny.files["int8"])
        assert set(body) == {"predictions", "request_id", "model_version", "model_sha256",
                             "format"}
        model = client.get("/model").json()
        assert (model["version"], model["path"], model["source"]) == ("1", f"1/{MODEL}", "colours")
        assert model["versions"] == [{"version": "1", "state": "serving"}]
        assert metric(client, "vgg_mobile_model_version") == 1

        deploy(second, repository, 2)
        wait_for(lambda: client.get("/health").json()["model_version"] == "2", "version 2")
        body = predict(client, tiny)
        assert body["model_version"] == "2" and body["model_sha256"] == sha256(second / MODEL)
        model = client.get("/model").json()
        assert model["previous"]["version"] == "1" and model["rollback_available"]
        assert states(client) == {"1": ("loaded", None, None), "2": ("serving", None, None)}
        assert metric(client, "vgg_mobile_model_version") == 2
        assert metric(client, "vgg_mobile_model_loads_total", result="ok") == 2
        assert "now serving version 2 of" in caplog.text

        # Its folder deleted, version 2 keeps serving from memory, with one warning.
        shutil.rmtree(repository / "2")
        wait_for(lambda: "the folder of version 2, serving now, is gone" in caplog.text,
                 "the warning about the deleted folder")
        assert predict(client, tiny)["model_version"] == "2"
        assert states(client)["2"] == ("serving", None, "gone: served from memory")
        app.state.service.poll()
        assert caplog.text.count("is gone") == 1

        # A rollback holds: the watcher does not take version 1's successor back.
        assert client.post("/admin/rollback").json()["model"]["version"] == "1"
        deploy(second, repository, 2)
        app.state.service.poll()
        assert predict(client, tiny)["model_version"] == "1"
        assert states(client)["2"] == ("loaded", None, None)
        assert client.post("/admin/reload").json()["changed"] is False


@pytest.mark.parametrize("half", ["truncated", "missing"])
def test_a_half_copied_version_is_never_loaded_until_it_is_whole(tiny, second, tmp_path, caplog,
                                                                 half):
    caplog.set_level(logging.INFO, logger="vgg_mobile.serving")
    repository = tmp_path / "colours"
    deploy(second, repository, 2)
    app = create_app(ServeConfig(artifact=repository, poll_seconds=POLL))
    with local_client(app) as client:
        assert predict(client, tiny)["model_version"] == "2"
        # A copy straight into the repository, caught halfway: the manifest is there, the
        # model is not whole (or not there), the other artifacts not yet.
        partial = repository / "3"
        partial.mkdir()
        for name in ("manifest.json", "labels.txt"):
            shutil.copy(tiny.export_dir / name, partial / name)
        good = (tiny.export_dir / MODEL).read_bytes()
        if half == "truncated":
            (partial / MODEL).write_bytes(good[:len(good) // 3])
        wait_for(lambda: "version 3 of" in caplog.text and "is incomplete" in caplog.text,
                 "the watcher to notice version 3")
        app.state.service.poll()
        state, reason, _ = states(client)["3"]
        assert state == "incomplete" and reason.startswith(f"3/{MODEL}: ")
        assert ("missing" if half == "missing" else f"not the {len(good):,} its manifest") in reason
        assert str(tmp_path) not in reason
        assert predict(client, tiny)["model_version"] == "2"

        (partial / MODEL).write_bytes(good)  # the model is whole; the ONNX files are not there
        app.state.service.poll()
        assert states(client)["3"][0] == "incomplete"
        assert predict(client, tiny)["model_version"] == "2"

        for path in tiny.export_dir.iterdir():
            if not (partial / path.name).exists():
                shutil.copy(path, partial / path.name)
        wait_for(lambda: client.get("/health").json()["model_version"] == "3", "version 3")
        body = predict(client, tiny)
        # The folder's number, not the metadata's version ("1" in this model).
        assert body["model_version"] == "3" and body["model_sha256"] == sha256(tiny.files["int8"])
        # Never loaded while incomplete: a load would have refused the truncated model.
        assert metric(client, "vgg_mobile_model_loads_total", result="refused") == 0
        assert metric(client, "vgg_mobile_model_loads_total", result="ok") == 2


def test_a_broken_version_is_refused_once_and_the_old_one_keeps_serving(tiny, second, tmp_path,
                                                                       caplog):
    caplog.set_level(logging.INFO, logger="vgg_mobile.serving")
    repository = tmp_path / "colours"
    deploy(tiny.export_dir, repository, 3)
    app = create_app(ServeConfig(artifact=repository, poll_seconds=POLL))
    with local_client(app) as client:
        staging = shutil.copytree(second, tmp_path / "four")
        good = corrupt(staging)
        assert incomplete_reason(staging) is None  # whole by its manifest
        os.rename(staging, repository / "4")
        wait_for(lambda: states(client).get("4", ("",))[0] == "refused", "version 4 refused")
        _, reason, _ = states(client)["4"]
        assert reason.startswith(f"4/{MODEL}: ") and str(tmp_path) not in reason, reason
        refusals = [r for r in caplog.records if "version 4 of" in r.getMessage()
                    and "refused" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
        assert f"{repository / '4' / MODEL}: " in refusals[0].getMessage()
        assert metric(client, "vgg_mobile_model_loads_total", result="refused") == 1
        health = client.get("/health").json()
        assert health["model_version"] == "3" and predict(client, tiny)["model_version"] == "3"
        assert metric(client, "vgg_mobile_model_version") == 3

        # Not tried again while its folder is as it was: no second count, no second line.
        for _ in range(3):
            app.state.service.poll()
        response = client.post("/admin/reload")
        assert response.status_code == 422 and response.json()["error"] == "model_refused"
        assert "version 4 was refused and version 3" in response.json()["detail"]
        assert metric(client, "vgg_mobile_model_loads_total", result="refused") == 1
        assert len([r for r in caplog.records if "refused:" in r.getMessage()]) == 1

        # Its folder changed (the model fixed in place): tried again, and it serves.
        (repository / "4" / MODEL).write_bytes(good)
        wait_for(lambda: client.get("/health").json()["model_version"] == "4", "version 4")
        assert predict(client, tiny)["model_sha256"] == sha256(second / MODEL)
        assert states(client) == {"3": ("loaded", None, None), "4": ("serving", None, None)}


def test_requests_during_a_new_version_all_succeed_and_never_go_back(tiny, second, tmp_path):
    repository = tmp_path / "colours"
    deploy(tiny.export_dir, repository, 1)
    app = create_app(ServeConfig(artifact=repository, concurrency=2, poll_seconds=POLL))

    with serving(app) as address:
        with clients_under_load(address, tiny.requests) as load:
            wait_for(lambda: all(len(answers) >= 5 for answers in load.by_client.values()),
                     "answers from version 1")
            deploy(second, repository, 2)
            wait_for(lambda: all(sum(body.get("model_version") == "2" for _, body, _ in answers)
                                 >= 5 for answers in load.by_client.values()),
                     "answers from version 2")
        seen = {index: [(status, body.get("model_version"), header)
                        for status, body, header in answers]
                for index, answers in load.by_client.items()}
        failures = load.failures
        assert call(address, "GET", "/health")[1]["model_version"] == "2"
    assert not failures, failures[:5]
    for answers in seen.values():
        assert {status for status, _, _ in answers} == {200}
        assert all(version == header for _, version, header in answers)
        versions = [version for _, version, _ in answers]
        assert versions[0] == "1" and versions[-1] == "2"
        switch = versions.index("2")
        assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}, versions


def test_at_start_the_newest_valid_version_serves_and_none_valid_exits_2(tiny, second,
                                                                          tmp_path, caplog):
    from vgg_mobile.cli.main import main

    repository = tmp_path / "colours"
    deploy(tiny.export_dir, repository, 1)
    corrupt(deploy(second, repository, 2))
    client = local_client(create_app(ServeConfig(artifact=repository, poll_seconds=0)))
    assert predict(client, tiny)["model_version"] == "1"
    found = states(client)
    assert found["1"] == ("serving", None, None) and found["2"][0] == "refused"
    assert found["2"][1].startswith(f"2/{MODEL}: ")
    assert metric(client, "vgg_mobile_model_loads_total", result="refused") == 1
    assert f"version 2 of {repository} refused: {repository / '2' / MODEL}: " in caplog.text

    # No valid version: 1/ is broken, 3/ half-copied: each one's reason, exit code 2.
    corrupt(repository / "1")
    (repository / "3").mkdir()
    shutil.copy(second / "manifest.json", repository / "3" / "manifest.json")
    result = CliRunner().invoke(main, ["serve-model", str(repository), "--port", "0"])
    assert result.exit_code == 2, result.output
    assert f"{repository}: no version of this model repository can be served" in result.output
    assert f"version 3: incomplete: {repository / '3' / MODEL}: missing" in result.output
    assert f"version 2: {repository / '2' / MODEL}: " in result.output
    assert f"version 1: {repository / '1' / MODEL}: " in result.output

    # No numbered folder: nothing to serve, whatever else the folder holds.
    empty = tmp_path / "empty"
    shutil.copytree(second, empty / "latest")
    shutil.copytree(second, empty / ".1")
    (empty / "2").write_text("a file")
    result = CliRunner().invoke(main, ["serve-model", str(empty), "--port", "0"])
    assert result.exit_code == 2, result.output
    assert f"{empty}: not an export folder" in result.output
    assert "nor a model repository (no numbered version folder such as 1/)" in result.output


def test_a_single_export_folder_serves_as_before_and_names_its_version(tiny):
    assert not is_repository(tiny.export_dir) and not is_repository(tiny.export_dir.parent)
    client = local_client(create_app(ServeConfig(artifact=tiny.export_dir, poll_seconds=POLL)))
    body = predict(client, tiny)
    assert body["model_version"] == "1"
    model = client.get("/model").json()
    assert "versions" not in model and model["path"] == MODEL
    assert metric(client, "vgg_mobile_model_version") is None
    assert client.post("/admin/reload").json()["changed"] is False
    spec = client.get("/openapi.json").json()
    assert "X-Model-Version" in spec["paths"]["/predict"]["post"]["responses"]["200"]["headers"]


def test_each_worker_process_swaps_in_a_new_version_and_logs_it(tiny, second, tmp_path):
    repository = tmp_path / "colours"
    deploy(tiny.export_dir, repository, 1)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "vgg_mobile", "serve-model", str(repository), "--port", str(port),
         "--workers", "2", "--poll-seconds", "0.2", "--no-access-log"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "with 2 worker processes" in process.stdout.readline()
        address = ("127.0.0.1", port)
        wait_for(lambda: _health(address), "the workers to answer")
        deploy(second, repository, 2)
        # Fresh connections reach either worker: both must answer version 2 for a while.
        wait_for(lambda: all(_health(address) == "2" for _ in range(20)), "version 2 everywhere")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert stderr.count(f"now serving version 2 of {repository} (was version 1)") == 2, stderr


def _health(address) -> str | None:
    try:
        status, body = call(address, "GET", "/health")
    except OSError:
        return None
    return body["model_version"] if status == 200 else None


def test_version_folders_are_named_by_digits_and_checked_without_loading(tiny, tmp_path):
    repository = tmp_path / "colours"
    for name in ("7", "07", "12", "\u0661", "1" * 19, "3a"):
        shutil.copytree(tiny.export_dir, repository / name)
    found = version_folders(repository)
    assert [folder.number for folder in found] == [7, 12]
    assert found[0].problem == "07/, 7/ name the same version 7; keep one"
    assert found[1].complete and found[1].fingerprint == fingerprint(repository / "12")

    # A numbered symbolic link is a version that never loads, whatever it points at.
    (repository / "13").symlink_to(repository / "12", target_is_directory=True)
    (repository / "14").symlink_to("/etc")
    linked = {folder.number: folder for folder in version_folders(repository)}
    assert "13/ is a symbolic link" in linked[13].problem and not linked[13].complete
    assert f"(to {repository / '12'})" in linked[13].problem
    assert "14/ is a symbolic link (to /etc)" in linked[14].problem
    assert linked[12].complete

    # A folder artifact (a TF.js bundle) is whole when its listed files add up to its size.
    bundle = shutil.copytree(tiny.export_dir, tmp_path / "bundle")
    (bundle / "tfjs").mkdir()
    (bundle / "tfjs" / "model.json").write_text("{}")
    (bundle / "tfjs" / "group1-shard1of1.bin").write_bytes(b"x" * 10)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"].append({"file": "tfjs/", "format": "tfjs_graph_model",
                                  "files": ["group1-shard1of1.bin", "model.json"],
                                  "size_bytes": 12})
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert incomplete_reason(bundle) is None
    (bundle / "tfjs" / "model.json").unlink()
    assert "1 of its 2 files missing (model.json)" in incomplete_reason(bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest)[:50])
    assert "not valid JSON" in incomplete_reason(bundle)


def test_poll_seconds_is_a_flag_and_checked():
    from vgg_mobile.cli.main import main

    help_text = " ".join(CliRunner().invoke(main, ["serve-model", "--help"]).output.split())
    assert "--poll-seconds FLOAT RANGE" in help_text and "[default: 2.0;" in help_text
    result = CliRunner().invoke(main, ["serve-model", ".", "--poll-seconds", "-1"])
    assert result.exit_code == 2 and "--poll-seconds" in result.output
    with pytest.raises(Exception, match="poll_seconds must be a number of seconds >= 0"):
        ServeConfig(artifact=".", poll_seconds=float("inf"))
    assert ServeConfig.from_json(ServeConfig(artifact=".", poll_seconds=0.5).to_json()
                                 ).poll_seconds == 0.5
