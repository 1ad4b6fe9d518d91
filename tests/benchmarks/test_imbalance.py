"""benchmarks/imbalance.py: the cut copy of the folder, the table, and a smoke run."""

from __future__ import annotations

import pytest
from harness import benchmark_script, image_folder

imbalance = benchmark_script("imbalance")


@pytest.fixture()
def presplit(tmp_path):
    root = tmp_path / "data"
    image_folder(root / "train", {"a": 20, "b": 20, "c": 20}, size=32)
    image_folder(root / "val", {"a": 10, "b": 10, "c": 10}, size=32, seed=2)
    return root


def test_one_class_is_cut_to_a_tenth_seeded_and_the_source_left_alone(presplit, tmp_path):
    record = imbalance.cut_folder(presplit, tmp_path / "cut", "b", 0.1, seed=0)
    assert record["train"] == {"a": 20, "b": 2, "c": 20} and record["val"] == {"a": 10, "b": 10, "c": 10}
    kept = sorted(p.name for p in (tmp_path / "cut" / "train" / "b").iterdir())
    assert len(kept) == 2 and set(kept) <= {p.name for p in (presplit / "train" / "b").iterdir()}
    assert len(list((presplit / "train" / "b").iterdir())) == 20
    again = imbalance.cut_folder(presplit, tmp_path / "cut", "b", 0.1, seed=0)
    assert again == record and sorted(p.name for p in (tmp_path / "cut" / "train" / "b").iterdir()) == kept
    with pytest.raises(SystemExit, match="not a class"):
        imbalance.cut_folder(presplit, tmp_path / "cut", "zebra", 0.1, seed=0)


@pytest.mark.slow
def test_the_quick_run_trains_three_teachers_and_prints_the_table(presplit, tmp_path, capsys):
    assert imbalance.main(["--data", str(presplit), "--out", str(tmp_path / "out"),
                           "--cut", "b", "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "| loss | accuracy | recall of 'b' |" in printed
    for variant in ("| plain |", "| class_weights (class_weights = true) |",
                    "| focal (focal_gamma = 2.0) |"):
        assert variant in printed
    assert "Every figure is on the same 30 held-out images (10 of 'b'" in printed
    assert (tmp_path / "out" / "results.json").is_file()
