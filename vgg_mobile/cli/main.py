"""The `vgg-mobile` command line: the only module that parses flags and talks to the terminal.

Exit codes: 0 success; 1 internal or environment error (e.g. disk full); 2 bad input (usage,
data, run directory, option values); 3 a size or accuracy budget was missed; 130 interrupted.
Progress goes to stderr, results to stdout (`--json` prints only JSON there).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import sys
import traceback
from pathlib import Path

import click

from vgg_mobile import __version__
from vgg_mobile.core.errors import VggMobileError

EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_BUDGET, EXIT_INTERRUPTED = 1, 2, 3, 130


def _log(message: str) -> None:
    click.echo(message, err=True)


class _Group(click.Group):
    """Turns the library's exceptions into one-line messages and exit codes."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VggMobileError as err:
            _log(f"error: {err}")
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            _log("interrupted" + (f"; {ctx.meta['resume_hint']}" if ctx.meta.get("resume_hint") else ""))
            sys.exit(EXIT_INTERRUPTED)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                _log(f"error: no space left on the device while writing {err.filename or 'output'}; "
                     "finished files were kept, the unfinished one was discarded")
            else:
                _log(f"error: {err.filename or ''}: {err.strerror or err}")
            if ctx.meta.get("debug"):
                traceback.print_exc()
            sys.exit(EXIT_INTERNAL)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - the last line of defence for a CLI
            _log(f"internal error: {type(err).__name__}: {err}")
            if ctx.meta.get("debug"):
                traceback.print_exc()
            else:
                _log("(run with --debug for the traceback)")
            sys.exit(EXIT_INTERNAL)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vgg-mobile")
@click.option("--debug", is_flag=True, help="Print tracebacks of internal errors.")
@click.pass_context
def main(ctx, debug):
    """Fine-tune VGG16 on a folder of labelled images and ship it to phones and browsers.

    Every command reads a data folder or a run directory and writes a new run directory
    (model, labels.txt, manifest.json).
    """
    ctx.meta["debug"] = debug


