"""Android assets: the folder an app drops into `src/main/assets`."""

from __future__ import annotations

import shutil
from pathlib import Path

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.core.resources import PROJECT_ROOT
from vgg_mobile.core.io import atomic_dir

TEMPLATE = PROJECT_ROOT / "android_assets" / "README.template.md"
# Preferred model for a phone, first available wins.
PREFERENCE = ("int8", "dynamic", "float16", "float32")


def write_assets(export_dir: Path, manifest: dict, android_dir: str | Path, force: bool = False) -> Path:
    """Writes the `.tflite` (int8 if exported), `labels.txt` and a README with the app settings.

    Args:
        export_dir: A folder holding the exported `.tflite` files named in `manifest`.
        manifest: The export manifest (see `converters.convert.convert_run`).
        android_dir: Folder to create.
        force: Replace an existing folder. Defaults to `False`.

    Returns:
        `android_dir`.
    """
    android_dir = Path(android_dir)
    if android_dir.exists() and not force:
        raise BadInputError(f"{android_dir}: already exists (pass --force to replace it)")
    models = {a["flavour"]: a for a in manifest["artifacts"] if a["format"] == "tflite"}
    flavour = next((f for f in PREFERENCE if f in models), None)
    if flavour is None:
        raise BadInputError("Android assets need a TFLite model; none was exported")
    artifact = models[flavour]
    height, width = manifest["input"]["size"]
    check = artifact["verification"]
    readme = TEMPLATE.read_text(encoding="utf-8").format(
        name=Path(artifact["file"]).stem, model_file=artifact["file"], flavour=flavour,
        size_mb=f"{artifact['size_bytes'] / 1e6:.2f}", num_classes=len(manifest["classes"]),
        classes=", ".join(manifest["classes"]), height=height, width=width,
        input_type=artifact["io_dtype"], agreement=check["top1_agreement"], images=check["images"],
        accuracy=check["accuracy"], keras_accuracy=check["keras_accuracy"])
    with atomic_dir(android_dir) as staging:
        shutil.copyfile(export_dir / artifact["file"], staging / artifact["file"])
        (staging / "labels.txt").write_text("".join(f"{c}\n" for c in manifest["classes"]), encoding="utf-8")
        (staging / "README.md").write_text(readme, encoding="utf-8")
    return android_dir
