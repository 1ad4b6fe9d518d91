"""`vgg-mobile serve-model` under two attacks on loopback, measured: idle connections, and
images that are small on the wire and huge once decoded.

    uv run python benchmarks/serving_limits.py EXPORT [--seconds 60] [--idle 2000]
        [--clients 16] [--bombs 8] [--hard-limit 1024]

EXPORT is an export folder from `vgg-mobile convert`. Each scenario starts a real
`serve-model` process on a free 127.0.0.1 port with its default flags, and stops by itself:

- **idle**: `--idle` connections that never send a byte, reopened as the server closes them
  (so about that many stay open), while `--clients` clients post an image each over their own
  keep-alive connection, for `--seconds`. Reported: the clients' requests, errors and p99, the
  server's open descriptors at most, and the bytes it wrote to stderr. With `--hard-limit N`
  the scenario runs a second time with the server's open-file limit at N (soft and hard), the
  audit's setting: the server then runs out of descriptors, and must keep serving all the same.
- **bombs**: `--bombs` clients post at once a 16-bit RGBA PNG of 6300 x 6300 (about 320 KB,
  40 million pixels), while 4 clients post small images; each bomb is sent once. Reported: the
  server's resident memory before, at its peak (sampled every 50 ms) and 60 s after the last
  bomb was answered, each bomb's status, and the small clients' p99 while bombs were in flight.

Exit code 1 if a target is missed: no client error and stderr under 100 KB (idle); peak under
1.5 GB, back within 20 % of the start, small clients' p99 under 1 s, every bomb answered 200 or
503 with Retry-After (bombs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from vgg_mobile.cli.common import served_address
from vgg_mobile.core import processes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

MIB = 2**20


class Server:
    """A `vgg-mobile serve-model` process on a free loopback port; stderr goes to a file."""

    def __init__(self, export: Path, hard_limit: int | None = None):
        self.log = tempfile.TemporaryFile()
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard_limit, hard_limit))
                 ) if hard_limit else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vgg_mobile", "serve-model", str(export), "--port", "0",
             "--no-access-log"], stdout=subprocess.PIPE, stderr=self.log, text=True,
            preexec_fn=limit)
        line = self.process.stdout.readline()
        self.address = served_address(line)
        if self.address is None:
            self.process.kill()
            raise SystemExit(f"serve-model did not start: {line}")

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> int:
        """Stops the server; returns the bytes it wrote to stderr."""
        processes.stop(self.process)
        self.log.seek(0)
        text = self.log.read()
        if os.environ.get("SERVING_LIMITS_STDERR"):
            Path(os.environ["SERVING_LIMITS_STDERR"]).write_bytes(text[:200_000])
        return len(text)


def post(connection, body: bytes) -> tuple[int, dict, float]:
    began = time.perf_counter()
    connection.request("POST", "/predict", body=body, headers={"content-type": "image/png"})
    response = connection.getresponse()
    response.read()
    return response.status, dict(response.getheaders()), time.perf_counter() - began


def clients(address, image: bytes, count: int, stop: threading.Event):
    """`count` threads posting `image` until `stop`; returns the threads and their results."""
    results = {"latencies": [], "errors": []}

    def client():
        connection = http.client.HTTPConnection(*address, timeout=60)
        while not stop.is_set():
            try:
                status, _, seconds = post(connection, image)
                if status == 200:
                    results["latencies"].append((time.monotonic(), seconds))
                else:
                    results["errors"].append(f"status {status}")
            except (OSError, http.client.HTTPException) as err:
                results["errors"].append(repr(err))
                connection.close()
                connection = http.client.HTTPConnection(*address, timeout=60)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def p99_ms(latencies) -> float:
    return float(np.percentile([s for _, s in latencies], 99) * 1000) if latencies else float("nan")


def idle_scenario(export: Path, image: bytes, seconds: float, idle: int, working: int,
                  hard_limit: int | None) -> dict:
    server = Server(export, hard_limit)
    selector = selectors.DefaultSelector()
    open_count = closed_by_server = refused = 0
    most_descriptors = 0

    def connect():
        nonlocal open_count, refused
        try:
            sock = socket.create_connection(server.address, timeout=5)
        except OSError:
            refused += 1
            return
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        open_count += 1

    stop = threading.Event()
    threads, results = clients(server.address, image, working, stop)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for _ in range(min(200, idle - open_count)):
                connect()
            for key, _ in selector.select(timeout=0.5):
                try:
                    closed = key.fileobj.recv(4096) == b""
                except OSError:
                    closed = True
                if closed:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    open_count -= 1
                    closed_by_server += 1
            most_descriptors = max(most_descriptors, server.descriptors())
    finally:
        stop.set()
        for thread in threads:
            thread.join(90)
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        stderr_bytes = server.stop()
    return {"requests": len(results["latencies"]), "errors": len(results["errors"]),
            "first_errors": results["errors"][:3], "p99_ms": p99_ms(results["latencies"]),
            "closed_by_server": closed_by_server, "connect_failures": refused,
            "most_descriptors": most_descriptors, "stderr_bytes": stderr_bytes,
            "hard_limit": hard_limit}


def bombs_scenario(export: Path, image: bytes, bombs: int, settle: float) -> dict:
    from serving_models import png16_rgba

    bomb = png16_rgba(6300)
    server = Server(export)
    time.sleep(2)
    # A few requests first: the start figure includes what serving ordinary images takes.
    connection = http.client.HTTPConnection(*server.address, timeout=60)
    for _ in range(20):
        post(connection, image)
    connection.close()
    start = server.rss()
    peak = [start]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak[0] = max(peak[0], server.rss())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    answers: list[tuple[int, str | None]] = []

    def send_bomb():
        connection = http.client.HTTPConnection(*server.address, timeout=300)
        try:
            status, headers, _ = post(connection, bomb)
            answers.append((status, headers.get("retry-after")))
        except (OSError, http.client.HTTPException) as err:
            answers.append((0, repr(err)))
        connection.close()

    stop = threading.Event()
    threads, results = clients(server.address, image, 4, stop)
    began = time.monotonic()
    senders = [threading.Thread(target=send_bomb) for _ in range(bombs)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(600)
    ended = time.monotonic()
    stop.set()
    for thread in threads:
        thread.join(90)
    during = [(t, s) for t, s in results["latencies"] if began <= t <= ended]
    time.sleep(settle)
    sampling.set()
    sampler.join()
    after = server.rss()
    server.stop()
    return {"bomb_bytes": len(bomb), "start": start, "peak": peak[0], "after": after,
            "settle_s": settle, "statuses": sorted(answers), "bombs_s": ended - began,
            "small_requests": len(during), "small_errors": len(results["errors"]),
            "small_p99_ms": p99_ms(during)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path, help="An export folder from `vgg-mobile convert`.")
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of the idle attack.")
    parser.add_argument("--idle", type=int, default=2000, help="Idle connections kept open.")
    parser.add_argument("--clients", type=int, default=16, help="Working clients (idle attack).")
    parser.add_argument("--bombs", type=int, default=8, help="Concurrent decode bombs.")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="Seconds after the last bomb before memory is read again.")
    parser.add_argument("--hard-limit", type=int, default=None,
                        help="Also run the idle attack with the server's open-file limit at this.")
    parser.add_argument("--only", choices=("idle", "bombs"), default=None)
    args = parser.parse_args(argv)
    if not (args.export / "manifest.json").is_file():
        parser.error(f"{args.export}: not an export folder (no manifest.json)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the idle ones
    from serving_models import colour_images, png_bytes

    image = png_bytes(colour_images(1, seed=0, size=48)[0][0])
    ok = True
    if args.only in (None, "idle"):
        print("| open-file limit of the server | idle connections | working clients | requests "
              "| errors | p99 ms | closed by the server | most descriptors | stderr bytes |")
        print("|---|---|---|---|---|---|---|---|---|")
        for limit in [None] + ([args.hard_limit] if args.hard_limit else []):
            r = idle_scenario(args.export, image, args.seconds, args.idle, args.clients, limit)
            print(f"| {limit or 'raised to the hard limit'} | {args.idle} | {args.clients} | "
                  f"{r['requests']} | {r['errors']} | {r['p99_ms']:.1f} | "
                  f"{r['closed_by_server']} | {r['most_descriptors']} | {r['stderr_bytes']:,} |",
                  flush=True)
            if r["first_errors"]:
                print(f"  first errors: {r['first_errors']}", file=sys.stderr)
            ok = ok and r["errors"] == 0 and r["stderr_bytes"] < 100_000
    if args.only in (None, "bombs"):
        r = bombs_scenario(args.export, image, args.bombs, args.settle)
        print()
        print("| bombs | bomb size | statuses (Retry-After) | RSS start | RSS peak | RSS after "
              f"{r['settle_s']:g} s | small requests meanwhile | their errors | their p99 ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        statuses = ", ".join(f"{s}" + (f" ({retry})" if s == 503 else "") for s, retry in
                             r["statuses"])
        print(f"| {args.bombs} | {r['bomb_bytes']:,} B | {statuses} | {r['start'] / MIB:,.0f} MiB "
              f"| {r['peak'] / MIB:,.0f} MiB | {r['after'] / MIB:,.0f} MiB | "
              f"{r['small_requests']} | {r['small_errors']} | {r['small_p99_ms']:.0f} |")
        answered = all(s == 200 or (s == 503 and retry) for s, retry in r["statuses"])
        ok = (ok and answered and r["peak"] < 1.5e9 and r["after"] <= 1.2 * r["start"]
              and r["small_p99_ms"] < 1000)
    print(f"\nmachine: {os.cpu_count()} CPUs; this process's open-file limit was {soft}/{hard}; "
          f"{json.dumps({'targets_met': ok})}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
