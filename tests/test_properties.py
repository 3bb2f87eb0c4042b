"""Property tests: random host calls (pointers, lengths, kinds, header names and values, statuses)
built as driver programs. Whatever a guest does, the host only ever traps it (never a Python error
out of a host call), every response is a complete, valid HTTP/1.1 response, and the pool is whole."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from http_wasm_asgi import HttpWasmMiddleware, abi
from http_wasm_asgi.testing import echo_app
from support.attack import asgi_request, logger_records, well_formed
from support.driver import BUF, EMIT_RESULTS, RETURN, STRINGS, TRAP, Program

pytestmark = pytest.mark.slow  # each property builds and runs a guest for up to 120 generated examples

REQ, RESP = 0, 1
MEM_END = 0x20000
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# u32 arguments, weighted towards the edges: zero, the end of memory, "negative" values, the guest's strings
u32 = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 16, BUF, STRINGS, MEM_END - 1, MEM_END, MEM_END + 1, 0x7FFFFFFF, 0x80000000,
                     0xFFFFFFFE, 0xFFFFFFFF]),
    st.integers(0, MEM_END + 64),
    st.integers(0, 0xFFFFFFFF),
)
HOST_FUNCTIONS = list(abi.HOST_FUNCTIONS)
call = st.tuples(st.sampled_from([1, 2]), st.sampled_from(HOST_FUNCTIONS), st.lists(u32, min_size=5, max_size=5))
ending = st.sampled_from(["next", "short-circuit", "trap-request", "trap-response"])


def host_errors(records: list[logging.LogRecord]) -> list[str]:
    """Log lines of a Python exception inside a host function (a host bug, turned into a trap)."""
    return [r.getMessage() for r in records if "host function" in r.getMessage() or r.exc_info]


def run(app: Any, **kw: Any) -> list[dict[str, Any]]:
    return asyncio.run(asyncio.wait_for(asgi_request(app, **kw), timeout=10))


@SETTINGS
@given(calls=st.lists(call, min_size=1, max_size=5), features=st.integers(0, 7), end=ending,
       body=st.binary(max_size=64))
def test_random_host_calls_only_ever_trap(calls: list[tuple[int, str, list[int]]], features: int, end: str,
                                          body: bytes) -> None:
    p = Program().req("enable_features", features)
    p.s(b"x-name")  # something readable at STRINGS
    for phase, name, args in calls:
        p.op(phase, name, *args[:len(abi.HOST_FUNCTIONS[name][0])])
    if end == "short-circuit":
        p.req(EMIT_RESULTS, RESP).req(RETURN, 0)
    elif end == "trap-request":
        p.req(TRAP)
    elif end == "trap-response":
        p.resp(TRAP)
    guest = p.guest(name="random", max_instances=2)
    app = HttpWasmMiddleware(echo_app, guests=[guest], max_body_size=1024)
    with logger_records() as records:
        messages = run(app, method="POST", body=body, headers=[(b"x-name", b"value")])
    status, _, _ = well_formed(messages)
    assert 200 <= status <= 599
    assert host_errors(records) == []
    assert guest.pool.in_use == 0 and guest.pool.size <= 2


TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
header_bytes = st.lists(st.one_of(st.sampled_from(list(TOKEN)), st.sampled_from([0, 9, 10, 13, 32, 58, 127, 128, 255]),
                                  st.integers(0, 255)), max_size=12).map(bytes)


APP_SET = {b"content-length", b"content-type", b"x-echo", b"transfer-encoding"}


@SETTINGS
@given(fn=st.sampled_from(["set_header_value", "add_header_value"]), kind=st.sampled_from([REQ, RESP]),
       name=header_bytes, value=header_bytes, short=st.booleans())
@example(fn="set_header_value", kind=RESP, name=b"x-a", value=b"v", short=True)
@example(fn="add_header_value", kind=RESP, name=b"x-a", value=b" v", short=True)  # leading/trailing whitespace
def test_header_writes_trap_or_arrive_intact(fn: str, kind: int, name: bytes, value: bytes, short: bool) -> None:
    p = Program()
    p.req(fn, kind, *p.s(name), *p.s(value))
    if short:
        p.req(RETURN, 0)
    guest = p.guest(name="headers")
    with logger_records() as records:
        messages = run(HttpWasmMiddleware(echo_app, guests=[guest]))
    status, headers, body = well_formed(messages)
    assert host_errors(records) == []
    assert guest.pool.in_use == 0
    if status == 500:
        assert any("invalid header" in r.getMessage() or "cannot be empty" in r.getMessage() for r in records)
        assert name.lower() not in [k for k, _ in headers] or not name
        return
    assert status == 200
    if kind == RESP:
        if name.lower() not in APP_SET:  # a header the app sets itself wins; framing is the host's
            assert (name.lower(), value) in headers
    elif not short:
        sent = [[k.encode("latin-1"), v.encode("latin-1")] for k, v in json.loads(body)["headers"]]
        assert [name.lower(), value] in sent


@SETTINGS
@given(status=st.one_of(st.integers(0, 1100), st.integers(0, 0xFFFFFFFF)), buffered=st.booleans())
def test_any_status_code_traps_or_is_a_valid_final_status(status: int, buffered: bool) -> None:
    p = Program()
    if buffered:
        p.req("enable_features", 2).resp("set_status_code", status)
    else:
        p.req("set_status_code", status).req(RETURN, 0)
    guest = p.guest(name="status")
    messages = run(HttpWasmMiddleware(echo_app, guests=[guest]))
    got, _, _ = well_formed(messages)
    assert got == (status if 200 <= status <= 599 else 500)
    assert guest.pool.in_use == 0


@SETTINGS
@given(method=header_bytes, uri=st.one_of(header_bytes, header_bytes.map(lambda b: b"/" + b)))
def test_method_and_uri_rewrites_trap_or_reach_the_app_intact(method: bytes, uri: bytes) -> None:
    p = Program()
    p.req("set_method", *p.s(method)).req("set_uri", *p.s(uri))
    guest = p.guest(name="line")
    messages = run(HttpWasmMiddleware(echo_app, guests=[guest]))
    status, _, body = well_formed(messages)
    assert guest.pool.in_use == 0
    if status == 500:
        return
    seen = json.loads(body)
    assert seen["method"].encode() == method and method.isascii() and b" " not in method
    assert seen["raw_path"].encode("latin-1") == (uri or b"/").partition(b"?")[0]
    assert (uri or b"/").startswith(b"/")
