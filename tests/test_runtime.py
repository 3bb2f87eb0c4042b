"""The wasm layer: the wasmtime binding it expects, the native path against its Python reference (each native
part compared with the Python it mirrors, and the contract between them), the compile cache."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from http_wasm_asgi import Guest, HttpWasmMiddleware, _native, host
from http_wasm_asgi.asgi import flow
from http_wasm_asgi.pool import InstancePool, NativeInstancePool
from http_wasm_asgi.testing import echo_app
from http_wasm_asgi.wasm import cache, capi, engine
from http_wasm_asgi.wasm.calls import NATIVE_PATH, PYTHON_PATH, using_path
from support import ROOT, WAT
from support.attack import asgi_request, logger_records
from support.driver import BUF, EMIT_RESULTS, REQUEST, RESPONSE, RETURN, Program


def test_the_wasmtime_binding_and_the_native_path_are_the_ones_expected() -> None:
    capi.check_binding()  # raises on another wasmtime major or an ABI change of wasmtime_val(_raw)
    assert capi.wasmtime_version().startswith(f"{capi.WASMTIME_MAJOR}.")
    assert NATIVE_PATH is not None, f"the native path is off: {_native.OFF_REASON} (is a C compiler there?)"
    assert _native.EXT is not None and _native.EXT.VERSION == _native.VERSION


def test_the_native_path_can_be_turned_off_and_the_python_path_serves_alone() -> None:
    env = dict(os.environ, HTTP_WASM_ASGI_NO_NATIVE="1")
    code = ("from http_wasm_asgi import Guest, HttpWasmMiddleware, _native\n"
            "from http_wasm_asgi.wasm.calls import NATIVE_PATH, default_path\n"
            "from http_wasm_asgi.testing import GuestClient\n"
            "assert NATIVE_PATH is None and default_path().name == 'python', _native.OFF_REASON\n"
            "with GuestClient(Guest('guests/wat/copy_header.wat', name='c')) as c:\n"
            "    print(c.get('/', headers={'x-id': '7'}).headers['x-id'])\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "7", out.stderr[-2000:]


def test_compile_cache_on_disk(tmp_path: Path) -> None:
    wasm = (WAT / "copy_header.wat").read_bytes()
    cache._module_cache.clear()  # as in a fresh process
    cold = Guest(wasm, name="cached", cache_dir=tmp_path, snapshot=False)
    assert cold.info.compiled_from == "compiled"
    assert len(list(tmp_path.glob("*.cwasm"))) == 1
    cache._module_cache.clear()  # a new process would start here
    warm = Guest(wasm, name="cached", cache_dir=tmp_path, snapshot=False)
    assert warm.info.compiled_from == "disk"
    entry = next(tmp_path.glob("*.cwasm"))
    (tmp_path / "corrupt.tmp").write_bytes(b"corrupt")
    os.replace(tmp_path / "corrupt.tmp", entry)  # replaced whole, as the cache does (a live module may map it)
    cache._module_cache.clear()
    again = Guest(wasm, name="cached", cache_dir=tmp_path, snapshot=False)  # a corrupt entry is rebuilt, not fatal
    assert again.info.compiled_from == "compiled"


def test_native_host_functions_and_helpers_are_in_use() -> None:
    """A stale or mismatched native build must not go unnoticed (it would silently be slow)."""
    assert NATIVE_PATH is not None, _native.OFF_REASON
    assert {"get_header_values", "set_header_value", "add_header_value", "remove_header", "get_status_code",
            "get_config", "get_method"} <= _native.native_host_functions()
    assert _native.accelerated(host.merge_response_headers) is not host.merge_response_headers
    for cls, name in ((flow.NativeFlow, "enter"), (flow.NativeFlow, "app_args"), (flow.NativeFlow, "leave"),
                      (flow.NativeFlow, "stream"), (NativeInstancePool, "try_acquire"),
                      (NativeInstancePool, "release")):  # the per-request path
        assert type(getattr(cls, name)).__name__ == "method_descriptor", name
        assert type(getattr(cls.__base__, name)).__name__ == "function", name  # the reference stays Python
    assert flow.native_open_flow is not None and flow.native_open_flow is not flow.python_open_flow
    with using_path(NATIVE_PATH):
        native = Guest(WAT / "copy_header.wat", name="native-one")
    with using_path(PYTHON_PATH):
        python = Guest(WAT / "copy_header.wat", name="python-one")
    assert type(native.pool) is NativeInstancePool and type(python.pool) is InstancePool
    assert flow.Chain(echo_app, [native], 1024).open_flow is flow.native_open_flow
    assert flow.Chain(echo_app, [python], 1024).open_flow is flow.python_open_flow
    assert flow.Chain(echo_app, [native, python], 1024).open_flow is flow.python_open_flow  # mixed: the reference


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
        got = _native.accelerated(host.merge_response_headers)(guest_headers, app_headers)  # type: ignore[arg-type]
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
    """NativeFlow.stream against Flow.stream: what the server gets, what the guests see."""
    assert flow.native_open_flow is not None

    async def never() -> dict[str, object]:
        raise AssertionError("stream does not receive")
    for guest_headers, message in STREAM_CASES:
        got = []
        for stream in (flow.NativeFlow.stream, flow.Flow.stream):
            sent: list[dict[str, object]] = []

            async def send(msg: dict[str, object], sent: list[dict[str, object]] = sent) -> None:
                sent.append(msg)

            chain = flow.Chain(echo_app, (), 1024)
            one = flow.native_open_flow(chain, {"type": "http", "method": "GET", "path": "/", "raw_path": b"/",
                                                "headers": []}, never, send)
            one.exchange.response_headers = list(guest_headers)
            app_message = dict(message)
            try:
                asyncio.run(stream(one, app_message))  # type: ignore[arg-type]
                outcome: object = None
            except KeyError as exc:
                outcome = repr(exc)
            ex = one.exchange
            got.append((outcome, sent, app_message, ex.status, list(ex.response_headers), list(ex.response_trailers),
                        one.started, one.sent))
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
    """The native open_flow against the Python one: every slot of the flow and of its exchange."""
    assert flow.native_open_flow is not None and flow.native_open_flow is not flow.python_open_flow
    chain = flow.Chain(echo_app, (), 1234)

    async def receive() -> dict[str, object]:
        return {}

    async def send(message: dict[str, object]) -> None:
        pass

    def state(obj: object) -> dict[str, object]:
        slots = [name for cls in type(obj).__mro__ for name in getattr(cls, "__slots__", ())]
        return {name: getattr(obj, name) for name in slots}

    for scope in SCOPES:
        got = []
        for opener in (flow.native_open_flow, flow.python_open_flow):
            try:
                one = opener(chain, {"type": "http", **scope}, receive, send)  # type: ignore[arg-type]
            except KeyError as exc:
                got.append(repr(exc))
                continue
            fields = state(one)
            fields["exchange"] = state(one.exchange)
            got.append(fields)
        assert got[0] == got[1], scope
    one = flow.native_open_flow(chain, {"type": "http", **SCOPES[0]}, receive, send)  # type: ignore[arg-type]
    two = flow.native_open_flow(chain, {"type": "http", **SCOPES[0]}, receive, send)  # type: ignore[arg-type]
    assert one.held is not two.held and one.exchange is not two.exchange  # nothing mutable shared
    assert type(one) is flow.NativeFlow


APP_ARGS_CASES: list[dict[str, object]] = [
    {}, {"buffered": True}, {"observes": True}, {"response_headers": [(b"x-a", b"1")]},
    {"request_body": b"abc"}, {"uri": b"/new?x=1"}, {"headers_changed": True}, {"method": "POST"},
    {"request_body": b"", "request_body_replaced": True}, {"extensions": {"http.response.pathsend": {}}},
    {"extensions": {"http.response.trailers": {}}}, {"method": "GE" + "T"},  # equal, not the same object
]


def test_native_app_args_match_the_reference() -> None:
    """NativeFlow.app_args against Flow.app_args: the scope, receive and send the app gets."""
    assert flow.native_open_flow is not None

    async def receive() -> dict[str, object]:
        return {}

    async def send(message: dict[str, object]) -> None:
        pass

    for case in APP_ARGS_CASES:
        scope: dict[str, object] = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "headers": [],
                                    "extensions": case.get("extensions", {})}
        chain = flow.Chain(echo_app, (), 1024)
        chain.observes_response = bool(case.get("observes"))
        one = flow.native_open_flow(chain, scope, receive, send)  # type: ignore[arg-type]
        one.buffered = bool(case.get("buffered"))
        for name in ("response_headers", "request_body", "uri", "headers_changed", "method", "request_body_replaced"):
            if name in case:
                setattr(one.exchange, name, case[name])
        native, python = flow.NativeFlow.app_args(one), flow.Flow.app_args(one)
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
    """NativeInstancePool's try_acquire and release against InstancePool's, over any sequence of uses."""
    assert NativeInstancePool.try_acquire is not InstancePool.try_acquire
    outcomes = []
    for pool_class in (NativeInstancePool, InstancePool):
        acquire, release = pool_class.try_acquire, pool_class.release
        numbers = iter(range(100))
        pool: InstancePool[_Pooled] = pool_class(lambda n=numbers: _Pooled(next(n)), max_size=4, timeout=1.0,
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


@pytest.mark.slow  # 200 random programs, each linked and run on both paths
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
    assert NATIVE_PATH is not None, _native.OFF_REASON
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
    for path in (NATIVE_PATH, PYTHON_PATH):
        with using_path(path):
            guest = p.guest(name="diff")
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


def test_a_class_that_lacks_what_it_declares_to_the_native_path_fails_to_bind() -> None:
    class Stale:  # declares an attribute it no longer has (renamed in the code, not in the declaration)
        NATIVE_SLOTS = ()
        NATIVE_ATTRIBUTES = ("threaded",)

    with pytest.raises(_native.NativeContractError, match=r"Stale\.threaded .*NATIVE_ATTRIBUTES"):
        _native.learn("guest", Stale)

    class NotASlot:
        NATIVE_SLOTS = ("_idle",)
        NATIVE_ATTRIBUTES = ()

    with pytest.raises(_native.NativeContractError, match=r"NotASlot\._idle .*not a slot"):
        _native.learn("pool", NotASlot)


def _import_renamed(tmp_path: Path, old: str, new: str, *, in_declaration: bool) -> subprocess.CompletedProcess[str]:
    """Import a copy of the package in which Guest's attribute `old` is renamed `new` (in the declaration too,
    or only in the code), native module included."""
    package = tmp_path / "http_wasm_asgi"
    shutil.copytree(ROOT / "http_wasm_asgi", package, ignore=shutil.ignore_patterns("__pycache__"))
    guest = package / "guest.py"
    text = guest.read_text()
    declaration = next(line for line in text.splitlines() if "NATIVE_ATTRIBUTES" in line)
    renamed = text.replace(declaration, "@@DECLARATION@@").replace(old, new)
    guest.write_text(renamed.replace("@@DECLARATION@@", declaration.replace(old, new) if in_declaration
                                     else declaration))
    return subprocess.run([sys.executable, "-c", "import http_wasm_asgi.guest"], cwd=tmp_path,
                          capture_output=True, text=True)


def test_renaming_an_attribute_the_native_path_reads_fails_at_import_naming_it(tmp_path: Path) -> None:
    out = _import_renamed(tmp_path / "code", "threaded", "on_threads", in_declaration=False)
    assert out.returncode != 0 and "NativeContractError" in out.stderr, out.stderr[-2000:]
    assert "Guest.threaded" in out.stderr
    out = _import_renamed(tmp_path / "both", "threaded", "on_threads", in_declaration=True)
    assert out.returncode != 0 and "NativeContractError" in out.stderr, out.stderr[-2000:]
    assert "Guest.NATIVE_ATTRIBUTES: the native path reads 'threaded', not declared" in out.stderr


def test_a_missing_native_build_is_said_once_with_its_cost_and_fix() -> None:
    code = ("import sys; sys.modules['http_wasm_asgi._native._ext'] = None  # as if it was never compiled\n"
            "from http_wasm_asgi import Guest, _native\n"
            "from http_wasm_asgi.wasm.calls import default_path\n"
            "print(_native.status(), default_path().name)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("off (not built") and out.stdout.split()[-1] == "python"
    assert out.stderr.count("the native path is not built") == 1, out.stderr
    assert "2.5x the cost per guest" in out.stderr and "install a wheel" in out.stderr


def test_the_build_info_series_says_which_path_runs() -> None:
    from http_wasm_asgi.metrics import figures
    from http_wasm_asgi.wasm.capi import wasmtime_version

    info = [dict(labels) for (name, labels), value in figures().items() if name == "http_wasm_build_info"]
    assert info == [{"native": "on", "version": "0.1.0", "wasmtime": wasmtime_version()}]


_TICKER_WAKEUPS = """
import json, sys, time
from pathlib import Path
from http_wasm_asgi import Guest, _native
from http_wasm_asgi.host import Exchange

