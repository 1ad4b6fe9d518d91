"""Training and inference speed with TensorFlow's oneDNN CPU kernels on and off, as a table.

    uv run python benchmarks/onednn.py [--models vgg16_bn:32 mobilenet_v2_0.35:64] [--steps 20]

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it is imported, so each setting runs in
its own process: `vgg_mobile` turns the kernels on unless the variable says `0`. Each process
builds every model from scratch (random weights, 10 classes), times `--steps` training steps
after one warm-up step, and inference on `--steps` batches of 128 after a warm-up batch, on
random pixels (speed does not depend on them). Medians of the per-step times, in images/s.
Compare the rows of one run; absolute figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD_FLAG = "--child"


def _child(models: list[str], steps: int, batch: int) -> None:
    import vgg_mobile  # noqa: F401  (selects tf_keras and oneDNN before TensorFlow loads)
    import numpy as np
    import tf_keras as keras

    from vgg_mobile.core.timing import median_ms
    from vgg_mobile.models.architectures import ModelOptions, build_classifier
    from vgg_mobile.training.doctor import onednn_enabled

    rows = []
    rng = np.random.default_rng(0)
    for spec in models:
        name, size = spec.split(":")
        size = int(size)
        model = build_classifier(ModelOptions(architecture=name, image_size=size, weights="none"), 10)
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
        x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
        y = keras.utils.to_categorical(rng.integers(0, 10, batch), 10)
        big = rng.uniform(0, 255, (128, size, size, 3)).astype("float32")
        train_ms = median_ms(lambda: model.train_on_batch(x, y), repeats=steps, warmup=1)
        infer_ms = median_ms(lambda: model.predict_on_batch(big), repeats=steps, warmup=1)
        rows.append({"model": f"{name} @ {size}px", "batch": batch,
                     "train": 1000 * batch / train_ms, "infer": 1000 * 128 / infer_ms})
    print(json.dumps({"onednn": onednn_enabled(), "rows": rows}))


def main() -> None:
    if CHILD_FLAG in sys.argv:
        args = json.loads(sys.argv[sys.argv.index(CHILD_FLAG) + 1])
        _child(args["models"], args["steps"], args["batch"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16_bn:32", "mobilenet_v2_0.35:64"],
                        help="architecture:input_px pairs")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    child_args = json.dumps({"models": args.models, "steps": args.steps, "batch": args.batch})
    results = {}
    for setting in ("0", "1"):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting}
        done = subprocess.run([sys.executable, __file__, CHILD_FLAG, child_args], env=env,
                              capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"TF_ENABLE_ONEDNN_OPTS={setting}: exit {done.returncode}\n{done.stderr[-2000:]}")
        results[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    print("| model | batch | train img/s, oneDNN off | on | speed-up | inference img/s "
          "(batch 128), off | on | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for off, on in zip(results["0"]["rows"], results["1"]["rows"]):
        print(f"| {off['model']} | {off['batch']} | {off['train']:.1f} | {on['train']:.1f} | "
              f"{on['train'] / off['train']:.2f}x | {off['infer']:.1f} | {on['infer']:.1f} | "
              f"{on['infer'] / off['infer']:.2f}x |")
    print(f"\noneDNN reported by TensorFlow: off run {results['0']['onednn']}, "
          f"on run {results['1']['onednn']}; {os.cpu_count()} CPUs; "
          f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
