"""`failure_policy: fail_open`: a guest that fails is skipped, as if it were not in the chain.

A guest with `Guest(failure_policy="fail_open")` that traps, overruns its CPU time or memory limit, or
cannot get an instance (pool timeout, an instance whose init fails) does not fail the request: the
request goes on to the next guest or the app, and the response back without it. Each skip is counted
(`http_wasm_guest_skips_total{guest,cause}`) and logged once per burst: the first skip of a burst is a
WARNING line, the next ones are only counted until the guest has gone BURST_SECONDS without a skip, or
RELOG_SECONDS since its last line (the next line then says how many went unlogged).

What cannot be skipped (README "What the host does"): a trap whose status is the client's (4xx, e.g. 413
for a body over max_body_size) and a guest that trapped in handle_request after it started writing the
response (its status or body): the request fails as with fail_closed. What a guest changed before it
trapped stays (the host changes the request in place, as proxy-wasm hosts do).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from ..errors import GuestTrap
from ..guest import Guest
from ..host import Exchange
from ..wasm.instance import WasmInstance
from .types import Scope

BURST_SECONDS: Final = 10.0  # a guest this long without a skip ends its burst: the next skip is logged
RELOG_SECONDS: Final = 60.0  # a burst that goes on is logged again this often

log = logging.getLogger("http_wasm_asgi")
_bursts: dict[str, tuple[float, float, int]] = {}  # guest name -> (its last skip, its last line, skips unlogged)


def skippable(guest: Guest, trap: GuestTrap, exchange: Exchange | None = None) -> bool:
    """Whether a failed handle_request (or, without `exchange`, handle_response) call is skipped."""
    if not guest.fail_open or 400 <= trap.status < 500:
        return False
    return exchange is None or not (exchange.response_body_replaced or exchange.status != 200)


def trap_cause(instance: WasmInstance, trap: GuestTrap) -> str:
    """cpu_limit, memory_limit, exit or trap: read before the instance is dropped."""
    try:
        return instance.trap_cause(trap)
    except Exception:  # a closed store: the status still tells a CPU overrun
        return "cpu_limit" if trap.status == 503 else "trap"


def skip(guest: Guest, cause: str, detail: Any, scope: Scope) -> None:
    """Count a skipped guest and log it, once per burst."""
    skips = guest.stats.skips
    skips[cause] = skips.get(cause, 0) + 1
    now = time.monotonic()
    last, logged, unlogged = _bursts.get(guest.name, (-BURST_SECONDS, -RELOG_SECONDS, 0))
    if now - last < BURST_SECONDS and now - logged < RELOG_SECONDS:
        _bursts[guest.name] = (now, logged, unlogged + 1)
        return
    _bursts[guest.name] = (now, now, 0)
    more = f" ({unlogged} more skips since the last line)" if unlogged else ""
    log.warning("guest %r skipped (failure_policy fail_open, %s): %s (request %s %s); further skips in this "
                "burst are only counted%s", guest.name, cause, detail, scope.get("method"), scope.get("path"), more)
