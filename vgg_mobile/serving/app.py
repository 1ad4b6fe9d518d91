"""The HTTP prediction service: a FastAPI app over one `ServedModel` at a time.

Endpoints: `POST /predict`, `GET /health`, `GET /model`, `GET /metrics`, and the admin pair
`POST /admin/reload` (re-read the ARTIFACT the service was started with) and
`POST /admin/rollback`. Bad input is answered with a 4xx and a one-line JSON reason
(`{"error": reason, "detail": message}`); only a failure of the service itself is a 500.

Every request reads `service.current` once and uses that model to the end, and a reload
replaces it with one assignment only after the new model loaded and passed its check, so a
reload drops no request and a request never sees half a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from vgg_mobile.core.errors import BadInputError, VggMobileError, require
from vgg_mobile.data.images import (CORRUPT, NOT_AN_IMAGE, TOO_MANY_PIXELS, ImageError,
                                    decode_rgb)
from vgg_mobile.serving.metrics import ServingMetrics
from vgg_mobile.serving.models import ModelChoice, ServedModel, load_model

log = logging.getLogger("vgg_mobile.serving")

# The environment variable that hands a `ServeConfig` to uvicorn's worker processes.
CONFIG_ENV = "VGG_MOBILE_SERVE_CONFIG"
RAW_TYPES = ("application/octet-stream",)
# Status code of each way an uploaded image can fail to decode.
_IMAGE_STATUS = {NOT_AN_IMAGE: 400, CORRUPT: 400, TOO_MANY_PIXELS: 413}


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """How the service runs.

    Attributes:
        artifact: The model file or folder; `POST /admin/reload` re-reads this path.
        choice: Which model of an export folder. Defaults to `ModelChoice()`.
        threads: Threads of each interpreter or ONNX Runtime session. Defaults to `1`.
        concurrency: Inferences that run at once (one interpreter each, and as many threads).
            Defaults to `2`.
        max_upload_bytes: Larger request bodies are refused (413) while they are read.
            Defaults to 16 MiB.
        max_images: Images one request may hold. Defaults to `32`.
        max_pixels: Images with more pixels are refused (413) before they are decoded: a
            small file can expand to gigabytes. Defaults to 40 million.
        top_k: Predictions per image when the request does not say. Defaults to `3`.
        admin_token: When set, admin endpoints need `Authorization: Bearer <token>`; when
            `None` they answer only loopback clients. Defaults to `None`.
    """

    artifact: Path
    choice: ModelChoice = ModelChoice()
    threads: int = 1
    concurrency: int = 2
    max_upload_bytes: int = 16 * 2**20
    max_images: int = 32
    max_pixels: int = 40_000_000
    top_k: int = 3
    admin_token: str | None = None

    def __post_init__(self):
        for name in ("threads", "concurrency", "max_upload_bytes", "max_images", "max_pixels",
                     "top_k"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"{name} must be an integer >= 1",
                    repr(value))
        require(self.admin_token is None or len(self.admin_token) >= 8,
                "admin_token must be at least 8 characters", f"{len(self.admin_token or '')} "
                "characters")

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "artifact": str(self.artifact)})

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        data = json.loads(text)
        return cls(**{**data, "artifact": Path(data["artifact"]),
                      "choice": ModelChoice(**data["choice"])})


class Refusal(Exception):
    """A request the service answers with a 4xx (or a 5xx it chose): status, reason, detail."""

    def __init__(self, status: int, reason: str, detail: str):
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(str(text).split())[:limit]


class ModelService:
    """The model serving now, the one before it (for rollback), and the reload that swaps them.

    Attributes:
        current: The model new requests use; replaced by one assignment.
        previous: The model `rollback` returns to, kept loaded, or `None`.
    """

    def __init__(self, config: ServeConfig, metrics: ServingMetrics,
                 model: ServedModel | None = None):
        self.config = config
        self.metrics = metrics
        self._swap = threading.Lock()
        self.current = model or self._load()
        self.previous: ServedModel | None = None
        metrics.loads.labels(result="ok").inc()
        metrics.serving(self.current)

    def _load(self) -> ServedModel:
        return load_model(self.config.artifact, self.config.choice, self.config.threads,
                          self.config.concurrency)

    def reload(self) -> dict:
        """Loads the ARTIFACT path again, checks it off to the side, then swaps it in.

        Returns:
            `{"changed", "model", "previous"}`: whether a new model serves (`False` when the
            file holds the same bytes), and short descriptions.

        Raises:
            Refusal: 409 while another reload or rollback runs; 422 when the new model is
                refused (the old one keeps serving).
        """
        if not self._swap.acquire(blocking=False):
            raise Refusal(409, "busy", "another reload or rollback is running")
        try:
            try:
                fresh = self._load()
            except VggMobileError as err:
                self.metrics.loads.labels(result="refused").inc()
                raise Refusal(422, "model_refused", f"the new model was refused and "
                              f"{_short(self.current)} keeps serving: {_one_line(err)}") from None
            except Exception:
                self.metrics.loads.labels(result="failed").inc()
                raise
            if fresh.sha256 == self.current.sha256:
                self.metrics.loads.labels(result="unchanged").inc()
                return {"changed": False, "model": _summary(self.current),
                        "previous": _summary(self.previous)}
            self.previous, self.current = self.current, fresh
            self.metrics.loads.labels(result="ok").inc()
            self.metrics.serving(fresh)
            log.info("reloaded: now serving %s (was %s)", _short(fresh), _short(self.previous))
            return {"changed": True, "model": _summary(fresh), "previous": _summary(self.previous)}
        finally:
            self._swap.release()

    def rollback(self) -> dict:
        """Serves the previous model again (a second rollback returns to the newer one).

        Raises:
            Refusal: 409 with no previous model, or while a reload runs.
        """
        if not self._swap.acquire(blocking=False):
            raise Refusal(409, "busy", "another reload or rollback is running")
        try:
            if self.previous is None:
                self.metrics.rollbacks.labels(result="refused").inc()
                raise Refusal(409, "no_previous_model", "no previous model is loaded: "
                              "rollback needs a reload first")
            self.current, self.previous = self.previous, self.current
            self.metrics.rollbacks.labels(result="ok").inc()
            self.metrics.serving(self.current)
            log.info("rolled back: now serving %s (was %s)", _short(self.current),
                     _short(self.previous))
            return {"changed": True, "model": _summary(self.current),
                    "previous": _summary(self.previous)}
        finally:
            self._swap.release()


def _summary(model: ServedModel | None) -> dict | None:
    if model is None:
        return None
    return {"version": model.version, "sha256": model.sha256, "loaded_at": model.loaded_at,
            "path": str(model.path)}


def _short(model: ServedModel | None) -> str:
    return "nothing" if model is None else f"version {model.version} (sha256 {model.sha256[:12]})"


def top_predictions(probs: np.ndarray, classes, k: int) -> list[dict]:
    """The `k` most probable classes of one probability row, ties in class order."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": classes[i], "probability": float(probs[i])} for i in order]


