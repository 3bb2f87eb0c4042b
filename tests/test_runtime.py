"""The wasm call path: the binding it expects, both implementations, the compile cache."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from attack import asgi_request, logger_records
from conftest import ROOT, WAT
from driver import BUF, EMIT_RESULTS, REQUEST, RESPONSE, RETURN, Program
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from http_wasm_asgi import Guest, HttpWasmMiddleware, host, middleware, runtime
from http_wasm_asgi.guest import PYTHON_POOL_METHODS
from http_wasm_asgi.pool import InstancePool
from http_wasm_asgi.testing import echo_app


def test_binding_is_what_the_fast_path_expects() -> None:
    runtime.check_binding()  # raises on another wasmtime major or an ABI change of wasmtime_val(_raw)
    assert runtime.wasmtime_version().startswith(f"{runtime.WASMTIME_MAJOR}.")
    if os.environ.get("HTTP_WASM_ASGI_NO_FASTPATH"):
        return  # the ctypes path on purpose
    assert runtime.FAST_PATH, "the C accelerator (http_wasm_asgi/_fastpath.c) was not built: is a C compiler there?"


def test_ctypes_fallback_path_passes_the_abi_tests() -> None:
    env = dict(os.environ, HTTP_WASM_ASGI_NO_FASTPATH="1")
    code = "from http_wasm_asgi import runtime; assert not runtime.FAST_PATH"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_abi.py", "tests/test_middleware.py", "-k", "not uvicorn"],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout


def test_compile_cache_on_disk(tmp_path: Path) -> None:
    wasm = (WAT / "copy_header.wat").read_bytes()
    runtime._module_cache.clear()  # as in a fresh process
    cold = Guest(wasm, name="cached", cache_dir=tmp_path, snapshot=False)
    assert cold.info.compiled_from == "compiled"
    assert len(list(tmp_path.glob("*.cwasm"))) == 1
    runtime._module_cache.clear()  # a new process would start here
    warm = Guest(wasm, name="cached", cache_dir=tmp_path, snapshot=False)
    assert warm.info.compiled_from == "disk"
    entry = next(tmp_path.glob("*.cwasm"))
    (tmp_path / "corrupt.tmp").write_bytes(b"corrupt")
    os.replace(tmp_path / "corrupt.tmp", entry)  # replaced whole, as the cache does (a live module may map it)
    runtime._module_cache.clear()
    again = Guest(wasm, name="cached", cache_dir=tmp_path, snapshot=False)  # a corrupt entry is rebuilt, not fatal
    assert again.info.compiled_from == "compiled"


def test_native_host_functions_and_helpers_are_in_use() -> None:
    """A stale or mismatched accelerator build must not go unnoticed (it would silently be slow)."""
    if not runtime.FAST_PATH:
        return
    assert {"get_header_values", "set_header_value", "add_header_value", "remove_header", "get_status_code",
            "get_config", "get_method"} <= runtime.NATIVE_HOST_FUNCTIONS
    assert runtime.accelerated(host.merge_response_headers) is not host.merge_response_headers
    for cls, name in ((middleware._Flow, "enter"), (middleware._Flow, "app_args"), (middleware._Flow, "leave"),
                      (middleware._Flow, "stream"), (InstancePool, "try_acquire"),
                      (InstancePool, "release")):  # the per-request fast path
        assert type(getattr(cls, name)).__name__ == "method_descriptor", name
    assert middleware.open_flow is not middleware.python_open_flow


MERGE_CASES = [
    ([], []),
    ([(b"x-a", b"1")], [(b"content-type", b"text/plain")]),
    ([(b"x-a", b"1"), (b"x-b", b"2")], [(b"X-A", b"app"), (b"x-c", b"3")]),  # app names compare lowercased
    ([(b"x-a", b"1"), (b"x-a", b"2")], [(b"x-b", b"3"), (b"x-b", b"4")]),
    ([(b"content-length", b"1")], [(b"content-length", b"5")]),
    ([(b"x-" + bytes([65 + i % 26]) * i, b"v") for i in range(1, 12)],
     [(b"x-" + bytes([97 + i % 26]) * i, b"w") for i in range(1, 12)]),  # many of each: the set path
    ((("x-a", "str"),), [(b"x-b", b"2")]),  # not bytes: the Python reference decides
    ([(b"x-a", b"1")], ((b"x-a", b"2"),)),
]


def test_native_merge_matches_the_reference() -> None:
    for guest_headers, app_headers in MERGE_CASES:
        expected = host.merge_response_headers(guest_headers, app_headers)  # type: ignore[arg-type]
        got = runtime.accelerated(host.merge_response_headers)(guest_headers, app_headers)  # type: ignore[arg-type]
        assert got == expected, (guest_headers, app_headers)
        assert got is not app_headers


STREAM_CASES = [
    ([], {"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]}),
    ([(b"x-id", b"1")], {"type": "http.response.start", "status": 200, "headers": [(b"X-ID", b"app")]}),
    ([(b"x-id", b"1")], {"type": "http.response.start", "status": 204}),  # no headers key
    ([(b"x-a", b"1")], {"type": "http.response.start", "status": 200, "headers": ()}),
    ([], {"type": "http.response.body", "body": b"hi", "more_body": True}),
    ([], {"type": "http.response.trailers", "headers": [(b"x-t", b"1")], "more_trailers": False}),
    ([], {"type": "http.response.early_hint", "links": []}),
    ([(b"x-a", b"1")], {"type": "http.response.start"}),  # no status: the same KeyError from both
]


def test_native_stream_matches_the_reference() -> None:
    """The accelerator's _Flow.stream against the Python one: what the server gets, what the guests see."""
    if not runtime.FAST_PATH:
        return
    reference = middleware.PYTHON_FLOW_METHODS["stream"]

    async def never() -> dict[str, object]:
        raise AssertionError("stream does not receive")
    for guest_headers, message in STREAM_CASES:
        got = []
        for stream in (middleware._Flow.stream, reference):
            sent: list[dict[str, object]] = []

            async def send(msg: dict[str, object], sent: list[dict[str, object]] = sent) -> None:
                sent.append(msg)

            chain = middleware.Chain(echo_app, (), 1024)
            flow = middleware.open_flow(chain, {"type": "http", "method": "GET", "path": "/", "raw_path": b"/",
                                                "headers": []}, never, send)
            flow.exchange.response_headers = list(guest_headers)
            app_message = dict(message)
            try:
                asyncio.run(stream(flow, app_message))  # type: ignore[arg-type]
                outcome: object = None
            except KeyError as exc:
                outcome = repr(exc)
            ex = flow.exchange
            got.append((outcome, sent, app_message, ex.status, list(ex.response_headers), list(ex.response_trailers),
                        flow.started, flow.sent))
        assert got[0] == got[1], message


