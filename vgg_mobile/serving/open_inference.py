"""The Open Inference Protocol (KServe v2) beside `/predict`, so that KServe, Triton and Seldon
clients work against `vgg-mobile serve-model` as they are.

Routes: `GET /v2` (the server), `GET /v2/health/live`, `GET /v2/health/ready`, and for the
model serving, `GET /v2/models/{name}` (its inputs and outputs), `GET /v2/models/{name}/ready`
and `POST /v2/models/{name}/infer`, each also as `/v2/models/{name}/versions/{version}/...`.
`{name}` is the served model's name and `{version}` the version serving (a model repository's
folder number); any other is a 404.

An inference request holds one input tensor, whatever its name: `BYTES` of shape `[n]` (or
`[n, 1]`), encoded image files (base64 in JSON, as KServe's image classifiers take them), or
`UINT8` / `FP32` pixels `[n, h, w, 3]` in [0, 255]. Both go through the `Classifier` that
`/predict` uses, under the same limits; the pixel tensor's shape is checked against them before
an array is built. The outputs are `probabilities` (`FP32 [n, classes]`) and `label` (`BYTES
[n]`, the most probable class). Triton's binary tensor data extension is understood both ways
(tritonclient sends it by default). A refusal answers the protocol's `{"error": message}`, with
the status `/predict` gives the same fault; every answer carries `X-Model-Version`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import math
import struct

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from vgg_mobile.core.errors import clip
from vgg_mobile.core.version import __version__
from vgg_mobile.serving.app import (Classifier, ModelService, Refusal, ServeConfig, _bounded,
                                    _one_line)
from vgg_mobile.serving.metrics import ServingMetrics
from vgg_mobile.serving.models import ServedModel

SERVER_NAME = "vgg-mobile"
BINARY_EXTENSION = "binary_tensor_data"
# The length of the JSON part of a body whose tensors follow it as bytes (the extension's).
HEADER_LENGTH = "Inference-Header-Content-Length"
# Platform names are "<project>_<format>"; the protocol lists ONNX Runtime's, not LiteRT's.
PLATFORMS = {"tflite": "litert_tflite", "onnx": "onnx_onnxv1"}
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES")
# Pixel tensors taken, and their layout as binary data (little-endian, as the extension says).
PIXEL_TYPES = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}
# The input that model metadata names: the pixels the model takes. A request's one input is
# read whatever its name (KServe's examples call it `input-0`, Triton's clients anything).
INPUT = "pixels"
PROBABILITIES, LABEL = "probabilities", "label"
OUTPUTS = (PROBABILITIES, LABEL)


@dataclasses.dataclass(frozen=True)
class InferRequest:
    """An inference request, checked.

    Attributes:
        id: The request's `id`, echoed in the answer, or `None`.
        images: Encoded image files `(name, bytes)` of a `BYTES` input, else `None`.
        pixels: `(n, h, w, 3)` pixels of a `UINT8` (uint8) or `FP32` (float32) input, else
            `None`.
        outputs: The outputs to answer, in order, each with whether it goes as binary data.
    """

    id: str | None
    images: list[tuple[str, bytes]] | None
    pixels: np.ndarray | None
    outputs: tuple[tuple[str, bool], ...]


def _bad(message: str, reason: str = "bad_infer_request") -> Refusal:
    return Refusal(400, reason, message)


def _kind(value) -> str:
    """What a JSON value is, for a message: `a list`, `the string 'abc'`, `the number 3`."""
    if isinstance(value, str):
        return f"the string {clip(repr(value), 60)}"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"the number {clip(value, 60)}"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _parameters(holder: dict, field: str) -> dict:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _bad(f"{field}.parameters must be an object. Received: {_kind(parameters)}")
    return parameters


def _flag(parameters: dict, key: str, field: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise _bad(f"{field}.parameters.{key} must be true or false. Received: {_kind(value)}")
    return value


def _size(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(f"{field} must be a whole number >= 0. Received: {_kind(value)}")
    return value


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part of the body and the binary tensor data after it."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise _bad(f"the {HEADER_LENGTH} header must be the length of the JSON part of the "
                   f"body, a whole number up to its {len(body):,} bytes. Received: "
                   f"{clip(repr(header_length), 40)}")
    return body[:int(text)], body[int(text):]


def _json_object(text: bytes) -> dict:
    if not text.strip():
        raise _bad("the body is empty; send an inference request: a JSON object with "
                   "\"inputs\"", reason="empty_body")
    try:
        request = json.loads(text)
    except (ValueError, RecursionError) as err:  # a JSONDecodeError or bad UTF-8 is a ValueError
        detail = "nested too deeply" if isinstance(err, RecursionError) else _one_line(err, 200)
        raise _bad(f"the body is not JSON ({detail}); send an inference request: a JSON "
                   "object with \"inputs\"", reason="bad_json") from None
    if not isinstance(request, dict):
        raise _bad(f"the body must be a JSON object with \"inputs\". Received: {_kind(request)}",
                   reason="bad_json")
    return request


def _requested_outputs(request: dict, binary_default: bool) -> tuple[tuple[str, bool], ...]:
    """The outputs asked for (all when none is named), each with whether it goes as binary."""
    asked = request.get("outputs")
    if asked is None:
        return tuple((name, binary_default) for name in OUTPUTS)
    if not isinstance(asked, list):
        raise _bad(f"outputs must be a list of {{\"name\": ...}} objects. Received: "
                   f"{_kind(asked)}")
    chosen: dict[str, bool] = {}
    for index, output in enumerate(asked):
        field = f"outputs[{index}]"
        if not isinstance(output, dict):
            raise _bad(f"{field} must be an object with a name. Received: {_kind(output)}")
        name = output.get("name")
        if name not in OUTPUTS:
            raise _bad(f"{field}.name must be one of {', '.join(OUTPUTS)}. Received: "
                       f"{_kind(name)}")
        binary = _flag(_parameters(output, field), "binary_data", field)
        chosen[name] = binary_default if binary is None else binary
    return tuple(chosen.items())


def _shape(tensor: dict, field: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(f"{field}.shape must be a list of whole numbers >= 0. Received: "
                   f"{clip(json.dumps(shape), 80) if shape is not None else 'nothing'}")
    return shape


def _check_count(count: int, field: str, config: ServeConfig) -> None:
    if count > config.max_images:
        raise Refusal(413, "too_many_images", f"{field}.shape: {count} images in one request; "
                      f"the limit is {config.max_images} (--max-images)")


def _image_shape(shape: list[int], field: str, config: ServeConfig) -> int:
    """The number of images of a `BYTES` input of shape `[n]` or `[n, 1]`."""
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1:
        raise _bad(f"{field}.shape of a BYTES input must be [n] or [n, 1]: n encoded image "
                   f"files, n >= 1. Received: {shape}")
    _check_count(shape[0], field, config)
    return shape[0]


def _base64_image(item, field: str) -> bytes:
    """One element of a `BYTES` input in JSON: base64 text, or `{"b64": text}` as TensorFlow
    Serving clients send it."""
    text = item.get("b64") if isinstance(item, dict) else item
    if not isinstance(text, str):
        raise _bad(f"{field} must be a base64 string (or {{\"b64\": string}}) of an image "
                   f"file. Received: {_kind(item)}")
    try:
        # Line breaks are what `base64.encodebytes` and `base64 file` write.
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise _bad(f"{field} is not base64 ({err}). Received: {_kind(text)}") from None
    if not data:
        raise _bad(f"{field} is empty: no image file", reason="empty_body")
    return data


def _json_images(data, count: int, field: str) -> list[tuple[str, bytes]]:
    if not isinstance(data, list):
        raise _bad(f"{field} must be a list of base64 strings. Received: {_kind(data)}")
    # Shape [n, 1] may come nested, one list of one image file a row.
    items = [item[0] if isinstance(item, list) and len(item) == 1 else item for item in data]
    if len(items) != count:
        raise _bad(f"{field} holds {len(items)} elements; the shape says {count}")
    return [(f"{field}[{index}]", _base64_image(item, f"{field}[{index}]"))
            for index, item in enumerate(items)]


def _binary_images(data: bytes, count: int, field: str) -> list[tuple[str, bytes]]:
    """The extension's `BYTES`: each element a 4-byte little-endian length, then its bytes."""
    images, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise _bad(f"{field}: the binary data ends inside the length of element "
                       f"{len(images)}")
        (length,) = struct.unpack_from("<I", data, offset)
        start, offset = offset + 4, offset + 4 + length
        if offset > len(data):
            raise _bad(f"{field}: element {len(images)} declares {length:,} bytes, and only "
                       f"{len(data) - start:,} follow")
        images.append((f"{field}[{len(images)}]", data[start:offset]))
    if len(images) != count:
        raise _bad(f"{field}: the binary data holds {len(images)} elements; the shape says "
                   f"{count}")
    for name, image in images:
        if not image:
            raise _bad(f"{name} is empty: no image file", reason="empty_body")
    return images


