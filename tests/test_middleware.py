"""The ASGI binding: chains, short-circuits, traps, pooling, frameworks, and a real uvicorn server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from http_wasm_asgi import Guest, GuestError, HttpWasmMiddleware
from http_wasm_asgi.testing import GuestClient, echo_app, serve
from support import WAT
from support.driver import RETURN, TRAP, Program

pytestmark = pytest.mark.usefixtures("call_path")  # every test on the native and the Python path

REQ, RESP = 0, 1


def chain_guest(tag: str, *, trap: bool = False, stop: bool = False) -> Guest:
    """A guest that adds `x-chain: tag` to the request and `x-back: tag` to the response."""
    p = Program().req("enable_features", 2)
    p.req("add_header_value", REQ, *p.s("x-chain"), *p.s(tag))
    if trap:
        p.req(TRAP)
    if stop:
        p.req("set_status_code", 403).req("write_body", RESP, *p.s(f"stopped by {tag}")).req(RETURN, 0)
    p.resp("add_header_value", RESP, *p.s("x-back"), *p.s(tag))
    return p.guest(name=tag)


def app_headers(r: httpx.Response, name: str) -> list[str]:
    return [v for k, v in r.json()["headers"] if k == name]


def test_chain_order_both_ways() -> None:
    with GuestClient(chain_guest("g1"), chain_guest("g2"), chain_guest("g3")) as client:
        r = client.get("/")
    assert r.app is not None and r.app.headers.get_list("x-chain") == ["g1", "g2", "g3"]  # request: outermost first
    assert r.headers.get_list("x-back") == ["g3", "g2", "g1"]  # response: innermost first


def test_short_circuit_in_the_middle() -> None:
    g1, g2, g3 = chain_guest("g1"), chain_guest("g2", stop=True), chain_guest("g3")
    with GuestClient(g1, g2, g3) as client:
        r = client.get("/")
    assert (r.status, r.text) == (403, "stopped by g2")
    assert r.app is None and "x-echo" not in r.headers  # the app was not called
    assert r.headers.get_list("x-back") == ["g1"]  # g1 saw the response; g2 (stopped) and g3 (never ran) did not
    assert g3.pool.in_use == 0 and g2.pool.in_use == 0


def test_trap_in_the_middle() -> None:
    g1, g2, g3 = chain_guest("g1"), chain_guest("g2", trap=True), chain_guest("g3")
    with GuestClient(g1, g2, g3) as client:
        r = client.get("/secret-path")
        assert (r.status, r.text) == (500, "Internal Server Error")
        assert "Traceback" not in r.text and "unreachable" not in r.text
        assert r.trapped and (r.traps[0].guest, r.traps[0].export) == ("g2", "handle_request")
        assert r.app is None and r.headers.get_list("x-back") == []  # g1 got is_error, no response header
        assert g2.pool.size == 0  # the trapped instance was thrown away
        assert g1.pool.in_use == 0
        r2 = client.get("/")
        assert r2.status == 500 and r2.trapped  # g2 traps on every request, but a fresh instance served it
        assert g2.pool.size == 0


async def test_trapped_instance_is_replaced_and_next_request_works(client: Any) -> None:
    p = Program()
    p.req("get_header_values", REQ, *p.s("x-id"), 0x1000, 0)
    p.req("set_status_code", 0)  # traps every time: an invalid status
    bad = p.guest(name="bad", max_instances=1)
    good = Program().guest(name="good")
    c = client(HttpWasmMiddleware(echo_app, guests=[good, bad]))
    for _ in range(3):  # with max_instances=1, each request needs the broken instance replaced
        assert (await c.get("/")).status_code == 500
    assert bad.pool.size == 0 and good.pool.in_use == 0
    assert (await client(HttpWasmMiddleware(echo_app, guests=[good])).get("/")).status_code == 200


async def test_reuse_instances_keeps_state_unless_disabled(client: Any) -> None:
    reused = Guest(WAT / "counter.wat", max_instances=1)
    fresh = Guest(WAT / "counter.wat", max_instances=1, reuse_instances=False)
    c1 = client(HttpWasmMiddleware(echo_app, guests=[reused]))
    c2 = client(HttpWasmMiddleware(echo_app, guests=[fresh]))
    assert [(await c1.get("/")).headers["x-count"] for _ in range(3)] == ["1", "2", "3"]
    assert [(await c2.get("/")).headers["x-count"] for _ in range(3)] == ["1", "1", "1"]
    assert fresh.pool.idle == 0


async def test_pool_bound_makes_requests_wait_not_fail(client: Any) -> None:
    running = 0
    peak = 0

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guest = Guest(WAT / "copy_header.wat", max_instances=2)
    c = client(HttpWasmMiddleware(slow, guests=[guest]))
    responses = await asyncio.gather(*(c.get("/", headers={"x-id": str(i)}) for i in range(10)))
    assert [r.headers["x-id"] for r in responses] == [str(i) for i in range(10)]
    assert peak <= 2 and guest.pool.size <= 2
    assert guest.pool.in_use == 0


async def test_200_concurrent_requests_in_process(client: Any) -> None:
    guest = Guest(WAT / "copy_header.wat", max_instances=16)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.001)
        await echo_app(scope, receive, send)

    c = client(HttpWasmMiddleware(app, guests=[guest]))
    responses = await asyncio.gather(*(c.get("/", headers={"x-id": f"req-{i}"}) for i in range(200)))
    assert [r.headers["x-id"] for r in responses] == [f"req-{i}" for i in range(200)]


@pytest.mark.slow
def test_200_concurrent_requests_through_uvicorn() -> None:
    guest = Guest(WAT / "copy_header.wat")
    app = HttpWasmMiddleware(echo_app, guests=[guest])

    async def hammer(base: str) -> list[tuple[str, str | None, int]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as c:
            async def one(i: int) -> tuple[str, str | None, int]:
                r = await c.get(f"/item/{i}", headers={"x-id": f"value-{i}"})
                return f"value-{i}", r.headers.get("x-id"), r.status_code
            return await asyncio.gather(*(one(i) for i in range(200)))

    with serve(app) as base:
        outcomes = asyncio.run(hammer(base))
    assert all(status == 200 for _, _, status in outcomes)
    assert [sent for sent, _, _ in outcomes] == [got for _, got, _ in outcomes]
    assert guest.pool.in_use == 0


def test_end_to_end_uvicorn_chain_with_body_rewrite_and_short_circuit() -> None:
    rewrite = Program().req("enable_features", 3)
    rewrite.req("write_body", REQ, *rewrite.s("from the guest"))
    rewrite.resp("write_body", RESP, *rewrite.s("response rewritten"))
    with GuestClient(chain_guest("outer"), rewrite.guest(name="rewrite"), server=True) as client:
        r = client.post("/x?y=1", b"client body")
    assert r.status == 200
    assert r.text == "response rewritten"
    assert r.headers["content-length"] == str(len("response rewritten"))
    assert r.headers.get_list("x-back") == ["outer"]
    assert r.app is not None and (r.app.uri, r.app.body) == ("/x?y=1", b"from the guest")
    assert r.app.headers["content-length"] == str(len("from the guest"))
    with GuestClient(chain_guest("s", stop=True), server=True) as client:
        r = client.get("/")
    assert (r.status, r.text, r.app) == (403, "stopped by s", None)


async def test_starlette_add_middleware(client: Any) -> None:
    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse(f"hello {request.headers.get('x-chain')}")

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(HttpWasmMiddleware, guests=[chain_guest("star")])
    r = await client(app).get("/")
    assert (r.text, r.headers["x-back"]) == ("hello star", "star")


async def test_fastapi_add_middleware(client: Any) -> None:
    api = FastAPI()

    @api.get("/items/{item}")
    async def item(item: str) -> dict[str, str]:
        return {"item": item}

    rewrite = Program()
    rewrite.req("set_uri", *rewrite.s("/items/rewritten"))
    api.add_middleware(HttpWasmMiddleware, guests=[rewrite.guest(name="rewrite")])
    r = await client(api).get("/items/original")
    assert r.json() == {"item": "rewritten"}


async def test_websocket_and_lifespan_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = HttpWasmMiddleware(app, guests=[chain_guest("x")])
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await mw({"type": "websocket"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


def test_wasi_guest_output_becomes_log_lines(guest_logs: pytest.LogCaptureFixture) -> None:
    guest = Guest(WAT / "wasi_output.wat")
    assert guest.info.uses_wasi
    lines = [r.getMessage() for r in guest_logs.records if r.name == "http_wasm_asgi.guest.wasi_output"]
    assert lines == ["hello from wasi"]  # both buffers of one fd_write, one line


@pytest.mark.parametrize(("file", "message"), [
    ("no_handle_response.wat", "missing export 'handle_response'"),
    ("no_memory.wat", "missing export 'memory'"),
    ("wrong_signature.wat", "export 'handle_request' has type func() -> (i32), the ABI needs func() -> (i64)"),
    ("unknown_host_function.wat", "imports http_handler.get_path, which the http-handler ABI does not define"),
    ("bad_import_signature.wat", "imports http_handler.get_uri as func(i32) -> (i32)"),
    ("foreign_import.wat", "imports env.abort"),
    ("traps_at_init.wat", "failed to initialize in _initialize: wasm `unreachable` instruction executed"),
    ("request_fn_at_start.wat", "get_method needs a request"),
    ("exits_at_init.wat", "exited with code 1; guest output: bad config: missing token"),
])
def test_guest_errors_name_the_guest_and_the_problem(file: str, message: str) -> None:
    with pytest.raises(GuestError) as info:
        Guest(WAT / "invalid" / file)
    assert f"guest '{Path(file).stem}'" in str(info.value)
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)


def test_guest_error_for_missing_file_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(GuestError, match=r"guest 'nope': cannot read .*nope.wasm"):
        Guest(tmp_path / "nope.wasm")
    with pytest.raises(GuestError, match="guest 'junk': not a WebAssembly module"):
        Guest(b"\x00\x01garbage", name="junk")
    with pytest.raises(GuestError, match="guest 'cut': not a valid WebAssembly module"):
        Guest(b"\0asm\x01\0\0\0\x01", name="cut")


def test_start_section_guest_enables_features_and_reads_config(guest_logs: pytest.LogCaptureFixture) -> None:
    guest = Guest(WAT / "start_section.wat", config="cfg-value")
    assert guest.features == 2
    assert "start section ran" in guest_logs.text

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=HttpWasmMiddleware(echo_app, guests=[guest]))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/")

    assert asyncio.run(go()).headers["x-config"] == "cfg-value"


def test_config_mapping_is_sent_as_json() -> None:
    guest = Guest(WAT / "start_section.wat", config={"routes": {"/a": "/b"}})
    assert guest.config == b'{"routes":{"/a":"/b"}}'


def test_logger_option(guest_logs: pytest.LogCaptureFixture) -> None:
    guest_logs.set_level(logging.INFO, logger="myapp")
    Guest(WAT / "start_section.wat", logger="myapp.filters")
    assert [r.name for r in guest_logs.records if "start section ran" in r.getMessage()] == [
        "myapp.filters.start_section"]


async def test_threaded_guests_keep_per_request_values_apart(client: Any) -> None:
    guests = [Guest(WAT / "copy_header.wat", name="t1", threaded=True, max_instances=8),
              chain_guest("t2"), Guest(WAT / "counter.wat", threaded=True)]
    guests[1].threaded = True

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.001)
        await echo_app(scope, receive, send)

    c = client(HttpWasmMiddleware(app, guests=guests))
    responses = await asyncio.gather(*(c.get("/", headers={"x-id": f"v{i}"}) for i in range(100)))
    assert [r.headers["x-id"] for r in responses] == [f"v{i}" for i in range(100)]
    assert all(r.headers["x-back"] == "t2" and app_headers(r, "x-chain") == ["t2"] for r in responses)
    assert all(g.pool.in_use == 0 for g in guests)


async def test_a_client_that_leaves_while_its_body_is_read_for_a_guest_gets_nothing_run(
        guest_logs: pytest.LogCaptureFixture) -> None:
    """http.disconnect while the host buffers the body for a guest that reads it: that guest's handle_request
    and the app never see half a body; the guest before it gets handle_response(is_error=1); no response."""
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append("app")

    outer = Guest(WAT.parent / "zig" / "accesslog.wasm", name="outer")  # logs "METHOD URI error" on is_error
    reader = Guest(WAT.parent / "zig" / "bodyrewrite.wasm", name="reader", config='{"request": []}')
    middleware = HttpWasmMiddleware(app, guests=[outer, reader])
    messages = iter([{"type": "http.request", "body": b"half", "more_body": True}, {"type": "http.disconnect"}])
    sent: list[Any] = []

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": [(b"content-length", b"100")], "http_version": "1.1", "client": ("127.0.0.1", 1)}
    await middleware(scope, receive, send)
    assert (called, sent) == ([], [])
    assert outer.pool.in_use == reader.pool.in_use == 0
    assert "POST / error" in guest_logs.messages
