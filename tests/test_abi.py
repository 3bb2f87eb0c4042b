"""Every host function of the http-handler ABI, driven from a real guest (guests/wat/driver.wat)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from http_wasm_asgi import HttpWasmMiddleware
from http_wasm_asgi.testing import echo_app
from support.driver import (
    BUF,
    BUF2,
    EMIT_RESULTS,
    FILL,
    LOG_IF_ERROR,
    READ_ALL,
    RECORD_CTX,
    RETURN,
    SET_HEADER_LAST,
    WRITE_LAST,
    Program,
    results,
    split,
)

pytestmark = pytest.mark.usefixtures("call_path")  # every test on the native and the Python path

REQ, RESP = 0, 1  # header / body kinds


def short_circuit(p: Program) -> Program:
    """End handle_request with next=0, the results log as the response body."""
    return p.req(EMIT_RESULTS, RESP).req(RETURN, 0)


async def run(client: Any, p: Program, method: str = "GET", url: str = "/", **kw: Any) -> Any:
    app = HttpWasmMiddleware(echo_app, guests=[p.guest()])
    return await client(app).request(method, url, **kw)


async def asgi_call(app: Any, scope_extra: dict[str, Any], body: bytes = b"") -> list[dict[str, Any]]:
    """Drive an ASGI app directly with a hand-made scope; returns the messages it sent."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "", "headers": [(b"host", b"x")],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80), "extensions": {},
    }
    scope.update(scope_extra)
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


# --- administrative ---
async def test_enable_features_request_scope_accumulates(client: Any) -> None:
    p = short_circuit(Program().req("enable_features", 1).req("enable_features", 2).req("enable_features", 4))
    r = await run(client, p)
    # what was asked plus what was on; no trailers bit: ASGITransport offers no trailers extension
    assert results(r.content) == [1, 3, 3]


async def test_enable_features_at_init_applies_to_every_request_and_request_ones_do_not_leak(client: Any) -> None:
    p = Program().init("enable_features", 1)
    p.req("enable_features", 0).req("enable_features", 2)
    short_circuit(p)
    guest = p.guest(max_instances=1)
    assert guest.features == 1
    app = HttpWasmMiddleware(echo_app, guests=[guest])
    c = client(app)
    first = results((await c.get("/")).content)
    second = results((await c.get("/")).content)
    assert first == [1, 3]
    assert second == [1, 3]  # buffer_response from the first request did not stick to the guest


async def test_get_config_buf_limit_rules(client: Any) -> None:
    p = Program()
    p.req(FILL, BUF, 64, 0xAA)
    p.req("get_config", BUF, 0)  # length only
    p.req("get_config", BUF, 4)  # too small: nothing written
    p.req("write_body", RESP, BUF, 4)  # the sentinel must still be there
    p.req("get_config", BUF, 0xFFFF)  # fits
    p.req(WRITE_LAST, RESP, BUF, 0)
    p.req(RETURN, 0)
    config = p.config()
    r = await run(client, p)
    assert r.content[:4] == b"\xaa" * 4
    assert r.content[4:] == config


async def test_log_maps_levels_and_log_enabled_is_honest(client: Any, guest_logs: pytest.LogCaptureFixture) -> None:
    p = Program()
    for level in (-1, 0, 1, 2, 3):
        ptr, n = p.s(f"message at {level}")
        p.req("log", level, ptr, n)
    p.req("log", 0, 0xFFFFFFF0, 100)  # a wild pointer is ignored, not a trap
    for level in (-1, 0, 1, 2, 3):
        p.req("log_enabled", level)
    short_circuit(p)
    r = await run(client, p)
    assert r.status_code == 200
    assert results(r.content)[6:] == [0, 1, 1, 1, 0]
    levels = {rec.getMessage(): rec.levelno for rec in guest_logs.records if rec.name.endswith(".driver")}
    assert levels == {"message at 0": logging.INFO, "message at 1": logging.WARNING, "message at 2": logging.ERROR}
    logging.getLogger("http_wasm_asgi.guest.driver").setLevel(logging.DEBUG)
    try:
        r = await run(client, p)
        assert results(r.content)[6] == 1  # debug now enabled
    finally:
        logging.getLogger("http_wasm_asgi.guest.driver").setLevel(logging.NOTSET)


