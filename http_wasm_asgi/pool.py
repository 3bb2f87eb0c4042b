"""A bounded pool of guest instances: one request uses one instance at a time.

Instances are created off the event loop (on the pool's own thread) unless they are cheap
(`create_inline`, e.g. from a snapshot: well under a millisecond). The pool is bounded by a
count and by a memory budget (what instances cost, as `cost` measures it), trims idle
instances after a burst, and never lets a request wait synchronously.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Generic, Protocol, TypeVar

from . import _native
from .errors import PoolTimeout
from .wasm.instance import WasmInstance

log = logging.getLogger("http_wasm_asgi.pool")


class Closable(Protocol):
    closed: bool

    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class InstancePool(Generic[T]):
    """Hands out idle instances, creates new ones within the bounds, then makes callers wait.

    `try_acquire` is the allocation-free fast path (an idle instance, or a cheap one created
    inline); `acquire` may create one on the pool's thread, or wait (up to `timeout` seconds,
    then `PoolTimeout`). With `reuse=False` every instance is dropped after one use.

    Bounds: at most `max_size` instances, and new ones only while the instances' summed
    `cost(instance)` (bytes) stays within `budget`. Idle instances beyond `max_idle`, or idle
    for longer than `idle_timeout` seconds, are closed, down to `min_size`.

    An instance whose linear memory reached its `recycle_above` (bytes, set by its maker; None: never) is
    closed when released, not kept: what it wrote goes back to the system, and the next request that needs
    one gets a fresh instance (from the snapshot: as cheap as a reuse, see Guest(recycle_memory=...)).
    """

    __slots__ = ("_budget_logged", "_create", "_executor", "_idle", "_live", "_low", "_trim_handle", "_waiters",
                 "budget", "budget_waits", "cost", "create_inline", "idle_timeout", "max_idle", "max_size",
                 "min_size", "name", "recycled", "reuse", "size", "timeout", "timeouts")
    # what NativeInstancePool's try_acquire and release read, write and call (their fast cases: an idle
    # instance taken from and given back to the end of _idle); see _native: the contract
    NATIVE_SLOTS: ClassVar = ("_idle", "_low", "_trim_handle", "_waiters", "idle_timeout", "max_idle", "min_size",
                              "reuse", "size")
    NATIVE_ATTRIBUTES: ClassVar = ("_schedule_trim", "release", "try_acquire")

    def __init__(self, create: Callable[[], T], *, max_size: int, timeout: float, reuse: bool = True,
                 name: str = "guest", min_size: int = 0, max_idle: int | None = None,
                 idle_timeout: float | None = None, cost: Callable[[T], int] | None = None,
                 budget: int | None = None, create_inline: bool = False) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self._create = create
        self.name = name
        self.max_size = max_size
        self.timeout = timeout
        self.reuse = reuse
        self.min_size = min(min_size, max_size)
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.cost = cost
        self.budget = budget
        self.create_inline = create_inline
        self._idle: list[T] = []  # oldest first: instances are taken from (and given back to) the end
        self._low = 0  # the fewest idle instances since the last trim: that many were not needed
        self._live: dict[int, T] = {}  # every instance alive (idle or in use), for the budget
        self._waiters: deque[asyncio.Future[T | None]] = deque()
        self._executor: ThreadPoolExecutor | None = None
        self._trim_handle: asyncio.TimerHandle | None = None
        self.size = 0  # instances alive or being created
        self.budget_waits = 0  # times a request waited because of the budget, not the count
        self.timeouts = 0  # requests that got PoolTimeout
        self.recycled = 0  # instances closed on release because their memory grew past recycle_above
        self._budget_logged = 0.0

    # -- figures --
    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def in_use(self) -> int:
        return self.size - len(self._idle)

    @property
    def waiting(self) -> int:
        """Requests waiting for an instance now."""
        return len(self._waiters)

    def instances(self) -> list[T]:
        """Every live instance, idle or in use."""
        return list(self._live.values())

    def committed(self) -> int:
        """What the live instances cost now (bytes, as `cost` measures it)."""
        cost = self.cost
        return sum(cost(instance) for instance in self._live.values()) if cost is not None else 0

    # -- taking and giving back --
    def put(self, instance: T) -> None:
        """Add a freshly created instance (e.g. one made at start-up) to the idle set."""
        self.size += 1
        self._live[id(instance)] = instance
        self._idle.append(instance)

    def fill(self) -> None:
        """Create instances until `min_size` exist (synchronously: at start-up, before serving)."""
        while self.size < self.min_size:
            self.put(self._create())

    def try_acquire(self) -> T | None:
        idle = self._idle
        if idle:
            instance = idle.pop()
            if len(idle) < self._low:
                self._low = len(idle)
            return instance
        if self.create_inline and self._has_room():
            return self._create_here()
        return None

    async def acquire(self) -> T:
        instance = self.try_acquire()
        if instance is not None:
            return instance
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            if self._has_room():
                return await self._create_off_loop()
            waiter: asyncio.Future[T | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                got = await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except (TimeoutError, asyncio.CancelledError):
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._give_back(waiter.result())  # handed over just as we gave up
                if loop.time() >= deadline:
                    self.timeouts += 1
                    raise PoolTimeout(self._timeout_message()) from None
                raise
            if got is not None:
                return got
            instance = self.try_acquire()  # a slot was freed (or an instance went idle)
            if instance is not None:
                return instance

    def release(self, instance: T, *, discard: bool = False) -> None:
        if discard or not self.reuse or instance.closed:
            self._close(instance)
            self._give_back(None)
        elif _past_recycle(instance):  # a fresh instance replaces it, when one is needed
            self.recycled += 1
            self._close(instance)
            self._give_back(None)
        elif self._waiters:
            self._give_back(instance)
        elif self.max_idle is not None and len(self._idle) >= self.max_idle and self.size > self.min_size:
            self._close(instance)
        else:  # nobody waits: the allocation-free fast path
            self._idle.append(instance)
            if self._trim_handle is None and self.idle_timeout is not None and self.size > self.min_size:
                self._schedule_trim()

    def close(self) -> None:
        """Close the idle instances; one in use is closed when it is released (never reused)."""
        self.reuse = False
        for instance in self._idle:
            self._live.pop(id(instance), None)
            instance.close()
        self.size -= len(self._idle)
        self._idle.clear()
        if self._trim_handle is not None:
            self._trim_handle.cancel()
            self._trim_handle = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    # -- creating --
    def _has_room(self) -> bool:
        if self.size >= self.max_size:
            return False
        if self.budget is None or self.size == 0:
            return True
        if self.committed() < self.budget:
            return True
        self.budget_waits += 1
        now = time.monotonic()
        if now - self._budget_logged > 10:  # one line per burst, not one per request
            self._budget_logged = now
            log.warning("guest %r: memory budget reached (%d instances commit %.1f MiB of memory_budget %.1f MiB): "
                        "requests wait for an instance; fix: raise memory_budget (or max_instances) in the "
                        "guest's config / Guest(memory_budget=...)", self.name, self.size,
                        self.committed() / 2**20, self.budget / 2**20)
        return False

    def _create_here(self) -> T:
        self.size += 1
        try:
            instance = self._create()
        except BaseException:
            self.size -= 1
            raise
        self._live[id(instance)] = instance
        return instance

    async def _create_off_loop(self) -> T:
        """Create an instance on the pool's thread; the event loop goes on serving meanwhile."""
        if self.create_inline:
            return self._create_here()
        self.size += 1
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"http-wasm-init-{self.name}")
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._create)
        try:
            instance = await asyncio.shield(future)
        except asyncio.CancelledError:  # the request left: the instance, once made, serves others
            future.add_done_callback(self._adopt)
            raise
        except BaseException:
            self.size -= 1
            self._give_back(None)
            raise
        self._live[id(instance)] = instance
        return instance

    def _adopt(self, future: asyncio.Future[T]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.size -= 1
            self._give_back(None)
            return
        instance = future.result()
        self._live[id(instance)] = instance
        self.release(instance)

    def _close(self, instance: T) -> None:
        self._live.pop(id(instance), None)
        instance.close()
        self.size -= 1

    def _give_back(self, instance: T | None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(instance)
                return
        if instance is not None:
            self._idle.append(instance)

    def _timeout_message(self) -> str:
        if self.size < self.max_size and self.budget is not None:
            return (f"no instance free within {self.timeout:g} s ({self.size} in use, memory budget "
                    f"{self.budget / 2**20:.0f} MiB reached)")
        return f"no instance free within {self.timeout:g} s ({self.max_size} in use)"

    # -- trimming --
    def _schedule_trim(self) -> None:
        if self._trim_handle is None and self.idle_timeout is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # released outside a loop (tests): trimmed at the next release on one
            self._trim_handle = loop.call_later(self.idle_timeout, self._trim)

    def _trim(self) -> None:
        """Close the instances that stayed idle for a whole idle_timeout (keeping min_size alive).

        No timestamps on the hot path: the pool remembers the fewest idle instances since the last
        trim; that many went unused all along. An idle instance is closed after 1 to 2 idle_timeouts.
        """
        self._trim_handle = None
        unused = min(self._low, len(self._idle), self.size - self.min_size)
        if unused > 0:
            oldest, self._idle = self._idle[:unused], self._idle[unused:]
            for instance in oldest:
                self._close(instance)
        self._low = len(self._idle)
        if self.size > self.min_size:
            self._schedule_trim()


def _past_recycle(instance: object) -> bool:
    """Whether an instance's linear memory reached its `recycle_above` (instances without one: never)."""
    above = getattr(instance, "recycle_above", None)
    return above is not None and int(instance.memory_size()) >= above  # type: ignore[attr-defined]


class NativeInstancePool(InstancePool[WasmInstance]):
    """The pool of a guest on the native path: `try_acquire` and `release` in C for their fast cases (an idle
    instance taken and given back; they read the WasmInstance's contract too), every other case by the methods
    above, which stay the reference."""

    __slots__ = ()


_native.learn("pool", InstancePool)
_native.install(NativeInstancePool, _native.pool_methods(NativeInstancePool))