SCOPES = [
    {"method": "GET", "path": "/", "raw_path": b"/", "query_string": b"a=1", "headers": [(b"host", b"h")],
     "http_version": "1.1", "client": ("127.0.0.1", 5000), "extensions": {"http.response.trailers": {}}},
    {"method": "POST", "path": "/x", "raw_path": b"/x", "query_string": b"", "headers": [], "http_version": "2",
     "client": None, "extensions": {}},
    {"method": "PUT", "path": "/caf\u00e9 x", "headers": [], "http_version": "1.0"},  # no raw_path: encoded again
    {"method": "GET", "path": "/", "raw_path": b"", "headers": [], "extensions": None},  # an empty raw_path
    {"method": "GET", "path": "/", "raw_path": b"/", "headers": [], "http_version": "9"},  # unknown version
    {"method": "GET", "path": "/", "raw_path": b"/q", "headers": ()},
    {"path": "/", "raw_path": b"/", "headers": []},  # no method: the same KeyError from both
]


def test_native_open_flow_matches_the_reference() -> None:
    """The accelerator's open_flow against the Python one: every slot of the flow and of its exchange."""
    if not runtime.FAST_PATH:
        return
    assert middleware.open_flow is not middleware.python_open_flow
    chain = middleware.Chain(echo_app, (), 1234)

    async def receive() -> dict[str, object]:
        return {}

    async def send(message: dict[str, object]) -> None:
        pass

    def state(obj: object) -> dict[str, object]:
        return {name: getattr(obj, name) for name in type(obj).__slots__}  # type: ignore[attr-defined]

    for scope in SCOPES:
        got = []
        for opener in (middleware.open_flow, middleware.python_open_flow):
            try:
                flow = opener(chain, {"type": "http", **scope}, receive, send)  # type: ignore[arg-type]
            except KeyError as exc:
                got.append(repr(exc))
                continue
            fields = state(flow)
            fields["exchange"] = state(flow.exchange)
            got.append(fields)
        assert got[0] == got[1], scope
    one = middleware.open_flow(chain, {"type": "http", **SCOPES[0]}, receive, send)  # type: ignore[arg-type]
    two = middleware.open_flow(chain, {"type": "http", **SCOPES[0]}, receive, send)  # type: ignore[arg-type]
    assert one.held is not two.held and one.exchange is not two.exchange  # nothing mutable shared


