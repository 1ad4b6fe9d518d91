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
import math
import shutil
from pathlib import Path
from typing import Callable

from vgg_mobile.data import dataset, splits
from vgg_mobile.data.augmentation import choose_augmentation
from vgg_mobile.models import architectures as models
from vgg_mobile.training import distribute as dist
from vgg_mobile.training.distribute import DistributeConfig
from vgg_mobile.core.errors import RunDirError
from vgg_mobile.training.hyperparameters import Phase, TrainConfig, plan_phases
from vgg_mobile.models.architectures import ModelOptions
from vgg_mobile.core.outputs import check_no_overlap, claim_output, worker_output
from vgg_mobile.core.run_dir import CHECKPOINTS, Manifest, finish_run
from vgg_mobile.core.io import write_json
from vgg_mobile.training.checkpoints import STATE, epoch_checkpoint, read_resume_state, restore_checkpoint
from vgg_mobile.training.losses import classifier_loss
from vgg_mobile.training.schedules import warmup_cosine



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


def compile_classifier(model, config: TrainConfig, phase: Phase, steps_per_epoch: int,
                       n_classes: int, learning_rate: float | None = None,
                       distribute: DistributeConfig | None = None):
    """Compiles `model`; returns the optimizer whose state the checkpoints hold.

    `learning_rate` overrides `config.learning_rate` (scaled with the replica count).
    """
    distribute = distribute or DistributeConfig()
    import tf_keras as keras

    schedule = warmup_cosine(
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
        loss=classifier_loss(config),
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
    options: ModelOptions | None = None,
    config: TrainConfig | None = None,
    resume: bool = False,
    force: bool = False,
    command: list[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
    verbose: int = 0,
    callbacks: tuple = (),
    distribute: DistributeConfig | None = None,
    stage: str = "teacher",
    offline: bool = False,
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
        offline: Never download: `weights="imagenet"` must then be in the Keras cache
            (`VGG_MOBILE_OFFLINE=1` does the same). Otherwise missing ImageNet weights are
            downloaded into the cache before any work; `"auto"` never downloads. Defaults
            to `False`.

    Returns:
        A `TrainResult`. On a multi-worker non-chief, `wrote_run` is `False`: it trained in
        step with the others but wrote only to a temporary folder, now deleted.

    Raises:
        DataError: The data folder fails its checks.
        RunDirError: `out_dir` cannot be written (see `run_dir.prepare_out_dir`), or a resume
            does not match the interrupted run.
        BadInputError: Bad options (e.g. ImageNet weights not in the local cache when
            offline, a multi-worker strategy without `TF_CONFIG`).
        VggMobileError: The ImageNet weights could not be downloaded.
    """
    options = options or ModelOptions()
    config = config or TrainConfig()
    distribute = distribute or DistributeConfig()
    options = models.settle_auto_weights(options, log)
    out = Path(out_dir)
    check_no_overlap(out, (data_dir,))
    folder, choice = splits.read_split(data_dir, log, None, config.val_fraction, config.seed,
                                       config.strict, config.imbalance_remedy())
    run_config = _run_config(options, config)
    fingerprint = folder.fingerprint()
    # Decided once, before any work; a resumed run measures the same sample to the same answer.
    augmentation = choose_augmentation(config.augment, config.augmentation, config.flip,
                                       options.image_size, choice.parts.train, config.seed,
                                       crop_scale=config.crop_scale,
                                       colour_jitter=config.colour_jitter)
    log(augmentation.line)

    # Downloads missing ImageNet weights now, or fails, before any work.
    models.resolve_weights(options.weights, options.architecture, offline=offline, log=log)
    if options.architecture == "vgg16" and options.weights == "none":
        log("note: VGG16 without batch normalisation trains poorly from scratch on a few "
            "thousand images; --architecture vgg16_bn is the from-scratch teacher "
            "(what `vgg-mobile pipeline` trains without ImageNet weights)")
    cluster = dist.read_cluster()
    dist.check_cluster(distribute, cluster)
    # Claimed before the strategy starts, so a refused run never leaves other workers waiting.
    writes = dist.writes_run(distribute, cluster)
    claim = (claim_output(out, ("run",), inputs=(data_dir,), force=force, resume=resume) if writes
             else worker_output(out, resume, force))
    with claim as output:
        if resume and not writes and not (output.path / CHECKPOINTS / STATE).is_file():
            raise RunDirError(f"{output.path / CHECKPOINTS / STATE}: not found; a restarted "
                              "worker reads the chief's checkpoints, so --out must be on storage "
                              "every worker reaches")
        distribution = dist.create_distribution(distribute)
        with dist.writer_dir(output.path, distribution) as write_dir:
            result = _train(folder, choice, augmentation, run_config, fingerprint, output.path, write_dir,
                            options, config, resume, command, log, verbose, callbacks,
                            distribution, stage, offline)
    if result.wrote_run:
        log(f"wrote {out} (val accuracy {result.metrics.get('accuracy', float('nan')):.3f})")
    return dataclasses.replace(result, run_dir=out)


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


def _train(folder, choice, augmentation, run_config, fingerprint, out: Path, write_dir: Path,
           options, config,
           resume, command, log, verbose, callbacks, distribution, stage, offline) -> TrainResult:
    parts = choice.parts
    n_classes = len(folder.classes)
    spec = models.get_architecture(options.architecture)
    ckpt_dir = write_dir / CHECKPOINTS
    multi_worker = dist.is_multi_worker(distribution.config, distribution.cluster)
    replicas = distribution.replicas
    global_batch = distribution.global_batch(config.batch_size)
    learning_rate = distribution.scaled_learning_rate(config.learning_rate)
    state, build_options = _start_state(out, ckpt_dir, run_config, fingerprint, command,
                                        replicas, resume, options)
    import tf_keras as keras

    from vgg_mobile.evaluation import metrics as evaluation
    from vgg_mobile.evaluation import plots

    done = start_epoch = int(state.get("epochs_done", 0))
    history: dict[str, list[float]] = state.get("history", {})

    keras.utils.set_random_seed(config.seed + done)
    phases = plan_phases(config, pretrained=options.weights != "none", n_blocks=len(spec.blocks))
    with distribution.strategy.scope():
        model = models.build_classifier(build_options, n_classes, offline=offline)
        if distribution.config.mixed_precision:
            model = dist.to_mixed_precision(model)
    weights = dataset.class_weights(parts.train, n_classes) if config.class_weights else None
    mixing = config.mixup_alpha > 0 or config.cutmix_alpha > 0
    train_ds = dist.shard_by_data(dataset.make_dataset(
        parts.train, options.image_size, global_batch, n_classes, training=True,
        augmentation=augmentation.augmentation, seed=config.seed + done,
        mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
        class_weights=weights if mixing else None))
    if mixing:
        # The class weights travel with the mixed batches, mixed as their labels are.
        weights = None
    val_ds = (dist.shard_by_data(dataset.make_dataset(parts.val, options.image_size, global_batch,
                                                      n_classes))
              if parts.val else None)
    steps_per_epoch = math.ceil(len(parts.train) / global_batch)
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
            optimizer = compile_classifier(model, config, phase, steps_per_epoch, n_classes,
                                 learning_rate=learning_rate, distribute=distribution.config)
            mid_phase = phase.start < done
            # Multi-worker, BackupAndRestore restores a phase in progress on every worker.
            if restore_from is not None and not (multi_worker and mid_phase):
                # Mid-phase, the optimizer state continues too; a new phase starts a fresh one.
                restore_checkpoint(model, optimizer if mid_phase else None, restore_from)
            restore_from = None
        if len(phases) > 1:
            log(f"phase epochs {phase.start + 1}-{phase.end}: training the head and the last "
                f"{phase.trainable_blocks} backbone block(s)")
        callback = epoch_checkpoint(ckpt_dir, model, optimizer, state, history)
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
    training = {"epochs": config.epochs, "phases": [dataclasses.asdict(p) for p in phases],
                "resumed_from_epoch": start_epoch,
                "restored_from_backup_epoch": restored_from_backup,
                "images_per_second": round(throughput, 1),
                "augmentation": {**augmentation.record, "mixup_alpha": config.mixup_alpha,
                                 "cutmix_alpha": config.cutmix_alpha},
                "parameters": int(final.count_params())}
    finish_run(out, final, _teacher_manifest(
        stage, folder, choice, options, run_config, command, metrics,
        sections=dict(training=training, distribution=distribution_record)))
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return TrainResult(out, metrics, history, config.epochs, throughput, start_epoch,
                       weights_sha256=digest, distribution=distribution_record)


def _start_state(out: Path, ckpt_dir: Path, run_config: dict, fingerprint: str, command,
                 replicas: int, resume: bool, options) -> tuple[dict, object]:
    """The checkpoint record to train from (the chief's, on a resume; a new one written to
    `ckpt_dir` otherwise), and the options to build the model with."""
    if resume:
        # Every worker reads the chief's record, so that all of them skip the same phases.
        state = read_resume_state(out / CHECKPOINTS / STATE, out, {"config": run_config,
                                  "data_fingerprint": fingerprint, "replicas": replicas},
                                  defaults={"config": _run_config(ModelOptions(), TrainConfig())})
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
    return state, build_options


def _teacher_manifest(stage: str, folder, choice, options, run_config: dict, command,
                      metrics: dict, sections: dict) -> Manifest:
    """A trained run's manifest: its input contract (the resize rule that Android and the
    browser follow), preprocessing and output layers."""
    spec = models.get_architecture(options.architecture)
    return Manifest(
        stage=stage, classes=folder.classes,
        architecture=options.architecture,
        input={"size": [options.image_size, options.image_size], "channels": 3,
               "dtype": "float32", "range": [0, 255], "color": "RGB", "layout": "NHWC",
               "resize": {"method": "bilinear", "half_pixel_centers": True, "antialias": False,
                          "aspect": "stretch to square, no crop"}},
        preprocessing=spec.preprocessing["pretrained" if options.weights != "none" else "scratch"],
        output={"layer": "probs", "activation": "softmax", "logits_layer": "logits"},
        config=run_config,
        command=command,
        data=splits.data_record(folder, choice),
        parent=None,
        metrics=metrics,
        sections=sections,
    )
