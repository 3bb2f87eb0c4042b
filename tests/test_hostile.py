"""Hostile and broken guests: each must fail its own request cleanly and leave the server serving.

For every attack: the client gets the generic error (no traceback, no detail), a
log line on `http_wasm_asgi` names the guest and the cause, the instance that
misbehaved is thrown away (pool counters), and a healthy route keeps answering.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest

from http_wasm_asgi import Guest, GuestError, HttpWasmMiddleware
from http_wasm_asgi.testing import echo_app, serve
from support import WAT
from support.attack import (
    HOSTILE,
    assert_clean_error,
    assert_logged,
    assert_replaced,
    idle_instance,
    raw_http,
    routed,
)
from support.driver import BUF, EMIT_RESULTS, LOOP, RETURN, TRAP, Program, results

REQ, RESP = 0, 1  # header / body kinds
MEM_END = 0x20000  # the driver guest has two 64 KiB pages
NEG1 = 0xFFFFFFFF  # -1 as the u32 the host receives


def healthy() -> HttpWasmMiddleware:
    return HttpWasmMiddleware(echo_app, guests=[Guest(WAT / "copy_header.wat", name="healthy")])


async def attack(client: Any, guest: Guest, caplog: pytest.LogCaptureFixture, *, status: int = 500,
                 cause: str = "", method: str = "GET", **kw: Any) -> httpx.Response:
    """One request to the hostile guest, then the common checks, then a healthy request on the same app."""
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    before = idle_instance(guest)
    c = client(routed({"hostile": HttpWasmMiddleware(echo_app, guests=[guest], max_body_size=4096)}, healthy()))
    r = await c.request(method, "/hostile/x", **kw)
    assert_clean_error(r, status)
    assert_logged(caplog.records, guest.name, cause)
    assert_replaced(guest, before)
    ok = await c.get("/other", headers={"x-id": "still-serving"})
    assert (ok.status_code, ok.headers["x-id"]) == (200, "still-serving")
    return r


# --- traps in every phase ---
async def test_trap_in_handle_request(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    guest = Program().req(TRAP).guest(name="trap_req")
    await attack(client, guest, caplog, cause="trapped in handle_request: wasm `unreachable`")


async def test_trap_in_handle_response_of_a_buffered_response(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    guest = Program().req("enable_features", 2).resp(TRAP).guest(name="trap_resp")
    await attack(client, guest, caplog, cause="trapped in handle_response: wasm `unreachable`")


async def test_trap_in_handle_response_after_streaming_keeps_the_sent_response(
        client: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Unbuffered, the app's response is already on the wire: it stays; the instance still goes."""
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    guest = Program().resp(TRAP).guest(name="trap_late")
    before = idle_instance(guest)
    r = await client(HttpWasmMiddleware(echo_app, guests=[guest])).get("/")
    assert r.status_code == 200 and r.json()["path"] == "/"
    assert_logged(caplog.records, "trap_late", "trapped in handle_response")
    assert_replaced(guest, before)


def test_trap_in_initialize_is_a_load_error() -> None:
    with pytest.raises(GuestError, match=r"guest 'trap_init': failed to initialize in _initialize: .*unreachable"):
        Program().init(TRAP).guest(name="trap_init")


@pytest.mark.slow
def test_endless_loop_in_initialize_is_stopped_by_the_cpu_limit() -> None:
    with pytest.raises(GuestError, match=r"guest 'spin_init'.*CPU time limit"):
        Program().init(LOOP).guest(name="spin_init", call_timeout=0.1)


