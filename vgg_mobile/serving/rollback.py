"""Automatic rollback of a traffic policy, and the labelled feedback that can trigger it.

A policy's `[rollback]` section sets thresholds on the version it tries out (the canary, the
A/B versions other than stable, the shadow):

    [rollback]
    window = 200             # the candidate's last 200 requests (and feedback) are judged
    min_requests = 50        # nothing is judged on fewer
    max_error_rate = 0.05    # requests the candidate failed (a 500), of those it answered
    max_p99_ms = 250         # its p99 time to classify a request
    min_agreement = 0.9      # top-1 agreement with stable on live traffic
    max_accuracy_drop = 5    # points of accuracy under stable's, from labelled feedback

`Judge` keeps those windows per version and says which threshold is crossed; the service then
ends the policy (`ModelService.rollback_automatically`). `Feedback` remembers which version
answered each recent request, by its `request_id`, for `POST /feedback`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading

from vgg_mobile.core.errors import BadInputError, clip

RULE_KEYS = ("window", "min_requests", "max_error_rate", "max_p99_ms", "min_agreement",
             "max_accuracy_drop")


@dataclasses.dataclass(frozen=True)
class Rules:
    """The thresholds of `[rollback]`; a `None` threshold is not checked."""

    window: int = 200
    min_requests: int = 50
    max_error_rate: float | None = None
    max_p99_ms: float | None = None
    min_agreement: float | None = None
    max_accuracy_drop: float | None = None

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def build_rules(table, where: str) -> Rules:
    """`Rules` from the `[rollback]` table of a policy file.

    Raises:
        BadInputError: An unknown key or a value out of range, named with its value.
    """
    def fail(key, value, why):
        return BadInputError(f"{where}: rollback.{key} = {clip(repr(value), 80)}: {why}")

    if not isinstance(table, dict):
        raise BadInputError(f"{where}: rollback = {clip(repr(table), 80)}: must be a table "
                            "([rollback])")
    values = {}
    for key, value in table.items():
        if key not in RULE_KEYS:
            raise fail(key, value, "unknown key; the keys are " + ", ".join(sorted(RULE_KEYS)))
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if key in ("window", "min_requests"):
            if not number or not isinstance(value, int) or value < 1:
                raise fail(key, value, "a whole number >= 1")
        elif not number or not math.isfinite(value) or value < 0:
            raise fail(key, value, "a number >= 0")
        elif key in ("max_error_rate", "min_agreement") and value > 1:
            raise fail(key, value, "a fraction, from 0 to 1")
        values[key] = value
    rules = Rules(**values)
    if rules.min_requests > rules.window:
        raise fail("min_requests", rules.min_requests, f"more than the window "
                   f"({rules.window}) holds")
    return rules


class Judge:
    """Rolling windows of each version's requests (failed or not, time to classify) and of
    its labelled feedback (right or not); `verdict` names a crossed threshold."""

    def __init__(self, rules: Rules, stable: str):
        self.rules, self.stable = rules, stable
        self._lock = threading.Lock()
        self._requests: dict[str, collections.deque] = {}
        self._feedback: dict[str, collections.deque] = {}

    def _window(self, store: dict, version: str) -> collections.deque:
        return store.setdefault(version, collections.deque(maxlen=self.rules.window))

    def request(self, version: str, failed: bool, seconds: float) -> None:
        with self._lock:
            self._window(self._requests, version).append((failed, seconds))

    def feedback(self, version: str, correct: bool) -> None:
        with self._lock:
            self._window(self._feedback, version).append(correct)

    def accuracy(self, version: str) -> tuple[float, int] | None:
        """`(accuracy, labelled requests)` over the window, or `None` without feedback."""
        with self._lock:
            labels = list(self._feedback.get(version, ()))
        return (sum(labels) / len(labels), len(labels)) if labels else None

    def verdict(self, version: str, agreement: float | None = None,
                compared: int = 0) -> str | None:
        """Why `version` must be rolled back, or `None`: the first threshold it crosses,
        with the value, judged only on at least `min_requests` of its events."""
        rules = self.rules
        with self._lock:
            requests = list(self._requests.get(version, ()))
        if len(requests) >= rules.min_requests:
            if rules.max_error_rate is not None:
                rate = sum(failed for failed, _ in requests) / len(requests)
                if rate > rules.max_error_rate:
                    return (f"error rate {rate:.1%} over its last {len(requests)} requests, "
                            f"above max_error_rate {rules.max_error_rate:g}")
            answered = sorted(seconds for failed, seconds in requests if not failed)
            if rules.max_p99_ms is not None and answered:
                p99 = 1000 * answered[min(len(answered) - 1, math.ceil(0.99 * len(answered)) - 1)]
                if p99 > rules.max_p99_ms:
                    return (f"p99 {p99:.1f} ms over its last {len(requests)} requests, above "
                            f"max_p99_ms {rules.max_p99_ms:g}")
        if (rules.min_agreement is not None and agreement is not None
                and compared >= rules.min_requests and agreement < rules.min_agreement):
            return (f"agreement with version {self.stable} {agreement:.1%} over its last "
                    f"{compared} compared images, under min_agreement {rules.min_agreement:g}")
        if rules.max_accuracy_drop is not None:
            mine, theirs = self.accuracy(version), self.accuracy(self.stable)
            if (mine and theirs and mine[1] >= rules.min_requests
                    and theirs[1] >= rules.min_requests
                    and 100 * (theirs[0] - mine[0]) > rules.max_accuracy_drop):
                return (f"accuracy {mine[0]:.1%} on {mine[1]} labelled requests, "
                        f"{100 * (theirs[0] - mine[0]):.1f} points under version "
                        f"{self.stable}'s {theirs[0]:.1%} ({theirs[1]}), more than "
                        f"max_accuracy_drop {rules.max_accuracy_drop:g}")
        return None


@dataclasses.dataclass(slots=True)
class Answered:
    """What feedback needs of one answered request."""

    version: str
    labels: tuple[str, ...]  # the top-1 class of each image
    classes: tuple[str, ...]
    labelled: bool = False


class Feedback:
    """The versions and top-1 classes of the last `memory` answered requests, by request id:
    `POST /feedback` labels one of them once."""

    def __init__(self, memory: int):
        self.memory = memory
        self._lock = threading.Lock()
        self._answers: collections.OrderedDict[str, Answered] = collections.OrderedDict()

    def remember(self, request_id: str, answered: Answered) -> None:
        with self._lock:
            self._answers[request_id] = answered
            while len(self._answers) > self.memory:
                self._answers.popitem(last=False)

    def claim(self, request_id: str) -> Answered | None | bool:
        """The request's answer, marked labelled; `None` when unknown (or forgotten),
        `False` when it was labelled already."""
        with self._lock:
            answered = self._answers.get(request_id)
            if answered is None:
                return None
            if answered.labelled:
                return False
            answered.labelled = True
            return answered
