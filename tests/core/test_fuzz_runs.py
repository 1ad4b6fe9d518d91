"""Seeded fuzzing of run directories: whatever a run folder holds, loading it works or fails
with a `RunDirError` (exit 2 from the CLI), never with another exception.

Each case copies one real run written by `finish_run` and applies one to three random
mutations (manifest fields, the manifest's bytes, the model file, labels.txt, where
`model_file` points); a few of the mutated runs also go through `vgg-mobile evaluate`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import shutil
import subprocess
import sys
import warnings
import zipfile

import pytest

from harness import image_folder

from vgg_mobile.core import run_dir
from vgg_mobile.core.errors import RunDirError

SEED = 0
CASES = 60
CLASSES = ("a", "b")
SIZE = 16
# Mutation kinds sent through `vgg-mobile evaluate`: per kind, the first case with only that
# mutation (else the first case starting with it).
CLI_KINDS = ("lambda_model", "field", "manifest_bytes", "model_bytes", "model_file", "labels",
             "classes")
NASTY_STRINGS = ("", "../", "../../etc/passwd", "/etc/passwd", "a\0b", "model.keras", "model.h5",
                 "\n", "é", "\ud800", "x" * 5000, "C:\\model.keras", "~", "1", "null", "Lambda",
                 "a/../../b", "\x1b[31m")
FIELDS = ("schema_version", "stage", "kind", "classes", "num_classes", "architecture", "input",
          "preprocessing", "output", "model_file", "quantization_aware", "config", "command",
          "data", "parent", "metrics", "versions")


def _tiny_model(middle=None):
    import tf_keras as keras

    pixels = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(pixels)
    x = middle(x) if middle else x
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(len(CLASSES), name="logits")(x)
    probs = keras.layers.Activation("softmax", dtype="float32", name="probs")(logits)
    return keras.Model(pixels, probs, name="tiny")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished run, the same model as HDF5, an HDF5 model with a marker-writing Lambda,
    another run to point at, and a data folder of the run's classes."""
    import tf_keras as keras

    root = tmp_path_factory.mktemp("fuzz")
    model = _tiny_model()
    manifest = run_dir.Manifest(stage="teacher", classes=CLASSES, input={"size": [SIZE, SIZE]},
                                output={"layer": "probs", "logits_layer": "logits"})
    run_dir.finish_run(root / "run", model, manifest)
    run_dir.finish_run(root / "other", model, manifest)
    marker = root / "marker"
    evil_path = str(marker)
    evil = _tiny_model(keras.layers.Lambda(lambda x: (open(evil_path, "w").close(), x)[1], name="evil"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HDF5 file.*")
        run_dir.save_model(model, root / "model.h5")
        run_dir.save_model(evil, root / "evil.h5")
    marker.unlink()
    return {"root": root, "run": root / "run", "other": root / "other", "marker": marker,
            "h5": root / "model.h5", "evil": root / "evil.h5",
            "data": image_folder(root / "data", {c: 4 for c in CLASSES}, size=SIZE)}


def random_json(rng: random.Random, depth: int = 0):
    """A random JSON value: numbers (huge ones too), nasty strings, lists, objects, nesting."""
    kind = rng.choice(["int", "huge", "float", "bool", "null", "str", "list", "dict", "deep"]
                      if depth < 2 else ["int", "str", "null", "bool"])
    if kind == "int":
        return rng.choice([0, 1, -1, 2, 16, 2**31, -(2**63)])
    if kind == "huge":
        return rng.choice([10**400, -(10**400), 1e308, 2**64])
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e-300, 16.0, float("inf"), float("nan")])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "str":
        return rng.choice(NASTY_STRINGS)
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {rng.choice(["size", "path", "seed", "a", ""]): random_json(rng, depth + 1)
                for _ in range(rng.randint(0, 3))}
    value = rng.choice(["a", 1, None])
    for _ in range(rng.randint(5, 200)):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def _manifest(run) -> dict:
    """The run's manifest, or `{}` once a mutation made it unreadable."""
    try:
        manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _remove(path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _write_manifest(run, manifest):
    (run / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _model_file(run):
    """The model file the manifest names, if that is a file directly in the run."""
    name = _manifest(run).get("model_file")
    plain = isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
    return run / name if plain and (run / name).is_file() else run / "model.keras"


def field(rng, run, world):
    manifest = _manifest(run)
    if not manifest:
        return "field: manifest already unreadable"
    key = rng.choice(FIELDS)
    target, where = manifest, key
    if key in ("input", "data", "classes") and isinstance(manifest.get(key), (dict, list)) \
            and rng.random() < 0.6:
        inner = manifest[key]
        sub = rng.choice(["size", "path", "seed", "val_fraction"] if isinstance(inner, dict)
                         else range(len(inner) or 1))
        if isinstance(inner, list) and not inner:
            inner.append(None)
        target, key, where = inner, sub, f"{key}[{sub!r}]"
    if rng.random() < 0.2 and isinstance(target, dict):
        target.pop(key, None)
        _write_manifest(run, manifest)
        return f"field: dropped {where}"
    value = random_json(rng)
    target[key] = value
    _write_manifest(run, manifest)
    return f"field: {where} = {json.dumps(value)[:80]}"


def manifest_bytes(rng, run, world):
    path = run / "manifest.json"
    data = path.read_bytes() or b" "
    choice = rng.choice(["truncate", "flip", "random", "latin1", "deep", "digits", "scalar"])
    if choice == "truncate":
        data = data[: rng.randrange(len(data))]
    elif choice == "flip":
        data = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        data = bytes(data)
    elif choice == "random":
        data = rng.randbytes(rng.randint(0, 300))
    elif choice == "latin1":
        data = data.replace(b'"a"', b'"\xe9"', 1)
    elif choice == "deep":
        data = b"[" * rng.choice([500, 100_000])
    elif choice == "digits":
        data = b'{"schema_version": 1, "classes": ' + b"9" * 5000 + b"}"
    else:
        data = rng.choice([b"null", b"[]", b"{}", b"1", b'"x"', b""])
    path.write_bytes(data)
    return f"manifest_bytes: {choice}"


def model_bytes(rng, run, world):
    path = _model_file(run)
    if not path.is_file():
        return "model_bytes: no model file"
    data = path.read_bytes() or b" "
    _remove(path)  # never write through a symlink into another run
    choice = rng.choice(["truncate", "flip", "flip", "empty", "random", "zip", "dir", "delete"])
    if choice == "truncate":
        path.write_bytes(data[: rng.randrange(len(data))])
    elif choice == "flip":
        data = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
    elif choice == "empty":
        path.write_bytes(b"")
    elif choice == "random":
        path.write_bytes(rng.randbytes(rng.randint(1, 5000)))
    elif choice == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("config.json", json.dumps(random_json(rng)))
    elif choice == "dir":
        path.mkdir()
    return f"model_bytes: {choice} {path.name}"


def model_file(rng, run, world):
    choice = rng.choice(["parent", "absolute", "labels", "manifest", "missing", "h5", "zip_as_h5",
                         "symlink_out", "symlink_loop", "subdir"])
    manifest = _manifest(run)
    value = {"parent": "../other/model.keras", "absolute": str(world["other"] / "model.keras"),
             "labels": "labels.txt", "manifest": "manifest.json", "missing": "gone.keras",
             "h5": "model.h5", "zip_as_h5": "zip.h5", "symlink_out": "model.keras",
             "symlink_loop": "loop.keras", "subdir": "sub/model.keras"}[choice]
    if choice in ("h5", "zip_as_h5", "symlink_out", "symlink_loop"):
        _remove(run / value)
    if choice == "h5":
        shutil.copy(world["h5"], run / "model.h5")
    elif choice == "zip_as_h5":
        shutil.copy(world["other"] / "model.keras", run / "zip.h5")
    elif choice == "symlink_out":
        (run / "model.keras").symlink_to(world["other"] / "model.keras")
    elif choice == "symlink_loop":
        (run / "loop.keras").symlink_to("loop.keras")
    elif choice == "subdir":
        (run / "sub").mkdir(exist_ok=True)
        shutil.copy(world["other"] / "model.keras", run / "sub" / "model.keras")
    manifest["model_file"] = value
    _write_manifest(run, manifest)
    return f"model_file: {choice} ({value})"


def labels(rng, run, world):
    path = run / "labels.txt"
    choice = rng.choice(["delete", "swap", "extra", "latin1", "empty", "crlf", "blank_lines", "dir"])
    _remove(path)
    if choice == "dir":
        path.mkdir()
    elif choice != "delete":
        path.write_bytes({"swap": b"b\na\n", "extra": b"a\nb\nc\n", "latin1": b"a\n\xe9\n",
                          "empty": b"", "crlf": b"a\r\nb\r\n", "blank_lines": b"\na\n\nb\n"}[choice])
    return f"labels: {choice}"


def lambda_model(rng, run, world):
    _remove(run / "model.h5")
    shutil.copy(world["evil"], run / "model.h5")
    manifest = _manifest(run)
    manifest["model_file"] = rng.choice(["model.h5", "model.keras"])
    if manifest["model_file"] == "model.keras":
        _remove(run / "model.keras")
        os.replace(run / "model.h5", run / "model.keras")
    _write_manifest(run, manifest)
    return f"lambda_model: as {manifest['model_file']}"


def classes(rng, run, world):
    manifest = _manifest(run)
    manifest["classes"] = rng.choice([["a", "b", "c"], ["a"], ["b", "a"]])
    manifest["num_classes"] = len(manifest["classes"])
    _write_manifest(run, manifest)
    _remove(run / "labels.txt")
    (run / "labels.txt").write_text("".join(f"{c}\n" for c in manifest["classes"]))
    return f"classes: {manifest['classes']}"


MUTATION_LIST = (field, field, field, manifest_bytes, model_bytes, model_file, labels,
                 lambda_model, classes)


def _cases(rng: random.Random, world) -> list[tuple[object, list[str]]]:
    cases = []
    for i in range(CASES):
        run = shutil.copytree(world["run"], world["root"] / "cases" / f"{i:02d}", symlinks=True)
        first = MUTATION_LIST[i % len(MUTATION_LIST)]  # every kind, in turn
        steps = [first] + [rng.choice(MUTATION_LIST) for _ in range(rng.randint(0, 2))]
        cases.append((run, [step(rng, run, world) for step in steps]))
    return cases


def _load(run) -> str:
    try:
        run_dir.load_run(run).load_model()
    except RunDirError:
        return "refused"
    return "loaded"


def _evaluate(run, data) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgg_mobile", "evaluate", str(run), "--data", str(data)],
                          capture_output=True, text=True, timeout=300)


def test_mutated_runs_load_or_fail_with_a_run_dir_error(world):
    rng = random.Random(SEED)
    cases = _cases(rng, world)
    outcomes, failures = {}, []
    for run, steps in cases:
        try:
            outcomes[run.name] = _load(run)
        except Exception as err:  # noqa: BLE001 - the point of the test
            failures.append(f"{run.name} {steps}: {type(err).__name__}: {str(err)[:200]}")
    assert not failures, "\n".join(failures)
    assert not world["marker"].exists(), "a Lambda layer's code ran"
    assert set(outcomes.values()) == {"loaded", "refused"}, outcomes

    chosen = [(world["run"], ["none"])]
    for kind in CLI_KINDS:
        of_kind = [(run, steps) for run, steps in cases if steps[0].startswith(kind)]
        chosen.append(next((case for case in of_kind if len(case[1]) == 1), of_kind[0]))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: _evaluate(case[0], world["data"]), chosen))
    assert results[0].returncode == 0, results[0].stderr[-1500:]
    bad = [f"{run.name} {steps}: exit {r.returncode}\n{r.stderr[-1500:]}"
           for (run, steps), r in zip(chosen, results)
           if r.returncode not in (0, 2) or "Traceback" in r.stderr]
    assert not bad, "\n\n".join(bad)
    assert not world["marker"].exists(), "a Lambda layer's code ran in `vgg-mobile evaluate`"
