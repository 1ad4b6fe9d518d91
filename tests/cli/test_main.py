"""The real `vgg-mobile` command in a subprocess: help, exit codes, messages, JSON."""

from __future__ import annotations

import json

import pytest

from vgg_mobile import __version__

COMMANDS = ("sample-data", "train", "evaluate")


def test_version_and_help_on_every_command(cli):
    result = cli("--version")
    assert result.returncode == 0 and __version__ in result.stdout
    top = cli("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        result = cli(command, "--help")
        assert result.returncode == 0 and "Usage: vgg-mobile " + command in result.stdout


def test_sample_data_writes_a_mixed_folder_and_refuses_to_overwrite(cli, tmp_path):
    out = tmp_path / "sample"
    result = cli("sample-data", out, "--images-per-class", "4", "--image-size", "32")
    assert result.returncode == 0, result.stderr
    assert "wrote 16 images in 4 classes" in result.stdout
    assert {p.suffix for p in out.rglob("*.*") if not p.name.startswith(".")} == {".jpg", ".png"}
    again = cli("sample-data", out)
    assert again.returncode == 2 and f"{out}: already holds a finished vgg-mobile sample data" in again.stderr


@pytest.mark.parametrize("args,message", [
    (("train", "{tmp}/absent", "--out", "{tmp}/run", "--weights", "none"), "absent: no such folder"),
    (("train", "{one_class}", "--out", "{tmp}/run", "--weights", "none"), "at least two class folders"),
    (("train", "{sample}", "--out", "{tmp}/run", "--weights", "imagenet", "--image-size", "32",
      "--offline"), "downloads are off (--offline"),
    (("train", "{sample}", "--out", "{tmp}/run", "--weights", "none", "--image-size", "16"),
     "image_size=16"),
    (("train", "{sample}", "--out", "{tmp}/run", "--weights", "none", "--label-smoothing", "2"),
     "label_smoothing=2"),
    (("train", "{sample}", "--out", "{tmp}/run", "--architecture", "vgg99"), "valid: vgg16"),
    (("train", "{sample}", "--out", "{tmp}/run", "--resume", "--weights", "none",
      "--image-size", "32"), "no interrupted run to resume"),
    (("evaluate", "{tmp}/absent", "--data", "{sample}"), "absent: no such run directory"),
    (("train", "{sample}"), "Missing option '--out'"),
])
def test_bad_input_exits_2_with_a_message_naming_the_problem(cli, tmp_path, sample_dir, keras_home,
                                                             args, message):
    one_class = tmp_path / "one"
    (one_class / "only").mkdir(parents=True)
    for image in list((sample_dir / "circle").iterdir())[:2]:
        (one_class / "only" / image.name).write_bytes(image.read_bytes())
    fill = {"tmp": tmp_path, "sample": sample_dir, "one_class": one_class}
    result = cli(*(a.format(**fill) for a in args), env={"KERAS_HOME": str(keras_home)})
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_evaluate_prints_a_table_or_json(cli, teacher_run, sample_dir, tmp_path):
    table = cli("evaluate", teacher_run.run_dir, "--data", sample_dir, "--out", tmp_path / "e1")
    assert table.returncode == 0, table.stderr
    assert "accuracy" in table.stdout and "triangle" in table.stdout
    result = cli("evaluate", teacher_run.run_dir, "--data", sample_dir, "--json",
                 "--out", tmp_path / "e2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["accuracy"] == pytest.approx(teacher_run.metrics["accuracy"], abs=1e-4)
    assert set(report["per_class"]) == {"circle", "cross", "square", "triangle"}
    assert (tmp_path / "e2" / "confusion_matrix.png").exists()


def test_evaluate_a_damaged_run_exits_2(cli, teacher_run, sample_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(teacher_run.run_dir, run)
    model = run / "model.keras"
    model.write_bytes(model.read_bytes()[:1000])
    result = cli("evaluate", run, "--data", sample_dir)
    assert result.returncode == 2
    assert "model.keras: cannot load the model" in result.stderr
