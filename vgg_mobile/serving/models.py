"""Loading a classifier for serving: finding the artifact, reading its labels and input size,
checking it on probe inputs, and running it from several threads at once.

`load_model` returns a `ServedModel` only once it is complete and checked, so the app can
swap one in with a single reference assignment: a request runs from start to finish on the
model it started with, and a model that fails its check never serves a request.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import queue
import re
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Protocol

import numpy as np

from vgg_mobile.core.errors import BadInputError, require
from vgg_mobile.core.export_dir import Artifact, Export, find_export, load_export
from vgg_mobile.core.run_dir import LABELS, MANIFEST
from vgg_mobile.data.drift import IncompatibleReference, Reference, read_reference
from vgg_mobile.runtimes import Runtime, runtime_for

# The formats served: those whose files carry their labels (see `_DETAILS`).
FORMATS = ("tflite", "onnx")
SUFFIXES = {runtime_for(fmt).suffix: fmt for fmt in FORMATS}
# The flavour an export folder serves unless told otherwise: the one made to ship.
DEFAULT_FLAVOUR = "int8"
# Deterministic inputs every model must answer with finite probability vectors before it serves.
PROBE_IMAGES = 4


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """Which model of an export folder to serve.

    Attributes:
        format: `tflite` or `onnx`; `None` takes a file's own format, and `tflite` from a
            folder. Defaults to `None`.
        flavour: The artifact's `flavour` in the export manifest; `None` takes `int8` if the
            folder has one of the format, else its first. Defaults to `None`.
    """

    format: str | None = None
    flavour: str | None = None

    def __post_init__(self):
        require(self.format in (None, *FORMATS), f"format must be one of {', '.join(FORMATS)}",
                repr(self.format))


class Runner(Protocol):
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Float32 pixels `(n, h, w, 3)` in [0, 255] -> float32 probabilities `(n, classes)`."""


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A loaded, checked model and what the service reports about it.

    Attributes:
        source: The ARTIFACT the service was started with (file or folder).
        path: The model file that was read.
        format: `tflite` or `onnx`.
        flavour: The export manifest's flavour, or `None` for a bare file.
        name: The model's name (metadata, else the file stem).
        version: The version in the model's metadata (or the export options), else `"unknown"`.
        sha256: SHA-256 of the model file's bytes as they were read and checked.
        classes: Class names in output order.
        input_size: `(height, width)` of the input tensor.
        manifest: The export folder's manifest, or `None` for a bare file.
        metadata: The model's own metadata (TFLite metadata or ONNX `metadata_props`).
        loaded_at: When it was loaded (UTC, ISO 8601).
        runner: Runs the model; safe to call from several threads at once.
        reference: What its held-out images looked like (`vgg_mobile.data.drift`), from the
            export manifest, for the drift watch; `None` for a bare file or an export made
            before drift was recorded.
        accuracy: Its accuracy on the export's held-out images (the manifest's
            verification), the mark labelled feedback is held to; `None` when not recorded.
        unwatched: Why `reference` is `None` although the export has one (another version
            of vgg-mobile wrote it), for the log.
    """

    source: Path
    path: Path
    format: str
    flavour: str | None
    name: str
    version: str
    sha256: str
    classes: tuple[str, ...]
    input_size: tuple[int, int]
    manifest: dict | None
    metadata: dict
    loaded_at: str
    runner: Runner = dataclasses.field(repr=False, compare=False)
    reference: Reference | None = dataclasses.field(default=None, repr=False, compare=False)
    accuracy: float | None = None
    unwatched: str | None = None

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.runner.predict(np.asarray(pixels, np.float32))

    @property
    def file(self) -> str:
        """The model file relative to the served ARTIFACT folder (its name for a bare file)."""
        if self.source != self.path and self.source in self.path.parents:
            return self.path.relative_to(self.source).as_posix()
        return self.path.name

    def describe(self) -> dict:
        """What `GET /model` reports (everything but the runner), without absolute paths.

        The answer may reach anyone who can send a prediction: the folders of the machine that
        trained the model or serves it are none of their business. Paths inside the export
        folder become relative to it, other absolute paths their last part (`portable`).
        """
        folder = self.path.parent
        return {"name": self.name, "version": self.version, "sha256": self.sha256,
                "format": self.format, "flavour": self.flavour, "path": self.file,
                "source": self.source.resolve().name,
                "classes": list(self.classes), "input_size": list(self.input_size),
                "loaded_at": self.loaded_at, "manifest": portable(self.manifest, folder),
                "metadata": portable(self.metadata, folder)}


# An absolute path inside a longer string (a POSIX path, a Windows drive path, or a file URL),
# not preceded by what would make it part of a URL or a word ("image/png", "http://h/x").
_EMBEDDED_PATH = re.compile(
    r"(?<![\w.:/\\-])(?:file://)?(?:/|[A-Za-z]:[\\/])[^\s'\"`,;()<>\[\]{}]+")


def _is_absolute(text: str) -> bool:
    return PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()


def _last_part(text: str) -> str:
    return PureWindowsPath(text).name if PureWindowsPath(text).drive else PurePosixPath(text).name


def _relative(text: str, roots: tuple[str, ...]) -> str:
    """An absolute path as `roots` see it: relative to the first that holds it, else its name."""
    if text.startswith("file://"):
        text = text[len("file://"):]
    for root in roots:
        if text == root:
            return "."
        if text.startswith(root.rstrip("/") + "/"):
            return text[len(root.rstrip("/")) + 1:]
    return _last_part(text.rstrip("/\\"))


def portable(value, folder: Path):
    """`value` (JSON data) with every absolute path replaced by a name that reveals no folder.

    A string that is an absolute path, or that holds one (a command line, a message), keeps
    the path relative to `folder` when it lies inside, else only the path's last part:
    `/home/me/runs/export/labels.txt` -> `labels.txt`, `/home/me/data` -> `data`.

    Args:
        value: Dicts, lists and scalars as `json.loads` returns them.
        folder: The served export folder (or the bare model file's folder).

    Returns:
        A copy of `value`; dict keys are kept as they are.
    """
    roots = tuple(dict.fromkeys(p.as_posix() for p in (folder.absolute(), folder.resolve())))

    def rewrite(item):
        if isinstance(item, dict):
            return {key: rewrite(inner) for key, inner in item.items()}
        if isinstance(item, (list, tuple)):
            return [rewrite(inner) for inner in item]
        if not isinstance(item, str):
            return item
        # A whole string that is one path may hold spaces; a sentence is searched for paths.
        if _is_absolute(item) and "\n" not in item and ": " not in item:
            return _relative(item, roots)
        return _EMBEDDED_PATH.sub(lambda match: _relative(match.group(0), roots), item)

    return rewrite(value)


class _Pool:
    """Runtimes that are not thread-safe (a LiteRT interpreter), one for each inference that
    may run at once: requests run side by side instead of queuing on a lock."""

    def __init__(self, loaded: list[Runtime]):
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for runtime in loaded:
            self._free.put(runtime)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        runtime = self._free.get()
        try:
            return runtime.predict(pixels)
        finally:
            self._free.put(runtime)


def resolve_artifact(source: str | Path, choice: ModelChoice = ModelChoice(),
                     ) -> tuple[Path, Export | None, Artifact | None]:
    """Finds the model file to serve.

    Args:
        source: A `.tflite` or `.onnx` file, an export folder from `vgg-mobile convert`, or a
            pipeline output folder (its `export/`). Each version of a model repository
            (`vgg_mobile.serving.repository`) is an export folder.
        choice: Which artifact of a folder. Defaults to `ModelChoice()`.

    Returns:
        The model file, the export folder and the artifact chosen in it (`None` and `None`
        for a bare file).

    Raises:
        BadInputError: No such file or folder, an unknown suffix, or no artifact of the
            chosen format and flavour (the message lists those there are).
    """
    source = Path(source)
    if source.is_file():
        kind = SUFFIXES.get(source.suffix.lower())
        if kind is None:
            raise BadInputError(f"{source}: not a model file (suffix {source.suffix!r}; "
                                f"expected {', '.join(SUFFIXES)})")
        if choice.format not in (None, kind):
            raise BadInputError(f"{source}: a {kind} file, but --format {choice.format} was asked")
        return source, None, None
    if not source.is_dir():
        raise BadInputError(f"{source}: no such file or folder")
    folder = find_export(source)
    if folder is None:
        if (source / MANIFEST).is_file():
            # A training run: its Keras model is not served; its verified exports are.
            raise BadInputError(f"{source}: a training run, not an export folder; convert it "
                                f"first (`vgg-mobile convert {source} --out EXPORT --onnx`) and "
                                "serve EXPORT")
        raise BadInputError(f"{source}: not an export folder (no {MANIFEST} with artifacts, "
                            "here or in export/) nor a model repository (no numbered version "
                            "folder such as 1/); give a .tflite or .onnx file, a folder "
                            "written by `vgg-mobile convert`, or a folder of numbered ones")
    export = load_export(folder)
    fmt = choice.format or "tflite"
    offered = [a for a in export.artifacts if a.format in FORMATS]
    found = [a for a in offered if a.format == fmt
             and (choice.flavour is None or a.flavour == choice.flavour)]
    if not found:
        listed = ", ".join(f"{a.format} {a.flavour}" for a in offered) or "none"
        raise BadInputError(f"{export.manifest_path}: no {fmt} artifact"
                            f"{f' of flavour {choice.flavour}' if choice.flavour else ''}; "
                            f"the folder has: {listed}")
    if choice.flavour is None:
        found.sort(key=lambda a: a.flavour != DEFAULT_FLAVOUR)
    artifact = found[0]
    path = export.file(artifact)
    if not path.is_file():
        raise BadInputError(f"{path}: listed in {export.manifest_path} but missing")
    return path, export, artifact


def _folder_classes(export: Export) -> tuple[str, ...]:
    """The export folder's labels.txt, checked against the manifest's classes."""
    classes = export.classes
    labels_path = export.path / LABELS
    if labels_path.is_file():
        labels = [line for line in labels_path.read_text(encoding="utf-8").splitlines() if line]
        if labels != list(classes):
            raise BadInputError(f"{labels_path}: labels {labels[:20]} disagree with the "
                                f"manifest's classes {list(classes)[:20]}")
    return tuple(classes)


def _inspect_tflite(content: bytes, path: Path) -> dict:
    """Tensors and metadata of `.tflite` bytes, read in a child process
    (`vgg_mobile.converters.inspection`): a damaged file may crash the native readers, and a crash there
    must not take the serving process down with it."""
    from vgg_mobile.converters import inspection

    with tempfile.TemporaryDirectory() as tmp:
        # The very bytes that will be served are the ones checked, whatever happens to `path`.
        copy = Path(tmp) / "model.tflite"
        copy.write_bytes(content)
        try:
            return inspection.inspect_tflite(copy)
        except BadInputError as err:
            raise BadInputError(str(err).replace(str(copy), str(path))) from None


def _tflite_details(content: bytes, path: Path) -> tuple[dict, list[str] | None, None]:
    """Metadata and packed labels of a `.tflite` model (its input size is always fixed)."""
    report = _inspect_tflite(content, path)
    files = report.get("associated_files") or {}
    labels = ([line for line in next(iter(files.values())).splitlines() if line]
              if files else None)
    return report.get("metadata") or {}, labels, None


def _onnx_details(content: bytes, path: Path) -> tuple[dict, list[str] | None, object]:
    """The `metadata_props` of an `.onnx` model, the labels they hold, and the input size they
    declare (for a model whose input shape leaves it open)."""
    from vgg_mobile.converters import onnx

    try:
        props = onnx.read_metadata(content)
    except BadInputError as err:
        raise BadInputError(f"{path}: {err}") from None
    labels = None
    if "labels" in props:
        try:
            labels = json.loads(props["labels"])
        except ValueError:
            labels = None
        if not (isinstance(labels, list) and all(isinstance(c, str) for c in labels)):
            raise BadInputError(f"{path}: metadata_props 'labels' is not a JSON list of names. "
                                f"Received: {props['labels'][:200]!r}")
    size = None
    if "input" in props:
        try:
            size = json.loads(props["input"]).get("size")
        except (ValueError, AttributeError):
            size = None
    return dict(props), labels, size


# What serving reads from a model file besides running it (`vgg_mobile.runtimes` runs it): the
# model's own metadata and labels, and an input size the metadata declares. A `.tflite` is read
# in a child process first: a damaged file cannot crash this one.
_DETAILS = {"tflite": _tflite_details, "onnx": _onnx_details}


def _dimension(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _input_size(shape, path: Path, fallback) -> tuple[int, int]:
    """`(height, width)` from an input shape `(batch, h, w, 3)`; symbolic sides come from
    `fallback` (the manifest's or metadata's `input.size`)."""
    shape = list(shape)
    if len(shape) != 4 or (_dimension(shape[3]) or 3) != 3:
        raise BadInputError(f"{path}: the model takes input of shape {shape}, not a batch of RGB "
                            "images (batch, height, width, 3)")
    height, width = _dimension(shape[1]), _dimension(shape[2])
    if (height is None or width is None) and isinstance(fallback, list) and len(fallback) == 2:
        height, width = height or _dimension(fallback[0]), width or _dimension(fallback[1])
    if height is None or width is None:
        raise BadInputError(f"{path}: the model's input shape {shape} has no fixed image size, "
                            "and no input.size says which")
    return height, width


def probe_images(height: int, width: int) -> np.ndarray:
    """Deterministic float32 images `(PROBE_IMAGES, h, w, 3)` in [0, 255]: black, white, a
    gradient and seeded noise."""
    ramp = np.linspace(0, 255, width, dtype=np.float32)
    gradient = np.broadcast_to(ramp[None, :, None], (height, width, 3))
    noise = np.random.default_rng(0).uniform(0, 255, (height, width, 3)).astype(np.float32)
    return np.stack([np.zeros((height, width, 3), np.float32),
                     np.full((height, width, 3), 255, np.float32), gradient, noise])


def check_outputs(probs: np.ndarray, num_classes: int, path: Path) -> None:
    """Refuses outputs that are not one probability vector per probe image.

    Raises:
        BadInputError: The wrong shape, non-finite values, values outside [0, 1], or rows that
            do not sum to 1 (within the rounding of an 8-bit output).
    """
    expected = (PROBE_IMAGES, num_classes)
    if probs.shape != expected:
        raise BadInputError(f"{path}: on {PROBE_IMAGES} probe images the model answered shape "
                            f"{list(probs.shape)}, not {list(expected)} (one score per class)")
    if not np.isfinite(probs).all():
        raise BadInputError(f"{path}: the model answers NaN or infinity on probe images")
    # An 8-bit output is a multiple of 1/256: each value may be off by half a step.
    tolerance = max(0.02, num_classes / 512)
    sums = probs.sum(axis=1)
    if probs.min() < -tolerance or probs.max() > 1 + tolerance or np.abs(sums - 1).max() > tolerance:
        raise BadInputError(f"{path}: the model's outputs on probe images are not probabilities "
                            f"(values {probs.min():.4g} to {probs.max():.4g}, row sums "
                            f"{sums.min():.4g} to {sums.max():.4g})")


def _accuracy(artifact: Artifact | None) -> float | None:
    value = artifact.verification.get("accuracy") if artifact else None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if number and 0 <= value <= 1 else None


def load_model(source: str | Path, choice: ModelChoice = ModelChoice(), threads: int = 1,
               pool_size: int = 1) -> ServedModel:
    """Loads and checks a model for serving, without touching anything already serving.

    The model file is read once; the bytes read are the ones checked, hashed and run. A
    `.tflite` is first read in a child process (a damaged file cannot crash this one). Then
    the labels must match the output, and on `probe_images` the model must answer finite
    probability vectors.

    Args:
        source: A `.tflite` or `.onnx` file, an export folder or a pipeline output folder.
        choice: Which artifact of a folder. Defaults to `ModelChoice()`.
        threads: Threads of each interpreter or session. Defaults to `1`.
        pool_size: Interpreters of a `.tflite` model, one for each inference that may run at
            once. Defaults to `1`.

    Returns:
        The `ServedModel`.

    Raises:
        BadInputError: Not found, not a valid model, no labels, labels that do not fit the
            output, or outputs that are not probabilities.
    """
    require(threads >= 1, "threads must be at least 1", str(threads))
    require(pool_size >= 1, "pool_size must be at least 1", str(pool_size))
    source = Path(source)
    path, export, artifact = resolve_artifact(source, choice)
    try:
        content = path.read_bytes()
    except OSError as err:
        raise BadInputError(f"{path}: cannot read the model ({err.strerror or err})") from None
    sha256 = hashlib.sha256(content).hexdigest()
    fmt = artifact.format if artifact else SUFFIXES[path.suffix.lower()]
    declared_size = export.manifest.input.get("size") if export else None
    metadata, labels, metadata_size = _DETAILS[fmt](content, path)
    runtime = runtime_for(fmt)
    try:
        loaded = [runtime.load(content, threads)
                  for _ in range(1 if runtime.thread_safe else pool_size)]
    except BadInputError as err:
        raise BadInputError(f"{path}: {err}") from None
    runner = loaded[0] if runtime.thread_safe else _Pool(loaded)
    input_shape, output_shape = loaded[0].input_shape, loaded[0].output_shape
    if declared_size is None:
        declared_size = metadata_size
    classes = _folder_classes(export) if export else (tuple(labels) if labels else None)
    if not classes:
        raise BadInputError(f"{path}: no labels: the model's metadata holds none, and a bare "
                            "model file has no labels.txt beside it to use; serve the export "
                            "folder instead")
    size = _input_size(input_shape, path, declared_size)
    outputs = _dimension(list(output_shape)[-1]) if len(output_shape) else None
    if outputs is not None and outputs != len(classes):
        raise BadInputError(f"{path}: the model outputs {outputs} scores but there are "
                            f"{len(classes)} labels")
    try:
        probs = runner.predict(probe_images(*size))
    except Exception as err:  # noqa: BLE001 - whatever the runtime raises, the model is at fault
        # A model can load and still fail when run (an op that rejects its input at run time):
        # refused like any other bad model, so a reload keeps the old one serving.
        detail = " ".join(str(err).split())[:300]
        raise BadInputError(f"{path}: the model fails when run on probe images "
                            f"({type(err).__name__}: {detail})") from None
    check_outputs(probs, len(classes), path)
    reference, unwatched = None, None
    if export:
        try:
            reference = read_reference(export.record.get("drift_reference"),
                                       artifact.get("drift_reference"), classes,
                                       str(export.manifest_path))
        except IncompatibleReference as err:  # sound, but not comparable: served unwatched
            unwatched = str(err)
    options = export.manifest.section("options") if export else {}
    version = metadata.get("version") or options.get("version") or "unknown"
    return ServedModel(
        source=source, path=path, format=fmt, flavour=artifact.flavour if artifact else None,
        name=str(metadata.get("name") or path.stem), version=str(version), sha256=sha256,
        classes=classes, input_size=size, manifest=export.record if export else None,
        metadata=metadata,
        loaded_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        runner=runner, reference=reference, accuracy=_accuracy(artifact), unwatched=unwatched)