def _pixel_shape(shape: list[int], field: str, config: ServeConfig) -> tuple[int, ...]:
    """`[n, h, w, 3]` checked against the service's limits before any array is built."""
    if len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
        raise _bad(f"{field}.shape of a pixel input must be [n, height, width, 3], each >= 1. "
                   f"Received: {shape}")
    n, height, width, _ = shape
    _check_count(n, field, config)
    if height * width > config.max_pixels:
        raise Refusal(413, "too_many_pixels", f"{field}.shape {shape}: images of {height}x"
                      f"{width} = {height * width:,} pixels, over the limit of "
                      f"{config.max_pixels:,} (--max-pixels)")
    if n * height * width > config.max_request_pixels:
        raise Refusal(413, "too_many_pixels_in_request", f"{field}.shape {shape}: "
                      f"{n * height * width:,} pixels together, over the limit of "
                      f"{config.max_request_pixels:,} per request (--max-request-pixels)")
    return tuple(shape)


def _json_pixels(data, shape: tuple[int, ...], field: str) -> np.ndarray:
    """Tensor data in JSON, flat in row-major order or nested as the shape: float64 values."""
    expected = math.prod(shape)
    if not isinstance(data, list):
        raise _bad(f"{field} must be a list of numbers. Received: {_kind(data)}")
    nested = bool(data) and isinstance(data[0], list)
    if not nested and len(data) != expected:
        raise _bad(f"{field} holds {len(data):,} values; shape {list(shape)} needs "
                   f"{expected:,}")
    if nested and len(data) != shape[0]:
        raise _bad(f"{field} holds {len(data):,} nested rows; shape {list(shape)} needs "
                   f"{shape[0]} (or {expected:,} values in one flat list)")
    try:
        values = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise _bad(f"{field} is not an array of numbers of shape {list(shape)} "
                   f"({_one_line(err, 200)})") from None
    if values.shape not in ((expected,), shape):
        raise _bad(f"{field} has shape {list(values.shape)}; the shape says {list(shape)}")
    return values.reshape(shape)


