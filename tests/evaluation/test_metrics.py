from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vgg_mobile.core.errors import DataError
from vgg_mobile.evaluation.metrics import classification_metrics, evaluate_run


def test_metrics_on_known_predictions():
    classes = ("a", "b", "c")
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([
        [0.8, 0.1, 0.1],  # a -> a
        [0.3, 0.6, 0.1],  # a -> b (a is second)
        [0.1, 0.8, 0.1],  # b -> b
        [0.1, 0.7, 0.2],  # b -> b
        [0.2, 0.1, 0.7],  # c -> c
        [0.5, 0.1, 0.4],  # c -> a (c is second)
    ])
    m = classification_metrics(probs, labels, classes, top_k=2)
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert m["top_2_accuracy"] == 1.0
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3, abs=1e-4), "recall": 1.0,
                                   "f1": pytest.approx(0.8, abs=1e-4), "support": 2,
                                   "measured": True}
    assert m["per_class"]["a"]["precision"] == 0.5 and m["per_class"]["a"]["recall"] == 0.5
    assert m["unmeasured_classes"] == [] and m["macro_f1_classes"] == 3


def test_a_class_without_images_is_unmeasured_and_left_out_of_the_macro_f1():
    classes = ("a", "b", "lone")
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.2, 0.8, 0.0]])
    m = classification_metrics(probs, labels, classes)
    assert m["unmeasured_classes"] == ["lone"] and m["macro_f1_classes"] == 2
    assert m["per_class"]["lone"]["measured"] is False
    assert m["per_class"]["a"]["measured"] is True
    assert m["macro_f1"] == 1.0  # not (1 + 1 + 0) / 3


def test_evaluate_uses_the_held_out_split_of_the_training_folder(teacher_run, sample_dir, tmp_path):
    report = evaluate_run(teacher_run.run_dir, sample_dir, out_dir=tmp_path / "eval")
    manifest = json.loads((teacher_run.run_dir / "manifest.json").read_text())
    assert report["split"] == "val"
    assert report["num_images"] == manifest["data"]["val_images"]
    assert report["accuracy"] == pytest.approx(manifest["metrics"]["accuracy"], abs=1e-4)
    assert sum(map(sum, report["confusion_matrix"])) == report["num_images"]
    saved = json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())
    assert saved["matrix"] == report["confusion_matrix"]
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    everything = evaluate_run(teacher_run.run_dir, sample_dir, split="all", out_dir=tmp_path / "all")
    assert everything["num_images"] == 120


def test_a_subset_of_classes_from_another_folder_is_fine(teacher_run, sample_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(sample_dir / "circle", other / "circle")
    shutil.copytree(sample_dir / "square", other / "square")
    report = evaluate_run(teacher_run.run_dir, other, out_dir=tmp_path / "e")
    assert report["split"] == "all" and report["num_images"] == 60
    assert report["per_class"]["cross"]["support"] == 0
    assert report["classes"] == ["circle", "cross", "square", "triangle"]


def test_unknown_class_folder_is_an_error(teacher_run, sample_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(sample_dir / "circle", other / "circle")
    shutil.copytree(sample_dir / "square", other / "hexagon")
    with pytest.raises(DataError, match="hexagon"):
        evaluate_run(teacher_run.run_dir, other)
