"""One request's way through a chain of guests: the chain itself (`Chain`), the request (`Flow`), and the
ASGI plumbing between the server, the guests' `Exchange` and the app.

Two implementations of the per-request path, as in wasm/calls.py: `Flow` (Python, the reference) and
`NativeFlow` (its enter, app_args, leave and stream in C, `_native/flow.c`). A chain whose guests all
take the native path opens NativeFlows; any other chain opens Flows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Final, NamedTuple, cast
from urllib.parse import quote, unquote_to_bytes

from .. import _native
from ..abi import HeaderKind, split_ctx_next
from ..errors import GuestError, GuestTrap, PoolTimeout
from ..guest import Guest
from ..host import BUFFER_RESPONSE, RESPONSE_OBSERVERS, Exchange, merge_response_headers
from ..wasm.calls import SUSPENDED
from ..wasm.instance import WasmInstance
from .failure import skip, skippable, trap_cause
from .routes import Route, RouteTable
from .types import ASGIApp, Message, Receive, Scope, Send, send_error

merge_response_headers = _native.accelerated(merge_response_headers)  # the native one, when built

DEFAULT_MAX_BODY_SIZE: Final = 16 * 1024 * 1024
GUEST_THREADS: Final = 32  # worker threads of one middleware for Guest(threaded=True) calls
_NO_BODY_STATUS: Final = frozenset({204, 304})
_UNSAFE_EXTENSIONS: Final = ("http.response.pathsend", "http.response.zerocopysend")
_RESPONSE_TRAILERS: Final = int(HeaderKind.RESPONSE_TRAILERS)
_PATH_SAFE: Final = "/:@!$&'()*+,;="  # RFC 3986 pchar, kept as they are (letters, digits and -._~ always are)
DEFAULT_HTTP_VERSION: Final = "1.1"  # a scope without http_version
_PROTOCOLS: Final = {"1.0": b"HTTP/1.0", "1.1": b"HTTP/1.1", "2": b"HTTP/2.0", "2.0": b"HTTP/2.0",
                     "3": b"HTTP/3.0"}

log = logging.getLogger("http_wasm_asgi")


class Held(NamedTuple):
    """A guest that returned next=1 and waits for its handle_response."""

    guest: Guest
    instance: WasmInstance
    req_ctx: int


class Pending(NamedTuple):
    """A guest call that enter() or leave() left to the async path, and what it ended with so far: ctx_next,
    SUSPENDED or its GuestTrap (handle_request), None, SUSPENDED or its GuestTrap (handle_response)."""

    guest: Guest
    instance: WasmInstance
    outcome: Any


class Chain:
    """What serves a request: the app, the guests in order (or the routes and their chains) and what they
    need, swapped as one object.

    A request reads the middleware's chain once and runs on it to its end; `replace_guests` puts a new
    chain in its place and retires the old one, which closes its guests when its last request ends.
    Nothing here changes after construction but the count of requests in flight.
    """

    __slots__ = ("_keep", "active", "app", "guests", "max_body_size", "observes_response", "open_flow", "retired",
                 "routes", "steps", "threads")
    # what the native path reads of a chain (see _native: the contract)
    NATIVE_SLOTS: ClassVar = ("active", "app", "max_body_size", "observes_response", "open_flow", "retired", "routes",
                              "steps")
    NATIVE_ATTRIBUTES: ClassVar = ()

    def __init__(self, app: ASGIApp, guests: Sequence[Guest], max_body_size: int,
                 routes: Sequence[Route] | None = None) -> None:
        for guest in guests:
            if not isinstance(guest, Guest):
                raise TypeError(f"guests must be Guest objects, got {type(guest).__name__}")
        self.app = app
        self.guests: tuple[Guest, ...] = tuple(guests)
        # what NativeFlow's enter and leave read of each guest, read once here (a guest's pool, context and
        # options never change): (guest, pool, context, threaded, reads_request_body)
        self.steps = tuple((guest, guest.pool, guest.context, guest.threaded, guest.reads_request_body)
                           for guest in self.guests)
        self.max_body_size = max_body_size
        # Whether a guest may look at the app's response (status, headers, trailers) in
        # handle_response: if none can, an unbuffered response goes straight to the client.
        self.observes_response = any(guest.info.imports_host(name) for guest in self.guests
                                     for name in RESPONSE_OBSERVERS)
        self.threads = GuestThreads()
        # how its requests start: NativeFlows when every guest takes the native path (their calls are C's to make)
        native = native_open_flow is not None and all(guest.native for guest in self.guests)
        self.open_flow: Callable[[Chain, Scope, Receive, Send], Flow] = \
            native_open_flow if native else python_open_flow  # type: ignore[assignment]
        self.routes: RouteTable[Chain | None] | None = None if routes is None else self._route_table(routes)
        self.active = 0  # requests running on this chain
        self.retired = False
        self._keep: tuple[Guest, ...] = ()

    def _route_table(self, routes: Sequence[Route]) -> RouteTable[Chain | None]:
        """Each route's chain: a Chain of its guests (sharing this chain's threads; the request's flow runs
        it in the middleware's own __call__), or None (straight to the app) for a route without guests;
        routes with the same guests share one chain. They live and close with this chain."""
        chains: dict[tuple[int, ...], Chain | None] = {(): None}
        table: list[tuple[Route, Chain | None]] = []
        for route in routes:
            if not isinstance(route, Route):
                raise TypeError(f"routes must be Route objects, got {type(route).__name__}")
            key = tuple(id(guest) for guest in route.guests)
            if key not in chains:
                chain = Chain(self.app, route.guests, self.max_body_size)
                chain.threads = self.threads
                chains[key] = chain
            table.append((route, chains[key]))
        return RouteTable(table, default=None)

    def all_guests(self) -> tuple[Guest, ...]:
        """Every distinct guest of this chain: its own, or those of all its routes."""
        if self.routes is None:
            return self.guests
        return tuple({id(g): g for route in self.routes.routes for g in route.guests}.values())

    def retire(self, keep: Sequence[Guest] = ()) -> None:
        """No new request comes here: close the guests (but `keep`) once the last one in flight ends."""
        self.retired = True
        self._keep = tuple(keep)
        if not self.active:
            self.close()

    def close(self) -> None:
        for guest in self.all_guests():
            if guest not in self._keep:
                guest.close()
        self.threads.close()


def exchange_from_scope(scope: Scope, max_body_size: int) -> Exchange:
    """The host's view of an ASGI request: request line parts as bytes, the scope's header list."""
    extensions = scope.get("extensions")
    return Exchange(scope["method"], scope.get("raw_path") or _encoded_path(scope["path"]),
                    scope.get("query_string") or b"", scope["headers"], max_body_size,
                    _PROTOCOLS.get(scope.get("http_version", DEFAULT_HTTP_VERSION), b"HTTP/1.1"), scope.get("client"),
                    extensions is not None and "http.response.trailers" in extensions)


def _encoded_path(path: str) -> bytes:
    """A server without `raw_path` (it is optional in ASGI): the decoded path, encoded again for get_uri."""
    return quote(path, safe=_PATH_SAFE).encode("ascii")


def scope_for_app(scope: Scope, exchange: Exchange) -> Scope:
    """The scope the next handler sees: the server's, with every change the guests made."""
    if exchange.uri is not None or exchange.headers_changed or exchange.method != scope["method"] \
            or exchange.request_body_replaced:
        scope = dict(scope)
        scope["method"] = exchange.method
        if exchange.uri is not None:
            raw_path, _, query = exchange.uri.partition(b"?")
            scope["raw_path"] = raw_path
            scope["path"] = unquote_to_bytes(raw_path).decode("utf-8", "replace")
            scope["query_string"] = query
        headers = exchange.request_headers
        if exchange.request_body_replaced:
            headers = [(k, v) for k, v in headers if k not in (b"content-length", b"transfer-encoding")]
            headers.append((b"content-length", str(len(exchange.request_body or b"")).encode()))
        scope["headers"] = headers
    extensions = scope.get("extensions")
    if extensions and ("http.response.pathsend" in extensions or "http.response.zerocopysend" in extensions):
        scope = dict(scope)  # guests may rewrite the body: the app must send it as messages
        scope["extensions"] = {k: v for k, v in extensions.items() if k not in _UNSAFE_EXTENSIONS}
    return scope


