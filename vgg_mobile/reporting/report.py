"""The pipeline's report: `report.md` and a self-contained `report.html` (opens offline).

The tables and curves are read back from the pipeline folder (manifests, PNGs, the state file
and the benchmark's measurements, through `pipeline.summary`). Two parts run models, on the
held-out images of the data folder the teacher's manifest records: the shipped int8 TFLite in
LiteRT, for its confusion matrix and per-class metrics (`shipped_predictions`), Grad-CAM of
the Keras teacher and float student (`gradcam_examples`), and what test-time augmentation would
have given those two Keras models (`tta_rows`). When any of them cannot run, the report says
why and keeps the rest. So a finished pipeline folder, with its data folder in place, is
enough to write the report again: `write_report(OUT)`.

The report is described once, as a list of blocks (`report_blocks`: headings, paragraphs,
tables, images), and rendered twice: `render_markdown` and `render_html`.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
from pathlib import Path

import numpy as np

from vgg_mobile.core.budgets import Budgets
from vgg_mobile.core.errors import VggMobileError
from vgg_mobile.core.io import write_text
from vgg_mobile.core.export_dir import load_export
from vgg_mobile.core.run_dir import read_manifest
from vgg_mobile.pipeline.config import PipelineConfig, load_pipeline_config
from vgg_mobile.pipeline.stages import STAGES, get_stage
from vgg_mobile.pipeline.state import REPORT_FILES
from vgg_mobile.pipeline.summary import (ShipChoice, class_recall_lines, findings, ship_name,
                                         summary_rows, table_notes, what_to_ship)
from vgg_mobile.reporting.tables import Column, html_table, markdown_table, megabytes, number

ASSETS = REPORT_FILES[2]
TITLE = "vgg-mobile pipeline report"
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; overflow-wrap: anywhere; }
table { border-collapse: collapse; overflow-wrap: normal; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th.text, td.text { text-align: left; }
/* A wide table scrolls inside its own box: the page itself never scrolls sideways on a phone. */
.table { overflow-x: auto; margin: 1rem 0; }
/* Figures are shown at their natural width (their text is sized for it) when the page is that
   wide, and shrink to the page on a narrower screen. */
.figure { margin: 1rem 0; } .figure img { max-width: 100%; height: auto; display: block; }
.caption { font-size: 0.9rem; color: #444; }
.fail { color: #b00; font-weight: bold; } .pass { color: #070; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""

# The summary table (`pipeline.summary.summary_rows`), as the report and `vgg-mobile pipeline`
# show it.
SUMMARY_COLUMNS: tuple[Column, ...] = (
    Column("artifact", lambda row: row["artifact"] + ("" if row.get("feeds_export", True)
                                                      else " (not shipped)"), numeric=False),
    Column("accuracy", lambda row: number(row["accuracy"])),
    Column("images", lambda row: "-" if row.get("images") is None else str(row["images"])),
    Column("agreement", lambda row: number(row["agreement"])),
    Column("size", lambda row: megabytes(row["size_bytes"])),
    Column("gzip", lambda row: megabytes(row.get("gzip_bytes"))),
    Column("latency", lambda row: number(row.get("latency_ms"), "{:.2f} ms")),
    Column("vs teacher", lambda row: number(row.get("speedup"), "{:.1f}x")),
    Column("budget", lambda row: row["budget"], numeric=False,
           css_class=lambda row: row["budget"] if row["budget"] in ("pass", "fail") else None),
)
_PER_CLASS_COLUMNS: tuple[Column, ...] = (
    Column("class", lambda item: item[0], numeric=False),
    Column("precision", lambda item: f"{item[1]['precision']:.3f}"),
    Column("recall", lambda item: f"{item[1]['recall']:.3f}"),
    Column("F1", lambda item: f"{item[1]['f1']:.3f}"),
    Column("images", lambda item: str(item[1]["support"])),
)

_COLUMNS_NOTE = (
    "Accuracy on the held-out images (images: how many; every row of the pipeline's defaults "
    "is measured on all of them); agreement: top-1 agreement with the artifact it was made "
    "from; latency: median single-image time with one thread, and the speed-up against the float "
    "teacher measured in the same process (benchmark/benchmark.md); budget: the budgets of the "
    "export's section ([export], [teacher_export] or [web_export]: max_size, min_agreement, "
    "max_accuracy_drop).")


# Grad-CAM examples: at most this many the shipped model gets wrong, and as many it gets right.
GRADCAM_IMAGES = 3
GRADCAM_SEED = 0
_GRADCAM_COLUMNS: tuple[Column, ...] = (
    Column("#", lambda item: str(item["index"])),
    Column("image", lambda item: item["file"], numeric=False),
    Column("true", lambda item: item["true"], numeric=False),
    Column("shipped int8 TFLite", lambda item: item["predicted"], numeric=False),
    Column("shipped right", lambda item: "yes" if item["correct"] else "no", numeric=False,
           css_class=lambda item: "pass" if item["correct"] else "fail"),
    Column("teacher explains", lambda item: item["teacher_explains"], numeric=False),
    Column("student explains", lambda item: item["student_explains"], numeric=False),
)


TTA_TITLE = "Test-time augmentation"


def _tta_columns(rows: list[dict]) -> tuple[Column, ...]:
    counts = {row["num_views"] for row in rows}
    views = f" ({counts.pop()} views)" if len(counts) == 1 else ""
    return (Column("Keras model", lambda row: row["model"], numeric=False),
            Column("single pass", lambda row: number(row["single_pass_accuracy"])),
            Column(f"with TTA{views}", lambda row: number(row["accuracy"])),
            Column("images", lambda row: str(row["num_images"])),
            Column("views", lambda row: ", ".join(row["views"]), numeric=False))


def tta_rows(out: Path, config: PipelineConfig, shipped: dict | str) -> list[dict]:
    """What test-time augmentation (`evaluation.tta`, default views; the mirror only for a
    model trained with flips) would have given the Keras teacher and the float student the
    shipped file was made from, on the held-out images of `shipped_predictions` (the
    benchmark's). Only these two models: each view costs a forward pass per image.

    Returns:
        One `metrics.tta_summary` dict per model, with `model` (its label) and `stage`.
    """
    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.evaluation.metrics import tta_summary
    from vgg_mobile.evaluation.tta import TTA, predict_views, resolve_flip
    from vgg_mobile.reporting.benchmark import benchmark_images

    if isinstance(shipped, dict):
        teacher, examples = shipped["teacher"], shipped["examples"]
    else:
        teacher, examples, _ = benchmark_images(out, None, config.benchmark.images)
    student = _float_parent(out, config, config.export.source)
    runs = [("float teacher", teacher)]
    if student != teacher.path.name:
        runs.append((f"float {student}", load_run(out / student)))
    tta, rows = TTA(), []
    for label, run in runs:
        flip, why = resolve_flip(tta, run.manifest)
        probs, labels = predict_views(run.load_model(), examples, run.image_size,
                                      len(run.classes), flip, tta.crop)
        rows.append({"model": f"{label} ({run.path.name}/)", "stage": run.path.name,
                     **tta_summary(probs, labels, run.classes, flip, why, tta.crop)})
    return rows


def tta_lines(rows: list[dict]) -> list[str]:
    """The sentence above the TTA table: what was measured, on how many images, at what cost."""
    images = {row["num_images"] for row in rows}
    counted = (f"the same {images.pop()} held-out images" if len(images) == 1
               else "their held-out images")
    return [f"What test-time augmentation (TTA) would have given the Keras models on {counted}: "
            "the probabilities averaged over views of each image (the image, shifted crops "
            "resized back, and the mirror only for a model trained with flips). It costs one "
            "forward pass per view; the shipped files stay single-pass."]


def _summary_blocks(rows) -> list[Block]:
    """The summary table, then its notes (`pipeline.summary.table_notes`)."""
    return [Table(SUMMARY_COLUMNS, rows),
            *(Paragraph(note, css="note") for note in table_notes(rows))]


def format_summary(rows) -> str:
    """The summary rows as a Markdown table, then its notes (`pipeline.summary.table_notes`):
    what `vgg-mobile pipeline` prints."""
    return render_markdown(_summary_blocks(rows))


SHIP_TITLE = "What to ship"
# The per-class recall of the shipped files (`pipeline.summary.class_recall_lines`): the small
# class an overall accuracy hides.
RECALL_TITLE = "Per-class recall"


def ship_lines(choice: ShipChoice) -> list[str]:
    """The choice among the shipped files (`pipeline.summary.what_to_ship`) as plain lines:
    the Pareto front, then one sentence per best file. Empty when nothing was exported."""
    if not choice.front:
        return []
    axes = "accuracy, size and latency" if choice.latency_measured else "accuracy and size"
    return [f"No exported file beats these on {axes} at once: "
            + ", ".join(ship_name(row) for row in choice.front) + ".", *choice.sentences]


def _ship_blocks(rows) -> list[Block]:
    """A heading, then `ship_lines`; none when nothing was exported."""
    lines = ship_lines(what_to_ship(list(rows)))
    return [Heading(2, SHIP_TITLE, "ship"), *(Paragraph(line) for line in lines)] if lines else []


def format_ship(rows) -> str:
    """The what-to-ship section as Markdown (a heading, then `ship_lines`); `""` when nothing
    was exported: what `vgg-mobile pipeline` prints last."""
    return render_markdown(_ship_blocks(rows))


# Marker per format; a Keras model is drawn hollow: it is measured, never shipped.
_MARKERS = {"keras": "o", "tflite": "s", "onnx": "D", "tfjs": "^"}


def chart_points(rows) -> dict[str, list[dict]]:
    """The rows each panel of `artifacts_figure` would draw: `size` (the exported files, the
    only ones a size budget applies to) and `latency` (every artifact timed)."""
    measured = [r for r in rows if r["accuracy"] is not None]
    return {"size": [r for r in measured if r["format"] != "keras" and r["size_bytes"]],
            "latency": [r for r in measured if r.get("latency_ms")]}


def chart_gaps(rows) -> list[str]:
    """Why a panel of `artifacts_figure` is not drawn, one sentence each (fewer than
    `MIN_CHART_POINTS` points: the table above already says all they would)."""
    from vgg_mobile.evaluation.plots import MIN_CHART_POINTS

    what = {"size": ("accuracy against file size", "exported file"),
            "latency": ("accuracy against latency", "timed artifact")}
    gaps = []
    for panel, points in chart_points(rows).items():
        if len(points) < MIN_CHART_POINTS:
            title, thing = what[panel]
            gaps.append(f"No chart of {title}: {len(points)} {thing}{'' if len(points) == 1 else 's'}"
                        f", fewer than {MIN_CHART_POINTS}; the table above has "
                        f"{'it' if len(points) == 1 else 'them'}.")
    return gaps


def _limits(values, log: bool, pad: float = 0.12) -> tuple[float, float]:
    """Axis limits around `values` with `pad` of the span on each side (in log space for a log
    axis), so that no marker or label sits on the frame."""
    values = [math.log10(v) if log else v for v in values]
    low, high = min(values), max(values)
    span = (high - low) or (0.3 if log else 0.05)
    low, high = low - pad * span, high + pad * span
    return (10 ** low, 10 ** high) if log else (low, high)


def _artifacts_png(rows, budgets: Budgets, path: Path) -> bool:
    """Draws `artifacts_figure` to a PNG; `False` (and no file) when there is nothing to draw."""
    from vgg_mobile.evaluation.plots import save_png

    fig = artifacts_figure(rows, budgets)
    if fig is None:
        path.unlink(missing_ok=True)  # a chart from an earlier report would be shown stale
        return False
    save_png(fig, path, bbox_inches="tight")
    return True


def artifacts_figure(rows, budgets: Budgets):
    """Accuracy against size (exported files, with the size budget) and against single-image
    latency (every artifact, the Keras models hollow: not shipped), one numbered point per
    artifact, the numbers keyed in a legend below the axes.

    A panel with fewer than `MIN_CHART_POINTS` points is left out (`chart_gaps` says why);
    `None` when both are.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    from vgg_mobile.evaluation.plots import (LEGEND_FONT_SIZE, MIN_CHART_POINTS, _pyplot,
                                             log_ticks, number_label, place_labels)

    panels = [(name, points) for name, points in chart_points(rows).items()
              if len(points) >= MIN_CHART_POINTS]
    if not panels:
        return None
    plt = _pyplot()
    # About the report's text width at 100 dpi, so the page shows it at its natural size.
    fig, axes = plt.subplots(1, len(panels), figsize=(4.55 * len(panels), 4), squeeze=False)
    axes = axes[0]
    drawn = [r for r in rows if any(r is p for _, points in panels for p in points)]
    number = {id(r): k + 1 for k, r in enumerate(drawn)}
    colours = plt.get_cmap("tab10" if len(drawn) <= 10 else "tab20")
    colour = {id(r): colours(k % colours.N) for k, r in enumerate(drawn)}
    missed = False
    for ax, (panel, points) in zip(axes, panels):
        key, scale, unit = (("size_bytes", 1e-6, "MB") if panel == "size"
                            else ("latency_ms", 1.0, "ms"))
        xy = [(r[key] * scale, r["accuracy"]) for r in points]
        budget = (budgets.max_size / 1e6 if panel == "size" and budgets.max_size is not None
                  else None)
        for r, (x, y) in zip(points, xy):
            hollow = r["format"] == "keras"
            ax.scatter(x, y, marker=_MARKERS[r["format"]], s=60, linewidths=1.5, zorder=3,
                       facecolors="none" if hollow else colour[id(r)],
                       edgecolors=colour[id(r)])
            if r["budget"] == "fail":
                # A ring around it, not a cross on it: the point stays visible.
                missed = True
                ax.scatter(x, y, marker="o", s=260, facecolors="none", edgecolors="red",
                           linewidths=1.5, zorder=4)
        ax.set_xscale("log")
        ax.set_xlim(*_limits([x for x, _ in xy] + ([budget] if budget else []), log=True))
        ax.set_ylim(*_limits([y for _, y in xy], log=False))
        if budget:
            ax.axvline(budget, color="red", linestyle="--", zorder=1)
        ticks = log_ticks(*ax.get_xlim())
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _, u=unit: f"{number_label(v)} {u}"))
        counts = {r.get("images") for r in points}
        ax.set_ylabel(f"accuracy on {counts.pop()} held-out images"
                      if len(counts) == 1 and None not in counts else "held-out accuracy")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9)
        if panel == "size":
            ax.set_xlabel("file size (log scale)")
            ax.set_title("exported files: accuracy against size" + (
                f"\n(red dashes: the {budget:g} MB size budget)" if budget else ""), fontsize=10)
        else:
            ax.set_xlabel("single-image latency, one thread (log scale)")
            ax.set_title("every artifact: accuracy against latency\n(hollow: Keras, not shipped)",
                         fontsize=10)
    fig.tight_layout()
    # Numbers beside the points, not names: artifacts of one model sit close together.
    for ax, (panel, points) in zip(axes, panels):
        key, scale = ("size_bytes", 1e-6) if panel == "size" else ("latency_ms", 1.0)
        budget = budgets.max_size / 1e6 if panel == "size" and budgets.max_size else None
        place_labels(ax, [(r[key] * scale, r["accuracy"]) for r in points],
                     [str(number[id(r)]) for r in points], avoid_x=[budget] if budget else [],
                     marker_radius=9 if any(r["budget"] == "fail" for r in points) else 6)
    handles = [Line2D([], [], linestyle="none", marker=_MARKERS[r["format"]], markersize=8,
                      markerfacecolor="none" if r["format"] == "keras" else colour[id(r)],
                      markeredgecolor=colour[id(r)],
                      label=f"{number[id(r)]}: {r['artifact']}"
                            + (" (Keras, not shipped)" if r["format"] == "keras" else ""))
               for r in drawn]
    if missed:
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=14,
                              markerfacecolor="none", markeredgecolor="red",
                              label="red ring: misses a budget"))
    # Below the axes, at a fixed size: it stays readable however many artifacts there are.
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=2 if len(panels) > 1 else 1, fontsize=LEGEND_FONT_SIZE, frameon=False)
    return fig


