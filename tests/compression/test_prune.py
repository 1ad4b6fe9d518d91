"""Magnitude pruning of the session teacher: the target sparsity in the saved kernels, reload, CLI."""

from __future__ import annotations

import time

import numpy as np
import pytest

from harness import PRUNE_TARGET


@pytest.mark.slow
def test_pruning_reaches_the_target_in_the_saved_kernels(pruned, teacher_run):
    from vgg_mobile.core.run_dir import load_run

    run = load_run(pruned.run_dir)
    manifest = run.manifest
    assert manifest.stage == "pruned"
    assert manifest.parent == str(teacher_run.run_dir.resolve())
    parent = load_run(teacher_run.run_dir).manifest
    for key in ("input", "preprocessing", "output", "architecture"):
        assert getattr(manifest, key) == getattr(parent, key)
    assert manifest.data["split_from"] == "parent"
    model = run.load_model()
    layers = {layer.name: layer for layer in model.layers}
    pruned_names = manifest.section("compression")["pruned_layers"]
    assert "block1_conv1" not in pruned_names and "logits" not in pruned_names
    assert len(pruned_names) == 13  # 12 convolutions after the first, and the hidden dense
    for name in pruned_names:
        kernel = layers[name].kernel.numpy()
        assert (kernel == 0).mean() == pytest.approx(PRUNE_TARGET, abs=0.01), name
    for name in ("block1_conv1", "logits"):
        assert (layers[name].kernel.numpy() == 0).mean() < 0.01, name
    assert manifest.section("compression")["sparsity"]["pruned_layers"] == pytest.approx(PRUNE_TARGET, abs=0.01)
    sizes = manifest.section("compression")["sizes"]
    assert sizes["gzip_bytes_after"] < 0.8 * sizes["gzip_bytes_before"]
    assert manifest.metrics["accuracy"] == pruned.metrics["accuracy"]


@pytest.mark.slow
def test_pruned_run_reloads_and_evaluates(pruned, sample_images, sample_dir, tmp_path):
    from vgg_mobile.evaluation.metrics import evaluate_run
    from vgg_mobile.core.run_dir import load_run

    x, _ = sample_images
    expected = pruned.model(x, training=False).numpy()
    assert expected.std(axis=0).max() > 1e-3  # outputs vary across inputs
    reloaded = load_run(pruned.run_dir).load_model()
    np.testing.assert_allclose(reloaded(x, training=False).numpy(), expected, atol=1e-5)
    report = evaluate_run(pruned.run_dir, sample_dir, out_dir=tmp_path / "eval")
    assert report["split"] == "val" and report["accuracy"] == pruned.metrics["accuracy"]


def test_cli_refuses_bad_sparsity_quickly(cli, tmp_path):
    for command, flag in (("prune", "--target-sparsity"), ("qat", "--preserve-sparsity")):
        result = cli(command, "--help")
        assert result.returncode == 0 and flag in result.stdout
    start = time.perf_counter()
    result = cli("prune", tmp_path / "run", "--data", tmp_path, "--out", tmp_path / "out",
                 "--target-sparsity", "1.0")
    assert result.returncode == 2
    assert "target_sparsity must be in (0, 1). Received: target_sparsity=1.0" in result.stderr
    assert time.perf_counter() - start < 15
    assert not (tmp_path / "out").exists()
