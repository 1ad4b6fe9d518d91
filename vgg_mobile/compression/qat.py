"""Quantization-aware training (QAT) of a run's model with tfmot, sparsity-preserving for a
pruned parent, into a new run directory that converts to a full-integer int8 TFLite model.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from vgg_mobile.compression.common import (MIN_PRUNED_SPARSITY, CompressResult,
                                           compression_manifest, fine_tune_split,
                                           kernel_sparsity, load_parent,
                                           train_dataset, validation_metrics)
from vgg_mobile.core.custom_objects import is_quantization_aware
from vgg_mobile.core.errors import BadInputError, require, require_number
from vgg_mobile.core.outputs import claim_output
from vgg_mobile.core.run_dir import Run, finish_run
from vgg_mobile.data import dataset, splits
from vgg_mobile.training.hyperparameters import MAX_SEED, check_training_knobs

# In-graph preprocessing layers, missing from tfmot's 8-bit registry: QAT gives them an
# output-only quantizer so that the int8 model's first integer tensor has a trained range.
PREPROCESS_TYPES = ("Rescaling", "Normalization")
QAT_MODEL_FILE = "model.h5"
# `QATConfig.distill`: whether a distilled student keeps learning from its teacher.
DISTILL_CHOICES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class QATConfig:
    """How a model is quantization-aware trained.

    Attributes:
        epochs: Fine-tuning epochs with fake quantization.
        learning_rate: Adam learning rate (small: the model is already trained).
        batch_size: Images per step.
        preserve_sparsity: Keep the zeros of a pruned model (tfmot's sparsity-preserving
            scheme); the input run must be pruned.
        calibration_images: Training images whose activation ranges initialise the
            quantizers before fine-tuning.
        augment: Augment training images.
        val_fraction: As in `PruneConfig`.
        seed: As in `PruneConfig`.
        distill: `auto` or `on`: a distilled student keeps learning from its teacher while
            it is quantization-aware trained (its distillation loss, temperature and alpha,
            and the unlabelled images it was distilled with; `distillation.qat`); `off`:
            cross-entropy on the labels alone. `auto` falls back to the labels when the run
            is not a distilled student or its teacher run is gone; `on` then fails.
    """

    epochs: int = 2
    learning_rate: float = 1e-5
    batch_size: int = 32
    preserve_sparsity: bool = False
    calibration_images: int = 128
    augment: bool = True
    val_fraction: float = 0.2
    seed: int = 0
    distill: str = "auto"

    def __post_init__(self):
        check_training_knobs(self)
        require(self.distill in DISTILL_CHOICES, f"distill must be one of {DISTILL_CHOICES}",
                f"distill={self.distill!r}")
        require_number(self.calibration_images, "calibration_images", 1, 1_000_000, integer=True)
        require_number(self.val_fraction, "val_fraction", 0, 1, low_open=True, high_open=True)
        require_number(self.seed, "seed", 0, MAX_SEED, integer=True)


def _annotate_for_qat(model, path: Path):
    """Marks every layer for 8-bit QAT; preprocessing layers get an output-only quantizer."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs)

    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def wrap(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if type(layer).__name__ in PREPROCESS_TYPES:
            return annotate(layer, default_8bit_quantize_configs.Default8BitOutputQuantizeConfig())
        return annotate(layer)

    try:
        return keras.models.clone_model(model, clone_function=wrap)
    except (ValueError, TypeError, AttributeError) as err:
        raise BadInputError(f"{path}: tfmot cannot annotate this model for QAT ({err})") from None


def _calibrate_ranges(qat_model, float_model, images: np.ndarray, batch_size: int) -> dict:
    """Sets the activation quantizers' ranges from the float model's activations.

    tfmot starts every activation range at [-6, 6] and moves it with an exponential moving
    average of decay 0.999, so a short fine-tune would train through clipped activations
    (a VGG's ReLU outputs reach far past 6). Each range is set instead to the mean per-batch
    minimum and maximum of the matching float layer's output, like the moving average would
    settle to. Weight ranges are then set by one forward pass in training mode.

    Returns:
        `{quantizer layer name: [min, max]}`.
    """
    import tf_keras as keras

    # A fresh copy: the float model's layers are shared with the QAT model's graph.
    probe_base = keras.models.clone_model(float_model)
    probe_base.set_weights(float_model.get_weights())
    targets = []
    for layer in qat_model.layers:
        variables = [w for w in layer.non_trainable_weights if len(w.shape) == 0
                     and w.name.split("/")[-1].split(":")[0].endswith(("_min", "_max"))
                     and not w.name.split("/")[-1].startswith(("kernel", "depthwise", "pointwise"))]
        if not variables:
            continue
        if type(layer).__name__ == "QuantizeLayer":
            tensor = probe_base.input
        else:
            try:
                tensor = probe_base.get_layer(getattr(layer, "layer", layer).name).output
            except ValueError:
                continue  # a layer tfmot added: its range keeps tfmot's moving average
        targets.append((layer.name, tensor, variables))
    if not targets:
        return {}
    probe = keras.Model(probe_base.input, [t[1] for t in targets])
    lows = [[] for _ in targets]
    highs = [[] for _ in targets]
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start:start + batch_size], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for i, value in enumerate(outputs):
            lows[i].append(float(np.min(value)))
            highs[i].append(float(np.max(value)))
    ranges = {}
    for i, (name, _, variables) in enumerate(targets):
        low, high = min(0.0, float(np.mean(lows[i]))), max(0.0, float(np.mean(highs[i])))
        if high - low < 1e-6:
            high = low + 1e-3
        for variable in variables:
            variable.assign(low if variable.name.split(":")[0].endswith("_min") else high)
        ranges[name] = [round(low, 4), round(high, 4)]
    qat_model(images[:batch_size], training=True)
    return ranges