async def test_unbounded_recursion(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    await attack(client, Guest(HOSTILE / "recurse.wat"), caplog, cause="call stack exhausted")


# --- wild pointers and lengths to every host function ---
def _wild() -> list[Any]:
    p = Program
    named = p()  # the header name is read before the buffer is written: give it a real one
    named.req("get_header_values", REQ, *named.s("host"), MEM_END - 1, NEG1)
    kind = p()
    kind.req("set_header_value", 7, *kind.s("x-a"), *kind.s("v"))
    cases: list[tuple[str, Program, str]] = [
        ("get_config past end", p().req("get_config", MEM_END - 1, NEG1), "get_config: out of bounds memory write"),
        ("get_config negative buf", p().req("get_config", NEG1, NEG1), "out of bounds memory write"),
        ("get_method at end", p().req("get_method", MEM_END, 16), "get_method: out of bounds memory write"),
        ("get_method negative", p().req("get_method", NEG1 - 1, 16), "out of bounds"),
        ("set_method negative ptr", p().req("set_method", NEG1, 1), "set_method: out of bounds memory read"),
        ("set_method straddles end", p().req("set_method", MEM_END - 1, 2), "out of bounds memory read"),
        ("set_method huge len", p().req("set_method", 0, NEG1), "out of bounds memory read"),
        ("get_uri limit > memory", p().req("get_uri", MEM_END - 1, NEG1), "get_uri: out of bounds memory write"),
        ("set_uri past end", p().req("set_uri", MEM_END, 1), "set_uri: out of bounds memory read"),
        ("get_protocol_version", p().req("get_protocol_version", MEM_END - 2, NEG1), "out of bounds memory write"),
        ("get_source_addr", p().req("get_source_addr", NEG1, NEG1), "get_source_addr: out of bounds"),
        ("get_header_names", p().req("get_header_names", REQ, MEM_END - 1, NEG1), "get_header_names: out of bounds"),
        ("get_header_values name", p().req("get_header_values", REQ, NEG1, 4, BUF, 64),
         "get_header_values: out of bounds memory read"),
        ("get_header_values buf", named, "get_header_values: out of bounds memory write"),
        ("set_header_value name", p().req("set_header_value", RESP, MEM_END, 4, BUF, 1),
         "set_header_value: out of bounds memory read"),
        ("set_header_value value", p().req("set_header_value", RESP, BUF, 4, NEG1, 2), "out of bounds memory read"),
        ("add_header_value wrap", p().req("add_header_value", REQ, BUF, 4, 0x10, NEG1), "out of bounds memory read"),
        ("remove_header", p().req("remove_header", REQ, NEG1, NEG1), "remove_header: out of bounds memory read"),
        ("write_body straddles end", p().req("write_body", RESP, MEM_END - 1, 2), "write_body: out of bounds"),
        ("write_body negative", p().req("write_body", REQ, NEG1, NEG1), "write_body: out of bounds"),
        ("read_body past end", p().req("read_body", REQ, MEM_END - 4, NEG1), "read_body: out of bounds memory write"),
        ("header kind", kind, "unknown header kind 7"),
        ("body kind", p().req("write_body", NEG1, BUF, 1), "unknown body kind"),
        ("read_body kind", p().req("read_body", 9, BUF, 16), "unknown body kind 9"),
    ]
    return [pytest.param(prog, cause, id=name) for name, prog, cause in cases]


@pytest.mark.parametrize(("program", "cause"), _wild())
async def test_wild_pointers_trap_cleanly(client: Any, caplog: pytest.LogCaptureFixture, program: Program,
                                          cause: str) -> None:
    guest = program.guest(name="wild")
    await attack(client, guest, caplog, cause=cause, method="POST", content=b"b" * 64)


async def test_wild_pointers_where_the_abi_says_no_trap(client: Any) -> None:
    """log ignores a bad message; buf_limit 0 or too small writes nothing; a huge limit is fine if it fits."""
    p = Program()
    p.req("log", 2, NEG1, NEG1).req("log", 2, MEM_END - 1, 2)
    p.req("get_uri", NEG1, 0).req("get_uri", MEM_END, 1)  # limit too small: nothing written, length returned
    p.req("get_uri", BUF, NEG1)  # limit far past the memory, value fits at BUF
    same = p.s("x-same")
    p.req("set_header_value", RESP, *same, *same)  # name and value read from the same bytes
    p.req("get_header_values", RESP, *same, same[0], 64)  # result written over its own name argument
    p.req(EMIT_RESULTS, RESP).req(RETURN, 0)
    r = await client(HttpWasmMiddleware(echo_app, guests=[p.guest(name="lenient")])).get("/abc")
    assert r.status_code == 200
    assert results(r.content) == [0, 0, 4, 4, 4, 0, (1 << 32) | 7]
    assert r.headers["x-same"] == "x-same"


# --- what a guest writes must not reach the wire unless it is valid HTTP ---
BAD_NAMES = [b"x-a\r\nx-injected: 1", b"x-a\nx-injected", b"x-a\0", b"x a", b"x-a:", b"\r\n", b"x-\xff"]
BAD_VALUES = [b"v\r\nx-injected: 1", b"v\nx-injected: 1", b"v\rx-injected", b"v\0x-injected", b"\x7f"]


def _injections() -> list[Any]:
    out = []
    for fn in ("set_header_value", "add_header_value"):
        for kind in (REQ, RESP):
            for name in BAD_NAMES:
                out.append(pytest.param(fn, kind, name, b"ok", id=f"{fn}-{kind}-name-{name!r}"))
            for value in BAD_VALUES:
                out.append(pytest.param(fn, kind, b"x-a", value, id=f"{fn}-{kind}-value-{value!r}"))
    return out


@pytest.mark.parametrize(("fn", "kind", "name", "value"), _injections())
async def test_header_injection_traps(client: Any, caplog: pytest.LogCaptureFixture, fn: str, kind: int,
                                      name: bytes, value: bytes) -> None:
    p = Program()
    p.req(fn, kind, *p.s(name), *p.s(value))
    r = await attack(client, p.guest(name="inject"), caplog, cause=f"{fn}: invalid header")
    assert "x-injected" not in r.headers and "x-a" not in r.headers


@pytest.mark.parametrize("status", [0, 99, 600, 1000, NEG1])
async def test_invalid_status_codes_trap(client: Any, caplog: pytest.LogCaptureFixture, status: int) -> None:
    guest = Program().req("set_status_code", status).req(RETURN, 0).guest(name="status")
    await attack(client, guest, caplog, cause="set_status_code: invalid status code")


@pytest.mark.parametrize("method", [b"GET /admin HTTP/1.1", b"GE T", b"GET\r\n", b"", b"G\0T", b"G\xc3\xa9T"])
async def test_invalid_methods_trap(client: Any, caplog: pytest.LogCaptureFixture, method: bytes) -> None:
    p = Program()
    p.req("set_method", *p.s(method))
    await attack(client, p.guest(name="method"), caplog, cause="set_method:")


@pytest.mark.parametrize("uri", [b"admin", b"http://evil.example/", b"//evil", b"/a b", b"/a\r\nx-injected: 1",
                                 b"/a\0", b"/caf\xc3\xa9", b"/a#frag"])
async def test_invalid_uris_trap(client: Any, caplog: pytest.LogCaptureFixture, uri: bytes) -> None:
    p = Program()
    p.req("set_uri", *p.s(uri))
    if uri == b"//evil":  # a network-path reference: starts with '/', so accepted, but stays a path
        r = await client(HttpWasmMiddleware(echo_app, guests=[p.guest(name="uri")])).get("/")
        assert (r.status_code, r.json()["path"], r.json()["raw_path"]) == (200, "//evil", "//evil")
        return
    await attack(client, p.guest(name="uri"), caplog, cause="set_uri: invalid uri")


def _wire_cases() -> dict[str, Program]:
    """Guests whose output a strict HTTP/1.1 server would refuse: each must end as the host's own 500."""
    cases: dict[str, Program] = {}
    for status in (100, 101, 103, 199):
        cases[f"status{status}"] = Program().req("set_status_code", status).req(RETURN, 0)
    for label, value in (("lead", b" padded"), ("trail", b"padded "), ("tab", b"\tpadded")):
        p = Program()
        p.req("set_header_value", RESP, *p.s("x-a"), *p.s(value)).req(RETURN, 0)
        cases[f"space-{label}"] = p
        q = Program()
        q.req("set_header_value", RESP, *q.s("x-a"), *q.s(value))  # before next: merged into the app's response
        cases[f"space-{label}-next"] = q
    for name, value in ((b"x-a", b"v\r\nx-injected: 1"), (b"x-a\r\nx-injected", b"1")):
        p = Program()
        p.req("set_header_value", RESP, *p.s(name), *p.s(value)).req(RETURN, 0)
        cases[f"crlf-{len(cases)}"] = p
    return cases


WIRE = _wire_cases()


@pytest.fixture(scope="module")
def wire_server() -> Any:
    guests = {name: p.guest(name=name) for name, p in WIRE.items()}
    routes: dict[str, Any] = {name: HttpWasmMiddleware(echo_app, guests=[g]) for name, g in guests.items()}
    with serve(routed(routes, healthy())) as base:
        yield base, guests


@pytest.mark.parametrize("case", list(WIRE))
def test_nothing_invalid_reaches_the_wire(wire_server: Any, caplog: pytest.LogCaptureFixture, case: str) -> None:
    """Raw bytes from a real uvicorn: the host's clean 500, then the next request on the same connection."""
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    base, guests = wire_server
    raw = raw_http(base, f"GET /{case}/x HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                   + b"GET /other HTTP/1.1\r\nHost: t\r\nx-id: next\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), raw[:300]
    assert b"x-injected" not in raw and b"padded" not in raw
    assert raw.count(b"HTTP/1.1 ") == 2 and b"\r\nx-id: next\r\n" in raw  # the connection survived
    assert_logged(caplog.records, case, "")
    assert guests[case].pool.in_use == 0 and guests[case].pool.size == 0


# --- bodies ---
async def test_guest_writing_a_response_body_over_max_body_size(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    await attack(client, Guest(HOSTILE / "body_flood.wat"), caplog,
                 cause="response body written by the guest exceeds max_body_size (4096)")


async def test_guest_writing_a_request_body_over_max_body_size(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    await attack(client, Guest(HOSTILE / "body_flood.wat"), caplog, headers={"x-flood": "1"},
                 cause="request body written by the guest exceeds max_body_size (4096)")


# --- loading: what the host does not provide ---
@pytest.mark.parametrize(("file", "message"), [
    ("imports_env_memory.wat", "imports env.memory (memory), which this host cannot provide"),
    ("unknown_wasi_function.wat", "unknown import: `wasi_snapshot_preview1::system`"),
    ("huge_memory.wat", "memory minimum size of 5000 pages exceeds memory limits"),
])
def test_imports_and_declarations_the_host_refuses(file: str, message: str) -> None:
    with pytest.raises(GuestError) as info:
        Guest(HOSTILE / file)
    assert f"guest '{Path(file).stem}'" in str(info.value) and message in str(info.value)


# --- WASI: nothing unless the embedder opts in ---
EBADF, ENOTDIR, EPERM, ENOTCAPABLE = 8, 54, 63, 76


async def wasi_attempts(client: Any, guest: Guest) -> list[int]:
    r = await client(HttpWasmMiddleware(echo_app, guests=[guest])).get("/")
    assert r.status_code == 200 and len(r.content) == 48
    return list(struct.unpack("<12i", r.content))


async def test_wasi_guest_gets_no_files_env_args_stdin_or_sockets(client: Any) -> None:
    got = await wasi_attempts(client, Guest(HOSTILE / "wasi_escape.wat"))
    assert got[0] == EBADF  # no preopened directory
    assert got[1] == EBADF  # so path_open has nothing to open against
    assert got[2] in (EBADF, ENOTDIR)  # stdin is no directory
    assert got[3:5] == [0, 0]  # stdin is empty: the host's stdin is not the guest's
    assert got[5:9] == [0, 0, 0, 0]  # no environment variables, no arguments
    assert got[9] == EBADF  # no socket to accept on
    assert got[10:] == [EBADF, 0]


async def test_wasi_opt_in_dir_is_all_a_guest_sees(client: Any, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_bytes(b"only this")
    got = await wasi_attempts(client, Guest(HOSTILE / "wasi_escape.wat", wasi_dirs={"/": str(tmp_path)}))
    assert got[0] == 0  # fd 3 is the preopen now
    assert got[1] in (ENOTCAPABLE, EPERM)  # "../" cannot climb out of it
    assert got[5:7] == [0, 0]  # still no environment
    assert got[10:] == [0, len(b"only this")]


async def test_wasi_opt_in_env_is_all_a_guest_sees(client: Any) -> None:
    got = await wasi_attempts(client, Guest(HOSTILE / "wasi_escape.wat", wasi_env={"MODE": "test"}))
    assert got[5:7] == [0, 1]  # exactly the one variable given
    assert got[0] == EBADF  # and still no files


# --- through a real server ---
def test_hostile_chain_through_uvicorn_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    traps = Guest(HOSTILE / "trap_on_header.wat", max_instances=2)
    recurse = Guest(HOSTILE / "recurse.wat")
    routes: dict[str, Any] = {"trap": HttpWasmMiddleware(echo_app, guests=[traps]),
                              "recurse": HttpWasmMiddleware(echo_app, guests=[recurse])}
    with serve(routed(routes, healthy())) as base, httpx.Client(base_url=base) as c:
        for _ in range(3):
            assert_clean_error(c.get("/trap/", headers={"x-trap": "request"}), 500)
            assert_clean_error(c.get("/trap/", headers={"x-trap": "response"}), 500)
            assert c.get("/trap/").status_code == 200
            assert_clean_error(c.get("/recurse/"), 500)
            assert c.get("/fine", headers={"x-id": "7"}).headers["x-id"] == "7"
    assert_logged(caplog.records, "trap_on_header", "trapped in handle_request")
    assert_logged(caplog.records, "trap_on_header", "trapped in handle_response")
    assert traps.pool.in_use == 0 and recurse.pool.in_use == 0