def _is_loopback(host: str | None) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _media_type(request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _too_large(limit: int) -> Refusal:
    return Refusal(413, "upload_too_large", f"the request body is over the limit of "
                   f"{limit:,} bytes (--max-upload-bytes)")


def _check_declared_length(request, limit: int) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)


async def _bounded(request, limit: int):
    """The request body's chunks, refused as soon as they add up to more than `limit`."""
    _check_declared_length(request, limit)
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        yield chunk


async def _raw_upload(request, limit: int) -> list[tuple[str, bytes]]:
    body = bytearray()
    async for chunk in _bounded(request, limit):
        body += chunk
    if not body:
        raise Refusal(400, "empty_body", "the request body is empty; send one image (raw bytes "
                      "with an image content type) or multipart/form-data file parts")
    return [("image", bytes(body))]


async def _multipart_uploads(request, config: ServeConfig) -> list[tuple[str, bytes]]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    parser = MultiPartParser(request.headers, _bounded(request, config.max_upload_bytes),
                             max_files=config.max_images, max_fields=config.max_images)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        if "Too many files" in str(err):
            raise Refusal(413, "too_many_images", f"more than {config.max_images} images in "
                          "one request (--max-images)") from None
        raise Refusal(400, "bad_multipart", f"not valid multipart/form-data ({err})") from None
    try:
        uploads = []
        for index, (field, value) in enumerate(form.multi_items()):
            if isinstance(value, UploadFile):
                await value.seek(0)
                uploads.append((value.filename or field or f"part {index}", await value.read()))
    finally:
        await form.close()
    if not uploads:
        raise Refusal(400, "no_images", "the multipart/form-data request holds no file part")
    for name, data in uploads:
        if not data:
            raise Refusal(400, "empty_body", f"{name}: the file part is empty")
    return uploads


def _pixels(uploads: list[tuple[str, bytes]], model: ServedModel, max_pixels: int) -> np.ndarray:
    """Decodes and resizes uploads exactly as training and evaluation read image files."""
    from vgg_mobile.data.dataset import resize_pixels

    images = []
    for name, data in uploads:
        try:
            rgb = decode_rgb(data, max_pixels, name=name)
        except ImageError as err:
            raise Refusal(_IMAGE_STATUS.get(err.reason, 400), err.reason, _one_line(err)) from None
        if rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise Refusal(400, CORRUPT, f"{name}: empty image ({rgb.shape[1]}x{rgb.shape[0]})")
        images.append(resize_pixels(rgb, model.input_size).numpy())
    return np.stack(images).astype(np.float32)


def _infer(uploads, model: ServedModel, max_pixels: int) -> np.ndarray:
    return model.predict(_pixels(uploads, model, max_pixels))


