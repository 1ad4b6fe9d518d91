"""benchmarks/few_labels.py: the labelled, held-out and unlabelled folders it writes (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from harness import benchmark_script, fashion_package

few_labels = benchmark_script("few_labels")


def _ids(folder: Path) -> dict[str, tuple[int, int]]:
    """(label, index) of every image in `folder`, by file name."""
    return {path.name: tuple(np.asarray(Image.open(path))[0, :2].tolist())
            for path in sorted(folder.glob("*.png"))}


def test_the_held_out_images_do_not_depend_on_the_labelled_count_and_nothing_leaks(tmp_path):
    package = fashion_package(tmp_path / "package")
    few = few_labels.write_folders(package, tmp_path / "few", 2, 3, held_out=(5, 8))
    more = few_labels.write_folders(package, tmp_path / "more", 5, 4, held_out=(5, 8))
    assert few["per_class"] == {"labelled": 2, "held_out": 3, "unlabelled": 3}
    pool = _ids(tmp_path / "few" / "unlabeled")
    assert len(pool) == 30 and all(name[:-4].isdigit() for name in pool)  # flat, class-free
    assert {label for label, _ in pool.values()} == set(range(10))
    for label, name in enumerate(few_labels.real_data.FASHION_CLASSES):
        val = _ids(tmp_path / "few" / "data" / "val" / name)
        assert val == _ids(tmp_path / "more" / "data" / "val" / name) and len(val) == 3
        train = _ids(tmp_path / "few" / "data" / "train" / name)
        assert len(train) == 2 and set(train.items()) < set(
            _ids(tmp_path / "more" / "data" / "train" / name).items())
        assert {label} == {lab for lab, _ in [*train.values(), *val.values()]}
        unlabelled = {index for lab, index in pool.values() if lab == label}
        seen = {index for _, index in [*train.values(), *val.values()]}
        assert len(unlabelled) == 3 and not unlabelled & seen


def test_bad_counts_and_a_used_folder_are_refused(tmp_path):
    package = fashion_package(tmp_path / "package")
    for labelled, unlabelled, message in [(0, 1, "labelled"), (6, 1, "labelled"),
                                          (2, -1, "unlabelled"), (2, 5, "asked for")]:
        with pytest.raises(ValueError, match=message):
            few_labels.write_folders(package, tmp_path / "x", labelled, unlabelled,
                                     held_out=(5, 8))
    few_labels.write_folders(package, tmp_path / "y", 2, 1, held_out=(5, 8))
    with pytest.raises(ValueError, match="not empty"):
        few_labels.write_folders(package, tmp_path / "y", 2, 1, held_out=(5, 8))
