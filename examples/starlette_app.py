"""Starlette with a guest chain added the usual way: `app.add_middleware(HttpWasmMiddleware, guests=[...])`.

Run from the repository's top folder:  uvicorn examples.starlette_app:app --port 8080

    curl -i http://127.0.0.1:8080/hello                                -> 401 (auth)
    curl -i -H 'authorization: Bearer demo-token' http://127.0.0.1:8080/hello
                                 -> 200 "hello (checked by: http-wasm-auth)", x-powered-by: http-wasm
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from http_wasm_asgi import Guest, HttpWasmMiddleware

GUESTS = Path(__file__).resolve().parent.parent / "guests" / "zig"


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello (checked by: {request.headers.get('x-checked-by', 'nobody')})\n")


app = Starlette(routes=[Route("/hello", hello)])
app.add_middleware(HttpWasmMiddleware, guests=[                       # outermost first
    Guest(GUESTS / "auth.wasm", config="demo-token"),
    Guest(GUESTS / "headeradder.wasm", config="request x-checked-by http-wasm-auth\n"
                                              "response x-powered-by http-wasm"),
])
