"""The app served by bench/run.py's end-to-end part: BENCH_VARIANT picks bare, 1 guest or 3 guests."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from http_wasm_asgi import Guest, HttpWasmMiddleware

WAT = Path(__file__).resolve().parent.parent / "guests" / "wat"


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


app: object = Starlette(routes=[Route("/", hello)])
_count = {"bare": 0, "1 guest": 1, "3 guests": 3}[os.environ.get("BENCH_VARIANT", "bare")]
if _count:
    app = HttpWasmMiddleware(app, [Guest(WAT / "copy_header.wat", name=f"g{i}") for i in range(_count)])  # type: ignore[arg-type]
