"""Pruning of a run's model, fine-tuned, into a new run directory: by channel or by magnitude.

`prune_run` reads a finished run directory, prunes and fine-tunes its model on an image folder
and writes a new run directory whose manifest names the input run as its parent.

- `method="channels"` (`compression.channels`) removes the weakest filters of every
  convolution of a VGG16 and rebuilds it narrower, then fine-tunes it: a smaller and faster
  plain model. The default: of the two, only it makes the shipped file smaller and faster.
- `method="magnitude"` zeroes the smallest weights while fine-tuning with
  tensorflow-model-optimization (tfmot) and strips the pruning wrappers: the same shapes, the
  zeros only pay under compression (gzip) or a sparse kernel. tfmot is imported inside the
  function, so importing vgg_mobile stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable


from vgg_mobile.compression import channels
from vgg_mobile.compression.common import (PRUNABLE_KERNELS, CompressResult,
                                           compression_manifest, fine_tune_split,
                                           kernel_sparsity, load_parent,
                                           train_dataset, validation_metrics)
from vgg_mobile.core.custom_objects import is_quantization_aware
from vgg_mobile.core.errors import BadInputError, require, require_number
from vgg_mobile.core.io import gzip_size, write_json
from vgg_mobile.core.outputs import MANIFEST, claim_output
from vgg_mobile.core.run_dir import Manifest, Run, finish_run, load_run
from vgg_mobile.data import dataset, splits
from vgg_mobile.models.architectures import ARCHITECTURES
from vgg_mobile.training.hyperparameters import MAX_SEED, check_training_knobs
from vgg_mobile.training.schedules import warmup_cosine


METHODS = ("channels", "magnitude")
# Training images (stratified, seeded) whose statistics a channel-pruned model's batch norms
# take before fine-tuning (`channels.recalibrate_batch_norm`).
RECALIBRATION_IMAGES = 512
# What channel pruning can rebuild: the VGG16 family (`compression.channels` follows its chain
# of convolutions, batch norms and pools into the head).
CHANNEL_ARCHITECTURES = tuple(name for name, spec in ARCHITECTURES.items() if spec.family == "vgg16")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """How a model is pruned and fine-tuned.

    `method` chooses channel pruning (`ratio`, `scope`) or magnitude pruning (the schedule
    fields from `target_sparsity` to `skip_classifier`); the fine-tuning fields serve both.
    With magnitude pruning the sparsity of every pruned kernel follows tfmot's polynomial decay from
    `initial_sparsity` at `begin_epoch` to `target_sparsity` at `end_epoch`, then stays there
    while the remaining epochs let the network recover.

    Attributes:
        method: `"channels"` (filters removed, the model rebuilt narrower; VGG16 family only)
            or `"magnitude"` (weights zeroed in place, tfmot).
        ratio: Channel pruning: the share of filters removed, in (0, 1).
        scope: Channel pruning: `"layer"` (`ratio` of every convolution's filters) or
            `"global"` (`ratio` of all filters, ranked together; see `compression.channels`).
        target_sparsity: Magnitude pruning: final share of zero weights in each pruned kernel, in (0, 1).
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
        learning_rate: Peak Adam learning rate of the fine-tuning, decayed to 0 along a cosine
            (give the teacher's peak rate).
        batch_size: Images per step.
        augment: Augment training images (as training does).
        val_fraction: Share held out per class, for a folder that is not the parent's own
            training folder (that one reuses the parent's split).
        seed: Seeds the split of such a folder, shuffles and augmentation.
    """

    method: str = "channels"
    ratio: float = 0.3
    scope: str = "layer"
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
        require(self.method in METHODS, f"method must be one of {', '.join(METHODS)}",
                f"method={self.method!r}")
        channels.check_ratio(self.ratio, self.scope)
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
    if config.method == "channels":
        _require_channel_architecture(load_run(run_dir))
    run, model = load_parent(run_dir, out_dir, "prune")
    if is_quantization_aware(model):
        raise BadInputError(f"{run.model_path}: already quantization-aware; prune first, then run qat")
    if config.method == "channels":
        plan = channels.plan_channels(model, config.ratio, config.scope)
        work = functools.partial(_prune_channels, plan=plan)
    else:
        chosen, skipped = _layers_to_prune(model, config)
        if not chosen:
            raise BadInputError(f"{run.model_path}: no conv or dense layer left to prune "
                                f"(skipped: {skipped})")
        work = functools.partial(_prune, chosen=chosen, skipped=skipped)
    folder, parts, data_record = fine_tune_split(run, data_dir, config.val_fraction, config.seed)
    with claim_output(out_dir, ("run",), inputs=(run.path, folder.root), force=force,
                      staged=True) as output:
        result = work(output.path, Path(out_dir), run, model, config, parts, data_record,
                      command, log, verbose, stage)
    return dataclasses.replace(result, run_dir=Path(out_dir))


def _require_channel_architecture(run: Run) -> None:
    architecture = run.manifest.architecture
    if architecture not in CHANNEL_ARCHITECTURES:
        raise BadInputError(
            f"{run.path}: channel pruning rebuilds the VGG16 family only; this run's architecture "
            f"is {architecture!r}. Supported: {', '.join(CHANNEL_ARCHITECTURES)} "
            "(--method magnitude prunes any architecture)")


def _finish(out: Path, model, manifest: Manifest, run: Run) -> dict:
    """Writes the run, then adds the model file's sizes before and after (measured on the
    files as written) to its `compression` record, replacing the manifest atomically."""
    written = finish_run(out, model, manifest)
    before, after = run.model_path, out / manifest.model_file
    sizes = {"model_bytes_before": before.stat().st_size, "model_bytes_after": after.stat().st_size,
             "gzip_bytes_before": gzip_size(before), "gzip_bytes_after": gzip_size(after)}
    written["compression"]["sizes"] = sizes
    write_json(out / MANIFEST, written)
    return sizes


def _steps(run: Run, step: dict) -> list[dict]:
    """Every pruning step from the first unpruned run to this one: a run pruned again
    composes, and its manifest says so."""
    return [*run.manifest.section("compression").get("steps", []), step]


def _fine_tune(model, parts, run, config, verbose, callbacks=(), log=lambda message: None):
    """Fine-tunes a pruned model: Adam from `learning_rate` down a cosine to 0.

    A channel-pruned model starts far below its parent, so it is retrained at the teacher's
    own peak rate and left to settle as the rate decays, rather than nudged at a small
    constant rate (docs/measurements.md#channel-pruning compares the two). Magnitude pruning
    fine-tunes the same way while its sparsity ramps up.
    """
    import tf_keras as keras

    steps = -(-len(parts.train) // config.batch_size) * config.epochs
    model.compile(optimizer=keras.optimizers.Adam(warmup_cosine(config.learning_rate, steps, 0)),
                  loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    train_ds = train_dataset(parts, run, config.batch_size, config.augment, config.seed, log)
    return model.fit(train_ds, epochs=config.epochs, verbose=verbose, callbacks=list(callbacks))


def _prune_channels(out, shown, run, model, config, parts, data_record, command, log, verbose,
                    stage, *, plan: channels.ChannelPlan) -> CompressResult:
    import tf_keras as keras

    keras.utils.set_random_seed(config.seed)
    parent_metrics = validation_metrics(model, parts.val, run, config.batch_size)
    narrow = channels.rebuild(model, plan)
    before, after = int(model.count_params()), int(narrow.count_params())
    uncalibrated = validation_metrics(narrow, parts.val, run, config.batch_size)
    sample = splits.stratified_sample(parts.train, RECALIBRATION_IMAGES, seed=config.seed)
    pixels = dataset.make_dataset(sample, run.image_size, config.batch_size,
                                  len(run.classes)).map(lambda x, y: x)
    recalibrated = channels.recalibrate_batch_norm(narrow, pixels)
    rebuilt_metrics = validation_metrics(narrow, parts.val, run, config.batch_size)
    log(f"removed {config.ratio:.0%} of the filters ({config.scope} scope) of {run.path}: "
        f"{before:,} -> {after:,} parameters; val accuracy {parent_metrics['accuracy']:.3f} -> "
        f"{uncalibrated['accuracy']:.3f}, {rebuilt_metrics['accuracy']:.3f} with batch-norm "
        f"statistics from {recalibrated} training images, before fine-tuning")
    history = _fine_tune(narrow, parts, run, config, verbose, log=log)
    metrics = validation_metrics(narrow, parts.val, run, config.batch_size)
    step = {"method": "channels", **plan.record(), "parameters": [before, after]}
    manifest = compression_manifest(
        run, stage, {"prune": dataclasses.asdict(config)}, command, data_record, metrics,
        parent_metrics, history, {
            "method": "channel pruning (filters ranked by L1 norm, removed, model rebuilt "
                      "narrower), fine-tuned",
            **step,
            "steps": _steps(run, step),
            "uncalibrated_metrics": {"accuracy": uncalibrated["accuracy"]},
            "recalibrated_images": recalibrated,
            "rebuilt_metrics": {"accuracy": rebuilt_metrics["accuracy"]},
        })
    sizes = _finish(out, narrow, manifest, run)
    log(f"wrote {shown}: {after / before:.0%} of the parameters, val accuracy "
        f"{metrics['accuracy']:.3f} (parent {parent_metrics['accuracy']:.3f}), model file "
        f"{sizes['model_bytes_before'] / 1e6:.1f} MB -> {sizes['model_bytes_after'] / 1e6:.1f} MB")
    return CompressResult(out, metrics, parent_metrics, kernel_sparsity(narrow), sizes,
                          manifest.stage, narrow)


def _prune(out, shown, run, model, config, parts, data_record, command, log, verbose, stage, *,
           chosen, skipped) -> CompressResult:

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
    history = _fine_tune(wrapped, parts, run, config, verbose,
                         [tfmot.sparsity.keras.UpdatePruningStep()], log=log)
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)

    metrics = validation_metrics(stripped, parts.val, run, config.batch_size)
    sparsity = kernel_sparsity(stripped, tuple(chosen))
    manifest = compression_manifest(
        run, stage, {"prune": dataclasses.asdict(config)}, command, data_record, metrics,
        parent_metrics, history, {
            "method": "magnitude pruning (tfmot prune_low_magnitude, polynomial decay), stripped",
            "steps": _steps(run, {"method": "magnitude", "target_sparsity": config.target_sparsity,
                                  "sparsity": sparsity["total"]}),
            "schedule": schedule,
            "pruned_layers": chosen,
            "skipped_layers": skipped,
            "sparsity": sparsity,
        })
    sizes = _finish(out, stripped, manifest, run)
    log(f"wrote {shown}: sparsity {sparsity['pruned_layers']:.1%} of pruned layers "
        f"({sparsity['total']:.1%} of all kernels), val accuracy {metrics['accuracy']:.3f}, "
        f"gzip {sizes['gzip_bytes_before'] / 1e6:.1f} MB -> {sizes['gzip_bytes_after'] / 1e6:.1f} MB")
    return CompressResult(out, metrics, parent_metrics, sparsity, sizes, manifest.stage, stripped)
