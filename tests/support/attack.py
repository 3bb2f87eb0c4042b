"""Shared helpers for the hostile-guest, limits, soak and property tests."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import h11
import httpx

from http_wasm_asgi import Guest

from .paths import WAT

HOSTILE = WAT / "hostile"
REASONS = {413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def routed(routes: dict[str, ASGIApp], default: ASGIApp) -> ASGIApp:
    """Dispatch on the first path segment: `/name/...` goes to routes[name], anything else to default."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        first = scope.get("path", "/").split("/")[1] if scope["type"] == "http" else ""
        await routes.get(first, default)(scope, receive, send)

    return app


class Catch:
    """Wraps an ASGI app and records every exception that escapes it (then re-raises it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            self.errors.append(exc)
            raise


def assert_clean_error(r: httpx.Response, status: int) -> None:
    """The generic error response: status, short reason text, no details and no traceback."""
    assert r.status_code == status, (r.status_code, r.text[:200])
    assert r.text == REASONS[status]
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert "Traceback" not in r.text


def assert_logged(records: list[logging.LogRecord], guest: str, *causes: str) -> None:
    """An ERROR line on the `http_wasm_asgi` logger names the guest and the cause."""
    lines = [r.getMessage() for r in records if r.name == "http_wasm_asgi" and r.levelno >= logging.ERROR]
    assert any(f"guest '{guest}'" in line and all(c in line for c in causes) for line in lines), lines


def idle_instance(guest: Guest) -> Any:
    """The instance the pool would hand out next (taken and given back: the counters do not move)."""
    instance = guest.pool.try_acquire()
    assert instance is not None
    guest.pool.release(instance)
    return instance


def assert_replaced(guest: Guest, before: Any) -> None:
    """The instance that served a failed request was thrown away; nothing is left checked out."""
    assert before.closed
    assert guest.pool.in_use == 0
    assert guest.pool.size == guest.pool.idle
    assert all(i is not before for i in guest.pool._idle)


def h11_valid(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    """Would a strict HTTP/1.1 server (h11, uvicorn's default) accept this as a final response?"""
    try:
        h11.Response(status_code=status, headers=headers, reason=b"")
    except h11.LocalProtocolError:
        return False
    return True


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


def raw_http(base: str, request: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the server at base (http://host:port); everything it answers until it closes."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@contextmanager
def logger_records(name: str = "http_wasm_asgi", level: int = logging.INFO) -> Iterator[list[logging.LogRecord]]:
    """Collect records of a logger (for hypothesis tests, where caplog's function scope does not fit)."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(name)
    handler = _Keep(level)
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, old) if old else level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


async def asgi_request(app: ASGIApp, *, method: str = "GET", path: str = "/", body: bytes = b"",
                       headers: list[tuple[bytes, bytes]] | None = None) -> list[dict[str, Any]]:
    """Drive an ASGI app with a hand-made scope (no client library in between); returns what it sent."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"test"), *(headers or [])], "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80), "extensions": {},
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # a client that stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent


def well_formed(messages: list[dict[str, Any]]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Check an ASGI response is complete and valid HTTP/1.1; returns (status, headers, body)."""
    assert messages, "no response at all"
    start = messages[0]
    assert start["type"] == "http.response.start", messages
    status, headers = start["status"], list(start.get("headers") or [])
    assert isinstance(status, int)
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in headers)
    assert h11_valid(status, headers), (status, headers)
    bodies = [m for m in messages[1:] if m["type"] == "http.response.body"]
    assert bodies and not bodies[-1].get("more_body", False), messages
    assert all(m.get("more_body", False) for m in bodies[:-1])
    body = b"".join(m.get("body", b"") for m in bodies)
    declared = [v for k, v in headers if k.lower() == b"content-length"]
    if declared:
        assert declared == [str(len(body)).encode()], (declared, len(body))
    return status, headers, body
