"""Distillation on the sample data: teacher, student alone and distilled student, as Markdown.

    uv run python benchmarks/distillation.py [--images-per-class 60] [--teacher-epochs 10]
        [--epochs 15] [--student mobilenet_v2_0.35] [--student-size 64]

Trains a VGG16 teacher from scratch on the built-in sample data, distils it into the student
with `--baseline` (the same student, same initialisation and budget, trained without the
teacher), and reports for each model: validation accuracy (the teacher's held-out images),
parameters, model file size, and Keras CPU latency per image (median of single-image calls of
a `tf.function` after warm-up, teacher and student timed in alternation) with its ratio to the
teacher measured in the same process. Compare rows of one run; absolute numbers depend on the
machine and its load, and with 48 validation images one image is about 2 points.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import vgg_mobile  # noqa: F401  (selects tf_keras before TensorFlow loads)


def latencies_ms(models_and_sizes, repeats: int) -> list[float]:
    """Median ms per single-image call of each model, timed in interleaved rounds.

    Interleaving keeps the ratios fair when other work on the machine comes and goes.
    """
    import numpy as np
    import tensorflow as tf

    calls = []
    for model, size in models_and_sizes:
        run = tf.function(lambda x, model=model: model(x, training=False))
        x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32))
        for _ in range(5):
            run(x).numpy()
        calls.append((run, x))
    times = [[] for _ in calls]
    for _ in range(repeats):
        for (run, x), bucket in zip(calls, times):
            t0 = time.perf_counter()
            run(x).numpy()
            bucket.append(time.perf_counter() - t0)
    return [1000 * statistics.median(bucket) for bucket in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=60)
    parser.add_argument("--teacher-size", type=int, default=32)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--student", default="mobilenet_v2_0.35")
    parser.add_argument("--student-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--no-augment", action="store_true",
                        help="Do not augment the students' training images.")
    parser.add_argument("--repeats", type=int, default=100, help="Timed single-image calls per model.")
    args = parser.parse_args()

    import tf_keras as keras

    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.distillation.distill import DistillConfig, distill
    from vgg_mobile.training.hyperparameters import TrainConfig
    from vgg_mobile.models.architectures import ModelOptions
    from vgg_mobile.data.sample import write_sample_data
    from vgg_mobile.training.train import train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_sample_data(tmp / "data", images_per_class=args.images_per_class)
        teacher = train(data, tmp / "teacher", ModelOptions(image_size=args.teacher_size, weights="none"),
                        TrainConfig(epochs=args.teacher_epochs, batch_size=16, learning_rate=3e-4))
        config = DistillConfig(student=args.student, image_size=args.student_size,
                               temperature=args.temperature, alpha=args.alpha, epochs=args.epochs,
                               batch_size=16, learning_rate=args.learning_rate,
                               augment=not args.no_augment, baseline=True)
        result = distill(teacher.run_dir, data, tmp / "student", config)
        recorded = load_run(result.run_dir).manifest.data

        teacher_file = teacher.run_dir / "model.keras"
        student_file = result.run_dir / "model.keras"
        teacher_model = keras.models.load_model(teacher_file, compile=False)
        student_model = keras.models.load_model(student_file, compile=False)
        teacher_ms, student_ms = latencies_ms(
            [(teacher_model, args.teacher_size), (student_model, args.student_size)], args.repeats)

        rows = [
            (f"teacher vgg16 @ {args.teacher_size}px", result.teacher_metrics["accuracy"],
             result.teacher_parameters, teacher_file.stat().st_size, teacher_ms),
            (f"student {args.student} @ {args.student_size}px, alone (same budget)",
             result.baseline_metrics["accuracy"], result.student_parameters,
             student_file.stat().st_size, student_ms),
            (f"student {args.student} @ {args.student_size}px, distilled",
             result.metrics["accuracy"], result.student_parameters,
             student_file.stat().st_size, student_ms),
        ]
        n_train, n_val = recorded["train_images"], recorded["val_images"]
        print(f"Sample data: {args.images_per_class} images per class, 4 classes, "
              f"{n_train} training / {n_val} validation images. Teacher: {args.teacher_epochs} epochs "
              f"from scratch. Students: {args.epochs} epochs, T={args.temperature}, alpha={args.alpha}, "
              f"lr={args.learning_rate}, augment={not args.no_augment}; distillation + baseline took "
              f"{result.seconds:.0f} s.\n")
        print("| model | val accuracy | parameters | model file | Keras CPU ms / image | latency vs teacher |")
        print("|---|---|---|---|---|---|")
        for name, accuracy, params, size, ms in rows:
            print(f"| {name} | {accuracy:.3f} | {params:,} ({params / result.teacher_parameters:.1%}) "
                  f"| {size / 1e6:.2f} MB | {ms:.2f} | {ms / teacher_ms:.2f}x |")
        print("\nThe two student rows share one architecture, so their size and latency are the "
              "same model measured once.")


if __name__ == "__main__":
    main()