class Flow:
    """One request through the chain: its `Exchange`, the guests holding an instance, the ASGI plumbing."""

    __slots__ = ("app_trailers", "body_replayed", "buffered", "chain", "error_status", "exchange",
                 "held", "pending", "receive", "response_too_large", "scope", "send", "sent", "started")
    # what NativeFlow's open_flow, enter, app_args, leave and stream read, write and call (see _native: the contract)
    NATIVE_SLOTS: ClassVar = ("buffered", "chain", "exchange", "held", "pending", "receive", "response_too_large",
                              "scope", "send", "sent", "started")
    NATIVE_ATTRIBUTES: ClassVar = ("collect", "replay_receive", "stream")

    def __init__(self, chain: Chain, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        self.chain = chain
        self.scope = scope
        self.receive = receive
        self.send = send
        self.exchange = exchange
        self.held: list[Held] = []
        # A guest call that enter() or leave() left to the async path: (guest, instance, its outcome).
        self.pending: Pending | None = None
        self.buffered = False  # a held guest enabled buffer_response: the app's response is collected
        self.started = False  # the app sent http.response.start (to us or through us)
        self.sent = False  # http.response.start went to the client
        self.error_status: int | None = None  # a guest trapped on the way back
        self.app_trailers = False  # the app announced response trailers
        self.body_replayed = False
        self.response_too_large = False

    # -- the way in --
    def enter(self) -> bool:
        """handle_request of the guests whose calls end at once in next, in order: True when all did.

        The per-request fast path (NativeFlow has it in C). It stops before a guest
        that needs more (its request body read, a worker thread, an instance to wait for), or after a
        call that ended otherwise: that call's outcome (ctx_next, SUSPENDED or its GuestTrap) is left
        in `pending` for request_phase, which goes on from there.
        """
        exchange = self.exchange
        guests = self.chain.guests
        held = self.held
        while len(held) < len(guests):
            guest = guests[len(held)]
            if guest.threaded or (guest.reads_request_body and exchange.request_body is None):
                return False
            instance = guest.pool.try_acquire()
            if instance is None:
                return False
            try:
                ctx_next = instance.start_request(exchange, guest.context.features)
            except GuestTrap as trap:
                self.pending = Pending(guest, instance, trap)
                return False
            if ctx_next == SUSPENDED or not split_ctx_next(ctx_next)[1]:
                self.pending = Pending(guest, instance, ctx_next)
                return False
            self.hold(guest, instance, ctx_next)
        return True

    async def request_phase(self) -> bool:
        """handle_request of each guest `enter` left; False when a guest answered (or failed) instead."""
        position = len(self.held)  # the guest after the last one held (a fail_open one may be skipped)
        pending = self.pending
        if pending is not None:
            self.pending = None
            position += 1  # the pending call is guests[len(held)]'s
            if not await self.entered(*pending):
                return False
        exchange = self.exchange
        for guest in self.chain.guests[position:]:
            if guest.reads_request_body and exchange.request_body is None:
                await self.buffer_request_body()
            instance = await self.instance_for(guest)
            if instance is None:
                continue  # a fail_open guest without an instance: skipped
            outcome: int | GuestTrap
            try:  # host.begin, handle_request, host.after_next on next=1
                if guest.threaded:
                    outcome = await self.chain.threads.run(guest, instance, instance.request, exchange,
                                                           guest.context.features)
                else:  # in slices: a guest that runs past its first ~1 ms lets other requests in
                    outcome = instance.start_request(exchange, guest.context.features)
            except GuestTrap as trap:
                outcome = trap
            if not await self.entered(guest, instance, outcome):
                return False
        return True

    async def instance_for(self, guest: Guest) -> WasmInstance | None:
        """An instance of `guest` for this request; None when there is none (its pool timed out, or a new
        instance failed its init) and the guest is fail_open, so the request goes on without it."""
        pool = guest.pool
        try:
            return pool.try_acquire() or await pool.acquire()
        except (PoolTimeout, GuestError) as exc:
            if not guest.fail_open:
                raise
            skip(guest, "pool_timeout" if isinstance(exc, PoolTimeout) else "init", exc, self.scope)
            return None

    async def entered(self, guest: Guest, instance: WasmInstance, outcome: int | GuestTrap) -> bool:
        """What a guest's handle_request call ended with: True when the request goes on (the guest is held
        for the way back, or it failed and is fail_open: skipped), False when it answered the request (or
        failed, and the request got its error)."""
        if outcome == SUSPENDED:
            outcome = await _finish_call(guest, instance)
        if isinstance(outcome, GuestTrap):
            if skippable(guest, outcome, self.exchange):
                self.skip_trapped(guest, instance, outcome)
                return True
            self.drop_trapped(guest, instance, outcome)
            await self.unwind(is_error=True)
            await self.respond_error(outcome.status)
            return False
        if not split_ctx_next(outcome)[1]:  # this guest answered
            instance.host.end()
            guest.pool.release(instance)
            await self.unwind(is_error=False)
            await self.send_exchange(short_circuit=True)
            return False
        self.hold(guest, instance, outcome)
        return True

    def hold(self, guest: Guest, instance: WasmInstance, ctx_next: int) -> None:
        """A guest said next: it keeps its instance until its handle_response."""
        host = instance.host
        if host.request_read:
            host.pass_on_request_body()
        self.held.append(Held(guest, instance, split_ctx_next(ctx_next)[0]))
        if host.features & BUFFER_RESPONSE:
            self.buffered = True

    async def buffer_request_body(self) -> None:
        """Read the request body (up to max_body_size) for a guest that may read it."""
        exchange = self.exchange
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                # A truncated body must not pass for the whole one (to the guest or the app), and a
                # response to no one can block forever (Hypercorn over HTTP/2 waits for a window).
                raise ClientGone
            body = message.get("body", b"")
            if body:
                chunks.append(body)
                size += len(body)
            more = bool(message.get("more_body", False))
            if size > exchange.max_body_size:
                break
        exchange.request_body = b"".join(chunks)
        exchange.request_body_more = more

    # -- the next handler --
    async def app_failed(self, exc: Exception) -> None:
        """The app raised: handle_response of every held guest with is_error, then the app's error goes on,
        but for a buffered response that outgrew max_body_size (finish() answers that one)."""
        if isinstance(exc, _ResponseTooLarge):
            self.response_too_large = True
        if not self.leave(True):
            await self.unwind(is_error=True)
        if not self.response_too_large:
            raise exc

    def app_args(self) -> tuple[Scope, Receive, Send]:
        """What the next handler gets: the scope with the guests' changes, the request body as they left
        it, and the send that keeps what they may read (NativeFlow has it in C)."""
        exchange = self.exchange
        send = self.collect if self.buffered else self.stream \
            if self.chain.observes_response or exchange.response_headers else self.send
        receive = self.receive if exchange.request_body is None else self.replay_receive
        return scope_for_app(self.scope, exchange), receive, send

    async def replay_receive(self) -> Message:
        """The request body as the guests left it, then the rest of the stream (or disconnect)."""
        exchange = self.exchange
        if not self.body_replayed:
            self.body_replayed = True
            more = exchange.request_body_more and not exchange.request_body_replaced
            return {"type": "http.request", "body": exchange.request_body or b"", "more_body": more}
        return await self.receive()

    def stream(self, message: Message) -> Awaitable[None]:
        """Unbuffered: pass the app's response through, remembering what guests may read.

        Not a coroutine: it returns the server's send awaitable, so each message costs no extra
        coroutine (the app awaits what it gets, as with any ASGI send).
        """
        kind = message["type"]
        exchange = self.exchange
        if kind == "http.response.start":
            exchange.status = message["status"]
            headers = message.get("headers") or []
            if exchange.response_headers:
                message = dict(message)
                message["headers"] = headers = merge_response_headers(exchange.response_headers, headers)
            exchange.response_headers = headers  # read-only from here: no copy
            self.started = self.sent = True
        elif kind == "http.response.trailers":
            exchange.mutable_headers(_RESPONSE_TRAILERS).extend(message.get("headers") or ())
        return self.send(message)

    async def collect(self, message: Message) -> None:
        """Buffered: keep the whole response for the guests' handle_response."""
        kind = message["type"]
        exchange = self.exchange
        if kind == "http.response.start":
            exchange.status = message["status"]
            exchange.response_headers = merge_response_headers(exchange.response_headers,
                                                               message.get("headers") or ())
            self.app_trailers = bool(message.get("trailers", False))
            self.started = True
        elif kind == "http.response.body":
            body = message.get("body", b"")
            held = exchange.response_body
            if len(held) + len(body) > exchange.max_body_size:
                raise _ResponseTooLarge
            if type(held) is not bytearray:
                held = exchange.response_body = bytearray(held)
            held += body
        elif kind == "http.response.trailers":
            exchange.mutable_headers(_RESPONSE_TRAILERS).extend(message.get("headers") or ())
        else:
            await self.send(message)  # e.g. http.response.early_hint: not ours to hold

    # -- the way back --
    def leave(self, is_error: bool) -> bool:
        """handle_response of the held guests whose calls end at once, innermost first; frees their
        instances. True when no guest is left.

        The per-request fast path (NativeFlow has it in C). It stops before a guest on
        worker threads, or after a call that did not end at once (SUSPENDED) or trapped: that outcome
        is left in `pending` for unwind, which goes on from there.
        """
        held = self.held
        while held:
            guest, instance, req_ctx = held[-1]
            if guest.threaded:
                return False
            held.pop()
            try:
                outcome = instance.start_response(req_ctx, is_error)
            except GuestTrap as trap:
                self.pending = Pending(guest, instance, trap)
                return False
            if outcome is not None:
                self.pending = Pending(guest, instance, outcome)
                return False
            guest.pool.release(instance)
        return True

    async def unwind(self, *, is_error: bool) -> None:
        """handle_response of every held guest, innermost first; frees their instances.

        A guest that traps is dropped and makes is_error true for the guests before it; a
        response not yet sent becomes its error status. A fail_open guest that traps is dropped and
        skipped: the guests before it and the client get the response as it stands.
        """
        while self.pending is not None or not self.leave(is_error):
            outcome: int | GuestTrap | None
            if self.pending is not None:
                guest, instance, outcome = self.pending
                self.pending = None
            else:  # a guest whose calls run on worker threads
                guest, instance, req_ctx = self.held.pop()
                try:
                    outcome = await self.chain.threads.run(guest, instance, instance.response, req_ctx, is_error)
                except GuestTrap as trap:
                    outcome = trap
            if outcome == SUSPENDED:
                outcome = await _finish_call(guest, instance)
            if isinstance(outcome, GuestTrap):
                if skippable(guest, outcome):  # the response goes on as the inner layers left it
                    self.skip_trapped(guest, instance, outcome)
                    continue
                self.drop_trapped(guest, instance, outcome)
                self.error_status = outcome.status
                is_error = True
            else:
                guest.pool.release(instance)

    async def finish(self) -> None:
        """After the way back: send what the guests hold, or the error that replaced it."""
        if self.response_too_large and self.error_status is None:
            log.error("buffered response of %s %s exceeds max_body_size (%d bytes)", self.scope.get("method"),
                      self.scope.get("path"), self.chain.max_body_size)
            await self.respond_error(500)
        elif self.response_too_large or (self.buffered and self.error_status is not None):
            await self.respond_error(self.error_status or 500)
        elif self.buffered and self.started:
            await self.send_exchange(short_circuit=False)

    async def send_exchange(self, *, short_circuit: bool) -> None:
        """Send the response the guests hold (a short-circuit or a buffered one)."""
        if self.error_status is not None:
            await self.respond_error(self.error_status)
            return
        exchange = self.exchange
        status = exchange.status
        trailers = exchange.response_trailers if exchange.trailers_supported else []
        send_trailers = bool(trailers) or (self.app_trailers and exchange.trailers_supported)
        headers, body = _framed(exchange, status, short_circuit=short_circuit,
                                head=self.scope.get("method") == "HEAD", trailers=send_trailers)
        start: Message = {"type": "http.response.start", "status": status, "headers": headers}
        if send_trailers:
            start["trailers"] = True
        self.sent = True
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
        if send_trailers:
            await self.send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})

    async def respond_error(self, status: int) -> None:
        """A short, generic error response, unless the response is already on its way."""
        if self.sent:
            return
        self.sent = True
        await send_error(self.send, status)

    def drop_trapped(self, guest: Guest, instance: WasmInstance, trap: GuestTrap) -> None:
        """A guest call trapped: the instance is thrown away (never reused) and the cause logged."""
        instance.host.end()
        guest.pool.release(instance, discard=True)
        log.error("%s (request %s %s)", trap, self.scope.get("method"), self.scope.get("path"))

    def skip_trapped(self, guest: Guest, instance: WasmInstance, trap: GuestTrap) -> None:
        """A fail_open guest's call trapped: the instance is thrown away, the skip counted and logged."""
        cause = trap_cause(instance, trap)
        instance.host.end()
        guest.pool.release(instance, discard=True)
        skip(guest, cause, trap, self.scope)


