"""Unbalanced classes: one class cut to a tenth of its training images, the teacher trained
plain, with class weights and with the focal loss, as a Markdown table.

    uv run python benchmarks/imbalance.py [--data DIR] [--out DIR] [--cut CLASS]
        [--keep 0.1] [--gamma 2.0] [--seed 0] [--epochs N] [--quick]

DATA is a pre-split folder (`train/<class>/*`, `val/<class>/*`), by default
`build/benchmarks/fashion` (Fashion-MNIST, 500 training and 200 held-out photos per class,
written by `benchmarks/real_data.py --fashion-mnist`). It is only read: the script copies
`val/` whole and `train/` with the class `--cut` reduced to `--keep` of its images (a seeded
choice) into `OUT/data/`.

Then the teacher of the `sample` preset (`vgg_mobile.pipeline.config.PRESETS`: its
architecture, size and training settings) is trained three times on that folder, changing
only the loss:

    plain          the cross-entropy (the preset's teacher as it is)
    class_weights  `class_weights = true`: inverse class frequency
    focal          `focal_gamma = --gamma`

Each run's manifest holds its metrics on the held-out `val/` images (`evaluation.metrics`):
the table gives every run's overall accuracy and the cut class's recall on those same images,
with how many they are, and the change against `plain`. The issue's target: balanced training
raises the cut class's recall by at least 10 points at a cost of at most 1 point of overall
accuracy. The table is printed and written to `OUT/results.md` and `OUT/results.json`.

`--quick` is a smoke run: 20 training and 10 held-out images per class, one epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path("build/benchmarks/fashion")
DEFAULT_OUT = Path("build/benchmarks/imbalance")
DEFAULT_CUT = "shirt"
TARGET_RECALL_POINTS = 10.0
TARGET_ACCURACY_COST = 1.0
QUICK_TRAIN = 20
QUICK_VAL = 10
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def cut_folder(data: Path, target: Path, cut: str, keep: float, seed: int,
               limit_train: int | None = None, limit_val: int | None = None) -> dict:
    """Copies `data` (`train/` + `val/`) to `target` with class `cut` of `train/` cut to
    `keep` of its images (at least one), chosen with `seed`.

    `limit_train` and `limit_val` keep only the first that many images of each class
    (sorted by name) before the cut: the smoke run's small folder.

    Returns:
        `{"train": {class: count}, "val": {class: count}, "cut": cut, "keep": keep, ...}`.

    Raises:
        SystemExit: `data` is not a pre-split folder, or has no class `cut`.
    """
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise SystemExit(f"error: {data}: needs train/<class>/ and val/<class>/ folders")
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    if cut not in classes:
        raise SystemExit(f"error: --cut {cut!r} is not a class of {data / 'train'}; "
                         f"classes: {', '.join(classes)}")
    if target.exists():
        shutil.rmtree(target)
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for part, limit in (("train", limit_train), ("val", limit_val)):
        for name in classes:
            files = _images(data / part / name)[:limit]
            if part == "train" and name == cut:
                rng = np.random.default_rng(seed)
                n = max(1, round(len(files) * keep))
                files = [files[i] for i in sorted(rng.choice(len(files), n, replace=False))]
            (target / part / name).mkdir(parents=True)
            for path in files:
                shutil.copyfile(path, target / part / name / path.name)
            counts[part][name] = len(files)
    return {"source": str(data.resolve()), "cut": cut, "keep": keep, "seed": seed, **counts}


# The losses compared: the config fields each sets on the preset's teacher.
VARIANTS = {"plain": {}, "class_weights": {"class_weights": True}, "focal": "focal"}


def teacher_settings(quick: bool, epochs: int | None):
    """The `sample` preset's teacher options and training config (one epoch with `quick`)."""
    from vgg_mobile.pipeline.config import build_config

    teacher = build_config(preset="sample").teacher
    train = teacher.train
    if quick or epochs:
        train = dataclasses.replace(train, epochs=1 if quick else epochs)
    return teacher.model, train


