"""Assembling the in-browser demo: a ready-to-host folder.

A demo folder holds the static page (`web_demo/` in the project, package data when installed),
TensorFlow.js and MediaPipe Tasks (vision) vendored from the npm packages locked by
`converters/js/package-lock.json` (see `core.resources.node_modules_dir`), a TF.js bundle from
`vgg-mobile convert` in `model/`, and, when the export folder has one, its int8 `.tflite` (the
file that ships to Android) for the MediaPipe runtime. `runtimes.json` tells the page which
runtimes it has. It needs no build step and no network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.core.export_dir import load_export
from vgg_mobile.core.resources import node_modules_dir, web_demo_dir
from vgg_mobile.core.io import write_json
from vgg_mobile.core.outputs import MANIFEST, claim_output, inside, marker

PAGE_FILES = ("index.html", "app.js", "style.css")
VENDOR_FILES = {
    "@tensorflow/tfjs": ("dist/tf.min.js",),
    "@tensorflow/tfjs-backend-wasm": ("dist/tf-backend-wasm.min.js", "dist/tfjs-backend-wasm.wasm",
                                      "dist/tfjs-backend-wasm-simd.wasm",
                                      "dist/tfjs-backend-wasm-threaded-simd.wasm"),
}
# MediaPipe Tasks for web: the ES module, and its WASM loader and binaries (SIMD and not).
MEDIAPIPE_PACKAGE = "@mediapipe/tasks-vision"
MEDIAPIPE_FILES = ("vision_bundle.mjs", "wasm/vision_wasm_internal.js",
                   "wasm/vision_wasm_internal.wasm", "wasm/vision_wasm_nosimd_internal.js",
                   "wasm/vision_wasm_nosimd_internal.wasm")
BUNDLE_FILES = ("model.json", "labels.json", MANIFEST)
TFLITE_NAME = "model_int8.tflite"


def find_int8_tflite(bundle: str | Path) -> tuple[Path | None, str]:
    """The int8 `.tflite` of the export folder that `bundle` names, or `None` and the reason.

    Args:
        bundle: A `vgg-mobile convert` export folder (with or without a `tfjs/` bundle: the
            pipeline's `export/` has none) or a TF.js bundle folder, whose parent is taken.

    Returns:
        `(path, "")` when the export's manifest lists an int8 TFLite file that exists, else
        `(None, reason)`.
    """
    bundle = Path(bundle)
    # A bundle holds model.json; an export folder holds its artifacts and manifest.json.
    folder = bundle.parent if (bundle / "model.json").is_file() else bundle
    if not (folder / MANIFEST).is_file():
        return None, f"no export manifest at {folder / MANIFEST}"
    try:
        export = load_export(folder)
    except BadInputError as err:
        return None, str(err)
    for artifact in export.find("tflite", "int8"):
        path = export.file(artifact)
        if path.is_file():
            return path, ""
        return None, f"{path}: listed in the export manifest but missing"
    return None, "the export folder has no int8 .tflite (convert with the int8 flavour)"


def find_bundle(path: str | Path) -> Path:
    """Accepts an export folder (with `tfjs/`) or a TF.js bundle folder; returns the bundle.

    Raises:
        BadInputError: Not a bundle, or a bundle missing a file or a weight shard.
    """
    path = Path(path)
    bundle = path / "tfjs" if (path / "tfjs" / "model.json").is_file() else path
    for name in BUNDLE_FILES:
        if not (bundle / name).is_file():
            raise BadInputError(f"{bundle / name}: missing; expected a TF.js bundle from "
                                "`vgg-mobile convert` (its export folder or its tfjs/ folder)")
    try:
        topology = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
        shards = [p for group in topology["weightsManifest"] for p in group["paths"]]
        labels = json.loads((bundle / "labels.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise BadInputError(f"{bundle}: damaged bundle ({err})") from None
    for shard in shards:
        # The page fetches each shard beside model.json: a path out of the bundle is refused.
        if not inside(bundle, shard, "weight file", bundle / "model.json").is_file():
            raise BadInputError(f"{bundle / shard}: weight file missing from the bundle")
    if not isinstance(labels, list) or len(labels) < 2:
        raise BadInputError(f"{bundle / 'labels.json'}: expected a list of at least two class names")
    return bundle


def assemble_demo(out: str | Path, bundle: str | Path, force: bool = False,
                  stage: str = "web_demo", tflite_from: str | Path | None = None) -> Path:
    """Writes a self-contained demo folder: page, vendored TensorFlow.js, and the model bundle.

    Args:
        out: Folder to create.
        bundle: A `vgg-mobile convert` export folder or its `tfjs/` bundle.
        force: Replace `out` if it is a demo folder written here (never another folder, and
            never one that overlaps the bundle). Defaults to `False`.
        stage: The stage name its manifest records (the pipeline's folder and config
            section). Defaults to `"web_demo"`.
        tflite_from: The export folder whose int8 `.tflite` the MediaPipe runtime runs (the
            pipeline passes its `export/`, the model that ships to Android). Defaults to the
            bundle's own export folder.

    Returns:
        `out`.

    Raises:
        BadInputError: A bad bundle, or `out` exists without `force`, is not a demo folder,
            or overlaps the bundle.
        VggMobileError: TensorFlow.js is missing and `npm ci` could not install it.
    """
    out = Path(out)
    source = find_bundle(bundle)
    modules = node_modules_dir()
    page = web_demo_dir()
    # The bundle is an input however it was named: its export folder is never replaced.
    inputs = (Path(bundle), source) + ((Path(tflite_from),) if tflite_from is not None else ())
    with claim_output(out, ("web_demo",), inputs=inputs, force=force, staged=True) as output:
        staging = output.path
        for name in PAGE_FILES:
            shutil.copyfile(page / name, staging / name)
        vendor = staging / "vendor"
        vendor.mkdir()
        versions = {}
        for package, files in VENDOR_FILES.items():
            root = modules / package
            versions[package] = json.loads((root / "package.json").read_text())["version"]
            for file in files:
                shutil.copyfile(root / file, vendor / Path(file).name)
        mediapipe = modules / MEDIAPIPE_PACKAGE
        if (mediapipe / "package.json").is_file():
            versions[MEDIAPIPE_PACKAGE] = json.loads(
                (mediapipe / "package.json").read_text())["version"]
            for file in MEDIAPIPE_FILES:
                target = vendor / "mediapipe" / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(mediapipe / file, target)
        (vendor / "VERSIONS.json").write_text(json.dumps(versions, indent=2) + "\n")
        shutil.copytree(source, staging / "model")
        tflite_file, reason = find_int8_tflite(bundle if tflite_from is None else tflite_from)
        if MEDIAPIPE_PACKAGE not in versions:
            tflite_file, reason = None, f"{MEDIAPIPE_PACKAGE} is not installed (run `make install`)"
        if tflite_file is not None:
            shutil.copyfile(tflite_file, staging / "model" / TFLITE_NAME)
        runtimes = {"tfjs": {"model": "model/model.json"},
                    "mediapipe": ({"model": f"model/{TFLITE_NAME}", "source": tflite_file.name}
                                  if tflite_file is not None else {"disabled": reason})}
        write_json(staging / "runtimes.json", runtimes)
        classes = json.loads((source / "labels.json").read_text(encoding="utf-8"))
        write_json(staging / MANIFEST, marker(stage, "web_demo", classes=classes,
                                                     model="model/", vendor=versions))
    return out
