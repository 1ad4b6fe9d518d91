"""`vgg-mobile benchmark OUT`: every artifact of a pipeline output, measured in one process.

Each artifact (the Keras runs and every exported TFLite file and TF.js bundle) runs on the
same held-out images and is timed on single images in the same process, so that ratios
between them mean something on a shared, noisy machine where absolute times do not:

    accuracy    on the held-out images of the teacher's data split
    agreement   top-1 agreement with the parent it was made from (the teacher has none)
    size, gzip  bytes of the file (a TF.js bundle: all its files), and after gzip
    latency     median of `repeats` single-image runs after 3 warm-ups, every runtime with
                `threads` threads: TensorFlow (tf_keras, a compiled `tf.function`), LiteRT,
                ONNX Runtime (CPU execution provider), TF.js on its WASM backend in Node
                (single-threaded SIMD)
    speedup     the float teacher's Keras latency divided by the artifact's

A quantization-aware Keras run is not timed (its latency is `None`): Keras runs its
fake-quantization ops, a simulation of int8 that no shipped product runs; its exported int8
files are timed instead.

Each ONNX model also runs in OpenVINO (CPU) when it is installed (`vgg-mobile[openvino]`, in
the development environment): accuracy, agreement with ONNX Runtime and latency, in a second
table.

The result is written to `OUT/benchmark/benchmark.json` (last) and `benchmark.md`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from vgg_mobile.core.errors import RunDirError
from vgg_mobile.core.io import gzip_size, write_json, write_text
from vgg_mobile.core.outputs import MANIFEST
from vgg_mobile.data import dataset, splits
from vgg_mobile.pipeline.config import load_pipeline_config
from vgg_mobile.pipeline.sections import BenchmarkConfig
from vgg_mobile.pipeline.stages import BENCHMARK_JSON, get_stage
from vgg_mobile.pipeline.state import STATE_FILE, is_pipeline_out
from vgg_mobile.pipeline.summary import QAT_LATENCY_NOTE, summary_rows
from vgg_mobile.reporting.tables import Column, markdown_table, megabytes, number

# Every artifact runs on the held-out images of the teacher's split, and every speed-up is
# against the float teacher.
REFERENCE = get_stage("teacher").name


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """What `benchmark_pipeline` measured: one dict per artifact, and the files written."""

    rows: tuple[dict, ...]
    json_path: Path
    markdown_path: Path
    info: dict


def benchmark_images(out: Path, data_dir: Path | None, limit: int | None):
    """The teacher run, the held-out examples every benchmark row (and the report's shipped
    model) is measured on (a stratified, seeded sample of `limit`, or all), and the split."""
    from vgg_mobile.core.run_dir import load_run

    teacher = load_run(out / REFERENCE)
    recorded = teacher.manifest.data.get("path")
    if data_dir is None and not recorded:
        raise RunDirError(f"{teacher.path}: the manifest records no data folder; pass --data")
    folder = dataset.scan_folder(data_dir or recorded, classes=teacher.classes)
    examples, split = splits.held_out(teacher.manifest.data, folder, "auto")
    # Drawn from every class in turn: a plain prefix of the held-out images (sorted by
    # class) would measure the first classes only.
    return teacher, list(splits.stratified_sample(examples, limit) if limit else examples), split


def benchmark_pipeline(
    out_dir: str | Path,
    config: BenchmarkConfig | None = None,
    output_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> BenchmarkResult:
    """Measures every artifact of a pipeline output folder (see the module docstring).

    Args:
        out_dir: A pipeline output folder (`vgg-mobile pipeline ... --out OUT`).
        config: Repeats, threads and image count. Defaults to the `[benchmark]` section of
            `OUT/pipeline.toml`.
        output_dir: Where `benchmark.json` and `benchmark.md` go. Defaults to `OUT/benchmark`.
        data_dir: The image folder, when it moved since the pipeline ran. Defaults to the one
            the teacher's manifest records.
        log: Receives one line per artifact.

    Returns:
        A `BenchmarkResult`.

    Raises:
        RunDirError: `out_dir` is not a pipeline output folder, or has no teacher run.
        DataError: The image folder fails its checks.
    """
    out = Path(out_dir)
    if not is_pipeline_out(out):
        raise RunDirError(f"{out}: not a pipeline output folder (no {STATE_FILE})")
    if not (out / REFERENCE / MANIFEST).is_file():
        raise RunDirError(f"{out}: has no finished teacher run to measure against")
    pipeline_config = load_pipeline_config(out)
    config = config or pipeline_config.benchmark
    from vgg_mobile.evaluation.metrics import class_recall, classification_metrics
    from vgg_mobile.runtimes.keras import set_threads

    threads = set_threads(config.threads)
    teacher, examples, split = benchmark_images(out, Path(data_dir) if data_dir else None, config.images)
    rows = [row for row in summary_rows(out, pipeline_config)
            if Path(row["path"]).exists()]
    measured: dict[str, dict] = {}
    probs_of: dict[str, np.ndarray] = {}  # Keras outputs by stage: the parents of the others
    images: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    teacher_ms = None
    started = time.perf_counter()
    for row in rows:
        result = _measure(row, examples, len(teacher.classes), config, images,
                          timed=not row["quantization_aware"])
        labels = images[result.pop("image_size")][1]
        probs = result.pop("probs")
        if row["format"] == "keras":
            probs_of[row["stage"]] = probs
        if row["stage"] == REFERENCE:
            teacher_ms = result["latency_ms"]
        latency = result["latency_ms"]
        parent = probs_of.get(row["parent"]) if row["parent"] else None
        measured[row["path"]] = {
            "artifact": row["artifact"], "stage": row["stage"], "format": row["format"],
            "path": row["path"], "parent": row["parent"], "runtime": result["runtime"],
            "accuracy": round(float((probs.argmax(1) == labels).mean()), 4),
            "agreement": (round(float((probs.argmax(1) == parent.argmax(1)).mean()), 4)
                          if parent is not None else None),
            "size_bytes": row["size_bytes"],
            "gzip_bytes": row["gzip_bytes"] if row["gzip_bytes"] is not None
            else gzip_size(Path(row["path"])),
            "latency_ms": round(latency, 3) if latency is not None else None,
            "speedup": round(teacher_ms / latency, 2) if teacher_ms and latency else None,
            "budget": row["budget"], "quantization_aware": row["quantization_aware"],
            "per_class": class_recall(classification_metrics(probs, labels, teacher.classes)),
        }
        for key, other in result.pop("others").items():
            # The same file in a second runtime, on the same images.
            measured[row["path"]][key] = {
                "accuracy": round(float((other["probs"].argmax(1) == labels).mean()), 4),
                f"agreement_with_{result['runtime_key']}": round(float(
                    (other["probs"].argmax(1) == probs.argmax(1)).mean()), 4),
                "max_probability_difference": round(float(np.abs(other["probs"] - probs).max()), 5),
                "latency_ms": round(other["latency_ms"], 3),
                "speedup": round(teacher_ms / other["latency_ms"], 2) if teacher_ms else None}
        timing = (f"{latency:.2f} ms/image" if latency is not None
                  else "not timed (quantization-aware)")
        log(f"benchmark: {row['artifact']}: {timing}, accuracy "
            f"{measured[row['path']]['accuracy']:.3f}")
    info = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "out": str(out.resolve()), "images": len(examples), "split": split,
            "repeats": config.repeats, "threads": {"tensorflow": threads, "litert": config.threads,
                                                   "onnxruntime": config.threads, "openvino": config.threads,
                                                   "tfjs": 1},
            "reference": "float teacher (TensorFlow)", "seconds": round(time.perf_counter() - started, 1),
            "versions": _versions()}
    target = Path(output_dir) if output_dir else out / get_stage("benchmark").name
    target.mkdir(parents=True, exist_ok=True)
    (target / BENCHMARK_JSON).unlink(missing_ok=True)  # the JSON marks it finished
    markdown = target / "benchmark.md"
    write_text(markdown, format_benchmark(list(measured.values()), info) + "\n")
    json_path = target / BENCHMARK_JSON
    write_json(json_path, {**info, "rows": list(measured.values())})
    return BenchmarkResult(tuple(measured.values()), json_path, markdown, info)


def _measure(row: dict, examples, num_classes: int, config: BenchmarkConfig, images: dict,
             timed: bool = True) -> dict:
    """Runs one artifact on the held-out images and times it on the first one, in its format's
    reference runtime and in every other installed runtime of the format; untimed (latency
    `None`, no other runtime) unless `timed`."""
    from vgg_mobile import runtimes
    from vgg_mobile.data.dataset import load_images

    reference, *others = runtimes.runtimes_for(row["format"])
    runtime = reference.load(row["path"], config.threads)
    size = runtime.image_size
    if size not in images:
        images[size] = load_images(examples, size, num_classes)
    x = images[size][0]
    if not timed:
        return {"probs": np.asarray(runtime.predict(x)), "latency_ms": None, "image_size": size,
                "runtime": runtime.label, "runtime_key": runtime.key, "others": {}}
    probs, latency = runtime.measure(x, config.repeats)
    measured_others = {}
    for other in others:
        if other.available():
            probs_other, latency_other = other.load(row["path"], config.threads).measure(
                x, config.repeats)
            measured_others[other.key] = {"probs": np.asarray(probs_other),
                                          "latency_ms": float(latency_other)}
    return {"probs": np.asarray(probs), "latency_ms": float(latency), "image_size": size,
            "runtime": runtime.label, "runtime_key": runtime.key, "others": measured_others}


def _versions() -> dict:
    from importlib import metadata

    versions = {}
    for package in ("tensorflow", "tf-keras", "ai-edge-litert", "onnxruntime", "tf2onnx",
                    "openvino", "tensorflowjs"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    from vgg_mobile.core.resources import node_modules_dir

    node_modules = node_modules_dir(install=False)
    package = node_modules / "@tensorflow" / "tfjs" / "package.json" if node_modules else None
    versions["@tensorflow/tfjs"] = (json.loads(package.read_text())["version"]
                                    if package and package.is_file() else None)
    return versions


BENCHMARK_COLUMNS: tuple[Column, ...] = (
    Column("artifact", lambda row: row["artifact"], numeric=False),
    Column("runtime", lambda row: row["runtime"], numeric=False),
    Column("accuracy", lambda row: number(row["accuracy"])),
    Column("agreement with parent", lambda row: number(row["agreement"])),
    Column("size", lambda row: megabytes(row["size_bytes"])),
    Column("gzip", lambda row: megabytes(row["gzip_bytes"])),
    Column("ms/image", lambda row: number(row["latency_ms"], "{:.2f}")),
    Column("vs float teacher", lambda row: number(row["speedup"], "{:.1f}x")),
)


OPENVINO_COLUMNS: tuple[Column, ...] = (
    Column("artifact", lambda row: row["artifact"], numeric=False),
    Column("accuracy", lambda row: number(row["openvino"]["accuracy"])),
    Column("agreement with ONNX Runtime", lambda row: number(row["openvino"]["agreement_with_onnxruntime"])),
    Column("max prob. difference", lambda row: number(row["openvino"]["max_probability_difference"], "{:.4f}")),
    Column("ms/image", lambda row: number(row["openvino"]["latency_ms"], "{:.2f}")),
    Column("ONNX Runtime ms/image", lambda row: number(row["latency_ms"], "{:.2f}")),
    Column("vs float teacher", lambda row: number(row["openvino"]["speedup"], "{:.1f}x")),
)


def format_benchmark(rows: list[dict], info: dict) -> str:
    """The benchmark as Markdown: a heading line on how it was measured, then the table.

    Args:
        rows: `BenchmarkResult.rows`.
        info: `BenchmarkResult.info`.
    """
    heading = (f"{info['images']} held-out images ({info['split']} split); latency: median of "
               f"{info['repeats']} single-image runs, threads: TensorFlow "
               f"{info['threads']['tensorflow']}, LiteRT {info['threads']['litert']}, ONNX Runtime "
               f"{info['threads'].get('onnxruntime', info['threads']['litert'])}, TF.js 1; "
               "speed-up against the float teacher in the same process.")
    text = heading + "\n\n" + markdown_table(BENCHMARK_COLUMNS, rows)
    if any(row.get("quantization_aware") for row in rows):
        text += "\n\n" + QAT_LATENCY_NOTE
    in_openvino = [row for row in rows if row.get("openvino")]
    if in_openvino:
        text += ("\n\nThe ONNX models in OpenVINO (CPU, same images, same threads), against ONNX "
                 "Runtime:\n\n" + markdown_table(OPENVINO_COLUMNS, in_openvino))
    return text
