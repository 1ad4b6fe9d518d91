"""`vgg-mobile convert`: a run directory -> verified TFLite models, a TF.js bundle, Android assets.

Everything is built in a hidden staging folder beside the output, verified (each converted
model runs on held-out images and is compared with the Keras model), checked against the
budgets, and only then renamed into place. A missed budget raises `BudgetError` and leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from vgg_mobile.converters import tflite
from vgg_mobile import runtimes
from vgg_mobile.data import dataset, drift, splits
from vgg_mobile.data.dataset import load_images
from vgg_mobile.data.images import shown_size
from vgg_mobile.core.budgets import Budgets
from vgg_mobile.core.custom_objects import is_quantization_aware
from vgg_mobile.core.errors import BadInputError, BudgetError, DataError
from vgg_mobile.core.export_dir import export_from_json
from vgg_mobile.core.run_dir import Manifest, load_run
from vgg_mobile.core.io import gzip_size, write_json, write_text
from vgg_mobile.core.outputs import MANIFEST, check_no_overlap, claim_output, safe_name

SPARSE_MODES = ("auto", "always", "never")
# Below this share of zero weights the sparse encoding is larger than dense (measured: 50 %
# sparsity gave a bigger file), so `auto` does not even try it.
SPARSE_AUTO_MIN = 0.5


def parse_size(text: str | None) -> int | None:
    """Parses `10MB`, `2.5 MiB`, `800kB`, `1234` (bytes) or `none` into bytes."""
    if text is None or str(text).strip().lower() in ("none", "off", ""):
        return None
    units = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2,
             "gib": 1024**3}
    value = str(text).strip().lower().replace(" ", "")
    number = value.rstrip("abgikm")
    unit = value[len(number):] or "b"
    try:
        size = float(number)
    except ValueError:
        size = -1.0
    if unit not in units or not math.isfinite(size) or size < 0:
        raise BadInputError(f"not a size: {text!r} (use e.g. 10MB, 2.5MiB, 800kB or none)")
    return int(size * units[unit])


# The ONNX models `convert --onnx` can write.
ONNX_FLAVOURS = ("float32", "int8")


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """What to export and which budgets it must meet.

    Attributes:
        flavours: TFLite flavours to write (names from `vgg_mobile.converters.tflite.FLAVOURS`).
        io_dtype: Input/output type of the `int8` model: `uint8`, `int8` or `float32`.
        sparse: Sparse weight encoding: `auto` keeps whichever file is smaller (tried only when
            at least half the weights are zero), `always`, or `never`.
        tfjs: Also write a TF.js graph-model bundle.
        tfjs_quantization: TF.js weight quantization: `uint8`, `float16` or `none`.
        onnx: Also write ONNX models for ONNX Runtime: `float32` (tf2onnx) and `int8`
            (ONNX Runtime static quantization, QDQ form, calibrated like the TFLite `int8`).
        onnx_flavours: Which of the two ONNX models `onnx` writes (the int8 one is always made
            from the float32 one, which is then only written if asked for).
        max_size: Largest allowed size in bytes of each artifact (`None`: no limit).
        min_agreement: Smallest allowed top-1 agreement with the Keras model (`None`: no check).
        max_accuracy_drop: Largest allowed accuracy loss against Keras, in points of accuracy
            as a fraction (0.01 = one point) (`None`: no check).
        verify_images: At most this many held-out images verify each artifact; `0` verifies
            on every held-out image (what the pipeline does, so that its table compares
            every model on the same images).
        calibration_images: At most this many training images calibrate `int8`.
        name, version, author, license: Written into the TFLite metadata.
    """

    flavours: tuple[str, ...] = ("float16", "int8")
    io_dtype: str = "uint8"
    sparse: str = "auto"
    tfjs: bool = True
    tfjs_quantization: str = "uint8"
    onnx: bool = False
    onnx_flavours: tuple[str, ...] = ONNX_FLAVOURS
    max_size: int | None = 10_000_000
    min_agreement: float | None = None
    max_accuracy_drop: float | None = None
    verify_images: int = 200
    calibration_images: int = 100
    name: str | None = None
    version: str = "1"
    author: str = "vgg-mobile"
    license: str = "Apache-2.0"

    @property
    def budgets(self) -> Budgets:
        """The artifact budgets these options hold (validated when built)."""
        return Budgets(self.max_size, self.min_agreement, self.max_accuracy_drop)

    def __post_init__(self):
        if not self.flavours:
            raise BadInputError("at least one TFLite flavour is needed")
        for flavour in self.flavours:
            tflite.get_flavour(flavour)
        if len(set(self.flavours)) != len(self.flavours):
            raise BadInputError(f"flavours repeat. Received: {self.flavours}")
        if (not self.onnx_flavours or len(set(self.onnx_flavours)) != len(self.onnx_flavours)
                or not set(self.onnx_flavours) <= set(ONNX_FLAVOURS)):
            raise BadInputError(f"onnx_flavours must be distinct names among "
                                f"{', '.join(ONNX_FLAVOURS)}, at least one. "
                                f"Received: onnx_flavours={self.onnx_flavours!r}")
        if self.io_dtype not in tflite.IO_DTYPES:
            raise BadInputError(f"io_dtype must be one of {', '.join(tflite.IO_DTYPES)}. "
                                f"Received: io_dtype={self.io_dtype!r}")
        if self.sparse not in SPARSE_MODES:
            raise BadInputError(f"sparse must be one of {', '.join(SPARSE_MODES)}. "
                                f"Received: sparse={self.sparse!r}")
        self.budgets  # validates the three budget fields
        if self.name is not None:
            safe_name(self.name, "name")
        if self.verify_images < 0 or self.calibration_images < 1:
            raise BadInputError("verify_images must be at least 0 (0: every held-out image) and "
                                "calibration_images at least 1. Received: "
                                f"verify_images={self.verify_images}, "
                                f"calibration_images={self.calibration_images}")


def compare(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 agreement, accuracies and the largest probability difference of two models."""
    ref_top, top = reference.argmax(axis=1), probs.argmax(axis=1)
    keras_acc = float((ref_top == labels).mean())
    acc = float((top == labels).mean())
    return {"images": int(len(labels)), "top1_agreement": round(float((ref_top == top).mean()), 4),
            "accuracy": round(acc, 4), "keras_accuracy": round(keras_acc, 4),
            "accuracy_drop": round(keras_acc - acc, 4),
            "max_probability_difference": round(float(np.abs(reference - probs).max()), 5)}


