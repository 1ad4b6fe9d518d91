"""`vgg-mobile train --data-benchmark`: is training limited by the input pipeline or by the
model step? Measured apart, on the real input pipeline; writes nothing."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from vgg_mobile.core.errors import require
from vgg_mobile.data import dataset
from vgg_mobile.data.augmentation import choose_augmentation
from vgg_mobile.models import architectures as models
from vgg_mobile.models.architectures import ModelOptions
from vgg_mobile.training import distribute as dist
from vgg_mobile.training.distribute import DistributeConfig
from vgg_mobile.training.hyperparameters import Phase, TrainConfig
from vgg_mobile.training.train import compile_classifier


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


def measure_throughput(
    data_dir: str | Path,
    options: ModelOptions | None = None,
    config: TrainConfig | None = None,
    distribute: DistributeConfig | None = None,
    steps: int = 10,
    log: Callable[[str], None] = lambda message: None,
    offline: bool = False,
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
        offline: Never download ImageNet weights (as for `train`). Defaults to `False`.

    Returns:
        A `ThroughputReport`.

    Raises:
        DataError: The data folder fails its checks.
        BadInputError: Bad options.
    """
    distribute = distribute or DistributeConfig()
    config = config or TrainConfig()
    options = options or ModelOptions()
    require(steps >= 1, "steps must be >= 1", f"steps={steps}")
    folder = dataset.scan_folder(data_dir, strict=config.strict)
    parts = dataset.split(folder, config.val_fraction, config.seed)
    models.resolve_weights(options.weights, options.architecture, offline=offline, log=log)
    distribution = dist.create_distribution(distribute)
    import tensorflow as tf
    import tf_keras as keras

    n_classes = len(folder.classes)
    global_batch = distribution.global_batch(config.batch_size)
    augmentation = choose_augmentation(config.augment, config.augmentation, config.flip,
                                       options.image_size, parts.train, config.seed,
                                       crop_scale=config.crop_scale,
                                       colour_jitter=config.colour_jitter)
    log(augmentation.line)
    train_ds = dataset.make_dataset(
        parts.train, options.image_size, global_batch, n_classes, training=True,
        augmentation=augmentation.augmentation, seed=config.seed,
        mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
        class_weights=(dataset.class_weights(parts.train, n_classes)
                       if config.class_weights else None))
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
        model = models.build_classifier(options, n_classes, offline=offline)
        if distribute.mixed_precision:
            model = dist.to_mixed_precision(model)
        compile_classifier(model, config, Phase(0, config.epochs, 99), steps, n_classes,
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
