"""Atomic output and the one gzip measure."""

from __future__ import annotations

import gzip
import json

import pytest

from vgg_mobile.core import io


def test_atomic_path_leaves_nothing_when_the_write_fails(tmp_path):
    target = tmp_path / "model.keras"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half a model")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    io.write_text(target, "done")
    assert target.read_text() == "done"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_atomic_write_replaces_the_old_file_whole(tmp_path):
    path = tmp_path / "manifest.json"
    io.write_json(path, {"a": 1})
    io.write_json(path, {"b": (1, 2)})
    assert json.loads(path.read_text()) == {"b": [1, 2]}


def test_gzip_size_is_the_same_for_bytes_a_file_and_a_folder(tmp_path):
    data = bytes(range(256)) * 400 + b"\0" * 50_000
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "a.bin").write_bytes(data)
    (tmp_path / "bundle" / "b.bin").write_bytes(data[:1000])
    expected = len(gzip.compress(data, compresslevel=io.GZIP_LEVEL, mtime=0))
    assert io.gzip_size(data) == expected
    assert io.gzip_size(tmp_path / "bundle" / "a.bin") == expected
    assert io.gzip_size(tmp_path / "bundle") == expected + io.gzip_size(data[:1000])
    assert io.gzip_size(data) < len(data) / 2  # the zeros compress
