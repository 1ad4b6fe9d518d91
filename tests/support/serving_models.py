"""Tiny real models for the prediction service's tests: a conv classifier of three colours,
trained in seconds, exported as int8 and float32 TFLite (with metadata) and float32 and int8
ONNX, and an export folder holding them as `vgg-mobile convert` writes one; and a real uvicorn
server on a loopback port to serve them (`serving`, `call`)."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import vgg_mobile  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

CLASSES = ("red", "green", "blue")
SIZE = 32
# The factor on the last layer's weights that keeps probabilities between about 0.4 and 0.8.
SOFTEN = 0.15
_COLOURS = np.array([[200, 40, 40], [40, 190, 60], [50, 60, 210]], np.float32)


def colour_images(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """`n` noisy images of the three colours, of side `size`, as uint8 pixels and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    base = _COLOURS[labels][:, None, None, :] + rng.normal(0, 25, (n, 1, 1, 3))
    pixels = base + rng.normal(0, 30, (n, size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), labels


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class TinyModels:
    keras: object
    files: dict  # name -> path: int8, float32, v2_int8, onnx_float32, onnx_int8
    export_dir: Path
    requests: list  # PNG bytes of test images of several sizes


def _train(seed: int):
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    x_train, y_train = colour_images(90, seed=seed)
    model.fit(x_train.astype(np.float32), y_train, epochs=4, batch_size=15, verbose=0)
    # Trained to confidence, then softened: with outputs near 1.0 an int8 model answers the
    # same for slightly different pixels, and a comparison could not tell two resizes apart.
    dense = model.get_layer("probs")
    dense.set_weights([w * SOFTEN for w in dense.get_weights()])
    return model


def _tflite(model, flavour: str, version: str) -> bytes:
    from vgg_mobile.converters import metadata, tflite

    calibration = colour_images(30, seed=7)[0].astype(np.float32)
    data = tflite.convert_keras_model(model, flavour, calibration if flavour == "int8" else None,
                                      io_dtype="uint8" if flavour == "int8" else "float32")
    return metadata.add_metadata(data, list(CLASSES), metadata.ModelInfo(
        name="colours", description="three colours", version=version))


def _onnx(model, flavour: str, version: str) -> bytes:
    from vgg_mobile.converters import onnx

    data = onnx.convert_keras_model(model)
    if flavour == "int8":
        data = onnx.quantize_int8(data, colour_images(30, seed=7)[0].astype(np.float32))
    return onnx.add_metadata(data, {"labels": list(CLASSES), "version": version,
                                    "name": "colours", "input": {"size": [SIZE, SIZE]}})


def replace_file(path: Path, data: bytes) -> None:
    """Writes a new version the way `vgg-mobile convert --force` does: beside, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_export(folder: Path, files: dict[str, bytes],
                 held_out: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """An export folder as `vgg-mobile convert` writes it: the files, labels.txt, manifest.

    With `held_out` (uint8 pixels of side `SIZE` and their labels), the manifest also holds
    what convert records of held-out images: the drift reference, and each artifact's
    accuracy and answers on them, measured by running the artifact."""
    from vgg_mobile import runtimes
    from vgg_mobile.core.io import write_json, write_text
    from vgg_mobile.core.run_dir import Manifest
    from vgg_mobile.data import drift

    folder.mkdir(parents=True, exist_ok=True)
    artifacts, sections = [], {}
    if held_out is not None:
        pixels = held_out[0].astype(np.float32)
        sections["drift_reference"] = drift.input_reference(
            pixels, [pixels.shape[1:3]] * len(pixels), "val")
    for name, data in files.items():
        (folder / name).write_bytes(data)
        fmt, flavour = Path(name).suffix[1:], Path(name).stem.rsplit("_", 1)[1]
        artifacts.append({"file": name, "format": fmt, "flavour": flavour,
                          "size_bytes": len(data)})
        if held_out is not None:
            probs = runtimes.load(data, fmt).predict(pixels)
            accuracy = float((probs.argmax(axis=1) == held_out[1]).mean())
            artifacts[-1].update(verification={"images": len(pixels), "accuracy": accuracy},
                                 drift_reference=drift.output_reference(probs, CLASSES))
    manifest = Manifest(stage="export", classes=CLASSES, model_file=None,
                        input={"size": [SIZE, SIZE], "channels": 3, "range": [0, 255]},
                        sections={"options": {"version": "1"}, "artifacts": artifacts,
                                  **sections})
    write_text(folder / "labels.txt", "".join(f"{c}\n" for c in CLASSES))
    write_json(folder / "manifest.json", manifest.to_json())
    return folder


def build(root: Path) -> TinyModels:
    """Trains two versions of the classifier and writes every export under `root`."""
    first, second = _train(0), _train(1)
    contents = {
        "int8": _tflite(first, "int8", "1"), "float32": _tflite(first, "float32", "1"),
        "v2_int8": _tflite(second, "int8", "2"),
        "onnx_float32": _onnx(first, "float32", "1"), "onnx_int8": _onnx(first, "int8", "1"),
    }
    files = {}
    for name, data in contents.items():
        files[name] = root / f"colours_{name}.{'onnx' if name.startswith('onnx') else 'tflite'}"
        files[name].write_bytes(data)
    export_dir = write_export(root / "export", {
        "colours_int8.tflite": contents["int8"], "colours_float32.tflite": contents["float32"],
        "colours_float32.onnx": contents["onnx_float32"], "colours_int8.onnx": contents["onnx_int8"]})
    # Several sizes, so the resize runs, cycling through the three colours.
    sizes = (32, 48, 20, 64, 33, 32)
    requests = [png_bytes(colour_images(3, seed=100 + i, size=s)[0][i % 3])
                for i, s in enumerate(sizes)]
    return TinyModels(first, files, export_dir, requests)


def free_port() -> int:
    """A loopback port nothing listens on now (`--workers` needs a port number, not 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """Runs `app` in uvicorn on a free loopback port, as `serve-model` runs it (its connection
    deadlines, its accept-error handler); yields `(host, port)`. The uvicorn server is
    `app.state.uvicorn_server` meanwhile."""
    from vgg_mobile.serving.server import Server, uvicorn_config

    config = app.state.config
    sock = socket.create_server(("127.0.0.1", 0), backlog=2048)
    server = Server(uvicorn_config(app, config.header_timeout, config.body_timeout,
                                   log_level="warning", access_log=False))
    app.state.uvicorn_server = server
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def call(address, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None, connection=None):
    """One request; returns `(status, JSON body)` (`None` for an empty body)."""
    own = connection is None
    connection = connection or http.client.HTTPConnection(*address, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        if own:
            connection.close()


@dataclasses.dataclass
class Load:
    """What `clients_under_load` saw: each client's answers, every answer in arrival order,
    and any request that failed outright. An answer is `(status, JSON body, X-Model-Version)`."""

    by_client: dict[int, list[tuple[int, dict, str | None]]]
    in_order: list[tuple[int, dict, str | None]]
    failures: list[str]


@contextlib.contextmanager
def clients_under_load(address, images: list[bytes], clients: int = 4):
    """Client threads that each POST an image to `/predict` on one keep-alive connection, in a
    loop, until the block ends; a request that fails is counted and the connection renewed."""
    load = Load({i: [] for i in range(clients)}, [], [])
    stop = threading.Event()

    def client(index: int):
        connection = http.client.HTTPConnection(*address, timeout=30)
        image = images[index % len(images)]
        while not stop.is_set():
            try:
                connection.request("POST", "/predict", body=image,
                                   headers={"content-type": "image/png"})
                response = connection.getresponse()
                answer = (response.status, json.loads(response.read() or b"null") or {},
                          response.getheader("x-model-version"))
                load.by_client[index].append(answer)
                load.in_order.append(answer)
            except Exception as err:  # noqa: BLE001 - any failure is what the tests count
                load.failures.append(repr(err))
                connection.close()
                connection = http.client.HTTPConnection(*address, timeout=30)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield load
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def onnx_failing_when_run() -> bytes:
    """An `.onnx` classifier of `CLASSES` that loads, and fails when run on a bright image:
    it looks up its brightest pixel's value in a table of three entries (ONNX Runtime raises
    "indices element out of data bounds" at run time, not at load time)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vgg_mobile.converters import onnx as onnx_converter

    pixels = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(CLASSES)])
    nodes = [helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
             helper.make_node("ReduceMax", ["pixels"], ["peak"], keepdims=0),
             helper.make_node("Cast", ["peak"], ["index"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "index"], ["offset"]),
             helper.make_node("Add", ["mean", "offset"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    constants = [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
                 numpy_helper.from_array(np.zeros(len(CLASSES), np.float32), "table")]
    model = helper.make_model(helper.make_graph(nodes, "fails_when_run", [pixels], [probs],
                                                constants),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return onnx_converter.add_metadata(model.SerializeToString(), {
        "labels": list(CLASSES), "version": "3", "name": "broken",
        "input": {"size": [SIZE, SIZE]}})


def png16_rgba(side: int, height: int | None = None) -> bytes:
    """A 16-bit RGBA PNG of one colour, written by hand (Pillow cannot write 16-bit RGBA): a
    few hundred kilobytes at 6300 x 6300 that decode to 160 MB and more."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    height = height or side
    row = b"\x00" + b"\x12\x34\x56\x78\x9a\xbc\xff\xff" * side
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, height, 16, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def png_1_bit(side: int) -> bytes:
    """A one-bit PNG: 6000 x 6000 pixels in about 4 KB."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(parts: list[tuple[str, bytes]], boundary: str = "vggmobileboundary",
              closed: bool = True) -> tuple[bytes, dict]:
    """A multipart/form-data body of file parts `files`, and its headers; `closed=False`
    leaves out the closing boundary, as an upload cut short does."""
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                    f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n".encode()
                    + data + b"\r\n" for name, data in parts)
    if closed:
        body += f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def two_versions(root: Path, tiny, held_out: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """A model repository at `root`: versions 1 and 2 of the colour classifier (two
    trainings), int8 `.tflite` each (with a drift reference of `held_out`, when given)."""
    for version, name in (("1", "int8"), ("2", "v2_int8")):
        write_export(root / version, {"colours_int8.tflite": tiny.files[name].read_bytes()},
                     held_out)
    return root


def metric(client, name: str, **labels) -> float:
    """The value of a sample of the client's `/metrics` (0 when it is not there)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0

