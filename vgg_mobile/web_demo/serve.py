"""Serving a demo folder on 127.0.0.1 (or another address the user asks for)."""

from __future__ import annotations

import functools
import http.server
import ipaddress
import socket
import sys
import threading
import urllib.parse
from pathlib import Path

from vgg_mobile.core.errors import BadInputError


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves one folder, with the headers that make the page cross-origin isolated.

    Cross-origin isolation (COOP + COEP) is what lets the WASM backend use threads.
    """

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript",
                      ".mjs": "text/javascript", ".tflite": "application/octet-stream",
                      ".json": "application/json"}

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def send_head(self):
        """Refuses a NUL in the path (400) and any dotfile or dot-folder (404), then serves."""
        url_path = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0],
                                        errors="replace")
        if "\0" in url_path:
            self.send_error(400, "NUL byte in the path")
            return None
        if any(part.startswith(".") for part in url_path.split("/")):
            self.send_error(404, "File not found")
            return None
        return super().send_head()

    def translate_path(self, path):
        root = Path(self.directory).resolve()
        try:
            translated = Path(super().translate_path(path)).resolve()
        except (OSError, ValueError, RuntimeError):
            # A symbolic-link loop, an unencodable name: answered as not found.
            return str(root / "__unreadable__")
        # Symbolic links out of the folder are refused, like `..` in the URL, and so are
        # links to a dotfile inside it.
        if translated != root and root not in translated.parents:
            return str(root / "__outside__")
        if any(part.startswith(".") for part in translated.relative_to(root).parts):
            return str(root / "__hidden__")
        return str(translated)

    def list_directory(self, path):
        self.send_error(404, "No directory listings")
        return None

    def log_message(self, format, *args):
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)


class _Server(http.server.ThreadingHTTPServer):
    """A threading HTTP server that reports a failed request in one line, not a traceback."""

    daemon_threads = True
    quiet = False

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError) or self.quiet:
            return
        print(f"error: request from {client_address[0]}: {type(error).__name__}: {error}",
              file=sys.stderr)


class _Server6(_Server):
    address_family = socket.AF_INET6


LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is reachable from this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int, directory: str | Path) -> str | None:
    """The warning for a server bound beyond this machine, or `None` on a loopback address."""
    if is_loopback(host):
        return None
    shown = host or '""'
    where = ("every network interface" if host in ("", "0.0.0.0", "::")
             else f"{host}, an address other machines may reach")
    return (f"warning: --host {shown} binds {where}, beyond this machine: anyone who can "
            f"reach port {port} can fetch the files of {directory}")


def make_server(directory: str | Path, host: str = "127.0.0.1", port: int = 8000,
                quiet: bool = False) -> http.server.ThreadingHTTPServer:
    """An HTTP server for a demo folder (`serve_forever()` to run it; port 0 picks a free one).

    It serves the folder's files only: no directory listings, no dotfiles or dot-folders
    (`.env`, `.git/`), nothing a symbolic link points to outside the folder. A request it
    cannot answer with a file gets a 4xx status.

    Raises:
        BadInputError: `directory` is not a demo folder, or `host:port` cannot be bound.
    """
    directory = Path(directory)
    if not (directory / "index.html").is_file():
        raise BadInputError(f"{directory}: not a demo folder (no index.html); build one with "
                            "`vgg-mobile web-demo`")
    handler = functools.partial(_Handler, directory=str(directory.resolve()))
    server_class = _Server6 if ":" in host else _Server
    try:
        server = server_class((host, port), handler)
    except (OSError, OverflowError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise BadInputError(f"cannot listen on {host}:{port} ({reason})") from None
    server.quiet = quiet
    return server


def serve_in_background(directory: str | Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Starts a quiet server on a free local port; returns it and its base URL."""
    server = make_server(directory, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}/"
