"""The output-folder rule: what may be written or replaced, atomically, by one writer at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vgg_mobile.core.errors import BadInputError, OutputBusyError, RunDirError
from vgg_mobile.core.outputs import (claim_output, inside, lock, marker, output_kind,
                                     replacing_path, safe_name)


def own_run(path: Path, stage: str = "teacher", model_file: str | None = "model.keras") -> Path:
    """A folder with a manifest as vgg-mobile writes it (the parts the rule reads)."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "stage": stage, "model_file": model_file, "classes": ["a", "b"],
        "versions": {"vgg_mobile": "0"}}))
    (path / "model.keras").write_bytes(b"old model")
    return path


def test_a_folder_with_a_foreign_manifest_is_never_replaced(tmp_path):
    out = tmp_path / "vA"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "cat.jpg").write_bytes(b"jpeg")
    (out / "thesis.docx").write_text("x")
    (out / "manifest.json").write_text('{"name": "app"}')
    with pytest.raises(RunDirError, match="never replaced, even with --force") as err:
        with claim_output(out, ("run",), force=True):
            pass
    assert "thesis.docx" in str(err.value) and "pass --force" not in str(err.value)
    assert (out / "thesis.docx").read_text() == "x" and (out / "photos" / "cat.jpg").exists()


def test_dotfiles_count_as_content(tmp_path):
    out = tmp_path / "repo"
    (out / ".git").mkdir(parents=True)
    (out / ".env").write_text("SECRET=1")
    with pytest.raises(RunDirError, match=r"\.env, \.git"):
        with claim_output(out, ("run",), force=True):
            pass
    assert (out / ".env").read_text() == "SECRET=1"


def test_an_output_may_not_overlap_an_input(tmp_path):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    for out, message in ((data, "input .* itself"), (data / "run", "lies inside the input"),
                         (tmp_path, "contains the input")):
        with pytest.raises(RunDirError, match=message):
            with claim_output(out, ("run",), inputs=(data,), force=True):
                pass
    assert (data / "a").is_dir() and not (data / "run").exists()


def test_force_replaces_only_the_same_kind_of_output(tmp_path):
    export = own_run(tmp_path / "export", stage="export", model_file=None)
    assert output_kind(export) == "export"
    with pytest.raises(RunDirError, match="export output, not a run"):
        with claim_output(export, ("run",), force=True):
            pass
    assert (export / "manifest.json").exists()
    page = tmp_path / "web_demo"
    page.mkdir()
    (page / "manifest.json").write_text(json.dumps(marker("web_demo", "web_demo")))
    assert output_kind(page) == "web_demo"
    with pytest.raises(RunDirError, match="web demo output, not a run"):
        with claim_output(page, ("run",), force=True):
            pass


def test_a_finished_output_needs_force(tmp_path):
    run = own_run(tmp_path / "run")
    with pytest.raises(RunDirError, match="pass --force"):
        with claim_output(run, ("run",)):
            pass


def test_replacing_is_atomic(tmp_path):
    run = own_run(tmp_path / "run")
    with claim_output(run, ("run",), force=True) as output:
        assert output.path == replacing_path(run) and output.replacing
        (output.path / "model.keras").write_bytes(b"new model")
        # Until the block ends, the old run is untouched.
        assert (run / "model.keras").read_bytes() == b"old model"
    assert (run / "model.keras").read_bytes() == b"new model"
    assert not replacing_path(run).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock, no leftovers


def test_an_interrupted_replacement_keeps_the_old_output(tmp_path):
    run = own_run(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt) as err:
        with claim_output(run, ("run",), force=True) as output:
            (output.path / "half").write_text("written")
            raise KeyboardInterrupt
    assert (run / "model.keras").read_bytes() == b"old model"
    # What the CLI prints instead of a "resume with" hint: there is nothing to resume.
    assert err.value.__notes__ == [f"{run} was left as it was: nothing had been finished to "
                                   "resume from"]
    assert not replacing_path(run).exists()