def _check_pixels(values: np.ndarray, datatype: str, field: str) -> None:
    """Finite, within [0, 255], and whole numbers for `UINT8`."""
    flat = values.reshape(-1)
    checks = (("not a finite number", ~np.isfinite(flat)),
              ("outside [0, 255]", (flat < 0) | (flat > 255)))
    if datatype == "UINT8":
        checks += (("not a whole number (UINT8)", flat != np.round(flat)),)
    for problem, wrong in checks:
        if wrong.any():
            index = int(np.argmax(wrong))
            raise _bad(f"{field}: element {index:,} (row-major) is {problem}: pixels are 0 to "
                       f"255. Received: {float(flat[index]):g}")


def _pixels(tensor: dict, datatype: str, shape: tuple[int, ...], binary: bytes | None,
            field: str) -> np.ndarray:
    dtype = PIXEL_TYPES[datatype]
    if binary is not None:
        expected = math.prod(shape) * dtype.itemsize
        if len(binary) != expected:
            raise _bad(f"{field}.parameters.binary_data_size is {len(binary):,} bytes; "
                       f"{datatype} of shape {list(shape)} takes {expected:,}")
        values = np.frombuffer(binary, dtype).reshape(shape)
    else:
        values = _json_pixels(tensor.get("data"), shape, f"{field}.data")
    _check_pixels(values, datatype, f"{field}.data")
    return values.astype(np.uint8 if datatype == "UINT8" else np.float32)


