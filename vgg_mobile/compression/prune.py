"""Magnitude pruning of a run's model with tfmot, fine-tuned, into a new run directory.

`prune_run` reads a finished run directory, prunes and fine-tunes its model on an image folder
with tensorflow-model-optimization (tfmot), strips the pruning wrappers and writes a new run
directory whose manifest names the input run as its parent. tfmot is imported inside the
function, so importing vgg_mobile stays fast.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable


from vgg_mobile.compression.common import (PRUNABLE_KERNELS, CompressResult, fine_tune_split,
                                           kernel_sparsity, load_parent, parent_fields,
                                           train_dataset, validation_metrics)
from vgg_mobile.core.custom_objects import is_quantization_aware
from vgg_mobile.core.errors import BadInputError, require, require_number
from vgg_mobile.core.io import gzip_size, write_json
from vgg_mobile.core.outputs import MANIFEST, claim_output
from vgg_mobile.core.run_dir import Manifest, finish_run
from vgg_mobile.training.hyperparameters import MAX_SEED, check_training_knobs


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """How a model is pruned and fine-tuned.

    The sparsity of every pruned kernel follows tfmot's polynomial decay from
    `initial_sparsity` at `begin_epoch` to `target_sparsity` at `end_epoch`, then stays there
    while the remaining epochs let the network recover.

    Attributes:
        target_sparsity: Final share of zero weights in each pruned kernel, in (0, 1).
        epochs: Fine-tuning epochs.
        begin_epoch: When pruning starts (may be fractional).
        end_epoch: When the target is reached; `None` means after two thirds of the epochs.
        initial_sparsity: Sparsity at `begin_epoch`, in [0, target_sparsity).
        power: Exponent of the polynomial decay (3 prunes fast first, then slowly).
        frequency: Steps between mask updates; `None` means about ten updates over the ramp.
            tfmot's own default of 100 steps would never prune a short run.
        skip_first_conv: Leave the first convolution dense (it has few weights and sees raw
            pixels).
        skip_classifier: Leave the `logits` layer dense.
        learning_rate: Adam learning rate of the fine-tuning.
        batch_size: Images per step.
        augment: Augment training images (as training does).
        val_fraction: Share held out per class, for a folder that is not the parent's own
            training folder (that one reuses the parent's split).
        seed: Seeds the split of such a folder, shuffles and augmentation.
    """

    target_sparsity: float = 0.5
    epochs: int = 4
    begin_epoch: float = 0.0
    end_epoch: float | None = None
    initial_sparsity: float = 0.0
    power: int = 3
    frequency: int | None = None
    skip_first_conv: bool = True
    skip_classifier: bool = True
    learning_rate: float = 1e-4
    batch_size: int = 32
    augment: bool = True
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        check_training_knobs(self)
        require_number(self.target_sparsity, "target_sparsity", 0, 1, low_open=True, high_open=True)
        require_number(self.initial_sparsity, "initial_sparsity", 0, 1)
        require_number(self.begin_epoch, "begin_epoch", 0)
        if self.end_epoch is not None:
            require_number(self.end_epoch, "end_epoch", 0)
        require_number(self.power, "power", 1, 100)
        if self.frequency is not None:
            require_number(self.frequency, "frequency", 1, integer=True)
        require_number(self.val_fraction, "val_fraction", 0, 1, low_open=True, high_open=True)
        require_number(self.seed, "seed", 0, MAX_SEED, integer=True)
        require(0 <= self.initial_sparsity < self.target_sparsity,
              "initial_sparsity must be in [0, target_sparsity)",
              f"initial_sparsity={self.initial_sparsity}")
        require(0 <= self.begin_epoch < self.epochs, "begin_epoch must be in [0, epochs)",
              f"begin_epoch={self.begin_epoch}")
        if self.end_epoch is not None:
            require(self.begin_epoch < self.end_epoch <= self.epochs,
                  "end_epoch must be in (begin_epoch, epochs]", f"end_epoch={self.end_epoch}")


def _prune_schedule(config: PruneConfig, steps_per_epoch: int) -> dict:
    """Begin/end steps and frequency, with the ramp a whole number of updates long.

    tfmot only prunes on steps where `(step - begin) % frequency == 0`, so the end step is
    moved back onto such a step; otherwise the target sparsity would never be applied.
    """
    total = config.epochs * steps_per_epoch
    begin = int(round(config.begin_epoch * steps_per_epoch))
    end_epoch = config.end_epoch
    if end_epoch is None:
        end_epoch = config.begin_epoch + (config.epochs - config.begin_epoch) * 2 / 3
    end = min(max(int(round(end_epoch * steps_per_epoch)), begin + 1), total)
    if end <= begin:
        raise BadInputError(f"the pruning schedule has no steps (begin step {begin}, end step {end}, "
                            f"{total} steps in all); give more epochs or images")
    frequency = config.frequency or max(1, (end - begin) // 10)
    frequency = min(frequency, end - begin)
    end = begin + frequency * ((end - begin) // frequency)
    return {"begin_step": begin, "end_step": end, "frequency": frequency, "total_steps": total,
            "steps_per_epoch": steps_per_epoch, "initial_sparsity": config.initial_sparsity,
            "target_sparsity": config.target_sparsity, "power": config.power}


def _layers_to_prune(model, config: PruneConfig) -> tuple[list[str], dict[str, str]]:
    chosen, skipped = [], {}
    prunable = [layer for layer in model.layers if type(layer).__name__ in PRUNABLE_KERNELS]
    convs = [layer for layer in prunable if "Conv" in type(layer).__name__]
    first_conv = convs[0].name if convs else None
    for layer in prunable:
        if config.skip_first_conv and layer.name == first_conv:
            skipped[layer.name] = "first convolution"
        elif config.skip_classifier and layer.name == "logits":
            skipped[layer.name] = "classifier"
        else:
            chosen.append(layer.name)
    return chosen, skipped


def prune_run(
    run_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    config: PruneConfig | None = None,
    force: bool = False,
    command: list[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
    verbose: int = 0,
    stage: str = "pruned",
) -> CompressResult:
    """Prunes a run's model by weight magnitude while fine-tuning, into a new run directory.

    Args:
        run_dir: A finished run directory (not quantization-aware).
        data_dir: Image folder with (a subset of) the run's classes. On the folder the run was
            trained on, the run's own validation split is held out again.
        out_dir: New run directory to write.
        config: Schedule and fine-tuning. Defaults to `PruneConfig()`.
        force: Replace a finished run in `out_dir`. Defaults to `False`.
        command: The command line, recorded in the manifest.
        log: Receives one-line progress messages. Defaults to discarding them.
        stage: The stage name its manifest records (the pipeline's folder and config
            section). Defaults to `"pruned"`.
        verbose: Keras progress output (0 silent, 1 bar, 2 a line per epoch). Defaults to `0`.

    Returns:
        A `CompressResult`; `sparsity` is measured on the saved (stripped) kernels, `sizes`
        holds the model files' bytes and gzip bytes before and after.

    Raises:
        RunDirError: The run directory is missing, unfinished or of the wrong kind.
        BadInputError: A model tfmot cannot wrap (nested or subclassed), an already
            quantization-aware model, nothing to prune, or `out_dir` equal to `run_dir`.
        DataError: The data folder fails its checks.
    """
    config = config or PruneConfig()
    run, model = load_parent(run_dir, out_dir, "prune")
    if is_quantization_aware(model):
        raise BadInputError(f"{run.model_path}: already quantization-aware; prune first, then run qat")
    chosen, skipped = _layers_to_prune(model, config)
    if not chosen:
        raise BadInputError(f"{run.model_path}: no conv or dense layer left to prune "
                            f"(skipped: {skipped})")
    folder, parts, data_record = fine_tune_split(run, data_dir, config.val_fraction, config.seed)
    with claim_output(out_dir, ("run",), inputs=(run.path, folder.root), force=force,
                      staged=True) as output:
        result = _prune(output.path, Path(out_dir), run, model, config, chosen, skipped, parts,
                        data_record, command, log, verbose, stage)
    return dataclasses.replace(result, run_dir=Path(out_dir))


def _prune(out, shown, run, model, config, chosen, skipped, parts, data_record, command, log,
           verbose, stage) -> CompressResult:

    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    keras.utils.set_random_seed(config.seed)
    steps_per_epoch = math.ceil(len(parts.train) / config.batch_size)
    schedule = _prune_schedule(config, steps_per_epoch)
    parent_metrics = validation_metrics(model, parts.val, run, config.batch_size)
    log(f"pruning {len(chosen)} layers of {run.path} to {config.target_sparsity:.0%} sparsity "
        f"(steps {schedule['begin_step']}-{schedule['end_step']} every {schedule['frequency']}, "
        f"{schedule['total_steps']} in all); parent val accuracy {parent_metrics['accuracy']:.3f}")

    decay = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=config.initial_sparsity, final_sparsity=config.target_sparsity,
        begin_step=schedule["begin_step"], end_step=schedule["end_step"], power=config.power,
        frequency=schedule["frequency"])
    to_prune = set(chosen)

    def wrap(layer):
        # The original layer objects keep their trained weights inside the wrapper.
        if layer.name in to_prune:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=decay)
        return layer

    try:
        wrapped = keras.models.clone_model(model, clone_function=wrap)
    except (ValueError, TypeError, AttributeError) as err:
        raise BadInputError(f"{run.model_path}: tfmot cannot wrap this model for pruning ({err})") from None
    wrapped.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                    loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    train_ds = train_dataset(parts, run, config.batch_size, config.augment, config.seed)
    history = wrapped.fit(train_ds, epochs=config.epochs, verbose=verbose,
                          callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)

    metrics = validation_metrics(stripped, parts.val, run, config.batch_size)
    sparsity = kernel_sparsity(stripped, tuple(chosen))
    manifest = Manifest(
        stage=stage, classes=run.classes, **parent_fields(run),
        config={"prune": dataclasses.asdict(config)},
        command=command,
        data=data_record,
        parent=str(run.path.resolve()),
        metrics=metrics,
        sections={"compression": {
            "method": "magnitude pruning (tfmot prune_low_magnitude, polynomial decay), stripped",
            "schedule": schedule,
            "pruned_layers": chosen,
            "skipped_layers": skipped,
            "sparsity": sparsity,
            "parent_metrics": {"accuracy": parent_metrics["accuracy"],
                               "macro_f1": parent_metrics["macro_f1"]},
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        }},
    )
    written = finish_run(out, stripped, manifest)
    # Sizes are of the files as written, so they are measured after the model is saved; the
    # manifest is then replaced atomically with them added.
    before, after = run.model_path, out / manifest.model_file
    sizes = {"model_bytes_before": before.stat().st_size, "model_bytes_after": after.stat().st_size,
             "gzip_bytes_before": gzip_size(before), "gzip_bytes_after": gzip_size(after)}
    written["compression"]["sizes"] = sizes
    write_json(out / MANIFEST, written)
    log(f"wrote {shown}: sparsity {sparsity['pruned_layers']:.1%} of pruned layers "
        f"({sparsity['total']:.1%} of all kernels), val accuracy {metrics['accuracy']:.3f}, "
        f"gzip {sizes['gzip_bytes_before'] / 1e6:.1f} MB -> {sizes['gzip_bytes_after'] / 1e6:.1f} MB")
    return CompressResult(out, metrics, parent_metrics, sparsity, sizes, manifest.stage, stripped)
