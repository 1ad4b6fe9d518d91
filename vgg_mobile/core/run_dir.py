"""The run-directory contract: how every stage hands its result to the next.

A finished run directory holds:
  model.keras     the tf_keras model (raw RGB 0-255 in, class probabilities out)
  labels.txt      one class name per line, in output order
  manifest.json   schema version, stage, classes, input, preprocessing, config, command,
                  metrics, parent run, versions

`manifest.json` is written last and atomically: a directory without it is unfinished, whatever
else it holds. Later stages read a run only through `load_run`, and any manifest only through
`read_manifest`: a typed `Manifest`, validated once, never raw JSON.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import sys
import unicodedata
from pathlib import Path

from vgg_mobile.core.custom_objects import load_scope, scope_class_names
from vgg_mobile.core.errors import RunDirError
from vgg_mobile.core.outputs import MANIFEST, SCHEMA_VERSION, inside
from vgg_mobile.core.io import atomic_path, write_json, write_text
from vgg_mobile.core.model_files import check_model_file, keras_class_names, one_line, short_repr
from vgg_mobile.core.version import __version__

LABELS = "labels.txt"
MODEL = "model.keras"
MODEL_SUFFIXES = (".keras", ".h5")
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
        data: Which folder and split it used (`data.splits.data_record`); a distilled
            student's also names the unlabelled images it learnt from (`unlabeled`).
        parent: The parent run's path; `None` for a first stage.
        metrics: Held-out metrics of the model.
        sections: The stage's own records (`training`, `compression`, `teacher`, `artifacts`,
            ...), written as top-level keys beside the fields above.
        kind: What the model is. Defaults to `"image_classifier"`, also when a manifest read
            back has no `kind`.
        created: When it was written (ISO 8601, UTC); `None` until then (`to_json` stamps it).
        versions: The versions it was written with; `None` until then.
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
    created: str | None = None
    versions: dict | None = None

    def __post_init__(self):
        if not _is_name(self.stage):
            raise ValueError(f"stage must be a name of letters, digits and _. Received: stage={self.stage!r}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct and at least one. Received: classes={self.classes!r}")
        clash = sorted(set(self.sections) & set(_FIELDS))
        if clash:
            raise ValueError(f"sections may not redefine manifest fields. Received: {clash}")

    def to_json(self) -> dict:
        """The manifest as written: the fields, the stage's sections, then the versions."""
        data = {"schema_version": SCHEMA_VERSION, "stage": self.stage, "kind": self.kind,
                "created": self.created or datetime.datetime.now(
                    datetime.timezone.utc).isoformat(timespec="seconds"),
                "model_file": self.model_file, "classes": list(self.classes),
                "num_classes": len(self.classes)}
        for name in ("architecture", "input", "preprocessing", "output", "config", "command",
                     "data", "parent", "metrics"):
            data[name] = getattr(self, name)
        if self.quantization_aware:
            data["quantization_aware"] = True
        data.update(self.sections)
        data["versions"] = self.versions or versions()
        return data

    def section(self, name: str) -> dict:
        """A stage's own record (`training`, `teacher`, `baseline`, ...), `{}` when absent."""
        value = self.sections.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def image_size(self) -> int:
        return int(self.input["size"][0])

    @property
    def seed(self) -> int:
        """The seed its data split was drawn with (0 when none was recorded)."""
        return int(self.data.get("seed", 0))

    @property
    def unlabeled(self) -> dict | None:
        """The unlabelled images a distilled student also learnt from (`data.unlabeled`:
        `folder`, `images`, `duplicates`, `unreadable`), or `None`: none were used, or the
        manifest predates the record."""
        return self.data.get("unlabeled")

    @classmethod
    def from_json(cls, data: dict, source: Path) -> "Manifest":
        """The record of a manifest read back, its fields checked (see `read_manifest`).

        Keys beyond the fields become `sections`.

        Raises:
            RunDirError: A missing required field or one of the wrong type, naming `source`.
        """
        for key in ("classes", "input", "stage"):
            if key not in data:
                raise RunDirError(f"{source}: missing required field {key!r}")
        _check_fields(source, data)
        return cls(stage=data["stage"], classes=tuple(data["classes"]), input=data["input"],
                   architecture=data.get("architecture"), preprocessing=data.get("preprocessing"),
                   output=data.get("output"), model_file=data.get("model_file", MODEL),
                   quantization_aware=bool(data.get("quantization_aware", False)),
                   config=data.get("config") or {}, command=data.get("command"),
                   data=data.get("data") or {}, parent=data.get("parent"),
                   metrics=data.get("metrics") or {},
                   sections={k: v for k, v in data.items() if k not in _FIELDS},
                   kind=data.get("kind") or "image_classifier", created=data.get("created"),
                   versions=data.get("versions"))


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
    manifest: Manifest

    @property
    def classes(self) -> tuple[str, ...]:
        return self.manifest.classes

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    @property
    def model_path(self) -> Path:
        """The model file, checked to be a plain file name inside the run folder.

        Raises:
            RunDirError: The manifest names no model (`model_file: null`, an export folder)
                or one outside the run folder.
        """
        name = self.manifest.model_file
        if name is None:
            raise RunDirError(f"{self.path / MANIFEST}: model_file is null, so this folder holds "
                              "no Keras model (an export folder?)")
        return _model_path(self.path, name)

    def load_model(self):
        """Loads the run's model (not compiled), never running code from the file.

        The file's architecture config is checked first (see `model_files.check_config`):
        no `Lambda` layer or other Python code, only classes of Keras and of the run's
        load scope. After loading, the model must fit the manifest: one score per class,
        images of `input.size`.

        Raises:
            RunDirError: The model file is missing, truncated, not a Keras model, holds code
                or unknown classes, or does not fit the manifest.
        """
        import tf_keras as keras
        from tf_keras.src.saving.serialization_lib import SafeModeScope

        path = self.model_path
        if not path.is_file():
            raise RunDirError(f"{path}: model file missing from run directory")
        check_model_file(path, keras_class_names() | scope_class_names(self.manifest))
        try:
            # Safe mode for both formats: the HDF5 loader ignores `safe_mode` but not the scope.
            with load_scope(self.manifest), SafeModeScope(True):
                model = keras.models.load_model(path, compile=False, safe_mode=True)
        except Exception as err:  # Keras raises many types for a damaged file.
            raise RunDirError(
                f"{path}: cannot load the model; the file is damaged or not a Keras model "
                f"({type(err).__name__}: {one_line(err)})"
            ) from None
        _check_fits(path, model, self.classes, self.manifest.input["size"])
        return model


