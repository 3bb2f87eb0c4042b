"""Bodies that no guest asked to buffer stream through with flat memory, both ways."""

from __future__ import annotations

import tracemalloc
from typing import Any

from http_wasm_asgi import Guest, HttpWasmMiddleware
from support import WAT

CHUNK = 64 * 1024
CHUNKS = 256  # 16 MiB each way


async def test_large_bodies_stream_without_growing_memory() -> None:
    received = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal received
        more = True
        while more:
            message = await receive()
            received += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(CHUNKS):
            await send({"type": "http.response.body", "body": b"y" * CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent = 0
    chunks_in = 0

    async def receive() -> dict[str, Any]:
        nonlocal chunks_in
        chunks_in += 1
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": chunks_in < CHUNKS}

    async def send(message: dict[str, Any]) -> None:
        nonlocal sent
        sent += len(message.get("body", b""))

    guests = [Guest(WAT / "copy_header.wat", name=f"g{i}") for i in range(3)]
    mw = HttpWasmMiddleware(app, guests)
    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": [(b"x-id", b"1")], "http_version": "1.1", "client": ("127.0.0.1", 1)}
    tracemalloc.start()
    try:
        await mw(scope, receive, send)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == sent == CHUNK * CHUNKS
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes for {CHUNK * CHUNKS} bytes each way"
