"""What pruning and QAT share: config checks, and the runs they refuse before any work."""

from __future__ import annotations

import json
import shutil

import pytest

from harness import folder_digest
from vgg_mobile.compression.prune import PruneConfig, prune_run
from vgg_mobile.compression.qat import QATConfig, qat_run
from vgg_mobile.core.errors import BadInputError


def test_configs_refuse_bad_values():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(BadInputError, match=f"target_sparsity={bad}"):
            PruneConfig(target_sparsity=bad)
    with pytest.raises(BadInputError, match="end_epoch"):
        PruneConfig(epochs=2, end_epoch=3)
    with pytest.raises(BadInputError, match="frequency"):
        PruneConfig(frequency=0)
    with pytest.raises(BadInputError, match="epochs"):
        QATConfig(epochs=0)


def test_cli_refuses_a_folder_without_manifest(cli, teacher_run, sample_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(teacher_run.run_dir, broken)
    (broken / "manifest.json").unlink()
    for command in ("prune", "qat"):
        result = cli(command, broken, "--data", sample_dir, "--out", tmp_path / command)
        assert result.returncode == 2, result.stderr
        assert f"{broken / 'manifest.json'}: missing" in result.stderr
        assert not (tmp_path / command).exists()


def test_refuses_nested_models_unpruned_preserve_and_writing_over_the_input(
        teacher_run, sample_dir, tmp_path):
    import tf_keras as keras

    from vgg_mobile.core.run_dir import Manifest, finish_run, load_run

    parent = load_run(teacher_run.run_dir)
    inner = keras.Sequential([keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.GlobalAveragePooling2D()], name="inner")
    pixels = keras.Input((32, 32, 3))
    probs = keras.layers.Dense(4, activation="softmax", name="probs")(inner(pixels))
    nested_dir = tmp_path / "nested"
    finish_run(nested_dir, keras.Model(pixels, probs),
               Manifest(stage="teacher", classes=parent.classes, input=parent.manifest.input,
                        architecture=parent.manifest.architecture))
    before = folder_digest(nested_dir)
    with pytest.raises(BadInputError, match="nested model layer"):
        prune_run(nested_dir, sample_dir, tmp_path / "out")
    with pytest.raises(BadInputError, match="nested model layer"):
        qat_run(nested_dir, sample_dir, tmp_path / "out")
    assert folder_digest(nested_dir) == before and not (tmp_path / "out").exists()
    for field, value, message in (("architecture", "mobilenet_v3_small", "tfmot cannot wrap"),
                                  ("kind", "object_detector", "compression needs an image_classifier")):
        other = tmp_path / value
        shutil.copytree(nested_dir, other)
        manifest = json.loads((other / "manifest.json").read_text())
        (other / "manifest.json").write_text(json.dumps({**manifest, field: value}))
        with pytest.raises(BadInputError, match=message):
            prune_run(other, sample_dir, tmp_path / "out", PruneConfig(method="magnitude"))
    with pytest.raises(BadInputError, match="not pruned"):
        qat_run(teacher_run.run_dir, sample_dir, tmp_path / "out", QATConfig(preserve_sparsity=True))
    with pytest.raises(BadInputError, match="not the input run"):
        prune_run(teacher_run.run_dir, sample_dir, teacher_run.run_dir, force=True)
    assert not (tmp_path / "out").exists()