# --- request line ---
async def test_get_method_and_buf_limit(client: Any) -> None:
    p = Program().req(FILL, BUF, 16, ord("#")).req("get_method", BUF, 3).req("write_body", RESP, BUF, 4)
    p.req("get_method", BUF, 16).req(WRITE_LAST, RESP, BUF, 0).req(RETURN, 0)
    r = await run(client, p, "POST", content=b"x")
    assert r.content == b"####POST"  # limit 3 < len 4: untouched; then the method


async def test_set_method_reaches_the_app(client: Any) -> None:
    p = Program()
    p.req("set_method", *p.s("PATCH"))
    r = await run(client, p)
    assert r.json()["method"] == "PATCH"


@pytest.mark.parametrize("method", ["GE T", "", "GET\r\n"])
async def test_set_method_rejects_invalid(client: Any, method: str, guest_logs: pytest.LogCaptureFixture) -> None:
    p = Program()
    p.req("set_method", *p.s(method))
    r = await run(client, p)
    assert r.status_code == 500
    assert r.text == "Internal Server Error"
    assert "set_method" in guest_logs.text and "'driver'" in guest_logs.text


@pytest.mark.parametrize(("url", "expected"), [
    ("/a%20b/c%2Fd?x=1&y=%2F", b"/a%20b/c%2Fd?x=1&y=%2F"),
    ("/", b"/"),
    ("/plain", b"/plain"),
    ("/q?", b"/q"),
])
async def test_get_uri_is_raw_and_encoded(client: Any, url: str, expected: bytes) -> None:
    p = Program().req("get_uri", BUF, 512).req(WRITE_LAST, RESP, BUF, 0).req(RETURN, 0)
    r = await run(client, p, url=url)
    assert r.content == expected


async def test_get_uri_is_slash_when_empty(client: Any) -> None:
    p = Program().req("get_uri", BUF, 512).req(WRITE_LAST, RESP, BUF, 0).req(RETURN, 0)
    app = HttpWasmMiddleware(echo_app, guests=[p.guest()])
    sent = await asgi_call(app, {"path": "", "raw_path": b""})
    assert sent[1]["body"] == b"/"


async def test_set_uri_reaches_the_app_consistently(client: Any) -> None:
    p = Program()
    p.req("set_uri", *p.s("/new/p%2Fq%20r?z=9&w=%C3%A9"))
    p.req("get_uri", BUF, 512).req(SET_HEADER_LAST, RESP, *p.s("x-uri"), BUF, 0)
    r = await run(client, p, url="/old/path?q=1")
    seen = r.json()
    assert (seen["path"], seen["raw_path"], seen["query_string"]) == ("/new/p/q r", "/new/p%2Fq%20r", "z=9&w=%C3%A9")
    assert r.headers["x-uri"] == "/new/p%2Fq%20r?z=9&w=%C3%A9"


async def test_set_uri_without_query_drops_it(client: Any) -> None:
    p = Program()
    p.req("set_uri", *p.s("/plain"))
    r = await run(client, p, url="/old?q=1")
    assert (r.json()["path"], r.json()["query_string"]) == ("/plain", "")


@pytest.mark.parametrize("uri", ["no-slash", "/with space", "/bad\nline", "/caf\xe9"])
async def test_set_uri_rejects_invalid(client: Any, uri: str) -> None:
    p = Program()
    p.req("set_uri", *p.s(uri.encode("latin-1")))
    r = await run(client, p)
    assert r.status_code == 500


