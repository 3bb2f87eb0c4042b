"""Sidecar mode: an ASGI app that forwards every request to an upstream HTTP service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                        b"trailer", b"transfer-encoding", b"upgrade", b"host"})


class ProxyApp:
    """Forwards method, raw path and query, headers (minus hop-by-hop) and streamed bodies.

    Upstream down gives 502, an upstream timeout 504. One httpx client per process.
    """

    def __init__(self, upstream: str, *, timeout: float = 30.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.upstream, timeout=self.timeout,
                                             limits=httpx.Limits(max_connections=256), follow_redirects=False)
        return self._client

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._client is not None:
                        await self._client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        client = scope.get("client")
        if client:
            prior = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
            chain = b", ".join([*prior, str(client[0]).encode()])
            headers = [(k, v) for k, v in headers if k != b"x-forwarded-for"] + [(b"x-forwarded-for", chain)]
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        host = next((v for k, v in scope["headers"] if k == b"host"), None)
        if host:
            headers.append((b"x-forwarded-host", host))
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        url = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")

        async def body() -> AsyncIterator[bytes]:
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return
                yield message.get("body", b"")
                more = message.get("more_body", False)

        client_ = self._get_client()
        request = client_.build_request(scope["method"], url, headers=headers, content=body())
        try:
            response = await client_.send(request, stream=True)
        except httpx.TimeoutException:
            await _error(send, 504, b"Gateway Timeout")
            return
        except httpx.HTTPError:
            await _error(send, 502, b"Bad Gateway")
            return
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError:
                pass  # upstream broke mid-body: end what we started
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _error(send: Any, status: int, reason: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(reason)).encode())]})
    await send({"type": "http.response.body", "body": reason})
