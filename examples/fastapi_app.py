"""FastAPI with a guest chain added the usual way: `app.add_middleware(HttpWasmMiddleware, guests=[...])`.

Run from the repository's top folder:  uvicorn examples.fastapi_app:app --port 8080

    curl -i http://127.0.0.1:8080/items/7                 -> 200 {"item": "7", ...}, x-powered-by: http-wasm
    curl -i http://127.0.0.1:8080/v1/items/7              -> the router rewrites it to /items/7
    curl -i http://127.0.0.1:8080/docs-old                -> 302 to /docs
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request

from http_wasm_asgi import Guest, HttpWasmMiddleware

GUESTS = Path(__file__).resolve().parent.parent / "guests" / "zig"

app = FastAPI()


@app.get("/items/{item}")
async def item(item: str, request: Request) -> dict[str, str]:
    return {"item": item, "x-request-source": request.headers.get("x-request-source", "")}


app.add_middleware(HttpWasmMiddleware, guests=[                       # outermost first
    Guest(GUESTS / "accesslog.wasm"),
    Guest(GUESTS / "router.wasm", config="redirect /docs-old /docs\nrewrite /v1/ /"),
    Guest(GUESTS / "headeradder.wasm", config="request x-request-source edge\nresponse x-powered-by http-wasm"),
])
