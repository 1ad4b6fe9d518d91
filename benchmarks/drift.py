"""The drift watch on real images, through a real `vgg-mobile serve-model`, as a Markdown table.

    uv run python benchmarks/drift.py RUN DATA [--out DIR] [--reference-images N]
        [--window N] [--threshold T]

RUN is a finished run (the pipeline's `student_qat`, say) and DATA its image folder. The
held-out images of DATA (as `vgg-mobile convert` picks them), in their seeded, stratified order,
are cut in two: the first `--reference-images` (default: half) verify the export and become its
drift reference (`convert --verify-images N` draws exactly those), the rest are the fresh
sample the reference has never seen.

`vgg-mobile convert RUN` then writes an int8 export to `OUT/export`, and one `serve-model`
(`--drift-window N --drift-threshold T --drift-rate 0`: every image counted) answers, one after the other, `--window` images of
each scenario, posted as image files to `/predict`:

  1. fresh held-out: the fresh sample as it is (its files' own bytes);
  2. darkened by 30 %: the same images, every pixel times 0.7;
  3. blurred: the same images through a Gaussian blur of radius 2 % of their shorter side
     (at least 1 pixel);
  4. one class only: the fresh images of the first class.

A scenario shorter than the window is cycled. Each fills the whole window, so the PSI read from
`/metrics` after it is its own. Printed, and written to `OUT/drift.md` and `OUT/drift.json`.
"""

from __future__ import annotations

import argparse
import http.client
import io
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import Server  # noqa: E402  (the serving benchmark's server process)

DEFAULT_OUT = Path("build/benchmarks/drift")


def held_out_order(run_dir: Path, data: Path):
    """The held-out examples in `convert`'s order (seeded, stratified), and the split's name."""
    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.data import dataset, splits

    run = load_run(run_dir)
    held_out, split = splits.held_out(run.manifest.data, dataset.scan_folder(data, classes=run.classes))
    return run, splits.stratified_sample(held_out, None), split


def encoded(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def darkened(path: Path) -> bytes:
    from vgg_mobile.data.images import load_rgb

    return encoded(np.round(load_rgb(path).astype(np.float32) * 0.7).astype(np.uint8))


def blurred(path: Path) -> bytes:
    from PIL import Image, ImageFilter

    from vgg_mobile.data.images import load_rgb

    image = Image.fromarray(load_rgb(path))
    radius = max(1.0, 0.02 * min(image.size))
    return encoded(np.asarray(image.filter(ImageFilter.GaussianBlur(radius))))


def post(address: tuple[str, int], body: bytes) -> None:
    connection = http.client.HTTPConnection(*address, timeout=60)
    try:
        connection.request("POST", "/predict", body=body,
                           headers={"content-type": "application/octet-stream"})
        answer = connection.getresponse()
        text = answer.read()
        if answer.status != 200:
            raise SystemExit(f"/predict answered {answer.status}: {text[:300]!r}")
    finally:
        connection.close()


def drift_metrics(address: tuple[str, int]) -> tuple[dict[str, float], float]:
    """The PSI of each statistic of version 1, and the warnings logged so far."""
    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection(*address, timeout=60)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    psi, warnings = {}, 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vgg_mobile_drift_psi":
                psi[sample.labels["statistic"]] = sample.value
            elif sample.name == "vgg_mobile_drift_warnings_total":
                warnings += sample.value
    return psi, warnings


def table(rows: list[dict], statistics: tuple[str, ...], threshold: float) -> str:
    head = ("scenario", "images", *statistics, "over the threshold")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"**{row['psi'][name]:.3f}**" if row["psi"][name] > threshold
                 else f"{row['psi'][name]:.3f}" for name in statistics]
        over = [name for name in statistics if row["psi"][name] > threshold]
        lines.append(f"| {row['scenario']} | {row['images']} | " + " | ".join(cells)
                     + f" | {', '.join(over) or 'none'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="A finished run directory.")
    parser.add_argument("data", type=Path, help="Its image folder.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--reference-images", type=int, default=None,
                        help="Held-out images in the reference (default: half of them).")
    parser.add_argument("--window", type=int, default=500, help="serve-model --drift-window.")
    parser.add_argument("--threshold", type=float, default=0.25,
                        help="serve-model --drift-threshold.")
    args = parser.parse_args(argv)

    from vgg_mobile.converters.convert import ConvertOptions, convert_run
    from vgg_mobile.data import drift, splits

    run, ordered, split = held_out_order(args.run, args.data)
    count = args.reference_images or len(ordered) // 2
    if not 0 < count < len(ordered):
        raise SystemExit(f"--reference-images must be between 1 and {len(ordered) - 1}")
    reference, fresh = ordered[:count], ordered[count:]
    # convert draws its verification sample the same way: these are the reference's images.
    assert splits.stratified_sample(ordered, count) == reference
    export = args.out / "export"
    convert_run(args.run, export, ConvertOptions(flavours=("int8",), tfjs=False,
                                                 verify_images=count, max_size=None),
                data_dir=args.data, force=True, command=["benchmarks/drift.py"],
                log=lambda line: print(line, file=sys.stderr))
    first_class = [example for example in fresh if example.label == 0]
    scenarios = [
        ("fresh held-out", [e.path.read_bytes for e in fresh]),
        ("darkened by 30 %", [lambda p=e.path: darkened(p) for e in fresh]),
        ("blurred", [lambda p=e.path: blurred(p) for e in fresh]),
        (f"one class only ({run.classes[0]})", [e.path.read_bytes for e in first_class]),
    ]
    server = Server(export, "tflite", "int8", 1, None,
                    flags=("--drift-window", str(args.window), "--drift-threshold",
                           str(args.threshold), "--drift-rate", "0"))
    rows = []
    try:
        warned = 0.0
        for name, images in scenarios:
            for read in itertools.islice(itertools.cycle(images), args.window):
                post(server.address, read())
            psi, warnings = drift_metrics(server.address)
            rows.append({"scenario": name, "images": args.window, "distinct": len(images),
                         "psi": psi, "warnings": warnings - warned})
            warned = warnings
            print(f"{name}: {json.dumps({k: round(v, 3) for k, v in psi.items()})}",
                  file=sys.stderr)
    finally:
        server.stop()
    text = (f"Drift window {args.window} images, threshold {args.threshold}; reference: "
            f"{count} {split} images of {args.data} (the export's verification sample), fresh "
            f"sample: the other {len(fresh)} held-out images; model: {run.manifest.architecture} "
            f"int8 ({args.run}).\n\n" + table(rows, drift.STATISTICS, args.threshold) + "\n")
    print(text)
    (args.out / "drift.md").write_text(text, encoding="utf-8")
    (args.out / "drift.json").write_text(json.dumps({
        "run": str(args.run), "data": str(args.data), "reference_images": count,
        "fresh_images": len(fresh), "window": args.window, "threshold": args.threshold,
        "rows": rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
