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
from vgg_mobile.core.version import __version__

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

    return {"vgg_mobile": __version__, "tensorflow": tf.__version__,
            "tf_keras": tf_keras.__version__, "python": sys.version.split()[0]}


# Keys of manifest.json that `Manifest` owns; a stage's own records go in `sections`.
_FIELDS = ("schema_version", "stage", "kind", "created", "model_file", "classes", "num_classes",
           "architecture", "input", "preprocessing", "output", "quantization_aware", "config",
           "command", "data", "parent", "metrics", "versions")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a stage records in `manifest.json`: the one way every stage builds it.

    Attributes:
        stage: The stage name (`teacher`, `pruned`, `pruned_qat`, `student`, `student_qat`,
            `export`, ...); in a pipeline also the folder and the config section.
        classes: Class names in output order.
        input: The model's input contract (`size`, `channels`, `range`, `color`, ...).
        architecture: The registry name of the model's architecture.
        preprocessing: The in-graph preprocessing (mean/std), for metadata and the browser.
        output: The output layer names (`probs`, `logits_layer`).
        model_file: The model's file name in the run folder; `None` for an export folder.
        quantization_aware: The model holds tfmot quantization layers (loads in tfmot's scope).
        config: The settings the stage ran with.
        command: The command line that asked for it.
        data: Which folder and split it used (`data.splits.data_record`).
        parent: The parent run's path; `None` for a first stage.
        metrics: Held-out metrics of the model.
        sections: The stage's own records (`training`, `compression`, `teacher`, `artifacts`,
            ...), written as top-level keys beside the fields above.
        kind: What the model is. Defaults to `"image_classifier"`.
    """

    stage: str
    classes: tuple[str, ...]
    input: dict
    architecture: str | None = None
    preprocessing: dict | None = None
    output: dict | None = None
    model_file: str | None = MODEL
    quantization_aware: bool = False
    config: dict = dataclasses.field(default_factory=dict)
    command: list[str] | None = None
    data: dict = dataclasses.field(default_factory=dict)
    parent: str | None = None
    metrics: dict = dataclasses.field(default_factory=dict)
    sections: dict = dataclasses.field(default_factory=dict)
    kind: str = "image_classifier"

    def __post_init__(self):
        if not self.stage or not self.stage.replace("_", "").isalnum():
            raise ValueError(f"stage must be a name of letters, digits and _. Received: stage={self.stage!r}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct and at least one. Received: classes={self.classes!r}")
        clash = sorted(set(self.sections) & set(_FIELDS))
        if clash:
            raise ValueError(f"sections may not redefine manifest fields. Received: {clash}")

    def to_json(self) -> dict:
        """The manifest as written: the fields, the stage's sections, then the versions."""
        data = {"schema_version": SCHEMA_VERSION, "stage": self.stage, "kind": self.kind,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "model_file": self.model_file, "classes": list(self.classes),
                "num_classes": len(self.classes)}
        for name in ("architecture", "input", "preprocessing", "output", "config", "command",
                     "data", "parent", "metrics"):
            data[name] = getattr(self, name)
        if self.quantization_aware:
            data["quantization_aware"] = True
        data.update(self.sections)
        data["versions"] = versions()
        return data


def finish_run(out_dir: str | Path, model, manifest: Manifest) -> dict:
    """Writes model, labels and (last) the manifest of a finished run; returns the manifest
    as written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = manifest.to_json()
    save_model(model, out_dir / (manifest.model_file or MODEL))
    write_text(out_dir / LABELS, "".join(f"{c}\n" for c in manifest.classes))
    write_json(out_dir / MANIFEST, written)
    return written


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
