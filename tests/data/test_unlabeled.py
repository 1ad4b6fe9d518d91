"""Folders of unlabelled images: the file walk and check, copies of labelled images left out,
and the folders refused (with `vgg-mobile distill --unlabeled` exiting 2 before writing)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import image_folder
from vgg_mobile.core.errors import DataError
from vgg_mobile.data import dataset
from vgg_mobile.data.unlabeled import scan_unlabeled


@pytest.fixture()
def labelled(tmp_path) -> dataset.ImageFolder:
    """A pre-split folder (`train/`, `val/`) with a `test/` folder the scan does not read."""
    root = tmp_path / "data"
    image_folder(root / "train", {"cat": 3, "dog": 3}, size=16, seed=1)
    image_folder(root / "val", {"cat": 2, "dog": 2}, size=16, seed=2)
    image_folder(root / "test", {"cat": 1}, size=16, seed=3)
    return dataset.scan_folder(root)


def test_images_at_any_depth_are_kept_copies_of_labelled_ones_left_out_bad_ones_listed(
        tmp_path, labelled):
    root = image_folder(tmp_path / "photos", {"2024/summer": 3, "misc": 2}, size=16, seed=9)
    (root / "top.png").write_bytes((root / "misc" / "1.png").read_bytes()[:-1] + b"\0")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "Thumbs.db").write_bytes(b"\0")
    (root / ".hidden").mkdir()
    shutil.copy(root / "misc" / "0.jpg", root / ".hidden" / "copy.jpg")
    # A copy of a training image, of a validation image and of a test image, renamed.
    shutil.copy(labelled.train[0].path, root / "misc" / "train_copy.png")
    shutil.copy(labelled.val[0].path, root / "2024" / "val_copy.jpg")
    shutil.copy(labelled.root / "test" / "cat" / "0.jpg", root / "test_copy.jpg")
    found = scan_unlabeled(root, labelled)
    assert [p.relative_to(root).as_posix() for p in found.images] == [
        "2024/summer/0.jpg", "2024/summer/1.png", "2024/summer/2.jpg", "misc/0.jpg",
        "misc/1.png", "top.png"]
    assert found.duplicates == 3
    assert {c.path.name: c.problem for c in found.bad}.keys() == {"broken.jpg"}
    assert found.record() == {"folder": str(root.resolve()), "images": 6, "duplicates": 3,
                              "unreadable": 1, "fingerprint": found.fingerprint}
    with pytest.raises(DataError, match=r"(?s)1 bad file\(s\) \(strict mode\).*broken\.jpg"):
        scan_unlabeled(root, labelled, strict=True)


def test_the_fingerprint_follows_the_images_contents(tmp_path, labelled):
    root = image_folder(tmp_path / "photos", {"a": 3}, size=16, seed=9)
    before = scan_unlabeled(root, labelled).fingerprint
    assert scan_unlabeled(root, labelled).fingerprint == before
    shutil.copy(root / "a" / "0.jpg", root / "a" / "2.jpg")
    assert scan_unlabeled(root, labelled).fingerprint != before


def _only_labelled_copies(tmp_path, labelled) -> Path:
    root = tmp_path / "copies"
    root.mkdir()
    for i, example in enumerate(labelled.train[:2]):
        shutil.copy(example.path, root / f"{i}{example.path.suffix}")
    return root


@pytest.mark.parametrize("case,message", [
    ("missing", "no such folder"),
    ("file", "not a folder"),
    ("data", "is the data folder itself"),
    ("inside", "lies inside the data folder"),
    ("contains", "contains the data folder"),
    ("classes", ("holds folders named like the data folder's classes (copy/test/cat, "
                 "copy/train/cat, copy/train/dog, copy/val/cat, copy/val/dog)")),
    ("empty", "the unlabelled folder is empty"),
    ("unreadable", "no usable unlabelled image: of 1 files, 1 unreadable and 0 copies"),
    ("copies", "no usable unlabelled image: of 2 files, 0 unreadable and 2 copies"),
])
def test_a_folder_that_is_not_one_of_unlabelled_images_is_refused_by_name(
        tmp_path, labelled, case, message):
    root = {"missing": tmp_path / "absent", "file": tmp_path / "file.jpg",
            "data": labelled.root, "inside": labelled.root / "val",
            "contains": tmp_path, "classes": tmp_path / "backup",
            "empty": tmp_path / "empty", "unreadable": tmp_path / "junk"}.get(case)
    if case == "file":
        root.write_bytes(b"x")
    elif case == "classes":
        shutil.copytree(labelled.root, root / "copy")
    elif case == "empty":
        (root / ".git").mkdir(parents=True)
        (root / ".git" / "HEAD").write_text("ref")
    elif case == "unreadable":
        root.mkdir()
        (root / "notes.txt").write_text("not an image")
    elif case == "copies":
        root = _only_labelled_copies(tmp_path, labelled)
    with pytest.raises(DataError) as err:
        scan_unlabeled(root, labelled)
    assert str(err.value).startswith(f"{root}: ") and message in str(err.value), str(err.value)


def test_an_output_folder_inside_is_refused(tmp_path, labelled):
    root = image_folder(tmp_path / "photos", {"a": 2}, size=16)
    (root / "run").mkdir()
    (root / "run" / "manifest.json").write_text(json.dumps(
        {"schema_version": 1, "stage": "teacher", "classes": ["a", "b"],
         "versions": {"vgg_mobile": "0"}}))
    with pytest.raises(DataError, match=r"run: a vgg-mobile output folder, not unlabelled "
                                        r"images; move it out of the unlabelled folder"):
        scan_unlabeled(root, labelled)
    with pytest.raises(DataError, match=r"run: a vgg-mobile output folder \(\w+\), not a folder of "
                                        r"unlabelled images"):
        scan_unlabeled(root / "run", labelled)


def _teacher_run(folder: Path, classes: list[str]) -> Path:
    """A finished run's manifest and labels: enough for `distill`'s checks before training."""
    folder.mkdir()
    manifest = {"schema_version": 1, "stage": "teacher", "kind": "image_classifier",
                "model_file": "model.keras", "classes": classes, "num_classes": len(classes),
                "input": {"size": [32, 32]}, "output": {"logits_layer": "logits"},
                "versions": {"vgg_mobile": "0"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
    return folder


def test_distill_with_unlabelled_images_inside_the_data_folder_exits_2_and_writes_nothing(
        tmp_path, labelled):
    from vgg_mobile.cli.main import main

    teacher = _teacher_run(tmp_path / "teacher", list(labelled.classes))
    out = tmp_path / "student"
    inside = labelled.root / "val"
    result = CliRunner().invoke(main, ["distill", "--teacher", str(teacher), "--data",
                                       str(labelled.root), "--out", str(out),
                                       "--unlabeled", str(inside)])
    assert result.exit_code == 2, (result.output, result.stderr)
    assert f"{inside}: the unlabelled folder lies inside the data folder" in result.stderr
    assert not out.exists()