def _tflite_artifact(model, flavour, options, calibration, log):
    io_dtype = options.io_dtype if flavour == "int8" else "float32"
    data = tflite.convert_keras_model(model, flavour, calibration, io_dtype=io_dtype)
    sparsity = tflite.weight_sparsity(data)
    choice = "dense"
    note = f"dense ({sparsity['fraction']:.0%} of weights zero)"
    try_sparse = options.sparse == "always" or (
        options.sparse == "auto" and sparsity["fraction"] >= SPARSE_AUTO_MIN)
    if try_sparse:
        sparse = tflite.convert_keras_model(model, flavour, calibration, sparse=True, io_dtype=io_dtype)
        try:
            runtimes.load(sparse, "tflite")
            runnable = True
        except BadInputError as err:
            # Seen with the dynamic-range flavour: XNNPACK, LiteRT's default delegate, cannot
            # prepare its sparse convolutions, so that file is never shipped.
            runnable = False
            if options.sparse == "always":
                raise BadInputError(f"{flavour}: the sparse encoding does not run in LiteRT ({err})") from None
        if not runnable:
            note = f"dense: the sparse encoding of {flavour} does not run in LiteRT's default delegate"
        elif options.sparse == "always" or len(sparse) < len(data):
            note = (f"sparse encoding: {len(sparse) / 1e6:.2f} MB against "
                    f"{len(data) / 1e6:.2f} MB dense")
            data, choice = sparse, "sparse"
        else:
            note = (f"dense: {len(data) / 1e6:.2f} MB against {len(sparse) / 1e6:.2f} MB with the "
                    "sparse encoding")
    log(f"{flavour}: {len(data) / 1e6:.2f} MB, {note}")
    return data, {"encoding": choice, "encoding_note": note, "weight_sparsity": sparsity}


