"""Ready monitoring for `vgg-mobile serve-model`: Prometheus alert rules, a Grafana dashboard,
and a Prometheus configuration that scrapes the service and loads the rules.

`alerts.yml` and `dashboard.json` ship beside this module; `write_monitoring` (the
`vgg-mobile monitoring` command) copies them into a folder with a `prometheus.yml` for the
given scrape targets, so that `prometheus --config.file=FOLDER/prometheus.yml` runs as is.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from vgg_mobile.core.errors import BadInputError, clip
from vgg_mobile.core.io import write_json, write_text
from vgg_mobile.core.outputs import MANIFEST, claim_output, marker

FILES = ("alerts.yml", "dashboard.json")
CONFIG = "prometheus.yml"
JOB = "vgg-mobile"
# HOST:PORT, HOST a name, an IPv4 address or a bracketed IPv6 one: nothing that could end a
# YAML string or add a key.
_TARGET = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\]):"
                     r"(?:[0-9]{1,5})")
_DURATION = re.compile(r"[1-9][0-9]{0,4}(?:ms|s|m|h)")


def shipped(name: str) -> str:
    """The text of a shipped file (`FILES`)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def prometheus_config(targets: list[str], interval: str = "15s") -> str:
    """A `prometheus.yml` scraping `targets` (`HOST:PORT` of each serve-model replica) as job
    `vgg-mobile` every `interval`, with `alerts.yml` beside it as its rule file.

    Raises:
        BadInputError: A target that is not `HOST:PORT` (port 1 to 65535), or an interval
            that is not a Prometheus duration such as `15s`.
    """
    if not targets:
        raise BadInputError("give at least one --target HOST:PORT to scrape")
    for target in targets:
        if not _TARGET.fullmatch(target) or not 0 < int(target.rsplit(":", 1)[1]) < 65536:
            raise BadInputError(f"--target {clip(repr(target), 80)}: not HOST:PORT of a "
                                "serve-model replica (for example 127.0.0.1:8500)")
    if not _DURATION.fullmatch(interval):
        raise BadInputError(f"--scrape-interval {clip(repr(interval), 40)}: not a duration "
                            "such as 15s, 1m or 500ms")
    # JSON strings are YAML strings: no quoting of our own.
    return (f"# Written by `vgg-mobile monitoring`: scrapes vgg-mobile serve-model and loads its "
            f"alert rules.\n"
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            f"rule_files:\n  - {FILES[0]}\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: {json.dumps(targets)}\n")


def write_monitoring(out: str | Path, targets: list[str], interval: str = "15s",
                     force: bool = False) -> Path:
    """Writes `prometheus.yml`, `alerts.yml` and `dashboard.json` into `out`, atomically.

    Args:
        out: The folder to create; replaced only with `force`, and only if this command
            wrote it.
        targets: `HOST:PORT` of each replica to scrape.
        interval: The scrape and rule evaluation interval. Defaults to `"15s"`.
        force: Replace a folder this command wrote before. Defaults to `False`.

    Returns:
        The folder.

    Raises:
        BadInputError: A bad target or interval, or a folder that may not be written.
    """
    config = prometheus_config(targets, interval)
    with claim_output(out, ("monitoring",), force=force, staged=True) as output:
        write_text(output.path / CONFIG, config)
        for name in FILES:
            write_text(output.path / name, shipped(name))
        write_json(output.path / MANIFEST, marker("monitoring", "monitoring",
                                                  targets=targets, interval=interval))
    return Path(out)
