"""Knowledge distillation: a trained teacher run teaches a small student, saved as its own run.

The `Distiller` wraps a frozen teacher and a trainable student and trains the student on
Hinton's loss

    alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

reading both models' `logits` layers. Teacher and student may have different input sizes:
each training image is augmented once and each model gets its own resized view of it
("consistent teaching"), so the teacher's soft labels describe the very crop the student sees.

Only the student is saved, as a plain flat tf_keras model (no wrapper, no custom objects),
ready for `evaluate`, pruning, quantization-aware training and conversion.

With a folder of unlabelled images (`DistillConfig.unlabeled`, checked by
`data.unlabeled.scan_unlabeled`) the student also trains on those, shuffled in with the
labelled training images, through the distillation term alone: the teacher's answer on each
is all the student learns from it (see `distiller`). The baseline never sees them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

from vgg_mobile.data import dataset, splits
from vgg_mobile.data.augmentation import AugmentationChoice, choose_augmentation
from vgg_mobile.data.unlabeled import UnlabeledFolder, scan_unlabeled
from vgg_mobile.models import architectures as models
from vgg_mobile.training import distribute as dist
from vgg_mobile.training.distribute import DistributeConfig
from vgg_mobile.core.errors import DataError, RunDirError, clip, require, require_number
from vgg_mobile.models.architectures import ModelOptions
from vgg_mobile.core.outputs import check_no_overlap, claim_output, worker_output
from vgg_mobile.core.run_dir import CHECKPOINTS, Manifest, Run, finish_run, load_run, manifest_digest
from vgg_mobile.core.io import write_json
from vgg_mobile.distillation.distiller import build_distiller
from vgg_mobile.training.checkpoints import STATE, read_resume_state, record_epoch_logs
from vgg_mobile.training.hyperparameters import (MAX_FOCAL_GAMMA, MAX_LEARNING_RATE, MAX_SEED,
                                                  check_augmentation_keys, check_training_knobs,
                                                  imbalance_remedy)
from vgg_mobile.training.schedules import warmup_cosine

DEFAULT_STUDENT = "mobilenet_v2_0.35"
SHIP_CHOICES = ("better", "distilled")


def student_names() -> tuple[str, ...]:
    """Registry names usable as students: the MobileNet families."""
    return tuple(sorted(name for name, spec in models.ARCHITECTURES.items()
                        if spec.family.startswith("mobilenet")))


def unlabeled_per_epoch(ratio: float, labelled: int, unlabeled: int) -> int:
    """How many of `unlabeled` images an epoch over `labelled` ones reads at `ratio`
    unlabelled images per labelled one (all of them when there are fewer)."""
    return min(unlabeled, math.ceil(ratio * labelled))


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """How a student is distilled from a teacher.

    Attributes:
        student: A student name from `student_names()`.
        image_size: The student's input side in pixels; `None` takes the teacher's.
        student_weights: The student backbone's starting weights: "none" (random),
            "imagenet" (Keras's ImageNet weights of the student architecture, saved at 224 px
            and loaded by layer name at any size; from the Keras cache, downloaded into it
            unless offline), "auto" (imagenet when cached, else none; never downloads) or
            a path to an .h5 weights file of the backbone.
        temperature: Softens both models' logits before the KL term (T in Hinton's loss).
        alpha: Weight of the hard-label cross-entropy; `1 - alpha` weighs the teacher's term.
        class_weights: Weight the hard-label cross-entropy by inverse class frequency of the
            labelled training images (`dataset.class_weights`); the distillation term stays
            unweighted. The baseline is trained with the same loss.
        focal_gamma: The hard-label term's focal exponent (see `TrainConfig.focal_gamma`);
            0 is the plain cross-entropy. The baseline is trained with the same loss.
        mixup: Mixes each distillation batch with a shuffled copy of itself, the same mix for
            both models' views and the labels, with a weight drawn from Beta(mixup, mixup);
            0 turns it off. The baseline (the student trained alone) is trained without it.
        teacher_tta: The teacher's soft answers average its view of the image and that
            view's left-right mirror (test-time augmentation of the teacher: one more teacher
            pass per batch). For images whose mirror is the same class (photos, clothing),
            not digits or letters.
        epochs: Passes over the training split.
        batch_size: Images per step.
        learning_rate: Peak learning rate, after a linear warm-up, then cosine-decayed to 0.
        warmup_epochs: Length of the warm-up, in epochs (may be fractional).
        weight_decay: Decoupled weight decay (AdamW).
        dropout: Dropout rate before the student's `logits` layer.
        augment: Augment training images; `False` turns off `augmentation` and `flip`.
        augmentation: The policy, as the teacher's (`TrainConfig.augmentation`): `standard`
            or `trivialaugment`, applied once per image before each model gets its view.
        flip: Random horizontal flips: `on`, `off`, or `auto`, decided from the training
            images as for the teacher (`data.mirror`), logged and recorded in the manifest
            (`distillation.augmentation`).
        crop_scale: The smallest share of the image's area a random crop keeps, as the
            teacher's (`TrainConfig.crop_scale`); `None` keeps the input size's default.
        colour_jitter: The colour jitter, as the teacher's (`TrainConfig.colour_jitter`);
            `None` keeps the input size's default.
        val_fraction: Share of each class held out for validation on a folder other than
            the teacher's; `None` uses the teacher run's. On the teacher's own folder the
            teacher's split is always reused (a warning says so when this differs), so the
            validation images are ones the teacher never trained on.
        unlabeled: A folder of images without labels (any layout without class folders;
            relative to the working directory) that the student also learns from, through
            the teacher's answers alone (the distillation term), shuffled in with the labelled
            training images; a copy of any image of the data folder is left out. `None` uses
            none. Needs alpha below 1; the baseline never sees them.
        unlabeled_ratio: Unlabelled images per labelled one in an epoch: each epoch reads
            every labelled training image and a fresh seeded draw of `ceil(unlabeled_ratio *
            labelled)` unlabelled ones (all of them when there are fewer), so an epoch costs
            at most `1 + unlabeled_ratio` times one without them, whatever the folder's size.
        unlabeled_learning_rate: The peak learning rate instead of `learning_rate` when the
            student also learns from unlabelled images (the baseline keeps `learning_rate`).
            Chosen while the label term pushed on unlabelled images (fixed since), when the
            sample preset's 64 px student diverged at 1e-2 on Fashion-MNIST and trained at
            3e-3; not re-measured since the fix (docs/measurements.md).
        seed: Seeds the student's initialisation, shuffles and augmentation (and the split
            of a folder other than the teacher's).
        baseline: Also train the same student from the same initialisation without the
            teacher (alpha 1), with the same budget, and record its accuracy.
        ship: With `baseline`, which student the run keeps: `better` keeps the one more
            accurate on the validation images (the distilled one on a tie) and records why;
            `distilled` always keeps the distilled one. Without `baseline` the distilled
            student is kept.
        strict: Fail on any bad image instead of skipping it.
    """

    student: str = DEFAULT_STUDENT
    image_size: int | None = None
    student_weights: str = "none"
    temperature: float = 2.0
    alpha: float = 0.5
    class_weights: bool = False
    focal_gamma: float = 0.0
    mixup: float = 0.0
    teacher_tta: bool = False
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-2
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    dropout: float = 0.2
    augment: bool = True
    augmentation: str = "standard"
    flip: str = "auto"
    crop_scale: float | None = None
    colour_jitter: float | None = None
    val_fraction: float | None = None
    unlabeled: str | None = None
    unlabeled_ratio: float = 1.0
    unlabeled_learning_rate: float = 3e-3
    seed: int = 0
    baseline: bool = False
    ship: str = "better"
    strict: bool = False

    def __post_init__(self):
        valid = student_names()
        require(self.student in valid,
                f"unknown student {clip(repr(self.student))}; valid: {', '.join(valid)}",
                f"student={self.student!r}")
        spec = models.get_architecture(self.student)
        require(self.image_size is None or self.image_size >= spec.min_size,
             f"{self.student} needs an image size of at least {spec.min_size}",
             f"image_size={self.image_size}")
        require(bool(self.student_weights),
                "student_weights must be 'auto', 'imagenet', 'none' or a path",
                f"student_weights={self.student_weights!r}")
        # A temperature above 100 flattens the teacher's answers to uniform: nothing to learn.
        require_number(self.temperature, "temperature", 0, 100, low_open=True)
        require_number(self.alpha, "alpha", 0, 1)
        require_number(self.mixup, "mixup", 0, 100)
        require(isinstance(self.class_weights, bool), "class_weights must be true or false",
                f"class_weights={self.class_weights!r}")
        require_number(self.focal_gamma, "focal_gamma", 0, MAX_FOCAL_GAMMA)
        check_training_knobs(self)
        check_augmentation_keys(self)
        require_number(self.dropout, "dropout", 0, 1, high_open=True)
        require(self.ship in SHIP_CHOICES, f"ship must be one of {', '.join(SHIP_CHOICES)}",
             f"ship={self.ship!r}")
        if self.val_fraction is not None:
            require_number(self.val_fraction, "val_fraction", 0, 1, low_open=True, high_open=True)
        if self.unlabeled is not None:
            require(isinstance(self.unlabeled, str) and bool(self.unlabeled),
                    "unlabeled must be a folder's path or None",
                    f"unlabeled={self.unlabeled!r}")
            # On unlabelled images the distillation term is the whole loss: at alpha 1 they
            # would teach nothing.
            require(self.alpha < 1, "unlabelled images teach through the distillation term "
                    "alone, weighted 1 - alpha: alpha must be below 1 with unlabeled",
                    f"alpha={self.alpha}")
        require_number(self.unlabeled_ratio, "unlabeled_ratio", 0, 1000, low_open=True)
        require_number(self.unlabeled_learning_rate, "unlabeled_learning_rate", 0,
                       MAX_LEARNING_RATE, low_open=True)
        require_number(self.seed, "seed", 0, MAX_SEED, integer=True)

    def peak_learning_rate(self, with_unlabeled: bool) -> float:
        """The peak learning rate of a student trained with or without unlabelled images."""
        return self.unlabeled_learning_rate if with_unlabeled else self.learning_rate

    def unlabeled_per_epoch(self, labelled: int, unlabeled: int) -> int:
        """How many of `unlabeled` images an epoch over `labelled` ones reads
        (`unlabeled_ratio`)."""
        return unlabeled_per_epoch(self.unlabeled_ratio, labelled, unlabeled)

    def student_options(self, image_size: int) -> ModelOptions:
        """The student's architecture options at `image_size`, starting from `student_weights`."""
        return ModelOptions(architecture=self.student, image_size=image_size,
                            weights=self.student_weights,
                            dropout=self.dropout, head_units=0)