def python_open_flow(chain: Chain, scope: Scope, receive: Receive, send: Send) -> Flow:
    """One request's way through `chain`: a `Flow` over the `Exchange` of its scope."""
    return Flow(chain, scope, receive, send, exchange_from_scope(scope, chain.max_body_size))


class NativeFlow(Flow):
    """A Flow whose enter, app_args, leave and stream are C methods (`_native/flow.c`), opened by the native
    open_flow (one C call: the flow and its exchange). They take the common case and hand anything else to
    the methods above, which stay the reference (the tests run both)."""

    __slots__ = ()


_native.learn("chain", Chain)
_native.learn("flow", Flow)
# The native open_flow starts from copies of these prototypes, so the defaults stay written once, in the
# constructors.
_PROTOTYPE_EXCHANGE: Final = Exchange("GET", b"/", b"", [], 0)
_PROTOTYPE_FLOW: Final = NativeFlow(cast(Chain, None), {}, cast(Receive, None), cast(Send, None),
                                    _PROTOTYPE_EXCHANGE)
_native_methods, native_open_flow = _native.flow_methods(
    NativeFlow, GuestTrap, Held, Pending, (_PROTOTYPE_FLOW, _PROTOTYPE_EXCHANGE), _PROTOCOLS, DEFAULT_HTTP_VERSION,
    python_open_flow, scope_for_app)
