"""`vgg-mobile convert` and `inspect`: verified TFLite / TF.js exports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vgg_mobile.converters.convert import ONNX_FLAVOURS, ConvertOptions
from vgg_mobile.core.export_dir import export_from_json
from vgg_mobile.cli.common import COUNT, default, fraction, log


def _size_text(size: int | None) -> str:
    """A size in bytes as --max-size is written: `10MB` rather than `10000000`."""
    if size is None:
        return "none"
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


@click.command("convert")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Export folder to create.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Images for int8 calibration and verification. Defaults to the run's training folder.")
@click.option("--flavour", "flavours", multiple=True,
              type=click.Choice(["float32", "float16", "dynamic", "int8", "all"]),
              help="TFLite flavour; repeat for several. Default: "
                   f"{' and '.join(default(ConvertOptions, 'flavours'))}.")
@click.option("--io-dtype", default=default(ConvertOptions, "io_dtype"), show_default=True,
              type=click.Choice(["uint8", "int8", "float32"]), help="Input/output type of the int8 model.")
@click.option("--sparse", default=default(ConvertOptions, "sparse"), show_default=True,
              type=click.Choice(["auto", "always", "never"]),
              help="Sparse weight encoding: auto keeps whichever file is smaller.")
@click.option("--tfjs/--no-tfjs", default=default(ConvertOptions, "tfjs"), show_default=True,
              help="Also write a TF.js graph model.")
@click.option("--tfjs-quantization", default=default(ConvertOptions, "tfjs_quantization"),
              show_default=True,
              type=click.Choice(["uint8", "float16", "none"]))
@click.option("--onnx/--no-onnx", default=default(ConvertOptions, "onnx"), show_default=True,
              help="Also write ONNX models for ONNX Runtime: float32 (tf2onnx) and int8 (QDQ).")
@click.option("--onnx-flavour", "onnx_flavours", multiple=True, type=click.Choice(ONNX_FLAVOURS),
              help="With --onnx, the ONNX model to write; repeat for both. Default: "
                   f"{' and '.join(default(ConvertOptions, 'onnx_flavours'))}.")
@click.option("--android", "android_dir", type=click.Path(path_type=Path), default=None,
              help="Also write Android assets (model, labels, README) to this folder.")
@click.option("--max-size", default=_size_text(default(ConvertOptions, "max_size")),
              show_default=True,
              help="Size budget of each artifact, e.g. 10MB, 2.5MiB, or none.")
@click.option("--min-agreement", callback=fraction,
              default=default(ConvertOptions, "min_agreement"),
              help="Smallest top-1 agreement with the Keras model, e.g. 0.99 or 99%.")
@click.option("--max-accuracy-drop", callback=fraction,
              default=default(ConvertOptions, "max_accuracy_drop"),
              help="Largest accuracy loss against Keras, e.g. 0.01 or 1% (one point).")
@click.option("--verify-images", default=default(ConvertOptions, "verify_images"),
              show_default=True, type=COUNT,
              help="Held-out images per verification.")
@click.option("--name", default=default(ConvertOptions, "name"),
              help="Model name in the metadata and file names.")
@click.option("--model-version", default=default(ConvertOptions, "version"), show_default=True,
              help="Version in the metadata.")
@click.option("--author", default=default(ConvertOptions, "author"), show_default=True)
@click.option("--license", "license_", default=default(ConvertOptions, "license"),
              show_default=True)
@click.option("--force", is_flag=True, help="Replace --out (and --android) if they exist.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the export manifest as JSON on stdout; on a missed budget (exit 3), "
                   "the same figures with \"budget\": {\"passed\": false, ...}.")
@click.pass_context
def convert_cmd(ctx, run, out, data, flavours, io_dtype, sparse, tfjs, tfjs_quantization, onnx, onnx_flavours, android_dir,
                max_size, min_agreement, max_accuracy_drop, verify_images, name, model_version,
                author, license_, force, as_json):
    """Convert run RUN to verified TFLite models (with metadata), a TF.js bundle and ONNX models.

    Every artifact is run on held-out images and compared with the Keras model before anything
    is written. A missed budget exits with code 3 and writes nothing.
    """
    from vgg_mobile.converters.convert import convert_run, parse_size

    ctx.meta["json"] = as_json

    chosen = ("float32", "float16", "dynamic", "int8") if "all" in flavours else tuple(flavours)
    options = ConvertOptions(
        **({"flavours": chosen} if chosen else {}), io_dtype=io_dtype, sparse=sparse, tfjs=tfjs,
        tfjs_quantization=tfjs_quantization, onnx=onnx,
        **({"onnx_flavours": tuple(onnx_flavours)} if onnx_flavours else {}),
        max_size=parse_size(max_size),
        min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop,
        verify_images=verify_images, name=name, version=model_version, author=author,
        license=license_)
    manifest = convert_run(run, out, options, data_dir=data, android_dir=android_dir, force=force,
                           command=["vgg-mobile", *sys.argv[1:]], log=log)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    artifacts = export_from_json(out, manifest).artifacts
    width = max(len(a.file) for a in artifacts)
    click.echo(f"{'artifact':<{width}} {'MB':>7} {'gzip MB':>8} {'agree':>6} {'acc':>6} {'keras':>6}")
    for artifact in artifacts:
        check = artifact.verification
        click.echo(f"{artifact.file:<{width}} {artifact.size_bytes / 1e6:>7.2f} "
                   f"{artifact.get('gzip_bytes') / 1e6:>8.2f} {check['top1_agreement']:>6.3f} "
                   f"{check['accuracy']:>6.3f} {check['keras_accuracy']:>6.3f}")
    click.echo(f"wrote {out}" + (f" and {android_dir}" if android_dir else ""))


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON on stdout.")
def inspect_cmd(model, as_json):
    """Show a .tflite file's metadata, input/output tensors, size and weight sparsity."""
    from vgg_mobile.converters.inspection import inspect_tflite

    report = inspect_tflite(model)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{report['file']}: {report['size_bytes'] / 1e6:.2f} MB, "
               f"{report['weight_sparsity']['fraction']:.1%} of weights zero")
    for kind in ("inputs", "outputs"):
        for tensor in report[kind]:
            quant = tensor["quantization"]
            q = f", scale {quant['scale']:.6g} zero point {quant['zero_point']}" if quant else ""
            click.echo(f"{kind[:-1]:<6} {tensor['name']}: {tensor['shape']} {tensor['dtype']}{q}")
    meta = report["metadata"]
    if meta is None:
        click.echo("metadata: none")
        return
    click.echo(f"name: {meta.get('name')}  version: {meta.get('version')}  author: "
               f"{meta.get('author')}  license: {meta.get('license')}")
    click.echo(f"description: {meta.get('description')}")
    for name, text in report["associated_files"].items():
        labels = [line for line in text.splitlines() if line]
        click.echo(f"{name}: {len(labels)} labels: {', '.join(labels[:10])}"
                   + (" ..." if len(labels) > 10 else ""))