def run(data: Path, out: Path, cut: str, keep: float, gamma: float, seed: int,
        quick: bool = False, epochs: int | None = None, log=print) -> dict:
    """Cuts the folder, trains the three teachers and measures them; returns the results."""
    from vgg_mobile.training.train import train

    record = cut_folder(data, out / "data", cut, keep, seed,
                        QUICK_TRAIN if quick else None, QUICK_VAL if quick else None)
    log(f"{cut}: {record['train'][cut]} training images (of "
        f"{max(record['train'].values())} per other class), "
        f"{sum(record['val'].values())} held-out images")
    options, base = teacher_settings(quick, epochs)
    rows = []
    for name, change in VARIANTS.items():
        change = {"focal_gamma": gamma} if change == "focal" else change
        config = dataclasses.replace(base, seed=seed, **change)
        started = time.perf_counter()
        result = train(out / "data", out / "runs" / name, options, config, force=True,
                       command=["benchmarks/imbalance.py", name], log=log)
        metrics = result.metrics
        rows.append({"variant": name, "settings": change, "accuracy": metrics["accuracy"],
                     "cut_recall": metrics["per_class"][cut]["recall"],
                     "cut_images": metrics["per_class"][cut]["support"],
                     "images": metrics["num_images"],
                     "seconds": round(time.perf_counter() - started, 1)})
    plain = rows[0]
    for row in rows:
        row["recall_gain_points"] = round((row["cut_recall"] - plain["cut_recall"]) * 100, 1)
        row["accuracy_cost_points"] = round((plain["accuracy"] - row["accuracy"]) * 100, 1)
        row["meets_target"] = (None if row is plain else
                               row["recall_gain_points"] >= TARGET_RECALL_POINTS
                               and row["accuracy_cost_points"] <= TARGET_ACCURACY_COST)
    return {"data": record, "teacher": {"model": dataclasses.asdict(options),
                                        "train": dataclasses.asdict(base)},
            "rows": rows, "quick": quick}


def format_table(results: dict) -> str:
    """The results as a Markdown table, then what it is measured on and the target."""
    rows, record = results["rows"], results["data"]
    cut = record["cut"]
    lines = [f"| loss | accuracy | recall of {cut!r} | recall change | accuracy cost | "
             "target met | seconds |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        setting = ", ".join(f"{k} = {str(v).lower()}" for k, v in row["settings"].items())
        met = {None: "-", True: "yes", False: "no"}[row["meets_target"]]
        lines.append(f"| {row['variant']}{f' ({setting})' if setting else ''} | "
                     f"{row['accuracy']:.3f} | {row['cut_recall']:.3f} | "
                     f"{row['recall_gain_points']:+.1f} pts | {row['accuracy_cost_points']:+.1f} pts | "
                     f"{met} | {row['seconds']:.0f} |")
    first = rows[0]
    lines += ["", f"Every figure is on the same {first['images']} held-out images "
              f"({first['cut_images']} of {cut!r}: one of them = "
              f"{100 / first['cut_images']:.1f} points of its recall). {cut!r} trained on "
              f"{record['train'][cut]} images against {max(record['train'].values())} for the "
              f"largest class. Target: recall up by >= {TARGET_RECALL_POINTS:g} points at an "
              f"accuracy cost of <= {TARGET_ACCURACY_COST:g} point."]
    if results["quick"]:
        lines.append("Smoke run (--quick): one epoch on a few images; the figures mean nothing.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"pre-split image folder (read only). Default: {DEFAULT_DATA}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where the cut copy, the runs and the results go. Default: {DEFAULT_OUT}")
    parser.add_argument("--cut", default=DEFAULT_CUT,
                        help=f"the class cut down. Default: {DEFAULT_CUT}")
    parser.add_argument("--keep", type=float, default=0.1,
                        help="share of the cut class's training images kept. Default: 0.1")
    parser.add_argument("--gamma", type=float, default=2.0,
                        help="focal_gamma of the focal variant. Default: 2.0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the preset teacher's epochs")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20 + 10 images per class, one epoch")
    args = parser.parse_args(argv)
    if not 0 < args.keep <= 1:
        parser.error(f"--keep must be in (0, 1]. Received: {args.keep}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = run(args.data, args.out, args.cut, args.keep, args.gamma, args.seed,
                  quick=args.quick, epochs=args.epochs, log=log)
    command = shlex.join(["python", "benchmarks/imbalance.py", *(argv if argv is not None
                                                                 else sys.argv[1:])])
    table = format_table(results)
    text = f"{table}\n\nCommand: `{command}`\n"
    print(text)
    (args.out / "results.md").write_text(text, encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps({**results, "command": command}, indent=2),
                                           encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
