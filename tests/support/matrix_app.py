"""The ASGI app every server of tests/test_servers.py runs: several guest chains behind one dispatcher.

The request header `x-matrix` picks the chain (the guests see it and ignore it):

- `conformance-go`, `conformance-zig`: that language's conformance guest in front of `echo_app`;
- `chain`: examples/chain.yaml (examples/hello.py behind the Zig example guests);
- `trailers-go`, `trailers-zig`: the trailers guest (guests/*/trailers) in front of `trailers_app`;
- `stream`: the Zig headeradder guest (it adds `x-streamed: yes`, buffers nothing) in front of
  `stream_until_gone`, a response that never ends;
- `upload`: the Zig bodyrewrite guest (it reads the request body) in front of `echo_app`;
- `count`: the same headeradder in front of `count_app`, with `max_body_size` 1 KiB (bodies stream);
- `trap`: guests/wat/hostile/trap_on_header.wat (`x-trap: request` or `response` traps there);
- `addr`: the ABI driver guest answering with what get_source_addr returns;
- `control`: JSON of what happened inside this process: guest log lines, instances in use per
  chain, and how `stream_until_gone` learned that its client left. `?clear` empties the logs.

Loaded once per server process, at import (`uvicorn tests.support.matrix_app:app`, `daphne ...`, ...).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from http_wasm_asgi import Guest, HttpWasmMiddleware
from http_wasm_asgi.devkit.conformance import load_suite
from http_wasm_asgi.testing import echo_app

from .driver import BUF, RETURN, WRITE_LAST, Program
from .paths import ROOT

TRAILERS_CONFIG = "set x-status ok\nadd x-added one\nadd x-added two\nremove x-drop\n"
APP_TRAILERS = [(b"x-status", b"pending"), (b"x-drop", b"secret"), (b"x-keep", b"1")]

logs: dict[str, list[str]] = {}  # guest logger name -> messages
left: list[str] = []  # how stream_until_gone learned that its client left, one entry per request
upload_calls: list[int] = [0]  # requests the `upload` chain passed on to its app


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logs.setdefault(record.name.rsplit(".", 1)[-1], []).append(record.getMessage())


def _logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"matrix.{name}")
    logger.setLevel(logging.INFO)  # the conformance cases expect the guest's logger at INFO
    logger.propagate = False
    logger.addHandler(_Keep())
    return logger


def _guest_path(lang: str, name: str) -> Path:
    return ROOT / "guests" / "zig" / f"{name}.wasm" if lang == "zig" else ROOT / "guests" / "go" / name / f"{name}.wasm"


async def trailers_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers `body` in two chunks, then the response trailers APP_TRAILERS."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "trailers": True,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"bo", "more_body": True})
    await send({"type": "http.response.body", "body": b"dy", "more_body": False})
    await send({"type": "http.response.trailers", "headers": APP_TRAILERS, "more_trailers": False})


async def stream_until_gone(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Streams 16 KiB chunks until the client leaves; notes how the server said so (in `left`)."""
    async def disconnect() -> str:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return "receive: http.disconnect"

    gone = asyncio.ensure_future(disconnect())
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    try:
        while not gone.done():
            await send({"type": "http.response.body", "body": b"x" * 16384, "more_body": True})
            await asyncio.sleep(0.005)
        left.append(gone.result())
    except Exception as exc:  # the server's send refused: the ASGI way some servers report it
        left.append(f"send raised {type(exc).__name__}")
        raise
    finally:
        gone.cancel()


async def count_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the request body and answers `<bytes> bytes in <n> chunks`, then sends 64 chunks of 16 KiB."""
    size = chunks = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        chunks += bool(message.get("body"))
        more = message.get("more_body", False) and message["type"] == "http.request"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-received", f"{size} bytes in {chunks} chunks".encode())]})
    for _ in range(64):
        await send({"type": "http.response.body", "body": b"y" * 16384, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def counted(inner: Any) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        upload_calls[0] += 1
        await inner(scope, receive, send)
    return app


def _chains() -> dict[str, HttpWasmMiddleware]:
    config = load_suite().config
    chains = {f"conformance-{lang}": HttpWasmMiddleware(echo_app, guests=[
        Guest(_guest_path(lang, "conformance"), name=f"conformance-{lang}", config=config,
              logger=_logger(f"conformance-{lang}"))]) for lang in ("go", "zig")}
    chains.update({f"trailers-{lang}": HttpWasmMiddleware(trailers_app, guests=[
        Guest(_guest_path(lang, "trailers"), name=f"trailers-{lang}", config=TRAILERS_CONFIG)])
        for lang in ("go", "zig")})
    chains["chain"] = HttpWasmMiddleware.from_config(ROOT / "examples" / "chain.yaml")
    chains["stream"] = HttpWasmMiddleware(stream_until_gone, guests=[
        Guest(_guest_path("zig", "headeradder"), name="headeradder", config="response x-streamed yes")])
    chains["upload"] = HttpWasmMiddleware(counted(echo_app), guests=[
        Guest(_guest_path("zig", "bodyrewrite"), name="bodyrewrite",
              config=json.dumps({"request": [{"from": "a", "to": "b"}]}))])
    chains["count"] = HttpWasmMiddleware(count_app, guests=[
        Guest(_guest_path("zig", "headeradder"), name="headeradder-count", config="response x-streamed yes")],
        max_body_size=1024)
    chains["trap"] = HttpWasmMiddleware(echo_app, guests=[
        Guest(ROOT / "guests" / "wat" / "hostile" / "trap_on_header.wat", name="trap")])
    chains["addr"] = HttpWasmMiddleware(echo_app, guests=[
        Program().req("get_source_addr", BUF, 64).req(WRITE_LAST, 1, BUF, 0).req(RETURN, 0).guest()])  # 1: the response
    return chains


CHAINS = _chains()


async def control(scope: dict[str, Any], receive: Any, send: Any) -> None:
    client = scope.get("client")
    report = {"logs": {name: list(lines) for name, lines in logs.items()}, "left": left,
              "upload_calls": upload_calls[0],
              "in_use": {name: sum(g.pool.in_use for g in chain.guests) for name, chain in CHAINS.items()},
              "scope": {"http_version": scope.get("http_version"), "client": client,
                        "client_types": [type(client).__name__, *(type(part).__name__ for part in client or ())],
                        "raw_path": "raw_path" in scope,
                        "extensions": sorted(scope.get("extensions") or ())}}
    if scope.get("query_string") == b"clear":
        logs.clear()
    body = json.dumps(report).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    name = dict(scope["headers"]).get(b"x-matrix", b"control").decode()
    await (control if name == "control" else CHAINS[name])(scope, receive, send)
