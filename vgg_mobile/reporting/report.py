"""The pipeline's report: `report.md` and a self-contained `report.html` (opens offline).

Everything is read back from the run directories' manifests and PNGs, so a report can be
rewritten from a finished pipeline folder without running any model.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from vgg_mobile.core.io import atomic_path, write_text

ASSETS = "report_files"
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
.fail { color: #b00; font-weight: bold; } .pass { color: #070; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


_COLUMNS_NOTE = (
    "Accuracy on the held-out images; agreement: top-1 agreement with the artifact it was made "
    "from; latency: median single-image time with one thread, and the speed-up against the float "
    "teacher measured in the same process (benchmark/benchmark.md); budget: the size and "
    "agreement budgets of [convert].")


def _manifest(path: Path) -> dict:
    file = path / "manifest.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def _artifacts_png(rows, max_size, min_agreement, path: Path) -> bool:
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
    if max_size is not None:
        axes[0].axvline(max_size / 1e6, color="red", linestyle="--",
                        label=f"size budget {max_size / 1e6:g} MB")
    budget_note = "" if min_agreement is None else f"; agreement budget {min_agreement:g}"
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
    for stage, title in (("teacher", "teacher training"), ("pruned", "pruning fine-tuning"),
                         ("pqat", "teacher QAT"), ("student", "student distillation"),
                         ("student_qat", "student QAT")):
        own = out / stage / "training_curves.png"
        if own.is_file():
            curves.append((title, own))
            continue
        history = (_manifest(out / stage).get("compression") or {}).get("history")
        if history:
            png = assets / f"{stage}_curves.png"
            plots.training_curves_png(history, png)
            curves.append((title, png))
    # The teacher and the exported run: where the class errors start, and where they end up.
    evaluated = []
    for stage in dict.fromkeys(("teacher", source)):
        manifest = _manifest(out / stage)
        metrics = manifest.get("metrics") or {}
        if not metrics.get("confusion_matrix"):
            continue
        png = assets / f"{stage}_confusion_matrix.png"
        plots.confusion_matrix_png(metrics["confusion_matrix"], manifest["classes"], png)
        evaluated.append((stage, png, metrics.get("per_class") or {}))
    return curves, evaluated


def write_report(out: str | Path, rows, source: str, max_size: int | None = None,
                 min_agreement: float | None = None) -> dict:
    """Writes `OUT/report.md` and a self-contained `OUT/report.html`.

    Args:
        out: A pipeline output folder.
        rows: The summary rows (`pipeline.summary_rows`).
        source: The stage whose run was exported (its metrics fill the per-class table).
        max_size: The size budget in bytes, marked on the chart. Defaults to `None`.
        min_agreement: The agreement budget, named on the chart. Defaults to `None`.

    Returns:
        `{"md": path, "html": path}`.
    """
    from vgg_mobile.pipeline.runner import SUMMARY_COLUMNS, format_summary, summary_cells

    out = Path(out)
    rows = list(rows)
    curves, evaluated = _figures(out, source)
    chart = out / ASSETS / "size_accuracy.png"
    has_chart = _artifacts_png(rows, max_size, min_agreement, chart)

    md = ["# vgg-mobile pipeline report", "",
          f"Exported model: the `{source}` run (`{source}/`), converted into `export/`; the "
          "web demo's TF.js bundle is in `web_export/`.", "",
          "## Artifacts", "", _COLUMNS_NOTE, "", format_summary(rows), ""]
    if has_chart:
        md += ["## Size, latency and accuracy", "",
               f"![size, latency and accuracy]({ASSETS}/size_accuracy.png)", ""]
    md += ["## Training curves", ""]
    md += [f"### {title}\n\n![{title}]({png.relative_to(out).as_posix()})\n" for title, png in curves]
    for stage, png, per_class in evaluated:
        md += [f"## Confusion matrix and per-class metrics: {stage} (validation images)", "",
               f"![{stage} confusion matrix]({png.relative_to(out).as_posix()})", "",
               "| class | precision | recall | F1 | images |", "|---|---:|---:|---:|---:|"]
        md += [f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
               for name, m in per_class.items()]
        md.append("")
    md_path = out / "report.md"
    write_text(md_path, "\n".join(md))

    def img(png: Path, alt: str) -> str:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    esc = html.escape
    table = ["<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in SUMMARY_COLUMNS) + "</tr>"]
    for row in rows:
        *cells, budget = summary_cells(row)
        table.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells)
                     + f"<td class=\"{esc(budget)}\">{esc(budget)}</td></tr>")
    table.append("</table>")
    body = ["<h1>vgg-mobile pipeline report</h1>",
            f"<p>Exported model: the <code>{esc(source)}</code> run, converted into "
            "<code>export/</code>.</p>", "<h2>Artifacts</h2>", f"<p>{esc(_COLUMNS_NOTE)}</p>", *table]
    if has_chart:
        body += ["<h2>Size, latency and accuracy</h2>", img(chart, "size, latency and accuracy")]
    body.append("<h2>Training curves</h2>")
    for title, png in curves:
        body += [f"<h3>{esc(title)}</h3>", img(png, title)]
    for stage, png, per_class in evaluated:
        body += [f"<h2>Confusion matrix and per-class metrics: {esc(stage)} (validation images)</h2>",
                 img(png, f"{stage} confusion matrix"),
                 "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
                 "<th>images</th></tr>"]
        body += [f"<tr><td>{esc(name)}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
                 f"<td>{m['f1']:.3f}</td><td>{m['support']}</td></tr>" for name, m in per_class.items()]
        body.append("</table>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>vgg-mobile pipeline report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    html_path = out / "report.html"
    write_text(html_path, page)
    return {"md": str(md_path), "html": str(html_path)}
