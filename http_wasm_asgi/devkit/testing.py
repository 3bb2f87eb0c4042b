"""Test a guest against this host: a client for a chain in front of a recording echo app.

    from http_wasm_asgi.testing import GuestClient

    with GuestClient("guests/zig/auth.wasm", config="s3cret") as client:
        result = client.get("/private", headers={"authorization": "Bearer s3cret"})
        assert result.status == 200                           # what the client got ...
        assert result.app.headers["authorization"] == "Bearer s3cret"   # ... and what the app saw
        assert not result.trapped and not result.logs
        print(result.report())                                # request, response, logs, host-call trace

`GuestClient(..., server=True)` sends the same requests through a real uvicorn server (127.0.0.1,
an ephemeral port) with the same API. Guests the client loads are traced (`Guest(trace=...)`):
each `Result` holds the host calls of its request. The pytest plugin (`pytest_plugin.py`) gives
fixtures for it. Also here: `echo_app` and `serve`, the helpers the repo's own tests use.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from ..asgi.middleware import DEFAULT_MAX_BODY_SIZE, HttpWasmMiddleware
from ..asgi.types import Message, Receive, Scope, Send
from ..errors import GuestTrap, MissingExtra
from ..guest import Guest, GuestConfig, GuestSource
from ..tracing import TRACE_LOGGER, HostCall, HostCallSink

try:
    import httpx
    import uvicorn
except ImportError as exc:
    raise MissingExtra("http_wasm_asgi.testing", "testing", exc) from None

__all__ = ["AppRequest", "GuestClient", "GuestLog", "RecordingApp", "Result", "echo_app", "recent_results",
           "serve"]

HeaderItems = Mapping[str, str] | Sequence[tuple[str, str]]
BODY_PREVIEW: Final = 400  # bytes of a body a report shows
_HOST_LOGGER: Final = "http_wasm_asgi"
_RECENT: collections.deque[Result] = collections.deque(maxlen=8)  # for the pytest plugin's failure reports


def _echo_payload(scope: Scope, body: bytes) -> bytes:
    return json.dumps({
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
        "query_string": scope.get("query_string", b"").decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "body": body.decode("utf-8", "replace"),
    }).encode()


async def _read_body(receive: Receive) -> bytes:
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 with JSON of the request as the app saw it, and header `x-echo: 1`."""
    assert scope["type"] == "http"
    payload = _echo_payload(scope, await _read_body(receive))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"x-echo", b"1")]})
    await send({"type": "http.response.body", "body": payload})


@dataclass(frozen=True)
class AppRequest:
    """What the app behind the chain saw of a request, after every guest's changes."""

    method: str
    path: str  # decoded
    raw_path: str  # as sent (still encoded)
    query: str
    headers: httpx.Headers  # case-insensitive; .get_list(name) for repeated ones
    body: bytes

    @property
    def uri(self) -> str:
        """Raw path and query, as a guest's get_uri reads it."""
        return self.raw_path + ("?" + self.query if self.query else "")


class RecordingApp:
    """An ASGI app that records each request it gets (`requests`) and answers with `echo_app`'s JSON,
    or with a fixed response (`status`, `headers`, `body`) when `body` is given."""

    def __init__(self, *, status: int = 200, headers: HeaderItems = (), body: bytes | None = None) -> None:
        self.status = status
        self.headers = _pairs(headers)
        self.body = body
        self.requests: list[AppRequest] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        self.requests.append(AppRequest(
            scope["method"], scope["path"], (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
            scope.get("query_string", b"").decode("latin-1"), httpx.Headers(list(scope["headers"])), body))
        if self.body is None:
            payload, headers = _echo_payload(scope, body), [(b"content-type", b"application/json"), (b"x-echo", b"1")]
        else:
            payload, headers = self.body, [(k.encode(), v.encode()) for k, v in self.headers]
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _pairs(headers: HeaderItems | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), str(v)) for k, v in items]


@dataclass(frozen=True)
class GuestLog:
    """One line a guest logged (its `log` calls, or its stdout/stderr)."""

    guest: str
    level: str  # DEBUG, INFO, WARNING, ERROR
    message: str

    def __str__(self) -> str:
        return f"{self.level:<7} {self.guest}: {self.message}"