@pytest.mark.parametrize(("version", "expected"), [("1.0", b"HTTP/1.0"), ("1.1", b"HTTP/1.1"), ("2", b"HTTP/2.0")])
async def test_get_protocol_version(version: str, expected: bytes) -> None:
    p = Program().req("get_protocol_version", BUF, 64).req(WRITE_LAST, RESP, BUF, 0).req(RETURN, 0)
    app = HttpWasmMiddleware(echo_app, guests=[p.guest()])
    sent = await asgi_call(app, {"http_version": version})
    assert sent[1]["body"] == expected


async def test_get_protocol_version_from_a_server_without_http_version() -> None:
    """http_version is optional in ASGI (default "1.1")."""
    p = Program().req("get_protocol_version", BUF, 64).req(WRITE_LAST, RESP, BUF, 0).req(RETURN, 0)
    app = HttpWasmMiddleware(echo_app, guests=[p.guest()])

    async def without_http_version(scope: dict[str, Any], receive: Any, send: Any) -> None:
        del scope["http_version"]
        await app(scope, receive, send)

    sent = await asgi_call(without_http_version, {})
    assert sent[1]["body"] == b"HTTP/1.1"


@pytest.mark.parametrize(("path", "expected"), [
    ("/a b/c", b"/a%20b/c?q=1"), ("/caf\u00e9/100%", b"/caf%C3%A9/100%25?q=1"), ("/a:b@c;d=e", b"/a:b@c;d=e?q=1"),
])
async def test_get_uri_from_a_server_without_raw_path(path: str, expected: bytes) -> None:
    """raw_path is optional in ASGI: the host encodes the decoded path again."""
    p = Program().req("get_uri", BUF, 512).req(WRITE_LAST, RESP, BUF, 0).req(RETURN, 0)
    app = HttpWasmMiddleware(echo_app, guests=[p.guest()])

    async def without_raw_path(scope: dict[str, Any], receive: Any, send: Any) -> None:
        del scope["raw_path"]
        await app(scope, receive, send)

    sent = await asgi_call(without_raw_path, {"path": path, "query_string": b"q=1"})
    assert sent[1]["body"] == expected


@pytest.mark.parametrize(("client_addr", "expected"), [
    (("127.0.0.1", 5000), b"127.0.0.1:5000"),
    (("fe80::101e:2bdf:8bfb:b97e", 12345), b"[fe80::101e:2bdf:8bfb:b97e]:12345"),
    (("10.0.0.1", "8080"), b"10.0.0.1:8080"),  # Granian's ports are strings
    (["10.0.0.1", 8080], b"10.0.0.1:8080"),  # Daphne's client is a list
    (None, b""),  # a Unix socket on uvicorn, Hypercorn or Daphne: no peer address, an empty one
    (("", "0"), b""),  # ... and on Granian
])
async def test_get_source_addr(client_addr: tuple[str, Any], expected: bytes) -> None:
    p = Program().req("get_source_addr", BUF, 64).req(WRITE_LAST, RESP, BUF, 0).req(RETURN, 0)
    app = HttpWasmMiddleware(echo_app, guests=[p.guest()])
    sent = await asgi_call(app, {"client": client_addr})
    assert sent[1]["body"] == expected


# --- headers ---
async def test_get_header_names_nul_terminated_lowercase_unique(client: Any) -> None:
    p = Program().req(FILL, BUF, 8, 0x55).req("get_header_names", REQ, BUF, 5).req("write_body", RESP, BUF, 8)
    p.req("get_header_names", REQ, BUF, 4096).req(WRITE_LAST, RESP, BUF, 0).req(EMIT_RESULTS, RESP).req(RETURN, 0)
    headers = [("X-Case-A", "1"), ("X-Case-B", "2"), ("x-case-a", "3")]
    r = await run(client, p, headers=headers)
    assert r.content[:8] == b"\x55" * 8  # too small: nothing written
    count, length = split(results(r.content[-24:])[2])
    names = r.content[8:8 + length]
    assert names.endswith(b"\0")
    listed = names[:-1].split(b"\0")
    assert count == len(listed) == len(set(listed))
    assert b"x-case-a" in listed and b"x-case-b" in listed
    assert all(n == n.lower() for n in listed)


