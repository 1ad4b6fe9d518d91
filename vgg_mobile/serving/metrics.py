"""The service's Prometheus metrics, in a registry of its own.

Each app holds its own `CollectorRegistry` (not prometheus-client's global one), so several
apps in one process (tests, or a replica per port) count apart. With several uvicorn worker
processes each counts only its own requests: scrape every replica.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

# Seconds: from a cached small model's few milliseconds to a queue of large uploads.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    """Counters, the latency histogram and the model gauges of one app."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("vgg_mobile_requests", "HTTP requests answered, by endpoint "
                                "and status code.", ["endpoint", "status"], registry=r)
        self.errors = Counter("vgg_mobile_errors", "Requests refused or failed, by reason.",
                              ["reason"], registry=r)
        self.latency = Histogram("vgg_mobile_request_seconds", "Time to answer a request, in "
                                 "seconds, by endpoint.", ["endpoint"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.images = Counter("vgg_mobile_images_predicted", "Images classified.", registry=r)
        self.predictions = Counter("vgg_mobile_predictions", "Images whose top-1 class was "
                                   "this label (watch it for drift).", ["label"], registry=r)
        self.loads = Counter("vgg_mobile_model_loads", "Model loads (start and reloads), by "
                             "result: ok, unchanged, refused or failed.", ["result"], registry=r)
        self.rollbacks = Counter("vgg_mobile_model_rollbacks", "Rollbacks to the previous "
                                 "model, by result.", ["result"], registry=r)
        self.answered = Counter("vgg_mobile_answered_by_version", "Requests answered, by the "
                                "model version that answered (a traffic policy splits them).",
                                ["version"], registry=r)
        self.compared = Counter("vgg_mobile_compared_images", "Images of live traffic run on "
                                "two versions: the one that answered (or the shadow) and the "
                                "reference (stable).", ["version", "reference"], registry=r)
        self.agreed = Counter("vgg_mobile_agreed_images", "Compared images whose top-1 class "
                              "the two versions agree on.", ["version", "reference"],
                              registry=r)
        self.agreement = Gauge("vgg_mobile_agreement", "Top-1 agreement of the two versions "
                               "over their last 500 compared images.", ["version", "reference"],
                               registry=r)
        self.comparisons_skipped = Counter("vgg_mobile_comparisons_skipped", "Comparisons not "
                                           "run because too many were waiting.", registry=r)
        self.feedback = Counter("vgg_mobile_feedback_images", "Images whose true class came "
                                "back (POST /feedback), by the version that answered and "
                                "whether its top-1 class was right.", ["version", "correct"],
                                registry=r)
        self.accuracy = Gauge("vgg_mobile_feedback_accuracy", "Top-1 accuracy of a version on "
                              "its last labelled images (the rollback window, 200 by default).",
                              ["version"], registry=r)
        self.drift_psi = Gauge("vgg_mobile_drift_psi", "Population stability index of a "
                               "statistic of the images (or answers) of a version over its "
                               "drift window, against its export's held-out images; set once "
                               "the window is full.", ["version", "statistic"], registry=r)
        self.drift_images = Gauge("vgg_mobile_drift_window_images", "Images in a version's "
                                  "drift window (the PSI is reported once it is full).",
                                  ["version"], registry=r)
        # Every result starts at 0: Prometheus's increase() cannot see a series' first value,
        # so an alert on the first automatic rollback (or refused version) would never fire.
        for result in ("ok", "unchanged", "refused", "failed"):
            self.loads.labels(result=result)
        for result in ("ok", "refused", "automatic"):
            self.rollbacks.labels(result=result)
        # Registered by `watch_drift`: with the watch off, an unset gauge would read 0.
        self.drift_threshold: Gauge | None = None
        self.drift_warnings = Counter("vgg_mobile_drift_warnings", "Drift warnings logged: a "
                                      "statistic's PSI crossed the threshold.",
                                      ["version", "statistic"], registry=r)
        self.reference_accuracy = Gauge("vgg_mobile_model_reference_accuracy", "Accuracy "
                                        "of a version serving on its export's held-out "
                                        "images, as its export verified it (what "
                                        "vgg_mobile_feedback_accuracy is held to).",
                                        ["version"], registry=r)
        self.model_info = Gauge("vgg_mobile_model_info", "The model serving now (value 1).",
                                ["name", "version", "sha256", "format", "flavour"], registry=r)
        # Registered on the first version number: a single model has none, and an unset
        # gauge would read 0.
        self.model_version: Gauge | None = None

    def serving(self, model, version: int | None = None) -> None:
        """Points the model gauge at `model`, the only one with value 1, and the version gauge
        at `version`, a model repository's version number (`None` for a file or export
        folder)."""
        self.model_info.clear()
        self.model_info.labels(name=model.name, version=model.version, sha256=model.sha256,
                               format=model.format, flavour=model.flavour or "").set(1)
        if version is not None:
            if self.model_version is None:
                self.model_version = Gauge("vgg_mobile_model_version", "The version number "
                                           "serving now (a model repository's folder).",
                                           registry=self.registry)
            self.model_version.set(version)

    def watch_drift(self, threshold: float) -> None:
        """Registers and sets the drift threshold gauge (the watch is on)."""
        if self.drift_threshold is None:
            self.drift_threshold = Gauge("vgg_mobile_drift_threshold", "The PSI over which a "
                                         "statistic's drift is warned about "
                                         "(--drift-threshold).", registry=self.registry)
        self.drift_threshold.set(threshold)

    def render(self) -> bytes:
        return generate_latest(self.registry)