@dataclass
class Result:
    """One request through the chain: what the client sent and got, what the app saw, what the guests did."""

    method: str
    url: str
    request_headers: list[tuple[str, str]]
    request_body: bytes
    status: int
    headers: httpx.Headers
    body: bytes
    trailers: httpx.Headers = field(default_factory=httpx.Headers)  # in-process only (uvicorn sends none)
    app: AppRequest | None = None  # None: the app was not called (a guest answered, or trapped)
    logs: list[GuestLog] = field(default_factory=list)
    trace: list[HostCall] = field(default_factory=list)  # every host call of the request, in order
    errors: list[str] = field(default_factory=list)  # what the host logged as errors (a trap's cause)
    traps: list[GuestTrap] = field(default_factory=list)
    untraced: list[str] = field(default_factory=list)  # guests of the chain loaded without trace

    @property
    def trapped(self) -> bool:
        """Whether a guest call trapped (or ran out of time) during this request."""
        return bool(self.traps)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def calls(self, function: str) -> list[HostCall]:
        """The host calls of this request to `function` (e.g. "set_header_value")."""
        return [call for call in self.trace if call.function == function]

    def __repr__(self) -> str:
        outcome = " (trapped)" if self.trapped else "" if self.app is not None else " (app not called)"
        return f"<Result {self.method} {self.url} -> {self.status}{outcome}>"

    def report(self) -> str:
        """Everything about this request, for a human: request, response, what the app saw, logs, trace."""
        lines = [f"request: {self.method} {self.url}"]
        lines += [f"  > {k}: {v}" for k, v in self.request_headers]
        lines += _body_lines("  > ", self.request_body)
        lines.append(f"response: {self.status}")
        lines += [f"  < {k}: {v}" for k, v in self.headers.multi_items()]
        lines += _body_lines("  < ", self.body)
        lines += [f"  < (trailer) {k}: {v}" for k, v in self.trailers.multi_items()]
        lines += _app_lines(self.app)
        lines.append(f"guest logs: {len(self.logs) or 'none'}")
        lines += [f"  {log}" for log in self.logs]
        traps = {str(trap) for trap in self.traps}
        lines += [f"host error: {error}" for error in self.errors if not any(error.startswith(t) for t in traps)]
        lines += [f"trapped: {trap}" for trap in self.traps] or ["trapped: no"]
        lines.append(f"host calls: {len(self.trace)}")
        lines += [f"  {call}" for call in self.trace]
        lines += [f"  (guest {name!r} is not traced: load it with Guest(..., trace=True))" for name in self.untraced]
        return "\n".join(lines)


def _body_lines(prefix: str, body: bytes) -> list[str]:
    if not body:
        return []
    shown = body[:BODY_PREVIEW].decode("utf-8", "replace")
    more = f" ... ({len(body)} bytes)" if len(body) > BODY_PREVIEW else ""
    return [f"{prefix}body: {shown!r}{more}"]


def _app_lines(app: AppRequest | None) -> list[str]:
    if app is None:
        return ["the app saw: nothing (not called)"]
    lines = [f"the app saw: {app.method} {app.uri}"]
    lines += [f"  | {k}: {v}" for k, v in app.headers.multi_items()]
    return lines + _body_lines("  | ", app.body)


def recent_results() -> list[Result]:
    """The last requests any GuestClient of this process sent, oldest first (the pytest plugin shows them
    when a test fails)."""
    return list(_RECENT)


def forget_results() -> None:
    _RECENT.clear()


class _Recorder(logging.Handler):
    """Collects, per request, the guests' log lines, their host calls and the host's errors."""

    def __init__(self, guest_loggers: Mapping[str, str]) -> None:
        super().__init__(logging.NOTSET)
        self.guest_loggers = dict(guest_loggers)  # logger name -> guest name
        self.logs: list[GuestLog] = []
        self.calls: list[HostCall] = []
        self.errors: list[str] = []
        self.traps: list[GuestTrap] = []
        self._last: logging.LogRecord | None = None  # a record propagates: it reaches this handler twice

    def take(self) -> tuple[list[GuestLog], list[HostCall], list[str], list[GuestTrap]]:
        taken = self.logs, self.calls, self.errors, self.traps
        self.logs, self.calls, self.errors, self.traps = [], [], [], []
        return taken

    def host_call(self, call: HostCall) -> None:
        """The trace sink of the guests the client loads."""
        self.calls.append(call)

    def emit(self, record: logging.LogRecord) -> None:
        if record is self._last:
            return
        self._last = record
        args = record.args if isinstance(record.args, tuple) else ()
        if record.name in self.guest_loggers:
            self.logs.append(GuestLog(self.guest_loggers[record.name], record.levelname, record.getMessage()))
        elif record.levelno >= logging.ERROR and record.name.startswith(_HOST_LOGGER) and \
                not record.name.startswith(TRACE_LOGGER):
            self.errors.append(record.getMessage())
            self.traps += [arg for arg in args if isinstance(arg, GuestTrap)]