@pytest.mark.parametrize(("lookup", "headers", "values"), [
    ("x-single", [("X-Single", "01234567")], [b"01234567"]),
    ("x-multi", [("X-Multi", "a=b"), ("X-Other", "z"), ("X-Multi", "c=d")], [b"a=b", b"c=d"]),
    ("X-MIXED", [("x-mixed", "v")], [b"v"]),
    ("x-missing", [], []),
])
async def test_get_header_values(client: Any, lookup: str, headers: list[tuple[str, str]], values: list[bytes]) -> None:
    p = Program()
    p.req("get_header_values", REQ, *p.s(lookup), BUF, 4096).req(WRITE_LAST, RESP, BUF, 0)
    p.req(EMIT_RESULTS, RESP).req(RETURN, 0)
    r = await run(client, p, headers=headers)
    encoded = b"".join(v + b"\0" for v in values)
    assert r.content[:len(encoded)] == encoded
    assert results(r.content[len(encoded):]) == [(len(values) << 32) | len(encoded)]


async def test_get_header_values_too_small_writes_nothing(client: Any) -> None:
    p = Program().req(FILL, BUF, 16, 0x11)
    p.req("get_header_values", REQ, *p.s("x-v"), BUF, 8).req("write_body", RESP, BUF, 16)
    p.req(EMIT_RESULTS, RESP).req(RETURN, 0)
    r = await run(client, p, headers={"x-v": "01234567"})
    assert r.content[:16] == b"\x11" * 16
    assert results(r.content[16:])[0] == (1 << 32) | 9


async def test_zero_length_header_name_traps(client: Any) -> None:
    p = Program().req("get_header_values", REQ, BUF, 0, BUF2, 100)
    assert (await run(client, p)).status_code == 500


async def test_set_add_remove_request_headers_reach_the_app(client: Any) -> None:
    p = Program()
    p.req("set_header_value", REQ, *p.s("x-set"), *p.s("new"))
    p.req("add_header_value", REQ, *p.s("x-add"), *p.s("second"))
    p.req("remove_header", REQ, *p.s("X-Remove"))
    r = await run(client, p, headers=[("x-set", "old1"), ("x-set", "old2"), ("x-add", "first"), ("x-remove", "gone")])
    seen: dict[str, list[str]] = {}
    for name, value in r.json()["headers"]:
        seen.setdefault(name, []).append(value)
    assert seen["x-set"] == ["new"]
    assert seen["x-add"] == ["first", "second"]
    assert "x-remove" not in seen


async def test_response_headers_set_before_next_reach_the_client(client: Any) -> None:
    p = Program()
    p.req("set_header_value", RESP, *p.s("x-from-guest"), *p.s("yes"))
    p.req("add_header_value", RESP, *p.s("set-cookie"), *p.s("a=b"))
    p.req("add_header_value", RESP, *p.s("set-cookie"), *p.s("c=d"))
    r = await run(client, p)
    assert r.headers["x-from-guest"] == "yes"
    assert r.headers.get_list("set-cookie") == ["a=b", "c=d"]
    assert r.headers["x-echo"] == "1"


@pytest.mark.parametrize(("name", "value"), [("x-bad", "a\r\nx-injected: 1"), ("x bad", "v"), ("x-nul", "a\0b"),
                                             ("bad:name", "v")])
async def test_header_injection_traps(client: Any, name: str, value: str) -> None:
    p = Program()
    p.req("set_header_value", RESP, *p.s(name), *p.s(value))
    r = await run(client, p)
    assert r.status_code == 500
    assert "x-injected" not in r.headers


async def test_response_headers_after_next_need_buffer_response(
        client: Any, guest_logs: pytest.LogCaptureFixture) -> None:
    p = Program()
    p.resp("set_header_value", RESP, *p.s("x-late"), *p.s("1"))
    r = await run(client, p)
    assert r.status_code == 200  # already streamed: the trap is logged, the instance dropped
    assert "x-late" not in r.headers
    assert "can't set response headers after next unless buffer_response is enabled" in guest_logs.text


