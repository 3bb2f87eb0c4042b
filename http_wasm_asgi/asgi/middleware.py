"""The ASGI middleware: run a chain of http-wasm guests in front of an ASGI app.

Request flow for guests [g1, g2, g3] and the app:
g1.handle_request -> g2.handle_request -> g3.handle_request -> app
-> g3.handle_response -> g2.handle_response -> g1.handle_response.
A guest that returns next=0 answers the request itself; the guests before it
still see its response in their handle_response.

`HttpWasmMiddleware` holds the current `Chain` (flow.py) and hands each request to a `Flow` over it,
which `serve` takes through the guests and the app; with the native path the middleware's call is C
(_native/call.c), which serves the common request itself and hands the rest to `serve`. ABI rules live
in host.py, wasm in the wasm package.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, ClassVar

from .. import _native, registry
from ..errors import GuestError, PoolTimeout
from ..guest import Guest
from .flow import DEFAULT_MAX_BODY_SIZE, Chain, ClientGone, Flow, GuestThreads
from .routes import Route, RouteTable
from .types import ASGIApp, Receive, Scope, Send

__all__ = ["DEFAULT_MAX_BODY_SIZE", "HttpWasmMiddleware"]

log = logging.getLogger("http_wasm_asgi")


class HttpWasmMiddleware:
    """Pure ASGI middleware running http-wasm guests, outermost first.

    `guests` are `Guest` objects (compiled at construction). `max_body_size`
    caps what is buffered for a guest (request bodies over it get 413 when a
    guest reads them; buffered responses over it get 500).

    `routes` instead of `guests`: per-route chains, the first `Route` that matches
    a request picks its guests; a request no route matches goes straight to the app.
    """

    # what the native call reads of the middleware (see _native: the contract)
    NATIVE_SLOTS: ClassVar = ()
    NATIVE_ATTRIBUTES: ClassVar = ("chain",)
    chain: Chain  # what serves the next request (replace_guests puts a new one)

    def __init__(self, app: ASGIApp, guests: Sequence[Guest] = (), *, routes: Sequence[Route] | None = None,
                 max_body_size: int = DEFAULT_MAX_BODY_SIZE) -> None:
        if routes is not None and guests:
            raise TypeError("give guests (one chain for every request) or routes (a chain per route), not both")
        self.chain = Chain(app, guests, max_body_size, routes)

    # what the current chain holds (requests read `chain` once instead)
    @property
    def app(self) -> ASGIApp:
        return self.chain.app

    @property
    def guests(self) -> tuple[Guest, ...]:
        return self.chain.guests

    @property
    def routes(self) -> RouteTable[Chain | None] | None:
        return self.chain.routes

    @property
    def max_body_size(self) -> int:
        return self.chain.max_body_size

    @property
    def all_guests(self) -> tuple[Guest, ...]:
        """Every distinct guest this middleware runs: its chain's, or those of all its routes."""
        return self.chain.all_guests()

    @property
    def threads(self) -> GuestThreads:
        return self.chain.threads

    def replace_guests(self, guests: Sequence[Guest] = (), *, routes: Sequence[Route] | None = None,
                       max_body_size: int | None = None) -> None:
        """Serve the next requests with these guests (or routes): a reload, in front of the same app.

        Call it on the event loop that serves the requests. Requests in flight finish on the guests
        they started with; those are closed when their last request ends (but for any passed again here).
        """
        if routes is not None and guests:
            raise TypeError("give guests (one chain for every request) or routes (a chain per route), not both")
        old = self.chain
        self.chain = Chain(old.app, guests, old.max_body_size if max_body_size is None else max_body_size, routes)
        registry.RELOADS["ok"] += 1
        old.retire(keep=self.chain.all_guests())

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], app: ASGIApp | None = None) -> HttpWasmMiddleware:
        """Build the chain described by a config file (YAML or TOML).

        The one import of a room above this one (server.config), deferred to the call.
        """
        from ..server.config import middleware_from_config

        return middleware_from_config(path, app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The reference. With the native path, calling the middleware runs _native/call.c instead, which
        takes the common request itself and hands it to `serve` where it leaves the common case."""
        chain = self.chain  # read once: the request keeps this chain (and its routes) to its end
        if scope["type"] == "http" and chain.guests:
            flow = chain.open_flow(chain, scope, receive, send)
        else:  # no guests of its own: per-route chains (chosen once, here), or straight to the app
            route = chain.routes.match(scope) if chain.routes is not None and scope["type"] == "http" else None
            if route is None:
                await chain.app(scope, receive, send)
                return
            flow = route.open_flow(route, scope, receive, send)
        chain.active += 1
        await serve(chain, flow, scope)

    def close(self) -> None:
        """Drop every guest's instances and stop the worker threads."""
        self.chain.close()


# Where serve() takes a request up: from its start, or where the native call left it.
ENTER, REQUEST_PHASE, APP_FAILED, BACK, FINISH, RAISED = range(6)


async def serve(chain: Chain, flow: Flow, scope: Scope, stage: int = ENTER, value: Any = None) -> None:
    """A request counted on `chain` through its flow, from `stage` on: ENTER (the start), REQUEST_PHASE (a
    guest's handle_request did not end in next at once), APP_FAILED (the app raised `value`), BACK (a guest's
    handle_response did not end at once), FINISH (a buffered or too large response), RAISED (`value` was
    raised on the way). The native call (_native/call.c) runs the common case itself and hands the rest over
    here at the stage it reached."""
    try:
        if stage == RAISED:
            raise value
        if stage <= REQUEST_PHASE:
            if not ((stage == ENTER and flow.enter()) or await flow.request_phase()):
                return
            app_scope, app_receive, app_send = flow.app_args()
            try:  # the app, with the guests' changes (inline: no coroutine of its own per request)
                await chain.app(app_scope, app_receive, app_send)
            except Exception as exc:
                stage, value = APP_FAILED, exc
            else:  # handle_response of the held guests, innermost first
                stage = FINISH if flow.leave(False) else BACK
        if stage == APP_FAILED:
            await flow.app_failed(value)
        elif stage == BACK:
            await flow.unwind(is_error=False)
        if flow.buffered or flow.response_too_large:  # else the response went out as the app sent it
            await flow.finish()
    except PoolTimeout as exc:
        log.error("request %s %s: %s", scope.get("method"), scope.get("path"), exc)
        await flow.unwind(is_error=True)
        await flow.respond_error(503)
    except GuestError as exc:  # a lazily created instance failed to initialize
        log.error("%s", exc)
        await flow.unwind(is_error=True)
        await flow.respond_error(500)
    except ClientGone:  # left while its body was read for a guest: no one to answer, nothing to run
        await flow.unwind(is_error=True)
    finally:
        try:
            if flow.held:  # cancelled or failed half-way: let guests clean up, free the instances
                await flow.unwind(is_error=True)
        finally:
            chain.active -= 1
            if chain.retired and not chain.active:
                _close_retired(chain)


def _close_retired(chain: Chain) -> None:
    """The last request on a replaced chain closes it: a failure to close is logged, never raised into the
    server, whose response to this request has gone out (uvicorn would drop the keep-alive connection)."""
    try:
        chain.close()
    except Exception:
        log.exception("closing the guests of a replaced chain failed")


_native.learn("middleware", HttpWasmMiddleware)
_native.middleware_call(HttpWasmMiddleware, serve, _close_retired,
                        {"ENTER": ENTER, "REQUEST_PHASE": REQUEST_PHASE, "APP_FAILED": APP_FAILED, "BACK": BACK,
                         "FINISH": FINISH, "RAISED": RAISED})