class _Tracked:
    """The chain, counting finished requests: a server's response can reach the client before the last
    handle_response ran, so the client waits for this before it reads the record."""

    def __init__(self, app: HttpWasmMiddleware) -> None:
        self.app = app
        self.finished = threading.Semaphore(0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                self.finished.release()


class GuestClient:
    """A client for a chain of guests in front of a `RecordingApp`, in-process or through uvicorn.

    `guests` are sources (a .wasm/.wat path or the module's bytes; loaded here with `config` and
    `options`, traced) or `Guest` objects (used as they are; traced if made with `trace=True`),
    outermost first. Each request returns a `Result`. `log_level` is the level the guests' loggers
    get (what `log_enabled` answers). Use it as a context manager, or call `close()`.
    """

    def __init__(self, *guests: Guest | GuestSource, config: GuestConfig = None, server: bool = False,
                 app: RecordingApp | None = None, log_level: int = logging.DEBUG,
                 max_body_size: int = DEFAULT_MAX_BODY_SIZE, timeout: float = 10.0, **options: Any) -> None:
        if not guests:
            raise TypeError("GuestClient needs at least one guest")
        self.app = app or RecordingApp()
        self.server = server
        self.timeout = timeout
        self._recorder = _Recorder({})
        self._saved: list[tuple[logging.Logger, int]] = []
        self._own: list[Guest] = []
        self._sinks: list[list[HostCallSink]] = []  # trace sinks of the guests given, with the recorder's added
        self._stack = contextlib.ExitStack()
        self._loop: asyncio.AbstractEventLoop | None = None
        try:
            self.guests = [self._load(g, config, log_level, options) for g in guests]
            self.init_logs, self.init_trace, _, _ = self._recorder.take()  # what the guests did at load
            self.chain = HttpWasmMiddleware(self.app, self.guests, max_body_size=max_body_size)
            self._tracked = _Tracked(self.chain)
            self._watch(logging.getLogger(_HOST_LOGGER), None)
            if server:
                self.url = self._stack.enter_context(serve(self._tracked))
                self._http = self._stack.enter_context(httpx.Client(base_url=self.url, timeout=timeout))
        except BaseException:
            self.close()
            raise

    def _watch(self, logger: logging.Logger, level: int | None) -> None:
        self._saved.append((logger, logger.level))
        if level is not None:
            logger.setLevel(level)
        logger.addHandler(self._recorder)

    def _load(self, source: Guest | GuestSource, config: GuestConfig, log_level: int,
              options: dict[str, Any]) -> Guest:
        """A Guest, with its log (and trace, when it has one) recorded from here on."""
        if isinstance(source, Guest):
            guest = source
        else:
            name = options.get("name") or ("guest" if isinstance(source, bytes | bytearray) else Path(source).stem)
            self._recorder.guest_loggers[f"http_wasm_asgi.guest.{name}"] = name
            self._watch(logging.getLogger(f"http_wasm_asgi.guest.{name}"), log_level)
            guest = Guest(source, **{"name": name, "config": config, "trace": self._recorder.host_call,
                                     **options})
            self._own.append(guest)
            return guest
        self._recorder.guest_loggers[guest.logger.name] = guest.name
        self._watch(guest.logger, log_level)
        if guest.trace_sinks is not None:
            guest.trace_sinks.append(self._recorder.host_call)
            self._sinks.append(guest.trace_sinks)
        return guest

    # -- requests --
    def request(self, method: str, url: str, *, headers: HeaderItems | None = None,
                body: bytes | str | None = None) -> Result:
        """Send one request (`url`: a path with its query, e.g. "/a?b=1") and return what happened."""
        data = body.encode() if isinstance(body, str) else (body or b"")
        if self.server:
            return self._through_server(method, url, _pairs(headers), data)
        if _in_event_loop():
            raise RuntimeError("GuestClient.request was called inside a running event loop (an async test): "
                               "use `await client.arequest(...)` there")
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self.arequest(method, url, headers=headers, body=body))

    async def arequest(self, method: str, url: str, *, headers: HeaderItems | None = None,
                       body: bytes | str | None = None) -> Result:
        """`request` for async tests (in-process: on the running event loop)."""
        data = body.encode() if isinstance(body, str) else (body or b"")
        if self.server:
            return await asyncio.to_thread(self._through_server, method, url, _pairs(headers), data)
        pairs = _request_headers(_pairs(headers), data, method)
        self._start()
        status, got, trailers, got_body = await _call_asgi(self._tracked, method, url, pairs, data)
        return self._result(method, url, pairs, data, status, httpx.Headers(got), got_body, httpx.Headers(trailers))

    def get(self, url: str, *, headers: HeaderItems | None = None) -> Result:
        return self.request("GET", url, headers=headers)

    def post(self, url: str, body: bytes | str = b"", *, headers: HeaderItems | None = None) -> Result:
        return self.request("POST", url, headers=headers, body=body)

    def _start(self) -> None:
        self._recorder.take()
        self.app.requests.clear()

    def _through_server(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> Result:
        self._start()
        response = self._http.request(method, url, headers=headers, content=body or None)
        if not self._tracked.finished.acquire(timeout=self.timeout):
            raise TimeoutError(f"{method} {url}: the server did not finish the request in {self.timeout:g} s")
        sent = [(k, v) for k, v in response.request.headers.multi_items()]
        return self._result(method, url, sent, body, response.status_code, response.headers, response.content,
                            httpx.Headers())

    def _result(self, method: str, url: str, sent: list[tuple[str, str]], body: bytes, status: int,
                headers: httpx.Headers, got: bytes, trailers: httpx.Headers) -> Result:
        logs, calls, errors, traps = self._recorder.take()
        app = self.app.requests[-1] if self.app.requests else None
        result = Result(method, url, sent, body, status, headers, got, trailers, app, logs, calls, errors, traps,
                        [g.name for g in self.guests if not g.traced])
        _RECENT.append(result)
        return result

    def close(self) -> None:
        """Stop the server (if any), drop the guests this client loaded, restore the loggers."""
        self._stack.close()
        for logger, level in reversed(self._saved):
            logger.removeHandler(self._recorder)
            logger.setLevel(level)
        self._saved.clear()
        for sinks in self._sinks:
            sinks.remove(self._recorder.host_call)
        self._sinks.clear()
        for guest in self._own:
            guest.close()
        chain = getattr(self, "chain", None)
        if chain is not None:
            chain.threads.close()
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def __enter__(self) -> GuestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _request_headers(headers: list[tuple[str, str]], body: bytes, method: str) -> list[tuple[str, str]]:
    """What a client would send: a host, and the body's length."""
    names = {k.lower() for k, _ in headers}
    out = list(headers)
    if "host" not in names:
        out.insert(0, ("host", "testserver"))
    if "content-length" not in names and "transfer-encoding" not in names and \
            (body or method in ("POST", "PUT", "PATCH")):
        out.append(("content-length", str(len(body))))
    return out


async def _call_asgi(app: Any, method: str, url: str, headers: list[tuple[str, str]],
                     body: bytes) -> tuple[int, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], bytes]:
    """One request through an ASGI app, in-process, as an HTTP/1.1 server that can send trailers would
    hand it over: (status, headers, trailers, body)."""
    parts = urlsplit(url)
    raw_path = (parts.path or "/").encode("ascii")
    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": unquote(parts.path or "/"), "raw_path": raw_path, "query_string": parts.query.encode("ascii"),
        "root_path": "", "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "extensions": {"http.response.trailers": {}}}
    done = asyncio.Event()
    sent_body = False
    got: dict[str, Any] = {"status": 0, "headers": [], "trailers": [], "body": b""}

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            got["status"], got["headers"] = message["status"], list(message.get("headers") or [])
        elif kind == "http.response.body":
            got["body"] += message.get("body", b"")
        elif kind == "http.response.trailers":
            got["trailers"] += list(message.get("headers") or [])

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return got["status"], got["headers"], got["trailers"], got["body"]


@contextlib.contextmanager
def serve(app: Any, **config: Any) -> Iterator[str]:
    """Run `app` on a real uvicorn server on 127.0.0.1 (ephemeral port) in a thread; yields its base URL."""
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "log_level": "warning", "lifespan": "off"}
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
