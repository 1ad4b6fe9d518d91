"""`vgg-mobile explain`: Grad-CAM heatmaps of a run's model over images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vgg_mobile.cli.common import default, log
from vgg_mobile.evaluation.gradcam import ExplainOptions


@click.command("explain")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder to create for the heatmaps.")
@click.option("--layer", default=default(ExplainOptions, "layer"),
              help="Feature-map layer to explain at. Default: the last convolution block's output.")
@click.option("--label", default=default(ExplainOptions, "label"),
              help="Explain this class for every image. Default: each image's top-1 answer.")
@click.option("--scale", default=default(ExplainOptions, "scale"), show_default=True,
              type=click.IntRange(1, 16),
              help="Enlarge the written PNGs this many times.")
@click.option("--force", is_flag=True, help="Replace --out if an earlier explain wrote it.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
def explain_cmd(run, images, out, layer, label, scale, force, as_json):
    """Write Grad-CAM heatmaps of run RUN's model over IMAGES: where it looks for its answer.

    Each image is read and resized as in training; OUT/NNN_NAME.png shows it beside the
    heatmap over it, and OUT/manifest.json the class each map explains.
    """
    from vgg_mobile.evaluation.gradcam import explain_images

    report = explain_images(run, images, out, ExplainOptions(layer=layer, label=label, scale=scale),
                            force=force, command=["vgg-mobile", *sys.argv[1:]], log=log)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for entry in report["images"]:
        click.echo(f"{entry['file']}: {entry['top1']} {entry['probability']:.3f}; heatmap of "
                   f"{entry['explained']} at layer {report['layer']}")
    click.echo(f"wrote {out}")
