"""`vgg-mobile serve-model`: an exported classifier behind HTTP."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import click

from vgg_mobile.cli.common import COUNT, default, log
from vgg_mobile.serving.app import ServeConfig

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
SECONDS = click.FloatRange(min=0, min_open=True, max=86400)
POLL_SECONDS = click.FloatRange(min=0, max=86400)


def _size(ctx, param, value):
    from vgg_mobile.converters.convert import parse_size
    from vgg_mobile.core.errors import BadInputError

    try:
        size = parse_size(value)
    except BadInputError as err:
        raise click.BadParameter(str(err)) from None
    if not size:
        raise click.BadParameter(f"must be a size above 0 (e.g. 16MiB). Received: {value}")
    return size


def _check_free(host: str, port: int) -> None:
    """Refuses a port that something answers on, or that cannot be bound: the workers'
    shared sockets (`SO_REUSEPORT`) would otherwise share it with another server of this
    user without a word."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((host, port)) == 0:
            raise click.ClickException(f"cannot listen on {host}:{port} (a server already "
                                       "answers there)")
    from vgg_mobile.serving.server import reuse_port_socket

    try:
        reuse_port_socket(host, port).close()
    except OSError as err:
        raise click.ClickException(f"cannot listen on {host}:{port} ({err.strerror or err})")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` (0 picks a free port), IPv6 too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as err:
        raise click.ClickException(f"cannot listen on {host}:{port} ({err.strerror or err})")


def _reload_on_hangup(service) -> None:
    """SIGHUP reloads the model, as `POST /admin/reload` does, in a thread of its own."""

    def reload():
        from vgg_mobile.serving.app import Refusal

        try:
            result = service.reload()
        except Refusal as err:
            log(f"SIGHUP reload: {err.detail}")
            return
        state = "now serving" if result["changed"] else "unchanged, still serving"
        log(f"SIGHUP reload: {state} version {result['model']['version']} "
            f"(sha256 {result['model']['sha256'][:12]})")

    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload, daemon=True).start())


def _policy_flags(policy, **flags) -> dict | None:
    """The traffic flags given (checked now: a bad one stops here, exit 2), or `None`."""
    from vgg_mobile.serving.traffic import policy_from_flags

    given = {name: value for name, value in flags.items() if value is not None}
    if not given:
        return None
    if policy is not None:
        raise click.UsageError("--policy and the traffic flags (--stable, --canary, --ab, "
                               "--shadow, --client-header) do not go together: use one")
    policy_from_flags(given)
    return given


@click.command("serve-model")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--format", "format_", type=click.Choice(["tflite", "onnx"]), default=None,
              help="Which model of an export folder: tflite (the default) or onnx.")
@click.option("--flavour", default=None,
              help="The artifact's flavour in the export folder (e.g. int8, float32); default "
                   "int8 if there is one.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback lets other machines send requests.")
@click.option("--port", default=8500, show_default=True, type=click.IntRange(0, 65535),
              help="0 picks a free port (one worker only); the address is printed.")
@click.option("--threads", default=default(ServeConfig, "threads"), show_default=True, type=COUNT,
              help="Threads inside each interpreter (LiteRT) or session (ONNX Runtime).")
@click.option("--concurrency", default=None, type=COUNT,
              help="Inferences run at once per process, each on its own interpreter. "
                   "[default: the number of CPUs]")
@click.option("--workers", default=1, show_default=True, type=COUNT,
              help="Worker processes, each on a socket of its own on the port (the kernel spreads "
                   "connections over them). Each holds its own model and metrics and is reloaded "
                   "on its own (SIGHUP replaces them one by one). See docs/serving.md.")
@click.option("--max-upload-bytes", default=str(default(ServeConfig, "max_upload_bytes")),
              show_default=True, callback=_size,
              help="Larger request bodies are refused (413) while they are read (bytes, or "
                   "e.g. 16MiB).")
@click.option("--max-images", default=default(ServeConfig, "max_images"), show_default=True, type=COUNT,
              help="Images one request may hold.")
@click.option("--max-pixels", default=default(ServeConfig, "max_pixels"), show_default=True, type=COUNT,
              help="Images with more pixels are refused (413) before decoding.")
@click.option("--max-request-pixels", default=default(ServeConfig, "max_request_pixels"),
              show_default=True, type=COUNT,
              help="Requests whose images add up to more pixels are refused (413) before any "
                   "is decoded.")
@click.option("--max-decode-memory", default=str(default(ServeConfig, "max_decode_memory")),
              show_default=True, callback=_size,
              help="Memory the images being decoded at once may take, estimated from their "
                   "headers (bytes, or e.g. 768MiB): past it a request waits briefly, then "
                   "gets 503 with Retry-After; a single image needing more gets 413.")
@click.option("--header-timeout", default=default(ServeConfig, "header_timeout"),
              show_default=True, type=SECONDS,
              help="Seconds a connection has to send a whole request head (from when it opens "
                   "or was last answered) before it is closed.")
@click.option("--body-timeout", default=default(ServeConfig, "body_timeout"),
              show_default=True, type=SECONDS,
              help="Seconds a request has to send its whole body before its connection is "
                   "closed.")
@click.option("--top-k", default=default(ServeConfig, "top_k"), show_default=True, type=COUNT,
              help="Predictions per image when the request has no ?top_k=.")
@click.option("--admin-token", envvar="VGG_MOBILE_ADMIN_TOKEN", default=None,
              help="Admin endpoints need 'Authorization: Bearer TOKEN' (also read from "
                   "$VGG_MOBILE_ADMIN_TOKEN). Without it they answer only loopback clients.")
@click.option("--poll-seconds", default=default(ServeConfig, "poll_seconds"), show_default=True,
              type=POLL_SECONDS,
              help="How often a model repository is looked at for new version folders; 0: "
                   "only on POST /admin/reload or SIGHUP.")
@click.option("--policy", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None,
              help="A traffic policy (TOML) over the versions of a model repository: a canary "
                   "share, an A/B split sticky per client header, or a shadow whose answers "
                   "are only compared. See docs/serving.md.")
@click.option("--stable", default=None, type=click.IntRange(min=0),
              help="A traffic policy from flags instead of --policy: the version that answers "
                   "by default, with one of --canary, --ab and --shadow.")
@click.option("--canary", default=None, metavar="VERSION:SHARE",
              help="With --stable: version VERSION answers SHARE of the requests (2:0.1).")
@click.option("--ab", default=None, metavar="VERSION:SHARE,...",
              help="With --stable and --client-header: an A/B split (1:0.5,2:0.5).")
@click.option("--shadow", default=None, type=click.IntRange(min=0),
              help="With --stable: this version runs every request too; only its agreement "
                   "with stable is counted.")
@click.option("--client-header", default=None,
              help="The request header whose value keeps a client on one side of --canary or "
                   "--ab (e.g. X-Client-Id).")
@click.option("--feedback-memory", default=default(ServeConfig, "feedback_memory"),
              show_default=True, type=COUNT,
              help="Answers remembered for POST /feedback (about 300 bytes each); feedback "
                   "for an older one is refused (404).")
@click.option("--drift-window", default=default(ServeConfig, "drift_window"),
              show_default=True, type=click.IntRange(min=0),
              help="Images in each version's rolling drift window: once full, the PSI of each "
                   "statistic against the export's held-out images is a gauge; 0 turns the "
                   "drift watch off.")
@click.option("--drift-threshold", default=default(ServeConfig, "drift_threshold"),
              show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="A statistic whose PSI rises above this is logged as a warning (0.1: a "
                   "small shift; 0.25: a large one).")
@click.option("--drift-rate", default=default(ServeConfig, "drift_rate"), show_default=True,
              type=click.FloatRange(min=0),
              help="Images a second each version's drift watch counts at most; beyond it "
                   "requests are sampled, so its cost stays bounded under load. 0: every image.")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log one line per request.")
def serve_model_cmd(artifact, format_, flavour, host, port, threads, concurrency, workers,
                    max_upload_bytes, max_images, max_pixels, max_request_pixels,
                    max_decode_memory, header_timeout, body_timeout, top_k, admin_token,
                    poll_seconds, policy, stable, canary, ab, shadow, client_header,
                    feedback_memory, drift_window, drift_threshold, drift_rate, access_log):
    """Serve predictions of an exported model over HTTP.

    ARTIFACT is a .tflite or .onnx file, an export folder from `vgg-mobile convert`, a
    pipeline output folder (its export/), or a model repository: a folder of numbered export
    folders (1/, 2/, ...), whose newest valid version serves and whose new versions are
    picked up without a restart. POST /admin/reload (or SIGHUP) reads ARTIFACT again and
    swaps the new model in once it passed its check; POST /admin/rollback returns to the
    previous one. See docs/serving.md.
    """
    import uvicorn

    from vgg_mobile.serving.app import CONFIG_ENV, ModelService, create_app
    from vgg_mobile.serving.metrics import ServingMetrics
    from vgg_mobile.serving.models import ModelChoice
    from vgg_mobile.serving.server import (Server, raise_open_file_limit, show_service_log,
                                           uvicorn_config)

    config = ServeConfig(artifact=artifact, choice=ModelChoice(format_, flavour), threads=threads,
                         concurrency=concurrency or os.cpu_count() or 1,
                         max_upload_bytes=max_upload_bytes, max_images=max_images,
                         max_pixels=max_pixels, max_request_pixels=max_request_pixels,
                         max_decode_memory=max_decode_memory, header_timeout=header_timeout,
                         body_timeout=body_timeout, top_k=top_k, admin_token=admin_token,
                         poll_seconds=poll_seconds, policy=policy,
                         policy_flags=_policy_flags(policy, stable=stable, canary=canary, ab=ab,
                                                    shadow=shadow, client_header=client_header),
                         feedback_memory=feedback_memory, drift_window=drift_window,
                         drift_threshold=drift_threshold, drift_rate=drift_rate)
    show_service_log()
    # Each connection holds a descriptor; the soft limit (often 1,024) is the first to go.
    raise_open_file_limit()
    if host not in _LOOPBACK:
        log(f"warning: listening on {host}: other machines can send requests"
            + ("" if admin_token else "; admin endpoints still answer only this machine "
               "(set --admin-token to manage it from elsewhere)"))
    if workers > 1:
        if port == 0:
            raise click.BadParameter("--port 0 needs --workers 1", param_hint="--port")
        from vgg_mobile.serving.server import LOOP, Workers

        _check_free(host, port)
        # Checked here once, so a bad ARTIFACT stops with its message before any worker starts.
        model = ModelService(dataclasses.replace(config, concurrency=1), ServingMetrics()).current
        os.environ[CONFIG_ENV] = config.to_json()
        uvicorn_config = uvicorn.Config(
            "vgg_mobile.serving.app:app_from_environment", factory=True, host=host, port=port,
            workers=workers, access_log=access_log, log_level="info", loop=LOOP,
            http="vgg_mobile.serving.server:protocol_from_environment")
        # Printed once the workers answer: a client may connect as soon as it reads it.
        ready = functools.partial(
            click.echo, f"serving {model.path} ({model.format}, version {model.version}) at "
            f"http://{host}:{port}/ with {workers} worker processes (Ctrl+C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            Workers(uvicorn_config, host, port, ready).run()
        return
    app = create_app(config)
    model = app.state.service.current
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving {model.path} ({model.format}, version {model.version}, sha256 "
               f"{model.sha256[:12]}) at http://{shown}:{bound_port}/ (Ctrl+C to stop)")
    _reload_on_hangup(app.state.service)
    server = Server(uvicorn_config(app, config.header_timeout, config.body_timeout,
                                   access_log=access_log, log_level="info",
                                   timeout_graceful_shutdown=10))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


# The admin request of each `serve-admin` action: method and path.
ADMIN_ACTIONS = {"reload": ("POST", "/admin/reload"), "rollback": ("POST", "/admin/rollback"),
                 "status": ("GET", "/model")}


@click.command("serve-admin")
@click.argument("action", type=click.Choice(sorted(ADMIN_ACTIONS)))
@click.option("--url", default="http://127.0.0.1:8500", show_default=True,
              help="The running serve-model.")
@click.option("--admin-token", envvar="VGG_MOBILE_ADMIN_TOKEN", default=None,
              help="Its --admin-token (sent as a bearer token); none: ask from this machine.")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for the answer (a reload loads a model).")
def serve_admin_cmd(action, url, admin_token, timeout):
    """Ask a running serve-model to reload, roll back, or say what it serves.

    reload: POST /admin/reload. rollback: POST /admin/rollback (ends a traffic policy, or
    serves the previous model again). status: GET /model. The answer is printed as JSON;
    the exit code is 1 when the service refuses (its reason on stderr) or cannot be reached.
    """
    import urllib.error
    import urllib.request

    method, path = ADMIN_ACTIONS[action]
    request = urllib.request.Request(url.rstrip("/") + path, method=method, headers={
        "accept": "application/json",
        **({"authorization": f"Bearer {admin_token}"} if admin_token else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = answer.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")
        try:
            refusal = json.loads(detail)
            detail = f"{refusal['error']}: {refusal['detail']}"
        except (ValueError, KeyError, TypeError):
            detail = " ".join(detail.split())[:300]
        log(f"error: {url} refused the {action} ({err.code}): {detail}")
        sys.exit(1)
    except (urllib.error.URLError, OSError) as err:
        log(f"error: cannot reach {url}: {getattr(err, 'reason', None) or err}")
        sys.exit(1)
    click.echo(json.dumps(json.loads(body), indent=2))


@click.command("monitoring")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--target", "targets", multiple=True, default=("127.0.0.1:8500",),
              show_default=True,
              help="HOST:PORT of a serve-model replica to scrape; repeat for each replica.")
@click.option("--scrape-interval", default="15s", show_default=True,
              help="How often Prometheus scrapes the replicas and evaluates the rules.")
@click.option("--force", is_flag=True,
              help="Replace OUT if this command wrote it (no other folder is ever replaced).")
def monitoring_cmd(out, targets, scrape_interval, force):
    """Write Prometheus and Grafana files for serve-model into OUT.

    OUT/prometheus.yml scrapes the targets and loads OUT/alerts.yml (service down, server
    errors, p99 latency, drift, accuracy drop on labelled feedback, low agreement under a
    traffic policy, automatic rollbacks, refused versions); OUT/dashboard.json is a Grafana
    dashboard to import. Run `prometheus --config.file=OUT/prometheus.yml`. See
    docs/serving.md.
    """
    from vgg_mobile.serving.monitoring import CONFIG, FILES, write_monitoring

    folder = write_monitoring(out, list(targets), scrape_interval, force)
    for name in (CONFIG, *FILES):
        click.echo(folder / name)
