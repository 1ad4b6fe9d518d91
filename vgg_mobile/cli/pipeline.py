"""`vgg-mobile pipeline` and `benchmark`: every stage, and every artifact measured."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from vgg_mobile.cli.common import default, invocation, log, offline_option
from vgg_mobile.pipeline.config import load_config


@click.command("pipeline")
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Output folder: one folder per stage, the Android assets, the report.")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="TOML file of stage settings, applied over the preset (see --print-config).")
@click.option("--preset", default=default(load_config, "preset"), show_default=True,
              help="sample: 32 px teacher, minutes on 2 cores, no pretrained weights; real: "
                   "224 px, ImageNet weights for teacher and student (from the Keras cache, "
                   "downloaded into it when missing unless --offline).")
@click.option("--unlabeled", type=click.Path(path_type=Path), metavar="DIR",
              help="Folder of images without labels that the student also learns from (sets "
                   "[student] unlabeled; a relative path is read from the working directory, "
                   "as DATA is).")
@click.option("--print-config", is_flag=True, help="Print the preset's settings as commented TOML and exit.")
@click.option("--force", is_flag=True, help="Redo every stage, even finished ones.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No Keras progress output.")
@offline_option
@click.pass_context
def pipeline_cmd(ctx, data, out, config_path, preset, unlabeled, print_config, force, as_json,
                 quiet, offline):
    """Run every stage on DATA: teacher, pruned, pruned_qat, student, student_qat, export
    (TFLite, ONNX, Android), teacher_export (the compressed teacher the same way),
    web_export (TF.js), web_demo, benchmark; then write the report, which ends with what to
    ship. Re-running resumes after the last finished stage."""
    from vgg_mobile.pipeline.config import default_config_toml
    from vgg_mobile.pipeline.runner import run_pipeline
    from vgg_mobile.reporting.report import format_ship, format_summary, write_report
    from vgg_mobile.pipeline.summary import (class_recall_lines, findings, table_notes,
                                             what_to_ship)

    config = load_config(config_path, preset)
    if unlabeled is not None:
        config = dataclasses.replace(
            config, student=dataclasses.replace(config.student, unlabeled=str(unlabeled)))
    if print_config:
        click.echo(default_config_toml(preset))
        return
    if data is None or out is None:
        raise click.UsageError("DATA and --out are required (unless --print-config)")
    ctx.meta["resume_hint"] = (f"resume with: {invocation()} pipeline {data} --out {out}"
                               + (f" --config {config_path}" if config_path else "")
                               + (f" --preset {preset}" if preset != default(load_config, "preset")
                                  else "")
                               + (f" --unlabeled {unlabeled}" if unlabeled is not None else ""))
    result = run_pipeline(data, out, config, force=force, log=log,
                          verbose=0 if quiet or as_json else (1 if sys.stderr.isatty() else 2),
                          offline=offline)
    report = write_report(out, config)
    log(f"report: {report['html']}")
    if as_json:
        click.echo(json.dumps({"out": str(result.out_dir), "summary": list(result.summary),
                               "stages": [{"name": s.name, "status": s.status,
                                           "seconds": round(s.seconds, 1)} for s in result.stages],
                               "notes": table_notes(list(result.summary)),
                               "findings": findings(out, config),
                               "class_recall": class_recall_lines(list(result.summary)),
                               "what_to_ship": list(what_to_ship(list(result.summary)).sentences),
                               "report": report}, indent=2))
        return
    click.echo(format_summary(result.summary))
    for line in findings(out, config) + class_recall_lines(list(result.summary)):
        click.echo(line)
    teacher = (f", {out / 'teacher_export'} (the compressed teacher: TFLite, ONNX), "
               f"{out / 'teacher_android'} (its Android assets)"
               if (out / "teacher_export").is_dir() else "")
    click.echo(f"\nartifacts: {out / 'export'} (TFLite, ONNX), {out / 'android'} (Android)"
               f"{teacher}, {out / 'web_export'} (TF.js)")
    click.echo(f"report: {report['html']}")
    if (out / "web_demo").is_dir():
        click.echo(f"open the web demo with: {invocation()} serve {out / 'web_demo'}")
    # Last: the choice the developer has to make.
    ship = format_ship(result.summary)
    if ship:
        click.echo("\n" + ship)


# --- benchmark command ---


@click.command("benchmark")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help="Timed single-image runs per artifact (median reported).  [default: the "
                   "[benchmark] section of OUT/pipeline.toml]")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for TensorFlow and LiteRT (TF.js in Node has one).  [default: as "
                   "--repeats]")
@click.option("--images", type=click.IntRange(min=1), default=None,
              help="At most this many held-out images per artifact.  [default: as --repeats]")
@click.option("--data", type=click.Path(path_type=Path),
              help="The image folder, if it moved since the pipeline ran.")
@click.option("--output", type=click.Path(path_type=Path),
              help="Folder for benchmark.json and benchmark.md.  [default: OUT/benchmark]")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No per-artifact progress lines.")
def benchmark_cmd(out, repeats, threads, images, data, output, as_json, quiet):
    """Measure every artifact of a pipeline output OUT in one process: accuracy, top-1
    agreement with its parent, size, gzip size, single-image latency and speed-up against the
    float teacher. Writes OUT/benchmark/benchmark.json and benchmark.md."""
    import dataclasses

    from vgg_mobile.pipeline.config import load_pipeline_config
    from vgg_mobile.pipeline.sections import BenchmarkConfig
    from vgg_mobile.reporting import benchmark

    config = load_pipeline_config(out).benchmark if out.is_dir() else BenchmarkConfig()
    changes = {k: v for k, v in (("repeats", repeats), ("threads", threads), ("images", images))
               if v is not None}
    result = benchmark.benchmark_pipeline(out, dataclasses.replace(config, **changes),
                                          output_dir=output, data_dir=data,
                                          log=(lambda m: None) if quiet else log)
    if as_json:
        click.echo(json.dumps({**result.info, "rows": list(result.rows)}, indent=2))
        return
    click.echo(benchmark.format_benchmark(list(result.rows), result.info))
    click.echo(f"\nwrote {result.markdown_path} and {result.json_path}")
