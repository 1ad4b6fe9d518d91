"""Teacher training and inference throughput on this machine, as a Markdown table.

    uv run python benchmarks/teacher_throughput.py [--sizes 32 64] [--epochs 3]

Trains the VGG16 teacher from scratch on the built-in sample data at each input size and
times Keras inference on the validation images. The first epoch (graph tracing, cache fill)
is left out of the training figure. Compare rows of one run; absolute numbers depend on the
machine and on whatever else it is doing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import vgg_mobile  # noqa: F401  (selects tf_keras before TensorFlow loads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images-per-class", type=int, default=60)
    args = parser.parse_args()

    import tf_keras as keras

    from vgg_mobile.data import dataset
    from vgg_mobile.evaluation import metrics as evaluation
    from vgg_mobile.training.hyperparameters import TrainConfig
    from vgg_mobile.models.architectures import ModelOptions
    from vgg_mobile.data.sample import write_sample_data
    from vgg_mobile.training.train import train

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.t0)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_sample_data(Path(tmp) / "data", images_per_class=args.images_per_class)
        parts = dataset.split(dataset.scan_folder(data))
        for size in args.sizes:
            timer = EpochTimer()
            result = train(data, Path(tmp) / f"run{size}", ModelOptions(image_size=size, weights="none"),
                           TrainConfig(epochs=args.epochs, batch_size=16, learning_rate=3e-4),
                           callbacks=(timer,))
            steady = timer.seconds[1:] or timer.seconds
            train_ips = len(parts.train) / (sum(steady) / len(steady))
            model = keras.models.load_model(result.run_dir / "model.keras", compile=False)
            evaluation.predict(model, parts.val[:16], size, 4)  # warm-up
            t0 = time.perf_counter()
            evaluation.predict(model, parts.val, size, 4)
            infer_ips = len(parts.val) / (time.perf_counter() - t0)
            rows.append((size, result.metrics["accuracy"], train_ips, infer_ips))
    print(f"VGG16 teacher from scratch, sample data ({len(parts.train)} train / "
          f"{len(parts.val)} val images), {args.epochs} epochs, batch 16")
    print("| input px | val accuracy | training images/s (incl. validation) | Keras inference images/s |")
    print("|---|---|---|---|")
    for size, acc, train_ips, infer_ips in rows:
        print(f"| {size} | {acc:.3f} | {train_ips:.1f} | {infer_ips:.1f} |")


if __name__ == "__main__":
    main()
