"""In-browser latency of the demo's two runtimes on one export: TF.js (WASM) and MediaPipe.

Builds a demo folder from a `vgg-mobile convert` export (its TF.js bundle and its int8
`.tflite`), serves it on 127.0.0.1, opens it in headless Chromium (Playwright driving
/usr/bin/chromium) and times the model on the same images with each runtime: TF.js on its WASM
backend, and MediaPipe Tasks' ImageClassifier (CPU delegate) on the int8 `.tflite`. The time is
the model's alone (the page resizes each image to the model's input first, for both runtimes);
the first inference after a runtime starts is reported apart, as the warm-up.

    uv run python benchmarks/browser_latency.py EXPORT [--images DIR] [--count 20] [--repeats 3]

Without `--images`, `--count` seeded random-noise PNGs at the model's input size are used.
For the 224 px figures, give it the export of a 224 px model (`vgg-mobile convert` with the
int8 flavour and TF.js).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vgg_mobile.site import assemble_demo, serve_in_background  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


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


def measure(export: Path, images: list[Path], repeats: int) -> list[dict]:
    """Times each runtime over `images`, `repeats` times each; one result row per runtime."""
    from playwright.sync_api import sync_playwright

    urls = [data_url(p) for p in images]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        site = assemble_demo(Path(tmp) / "site", export)
        runtimes = json.loads((site / "runtimes.json").read_text())
        server, url = serve_in_background(site)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page()
                page.goto(url)
                page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)",
                                       timeout=180_000)
                if page.evaluate("document.body.dataset.state") != "ready":
                    raise SystemExit(f"error: the demo did not load: {page.text_content('#error')}")
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
                browser.close()
        finally:
            server.shutdown()
    return rows


def markdown(rows: list[dict], size: str) -> str:
    lines = [f"Input {size}; model time per image (after the page's resize).", "",
             "| runtime | warm-up ms | median ms | p90 ms | images (runs) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {r['warmup_ms']:.0f} | {r['median_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['images']} ({r['runs']}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="a `vgg-mobile convert` export folder")
    parser.add_argument("--images", type=Path, help="a folder of PNG/JPEG images")
    parser.add_argument("--count", type=int, default=20, help="noise images without --images")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the images")
    args = parser.parse_args(argv)
    manifest = json.loads((args.export / "manifest.json").read_text())
    height, width = manifest["input"]["size"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            images = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_TYPES)
        else:
            images = noise_images(Path(tmp), height, args.count)
        if not images:
            raise SystemExit(f"error: no PNG or JPEG images under {args.images}")
        rows = measure(args.export, images, args.repeats)
    print(markdown(rows, f"{width}x{height} px"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
