"""The pipeline's report: `report.md` and a self-contained `report.html` (opens offline).

Everything is read back from the pipeline folder (manifests, PNGs, the state file and the
benchmark's measurements, through `pipeline.summary`), so a report can be rewritten from a
finished pipeline folder without running any model: `write_report(OUT)`.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from vgg_mobile.core.budgets import Budgets
from vgg_mobile.core.io import atomic_path, write_text
from vgg_mobile.pipeline.config import PipelineConfig, load_pipeline_config
from vgg_mobile.pipeline.stages import STAGES, get_stage
from vgg_mobile.pipeline.state import REPORT_FILES
from vgg_mobile.pipeline.summary import findings, summary_rows
from vgg_mobile.reporting.tables import Column, html_table, markdown_table, megabytes, number

ASSETS = REPORT_FILES[2]
TITLE = "vgg-mobile pipeline report"
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th.text, td.text { text-align: left; }
img { max-width: 100%; }
.fail { color: #b00; font-weight: bold; } .pass { color: #070; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""

# The summary table (`pipeline.summary.summary_rows`), as the report and `vgg-mobile pipeline`
# show it.
SUMMARY_COLUMNS: tuple[Column, ...] = (
    Column("artifact", lambda row: row["artifact"], numeric=False),
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
    "export's section ([export] or [web_export]: max_size, min_agreement, max_accuracy_drop).")


def format_summary(rows) -> str:
    """The summary rows as a Markdown table (what `vgg-mobile pipeline` prints)."""
    return markdown_table(SUMMARY_COLUMNS, rows)


def _manifest(path: Path) -> dict:
    file = path / "manifest.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def _artifacts_png(rows, budgets: Budgets, path: Path) -> bool:
    """Accuracy against size and against single-image latency, one point per artifact."""
    from vgg_mobile.evaluation.plots import _pyplot

    points = [r for r in rows if r["accuracy"] is not None and r["size_bytes"]]
    if not points:
        return False
    timed = [r for r in points if r.get("latency_ms")]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(12 if timed else 8, 4.5), squeeze=False)
    axes = axes[0]
    # Legends, not labels beside the points: artifacts of one model sit on top of each other.
    for row in points:
        marker = "s" if row["format"] != "keras" else "o"
        for ax, key, scale in ((axes[0], "size_bytes", 1e-6), *(((axes[1], "latency_ms", 1),) if timed else ())):
            if row.get(key) is None:
                continue
            ax.scatter(row[key] * scale, row["accuracy"], marker=marker, s=60, alpha=0.8,
                       label=row["artifact"])
            if row["budget"] == "fail":
                ax.scatter(row[key] * scale, row["accuracy"], marker="x", s=140, color="red",
                           label="misses a budget")
    if budgets.max_size is not None:
        axes[0].axvline(budgets.max_size / 1e6, color="red", linestyle="--",
                        label=f"size budget {budgets.max_size / 1e6:g} MB")
    budget_note = ("" if budgets.min_agreement is None
                   else f"; agreement budget {budgets.min_agreement:g}")
    axes[0].set_xlabel("size (MB, log scale)")
    axes[0].set_title("size" + budget_note, fontsize=9)
    if timed:
        axes[1].set_xlabel("ms per image (log scale)")
        axes[1].set_title("single-image latency", fontsize=9)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def _figures(out: Path, source: str) -> tuple[list[tuple[str, Path]], list[tuple[str, Path, dict]]]:
    """Training curves as (title, png) pairs, drawing what the runs did not draw themselves, and
    (stage, confusion matrix png, per-class metrics) of the teacher and the exported run."""
    from vgg_mobile.evaluation import plots

    assets = out / ASSETS
    assets.mkdir(exist_ok=True)
    curves = []
    for stage in STAGES:
        if stage.curves is None:
            continue
        own = out / stage.name / "training_curves.png"
        if own.is_file():
            curves.append((stage.curves, own))
            continue
        history = (_manifest(out / stage.name).get("compression") or {}).get("history")
        if history:
            png = assets / f"{stage.name}_curves.png"
            plots.training_curves_png(history, png)
            curves.append((stage.curves, png))
    # The teacher and the exported run: where the class errors start, and where they end up.
    evaluated = []
    for stage in dict.fromkeys((get_stage("teacher").name, source)):
        manifest = _manifest(out / stage)
        metrics = manifest.get("metrics") or {}
        if not metrics.get("confusion_matrix"):
            continue
        png = assets / f"{stage}_confusion_matrix.png"
        plots.confusion_matrix_png(metrics["confusion_matrix"], manifest["classes"], png)
        evaluated.append((stage, png, metrics.get("per_class") or {}))
    return curves, evaluated


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
    config = config or load_pipeline_config(out)
    rows = summary_rows(out, config)
    source = config.export.source
    budgets = config.export.options.budgets
    curves, evaluated = _figures(out, source)
    chart = out / ASSETS / "size_accuracy.png"
    has_chart = _artifacts_png(rows, budgets, chart)
    misses = [miss for row in rows for miss in row["misses"]]
    web = (f" the web demo's TF.js bundle, from the `{config.web_export.source}` run, is in "
           "`web_export/`." if config.web_export.enabled else "")
    intro = f"Exported model: the `{source}` run (`{source}/`), converted into `export/`;{web}"

    said = findings(out, config)
    md = [f"# {TITLE}", "", intro, "", *([*said, ""] if said else []),
          "## Artifacts", "", _COLUMNS_NOTE, "", format_summary(rows), ""]
    if misses:
        md += ["Missed budgets:", "", *(f"- {miss}" for miss in misses), ""]
    if has_chart:
        md += ["## Size, latency and accuracy", "",
               f"![size, latency and accuracy]({ASSETS}/size_accuracy.png)", ""]
    md += ["## Training curves", ""]
    md += [f"### {title}\n\n![{title}]({png.relative_to(out).as_posix()})\n" for title, png in curves]
    for stage, png, per_class in evaluated:
        md += [f"## Confusion matrix and per-class metrics: {stage} (validation images)", "",
               f"![{stage} confusion matrix]({png.relative_to(out).as_posix()})", "",
               markdown_table(_PER_CLASS_COLUMNS, per_class.items()), ""]
    md_path = out / REPORT_FILES[0]
    write_text(md_path, "\n".join(md))

    def img(png: Path, alt: str) -> str:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    esc = html.escape
    web_html = (f" the web demo's TF.js bundle, from the <code>{esc(config.web_export.source)}</code> "
                "run, is in <code>web_export/</code>." if config.web_export.enabled else "")
    body = [f"<h1>{esc(TITLE)}</h1>",
            f"<p>Exported model: the <code>{esc(source)}</code> run, converted into "
            f"<code>export/</code>;{web_html}</p>", *(f"<p>{esc(line)}</p>" for line in said),
            "<h2>Artifacts</h2>", f"<p>{esc(_COLUMNS_NOTE)}</p>",
            html_table(SUMMARY_COLUMNS, rows)]
    if misses:
        body += ["<p>Missed budgets:</p>", "<ul>", *(f'<li class="fail">{esc(m)}</li>' for m in misses),
                 "</ul>"]
    if has_chart:
        body += ["<h2>Size, latency and accuracy</h2>", img(chart, "size, latency and accuracy")]
    body.append("<h2>Training curves</h2>")
    for title, png in curves:
        body += [f"<h3>{esc(title)}</h3>", img(png, title)]
    for stage, png, per_class in evaluated:
        body += [f"<h2>Confusion matrix and per-class metrics: {esc(stage)} (validation images)</h2>",
                 img(png, f"{stage} confusion matrix"), html_table(_PER_CLASS_COLUMNS, per_class.items())]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(TITLE)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    html_path = out / REPORT_FILES[1]
    write_text(html_path, page)
    return {"md": str(md_path), "html": str(html_path)}