_native.install(NativeFlow, _native_methods)


def _framed(exchange: Exchange, status: int, *, short_circuit: bool, head: bool,
            trailers: bool = False) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a response the host sends itself, with honest framing.

    A response with trailers gets no content-length the app did not set: the server then frames it as
    it must for trailers (chunked on HTTP/1.1, DATA frames on HTTP/2), and clients that stop reading at a
    content-length (curl 7.88 over HTTP/2) still see the trailers."""
    body = bytes(exchange.response_body)
    headers = exchange.response_headers
    bodiless_status = status in _NO_BODY_STATUS or status < 200
    no_body = bodiless_status or head
    declared = [v for k, v in headers if k.lower() == b"content-length"]
    if short_circuit or exchange.response_body_replaced or not declared or bodiless_status:
        # a 204/304 has no body, so no framing headers either (the app's would announce one)
        headers = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding")]
        if not no_body and not trailers:
            headers.append((b"content-length", str(len(body)).encode()))
    else:
        try:  # a guest that declares a shorter length means it: never leak what it cut
            limit = int(declared[-1])
        except ValueError:
            limit = len(body)
        if limit < len(body):
            body = body[:max(limit, 0)]
    return list(headers), b"" if no_body else body


async def _finish_call(guest: Guest, instance: WasmInstance) -> Any:
    """The rest of a guest call that yielded, one slice per event-loop turn: what the call returns, or
    the GuestTrap that ended it (an outcome, as enter and leave hand it over).

    A request cancelled meanwhile (the client left) abandons the call: its instance is dropped.
    """
    try:
        return await instance.finish()
    except GuestTrap as trap:
        return trap
    except asyncio.CancelledError:
        guest.pool.release(instance, discard=True)
        raise


class GuestThreads:
    """Worker threads for Guest(threaded=True) calls, so a slow guest does not hold the event loop.

    Owned by one middleware: started on first use, stopped by its close().
    """

    def __init__(self, max_workers: int = GUEST_THREADS) -> None:
        self.max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, guest: Guest, instance: WasmInstance, call: Callable[..., Any], *args: Any) -> Any:
        """Run a guest call on a worker thread.

        If the request is cancelled meanwhile, the call still runs to its end (it cannot be
        stopped half-way); the instance is then discarded, never handed to another request.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="http-wasm-guest")
        future = asyncio.get_running_loop().run_in_executor(self._executor, call, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda _: guest.pool.release(instance, discard=True))
            raise _Abandoned from None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


class _Abandoned(asyncio.CancelledError):
    """A cancelled request whose guest call is still running on a worker thread: its instance is
    released by the call's completion, not by the request."""


class ClientGone(Exception):
    """The client left (http.disconnect) while the host read its request body for a guest."""


class _ResponseTooLarge(Exception):
    """Raised into the app's send when a buffered response outgrows max_body_size."""
