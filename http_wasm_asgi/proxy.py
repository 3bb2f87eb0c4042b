"""Sidecar mode: an ASGI app that forwards every request to an upstream HTTP service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from .asgi import send_error

# Never forwarded either way: they describe one connection, not the message (RFC 9110 7.6.1), plus
# `host` (the upstream gets its own; the client's goes in x-forwarded-host) and `expect` (this side
# already answered the client's 100-continue).
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host",
                        b"expect"})

# httpx adds these to every request; they are removed again unless the client sent them.
_CLIENT_DEFAULTS = ("accept", "accept-encoding", "user-agent")
# The server running this app (uvicorn, hypercorn) adds its own `date` and `server`: never send two.
_SERVER_SUPPLIED = frozenset({b"date", b"server"})
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


def _strip(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers, including those a `connection` header names."""
    named = {token.strip().lower() for k, v in headers if k.lower() == b"connection" for token in v.split(b",")}
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


class ProxyApp:
    """Forwards method, raw path and query, headers (minus hop-by-hop) and streamed bodies.

    Adds x-forwarded-for (the client appended to any chain the request carried),
    x-forwarded-proto and x-forwarded-host. Bodies stream both ways: nothing is
    held in memory here. Upstream unreachable: 502; a timeout before the
    response starts: 504; no pooled connection in time: 503. One httpx client
    (connection pool) per process, created on first use and closed at lifespan
    shutdown.
    """

    def __init__(self, upstream: str, *, timeout: float | UpstreamTimeout | httpx.Timeout = _DEFAULT_TIMEOUT,
                 max_connections: int = 256) -> None:
        self.upstream = upstream.rstrip("/")
        self._base = httpx.URL(self.upstream)
        self._prefix = self._base.raw_path.rstrip(b"/")
        if isinstance(timeout, UpstreamTimeout):
            timeout = httpx.Timeout(connect=timeout.connect, read=timeout.read, write=timeout.write,
                                    pool=timeout.pool)
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.max_connections = max_connections
        self._client: httpx.AsyncClient | None = None

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=False, trust_env=False,
                limits=httpx.Limits(max_connections=self.max_connections,
                                    max_keepalive_connections=self.max_connections))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return  # websockets are not proxied: the server refuses the handshake
        raw_headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        headers = _strip(raw_headers)
        headers = [(k, v) for k, v in headers if k not in (b"x-forwarded-for", b"x-forwarded-proto",
                                                           b"x-forwarded-host")]
        chain = [v.strip() for k, v in raw_headers if k == b"x-forwarded-for" for v in v.split(b",") if v.strip()]
        client = scope.get("client")
        if client:
            address = str(client[0]).encode()
            if not chain or chain[-1] != address:  # the server may already have taken it from the chain
                chain.append(address)
        if chain:
            headers.append((b"x-forwarded-for", b", ".join(chain)))
        headers.append((b"x-forwarded-proto", str(scope.get("scheme") or "http").encode()))
        host = next((v for k, v in raw_headers if k == b"host"), None)
        if host:
            headers.append((b"x-forwarded-host", host))
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        try:
            if not path.startswith(b"/"):
                raise httpx.InvalidURL("not an origin-form request target")
            # the upstream's own URL with the client's raw path and query: never a host the client names
            url = self._base.copy_with(raw_path=self._prefix + path + (b"?" + query if query else b""))
        except httpx.InvalidURL:
            await send_error(send, 400)
            return
        # A request without content-length or transfer-encoding has no body (RFC 9112 6.3).
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in raw_headers)

        async def body() -> AsyncIterator[bytes]:
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    raise UpstreamError("the client went away while its request body was being forwarded")
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                more = message.get("more_body", False)

        http = self._get_client()
        request = http.build_request(scope["method"], url, headers=headers,
                                     content=body() if has_body else None)
        sent = {k.decode("latin-1").lower() for k, _ in headers}
        for name in _CLIENT_DEFAULTS:  # httpx's own defaults: the upstream gets the client's headers only
            if name not in sent and name in request.headers:
                del request.headers[name]
        try:
            response = await http.send(request, stream=True)
        except httpx.PoolTimeout:
            log.warning("%s %s: no upstream connection free in time", scope["method"], scope["path"])
            await send_error(send, 503)
            return
        except httpx.TimeoutException as exc:
            log.warning("%s %s: upstream %s timed out: %s", scope["method"], scope["path"], self.upstream,
                        type(exc).__name__)
            await send_error(send, 504)
            return
        except (httpx.HTTPError, UpstreamError) as exc:
            log.warning("%s %s: upstream %s failed: %s: %s", scope["method"], scope["path"], self.upstream,
                        type(exc).__name__, exc)
            await send_error(send, 502)
            return
        try:
            out = [(k, v) for k, v in _strip(list(response.headers.raw)) if k.lower() not in _SERVER_SUPPLIED]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError as exc:
                # The status line is gone already: the only honest thing left is to break the connection.
                raise UpstreamError(f"{scope['method']} {scope['path']}: upstream {self.upstream} failed "
                                    f"mid-response: {type(exc).__name__}") from None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

