"""One rule for the images each stage trains, validates, calibrates and verifies on."""

from __future__ import annotations

from collections import Counter

import pytest

from harness import image_folder
from vgg_mobile.core.errors import DataError
from vgg_mobile.data import dataset, splits


@pytest.fixture()
def folder(tmp_path):
    return dataset.scan_folder(image_folder(tmp_path / "d", {"a": 10, "b": 6, "c": 3}, size=8))


def _parent(folder, val_fraction=0.25, seed=7) -> dict:
    return {"path": str(folder.root), "val_fraction": val_fraction, "seed": seed}


def test_on_the_parents_folder_its_split_is_reused(folder):
    parent = _parent(folder)
    choice = splits.choose_split(folder, parent, val_fraction=None, seed=0)
    assert choice.source == "parent" and (choice.val_fraction, choice.seed) == (0.25, 7)
    assert choice.parts == dataset.split(folder, 0.25, 7) and choice.note == ""
    # Another fraction would validate on images the parent trained on: ignored, and said.
    other = splits.choose_split(folder, parent, val_fraction=0.5, seed=3)
    assert other.parts == choice.parts and "val_fraction=0.5 ignored" in other.note


def test_another_folder_gets_its_own_split_with_the_parents_fraction(folder, tmp_path):
    parent = {"path": str(tmp_path / "elsewhere"), "val_fraction": 0.5, "seed": 7}
    choice = splits.choose_split(folder, parent, val_fraction=None, seed=1)
    assert choice.source == "own" and choice.parts == dataset.split(folder, 0.5, 1)
    assert splits.choose_split(folder).parts == dataset.split(folder, 0.2, 0)


def test_a_presplit_folder_keeps_its_val_folder(tmp_path):
    root = tmp_path / "p"
    image_folder(root / "train", {"a": 4, "b": 4}, size=8)
    image_folder(root / "val", {"a": 2, "b": 2}, size=8, seed=2)
    folder = dataset.scan_folder(root)
    choice = splits.choose_split(folder, _parent(folder), val_fraction=0.5)
    assert choice.source == "presplit" and len(choice.parts.val) == 4


def test_the_data_record_says_where_the_split_came_from(folder):
    choice = splits.choose_split(folder, _parent(folder))
    record = splits.data_record(folder, choice)
    assert record["split_from"] == "parent" and record["seed"] == 7
    assert record["train_images"] + record["val_images"] == 19
    assert record["class_counts"] == folder.class_counts(choice.parts.train)
    assert record["fingerprint"] == folder.fingerprint()


def test_held_out_images_are_the_parents_validation_split_on_its_folder(folder, tmp_path):
    parent = _parent(folder)
    examples, name = splits.held_out(parent, folder, "auto")
    assert name == "val" and examples == dataset.split(folder, 0.25, 7).val
    elsewhere = {"path": str(tmp_path / "x"), "val_fraction": 0.25, "seed": 7}
    assert splits.held_out(elsewhere, folder, "auto")[1] == "all"
    with pytest.raises(DataError, match="split must be one of auto, val, train, all. Received: split='test'"):
        splits.held_out(parent, folder, "test")


def test_a_sample_draws_from_every_class_in_turn_and_is_seeded(folder):
    examples = folder.train  # ordered class by class, as a folder scan gives them
    sample = splits.stratified_sample(examples, 7)
    counts = Counter(e.label for e in sample)
    assert counts == {0: 3, 1: 2, 2: 2}  # a plain prefix would be seven images of class "a"
    assert Counter(e.label for e in splits.stratified_sample(examples, 12)) == {0: 5, 1: 4, 2: 3}
    assert splits.stratified_sample(examples, 7) == sample
    assert splits.stratified_sample(examples, 7, seed=1) != sample
    assert len(splits.stratified_sample(examples, None)) == len(examples)
    assert splits.stratified_sample(examples, 100)[:7] == sample  # any prefix is stratified


