"""Compression of a run's model: magnitude pruning, quantization-aware training, and both.

`prune_run` and `qat_run` read a finished run directory, fine-tune its model on an image folder
with tensorflow-model-optimization (tfmot), and write a new run directory whose manifest names
the input run as its parent. This is the only module that imports tfmot; it does so inside
functions, so importing vgg_mobile stays fast.

tfmot wraps the layers of a flat tf_keras Functional or Sequential model only; nested or
subclassed models are refused with a `BadInputError` before any work is done.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from vgg_mobile.data import dataset
from vgg_mobile.evaluation import metrics as evaluation
from vgg_mobile.core.custom_objects import is_quantization_aware
from vgg_mobile.core.errors import BadInputError, RunDirError, require
from vgg_mobile.core.run_dir import Run, finish_run, load_run, new_manifest, prepare_out_dir
from vgg_mobile.core.io import gzip_size, write_json

# Layer classes (tf_keras names) whose kernels magnitude pruning zeroes, with their kernel
# attributes. Everything else (BatchNormalization, the preprocess layer, pooling) is never pruned.
PRUNABLE_KERNELS: dict[str, tuple[str, ...]] = {
    "Conv1D": ("kernel",),
    "Conv2D": ("kernel",),
    "Conv3D": ("kernel",),
    "Conv2DTranspose": ("kernel",),
    "DepthwiseConv2D": ("depthwise_kernel",),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
    "Dense": ("kernel",),
}
# In-graph preprocessing layers, missing from tfmot's 8-bit registry: QAT gives them an
# output-only quantizer so that the int8 model's first integer tensor has a trained range.
PREPROCESS_TYPES = ("Rescaling", "Normalization")
QAT_MODEL_FILE = "model.h5"
# Below this share of zero kernel weights a run is not considered pruned.
_MIN_PRUNED_SPARSITY = 0.05


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
        require(0 < self.target_sparsity < 1, "target_sparsity must be in (0, 1)",
              f"target_sparsity={self.target_sparsity}")
        require(0 <= self.initial_sparsity < self.target_sparsity,
              "initial_sparsity must be in [0, target_sparsity)",
              f"initial_sparsity={self.initial_sparsity}")
        require(self.epochs >= 1, "epochs must be >= 1", f"epochs={self.epochs}")
        require(0 <= self.begin_epoch < self.epochs, "begin_epoch must be in [0, epochs)",
              f"begin_epoch={self.begin_epoch}")
        if self.end_epoch is not None:
            require(self.begin_epoch < self.end_epoch <= self.epochs,
                  "end_epoch must be in (begin_epoch, epochs]", f"end_epoch={self.end_epoch}")
        require(self.power >= 1, "power must be >= 1", f"power={self.power}")
        require(self.frequency is None or self.frequency >= 1, "frequency must be >= 1",
              f"frequency={self.frequency}")
        require(self.learning_rate > 0, "learning_rate must be > 0",
              f"learning_rate={self.learning_rate}")
        require(self.batch_size >= 1, "batch_size must be >= 1", f"batch_size={self.batch_size}")
        require(0 < self.val_fraction < 1, "val_fraction must be in (0, 1)",
              f"val_fraction={self.val_fraction}")


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
    """

    epochs: int = 2
    learning_rate: float = 1e-5
    batch_size: int = 32
    preserve_sparsity: bool = False
    calibration_images: int = 128
    augment: bool = True
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        require(self.epochs >= 1, "epochs must be >= 1", f"epochs={self.epochs}")
        require(self.learning_rate > 0, "learning_rate must be > 0",
              f"learning_rate={self.learning_rate}")
        require(self.batch_size >= 1, "batch_size must be >= 1", f"batch_size={self.batch_size}")
        require(self.calibration_images >= 1, "calibration_images must be >= 1",
              f"calibration_images={self.calibration_images}")
        require(0 < self.val_fraction < 1, "val_fraction must be in (0, 1)",
              f"val_fraction={self.val_fraction}")


