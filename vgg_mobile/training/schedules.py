"""Learning-rate schedules: one warm-up + cosine curve for every stage that trains."""

from __future__ import annotations

import math

_CLASS = None


def warmup_cosine(peak: float, total_steps: int, warmup_steps: float, offset: int = 0):
    """A `LearningRateSchedule`: linear warm-up to `peak`, then cosine decay to 0 at `total_steps`.

    Args:
        peak: The learning rate at the end of the warm-up.
        total_steps: Steps of the whole run (every phase).
        warmup_steps: Steps of the warm-up (0: none).
        offset: The global step at which this optimizer starts, so that a fresh optimizer
            created for a later fine-tuning phase continues the same curve. Defaults to `0`.
    """
    return _schedule_class()(peak, total_steps, warmup_steps, offset)


def _schedule_class():
    # Built on first use: importing this module must not import TensorFlow.
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import tensorflow as tf
    import tf_keras as keras

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
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

    _CLASS = WarmupCosine
    return WarmupCosine
