"""The run-directory contract: atomic writes and validated loading."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from vgg_mobile.core import run_dir
from vgg_mobile.core.errors import RunDirError


def test_finished_run_round_trips(teacher_run):
    run = run_dir.load_run(teacher_run.run_dir)
    assert run.classes == ("circle", "cross", "square", "triangle")
    assert run.image_size == 32
    model = run.load_model()
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    assert model(x).shape == (2, 4)
    assert model.optimizer is None  # saved without training state


@pytest.fixture()
def run_copy(teacher_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(teacher_run.run_dir, copy)
    return copy


def test_missing_manifest_means_unfinished(run_copy):
    (run_copy / "manifest.json").unlink()
    with pytest.raises(RunDirError, match="manifest.json: missing.*not a finished run"):
        run_dir.load_run(run_copy)
    (run_copy / "checkpoints").mkdir()
    with pytest.raises(RunDirError, match="--resume"):
        run_dir.load_run(run_copy)


def test_corrupt_or_newer_manifest(run_copy):
    manifest = run_copy / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    with pytest.raises(RunDirError, match="manifest.json: not valid JSON"):
        run_dir.load_run(run_copy)
    data = json.loads(text)
    data["schema_version"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(RunDirError, match="schema_version 99 is not supported"):
        run_dir.load_run(run_copy)


def test_labels_must_agree_with_the_manifest(run_copy):
    (run_copy / "labels.txt").write_text("circle\nsquare\ncross\ntriangle\n")
    with pytest.raises(RunDirError, match="labels.txt: labels .* disagree"):
        run_dir.load_run(run_copy)


def test_truncated_or_missing_model_names_the_file(run_copy):
    model = run_copy / "model.keras"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 3])
    run = run_dir.load_run(run_copy)
    with pytest.raises(RunDirError, match="model.keras: cannot load the model"):
        run.load_model()
    model.unlink()
    with pytest.raises(RunDirError, match="model.keras: model file missing"):
        run.load_model()


def test_a_manifest_is_built_one_way_and_validated():
    manifest = run_dir.Manifest(stage="pruned", classes=("a", "b"), input={"size": [32, 32]},
                                parent="/runs/teacher", sections={"compression": {"method": "m"}})
    written = manifest.to_json()
    assert written["stage"] == "pruned" and written["num_classes"] == 2
    assert written["compression"] == {"method": "m"} and written["model_file"] == "model.keras"
    assert "quantization_aware" not in written and list(written)[-1] == "versions"
    with pytest.raises(ValueError, match="stage must be a name"):
        run_dir.Manifest(stage="../x", classes=("a",), input={})
    with pytest.raises(ValueError, match="classes must be distinct"):
        run_dir.Manifest(stage="teacher", classes=("a", "a"), input={})
    with pytest.raises(ValueError, match=r"sections may not redefine manifest fields. Received: \['stage'\]"):
        run_dir.Manifest(stage="teacher", classes=("a",), input={}, sections={"stage": "x"})


def test_a_manifest_read_back_is_the_record_that_was_written(tmp_path):
    manifest = run_dir.Manifest(stage="pruned", classes=("a", "b"), input={"size": [32, 32]},
                                architecture="vgg16", parent="/runs/teacher",
                                data={"path": "/d", "seed": 3}, metrics={"accuracy": 0.5},
                                quantization_aware=True,
                                sections={"compression": {"method": "m"}})
    written = manifest.to_json()
    read = run_dir.Manifest.from_json(json.loads(json.dumps(written)), tmp_path / "m.json")
    assert read.to_json() == written
    assert (read.stage, read.classes, read.image_size, read.seed) == ("pruned", ("a", "b"), 32, 3)
    assert read.quantization_aware and read.section("compression") == {"method": "m"}
    assert read.section("teacher") == {} and read.created == written["created"]
    # A manifest without `kind` is a classifier's, for every reader alike.
    legacy = {key: value for key, value in written.items() if key != "kind"}
    assert run_dir.Manifest.from_json(legacy, tmp_path / "m.json").kind == "image_classifier"
    with pytest.raises(RunDirError, match=r"m.json: missing required field 'input'"):
        run_dir.Manifest.from_json({"stage": "x", "classes": ["a"]}, tmp_path / "m.json")


def test_a_students_unlabelled_images_are_read_back_and_may_be_absent(tmp_path):
    record = {"folder": "/photos", "images": 40, "duplicates": 2, "unreadable": 1,
              "fingerprint": "0123456789abcdef"}
    manifest = run_dir.Manifest(stage="student", classes=("a", "b"), input={"size": [32, 32]},
                                data={"path": "/d", "unlabeled": record})
    written = manifest.to_json()
    read = run_dir.Manifest.from_json(json.loads(json.dumps(written)), tmp_path / "m.json")
    assert read.unlabeled == record and read.to_json() == written
    # Null (distilled without them), or absent (a teacher, or a student from before them).
    for data in ({"path": "/d", "unlabeled": None}, {"path": "/d"}):
        assert run_dir.Manifest.from_json({**written, "data": data}, tmp_path / "m.json").unlabeled is None
    for bad in ("/photos", {"images": 40}, {**record, "images": -1}, {**record, "duplicates": "2"}):
        with pytest.raises(RunDirError, match=r"m.json: data.unlabeled must be null or an object"):
            run_dir.Manifest.from_json({**written, "data": {"unlabeled": bad}}, tmp_path / "m.json")


def test_read_manifest_is_none_for_a_folder_without_one_and_names_a_damaged_one(tmp_path):
    assert run_dir.read_manifest(tmp_path) is None
    (tmp_path / "manifest.json").write_text('{"schema_version": 1, "stage": 3}')
    with pytest.raises(RunDirError, match=r"manifest.json: missing required field"):
        run_dir.read_manifest(tmp_path)


def _bare_run(folder, manifest_text: str, labels: bytes = b"a\nb\n"):
    """A run folder holding only a manifest and labels: `load_run` reads nothing else."""
    folder.mkdir()
    (folder / "manifest.json").write_text(manifest_text, encoding="utf-8")
    (folder / "labels.txt").write_bytes(labels)
    return folder


_GOOD = {"schema_version": 1, "stage": "teacher", "classes": ["a", "b"], "input": {"size": [32, 32]}}


@pytest.mark.parametrize("text,labels,words", [
    ("[" * 100_000 + "]" * 100_000, b"a\nb\n", "manifest.json: not valid JSON"),
    (json.dumps({**_GOOD, "config": json.loads("[" * 900 + "]" * 900)}) .replace(
        "[]", "[" * 100_000 + "]" * 100_000), b"a\nb\n", "manifest.json: not valid JSON"),
    (json.dumps({**_GOOD, "input": "big"}), b"a\nb\n", "manifest.json: input must be an object"),
    (json.dumps({**_GOOD, "input": {"size": "big"}}), b"a\nb\n", "manifest.json: input.size"),
    (json.dumps(_GOOD), b"\xe9\xff\n", "labels.txt: not UTF-8 text"),
    (json.dumps({**_GOOD, "stage": "-" * 50_000_000}), b"a\nb\n", "manifest.json: stage must be"),
])
def test_hostile_manifests_and_labels_are_refused_naming_the_file(tmp_path, text, labels, words):
    folder = _bare_run(tmp_path / "run", text, labels)
    with pytest.raises(RunDirError, match=re.escape(f"{folder}/{words}")) as err:
        run_dir.load_run(folder)
    assert len(str(err.value)) < 400 and "\n" not in str(err.value)
