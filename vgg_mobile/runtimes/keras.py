"""A run directory's Keras model in TensorFlow (tf_keras).

TensorFlow's thread pools belong to the process and can be set only before TensorFlow starts
(`set_threads`), so `threads` here records what was asked and does not change them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.runtimes.base import Runtime


def set_threads(threads: int) -> str:
    """Fixes TensorFlow's thread pools, which is only possible before TensorFlow starts.

    Returns:
        The threads now in force, as the benchmark reports them.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        return "process default (TensorFlow had already started)"
    return str(threads)


class Keras(Runtime):
    """A tf_keras model: batches through `model.predict`, single images through a compiled
    `tf.function` (`model.predict` would add its per-call setup, tens of milliseconds, to
    every image)."""

    key = "keras"
    label = "TensorFlow (tf_keras)"
    format = "keras"
    suffix = ".keras"
    module = "tensorflow"
    package = "tensorflow"
    thread_safe = True

    def __init__(self, model, threads: int = 1, batch_size: int = 32):
        super().__init__(threads)
        self.model = model
        self.batch_size = batch_size

    @classmethod
    def load(cls, source: str | Path | bytes, threads: int = 1) -> Keras:
        """Loads the model of a run directory (the folder, or its model file) through the run's
        own checks (`vgg_mobile.core.run_dir`)."""
        from vgg_mobile.core.run_dir import load_run

        if isinstance(source, (bytes, bytearray, memoryview)):
            raise BadInputError("a Keras model loads from its run directory, not from bytes")
        path = Path(source)
        return cls(load_run(path.parent if path.is_file() else path).load_model(), threads)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.model.input_shape)

    @property
    def output_shape(self) -> tuple:
        return tuple(self.model.output_shape)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(pixels, batch_size=self.batch_size, verbose=0))

    def latency_ms(self, image: np.ndarray, repeats: int = 50, warmup: int = 3) -> float:
        import tensorflow as tf

        from vgg_mobile.core.timing import median_ms

        compiled = tf.function(lambda t: self.model(t, training=False))
        one = tf.constant(np.asarray(image, np.float32)[None])
        return median_ms(lambda: compiled(one).numpy(), repeats, warmup)

    def describe(self) -> dict:
        import tensorflow as tf

        # 0: TensorFlow's own choice (all cores).
        return {**super().describe(),
                "threads": tf.config.threading.get_intra_op_parallelism_threads() or None}