def _optimizer(config: DistillConfig, steps_per_epoch: int, learning_rate: float | None = None):
    import tf_keras as keras

    schedule = warmup_cosine(config.learning_rate if learning_rate is None else learning_rate,
                             total_steps=config.epochs * steps_per_epoch,
                             warmup_steps=config.warmup_epochs * steps_per_epoch)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


@dataclasses.dataclass(frozen=True)
class DistillResult:
    """What `distill` wrote and measured.

    Attributes:
        run_dir: The student's run directory.
        metrics: The distilled student's metrics on the validation split.
        teacher_metrics: The teacher's metrics on the same images.
        baseline_metrics: The student trained without the teacher, or `None`.
        history: Per-epoch losses and accuracy of the distillation.
        student_parameters: Parameters of the student.
        teacher_parameters: Parameters of the teacher.
        seconds: Wall time of training (distillation and baseline).
        wrote_run: `False` on a multi-worker non-chief, which writes nothing.
        distribution: The manifest's `distribution` entry (strategy, replicas, batch, lr).
        verdict: With a baseline, `compare_with_baseline`'s answer (which student was kept,
            and why); else `None`. `metrics` are the kept student's.
        unlabeled: The unlabelled images it also learnt from (`UnlabeledFolder.record()`, the
            manifest's `data.unlabeled`), or `None`.
    """

    run_dir: Path
    metrics: dict
    teacher_metrics: dict
    baseline_metrics: dict | None
    history: dict
    student_parameters: int
    teacher_parameters: int
    seconds: float
    wrote_run: bool = True
    distribution: dict = dataclasses.field(default_factory=dict)
    verdict: dict | None = None
    unlabeled: dict | None = None


