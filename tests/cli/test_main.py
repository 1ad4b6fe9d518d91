"""The real `vgg-mobile` command in a subprocess: help, exit codes, messages, JSON."""

from __future__ import annotations

import json
import re

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
     "16 is not in the range x>=32"),
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


def _group_with_a_bug():
    import click

    from vgg_mobile.cli.main import _Group

    @click.group(cls=_Group)
    @click.option("--debug", is_flag=True)
    @click.option("--verbose", is_flag=True)
    @click.pass_context
    def group(ctx, debug, verbose):
        ctx.meta["debug"] = debug

    @group.command("boom")
    @click.option("--name", default="x")
    def boom(name):
        raise RuntimeError(f"a bug ({name})")

    return group


def test_debug_works_after_the_subcommand_and_the_hint_says_where_it_goes():
    from click.testing import CliRunner

    group = _group_with_a_bug()
    result = CliRunner().invoke(group, ["boom", "--name", "y"])
    assert result.exit_code == 1
    assert "internal error: RuntimeError: a bug (y)" in result.output
    hint = result.output.strip().splitlines()[-1]
    assert hint.endswith("--debug boom --name y)"), hint
    assert "Traceback" not in result.output
    # Where users type it (and where click used to refuse it): after the subcommand.
    result = CliRunner().invoke(group, ["boom", "--debug"])
    assert result.exit_code == 1 and "No such option" not in result.output
    assert "Traceback" in result.output and "RuntimeError: a bug (x)" in result.output


def test_demo_is_web_demo_under_its_old_name_and_says_so(cli, tmp_path):
    top = cli("--help")
    assert "web-demo" in top.stdout and not re.search(r"^  demo ", top.stdout, re.MULTILINE)
    result = cli("demo", tmp_path / "out", "--model", tmp_path / "absent")
    assert result.returncode == 2, result.stderr
    note, error = result.stderr.splitlines()[:2]
    assert note == "note: vgg-mobile demo is now vgg-mobile web-demo"
    assert error.startswith(f"error: {tmp_path / 'absent' / 'model.json'}: missing"), error


def test_global_flags_after_the_subcommand_reach_the_real_command(cli, tmp_path):
    result = cli("sample-data", tmp_path / "d", "--images-per-class", "2", "--image-size", "32",
                 "--verbose", "--debug")
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_the_printed_serve_hint_runs_as_printed_from_the_users_shell(teacher_export, tmp_path):
    """`make demo` runs the CLI through `uv run`; the user then types what it printed into a
    shell where the project's venv is not on PATH."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from harness import assert_serves_demo

    base, _ = teacher_export
    root = Path(__file__).resolve().parents[2]
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv runs the test suite (make test)"
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    shell = {k: v for k, v in os.environ.items()
             if k not in ("VIRTUAL_ENV", "UV_RUN_RECURSION_DEPTH")}
    shell["PATH"] = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                    if p and Path(p).resolve() != venv_bin)
    assert shutil.which("vgg-mobile", path=shell["PATH"]) is None
    done = subprocess.run([uv, "run", "--frozen", "vgg-mobile", "web-demo", str(tmp_path / "web_demo"),
                           "--model", str(base / "out")], cwd=root, env=shell,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    hint = done.stdout.split("open it with: ", 1)[1].strip()
    assert hint.endswith(f"serve {tmp_path / 'web_demo'}"), hint
    assert_serves_demo(["bash", "-c", f"exec {hint} --port 0"], root, shell)


# Lines that TensorFlow, its converter and LiteRT print on every CPU-only machine, and
# Keras's own warnings: a user reads each as a failure.
NOISE = re.compile(r"^([IWEF]\d{4} |WARNING|INFO: |fully_quantize:|.*(cuInit|CUDA error|Traceback))")


@pytest.mark.slow
def test_a_cpu_only_machine_prints_no_error_line_unless_asked(cli, tmp_path):
    data = tmp_path / "data"
    assert cli("sample-data", data, "--images-per-class", "6", "--image-size", "32").returncode == 0
    train = cli("train", data, "--out", tmp_path / "run", "--architecture", "mobilenet_v2_0.35",
                "--head-units", "0", "--image-size", "32", "--weights", "none", "--epochs", "1",
                "--batch-size", "8", "--quiet")
    assert train.returncode == 0, train.stderr[-2000:]
    convert = cli("convert", tmp_path / "run", "--out", tmp_path / "export", "--flavour", "int8",
                  "--no-tfjs", "--verify-images", "8")
    assert convert.returncode == 0, convert.stderr[-2000:]
    for result in (train, convert):
        assert [line for line in result.stderr.splitlines() if NOISE.match(line)] == []
    # Asked for, TensorFlow's own lines are all there (absl says so before anything else).
    verbose = cli("evaluate", tmp_path / "run", "--data", data, "--out", tmp_path / "e",
                  "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert "absl::InitializeLog" in verbose.stderr
