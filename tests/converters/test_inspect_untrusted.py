"""`vgg-mobile inspect` on damaged `.tflite` files: always an answer, never a crash."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from vgg_mobile.converters import inspection, metadata, tflite
from vgg_mobile.core.errors import BadInputError

NAME = "inspect-me"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny classifier `.tflite` with metadata and a label file, about 8 KB."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs)
    dense = model.layers[-2]
    kernel, bias = dense.get_weights()
    dense.set_weights([np.where(np.arange(kernel.size).reshape(kernel.shape) % 4 == 0, 0, kernel),
                       bias])
    content = metadata.add_metadata(tflite.convert_keras_model(model, "float32"), ["cat", "dog"],
                                    metadata.ModelInfo(name=NAME, description="tiny", version="1"))
    path = tmp_path_factory.mktemp("inspect") / "model.tflite"
    path.write_bytes(content)
    return path


def _assert_refused(result, path):
    assert result.returncode == 2, (path, result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {path}: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_an_intact_file_is_read_in_full(cli, model_file):
    result = cli("inspect", model_file, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert list(report) == ["file", "size_bytes", "inputs", "outputs", "weight_sparsity",
                            "metadata", "associated_files"]
    assert report["size_bytes"] == model_file.stat().st_size
    assert report["inputs"][0]["shape"] == [1, 8, 8, 3]
    assert report["outputs"][0]["shape"] == [1, 2]
    assert report["metadata"]["name"] == NAME
    assert report["associated_files"]["labels.txt"].split() == ["cat", "dog"]
    # The reader's own count agrees with the library's.
    assert report["weight_sparsity"] == tflite.weight_sparsity(model_file.read_bytes())
    assert report["weight_sparsity"]["tensors"] == 1 and report["weight_sparsity"]["zeros"] > 0


def test_a_bad_header_is_refused_before_any_reader_runs(cli, model_file, tmp_path):
    content = model_file.read_bytes()
    root = int.from_bytes(content[:4], "little")
    cases = {"empty.tflite": (b"", "0 bytes"),
             "short.tflite": (content[:7], "7 bytes"),
             "png.tflite": (b"\x89PNG\r\n\x1a\n" + content[8:], "no TFL3 file identifier"),
             "root.tflite": ((len(content) + 16).to_bytes(4, "little") + content[4:],
                             "root table offset"),
             "cut.tflite": (content[:root], "root table offset")}
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(BadInputError, match="not a valid TFLite model") as info:
            inspection.check_structure(data, path)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
        result = cli("inspect", path)
        _assert_refused(result, path)
        assert message in result.stderr


def test_corrupt_metadata_json_is_bad_input(cli, model_file, tmp_path):
    content = bytearray(model_file.read_bytes())
    at = content.index(NAME.encode())
    content[at + 1] = 0xFF  # not UTF-8: the metadata's JSON cannot be parsed
    path = tmp_path / "meta.tflite"
    path.write_bytes(content)
    result = cli("inspect", path)
    _assert_refused(result, path)
    assert "damaged TFLite metadata" in result.stderr


def test_randomly_damaged_files_never_crash_the_command(cli, model_file, tmp_path):
    """24 seeded variants: a few bytes flipped or overwritten, or the file cut short.

    Some of these crash LiteRT or tflite-support when read in-process (SIGSEGV, or an abort
    on a double free); the command must answer each with exit 0 or a message and exit 2.
    """
    original = model_file.read_bytes()
    rng = random.Random(0)
    codes = []
    for i in range(24):
        data = bytearray(original)
        kind = rng.choice(["flip", "flip", "overwrite", "truncate"])
        if kind == "truncate":
            data = data[:rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(data))
                data[at] = data[at] ^ (1 << rng.randrange(8)) if kind == "flip" else rng.randrange(256)
        path = tmp_path / f"variant_{i:02d}_{kind}.tflite"
        path.write_bytes(data)
        result = cli("inspect", path, "--json", timeout=120)
        assert result.returncode in (0, 2), (path.name, result.returncode, result.stderr[-2000:])
        if result.returncode == 2:
            _assert_refused(result, path)
        else:
            assert json.loads(result.stdout)["file"] == str(path)
        codes.append(result.returncode)
    assert codes.count(2) >= 12, codes