def _images(examples, run: Run, limit: int, seed: int, trainer: Trainer | None = None) -> np.ndarray:
    """`limit` calibration images: a stratified sample of `examples`, and with a trainer's
    unlabelled images a seeded draw of them in their share."""
    extra: tuple[dataset.Example, ...] = ()
    if trainer is not None and trainer.unlabeled:
        n = min(len(trainer.unlabeled), limit - 1, round(limit * trainer.unlabeled_share))
        picked = np.random.default_rng(seed).choice(len(trainer.unlabeled), n, replace=False)
        extra = tuple(dataset.Example(trainer.unlabeled[i], 0) for i in sorted(picked))
        limit -= n
    chosen = splits.stratified_sample(examples, limit, seed) + extra
    ds = dataset.make_dataset(chosen, run.image_size, 64, len(run.classes), one_hot=False)
    return np.concatenate([x.numpy() for x, _ in ds])


@dataclasses.dataclass(frozen=True)
class Trainer:
    """How the QAT model is fine-tuned when not on the labels alone.

    Attributes:
        fit: `fit(qat_model, parts, run, config, log, verbose)` trains the model on
            `parts.train` and returns the Keras `History`.
        record: What it was, for the manifest's `compression.teaching`.
        inputs: Further folders it reads (for the output's overlap check).
        unlabeled: Unlabelled images it trains on as well: the activation ranges are
            calibrated on them too, so that they cover what only those images show.
        unlabeled_share: Their share of the images an epoch reads, and so of the calibration
            images.
    """

    fit: Callable
    record: dict
    inputs: tuple = ()
    unlabeled: tuple[Path, ...] = ()
    unlabeled_share: float = 0.0


