"""In-browser latency of a TF.js bundle per backend (headless Chromium), beside LiteRT's.

    uv run python benchmarks/browser_latency.py EXPORT_DIR [--runs 15]

EXPORT_DIR is a `vgg-mobile convert` output (with `tfjs/` and `.tflite` files). The bundle is
served from 127.0.0.1 as the demo is, and each backend runs `--runs` single-image predictions
after 3 warm-ups; the table gives the median. The TFLite rows time the exported `.tflite` files
in LiteRT on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import vgg_mobile  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from vgg_mobile.web_demo import assemble_demo, serve_in_background

    manifest = json.loads((args.export / "manifest.json").read_text())
    height, width = manifest["input"]["size"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        site = assemble_demo(Path(tmp) / "site", args.export)
        server, url = serve_in_background(site)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=["--no-sandbox", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run"])
                page = browser.new_page()
                page.goto(url)
                page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)",
                                       timeout=120_000)
                for backend in ("wasm", "webgl", "cpu"):
                    result = page.evaluate(f"window.vggDemo.benchmark('{backend}', {args.runs})")
                    rows.append((f"TF.js {result['backend']}", result["median_ms"]))
                isolated = page.evaluate("window.crossOriginIsolated")
                browser.close()
        finally:
            server.shutdown()

    from converters.tflite import latency_ms

    image = np.random.default_rng(0).uniform(0, 255, (height, width, 3)).astype(np.float32)
    for artifact in manifest["artifacts"]:
        if artifact["format"] == "tflite":
            data = (args.export / artifact["file"]).read_bytes()
            for threads in (1, 2):
                rows.append((f"LiteRT {artifact['flavour']}, {threads} thread(s)",
                             latency_ms(data, image, threads, args.runs)))
    print(f"{manifest.get('architecture')} at {width}x{height} px; cross-origin isolated: {isolated}; "
          f"median of {args.runs} single-image runs")
    print("| runtime | ms per image |")
    print("|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
