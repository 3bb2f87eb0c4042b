"""The example app: a small Starlette service the example chains run in front of."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello from the app\n")


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path, "query": request.url.query,
                         "headers": dict(request.headers)})


app = Starlette(routes=[Route("/", home), Route("/whoami", whoami), Route("/{path:path}", whoami)])