@dataclasses.dataclass(frozen=True)
class CompressResult:
    """What `prune_run` or `qat_run` wrote.

    Attributes:
        run_dir: The new run directory.
        metrics: Validation metrics of the compressed model.
        parent_metrics: The input model's metrics on the same images, before fine-tuning.
        sparsity: `{"total", "pruned_layers", "layers": {name: fraction}}` of the kernels.
        sizes: Bytes of the model files (and their gzip) before and after, when measured.
        stage: The stage name its manifest records.
        model: The compressed tf_keras model as saved (for notebooks and tests).
    """

    run_dir: Path
    metrics: dict
    parent_metrics: dict
    sparsity: dict
    sizes: dict
    stage: str
    model: object = dataclasses.field(default=None, repr=False, compare=False)


def _check_wrappable(model, path: Path) -> None:
    """Refuses models that tfmot cannot wrap layer by layer."""
    import tf_keras as keras

    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise BadInputError(
            f"{path}: a subclassed model ({type(model).__name__}); pruning and quantization-aware "
            "training need a flat Functional or Sequential tf_keras model")
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise BadInputError(
            f"{path}: nested model layer(s) {nested}; pruning and quantization-aware training "
            "need a flat model (every layer at the top level)")


def _load_parent(run_dir, out_dir, step: str) -> tuple[Run, object]:
    from vgg_mobile.models import architectures as models

    run = load_run(run_dir)
    if run.manifest.get("kind", "image_classifier") != "image_classifier":
        raise RunDirError(f"{run.path}: holds a {run.manifest.get('kind')!r} model; "
                          "compression needs an image_classifier run")
    if run.manifest.get("architecture") in models.ARCHITECTURES:
        models.require_tfmot_compatible(run.manifest["architecture"], step)
    if Path(out_dir).resolve() == run.path.resolve():
        raise BadInputError(f"{out_dir}: the output must be a new run directory, not the input run")
    model = run.load_model()
    _check_wrappable(model, run.model_path)
    if tuple(model.output_shape[1:]) != (len(run.classes),):
        raise RunDirError(f"{run.model_path}: outputs {model.output_shape[1:]} do not match the "
                          f"{len(run.classes)} classes of the manifest")
    return run, model


def _fine_tune_split(run: Run, data_dir, val_fraction: float, seed: int):
    """Training and validation images, reusing the parent's split on the parent's own folder.

    Returns:
        `(folder, split, data_record)` where `data_record` goes into the manifest.
    """
    folder = dataset.scan_folder(data_dir, classes=run.classes)
    parent_data = run.manifest.get("data") or {}
    same = bool(parent_data) and Path(parent_data.get("path", "")).resolve() == folder.root.resolve()
    if folder.presplit:
        source = "presplit"
    elif same:
        source = "parent"
        val_fraction, seed = parent_data.get("val_fraction", 0.2), parent_data.get("seed", 0)
    else:
        source = "own"
    parts = dataset.split(folder, val_fraction, seed)
    if not parts.train or not parts.val:
        raise BadInputError(f"{folder.root}: needs images for both fine-tuning and validation "
                            f"({len(parts.train)} / {len(parts.val)})")
    record = {"path": str(folder.root.resolve()), "fingerprint": folder.fingerprint(),
              "presplit": folder.presplit, "split_from": source, "val_fraction": val_fraction,
              "seed": seed, "train_images": len(parts.train), "val_images": len(parts.val)}
    return folder, parts, record


def _validation_metrics(model, examples, run: Run, batch_size: int) -> dict:
    return evaluation.validation_metrics(model, examples, run.image_size, run.classes, batch_size)


def _train_dataset(parts, run: Run, batch_size: int, augment: bool, seed: int):
    return dataset.make_dataset(
        parts.train, run.image_size, batch_size, len(run.classes), training=True,
        augmentation=dataset.Augmentation() if augment else dataset.NO_AUGMENTATION, seed=seed)