def shipped_predictions(out: Path, config: PipelineConfig) -> dict | str:
    """The `[export]` stage's int8 `.tflite` run in LiteRT on the held-out images every
    artifact is benchmarked on (`reporting.benchmark`: the teacher's held-out split, at most
    `[benchmark] images`, drawn from every class in turn).

    Returns:
        `{"file", "examples", "labels", "predicted", "probs", "metrics", "classes", "split",
        "teacher"}`, or why it could not run (a sentence): no export, no int8 file, no data.
    """
    from vgg_mobile import runtimes
    from vgg_mobile.data.dataset import load_images
    from vgg_mobile.evaluation.metrics import classification_metrics
    from vgg_mobile.reporting.benchmark import benchmark_images

    folder = out / get_stage("export").name
    try:
        export = load_export(folder)
    except VggMobileError as err:
        return str(err)
    found = export.find("tflite", "int8")
    if not found:
        return f"{export.manifest_path}: no int8 TFLite file recorded"
    try:
        path = export.file(found[0])
        data = path.read_bytes()
        teacher, examples, split = benchmark_images(out, None, config.benchmark.images)
        runtime = runtimes.load(data, "tflite")
        x, labels = load_images(examples, runtime.image_size, len(teacher.classes))
        probs = runtime.predict(x)
    except (VggMobileError, OSError, ValueError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    return {"file": path.relative_to(out).as_posix(), "examples": list(examples),
            "labels": np.asarray(labels), "predicted": probs.argmax(1), "probs": probs,
            "metrics": classification_metrics(probs, labels, teacher.classes),
            "classes": teacher.classes, "split": split, "teacher": teacher}


def shipped_label(shipped: dict) -> str:
    return f"shipped int8 TFLite (LiteRT), {len(shipped['labels'])} images"


def _float_parent(out: Path, config: PipelineConfig, stage: str) -> str:
    """The first run from `stage` up its parent chain that is not quantization-aware."""
    seen = stage
    while stage and _quantization_aware(out / stage):
        stage = get_stage(stage).parent_of(getattr(config, stage))
    return stage or seen


def _quantization_aware(run_path: Path) -> bool:
    manifest = read_manifest(run_path)
    return bool(manifest and manifest.quantization_aware)


def _choose(examples, picked: list[int], limit: int) -> list[int]:
    """At most `limit` of the indices `picked`, stratified across classes, seeded."""
    from vgg_mobile.data.splits import stratified_sample

    index = {examples[i]: i for i in picked}
    return [index[e] for e in stratified_sample([examples[i] for i in picked], limit,
                                                seed=GRADCAM_SEED)]


def gradcam_examples(out: Path, config: PipelineConfig, shipped: dict, path: Path) -> list[dict]:
    """Draws where the Keras teacher and the float student look on a few held-out images the
    shipped model gets wrong and a few it gets right (`GRADCAM_IMAGES` each): one figure,
    one row per image (image, teacher's Grad-CAM overlay, student's).

    Returns:
        One dict per image, in the figure's order: `index` (its row), `file`, `true`,
        `predicted` (the shipped model's answer), `correct`, `teacher_explains`,
        `student_explains` (the class each Grad-CAM map explains: that model's own answer),
        plus `student_stage` and the `layer`s. Empty when there is nothing to draw.
    """
    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.data.dataset import load_images
    from vgg_mobile.evaluation import gradcam, plots

    examples, labels, predicted = shipped["examples"], shipped["labels"], shipped["predicted"]
    classes = shipped["classes"]
    wrong = [i for i in range(len(labels)) if predicted[i] != labels[i]]
    right = [i for i in range(len(labels)) if predicted[i] == labels[i]]
    chosen = _choose(examples, wrong, GRADCAM_IMAGES) + _choose(examples, right, GRADCAM_IMAGES)
    if not chosen:
        return []
    student_stage = _float_parent(out, config, config.export.source)
    picked = [examples[i] for i in chosen]
    maps = {}
    for name, run in (("teacher", shipped["teacher"]), ("student", load_run(out / student_stage))):
        x, _ = load_images(picked, run.image_size, len(classes))
        result = gradcam.gradcam(run.load_model(), x)
        maps[name] = (x, result)
    rows, listed = [], []
    for k, i in enumerate(chosen):
        true, answer = classes[int(labels[i])], classes[int(predicted[i])]
        explains = {name: classes[int(result["classes"][k])] for name, (_, result) in maps.items()}
        overlays = [(gradcam.overlay(x[k], result["heatmaps"][k]),
                     f"{'teacher' if name == 'teacher' else f'float {student_stage}'}: "
                     f"explains {explains[name]}") for name, (x, result) in maps.items()]
        state = "right" if predicted[i] == labels[i] else "WRONG"
        rows.append({"image": np.clip(maps["teacher"][0][k], 0, 255).astype(np.uint8),
                     "title": f"#{k + 1} true {true}; shipped: {answer} ({state})",
                     "overlays": overlays})
        listed.append({"index": k + 1, "file": Path(examples[i].path).name, "true": true,
                       "predicted": answer, "correct": bool(predicted[i] == labels[i]),
                       "teacher_explains": explains["teacher"],
                       "student_explains": explains["student"], "student_stage": student_stage,
                       "layers": {name: result["layer"] for name, (_, result) in maps.items()}})
    plots.gradcam_grid_png(rows, path)
    return listed


def _gradcam_caption(listed: list[dict], shipped: dict) -> str:
    student = listed[0]["student_stage"]
    layers = listed[0]["layers"]
    wrong = sum(not item["correct"] for item in listed)
    return (f"Where the models look (Grad-CAM) on {wrong} held-out images the shipped int8 "
            f"TFLite gets wrong and {len(listed) - wrong} it gets right (at most "
            f"{GRADCAM_IMAGES} each, drawn in turn from every class, seed {GRADCAM_SEED}; "
            f"{shipped_label(shipped)}). Each row: the image, the Keras teacher's Grad-CAM "
            f"(layer {layers['teacher']}), and the Keras float `{student}` run's "
            f"(layer {layers['student']}): the run the shipped model was made from, before "
            "quantization-aware training and conversion; the int8 file itself has no gradients "
            "to explain. Each map explains the class that model answers; its colours run from "
            "dark blue (ignored, 0) through green and yellow to dark red (looked at most, 1), "
            "as the colour bar under the figure shows.")


def _few_epochs(history: dict) -> str:
    from vgg_mobile.evaluation.plots import MIN_CHART_POINTS

    epochs = max(map(len, history.values()))
    where = ("" if any(key.startswith("val_") for key in history)
             else " (on the training images: this stage recorded no validation per epoch)")
    return (f"{epochs} epoch{'' if epochs == 1 else 's'}: too few points for a curve "
            f"(fewer than {MIN_CHART_POINTS}), so the values per epoch{where}:")


def _matrix_columns(classes) -> tuple[Column, ...]:
    """A confusion matrix's counts as a table: one row per true class, `(name, counts)`."""
    return (Column("true \\ predicted", lambda item: item[0], numeric=False),
            *(Column(name, lambda item, j=j: str(item[1][j])) for j, name in enumerate(classes)))


def _count(metrics: dict) -> int:
    return sum(c.get("support", 0) for c in (metrics.get("per_class") or {}).values())


def _history(path: Path) -> dict[str, list[float]]:
    """A run's per-epoch metrics: a compression run's manifest has them, the teacher's and the
    student's `history.json` (the student's under `distillation`)."""
    manifest = read_manifest(path)
    history = manifest.section("compression").get("history") if manifest else None
    file = path / "history.json"
    if not history and file.is_file():
        history = json.loads(file.read_text(encoding="utf-8"))
        history = history.get("distillation", history) if isinstance(history, dict) else {}
    return {key: values for key, values in (history or {}).items()
            if isinstance(values, list) and values}


def _epoch_columns(history: dict) -> tuple[Column, ...]:
    return (Column("epoch", lambda item: str(item[0])),
            *(Column(key, lambda item, key=key: number(item[1].get(key))) for key in history))


def _epoch_rows(history: dict) -> list[tuple[int, dict]]:
    epochs = max(len(values) for values in history.values())
    return [(k + 1, {key: values[k] for key, values in history.items() if k < len(values)})
            for k in range(epochs)]


def _figures(out: Path, source: str, shipped: dict | str
             ) -> tuple[list[tuple[str, Path | None, dict]], list[tuple[str, Path, dict]]]:
    """Training curves as (title, png, history) triples, drawing what the runs did not draw
    themselves (`png` is `None` below `MIN_CHART_POINTS` epochs: the report lists the values),
    and (label, confusion matrix png, metrics, classes) of the teacher and the shipped model
    (`shipped_predictions`; the exported run's Keras metrics, labelled so, when it could not
    run)."""
    from vgg_mobile.evaluation import plots

    assets = out / ASSETS
    assets.mkdir(exist_ok=True)
    curves = []
    for stage in STAGES:
        if stage.curves is None:
            continue
        own = out / stage.name / "training_curves.png"
        history = _history(out / stage.name)
        if history and max(map(len, history.values())) < plots.MIN_CHART_POINTS:
            curves.append((stage.curves, None, history))
        elif own.is_file():
            curves.append((stage.curves, own, history))
        elif history:
            png = assets / f"{stage.name}_curves.png"
            plots.training_curves_png(history, png)
            curves.append((stage.curves, png, history))
    # The teacher and the shipped model: where the class errors start, and where they end up.
    evaluated = []
    teacher = get_stage("teacher").name
    manifest = read_manifest(out / teacher)
    metrics = manifest.metrics if manifest else {}
    if metrics.get("confusion_matrix"):
        label = f"{teacher} (Keras run, {_count(metrics)} validation images)"
        png = assets / f"{teacher}_confusion_matrix.png"
        plots.confusion_matrix_png(metrics["confusion_matrix"], list(manifest.classes), png, label)
        evaluated.append((label, png, metrics, list(manifest.classes)))
    if isinstance(shipped, dict):
        label = f"{source}, exported as the {shipped_label(shipped)}"
        png = assets / "shipped_int8_confusion_matrix.png"
        metrics = shipped["metrics"]
        plots.confusion_matrix_png(metrics["confusion_matrix"], shipped["classes"], png,
                                   shipped_label(shipped))
        evaluated.append((label, png, metrics, shipped["classes"]))
    elif source != teacher:
        manifest = read_manifest(out / source)
        metrics = manifest.metrics if manifest else {}
        if metrics.get("confusion_matrix"):
            # Not the shipped file's: said so in the heading.
            label = (f"{source} (Keras run, {_count(metrics)} validation images; not the "
                     f"shipped int8 TFLite, which could not be run: {shipped})")
            png = assets / f"{source}_confusion_matrix.png"
            plots.confusion_matrix_png(metrics["confusion_matrix"], list(manifest.classes), png,
                                       f"Keras {source} run")
            evaluated.append((label, png, metrics, list(manifest.classes)))
    return curves, evaluated


# The report as a list of blocks, written once and rendered twice: to Markdown
# (`render_markdown`) and to a self-contained HTML page (`render_html`).


@dataclasses.dataclass(frozen=True)
class Heading:
    level: int
    text: str
    id: str | None = None  # the HTML anchor


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text. `css`: its HTML class; `code`: `backticks` become `<code>` in
    HTML; `only`: `"md"` or `"html"` for a paragraph one of the two outputs leaves out."""

    text: str
    css: str | None = None
    code: bool = False
    only: str | None = None


@dataclasses.dataclass(frozen=True)
class Lines:
    """Sentences one after another: one Markdown paragraph, a line each; a `<p>` each in HTML."""

    lines: list[str]


@dataclasses.dataclass(frozen=True)
class Bullets:
    items: list[str]
    css: str | None = None  # each item's HTML class


@dataclasses.dataclass(frozen=True)
class Table:
    columns: tuple[Column, ...]
    rows: list


@dataclasses.dataclass(frozen=True)
class Image:
    png: Path
    alt: str


Block = Heading | Paragraph | Lines | Bullets | Table | Image


def _markdown_block(block: Block, folder: Path | None) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Lines):
        return "\n".join(block.lines)
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        return markdown_table(block.columns, block.rows)
    return f"![{block.alt}]({block.png.relative_to(folder).as_posix()})"


def render_markdown(blocks: list[Block], folder: Path | None = None) -> str:
    """The blocks as Markdown, a blank line between two, no trailing newline; images are linked
    relative to `folder` (where the Markdown file is)."""
    return "\n\n".join(_markdown_block(block, folder) for block in blocks
                       if getattr(block, "only", None) != "html")


def _attribute(name: str, value: str | None) -> str:
    return f' {name}="{html.escape(value)}"' if value else ""


def _inline_code(text: str) -> str:
    """`text` escaped for HTML, each span between two backticks in `<code>`."""
    return "".join(f"<code>{html.escape(part)}</code>" if k % 2 else html.escape(part, quote=False)
                   for k, part in enumerate(text.split("`")))


def _html_block(block: Block) -> str:
    esc = html.escape
    if isinstance(block, Heading):
        return f"<h{block.level}{_attribute('id', block.id)}>{esc(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        text = _inline_code(block.text) if block.code else esc(block.text)
        return f"<p{_attribute('class', block.css)}>{text}</p>"
    if isinstance(block, Lines):
        return "\n".join(f"<p>{esc(line)}</p>" for line in block.lines)
    if isinstance(block, Bullets):
        return "\n".join(["<ul>", *(f"<li{_attribute('class', block.css)}>{esc(item)}</li>"
                                    for item in block.items), "</ul>"])
    if isinstance(block, Table):
        return f'<div class="table">{html_table(block.columns, block.rows)}</div>'
    data = base64.b64encode(block.png.read_bytes()).decode("ascii")
    return (f'<div class="figure"><img alt="{esc(block.alt)}" '
            f'src="data:image/png;base64,{data}"></div>')


def render_html(blocks: list[Block]) -> str:
    """The blocks as a self-contained HTML page: text escaped, PNGs embedded as data URIs."""
    body = "\n".join(_html_block(block) for block in blocks
                     if getattr(block, "only", None) != "md")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(TITLE)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + body + "\n</body></html>\n")


def _intro_blocks(out: Path, config: PipelineConfig) -> list[Block]:
    """The title, what was exported where, and the findings (`pipeline.summary.findings`)."""
    source = config.export.source
    beside = (f" the `{config.teacher_export.source}` run, converted into `teacher_export/`, "
              "ships beside it;" if config.teacher_export.enabled else "")
    web = (f" the web demo's TF.js bundle, from the `{config.web_export.source}` run, is in "
           "`web_export/`." if config.web_export.enabled else "")
    rest = f", converted into `export/`;{beside}{web}"
    said = findings(out, config)
    # The Markdown also names the run's folder, a link's worth in a file viewer.
    return [Heading(1, TITLE),
            Paragraph(f"Exported model: the `{source}` run (`{source}/`){rest}", only="md"),
            Paragraph(f"Exported model: the `{source}` run{rest}", code=True, only="html"),
            *([Lines(said)] if said else [])]


def _artifacts_blocks(rows) -> list[Block]:
    """The summary table, its notes, and the budgets the rows miss."""
    misses = [miss for row in rows for miss in row["misses"]]
    blocks = [Heading(2, "Artifacts"), Paragraph(_COLUMNS_NOTE), *_summary_blocks(rows)]
    if misses:
        blocks += [Paragraph("Missed budgets:"), Bullets(misses, css="fail")]
    return blocks


def _recall_blocks(rows) -> list[Block]:
    recalls = class_recall_lines(rows)
    return [Heading(2, RECALL_TITLE, "recall"), *(Paragraph(line) for line in recalls)
            ] if recalls else []


def _tta_blocks(out: Path, config: PipelineConfig, shipped: dict | str) -> list[Block]:
    try:
        augmented = tta_rows(out, config, shipped)
    except (VggMobileError, OSError, ValueError, RuntimeError) as err:
        # A measurement beside the shipped files: say why it is missing, keep the rest.
        return [Paragraph(f"Test-time augmentation not measured: {type(err).__name__}: {err}")]
    if not augmented:
        return []
    return [Heading(2, TTA_TITLE, "tta"), *(Paragraph(line) for line in tta_lines(augmented)),
            Table(_tta_columns(augmented), augmented)]


def _chart_blocks(out: Path, rows, budgets: Budgets) -> list[Block]:
    chart = out / ASSETS / "size_accuracy.png"
    has_chart = _artifacts_png(rows, budgets, chart)
    gaps = chart_gaps(rows)
    if not (has_chart or gaps):
        return []
    return [Heading(2, "Size, latency and accuracy"), *(Paragraph(gap) for gap in gaps),
            *([Image(chart, "size, latency and accuracy")] if has_chart else [])]


def _figure_blocks(curves, evaluated) -> list[Block]:
    """The training curves (or their values, below `MIN_CHART_POINTS` epochs) and the
    confusion matrices with their per-class metrics (`_figures`)."""
    blocks = [Heading(2, "Training curves")]
    for title, png, history in curves:
        blocks.append(Heading(3, title))
        blocks += ([Image(png, title)] if png else
                   [Paragraph(_few_epochs(history)),
                    Table(_epoch_columns(history), _epoch_rows(history))])
    for label, png, metrics, classes in evaluated:
        blocks += [Heading(2, f"Confusion matrix and per-class metrics: {label}"),
                   Image(png, f"confusion matrix: {label}"),
                   Table(_matrix_columns(classes), list(zip(classes, metrics["confusion_matrix"]))),
                   Table(_PER_CLASS_COLUMNS, list((metrics.get("per_class") or {}).items()))]
    return blocks


def _gradcam_blocks(out: Path, config: PipelineConfig, shipped: dict | str) -> list[Block]:
    if not isinstance(shipped, dict):
        return []
    png = out / ASSETS / "gradcam.png"
    try:
        explained = gradcam_examples(out, config, shipped, png)
    except (VggMobileError, OSError, ValueError) as err:
        # The rest of the report does not depend on it: say why it is missing.
        return [Paragraph(f"Grad-CAM not drawn: {type(err).__name__}: {err}")]
    if not explained:
        return []
    return [Heading(2, "Where the teacher and the student look (Grad-CAM)", "gradcam"),
            Paragraph(_gradcam_caption(explained, shipped), css="caption"),
            Image(png, "Grad-CAM of the teacher and the student"),
            Table(_GRADCAM_COLUMNS, explained)]


def report_blocks(out: Path, config: PipelineConfig) -> list[Block]:
    """The whole report as blocks, in order; runs the shipped file, Grad-CAM and TTA, and draws
    the PNGs under `OUT/report_files/` the blocks show."""
    rows = summary_rows(out, config)
    shipped = shipped_predictions(out, config)
    curves, evaluated = _figures(out, config.export.source, shipped)
    gradcam = _gradcam_blocks(out, config, shipped)
    tta = _tta_blocks(out, config, shipped)
    chart = _chart_blocks(out, rows, config.export.options.budgets)
    return [*_intro_blocks(out, config), *_artifacts_blocks(rows), *_recall_blocks(rows),
            *tta, *chart, *_figure_blocks(curves, evaluated), *gradcam,
            *_ship_blocks(rows)]  # last: the choice the developer has to make


def write_report(out_dir: str | Path, config: PipelineConfig | None = None) -> dict:
    """Writes `OUT/report.md` and a self-contained `OUT/report.html` from a pipeline folder.

    Args:
        out_dir: A pipeline output folder.
        config: The configuration it was made with (for the exported run and the budgets).
            Defaults to `OUT/pipeline.toml`'s.

    Returns:
        `{"md": path, "html": path}`.

    Raises:
        BadInputError: `OUT/pipeline.toml` is invalid.
    """
    out = Path(out_dir)
    blocks = report_blocks(out, config or load_pipeline_config(out))
    md_path, html_path = out / REPORT_FILES[0], out / REPORT_FILES[1]
    write_text(md_path, render_markdown(blocks, out) + "\n")
    write_text(html_path, render_html(blocks))
    return {"md": str(md_path), "html": str(html_path)}
