"""The student's unlabelled images in the pipeline: `[student] unlabeled`, `--unlabeled`, checked
before OUT is made, and a student redone when (and only when) their contents change. The stages
are stand-ins that write their finished file: no training."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from click.testing import CliRunner

from harness import image_folder
from vgg_mobile.core.errors import BadInputError, DataError, RunDirError
from vgg_mobile.pipeline import runner
from vgg_mobile.pipeline.config import build_config, load_config
from vgg_mobile.pipeline.stages import STAGES


@pytest.fixture()
def ran(monkeypatch) -> list[list[str]]:
    """Replaces every stage's work by writing its finished file; returns the stages each
    `run_pipeline` call ran, one list per call."""
    calls: list[list[str]] = []

    def fake(job, settings):
        calls[-1].append(job.name)
        job.path.mkdir(parents=True)
        stage = next(s for s in STAGES if s.name == job.name)
        finished = {"schema_version": 1, "stage": job.name, "classes": ["a", "b"],
                    "input": {"size": [32, 32]}, "model_file": None}
        (job.path / stage.finished_file).write_text(json.dumps(finished))

    monkeypatch.setattr(runner, "STAGES", tuple(dataclasses.replace(s, run=fake) for s in STAGES))
    monkeypatch.setattr(runner, "summary_rows", lambda out, config: [])
    original = runner._run

    def counted(*args, **kwargs):
        calls.append([])
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "_run", counted)
    return calls


def test_the_student_is_redone_when_the_unlabelled_images_change_not_their_path(
        tmp_path, sample_dir, ran):
    photos = image_folder(tmp_path / "photos", {"2024": 3}, size=16, seed=5)
    out = tmp_path / "out"

    def run(folder):
        config = build_config({"student": {"unlabeled": str(folder)}} if folder else {})
        runner.run_pipeline(sample_dir, out, config)
        return ran[-1]

    everything = run(photos)
    assert everything[:4] == ["teacher", "pruned", "pruned_qat", "student"]
    assert run(photos) == []
    moved = tmp_path / "moved"
    shutil.copytree(photos, moved)
    assert run(moved) == []  # the same images elsewhere: the student stands
    (moved / "2024" / "0.jpg").unlink()
    redone = run(moved)
    assert redone[0] == "student" and "teacher" not in redone and "pruned" not in redone
    assert run(None)[0] == "student"  # without unlabelled images


def test_a_refused_unlabelled_folder_stops_the_pipeline_before_out_is_made(
        tmp_path, sample_dir, ran):
    out = tmp_path / "out"
    inside = min(p for p in sample_dir.iterdir() if p.is_dir())
    with pytest.raises(DataError, match="lies inside the data folder"):
        runner.run_pipeline(sample_dir, out, build_config({"student": {"unlabeled": str(inside)}}))
    assert not out.exists()
    photos = image_folder(tmp_path / "photos", {"2024": 2}, size=16)
    with pytest.raises(RunDirError, match=r"overlaps the unlabelled images .*photos "
                                          r"\(\[student\] unlabeled\); choose another --out"):
        runner.run_pipeline(sample_dir, photos / "out",
                            build_config({"student": {"unlabeled": str(photos)}}))
    assert not (photos / "out").exists()


def test_the_unlabeled_key_and_flag(tmp_path, sample_dir, monkeypatch):
    from vgg_mobile.cli.main import main

    assert build_config({}).student.unlabeled is None
    assert load_config(text='[student]\nunlabeled = "photos/"\n').student.unlabeled == "photos/"
    assert load_config(text='[student]\nunlabeled = "none"\n').student.unlabeled is None
    with pytest.raises(BadInputError, match="alpha must be below 1 with unlabeled"):
        load_config(text='[student]\nunlabeled = "photos/"\nalpha = 1.0\n')
    seen = {}

    def fake_run(data, out, config, **kwargs):
        seen["unlabeled"] = config.student.unlabeled
        raise DataError("stop here")

    monkeypatch.setattr(runner, "run_pipeline", fake_run)
    result = CliRunner().invoke(main, ["pipeline", str(sample_dir), "--out", str(tmp_path / "o"),
                                       "--unlabeled", "photos"])
    assert result.exit_code == 2 and seen == {"unlabeled": "photos"}, result.output