def _check_teacher(run: Run) -> None:
    manifest = run.manifest
    if manifest.kind != "image_classifier":
        raise RunDirError(f"{run.path}: not a classifier run (kind={manifest.kind!r}); "
                          "the teacher must be a run of `vgg-mobile train` or a later stage")
    if (manifest.output or {}).get("logits_layer") != "logits":
        raise RunDirError(f"{run.path}: its manifest names no 'logits' layer "
                          f"(output={manifest.output!r}), so it cannot teach")


def _summary(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("classes", "per_class", "confusion_matrix")}


def _read_data(teacher_run, data_dir, config: DistillConfig, log):
    """The labelled folder (checked against the teacher's classes), the unlabelled images
    (`None` without `config.unlabeled`) and the split, each problem logged."""
    def same_classes(folder):
        if folder.classes != teacher_run.classes:
            raise DataError(
                f"{folder.root}: classes {list(folder.classes)} differ from the teacher's "
                f"{list(teacher_run.classes)} (names and order must match) in {teacher_run.path}")

    folder, choice = splits.read_split(
        data_dir, log, teacher_run.manifest.data, config.val_fraction, config.seed, config.strict,
        imbalance_remedy(config.class_weights, config.focal_gamma), check=same_classes)
    unlabeled = None
    if config.unlabeled is not None:
        unlabeled = scan_unlabeled(config.unlabeled, folder, strict=config.strict)
        for check in unlabeled.bad:
            log(f"skipped {check.path}: {check.problem}")
        log(f"{len(unlabeled.images)} unlabelled images in {unlabeled.root}"
            + (f"; {unlabeled.duplicates} left out as copies of images of the data folder"
               if unlabeled.duplicates else ""))
    return folder, unlabeled, choice


