"""The ASGI binding: run a chain of http-wasm guests in front of an ASGI app.

Request flow for guests [g1, g2, g3] and the app:
g1.handle_request -> g2.handle_request -> g3.handle_request -> app
-> g3.handle_response -> g2.handle_response -> g1.handle_response.
A guest that returns next=0 answers the request itself; the guests before it
still see its response in their handle_response.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .abi import HeaderKind
from .asgi import ASGIApp, Message, Receive, Scope, Send, send_error
from .errors import GuestError, GuestTrap, PoolTimeout
from .guest import Guest
from .host import BUFFER_REQUEST, BUFFER_RESPONSE, Exchange, GuestHost, merge_response_headers
from .runtime import WasmInstance, accelerated

merge_response_headers = accelerated(merge_response_headers)  # the C accelerator's, when built

DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_UNSAFE_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopysend")
_RESPONSE_TRAILERS = int(HeaderKind.RESPONSE_TRAILERS)

log = logging.getLogger("http_wasm_asgi")


class HttpWasmMiddleware:
    """Pure ASGI middleware running http-wasm guests, outermost first.

    `guests` are `Guest` objects (compiled at construction). `max_body_size`
    caps what is buffered for a guest (request bodies over it get 413 when a
    guest reads them; buffered responses over it get 500).
    """

    def __init__(self, app: ASGIApp, guests: Sequence[Guest] = (), *,
                 max_body_size: int = DEFAULT_MAX_BODY_SIZE) -> None:
        for guest in guests:
            if not isinstance(guest, Guest):
                raise TypeError(f"guests must be Guest objects, got {type(guest).__name__}")
        self.app = app
        self.guests: tuple[Guest, ...] = tuple(guests)
        self.max_body_size = max_body_size
        # Whether a guest may look at the app's response (status, headers, trailers) in
        # handle_response: if none can, an unbuffered response goes straight to the client.
        self._threaded = any(guest.threaded for guest in self.guests)
        self._observes_response = any(
            guest.info.imports_host(name) for guest in self.guests
            for name in ("get_status_code", "get_header_names", "get_header_values"))

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], app: ASGIApp | None = None) -> HttpWasmMiddleware:
        """Build the chain described by a config file (YAML or TOML)."""
        from .config import middleware_from_config

        middleware: HttpWasmMiddleware = middleware_from_config(path, app)
        return middleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.guests:
            await self.app(scope, receive, send)
            return
        # The hot path (guests that neither trap, nor answer, nor buffer, nor run on threads) is
        # this one coroutine: no per-guest objects but a tuple, no extra coroutine per step.
        flow = _Flow(scope, self.max_body_size)  # type: ignore[arg-type]
        flow.receive = receive
        flow.send = send
        flow.held = held = []
        flow.started = flow.sent = False
        buffered = False  # a held guest enabled buffer_response: the app's response is collected
        try:
            for guest in self.guests:
                if guest.reads_request_body and flow.request_body is None:
                    await flow._buffer_request_body()
                pool = guest.pool
                instance = pool.try_acquire() or await pool.acquire()
                host = instance.host
                try:  # host.begin, handle_request, host.after_next on next=1
                    ctx_next = instance.request(flow, guest.context.features) if not guest.threaded else \
                        await _in_thread(guest, instance, instance.request, flow, guest.context.features)
                except GuestTrap as trap:
                    flow._drop_trapped(guest, instance, host, trap)
                    await flow._fail(trap.status)
                    return
                if not ctx_next & 1:  # next=0: this guest answered
                    host.end()
                    pool.release(instance)
                    await flow._unwind(is_error=False)
                    await flow._send_exchange(short_circuit=True)
                    return
                if host.request_read and not host.features & BUFFER_REQUEST \
                        and not flow.request_body_replaced and flow.request_body is not None:
                    flow.request_body = flow.request_body[host.request_read:]  # read means consumed
                held.append((guest, instance, host, (ctx_next >> 32) & 0xFFFF_FFFF))
                if host.features & BUFFER_RESPONSE:
                    buffered = True

            # -- the next handler --
            app_send = flow._collect if buffered else flow._stream if self._observes_response or \
                flow.response_headers else send
            app_scope = scope
            if flow.request_changed():
                app_scope = flow.app_scope()
            extensions = app_scope.get("extensions")
            if extensions and ("http.response.pathsend" in extensions or
                               "http.response.zerocopysend" in extensions):
                app_scope = dict(app_scope)
                app_scope["extensions"] = {k: v for k, v in extensions.items() if k not in _UNSAFE_EXTENSIONS}
            app_error: BaseException | None = None
            try:
                await self.app(app_scope, receive if flow.request_body is None else flow._replay_receive,
                               app_send)
            except _ResponseTooLarge:
                flow.response_too_large = True
            except Exception as exc:
                app_error = exc
            failed = app_error is not None or flow.response_too_large
            if self._threaded:
                await flow._unwind(is_error=failed)
            else:
                flow._unwind_here(failed)
            if app_error is not None:
                raise app_error
            if flow.response_too_large or (buffered and flow.error_status is not None):
                if flow.error_status is not None:
                    await flow._fail(flow.error_status)
                    return
                log.error("buffered response of %s %s exceeds max_body_size (%d bytes)", scope.get("method"),
                          scope.get("path"), self.max_body_size)
                await flow._fail(500)
            elif buffered and flow.started:
                await flow._send_exchange(short_circuit=False)
        except PoolTimeout as exc:
            log.error("request %s %s: %s", scope.get("method"), scope.get("path"), exc)
            await flow._fail(503)
        except GuestError as exc:  # a lazily created instance failed to initialize
            log.error("%s", exc)
            await flow._fail(500)
        finally:
            if held:  # cancelled or failed half-way: let guests clean up, free the instances
                await flow._unwind(is_error=True)

    def close(self) -> None:
        for guest in self.guests:
            guest.close()


class _Flow(Exchange):
    """One request through the chain: the Exchange every guest sees, plus the ASGI plumbing."""

    __slots__ = ("held", "receive", "send", "sent", "started")  # set by HttpWasmMiddleware.__call__

    # guests that returned next=1 and wait for handle_response: (guest, instance, host, req_ctx)
    held: list[tuple[Guest, WasmInstance, GuestHost, int]]
    receive: Receive
    send: Send
    started: bool  # the app sent http.response.start (to us or through us)
    sent: bool  # http.response.start went to the client
    # rarely set: class-level defaults
    error_status: int | None = None  # a guest trapped on the way back
    app_trailers = False
    body_replayed = False
    disconnected = False
    response_too_large = False

    async def _replay_receive(self) -> Message:
        """The request body as the guests left it, then the rest of the stream (or disconnect)."""
        if not self.body_replayed:
            self.body_replayed = True
            more = self.request_body_more and not self.request_body_replaced
            return {"type": "http.request", "body": self.request_body or b"", "more_body": more}
        if self.disconnected:
            return {"type": "http.disconnect"}
        return await self.receive()

    async def _buffer_request_body(self) -> None:
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                more = False
                break
            body = message.get("body", b"")
            if body:
                chunks.append(body)
                size += len(body)
            more = bool(message.get("more_body", False))
            if size > self.max_body_size:
                break
        self.request_body = b"".join(chunks)
        self.request_body_more = more

    def _stream(self, message: Message) -> Awaitable[None]:
        """Unbuffered: pass the app's response through, remembering what guests may read.

        Not a coroutine: it returns the server's send awaitable, so each message costs no extra
        coroutine (the app awaits what it gets, as with any ASGI send).
        """
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            headers = message.get("headers") or []
            if self.response_headers:
                message = dict(message)
                message["headers"] = headers = merge_response_headers(self.response_headers, headers)
            self.response_headers = headers  # read-only from here: no copy
            self.started = self.sent = True
        elif kind == "http.response.trailers":
            self.mutable_headers(_RESPONSE_TRAILERS).extend(message.get("headers") or ())
        return self.send(message)

    async def _collect(self, message: Message) -> None:
        """Buffered: keep the whole response for the guests' handle_response."""
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self.response_headers = merge_response_headers(self.response_headers, message.get("headers") or ())
            self.app_trailers = bool(message.get("trailers", False))
            self.started = True
        elif kind == "http.response.body":
            body = message.get("body", b"")
            held = self.response_body
            if len(held) + len(body) > self.max_body_size:
                raise _ResponseTooLarge
            if type(held) is not bytearray:
                held = self.response_body = bytearray(held)
            held += body
        elif kind == "http.response.trailers":
            self.mutable_headers(_RESPONSE_TRAILERS).extend(message.get("headers") or ())
        else:
            await self.send(message)  # e.g. http.response.early_hint: not ours to hold

    # -- the way back --
    async def _unwind(self, *, is_error: bool) -> None:
        """handle_response for every held guest, innermost first; frees their instances."""
        held = self.held
        while held:
            guest, instance, host, req_ctx = held[-1]
            if not guest.threaded:
                is_error = self._unwind_here(is_error, 1)
                continue
            held.pop()
            try:
                await _in_thread(guest, instance, instance.response, req_ctx, is_error)
            except GuestTrap as trap:
                self._drop_trapped(guest, instance, host, trap)
                self.error_status = trap.status  # a response not yet sent becomes this error
                is_error = True
                continue
            guest.pool.release(instance)

    def _unwind_here(self, is_error: bool, count: int = -1) -> bool:
        """handle_response on this thread for `count` (default: all) held guests, innermost first.

        Returns is_error for the guests after them (a trap makes it True).
        """
        held = self.held
        while held and count:
            count -= 1
            guest, instance, host, req_ctx = held.pop()
            try:
                instance.response(req_ctx, is_error)  # handle_response, host.end()
            except GuestTrap as trap:
                self._drop_trapped(guest, instance, host, trap)
                self.error_status = trap.status  # a response not yet sent becomes this error
                is_error = True
            else:
                guest.pool.release(instance)
        return is_error

    async def _send_exchange(self, *, short_circuit: bool) -> None:
        """Send the response the guests hold (a short-circuit or a buffered one)."""
        if self.error_status is not None:
            await self._fail(self.error_status)
            return
        body = bytes(self.response_body)
        headers = self.response_headers
        bodiless_status = self.status in _NO_BODY_STATUS or self.status < 200
        no_body = bodiless_status or self.scope.get("method") == "HEAD"
        declared = [v for k, v in headers if k.lower() == b"content-length"]
        if short_circuit or self.response_body_replaced or not declared or bodiless_status:
            # a 204/304 has no body, so no framing headers either (the app's would announce one)
            headers = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding")]
            if not no_body:
                headers.append((b"content-length", str(len(body)).encode()))
        else:
            try:  # a guest that declares a shorter length means it: never leak what it cut
                limit = int(declared[-1])
            except ValueError:
                limit = len(body)
            if limit < len(body):
                body = body[:max(limit, 0)]
        if no_body:
            body = b""
        trailers = self.response_trailers if self.trailers_supported else []
        send_trailers = bool(trailers) or (self.app_trailers and self.trailers_supported)
        start: Message = {"type": "http.response.start", "status": self.status, "headers": headers}
        if send_trailers:
            start["trailers"] = True
        self.sent = True
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
        if send_trailers:
            await self.send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})

    async def _fail(self, status: int) -> None:
        """A short, generic error response; details went to the log."""
        await self._unwind(is_error=True)
        if self.sent:
            return  # the response is already on its way: nothing more to say
        self.sent = True
        await send_error(self.send, status)

    def _drop_trapped(self, guest: Guest, instance: WasmInstance, host: GuestHost, trap: GuestTrap) -> None:
        """A guest call trapped: the instance is thrown away (never reused) and the cause logged."""
        host.end()
        guest.pool.release(instance, discard=True)
        log.error("%s (request %s %s)", trap, self.scope.get("method"), self.scope.get("path"))


_WORKERS: ThreadPoolExecutor | None = None


async def _in_thread(guest: Guest, instance: WasmInstance, call: Callable[..., Any], *args: Any) -> Any:
    """Run a guest call on a worker thread (Guest(threaded=True)) so the event loop stays free.

    If the request is cancelled meanwhile, the call still runs to its end (it cannot be
    stopped half-way); the instance is then discarded, never handed to another request.
    """
    global _WORKERS
    if _WORKERS is None:
        _WORKERS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="http-wasm-guest")
    future = asyncio.get_running_loop().run_in_executor(_WORKERS, call, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda _: guest.pool.release(instance, discard=True))
        raise _Abandoned from None


class _Abandoned(asyncio.CancelledError):
    """A cancelled request whose guest call is still running on a worker thread: its instance is
    released by the call's completion, not by the request."""


class _ResponseTooLarge(Exception):
    """Raised into the app's send when a buffered response outgrows max_body_size."""
