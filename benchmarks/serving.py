"""`vgg-mobile serve-model` under load on loopback, one server per backend, as a Markdown table.

    uv run python benchmarks/serving.py EXPORT [--clients 16] [--seconds 20] [--backends ...]

EXPORT is an export folder from `vgg-mobile convert RUN --onnx` (without `--onnx`, only the
LiteRT rows run). For each backend (`tflite:int8`, `onnx:int8`, `onnx:float32` by default,
those the folder has) it starts a real `vgg-mobile serve-model` process on a free loopback
port, sends a few warm-up requests, then runs `--clients` client threads for `--seconds`,
each posting one image at a time over its own keep-alive connection, and reports requests,
throughput, p50/p99 latency and errors. Beside each row: the single-image latency of the
model alone in its runtime (`vgg_mobile.runtimes`, `Runtime.latency_ms`) measured in the same
run, so the table shows what HTTP, decoding and resizing add.

The image is the first file of the export's verification data folder (its manifest's
`data.path`), or a generated PNG of the model's input size if that folder is gone. The clients
run in this process and share the machine with the server: on a 2-core machine they take part
of the CPU the server would otherwise have. Exit code 1 if any request failed.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from vgg_mobile.cli.common import served_address
from vgg_mobile.core import processes

BACKENDS = ("tflite:int8", "onnx:int8", "onnx:float32")
CLIENTS = 16
SECONDS = 20.0
WARMUP_REQUESTS = 20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _manifest(export: Path) -> dict:
    return json.loads((export / "manifest.json").read_text(encoding="utf-8"))


def available(export: Path, wanted: tuple[str, ...]) -> list[tuple[str, str, Path]]:
    """`(format, flavour, file)` of each wanted backend that the export folder holds."""
    have = {(a.get("format"), a.get("flavour")): export / a["file"]
            for a in _manifest(export).get("artifacts", []) if isinstance(a, dict)}
    found = []
    for name in wanted:
        fmt, _, flavour = name.partition(":")
        if (fmt, flavour) in have:
            found.append((fmt, flavour, have[(fmt, flavour)]))
    return found


def request_image(export: Path) -> tuple[bytes, str]:
    """The image every client posts: a real one from the data folder if it is there."""
    data = Path((_manifest(export).get("data") or {}).get("path") or "/nonexistent")
    if data.is_dir():
        for path in sorted(data.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                return path.read_bytes(), str(path)
    from PIL import Image

    side = int(_manifest(export)["input"]["size"][0])
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), f"generated {side}x{side} PNG"


def interpreter_ms(fmt: str, path: Path, image: bytes, threads: int) -> float:
    """Median ms of one single-image run of the model alone, on the preprocessed image."""
    from vgg_mobile.data.dataset import resize_pixels
    from vgg_mobile.data.images import decode_rgb

    side = int(_manifest(path.parent)["input"]["size"][0])
    pixels = resize_pixels(decode_rgb(image), side).numpy().astype(np.float32)
    from vgg_mobile import runtimes

    return runtimes.load(path, fmt, threads).latency_ms(pixels)


class Server:
    """A `vgg-mobile serve-model` process on a free loopback port."""

    def __init__(self, export: Path, fmt: str, flavour: str, threads: int, concurrency: int | None):
        command = [sys.executable, "-m", "vgg_mobile", "serve-model", str(export), "--format", fmt,
                   "--flavour", flavour, "--port", "0", "--threads", str(threads), "--no-access-log"]
        if concurrency:
            command += ["--concurrency", str(concurrency)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        line = self.process.stdout.readline()
        self.address = served_address(line)
        if self.address is None:
            self.process.kill()
            raise SystemExit(f"serve-model did not start: {line}{self.process.stderr.read()[-2000:]}")
        # Read stderr as it comes, so a chatty server never blocks on a full pipe.
        self._drain = threading.Thread(target=self.process.stderr.read, daemon=True)
        self._drain.start()

    def stop(self) -> None:
        processes.stop(self.process)


def _post(connection, image: bytes) -> int:
    connection.request("POST", "/predict", body=image,
                       headers={"content-type": "application/octet-stream"})
    response = connection.getresponse()
    body = response.read()
    if response.status == 200 and not json.loads(body).get("predictions"):
        return -1
    return response.status


def load_test(address, image: bytes, clients: int, seconds: float) -> dict:
    """`clients` threads posting `image` for `seconds`: latencies and failures."""
    for _ in range(WARMUP_REQUESTS):
        connection = http.client.HTTPConnection(*address, timeout=60)
        if _post(connection, image) != 200:
            raise SystemExit(f"warm-up request to {address} failed")
        connection.close()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int):
        connection = http.client.HTTPConnection(*address, timeout=60)
        start.wait()
        while time.perf_counter() < deadline[0]:
            began = time.perf_counter()
            try:
                ok = _post(connection, image) == 200
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection(*address, timeout=60)
            if ok:
                latencies[index].append(time.perf_counter() - began)
            else:
                errors[index] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    all_ms = np.array([t for per in latencies for t in per]) * 1000
    return {"requests": int(all_ms.size), "errors": int(sum(errors)),
            "throughput": all_ms.size / elapsed if elapsed else 0.0,
            "p50_ms": float(np.percentile(all_ms, 50)) if all_ms.size else float("nan"),
            "p99_ms": float(np.percentile(all_ms, 99)) if all_ms.size else float("nan")}


def table(rows: list[dict], clients: int, seconds: float) -> str:
    lines = [f"{clients} concurrent clients for {seconds:g} s on loopback, one image per request",
             "", "| backend | requests | throughput (req/s) | p50 latency (ms) | p99 latency (ms) "
             "| errors | interpreter alone (ms/image) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['requests']} | {r['throughput']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
                     f"{r['interpreter_ms']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path, help="An export folder from `vgg-mobile convert`.")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="Concurrent clients.")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="Load time per backend.")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS),
                        help="format:flavour of each server to measure.")
    parser.add_argument("--threads", type=int, default=1, help="serve-model --threads.")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="serve-model --concurrency (default: its own, the CPU count).")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients must be >= 1 and --seconds > 0")
    if not (args.export / "manifest.json").is_file():
        parser.error(f"{args.export}: not an export folder (no manifest.json)")
    backends = available(args.export, tuple(args.backends))
    if not backends:
        parser.error(f"{args.export}: holds none of {', '.join(args.backends)}")
    image, source = request_image(args.export)
    rows = []
    for fmt, flavour, path in backends:
        server = Server(args.export, fmt, flavour, args.threads, args.concurrency)
        try:
            result = load_test(server.address, image, args.clients, args.seconds)
        finally:
            server.stop()
        result["interpreter_ms"] = interpreter_ms(fmt, path, image, args.threads)
        result["backend"] = f"{'LiteRT' if fmt == 'tflite' else 'ONNX Runtime'} {flavour} ({path.name})"
        rows.append(result)
        print(f"{result['backend']}: {result['requests']} requests, {result['errors']} errors",
              file=sys.stderr)
    print(table(rows, args.clients, args.seconds))
    print(f"\nimage: {source} ({len(image):,} bytes); machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; serve-model --threads "
          f"{args.threads}" + (f" --concurrency {args.concurrency}" if args.concurrency else ""))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
