"""Data folders that hold something other than classes of images: vgg-mobile's own outputs,
links that loop or duplicate a class, names that `labels.txt` cannot hold, and small files
that decode to huge 16-bit images."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import image_folder
from vgg_mobile.core.errors import DataError
from vgg_mobile.data import dataset
from vgg_mobile.data.images import MAX_PIXELS

OUTPUT_ERROR = "a vgg-mobile output folder, not a class of images; move it out of the data folder"


def _run_manifest(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"schema_version": 1, "stage": "teacher", "classes": ["a", "b"],
                "versions": {"vgg_mobile": "0"}, **fields}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _interrupted_run(folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "state.json").write_text(json.dumps({"config": {}, "epochs_done": 1}))
    return folder


def _pipeline_out(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "pipeline_state.json").write_text(json.dumps({"stages": {}}))
    return folder


@pytest.mark.parametrize("make", [_run_manifest, _interrupted_run, _pipeline_out],
                         ids=["run_or_export", "interrupted_run", "pipeline"])
def test_an_output_written_into_the_data_folder_is_not_a_class(tmp_path, make):
    root = image_folder(tmp_path / "d", {"a": 2, "b": 2}, size=8)
    out = make(root / "run")
    # Outputs hold images too (a demo's examples, a report's plots): still not a class.
    image_folder(out, {"examples": 1}, size=8)
    with pytest.raises(DataError) as err:
        dataset.scan_folder(root)
    assert str(err.value) == f"{out}: {OUTPUT_ERROR}"
    with pytest.raises(DataError, match="a vgg-mobile output folder"):
        dataset.scan_folder(root, classes=("a", "b", "run"))


def test_outputs_inside_a_presplit_folder_are_refused_too(tmp_path):
    root = tmp_path / "d"
    image_folder(root / "train", {"a": 2, "b": 2}, size=8)
    image_folder(root / "val", {"a": 1, "b": 1}, size=8)
    for where in (root / "train" / "run", root / "val" / "export"):
        _run_manifest(where, model_file=None)
        with pytest.raises(DataError, match="^" + re.escape(f"{where}: {OUTPUT_ERROR}")):
            dataset.scan_folder(root, classes=("a", "b"))
        shutil.rmtree(where)
    # `train D --out D/run` on a pre-split folder: D/run sits beside train/ and val/.
    _run_manifest(root / "run")
    with pytest.raises(DataError, match="^" + re.escape(f"{root / 'run'}: {OUTPUT_ERROR}")):
        dataset.scan_folder(root)


def test_an_output_inside_a_class_folder_is_refused(tmp_path):
    root = image_folder(tmp_path / "d", {"a": 2, "b": 2}, size=8)
    out = _interrupted_run(root / "a" / "nested" / "run")
    image_folder(out / "eval", {"plots": 1}, size=8)
    with pytest.raises(DataError, match="^" + re.escape(f"{out}: a vgg-mobile output folder")):
        dataset.scan_folder(root)


@pytest.mark.parametrize("content", [
    '{"schema_version": "1", "stage": "teacher"}', '{"schema_version": true, "stage": "x"}',
    '{"schema_version": 1}', '[1, 2]', "not json at all",
])
def test_a_class_with_a_manifest_of_its_own_stays_a_class(tmp_path, content):
    root = image_folder(tmp_path / "d", {"a": 2, "b": 2}, size=8)
    (root / "a" / "manifest.json").write_text(content)
    folder = dataset.scan_folder(root)
    assert folder.classes == ("a", "b") and folder.class_counts() == {"a": 2, "b": 2}


@pytest.mark.parametrize("target", [".", "..", "../.."])
def test_a_class_linking_to_the_data_folder_or_above_is_refused(tmp_path, target):
    root = image_folder(tmp_path / "x" / "d", {"a": 2, "b": 2}, size=8)
    os.symlink(target, root / "loop")
    real = (root / target).resolve()
    with pytest.raises(DataError) as err:
        dataset.scan_folder(root)
    assert str(err.value).startswith(f"{root / 'loop'}: a link to {real}, the data folder")


def test_a_link_to_a_sample_folder_itself_is_named_as_a_link(tmp_path):
    from vgg_mobile.data.sample import write_sample_data

    root = write_sample_data(tmp_path / "sample", images_per_class=2, image_size=32)
    os.symlink(".", root / "selfclass")  # the root holds the sample marker: still a link first
    with pytest.raises(DataError, match="selfclass: a link to .*, the data folder itself"):
        dataset.scan_folder(root)


def test_two_class_folders_that_are_one_folder_are_refused(tmp_path):
    root = image_folder(tmp_path / "d", {"a": 2, "b": 2}, size=8)
    os.symlink("a", root / "c")
    with pytest.raises(DataError) as err:
        dataset.scan_folder(root)
    message = str(err.value)
    assert message.startswith(f"{root / 'a'} and {root / 'c'} are the same folder ({root / 'a'})")
    assert "two class names" in message
    os.remove(root / "c")
    image_folder(root / "a" / "sub", {"deep": 1}, size=8)
    os.symlink(root / "a" / "sub", root / "z")
    with pytest.raises(DataError, match=re.escape(f"{root / 'a'} and {root / 'z'} overlap")):
        dataset.scan_folder(root)


def test_a_val_class_linking_to_a_train_class_is_refused(tmp_path):
    root = tmp_path / "d"
    image_folder(root / "train", {"a": 2, "b": 2}, size=8)
    (root / "val").mkdir()
    os.symlink(root / "train" / "a", root / "val" / "a")
    image_folder(root / "val", {"b": 1}, size=8)
    with pytest.raises(DataError, match=re.escape(f"{root / 'train' / 'a'} and {root / 'val' / 'a'} are the same")):
        dataset.scan_folder(root)


def test_a_class_linking_to_images_elsewhere_still_works(tmp_path):
    root = image_folder(tmp_path / "d", {"a": 2, "b": 2}, size=8)
    image_folder(tmp_path / "elsewhere", {"c": 3}, size=8)
    os.symlink(tmp_path / "elsewhere" / "c", root / "c")
    folder = dataset.scan_folder(root)
    assert folder.class_counts() == {"a": 2, "b": 2, "c": 3}


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "cr\r", "bell\x07", "zero\u200bwidth",
                                  "line\u2028sep", " leading", "trailing ", "nbsp\u00a0"])
def test_a_class_name_that_labels_txt_cannot_hold_is_refused(tmp_path, name):
    root = image_folder(tmp_path / "d", {"a": 2, name: 2}, size=8)
    with pytest.raises(DataError) as err:
        dataset.scan_folder(root)
    message = str(err.value)
    assert repr(name) in message and "rename the folder" in message
    assert "\n" not in message and "\r" not in message


def test_ordinary_names_in_any_script_are_classes(tmp_path):
    names = {"café": 2, "two words": 2, "日本": 2, "a-b_c.d": 2}
    folder = dataset.scan_folder(image_folder(tmp_path / "d", names, size=8))
    assert set(folder.classes) == set(names)


# A 16-bit grayscale PNG just under the pixel limit, mostly flat: about 180 KB on disk,
# 179 MB decoded. The check once peaked at 1.8 GB per file, with up to 8 files at a time.
_SIDE = int(MAX_PIXELS ** 0.5)
_PEAK_MB = """
import json, resource, sys
from vgg_mobile.data import dataset, images
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "scan":
    folder = dataset.scan_folder(sys.argv[2])
    result = [len(folder.train), len(folder.bad), folder.converted[0].notes[0]]
