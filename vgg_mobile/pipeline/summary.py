"""The pipeline's summary as data: one row per artifact under OUT, read from the manifests.

Nothing here runs a model: rows come from the run directories' and exports' manifests, the
state file (gzip sizes measured once, when a stage finished) and the benchmark stage's
measurements. `vgg_mobile.reporting` turns the rows into tables and the report.
"""

from __future__ import annotations

import json
from pathlib import Path

from vgg_mobile.core.export_dir import load_export
from vgg_mobile.core.outputs import MANIFEST, inside
from vgg_mobile.core.run_dir import MODEL, read_manifest
from vgg_mobile.distillation.distill import gain_verdict
from vgg_mobile.pipeline.stages import STAGES, get_stage
from vgg_mobile.pipeline.state import read_state

# The keys the benchmark measures. When it ran, its figures replace the stages' own: a stage
# evaluated its model once, in its own process and batches, while the benchmark ran every
# artifact on the same images, and a quantization-aware model's fake-quantization rounding
# can answer a borderline image differently between two such passes (one table, one answer).
MEASURED = ("latency_ms", "speedup", "agreement", "accuracy")


def summary_rows(out: str | Path, config) -> list[dict]:
    """One row per artifact under OUT: every run's Keras model, then every exported file.

    Each row has `artifact` (its title), `stage`, `format` (`keras`, `tflite`, `onnx` or `tfjs`),
    `path`, `parent` (the stage it was made from), `architecture`, `accuracy` (held-out
    images), `images` (how many held-out images that accuracy is on), `agreement` (top-1 agreement with the parent), `size_bytes`, `gzip_bytes`,
    `latency_ms` and `speedup` (single image, against the float teacher in the same process),
    `budget` (`pass` or `fail` for exported files under their stage's budgets,
    `Budgets.misses`, the rule `convert` enforces on its own verification; `-` for runs),
    `misses` (what an exported file misses, one sentence each), `feeds_export` (an exported
    file is made from it, or from a run made from it; `False` for a run that is measured but
    ships nothing, such as the pruned teacher) and `measured_by` (`benchmark` or `stage`).
    When the benchmark stage ran, its accuracy, agreement, latency and speed-up replace what
    the stages recorded, and `images` is its number of images, so that the table gives one
    figure per model; missing values are `None`.

    Args:
        out: A pipeline output folder.
        config: The `PipelineConfig` it was made with (for parents and budgets).

    Returns:
        The rows, in stage order.
    """
    out = Path(out)
    recorded = read_state(out)["stages"]
    rows = []
    for stage in STAGES:
        settings = getattr(config, stage.name)
        if stage.kind == "run":
            row = _run_row(out / stage.name, stage, settings, recorded.get(stage.name, {}))
            rows += [row] if row else []
        elif stage.kind == "export":
            rows += _export_rows(out / stage.name, stage, settings)
    benchmark = get_stage("benchmark")
    measured = out / benchmark.name / benchmark.finished_file
    if measured.is_file():
        result = json.loads(measured.read_text(encoding="utf-8"))
        # By the path inside its stage's folder: the benchmark recorded the paths as OUT was
        # given to it (relative to its working directory, or absolute), and a copied or moved
        # folder still holds the same artifacts.
        by_path = {_in_stage(row): row for row in result["rows"]}
        for row in rows:
            found = by_path.get(_in_stage(row))
            if found is None:
                continue
            for key in MEASURED:
                if found.get(key) is not None or row[key] is None:
                    row[key] = found.get(key)
            if found.get("accuracy") is not None:
                row["images"] = result.get("images", row["images"])
                row["measured_by"] = "benchmark"
    shipped = _feeding_exports(config)
    for row in rows:
        row["feeds_export"] = row["format"] != "keras" or row["stage"] in shipped
    return rows


def _in_stage(row: dict) -> str:
    """A row's artifact as `stage/file`, wherever OUT is."""
    parts = Path(row["path"]).parts
    if row.get("stage") not in parts:
        return row["path"]
    start = len(parts) - 1 - parts[::-1].index(row["stage"])
    return "/".join(parts[start:])


def _feeding_exports(config) -> set[str]:
    """The run stages an enabled export is made from, directly or through other runs."""
    feeding = set()
    for stage in STAGES:
        settings = getattr(config, stage.name)
        if stage.kind != "export" or not stage.enabled(settings):
            continue
        name = stage.parent_of(settings)
        while name and name not in feeding:
            feeding.add(name)
            parent = get_stage(name)
            name = parent.parent_of(getattr(config, name))
    return feeding


def points_per_image(images: int) -> str:
    """What one image is worth in points of accuracy, e.g. `"one image = 2.1 points"`."""
    return f"one image = {100 / images:.1f} points"


