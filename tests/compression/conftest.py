"""The compression tests' shared runs: the session teacher pruned, then trained
quantization-aware keeping its zeros (made once for the package)."""

from __future__ import annotations

import pytest

from harness import PRUNE_TARGET, folder_digest, folder_images

from vgg_mobile.compression.prune import PruneConfig, prune_run
from vgg_mobile.compression.qat import QATConfig, qat_run

@pytest.fixture(scope="package")
def sample_images(sample_dir, teacher_run):
    from vgg_mobile.core.run_dir import load_run

    run = load_run(teacher_run.run_dir)
    return folder_images(sample_dir, run.classes, run.image_size)


@pytest.fixture(scope="package")
def pruned(teacher_run, sample_dir, tmp_path_factory):
    before = folder_digest(teacher_run.run_dir)
    result = prune_run(teacher_run.run_dir, sample_dir, tmp_path_factory.mktemp("c") / "pruned",
                       PruneConfig(method="magnitude", target_sparsity=PRUNE_TARGET, epochs=2,
                                   batch_size=16))
    assert folder_digest(teacher_run.run_dir) == before, "the input run was modified"
    return result


@pytest.fixture(scope="package")
def pruned_qat(pruned, sample_dir, tmp_path_factory):
    return qat_run(pruned.run_dir, sample_dir, tmp_path_factory.mktemp("c") / "pruned_qat",
                   QATConfig(epochs=1, batch_size=16, preserve_sparsity=True))
