"""Guests whose handle_response cannot loop: what `runs_bounded` reads from the code (loops, call cycles, calls it
cannot follow, bulk operations, imports other than http_handler, size), and the native path calling such a
handle_response as one synchronous call, which answers as the cooperative call does and never waits for a turn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import wasmtime

from http_wasm_asgi import Guest, HttpWasmMiddleware, _native
from http_wasm_asgi.host import Exchange
from http_wasm_asgi.testing import echo_app, serve
from http_wasm_asgi.wasm.calls import LONG_CALL_SECONDS, LONG_WAIT, PYTHON_PATH, SUSPENDED, TURN_SECONDS, using_path
from http_wasm_asgi.wasm.snapshot import runs_bounded
from http_wasm_asgi.wasm.snapshot.bounded import MAX_INSTRUCTIONS
from support import ROOT, WAT, ZIG

STATUS = '(import "http_handler" "get_status_code" (func $status (result i32)))'
REQUEST = '(func (export "handle_request") (result i64) (i64.const 1))'


def module(response_body: str, *extra: str, imports: str = STATUS, request: str = REQUEST) -> bytes:
    """A guest whose handle_response is `response_body`, with `extra` functions beside it."""
    return bytes(wasmtime.wat2wasm(f"""(module {imports}
      (memory (export "memory") 1) (table 1 funcref) (type $none (func))
      {request}
      (func (export "handle_response") (param i32 i32) {response_body})
      {" ".join(extra)})"""))


def response_bounded(wasm: bytes) -> bool:
    return runs_bounded(wasm, "handle_response")


# --- what the code says ---------------------------------------------------------------------------------------------
def test_straight_line_code_with_host_calls_and_branches_is_bounded() -> None:
    assert response_bounded(module("(drop (call $status)) (if (local.get 1) (then (drop (call $status))))"))
    assert response_bounded(module("(block $out (br_if $out (local.get 0)) (drop (call $status)))"))
    assert response_bounded(module(""))


def test_calls_to_functions_that_end_are_bounded_however_often_they_are_made() -> None:
    helper = "(func $helper (drop (call $status)))"
    assert response_bounded(module("(call $helper) (call $helper) (call $helper)", helper))
    assert response_bounded(module("(call $outer)", helper, "(func $outer (call $helper) (call $helper))"))


@pytest.mark.parametrize("body, extra", [
    ("(loop $again (br_if $again (local.get 0)))", ()),
    ("(call $helper)", ("(func $helper (loop $l))",)),  # a loop one call away
    ("(call $self)", ("(func $self (call $self))",)),
    ("(call $ping)", ("(func $ping (call $pong))", "(func $pong (call $ping))")),
    ("(call_indirect (type $none) (i32.const 0))", ()),
    ("(memory.fill (i32.const 0) (i32.const 0) (local.get 0))", ()),
    ("(memory.copy (i32.const 0) (i32.const 8) (local.get 0))", ()),
], ids=["loop", "loop-in-callee", "recursion", "mutual-recursion", "call-indirect", "memory.fill", "memory.copy"])
def test_code_that_may_run_long_is_not_bounded(body: str, extra: tuple[str, ...]) -> None:
    assert not response_bounded(module(body, *extra))


def test_a_tail_call_to_itself_is_not_bounded() -> None:
    wasm = bytes(wasmtime.wat2wasm(f"""(module {STATUS} (memory (export "memory") 1) {REQUEST}
      (func $again (return_call $again))
      (func (export "handle_response") (param i32 i32) (call $again)))"""))
    assert not response_bounded(wasm)


def test_a_call_to_an_import_other_than_http_handler_is_not_bounded() -> None:
    wasi = '(import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))'
    assert not response_bounded(module("(drop (call $yield))", imports=wasi))
    assert response_bounded(module("", imports=wasi))  # imported, never called from handle_response


def test_code_past_the_instruction_bound_is_not_bounded() -> None:
    per_call = 1000
    block = "(func $block " + "(nop)" * per_call + ")"
    calls = MAX_INSTRUCTIONS // per_call
    assert response_bounded(module("(call $block)" * (calls - 1), block))
    assert not response_bounded(module("(call $block)" * (calls + 1), block))


def test_what_cannot_be_read_is_not_bounded() -> None:
    assert not response_bounded(b"\0asm\x01\0\0\0\x0a\x05")  # a code section cut short
    assert not response_bounded(b"not wasm at all")
    assert not runs_bounded(module(""), "no_such_export")
    assert not runs_bounded(module(""), "memory")  # an export, but not a function


def wat(path: Any) -> bytes:
    return bytes(wasmtime.wat2wasm(path.read_text()))


def test_the_project_guests() -> None:
    # the benchmark's filter in WAT and Zig, and the guest kits' header adders, whose handle_response is a no-op
    for wasm in (wat(WAT / "copy_header.wat"), (ZIG / "copyheader.wasm").read_bytes(),
                 (ROOT / "guests" / "rust" / "headeradder.wasm").read_bytes(),
                 (ROOT / "guests" / "c" / "headeradder.wasm").read_bytes()):
        assert response_bounded(wasm)
    # Go's runtime loops (its scheduler, its allocator); spin_on_header's handle_request is a loop
    assert not response_bounded((ROOT / "guests" / "go" / "copyheader" / "copyheader.wasm").read_bytes())
    assert not runs_bounded(wat(WAT / "spin_on_header.wat"), "handle_request")


# --- how the native path calls it -----------------------------------------------------------------------------------
LOOPING = module("(local $i i32) (loop $l (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1)))"
                 " (i32.const 10)))) (drop (call $status))")


@pytest.fixture
def turn_always_spent() -> Iterator[None]:
    """Every cooperative call waits for the event loop's next turn first (no guest time per turn)."""
    assert _native.EXT is not None
    _native.EXT.set_turn(0.0, 2 * TURN_SECONDS, LONG_CALL_SECONDS, LONG_WAIT)
    try:
        yield
    finally:
        _native.EXT.set_turn(TURN_SECONDS, 2 * TURN_SECONDS, LONG_CALL_SECONDS, LONG_WAIT)


