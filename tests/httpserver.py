"""A local HTTP server for download tests, and a guard that refuses every non-loopback connection.

Usage::

    from httpserver import Route, http_server, loopback_only  # noqa: F401  (fixtures)

    pytestmark = pytest.mark.usefixtures("loopback_only")

    def test_x(http_server):
        url = http_server.add("/a.bin", b"data", corrupt=2)   # wrong bytes for the first 2 GETs
        ...
        assert http_server.counts["/a.bin"] == 3

Routes match on the path without the query string; requests for paths without a route are served
from ``root`` (read at request time, so tests can tamper with files) or answered with 404.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest


@dataclass
class Route:
    """One path's response. ``corrupt`` GETs get ``corrupt_body`` (default: ``body`` with its first
    byte flipped, same length) before the real body is served; ``delay`` stalls before the status
    line and ``stall`` after half of the body has been sent."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    corrupt: int = 0
    corrupt_body: bytes | None = None
    delay: float = 0.0
    stall: float = 0.0

    def bad_bytes(self) -> bytes:
        if self.corrupt_body is not None:
            return self.corrupt_body
        return bytes([self.body[0] ^ 0xFF]) + self.body[1:] if self.body else b"corrupt"


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # names lower-cased


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 (port chosen by the OS) with per-path request counts."""

    def __init__(self, routes: Mapping[str, Route | bytes] | None = None, root: Path | None = None) -> None:
        self.routes: dict[str, Route] = {p: r if isinstance(r, Route) else Route(r) for p, r in (routes or {}).items()}
        self.root = root
        self.counts: Counter[str] = Counter()
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()  # wakes stalled handlers at shutdown
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    def add(self, path: str, body: bytes = b"", **kwargs) -> str:
        """Add (or replace) a route and return its URL."""
        self.routes[path] = Route(body, **kwargs)
        return self.url + path

    def url_for(self, path: str) -> str:
        return self.url + path

    def _respond(self, method: str, path: str) -> tuple[Route, bytes]:
        with self._lock:
            self.counts[path] += 1
            route = self.routes.get(path)
            if route is None:
                file = (self.root / path.lstrip("/")) if self.root is not None else None
                if file is not None and file.resolve().is_relative_to(self.root.resolve()) and file.is_file():
                    body = file.read_bytes()
                    return Route(body), body
                return Route(b"not found", status=404), b"not found"
            if method == "GET" and route.corrupt > 0:
                route.corrupt -= 1
                return route, route.bad_bytes()
            return route, route.body

    def wait(self, seconds: float) -> None:
        self._closing.wait(seconds)

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def _handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            with server._lock:
                server.log.append(Request(method, path, parts.query, {k.lower(): v for k, v in self.headers.items()}))
            route, body = server._respond(method, path)
            try:
                server.wait(route.delay)
                self.send_response(route.status)
                if "Content-Length" not in route.headers:  # a route may lie (truncated-body tests)
                    self.send_header("Content-Length", str(len(body)))
                for key, value in route.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if method == "HEAD":
                    return
                half = len(body) // 2 if route.stall else len(body)
                self.wfile.write(body[:half])
                self.wfile.flush()
                server.wait(route.stall)
                self.wfile.write(body[half:])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test): expected

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._serve("GET")

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve("HEAD")

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    return Handler


@contextlib.contextmanager
def serve(source: Mapping[str, Route | bytes] | Path | None = None) -> Iterator[LocalServer]:
    """Serve routes (path -> Route or bytes) or a folder's files on 127.0.0.1 for the ``with`` block."""
    if isinstance(source, Path):
        server = LocalServer(root=source)
    else:
        server = LocalServer(routes=source)
    with server:
        yield server


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    with serve() as server:
        yield server


def _is_loopback(host: object) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse name lookups and connections to anything but loopback; yields the refused targets, so a
    test can also catch libraries that swallow connection errors (huggingface_hub falls back to its
    cache on them). Proxies are bypassed for loopback so the local server is reached directly."""
    refused: list[str] = []
    real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def check(target: object) -> None:
        if not _is_loopback(target):
            refused.append(str(target))
            raise OSError(f"test network guard: refusing non-loopback host {target!r}")

    def getaddrinfo(host, *args, **kwargs):
        check(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            check(address[0])
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            check(address[0])
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    yield refused
