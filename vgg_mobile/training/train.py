"""Training a classifier from an image folder into a run directory, resumably.

After every epoch the model weights (HDF5, matched by layer) and the optimizer state (numpy
arrays, in the order of the phase's trainable variables) go to `RUN/checkpoints/` and a small
`state.json` records the epochs done and the history so far. `state.json` is replaced
atomically after the checkpoint is complete, so it always names a whole checkpoint. A killed
run resumes from it with `resume=True` and ends after the same number of epochs.

Under a `tf.distribute` strategy (see `distribute.py`) the same code runs on every worker.
In a multi-worker run, Keras's `BackupAndRestore` also backs up every epoch (into
`RUN/checkpoints/backup/`), and on a restart of all workers restores the model, optimizer and
epoch on each of them from the chief's backup. The per-epoch checkpoint above stays the
run's record (history, phase, epochs done); only the chief writes it into the run directory,
the other workers into a temporary folder. Both are saved at the end of an epoch, the record
first, so the backup is never ahead of the record and a restart never skips an epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

from vgg_mobile.data import dataset
from vgg_mobile.models import architectures as models
from vgg_mobile.training import distribute as dist
from vgg_mobile.training.distribute import DistributeConfig
from vgg_mobile.core.errors import RunDirError, require
from vgg_mobile.training.hyperparameters import Phase, TrainConfig, plan_phases
from vgg_mobile.models.architectures import ModelOptions
from vgg_mobile.core.run_dir import CHECKPOINTS, finish_run, new_manifest, prepare_out_dir
from vgg_mobile.core.io import write_guard, write_json

STATE = "state.json"


def _warmup_cosine_class():
    import tensorflow as tf
    import tf_keras as keras

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up to `peak`, then cosine decay to 0 at `total_steps`.

        `offset` is the global step at which this optimizer starts, so that a fresh optimizer
        created for a later fine-tuning phase continues the same curve.
        """

        def __init__(self, peak, total_steps, warmup_steps, offset=0):
            self.peak, self.total_steps = float(peak), float(max(total_steps, 1))
            self.warmup_steps, self.offset = float(warmup_steps), float(offset)

        def __call__(self, step):
            step = tf.cast(step, tf.float32) + self.offset
            warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1.0)
            progress = tf.clip_by_value(
                (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1.0), 0.0, 1.0)
            cosine = 0.5 * self.peak * (1.0 + tf.cos(math.pi * progress))
            return tf.where(step < self.warmup_steps, warm, cosine)

        def get_config(self):
            return {"peak": self.peak, "total_steps": self.total_steps,
                    "warmup_steps": self.warmup_steps, "offset": self.offset}

    return WarmupCosine


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    metrics: dict
    history: dict
    epochs_run: int
    images_per_second: float
    resumed_from_epoch: int
    wrote_run: bool = True
    weights_sha256: str = ""
    distribution: dict = dataclasses.field(default_factory=dict)


def _save_checkpoint(model, optimizer, directory: Path) -> None:
    import numpy as np

    directory.mkdir(parents=True)
    model.save_weights(str(directory / "weights.h5"))
    arrays = {f"v{i:04d}": v.numpy() for i, v in enumerate(optimizer.variables)}
    with open(directory / "optimizer.npz", "wb") as f:
        np.savez(f, **arrays)


def _restore_checkpoint(model, optimizer, directory: Path) -> None:
    """Restores weights, and optimizer state when `optimizer` is given (same phase only)."""
    import numpy as np

    try:
        model.load_weights(str(directory / "weights.h5"))
        if optimizer is None:
            return
        with np.load(directory / "optimizer.npz") as saved:
            values = [saved[k] for k in sorted(saved.files)]
    except (OSError, ValueError, KeyError) as err:
        raise RunDirError(f"{directory}: damaged checkpoint ({err}); pass --force to start over") from None
    variables = optimizer.variables
    if len(values) != len(variables) or any(
            tuple(v.shape) != tuple(a.shape) for v, a in zip(variables, values)):
        raise RunDirError(f"{directory}: optimizer state does not fit the model; pass --force to start over")
    for variable, value in zip(variables, values):
        variable.assign(value)