async def test_response_headers_after_next_with_buffer_response(client: Any) -> None:
    p = Program().req("enable_features", 2)
    p.resp("get_header_values", RESP, *p.s("content-type"), BUF, 256)
    p.resp(SET_HEADER_LAST, RESP, *p.s("x-seen-type"), BUF, 1)
    p.resp("remove_header", RESP, *p.s("x-echo"))
    r = await run(client, p)
    assert r.headers["x-seen-type"] == "application/json"
    assert "x-echo" not in r.headers


async def test_request_headers_are_read_only_after_next(client: Any, guest_logs: pytest.LogCaptureFixture) -> None:
    p = Program().req("enable_features", 2)
    p.resp("set_header_value", REQ, *p.s("x-a"), *p.s("1"))
    r = await run(client, p)
    assert r.status_code == 500
    assert "can't set request headers after next" in guest_logs.text


# --- bodies ---
async def test_read_request_body_with_buffering_keeps_it_for_the_app(client: Any) -> None:
    p = Program().req("enable_features", 1).req(READ_ALL, 0, BUF, 5)
    p.req(SET_HEADER_LAST, RESP, *p.s("x-read"), BUF, 0)
    r = await run(client, p, "POST", content=b"hello conformance body")
    assert r.headers["x-read"] == "hello conformance body"
    assert r.json()["body"] == "hello conformance body"


async def test_read_body_chunks_and_eof(client: Any) -> None:
    p = Program().req("enable_features", 1)
    for _ in range(4):
        p.req("read_body", REQ, BUF, 4)
    short_circuit(p)
    r = await run(client, p, "POST", content=b"0123456789")
    assert [split(v) for v in results(r.content)[1:]] == [(0, 4), (0, 4), (1, 2), (1, 0)]


async def test_read_request_body_without_buffering_consumes_it(client: Any) -> None:
    p = Program().req("read_body", REQ, BUF, 4)
    r = await run(client, p, "POST", content=b"0123456789")
    assert r.json()["body"] == "456789"


async def test_read_body_with_zero_limit_traps(client: Any) -> None:
    p = Program().req("enable_features", 1).req("read_body", REQ, BUF, 0)
    assert (await run(client, p, "POST", content=b"abc")).status_code == 500


async def test_write_request_body_replaces_then_appends(client: Any) -> None:
    p = Program()
    p.req("write_body", REQ, *p.s("re"))
    p.req("write_body", REQ, *p.s("written"))
    r = await run(client, p, "POST", content=b"original body")
    seen = r.json()
    assert seen["body"] == "rewritten"
    assert ["content-length", "9"] in seen["headers"]


async def test_response_body_read_and_rewrite_with_buffer_response(client: Any) -> None:
    p = Program().req("enable_features", 2)
    p.resp(READ_ALL, RESP, BUF, 7)
    p.resp(SET_HEADER_LAST, RESP, *p.s("x-body-len"), BUF, 0)
    p.resp("write_body", RESP, *p.s("replaced"))
    r = await run(client, p)
    assert r.content == b"replaced"
    assert r.headers["content-length"] == "8"
    assert r.headers["x-body-len"].startswith('{"method"')


async def test_response_body_read_without_buffer_response_traps(
        client: Any, guest_logs: pytest.LogCaptureFixture) -> None:
    p = Program().resp("read_body", RESP, BUF, 64)
    r = await run(client, p)
    assert r.status_code == 200  # streamed already
    assert "can't read the response body after next" in guest_logs.text