@pytest.mark.parametrize("empty_val", [False, True])
def test_train_without_val_is_split_like_an_unsplit_folder(tmp_path, empty_val):
    root = tmp_path / "p"
    image_folder(root / "train", {"a": 10, "b": 6, "c": 3}, size=8)
    if empty_val:
        (root / "val").mkdir()
    folder = dataset.scan_folder(root)
    choice = splits.choose_split(folder, None, val_fraction=0.3, seed=4)
    unsplit = dataset.scan_folder(root / "train")
    assert [e.path for e in choice.parts.val] == [e.path for e in dataset.split(unsplit, 0.3, 4).val]
    assert {e.label for e in choice.parts.val} == {0, 1, 2}
    assert not {e.path for e in choice.parts.val} & {e.path for e in choice.parts.train}
    assert len(choice.parts.train) + len(choice.parts.val) == 19
    assert choice.source == "own" and (choice.val_fraction, choice.seed) == (0.3, 4)
    assert f"{root / 'val'} is missing or without images" in choice.note
    assert "split of train/ (val_fraction=0.3, seed=4)" in choice.note
    record = splits.data_record(folder, choice)
    assert record["val_from_train"] and record["val_images"] == len(choice.parts.val)
    # Later commands (evaluate, convert) rescan the folder and re-derive the same held-out
    # images from the manifest, whatever val_fraction they are given.
    manifest = record
    again = dataset.scan_folder(root, classes=folder.classes)
    examples, name = splits.held_out(manifest, again, "auto")
    assert name == "val" and examples == choice.parts.val
    assert splits.held_out(manifest, again, "train")[0] == choice.parts.train
    reused = splits.choose_split(again, manifest, val_fraction=0.5, seed=0)
    assert reused.parts == choice.parts and reused.source == "parent"
    assert "val_fraction=0.5 ignored" in reused.note and "missing or without images" in reused.note


def test_train_without_val_and_no_val_fraction_is_an_error(tmp_path):
    root = tmp_path / "p"
    image_folder(root / "train", {"a": 4, "b": 4}, size=8)
    folder = dataset.scan_folder(root)
    with pytest.raises(DataError, match="a validation set is needed"):
        splits.choose_split(folder, None, val_fraction=0.0)


def test_classes_of_one_image_each_are_refused_before_training(tmp_path):
    folder = dataset.scan_folder(image_folder(tmp_path / "d", {f"c{i:03d}": 1 for i in range(40)},
                                              size=8))
    with pytest.raises(DataError, match="no image can be held out for validation: 40 classes and "
                                        "40 images, and a class needs at least 2 images"):
        splits.choose_split(folder, val_fraction=0.2)


def test_a_class_of_one_image_is_named_as_unmeasured(tmp_path):
    folder = dataset.scan_folder(image_folder(tmp_path / "d", {"a": 5, "b": 5, "lone": 1}, size=8))
    choice = splits.choose_split(folder, val_fraction=0.2)
    assert splits.unmeasured_classes(folder, choice.parts) == ("lone",)
    assert "1 of 3 classes have no validation image ('lone'" in choice.note
    assert "macro F1 averages the other classes only" in choice.note
    full = splits.choose_split(dataset.scan_folder(image_folder(tmp_path / "e", {"a": 2, "b": 2},
                                                                size=8)))
    assert full.note == ""


def test_train_refuses_a_thousand_classes_of_one_image(cli, tmp_path):
    root = image_folder(tmp_path / "d", {f"c{i:04d}": 1 for i in range(1000)}, size=4)
    out = tmp_path / "run"
    result = cli("train", root, "--out", out, "--epochs", 1, "--weights", "none",
                 "--image-size", 32)
    assert result.returncode == 2, result.stderr
    assert f"{root}: no image can be held out for validation" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_a_stage_that_only_draws_training_images_may_take_a_split_without_validation(tmp_path):
    folder = dataset.scan_folder(image_folder(tmp_path / "d", {"a": 1, "b": 1}, size=8))
    choice = splits.choose_split(folder, require_val=False)
    assert len(choice.parts.train) == 2 and choice.parts.val == ()
