"""The pipeline's summary as data: one row per artifact under OUT, read from the manifests.

Nothing here runs a model: rows come from the run directories' and exports' manifests, the
state file (gzip sizes measured once, when a stage finished) and the benchmark stage's
measurements. `vgg_mobile.reporting` turns the rows into tables and the report.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from vgg_mobile.core.export_dir import load_export
from vgg_mobile.core.outputs import MANIFEST, inside
from vgg_mobile.core.run_dir import MODEL, read_manifest
from vgg_mobile.distillation.distill import gain_verdict
from vgg_mobile.evaluation.metrics import class_recall
from vgg_mobile.pipeline.stages import STAGES, get_stage
from vgg_mobile.pipeline.state import read_state

# The keys the benchmark measures. When it ran, its figures replace the stages' own: a stage
# evaluated its model once, in its own process and batches, while the benchmark ran every
# artifact on the same images, and a quantization-aware model's fake-quantization rounding
# can answer a borderline image differently between two such passes (one table, one answer).
MEASURED = ("latency_ms", "speedup", "agreement", "accuracy", "per_class")

# The per-class recall lines name this many classes, the worst first.
WORST_CLASSES = 3

# Under any table where a quantization-aware Keras run has no latency.
QAT_LATENCY_NOTE = ("Quantization-aware Keras models run fake quantization: their latency is "
                    "that of no shipped product; see their int8 TFLite rows.")


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
    ships nothing, such as the pruned teacher), `measured_by` (`benchmark` or `stage`),
    `per_class` (`{class: {"recall", "support"}}` on the same held-out images as `accuracy`:
    a run's from its manifest, an exported file's from the benchmark; `None` without one),
    `quantization_aware` (a Keras run with fake-quantization ops: its latency is always
    `None`, being that of no shipped product) and `model` (what an exported file is of, for
    sentences: `student`, or the teacher's family, e.g. `VGG16`; `None` for runs).
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
            rows += _export_rows(out / stage.name, stage, settings,
                                 _model_name(stage.parent_of(settings), config))
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
                # Per-class figures on the same images as the accuracy, or none.
                row["per_class"] = found.get("per_class") or None
                row["images"] = result.get("images", row["images"])
                row["measured_by"] = "benchmark"
    shipped = _feeding_exports(config)
    for row in rows:
        row["feeds_export"] = row["format"] != "keras" or row["stage"] in shipped
        if row["quantization_aware"]:
            row["latency_ms"] = row["speedup"] = None
    return rows


def _lineage(name: str | None, config) -> list[str]:
    """`name` and the run stages it was made from, nearest first."""
    chain = []
    while name and name not in chain:
        chain.append(name)
        name = get_stage(name).parent_of(getattr(config, name))
    return chain


def _model_name(source: str | None, config) -> str:
    """What an export of run `source` ships, in a sentence: the student, or the teacher named
    by its family (`VGG16`)."""
    chain = _lineage(source, config)
    if get_stage("student").name in chain:
        return "student"
    from vgg_mobile.models.architectures import ARCHITECTURES

    teacher = ARCHITECTURES.get(config.teacher.model.architecture)
    return teacher.family.upper() if teacher and teacher.family else "teacher"


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
        if stage.kind == "export" and stage.enabled(settings):
            feeding.update(_lineage(stage.parent_of(settings), config))
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
    if any(row.get("quantization_aware") for row in rows):
        notes.append(QAT_LATENCY_NOTE)
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


def class_recall_lines(rows: list[dict], worst: int = WORST_CLASSES) -> list[str]:
    """One sentence per shipped model: its per-class recall on the held-out images, the
    `worst` classes first, each with its image count, and the range of the others.

    The shipped models are the first exported file of each export stage with per-class
    figures (the benchmark's); when no exported file has them (the benchmark did not run),
    the Keras runs the exports are made from, on their own validation images, said so.

    Args:
        rows: `summary_rows`.
        worst: How many classes to name. Defaults to `WORST_CLASSES`.

    Returns:
        The sentences; empty when no row has per-class figures.
    """
    chosen, stages = [], set()
    for row in rows:
        if row["format"] != "keras" and row.get("per_class") and row["stage"] not in stages:
            chosen.append(row)
            stages.add(row["stage"])
    if not chosen:
        chosen = [row for row in rows if row["format"] == "keras" and row.get("per_class")
                  and row.get("feeds_export", True)]
    lines = []
    for row in chosen:
        how = ("measured by the benchmark" if row.get("measured_by") == "benchmark"
               else "its validation images")
        if row["format"] == "keras":
            how += "; the Keras run, not an exported file"
        per_class = row["per_class"]
        images = sum(m["support"] for m in per_class.values())
        # Ties by name, so the same figures give the same sentence.
        order = sorted(per_class.items(), key=lambda item: (item[1]["recall"], item[0]))
        named = ", ".join(f"{name!r} {m['recall']:.3f} ({m['support']} images)"
                          for name, m in order[:worst])
        rest = order[worst:]
        others = ("" if not rest else
                  f"; the other {len(rest)} class{'es' if len(rest) > 1 else ''} "
                  f"{rest[0][1]['recall']:.3f} to {rest[-1][1]['recall']:.3f}")
        lines.append(f"Per-class recall of the {row['artifact']} on {images} held-out images "
                     f"({how}), worst first: {named}{others}.")
    return lines


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
            "per_class": class_recall(manifest.metrics) or None,
            "size_bytes": model.stat().st_size if model.is_file() else 0,
            "gzip_bytes": recorded.get("gzip_bytes"), "latency_ms": None, "speedup": None,
            "budget": "-", "misses": [], "measured_by": "stage",
            "quantization_aware": manifest.quantization_aware, "model": None, "flavour": None}


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
        The sentences; empty when the student stage has not run, or had no baseline and
        no unlabelled images.
    """
    del config  # the sentences come from the student's manifest alone
    manifest = read_manifest(Path(out) / get_stage("student").name)
    if manifest is None:
        return []
    unlabeled = manifest.unlabeled
    extra = [] if unlabeled is None else [
        f"The distilled student also learnt from {unlabeled['images']} unlabelled images, "
        f"through the teacher's answers alone ({unlabeled['duplicates']} left out as copies of "
        f"labelled or held-out images, {unlabeled['unreadable']} unreadable); the student "
        "trained alone saw none of them."]
    baseline, teacher = manifest.section("baseline"), manifest.section("teacher")
    if not baseline or "shipped" not in baseline:
        return extra
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
    return lines + extra


def _export_rows(folder: Path, stage, settings, model: str) -> list[dict]:
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
                     "agreement": check.get("top1_agreement"), "per_class": None,
                     "size_bytes": artifact.size_bytes, "gzip_bytes": artifact.get("gzip_bytes"),
                     "latency_ms": None, "speedup": None,
                     "budget": "fail" if misses else "pass", "misses": misses,
                     "measured_by": "stage", "quantization_aware": False, "model": model,
                     "flavour": artifact.flavour})
    return rows


