"""Sidecar mode: an ASGI app that forwards every request to an upstream HTTP service.

The upstream hop is aiohttp's client (chosen on measurements: bench/README.md, "Sidecar"): one
session per process with a keep-alive pool, HTTP/1.1 without pipelining, over TCP or a Unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

try:
    import aiohttp
    import yarl
except ImportError as exc:  # the sidecar's HTTP client is an extra: a ProxyApp says so when it is made
    aiohttp = yarl = None  # type: ignore[assignment]
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

# Headers aiohttp would add on its own: the upstream gets only what the client sent (aiohttp still
# adds `host`, and `content-length: 0` to a POST, PUT, PATCH or DELETE without a body).
_CLIENT_DEFAULTS = ("accept", "accept-encoding", "user-agent", "content-type")
# The server running this app (uvicorn, hypercorn) adds its own `date` and `server`: never send two.
_SERVER_SUPPLIED = frozenset({b"date", b"server"})
# Request headers the client's `x-forwarded-*` are replaced by (the chain is kept, and extended).
_NOT_FORWARDED = HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
_NOT_RETURNED = HOP_BY_HOP | _SERVER_SUPPLIED
# Idle upstream connections are closed after this many seconds: less than the keep-alive of common
# servers (uvicorn and Node 5 s, nginx 75 s), so the upstream rarely closes one just as it is reused.
KEEPALIVE_SECONDS = 4.0
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


class _WriteTimeout(Exception):
    """The upstream took no part of the request body for longer than the write timeout."""


def _tokens(value: bytes) -> set[bytes]:
    """The header names a `connection` header lists: hop-by-hop as well."""
    return {token.strip().lower() for token in value.split(b",")}


def request_headers(scope: Scope) -> list[tuple[str, str]]:
    """The headers to send upstream: the client's minus hop-by-hop ones, with fresh x-forwarded-*."""
    headers: list[tuple[str, str]] = []
    chain: list[bytes] = []
    host: bytes | None = None
    named: set[bytes] = set()
    for key, value in scope["headers"]:
        name = key.lower()
        if name not in _NOT_FORWARDED:
            headers.append((key.decode("latin-1"), value.decode("latin-1")))
        elif name == b"x-forwarded-for":
            chain += [part.strip() for part in value.split(b",") if part.strip()]
        elif name == b"host" and host is None:
            host = value
        elif name == b"connection":
            named |= _tokens(value)
    if named - _NOT_FORWARDED:  # rare: `connection` names more than the usual hop-by-hop headers
        headers = [(k, v) for k, v in headers if k.lower().encode("latin-1") not in named]
    client = scope.get("client")
    if client:
        address = str(client[0]).encode()
        if not chain or chain[-1] != address:  # the server may already have taken it from the chain
            chain.append(address)
    if chain:
        headers.append(("x-forwarded-for", b", ".join(chain).decode("latin-1")))
    headers.append(("x-forwarded-proto", str(scope.get("scheme") or "http")))
    if host:
        headers.append(("x-forwarded-host", host.decode("latin-1")))
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


def _failure(exc: BaseException) -> tuple[int, str]:
    """The client's status for an upstream failure before the response started, and the log's name for it."""
    if isinstance(exc, _WriteTimeout):
        return 504, "WriteTimeout"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return 504, "ConnectTimeout"
    if isinstance(exc, TimeoutError):
        return 504, "ReadTimeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return 502, "ConnectError"
    return 502, type(exc).__name__


def _reschedule(deadline: asyncio.Timeout, when: float | None) -> None:
    """Move the write deadline, unless the exchange is over (the upstream may answer before the body ends)."""
    with contextlib.suppress(RuntimeError):  # a Timeout that expired or was left cannot be moved
        deadline.reschedule(when)


