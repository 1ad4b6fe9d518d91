"""Pretrained weights as Keras users expect: downloaded into the Keras cache when missing,
atomically and hash-checked, unless offline; `auto` never downloads.

Nothing here touches the internet: downloads come from `file://` folders or a server on
127.0.0.1, and `conftest.py` points every other download at a port that refuses.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import inspect
import threading

import numpy as np
import pytest

from vgg_mobile.core.errors import BadInputError, VggMobileError
from vgg_mobile.models import architectures as models
from vgg_mobile.models import weights
from vgg_mobile.models.architectures import ModelOptions, build_classifier, resolve_weights

VGG_FILE = models.get_architecture("vgg16").imagenet_file
REFUSING = "http://127.0.0.1:9/"


def _tiny_h5(path, megabytes: float = 2.0):
    """A real HDF5 file of about `megabytes` MB; returns its MD5."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.random.default_rng(0).standard_normal(int(megabytes * 1e6 / 4)).astype("float32")
    with h5py.File(path, "w") as f:
        f.create_dataset("block1_conv1/kernel", data=values)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _with_hash(monkeypatch, file_name: str, file_hash: str | None) -> None:
    entry = weights.KERAS_WEIGHTS[file_name]
    monkeypatch.setitem(weights.KERAS_WEIGHTS, file_name,
                        weights.KerasWeights(entry.file_name, entry.url, file_hash))


def _no_download(*args, **kwargs):
    raise AssertionError("the downloader was called")


