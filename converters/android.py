"""Android assets: the folder an app drops into `src/main/assets`."""

from __future__ import annotations

import shutil
from pathlib import Path

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.core.resources import android_template, js_dir
from vgg_mobile.core.io import write_json, write_text
from vgg_mobile.core.export_dir import Export
from vgg_mobile.core.run_dir import Manifest
from vgg_mobile.core.outputs import MANIFEST

# Preferred model for a phone, first available wins.
PREFERENCE = ("int8", "dynamic", "float16", "float32")


def tasks_vision_version() -> str:
    """The MediaPipe Tasks release the web demo runs (`converters/js/package.json`): the
    Android guide names the same one, so a phone and the page run one runtime version."""
    import json

    package = json.loads((js_dir() / "package.json").read_text(encoding="utf-8"))
    return package["dependencies"]["@mediapipe/tasks-vision"]


def write_assets(export: Export, android_dir: str | Path) -> Path:
    """Writes the `.tflite` (int8 if exported), `labels.txt`, a README with the app settings
    and a `manifest.json` that marks the folder as a vgg-mobile output.

    Args:
        export: The export folder holding the `.tflite` files (`core.export_dir`).
        android_dir: An empty folder claimed for the assets (`convert_run` claims it, with
            `core.outputs.claim_output`, and renames it into place).

    Returns:
        `android_dir`.
    """
    android_dir = Path(android_dir)
    models = {a.flavour: a for a in export.find("tflite")}
    flavour = next((f for f in PREFERENCE if f in models), None)
    if flavour is None:
        raise BadInputError("Android assets need a TFLite model; none was exported")
    artifact = models[flavour]
    manifest, source = export.manifest, export.file(artifact)
    height, width = manifest.input["size"]
    check = artifact.verification
    readme = android_template().read_text(encoding="utf-8").format(
        tasks_vision=tasks_vision_version(), name=source.stem, model_file=source.name,
        flavour=flavour, size_mb=f"{artifact.size_bytes / 1e6:.2f}",
        num_classes=len(manifest.classes), classes=", ".join(manifest.classes), height=height,
        width=width, input_type=artifact.get("io_dtype"), agreement=check["top1_agreement"],
        images=check["images"], accuracy=check["accuracy"], keras_accuracy=check["keras_accuracy"])
    shutil.copyfile(source, android_dir / source.name)
    write_text(android_dir / "labels.txt", "".join(f"{c}\n" for c in manifest.classes))
    write_text(android_dir / "README.md", readme)
    write_json(android_dir / MANIFEST, Manifest(
        stage="android", kind="android_assets", classes=manifest.classes,
        input=manifest.input, architecture=manifest.architecture,
        preprocessing=manifest.preprocessing, output=manifest.output, model_file=None,
        sections={"model": {"file": source.name, "flavour": flavour,
                            "io_dtype": artifact.get("io_dtype"), "verification": check}}).to_json())
    return android_dir
