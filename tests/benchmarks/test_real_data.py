"""benchmarks/real_data.py: the digits folder it writes and the tables it prints (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from harness import benchmark_script, fashion_package

real_data = benchmark_script("real_data")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench") / "digits"
    return root, real_data.write_digits_folder(root)


def test_the_digits_are_split_per_class_with_a_fifth_held_out(digits):
    from sklearn.datasets import load_digits

    root, record = digits
    totals = np.bincount(load_digits().target, minlength=10)
    for label, name in enumerate(real_data.CLASSES):
        train = sorted((root / "train" / name).glob("*.png"))
        val = sorted((root / "val" / name).glob("*.png"))
        assert len(val) == round(totals[label] * 0.2) == record["counts"]["val"][name]
        assert len(train) + len(val) == totals[label] == (record["counts"]["train"][name]
                                                          + record["counts"]["val"][name])
        assert not {p.name for p in train} & {p.name for p in val}
    assert sorted(p.name for p in root.iterdir()) == ["digits.json", "train", "val"]
    assert json.loads((root / "digits.json").read_text())["counts"] == record["counts"]


def test_the_images_are_28px_grayscale_pngs_of_the_digits(digits):
    from sklearn.datasets import load_digits

    root, _ = digits
    data = load_digits()
    path = next((root / "val" / "3").glob("*.png"))
    with Image.open(path) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28))
        pixels = np.asarray(image)
    original = data.images[int(path.stem)]
    assert data.target[int(path.stem)] == 3
    assert pixels.max() > 128 and pixels.min() == 0  # 0..16 scaled to 0..255
    # The upscaled image is the original, bigger: its 8x8 block means follow the original.
    blocks = np.asarray(Image.fromarray(pixels).resize((8, 8), Image.Resampling.BOX), float)
    assert np.corrcoef(blocks.ravel(), original.ravel())[0, 1] > 0.9


def test_the_split_is_seeded(tmp_path):
    first = real_data.write_digits_folder(tmp_path / "a", seed=0)
    again = real_data.write_digits_folder(tmp_path / "b", seed=0)
    other = real_data.write_digits_folder(tmp_path / "c", seed=1)
    names = {key: sorted(p.name for p in (tmp_path / key / "val" / "7").glob("*.png"))
             for key in "abc"}
    assert first == again and names["a"] == names["b"] != names["c"]
    assert other["counts"] == first["counts"]  # another seed, the same counts per class
    with pytest.raises(ValueError, match="not empty"):
        real_data.write_digits_folder(tmp_path / "a")


def test_grow_adds_shifted_noisy_copies_of_each_split_own_images(tmp_path):
    record = real_data.write_digits_folder(tmp_path / "g", grow=(3000, 800))
    root = tmp_path / "g"
    for part, wanted in (("train", 3000), ("val", 800)):
        assert abs(sum(record["counts"][part].values()) - wanted) <= 10
        for name in real_data.CLASSES:
            files = list((root / part / name).glob("*.png"))
            assert len(files) == record["counts"][part][name]
    # A copy is named after its original, which is in the same split and class.
    originals = {part: {p.stem: p for p in (root / part / "4").glob("*.png") if "_" not in p.stem}
                 for part in ("train", "val")}
    assert not originals["train"].keys() & originals["val"].keys()
    copy = next((root / "val" / "4").glob("*_1.png"))
    source = originals["val"][copy.stem.split("_")[0]]
    a, b = (np.asarray(Image.open(path), float) for path in (copy, source))
    assert a.shape == b.shape == (28, 28) and not np.array_equal(a, b)
    best = max(np.corrcoef(np.roll(np.roll(b, dy, 0), dx, 1).ravel(), a.ravel())[0, 1]
               for dy in range(-3, 4) for dx in range(-3, 4))
    assert best > 0.8  # the same digit, moved and noisy
    assert record["grow"]["train"] == 3000
    with pytest.raises(ValueError, match="at least"):
        real_data.write_digits_folder(tmp_path / "h", grow=(100, 800))


def test_noise_sets_how_far_the_copies_move_from_their_digit(tmp_path):
    def residual(noise: float, name: str) -> float:
        """Mean absolute pixel difference between each copy and its original, realigned (the
        best of the shifts), away from the zero-filled borders."""
        record = real_data.write_digits_folder(tmp_path / name, grow=(1500, 400), noise=noise)
        assert record["grow"]["noise_std"] == noise
        folder = tmp_path / name / "train" / "7"
        values = []
        for copy in sorted(folder.glob("*_1.png"))[:10]:
            a = np.asarray(Image.open(copy), float)
            b = np.asarray(Image.open(folder / f"{copy.stem.split('_')[0]}.png"), float)
            values.append(min(np.abs(a - np.roll(np.roll(b, dy, 0), dx, 1))[3:-3, 3:-3].mean()
                              for dy in range(-3, 4) for dx in range(-3, 4)))
        return float(np.mean(values))

    assert residual(0.0, "quiet") < 1.0 < 30.0 < residual(96.0, "loud")


def test_fashion_mnist_is_written_as_a_seeded_stratified_split(tmp_path):
    package = fashion_package(tmp_path / "package")
    record = real_data.write_fashion_folder(package, tmp_path / "f", per_class=(5, 3))
    again = real_data.write_fashion_folder(package / "src" / "clothes", tmp_path / "g",
                                           per_class=(5, 3))
    assert record == again and record["per_class"] == {"train": 5, "val": 3}
    seen = {}
    for part, count in (("train", 5), ("val", 3)):
        for label, name in enumerate(real_data.FASHION_CLASSES):
            files = sorted((tmp_path / "f" / part / name).glob("*.png"))
            assert len(files) == count
            assert [f.name for f in files] == [f.name for f in sorted(
                (tmp_path / "g" / part / name).glob("*.png"))]
            for f in files:
                pixels = np.asarray(Image.open(f))
                assert pixels.shape == (28, 28) and pixels[0, 0] == label
                assert int(f.stem) == pixels[0, 1]
                seen.setdefault(label, set()).add(int(f.stem))
    # train and val never share an image, and the shuffle did not take the first indices.
    assert all(len(indices) == 8 for indices in seen.values())
    assert any(indices != set(range(8)) for indices in seen.values())
    with pytest.raises(ValueError, match="not empty"):
        real_data.write_fashion_folder(package, tmp_path / "f", per_class=(5, 3))
    with pytest.raises(ValueError, match="asked for"):
        real_data.write_fashion_folder(package, tmp_path / "h", per_class=(10, 3))


def test_extra_training_images_keep_the_student_folder_and_its_held_out_images(tmp_path):
    package = fashion_package(tmp_path / "package")
    small = real_data.write_fashion_folder(package, tmp_path / "small", per_class=(4, 3))
    big = real_data.write_fashion_folder(package, tmp_path / "big", per_class=(4, 3),
                                         extra_train=5)
    assert small["per_class"] == {"train": 4, "val": 3} and small["extra_train"] == 0
    assert big["per_class"] == {"train": 9, "val": 3} and big["extra_train"] == 5

    def names(root, part, name):
        return {f.name for f in (root / part / name).glob("*.png")}

    for name in real_data.FASHION_CLASSES:
        small_train = names(tmp_path / "small", "train", name)
        big_train = names(tmp_path / "big", "train", name)
        val = names(tmp_path / "big", "val", name)
        assert len(big_train) == 9 and small_train < big_train
        assert val == names(tmp_path / "small", "val", name) and not val & big_train
    with pytest.raises(ValueError, match="13 asked for"):
        real_data.write_fashion_folder(package, tmp_path / "h", per_class=(4, 3), extra_train=6)
    with pytest.raises(ValueError, match="extra_train=-1"):
        real_data.write_fashion_folder(package, tmp_path / "h", per_class=(4, 3), extra_train=-1)
    assert not (tmp_path / "h").exists()


def test_the_results_table_puts_every_accuracy_on_the_same_images():
    rows = [{"model": "VGG16 teacher", "accuracy": 0.9, "images": 360, "size_bytes": 59_470_000,
             "seconds": 125.0},
            {"model": "baseline", "accuracy": None, "images": None, "size_bytes": None,
             "seconds": None, "note": "not run"},
            {"model": "two-conv CNN int8 TFLite", "accuracy": 0.875, "images": 360,
             "size_bytes": 120_000, "seconds": 2.5}]
    table = real_data.format_results(rows).splitlines()
    assert table[0] == "| model | held-out accuracy (360 images) | size | time |"
    assert table[2:] == ["| VGG16 teacher | 0.900 | 59.47 MB | 2m05.0s |",
                         "| baseline (not run) | - | - | - |",
                         "| two-conv CNN int8 TFLite | 0.875 | 0.12 MB | 2.5 s |"]
    with pytest.raises(ValueError, match="same held-out images"):
        real_data.format_results([*rows, {**rows[0], "model": "other", "images": 200}])


def test_the_stage_table_adds_up():
    table = real_data.format_stages([{"stage": "teacher", "status": "ran", "seconds": 10.5},
                                     {"stage": "web_demo", "status": "not run", "seconds": None}])
    assert table.splitlines()[-1] == "| **total** | | **10.5** |"
    assert "| web_demo | not run | - |" in table


def test_the_student_stage_is_split_at_its_baseline_by_its_log_lines():
    log = real_data._Log()
    log.lines = [(0.0, "[4/9] student: started"), (1.0, "1438 training / 359 validation images"),
                 (30.0, "baseline: the same mobilenet_v2_0.35 trained without the teacher"),
                 (55.0, "[4/9] student: done in 0m55s (total 9m00s)"),
                 (56.0, "[5/9] student_qat: started"), (70.0, "[5/9] student_qat: done in 0m14s")]
    assert log.split_student() == (30.0, 25.0)
    assert log.statuses() == {"student": "ran", "student_qat": "ran"}
    log.lines = [(0.0, "[1/9] teacher: finished earlier, inputs unchanged; skipped (x/teacher)"),
                 (1.0, "[2/9] pruned: started")]
    assert log.split_student() == (None, None)
    assert log.statuses() == {"teacher": "skipped", "pruned": "failed"}