def _check_fits(path: Path, model, classes: tuple[str, ...], size: list[int]) -> None:
    """Refuses a model whose output is not one score per class, or whose input is not an
    RGB image of `size`."""
    try:
        inputs, outputs = model.input_shape, model.output_shape
    except (AttributeError, RuntimeError, ValueError) as err:
        raise RunDirError(f"{path}: the model has no defined input and output shape "
                          f"({one_line(err)})") from None
    if not (isinstance(outputs, tuple) and len(outputs) == 2):
        raise RunDirError(f"{path}: the model outputs shape {outputs}, not one score per class "
                          f"(the manifest lists {len(classes)} classes)")
    if outputs[1] != len(classes):
        raise RunDirError(f"{path}: the model outputs {outputs[1]} classes but the manifest lists "
                          f"{len(classes)}")
    if not (isinstance(inputs, tuple) and len(inputs) == 4):
        raise RunDirError(f"{path}: the model takes input of shape {inputs}, not a batch of images "
                          "(batch, height, width, channels)")
    if any(have not in (None, want) for have, want in zip(inputs[1:3], size)):
        raise RunDirError(f"{path}: the model takes {inputs[1]}x{inputs[2]} images but the "
                          f"manifest's input.size is {list(size)}")
    if inputs[3] not in (None, 3):
        raise RunDirError(f"{path}: the model takes {inputs[3]}-channel images; vgg-mobile feeds "
                          "RGB (3 channels)")


def _model_path(run_path: Path, name) -> Path:
    """`run_path / name`, for a manifest's `model_file` that is a plain `.keras` or `.h5` file
    name whose real path (symlinks followed) stays inside the run folder.

    Raises:
        RunDirError: Naming the manifest and the value.
    """
    manifest_path = run_path / MANIFEST
    plain = (isinstance(name, str) and name not in (".", "..") and Path(name).suffix in MODEL_SUFFIXES
             and not any(c in "/\\" or unicodedata.category(c)[0] == "C" for c in name))
    if not plain:
        raise RunDirError(f"{manifest_path}: model_file must be the name of a .keras or .h5 file in "
                          f"the run folder. Received: model_file={short_repr(name)}")
    return inside(run_path, name, "model_file", manifest_path)


def _is_name(text) -> bool:
    """A stage name: letters, digits and `_`, as a folder and a config section are named."""
    return isinstance(text, str) and bool(text) and text.replace("_", "").isalnum()


def _is_path(value) -> bool:
    """A string the operating system accepts as a path."""
    if not isinstance(value, str) or "\0" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeError:
        return False
    return True


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_class_name(name) -> bool:
    """A class name: a non-empty string that is one line of `labels.txt`."""
    return isinstance(name, str) and bool(name) and not any(
        unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in name)


