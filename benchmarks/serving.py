"""`vgg-mobile serve-model` under load on loopback, one server per backend, as a Markdown table.

    uv run python benchmarks/serving.py EXPORT [--clients 16] [--seconds 20] [--backends ...]
        [--workers 1 2] [--image FILE] [--baseline SOURCE_TREE]

EXPORT is an export folder from `vgg-mobile convert RUN --onnx` (without `--onnx`, only the
LiteRT rows run). For each backend (`tflite:int8`, `onnx:int8`, `onnx:float32` by default,
those the folder has) and each `--workers` count it starts a real `vgg-mobile serve-model`
process on a free loopback port. One client alone posts the image for 3 s (the single-image
latency); then `--clients` keep-alive connections post it for `--seconds`, each sending its
next request when the last answer came, and the table reports requests, throughput, p50/p99
latency, p99 over the single-image latency, errors, and the server's resident memory in the
first and the last third of the run. Beside each row: the single-image latency of the model
alone in its runtime (`vgg_mobile.runtimes`, `Runtime.latency_ms`), so the table shows what
HTTP, decoding and resizing add. With `--baseline`, each row is measured first against the
server of another source tree (a `git worktree` of an older commit), in the same run.

The image is `--image`, else the first file of the export's verification data folder (its
manifest's `data.path`), else a generated PNG of the model's input size. The clients are
asyncio coroutines over raw sockets in a process of their own; they share the machine with
the server (about a tenth of a core at 1,000 requests a second). Exit code 1 if any request
failed.
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
    from vgg_mobile.data.dataset import resize_array
    from vgg_mobile.data.images import decode_rgb

    side = int(_manifest(path.parent)["input"]["size"][0])
    pixels = resize_array(decode_rgb(image), side).astype(np.float32)
    from vgg_mobile import runtimes

    return runtimes.load(path, fmt, threads).latency_ms(pixels)


# `python -c` code that runs `vgg_mobile` from the source tree in its first argument: an
# editable install's import hook would otherwise find this checkout's whatever `sys.path` says;
# the tree's top-level `converters/` is installed as `vgg_mobile.converters`.
_FROM_TREE = ("import runpy, sys; tree = sys.argv.pop(1); sys.meta_path[:] = [f for f in "
              "sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]; "
              "sys.path.insert(0, tree); import vgg_mobile; vgg_mobile.__path__.append(tree); "
              "runpy.run_module('vgg_mobile', run_name='__main__', alter_sys=True)")


class Server:
    """A `vgg-mobile serve-model` process on a free loopback port, from this checkout or from
    another source tree (`source`: its `vgg_mobile` is imported first)."""

    def __init__(self, export: Path, fmt: str, flavour: str, threads: int, concurrency: int | None,
                 workers: int = 1, source: Path | None = None, flags: tuple[str, ...] = ()):
        port = _free_port() if workers > 1 else 0
        start = ["-m", "vgg_mobile"] if source is None else ["-c", _FROM_TREE, str(source)]
        command = [sys.executable, *start, "serve-model", str(export), "--format", fmt,
                   "--flavour", flavour, "--port", str(port), "--threads", str(threads),
                   "--no-access-log"]
        if concurrency:
            command += ["--concurrency", str(concurrency)]
        if workers > 1:
            command += ["--workers", str(workers)]
        command += list(flags)
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

    def rss_bytes(self) -> int:
        """Resident memory of the server and its worker processes."""
        return sum(_rss(pid) for pid in _process_tree(self.process.pid))

    def stop(self) -> None:
        processes.stop(self.process)


def _repository_of(export: Path) -> Path:
    """A model repository (in a temporary folder) holding `export` as versions 1 and 2."""
    import shutil
    import tempfile

    repository = Path(tempfile.mkdtemp(prefix="vgg-mobile-serving-")) / "models"
    for version in ("1", "2"):
        shutil.copytree(export, repository / version)
    return repository


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux `/proc`)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as children:
                queue += [int(child) for child in children.read().split()]
        except OSError:
            pass
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


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


def _wait_until_listening(address, timeout: float = 120.0) -> None:
    """Waits for the server to listen (an older `serve-model --workers` printed its address
    before its workers listened)."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(address, timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on {address} after {timeout:g} s") from None
            time.sleep(0.2)