def _kernels(layer) -> list[np.ndarray]:
    """The prunable kernels of a layer (of the layer inside a tfmot wrapper), as arrays.

    Read from the layer's variables by name: a QAT wrapper replaces the `kernel` attribute
    with the fake-quantized tensor of its last call.
    """
    inner = getattr(layer, "layer", layer)
    wanted = PRUNABLE_KERNELS.get(type(inner).__name__, ())
    # The wrapper, not the inner layer, tracks the kernel variable.
    return [w.numpy() for w in layer.weights if w.name.split("/")[-1].split(":")[0] in wanted]


def kernel_sparsity(model, pruned: tuple[str, ...] = ()) -> dict:
    """Share of exactly-zero weights in the conv and dense kernels of a Keras model.

    Args:
        model: A tf_keras model, plain or wrapped by tfmot's QAT.
        pruned: Names of the layers that were pruned, for `pruned_layers`. Defaults to none.

    Returns:
        `{"total": f, "pruned_layers": f, "zeros": n, "weights": n, "layers": {name: f}}`;
        `total` counts every conv/dense kernel, `pruned_layers` only those in `pruned`.
    """
    layers, zeros, total, pz, pt = {}, 0, 0, 0, 0
    for layer in model.layers:
        kernels = _kernels(layer)
        if not kernels:
            continue
        name = getattr(layer, "layer", layer).name
        z = sum(int(np.count_nonzero(k == 0)) for k in kernels)
        n = sum(int(k.size) for k in kernels)
        layers[name] = round(z / n, 4)
        zeros, total = zeros + z, total + n
        if name in pruned:
            pz, pt = pz + z, pt + n
    return {"total": round(zeros / total, 4) if total else 0.0,
            "pruned_layers": round(pz / pt, 4) if pt else 0.0,
            "zeros": zeros, "weights": total, "layers": layers}


def _manifest_common(run: Run) -> dict:
    parent = run.manifest
    return {key: parent[key] for key in ("architecture", "input", "preprocessing", "output")
            if key in parent}


# --- pruning ----------------------------------------------------------------------------


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
    config: PruneConfig = PruneConfig(),
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
    run, model = _load_parent(run_dir, out_dir, "prune")
    if is_quantization_aware(model):
        raise BadInputError(f"{run.model_path}: already quantization-aware; prune first, then run qat")
    chosen, skipped = _layers_to_prune(model, config)
    if not chosen:
        raise BadInputError(f"{run.model_path}: no conv or dense layer left to prune "
                            f"(skipped: {skipped})")
    folder, parts, data_record = _fine_tune_split(run, data_dir, config.val_fraction, config.seed)
    out = prepare_out_dir(out_dir, force=force)

    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    keras.utils.set_random_seed(config.seed)
    steps_per_epoch = math.ceil(len(parts.train) / config.batch_size)
    schedule = _prune_schedule(config, steps_per_epoch)
    parent_metrics = _validation_metrics(model, parts.val, run, config.batch_size)
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
    train_ds = _train_dataset(parts, run, config.batch_size, config.augment, config.seed)
    history = wrapped.fit(train_ds, epochs=config.epochs, verbose=verbose,
                          callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)

    metrics = _validation_metrics(stripped, parts.val, run, config.batch_size)
    sparsity = kernel_sparsity(stripped, tuple(chosen))
    manifest = new_manifest(
        stage, run.classes, **_manifest_common(run),
        config={"prune": dataclasses.asdict(config)},
        command=command,
        data=data_record,
        parent=str(run.path.resolve()),
        metrics=metrics,
        compression={
            "method": "magnitude pruning (tfmot prune_low_magnitude, polynomial decay), stripped",
            "schedule": schedule,
            "pruned_layers": chosen,
            "skipped_layers": skipped,
            "sparsity": sparsity,
            "parent_metrics": {"accuracy": parent_metrics["accuracy"],
                               "macro_f1": parent_metrics["macro_f1"]},
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        },
    )
    finish_run(out, stripped, manifest)
    # Sizes are of the files as written, so they are measured after the model is saved; the
    # manifest is then replaced atomically with them added.
    before, after = run.model_path, out / manifest["model_file"]
    sizes = {"model_bytes_before": before.stat().st_size, "model_bytes_after": after.stat().st_size,
             "gzip_bytes_before": gzip_size(before), "gzip_bytes_after": gzip_size(after)}
    manifest["compression"]["sizes"] = sizes
    write_json(out / "manifest.json", manifest)
    log(f"wrote {out}: sparsity {sparsity['pruned_layers']:.1%} of pruned layers "
        f"({sparsity['total']:.1%} of all kernels), val accuracy {metrics['accuracy']:.3f}, "
        f"gzip {sizes['gzip_bytes_before'] / 1e6:.1f} MB -> {sizes['gzip_bytes_after'] / 1e6:.1f} MB")
    return CompressResult(out, metrics, parent_metrics, sparsity, sizes, manifest["stage"], stripped)


