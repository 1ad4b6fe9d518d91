"""In-browser latency of a TF.js bundle per backend (headless Chromium), beside LiteRT's.

    uv run python measurements/browser_latency.py EXPORT_DIR [--runs 15]
    uv run python measurements/browser_latency.py --architecture mobilenet_v2_0.35 --image-size 224

EXPORT_DIR is a `vgg-mobile convert` output (with `tfjs/` and `.tflite` files). With
`--architecture` instead, a classifier of that architecture with random weights is exported
(latency does not depend on the weights' values). The bundle is
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
    parser.add_argument("export", type=Path, nargs="?")
    parser.add_argument("--architecture", default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    if (args.export is None) == (args.architecture is None):
        parser.error("give an EXPORT_DIR or --architecture")

    from playwright.sync_api import sync_playwright

    from vgg_mobile.site import assemble_demo, serve_in_background

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export = args.export or _random_export(Path(tmp) / "export", args.architecture, args.image_size)
        manifest = json.loads((export / "manifest.json").read_text())
        height, width = manifest["input"]["size"]
        site = assemble_demo(Path(tmp) / "site", export)
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

        from vgg_mobile.converters.tflite import latency_ms

        image = np.random.default_rng(0).uniform(0, 255, (height, width, 3)).astype(np.float32)
        for artifact in manifest["artifacts"]:
            if artifact["format"] == "tflite":
                data = (export / artifact["file"]).read_bytes()
                for threads in (1, 2):
                    rows.append((f"LiteRT {artifact['flavour']}, {threads} thread(s)",
                                 latency_ms(data, image, threads, args.runs)))
    print(f"{manifest.get('architecture')} at {width}x{height} px; cross-origin isolated: {isolated}; "
          f"median of {args.runs} single-image runs")
    print("| runtime | ms per image |")
    print("|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")


def _random_export(out: Path, architecture: str, size: int) -> Path:
    """An export folder (TF.js bundle + int8 TFLite) of an untrained classifier."""
    from vgg_mobile.converters import tflite, tfjs
    from vgg_mobile.models.architectures import ModelOptions, build_classifier
    from vgg_mobile.core.io import write_json

    classes = ["a", "b", "c", "d"]
    model = build_classifier(ModelOptions(architecture=architecture, image_size=size), len(classes))
    out.mkdir(parents=True)
    bundle = tfjs.convert_to_tfjs(model, out / "tfjs", "uint8")
    write_json(bundle / "labels.json", classes)
    write_json(bundle / "manifest.json", {"architecture": architecture, "classes": classes,
                                          "input": {"size": [size, size]}})
    calibration = np.random.default_rng(1).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
    (out / "model_int8.tflite").write_bytes(tflite.convert_keras_model(model, "int8", calibration))
    manifest = {"architecture": architecture, "input": {"size": [size, size]},
                "artifacts": [{"format": "tflite", "flavour": "int8", "file": "model_int8.tflite"}]}
    write_json(out / "manifest.json", manifest)
    return out


if __name__ == "__main__":
    main()