def load_test(address, image: bytes, clients: int, seconds: float, rss=None) -> dict:
    """`clients` connections posting `image` for `seconds`, from a process of their own
    (asyncio over raw sockets: a client costs the machine little of what the server could
    use): latencies and failures; with `rss` (a function giving the server's resident bytes),
    its mean over the first and the last third of the run."""
    import asyncio
    import multiprocessing

    request = _request(address, image)
    _wait_until_listening(address)
    warm = asyncio.run(_clients(address, request, 1, 0.5))
    if warm["errors"] or not warm["requests"]:
        raise SystemExit(f"warm-up requests to {address} failed")
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_client_process,
                              args=(address, request, clients, seconds, send))
    began = time.perf_counter()
    process.start()
    samples = []
    while rss is not None and not receive.poll(1.0):
        samples.append((time.perf_counter() - began, rss()))
    result = receive.recv()
    process.join()
    if samples:
        third = seconds / 3
        first = [value for at, value in samples if at <= third]
        last = [value for at, value in samples if at >= seconds - third]
        result["rss_first_mb"] = float(np.mean(first or [samples[0][1]])) / 2**20
        result["rss_last_mb"] = float(np.mean(last or [samples[-1][1]])) / 2**20
    return result


def table(rows: list[dict], clients: int, seconds: float) -> str:
    lines = [f"{clients} concurrent clients for {seconds:g} s on loopback, one image per request; "
             "single: one client alone, the same image, for 3 s; memory: the server's resident "
             "set (all its processes), mean of the first and of the last third of the run",
             "", "| backend | server | requests | throughput (req/s) | p50 latency (ms) "
             "| p99 latency (ms) | errors | single p50 (ms) | p99 / single | memory MiB "
             "(first -> last) | interpreter alone (ms/image) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['server']} | {r['requests']} | {r['throughput']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
                     f"{r['single_ms']:.2f} | {r['p99_ms'] / r['single_ms']:.1f} | "
                     f"{r['rss_first_mb']:.0f} -> {r['rss_last_mb']:.0f} "
                     f"({100 * (r['rss_last_mb'] / r['rss_first_mb'] - 1):+.1f} %) | "
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
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="serve-model --workers: a row for each count.")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="Another source tree (a git worktree of an older commit, say): each "
                             "row is measured against its server first, in the same run.")
    parser.add_argument("--policy", type=Path, nargs="+", default=[],
                        help="Traffic policy files (serve-model --policy): a row for each, served "
                             "from a model repository holding EXPORT as versions 1 and 2.")
    parser.add_argument("--image", type=Path, default=None,
                        help="The image every request posts (default: the export's data).")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or min(args.workers) < 1:
        parser.error("--clients and --workers must be >= 1 and --seconds > 0")
    for path in args.policy:
        if not path.is_file():
            parser.error(f"{path}: no such policy file")
    if args.baseline and not (args.baseline / "vgg_mobile").is_dir():
        parser.error(f"{args.baseline}: not a source tree (no vgg_mobile/ folder)")
    if not (args.export / "manifest.json").is_file():
        parser.error(f"{args.export}: not an export folder (no manifest.json)")
    backends = available(args.export, tuple(args.backends))
    if not backends:
        parser.error(f"{args.export}: holds none of {', '.join(args.backends)}")
    image, source = (args.image.read_bytes(), str(args.image)) if args.image else request_image(args.export)
    # (label, source tree, ARTIFACT, extra flags) of each server a row measures.
    servers = [("before", args.baseline, args.export, ())] if args.baseline else []
    servers.append(("now", None, args.export, ()))
    if args.policy:
        repository = _repository_of(args.export)
        servers += [(f"now, policy {path.name}", None, repository, ("--policy", str(path)))
                    for path in args.policy]
    rows = []
    for fmt, flavour, path in backends:
        alone = interpreter_ms(fmt, path, image, args.threads)
        for workers in args.workers:
            for label, tree, artifact, flags in servers:
                server = Server(artifact, fmt, flavour, args.threads, args.concurrency,
                                workers, tree, flags)
                try:
                    single = load_test(server.address, image, 1, 3.0)
                    result = load_test(server.address, image, args.clients, args.seconds,
                                       rss=server.rss_bytes)
                finally:
                    server.stop()
                result.update(interpreter_ms=alone, single_ms=single["p50_ms"],
                              server=f"{label}, {workers} worker{'s' if workers > 1 else ''}",
                              backend=f"{'LiteRT' if fmt == 'tflite' else 'ONNX Runtime'} "
                                      f"{flavour} ({path.name})")
                rows.append(result)
                print(f"{result['backend']}, {result['server']}: {result['requests']} requests, "
                      f"{result['errors']} errors", file=sys.stderr)
    if args.policy:
        import shutil

        shutil.rmtree(repository.parent, ignore_errors=True)
    print(table(rows, args.clients, args.seconds))
    print(f"\nimage: {source} ({len(image):,} bytes); machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; serve-model --threads "
          f"{args.threads}" + (f" --concurrency {args.concurrency}" if args.concurrency else ""))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
