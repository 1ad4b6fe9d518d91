"""What pruning and quantization-aware training share: loading the parent run, the
fine-tuning split, the result, and measuring kernel sparsity.

tfmot wraps the layers of a flat tf_keras Functional or Sequential model only; nested or
subclassed models are refused with a `BadInputError` before any work is done.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from vgg_mobile.core.errors import BadInputError, RunDirError
from vgg_mobile.core.run_dir import Manifest, Run, load_run
from vgg_mobile.data import dataset, splits
from vgg_mobile.evaluation import metrics as evaluation

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
# Below this share of zero kernel weights a run is not considered pruned.
MIN_PRUNED_SPARSITY = 0.05




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


def check_wrappable(model, path: Path) -> None:
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


def load_parent(run_dir, out_dir, step: str) -> tuple[Run, object]:
    from vgg_mobile.models import architectures as models

    run = load_run(run_dir)
    if run.manifest.kind != "image_classifier":
        raise RunDirError(f"{run.path}: holds a {run.manifest.kind!r} model; "
                          "compression needs an image_classifier run")
    if run.manifest.architecture in models.ARCHITECTURES:
        models.require_tfmot_compatible(run.manifest.architecture, step)
    if Path(out_dir).resolve() == run.path.resolve():
        raise BadInputError(f"{out_dir}: the output must be a new run directory, not the input run")
    model = run.load_model()
    check_wrappable(model, run.model_path)
    if tuple(model.output_shape[1:]) != (len(run.classes),):
        raise RunDirError(f"{run.model_path}: outputs {model.output_shape[1:]} do not match the "
                          f"{len(run.classes)} classes of the manifest")
    return run, model


def fine_tune_split(run: Run, data_dir, val_fraction: float, seed: int):
    """Fine-tuning and validation images (see `data.splits.choose_split`: on the parent's own
    folder, the parent's split).

    Returns:
        `(folder, split, data_record)` where `data_record` goes into the manifest.

    Raises:
        BadInputError: One side of the split is empty.
    """
    folder = dataset.scan_folder(data_dir, classes=run.classes)
    choice = splits.choose_split(folder, run.manifest.data, val_fraction, seed)
    parts = choice.parts
    if not parts.train or not parts.val:
        raise BadInputError(f"{folder.root}: needs images for both fine-tuning and validation "
                            f"({len(parts.train)} / {len(parts.val)})")
    return folder, parts, splits.data_record(folder, choice)


def validation_metrics(model, examples, run: Run, batch_size: int) -> dict:
    return evaluation.validation_metrics(model, examples, run.image_size, run.classes, batch_size)


def fine_tune_augmentation(parts, run: Run, augment: bool, seed: int,
                           log=lambda message: None):
    """The augmentation of a fine-tune: a teacher's `standard` policy with `flip = "auto"`
    (`data.augmentation.choose_augmentation`, its decision logged)."""
    from vgg_mobile.data.augmentation import choose_augmentation

    choice = choose_augmentation(augment, "standard", "auto", run.image_size, parts.train, seed)
    log(choice.line)
    return choice


def train_dataset(parts, run: Run, batch_size: int, augment: bool, seed: int,
                  log=lambda message: None):
    """The fine-tuning images, augmented as `fine_tune_augmentation` says."""
    choice = fine_tune_augmentation(parts, run, augment, seed, log)
    return dataset.make_dataset(
        parts.train, run.image_size, batch_size, len(run.classes), training=True,
        augmentation=choice.augmentation, seed=seed)


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


def parent_fields(run: Run) -> dict:
    parent = run.manifest
    return {"architecture": parent.architecture, "input": parent.input,
            "preprocessing": parent.preprocessing, "output": parent.output}


def compression_manifest(run: Run, stage: str, config: dict, command, data_record: dict,
                         metrics: dict, parent_metrics: dict, history, record: dict,
                         **fields) -> Manifest:
    """The manifest of a run compressed from `run`: the parent's model contract and path, and
    the `compression` record (`record`, then the parent's metrics on the same images and the
    fine-tuning's history). `fields` are further `Manifest` fields (e.g. `model_file`)."""
    return Manifest(
        stage=stage, classes=run.classes, **parent_fields(run), config=config, command=command,
        data=data_record, parent=str(run.path.resolve()), metrics=metrics,
        sections={"compression": {
            **record,
            "parent_metrics": {"accuracy": parent_metrics["accuracy"],
                               "macro_f1": parent_metrics["macro_f1"]},
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        }}, **fields)