def parse_infer_request(body: bytes, header_length: str | None,
                        config: ServeConfig) -> InferRequest:
    """Reads and checks an inference request: its JSON, its one input and the outputs asked.

    Args:
        body: The request body: a JSON object, followed by binary tensor data when
            `header_length` is given.
        header_length: The `Inference-Header-Content-Length` header, or `None`.
        config: The limits (`max_images`, `max_pixels`, `max_request_pixels`).

    Returns:
        The `InferRequest`.

    Raises:
        Refusal: 400 naming the field and the value at fault; 413 over a limit.
    """
    text, binary = _split(body, header_length)
    request = _json_object(text)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad(f"id must be a string. Received: {_kind(request_id)}")
    binary_output = bool(_flag(_parameters(request, "request"), "binary_data_output",
                               "request"))
    outputs = _requested_outputs(request, binary_output)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        received = f"{len(inputs)} inputs" if isinstance(inputs, list) else _kind(inputs)
        raise _bad("inputs must be a list of one input tensor: BYTES image files or UINT8 / "
                   f"FP32 pixels. Received: {received if 'inputs' in request else 'nothing'}")
    tensor, field = inputs[0], "inputs[0]"
    if not isinstance(tensor, dict):
        raise _bad(f"{field} must be an object (name, shape, datatype, data). Received: "
                   f"{_kind(tensor)}")
    if not isinstance(tensor.get("name"), str):
        raise _bad(f"{field}.name must be a string. Received: {_kind(tensor.get('name'))}")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise _bad(f"{field}.datatype must be one of the protocol's ({', '.join(DATATYPES)}; "
                   f"case matters). Received: {_kind(datatype)}")
    if datatype != "BYTES" and datatype not in PIXEL_TYPES:
        raise _bad(f"{field}.datatype {datatype} is not taken: send BYTES (encoded image "
                   f"files) or {' or '.join(PIXEL_TYPES)} pixels [n, height, width, 3]")
    shape = _shape(tensor, field)
    size = _parameters(tensor, field).get("binary_data_size")
    if size is not None:
        size = _size(size, f"{field}.parameters.binary_data_size")
        if "data" in tensor:
            raise _bad(f"{field} has both data and parameters.binary_data_size: send one")
        if size != len(binary):
            raise _bad(f"{field}.parameters.binary_data_size is {size:,}, and {len(binary):,} "
                       f"bytes follow the JSON ({HEADER_LENGTH})")
    elif binary:
        raise _bad(f"{len(binary):,} bytes follow the JSON ({HEADER_LENGTH}) and no input "
                   "claims them with parameters.binary_data_size")
    elif "data" not in tensor:
        raise _bad(f"{field}.data is missing")
    tensor_bytes = binary if size is not None else None
    if datatype == "BYTES":
        count = _image_shape(shape, field, config)
        images = (_binary_images(tensor_bytes, count, f"{field}.data") if size is not None
                  else _json_images(tensor.get("data"), count, f"{field}.data"))
        return InferRequest(request_id, images, None, outputs)
    pixels = _pixels(tensor, datatype, _pixel_shape(shape, field, config), tensor_bytes, field)
    return InferRequest(request_id, None, pixels, outputs)


def _output_tensors(probs: np.ndarray, model: ServedModel,
                    outputs: tuple[tuple[str, bool], ...]) -> tuple[list[dict], bytes]:
    """The response's output tensors, and the binary data of those asked as binary."""
    labels = [model.classes[int(i)] for i in probs.argmax(axis=1)]
    tensors, binary = [], bytearray()
    for name, as_binary in outputs:
        if name == PROBABILITIES:
            tensor = {"name": name, "datatype": "FP32", "shape": list(probs.shape)}
            values = probs.astype("<f4")
            data = values.tobytes() if as_binary else values.reshape(-1).tolist()
        else:
            tensor = {"name": name, "datatype": "BYTES", "shape": [len(labels)]}
            data = (b"".join(struct.pack("<I", len(label.encode())) + label.encode()
                             for label in labels) if as_binary else labels)
        if as_binary:
            tensor["parameters"] = {"binary_data_size": len(data)}
            binary += data
        else:
            tensor["data"] = data
        tensors.append(tensor)
    return tensors, bytes(binary)


