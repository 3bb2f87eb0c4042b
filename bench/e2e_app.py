"""The app served by bench/run.py's end-to-end part: BENCH_VARIANT picks bare, raw (the cheapest Python
filter doing the guest's work: a raw ASGI middleware copying x-id), 1 guest or 3 guests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from http_wasm_asgi import Guest, HttpWasmMiddleware

WAT = Path(__file__).resolve().parent.parent / "guests" / "wat"


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


class RawHeaderMiddleware:
    """A raw ASGI middleware copying the request's x-id to the response: what the guest does, in Python."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = next((v for k, v in scope["headers"] if k == b"x-id"), None)

        async def send_with_header(message: Any) -> None:
            if message["type"] == "http.response.start" and value is not None:
                message["headers"] = [*message.get("headers", []), (b"x-id", value)]
            await send(message)

        await self.app(scope, receive, send_with_header)


app: object = Starlette(routes=[Route("/", hello)])
_variant = os.environ.get("BENCH_VARIANT", "bare")
_count = {"bare": 0, "raw": 0, "1 guest": 1, "3 guests": 3}[_variant]
if _variant == "raw":
    app = RawHeaderMiddleware(app)
if _count:
    app = HttpWasmMiddleware(app, [Guest(WAT / "copy_header.wat", name=f"g{i}") for i in range(_count)])  # type: ignore[arg-type]