APP_ARGS_CASES: list[dict[str, object]] = [
    {}, {"buffered": True}, {"observes": True}, {"response_headers": [(b"x-a", b"1")]},
    {"request_body": b"abc"}, {"uri": b"/new?x=1"}, {"headers_changed": True}, {"method": "POST"},
    {"request_body": b"", "request_body_replaced": True}, {"extensions": {"http.response.pathsend": {}}},
    {"extensions": {"http.response.trailers": {}}}, {"method": "GE" + "T"},  # equal, not the same object
]


def test_native_app_args_match_the_reference() -> None:
    """The accelerator's _Flow.app_args against the Python one: the scope, receive and send the app gets."""
    if not runtime.FAST_PATH:
        return
    reference = middleware.PYTHON_FLOW_METHODS["app_args"]

    async def receive() -> dict[str, object]:
        return {}

    async def send(message: dict[str, object]) -> None:
        pass

    for case in APP_ARGS_CASES:
        scope: dict[str, object] = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "headers": [],
                                    "extensions": case.get("extensions", {})}
        chain = middleware.Chain(echo_app, (), 1024)
        chain.observes_response = bool(case.get("observes"))
        flow = middleware.open_flow(chain, scope, receive, send)  # type: ignore[arg-type]
        flow.buffered = bool(case.get("buffered"))
        for name in ("response_headers", "request_body", "uri", "headers_changed", "method", "request_body_replaced"):
            if name in case:
                setattr(flow.exchange, name, case[name])
        native, python = middleware._Flow.app_args(flow), reference(flow)
        assert native == python, case
        assert (native[0] is scope) == (python[0] is scope), case  # the server's scope, unless it changed


class _Pooled:
    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False

    def close(self) -> None:
        self.closed = True


@settings(max_examples=500, deadline=None)
@example(ops=[("acquire", 0), ("release", 0)], max_idle=0, min_size=1, create_inline=False, reuse=True)
@example(ops=[("acquire", 0)] * 3 + [("release", 0)] * 3, max_idle=1, min_size=1, create_inline=True, reuse=True)
@given(ops=st.lists(st.tuples(st.sampled_from(["acquire", "release", "discard", "close"]), st.integers(0, 5)),
                    max_size=40),
       max_idle=st.one_of(st.none(), st.integers(0, 3)), min_size=st.integers(0, 2), create_inline=st.booleans(),
       reuse=st.booleans())
def test_native_pool_matches_the_reference(ops: list[tuple[str, int]], max_idle: int | None, min_size: int,
                                           create_inline: bool, reuse: bool) -> None:
    """The accelerator's try_acquire and release against the Python ones, over any sequence of uses."""
    if not runtime.FAST_PATH:
        return
    assert InstancePool.try_acquire is not PYTHON_POOL_METHODS["try_acquire"]
    outcomes = []
    for acquire, release in ((InstancePool.try_acquire, InstancePool.release),
                             (PYTHON_POOL_METHODS["try_acquire"], PYTHON_POOL_METHODS["release"])):
        numbers = iter(range(100))
        pool: InstancePool[_Pooled] = InstancePool(lambda n=numbers: _Pooled(next(n)), max_size=4, timeout=1.0,
                                                   min_size=min_size, max_idle=max_idle, idle_timeout=30.0,
                                                   create_inline=create_inline, reuse=reuse)
        pool.fill()
        held: list[_Pooled] = []
        trace: list[object] = []
        for op, index in ops:
            if op == "acquire":
                instance = acquire(pool)
                trace.append(None if instance is None else instance.number)
                if instance is not None:
                    held.append(instance)
            elif held and op == "close":
                held[index % len(held)].closed = True
            elif held:
                instance = held.pop(index % len(held))
                if op == "discard":
                    release(pool, instance, discard=True)
                else:
                    release(pool, instance)
            trace.append((len(pool._idle), pool._low, pool.size))
        outcomes.append((trace, [i.number for i in pool._idle], [i.closed for i in held]))
    assert outcomes[0] == outcomes[1]


NAMES = [b"x-id", b"X-ID", b"x-new", b"content-type", b"", b"bad name", b"x\0y", b"host"]
VALUES = [b"v1", b"", b" lead", b"a\tb", b"\x7f", b"x" * 200, b"caf\xc3\xa9"]
BAD_PTR = 0xFFFF_FFF0


def _ptr(p: Program, items: list[bytes], index: int) -> tuple[int, int]:
    return (BAD_PTR, 4) if index >= len(items) else p.s(items[index])


