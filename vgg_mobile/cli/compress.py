"""`vgg-mobile prune` and `qat`: compression of a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vgg_mobile.cli.common import COUNT, default, log
from vgg_mobile.compression.channels import SCOPES
from vgg_mobile.compression.prune import METHODS, PruneConfig
from vgg_mobile.compression.qat import DISTILL_CHOICES, QATConfig


def _print_result(result, as_json: bool) -> dict | None:
    """Prints the JSON summary (returns None) or the lines every compression run starts with."""
    summary = _compression_summary(result)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return None
    click.echo(f"run: {result.run_dir}")
    click.echo(f"val accuracy: {summary['val_accuracy']} (before: {summary['parent_val_accuracy']})")
    return summary


def _compression_summary(result) -> dict:
    sizes = result.sizes
    return {"run": str(result.run_dir), "stage": result.stage,
            "val_accuracy": result.metrics.get("accuracy"),
            "parent_val_accuracy": result.parent_metrics.get("accuracy"),
            "sparsity": result.sparsity.get("total"),
            "pruned_layers_sparsity": result.sparsity.get("pruned_layers"),
            "layer_sparsity": result.sparsity.get("layers"), **sizes, **_channels(result)}


def _channels(result) -> dict:
    """A channel-pruned run's filters and parameters, before and after; `{}` for others."""
    from vgg_mobile.core.run_dir import load_run

    record = load_run(result.run_dir).manifest.section("compression")
    return ({"channels": record["channels"], "parameters": record["parameters"]}
            if "channels" in record else {})


@click.command("prune")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Image folder to fine-tune on (the run's own folder reuses its split).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="New run directory to write.")
@click.option("--method", type=click.Choice(METHODS), default=default(PruneConfig, "method"),
              show_default=True,
              help="channels: remove the weakest filters and rebuild the VGG narrower (smaller "
                   "and faster files); magnitude: zero the smallest weights in place (tfmot).")
@click.option("--ratio", default=default(PruneConfig, "ratio"), show_default=True, type=float,
              help="channels: share of filters removed, in (0, 1).")
@click.option("--scope", type=click.Choice(SCOPES), default=default(PruneConfig, "scope"),
              show_default=True,
              help="channels: remove --ratio of every convolution's filters (layer), or of all "
                   "filters ranked together (global).")
@click.option("--target-sparsity", default=default(PruneConfig, "target_sparsity"),
              show_default=True, type=float,
              help="magnitude: share of zero weights in each pruned kernel, in (0, 1).")
@click.option("--epochs", default=default(PruneConfig, "epochs"), show_default=True, type=COUNT,
              help="Fine-tuning epochs.")
@click.option("--end-epoch", default=default(PruneConfig, "end_epoch"), type=float,
              help="Epoch at which the target is reached. Defaults to two thirds of --epochs.")
@click.option("--frequency", default=default(PruneConfig, "frequency"), type=COUNT,
              help="Steps between pruning updates. Defaults to about ten over the ramp.")
@click.option("--learning-rate", "--lr", "learning_rate",
              default=default(PruneConfig, "learning_rate"), show_default=True)
@click.option("--batch-size", default=default(PruneConfig, "batch_size"), show_default=True,
              type=COUNT)
@click.option("--skip-first-conv/--prune-first-conv",
              default=default(PruneConfig, "skip_first_conv"), show_default=True,
              help="Leave the first convolution dense.")
@click.option("--skip-classifier/--prune-classifier",
              default=default(PruneConfig, "skip_classifier"), show_default=True,
              help="Leave the logits layer dense.")
@click.option("--seed", default=default(PruneConfig, "seed"), show_default=True)
@click.option("--force", is_flag=True, help="Replace a finished run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def prune_cmd(run, data, out, method, ratio, scope, target_sparsity, epochs, end_epoch, frequency, learning_rate,
              batch_size, skip_first_conv, skip_classifier, seed, force, as_json):
    """Prune the model of run directory RUN and fine-tune it on DATA, into a new run."""
    from vgg_mobile.compression.prune import prune_run

    config = PruneConfig(method=method, ratio=ratio, scope=scope, target_sparsity=target_sparsity, epochs=epochs, end_epoch=end_epoch,
                         frequency=frequency, learning_rate=learning_rate, batch_size=batch_size,
                         skip_first_conv=skip_first_conv, skip_classifier=skip_classifier,
                         seed=seed)
    result = prune_run(run, data, out, config, force=force, command=["vgg-mobile", *sys.argv[1:]],
                       log=log, verbose=0 if as_json else 2)
    summary = _print_result(result, as_json)
    if summary is None:
        return
    if method == "channels":
        before, after = summary["parameters"]
        click.echo(f"parameters: {before:,} -> {after:,} ({after / before:.0%})")
        for name, (was, kept) in summary["channels"].items():
            click.echo(f"  {name:<24} {was} -> {kept} filters")
        click.echo(f"model file: {summary['model_bytes_before'] / 1e6:.2f} MB -> "
                   f"{summary['model_bytes_after'] / 1e6:.2f} MB")
        return
    click.echo(f"sparsity: {summary['pruned_layers_sparsity']:.1%} of the pruned layers, "
               f"{summary['sparsity']:.1%} of all conv/dense kernels")
    for name, fraction in summary["layer_sparsity"].items():
        click.echo(f"  {name:<24} {fraction:.1%}")
    click.echo(f"gzip size: {summary['gzip_bytes_before'] / 1e6:.2f} MB -> "
               f"{summary['gzip_bytes_after'] / 1e6:.2f} MB")


@click.command("qat")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Image folder to fine-tune on (the run's own folder reuses its split).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="New run directory to write.")
@click.option("--preserve-sparsity", is_flag=True,
              help="Keep the zeros of a pruned run (sparsity-preserving QAT).")
@click.option("--epochs", default=default(QATConfig, "epochs"), show_default=True, type=COUNT,
              help="Fine-tuning epochs.")
@click.option("--learning-rate", "--lr", "learning_rate",
              default=default(QATConfig, "learning_rate"), show_default=True)
@click.option("--batch-size", default=default(QATConfig, "batch_size"), show_default=True,
              type=COUNT)
@click.option("--seed", default=default(QATConfig, "seed"), show_default=True)
@click.option("--distill", "distill", type=click.Choice(DISTILL_CHOICES),
              default=default(QATConfig, "distill"), show_default=True,
              help="A distilled student keeps learning from its teacher (and the unlabelled "
                   "images it was distilled with); auto: when RUN is one and its teacher run "
                   "is there; off: the labels alone.")
@click.option("--force", is_flag=True, help="Replace a finished run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def qat_cmd(run, data, out, preserve_sparsity, epochs, learning_rate, batch_size, seed, distill,
            force, as_json):
    """Quantization-aware training of the model of run directory RUN on DATA (int8-ready)."""
    from vgg_mobile.distillation.qat import qat_run

    config = QATConfig(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                       preserve_sparsity=preserve_sparsity, seed=seed, distill=distill)
    result = qat_run(run, data, out, config, force=force, command=["vgg-mobile", *sys.argv[1:]],
                     log=log, verbose=0 if as_json else 2)
    summary = _print_result(result, as_json)
    if summary is None:
        return
    click.echo(f"kernel sparsity: {summary['sparsity']:.1%}")