@pytest.fixture()
def mirror(tmp_path, monkeypatch):
    """A local folder standing in for Keras's server, as `VGG_MOBILE_WEIGHTS_URL`."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    monkeypatch.setenv(weights.WEIGHTS_URL_ENV, folder.as_uri() + "/")
    monkeypatch.delenv(weights.OFFLINE_ENV, raising=False)
    return folder


def test_every_registered_architecture_has_the_url_and_hash_keras_uses(monkeypatch):
    from tf_keras.src.applications import mobilenet_v2, mobilenet_v3, vgg16

    monkeypatch.delenv(weights.WEIGHTS_URL_ENV)
    for name, spec in models.ARCHITECTURES.items():
        if not spec.imagenet_file:  # vgg16_bn: Keras has no ImageNet weights for it
            assert name.startswith("vgg16_bn")
            continue
        entry = weights.KERAS_WEIGHTS[spec.imagenet_file]
        assert weights.weights_url(spec.imagenet_file) == entry.url, name
        if spec.family == "mobilenet_v2":
            assert entry.url == mobilenet_v2.BASE_WEIGHT_PATH + spec.imagenet_file
            assert entry.file_hash is None  # tf_keras checks none for MobileNetV2
        elif spec.family == "mobilenet_v3":
            assert entry.url == mobilenet_v3.BASE_WEIGHT_PATH + spec.imagenet_file
            size = name.rsplit("_", 1)[1]
            assert entry.file_hash == mobilenet_v3.WEIGHTS_HASHES[f"{size}_224_1.0_float"][1]
        else:
            assert entry.url == vgg16.WEIGHTS_PATH_NO_TOP
            assert f'file_hash="{entry.file_hash}"' in inspect.getsource(vgg16)


def test_imagenet_downloads_atomically_into_the_keras_cache_with_progress(mirror, keras_home,
                                                                           monkeypatch):
    digest = _tiny_h5(mirror / VGG_FILE)
    _with_hash(monkeypatch, VGG_FILE, digest)
    monkeypatch.setattr(weights, "_CHUNK", 64 * 1024)
    lines: list[str] = []
    path = resolve_weights("imagenet", "vgg16", log=lines.append)
    assert path == str(keras_home / "models" / VGG_FILE)
    assert (keras_home / "models" / VGG_FILE).read_bytes() == (mirror / VGG_FILE).read_bytes()
    assert [p.name for p in (keras_home / "models").iterdir()] == [VGG_FILE]  # no temp file
    assert lines[0].startswith(f"downloading ImageNet weights for vgg16 ({VGG_FILE}) from "
                               f"{mirror.as_uri()}/{VGG_FILE}")
    progress = [line for line in lines if line.startswith(f"{VGG_FILE}: ")]
    assert [line.split()[1] for line in progress] == [f"{p}%" for p in range(10, 101, 10)]
    assert lines[-1].endswith("md5 checked") and len(lines) == 12
    # Cached now: used as it is, nothing downloaded again.
    monkeypatch.setattr(weights, "download", _no_download)
    assert resolve_weights("imagenet", "vgg16", offline=True) == path


def test_a_wrong_hash_fails_naming_both_hashes_and_keeps_nothing(mirror, keras_home, monkeypatch):
    digest = _tiny_h5(mirror / VGG_FILE)
    _with_hash(monkeypatch, VGG_FILE, "0" * 32)
    with pytest.raises(VggMobileError) as err:
        resolve_weights("imagenet", "vgg16")
    message = str(err.value)
    assert not isinstance(err.value, BadInputError)
    assert VGG_FILE in message and digest in message and "0" * 32 in message, message
    assert "\n" not in message
    assert list((keras_home / "models").iterdir()) == []


def test_no_network_is_one_line_saying_what_to_do_and_leaves_nothing(keras_home, monkeypatch,
                                                                     tmp_path):
    monkeypatch.setenv(weights.WEIGHTS_URL_ENV, REFUSING)
    with pytest.raises(VggMobileError) as err:
        resolve_weights("imagenet", "vgg16")
    message = str(err.value)
    assert not isinstance(err.value, BadInputError)  # an environment failure: exit code 1
    assert "\n" not in message
    for word in ("ImageNet weights for vgg16", REFUSING + VGG_FILE, "connection refused",
                 f"copy {VGG_FILE} to {keras_home / 'models'}", "KERAS_HOME",
                 "--weights PATH", "--weights none"):
        assert word in message, (word, message)
    assert list((keras_home / "models").iterdir()) == []
    # Not even the cache folder is made when the connection fails.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "fresh"))
    with pytest.raises(VggMobileError, match="connection refused"):
        resolve_weights("imagenet", "mobilenet_v3_large")
    assert not (tmp_path / "fresh").exists()


class _Response:
    """A response of `length` bytes that sends one 1 KB chunk, then fails with `error` (or
    ends, when `error` is `None`)."""

    def __init__(self, error: BaseException | None, length: int = 3 * 1024 * 1024):
        self.headers = {"Content-Length": str(length)}
        self.error, self.sent = error, False

    def read(self, n):
        if self.sent:
            if self.error is None:
                return b""
            raise self.error
        self.sent = True
        return b"x" * 1024

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("error, raised, words", [
    (ConnectionResetError(104, "Connection reset by peer"), VggMobileError, "connection reset by peer"),
    (TimeoutError("timed out"), VggMobileError, "timed out after 30 s"),
    (KeyboardInterrupt(), KeyboardInterrupt, None),
])
def test_a_failed_or_interrupted_download_removes_its_temporary_file(keras_home, monkeypatch,
                                                                    error, raised, words):
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _Response(error))
    with pytest.raises(raised) as err:
        resolve_weights("imagenet", "mobilenet_v2_0.35")
    if words:
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert list((keras_home / "models").iterdir()) == []


def test_a_short_download_is_refused(keras_home, monkeypatch):
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _Response(None, 4096))
    with pytest.raises(VggMobileError, match="closed after 1024 of 4096 bytes"):
        resolve_weights("imagenet", "mobilenet_v2_0.35")
    assert list((keras_home / "models").iterdir()) == []


def test_downloads_over_http_and_names_http_errors(tmp_path, keras_home, monkeypatch):
    folder = tmp_path / "served"
    _tiny_h5(folder / VGG_FILE, megabytes=0.5)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv(weights.WEIGHTS_URL_ENV, f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(VggMobileError, match="HTTP 404") as err:
            resolve_weights("imagenet", "mobilenet_v3_small", flag="--student-weights")
        assert "--student-weights none" in str(err.value)
        assert list((keras_home / "models").iterdir()) == []
        _with_hash(monkeypatch, VGG_FILE, None)
        lines: list[str] = []
        path = resolve_weights("imagenet", "vgg16", log=lines.append)
        assert open(path, "rb").read() == (folder / VGG_FILE).read_bytes()
        assert "not checked" in lines[-1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_offline_refuses_with_the_not_found_line_and_never_calls_the_downloader(keras_home,
                                                                               monkeypatch, how):
    monkeypatch.setattr(weights, "download", _no_download)
    if how == "environment":
        monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    with pytest.raises(BadInputError) as err:
        build_classifier(ModelOptions(image_size=32, weights="imagenet"), 2,
                         offline=how == "argument")
    message = str(err.value)
    assert message.startswith(f"ImageNet weights for vgg16 not found at {keras_home / 'models' / VGG_FILE}")
    assert "--offline" in message and weights.OFFLINE_ENV in message and "\n" not in message
    assert list((keras_home / "models").iterdir()) == []


def test_the_offline_variable_is_checked(monkeypatch):
    for value, expected in (("1", True), ("TRUE", True), ("on", True), ("0", False), ("", False),
                            ("no", False)):
        monkeypatch.setenv(weights.OFFLINE_ENV, value)
        assert weights.offline_from_env() is expected, value
    monkeypatch.setenv(weights.OFFLINE_ENV, "maybe")
    with pytest.raises(BadInputError, match="VGG_MOBILE_OFFLINE='maybe'"):
        resolve_weights("imagenet", "vgg16")


def test_auto_never_downloads(keras_home, monkeypatch):
    monkeypatch.setattr(weights, "download", _no_download)
    for name in models.ARCHITECTURES:
        assert models.choose_weights("auto", name) == "none"
        assert resolve_weights("auto", name) is None
    _tiny_h5(keras_home / "models" / VGG_FILE, megabytes=0.01)
    assert resolve_weights("auto", "vgg16") == str(keras_home / "models" / VGG_FILE)


def test_a_pretrained_student_loads_the_downloaded_weights(mirror, keras_home, monkeypatch):
    import tf_keras as keras

    from vgg_mobile.distillation.distill import DistillConfig

    name = "mobilenet_v2_0.35"
    file_name = models.get_architecture(name).imagenet_file
    keras.utils.set_random_seed(3)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35,
                                          input_shape=(224, 224, 3))
    base.save_weights(mirror / file_name)
    _with_hash(monkeypatch, file_name, hashlib.md5((mirror / file_name).read_bytes()).hexdigest())
    options = DistillConfig(student=name, student_weights="imagenet").student_options(32)
    assert options.weights == "imagenet"
    model = build_classifier(options, 4)
    assert (keras_home / "models" / file_name).is_file()
    for layer in ("Conv1", "block_16_project"):
        np.testing.assert_array_equal(model.get_layer(layer).get_weights()[0],
                                      base.get_layer(layer).get_weights()[0])
    with pytest.raises(BadInputError, match="student_weights=''"):
        DistillConfig(student_weights="")


def test_distill_downloads_the_students_weights_before_any_work(teacher_run, sample_dir, mirror,
                                                                keras_home, tmp_path):
    import json

    import tf_keras as keras

    from vgg_mobile.distillation.distill import DistillConfig, distill

    file_name = models.get_architecture("mobilenet_v2_0.35").imagenet_file
    keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35,
                                   input_shape=(224, 224, 3)).save_weights(mirror / file_name)
    lines: list[str] = []
    config = DistillConfig(student="mobilenet_v2_0.35", image_size=32, epochs=1, batch_size=16,
                           student_weights="imagenet")
    result = distill(teacher_run.run_dir, sample_dir, tmp_path / "student", config, log=lines.append)
    assert (keras_home / "models" / file_name).is_file()
    assert any(line.startswith("downloading ImageNet weights for mobilenet_v2_0.35") for line in lines)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["config"]["model"]["weights"] == "imagenet"
    assert manifest["config"]["distill"]["student_weights"] == "imagenet"


def test_the_real_preset_asks_for_pretrained_teacher_and_student():
    from vgg_mobile.pipeline.config import build_config

    real, sample = build_config({}, "real"), build_config({}, "sample")
    assert (real.teacher.model.weights, real.student.student_weights) == ("imagenet", "imagenet")
    assert (sample.teacher.model.weights, sample.student.student_weights) == ("none", "none")


def test_train_offline_exits_2_with_the_message(cli, sample_dir, tmp_path):
    keras_home = tmp_path / "keras_home"
    args = ("train", sample_dir, "--out", tmp_path / "run", "--weights", "imagenet",
            "--image-size", "32")
    result = cli(*args, "--offline", env={"KERAS_HOME": str(keras_home)})
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not found at" in errors[0] and "--offline" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
    # Online, a refused connection is an environment failure: exit 1, one line, nothing kept.
    result = cli(*args, env={"KERAS_HOME": str(keras_home)})
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "connection refused" in errors[0], result.stderr
    assert not (tmp_path / "run").exists()
    assert not any(keras_home.rglob("*.h5*"))


def test_the_commands_offer_offline_and_student_weights(cli):
    for command in ("train", "distill", "pipeline"):
        result = cli(command, "--help")
        assert result.returncode == 0 and "--offline" in result.stdout, command
    assert "--student-weights" in cli("distill", "--help").stdout
