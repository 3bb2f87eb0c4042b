"""The middleware's native call (_native/call.c) against its reference, HttpWasmMiddleware.__call__ and serve():
the same requests through both send the same messages, whichever stage a request leaves the common case at, and
a request cancelled, closed or dropped half-way gives its guests' instances back. Servers still see an ASGI 3 app."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import uvicorn

from http_wasm_asgi import Guest, HttpWasmMiddleware, Route, _native
from http_wasm_asgi.asgi import middleware as middleware_module
from http_wasm_asgi.testing import echo_app
from http_wasm_asgi.wasm.calls import PYTHON_PATH, using_path
from support import WAT
from support.driver import BUF, RETURN, Program

pytestmark = pytest.mark.skipif(_native.EXT is None, reason="the native path is the subject")

Message = dict[str, Any]


def scope_of(path: str = "/", trap: bytes = b"") -> dict[str, Any]:
    """An http request's scope; `trap`: its x-trap header (trap_on_header.wat traps where it says)."""
    headers = [(b"host", b"test"), (b"x-id", b"abc"), *([(b"x-trap", trap)] if trap else [])]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}


async def drive(call: Callable[..., Any], scope: dict[str, Any], body: bytes = b"ping") -> list[Message]:
    """One request through `call(scope, receive, send)`; what it sent, and last what it raised to the server."""
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    try:
        await call(scope, receive, send)
    except Exception as exc:  # the server's to answer (500)
        sent.append({"raised": repr(exc)})
    return sent


async def failing_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("the app failed")


def copy_header() -> Guest:
    return Guest(WAT / "copy_header.wat", name="copy")


STAGES = {"ENTER": middleware_module.ENTER, "REQUEST_PHASE": middleware_module.REQUEST_PHASE,
          "APP_FAILED": middleware_module.APP_FAILED, "BACK": middleware_module.BACK,
          "FINISH": middleware_module.FINISH, "RAISED": middleware_module.RAISED}


@pytest.fixture
def handed_over() -> Iterator[list[int]]:
    """The stages at which the native call hands requests to serve(), while the test runs."""
    stages: list[int] = []

    def recording_serve(chain: Any, flow: Any, scope: Any, stage: int = 0, value: Any = None) -> Any:
        stages.append(stage)
        return middleware_module.serve(chain, flow, scope, stage, value)

    bind = _native.EXT.middleware_call  # type: ignore[union-attr]
    bind(HttpWasmMiddleware, recording_serve, middleware_module._close_retired, STAGES)
    try:
        yield stages
    finally:
        bind(HttpWasmMiddleware, middleware_module.serve, middleware_module._close_retired, STAGES)


def trap_on_header() -> Guest:
    return Guest(WAT / "hostile" / "trap_on_header.wat", name="trap-on-header")


# chains, the x-trap header their requests send, and the stage at which those leave the native call's common
# case (None: they do not)
CHAINS: dict[str, tuple[Callable[[], HttpWasmMiddleware], bytes, str | None]] = {
    "every guest ends at once": (lambda: HttpWasmMiddleware(echo_app, [copy_header(), copy_header()]), b"", None),
    "a guest answers (next=0)": (lambda: HttpWasmMiddleware(echo_app, [
        copy_header(), Program().req("set_status_code", 403).req(RETURN, 0).guest()]), b"", "REQUEST_PHASE"),
    "a guest reads the request body": (lambda: HttpWasmMiddleware(echo_app, [
        Program().req("read_body", 0, BUF, 64).req(RETURN, 1).guest()]), b"", "REQUEST_PHASE"),
    "a guest buffers the response": (lambda: HttpWasmMiddleware(echo_app, [
        copy_header(), Guest(WAT / "start_section.wat", name="buffers")]), b"", "FINISH"),
    "a guest traps in handle_request": (lambda: HttpWasmMiddleware(echo_app, [copy_header(), trap_on_header()]),
                                        b"request", "REQUEST_PHASE"),
    "a guest traps in handle_response": (lambda: HttpWasmMiddleware(echo_app, [copy_header(), trap_on_header()]),
                                         b"response", "BACK"),
    "the app fails": (lambda: HttpWasmMiddleware(failing_app, [copy_header()]), b"", "APP_FAILED"),
    "routes": (lambda: HttpWasmMiddleware(echo_app, routes=[Route([copy_header()], path_prefix="/guarded")]),
               b"", None),
}


@pytest.mark.parametrize("name", CHAINS)
@pytest.mark.parametrize("path", ["/guarded/x", "/open"])
async def test_the_native_call_sends_what_the_reference_sends(name: str, path: str, handed_over: list[int]) -> None:
    make, trap, leaves_at = CHAINS[name]
    middleware = make()
    call = middleware(scope_of(path), None, None)  # type: ignore[arg-type]
    native = type(call).__name__
    call.close()
    reference = await drive(lambda *args: HttpWasmMiddleware.__call__(middleware, *args), scope_of(path, trap))
    sent = await drive(middleware, scope_of(path, trap))
    assert sent == reference and sent
    unrouted = name == "routes" and path == "/open"
    assert native == ("coroutine" if unrouted else "Serving")  # an unrouted request: the app's own coroutine
    assert handed_over == ([] if leaves_at is None or unrouted else [STAGES[leaves_at]])
    assert middleware.chain.active == 0
    for guest in middleware.all_guests:
        assert guest.pool.size == len(guest.pool._idle), "every instance is back in its pool"


