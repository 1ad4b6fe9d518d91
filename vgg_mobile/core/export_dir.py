"""The export-folder contract: what `vgg-mobile convert` writes and every later reader reads.

An export folder holds:
  <name>_<flavour>.tflite, <name>.onnx, tfjs/ ...   the exported files, each verified
  labels.txt                                        one class name per line
  manifest.json                                     a run manifest without a model
                                                    (`model_file: null`), with `options` and
                                                    `artifacts`: one record per exported file

Serving, the web demo, the pipeline's summary, the report, the benchmark and the Android
assets read an export only through `load_export` (or `find_export`): a typed `Export`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vgg_mobile.core.errors import RunDirError
from vgg_mobile.core.model_files import short_repr
from vgg_mobile.core.outputs import MANIFEST, inside
from vgg_mobile.core.run_dir import Manifest, read_json_object


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One exported file, as its manifest records it.

    Attributes:
        file: Its path relative to the export folder.
        format: `tflite`, `onnx` or `tfjs_graph_model`.
        flavour: `float32`, `float16`, `dynamic`, `int8`, ... (`None` when not recorded).
        size_bytes: Its size on disk (`None` when not recorded).
        verification: What verifying it against Keras measured (`top1_agreement`,
            `accuracy`, `images`, ...); `{}` when not recorded.
        record: Every key as written (`gzip_bytes`, `io_dtype`, `opset`, `verified_with`,
            `convert_seconds`, ...), for the readers that report them.
    """

    file: str
    format: str
    flavour: str | None = None
    size_bytes: int | None = None
    verification: dict = dataclasses.field(default_factory=dict)
    record: dict = dataclasses.field(default_factory=dict)

    def get(self, key: str, default=None):
        """A recorded key beyond the typed ones (`gzip_bytes`, `io_dtype`, ...)."""
        return self.record.get(key, default)

    @classmethod
    def from_json(cls, data, source: Path, index: int) -> "Artifact":
        """Raises: RunDirError: Not an object, or no string `file` and `format`."""
        where = f"{source}: artifacts[{index}]"
        if not isinstance(data, dict):
            raise RunDirError(f"{where} must be an object. Received: {short_repr(data)}")
        for key in ("file", "format"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise RunDirError(f"{where}.{key} must be a non-empty string. "
                                  f"Received: {key}={short_repr(data.get(key))}")
        flavour, size, verification = (data.get(k) for k in ("flavour", "size_bytes",
                                                             "verification"))
        if flavour is not None and not isinstance(flavour, str):
            raise RunDirError(f"{where}.flavour must be a string. Received: {short_repr(flavour)}")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise RunDirError(f"{where}.size_bytes must be an integer >= 0. "
                              f"Received: {short_repr(size)}")
        if verification is not None and not isinstance(verification, dict):
            raise RunDirError(f"{where}.verification must be an object. "
                              f"Received: {short_repr(verification)}")
        return cls(file=data["file"], format=data["format"], flavour=flavour, size_bytes=size,
                   verification=verification or {}, record=data)


@dataclasses.dataclass(frozen=True)
class Export:
    """An export folder, as read by `load_export`.

    Attributes:
        path: The folder.
        manifest: Its manifest's common fields (classes, input, preprocessing, parent, ...).
        artifacts: Its exported files, in the order they were written.
        record: The manifest as written, for the readers that pass it on (`GET /model`).
    """

    path: Path
    manifest: Manifest
    artifacts: tuple[Artifact, ...]
    record: dict = dataclasses.field(repr=False, default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.manifest.classes

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def find(self, format: str, flavour: str | None = None) -> list[Artifact]:
        """The artifacts of `format` (and `flavour`, when given), in the manifest's order."""
        return [a for a in self.artifacts
                if a.format == format and (flavour is None or a.flavour == flavour)]

    def file(self, artifact: Artifact) -> Path:
        """The artifact's path, checked to stay inside the export folder.

        Raises:
            BadInputError: Its `file` leaves the folder (an absolute path, `..`, a symlink).
        """
        return inside(self.path, artifact.file, "artifact file", self.manifest_path)


def export_from_json(path: str | Path, data: dict) -> Export:
    """The `Export` that a manifest dict (as `convert_run` returns it) describes at `path`.

    Raises:
        RunDirError: A field of the wrong type, or `artifacts` missing or not a list.
    """
    path = Path(path)
    source = path / MANIFEST
    manifest = Manifest.from_json(data, source)
    records = data.get("artifacts")
    if not isinstance(records, list):
        raise RunDirError(f"{source}: artifacts must be a list, so {path} is not an export "
                          f"folder. Received: artifacts={short_repr(records)}")
    artifacts = tuple(Artifact.from_json(a, source, i) for i, a in enumerate(records))
    return Export(path, manifest, artifacts, data)


def is_export(path: str | Path) -> bool:
    """`path` holds a manifest with an `artifacts` list (it may still fail `load_export`).

    Raises:
        RunDirError: Its manifest is damaged (not JSON, not an object, an unknown schema).
    """
    manifest = Path(path) / MANIFEST
    return manifest.is_file() and isinstance(read_json_object(manifest).get("artifacts"), list)


def load_export(path: str | Path) -> Export:
    """Reads and validates an export folder.

    Raises:
        RunDirError: No such folder, no manifest, a damaged one, a field of the wrong type,
            or no `artifacts` list (a training run, say).
    """
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such export folder")
    source = path / MANIFEST
    if not source.is_file():
        raise RunDirError(f"{source}: missing, so {path} is not an export folder")
    return export_from_json(path, read_json_object(source))


def find_export(folder: str | Path) -> Path | None:
    """The export folder at `folder`: itself, or a pipeline output's `export/`, or `None`.

    Raises:
        RunDirError: A damaged manifest on the way.
    """
    folder = Path(folder)
    for candidate in (folder, folder / "export"):
        if is_export(candidate):
            return candidate
    return None
