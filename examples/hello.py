"""The example app: a small Starlette service the example chains run in front of.

Its responses carry `x-backend-host` (an internal detail the `redact` guest of
examples/chain.yaml removes before the client sees it).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

INTERNAL = {"x-backend-host": "app-7.internal"}


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello from the app\n", headers=INTERNAL)


async def whoami(request: Request) -> JSONResponse:
    """What the app saw: path, query and request headers (after the guests changed them)."""
    return JSONResponse({"path": request.url.path, "query": request.url.query,
                         "headers": dict(request.headers)}, headers=INTERNAL)


app = Starlette(routes=[Route("/", home), Route("/whoami", whoami), Route("/{path:path}", whoami)])