else:
    pixels = images.load_rgb(sys.argv[2])
    result = [list(pixels.shape), int(pixels[:64].max()), int(pixels[64:].max())]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps([result, (after - before) // 1024]))
"""


def _peak(*args) -> tuple[list, int]:
    done = subprocess.run([sys.executable, "-c", _PEAK_MB, *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=True)
    result, megabytes = json.loads(done.stdout.splitlines()[-1])
    return result, megabytes


def test_small_16_bit_files_of_huge_images_are_checked_in_bounded_memory(tmp_path):
    assert _SIDE * _SIDE <= MAX_PIXELS
    image = Image.new("I;16", (_SIDE, _SIDE))
    ramp = np.linspace(0, 65535, 64 * _SIDE).astype(np.uint16).reshape(64, _SIDE)
    image.paste(Image.fromarray(ramp), (0, 0))
    first = tmp_path / "d" / "a" / "0.png"
    first.parent.mkdir(parents=True)
    image.save(first)
    del image
    assert first.stat().st_size < 400_000
    for copy in ("a/1.png", "b/0.png", "b/1.png"):
        (tmp_path / "d" / copy).parent.mkdir(exist_ok=True)
        shutil.copy(first, tmp_path / "d" / copy)
    result, megabytes = _peak("scan", tmp_path / "d")
    assert result == [4, 0, "I;16 (16-bit) grayscale converted to 8-bit RGB"]
    assert megabytes < 600, f"the folder check peaked {megabytes} MB above its baseline"
    # Reading one for training holds its RGB pixels (268 MB), but no 64-bit copies of them.
    result, megabytes = _peak("load", first)
    assert result == [[_SIDE, _SIDE, 3], 255, 0]
    assert megabytes < 1000, f"load_rgb peaked {megabytes} MB above its baseline"


def _non_utf8(path: Path, raw_name: bytes) -> Path:
    """`path / raw_name` for a name whose bytes are not UTF-8 (as Python spells it)."""
    return path / os.fsdecode(raw_name)


def test_a_file_name_that_is_not_utf8_is_skipped_and_reported_printably(tmp_path):
    root = image_folder(tmp_path / "d", {"a": 3, "b": 3}, size=8)
    shutil.copy(root / "a" / "0.jpg", _non_utf8(root / "a", b"caf\xe9.jpg"))
    (root / "b" / "sub").mkdir()
    shutil.copy(root / "b" / "1.png", _non_utf8(root / "b" / "sub", b"\xff\xfe.png"))
    folder = dataset.scan_folder(root)
    assert len(folder.train) == 6
    assert sorted(str(c.path) for c in folder.bad) == [
        f"{root}/a/caf\\xe9.jpg", f"{root}/b/sub/\\xff\\xfe.png"]
    assert all(c.problem == dataset.NOT_UTF8 for c in folder.bad)
    # Everything written about the folder is UTF-8: the fingerprint, the manifest's record.
    from vgg_mobile.data import splits
    folder.fingerprint()
    record = splits.data_record(folder, splits.choose_split(folder))
    json.dumps(record, ensure_ascii=False).encode("utf-8")
    with pytest.raises(DataError, match=re.escape("caf\\xe9.jpg: file name is not valid UTF-8")):
        dataset.scan_folder(root, strict=True)


def test_a_class_folder_name_that_is_not_utf8_is_refused_naming_it(tmp_path):
    root = image_folder(tmp_path / "d", {"a": 2, "b": 2}, size=8)
    shutil.copytree(root / "b", _non_utf8(root, b"caf\xe9"))
    with pytest.raises(DataError, match=re.escape("the class folder name b'caf\\xe9' is not valid "
                                                  "UTF-8")) as err:
        dataset.scan_folder(root)
    str(err.value).encode("utf-8")


def test_train_skips_a_non_utf8_file_and_refuses_a_non_utf8_class(cli, tmp_path):
    root = image_folder(tmp_path / "d", {"a": 3, "b": 3}, size=8)
    shutil.copy(root / "a" / "0.jpg", _non_utf8(root / "a", b"caf\xe9.jpg"))
    out = tmp_path / "run"
    result = cli("train", root, "--out", out, "--epochs", 1, "--image-size", 32, "--weights",
                 "none", "--architecture", "mobilenet_v2_0.35", "--batch-size", 4)
    assert result.returncode == 0, result.stderr
    assert f"skipped {root}/a/caf\\xe9.jpg: file name is not valid UTF-8" in result.stdout + result.stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["data"]["skipped_files"] == [
        {"path": f"{root}/a/caf\\xe9.jpg", "problem": dataset.NOT_UTF8}]
    shutil.copytree(root / "b", _non_utf8(root, b"caf\xe9"))
    result = cli("train", root, "--out", tmp_path / "run2", "--epochs", 1, "--weights", "none")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "b'caf\\xe9' is not valid UTF-8" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and not (tmp_path / "run2").exists()
