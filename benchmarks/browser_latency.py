"""In-browser latency of the web demo's models, in headless Chromium (Playwright driving
/usr/bin/chromium), on a page built from a `vgg-mobile convert` export and served on 127.0.0.1.

Two measurements, one per subcommand:

    uv run python benchmarks/browser_latency.py runtimes EXPORT [--images DIR] [--count 20] [--repeats 3]
    uv run python benchmarks/browser_latency.py backends EXPORT [--runs 15]
    uv run python benchmarks/browser_latency.py backends --architecture mobilenet_v2_0.35 --image-size 224

`runtimes`: the page's two runtimes on the same images: TF.js on its WASM backend (the TF.js
bundle) and MediaPipe Tasks' ImageClassifier (CPU delegate) on the int8 `.tflite`. The time is
the model's alone (the page resizes each image to the model's input first, for both runtimes);
the first inference after a runtime starts is reported apart, as the warm-up. Without
`--images`, `--count` seeded random-noise PNGs at the model's input size are used.

`backends`: TF.js per backend (wasm, webgl, cpu), `--runs` single-image predictions after 3
warm-ups each, beside the export's `.tflite` files in LiteRT on the same machine in the same
run (1 and 2 threads); medians. With `--architecture` instead of EXPORT, a classifier of that
architecture with random weights is exported first (latency does not depend on the weights'
values).

For the 224 px figures, give it the export of a 224 px model (`vgg-mobile convert` with the
int8 flavour and TF.js).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

import vgg_mobile  # noqa: F401  (selects tf_keras before TensorFlow loads)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@contextlib.contextmanager
def demo_page(export: Path, work: Path, gpu: bool = False):
    """The web demo of `export`, built in `work`, served, and loaded in Chromium: yields the
    Playwright page and the folder's `runtimes.json`."""
    from playwright.sync_api import sync_playwright

    from vgg_mobile.web_demo import assemble_demo, serve_in_background

    site = assemble_demo(work / "site", export)
    runtimes = json.loads((site / "runtimes.json").read_text())
    server, url = serve_in_background(site)
    try:
        with sync_playwright() as playwright:
            args = [a for a in CHROMIUM_ARGS if not (gpu and a == "--disable-gpu")]
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)",
                                   timeout=180_000)
            if page.evaluate("document.body.dataset.state") != "ready":
                raise SystemExit(f"error: the demo did not load: {page.text_content('#error')}")
            yield page, runtimes
            browser.close()
    finally:
        server.shutdown()


def noise_images(folder: Path, size: int, count: int, seed: int = 0) -> list[Path]:
    """Writes `count` seeded random RGB PNGs of `size` px; returns their paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"noise_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def data_url(path: Path) -> str:
    kind = IMAGE_TYPES[path.suffix.lower()]
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_runtimes(export: Path, images: list[Path], repeats: int) -> list[dict]:
    """Times each of the page's runtimes over `images`, `repeats` times each; one row each."""
    urls = [data_url(p) for p in images]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, demo_page(export, Path(tmp)) as (page, runtimes):
        plan = [("TF.js WASM (tfjs bundle)", "tfjs", "tfjs-wasm")]
        if "model" in runtimes["mediapipe"]:
            plan.append(("MediaPipe CPU (int8 .tflite)", "mediapipe", "mediapipe"))
        else:
            print(f"MediaPipe skipped: {runtimes['mediapipe']['disabled']}", file=sys.stderr)
        for name, runtime, key in plan:
            page.evaluate("([r]) => window.vggDemo.switchTo(r, 'wasm')", [runtime])
            warmup = page.evaluate(f"window.vggDemo.state.warmup['{key}']")
            times = [page.evaluate("(u) => window.vggDemo.timeImage(u)", u)
                     for _ in range(repeats) for u in urls]
            rows.append({"runtime": name, "warmup_ms": warmup,
                         "median_ms": statistics.median(times),
                         "p90_ms": percentile(times, 90), "images": len(urls),
                         "runs": len(times)})
    return rows


def runtimes_table(rows: list[dict], size: str) -> str:
    lines = [f"Input {size}; model time per image (after the page's resize).", "",
             "| runtime | warm-up ms | median ms | p90 ms | images (runs) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {r['warmup_ms']:.0f} | {r['median_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['images']} ({r['runs']}) |")
    return "\n".join(lines)