# The criteria of the choice, in the order the sentences name them.
CRITERIA = ("accuracy", "size", "latency")


@dataclasses.dataclass(frozen=True)
class ShipChoice:
    """What to ship: the exported files no other one beats on every criterion at once.

    Attributes:
        front: The Pareto front over accuracy (up), size (down) and latency (down), or
            accuracy and size alone when latency was not measured for every file; in the
            order of the rows.
        best: The best file on each criterion (`accuracy`, `size`, `latency` when measured).
        sentences: One per file that is best on something, comparing it with the other best
            ones; the last one says when latency was not measured.
        latency_measured: Whether latency took part.
    """

    front: tuple[dict, ...]
    best: dict[str, dict]
    sentences: tuple[str, ...]
    latency_measured: bool


def ship_name(row: dict) -> str:
    """An exported file as a sentence names it: `the VGG16 int8 TFLite`, `the student TF.js`."""
    kind = {"tflite": f"{row.get('flavour')} TFLite", "onnx": f"{row.get('flavour')} ONNX",
            "tfjs": "TF.js"}.get(row["format"], row["format"])
    return f"the {row.get('model') or row['stage']} {kind}"


def _axes(row: dict, latency: bool) -> tuple[float, ...]:
    """A row's criteria as numbers where smaller is better."""
    return (-row["accuracy"], row["size_bytes"], *((row["latency_ms"],) if latency else ()))


