"""Android assets: the folder an app drops into `src/main/assets`."""

from __future__ import annotations

import shutil
from pathlib import Path

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.core.resources import android_template, js_dir
from vgg_mobile.core.io import write_json, write_text
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


def write_assets(export_dir: Path, manifest: dict, android_dir: str | Path) -> Path:
    """Writes the `.tflite` (int8 if exported), `labels.txt`, a README with the app settings
    and a `manifest.json` that marks the folder as a vgg-mobile output.

    Args:
        export_dir: A folder holding the exported `.tflite` files named in `manifest`.
        manifest: The export manifest (see `vgg_mobile.converters.convert.convert_run`).
        android_dir: An empty folder claimed for the assets (`convert_run` claims it, with
            `core.outputs.claim_output`, and renames it into place).

    Returns:
        `android_dir`.
    """
    android_dir = Path(android_dir)
    models = {a["flavour"]: a for a in manifest["artifacts"] if a["format"] == "tflite"}
    flavour = next((f for f in PREFERENCE if f in models), None)
    if flavour is None:
        raise BadInputError("Android assets need a TFLite model; none was exported")
    artifact = models[flavour]
    height, width = manifest["input"]["size"]
    check = artifact["verification"]
    readme = android_template().read_text(encoding="utf-8").format(
        tasks_vision=tasks_vision_version(), name=Path(artifact["file"]).stem, model_file=artifact["file"], flavour=flavour,
        size_mb=f"{artifact['size_bytes'] / 1e6:.2f}", num_classes=len(manifest["classes"]),
        classes=", ".join(manifest["classes"]), height=height, width=width,
        input_type=artifact["io_dtype"], agreement=check["top1_agreement"], images=check["images"],
        accuracy=check["accuracy"], keras_accuracy=check["keras_accuracy"])
    shutil.copyfile(export_dir / artifact["file"], android_dir / artifact["file"])
    write_text(android_dir / "labels.txt", "".join(f"{c}\n" for c in manifest["classes"]))
    write_text(android_dir / "README.md", readme)
    write_json(android_dir / MANIFEST, Manifest(
        stage="android", kind="android_assets", classes=tuple(manifest["classes"]),
        input=manifest["input"], architecture=manifest.get("architecture"),
        preprocessing=manifest.get("preprocessing"), output=manifest.get("output"),
        model_file=None,
        sections={"model": {"file": artifact["file"], "flavour": flavour,
                            "io_dtype": artifact["io_dtype"], "verification": check}}).to_json())
    return android_dir
