"""Cooperative guest calls: the event loop's scheduler of suspended calls, one slice per turn."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import Any, Final

from .calls import LONG_CALL_SECONDS, SUSPENDED, TURN_SECONDS, quick_calls

LONG_SHARE: Final = 0.05  # the most of the loop's time long calls get (together) while other requests are served


class CallScheduler:
    """The suspended guest calls of one event loop: one slice (up to an epoch tick) per turn.

    A turn is one callback of the loop, so other requests run between any two slices; calls that
    used less than LONG_CALL_SECONDS of guest time go first, round robin. Longer ones (a runaway
    guest, or a very heavy request) get a slice only when no shorter call waits, and while other
    requests are being served (guest calls ended in their first slice, or shorter calls ran) at
    most LONG_SHARE of the loop's time: after a long slice of d seconds, none runs for
    d * (1 - LONG_SHARE) / LONG_SHARE. With nothing else to serve they run back to back. Their
    clocks count only part of their waiting (calls.LONG_WAIT), so under load they end later in wall
    time, within about call_timeout / LONG_WAIT.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.short: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self.long: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self.handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self.long_after = 0.0  # loop time before which no long call runs again
        self.activity = -1  # quick calls + short turns, at the last long turn

    def add(self, core: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        self._queue(core, future)
        return future

    def _queue(self, core: Any, future: asyncio.Future[Any]) -> None:
        if core.used < LONG_CALL_SECONDS:
            self.short.append((core, future))
            if isinstance(self.handle, asyncio.TimerHandle):  # a long call's gap must not hold it up
                self.handle.cancel()
                self.handle = None
        else:
            self.long.append((core, future))
        self._schedule()

    def _schedule(self) -> None:
        if self.handle is not None or not (self.short or self.long):
            return
        delay = 0.0 if self.short else self.long_after - self.loop.time()
        self.handle = self.loop.call_soon(self._turn) if delay <= 0 else self.loop.call_later(delay, self._turn)

    def _turn(self) -> None:
        """Short calls' slices until the turn's guest time (TURN_SECONDS) is used, or one long call's
        once its gap is over.

        Calls deferred before their first slice (their turn was used up) mostly end at once: many
        of them fit in one turn, instead of each waiting for a loop iteration of its own.
        """
        self.handle = None
        if self.short:
            end = self.loop.time() + TURN_SECONDS
            while self.short:
                self._slice(False)
                if self.loop.time() >= end:
                    break
        elif self.long and self.loop.time() >= self.long_after:  # never before its gap is over
            self._slice(True)
        self._schedule()

    def _slice(self, long: bool) -> None:
        core, future = (self.long if long else self.short).popleft()
        if future.done():  # its request was cancelled (WasmInstance.finish drops the call)
            return
        start = self.loop.time()
        try:
            result = core.resume()
        except BaseException as exc:  # the awaiting request gets it
            future.set_exception(exc)
        else:
            if result == SUSPENDED:
                self._queue(core, future)
            else:
                future.set_result(result)
        activity = quick_calls() + self.short_turns
        if long:
            busy = activity != self.activity  # others are being served: keep to LONG_SHARE
            self.activity = activity
            if busy:
                self.long_after = self.loop.time() + (self.loop.time() - start) * (1 - LONG_SHARE) / LONG_SHARE
        else:
            self.short_turns += 1

    short_turns = 0


_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CallScheduler] = weakref.WeakKeyDictionary()


def scheduler() -> CallScheduler:
    """The running event loop's scheduler."""
    loop = asyncio.get_running_loop()
    found = _schedulers.get(loop)
    if found is None:
        found = _schedulers[loop] = CallScheduler(loop)
    return found