# --- quantization-aware training --------------------------------------------------------


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


def _images(examples, run: Run, limit: int, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(len(examples))[:limit]
    ds = dataset.make_dataset(tuple(examples[i] for i in order), run.image_size, 64,
                              len(run.classes), one_hot=False)
    return np.concatenate([x.numpy() for x, _ in ds])


def qat_run(
    run_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    config: QATConfig = QATConfig(),
    force: bool = False,
    command: list[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
    verbose: int = 0,
    stage: str | None = None,
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
    run, model = _load_parent(run_dir, out_dir, "qat")
    if is_quantization_aware(model):
        raise BadInputError(f"{run.model_path}: already quantization-aware")
    parent_sparsity = kernel_sparsity(model)
    if config.preserve_sparsity and parent_sparsity["total"] < _MIN_PRUNED_SPARSITY:
        raise BadInputError(
            f"{run.path}: the model is not pruned (kernel sparsity {parent_sparsity['total']:.1%}); "
            "--preserve-sparsity needs a run written by `vgg-mobile prune`")
    folder, parts, data_record = _fine_tune_split(run, data_dir, config.val_fraction, config.seed)

    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

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
    out = prepare_out_dir(out_dir, force=force)

    keras.utils.set_random_seed(config.seed)
    parent_metrics = _validation_metrics(model, parts.val, run, config.batch_size)
    calibration = _images(parts.train, run, config.calibration_images, config.seed)
    ranges = _calibrate_ranges(qat_model, model, calibration, config.batch_size)
    log(f"quantization-aware training of {run.path} ({scheme_name}, {config.epochs} epochs); "
        f"parent val accuracy {parent_metrics['accuracy']:.3f}")
    qat_model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                      loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    train_ds = _train_dataset(parts, run, config.batch_size, config.augment, config.seed)
    history = qat_model.fit(train_ds, epochs=config.epochs, verbose=verbose)

    metrics = _validation_metrics(qat_model, parts.val, run, config.batch_size)
    sparsity = kernel_sparsity(qat_model, tuple(n for n, f in parent_sparsity["layers"].items()
                                                if f >= _MIN_PRUNED_SPARSITY))
    manifest = new_manifest(
        stage or f"{run.manifest['stage']}_qat", run.classes, **_manifest_common(run),
        model_file=QAT_MODEL_FILE,
        quantization_aware=True,
        config={"qat": dataclasses.asdict(config)},
        command=command,
        data=data_record,
        parent=str(run.path.resolve()),
        metrics=metrics,
        compression={
            "method": "quantization-aware training (tfmot quantize_apply, 8-bit)",
            "scheme": scheme_name,
            "sparsity": sparsity,
            "parent_sparsity": parent_sparsity["total"],
            "activation_ranges": ranges,
            "parent_metrics": {"accuracy": parent_metrics["accuracy"],
                               "macro_f1": parent_metrics["macro_f1"]},
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        },
    )
    with warnings.catch_warnings():
        # HDF5 is chosen on purpose (see the docstring); tf_keras warns that it is legacy.
        warnings.filterwarnings("ignore", message=".*HDF5 file.*")
        finish_run(out, qat_model, manifest)
    log(f"wrote {out}: val accuracy {metrics['accuracy']:.3f} (parent "
        f"{parent_metrics['accuracy']:.3f}), kernel sparsity {sparsity['total']:.1%}")
    return CompressResult(out, metrics, parent_metrics, sparsity, {}, manifest["stage"], qat_model)