class InferenceError(BaseModel):
    """A refused request, in the protocol's shape: one line naming the field and the value."""

    error: str


def _errors(description: str) -> dict:
    return {"model": InferenceError, "description": description}


INFER_OPENAPI = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype"], "properties": {
                "name": {"type": "string"}, "shape": {"type": "array", "items": {
                    "type": "integer"}},
                "datatype": {"type": "string", "enum": ["BYTES", *PIXEL_TYPES]},
                "parameters": {"type": "object"}, "data": {"type": "array"}}}},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string", "enum": list(OUTPUTS)},
            "parameters": {"type": "object"}}}}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
INFER_DESCRIPTION = (
    "The Open Inference Protocol (KServe v2). One input tensor, whatever its name: `BYTES` "
    "of shape `[n]`, base64 image files (or `{\"b64\": ...}`), or `UINT8` / `FP32` pixels "
    "`[n, height, width, 3]` in [0, 255], flat in row-major order or nested. Outputs: "
    "`probabilities` (`FP32 [n, classes]`) and `label` (`BYTES [n]`). The binary tensor data "
    f"extension is taken, with the `{HEADER_LENGTH}` header.")
INFER_RESPONSES = {
    200: {"description": "`model_name`, `model_version`, `id` (the request's) and "
                         "`outputs`.",
          "headers": {"X-Model-Version": {"description": "The `model_version` that answered.",
                                          "schema": {"type": "string"}}}},
    400: _errors("A request that is not an inference request this model takes, naming the "
                 "field and the value; an image that does not decode."),
    404: _errors("Not the model serving, or not the version serving."),
    413: _errors("Over `--max-upload-bytes`, `--max-images`, `--max-pixels`, "
                 "`--max-request-pixels` or `--max-decode-memory`."),
    503: _errors("Other requests' images fill `--max-decode-memory`; see `Retry-After`."),
}