def table_notes(rows: list[dict]) -> list[str]:
    """Sentences that go under the summary table: on how many held-out images its accuracies
    were measured and what one image is worth, and which rows ship nothing.

    Args:
        rows: `summary_rows`.

    Returns:
        The sentences; empty for no rows.
    """
    notes = []
    counts: dict[int, list[str]] = {}
    for row in rows:
        if row["accuracy"] is not None and row.get("images"):
            counts.setdefault(row["images"], []).append(row["artifact"])
    if len(counts) == 1:
        (n,) = counts
        notes.append(f"Every accuracy is on {n} held-out images: "
                     f"{points_per_image(n)} of accuracy.")
    elif counts:
        notes.append("Accuracies on different numbers of held-out images: " + "; ".join(
            f"{n} ({points_per_image(n)}): {', '.join(names)}"
            for n, names in sorted(counts.items(), reverse=True)) + ".")
    if any(row.get("measured_by") == "benchmark" for row in rows):
        notes.append("Accuracy, agreement and latency are the benchmark's (`benchmark/`): every "
                     "artifact run on the same images in one process.")
    idle = [row["artifact"] for row in rows if row["format"] == "keras" and not row["feeds_export"]]
    if idle:
        named = " and ".join(filter(None, (", ".join(idle[:-1]), idle[-1])))
        notes.append(f"Measured, not shipped: no exported file is made from the {named} "
                     f"row{'s' if len(idle) > 1 else ''}; "
                     f"{'they feed' if len(idle) > 1 else 'it feeds'} nothing downstream.")
    return notes


def _run_row(path: Path, stage, settings, recorded: dict) -> dict | None:
    manifest = read_manifest(path)
    if manifest is None:
        return None
    model = inside(path, manifest.model_file or MODEL, "model_file", path / MANIFEST)
    # A student stage that kept the student trained alone (distillation did not pay) says so.
    shipped_alone = manifest.section("baseline").get("shipped") == "baseline"
    title = ("student trained alone (kept: distillation did not pay)" if shipped_alone
             else stage.artifact)
    return {"artifact": title, "stage": stage.name, "format": "keras", "path": str(model),
            "parent": stage.parent_of(settings), "architecture": manifest.architecture,
            "accuracy": manifest.metrics.get("accuracy"),
            "images": _images(manifest.metrics), "agreement": None,
            "size_bytes": model.stat().st_size if model.is_file() else 0,
            "gzip_bytes": recorded.get("gzip_bytes"), "latency_ms": None, "speedup": None,
            "budget": "-", "misses": [], "measured_by": "stage"}


def _images(metrics: dict) -> int | None:
    per_class = metrics.get("per_class")
    return sum(c.get("support", 0) for c in per_class.values()) if per_class else None


def findings(out: str | Path, config) -> list[str]:
    """Plain sentences on what the rows mean for the student: whether the teacher was worth
    learning from, whether distillation paid, and which student went on (needs the student
    stage's baseline, `[student] baseline = true`).

    Args:
        out: A pipeline output folder.
        config: The `PipelineConfig` it was made with.

    Returns:
        The sentences; empty when the student stage has not run or had no baseline.
    """
    del config  # the sentences come from the student's manifest alone
    manifest = read_manifest(Path(out) / get_stage("student").name)
    if manifest is None:
        return []
    baseline, teacher = manifest.section("baseline"), manifest.section("teacher")
    if not baseline or "shipped" not in baseline:
        return []
    t = (teacher.get("metrics") or {}).get("accuracy")
    d = (baseline.get("distilled_metrics") or {}).get("accuracy")
    b = (baseline.get("metrics") or {}).get("accuracy")
    n = _images(baseline.get("metrics") or {})
    on = f" on {n} held-out images ({points_per_image(n)})" if n else ""
    lines = [f"Teacher {t:.3f}, distilled student {d:.3f}, the same student trained alone "
             f"{b:.3f}{on}."]
    if baseline.get("teacher_weaker"):
        stronger = {
            "vgg16": "more epochs, vgg16_bn, ImageNet weights",
            "vgg16_bn_0.5": "more epochs, the full-width vgg16_bn, or VGG16 with ImageNet "
                            "weights: the real preset",
        }.get(teacher.get("architecture"),
              "more epochs, or VGG16 with ImageNet weights: the real preset")
        lines.append("The teacher is no more accurate than the student trained alone, so it had "
                     f"little to teach: train a stronger teacher ({stronger}) before distilling.")
    gain = baseline.get("accuracy_gain", 0.0)
    lines.append(f"Distillation {gain_verdict(gain)}: "
                 f"{gain * 100:+.1f} points against the student trained alone.")
    lines.append("The student stage kept the student trained alone, the more accurate one; the "
                 "later stages start from it." if baseline["shipped"] == "baseline" else
                 "The student stage kept the distilled student.")
    return lines


def _export_rows(folder: Path, stage, settings) -> list[dict]:
    if not (folder / MANIFEST).is_file():
        return []
    export = load_export(folder)
    source = stage.parent_of(settings)
    budgets = settings.options.budgets
    rows = []
    for artifact in export.artifacts:
        check = artifact.verification
        misses = budgets.misses(f"{stage.name}/{artifact.file}", artifact.size_bytes, check)
        fmt = "tfjs" if artifact.format == "tfjs_graph_model" else artifact.format
        kind = {"tflite": f"TFLite {artifact.flavour}", "onnx": f"ONNX {artifact.flavour}",
                "tfjs": "TF.js"}[fmt]
        rows.append({"artifact": f"{kind} ({source})", "stage": stage.name, "format": fmt,
                     "path": str(export.file(artifact)), "parent": source,
                     "architecture": export.manifest.architecture,
                     "accuracy": check.get("accuracy"), "images": check.get("images"),
                     "agreement": check.get("top1_agreement"),
                     "size_bytes": artifact.size_bytes, "gzip_bytes": artifact.get("gzip_bytes"),
                     "latency_ms": None, "speedup": None,
                     "budget": "fail" if misses else "pass", "misses": misses,
                     "measured_by": "stage"})
    return rows
