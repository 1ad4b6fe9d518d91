"""Misuse of the writing commands: `--force` on folders vgg-mobile did not write, outputs that
overlap inputs, names that climb out of `--out`, interrupted replacements, two writers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import harness
from vgg_mobile.core.errors import BadInputError, OutputBusyError, RunDirError
from vgg_mobile.core.outputs import lock, replacing_path
from vgg_mobile.data.sample import write_sample_data


def _tree_digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_folders(base: Path) -> dict[str, Path]:
    """The two folders of the audit: someone's work with a `manifest.json` of their own, and
    a folder holding only dotfiles."""
    work = base / "vA"
    (work / "photos").mkdir(parents=True)
    (work / "photos" / "beach.jpg").write_bytes(b"jpeg")
    (work / "thesis.docx").write_text("chapter 1")
    (work / "manifest.json").write_text('{"name": "app"}')
    repo = base / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "config").write_text("[core]")
    (repo / ".env").write_text("TOKEN=1")
    return {"work": work, "repo": repo}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_sample_data(tmp_path_factory.mktemp("tiny") / "data", images_per_class=10,
                             image_size=32, seed=5, colour_cue=True)


def _tiny_train(data, out, epochs=1, **kwargs):
    from vgg_mobile.models.architectures import ModelOptions
    from vgg_mobile.training.hyperparameters import TrainConfig
    from vgg_mobile.training.train import train

    return train(data, out, ModelOptions(architecture="mobilenet_v2_0.35", head_units=0,
                                         image_size=32, weights="none"),
                 TrainConfig(epochs=epochs, batch_size=8), **kwargs)


def test_train_force_never_deletes_a_folder_it_did_not_write(tiny_data, tmp_path):
    for folder in _user_folders(tmp_path).values():
        before = _tree_digest(folder)
        with pytest.raises(RunDirError, match="never replaced, even with --force"):
            _tiny_train(tiny_data, folder, force=True)
        assert _tree_digest(folder) == before


def test_compression_and_distillation_force_never_delete_a_user_folder(teacher_run, sample_dir,
                                                                       tmp_path):
    from vgg_mobile.compression.prune import PruneConfig, prune_run
    from vgg_mobile.compression.qat import QATConfig, qat_run
    from vgg_mobile.distillation.distill import DistillConfig, distill

    folders = _user_folders(tmp_path)
    before = {name: _tree_digest(path) for name, path in folders.items()}
    for folder in folders.values():
        with pytest.raises(RunDirError, match="never replaced"):
            prune_run(teacher_run.run_dir, sample_dir, folder, PruneConfig(epochs=1), force=True)
        with pytest.raises(RunDirError, match="never replaced"):
            qat_run(teacher_run.run_dir, sample_dir, folder, QATConfig(epochs=1), force=True)
        with pytest.raises(RunDirError, match="never replaced"):
            distill(teacher_run.run_dir, sample_dir, folder,
                    DistillConfig(image_size=32, epochs=1), force=True)
    assert {name: _tree_digest(path) for name, path in folders.items()} == before


def test_a_run_inside_the_data_folder_is_refused(tiny_data):
    with pytest.raises(RunDirError, match="lies inside the input"):
        _tiny_train(tiny_data, tiny_data / "run")
    assert not (tiny_data / "run").exists()


def test_an_interrupted_force_keeps_the_finished_run_and_can_resume_the_replacement(tiny_data,
                                                                                  tmp_path):
    import tf_keras as keras

    run = tmp_path / "run"
    _tiny_train(tiny_data, run)
    before = _tree_digest(run)

    class CtrlC(keras.callbacks.Callback):
        """Ctrl-C: at the second batch, or after the first epoch's checkpoint."""

        def __init__(self, after_epoch=False):
            super().__init__()
            self.after_epoch = after_epoch

        def on_train_batch_begin(self, batch, logs=None):
            if not self.after_epoch and batch == 1:
                raise KeyboardInterrupt

        def on_epoch_end(self, epoch, logs=None):
            if self.after_epoch:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tiny_train(tiny_data, run, epochs=2, force=True, callbacks=(CtrlC(),))
    assert _tree_digest(run) == before  # the old run, whole
    assert not replacing_path(run).exists()  # nothing to resume: discarded

    # Interrupted after an epoch was checkpointed: the old run still stands, and --resume
    # finishes the replacement.
    with pytest.raises(KeyboardInterrupt):
        _tiny_train(tiny_data, run, epochs=2, force=True, callbacks=(CtrlC(after_epoch=True),))
    assert _tree_digest(run) == before
    assert (replacing_path(run) / "checkpoints" / "state.json").is_file()
    result = _tiny_train(tiny_data, run, epochs=2, resume=True)
    assert result.run_dir == run and not replacing_path(run).exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["training"]["epochs"] == 2 and manifest["training"]["resumed_from_epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_distillation_that_fails_before_its_first_epoch_leaves_nothing(teacher_run, sample_dir,
                                                                         tmp_path):
    import tf_keras as keras

    from vgg_mobile.distillation.distill import DistillConfig, distill

    class Fail(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            raise RuntimeError("out of memory")

    out = tmp_path / "student"
    with pytest.raises(RuntimeError, match="out of memory"):
        distill(teacher_run.run_dir, sample_dir, out, DistillConfig(image_size=32, epochs=1),
                callbacks=(Fail(),))
    assert not out.exists()  # not a folder that reads as an interrupted run


@pytest.mark.parametrize("name", ["../../evil", "/abs/path/important", "sub/model", ".."])
def test_convert_names_stay_inside_out(name):
    from vgg_mobile.converters.convert import ConvertOptions

    with pytest.raises(BadInputError, match="name must be"):
        ConvertOptions(name=name)


def test_a_pipeline_convert_name_is_confined_too():
    from vgg_mobile.pipeline.config import build_config

    with pytest.raises(BadInputError, match="name must be"):
        build_config({"export": {"name": "../../evil"}}, "sample")


def test_convert_misuse_exits_2_and_keeps_every_input(cli, teacher_run, sample_dir, tmp_path):
    run = teacher_run.run_dir
    run_before, data_before = _tree_digest(run), _tree_digest(sample_dir)
    important = tmp_path / "abs" / "important_dynamic.tflite"
    important.parent.mkdir()
    important.write_bytes(b"keep me")
    assets = tmp_path / "app" / "src" / "main" / "assets"
    assets.mkdir(parents=True)
    (assets / "fonts.ttf").write_bytes(b"font")
    cases = [
        (("--out", run, "--force"), "is the input"),
        (("--data", sample_dir, "--out", sample_dir, "--force"), "is the input"),
        (("--out", tmp_path / "o", "--name", "../../evil", "--max-size", "1kB"), "name must be"),
        (("--out", tmp_path / "o", "--name", str(important.parent / "important")), "name must be"),
        (("--out", tmp_path / "o", "--android", assets, "--force"), "never replaced"),
    ]
    for args, message in cases:
        result = cli("convert", run, "--flavour", "dynamic", "--no-tfjs", *args, timeout=300)
        assert result.returncode == 2, (args, result.stderr[-1500:])
        assert message in result.stderr and "Traceback" not in result.stderr
    assert _tree_digest(run) == run_before and _tree_digest(sample_dir) == data_before
    assert important.read_bytes() == b"keep me" and (assets / "fonts.ttf").read_bytes() == b"font"
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.parent.rglob("evil_*")) and not list(Path("/").glob("evil_*"))