@main.command("sample-data")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--images-per-class", default=60, show_default=True, help="Images in each class.")
@click.option("--image-size", default=64, show_default=True, help="Side of each image in pixels.")
@click.option("--seed", default=0, show_default=True, help="The same seed writes the same files.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def sample_data_cmd(out, images_per_class, image_size, seed, force):
    """Write the built-in sample dataset (4 classes of shapes, JPEG and PNG) to OUT."""
    from vgg_mobile.data.sample import SAMPLE_CLASSES, write_sample_data

    write_sample_data(out, images_per_class, image_size, seed, overwrite=force)
    click.echo(f"wrote {len(SAMPLE_CLASSES) * images_per_class} images in "
               f"{len(SAMPLE_CLASSES)} classes ({', '.join(SAMPLE_CLASSES)}) to {out}")


def _weights_choice(weights: str, architecture: str) -> str:
    """`auto` means ImageNet weights if they are in the local Keras cache, else random."""
    from vgg_mobile.models.architectures import get_architecture, keras_cache_dir

    if weights != "auto":
        return weights
    cached = keras_cache_dir() / get_architecture(architecture).imagenet_file
    if cached.is_file():
        _log(f"using ImageNet weights from {cached}")
        return "imagenet"
    _log(f"no ImageNet weights at {cached}: training from scratch (--weights none)")
    return "none"


# --- distributed training options (train and distill) ---


def _distribute_options(command):
    """Adds --strategy, --mixed-precision and --jit-compile to a training command."""
    command = click.option(
        "--jit-compile", is_flag=True, help="Compile the training step with XLA.")(command)
    command = click.option(
        "--mixed-precision", is_flag=True,
        help="Train in mixed_float16 (fast on GPUs with compute capability >= 7.0; slow on "
             "CPUs); the last layers stay float32 and the saved model is float32.")(command)
    return click.option(
        "--strategy", default="auto", show_default=True,
        type=click.Choice(["auto", "default", "mirrored", "multi-worker"]),
        help="default: one device; mirrored: every GPU of this machine; multi-worker: the "
             "machines in TF_CONFIG; auto: multi-worker if TF_CONFIG names several workers, "
             "mirrored with several GPUs, else default. --batch-size is per replica: the "
             "global batch is batch-size x replicas, and the learning rate is multiplied by "
             "the replica count too (linear scaling), as the manifest records.")(command)


def _distribute_config(strategy, mixed_precision, jit_compile):
    from vgg_mobile.training.distribute import DistributeConfig

    return DistributeConfig(strategy=strategy, mixed_precision=mixed_precision,
                            jit_compile=jit_compile)


def _print_throughput(report) -> None:
    rows = [("input pipeline, first pass (decode, cache)", report.first_pass_images_per_second),
            ("input pipeline, cached and augmented", report.input_images_per_second),
            ("training step, batches in memory", report.step_images_per_second)]
    click.echo(f"strategy {report.strategy}, {report.replicas} replica(s), global batch "
               f"{report.global_batch}, {report.images} training images\n")
    click.echo("| stage | images/s |\n|---|---|")
    for name, rate in rows:
        click.echo(f"| {name} | {rate:,.1f} |")
    click.echo(f"\nlimited by: the {report.limited_by}")


@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def doctor_cmd(as_json):
    """Report versions, the devices TensorFlow sees, and whether the GPU path is active."""
    from vgg_mobile.training.doctor import diagnose

    report = diagnose()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"python {report['python']} on {report['platform']}")
    for name, version in report["packages"].items():
        click.echo(f"{name:<32}{version or 'not installed'}")
    tf_info = report["tensorflow"]
    click.echo(f"TensorFlow built with CUDA: {'yes' if tf_info['cuda_build'] else 'no'}"
               + (f" (CUDA {tf_info['cuda_version']}, cuDNN {tf_info['cudnn_version']})"
                  if tf_info["cuda_build"] else ""))
    click.echo(f"physical devices: {', '.join(report['devices']['physical'])}")
    click.echo(f"logical devices: {', '.join(report['devices']['logical'])}")
    cluster = report["cluster"]
    click.echo(cluster["error"] if "error" in cluster else
               f"TF_CONFIG: {cluster['workers']} worker(s), this task {cluster['task']}, "
               f"--strategy auto picks {cluster['auto_strategy']}")
    click.echo(report["hint"])


# --- end of distributed training options ---


@main.command("train")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Run directory to write (required, except with --data-benchmark).")
@click.option("--weights", default="auto", show_default=True,
              help="imagenet (from the local Keras cache, never downloaded), none, a path to an "
                   ".h5 backbone weights file, or auto (imagenet if cached, else none).")
@click.option("--architecture", default="vgg16", show_default=True, help="Teacher architecture.")
@click.option("--image-size", default=224, show_default=True, help="Input side in pixels (>= 32).")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--learning-rate", "--lr", "learning_rate", default=1e-4, show_default=True,
              help="Peak learning rate (warm-up, then cosine decay).")
@click.option("--warmup-epochs", default=1.0, show_default=True)
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--label-smoothing", default=0.1, show_default=True)
@click.option("--dropout", default=0.3, show_default=True)
@click.option("--head-units", default=256, show_default=True, help="Hidden units of the head (0: none).")
@click.option("--fine-tune", default="auto", show_default=True,
              type=click.Choice(["auto", "full", "feature-extraction", "last-blocks", "progressive"]),
              help="Which layers train: auto is full from scratch, progressive from pretrained weights.")
@click.option("--unfreeze-blocks", default=2, show_default=True,
              help="Backbone blocks trained by last-blocks and reached by progressive.")
@click.option("--val-fraction", default=0.2, show_default=True,
              help="Share of each class held out (folders without train/ and val/).")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-augment", is_flag=True, help="Turn off crop, flip and colour jitter.")
@click.option("--class-weights", is_flag=True, help="Weight the loss by inverse class frequency.")
@click.option("--strict", is_flag=True, help="Fail on any bad image instead of skipping it.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--force", is_flag=True, help="Replace a finished or interrupted run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No Keras progress output.")
@_distribute_options
@click.option("--data-benchmark", is_flag=True,
              help="Measure the input pipeline's images/s against the training step's (on "
                   "batches in memory), print which one limits training, and exit; writes nothing.")
