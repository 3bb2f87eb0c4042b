"""Sidecar mode: an ASGI app that forwards every request to an upstream HTTP service.

The upstream hop is `upstream.py` (asyncio protocols parsed by httptools; chosen on measurements:
docs/internals/design-notes.md, "Sidecar"): one keep-alive pool per process, HTTP/1.1 without
pipelining, over TCP, TLS or a Unix socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

try:
    from . import upstream as hop
except ImportError as exc:  # the sidecar's HTTP parser is an extra: a ProxyApp says so when it is made
    hop = None  # type: ignore[assignment]
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

from ..errors import MissingExtra
from .types import Receive, Scope, Send, send_error

# Never forwarded either way: they describe one connection, not the message (RFC 9110 7.6.1), plus
# `host` (the upstream gets its own; the client's goes in x-forwarded-host) and `expect` (this side
# already answered the client's 100-continue).
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host",
                        b"expect"})

# Methods whose requests get `content-length: 0` when they have no body (servers may ask for a length).
_LENGTH_EXPECTED: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Requests sent again, once, on a fresh connection when a reused one turns out closed before any answer.
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# The server running this app (uvicorn, hypercorn) adds its own `date` and `server`: never send two.
_SERVER_SUPPLIED = frozenset({b"date", b"server"})
# Request headers the client's `x-forwarded-*` are replaced by (the chain is kept, and extended).
_NOT_FORWARDED = HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
_NOT_RETURNED = HOP_BY_HOP | _SERVER_SUPPLIED
log = logging.getLogger("http_wasm_asgi.proxy")


@dataclass(frozen=True)
class UpstreamTimeout:
    """Seconds allowed to connect to the upstream, for each read and write, and to get a pooled connection."""

    connect: float = 5.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 10.0


_DEFAULT_TIMEOUT = UpstreamTimeout()


class UpstreamError(Exception):
    """The upstream failed after its response started: the response cannot be completed."""


def _tokens(value: bytes) -> set[bytes]:
    """The header names a `connection` header lists: hop-by-hop as well."""
    return {token.strip().lower() for token in value.split(b",")}


def request_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The headers to send upstream: the client's minus hop-by-hop ones, with fresh x-forwarded-*."""
    headers: list[tuple[bytes, bytes]] = []
    chain: list[bytes] = []
    host: bytes | None = None
    named: set[bytes] = set()
    for key, value in scope["headers"]:
        name = key.lower()
        if name not in _NOT_FORWARDED:
            headers.append((name, value))
        elif name == b"x-forwarded-for":
            chain += [part.strip() for part in value.split(b",") if part.strip()]
        elif name == b"host" and host is None:
            host = value
        elif name == b"connection":
            named |= _tokens(value)
    if named - _NOT_FORWARDED:  # rare: `connection` names more than the usual hop-by-hop headers
        headers = [(k, v) for k, v in headers if k not in named]
    client = scope.get("client")
    if client:
        address = str(client[0]).encode()
        if not chain or chain[-1] != address:  # the server may already have taken it from the chain
            chain.append(address)
    if chain:
        headers.append((b"x-forwarded-for", b", ".join(chain)))
    headers.append((b"x-forwarded-proto", str(scope.get("scheme") or "http").encode("latin-1")))
    if host:
        headers.append((b"x-forwarded-host", host))
    return headers


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers for the client: minus hop-by-hop ones and the server's own."""
    headers: list[tuple[bytes, bytes]] = []
    named: set[bytes] = set()
    for key, value in raw:
        name = key.lower()
        if name not in _NOT_RETURNED:
            headers.append((key, value))
        elif name == b"connection":
            named |= _tokens(value)
    if named - _NOT_RETURNED:
        headers = [(k, v) for k, v in headers if k.lower() not in named]
    return headers