def qat_run(
    run_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    config: QATConfig | None = None,
    force: bool = False,
    command: list[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
    verbose: int = 0,
    stage: str | None = None,
    trainer: Trainer | None = None,
) -> CompressResult:
    """Quantization-aware training of a run's model, into a new run directory.

    Every layer gets tfmot's default 8-bit fake quantization (the in-graph preprocessing an
    output quantizer), activation ranges are calibrated on training images, and the model
    is fine-tuned briefly. The result converts to a full-integer int8 TFLite model. It is
    saved as `model.h5` (tf_keras cannot reload tfmot's quantize layer from `.keras`);
    `Run.load_model` opens it inside tfmot's `quantize_scope`.

    Args:
        run_dir: A finished run directory (plain or pruned, not already quantization-aware).
        data_dir: Image folder, as for `prune_run`.
        out_dir: New run directory to write.
        config: Fine-tuning and scheme. Defaults to `QATConfig()`.
        force: Replace a finished run in `out_dir`. Defaults to `False`.
        command: The command line, recorded in the manifest.
        log: Receives one-line progress messages. Defaults to discarding them.
        stage: The stage name its manifest records (the pipeline's folder and config
            section). Defaults to the parent's stage + `"_qat"` (`pruned_qat`, `student_qat`).
        verbose: Keras progress output. Defaults to `0`.
        trainer: Fine-tunes instead of the cross-entropy on the labels (a distilled
            student's teacher: `distillation.qat.qat_run` passes one). Defaults to `None`.

    Returns:
        A `CompressResult`; `sparsity` is that of the float kernels inside the QAT wrappers
        (the int8 model adds the weights that round to zero).

    Raises:
        RunDirError: The run directory is missing, unfinished or of the wrong kind.
        BadInputError: A model tfmot cannot wrap or quantize, an already quantization-aware
            model, `preserve_sparsity` on a model that is not pruned, or `out_dir` equal to
            `run_dir`.
        DataError: The data folder fails its checks.
    """
    config = config or QATConfig()
    if config.distill == "on" and trainer is None:
        raise BadInputError("distill = 'on' needs a distilled student's teacher: "
                            "`vgg_mobile.distillation.qat.qat_run` finds it")
    run, model = load_parent(run_dir, out_dir, "qat")
    if is_quantization_aware(model):
        raise BadInputError(f"{run.model_path}: already quantization-aware")
    parent_sparsity = kernel_sparsity(model)
    if config.preserve_sparsity and parent_sparsity["total"] < MIN_PRUNED_SPARSITY:
        raise BadInputError(
            f"{run.path}: the model is not pruned (kernel sparsity {parent_sparsity['total']:.1%}); "
            "--preserve-sparsity needs a run written by `vgg-mobile prune`")
    folder, parts, data_record = fine_tune_split(run, data_dir, config.val_fraction, config.seed)

    import tensorflow_model_optimization as tfmot

    annotated = _annotate_for_qat(model, run.model_path)
    scheme_name = "prune_preserve_default_8bit" if config.preserve_sparsity else "default_8bit"
    scheme = (tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
              if config.preserve_sparsity else None)
    try:
        with tfmot.quantization.keras.quantize_scope():
            qat_model = tfmot.quantization.keras.quantize_apply(annotated, scheme) if scheme else \
                tfmot.quantization.keras.quantize_apply(annotated)
    except (ValueError, TypeError, AttributeError, RuntimeError) as err:
        raise BadInputError(f"{run.model_path}: tfmot cannot quantize this model "
                            f"({type(err).__name__}: {str(err)[:300]})") from None
    with claim_output(out_dir, ("run",),
                      inputs=(run.path, folder.root, *(trainer.inputs if trainer else ())),
                      force=force, staged=True) as output:
        result = _qat(output.path, Path(out_dir), run, model, qat_model, config, scheme_name,
                      parts, parent_sparsity, data_record, command, log, verbose, stage, trainer)
    return dataclasses.replace(result, run_dir=Path(out_dir))


def _qat(out, shown, run, model, qat_model, config, scheme_name, parts, parent_sparsity,
         data_record, command, log, verbose, stage, trainer) -> CompressResult:
    import tf_keras as keras

    keras.utils.set_random_seed(config.seed)
    parent_metrics = validation_metrics(model, parts.val, run, config.batch_size)
    calibration = _images(parts.train, run, config.calibration_images, config.seed, trainer)
    ranges = _calibrate_ranges(qat_model, model, calibration, config.batch_size)
    log(f"quantization-aware training of {run.path} ({scheme_name}, {config.epochs} epochs"
        f"{', distilled from its teacher' if trainer else ''}); "
        f"parent val accuracy {parent_metrics['accuracy']:.3f}")
    if trainer is not None:
        history = trainer.fit(qat_model, parts, run, config, log, verbose)
    else:
        qat_model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                          loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
        train_ds = train_dataset(parts, run, config.batch_size, config.augment, config.seed, log)
        history = qat_model.fit(train_ds, epochs=config.epochs, verbose=verbose)

    metrics = validation_metrics(qat_model, parts.val, run, config.batch_size)
    sparsity = kernel_sparsity(qat_model, tuple(n for n, f in parent_sparsity["layers"].items()
                                                if f >= MIN_PRUNED_SPARSITY))
    manifest = compression_manifest(
        run, stage or f"{run.manifest.stage}_qat", {"qat": dataclasses.asdict(config)}, command,
        data_record, metrics, parent_metrics, history, {
            "method": "quantization-aware training (tfmot quantize_apply, 8-bit)",
            "scheme": scheme_name,
            "sparsity": sparsity,
            "parent_sparsity": parent_sparsity["total"],
            "activation_ranges": ranges,
            "teaching": trainer.record if trainer else None,
        }, model_file=QAT_MODEL_FILE, quantization_aware=True)
    with warnings.catch_warnings():
        # HDF5 is chosen on purpose (see the docstring); tf_keras warns that it is legacy.
        warnings.filterwarnings("ignore", message=".*HDF5 file.*")
        finish_run(out, qat_model, manifest)
    log(f"wrote {shown}: val accuracy {metrics['accuracy']:.3f} (parent "
        f"{parent_metrics['accuracy']:.3f}), kernel sparsity {sparsity['total']:.1%}")
    return CompressResult(out, metrics, parent_metrics, sparsity, {}, manifest.stage, qat_model)