def _often(common: list[int], rare: list[int]) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(common), st.sampled_from(rare)) if rare else st.sampled_from(common)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from([REQUEST, REQUEST, RESPONSE]),
                              st.sampled_from(["get_header_values", "get_header_values", "set_header_value",
                                               "add_header_value", "remove_header", "get_status_code", "get_config",
                                               "get_method"]),
                              _often([0, 1], [2, 3, 9]), _often([0, 1, 2, 3], list(range(4, len(NAMES) + 1))),
                              _often([0, 1, 6], list(range(len(VALUES) + 1))), _often([64, 4096], [0, 3]),
                              _often([BUF], [0x20000 - 2, BAD_PTR])), min_size=1, max_size=8),
       features=st.sampled_from([0, 2, 0, 2, 1, 3, 4, 7]), short=st.booleans())
@example(ops=[(REQUEST, "get_header_values", 0, 0, 0, 4096, BUF)], features=0, short=True)  # two values
@example(ops=[(REQUEST, "set_header_value", 0, 1, 0, 0, BUF), (REQUEST, "get_header_values", 0, 0, 0, 64, BUF)],
         features=0, short=False)
@example(ops=[(REQUEST, "add_header_value", 1, 2, 0, 0, BUF), (RESPONSE, "get_header_values", 1, 2, 0, 64, BUF),
              (RESPONSE, "set_header_value", 1, 3, 1, 0, BUF)], features=2, short=False)
@example(ops=[(REQUEST, "set_header_value", 1, 2, 0, 0, BUF), (REQUEST, "set_header_value", 1, 2, 1, 0, BUF)],
         features=0, short=True)  # replace the only entry
@example(ops=[(REQUEST, "remove_header", 0, 1, 0, 0, BUF), (REQUEST, "add_header_value", 0, 0, 6, 0, BUF)],
         features=0, short=False)
@example(ops=[(REQUEST, "get_config", 0, 0, 0, 3, BUF), (REQUEST, "get_method", 0, 0, 0, 64, BUF),
              (REQUEST, "get_status_code", 0, 0, 0, 0, BUF), (RESPONSE, "get_status_code", 0, 0, 0, 0, BUF)],
         features=2, short=False)
def test_native_host_functions_match_the_python_reference(ops: list[tuple[int, str, int, int, int, int, int]],
                                                          features: int, short: bool) -> None:
    """Each native host function only takes the common case and otherwise falls back: whatever a guest
    does, the client, the app and the log see exactly what the Python host functions give."""
    if not runtime.FAST_PATH:
        return
    p = Program().req("enable_features", features)
    for phase, fn, kind, name, value, limit, buf in ops:
        name_ptr, name_len = _ptr(p, NAMES, name)
        if fn == "get_header_values":
            p.op(phase, fn, kind, name_ptr, name_len, buf, limit)
        elif fn in ("set_header_value", "add_header_value"):
            p.op(phase, fn, kind, name_ptr, name_len, *_ptr(p, VALUES, value))
        elif fn == "remove_header":
            p.op(phase, fn, kind, name_ptr, name_len)
        elif fn == "get_status_code":
            p.op(phase, fn)
        else:
            p.op(phase, fn, buf, limit)
    p.req("write_body", 1, BUF, 256).req(EMIT_RESULTS, 1)
    if short:
        p.req(RETURN, 0)
    p.resp(EMIT_RESULTS, 1)
    seen = []
    for native in (True, False):
        saved = runtime.NATIVE_HOST_FUNCTIONS
        if not native:
            runtime.NATIVE_HOST_FUNCTIONS = frozenset()
        try:
            guest = p.guest(name="diff")
        finally:
            runtime.NATIVE_HOST_FUNCTIONS = saved
        with logger_records() as records:
            messages = asyncio.run(asgi_request(HttpWasmMiddleware(echo_app, [guest]),
                                                headers=[(b"x-id", b"abc"), (b"X-Id", b"def")]))
        seen.append((messages, [r.getMessage() for r in records]))
    assert seen[0] == seen[1]


def test_workers_starting_together_compile_once(tmp_path: Path) -> None:
    """N processes on an empty cache: one compiles (holding the entry's lock), the others load its result."""
    code = ("import sys; from http_wasm_asgi import Guest; "
            "print(Guest(sys.argv[1], cache_dir=sys.argv[2]).info.compiled_from)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(WAT / "driver.wat"), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(3)]
    sources = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert sources == ["compiled", "disk", "disk"]
    assert len(list(tmp_path.glob("*.cwasm"))) == 1
