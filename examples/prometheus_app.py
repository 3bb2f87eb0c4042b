"""An app that already exposes Prometheus metrics, with the guests' figures among them.

    uvicorn examples.prometheus_app:app      then   curl http://127.0.0.1:8000/metrics/

The guests count their calls on the call path (in C on the native path); `GuestCollector` reads those counters (and the
pools) when /metrics is scraped, on the event loop that runs the guests.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY, make_asgi_app
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from http_wasm_asgi import Guest, HttpWasmMiddleware
from http_wasm_asgi.metrics import GuestCollector

GUESTS = Path(__file__).resolve().parent.parent / "guests" / "zig"


async def home(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello\n")


REGISTRY.register(GuestCollector())  # once per process: the guests' figures join the app's own metrics
guarded = HttpWasmMiddleware(Starlette(routes=[Route("/", home)]),
                             guests=[Guest(GUESTS / "auth.wasm", name="auth", config=b"demo-token")])
app = Starlette(routes=[Mount("/metrics", make_asgi_app()), Mount("/", guarded)])  # /metrics outside the chain
