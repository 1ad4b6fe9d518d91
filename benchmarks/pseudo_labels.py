"""Does a teacher gain from pseudo-labelled images? Self-training measured against its control.

    uv run python benchmarks/pseudo_labels.py --few-labels OUT [--per-class 1000] [--ratio 2]
        [--epochs 24] [--quick]

Reads a finished `benchmarks/few_labels.py` folder (`OUT/data`, `OUT/unlabeled` and the teacher
of `OUT/without`) and writes nothing but `OUT/pseudo_labels.md` and `OUT/pseudo_labels.json`.

1. **Pseudo-labels.** The teacher labels every unlabelled image. Each class keeps its
   `--per-class` most confident images (class-balanced self-training: a confidence threshold
   alone starves the classes the teacher confuses, at 0.95 Fashion-MNIST's shirts kept none).
2. **Self-trained.** The teacher's recipe from scratch (the same architecture, size, peak rate,
   augmentation, epochs and seed) on the labelled images plus, each epoch, a fresh seeded draw
   of `--ratio` pseudo-labelled images per labelled one.
3. **Control.** The same, with the draw taken from the labelled images themselves: as many
   steps on as many images an epoch, no pseudo-label. Without it a gain may only be the longer
   training.

Every row is scored on the same held-out images (`OUT/data/val`, 200 a class).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np


def pseudo_labels(probabilities: np.ndarray, paths: list[Path], per_class: int):
    """The `per_class` most confident images of each predicted class, as `(path, class)`
    pairs, with the confidence of the last one kept in each class."""
    from vgg_mobile.data.dataset import Example

    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    chosen, floors = [], []
    for label in range(probabilities.shape[1]):
        index = np.flatnonzero(predicted == label)
        index = index[np.argsort(-confidence[index], kind="stable")][:per_class]
        chosen += [Example(paths[i], label) for i in index]
        floors.append(float(confidence[index[-1]]) if len(index) else None)
    return chosen, floors


def accuracy(model, val) -> float:
    """Top-1 accuracy of `model` on the decoded held-out `(pixels, labels)`."""
    x_val, y_val = val
    return float((model.predict(x_val, verbose=0).argmax(1) == y_val).mean())


def retrain(config: dict, classes: int, train: tuple, pool: list, ratio: float, epochs: int,
            val) -> list[float]:
    """The teacher's recipe (its run's `config`) from scratch on `train` plus `ratio` draws
    from `pool` per labelled image each epoch; the held-out accuracy after each epoch."""
    import tf_keras as keras

    from vgg_mobile.data import dataset
    from vgg_mobile.data.augmentation import choose_augmentation
    from vgg_mobile.models.architectures import ModelOptions, build_classifier
    from vgg_mobile.training.schedules import warmup_cosine

    train_cfg = config["train"]
    options = ModelOptions(**config["model"])
    size = options.image_size
    keras.utils.set_random_seed(train_cfg["seed"])
    model = build_classifier(options, classes)
    draw = min(len(pool), math.ceil(ratio * len(train)))
    batch = train_cfg["batch_size"]
    steps = math.ceil((len(train) + draw) / batch)
    schedule = warmup_cosine(train_cfg["learning_rate"], epochs * steps,
                             train_cfg["warmup_epochs"] * steps)
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=train_cfg["weight_decay"]),
                  keras.losses.CategoricalCrossentropy(label_smoothing=train_cfg["label_smoothing"]))
    augmentation = choose_augmentation(train_cfg["augment"], train_cfg["augmentation"],
                                       train_cfg["flip"], size, train, train_cfg["seed"])
    rng = random.Random(train_cfg["seed"])
    curve = []
    for epoch in range(epochs):
        examples = tuple(train) + tuple(rng.sample(pool, draw))
        data = dataset.make_dataset(examples, size, batch, classes, training=True,
                                    augmentation=augmentation.augmentation, seed=epoch)
        model.fit(data, epochs=1, verbose=0)
        curve.append(accuracy(model, val))
        print(f"  epoch {epoch + 1}: held-out {curve[-1]:.4f}", file=sys.stderr, flush=True)
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--few-labels", type=Path, required=True, metavar="OUT",
                        help="a finished benchmarks/few_labels.py folder")
    parser.add_argument("--per-class", type=int, default=1000,
                        help="pseudo-labelled images kept per class (default: 1000)")
    parser.add_argument("--ratio", type=float, default=2.0,
                        help="images drawn per labelled one each epoch (default: 2)")
    parser.add_argument("--epochs", type=int, help="default: the teacher's")
    parser.add_argument("--quick", action="store_true", help="one epoch per row, a smoke run")
    args = parser.parse_args(argv)

    import vgg_mobile as vm
    from vgg_mobile.data import dataset
    from vgg_mobile.evaluation.metrics import predict

    out = args.few_labels
    teacher = vm.load_run(out / "without" / "teacher")
    config = teacher.manifest.config
    folder = dataset.scan_folder(out / "data")
    size, classes = teacher.image_size, len(teacher.classes)
    epochs = 1 if args.quick else (args.epochs or config["train"]["epochs"])
    val = dataset.load_images(folder.val, size, classes)
    model = teacher.load_model()
    taught = accuracy(model, val)
    unlabeled = vm.scan_unlabeled(out / "unlabeled", folder)
    paths = list(unlabeled.images)
    t0 = time.perf_counter()
    probabilities, _ = predict(model, tuple(dataset.Example(p, 0) for p in paths), size, classes,
                               batch_size=256)
    predict_seconds = time.perf_counter() - t0
    pool, floors = pseudo_labels(probabilities, paths, args.per_class)
    train = folder.train
    rows = {"teacher (its run)": {"held_out": taught}}
    t0 = time.perf_counter()
    curve = retrain(config, classes, train, pool, args.ratio, epochs, val)
    rows["self-trained: labelled + pseudo-labelled"] = {
        "held_out": curve[-1], "best_epoch": max(curve), "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    curve = retrain(config, classes, train, list(train) * math.ceil(args.ratio + 1),
                    args.ratio, epochs, val)
    rows["control: labelled alone, same steps"] = {
        "held_out": curve[-1], "best_epoch": max(curve), "seconds": time.perf_counter() - t0}
    lines = [f"| {len(folder.val)} held-out images | accuracy | best epoch | seconds |",
             "|---|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['held_out']:.4f} | "
                     + (f"{row['best_epoch']:.4f} | {row['seconds']:.0f} |" if "seconds" in row
                        else "- | - |"))
    text = "\n".join(lines + [
        "", f"{len(train)} labelled, {len(pool)} pseudo-labelled (at most {args.per_class} a class "
        f"of {len(paths)} unlabelled, labelled in {predict_seconds:.0f} s; the lowest confidence "
        f"kept per class: {', '.join('-' if f is None else f'{f:.2f}' for f in floors)}), "
        f"{args.ratio:g} drawn per labelled image an epoch, {epochs} epochs.",
        f"Command: `uv run python benchmarks/pseudo_labels.py {' '.join(argv or sys.argv[1:])}`"])
    print(text)
    (out / "pseudo_labels.md").write_text(text + "\n", encoding="utf-8")
    (out / "pseudo_labels.json").write_text(json.dumps({"rows": rows, "floors": floors,
                                                        "pseudo_labelled": len(pool)}, indent=2),
                                            encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
