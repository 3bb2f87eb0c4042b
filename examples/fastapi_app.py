"""FastAPI with a guest chain added the usual way: `app.add_middleware(HttpWasmMiddleware, guests=[...])`.

Run: uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from http_wasm_asgi import Guest, HttpWasmMiddleware

GUESTS = Path(__file__).resolve().parent / "guests"

app = FastAPI()


@app.get("/items/{item}")
async def item(item: str) -> dict[str, str]:
    return {"item": item}


app.add_middleware(HttpWasmMiddleware, guests=[
    Guest(GUESTS / "access_log.wat"),
    Guest(GUESTS / "header_adder.wat", config=b"x-powered-by: http-wasm"),
])