def wakeups():
    for task in Path("/proc/self/task").iterdir():
        if (task / "comm").read_text().strip() == "http-wasm-epoch":
            status = (task / "status").read_text()
            return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt")))
    raise SystemExit("no http-wasm-epoch thread")

def per_second(work):
    before, start = wakeups(), time.perf_counter()
    while time.perf_counter() - start < 1.0:
        work()
    return (wakeups() - before) / (time.perf_counter() - start)

copy = Guest(Path(sys.argv[1]), name="light").pool.try_acquire()
spin = Guest(Path(sys.argv[2]), name="heavy", call_timeout=30).pool.try_acquire()
headers = [(b"x-id", b"abc")]
def light():  # a light guest's two calls in a request whose other work takes ~20x longer, as in a server
    sum(range(2000))
    copy.response(copy.request(Exchange("GET", b"/", b"", headers, max_body_size=1024), 0) >> 32, False)

def long():  # a call whose slices run until the epoch moves
    spin.request(Exchange("GET", b"/", b"", [(b"x-spin", b"3000000"), (b"x-id", b"s")], max_body_size=1024), 0)

print(json.dumps({"native": _native.EXT is not None, "light": per_second(light), "long": per_second(long)}))
"""


def test_the_epoch_ticker_idles_under_short_calls_and_ticks_for_long_ones() -> None:
    """Short calls (a light guest's, among other work) leave the ticker at its idle period, so a busy worker is
    not woken every tick; long calls (slices that run until the epoch moves) get a tick each."""
    out = subprocess.run([sys.executable, "-c", _TICKER_WAKEUPS, str(WAT / "copy_header.wat"),
                          str(WAT / "spin_on_header.wat")], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    if not got["native"]:
        pytest.fail("the native module is not built: the ticker under test is the native one")
    idle_rate, tick_rate = 1 / engine.EPOCH_IDLE_SECONDS, 1 / engine.EPOCH_TICK_SECONDS
    assert got["light"] <= 2 * idle_rate, got  # ~100 a second, not ~1000
    assert got["long"] >= tick_rate / 2, got
