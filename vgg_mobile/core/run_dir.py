"""The run-directory contract: how every stage hands its result to the next.

A finished run directory holds:
  model.keras     the tf_keras model (raw RGB 0-255 in, class probabilities out)
  labels.txt      one class name per line, in output order
  manifest.json   schema version, stage, classes, input, preprocessing, config, command,
                  metrics, parent run, versions

`manifest.json` is written last and atomically: a directory without it is unfinished, whatever
else it holds. Later stages read a run only through `load_run`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import shutil
import sys
from pathlib import Path

from vgg_mobile.core.custom_objects import load_scope
from vgg_mobile.core.errors import RunDirError
from vgg_mobile.core.io import atomic_path, write_json, write_text

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.txt"
MODEL = "model.keras"
CHECKPOINTS = "checkpoints"


def save_model(model, path: str | Path) -> None:
    """Saves a tf_keras model atomically, without optimizer state."""
    import tf_keras as keras

    # A clone sharing the layers but not compiled: the file holds no optimizer state (or
    # learning-rate schedule objects a loader would need to know about).
    bare = keras.Model(model.inputs, model.outputs, name=model.name)
    with atomic_path(path) as tmp:
        bare.save(tmp)


def versions() -> dict[str, str]:
    import tensorflow as tf
    import tf_keras

    from vgg_mobile import __version__

    return {"vgg_mobile": __version__, "tensorflow": tf.__version__,
            "tf_keras": tf_keras.__version__, "python": sys.version.split()[0]}


def new_manifest(stage: str, classes: tuple[str, ...], **fields) -> dict:
    """A manifest dict with the fields every stage writes; `fields` adds or overrides."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "stage": stage,
        "kind": "image_classifier",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_file": MODEL,
        "classes": list(classes),
        "num_classes": len(classes),
    }
    manifest.update(fields)
    manifest["versions"] = versions()
    return manifest


def finish_run(out_dir: str | Path, model, manifest: dict) -> Path:
    """Writes model, labels and (last) the manifest of a finished run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, out_dir / manifest.get("model_file", MODEL))
    write_text(out_dir / LABELS, "".join(f"{c}\n" for c in manifest["classes"]))
    write_json(out_dir / MANIFEST, manifest)
    return out_dir


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run directory, as read by `load_run`."""

    path: Path
    manifest: dict

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["input"]["size"][0])

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.get("model_file", MODEL)

    def load_model(self):
        """Loads the run's model (not compiled).

        Raises:
            RunDirError: The model file is missing, truncated or not a Keras model.
        """
        import tf_keras as keras

        path = self.model_path
        if not path.is_file():
            raise RunDirError(f"{path}: model file missing from run directory")
        try:
            with load_scope(self.manifest):
                return keras.models.load_model(path, compile=False)
        except Exception as err:  # Keras raises many types for a damaged file.
            raise RunDirError(
                f"{path}: cannot load the model; the file is damaged or not a Keras model "
                f"({type(err).__name__}: {str(err)[:200]})"
            ) from None


def load_run(path: str | Path) -> Run:
    """Reads and validates a finished run directory.

    Raises:
        RunDirError: No such directory, no or unreadable manifest (e.g. an unfinished run),
            a schema from a newer vgg-mobile, or labels that disagree with the manifest.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        hint = (" (an interrupted training run: resume it with `vgg-mobile train ... --resume`)"
                if (path / CHECKPOINTS).exists() else "")
        raise RunDirError(f"{manifest_path}: missing, so {path} is not a finished run{hint}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{manifest_path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise RunDirError(f"{manifest_path}: expected a JSON object")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RunDirError(
            f"{manifest_path}: schema_version {version!r} is not supported "
            f"(this vgg-mobile reads up to {SCHEMA_VERSION})"
        )
    for key in ("classes", "input", "stage"):
        if key not in manifest:
            raise RunDirError(f"{manifest_path}: missing required field {key!r}")
    labels_path = path / LABELS
    if not labels_path.is_file():
        raise RunDirError(f"{labels_path}: missing from run directory")
    labels = [line for line in labels_path.read_text(encoding="utf-8").splitlines() if line]
    if labels != list(manifest["classes"]):
        raise RunDirError(
            f"{labels_path}: labels {labels} disagree with the manifest's classes "
            f"{manifest['classes']}"
        )
    return Run(path, manifest)


def manifest_digest(run_path: str | Path) -> str | None:
    """SHA-256 of a run's `manifest.json` (which names its model, config and data), or `None`
    for a run that has not finished."""
    manifest = Path(run_path) / MANIFEST
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


def prepare_out_dir(out: str | Path, resume: bool = False, force: bool = False) -> Path:
    """Checks that `out` may be written by a new (or resumed) run, clearing it with `force`.

    Raises:
        RunDirError: `out` holds a finished run (without `force`), an interrupted one (without
            `resume` or `force`), or unrelated files (never deleted, even with `force`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory")
    entries = [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
    finished = (out / MANIFEST).is_file()
    interrupted = (out / CHECKPOINTS).is_dir() and not finished
    if resume:
        if finished:
            raise RunDirError(f"{out}: holds a finished run; nothing to resume")
        if not interrupted:
            raise RunDirError(f"{out}: no interrupted run to resume (no {CHECKPOINTS}/ folder)")
        return out
    if entries and not (finished or interrupted):
        raise RunDirError(f"{out}: exists and is not a vgg-mobile run directory; choose another --out")
    if finished and not force:
        raise RunDirError(f"{out}: already holds a finished run (pass --force to replace it)")
    if interrupted and not force:
        raise RunDirError(
            f"{out}: holds an interrupted run; pass --resume to continue it or --force to restart")
    if out.exists() and force:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out