def test_an_interrupted_replacement_with_a_checkpoint_resumes(tmp_path):
    run = own_run(tmp_path / "run")
    with pytest.raises(RuntimeError):
        with claim_output(run, ("run",), force=True) as output:
            (output.path / "checkpoints").mkdir()
            (output.path / "checkpoints" / "state.json").write_text(
                json.dumps({"config": {}, "checkpoint": "epoch-1", "history": {}}))
            raise RuntimeError("killed")
    assert replacing_path(run).is_dir()  # kept for --resume
    with claim_output(run, ("run",), resume=True) as output:
        assert output.resume and output.path == replacing_path(run)
        (output.path / "model.keras").write_bytes(b"resumed model")
    assert (run / "model.keras").read_bytes() == b"resumed model"


def test_a_failed_new_output_leaves_nothing(tmp_path):
    out = tmp_path / "student"
    with pytest.raises(ValueError):
        with claim_output(out, ("run",)) as output:
            (output.path / "checkpoints").mkdir()
            (output.path / "checkpoints" / "state.json").write_text(
                json.dumps({"config": {}, "checkpoint": None, "history": {}}))
            raise ValueError("bad teacher")
    assert not out.exists()  # no folder that reads as an interrupted run


def test_leftovers_of_killed_writers_are_removed(tmp_path):
    out = tmp_path / "export"
    (tmp_path / ".export.k2j3.partial").mkdir()
    (tmp_path / ".export.replacing").mkdir()
    (tmp_path / ".other.k2j3.partial").mkdir()
    with claim_output(out, ("export",), staged=True) as output:
        (output.path / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.k2j3.partial", "export"]


def test_a_staged_new_output_appears_only_when_complete(tmp_path):
    out = tmp_path / "export"
    with claim_output(out, ("export",), staged=True) as output:
        (output.path / "a.tflite").write_bytes(b"x")
        assert not out.exists()
    assert (out / "a.tflite").exists()
    with pytest.raises(BadInputError):
        with claim_output(tmp_path / "export2", ("export",), staged=True) as output:
            raise BadInputError("budget missed")
    assert not (tmp_path / "export2").exists()


def test_one_writer_at_a_time(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom vgg_mobile.core.outputs import lock\n"
         f"with lock({str(out)!r}):\n    print('holding', flush=True)\n    sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid}") as err:
            with claim_output(out, ("run",)):
                pass
        assert err.value.exit_code == 4
    finally:
        holder.stdin.close()
        holder.wait(30)
    with claim_output(out, ("run",)):  # free again once the holder is done
        pass


def test_a_lock_in_this_process_also_excludes(tmp_path):
    with lock(tmp_path / "out"):
        with pytest.raises(OutputBusyError, match=str(os.getpid())):
            with lock(tmp_path / "out"):
                pass


@pytest.mark.parametrize("name", ["../../evil", "/abs/path/important", "a/b", "..", ".hidden",
                                  "a\nb", "", "x" * 101, "a..b"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(BadInputError, match="name must be"):
        safe_name(name)


@pytest.mark.parametrize("name", ["vgg16_teacher", "my-model.v2", "A1"])
def test_safe_names_pass(name):
    assert safe_name(name) == name


def test_inside_keeps_paths_in_their_folder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (tmp_path / "secret").write_text("x")
    (folder / "link").symlink_to(tmp_path / "secret")
    assert inside(folder, "model.keras", "model_file") == folder / "model.keras"
    for name in ("../secret", str(tmp_path / "secret"), "link", "a\x00b"):
        with pytest.raises(RunDirError):
            inside(folder, name, "model_file")


def test_the_current_folder_can_be_replaced_by_name(tmp_path, monkeypatch):
    run = own_run(tmp_path / "run")
    monkeypatch.chdir(run)
    with claim_output(".", ("run",), force=True) as output:
        assert output.path == replacing_path(run)
        (output.path / "model.keras").write_bytes(b"new model")
    assert (run / "model.keras").read_bytes() == b"new model"
    with pytest.raises(RunDirError, match="root folder"):
        with claim_output("/", ("run",), force=True):
            pass