def _check_fields(manifest_path: Path, manifest: dict) -> None:
    """Checks the type of every manifest field that `Run` and the later stages read.

    Raises:
        RunDirError: `{manifest_path}: {field} must be .... Received: {field}={value}`.
    """

    def require(ok: bool, field: str, what: str, value) -> None:
        if not ok:
            raise RunDirError(f"{manifest_path}: {field} must be {what}. "
                              f"Received: {field}={short_repr(value)}")

    stage, classes, input_ = manifest["stage"], manifest["classes"], manifest["input"]
    require(_is_name(stage), "stage", "a name of letters, digits and _", stage)
    require(isinstance(classes, list) and bool(classes) and all(map(_is_class_name, classes))
            and len(set(classes)) == len(classes), "classes",
            "a list of at least one distinct, non-empty name without control characters", classes)
    if "num_classes" in manifest:
        require(_is_int(manifest["num_classes"]) and manifest["num_classes"] == len(classes),
                "num_classes", f"the number of classes ({len(classes)})", manifest["num_classes"])
    require(isinstance(input_, dict), "input", "an object", input_)
    size = input_.get("size")
    require(isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 1 for v in size)
            and size[0] == size[1], "input.size", "[side, side] with a positive integer side", size)
    for field in ("preprocessing", "output", "metrics", "config", "data"):
        value = manifest.get(field)
        require(value is None or isinstance(value, dict), field, "an object or null", value)
    for field in ("parent", "kind"):
        value = manifest.get(field)
        require(value is None or isinstance(value, str), field, "a string or null", value)
    architecture = manifest.get("architecture")
    require(architecture is None or (isinstance(architecture, str) and bool(architecture) and all(
        c.isalnum() or c in "_.-" for c in architecture) and not architecture.startswith(".")),
        "architecture", "null or a name of letters, digits, _, . and -", architecture)
    require(isinstance(manifest.get("quantization_aware", False), bool), "quantization_aware",
            "true or false", manifest.get("quantization_aware"))
    data = manifest.get("data") or {}
    require(data.get("path") is None or _is_path(data["path"]), "data.path", "a path or null",
            data.get("path"))
    require(_is_int(data.get("seed", 0)) and data.get("seed", 0) >= 0, "data.seed",
            "an integer >= 0", data.get("seed"))
    fraction = data.get("val_fraction", 0)
    require(isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
            and 0 <= fraction < 1, "data.val_fraction", "a number in [0, 1)", fraction)
    unlabeled = data.get("unlabeled")
    require(unlabeled is None or (
        isinstance(unlabeled, dict) and _is_path(unlabeled.get("folder"))
        and all(_is_int(unlabeled.get(k)) and unlabeled[k] >= 0
                for k in ("images", "duplicates", "unreadable"))),
        "data.unlabeled", "null or an object with the folder and counts of its images, "
        "duplicates and unreadable files", unlabeled)


def load_run(path: str | Path) -> Run:
    """Reads and validates a finished run directory.

    Raises:
        RunDirError: No such directory, no or unreadable manifest (e.g. an unfinished run),
            a schema from a newer vgg-mobile, a manifest field of the wrong type, a
            `model_file` outside the run folder, or labels that disagree with the manifest.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        hint = (" (an interrupted training run: resume it with `vgg-mobile train ... --resume`)"
                if (path / CHECKPOINTS).exists() else "")
        raise RunDirError(f"{manifest_path}: missing, so {path} is not a finished run{hint}")
    manifest = Manifest.from_json(read_json_object(manifest_path), manifest_path)
    if manifest.model_file is not None:
        _model_path(path, manifest.model_file)
    labels_path = path / LABELS
    if not labels_path.is_file():
        raise RunDirError(f"{labels_path}: missing from run directory")
    try:
        text = labels_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RunDirError(f"{labels_path}: not UTF-8 text ({one_line(err)})") from None
    labels = [line for line in text.splitlines() if line]
    if labels != list(manifest.classes):
        raise RunDirError(
            f"{labels_path}: labels {short_repr(labels, 300)} disagree with the manifest's "
            f"classes {short_repr(list(manifest.classes), 300)}"
        )
    return Run(path, manifest)


def read_json_object(path: Path) -> dict:
    """A vgg-mobile manifest file as JSON: an object of a schema this version reads.

    Raises:
        RunDirError: Unreadable, not JSON, not an object, or a `schema_version` this version
            does not read.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise RunDirError(f"{path}: cannot be read ({one_line(err)})") from None
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, a huge or deep value
        raise RunDirError(f"{path}: not valid JSON ({one_line(err)})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    version = data.get("schema_version")
    if not _is_int(version) or not 1 <= version <= SCHEMA_VERSION:
        raise RunDirError(
            f"{path}: schema_version {short_repr(version)} is not supported "
            f"(this vgg-mobile reads up to {SCHEMA_VERSION})"
        )
    return data


def read_manifest(folder: str | Path) -> Manifest | None:
    """The typed manifest of `folder` (a run, an export, the Android assets), or `None` when
    it has none yet.

    Raises:
        RunDirError: The manifest is damaged or has a field of the wrong type.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return Manifest.from_json(read_json_object(path), path)


def manifest_digest(run_path: str | Path) -> str | None:
    """SHA-256 of a run's `manifest.json` (which names its model, config and data), or `None`
    for a run that has not finished."""
    manifest = Path(run_path) / MANIFEST
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
