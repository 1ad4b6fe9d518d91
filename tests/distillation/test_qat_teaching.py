"""Which QAT runs keep learning from a teacher (`distillation.qat.teaching_of`), and the
refusals of `distill = "on"`; training with it is tested in `test_unlabeled_distill.py`."""

from __future__ import annotations

import json
import shutil

import pytest

from vgg_mobile.compression.qat import QATConfig
from vgg_mobile.core.errors import BadInputError, VggMobileError
from vgg_mobile.core.run_dir import load_run
from vgg_mobile.distillation.qat import qat_run, teaching_of


def _copy_with_teacher(run_dir, tmp_path, teacher_path):
    copy = tmp_path / "student"
    shutil.copytree(run_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["teacher"]["run"] = str(teacher_path)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.slow
def test_a_distilled_student_is_taught_by_its_teacher_unless_off(student_run, teacher_run,
                                                                 sample_dir):
    run = load_run(student_run.run_dir)
    trainer = teaching_of(run, sample_dir, QATConfig())
    assert trainer.record == {"teacher": str(teacher_run.run_dir.resolve()),
                              "temperature": run.manifest.section("distillation")["temperature"],
                              "alpha": run.manifest.section("distillation")["alpha"],
                              "unlabeled": None, "unlabeled_ratio": 1.0}
    assert trainer.inputs == (load_run(teacher_run.run_dir).path,)
    assert teaching_of(run, sample_dir, QATConfig(distill="off")) is None
    # A teacher is no distilled student: auto trains it on its labels, on refuses.
    teacher = load_run(teacher_run.run_dir)
    assert teaching_of(teacher, sample_dir, QATConfig()) is None
    with pytest.raises(BadInputError, match="not a distilled student"):
        teaching_of(teacher, sample_dir, QATConfig(distill="on"))


@pytest.mark.slow
def test_a_student_whose_teacher_is_gone_falls_back_or_is_refused(student_run, sample_dir,
                                                                  tmp_path):
    copy = _copy_with_teacher(student_run.run_dir, tmp_path, tmp_path / "gone")
    logs: list[str] = []
    assert teaching_of(load_run(copy), sample_dir, QATConfig(), logs.append) is None
    assert logs and "the labels alone: the teacher cannot be read" in logs[0]
    assert str(tmp_path / "gone") in logs[0]
    out = tmp_path / "qat"
    with pytest.raises(BadInputError, match="its teacher cannot be read"):
        qat_run(copy, sample_dir, out, QATConfig(distill="on"))
    assert not out.exists()


def test_distill_takes_three_values_and_on_needs_the_distilling_entry_point(tmp_path):
    from vgg_mobile.compression.qat import qat_run as labels_only_qat_run

    with pytest.raises(VggMobileError, match="distill must be one of"):
        QATConfig(distill="yes")
    with pytest.raises(BadInputError, match="distillation.qat.qat_run"):
        labels_only_qat_run(tmp_path / "run", tmp_path, tmp_path / "out", QATConfig(distill="on"))


@pytest.mark.slow
def test_qat_distill_on_refuses_a_teacher_run_with_exit_2_writing_nothing(cli, teacher_run,
                                                                          sample_dir, tmp_path):
    out = tmp_path / "qat"
    result = cli("qat", teacher_run.run_dir, "--data", sample_dir, "--out", out, "--distill", "on")
    assert result.returncode == 2, result.stderr
    assert "not a distilled student" in result.stderr and str(teacher_run.run_dir) in result.stderr
    assert not out.exists()