def record_epoch_logs(history: dict[str, list[float]], epoch: int, logs: dict | None) -> None:
    """Puts one epoch's Keras logs into `history` at index `epoch`: a restart that redoes an
    epoch replaces its entry instead of adding one."""
    for key, value in (logs or {}).items():
        values = history.setdefault(key, [])
        del values[epoch:]
        values.append(float(value))


def _checkpoint_callback(ckpt_dir: Path, model, optimizer, state: dict, history: dict):
    import tf_keras as keras

    class EpochCheckpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            record_epoch_logs(history, epoch, logs)
            name = f"epoch-{epoch + 1:04d}"
            staging = ckpt_dir / f".{name}.partial"
            if staging.exists():
                shutil.rmtree(staging)
            try:
                with write_guard(staging):
                    _save_checkpoint(model, optimizer, staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            final = ckpt_dir / name
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            state.update(epochs_done=epoch + 1, checkpoint=name, history=history,
                         train_seconds=state.get("train_seconds", 0.0) + self.epoch_seconds())
            write_json(ckpt_dir / STATE, state)
            for old in ckpt_dir.glob("epoch-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def epoch_seconds(self):
            return time.perf_counter() - getattr(self, "_t0", time.perf_counter())

    return EpochCheckpoint()


def _compile(model, config: TrainConfig, phase: Phase, steps_per_epoch: int, n_classes: int,
             learning_rate: float | None = None, distribute: DistributeConfig = DistributeConfig()):
    """Compiles `model`; returns the optimizer whose state the checkpoints hold.

    `learning_rate` overrides `config.learning_rate` (scaled with the replica count).
    """
    import tf_keras as keras

    schedule = _warmup_cosine_class()(
        peak=config.learning_rate if learning_rate is None else learning_rate,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=config.warmup_epochs * steps_per_epoch,
        offset=phase.start * steps_per_epoch,
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if n_classes > 3:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=3, name="top_3_accuracy"))
    model.compile(
        optimizer=dist.wrap_optimizer(optimizer, distribute),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=metrics,
        jit_compile=distribute.jit_compile,
    )
    # Create the slot variables now so that a checkpoint restore fills them immediately.
    optimizer.build(model.trainable_variables)
    return optimizer


def _run_config(options: ModelOptions, config: TrainConfig) -> dict:
    return {"model": dataclasses.asdict(options), "train": dataclasses.asdict(config)}


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    options: ModelOptions = ModelOptions(),
    config: TrainConfig = TrainConfig(),
    resume: bool = False,
    force: bool = False,
    command: list[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
    verbose: int = 0,
    callbacks: tuple = (),
    distribute: DistributeConfig = DistributeConfig(),
    stage: str = "teacher",
) -> TrainResult:
    """Trains a classifier on an image folder and writes a finished run directory.

    Args:
        data_dir: Image folder (`<class>/...` or `train/` + `val/`).
        out_dir: Run directory to write.
        options: Architecture, input size, weights. Defaults to `ModelOptions()`.
        config: Training hyperparameters. Defaults to `TrainConfig()`. Under a strategy
            with R replicas, `batch_size` is per replica (the global batch is R times it)
            and the learning rate is multiplied by R.
        resume: Continue the interrupted run in `out_dir` from its last checkpoint; the data,
            options and config must be the same as when it started. Defaults to `False`.
        force: Replace a finished or interrupted run in `out_dir`. Defaults to `False`.
        command: The command line that asked for this, recorded in the manifest.
        log: Receives one-line progress messages. Defaults to discarding them.
        stage: The stage name its manifest records (the pipeline's folder and config
            section). Defaults to `"teacher"`.
        verbose: Keras progress output (0 silent, 1 progress bar, 2 one line per epoch).
        callbacks: Extra Keras callbacks, added to every `fit` call. Defaults to none.
        distribute: Strategy, mixed precision and XLA. The strategy is created here, so in a
            multi-worker run this must be the process's first TensorFlow work. Defaults to
            `DistributeConfig()` (one device, float32, no XLA).

    Returns:
        A `TrainResult`. On a multi-worker non-chief, `wrote_run` is `False`: it trained in
        step with the others but wrote only to a temporary folder, now deleted.

    Raises:
        DataError: The data folder fails its checks.
        RunDirError: `out_dir` cannot be written (see `run_dir.prepare_out_dir`), or a resume
            does not match the interrupted run.
        BadInputError: Bad options (e.g. ImageNet weights not in the local cache, a
            multi-worker strategy without `TF_CONFIG`).
    """
    out = Path(out_dir)
    folder = dataset.scan_folder(data_dir, strict=config.strict)
    for check in folder.bad:
        log(f"skipped {check.path}: {check.problem}")
    if folder.converted:
        log(f"{len(folder.converted)} image(s) converted to RGB on reading (e.g. "
            f"{folder.converted[0].path.name}: {'; '.join(folder.converted[0].notes)})")
    parts = dataset.split(folder, config.val_fraction, config.seed)
    run_config = _run_config(options, config)
    fingerprint = folder.fingerprint()

    models.resolve_weights(options.weights, options.architecture)  # fail before any work
    cluster = dist.read_cluster()
    dist.check_cluster(distribute, cluster)
    # Checked before the strategy starts, so a refused run never leaves other workers waiting.
    if dist.writes_run(distribute, cluster):
        prepare_out_dir(out, resume=resume, force=force)
    elif resume and not (out / CHECKPOINTS / STATE).is_file():
        raise RunDirError(f"{out / CHECKPOINTS / STATE}: not found; a restarted worker reads the "
                          "chief's checkpoints, so --out must be on storage every worker reaches")
    distribution = dist.create_distribution(distribute)
    with dist.writer_dir(out, distribution) as write_dir:
        return _train(folder, parts, run_config, fingerprint, out, write_dir, options, config,
                      resume, command, log, verbose, callbacks, distribution, stage)


def _read_state(ckpt_dir: Path, run_config: dict, fingerprint: str, folder, out: Path,
                replicas: int) -> dict:
    try:
        state = json.loads((ckpt_dir / STATE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirError(f"{ckpt_dir / STATE}: cannot read the interrupted run's state ({err})") from None
    if state.get("config") != json.loads(json.dumps(run_config)):
        raise RunDirError(
            f"{out}: options differ from the interrupted run's; resume with the same options "
            f"({state.get('config')}) or pass --force to start over")
    if state.get("data_fingerprint") != fingerprint:
        raise RunDirError(f"{out}: the data in {folder.root} changed since the interrupted run "
                          "started; pass --force to start over")
    if state.get("replicas", replicas) != replicas:
        raise RunDirError(f"{out}: the interrupted run trained on {state['replicas']} replica(s), "
                          f"this one has {replicas}; the global batch would change. Resume on "
                          "the same devices or pass --force to start over")
    return state


def _first_epoch_recorder(first_epochs: list):
    import tf_keras as keras

    class FirstEpoch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._seen = False

        def on_epoch_begin(self, epoch, logs=None):
            if not self._seen:
                first_epochs.append(epoch)
                self._seen = True

    return FirstEpoch()


def _train(folder, parts, run_config, fingerprint, out: Path, write_dir: Path, options, config,
           resume, command, log, verbose, callbacks, distribution, stage) -> TrainResult:
    n_classes = len(folder.classes)
    spec = models.get_architecture(options.architecture)
    ckpt_dir = write_dir / CHECKPOINTS
    multi_worker = dist.is_multi_worker(distribution.config, distribution.cluster)
    replicas = distribution.replicas
    global_batch = distribution.global_batch(config.batch_size)
    learning_rate = distribution.scaled_learning_rate(config.learning_rate)
    if resume:
        # Every worker reads the chief's record, so that all of them skip the same phases.
        state = _read_state(out / CHECKPOINTS, run_config, fingerprint, folder, out, replicas)
        if write_dir != out:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        # Resuming without a checkpoint yet (killed during epoch 1) restarts from scratch.
        build_options = dataclasses.replace(options, weights="none") if state.get("checkpoint") else options
    else:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        state = {"config": run_config, "data_fingerprint": fingerprint, "epochs_done": 0,
                 "checkpoint": None, "history": {}, "command": command, "replicas": replicas}
        write_json(ckpt_dir / STATE, state)
        build_options = options
    state["replicas"] = replicas
    import tf_keras as keras

    from vgg_mobile.evaluation import metrics as evaluation
    from vgg_mobile.evaluation import plots

    done = start_epoch = int(state.get("epochs_done", 0))
    history: dict[str, list[float]] = state.get("history", {})

    keras.utils.set_random_seed(config.seed + done)
    phases = plan_phases(config, pretrained=options.weights != "none", n_blocks=len(spec.blocks))
    with distribution.strategy.scope():
        model = models.build_classifier(build_options, n_classes)
        if distribution.config.mixed_precision:
            model = dist.to_mixed_precision(model)
    train_ds = dist.shard_by_data(dataset.make_dataset(
        parts.train, options.image_size, global_batch, n_classes, training=True,
        augmentation=dataset.Augmentation() if config.augment else dataset.NO_AUGMENTATION,
        seed=config.seed + done))
    val_ds = (dist.shard_by_data(dataset.make_dataset(parts.val, options.image_size, global_batch,
                                                      n_classes))
              if parts.val else None)
    steps_per_epoch = math.ceil(len(parts.train) / global_batch)
    weights = dataset.class_weights(parts.train, n_classes) if config.class_weights else None
    log(f"{len(parts.train)} training / {len(parts.val)} validation images, {n_classes} classes, "
        f"{options.architecture} at {options.image_size}px, {config.epochs} epochs"
        + (f", resuming after epoch {done}" if resume else ""))
    if distribution.is_special:
        log(distribution.describe(config.batch_size, config.learning_rate))

    restore_from = out / CHECKPOINTS / state["checkpoint"] if state.get("checkpoint") else None
    first_epochs: list[int] = []
    restored_from_backup = None
    for index, phase in enumerate(phases):
        if phase.end <= done:
            continue
        with distribution.strategy.scope():
            models.set_trainable_blocks(model, options.architecture, phase.trainable_blocks)
            optimizer = _compile(model, config, phase, steps_per_epoch, n_classes,
                                 learning_rate=learning_rate, distribute=distribution.config)
            mid_phase = phase.start < done
            # Multi-worker, BackupAndRestore restores a phase in progress on every worker.
            if restore_from is not None and not (multi_worker and mid_phase):
                # Mid-phase, the optimizer state continues too; a new phase starts a fresh one.
                _restore_checkpoint(model, optimizer if mid_phase else None, restore_from)
            restore_from = None
        if len(phases) > 1:
            log(f"phase epochs {phase.start + 1}-{phase.end}: training the head and the last "
                f"{phase.trainable_blocks} backbone block(s)")
        callback = _checkpoint_callback(ckpt_dir, model, optimizer, state, history)
        fit_callbacks = [callback, keras.callbacks.TensorBoard(str(write_dir / "logs"), profile_batch=0)]
        if multi_worker:
            # After the record (`callback`), so a kill between the two leaves the backup behind
            # the record, never ahead: a restart then redoes an epoch rather than skip one.
            backup = f"phase-{index}"
            fit_callbacks.append(dist.backup_callback(out / CHECKPOINTS / "backup" / backup,
                                                      ckpt_dir / "backup" / backup, distribution))
        fit_callbacks += [_first_epoch_recorder(first_epochs), *callbacks]
        # Multi-worker, the epoch to start from is the backup's (BackupAndRestore sets it).
        initial_epoch = phase.start if multi_worker else max(phase.start, done)
        model.fit(train_ds, validation_data=val_ds, initial_epoch=initial_epoch,
                  epochs=phase.end, class_weight=weights, callbacks=fit_callbacks, verbose=verbose)
        if first_epochs and first_epochs[-1] > initial_epoch:
            restored_from_backup = first_epochs[-1]
            log(f"BackupAndRestore: continued from the backup after epoch {restored_from_backup}")
        done = phase.end

    # Converters, tfmot and evaluation take a plain float32 model outside the strategy
    # (predicting with a multi-worker model would take every worker).
    final = dist.to_float32(model)
    digest = dist.weights_digest(final)
    metrics = evaluation.validation_metrics(final, parts.val, options.image_size, folder.classes,
                                            config.batch_size)
    # Summed over the epochs of every process that worked on this run (resumes included).
    train_seconds = state.get("train_seconds", 0.0)
    throughput = config.epochs * len(parts.train) / train_seconds if train_seconds else 0.0
    distribution_record = {**distribution.record(config.batch_size, config.learning_rate),
                           "weights_sha256": digest}
    if write_dir != out:
        log(f"{distribution.cluster.name}: trained in step with the chief, which writes {out}; "
            f"this worker's own files went to {write_dir} (deleted on exit)")
        return TrainResult(out, metrics, history, config.epochs, throughput, start_epoch,
                           wrote_run=False, weights_sha256=digest, distribution=distribution_record)
    write_json(out / "history.json", history)
    plots.training_curves_png(history, out / "training_curves.png")
    manifest = new_manifest(
        stage, folder.classes,
        architecture=options.architecture,
        input={"size": [options.image_size, options.image_size], "channels": 3,
               "dtype": "float32", "range": [0, 255], "color": "RGB", "layout": "NHWC",
               "resize": {"method": "bilinear", "half_pixel_centers": True, "antialias": False,
                          "aspect": "stretch to square, no crop"}},
        preprocessing=spec.preprocessing["pretrained" if options.weights != "none" else "scratch"],
        output={"layer": "probs", "activation": "softmax", "logits_layer": "logits"},
        config=run_config,
        command=command,
        data={"path": str(folder.root.resolve()), "fingerprint": fingerprint,
              "presplit": folder.presplit, "val_fraction": config.val_fraction,
              "seed": config.seed, "train_images": len(parts.train), "val_images": len(parts.val),
              "class_counts": folder.class_counts(parts.train),
              "skipped_files": [{"path": str(c.path), "problem": c.problem} for c in folder.bad]},
        parent=None,
        metrics=metrics,
        training={"epochs": config.epochs, "phases": [dataclasses.asdict(p) for p in phases],
                  "resumed_from_epoch": start_epoch,
                  "restored_from_backup_epoch": restored_from_backup,
                  "images_per_second": round(throughput, 1),
                  "parameters": int(final.count_params())},
        distribution=distribution_record,
    )
    finish_run(out, final, manifest)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log(f"wrote {out} (val accuracy {metrics.get('accuracy', float('nan')):.3f})")
    return TrainResult(out, metrics, history, config.epochs, throughput, start_epoch,
                       weights_sha256=digest, distribution=distribution_record)


@dataclasses.dataclass(frozen=True)
class ThroughputReport:
    """What limits training: the input pipeline or the model step.

    Attributes:
        first_pass_images_per_second: The input pipeline's first epoch (decoding, caching).
        input_images_per_second: Later epochs of the input pipeline alone (from the cache,
            augmented), with no model.
        step_images_per_second: Training steps alone, on batches already in memory.
        strategy: The strategy used.
        replicas: Replicas in sync.
        global_batch: Images per step across replicas.
        images: Training images in one epoch.
    """

    first_pass_images_per_second: float
    input_images_per_second: float
    step_images_per_second: float
    strategy: str
    replicas: int
    global_batch: int
    images: int

    @property
    def limited_by(self) -> str:
        return ("input pipeline" if self.input_images_per_second < self.step_images_per_second
                else "model step")


def benchmark_throughput(
    data_dir: str | Path,
    options: ModelOptions = ModelOptions(),
    config: TrainConfig = TrainConfig(),
    distribute: DistributeConfig = DistributeConfig(),
    steps: int = 10,
    log: Callable[[str], None] = lambda message: None,
) -> ThroughputReport:
    """Measures the input pipeline and the training step apart; writes nothing.

    The input pipeline is the one `train` uses (parallel decode, cache, shuffle, augment,
    prefetch), iterated without a model. The step is `fit` on one global batch held in memory,
    timed after a first pass that traces (and XLA-compiles) it.

    Args:
        data_dir: Image folder, as for `train`.
        options: Architecture, input size, weights. Defaults to `ModelOptions()`.
        config: Batch size (per replica), learning rate, augmentation. Defaults to `TrainConfig()`.
        distribute: Strategy, mixed precision, XLA. Defaults to `DistributeConfig()`.
        steps: Timed training steps. Defaults to `10`.
        log: Receives one-line progress messages. Defaults to discarding them.

    Returns:
        A `ThroughputReport`.

    Raises:
        DataError: The data folder fails its checks.
        BadInputError: Bad options.
    """
    require(steps >= 1, "steps must be >= 1", f"steps={steps}")
    folder = dataset.scan_folder(data_dir, strict=config.strict)
    parts = dataset.split(folder, config.val_fraction, config.seed)
    models.resolve_weights(options.weights, options.architecture)
    distribution = dist.create_distribution(distribute)
    import tensorflow as tf
    import tf_keras as keras

    n_classes = len(folder.classes)
    global_batch = distribution.global_batch(config.batch_size)
    train_ds = dataset.make_dataset(
        parts.train, options.image_size, global_batch, n_classes, training=True,
        augmentation=dataset.Augmentation() if config.augment else dataset.NO_AUGMENTATION,
        seed=config.seed)
    seconds = []
    for _ in range(2):
        t0 = time.perf_counter()
        for _batch in train_ds:
            pass
        seconds.append(time.perf_counter() - t0)
    log(f"input pipeline: {len(parts.train)} images in {seconds[0]:.2f} s (first pass), "
        f"{seconds[1]:.2f} s (cached)")

    batch = next(iter(train_ds))
    in_memory = dist.shard_by_data(tf.data.Dataset.from_tensors(batch).repeat())
    keras.utils.set_random_seed(config.seed)
    with distribution.strategy.scope():
        model = models.build_classifier(options, n_classes)
        if distribute.mixed_precision:
            model = dist.to_mixed_precision(model)
        _compile(model, config, Phase(0, config.epochs, 99), steps, n_classes,
                 learning_rate=distribution.scaled_learning_rate(config.learning_rate),
                 distribute=distribute)
    epoch_seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self._t0)

    model.fit(in_memory, epochs=2, steps_per_epoch=steps, callbacks=[Timer()], verbose=0)
    step_rate = steps * int(batch[0].shape[0]) / epoch_seconds[-1]
    return ThroughputReport(
        first_pass_images_per_second=len(parts.train) / seconds[0],
        input_images_per_second=len(parts.train) / seconds[1],
        step_images_per_second=step_rate,
        strategy=distribution.name, replicas=distribution.replicas, global_batch=global_batch,
        images=len(parts.train))