@click.pass_context
def train_cmd(ctx, data, out, weights, architecture, image_size, epochs, batch_size, learning_rate,
              warmup_epochs, weight_decay, label_smoothing, dropout, head_units, fine_tune,
              unfreeze_blocks, val_fraction, seed, no_augment, class_weights, strict, resume,
              force, as_json, quiet, strategy, mixed_precision, jit_compile, data_benchmark):
    """Fine-tune (or train from scratch) a VGG16 classifier on the image folder DATA."""
    from vgg_mobile.training.hyperparameters import TrainConfig
    from vgg_mobile.models.architectures import ModelOptions
    from vgg_mobile.training.train import benchmark_throughput, train

    if out is None and not data_benchmark:
        raise click.UsageError("Missing option '--out'.")
    options = ModelOptions(architecture=architecture, image_size=image_size,
                           weights=_weights_choice(weights, architecture), dropout=dropout,
                           head_units=head_units)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         warmup_epochs=warmup_epochs, weight_decay=weight_decay,
                         label_smoothing=label_smoothing, fine_tune=fine_tune,
                         unfreeze_blocks=unfreeze_blocks, val_fraction=val_fraction, seed=seed,
                         augment=not no_augment, class_weights=class_weights, strict=strict)
    distribute = _distribute_config(strategy, mixed_precision, jit_compile)
    if data_benchmark:
        report = benchmark_throughput(data, options, config, distribute, log=_log)
        if as_json:
            click.echo(json.dumps({**dataclasses.asdict(report), "limited_by": report.limited_by},
                                  indent=2))
        else:
            _print_throughput(report)
        return
    command = ["vgg-mobile", *sys.argv[1:]]
    ctx.meta["resume_hint"] = (f"resume with: vgg-mobile train {data} --out {out} --resume "
                               "(and the same options)")
    result = train(data, out, options, config, resume=resume, force=force, command=command,
                   log=_log, verbose=0 if quiet or as_json else (1 if sys.stderr.isatty() else 2),
                   distribute=distribute)
    if not result.wrote_run:
        summary = {"run": None, "worker": result.distribution["written_by"],
                   "epochs": result.epochs_run, "resumed_from_epoch": result.resumed_from_epoch,
                   "weights_sha256": result.weights_sha256, "distribution": result.distribution}
        click.echo(json.dumps(summary, indent=2) if as_json else
                   f"{summary['worker']}: finished; the chief writes {result.run_dir}")
        return
    summary = {"run": str(result.run_dir), "epochs": result.epochs_run,
               "resumed_from_epoch": result.resumed_from_epoch,
               "images_per_second": round(result.images_per_second, 1),
               "val_accuracy": result.metrics.get("accuracy"),
               "val_top_k_accuracy": next((v for k, v in result.metrics.items()
                                           if k.startswith("top_")), None),
               "weights_sha256": result.weights_sha256, "distribution": result.distribution}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"run: {result.run_dir}\nval accuracy: {summary['val_accuracy']}\n"
                   f"training throughput: {summary['images_per_second']} images/s")