class ProxyApp:
    """Forwards method, raw path and query, headers (minus hop-by-hop) and streamed bodies.

    `upstream` is `http://host[:port][/prefix]`, `https://...` or `unix:/path/to.sock`. Adds
    x-forwarded-for (the client appended to any chain the request carried), x-forwarded-proto and
    x-forwarded-host. Bodies stream both ways: nothing is held in memory here. Upstream
    unreachable: 502; a timeout before the response starts: 504; no pooled connection in time:
    503. One aiohttp session (a keep-alive pool of up to `max_connections`) per process, created
    on first use and closed at lifespan shutdown.
    """

    def __init__(self, upstream: str, *, timeout: float | UpstreamTimeout = _DEFAULT_TIMEOUT,
                 max_connections: int = 256) -> None:
        if _MISSING is not None:
            raise MissingExtra("sidecar mode (upstream:)", "sidecar", _MISSING)
        self.upstream = upstream.rstrip("/")
        self.socket_path: str | None = None
        if self.upstream.startswith("unix:"):
            self.socket_path, origin, prefix = self.upstream[len("unix:"):], "http://localhost", ""
        else:
            url = yarl.URL(self.upstream)
            origin, prefix = str(url.origin()), url.raw_path.rstrip("/")
        self._base = origin + prefix  # every request goes here: the client never chooses the host
        self.timeout = timeout if isinstance(timeout, UpstreamTimeout) else UpstreamTimeout(*[timeout] * 4)
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector: aiohttp.BaseConnector
            if self.socket_path is not None:
                connector = aiohttp.UnixConnector(self.socket_path, limit=self.max_connections,
                                                  keepalive_timeout=KEEPALIVE_SECONDS)
            else:
                connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=KEEPALIVE_SECONDS)
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                skip_auto_headers=_CLIENT_DEFAULTS, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout.connect,
                                              sock_read=self.timeout.read))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

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
        """One request: a pooled connection (503 if none in time), the exchange, the error response."""
        path: bytes = scope.get("raw_path") or scope["path"].encode()
        if not path.startswith(b"/"):  # not an origin-form request target: never a host the client names
            await send_error(send, 400)
            return
        query: bytes = scope.get("query_string") or b""
        url = yarl.URL(self._base + (path + b"?" + query if query else path).decode("latin-1"), encoded=True)
        if self._slots.locked():  # as many requests in flight as connections allowed: wait for one
            try:
                async with asyncio.timeout(self.timeout.pool):
                    await self._slots.acquire()
            except TimeoutError:
                log.warning("%s %s: no upstream connection free in time (PoolTimeout)", scope["method"],
                            scope["path"])
                await send_error(send, 503)
                return
        else:
            await self._slots.acquire()  # free: no wait, no timer
        try:
            response = await self._send_request(scope, receive, url)
        except (aiohttp.ClientError, TimeoutError, _WriteTimeout) as exc:
            self._slots.release()
            status, name = _failure(exc)
            log.warning("%s %s: upstream %s failed: %s: %s", scope["method"], scope["path"], self.upstream, name,
                        exc)
            await send_error(send, status)
            return
        try:
            async with response:  # released (or closed, if not read to the end) on the way out
                await self._stream_back(scope, response, send)
        finally:
            self._slots.release()

    async def _send_request(self, scope: Scope, receive: Receive, url: yarl.URL) -> aiohttp.ClientResponse:
        """The upstream's response to the request; its body, if any, streamed under the write timeout."""
        session = self._get_session()
        headers = request_headers(scope)
        # A request without content-length or transfer-encoding has no body (RFC 9112 6.3).
        if not any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"]):
            return await session.request(scope["method"], url, headers=headers, allow_redirects=False)
        try:
            async with asyncio.timeout(None) as deadline:  # moved by the body as the upstream takes it
                return await session.request(scope["method"], url, headers=headers, allow_redirects=False,
                                             data=self._request_body(receive, deadline))
        except TimeoutError:
            if deadline.expired():
                raise _WriteTimeout(f"no part of the request body was taken in {self.timeout.write} s") from None
            raise

    async def _request_body(self, receive: Receive, deadline: asyncio.Timeout) -> AsyncIterator[bytes]:
        """The client's body as it arrives; each chunk must be taken by the upstream within the write timeout."""
        loop = asyncio.get_running_loop()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise UpstreamError("the client went away while its request body was being forwarded")
            chunk = message.get("body", b"")
            if chunk:
                _reschedule(deadline, loop.time() + self.timeout.write)
                yield chunk  # resumed once the connection has taken it
                _reschedule(deadline, None)
            more = message.get("more_body", False)

    async def _stream_back(self, scope: Scope, response: aiohttp.ClientResponse, send: Send) -> None:
        """The upstream's response to the client; a failure mid-body breaks the client's connection."""
        await send({"type": "http.response.start", "status": response.status,
                    "headers": response_headers(response.raw_headers)})
        content, more = response.content, True
        try:
            while more:  # each chunk as it arrives; the last one (often the only one) ends the response
                chunk = await content.readany()
                more = bool(chunk) and not content.at_eof()
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The status line is gone already: the only honest thing left is to break the connection.
            raise UpstreamError(f"{scope['method']} {scope['path']}: upstream {self.upstream} failed "
                                f"mid-response: {_failure(exc)[1]}") from None
