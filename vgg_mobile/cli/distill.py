"""`vgg-mobile distill`: a MobileNet student taught by the teacher."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vgg_mobile.cli.common import (COUNT, augmentation_options, default, distribute_config,
                                   distribute_options, log, offline_option)
from vgg_mobile.distillation.distill import SHIP_CHOICES, DistillConfig


@click.command("distill")
@click.option("--teacher", required=True, type=click.Path(path_type=Path),
              help="Run directory of the trained teacher (e.g. from `vgg-mobile train`).")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Image folder with exactly the teacher's classes (its own folder reuses its split).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Run directory to write the student to.")
@click.option("--unlabeled", default=default(DistillConfig, "unlabeled"), metavar="DIR",
              type=click.Path(path_type=Path),
              help="Folder of images without labels (no class folders): the student also learns "
                   "the teacher's answers on them. Copies of images of --data are left out.")
@click.option("--unlabeled-ratio", default=default(DistillConfig, "unlabeled_ratio"),
              show_default=True, type=float,
              help="Unlabelled images per labelled one in an epoch (a fresh draw each epoch; "
                   "all of them when there are fewer): an epoch costs at most 1 + this.")
@click.option("--unlabeled-learning-rate", type=float, show_default=True,
              default=default(DistillConfig, "unlabeled_learning_rate"),
              help="Peak learning rate instead of --learning-rate when --unlabeled is given.")
@click.option("--student", default=default(DistillConfig, "student"), show_default=True,
              help="Student architecture: mobilenet_v2_{0.35,0.5,0.75,1.0}, mobilenet_v3_{small,large}.")
@click.option("--image-size", default=default(DistillConfig, "image_size"), type=COUNT,
              help="Student input side in pixels. Defaults to the teacher's.")
@click.option("--student-weights", default=default(DistillConfig, "student_weights"),
              show_default=True,
              help="The student's starting weights: none (random), imagenet (Keras's ImageNet "
                   "weights of the student, from the Keras cache, downloaded into it when "
                   "missing unless --offline), auto (imagenet if cached, else none; never "
                   "downloads) or a path to an .h5 backbone weights file.")
@click.option("--temperature", default=default(DistillConfig, "temperature"), show_default=True,
              type=float,
              help="Softens teacher and student logits in the distillation term (> 0).")
@click.option("--alpha", default=default(DistillConfig, "alpha"), show_default=True, type=float,
              help="Weight of the hard-label loss in [0, 1]; 1 - alpha weighs the teacher's.")
@click.option("--mixup", default=default(DistillConfig, "mixup"), show_default=True,
              type=click.FloatRange(min=0),
              help="Beta parameter of batch mixup in distillation (teacher, student and labels mixed alike); 0: off.")
@click.option("--class-weights", is_flag=True,
              help="Weight the hard-label loss by inverse class frequency (unbalanced classes); "
                   "the distillation term stays unweighted.")
@click.option("--focal-gamma", default=default(DistillConfig, "focal_gamma"), show_default=True,
              type=float,
              help="Focal loss exponent of the hard-label term (unbalanced classes); 0: plain "
                   "cross-entropy.")
@click.option("--teacher-tta", is_flag=True, default=default(DistillConfig, "teacher_tta"),
              help="The teacher's soft answers average the image and its mirror (for classes "
                   "whose mirror is the same class; one more teacher pass per batch).")
@click.option("--epochs", default=default(DistillConfig, "epochs"), show_default=True, type=COUNT)
@click.option("--batch-size", default=default(DistillConfig, "batch_size"), show_default=True,
              type=COUNT)
@click.option("--learning-rate", "--lr", "learning_rate",
              default=default(DistillConfig, "learning_rate"), show_default=True, type=float,
              help="Peak learning rate (warm-up, then cosine decay).")
@click.option("--seed", default=default(DistillConfig, "seed"), show_default=True)
@click.option("--no-augment", is_flag=True, help="Turn off augmentation (--augmentation, --flip, crop and jitter).")
@augmentation_options(DistillConfig)
@click.option("--baseline", is_flag=True,
              help="Also train the same student without the teacher (same budget) and record the gain.")
@click.option("--ship", type=click.Choice(SHIP_CHOICES),
              default=default(DistillConfig, "ship"), show_default=True,
              help="With --baseline: keep the more accurate of the two students, or always the distilled one.")
@click.option("--force", is_flag=True, help="Replace a finished or interrupted run in --out.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --out after its last finished epoch.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No Keras progress output.")
@distribute_options
@offline_option
@click.pass_context
def distill_cmd(ctx, teacher, data, out, unlabeled, unlabeled_ratio, unlabeled_learning_rate,
                student, image_size,
                student_weights, temperature, alpha, class_weights, focal_gamma, mixup,
                teacher_tta, epochs, batch_size,
                learning_rate, seed, no_augment, augmentation, flip, crop_scale, colour_jitter,
                baseline, ship, force, resume,
                as_json, quiet, strategy, mixed_precision, jit_compile, offline):
    """Distill the teacher run into a small MobileNet student, saved as a plain run directory."""
    from vgg_mobile.distillation.distill import distill

    config = DistillConfig(student=student, image_size=image_size,
                           student_weights=student_weights, temperature=temperature,
                           alpha=alpha, class_weights=class_weights,
                           focal_gamma=focal_gamma, mixup=mixup, teacher_tta=teacher_tta, epochs=epochs,
                           batch_size=batch_size,
                           learning_rate=learning_rate, seed=seed, augment=not no_augment,
                           augmentation=augmentation, flip=flip, crop_scale=crop_scale,
                           colour_jitter=colour_jitter, baseline=baseline, ship=ship,
                           unlabeled=None if unlabeled is None else str(unlabeled),
                           unlabeled_ratio=unlabeled_ratio,
                           unlabeled_learning_rate=unlabeled_learning_rate)
    if force and resume:
        raise click.UsageError("--force and --resume exclude each other")
    ctx.meta["resume_hint"] = "resume with the same command and --resume"
    result = distill(teacher, data, out, config, force=force, resume=resume,
                     command=["vgg-mobile", *sys.argv[1:]],
                     log=log, verbose=0 if quiet or as_json else (1 if sys.stderr.isatty() else 2),
                     distribute=distribute_config(strategy, mixed_precision, jit_compile),
                     offline=offline)
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
               "shipped": (result.verdict or {}).get("shipped", "distilled"),
               "reason": (result.verdict or {}).get("reason"),
               "unlabeled": result.unlabeled,
               "student_parameters": result.student_parameters,
               "teacher_parameters": result.teacher_parameters,
               "distribution": result.distribution}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"run: {result.run_dir}\nstudent ({config.student}) val accuracy: "
               f"{summary['val_accuracy']}\nteacher val accuracy: {summary['teacher_val_accuracy']}")
    if summary["unlabeled"] is not None:
        click.echo(f"unlabelled images learnt from: {summary['unlabeled']['images']}")
    if result.baseline_metrics is not None:
        click.echo(f"student trained alone: {summary['baseline_val_accuracy']}\n{summary['reason']}")
    click.echo(f"parameters: {result.student_parameters:,} "
               f"({result.student_parameters / result.teacher_parameters:.1%} of the teacher's)")