def add_open_inference_routes(app, service: ModelService, config: ServeConfig,
                              metrics: ServingMetrics, classifier: Classifier) -> None:
    """Adds the Open Inference Protocol's REST routes to the service's app.

    Every request reads `service.current` once, as `/predict` does: a reload never changes the
    model under a request.

    Args:
        app: The FastAPI app of `create_app`.
        service: The models served.
        config: The limits of a request.
        metrics: Counted in: refusals by reason, images and their top classes.
        classifier: Turns image files or pixels into probabilities under the limits.
    """

    def answer(body: dict, model: ServedModel, status: int = 200, headers=None) -> JSONResponse:
        return JSONResponse(body, status_code=status,
                            headers={**(headers or {}), "X-Model-Version": model.version})

    def refused(refusal: Refusal, model: ServedModel) -> JSONResponse:
        metrics.errors.labels(reason=refusal.reason).inc()
        return answer({"error": refusal.detail}, model, refusal.status, refusal.headers)

    def check_model(model: ServedModel, name: str, version: str | None) -> None:
        if name != model.name:
            raise Refusal(404, "model_not_found", f"model {clip(repr(name), 80)} is not served "
                          f"here; the model serving is {model.name!r}")
        if version is not None and version != model.version:
            raise Refusal(404, "version_not_found", f"version {clip(repr(version), 40)} of "
                          f"model {model.name!r} is not serving; version {model.version!r} is "
                          f"(leave /versions/... out to use it)")

    def metadata(model: ServedModel) -> dict:
        height, width = model.input_size
        return {"name": model.name, "versions": [model.version],
                "platform": PLATFORMS.get(model.format, model.format),
                "inputs": [{"name": INPUT, "datatype": "UINT8",
                            "shape": [-1, height, width, 3]}],
                "outputs": [{"name": PROBABILITIES, "datatype": "FP32",
                             "shape": [-1, len(model.classes)]},
                            {"name": LABEL, "datatype": "BYTES", "shape": [-1]}]}

    async def model_metadata(name: str, version: str | None) -> JSONResponse:
        model = service.current
        try:
            check_model(model, name, version)
        except Refusal as refusal:
            return refused(refusal, model)
        return answer(metadata(model), model)

    async def model_ready(name: str, version: str | None) -> JSONResponse:
        model = service.current
        try:
            check_model(model, name, version)
        except Refusal as refusal:
            return refused(refusal, model)
        # A model serves only once loaded and checked: the one serving is ready.
        return answer({"name": model.name, "ready": True}, model)

    async def infer(request: Request, name: str, version: str | None) -> Response:
        model = service.current  # this request's model, whatever a reload does meanwhile
        try:
            check_model(model, name, version)
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding != "identity":
                raise Refusal(415, "unsupported_content_encoding", f"Content-Encoding "
                              f"{clip(repr(encoding), 40)} is not read: send the body "
                              "uncompressed")
            body = bytearray()
            async for chunk in _bounded(request, config.max_upload_bytes):
                body += chunk
            loop = asyncio.get_running_loop()
            # Parsing megabytes of JSON takes a while: not on the event loop.
            parsed = await loop.run_in_executor(None, parse_infer_request, bytes(body),
                                                request.headers.get(HEADER_LENGTH), config)
            probs = (await classifier.images(parsed.images, model) if parsed.images is not None
                     else await classifier.pixels(parsed.pixels, model))
        except Refusal as refusal:
            return refused(refusal, model)
        for index in probs.argmax(axis=1):
            metrics.predictions.labels(label=model.classes[int(index)]).inc()
        metrics.images.inc(len(probs))
        tensors, binary = _output_tensors(probs, model, parsed.outputs)
        result = {"model_name": model.name, "model_version": model.version,
                  **({"id": parsed.id} if parsed.id is not None else {}), "outputs": tensors}
        if not binary:
            return answer(result, model)
        text = json.dumps(result, separators=(",", ":")).encode()
        return Response(text + binary, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(text)), "X-Model-Version": model.version})

    @app.get("/v2", summary="Open Inference Protocol: the server's name, version and "
             "extensions")
    async def server_metadata():
        return answer({"name": SERVER_NAME, "version": __version__,
                       "extensions": [BINARY_EXTENSION]}, service.current)

    @app.get("/v2/health/live", summary="Open Inference Protocol: whether the server answers")
    async def server_live():
        return answer({"live": True}, service.current)

    @app.get("/v2/health/ready", summary="Open Inference Protocol: whether the server is ready "
             "to infer")
    async def server_ready():
        # The app exists only once a model is loaded and checked, and a reload keeps one serving.
        return answer({"ready": True}, service.current)

    # The model's GETs stay out of the spec: `GET /` lists each GET of the spec as an address to
    # open as it is written, and `{name}` names no model.
    @app.get("/v2/models/{name}", include_in_schema=False)
    async def model_metadata_route(name: str):
        return await model_metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}", include_in_schema=False)
    async def model_version_metadata_route(name: str, version: str):
        return await model_metadata(name, version)

    @app.get("/v2/models/{name}/ready", include_in_schema=False)
    async def model_ready_route(name: str):
        return await model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
    async def model_version_ready_route(name: str, version: str):
        return await model_ready(name, version)

    # `infer` reads its body itself (to bound it while it arrives and name each fault), so
    # FastAPI cannot see it: it is described for the spec by hand.
    documented = dict(response_model=None, description=INFER_DESCRIPTION,
                      responses=INFER_RESPONSES, openapi_extra=INFER_OPENAPI)

    @app.post("/v2/models/{name}/infer", summary="Open Inference Protocol: classify images or "
              "pixels with the model serving", **documented)
    async def infer_route(request: Request, name: str):
        return await infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", summary="Open Inference Protocol: "
              "classify with the version serving, named", **documented)
    async def infer_version_route(request: Request, name: str, version: str):
        return await infer(request, name, version)
