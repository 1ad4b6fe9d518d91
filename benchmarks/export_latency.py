"""Size, agreement and single-image latency of every TFLite flavour of one or more runs.

    uv run python benchmarks/export_latency.py [TEACHER_RUN [STUDENT_RUN ...]] [--data DATA]

Without a run directory, a VGG16 teacher is trained from scratch on the built-in sample data
(32 px, 8 epochs). Latency is the median of `--repeats` single-image calls after warm-up:
Keras float through a compiled `tf.function`, TFLite in LiteRT with 1 and 2 threads. Ratios
are against the float Keras model of the same run, measured in the same process, so they
compare on a shared, noisy machine where absolute times do not.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


import vgg_mobile  # noqa: F401  (selects tf_keras before TensorFlow loads)


def benchmark_run(run_dir: Path, data_dir: Path | None, repeats: int) -> list[dict]:
    from vgg_mobile.converters.convert import compare
    from vgg_mobile.converters import tflite
    from vgg_mobile.data import dataset
    from vgg_mobile.data import splits
    from vgg_mobile.data.dataset import load_images
    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.runtimes import Keras, LiteRT

    run = load_run(run_dir)
    folder = dataset.scan_folder(data_dir or run.manifest.data["path"], classes=run.classes)
    held_out, _ = splits.held_out(run.manifest.data, folder, "auto")
    parts = splits.choose_split(folder, run.manifest.data, seed=run.manifest.seed).parts
    x, y = load_images(held_out, run.image_size, len(run.classes))
    x_cal, _ = load_images(splits.stratified_sample(parts.train, 100), run.image_size, len(run.classes))
    model = run.load_model()
    reference = model(x, training=False).numpy()
    keras_ms = Keras(model).latency_ms(x[0], repeats)
    name = f"{run.manifest.architecture} ({run.manifest.stage})"
    rows = [{"model": name, "artifact": "Keras float32", "size": run.model_path.stat().st_size,
             "accuracy": float((reference.argmax(1) == y).mean()), "agreement": 1.0,
             "ms1": keras_ms, "ms2": None, "ratio1": 1.0, "ratio2": None}]
    for flavour in tflite.FLAVOURS:
        data = tflite.convert_keras_model(model, flavour, x_cal,
                                          io_dtype="uint8" if flavour == "int8" else "float32")
        check = compare(reference, LiteRT.load(data, 1).predict(x), y)
        ms1 = LiteRT.load(data, 1).latency_ms(x[0], repeats)
        ms2 = LiteRT.load(data, 2).latency_ms(x[0], repeats)
        rows.append({"model": name, "artifact": f"TFLite {flavour}", "size": len(data),
                     "accuracy": check["accuracy"], "agreement": check["top1_agreement"],
                     "ms1": ms1, "ms2": ms2, "ratio1": keras_ms / ms1, "ratio2": keras_ms / ms2})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs
        if not runs:
            from vgg_mobile.training.hyperparameters import TrainConfig
            from vgg_mobile.models.architectures import ModelOptions
            from vgg_mobile.data.sample import write_sample_data
            from vgg_mobile.training.train import train

            data = write_sample_data(Path(tmp) / "data")
            runs = [train(data, Path(tmp) / "teacher", ModelOptions(image_size=32, weights="none"),
                          TrainConfig(epochs=8, batch_size=16, learning_rate=3e-4)).run_dir]
        rows = [row for run in runs for row in benchmark_run(run, args.data, args.repeats)]
    # The first run is the reference (the float teacher, when teacher and student are given).
    first_keras_ms = rows[0]["ms1"]
    print("| model | artifact | size MB | accuracy | top-1 agreement | ms/image 1 thread | "
          "speed-up vs its Keras float, 1 thread | speed-up vs first run's Keras float, 1 thread | "
          "ms/image 2 threads | speed-up vs its Keras float, 2 threads |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        two = f"{r['ms2']:.2f} | {r['ratio2']:.1f}x" if r["ms2"] is not None else "– | –"
        print(f"| {r['model']} | {r['artifact']} | {r['size'] / 1e6:.2f} | {r['accuracy']:.3f} | "
              f"{r['agreement']:.3f} | {r['ms1']:.2f} | {r['ratio1']:.1f}x | "
              f"{first_keras_ms / r['ms1']:.1f}x | {two} |")


if __name__ == "__main__":
    main()
