"""Latency measurement shared by the benchmark harness and the converters."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_ms(call: Callable[[], object], repeats: int = 50, warmup: int = 3) -> float:
    """Median wall time of `call()` in milliseconds over `repeats` runs after `warmup` runs.

    The median, not the mean: on a shared machine a few runs land behind other work, and
    they should not move the number.

    Raises:
        ValueError: `repeats` is below 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1. Received: repeats={repeats}")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