def measure_backends(export: Path, runs: int) -> tuple[list[tuple[str, float]], bool]:
    """Median single-image latency of TF.js per backend in the page, then of every `.tflite`
    of the export in LiteRT (1 and 2 threads); and whether the page was cross-origin isolated."""
    from vgg_mobile import runtimes
    from vgg_mobile.core.export_dir import load_export

    rows = []
    with tempfile.TemporaryDirectory() as tmp, demo_page(export, Path(tmp), gpu=True) as (page, _):
        for backend in ("wasm", "webgl", "cpu"):
            result = page.evaluate(f"window.vggDemo.benchmark('{backend}', {runs})")
            rows.append((f"TF.js {result['backend']}", result["median_ms"]))
        isolated = page.evaluate("window.crossOriginIsolated")
    shipped = load_export(export)
    height, width = shipped.manifest.input["size"]
    image = np.random.default_rng(0).uniform(0, 255, (height, width, 3)).astype(np.float32)
    for artifact in shipped.find("tflite"):
        data = shipped.file(artifact).read_bytes()
        for threads in (1, 2):
            runtime = runtimes.load(data, "tflite", threads=threads)
            rows.append((f"LiteRT {artifact.flavour}, {threads} thread(s)",
                         runtime.latency_ms(image, runs)))
    return rows, isolated


def random_export(out: Path, architecture: str, size: int) -> Path:
    """An export folder (TF.js bundle + int8 TFLite) of an untrained classifier."""
    from vgg_mobile.converters import tflite, tfjs
    from vgg_mobile.core.io import write_json
    from vgg_mobile.core.run_dir import Manifest
    from vgg_mobile.models.architectures import ModelOptions, build_classifier

    classes = ("a", "b", "c", "d")
    model = build_classifier(ModelOptions(architecture=architecture, image_size=size), len(classes))
    out.mkdir(parents=True)
    bundle = tfjs.convert_to_tfjs(model, out / "tfjs", "uint8")
    write_json(bundle / "labels.json", list(classes))
    write_json(bundle / "manifest.json", {"architecture": architecture, "classes": list(classes),
                                          "input": {"size": [size, size]}})
    calibration = np.random.default_rng(1).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
    (out / "model_int8.tflite").write_bytes(tflite.convert_keras_model(model, "int8", calibration))
    write_json(out / "manifest.json", Manifest(
        stage="export", classes=classes, input={"size": [size, size]}, architecture=architecture,
        model_file=None, sections={"artifacts": [
            {"format": "tflite", "flavour": "int8", "file": "model_int8.tflite"}]}).to_json())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pair = commands.add_parser("runtimes", help="the page's TF.js WASM and MediaPipe runtimes")
    pair.add_argument("export", type=Path, help="a `vgg-mobile convert` export folder")
    pair.add_argument("--images", type=Path, help="a folder of PNG/JPEG images")
    pair.add_argument("--count", type=int, default=20, help="noise images without --images")
    pair.add_argument("--repeats", type=int, default=3, help="passes over the images")
    each = commands.add_parser("backends", help="TF.js per backend, beside LiteRT")
    each.add_argument("export", type=Path, nargs="?", help="a `vgg-mobile convert` export folder")
    each.add_argument("--architecture", default=None, help="instead of EXPORT: a random model")
    each.add_argument("--image-size", type=int, default=224)
    each.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)

    from vgg_mobile.core.export_dir import load_export

    with tempfile.TemporaryDirectory() as tmp:
        if args.command == "runtimes":
            height, width = load_export(args.export).manifest.input["size"]
            if args.images:
                images = sorted(p for p in args.images.rglob("*")
                                if p.suffix.lower() in IMAGE_TYPES)
            else:
                images = noise_images(Path(tmp), height, args.count)
            if not images:
                raise SystemExit(f"error: no PNG or JPEG images under {args.images}")
            print(runtimes_table(measure_runtimes(args.export, images, args.repeats),
                                 f"{width}x{height} px"))
            return 0
        if (args.export is None) == (args.architecture is None):
            parser.error("backends: give an EXPORT or --architecture")
        export = args.export or random_export(Path(tmp) / "export", args.architecture,
                                              args.image_size)
        rows, isolated = measure_backends(export, args.runs)
        manifest = load_export(export).manifest
        height, width = manifest.input["size"]
    print(f"{manifest.architecture} at {width}x{height} px; cross-origin isolated: {isolated}; "
          f"median of {args.runs} single-image runs")
    print("| runtime | ms per image |")
    print("|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
