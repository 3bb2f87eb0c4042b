"""A stand-in upstream service for the sidecar example (any HTTP service works)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def anything(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"service": "upstream", "method": request.method, "path": request.url.path,
                         "query": request.url.query, "headers": dict(request.headers), "body_bytes": len(body)})


app = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])])
