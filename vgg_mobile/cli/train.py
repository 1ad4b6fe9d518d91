"""`vgg-mobile train`, `evaluate` and `doctor`: the teacher and its checks."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from vgg_mobile.cli.common import (COUNT, augmentation_options, default, distribute_config,
                                   distribute_options, invocation, log, offline_option)
from vgg_mobile.evaluation.metrics import evaluate_run
from vgg_mobile.evaluation.tta import FLIP_CHOICES, TTA
from vgg_mobile.models.architectures import ModelOptions
from vgg_mobile.training.hyperparameters import FINE_TUNE_MODES, TrainConfig


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


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def doctor_cmd(as_json):
    """Report versions, the devices TensorFlow sees, and whether the GPU path is active."""
    from vgg_mobile.training.doctor import diagnose

    report = diagnose()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"python {report['python']} on {report['platform']}")
    own = report["vgg_mobile"]
    click.echo(f"vgg-mobile {own['version']} in {own['location']}")
    click.echo(f"TensorFlow.js: {own['tfjs'] or 'not installed yet (installed on first use into ' + own['tfjs_cache'] + ')'}")
    for name, version in report["packages"].items():
        click.echo(f"{name:<32}{version or 'not installed'}")
    for name, state in report["tflite_support"].items():
        click.echo(f"import {name}: {state}")
    click.echo(report["tflite_support_hint"])
    tf_info = report["tensorflow"]
    click.echo(f"TensorFlow built with CUDA: {'yes' if tf_info['cuda_build'] else 'no'}"
               + (f" (CUDA {tf_info['cuda_version']}, cuDNN {tf_info['cudnn_version']})"
                  if tf_info["cuda_build"] else ""))
    onednn = {True: "on", False: "off (TF_ENABLE_ONEDNN_OPTS=0 or a build without it)",
              None: "unknown"}[tf_info["onednn"]]
    click.echo(f"oneDNN CPU kernels: {onednn}")
    click.echo(f"physical devices: {', '.join(report['devices']['physical'])}")
    click.echo(f"logical devices: {', '.join(report['devices']['logical'])}")
    cluster = report["cluster"]
    click.echo(cluster["error"] if "error" in cluster else
               f"TF_CONFIG: {cluster['workers']} worker(s), this task {cluster['task']}, "
               f"--strategy auto picks {cluster['auto_strategy']}")
    click.echo(report["hint"])


@click.command("train")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Run directory to write (required, except with --data-benchmark).")
@click.option("--weights", default=default(ModelOptions, "weights"), show_default=True,
              help="imagenet (from the Keras cache, downloaded into it when missing unless "
                   "--offline), none, a path to an .h5 backbone weights file, or auto (imagenet "
                   "if cached, else none; never downloads).")
@click.option("--architecture", default=default(ModelOptions, "architecture"), show_default=True,
              help="Teacher architecture.")
@click.option("--image-size", default=default(ModelOptions, "image_size"), show_default=True,
              type=click.IntRange(min=32), help="Input side in pixels.")
@click.option("--epochs", default=default(TrainConfig, "epochs"), show_default=True, type=COUNT)
@click.option("--batch-size", default=default(TrainConfig, "batch_size"), show_default=True,
              type=COUNT)
@click.option("--learning-rate", "--lr", "learning_rate", default=default(TrainConfig, "learning_rate"),
              show_default=True,
              help="Peak learning rate (warm-up, then cosine decay).")
@click.option("--warmup-epochs", default=default(TrainConfig, "warmup_epochs"), show_default=True)
@click.option("--weight-decay", default=default(TrainConfig, "weight_decay"), show_default=True)
@click.option("--label-smoothing", default=default(TrainConfig, "label_smoothing"), show_default=True)
@click.option("--dropout", default=default(ModelOptions, "dropout"), show_default=True)
@click.option("--head-units", default=default(ModelOptions, "head_units"), show_default=True,
              type=click.IntRange(min=0),
              help="Hidden units of the head (0: none).")
@click.option("--fine-tune", default=default(TrainConfig, "fine_tune"), show_default=True,
              type=click.Choice(FINE_TUNE_MODES),
              help="Which layers train: auto is full from scratch, progressive from pretrained weights.")
@click.option("--unfreeze-blocks", default=default(TrainConfig, "unfreeze_blocks"),
              show_default=True, type=COUNT,
              help="Backbone blocks trained by last-blocks and reached by progressive.")
@click.option("--val-fraction", default=default(TrainConfig, "val_fraction"), show_default=True,
              help="Share of each class held out (folders without train/ and val/).")
@click.option("--seed", default=default(TrainConfig, "seed"), show_default=True)
@click.option("--no-augment", is_flag=True,
              help="Turn off augmentation (--augmentation, --flip, crop and jitter); MixUp and "
                   "CutMix stay as set.")
@augmentation_options(TrainConfig)
@click.option("--mixup-alpha", default=default(TrainConfig, "mixup_alpha"), show_default=True,
              type=float, help="MixUp's Beta parameter: batches mixed with a shuffled copy, labels alike (0: off).")
@click.option("--cutmix-alpha", default=default(TrainConfig, "cutmix_alpha"), show_default=True,
              type=float, help="CutMix's Beta parameter: a box of another image pasted in, labels mixed by area (0: off).")
@click.option("--class-weights", is_flag=True,
              help="Weight the loss by inverse class frequency (unbalanced classes).")
@click.option("--focal-gamma", default=default(TrainConfig, "focal_gamma"), show_default=True,
              type=float,
              help="Focal loss exponent (unbalanced classes): images the model gets right count "
                   "less; 0: plain cross-entropy.")
@click.option("--strict", is_flag=True, help="Fail on any bad image instead of skipping it.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--force", is_flag=True, help="Replace a finished or interrupted run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No Keras progress output.")
@distribute_options
@offline_option
@click.option("--data-benchmark", is_flag=True,
              help="Measure the input pipeline's images/s against the training step's (on "
                   "batches in memory), print which one limits training, and exit; writes nothing.")
@click.pass_context
def train_cmd(ctx, data, out, weights, architecture, image_size, epochs, batch_size, learning_rate,
              warmup_epochs, weight_decay, label_smoothing, dropout, head_units, fine_tune,
              unfreeze_blocks, val_fraction, seed, no_augment, augmentation, flip, crop_scale,
              colour_jitter, mixup_alpha,
              cutmix_alpha, class_weights, focal_gamma, strict, resume,
              force, as_json, quiet, strategy, mixed_precision, jit_compile, offline,
              data_benchmark):
    """Fine-tune (or train from scratch) a VGG16 classifier on the image folder DATA."""
    from vgg_mobile.training.throughput import measure_throughput
    from vgg_mobile.training.train import train

    if out is None and not data_benchmark:
        raise click.UsageError("Missing option '--out'.")
    options = ModelOptions(architecture=architecture, image_size=image_size,
                           weights=weights, dropout=dropout,
                           head_units=head_units)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         warmup_epochs=warmup_epochs, weight_decay=weight_decay,
                         label_smoothing=label_smoothing, fine_tune=fine_tune,
                         unfreeze_blocks=unfreeze_blocks, val_fraction=val_fraction, seed=seed,
                         augment=not no_augment, augmentation=augmentation, flip=flip,
                         crop_scale=crop_scale, colour_jitter=colour_jitter,
                         mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                         class_weights=class_weights,
                         focal_gamma=focal_gamma, strict=strict)
    distribute = distribute_config(strategy, mixed_precision, jit_compile)
    if data_benchmark:
        report = measure_throughput(data, options, config, distribute, log=log, offline=offline)
        if as_json:
            click.echo(json.dumps({**dataclasses.asdict(report), "limited_by": report.limited_by},
                                  indent=2))
        else:
            _print_throughput(report)
        return
    command = ["vgg-mobile", *sys.argv[1:]]
    ctx.meta["resume_hint"] = (f"resume with: {invocation()} train {data} --out {out} --resume "
                               "(and the same options)")
    result = train(data, out, options, config, resume=resume, force=force, command=command,
                   log=log, verbose=0 if quiet or as_json else (1 if sys.stderr.isatty() else 2),
                   distribute=distribute, offline=offline)
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


@click.command("evaluate")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Image folder.")
@click.option("--split", default=default(evaluate_run, "split"), show_default=True,
              type=click.Choice(["auto", "val", "train", "all"]),
              help="auto: the held-out images of the training folder, val/ of a pre-split "
                   "folder, or every image of another folder.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Report folder. Defaults to RUN/eval.")
@click.option("--batch-size", default=default(evaluate_run, "batch_size"), show_default=True,
              type=COUNT)
@click.option("--tta", is_flag=True,
              help="Also measure test-time augmentation (the image, its mirror, shifted crops; "
                   "probabilities averaged) on the same images: one forward pass per view.")
@click.option("--tta-flip", default=default(TTA, "flip"), show_default=True,
              type=click.Choice(FLIP_CHOICES),
              help="With --tta: add the mirror view; auto adds it when the run trained with flips.")
@click.option("--tta-crop", default=default(TTA, "crop"), show_default=True,
              type=click.FloatRange(0, 1, min_open=True),
              help="With --tta: side of the four corner crops and the centre crop, as a share of "
                   "the image's side; 1 adds no crops.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
def evaluate_cmd(run, data, split, out, batch_size, tta, tta_flip, tta_crop, as_json):
    """Evaluate the model of run directory RUN on an image folder."""
    views = TTA(flip=tta_flip, crop=tta_crop) if tta else None
    report = evaluate_run(run, data, split=split, out_dir=out, batch_size=batch_size, tta=views)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    top_key = next(k for k in report if k.startswith("top_"))
    click.echo(f"{report['num_images']} images ({report['split']} split) of {report['data']}")
    click.echo(f"accuracy {report['accuracy']:.4f}  {top_key.replace('_', '-')} "
               f"{report[top_key]:.4f}  macro F1 {report['macro_f1']:.4f}")
    if "tta" in report:
        t = report["tta"]
        click.echo(f"test-time augmentation on the same {t['num_images']} images: accuracy "
                   f"{t['single_pass_accuracy']:.4f} single pass, {t['accuracy']:.4f} with TTA "
                   f"({t['num_views']} views: {', '.join(t['views'])}; mirror "
                   f"{'on' if t['flip'] else 'off'}: {t['flip_from']})")
    width = max(len(c) for c in report["classes"])
    click.echo(f"{'class':<{width}}  precision  recall  f1      support")
    for name, m in report["per_class"].items():
        click.echo(f"{name:<{width}}  {m['precision']:<9.3f}  {m['recall']:<6.3f}  "
                   f"{m['f1']:<6.3f}  {m['support']}")
    click.echo(f"report: {report['files']['metrics']}; confusion matrix: "
               f"{report['files']['confusion_matrix_png']}")