# --- status ---
async def test_status_code_read_and_overwrite_in_handle_response(client: Any) -> None:
    async def created(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    p = Program().req("enable_features", 2)
    p.req("get_status_code")  # before next: the default
    p.resp("get_status_code").resp("set_status_code", 418).resp(EMIT_RESULTS, RESP)
    r = await client(HttpWasmMiddleware(created, guests=[p.guest()])).get("/")
    assert r.status_code == 418
    assert results(r.content)[1:3] == [200, 201]


@pytest.mark.parametrize("status", [0, 99, 600, 1000, -1])
async def test_set_status_code_rejects_invalid(client: Any, status: int) -> None:
    p = Program().req("set_status_code", status).req(RETURN, 0)
    assert (await run(client, p)).status_code == 500


# --- lifecycle ---
async def test_short_circuit_default_response(client: Any) -> None:
    p = Program().req(RETURN, 0)
    r = await run(client, p)
    assert (r.status_code, r.content, r.headers.get("x-echo")) == (200, b"", None)


async def test_short_circuit_custom_response(client: Any) -> None:
    p = Program().req("set_status_code", 401)
    p.req("set_header_value", RESP, *p.s("www-authenticate"), *p.s("Bearer"))
    p.req("write_body", RESP, *p.s("denied")).req(RETURN, 0)
    r = await run(client, p)
    assert (r.status_code, r.content, r.headers["www-authenticate"]) == (401, b"denied", "Bearer")
    assert r.headers["content-length"] == "6"


async def test_req_ctx_reaches_handle_response(client: Any) -> None:
    p = Program().req("enable_features", 2).req(RETURN, 1, 42)
    p.resp(RECORD_CTX).resp("write_body", RESP, 0, 0).resp(EMIT_RESULTS, RESP)
    r = await run(client, p)
    # results log: enable_features, then RECORD_CTX (req_ctx << 32 | is_error), then the empty write
    assert results(r.content) == [2, 42 << 32, 0]


async def test_app_exception_calls_handle_response_with_is_error(guest_logs: pytest.LogCaptureFixture) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("app failed")

    p = Program()
    p.resp(LOG_IF_ERROR, *p.s("saw is_error"))
    app = HttpWasmMiddleware(broken, guests=[p.guest()])
    with pytest.raises(RuntimeError, match="app failed"):
        await asgi_call(app, {})
    assert "saw is_error" in guest_logs.text


# --- trailers ---
async def test_trailers_supported_when_the_server_offers_them() -> None:
    async def with_trailers(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data"})
        await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False})

    p = Program().req("enable_features", 2 | 4)
    p.resp("get_header_values", 3, *p.s("grpc-status"), BUF, 64).resp(SET_HEADER_LAST, 3, *p.s("x-copy"), BUF, 1)
    app = HttpWasmMiddleware(with_trailers, guests=[p.guest()])
    sent = await asgi_call(app, {"extensions": {"http.response.trailers": {}}})
    assert sent[0]["trailers"] is True
    assert sent[1]["body"] == b"data"
    assert sent[2]["type"] == "http.response.trailers"
    assert dict(sent[2]["headers"]) == {b"grpc-status": b"0", b"x-copy": b"0"}


async def test_trailers_unsupported_gets_nothing_and_sets_trap(client: Any) -> None:
    p = Program().req("enable_features", 4).req("get_header_names", 3, BUF, 64).req(EMIT_RESULTS, RESP)
    r = await run(client, p.req(RETURN, 0))
    assert results(r.content) == [0, 0]
    p2 = Program()
    p2.req("set_header_value", 3, *p2.s("x-t"), *p2.s("1"))
    assert (await run(client, p2)).status_code == 500


def test_every_abi_function_is_implemented_and_imported_by_the_driver() -> None:
    from http_wasm_asgi import abi
    from http_wasm_asgi.host import HOST_FUNCTIONS

    assert set(HOST_FUNCTIONS) == set(abi.HOST_FUNCTIONS)
    guest = Program().guest()
    imported = {n for m, n, _ in guest.info.imports if m == abi.HOST_MODULE}
    assert imported == set(abi.HOST_FUNCTIONS)
    assert json.dumps(sorted(imported))  # 19 functions
    assert len(imported) == 19