def convert_run(
    run_dir: str | Path,
    out_dir: str | Path,
    options: ConvertOptions | None = None,
    data_dir: str | Path | None = None,
    android_dir: str | Path | None = None,
    force: bool = False,
    command: list[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
    stage: str = "export",
) -> dict:
    """Converts a run's model, verifies every artifact, enforces the budgets, writes `out_dir`.

    Args:
        run_dir: A finished run directory.
        out_dir: Export folder to create; replaced only with `force`.
        options: Flavours, encodings and budgets. Defaults to `ConvertOptions()`.
        data_dir: Image folder for calibration and verification. Defaults to the folder the run
            was trained on, as recorded in its manifest.
        android_dir: Also write Android assets there (see `vgg_mobile.converters.android`).
        force: Replace existing `out_dir` / `android_dir`. Defaults to `False`.
        command: The command line, recorded in the manifest.
        log: Receives one-line progress messages.
        stage: The stage name its manifest records (the pipeline's folder and config
            section). Defaults to `"export"`.

    Returns:
        The export manifest (also written as `out_dir/manifest.json`).

    Raises:
        BadInputError: Bad run directory, data, or options; an output that exists without `force`.
        BudgetError: An artifact missed a budget; nothing was written.
    """
    options = options or ConvertOptions()
    out_dir = Path(out_dir)
    run = load_run(run_dir)
    check_no_overlap(out_dir, (run.path, data_dir))
    if android_dir is not None:
        check_no_overlap(Path(android_dir), (run.path, data_dir, out_dir), "--android")
    if data_dir is None:
        recorded = run.manifest.data.get("path")
        if not recorded or not Path(recorded).is_dir():
            raise DataError(f"{run.path}: no --data given and the training folder recorded in "
                            f"the manifest ({recorded!r}) is not available")
        data_dir = recorded
        log(f"verifying on the run's own data folder {data_dir}")
    folder = dataset.scan_folder(data_dir, classes=run.classes)
    # Both folders are claimed before any work, and each is renamed into place only when
    # everything passed: a missed budget leaves them as they were.
    with contextlib.ExitStack() as claims:
        output = claims.enter_context(claim_output(
            out_dir, ("export",), inputs=(run.path, folder.root), force=force, staged=True))
        assets = None if android_dir is None else claims.enter_context(claim_output(
            android_dir, ("android",), inputs=(run.path, folder.root, out_dir), force=force,
            staged=True, what="--android"))
        return _convert(run, folder, options, output.path, assets and assets.path, command, log,
                        stage)


def _convert(run, folder, options, staging: Path, android_dir: Path | None, command, log,
             stage) -> dict:
    from vgg_mobile.converters import metadata

    held_out, split_name = splits.held_out(run.manifest.data, folder, "auto")
    pool = splits.choose_split(folder, run.manifest.data, seed=run.manifest.seed).parts
    # Seeded and drawn from every class in turn: a plain prefix would hold the first classes only.
    calibration_examples = splits.stratified_sample(pool.train or held_out, options.calibration_images)
    model = run.load_model()
    if options.tfjs and is_quantization_aware(model):
        raise BadInputError(f"{run.path}: a quantization-aware run cannot become a TF.js bundle "
                            "(TensorFlow.js has no kernels for its fake-quantization ops); pass "
                            "--no-tfjs, or convert the float run it was trained from for the browser")
    size = run.image_size
    n_classes = len(run.classes)
    verifying = splits.stratified_sample(held_out, options.verify_images or len(held_out))
    x_val, y_val = load_images(verifying, size, n_classes)
    x_cal, _ = load_images(calibration_examples, size, n_classes)
    reference = model(x_val, training=False).numpy()
    if np.ptp(reference, axis=0).max() < 1e-6:
        log("warning: the model gives the same output for every image; the comparisons below "
            "cannot tell a good conversion from a broken one")

    stem = safe_name(options.name or f"{run.manifest.architecture or 'model'}_"
                                      f"{run.manifest.stage}", "name")
    info = metadata.ModelInfo(
        name=stem, version=options.version, author=options.author, license=options.license,
        description=f"Image classifier ({', '.join(run.classes)}), {size}x{size} RGB input, "
                    f"exported by vgg-mobile from a {run.manifest.stage} run.")
    artifacts, misses = [], []
    for flavour in options.flavours:
        started = time.perf_counter()
        data, encoding = _tflite_artifact(model, flavour, options, x_cal, log)
        data = metadata.add_metadata(data, list(run.classes), info)
        seconds = time.perf_counter() - started
        probs = runtimes.load(data, "tflite").predict(x_val)
        check = compare(reference, probs, y_val)
        file_name = f"{stem}_{flavour}.tflite"
        (staging / file_name).write_bytes(data)
        misses += options.budgets.misses(file_name, len(data), check)
        artifacts.append({"file": file_name, "format": "tflite", "flavour": flavour,
                          "io_dtype": options.io_dtype if flavour == "int8" else "float32",
                          "size_bytes": len(data), "gzip_bytes": gzip_size(data),
                          "convert_seconds": round(seconds, 2), **encoding,
                          "verification": check,
                          "drift_reference": drift.output_reference(probs, run.classes)})
        log(f"{file_name}: agreement {check['top1_agreement']:.3f}, accuracy "
            f"{check['accuracy']:.3f} (Keras {check['keras_accuracy']:.3f})")
    if options.onnx:
        artifacts += _onnx_artifacts(model, run, stem, info, staging, options, x_cal, reference,
                                     x_val, y_val, misses, log)
    if options.tfjs:
        artifacts.append(_tfjs_artifact(model, run, staging, options, reference, x_val, y_val,
                                        misses, log))
    manifest = Manifest(
        stage=stage, classes=run.classes, model_file=None,
        architecture=run.manifest.architecture, input=run.manifest.input,
        preprocessing=run.manifest.preprocessing, output=run.manifest.output,
        parent=str(run.path.resolve()), command=command,
        data={"path": str(folder.root.resolve()), "verification_split": split_name,
              "verification_images": int(len(y_val)), "calibration_images": int(len(x_cal))},
        sections={"options": {k: list(v) if isinstance(v, tuple) else v
                              for k, v in dataclasses.asdict(options).items()},
                  "artifacts": artifacts,
                  # What the held-out images look like, for a service to watch drift against.
                  "drift_reference": drift.input_reference(
                      x_val, [shown_size(example.path) for example in verifying], split_name)},
        metrics={"keras_accuracy": round(float((reference.argmax(1) == y_val).mean()), 4)}).to_json()
    if misses:
        raise BudgetError("budget missed: " + "; ".join(misses), report={
            **manifest, "budget": {"passed": False, "misses": misses}, "written": False})
    write_text(staging / "labels.txt", "".join(f"{c}\n" for c in run.classes))
    write_json(staging / MANIFEST, manifest)
    if android_dir is not None:
        from vgg_mobile.converters import android

        android.write_assets(export_from_json(staging, manifest), android_dir)
    return manifest


def _onnx_artifacts(model, run, stem, info, staging, options, x_cal, reference, x_val, y_val,
                    misses, log) -> list[dict]:
    from vgg_mobile.converters import onnx
    from vgg_mobile.core.version import __version__

    props = {"name": info.name, "version": info.version, "author": info.author,
             "license": info.license, "description": info.description,
             "labels": list(run.classes), "input": run.manifest.input,
             "preprocessing": run.manifest.preprocessing,
             "producer": f"vgg-mobile {__version__}"}
    started = time.perf_counter()
    converted = {"float32": onnx.convert_keras_model(model)}
    seconds = {"float32": time.perf_counter() - started}
    started = time.perf_counter()
    converted["int8"] = onnx.quantize_int8(converted["float32"], x_cal)
    seconds["int8"] = time.perf_counter() - started
    # A quantization-aware model's fake-quantization becomes QDQ pairs in the "float32" file.
    graph = "QDQ (quantization-aware model)" if is_quantization_aware(model) else "float"
    artifacts = []
    for flavour, data in converted.items():
        if flavour not in options.onnx_flavours:
            continue
        data = onnx.add_metadata(data, {**props, "flavour": flavour})
        runtime = runtimes.load(data, "onnx")
        probs = runtime.predict(x_val)
        check = compare(reference, probs, y_val)
        file_name = f"{stem}.onnx" if flavour == "float32" else f"{stem}_{flavour}.onnx"
        (staging / file_name).write_bytes(data)
        misses += options.budgets.misses(file_name, len(data), check)
        artifacts.append({"file": file_name, "format": "onnx", "flavour": flavour,
                          "io_dtype": "float32", "opset": onnx.DEFAULT_OPSET,
                          "size_bytes": len(data), "gzip_bytes": gzip_size(data),
                          "graph": graph if flavour == "float32" else "QDQ (static, calibrated)",
                          "convert_seconds": round(seconds[flavour], 2), "verification": check,
                          "verified_with": runtime.label,
                          "drift_reference": drift.output_reference(probs, run.classes)})
        log(f"{file_name}: {len(data) / 1e6:.2f} MB, agreement {check['top1_agreement']:.3f}, "
            f"accuracy {check['accuracy']:.3f} (Keras {check['keras_accuracy']:.3f})")
    return artifacts


def _tfjs_artifact(model, run, staging, options, reference, x_val, y_val, misses, log) -> dict:
    from vgg_mobile.converters import tfjs

    started = time.perf_counter()
    bundle = staging / "tfjs"
    tfjs.convert_to_tfjs(model, bundle, options.tfjs_quantization)
    seconds = time.perf_counter() - started
    write_json(bundle / "labels.json", list(run.classes))
    write_json(bundle / MANIFEST, {
        "classes": list(run.classes), "input": run.manifest.input,
        "preprocessing": run.manifest.preprocessing, "output": run.manifest.output,
        "architecture": run.manifest.architecture, "weight_quantization": options.tfjs_quantization})
    files = sorted(p for p in bundle.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)
    runtime = runtimes.load(bundle, "tfjs")
    check = compare(reference, runtime.predict(x_val), y_val)
    misses += options.budgets.misses("tfjs/", size, check)
    log(f"tfjs/: {size / 1e6:.2f} MB ({options.tfjs_quantization} weights), agreement "
        f"{check['top1_agreement']:.3f}, accuracy {check['accuracy']:.3f}")
    return {"file": "tfjs/", "format": "tfjs_graph_model", "flavour": options.tfjs_quantization,
            "files": [p.name for p in files], "size_bytes": size,
            "gzip_bytes": sum(gzip_size(p.read_bytes()) for p in files),
            "convert_seconds": round(seconds, 2), "verification": check,
            "verified_with": f"TensorFlow.js (Node, {runtime.describe()['backend']} backend)"}