def test_a_second_pipeline_on_the_same_out_stops_naming_the_first(cli, tiny_data, tmp_path):
    from vgg_mobile.pipeline.runner import run_pipeline

    out = tmp_path / "out"
    with lock(out):
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"):
            run_pipeline(tiny_data, out)
        result = cli("pipeline", tiny_data, "--out", out)
    assert result.returncode == 4, result.stderr[-1500:]
    assert "in use by another vgg-mobile process" in result.stderr
    assert not out.exists()  # refused before anything was written


def test_an_output_is_never_written_through_a_link(tiny_data, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(RunDirError, match="is a link"):
        _tiny_train(tiny_data, tmp_path / "link")
    assert list(target.iterdir()) == []


def test_image_folder_helper_is_untouched_by_refusals(tmp_path):
    # A refused sample-data over someone's images keeps them.
    data = harness.image_folder(tmp_path / "mine", {"cat": 2, "dog": 2})
    before = _tree_digest(data)
    with pytest.raises(RunDirError, match="never replaced"):
        write_sample_data(data, images_per_class=2, image_size=32, overwrite=True)
    assert _tree_digest(data) == before


def _file_size_limit(limit: int):
    def apply():
        import resource

        # Any write past `limit` fails with EFBIG, as a full disk fails with ENOSPC.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _named_write_failure(result, out: Path, file: bool = True, emptied: bool = True) -> Path:
    """The file a full-disk error names: inside `out` (a file in it, with `file`), on one
    line, exit 1, nothing kept (with `emptied`)."""
    assert result.returncode == 1, result.stderr[-2000:]
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    line = next(l for l in result.stderr.splitlines() if l.startswith("error: "))
    named = Path(line.removeprefix("error: ").split(": could not write")[0])
    assert named.is_relative_to(out) and (named != out or not file), line
    assert "File too large" in line, line
    assert not emptied or not out.exists() or not any(out.iterdir())
    return named


def test_sample_data_on_a_full_disk_names_the_file(cli, tmp_path):
    out = tmp_path / "data"
    result = cli("sample-data", out, "--images-per-class", "40", "--image-size", "64",
                 preexec_fn=_file_size_limit(4_000))
    assert _named_write_failure(result, out).suffix in (".png", ".jpg", ".json")


def test_convert_and_distill_on_a_full_disk_name_the_file(cli, teacher_run, sample_dir,
                                                          tmp_path):
    out = tmp_path / "export"
    result = cli("convert", teacher_run.run_dir, "--out", out, "--data", sample_dir,
                 "--flavour", "int8", "--no-tfjs", "--max-size", "none", "--verify-images", "8",
                 preexec_fn=_file_size_limit(1_000_000))
    # The first write that fails is tflite-support's temporary copy of the model, outside
    # the export: the export folder is named, with no stray traceback after the error.
    _named_write_failure(result, out, file=False)
    assert result.stderr.rstrip().splitlines()[-1].startswith(f"error: {out}: could not write")
    # TensorFlow reports a full disk as an error of its own (ResourceExhaustedError).
    out = tmp_path / "student"
    result = cli("distill", "--teacher", teacher_run.run_dir, "--data", sample_dir, "--out", out,
                 "--student", "mobilenet_v2_0.35", "--image-size", "32", "--epochs", "1",
                 "--quiet", preexec_fn=_file_size_limit(200_000))
    # The epoch's checkpoint is the file that failed; its history was recorded, so the
    # folder is kept as an interrupted run.
    assert "checkpoints" in _named_write_failure(result, out, emptied=False).parts