class ProxyApp:
    """Forwards method, raw path and query, headers (minus hop-by-hop) and streamed bodies.

    `upstream` is `http://host[:port][/prefix]`, `https://...` or `unix:/path/to.sock`. Adds
    x-forwarded-for (the client appended to any chain the request carried), x-forwarded-proto and
    x-forwarded-host. Bodies stream both ways: nothing is held in memory here. Upstream
    unreachable: 502; a timeout before the response starts: 504; no pooled connection in time:
    503. One keep-alive pool of up to `max_connections` per process, opened on first use and closed
    at lifespan shutdown.
    """

    def __init__(self, upstream: str, *, timeout: float | UpstreamTimeout = _DEFAULT_TIMEOUT,
                 max_connections: int = 256) -> None:
        if _MISSING is not None:
            raise MissingExtra("sidecar mode (upstream:)", "sidecar", _MISSING)
        self.upstream = upstream.rstrip("/")
        if self.upstream.startswith("unix:"):
            self.pool = hop.Pool("localhost", 0, socket_path=self.upstream[len("unix:"):])
            self._host, self._prefix = b"localhost", b""
        else:
            url = urlsplit(self.upstream)
            tls = url.scheme == "https"
            self.pool = hop.Pool(url.hostname or "", url.port or (443 if tls else 80), tls=tls)
            default_port = url.port is None or url.port == (443 if tls else 80)
            host = url.hostname or ""
            host = f"[{host}]" if ":" in host else host
            self._host = (host if default_port else f"{host}:{url.port}").encode("idna")
            self._prefix = url.path.rstrip("/").encode("latin-1")  # the client never chooses the host
        self.timeout = timeout if isinstance(timeout, UpstreamTimeout) else UpstreamTimeout(*[timeout] * 4)
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)

    async def aclose(self) -> None:
        self.pool.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._proxy(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not proxied: the server refuses the handshake

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request: a connection slot (503 if none in time), the exchange, the error response."""
        path: bytes = scope.get("raw_path") or scope["path"].encode()
        if not path.startswith(b"/"):  # not an origin-form request target: never a host the client names
            await send_error(send, 400)
            return
        if self._slots.locked():
            if not await self._wait_for_slot(scope):
                await send_error(send, 503)
                return
        else:
            await self._slots.acquire()  # free: no wait, no timer
        try:
            try:
                connection = await self._exchange(scope, receive, path)
            except hop.UpstreamFailure as exc:
                log.warning("%s %s: upstream %s failed: %s: %s", scope["method"], scope["path"], self.upstream,
                            exc.name, exc)
                await send_error(send, exc.status)
                return
            try:
                await self._stream_back(scope, connection, send)
            finally:
                self.pool.release(connection)
        finally:
            self._slots.release()

    async def _wait_for_slot(self, scope: Scope) -> bool:
        """As many requests in flight as connections allowed: wait for one to end (False: not in time)."""
        try:
            async with asyncio.timeout(self.timeout.pool):
                await self._slots.acquire()
        except TimeoutError:
            log.warning("%s %s: no upstream connection free in time (PoolTimeout)", scope["method"], scope["path"])
            return False
        return True

    async def _exchange(self, scope: Scope, receive: Receive, path: bytes) -> hop.Connection:
        """The request sent and the response's head in, on a pooled connection; a reused connection the
        upstream closed meanwhile is replaced once for a bodiless idempotent request."""
        method: str = scope["method"]
        query: bytes = scope.get("query_string") or b""
        target = self._prefix + (path + b"?" + query if query else path)
        # A request without content-length or transfer-encoding has no body (RFC 9112 6.3).
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        head = self._head(method, target, request_headers(scope), has_body)
        for attempt in (0, 1):
            connection, reused = await self.pool.acquire(self.timeout.connect)
            connection.start(head_only=method == "HEAD")
            try:
                if has_body:
                    await self._send_body(connection, head, receive, scope)
                else:
                    connection.write(head)
                await connection.response_head(self.timeout.read)
            except hop.Disconnected:
                connection.close()
                if reused and not attempt and not has_body and method in _IDEMPOTENT:
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            return connection
        raise AssertionError("unreachable")

    def _head(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], has_body: bool) -> bytes:
        """The request's head as it goes on the wire; a CR or LF a header smuggled in is refused."""
        framing = b""
        if has_body and not any(k == b"content-length" for k, _ in headers):
            framing = b"transfer-encoding: chunked\r\n"
        elif not has_body and method in _LENGTH_EXPECTED:
            framing = b"content-length: 0\r\n"
        lines = b"".join([k + b": " + v + b"\r\n" for k, v in headers])
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s%s\r\n" % (method.encode("latin-1"), target, self._host, lines,
                                                             framing)
        if head.count(b"\n") != len(headers) + 3 + bool(framing) or head.count(b"\r") != head.count(b"\n") \
                or b" " in target:
            raise hop.UpstreamFailure("a header, the method or the path holds a line break or space")
        return head

    async def _send_body(self, connection: hop.Connection, head: bytes, receive: Receive, scope: Scope) -> None:
        """The head, then the client's body as it arrives (the first chunk in the head's write); each chunk
        must be taken by the upstream within the write timeout. Chunked unless the length is known."""
        chunked = head.endswith(b"transfer-encoding: chunked\r\n\r\n")
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise UpstreamError("the client went away while its request body was being forwarded")
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if chunked:
                chunk = (b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunk else b"") + (b"" if more else b"0\r\n\r\n")
            connection.write(head + chunk if head else chunk)
            head = b""
            if connection.head_ready and more:  # the upstream answered before the body ended: not reusable
                connection.keep = False
                return
            await connection.drain(self.timeout.write)

    async def _stream_back(self, scope: Scope, connection: hop.Connection, send: Send) -> None:
        """The upstream's response to the client; a failure mid-body breaks the client's connection."""
        await send({"type": "http.response.start", "status": connection.status,
                    "headers": response_headers(connection.headers)})
        more = True
        try:
            while more:  # each chunk as it arrives; the last one (often the only one) ends the response
                chunk = await connection.read(self.timeout.read)
                more = bool(chunk) and connection.more
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
        except hop.UpstreamFailure as exc:
            # The status line is gone already: the only honest thing left is to break the connection.
            raise UpstreamError(f"{scope['method']} {scope['path']}: upstream {self.upstream} failed "
                                f"mid-response: {exc.name}") from None