def distill(
    teacher_run_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    config: DistillConfig | None = None,
    force: bool = False,
    resume: bool = False,
    command: list[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
    verbose: int = 0,
    callbacks: tuple = (),
    distribute: DistributeConfig | None = None,
    stage: str = "student",
    offline: bool = False,
) -> DistillResult:
    """Distills a teacher run into a student and writes the student's run directory.

    Every check (teacher run, classes, options, output folder) happens before training.

    Args:
        teacher_run_dir: A finished classifier run (e.g. from `vgg-mobile train`).
        data_dir: Image folder with exactly the teacher's classes.
        out_dir: Run directory to write the student to.
        config: Distillation settings. Defaults to `DistillConfig()`.
        force: Replace a finished or interrupted run in `out_dir`. Defaults to `False`.
        resume: Continue the interrupted run in `out_dir` after its last finished epoch (Keras
            `BackupAndRestore` backs up the model and optimizer every epoch); the teacher, data
            and settings must be the ones it started with. Defaults to `False`.
        command: The command line that asked for this, recorded in the manifest.
        log: Receives one-line progress messages. Defaults to discarding them.
        stage: The stage name its manifest records (the pipeline's folder and config
            section). Defaults to `"student"`.
        verbose: Keras progress output (0 silent, 1 progress bar, 2 one line per epoch).
        callbacks: Extra Keras callbacks for the distillation `fit`. Defaults to none.
        distribute: Strategy, mixed precision and XLA, as for `training.train`: the batch
            size is per replica and the learning rate is scaled by the replica count; in a
            multi-worker run only the chief writes `out_dir`. The strategy is created here,
            before any other TensorFlow work. Defaults to `DistributeConfig()`.
        offline: Never download: `student_weights="imagenet"` must then be in the Keras
            cache (`VGG_MOBILE_OFFLINE=1` does the same). Otherwise missing ImageNet weights
            are downloaded into the cache before any work; "auto" never downloads. Defaults
            to `False`.

    Returns:
        A `DistillResult`; on a multi-worker non-chief its `run_dir` was not written.

    Raises:
        RunDirError: The teacher run is unfinished or not a classifier, or `out_dir` cannot
            be written.
        DataError: The data folder fails its checks or its classes differ from the teacher's;
            the unlabelled folder (`config.unlabeled`) fails `scan_unlabeled`'s checks.
        BadInputError: Bad settings (e.g. the student's ImageNet weights not in the local
            cache when offline).
        VggMobileError: The student's ImageNet weights could not be downloaded.
    """
    distribute = distribute or DistributeConfig()
    config = config or DistillConfig()
    teacher_run = load_run(teacher_run_dir)
    _check_teacher(teacher_run)
    out = Path(out_dir)
    check_no_overlap(out, (teacher_run.path, data_dir, config.unlabeled))
    folder, unlabeled, choice = _read_data(teacher_run, data_dir, config, log)
    n_classes = len(folder.classes)
    # Checked, and missing ImageNet weights downloaded, before any work.
    options = config.student_options(config.image_size or teacher_run.image_size)
    models.resolve_weights(options.weights, options.architecture, offline=offline, log=log,
                           flag="--student-weights")

    dist.check_cluster(distribute, dist.read_cluster())
    distribution = dist.create_distribution(distribute)
    teacher = teacher_run.load_model()
    layer_names = {layer.name for layer in teacher.layers}
    if "logits" not in layer_names or teacher.output_shape[-1] != n_classes:
        raise RunDirError(f"{teacher_run.model_path}: not a classifier with a 'logits' layer and "
                          f"{n_classes} outputs (output shape {teacher.output_shape})")
    identity = {"config": json.loads(json.dumps(dataclasses.asdict(config))),
                "teacher_manifest": manifest_digest(teacher_run.path),
                "data_fingerprint": folder.fingerprint(), "replicas": distribution.replicas,
                "unlabeled_fingerprint": unlabeled.fingerprint if unlabeled else None}
    claim = (claim_output(out, ("run",),
                          inputs=(teacher_run.path, folder.root, unlabeled and unlabeled.root),
                          force=force, resume=resume)
             if distribution.writes_run else worker_output(out, resume, force))
    with claim as output:
        path = output.path
        # Every worker reads the chief's record: --out must be on storage they all reach.
        recorded = (read_resume_state(path / CHECKPOINTS / STATE, path, identity,
                                      defaults={"config": dataclasses.asdict(DistillConfig())})
                    .get("history", {}) if resume else {})
        if distribution.writes_run and not resume:
            (path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
            write_json(path / CHECKPOINTS / STATE, {**identity, "history": {}, "command": command})
        with dist.writer_dir(path, distribution) as write_dir:
            result = _distill(teacher_run, teacher, folder, choice, unlabeled, path, write_dir,
                              config, command, log, verbose, callbacks, distribution, recorded,
                              stage, offline)
    if distribution.writes_run:
        log(f"wrote {out} (student val accuracy {_accuracy(result.metrics)}, teacher "
            f"{_accuracy(result.teacher_metrics)}"
            + (f", student alone {_accuracy(result.baseline_metrics)}"
               if result.baseline_metrics is not None else "") + ")")
    return dataclasses.replace(result, run_dir=out)


def gain_verdict(gain: float) -> str:
    """What an accuracy gain over the student trained alone says, as the figure is printed
    (in points, to one decimal): "paid", "made no difference" or "did not pay"."""
    points = round(gain * 100, 1)
    return "paid" if points > 0 else "made no difference" if points == 0 else "did not pay"


def compare_with_baseline(teacher: dict, distilled: dict, baseline: dict, ship: str) -> dict:
    """Which student a run with a baseline keeps, and the plain sentence that says why.

    Args:
        teacher: The teacher's metrics on the validation images.
        distilled: The distilled student's, on the same images.
        baseline: The same student trained alone's, on the same images.
        ship: `DistillConfig.ship`.

    Returns:
        `{"shipped": "distilled" | "baseline", "accuracy_gain": distilled - baseline,
        "teacher_weaker": bool, "reason": str}`.
    """
    t, d, b = (m.get("accuracy", 0.0) for m in (teacher, distilled, baseline))
    gain = round(d - b, 4)
    shipped = "baseline" if ship == "better" and b > d else "distilled"
    reason = (f"distillation {gain_verdict(gain)}: {d:.3f} against {b:.3f} for the student "
              f"trained alone ({gain * 100:+.1f} points)")
    if t <= b:
        reason += (f"; the teacher ({t:.3f}) is no more accurate than the student trained "
                   "alone, so it had little to teach")
    reason += ("; kept the student trained alone" if shipped == "baseline"
               else "; kept the distilled student")
    return {"shipped": shipped, "accuracy_gain": gain, "teacher_weaker": t <= b, "reason": reason}


def shipped_learning_rate(config: DistillConfig, with_unlabeled: bool,
                          verdict: dict | None) -> float:
    """The peak rate the shipped student trained at: the baseline, trained on the labels
    alone, never at `unlabeled_learning_rate`."""
    distilled = verdict is None or verdict["shipped"] == "distilled"
    return config.peak_learning_rate(with_unlabeled and distilled)


def _accuracy(metrics: dict) -> str:
    return f"{metrics.get('accuracy', float('nan')):.3f}"


def _epoch_recorder(state_path: Path | None, key: str, history: dict):
    """Keeps each finished epoch's logs in the run's state file (the chief's), so that a
    resumed run's history starts where the interrupted one stopped."""
    import tf_keras as keras

    class EpochRecorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            record_epoch_logs(history, epoch, logs)
            if state_path is not None:
                state = json.loads(state_path.read_text(encoding="utf-8"))
                state["history"][key] = history
                write_json(state_path, state)

    return EpochRecorder()


@dataclasses.dataclass(frozen=True)
class _Training:
    """What the distilled student and its baseline are both trained with."""

    config: DistillConfig
    options: ModelOptions
    parts: dataset.Split
    unlabeled: tuple[Path, ...]
    n_classes: int
    student_size: int
    teacher_size: int
    teacher: object  # the teacher under the strategy
    distribution: dist.Distribution
    augmentation: AugmentationChoice
    recorded: dict
    out: Path
    write_dir: Path
    verbose: int | str
    offline: bool
    log: Callable[[str], None]

    @property
    def global_batch(self) -> int:
        return self.distribution.global_batch(self.config.batch_size)


def _train_student(t: _Training, with_teacher: bool, fit_callbacks=()):
    """Trains one student (distilled from the teacher, or alone: the baseline); returns it as
    a plain float32 model, and its per-epoch history."""
    import tf_keras as keras

    config, distribution, parts = t.config, t.distribution, t.parts
    # The teacher labels the unlabelled images: the baseline, trained alone, never sees them.
    unlabeled = t.unlabeled if with_teacher else ()
    per_epoch = config.unlabeled_per_epoch(len(parts.train), len(unlabeled))
    steps_per_epoch = -(-(len(parts.train) + per_epoch) // t.global_batch)
    learning_rate = distribution.scaled_learning_rate(config.peak_learning_rate(bool(unlabeled)))
    keras.utils.set_random_seed(config.seed)  # the baseline starts from the same weights
    with distribution.strategy.scope():
        student = models.build_classifier(t.options, t.n_classes, offline=t.offline)
        if distribution.config.mixed_precision:
            student = dist.to_mixed_precision(student)
        distiller = build_distiller(student, t.teacher if with_teacher else None,
                                    config.temperature, config.alpha if with_teacher else 1.0,
                                    mixup=config.mixup if with_teacher else 0.0,
                                    class_weights=(tuple(dataset.class_weights(
                                        parts.train, t.n_classes).values())
                                        if config.class_weights else None),
                                    focal_gamma=config.focal_gamma,
                                    teacher_tta=config.teacher_tta and with_teacher)
        distiller.compile(
            optimizer=dist.wrap_optimizer(_optimizer(config, steps_per_epoch, learning_rate),
                                          distribution.config),
            jit_compile=distribution.config.jit_compile)
    train_ds = dataset.make_multi_view_dataset(
        parts.train, (t.student_size, t.teacher_size) if with_teacher else (t.student_size,),
        t.global_batch, t.n_classes, training=True, augmentation=t.augmentation.augmentation,
        seed=config.seed, unlabeled=unlabeled, unlabeled_per_epoch=per_epoch)
    if not with_teacher:
        train_ds = train_ds.map(lambda x, y: (x[0], y))
    val_ds = (dist.shard_by_data(dataset.make_dataset(parts.val, t.student_size, t.global_batch,
                                                      t.n_classes))
              if parts.val else None)
    key = "distillation" if with_teacher else "baseline"
    history = {k: list(v) for k, v in t.recorded.get(key, {}).items()}
    done = len(next(iter(history.values()), []))
    # The record first, then the backup: a kill between the two redoes an epoch rather
    # than skip one. The backup is kept at the end of training (delete_checkpoint=False),
    # so a run resumed after this fit finished restores it whole instead of redoing it.
    backup = dist.backup_callback(t.out / CHECKPOINTS / "backup" / key,
                                  t.write_dir / CHECKPOINTS / "backup" / key, distribution,
                                  delete_checkpoint=False)
    if done:
        t.log(f"{key}: {min(done, config.epochs)} of {config.epochs} epochs recorded; resuming "
              "from the last backup (Keras BackupAndRestore)")
    state_path = t.out / CHECKPOINTS / STATE if t.write_dir == t.out else None
    distiller.fit(dist.shard_by_data(train_ds), validation_data=val_ds, epochs=config.epochs,
                  verbose=t.verbose, callbacks=[_epoch_recorder(state_path, key, history), backup,
                                                *fit_callbacks])
    # Evaluation, conversion and tfmot take a plain float32 model outside the strategy.
    return dist.to_float32(student), history


def _distill(teacher_run, teacher, folder, choice, unlabeled: UnlabeledFolder | None, out,
             write_dir, config, command, log, verbose, callbacks, distribution, recorded, stage,
             offline) -> DistillResult:
    parts = choice.parts
    n_classes = len(folder.classes)
    teacher_size = teacher_run.image_size
    student_size = config.image_size or teacher_size
    options = config.student_options(student_size)
    options = models.settle_auto_weights(options, log, "student: ", "--student-weights")
    # The copy used in training lives under the strategy; `teacher` stays a plain model for
    # measuring it afterwards.
    if distribution.name == "default":
        teacher_in_strategy = teacher
    else:
        with distribution.strategy.scope():
            teacher_in_strategy = teacher_run.load_model()

    from vgg_mobile.evaluation import metrics as evaluation

    training = _Training(
        config=config, options=options, parts=parts,
        unlabeled=unlabeled.images if unlabeled else (), n_classes=n_classes,
        student_size=student_size, teacher_size=teacher_size, teacher=teacher_in_strategy,
        distribution=distribution,
        augmentation=choose_augmentation(config.augment, config.augmentation, config.flip,
                                         max(student_size, teacher_size), parts.train,
                                         config.seed, crop_scale=config.crop_scale,
                                         colour_jitter=config.colour_jitter),
        recorded=recorded, out=out, write_dir=write_dir, verbose=verbose, offline=offline,
        log=log)

    def val_metrics(model, size):
        return evaluation.validation_metrics(model, parts.val, size, folder.classes, config.batch_size)

    log(training.augmentation.line)
    shown_unlabeled = "" if not unlabeled else (
        f" + {len(unlabeled.images)} unlabelled ("
        f"{config.unlabeled_per_epoch(len(parts.train), len(unlabeled.images))} an epoch)")
    log(f"{len(parts.train)} training{shown_unlabeled} / {len(parts.val)} validation images, "
        f"{n_classes} classes: "
        f"{teacher.name} at {teacher_size}px teaches {config.student} at {student_size}px, "
        f"T={config.temperature}, alpha={config.alpha}, {config.epochs} epochs")
    if distribution.is_special:
        log(distribution.describe(config.batch_size,
                                  config.peak_learning_rate(bool(training.unlabeled))))
    t0 = time.perf_counter()
    student, history = _train_student(training, True, callbacks)
    baseline_metrics = baseline_history = None
    if config.baseline:
        log(f"baseline: the same {config.student} trained without the teacher, same budget")
        baseline, baseline_history = _train_student(training, False)
        baseline_metrics = val_metrics(baseline, student_size)
    seconds = time.perf_counter() - t0

    metrics = distilled_metrics = val_metrics(student, student_size)
    teacher_metrics = val_metrics(teacher, teacher_size)
    verdict = None
    if baseline_metrics is not None:
        verdict = compare_with_baseline(teacher_metrics, distilled_metrics, baseline_metrics,
                                        config.ship)
        log(verdict["reason"])
        if verdict["shipped"] == "baseline":
            student, metrics = baseline, baseline_metrics
    # Inference-mode accuracy on the training images, beside the accuracy measured during
    # training: a large gap means BatchNormalization's moving statistics did not keep up.
    probs, labels = evaluation.predict(student, parts.train, student_size, n_classes, config.batch_size)
    train_accuracy_inference = float((probs.argmax(axis=1) == labels).mean())
    result = DistillResult(
        out, metrics, teacher_metrics, baseline_metrics, history, int(student.count_params()),
        int(teacher.count_params()), seconds, wrote_run=write_dir == out,
        distribution={**distribution.record(config.batch_size,
                                            shipped_learning_rate(config, bool(training.unlabeled),
                                                                  verdict)),
                      "weights_sha256": dist.weights_digest(student)},
        verdict=verdict, unlabeled=unlabeled.record() if unlabeled else None)
    if write_dir != out:
        log(f"{distribution.cluster.name}: trained in step with the chief, which writes {out}; "
            f"this worker's own files went to {write_dir} (deleted on exit)")
        return result

    from vgg_mobile.evaluation import plots

    write_json(out / "history.json", {"distillation": history, "baseline": baseline_history})
    plots.training_curves_png(
        {"loss": history.get("student_loss", []), "accuracy": history.get("accuracy", []),
         "val_loss": history.get("val_student_loss", []), "val_accuracy": history.get("val_accuracy", [])},
        out / "training_curves.png")
    manifest = _student_manifest(result, teacher_run, folder, choice, training, command, stage,
                                 distilled_metrics, train_accuracy_inference)
    finish_run(out, student, manifest)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    return result


def _student_manifest(result: DistillResult, teacher_run: Run, folder, choice, t: _Training,
                      command, stage: str, distilled_metrics: dict,
                      train_accuracy_inference: float) -> Manifest:
    """The student run's manifest: its input (the teacher's, at the student's size), what
    taught it and how (with the unlabelled images it also learnt from, `data.unlabeled`), and
    the baseline's verdict."""
    config, student_size = t.config, t.student_size
    spec = models.get_architecture(config.student)
    return Manifest(
        stage=stage, classes=folder.classes,
        architecture=config.student,
        input={**teacher_run.manifest.input, "size": [student_size, student_size], "channels": 3,
               "dtype": "float32", "range": [0, 255], "color": "RGB", "layout": "NHWC"},
        preprocessing=spec.preprocessing["scratch"],
        output={"layer": "probs", "activation": "softmax", "logits_layer": "logits"},
        config={"model": dataclasses.asdict(t.options), "distill": dataclasses.asdict(config)},
        command=command,
        data={**splits.data_record(folder, choice),
              "unlabeled": result.unlabeled},
        parent=str(teacher_run.path.resolve()),
        metrics=result.metrics,
        sections=dict(
            tfmot_compatible=spec.tfmot_compatible,
            teacher={"run": str(teacher_run.path.resolve()),
                     "architecture": teacher_run.manifest.architecture,
                     "image_size": t.teacher_size, "parameters": result.teacher_parameters,
                     "metrics": _summary(result.teacher_metrics)},
            baseline=None if result.baseline_metrics is None else {
                "description": "the same student, same initialisation and budget, without the "
                               "teacher",
                "metrics": _summary(result.baseline_metrics),
                "distilled_metrics": _summary(distilled_metrics),
                **result.verdict,
            },
            distillation={"temperature": config.temperature, "alpha": config.alpha,
                          "mixup": config.mixup, "class_weights": config.class_weights,
                          "focal_gamma": config.focal_gamma,
                          "teacher_tta": config.teacher_tta,
                          "augmentation": t.augmentation.record,
                          "epochs": config.epochs, "consistent_teaching": True,
                          "student_parameters": result.student_parameters,
                          "parameter_ratio": round(result.student_parameters
                                                   / result.teacher_parameters, 4),
                          "train_accuracy_last_epoch": result.history.get("accuracy", [None])[-1],
                          "train_accuracy_inference": round(train_accuracy_inference, 4),
                          "seconds": round(result.seconds, 1)},
            distribution=result.distribution),
    )
