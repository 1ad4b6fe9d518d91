"""What the service needs from uvicorn and the process beyond the app: connections that must
send their request in time, accept errors that do not flood the log, room for open files, and
memory that goes back to the system after a large image.

uvicorn closes a keep-alive connection that stays quiet after an answer, but not one that
never sends a request, or sends it a byte at a time: a few thousand of those hold every file
descriptor, and then no client gets in. `ConnectionDeadlines` gives each connection a deadline
for its request head (`header_timeout`, from the moment it opens or was last answered) and one
for its body (`body_timeout`). When descriptors run out all the same, asyncio's accept loop
logs one error per attempt (about 2,000 a tick under uvicorn's backlog); `AcceptErrors`
logs them once per interval with a count, and closes the connections that have never sent a
request, oldest first, to make room.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import json
import logging
import os
import resource
import socket
import sys
import time

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors.multiprocess import Multiprocess, Process

try:  # uvicorn's C parser (httptools): the service's default, h11 where it is missing
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency
    HttpToolsProtocol = None

log = logging.getLogger("vgg_mobile.serving")

ACCEPT_ERROR = "socket.accept() out of system resource"
# Seconds between two log lines about failing accepts.
ACCEPT_LOG_INTERVAL = 10.0
# Set on the request's ASGI scope when the body timeout closed its connection: the app counts
# the request as `body_timeout` rather than an ordinary disconnect.
TIMED_OUT = "vgg_mobile.timed_out"
# Allocations from this size on get their own mapping, given back to the system when freed.
# glibc raises its threshold after each freed mapping (up to 32 MiB): the 16 MiB blocks that
# Pillow decodes into would then stay in the heap of whichever thread used them, and a burst
# of large images would leave gigabytes resident.
MMAP_THRESHOLD = 4 * 2**20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
# asyncio's own event loop, not uvloop even where it is installed: `AcceptErrors` works on the
# accept loop of asyncio's, whose failing accepts it counts and answers by closing idle
# connections.
LOOP = "asyncio"
# How long `Workers` waits for its first workers to answer before it says it serves.
WORKER_START_SECONDS = 120.0


def no_delay(transport) -> None:
    """Sends each write of `transport` at once (`TCP_NODELAY`).

    uvicorn writes an answer's head and body in two writes. Under Nagle's algorithm the body
    then waits for the client to acknowledge the head, which a client delays by up to 40 ms:
    every answer took 40 ms more than its work, and a keep-alive client got 25 answers a
    second. asyncio turns Nagle off itself only for sockets created with `IPPROTO_TCP`, not
    for those a listening socket made with protocol 0 (`socket.create_server`) accepts.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Stderr(logging.Handler):
    """The service's log lines on stderr in uvicorn's layout; stderr is looked up at each
    line, as click does (a test's captured stderr gets them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"{record.levelname + ':':<10}{self.format(record)}", file=sys.stderr,
                  flush=True)
        except Exception:  # noqa: BLE001 - logging must not fail the request
            self.handleError(record)


def show_service_log() -> None:
    """Shows the service's INFO lines (a version refused, a new one serving) on stderr,
    beside uvicorn's, in `serve-model` and in each of its worker processes: without a
    handler, Python shows only warnings."""
    logger = logging.getLogger("vgg_mobile.serving")
    if not any(isinstance(handler, _Stderr) for handler in logger.handlers):
        logger.addHandler(_Stderr())
    logger.setLevel(logging.INFO)


class ConnectionDeadlines:
    """A deadline for each request's head and for its body, over either of uvicorn's HTTP
    protocols (`H11Protocol`, `HttpToolsProtocol`: both keep the request in `cycle`).

    A connection waits for a request head from the moment it opens, and again once its last
    request was answered (uvicorn's own keep-alive timeout usually closes it first then); the
    head must be complete within `header_timeout` seconds, however the bytes trickle in.
    Then the body must be complete within `body_timeout`. While the app works on a request
    (body read, answer not sent) no deadline runs.
    """

    header_timeout: float = 10.0
    body_timeout: float = 60.0

    def connection_made(self, transport) -> None:
        no_delay(transport)
        super().connection_made(transport)
        self.opened_at = time.monotonic()
        self.answered = 0
        self._watched = None
        self._deadline = None
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        self.answered += 1
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc) -> None:
        self._cancel()
        super().connection_lost(exc)

    def phase(self) -> str | None:
        """`head` (waiting for a request head), `body` (reading a body), or `None` (answering)."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return "head"
        return "body" if cycle.more_body else None

    def idle(self) -> bool:
        """Whether the connection has never sent a whole request head."""
        return self.answered == 0 and self.cycle is None and not self.transport.is_closing()

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _watch(self) -> None:
        """Starts the deadline of the phase the connection is in, if it just entered it."""
        phase = self.phase()
        watched = (phase, self.cycle)
        if watched == self._watched:
            return
        self._cancel()
        self._watched = watched
        if phase is not None and not self.transport.is_closing():
            timeout = self.header_timeout if phase == "head" else self.body_timeout
            self._deadline = self.loop.call_later(timeout, self._expire, watched)

    def _expire(self, watched) -> None:
        self._deadline = None
        if watched != self._watched or self.transport.is_closing():
            return
        if watched[0] == "body":
            self.cycle.scope[TIMED_OUT] = "body_timeout"
        self.transport.close()


class GuardedH11Protocol(ConnectionDeadlines, H11Protocol):
    """uvicorn's pure-Python h11 protocol with `ConnectionDeadlines`."""


GuardedHttpToolsProtocol = HttpToolsProtocol and type(
    "GuardedHttpToolsProtocol", (ConnectionDeadlines, HttpToolsProtocol),
    {"__doc__": "uvicorn's httptools protocol with `ConnectionDeadlines`."})


def guarded_protocol(header_timeout: float, body_timeout: float) -> type[ConnectionDeadlines]:
    """A guarded protocol class with these deadlines, for `uvicorn.Config(http=...)`: over
    httptools (uvicorn's C parser), or h11 where httptools is missing."""
    base = GuardedHttpToolsProtocol or GuardedH11Protocol
    return type(base.__name__, (base,), {"header_timeout": float(header_timeout),
                                         "body_timeout": float(body_timeout)})


def protocol_from_environment(**kwargs) -> ConnectionDeadlines:
    """A guarded connection of a uvicorn worker process, its deadlines from the `ServeConfig`
    in the environment (`uvicorn.run(..., http="vgg_mobile.serving.server:protocol_from_environment")`)."""
    return _environment_protocol()(**kwargs)


@functools.cache
def _environment_protocol() -> type[ConnectionDeadlines]:
    from vgg_mobile.serving.app import CONFIG_ENV

    data = json.loads(os.environ.get(CONFIG_ENV) or "{}")
    return guarded_protocol(data.get("header_timeout", ConnectionDeadlines.header_timeout),
                            data.get("body_timeout", ConnectionDeadlines.body_timeout))


class AcceptErrors:
    """An event loop exception handler that logs failing accepts once per `interval`.

    Other errors go to the loop's default handler. When descriptors run out, it also closes
    half of the connections that never sent a request head (at most once a second, oldest
    first), so that clients with real requests can connect again.

    Args:
        connections: The server's open connections (`uvicorn.Server.server_state.connections`),
            or `None` to close nothing.
        interval: Seconds between two log lines. Defaults to `ACCEPT_LOG_INTERVAL`.
    """

    def __init__(self, connections=None, interval: float = ACCEPT_LOG_INTERVAL):
        self.connections = connections
        self.interval = interval
        self.failed = 0  # accepts failed since the last log line
        self.closed = 0  # idle connections closed since the last log line
        self._logged_at: float | None = None
        self._shed_at: float | None = None

    def __call__(self, loop, context: dict) -> None:
        if _stale_retry(context):
            return  # a retry asyncio scheduled for a listening socket closed since: nothing lost
        if context.get("message") != ACCEPT_ERROR:
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        self.failed += 1
        if self._shed_at is None or now - self._shed_at >= 1.0:
            self._shed_at = now
            self.closed += self.shed()
        if self._logged_at is None or now - self._logged_at >= self.interval:
            error = context.get("exception")
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.warning("cannot accept connections (%s; open file limit %d): %d failed accepts "
                        "and %d idle connections closed since the last message",
                        getattr(error, "strerror", None) or error, soft, self.failed,
                        self.closed)
            self._logged_at, self.failed, self.closed = now, 0, 0

    def shed(self) -> int:
        """Closes the older half of the connections that never sent a request head."""
        idle = sorted((c for c in list(self.connections or ())
                       if isinstance(c, ConnectionDeadlines) and c.idle()),
                      key=lambda c: c.opened_at)
        for connection in idle[:(len(idle) + 1) // 2]:
            connection.transport.close()
        return (len(idle) + 1) // 2 if idle else 0


def _stale_retry(context: dict) -> bool:
    """Whether `context` is a failed accept retry on a socket that is closed now.

    asyncio keeps trying accepts after the first failure of a tick, scheduling a retry for
    each; when the server stops, the thousands still pending each fail on the closed socket
    ("Invalid file descriptor: -1") with a traceback.
    """
    return ("_start_serving" in repr(context.get("handle"))
            and isinstance(context.get("exception"), (ValueError, OSError)))


def raise_open_file_limit() -> tuple[int, int]:
    """Raises this process's soft limit of open files to its hard limit (each connection
    holds one), as far as the system allows.

    Returns:
        The `(soft, hard)` limits now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # the system's own ceiling (fs.nr_open) is lower: keep what we have
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    # mallopt and malloc_trim are glibc's: elsewhere (musl, macOS) there is nothing to tune.
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def pin_mmap_threshold() -> bool:
    """Keeps glibc's mmap threshold at `MMAP_THRESHOLD` (see there). Returns whether it could."""
    libc = _libc()
    return bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release_memory() -> None:
    """Gives freed heap memory back to the system (glibc's `malloc_trim`), if there is any."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class Server(uvicorn.Server):
    """uvicorn's server with `AcceptErrors` as its event loop's exception handler."""

    async def serve(self, sockets=None) -> None:
        asyncio.get_running_loop().set_exception_handler(
            AcceptErrors(self.server_state.connections))
        await super().serve(sockets)


def uvicorn_config(app, header_timeout: float, body_timeout: float, **options) -> uvicorn.Config:
    """A `uvicorn.Config` for `app` whose connections are guarded by these deadlines.

    Args:
        app: The ASGI app.
        header_timeout: Seconds a connection has to send a whole request head.
        body_timeout: Seconds a request has to send its whole body.
        **options: Any other `uvicorn.Config` argument (`log_level`, `access_log`, ...).
    """
    return uvicorn.Config(app, http=guarded_protocol(header_timeout, body_timeout), loop=LOOP,
                          **options)


def reuse_port_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket on `host:port` that other sockets of this user may share
    (`SO_REUSEPORT`): the kernel spreads new connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class Workers(Multiprocess):
    """uvicorn's supervisor of worker processes (a dead worker is replaced, SIGHUP replaces
    them one after the other, SIGINT or SIGTERM stops them), each worker listening on a socket
    of its own on the same port (`reuse_port_socket`).

    uvicorn gives every worker the one socket: whichever worker wakes first accepts, and
    keep-alive clients stay where they landed. Measured with 16 keep-alive clients and
    `--workers 2`, all 16 connections went to one worker, which used one core of two. With a
    socket each, the kernel spreads connections over the workers.
    """

    def __init__(self, config: uvicorn.Config, host: str, port: int, ready=None):
        """`ready`: called once every first worker answers (or one failed to start)."""
        super().__init__(config, sockets=[])
        self.address = (host, port)
        self.ready = ready

    def _started(self) -> Process:
        """A worker started on a new socket; the parent's copy is closed at once, so a
        socket never outlives its worker (connections the kernel gave it would wait there)."""
        sock = reuse_port_socket(*self.address, backlog=self.config.backlog)
        try:
            process = Process(self.config, [sock])
            process.start()
        finally:
            sock.close()
        return process

    def init_processes(self) -> None:
        self.processes = [self._started() for _ in range(self.processes_num)]
        for process in self.processes:  # loading the model takes seconds
            process.wait_until_ready(WORKER_START_SECONDS)
        if self.ready is not None:
            self.ready()

    def keep_subprocess_alive(self) -> None:
        for index, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: gone for good
            process.join()
            if process.exitcode == STARTUP_FAILURE:  # would fail the same way again
                log.error("worker process %s failed to start: stopping", process.pid)
                self.should_exit.set()
                return
            log.info("worker process %s died: starting another", process.pid)
            self.processes[index] = self._started()

    def restart_all(self) -> None:
        """SIGHUP: each worker replaced by a new one (which loads the model afresh) once the
        new one answers, so the port never goes quiet."""
        for index, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._started()
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck,
                                        self.should_exit):
                new.kill()
                new.join()
                log.error("a new worker was not ready in time: worker %s keeps serving and "
                          "the restart stops", old.pid)
                return
            old.terminate()
            old.join()
            self.processes[index] = new

    def handle_ttin(self) -> None:
        self.processes_num += 1
        self.processes.append(self._started())