@pytest.mark.skipif(_native.EXT is None, reason="the native path is the subject")
@pytest.mark.usefixtures("turn_always_spent")
def test_a_bounded_handle_response_ends_at_once_where_a_cooperative_one_waits_for_its_turn() -> None:
    bounded = Guest(WAT / "copy_header.wat", name="bounded-sync")
    looping = Guest(LOOPING, name="bounded-looping")
    assert (bounded.module.sync_response, looping.module.sync_response) == (True, False)
    for guest, expected in ((bounded, None), (looping, SUSPENDED)):
        instance = guest.pool.try_acquire()
        assert instance is not None and instance._core.sync_response == guest.module.sync_response
        assert instance.request(Exchange("GET", b"/", b"", [], 1 << 20), 0) & 1  # to its end: no turn asked
        outcome = instance.start_response(0, False)
        assert (outcome == SUSPENDED) == (expected == SUSPENDED)
        if outcome == SUSPENDED:
            asyncio.run(instance.finish())
        guest.pool.release(instance)
    assert bounded.stats.calls(1) == looping.stats.calls(1) == 1
    bounded.close()
    looping.close()


async def exchange_through(app: HttpWasmMiddleware) -> list[httpx.Response]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return [await client.get("/", headers={"x-id": str(i)}) for i in range(3)]


@pytest.mark.parametrize("path", ["native", "python"])
async def test_a_bounded_handle_response_answers_as_on_the_python_path(path: str) -> None:
    if path == "native" and _native.EXT is None:
        pytest.skip("the native path is not built")
    with using_path(PYTHON_PATH) if path == "python" else contextlib.nullcontext():
        guest = Guest(WAT / "copy_header.wat", name=f"bounded-{path}")
        app = HttpWasmMiddleware(echo_app, [guest])
    assert guest.native == (path == "native") and guest.module.sync_response
    answers = await exchange_through(app)
    assert [(r.status_code, r.headers["x-id"]) for r in answers] == [(200, "0"), (200, "1"), (200, "2")]
    assert guest.stats.calls(1) == 3 and guest.pool.in_use == 0
    app.close()


# buffers the response (feature 2), so a trap in handle_response can still answer 500
TRAPS_IN_RESPONSE = module(
    "(drop (call $status)) (unreachable)",
    imports=STATUS + '(import "http_handler" "enable_features" (func $features (param i32) (result i32)))',
    request='(func (export "handle_request") (result i64) (drop (call $features (i32.const 2))) (i64.const 1))')


async def test_a_trap_in_a_bounded_handle_response_is_a_500_and_the_next_request_is_served() -> None:
    guest = Guest(TRAPS_IN_RESPONSE, name="bounded-trap")
    assert guest.module.sync_response
    app = HttpWasmMiddleware(echo_app, [guest])
    answers = await exchange_through(app)
    assert [r.status_code for r in answers] == [500, 500, 500]
    assert guest.stats.traps == {("handle_response", "trap"): 3} and guest.pool.in_use == 0
    app.close()


def test_through_uvicorn_bounded_guests_answer_every_request() -> None:
    guests = [Guest(WAT / "copy_header.wat", name=f"bounded-uvicorn-{i}") for i in range(3)]
    assert all(g.module.sync_response for g in guests)
    app = HttpWasmMiddleware(echo_app, guests)
    with serve(app) as base, httpx.Client(base_url=base) as client:
        answers = [client.get("/", headers={"x-id": str(i)}) for i in range(20)]
    assert [(r.status_code, r.headers.get_list("x-id")) for r in answers] == [(200, [str(i)]) for i in range(20)]
    assert all(g.stats.calls(1) == 20 for g in guests)
    app.close()


def test_a_start_from_the_snapshot_cache_reads_the_answer_from_the_entry(tmp_path: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from http_wasm_asgi import guest as guest_module

    built = Guest(WAT / "copy_header.wat", name="bounded-cache", cache_dir=tmp_path)
    assert built.snapshot.detail == "built" and built.module.sync_response
    built.close()

    def must_not_read(wasm: bytes, export: str) -> bool:
        raise AssertionError("the module was read again")

    monkeypatch.setattr(guest_module, "runs_bounded", must_not_read)
    cached = Guest(WAT / "copy_header.wat", name="bounded-cache", cache_dir=tmp_path)
    assert cached.snapshot.detail == "disk" and cached.module.sync_response
    instance = cached.pool.try_acquire()
    assert instance is not None and instance._core.sync_response
    cached.pool.release(instance)
    cached.close()
