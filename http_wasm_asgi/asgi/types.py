"""ASGI types and the one generic error response: a leaf module every ASGI-facing module imports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REASONS: Final = {400: b"Bad Request", 413: b"Payload Too Large", 500: b"Internal Server Error",
                  502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}


async def send_error(send: Send, status: int) -> None:
    """A short, generic plain-text error response (the reason phrase); details belong in the log."""
    reason = REASONS.get(status, b"Error")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(reason)).encode())]})
    await send({"type": "http.response.body", "body": reason, "more_body": False})
