"""Training throughput with 1 and 2 replicas, and the input pipeline's, as a Markdown table.

    uv run python benchmarks/distributed_throughput.py [--replicas 1 2] [--epochs 3]
        [--mixed-precision] [--jit-compile]

Measures on the built-in sample data:
  - the teacher (VGG16 from scratch, 32 px): `vgg-mobile train` images/s;
  - the student (MobileNetV2 0.35 at 64 px distilled from that teacher): `vgg-mobile distill`
    images/s;
  - the input pipeline alone (decode, cache, augment; no model), at each model's size;
  - the training step alone, on one batch held in memory (`train --data-benchmark`).
Training figures leave out the first epoch (tracing, cache fill). With more than one replica
the strategy is `mirrored`: across the GPUs when there are as many, else across logical CPU
devices (`VGG_MOBILE_LOGICAL_CPUS`), which share the same cores, so on a CPU the 2-replica
column measures the distribution overhead, not a speed-up. Every configuration runs in its own
process, because devices are fixed when TensorFlow starts. `--batch-size` is per replica.
On a GPU machine run the same command after `uv sync --extra gpu` and add its columns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import vgg_mobile  # noqa: F401  (selects tf_keras before TensorFlow loads)

TEACHER_SIZE, STUDENT_SIZE = 32, 64


def _epoch_timer():
    import tf_keras as keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t0)

    return EpochTimer()


def measure(kind: str, replicas: int, args) -> dict:
    """One configuration, in this process (started with its devices already set)."""
    from vgg_mobile.distillation.distill import DistillConfig, distill
    from vgg_mobile.training.distribute import DistributeConfig
    from vgg_mobile.training.hyperparameters import TrainConfig
    from vgg_mobile.models.architectures import ModelOptions
    from vgg_mobile.training.throughput import measure_throughput
    from vgg_mobile.training.train import train

    distribute = DistributeConfig(strategy="mirrored" if replicas > 1 else "default",
                                  mixed_precision=args.mixed_precision, jit_compile=args.jit_compile)
    data, work = Path(args.data), Path(args.work)
    timer = _epoch_timer()
    if kind == "teacher":
        result = train(data, work / f"teacher-{replicas}", ModelOptions(image_size=TEACHER_SIZE),
                       TrainConfig(epochs=args.epochs, batch_size=args.batch_size),
                       callbacks=(timer,), distribute=distribute)
        images = json.loads((result.run_dir / "manifest.json").read_text())["data"]["train_images"]
        return {"replicas": result.distribution["replicas"],
                "images_per_second": images / (sum(timer.seconds[1:]) / len(timer.seconds[1:]))}
    if kind == "student":
        result = distill(work / "teacher-1", data, work / f"student-{replicas}",
                         DistillConfig(image_size=STUDENT_SIZE, epochs=args.epochs,
                                       batch_size=args.batch_size),
                         callbacks=(timer,), distribute=distribute)
        images = json.loads((result.run_dir / "manifest.json").read_text())["data"]["train_images"]
        return {"replicas": result.distribution["replicas"],
                "images_per_second": images / (sum(timer.seconds[1:]) / len(timer.seconds[1:]))}
    size = TEACHER_SIZE if kind == "step-teacher" else STUDENT_SIZE
    options = (ModelOptions(image_size=size) if kind == "step-teacher" else
               ModelOptions(architecture="mobilenet_v2_0.35", image_size=size, head_units=0))
    report = measure_throughput(data, options, TrainConfig(batch_size=args.batch_size),
                                  distribute=distribute)
    return {"replicas": report.replicas, "input": report.input_images_per_second,
            "first_pass": report.first_pass_images_per_second,
            "step": report.step_images_per_second}


def _run(kind: str, replicas: int, args) -> dict:
    import tensorflow as tf

    env = dict(os.environ)
    if replicas > 1 and len(tf.config.list_physical_devices("GPU")) < replicas:
        env["VGG_MOBILE_LOGICAL_CPUS"] = str(replicas)
    command = [sys.executable, __file__, "--measure", kind, "--replicas", str(replicas),
               "--data", args.data, "--work", args.work, "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size)]
    command += ["--mixed-precision"] * args.mixed_precision + ["--jit-compile"] * args.jit_compile
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{kind} with {replicas} replica(s) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="Per replica.")
    parser.add_argument("--images-per-class", type=int, default=60)
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.replicas[0], args)))
        return

    from vgg_mobile.data.sample import write_sample_data

    with tempfile.TemporaryDirectory() as tmp:
        args.work = tmp
        args.data = str(write_sample_data(Path(tmp) / "data", images_per_class=args.images_per_class,
                                          image_size=64, seed=0))
        rows = {"teacher": {}, "student": {}, "step-teacher": {}, "step-student": {}}
        for replicas in args.replicas:
            for kind in ("teacher", "student", "step-teacher", "step-student"):
                if kind == "student" and 1 not in rows["teacher"]:
                    rows["teacher"][1] = _run("teacher", 1, args)  # the student's teacher
                print(f"measuring {kind} with {replicas} replica(s)...", file=sys.stderr)
                rows[kind][replicas] = _run(kind, replicas, args)

    import tensorflow as tf

    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    note = "" if device == "GPU" else " (logical)"
    flags = ", ".join(f for f, on in (("mixed precision", args.mixed_precision),
                                      ("XLA", args.jit_compile)) if on) or "float32"
    columns = [f"{device}, {r} replica{'s' if r > 1 else ''}{note if r > 1 else ''}"
               for r in args.replicas]
    print(f"Sample data, {args.images_per_class} images per class, batch {args.batch_size} per "
          f"replica, {args.epochs} epochs (first left out), {flags}; images/s.\n")
    if device == "CPU":
        columns += ["GPU, 1 replica", "GPU, 2 replicas"]  # to be filled where a GPU exists
    print("| measurement | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    lines = [
        (f"teacher VGG16 {TEACHER_SIZE} px, training", "teacher", "images_per_second"),
        (f"student MobileNetV2 0.35 {STUDENT_SIZE} px, distillation from the teacher", "student",
         "images_per_second"),
        ("teacher training step alone (batch in memory)", "step-teacher", "step"),
        ("student training step alone (batch in memory, no teacher)", "step-student", "step"),
        (f"input pipeline {TEACHER_SIZE} px, cached and augmented", "step-teacher", "input"),
        (f"input pipeline {TEACHER_SIZE} px, first pass (decode, cache)", "step-teacher", "first_pass"),
        (f"input pipeline {STUDENT_SIZE} px, cached and augmented", "step-student", "input"),
    ]
    for label, kind, key in lines:
        cells = [f"{rows[kind][r][key]:,.1f}" for r in args.replicas]
        cells += ["–"] * (len(columns) - len(cells))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