async def test_what_the_native_call_does_not_take_goes_to_the_reference() -> None:
    middleware = HttpWasmMiddleware(echo_app, [copy_header()])

    class Subclass(HttpWasmMiddleware):
        pass

    lifespan = middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    subclassed = Subclass(echo_app, [copy_header()])(scope_of(), None, None)  # type: ignore[arg-type]
    assert inspect.iscoroutine(lifespan) and inspect.iscoroutine(subclassed)
    lifespan.close()
    subclassed.close()
    with using_path(PYTHON_PATH):
        python_path = HttpWasmMiddleware(echo_app, [Guest(WAT / "copy_header.wat", name="python-path")])
    served = python_path(scope_of(), None, None)  # type: ignore[arg-type]
    assert inspect.iscoroutine(served)
    served.close()


def test_servers_still_see_an_asgi3_app() -> None:
    middleware = HttpWasmMiddleware(echo_app, [copy_header()])
    assert inspect.iscoroutinefunction(HttpWasmMiddleware.__call__)
    assert inspect.iscoroutinefunction(middleware.__call__)
    config = uvicorn.Config(middleware, log_level="warning")
    config.load()
    assert config.interface == "asgi3"


def held_app(started: asyncio.Event) -> Callable[..., Any]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        started.set()
        await asyncio.Event().wait()  # never answers in full

    return app


async def test_a_cancelled_request_gives_its_instances_back(handed_over: list[int]) -> None:
    started = asyncio.Event()
    middleware = HttpWasmMiddleware(held_app(started), [copy_header(), copy_header()])
    task = asyncio.create_task(drive(middleware, scope_of()))  # a Serving is a Coroutine to asyncio
    await started.wait()
    assert middleware.chain.active == 1
    assert sum(len(g.pool._idle) for g in middleware.guests) == 0, "both guests hold an instance"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert middleware.chain.active == 0
    assert all(len(g.pool._idle) == g.pool.size == 1 for g in middleware.guests)
    assert handed_over == [STAGES["RAISED"]]  # serve() unwinds the guests, as the reference's finally does


async def test_an_anyio_task_group_runs_and_cancels_the_call_as_a_coroutine() -> None:
    started = asyncio.Event()
    middleware = HttpWasmMiddleware(held_app(started), [copy_header()])

    async def send(message: Message) -> None:
        pass

    async with anyio.create_task_group() as group:  # start_soon takes what the call returns as its coroutine
        group.start_soon(middleware, scope_of(), None, send)
        await started.wait()
        group.cancel_scope.cancel()  # anyio asks the task's coroutine for its state (cr_running, cr_suspended)
    guest = middleware.guests[0]
    assert middleware.chain.active == 0 and len(guest.pool._idle) == guest.pool.size == 1


@pytest.mark.parametrize("how", ["close", "drop"])
async def test_a_request_closed_or_dropped_half_way_gives_its_instances_back(how: str,
                                                                              handed_over: list[int]) -> None:
    started = asyncio.Event()
    middleware = HttpWasmMiddleware(held_app(started), [copy_header()])
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    serving = middleware(scope_of(), None, send)  # type: ignore[arg-type]
    waited_on = serving.send(None)  # runs to the app's first wait
    assert isinstance(waited_on, asyncio.Future) and started.is_set() and sent[0]["status"] == 200
    assert inspect.getcoroutinestate(serving) == inspect.CORO_SUSPENDED  # as anyio asks of a task's coroutine
    assert inspect.iscoroutine(serving.cr_await)  # the app's
    waited_on.cancel()
    guest = middleware.guests[0]
    assert len(guest.pool._idle) == 0 and middleware.chain.active == 1
    if how == "close":
        assert serving.close() is None
        assert inspect.getcoroutinestate(serving) == inspect.CORO_CLOSED
    else:
        del serving
        gc.collect()
    assert middleware.chain.active == 0 and len(guest.pool._idle) == guest.pool.size == 1
    assert handed_over == [STAGES["RAISED"]]


async def test_an_exception_thrown_in_and_handled_by_the_app_lets_it_answer() -> None:
    waiting = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            waiting.set()
            await asyncio.sleep(3600)
        except KeyError:
            await send({"type": "http.response.start", "status": 299, "headers": []})
            await send({"type": "http.response.body", "body": b"handled"})

    middleware = HttpWasmMiddleware(app, [copy_header()])
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    serving = middleware(scope_of(), None, send)  # type: ignore[arg-type]
    serving.send(None)
    assert waiting.is_set()
    with pytest.raises(StopIteration):
        serving.throw(KeyError("in"))
    assert [m.get("status") for m in sent] == [299, None] and dict(sent[0]["headers"])[b"x-id"] == b"abc"
    assert middleware.chain.active == 0
    with pytest.raises(RuntimeError, match="cannot reuse"):
        serving.send(None)