def _top_k(request, model: ServedModel, default: int) -> int:
    text = request.query_params.get("top_k")
    if text is None:
        return min(default, len(model.classes))
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise Refusal(400, "bad_top_k", f"top_k must be a whole number >= 1. Received: "
                      f"top_k={text[:50]!r}")
    return min(k, len(model.classes))


def create_app(config: ServeConfig, model: ServedModel | None = None):
    """Builds the FastAPI app, loading the model first (unless one is given).

    Args:
        config: How to serve.
        model: An already loaded model of `config.artifact`. Defaults to `None` (load it).

    Returns:
        The app; `app.state.service` is its `ModelService`, `app.state.metrics` its metrics.

    Raises:
        BadInputError: The model at `config.artifact` cannot be served.
    """
    from vgg_mobile.data.dataset import resize_pixels

    metrics = ServingMetrics()
    service = ModelService(config, metrics, model)
    # TensorFlow loads on the first resize (seconds): here, not in the first request.
    resize_pixels(np.zeros((2, 2, 3), np.uint8), service.current.input_size)
    executor = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="predict")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="vgg-mobile prediction service", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.service, app.state.metrics, app.state.config = service, metrics, config

    def refuse(exc: Refusal):
        metrics.errors.labels(reason=exc.reason).inc()
        return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(Refusal)
    async def on_refusal(request, exc: Refusal):
        return refuse(exc)

    @app.exception_handler(HTTPException)
    async def on_http_error(request, exc: HTTPException):
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return refuse(Refusal(exc.status_code, reason, _one_line(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, exc: RequestValidationError):
        return refuse(Refusal(400, "bad_request", _one_line(exc.errors())))

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - a bug or a broken environment: 500, counted
            log.exception("internal error answering %s %s", request.method, request.url.path)
            metrics.errors.labels(reason="internal").inc()
            response = JSONResponse({"error": "internal", "detail": "internal error; the "
                                     "server log has the traceback"}, status_code=500)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        return response

    def authorize(request: Request) -> None:
        if config.admin_token:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {config.admin_token}".encode()):
                raise Refusal(401, "unauthorized", "admin endpoints need the header "
                              "'Authorization: Bearer <token>' with the --admin-token")
            return
        host = request.client.host if request.client else None
        proxied = "x-forwarded-for" in request.headers or "forwarded" in request.headers
        if not _is_loopback(host) or proxied:
            raise Refusal(403, "forbidden", "without --admin-token, admin endpoints answer only "
                          "clients on this machine, not through a proxy")

    @app.post("/predict")
    async def predict(request: Request):
        model = service.current  # this request's model, whatever a reload does meanwhile
        top_k = _top_k(request, model, config.top_k)
        media = _media_type(request)
        if media == "multipart/form-data":
            uploads = await _multipart_uploads(request, config)
            several = True
        elif media.startswith("image/") or media in RAW_TYPES:
            uploads = await _raw_upload(request, config.max_upload_bytes)
            several = False
        else:
            raise Refusal(415, "unsupported_media_type", f"content type {media or 'none'!r} is "
                          "not an image: send image/* or application/octet-stream bytes, or "
                          "multipart/form-data file parts")
        if len(uploads) > config.max_images:
            raise Refusal(413, "too_many_images", f"{len(uploads)} images in one request; the "
                          f"limit is {config.max_images} (--max-images)")
        loop = asyncio.get_running_loop()
        probs = await loop.run_in_executor(executor, _infer, uploads, model, config.max_pixels)
        results = []
        for (name, _), row in zip(uploads, probs):
            predictions = top_predictions(row, model.classes, top_k)
            metrics.predictions.labels(label=predictions[0]["label"]).inc()
            results.append({"filename": name, "predictions": predictions} if several
                           else {"predictions": predictions})
        metrics.images.inc(len(results))
        about = {"model_version": model.version, "model_sha256": model.sha256,
                 "format": model.format}
        return {"images": results, **about} if several else {**results[0], **about}

    @app.get("/health")
    async def health():
        model = service.current
        return {"status": "ok", "model_version": model.version, "model_sha256": model.sha256,
                "format": model.format}

    @app.get("/model")
    async def model_info():
        model, previous = service.current, service.previous
        return {**model.describe(), "previous": _summary(previous),
                "rollback_available": previous is not None}

    @app.get("/metrics")
    async def metrics_text():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/admin/reload")
    async def reload(request: Request):
        authorize(request)
        return await asyncio.get_running_loop().run_in_executor(None, service.reload)

    @app.post("/admin/rollback")
    async def rollback(request: Request):
        authorize(request)
        return service.rollback()

    return app


def app_from_environment():
    """The app of one uvicorn worker process, from the `ServeConfig` in `CONFIG_ENV`."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise BadInputError(f"{CONFIG_ENV} is not set: start workers with `vgg-mobile "
                            "serve-model --workers N`")
    return create_app(ServeConfig.from_json(text))