def _dominates(a: tuple, b: tuple) -> bool:
    return all(x <= y for x, y in zip(a, b)) and a != b


def _compare(a: dict, b: dict, latency: bool) -> str:
    """`a` against `b`: "1.9 points more accurate, 1.4x slower and 1.1 MB larger"."""
    points = round((a["accuracy"] - b["accuracy"]) * 100, 1)
    parts = [f"{abs(points):.1f} points {'more' if points > 0 else 'less'} accurate"
             if points else "as accurate"]
    if latency:
        ratio = a["latency_ms"] / b["latency_ms"]
        parts.append(f"{ratio:.1f}x slower" if round(ratio, 1) > 1 else
                     f"{1 / ratio:.1f}x faster" if round(1 / ratio, 1) > 1 else "as fast")
    change = (a["size_bytes"] - b["size_bytes"]) / 1e6
    amount = f"{abs(change):.1f} MB" if abs(change) >= 0.1 else f"{abs(change) * 1000:.0f} kB"
    parts.append(f"{amount} {'larger' if change > 0 else 'smaller'}"
                 if round(abs(change) * 1000) else "the same size")
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def what_to_ship(rows: list[dict]) -> ShipChoice:
    """The choice among the shipped files: the best on accuracy, on size and on latency.

    Candidates are the exported files (TFLite, ONNX, TF.js) with an accuracy and a size
    that meet their budgets; latency is the runtime that ships them (the benchmark's LiteRT,
    ONNX Runtime or TF.js figure) and counts only when every candidate has one. Ties go to
    the earlier row (stage order).

    Args:
        rows: `summary_rows`, or rows with the same keys.

    Returns:
        A `ShipChoice`; empty when no exported file has an accuracy.
    """
    candidates = [row for row in rows if row["format"] != "keras" and row.get("budget") != "fail"
                  and row.get("accuracy") is not None and row.get("size_bytes")]
    latency = bool(candidates) and all(row.get("latency_ms") for row in candidates)
    axes = [_axes(row, latency) for row in candidates]
    front = tuple(row for row, mine in zip(candidates, axes)
                  if not any(_dominates(other, mine) for other in axes))
    if not front:
        return ShipChoice((), {}, (), latency)
    best = {}
    for k, criterion in enumerate(CRITERIA[:3 if latency else 2]):
        # The criterion first, then the others in order: the best is on the front.
        order = (k, *(j for j in range(len(axes[0])) if j != k))
        best[criterion] = min(front, key=lambda row: tuple(_axes(row, latency)[j] for j in order))
    winners: dict[int, list[str]] = {}
    for criterion, row in best.items():
        winners.setdefault(id(row), []).append(criterion)
    by_id = {id(row): row for row in front}
    sentences = []
    if len(winners) == 1:
        row = best[CRITERIA[0]]
        criteria = " and ".join(best) if len(best) < 3 else "accuracy, size and latency"
        sentences.append(f"Best on {criteria}: {ship_name(row)}, with no trade-off to make.")
    for key, criteria in winners.items() if len(winners) > 1 else ():
        row = by_id[key]
        others = [by_id[other] for other in winners if other != key]
        sentence = "; ".join(f"{_compare(row, other, latency)} than {ship_name(other)}"
                             for other in others)
        sentences.append(f"Best on {' and '.join(criteria)}: {ship_name(row)} is {sentence}.")
    if not latency:
        why = ("for every exported file" if any(row.get("latency_ms") for row in candidates)
               else "(the benchmark did not run)")
        sentences.append(f"Latency was not measured {why}: the choice is on accuracy and size "
                         "only.")
    return ShipChoice(front, best, tuple(sentences), latency)