@main.command("evaluate")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Image folder.")
@click.option("--split", default="auto", show_default=True,
              type=click.Choice(["auto", "val", "train", "all"]),
              help="auto: the held-out images of the training folder, val/ of a pre-split "
                   "folder, or every image of another folder.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Report folder. Defaults to RUN/eval.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
def evaluate_cmd(run, data, split, out, batch_size, as_json):
    """Evaluate the model of run directory RUN on an image folder."""
    from vgg_mobile.evaluation.metrics import evaluate_run

    report = evaluate_run(run, data, split=split, out_dir=out, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    top_key = next(k for k in report if k.startswith("top_"))
    click.echo(f"{report['num_images']} images ({report['split']} split) of {report['data']}")
    click.echo(f"accuracy {report['accuracy']:.4f}  {top_key.replace('_', '-')} "
               f"{report[top_key]:.4f}  macro F1 {report['macro_f1']:.4f}")
    width = max(len(c) for c in report["classes"])
    click.echo(f"{'class':<{width}}  precision  recall  f1      support")
    for name, m in report["per_class"].items():
        click.echo(f"{name:<{width}}  {m['precision']:<9.3f}  {m['recall']:<6.3f}  "
                   f"{m['f1']:<6.3f}  {m['support']}")
    click.echo(f"report: {report['files']['metrics']}; confusion matrix: "
               f"{report['files']['confusion_matrix_png']}")


# --- converter commands ---


def _fraction(ctx, param, value):
    if value is None:
        return None
    text = str(value).strip()
    number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= number <= 1:
        raise click.BadParameter(f"must be between 0 and 1 (or 0% and 100%). Received: {value}")
    return number


@main.command("convert")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Export folder to create.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Images for int8 calibration and verification. Defaults to the run's training folder.")
@click.option("--flavour", "flavours", multiple=True,
              type=click.Choice(["float32", "float16", "dynamic", "int8", "all"]),
              help="TFLite flavour; repeat for several. Default: float16 and int8.")
@click.option("--io-dtype", default="uint8", show_default=True,
              type=click.Choice(["uint8", "int8", "float32"]), help="Input/output type of the int8 model.")
@click.option("--sparse", default="auto", show_default=True, type=click.Choice(["auto", "always", "never"]),
              help="Sparse weight encoding: auto keeps whichever file is smaller.")
@click.option("--tfjs/--no-tfjs", default=True, show_default=True, help="Also write a TF.js graph model.")
@click.option("--tfjs-quantization", default="uint8", show_default=True,
              type=click.Choice(["uint8", "float16", "none"]))
@click.option("--android", "android_dir", type=click.Path(path_type=Path), default=None,
              help="Also write Android assets (model, labels, README) to this folder.")
@click.option("--max-size", default="10MB", show_default=True,
              help="Size budget of each artifact, e.g. 10MB, 2.5MiB, or none.")
@click.option("--min-agreement", callback=_fraction, default=None,
              help="Smallest top-1 agreement with the Keras model, e.g. 0.99 or 99%.")
@click.option("--max-accuracy-drop", callback=_fraction, default=None,
              help="Largest accuracy loss against Keras, e.g. 0.01 or 1% (one point).")
@click.option("--verify-images", default=200, show_default=True, help="Held-out images per verification.")
@click.option("--name", default=None, help="Model name in the metadata and file names.")
@click.option("--model-version", default="1", show_default=True, help="Version in the metadata.")
@click.option("--author", default="vgg-mobile", show_default=True)
@click.option("--license", "license_", default="Apache-2.0", show_default=True)
@click.option("--force", is_flag=True, help="Replace --out (and --android) if they exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the export manifest as JSON on stdout.")
def convert_cmd(run, out, data, flavours, io_dtype, sparse, tfjs, tfjs_quantization, android_dir,
                max_size, min_agreement, max_accuracy_drop, verify_images, name, model_version,
                author, license_, force, as_json):
    """Convert run RUN to verified TFLite models (with metadata) and a TF.js bundle.

    Every artifact is run on held-out images and compared with the Keras model before anything
    is written. A missed budget exits with code 3 and writes nothing.
    """
    from converters.convert import ConvertOptions, convert_run, parse_size

    chosen = ("float32", "float16", "dynamic", "int8") if "all" in flavours else tuple(flavours)
    options = ConvertOptions(
        **({"flavours": chosen} if chosen else {}), io_dtype=io_dtype, sparse=sparse, tfjs=tfjs,
        tfjs_quantization=tfjs_quantization, max_size=parse_size(max_size),
        min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop,
        verify_images=verify_images, name=name, version=model_version, author=author,
        license=license_)
    manifest = convert_run(run, out, options, data_dir=data, android_dir=android_dir, force=force,
                           command=["vgg-mobile", *sys.argv[1:]], log=_log)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    width = max(len(a["file"]) for a in manifest["artifacts"])
    click.echo(f"{'artifact':<{width}} {'MB':>7} {'gzip MB':>8} {'agree':>6} {'acc':>6} {'keras':>6}")
    for artifact in manifest["artifacts"]:
        check = artifact["verification"]
        click.echo(f"{artifact['file']:<{width}} {artifact['size_bytes'] / 1e6:>7.2f} "
                   f"{artifact['gzip_bytes'] / 1e6:>8.2f} {check['top1_agreement']:>6.3f} "
                   f"{check['accuracy']:>6.3f} {check['keras_accuracy']:>6.3f}")
    click.echo(f"wrote {out}" + (f" and {android_dir}" if android_dir else ""))


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON on stdout.")
def inspect_cmd(model, as_json):
    """Show a .tflite file's metadata, input/output tensors, size and weight sparsity."""
    from converters.inspection import inspect_tflite

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


# --- compression commands ---


def _compression_summary(result, stage: str) -> dict:
    sizes = result.sizes
    return {"run": str(result.run_dir), "stage": stage,
            "val_accuracy": result.metrics.get("accuracy"),
            "parent_val_accuracy": result.parent_metrics.get("accuracy"),
            "sparsity": result.sparsity.get("total"),
            "pruned_layers_sparsity": result.sparsity.get("pruned_layers"),
            "layer_sparsity": result.sparsity.get("layers"), **sizes}


@main.command("prune")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Image folder to fine-tune on (the run's own folder reuses its split).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="New run directory to write.")
@click.option("--target-sparsity", default=0.5, show_default=True, type=float,
              help="Share of zero weights in each pruned kernel, in (0, 1).")
@click.option("--epochs", default=4, show_default=True, help="Fine-tuning epochs.")
@click.option("--end-epoch", default=None, type=float,
              help="Epoch at which the target is reached. Defaults to two thirds of --epochs.")
@click.option("--frequency", default=None, type=int,
              help="Steps between pruning updates. Defaults to about ten over the ramp.")
@click.option("--learning-rate", "--lr", "learning_rate", default=1e-4, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--skip-first-conv/--prune-first-conv", default=True, show_default=True,
              help="Leave the first convolution dense.")
@click.option("--skip-classifier/--prune-classifier", default=True, show_default=True,
              help="Leave the logits layer dense.")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace a finished run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def prune_cmd(run, data, out, target_sparsity, epochs, end_epoch, frequency, learning_rate,
              batch_size, skip_first_conv, skip_classifier, seed, force, as_json):
    """Prune the model of run directory RUN by weight magnitude while fine-tuning on DATA."""
    from vgg_mobile.compression.compress import PruneConfig, prune_run

    config = PruneConfig(target_sparsity=target_sparsity, epochs=epochs, end_epoch=end_epoch,
                         frequency=frequency, learning_rate=learning_rate, batch_size=batch_size,
                         skip_first_conv=skip_first_conv, skip_classifier=skip_classifier,
                         seed=seed)
    result = prune_run(run, data, out, config, force=force, command=["vgg-mobile", *sys.argv[1:]],
                       log=_log, verbose=0 if as_json else 2)
    summary = _compression_summary(result, "prune")
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"run: {result.run_dir}")
    click.echo(f"val accuracy: {summary['val_accuracy']} (before: {summary['parent_val_accuracy']})")
    click.echo(f"sparsity: {summary['pruned_layers_sparsity']:.1%} of the pruned layers, "
               f"{summary['sparsity']:.1%} of all conv/dense kernels")
    for name, fraction in summary["layer_sparsity"].items():
        click.echo(f"  {name:<24} {fraction:.1%}")
    click.echo(f"gzip size: {summary['gzip_bytes_before'] / 1e6:.2f} MB -> "
               f"{summary['gzip_bytes_after'] / 1e6:.2f} MB")


@main.command("qat")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Image folder to fine-tune on (the run's own folder reuses its split).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="New run directory to write.")
@click.option("--preserve-sparsity", is_flag=True,
              help="Keep the zeros of a pruned run (sparsity-preserving QAT).")
@click.option("--epochs", default=2, show_default=True, help="Fine-tuning epochs.")
@click.option("--learning-rate", "--lr", "learning_rate", default=1e-5, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace a finished run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def qat_cmd(run, data, out, preserve_sparsity, epochs, learning_rate, batch_size, seed, force,
            as_json):
    """Quantization-aware training of the model of run directory RUN on DATA (int8-ready)."""
    from vgg_mobile.compression.compress import QATConfig, qat_run

    config = QATConfig(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                       preserve_sparsity=preserve_sparsity, seed=seed)
    result = qat_run(run, data, out, config, force=force, command=["vgg-mobile", *sys.argv[1:]],
                     log=_log, verbose=0 if as_json else 2)
    summary = _compression_summary(result, "qat")
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"run: {result.run_dir}")
    click.echo(f"val accuracy: {summary['val_accuracy']} (before: {summary['parent_val_accuracy']})")
    click.echo(f"kernel sparsity: {summary['sparsity']:.1%}")


# --- distillation commands ---


@main.command("distill")
@click.option("--teacher", required=True, type=click.Path(path_type=Path),
              help="Run directory of the trained teacher (e.g. from `vgg-mobile train`).")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Image folder with exactly the teacher's classes (its own folder reuses its split).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Run directory to write the student to.")
@click.option("--student", default="mobilenet_v2_0.35", show_default=True,
              help="Student architecture: mobilenet_v2_{0.35,0.5,0.75,1.0}, mobilenet_v3_{small,large}.")
@click.option("--image-size", default=None, type=int,
              help="Student input side in pixels. Defaults to the teacher's.")
@click.option("--temperature", default=2.0, show_default=True, type=float,
              help="Softens teacher and student logits in the distillation term (> 0).")
@click.option("--alpha", default=0.5, show_default=True, type=float,
              help="Weight of the hard-label loss in [0, 1]; 1 - alpha weighs the teacher's.")
@click.option("--epochs", default=20, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--learning-rate", "--lr", "learning_rate", default=1e-2, show_default=True, type=float,
              help="Peak learning rate (warm-up, then cosine decay).")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-augment", is_flag=True, help="Turn off crop, flip and colour jitter.")
@click.option("--baseline", is_flag=True,
              help="Also train the same student without the teacher (same budget) and record the gain.")
@click.option("--force", is_flag=True, help="Replace a finished or interrupted run in --out.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --out after its last finished epoch.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No Keras progress output.")
@_distribute_options
@click.pass_context
def distill_cmd(ctx, teacher, data, out, student, image_size, temperature, alpha, epochs, batch_size,
                learning_rate, seed, no_augment, baseline, force, resume, as_json, quiet, strategy,
                mixed_precision, jit_compile):
    """Distill the teacher run into a small MobileNet student, saved as a plain run directory."""
    from vgg_mobile.distillation.distill import DistillConfig, distill

    config = DistillConfig(student=student, image_size=image_size, temperature=temperature,
                           alpha=alpha, epochs=epochs, batch_size=batch_size,
                           learning_rate=learning_rate, seed=seed, augment=not no_augment,
                           baseline=baseline)
    if force and resume:
        raise click.UsageError("--force and --resume exclude each other")
    ctx.meta["resume_hint"] = "resume with the same command and --resume"
    result = distill(teacher, data, out, config, force=force, resume=resume,
                     command=["vgg-mobile", *sys.argv[1:]],
                     log=_log, verbose=0 if quiet or as_json else (1 if sys.stderr.isatty() else 2),
                     distribute=_distribute_config(strategy, mixed_precision, jit_compile))
    if not result.wrote_run:
        summary = {"run": None, "worker": result.distribution["written_by"],
                   "weights_sha256": result.distribution["weights_sha256"],
                   "distribution": result.distribution}
        click.echo(json.dumps(summary, indent=2) if as_json else
                   f"{summary['worker']}: finished; the chief writes {result.run_dir}")
        return
    summary = {"run": str(result.run_dir), "student": config.student,
               "val_accuracy": result.metrics.get("accuracy"),
               "teacher_val_accuracy": result.teacher_metrics.get("accuracy"),
               "baseline_val_accuracy": (result.baseline_metrics or {}).get("accuracy"),
               "student_parameters": result.student_parameters,
               "teacher_parameters": result.teacher_parameters,
               "distribution": result.distribution}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"run: {result.run_dir}\nstudent ({config.student}) val accuracy: "
               f"{summary['val_accuracy']}\nteacher val accuracy: {summary['teacher_val_accuracy']}")
    if result.baseline_metrics is not None:
        click.echo(f"student trained alone: {summary['baseline_val_accuracy']}")
    click.echo(f"parameters: {result.student_parameters:,} "
               f"({result.student_parameters / result.teacher_parameters:.1%} of the teacher's)")


# --- web demo commands ---


@main.command("demo")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--model", "bundle", required=True, type=click.Path(path_type=Path),
              help="Export folder from `vgg-mobile convert` (or its tfjs/ bundle).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def demo_cmd(out, bundle, force):
    """Assemble a static in-browser demo folder OUT: page, vendored TensorFlow.js, model."""
    from vgg_mobile.site import assemble_demo

    assemble_demo(out, bundle, force=force)
    click.echo(f"wrote {out}; open it with: vgg-mobile serve {out}")


@main.command("serve")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="0 picks a free port.")
def serve_cmd(directory, host, port):
    """Serve a demo folder (only its files), cross-origin isolated for the WASM backend."""
    from vgg_mobile.site import make_server

    server = make_server(directory, host, port)
    bound_host, bound_port = server.server_address[:2]
    click.echo(f"serving {directory} at http://{bound_host}:{bound_port}/ (Ctrl+C to stop)")
    try:
        server.serve_forever()
    finally:
        server.server_close()


# --- pipeline command ---


@main.command("pipeline")
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Output folder: one run directory per stage, the export, the demo, the report.")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="TOML file of stage settings, applied over the preset (see --print-config).")
@click.option("--preset", type=click.Choice(["sample", "real"]), default="sample", show_default=True,
              help="sample: 32 px teacher, minutes on 2 cores; real: 224 px, ImageNet weights "
                   "from the local Keras cache.")
@click.option("--print-config", is_flag=True, help="Print the preset's settings as commented TOML and exit.")
@click.option("--force", is_flag=True, help="Redo every stage, even finished ones.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No Keras progress output.")
@click.pass_context
def pipeline_cmd(ctx, data, out, config_path, preset, print_config, force, as_json, quiet):
    """Run every stage on DATA: teacher, prune, QAT, distilled student, student QAT, export
    (TFLite, TF.js, Android), web demo, report. Re-running resumes after the last finished stage."""
    from vgg_mobile.pipeline import runner as pipeline

    config = pipeline.load_config(config_path, preset)
    if print_config:
        click.echo(pipeline.default_config_toml(preset))
        return
    if data is None or out is None:
        raise click.UsageError("DATA and --out are required (unless --print-config)")
    ctx.meta["resume_hint"] = (f"resume with: vgg-mobile pipeline {data} --out {out}"
                               + (f" --config {config_path}" if config_path else "")
                               + (f" --preset {preset}" if preset != "sample" else ""))
    result = pipeline.run_pipeline(data, out, config, force=force, log=_log,
                                   verbose=0 if quiet or as_json else (1 if sys.stderr.isatty() else 2))
    if as_json:
        click.echo(json.dumps({"out": str(result.out_dir), "summary": list(result.summary),
                               "stages": [{"name": s.name, "status": s.status,
                                           "seconds": round(s.seconds, 1)} for s in result.stages],
                               "report": result.report}, indent=2))
        return
    click.echo(pipeline.format_summary(result.summary))
    click.echo(f"\nartifacts: {out / 'export'} (TFLite), {out / 'android'} (Android), "
               f"{out / 'web_export'} (TF.js)")
    if result.report:
        click.echo(f"report: {result.report['html']}")
    if (out / "site").is_dir():
        click.echo(f"open the web demo with: vgg-mobile serve {out / 'site'}")


# --- benchmark command ---


@main.command("benchmark")
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

    from vgg_mobile.reporting import benchmark

    config = benchmark.load_pipeline_config(out).benchmark if out.is_dir() else benchmark.BenchmarkConfig()
    changes = {k: v for k, v in (("repeats", repeats), ("threads", threads), ("images", images))
               if v is not None}
    result = benchmark.benchmark_pipeline(out, dataclasses.replace(config, **changes),
                                          output_dir=output, data_dir=data,
                                          log=(lambda m: None) if quiet else _log)
    if as_json:
        click.echo(json.dumps({**result.info, "rows": list(result.rows)}, indent=2))
        return
    click.echo(benchmark.format_benchmark(list(result.rows), result.info))
    click.echo(f"\nwrote {result.markdown_path} and {result.json_path}")
