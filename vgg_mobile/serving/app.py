"""The HTTP prediction service: a FastAPI app over one `ServedModel` at a time.

Endpoints: `POST /predict`, `GET /health`, `GET /model`, `GET /metrics`, the admin pair
`POST /admin/reload` (re-read the ARTIFACT the service was started with, or look for a new
version in a model repository) and `POST /admin/rollback`, and what describes them: `GET /`
(the service, its model and its endpoints), `GET /openapi.json` (FastAPI's OpenAPI spec) and
`GET /docs` (a page made from that spec, with nothing loaded from elsewhere: it works
offline). Bad input is answered with a 4xx and a one-line JSON reason (`{"error": reason,
"detail": message}`); only a failure of the service itself is a 500.

Every request reads `service.current` once and uses that model to the end, and a reload
replaces it with one assignment only after the new model loaded and passed its check, so a
reload drops no request and a request never sees half a model. A model repository
(`repository`) is watched for new versions by a thread that swaps them in the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import html
import ipaddress
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from vgg_mobile.core.errors import BadInputError, VggMobileError, clip, require
from vgg_mobile.data.images import (CORRUPT, FORMAT_NAMES, NOT_AN_IMAGE, TOO_MANY_PIXELS,
                                    ImageError, ImageHeader, decode_rgb, read_header)
from vgg_mobile.serving.drift import DriftWatch
from vgg_mobile.serving.metrics import ServingMetrics
from vgg_mobile.core.version import __version__
from vgg_mobile.serving.models import ModelChoice, ServedModel, load_model
from vgg_mobile.serving.repository import Repository, VersionFolder, Watcher, is_repository
from vgg_mobile.serving.server import TIMED_OUT, pin_mmap_threshold, release_memory
from vgg_mobile.serving.rollback import Answered, Feedback, Judge, Rules
from vgg_mobile.serving.traffic import Comparisons, policy_from_flags, read_policy

log = logging.getLogger("vgg_mobile.serving")

# The environment variable that hands a `ServeConfig` to uvicorn's worker processes.
CONFIG_ENV = "VGG_MOBILE_SERVE_CONFIG"
TITLE = "vgg-mobile prediction service"
# Content types that declare the body an image (or opaque bytes): the decoder has the last word.
RAW_TYPES = ("application/octet-stream",)
# The first bytes of each format training reads (`IMAGE_SUFFIXES`). A raw body of any other
# content type is an image when it starts with one: curl's `--data-binary` sends
# application/x-www-form-urlencoded, and many clients send no content type at all.
IMAGE_SIGNATURES = (
    ("JPEG", b"\xff\xd8\xff"), ("PNG", b"\x89PNG\r\n\x1a\n"), ("GIF", b"GIF87a"),
    ("GIF", b"GIF89a"), ("BMP", b"BM"), ("TIFF", b"II*\x00"), ("TIFF", b"MM\x00*"),
    ("TIFF", b"II+\x00"), ("TIFF", b"MM\x00+"),
)
SNIFFED_FORMATS = "JPEG, PNG, GIF, BMP, WebP, TIFF"
# Status code of each way an uploaded image can fail to decode.
_IMAGE_STATUS = {NOT_AN_IMAGE: 400, CORRUPT: 400, TOO_MANY_PIXELS: 413}
# Peak memory, in bytes per pixel, of decoding an image of each mode, converting it to RGB and
# resizing it (`decode_cost`). Measured with Pillow 13 and TensorFlow 2.21 at 16 million
# pixels: RGBA 16, LA 20, CMYK and the 32-bit modes 10 to 13, the rest (1-bit, gray, palette,
# 16-bit gray, RGB) 9 to 10; a few more for margin. A 1-bit PNG is a few kilobytes on the wire
# and costs as much as any other image once decoded: the cost follows pixels, not file size.
_BYTES_PER_PIXEL = {"LA": 22, "PA": 22, "RGBA": 18, "CMYK": 15, "YCbCr": 15, "LAB": 15,
                    "I": 12, "F": 12}
_DEFAULT_BYTES_PER_PIXEL = 12
# From this decode cost on, a request runs in a lane of its own, one at a time: a few large
# images then hold one thread, and every other request keeps the others.
LARGE_DECODE_BYTES = 64 * 2**20
# Up to this decode cost (about 85,000 pixels: 290 x 290), a request of a model that answers
# in under INLINE_SECONDS of CPU runs on the event loop (`Classifier`).
INLINE_DECODE_BYTES = 2**20
INLINE_SECONDS = 0.002
# How long a request waits for room under --max-decode-memory before it is told to come back.
DECODE_WAIT_SECONDS = 2.0
# What one thread decodes per second, in decode-cost bytes (measured: a 6300 x 6300 RGBA PNG,
# about 600 MB of peak memory, in 7.7 s): the `Retry-After` of a request refused for room.
DECODE_BYTES_PER_SECOND = 80 * 2**20


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """How the service runs.

    Attributes:
        artifact: The model file, export folder or model repository (a folder of numbered
            export folders); `POST /admin/reload` re-reads this path.
        choice: Which model of an export folder. Defaults to `ModelChoice()`.
        threads: Threads of each interpreter or ONNX Runtime session. Defaults to `1`.
        concurrency: Inferences that run at once (one interpreter each, and as many threads).
            Defaults to `2`.
        max_upload_bytes: Larger request bodies are refused (413) while they are read.
            Defaults to 16 MiB.
        max_images: Images one request may hold. Defaults to `32`.
        max_pixels: Images with more pixels are refused (413) before they are decoded: a
            small file can expand to gigabytes. Defaults to 40 million.
        max_request_pixels: A request whose images add up to more pixels is refused (413)
            before any is decoded. Defaults to 100 million.
        max_decode_memory: Bytes that the images being decoded at once may take, estimated
            from each header (`decode_cost`): a request waits for room up to
            `DECODE_WAIT_SECONDS`, then gets a 503 with `Retry-After`; an image that alone
            would need more is refused (413). Defaults to 768 MiB.
        header_timeout: Seconds a connection has to send a whole request head, from when it
            opens or was last answered; then it is closed. Defaults to `10.0`.
        body_timeout: Seconds a request has to send its whole body. Defaults to `60.0`.
        top_k: Predictions per image when the request does not say. Defaults to `3`.
        admin_token: When set, admin endpoints need `Authorization: Bearer <token>`; when
            `None` they answer only loopback clients. Defaults to `None`.
        poll_seconds: How often a model repository is looked at for new versions; `0` looks
            only on `POST /admin/reload` (or SIGHUP). Unused for a file or export folder.
            Defaults to `2.0`.
        policy: A traffic policy file (`traffic.read_policy`) over the versions of the model
            repository: a canary share, an A/B split or a shadow. Defaults to `None` (the
            newest version answers everything).
        policy_flags: The same as `policy`, from `serve-model`'s flags: `{"stable": "1",
            "canary": "2:0.1", ...}` (`traffic.policy_from_flags`). Defaults to `None`.
        feedback_memory: Answers remembered for `POST /feedback` (about 300 bytes each);
            feedback for an older one is a 404. Defaults to `10_000`.
        drift_window: Images in each served model's rolling drift window
            (`vgg_mobile.serving.drift`); `0` turns the drift watch off. Defaults to `500`.
        drift_threshold: The population stability index over which a statistic's drift is
            logged as a warning. Defaults to `0.25`.
        drift_rate: Images a second each version's drift watch counts at most; beyond it the
            requests are sampled (about 90 µs of CPU an image at 64 pixels). `0` counts every
            image. Defaults to `100`.
    """

    artifact: Path
    choice: ModelChoice = ModelChoice()
    threads: int = 1
    concurrency: int = 2
    max_upload_bytes: int = 16 * 2**20
    max_images: int = 32
    max_pixels: int = 40_000_000
    max_request_pixels: int = 100_000_000
    max_decode_memory: int = 768 * 2**20
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    top_k: int = 3
    admin_token: str | None = None
    poll_seconds: float = 2.0
    policy: Path | None = None
    policy_flags: dict | None = None
    feedback_memory: int = 10_000
    drift_window: int = 500
    drift_threshold: float = 0.25
    drift_rate: float = 100

    def __post_init__(self):
        for name in ("threads", "concurrency", "max_upload_bytes", "max_images", "max_pixels",
                     "max_request_pixels", "max_decode_memory", "top_k", "feedback_memory"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"{name} must be an integer >= 1",
                    repr(value))
        for name in ("header_timeout", "body_timeout"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                    f"{name} must be a number of seconds > 0", repr(value))
        require(isinstance(self.poll_seconds, (int, float)) and math.isfinite(self.poll_seconds)
                and self.poll_seconds >= 0, "poll_seconds must be a number of seconds >= 0",
                repr(self.poll_seconds))
        require(isinstance(self.drift_window, int) and self.drift_window >= 0,
                "drift_window must be an integer >= 0 (0: no drift watch)",
                repr(self.drift_window))
        require(isinstance(self.drift_threshold, (int, float)) and math.isfinite(
            self.drift_threshold) and self.drift_threshold > 0,
                "drift_threshold must be a number > 0", repr(self.drift_threshold))
        require(isinstance(self.drift_rate, (int, float)) and math.isfinite(self.drift_rate)
                and self.drift_rate >= 0, "drift_rate must be a number >= 0 (0: every image)",
                repr(self.drift_rate))
        require(self.policy is None or not self.policy_flags, "a traffic policy comes from "
                "a file (--policy) or from flags (--stable with --canary, --ab or --shadow), "
                "not both", str(self.policy))
        require(self.admin_token is None or len(self.admin_token) >= 8,
                "admin_token must be at least 8 characters", f"{len(self.admin_token or '')} "
                "characters")

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "artifact": str(self.artifact),
                           "policy": None if self.policy is None else str(self.policy)})

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        data = json.loads(text)
        return cls(**{**data, "artifact": Path(data["artifact"]),
                      "policy": None if data.get("policy") is None else Path(data["policy"]),
                      "choice": ModelChoice(**data["choice"])})


class Refusal(Exception):
    """A request the service answers with a 4xx (or a 5xx it chose): status, reason, detail,
    and any headers of the answer (`Retry-After`)."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail
        self.headers = headers or {}


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(str(text).split())[:limit]


class ModelService:
    """The model serving now, the one before it (for rollback), and the reload that swaps them.

    For a model repository (`repository.is_repository`) the service serves its newest version
    that loads and passes its check; `poll` (the watcher's) and `reload` look for a newer one.
    A model's `version` is then its folder's number.

    Attributes:
        current: The model new requests use; replaced by one assignment.
        previous: The model `rollback` returns to, kept loaded, or `None`.
        repository: The model repository served, or `None` for a file or export folder.
    """

    def __init__(self, config: ServeConfig, metrics: ServingMetrics,
                 model: ServedModel | None = None):
        self.config = config
        self.metrics = metrics
        self._swap = threading.Lock()
        self.repository = Repository(config.artifact) if is_repository(config.artifact) else None
        require(model is None or self.repository is None, "a model repository loads its "
                "versions itself: give no model", str(config.artifact))
        self.policy = (read_policy(config.policy) if config.policy is not None
                       else policy_from_flags(config.policy_flags or {}))
        require(self.policy is None or self.repository is not None, "a traffic policy splits "
                "requests between the versions of a model repository (a folder of numbered "
                "export folders); ARTIFACT is one model", str(config.artifact))
        # While a policy holds: the model of every version it names.
        self.routed: dict[int, ServedModel] = {}
        # Each version's recent requests and labelled feedback, judged by the policy's
        # `[rollback]` rules (none: only the accuracy gauges).
        self.judge = Judge(self.policy.rules if self.policy and self.policy.rules else Rules(),
                           str(self.policy.stable) if self.policy else "")
        self.feedback = Feedback(config.feedback_memory)
        self.drift = DriftWatch(config.drift_window, config.drift_threshold, metrics,
                                config.drift_rate)
        self.previous: ServedModel | None = None
        if model is not None:
            self.current = model
        elif self.policy is not None:
            self.current = self._start_policy()
        else:
            self.current = self._start_repository() if self.repository else self._load()
        metrics.loads.labels(result="ok").inc()
        self._serving(self.current)

    def _load(self) -> ServedModel:
        return load_model(self.config.artifact, self.config.choice, self.config.threads,
                          self.config.concurrency)

    def _number(self, model: ServedModel | None) -> int | None:
        """A repository model's version number (its folder's), else `None`."""
        return int(model.version) if self.repository and model else None

    def _serving(self, model: ServedModel) -> None:
        self.metrics.serving(model, self._number(model))
        self._answering(tuple(self.routed.values()) or (model,))

    def _answering(self, models) -> None:
        """Points the per-version gauges (drift, reference accuracy) at the models that
        answer now."""
        self.drift.retain(models)
        self.metrics.reference_accuracy.clear()
        for model in models:
            if model.accuracy is not None:
                self.metrics.reference_accuracy.labels(version=model.version).set(model.accuracy)

    def _load_version(self, folder: VersionFolder) -> ServedModel | None:
        """Loads and checks one version of the repository off to the side; a failure is
        refused (counted, logged, not tried again as the folder is) and gives `None`."""
        try:
            model = load_model(folder.path, self.config.choice, self.config.threads,
                               self.config.concurrency)
        except Exception as err:  # noqa: BLE001 - whatever fails, the version is not served
            known = isinstance(err, VggMobileError)
            self.metrics.loads.labels(result="refused" if known else "failed").inc()
            self.repository.refuse(folder, _one_line(err if known else
                                                     f"{type(err).__name__}: {err}"))
            return None
        return dataclasses.replace(model, source=self.repository.path,
                                   version=str(folder.number))

    def _start_repository(self) -> ServedModel:
        """The newest version that loads: newer ones that are incomplete or refused are
        logged and passed over.

        Raises:
            BadInputError: No version can be served; the message gives each one's reason.
        """
        folders = self.repository.scan()
        if not folders:
            raise BadInputError(f"{self.repository.path}: no numbered version folder (1/, 2/, "
                                "...) in this model repository")
        self.repository.note(folders, None)
        reasons = []
        for folder in reversed(folders):
            model = self._load_version(folder) if folder.complete else None
            if model is not None:
                self.repository.loaded(folder)
                return model
            reason = (self.repository.refused[folder.number].reason if folder.complete
                      else f"incomplete: {folder.problem}")
            reasons.append(f"version {folder.number}: {reason}")
        raise BadInputError(f"{self.repository.path}: no version of this model repository can "
                            f"be served: {'; '.join(reasons)}")

    def _start_policy(self) -> ServedModel:
        """Loads every version the policy names, stable's first: they serve side by side.

        Raises:
            BadInputError: A version the policy names is not in the repository, is
                incomplete, or fails to load or pass its check; the message names the key.
        """
        policy, where = self.policy, self.policy.source
        folders = {folder.number: folder for folder in self.repository.scan()}
        self.repository.note(list(folders.values()), None)
        for number in policy.versions:
            folder, key = folders.get(number), policy.key_of(number)
            if folder is None:
                raise BadInputError(f"{where}: {key} names version {number}, which is not in "
                                    f"{self.repository.path} (versions: "
                                    f"{', '.join(map(str, folders)) or 'none'})")
            model = self._load_version(folder) if folder.complete else None
            if model is None:
                reason = (self.repository.refused[number].reason if folder.complete
                          else f"incomplete: {folder.problem}")
                raise BadInputError(f"{where}: {key} names version {number}, which cannot "
                                    f"serve: {reason}")
            self.repository.loaded(folder)
            self.routed[number] = model
        log.info("traffic policy %s: %s", where, json.dumps(policy.describe()))
        return self.routed[policy.stable]

    @property
    def policy_active(self) -> bool:
        return bool(self.routed)

    def route(self, headers) -> tuple[ServedModel, ServedModel | None]:
        """The model that answers a request with these headers, and the one its answer is
        compared with (`None`: no comparison), under the policy while it holds."""
        routed, policy = self.routed, self.policy
        if not routed:
            return self.current, None
        key = headers.get(policy.header) if policy.header else None
        answer, other = policy.route(key)
        return routed[answer], (None if other is None else routed[other])

    def _serve_newest(self, folders: list[VersionFolder]) -> bool:
        """Swaps in the newest candidate version (`Repository.candidates`) that loads; an
        older candidate is tried when a newer one is refused. The caller holds `_swap`.

        Returns:
            Whether a new version serves.
        """
        self.repository.note(folders, self._number(self.current))
        for folder in self.repository.candidates(folders):
            fresh = self._load_version(folder)
            if fresh is None:
                continue
            self.previous, self.current = self.current, fresh
            self.repository.loaded(folder)
            self.metrics.loads.labels(result="ok").inc()
            self._serving(fresh)
            log.info("now serving version %s of %s (was version %s)", fresh.version,
                     self.repository.path, self.previous.version)
            return True
        return False

    def poll(self) -> None:
        """One look at the repository for a newer version (the watcher's). Skipped while a
        reload or rollback runs: the next look sees the same folders."""
        folders = self.repository.scan()
        if not self._swap.acquire(blocking=False):
            return
        try:
            self._serve_newest(folders)
        finally:
            self._swap.release()

    def watch(self) -> Watcher | None:
        """Starts the thread that polls a repository every `config.poll_seconds`; `None`
        when there is nothing to watch (a file, an export folder, `poll_seconds` 0, a traffic
        policy, which pins its versions)."""
        if self.repository is None or not self.config.poll_seconds or self.policy is not None:
            return None
        return Watcher(self.poll, self.config.poll_seconds).start()

    def versions(self) -> list[dict] | None:
        """Each version of the repository and its state (`Repository.states`), as the disk
        is now; `None` for a file or export folder."""
        if self.repository is None:
            return None
        current, previous = self.current, self.previous
        return self.repository.states(self.repository.scan(), self._number(current),
                                      self._number(previous))

    def reload(self) -> dict:
        """Loads the ARTIFACT path again, checks it off to the side, then swaps it in. For a
        repository: the newest version newer than any loaded, as the watcher would.

        Returns:
            `{"changed", "model", "previous"}`: whether a new model serves (`False` when the
            file holds the same bytes, or the repository has no newer version), and short
            descriptions.

        Raises:
            Refusal: 409 while another reload or rollback runs; 422 when the new model is
                refused (the old one keeps serving).
        """
        if self.policy is not None:
            raise Refusal(409, "policy_pins_versions", f"the traffic policy "
                          f"{self.policy.source} pins versions "
                          f"{', '.join(map(str, self.policy.versions))}: change the policy and "
                          "restart, or roll back to end it")
        if not self._swap.acquire(blocking=False):
            raise Refusal(409, "busy", "another reload or rollback is running")
        try:
            if self.repository is not None:
                return self._reload_repository()
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
            self._serving(fresh)
            log.info("reloaded: now serving %s (was %s)", _short(fresh), _short(self.previous))
            return {"changed": True, "model": _summary(fresh), "previous": _summary(self.previous)}
        finally:
            self._swap.release()

    def _reload_repository(self) -> dict:
        """`reload` of a repository; 422 when the newest version newer than the one serving
        was refused (now, or before and unchanged since). The caller holds `_swap`."""
        changed = self._serve_newest(self.repository.scan())
        refused = None if changed else self.repository.newest_refusal()
        if refused is not None:
            number, record = refused
            raise Refusal(422, "model_refused", f"version {number} was refused and "
                          f"{_short(self.current)} keeps serving: {record.reason}")
        if not changed:
            self.metrics.loads.labels(result="unchanged").inc()
        return {"changed": changed, "model": _summary(self.current),
                "previous": _summary(self.previous)}

    def rollback(self) -> dict:
        """Serves the previous model again (a second rollback returns to the newer one); while
        a traffic policy holds, ends it instead: the stable version answers everything.

        Raises:
            Refusal: 409 with no previous model, or while a reload runs.
        """
        if not self._swap.acquire(blocking=False):
            raise Refusal(409, "busy", "another reload or rollback is running")
        try:
            if self.routed:
                return self._end_policy()
            if self.previous is None:
                self.metrics.rollbacks.labels(result="refused").inc()
                raise Refusal(409, "no_previous_model", "no previous model is loaded: "
                              "rollback needs a reload first")
            self.current, self.previous = self.previous, self.current
            self.metrics.rollbacks.labels(result="ok").inc()
            self._serving(self.current)
            log.info("rolled back: now serving %s (was %s)", _short(self.current),
                     _short(self.previous))
            return {"changed": True, "model": _summary(self.current),
                    "previous": _summary(self.previous)}
        finally:
            self._swap.release()

    def _end_policy(self, reason: str | None = None) -> dict:
        """A rollback while a traffic policy holds: the policy ends, and the stable version
        answers every request; `reason`: why, when no one asked for it. The caller holds
        `_swap`."""
        ended, self.routed = self.routed, {}
        self._answering((self.current,))
        self.metrics.rollbacks.labels(result="automatic" if reason else "ok").inc()
        others = ", ".join(str(number) for number in ended if number != self.policy.stable)
        log.warning("%srolled back: the %s policy of %s ended; version %s answers every "
                    "request and version %s no longer runs%s",
                    "automatically " if reason else "", self.policy.mode,
                    self.policy.source, self.policy.stable, others or "-",
                    f": {reason}" if reason else "")
        return {"changed": True, "model": _summary(self.current), "previous": None,
                "policy": "ended", "reason": reason}

    def judge_version(self, version: str, verdict: str | None) -> None:
        """Ends the policy when `verdict` (`Judge.verdict` of `version`) names a crossed
        threshold, once: a rollback already running, or a policy already ended, wins."""
        if verdict is None or not self.routed or version == str(self.policy.stable):
            return
        if not self._swap.acquire(blocking=False):
            return
        try:
            if self.routed:
                self._end_policy(f"version {version}: {verdict}")
        finally:
            self._swap.release()

    def observe(self, model: ServedModel, failed: bool, seconds: float) -> None:
        """One request `model` answered (or failed), judged while a policy holds."""
        if self.routed and self.policy.rules is not None:
            self.judge.request(model.version, failed, seconds)
            self.judge_version(model.version, self.judge.verdict(model.version))


def _summary(model: ServedModel | None) -> dict | None:
    if model is None:
        return None
    return {"version": model.version, "sha256": model.sha256, "loaded_at": model.loaded_at,
            "path": model.file}


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


def sniff_image(data: bytes) -> str | None:
    """The image format whose signature `data` starts with (`IMAGE_SIGNATURES`), or `None`."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for name, magic in IMAGE_SIGNATURES if data.startswith(magic)), None)


def _check_raw_image(media: str, data: bytes) -> None:
    """Refuses a raw body that neither declares itself an image nor starts like one."""
    if media.startswith("image/") or media in RAW_TYPES or sniff_image(data):
        return
    raise Refusal(415, "unsupported_media_type", f"the body is not an image: its first bytes "
                  f"({data[:8].hex(' ')}) are the signature of none of {SNIFFED_FORMATS}, and "
                  f"its content type {media or 'none'!r} declares no image (image/*) or bytes "
                  "(application/octet-stream); send the bytes of one image (any content type) "
                  "or multipart/form-data file parts")


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
        raise Refusal(400, "empty_body", "the request body is empty; send the bytes of one "
                      "image or multipart/form-data file parts")
    return [("image", bytes(body))]


class _ClosingDelimiter:
    """Watches a multipart body for its closing delimiter (`CRLF--boundary--`).

    The multipart parser takes a body that simply stops for a complete one: an upload cut off
    after its third part would be answered for three images. Without the closing delimiter,
    the body did not arrive whole.
    """

    def __init__(self, content_type: str):
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary", b"")
        self.marker = b"\r\n--" + boundary + b"--"
        self.seen = not boundary  # no boundary at all: the parser refuses the body itself
        self._tail = b""

    async def watch(self, chunks):
        async for chunk in chunks:
            if not self.seen:
                window = self._tail + chunk
                self.seen = self.marker in window
                self._tail = window[-(len(self.marker) - 1):]
            yield chunk


async def _multipart_uploads(request, config: ServeConfig) -> list[tuple[str, bytes]]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    closing = _ClosingDelimiter(request.headers.get("content-type", ""))
    parser = MultiPartParser(request.headers,
                             closing.watch(_bounded(request, config.max_upload_bytes)),
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
    if not closing.seen:
        raise Refusal(400, "bad_multipart", f"the multipart/form-data body ends before its "
                      f"closing boundary (--BOUNDARY--): the upload was cut short after "
                      f"{len(uploads)} file parts, and none is classified")
    if not uploads:
        raise Refusal(400, "no_images", "the multipart/form-data request holds no file part")
    for name, data in uploads:
        if not data:
            raise Refusal(400, "empty_body", f"{name}: the file part is empty")
    return uploads


def _image_refusal(name: str, err: Exception) -> Refusal:
    """The refusal of an upload the decoder failed on: the bytes are at fault, never the
    service. Pillow's format plugins raise more than `OSError` on crafted input (`ValueError`,
    `struct.error`, `EOFError`, ...): each is a corrupt image, not a 500."""
    if isinstance(err, ImageError):
        return Refusal(_IMAGE_STATUS.get(err.reason, 400), err.reason, _one_line(err))
    if isinstance(err, MemoryError):
        return Refusal(503, "decode_busy", f"{name}: not enough memory to decode it now")
    return Refusal(400, CORRUPT, _one_line(f"{name}: corrupt image ({type(err).__name__}: "
                                           f"{err})"))


def _headers(uploads: list[tuple[str, bytes]], max_pixels: int) -> list[ImageHeader]:
    """Each upload's header (format, mode, size), read without decoding a pixel."""
    headers = []
    for name, data in uploads:
        try:
            headers.append(read_header(data, max_pixels, name=name))
        except Exception as err:  # noqa: BLE001 - see `_image_refusal`
            raise _image_refusal(name, err) from None
    return headers


def decode_cost(header: ImageHeader) -> int:
    """Estimated peak bytes of decoding an image, converting it to RGB and resizing it."""
    per_pixel = _BYTES_PER_PIXEL.get(header.mode, _DEFAULT_BYTES_PER_PIXEL)
    if header.transparent:  # composited on white: a converted copy, a background, the result
        per_pixel = max(per_pixel, _BYTES_PER_PIXEL["LA" if header.mode == "P" else "RGBA"])
    return header.pixels * per_pixel


class DecodeBudget:
    """The decode cost (`decode_cost`, bytes) of the requests decoding at once, bounded.

    A request takes the cost of its largest image (its images are decoded one after the
    other). It waits up to `wait` seconds for room, polling: the app may run on more than one
    event loop (a test client starts its own), and a plain counter works on all of them.
    """

    def __init__(self, limit: int, wait: float = DECODE_WAIT_SECONDS):
        self.limit, self.wait = limit, wait
        self.used = 0

    @contextlib.asynccontextmanager
    async def hold(self, cost: int):
        deadline = time.monotonic() + self.wait
        while self.used and self.used + cost > self.limit:
            if time.monotonic() >= deadline:
                retry = max(1, math.ceil(self.used / DECODE_BYTES_PER_SECOND))
                raise Refusal(503, "decode_busy", f"images of other requests are being decoded "
                              f"and this one's ({_megabytes(cost)}) does not fit beside them "
                              f"under --max-decode-memory ({_megabytes(self.limit)}); retry in "
                              f"{retry} s", headers={"Retry-After": str(retry)})
            await asyncio.sleep(0.05)
        self.used += cost
        try:
            yield
        finally:
            self.used -= cost


def _megabytes(amount: int) -> str:
    return f"{amount / 2**20:,.0f} MiB"


def _pixels(uploads: list[tuple[str, bytes]], model: ServedModel,
            max_pixels: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Decodes and resizes uploads exactly as training and evaluation read image files:
    the pixels, and each image's `(height, width)` as decoded."""
    from vgg_mobile.data.dataset import resize_array

    images, sizes = [], []
    for name, data in uploads:
        try:
            rgb = decode_rgb(data, max_pixels, name=name)
        except Exception as err:  # noqa: BLE001 - see `_image_refusal`
            raise _image_refusal(name, err) from None
        if rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise Refusal(400, CORRUPT, f"{name}: empty image ({rgb.shape[1]}x{rgb.shape[0]})")
        images.append(resize_array(rgb, model.input_size))
        sizes.append(rgb.shape[:2])
        del rgb  # the full-size pixels go before the next image is decoded
    return np.stack(images).astype(np.float32), sizes


def _infer(uploads, model: ServedModel, max_pixels: int, drift: DriftWatch,
           large: bool = False) -> np.ndarray:
    try:
        pixels, sizes = _pixels(uploads, model, max_pixels)
        probs = model.predict(pixels)
        drift.record(model, pixels, sizes, probs)
        return probs
    finally:
        if large:
            release_memory()


class Classifier:
    """Images -> probabilities under the service's limits: what every prediction route shares.

    A request runs on an executor thread, unless it is small and its model fast: an image of
    at most `INLINE_DECODE_BYTES` decode cost, for a model whose requests have taken under
    `INLINE_SECONDS` of CPU each (a running mean over that model's requests, per model), runs
    on the event loop itself. Handing such a request to a thread and back costs more than the
    request: the threads wait for each other's turn at the interpreter lock, and the server
    used one of two cores while answering half as many requests.

    Args:
        config: The limits (`max_images`, `max_pixels`, `max_request_pixels`,
            `max_decode_memory`).
        executors: `(normal, large)`: where inference runs; a request whose decode costs
            `LARGE_DECODE_BYTES` or more runs on `large`, one at a time.
        budget: The decode memory of the requests decoding at once.
    """

    def __init__(self, config: ServeConfig, executors, budget: DecodeBudget, drift: DriftWatch):
        self.config, self.budget, self.drift = config, budget, drift
        self.executor, self.large_executor = executors
        # Mean CPU seconds of a small request, per model (its sha256); unknown until measured.
        self.typical: dict[str, float] = {}

    async def images(self, uploads: list[tuple[str, bytes]], model: ServedModel) -> np.ndarray:
        """Image files `(name, bytes)` -> `(n, classes)` probabilities of `model`; each
        header is checked against the limits before any pixel is decoded.

        Raises:
            Refusal: 413 over a limit, 400 for a file that is no image, 503 when the decode
                memory stays full (`DecodeBudget`).
        """
        config = self.config
        if len(uploads) > config.max_images:
            raise Refusal(413, "too_many_images", f"{len(uploads)} images in one request; the "
                          f"limit is {config.max_images} (--max-images)")
        loop = asyncio.get_running_loop()
        # What decoding will cost, from the headers alone, before any pixel is decoded.
        headers = await loop.run_in_executor(None, _headers, uploads, config.max_pixels)
        pixels = sum(header.pixels for header in headers)
        if pixels > config.max_request_pixels:
            raise Refusal(413, "too_many_pixels_in_request", f"the {len(uploads)} images hold "
                          f"{pixels:,} pixels together, over the limit of "
                          f"{config.max_request_pixels:,} per request (--max-request-pixels)")
        costs = [decode_cost(header) for header in headers]
        index = max(range(len(costs)), key=costs.__getitem__)
        cost, header = costs[index], headers[index]
        if cost > config.max_decode_memory:
            raise Refusal(413, "too_much_decode_memory", f"{uploads[index][0]}: a {header.width}x"
                          f"{header.height} {header.mode} image needs about "
                          f"{_megabytes(cost)} to decode, over the limit of "
                          f"{_megabytes(config.max_decode_memory)} (--max-decode-memory)")
        large = cost >= LARGE_DECODE_BYTES
        if cost > INLINE_DECODE_BYTES:
            async with self.budget.hold(cost):
                return await loop.run_in_executor(
                    self.large_executor if large else self.executor, _infer, uploads, model,
                    config.max_pixels, self.drift, large)
        if self.typical.get(model.sha256, math.inf) < INLINE_SECONDS:
            return self._timed(uploads, model)
        return await loop.run_in_executor(self.executor, self._timed, uploads, model)

    def _timed(self, uploads: list[tuple[str, bytes]], model: ServedModel) -> np.ndarray:
        """`_infer` of a small request, its CPU time (not the time it waited for the
        interpreter lock) added to its model's running mean."""
        began = time.thread_time()
        probs = _infer(uploads, model, self.config.max_pixels, self.drift)
        spent = time.thread_time() - began
        mean = self.typical.get(model.sha256)
        self.typical[model.sha256] = spent if mean is None else 0.9 * mean + 0.1 * spent
        return probs

    async def pixels(self, pixels: np.ndarray, model: ServedModel) -> np.ndarray:
        """Decoded pixels `(n, h, w, 3)` in [0, 255] -> `(n, classes)` probabilities of
        `model`, each image resized to the model's input size as `images` resizes a decoded
        file. The caller has checked the shape against the limits.
        """
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, _infer_pixels, pixels, model, self.drift)


def _infer_pixels(pixels: np.ndarray, model: ServedModel, drift: DriftWatch) -> np.ndarray:
    from vgg_mobile.data.dataset import resize_array

    sizes = [pixels.shape[1:3]] * len(pixels)
    if tuple(pixels.shape[1:3]) != tuple(model.input_size):
        pixels = np.stack([resize_array(image, model.input_size) for image in pixels])
    pixels = pixels.astype(np.float32, copy=False)
    probs = model.predict(pixels)
    drift.record(model, pixels, sizes, probs)
    return probs


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


class Prediction(BaseModel):
    label: str
    probability: float


class PredictAnswer(BaseModel):
    """One raw image: its top classes, most probable first."""

    predictions: list[Prediction]
    request_id: str
    model_version: str
    model_sha256: str
    format: str


class ImageAnswer(BaseModel):
    filename: str
    predictions: list[Prediction]


class BatchAnswer(BaseModel):
    """Multipart file parts: each image's top classes, in the order of the parts."""

    images: list[ImageAnswer]
    request_id: str
    model_version: str
    model_sha256: str
    format: str


class ErrorAnswer(BaseModel):
    """A refused request: `error` is a stable reason, `detail` one line saying what was wrong."""

    error: str
    detail: str


def _errors(description: str) -> dict:
    return {"model": ErrorAnswer, "description": description}


# `POST /predict` reads its body and `top_k` itself (to answer each failure with its own
# reason), so FastAPI cannot see them: they are described here for the OpenAPI spec.
PREDICT_OPENAPI = {
    "parameters": [{
        "name": "top_k", "in": "query", "required": False,
        "schema": {"type": "integer", "minimum": 1}, "example": 3,
        "description": "Predictions per image (at most the number of classes). Defaults to "
                       "the server's `--top-k`."}],
    "requestBody": {"required": True, "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}},
}
PREDICT_DESCRIPTION = (
    f"One image as the raw body, whatever its content type (`image/*`, "
    f"`application/octet-stream`, none, or the `application/x-www-form-urlencoded` that "
    f"`curl --data-binary` sends): a body of any other type is taken for an image when its "
    f"first bytes are the signature of one of {SNIFFED_FORMATS}. Or several images as "
    f"`multipart/form-data` file parts, answered in order.")
PREDICT_RESPONSES = {
    200: {"model": PredictAnswer | BatchAnswer, "description": "The top classes: "
          "`predictions` for a raw body, `images` for multipart file parts.",
          "headers": {"X-Model-Version": {
              "description": "The `model_version` that answered (a model repository's version "
                             "number).", "schema": {"type": "string"}}}},
    400: _errors(f"`not_an_image` (formats read: {FORMAT_NAMES}), `corrupt_image`, "
                 "`empty_body`, `no_images`, `bad_multipart` (malformed, or cut short before "
                 "its closing boundary) or `bad_top_k`."),
    413: _errors("`upload_too_large` (`--max-upload-bytes`), `too_many_pixels` "
                 "(`--max-pixels`), `too_many_pixels_in_request` (`--max-request-pixels`), "
                 "`too_much_decode_memory` (`--max-decode-memory`) or `too_many_images` "
                 "(`--max-images`)."),
    415: _errors("`unsupported_media_type`: a raw body that is not an image, with a content "
                 "type that is neither `image/*` nor `application/octet-stream`."),
    503: _errors("`decode_busy`: other requests' images are being decoded and this one does "
                 "not fit beside them under `--max-decode-memory`; the `Retry-After` header "
                 "says when to come back."),
}
ADMIN_RESPONSES = {401: _errors("`unauthorized`: the bearer token is missing or wrong."),
                   403: _errors("`forbidden`: without `--admin-token`, only loopback clients."),
                   409: _errors("`busy` or `no_previous_model`.")}


def _inline_code(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _curl_examples(method: str, path: str, operation: dict, base: str) -> list[str]:
    url = base + path
    if method == "get":
        return [f"curl -s {url}"]
    body = (operation.get("requestBody") or {}).get("content") or {}
    queries = [f"{p['name']}={p['example']}" for p in operation.get("parameters", [])
               if p.get("in") == "query" and "example" in p]
    examples = []
    if "image/*" in body:
        query = "?" + "&".join(queries) if queries else ""
        examples.append(f"curl -s --data-binary @photo.jpg '{url}{query}'")
    if "multipart/form-data" in body:
        examples.append(f"curl -s -F files=@photo.jpg -F files=@other.png {url}")
    if not body:
        examples.append(f"curl -s -X {method.upper()} {url}")
    return examples


def _fields(spec: dict, content: dict) -> str:
    """The fields of each JSON schema a response may have: `PredictAnswer: predictions, ...`."""
    schema = (content.get("application/json") or {}).get("schema") or {}
    named = []
    for ref in [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]:
        if ref and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            schemas = spec.get("components", {}).get("schemas", {})
            fields = schemas.get(name, {}).get("properties", {})
            named.append(f"<code>{html.escape(name)}</code>: " + ", ".join(
                f"<code>{html.escape(field)}</code>" for field in fields))
    return "<br>".join(named)


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    cells = lambda tag, row: "".join(f"<{tag}>{cell}</{tag}>" for cell in row)  # noqa: E731
    return (f"<table><tr>{cells('th', head)}</tr>"
            + "".join(f"<tr>{cells('td', row)}</tr>" for row in rows) + "</table>")


_PAGE_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #1d1d1f; }
code, pre { font-family: ui-monospace, monospace; font-size: 13px; }
pre { background: #f4f4f6; padding: .6rem .8rem; overflow-x: auto; border-radius: 4px; }
section { border-top: 1px solid #ddd; margin-top: 1.5rem; }
.method { display: inline-block; min-width: 3.5rem; font-weight: 600; color: #0b57d0; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { text-align: left; vertical-align: top; padding: .25rem .8rem .25rem 0; }
"""


def docs_page(spec: dict, base: str) -> str:
    """A self-contained HTML page of an OpenAPI spec: each endpoint, its parameters, request
    body, responses and curl examples. It loads nothing (no script, style sheet or font from
    anywhere), so it works where Swagger UI, fetched from a CDN, would not.

    Args:
        spec: The OpenAPI spec (`app.openapi()`).
        base: The service's own address, written into the curl examples
            (`http://127.0.0.1:8500`).

    Returns:
        The HTML text.
    """
    info = spec.get("info", {})
    base = base.rstrip("/")
    operations = [(path, method, operation) for path, methods in spec.get("paths", {}).items()
                  for method, operation in methods.items()]
    nav, sections = [], []
    for path, method, operation in operations:
        anchor = f"{method}-{re.sub(r'[^a-z0-9]+', '-', path.lower()).strip('-') or 'root'}"
        title = f"<span class=method>{method.upper()}</span> <code>{html.escape(path)}</code>"
        summary = html.escape(operation.get("summary", ""))
        nav.append(f"<li><a href=\"#{anchor}\">{title}</a> {summary}</li>")
        parts = [f"<section id=\"{anchor}\"><h2>{title}</h2>",
                 f"<p><strong>{summary}</strong></p>"]
        if operation.get("description"):
            parts.append(f"<p>{_inline_code(operation['description'])}</p>")
        parameters = operation.get("parameters") or []
        if parameters:
            parts.append("<h3>Parameters</h3>" + _table(
                ("name", "in", "type", "required", "description"),
                [(f"<code>{html.escape(p['name'])}</code>", html.escape(p.get("in", "")),
                  html.escape(str((p.get("schema") or {}).get("type", ""))),
                  "yes" if p.get("required") else "no",
                  _inline_code(p.get("description", ""))) for p in parameters]))
        body = (operation.get("requestBody") or {}).get("content") or {}
        if body:
            parts.append("<h3>Request body</h3><p>" + ", ".join(
                f"<code>{html.escape(kind)}</code>" for kind in body) + "</p>")
        responses = operation.get("responses") or {}
        parts.append("<h3>Responses</h3>" + _table(("status", "description", "content"), [
            (html.escape(code), _inline_code(answer.get("description", "")),
             ", ".join(f"<code>{html.escape(kind)}</code>" for kind in answer.get("content") or {})
             + "<br>" + _fields(spec, answer.get("content") or {}))
            for code, answer in responses.items()]))
        examples = _curl_examples(method, path, operation, base)
        parts.append("<h3>Example</h3>" + "".join(
            f"<pre>{html.escape(example)}</pre>" for example in examples) + "</section>")
        sections.append("".join(parts))
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(info.get('title', 'API'))}</title>"
            f"<style>{_PAGE_STYLE}</style></head><body>"
            f"<h1>{html.escape(info.get('title', 'API'))} "
            f"<small>{html.escape(str(info.get('version', '')))}</small></h1>"
            f"<p>{_inline_code(info.get('description', ''))}</p>"
            f"<p>The OpenAPI spec of this service: <a href=\"/openapi.json\"><code>GET "
            f"/openapi.json</code></a>.</p><ul>{''.join(nav)}</ul>{''.join(sections)}"
            f"</body></html>")


# The docs page may load nothing at all: a browser enforces it, whatever the page says.
DOCS_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'none'")


def _lower_priority() -> None:
    """Lowers the calling thread's CPU priority (Linux: `nice` applies to one thread), so the
    one large request at a time yields the CPU to small ones."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def create_app(config: ServeConfig, model: ServedModel | None = None):
    """Builds the FastAPI app, loading the model first (unless one is given).

    The thread that watches a model repository for new versions runs while the app does
    (from its lifespan's start to its end).

    Args:
        config: How to serve.
        model: An already loaded model of `config.artifact` (a file or export folder).
            Defaults to `None` (load it).

    Returns:
        The app; `app.state.service` is its `ModelService`, `app.state.metrics` its metrics.

    Raises:
        BadInputError: The model at `config.artifact` cannot be served.
    """
    metrics = ServingMetrics()
    service = ModelService(config, metrics, model)
    executor = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="predict")
    # Requests with a large image run here, one at a time, so they never hold every thread.
    large_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict-large",
                                        initializer=_lower_priority)
    budget = DecodeBudget(config.max_decode_memory)
    classifier = Classifier(config, (executor, large_executor), budget, service.drift)
    pin_mmap_threshold()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        watcher = service.watch()
        yield
        if watcher is not None:
            watcher.stop()
        for pool in (executor, large_executor):
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=TITLE, version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json",
                  description="An exported vgg-mobile image classifier (LiteRT or ONNX Runtime) "
                              "behind HTTP. Refusals answer `{\"error\": reason, \"detail\": "
                              "message}` with a 4xx.")
    app.state.service, app.state.metrics, app.state.config = service, metrics, config
    app.state.budget, app.state.classifier = budget, classifier

    disconnected = _add_error_handling(app, metrics, config)
    _add_feedback_route(app, service, metrics)
    comparisons = Comparisons(metrics, limit=4 * config.concurrency)
    app.state.comparisons = comparisons
    _add_predict_route(app, service, config, metrics, disconnected, classifier, comparisons)
    _add_information_routes(app, service, metrics)
    from vgg_mobile.serving.open_inference import add_open_inference_routes
    add_open_inference_routes(app, service, config, metrics, classifier)
    _add_admin_routes(app, service, config)
    return app


def _add_error_handling(app, metrics: ServingMetrics, config: ServeConfig):
    """Every refusal answers `{"error", "detail"}` and is counted; so is every request (the
    middleware), and an unexpected exception becomes a counted 500. Returns `disconnected`:
    the refusal for a request whose client went away."""

    def refuse(exc: Refusal):
        metrics.errors.labels(reason=exc.reason).inc()
        return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=exc.status,
                            headers=exc.headers)

    def disconnected(request: Request) -> Refusal:
        # Nobody reads this answer: it is what the metrics and the access log count.
        if request.scope.get(TIMED_OUT):
            return Refusal(408, "body_timeout", f"the body did not arrive within "
                           f"{config.body_timeout:g} s (--body-timeout); the connection was "
                           "closed")
        return Refusal(499, "client_disconnected", "the client closed the connection before "
                       "its request arrived whole")

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

    def internal_error() -> JSONResponse:
        metrics.errors.labels(reason="internal").inc()
        return JSONResponse({"error": "internal", "detail": "internal error; the server log "
                             "has the traceback"}, status_code=500)

    class Counting:
        """Counts every request by endpoint and status, and times it; a network drop is a
        counted refusal, an unexpected exception a counted 500. A plain ASGI middleware:
        Starlette's `BaseHTTPMiddleware` (`app.middleware("http")`) ran each request through
        a task group and memory streams, a tenth of a small request's time."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            started = time.perf_counter()
            status = None

            async def sending(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.inner(scope, receive, sending)
            except ClientDisconnect:  # a network drop, not the service's failure
                if status is None:
                    await refuse(disconnected(Request(scope)))(scope, receive, sending)
            except Exception:  # noqa: BLE001 - a bug or a broken environment: 500, counted
                log.exception("internal error answering %s %s", scope.get("method"),
                              scope.get("path"))
                answer = internal_error()
                if status is None:
                    await answer(scope, receive, sending)
                status = 500
            endpoint = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.requests.labels(endpoint=endpoint, status=str(status or 500)).inc()
            metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)

    app.add_middleware(Counting)
    return disconnected


def _authorize(request: Request, config: ServeConfig) -> None:
    """Admin endpoints: the bearer token when one is set, else clients on this machine only."""
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


def _add_predict_route(app, service: ModelService, config: ServeConfig, metrics: ServingMetrics,
                       disconnected, classifier: Classifier, comparisons: Comparisons) -> None:
    """`POST /predict`: one raw image or multipart file parts, classified by `classifier` on
    the version the traffic policy picks (`ModelService.route`), and compared after the
    answer where the policy says (`comparisons`)."""

    @app.post("/predict", summary="Classify one image, or several in multipart file parts",
              description=PREDICT_DESCRIPTION, response_model=None,
              responses=PREDICT_RESPONSES, openapi_extra=PREDICT_OPENAPI)
    async def predict(request: Request, response: Response):
        # This request's model (and the one its answer is compared with), whatever a reload
        # does meanwhile.
        model, other = service.route(request.headers)
        top_k = _top_k(request, model, config.top_k)
        media = _media_type(request)
        try:
            if media == "multipart/form-data":
                uploads = await _multipart_uploads(request, config)
                several = True
            else:
                # Read as bytes whatever the content type: a urlencoded body is never a form.
                uploads = await _raw_upload(request, config.max_upload_bytes)
                _check_raw_image(media, uploads[0][1])
                several = False
        except ClientDisconnect:
            raise disconnected(request) from None
        started = time.perf_counter()
        try:
            probs = await classifier.images(uploads, model)
        except Refusal:  # the request's fault (or the load's), not the version's
            raise
        except Exception:
            service.observe(model, True, time.perf_counter() - started)
            raise
        service.observe(model, False, time.perf_counter() - started)
        results = []
        for (name, _), row in zip(uploads, probs):
            predictions = top_predictions(row, model.classes, top_k)
            metrics.predictions.labels(label=predictions[0]["label"]).inc()
            results.append({"filename": name, "predictions": predictions} if several
                           else {"predictions": predictions})
        metrics.images.inc(len(results))
        metrics.answered.labels(version=model.version).inc()
        if other is not None and comparisons.admit():
            comparisons.start(_compare(classifier, comparisons, service, uploads, probs,
                                       model, other))
        request_id = uuid.uuid4().hex
        service.feedback.remember(request_id, Answered(
            model.version, tuple(model.classes[int(row.argmax())] for row in probs),
            tuple(model.classes)))
        about = {"request_id": request_id, "model_version": model.version,
                 "model_sha256": model.sha256, "format": model.format}
        response.headers["X-Model-Version"] = model.version
        response.headers["X-Request-Id"] = request_id
        return {"images": results, **about} if several else {**results[0], **about}


async def _compare(classifier: Classifier, comparisons: Comparisons, service: ModelService,
                   uploads, probs, model: ServedModel, other: ServedModel) -> None:
    """Runs a request's images on `other` too, after the answer, and counts where the two
    versions' top-1 classes agree (by name: two versions may order their classes apart);
    the tried-out version is judged on its rolling agreement."""
    stable = str(service.policy.stable)
    try:
        theirs = await classifier.images(uploads, other)
        agreed = [model.classes[int(mine.argmax())] == other.classes[int(row.argmax())]
                  for mine, row in zip(probs, theirs)]
        candidate = other if model.version == stable else model
        rate, count = comparisons.record(candidate.version, stable, agreed)
        if service.policy.rules is not None:
            service.judge_version(candidate.version,
                                  service.judge.verdict(candidate.version, rate, count))
    except Exception as err:  # noqa: BLE001 - a comparison never fails the service
        log.warning("comparing version %s with %s failed: %s", model.version, other.version,
                    _one_line(err))
    finally:
        comparisons.done()


# The largest `POST /feedback` body: a request id and the labels of up to --max-images images.
FEEDBACK_BYTES = 64 * 1024


def _feedback_labels(data: bytes, service: ModelService) -> tuple[str, Answered, list[str]]:
    """The request id, its answer and the true labels of a `POST /feedback` body.

    Raises:
        Refusal: 400 for a body that is not `{"request_id", "label"}` (or `"labels"`, one per
            image) with labels among the model's classes; 404 for a request id the service
            does not know (or no longer remembers); 409 for one labelled already.
    """
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("request_id"), str) or (
            ("label" in body) == ("labels" in body)) or set(body) - {"request_id", "label",
                                                                     "labels"}:
        raise Refusal(400, "bad_feedback", 'the body must be the JSON object {"request_id": '
                      'ID, "label": CLASS}, or "labels": [CLASS, ...] with one class per image '
                      'of a multipart request')
    labels = body["labels"] if "labels" in body else [body["label"]]
    request_id = body["request_id"]
    answered = service.feedback.claim(request_id)
    if answered is None:
        raise Refusal(404, "unknown_request_id", f"no answer with request_id "
                      f"{clip(repr(request_id), 80)} is remembered (the last "
                      f"{service.feedback.memory:,} answers are)")
    if answered is False:
        raise Refusal(409, "already_labelled", f"request {clip(repr(request_id), 80)} has "
                      "been labelled already")
    unknown = [label for label in labels if label not in answered.classes]
    if len(labels) != len(answered.labels) or unknown:
        answered.labelled = False  # a mistake in the body: the request may be labelled again
        raise Refusal(400, "bad_feedback", f"request {request_id} had {len(answered.labels)} "
                      f"image(s) of classes {list(answered.classes)}; received "
                      f"{clip(repr(labels), 200)}")
    return request_id, answered, labels


def _add_feedback_route(app, service: ModelService, metrics: ServingMetrics) -> None:
    """`POST /feedback`: the true class of an answered request, counted for its version."""
    @app.post("/feedback", summary="The true class of an answered request (by its "
              "request_id): counted for the version that answered it",
              responses={400: _errors("`bad_feedback`: not a request id and its images' "
                                      "classes."),
                         404: _errors("`unknown_request_id`: no such answer is remembered; "
                                      "nothing is counted."),
                         409: _errors("`already_labelled`: counted once already.")})
    async def feedback(request: Request):
        data = bytearray()
        async for chunk in _bounded(request, FEEDBACK_BYTES):
            data += chunk
        request_id, answered, labels = _feedback_labels(bytes(data), service)
        correct = [label == given for label, given in zip(labels, answered.labels)]
        for right in correct:
            metrics.feedback.labels(version=answered.version, correct=str(right).lower()).inc()
            service.judge.feedback(answered.version, right)
        accuracy, count = service.judge.accuracy(answered.version)
        metrics.accuracy.labels(version=answered.version).set(accuracy)
        if service.policy is not None and service.policy.rules is not None:
            service.judge_version(answered.version, service.judge.verdict(answered.version))
        return {"request_id": request_id, "model_version": answered.version,
                "correct": correct, "accuracy": accuracy, "labelled": count}


def _add_information_routes(app, service: ModelService, metrics: ServingMetrics) -> None:
    """`/`, `/docs`, `/health` (GET and HEAD), `/model`, `/metrics`."""
    @app.get("/", summary="The service, the model it serves and its endpoints")
    async def root():
        model = service.current
        endpoints = [{"method": method.upper(), "path": path,
                      "summary": operation.get("summary", "")}
                     for path, methods in app.openapi()["paths"].items()
                     for method, operation in methods.items()]
        endpoints += [{"method": "GET", "path": "/openapi.json", "summary": "The OpenAPI spec"},
                      {"method": "GET", "path": "/docs", "summary": "The API documentation "
                       "page"}]
        return {"service": TITLE, "service_version": __version__,
                "model_version": model.version, "model": {
                    "name": model.name, "version": model.version, "sha256": model.sha256,
                    "format": model.format, "flavour": model.flavour},
                "docs": "/docs", "openapi": "/openapi.json", "endpoints": endpoints}

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        page = docs_page(app.openapi(), str(request.base_url))
        return HTMLResponse(page, headers={"content-security-policy": DOCS_POLICY})

    @app.get("/health", summary="Whether the service answers, and which model (HEAD too, as "
             "load balancers ask)")
    async def health():
        model = service.current
        return {"status": "ok", "model_version": model.version, "model_sha256": model.sha256,
                "format": model.format}

    # Load balancers health-check with HEAD: the same answer without its body (one route of
    # its own, so the spec keeps one operation per method).
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get("/model", summary="The model serving now: classes, input size, manifest, "
             "metadata (no absolute path), the one a rollback would restore, and for a model "
             "repository each version's state")
    async def model_info():
        model, previous = service.current, service.previous
        answer = {**model.describe(), "previous": _summary(previous),
                  "rollback_available": previous is not None or service.policy_active}
        if service.policy is not None:
            answer["traffic"] = {**service.policy.describe(), "active": service.policy_active}
        if service.config.drift_window:  # each version that answers, and its latest PSI
            answer["drift"] = {served.version: service.drift.describe(served)
                               for served in (service.routed.values() or (model,))}
        if service.repository is not None:  # the disk is read off the event loop
            answer["versions"] = await asyncio.get_running_loop().run_in_executor(
                None, service.versions)
        return answer

    @app.get("/metrics", summary="Prometheus metrics of this process",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics_text():
        service.drift.refresh()
        return Response(metrics.render(), media_type=metrics.content_type)


def _add_admin_routes(app, service: ModelService, config: ServeConfig) -> None:
    """`POST /admin/reload` and `/admin/rollback`, behind `_authorize`."""
    @app.post("/admin/reload", summary="Read the ARTIFACT again (or a repository's newest "
              "version) and serve it once it passed its check",
              responses={**ADMIN_RESPONSES, 422: _errors(
                  "`model_refused`: the new model failed its check; the old one serves.")})
    async def reload(request: Request):
        _authorize(request, config)
        return await asyncio.get_running_loop().run_in_executor(None, service.reload)

    @app.post("/admin/rollback", summary="Serve the previous model again",
              responses=ADMIN_RESPONSES)
    async def rollback(request: Request):
        _authorize(request, config)
        return service.rollback()


def app_from_environment():
    """The app of one uvicorn worker process, from the `ServeConfig` in `CONFIG_ENV`."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise BadInputError(f"{CONFIG_ENV} is not set: start workers with `vgg-mobile "
                            "serve-model --workers N`")
    from vgg_mobile.serving.server import AcceptErrors, raise_open_file_limit, show_service_log

    show_service_log()
    raise_open_file_limit()
    with contextlib.suppress(RuntimeError):  # uvicorn builds the app inside its event loop
        asyncio.get_running_loop().set_exception_handler(AcceptErrors())
    return create_app(ServeConfig.from_json(text))
