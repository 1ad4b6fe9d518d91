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


def _request(address, image: bytes, path: str = "/predict") -> bytes:
    """One keep-alive HTTP/1.1 POST of `image`, as bytes sent as they are."""
    return (f"POST {path} HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(image)}\r\n"
            "\r\n").encode() + image


async def _exchange(reader, writer, request: bytes) -> tuple[int, bytes]:
    """Sends one request and reads its answer: `(status, body)`."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines
                   if line.lower().startswith("content-length:")), 0)
    return int(lines[0].split()[1]), await reader.readexactly(length)


async def _clients(address, request: bytes, clients: int, seconds: float) -> dict:
    """`clients` keep-alive connections, each sending `request` as soon as the last answer
    came, for `seconds`: the latency of every answer and the failures."""
    import asyncio

    latencies: list[float] = []
    errors = [0]
    stop = time.perf_counter() + seconds

    async def client():
        reader, writer = await asyncio.open_connection(*address)
        while time.perf_counter() < stop:
            began = time.perf_counter()
            try:
                status, body = await _exchange(reader, writer, request)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors[0] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(*address)
                continue
            if status == 200 and b'"predictions"' in body:
                latencies.append(time.perf_counter() - began)
            else:
                errors[0] += 1
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    all_ms = np.array(latencies) * 1000
    return {"requests": int(all_ms.size), "errors": errors[0],
            "throughput": all_ms.size / elapsed if elapsed else 0.0,
            "p50_ms": float(np.percentile(all_ms, 50)) if all_ms.size else float("nan"),
            "p99_ms": float(np.percentile(all_ms, 99)) if all_ms.size else float("nan")}


def _client_process(address, request: bytes, clients: int, seconds: float, answer) -> None:
    import asyncio

    answer.send(asyncio.run(_clients(address, request, clients, seconds)))


def load_test(address, image: bytes, clients: int, seconds: float) -> dict:
    """`clients` connections posting `image` for `seconds`, from a process of their own
    (asyncio over raw sockets: a client costs the machine little of what the server could
    use): latencies and failures."""
    import asyncio
    import multiprocessing

    request = _request(address, image)
    warm = asyncio.run(_clients(address, request, 1, 0.5))
    if warm["errors"] or not warm["requests"]:
        raise SystemExit(f"warm-up requests to {address} failed")
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_client_process,
                              args=(address, request, clients, seconds, send))
    process.start()
    result = receive.recv()
    process.join()
    return result


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
    parser.add_argument("--image", type=Path, default=None,
                        help="The image every request posts (default: the export's data).")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients must be >= 1 and --seconds > 0")
    if not (args.export / "manifest.json").is_file():
        parser.error(f"{args.export}: not an export folder (no manifest.json)")
    backends = available(args.export, tuple(args.backends))
    if not backends:
        parser.error(f"{args.export}: holds none of {', '.join(args.backends)}")
    image, source = (args.image.read_bytes(), str(args.image)) if args.image else request_image(args.export)
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
