from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.data.sample import SAMPLE_CLASSES, draw_sample, write_sample_data



def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = write_sample_data(tmp_path / "a", images_per_class=4, image_size=32, seed=3)
    b = write_sample_data(tmp_path / "b", images_per_class=4, image_size=32, seed=3)
    c = write_sample_data(tmp_path / "c", images_per_class=4, image_size=32, seed=4)
    # The marker records when the folder was written; every image file is the same.
    images = {name: digest for name, digest in _digest(a).items() if name != ".vgg-mobile.json"}
    assert images == {n: d for n, d in _digest(b).items() if n != ".vgg-mobile.json"}
    assert images != {n: d for n, d in _digest(c).items() if n != ".vgg-mobile.json"}
    # The classes, and the hidden marker that lets --force replace this folder (and no other).
    assert sorted(p.name for p in a.iterdir()) == [".vgg-mobile.json", *SAMPLE_CLASSES]
    assert len(_digest(a)) == 17
    assert {name.rsplit(".", 1)[1] for name in _digest(a)} == {"jpg", "png", "json"}


def test_images_differ_within_a_class(tmp_path):
    out = write_sample_data(tmp_path / "s", images_per_class=6, image_size=32)
    pixels = [np.asarray(Image.open(p).convert("RGB"), float) for p in sorted((out / "cross").iterdir())]
    assert all(np.abs(pixels[0] - other).mean() > 5 for other in pixels[1:])


def test_refuses_to_overwrite_and_validates(tmp_path):
    write_sample_data(tmp_path / "s", images_per_class=2, image_size=32)
    with pytest.raises(BadInputError, match="already holds a finished vgg-mobile sample data"):
        write_sample_data(tmp_path / "s", images_per_class=2, image_size=32)
    write_sample_data(tmp_path / "s", images_per_class=3, image_size=32, overwrite=True)
    assert len(list((tmp_path / "s" / "circle").iterdir())) == 3
    # A folder it did not write is never replaced, even with overwrite.
    (tmp_path / "mine" / "cat").mkdir(parents=True)
    (tmp_path / "mine" / "cat" / "1.jpg").write_bytes(b"x")
    with pytest.raises(BadInputError, match="never replaced"):
        write_sample_data(tmp_path / "mine", images_per_class=2, image_size=32, overwrite=True)
    assert (tmp_path / "mine" / "cat" / "1.jpg").exists()
    with pytest.raises(BadInputError, match="images_per_class"):
        write_sample_data(tmp_path / "t", images_per_class=1)
    assert not (tmp_path / "t").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unknown_class_is_refused():
    with pytest.raises(BadInputError, match="unknown sample class 'star'"):
        draw_sample("star", 32, np.random.default_rng(0))
