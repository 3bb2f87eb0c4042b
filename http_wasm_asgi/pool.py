"""A bounded pool of guest instances: one request uses one instance at a time."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from .errors import PoolTimeout


class Closable(Protocol):
    closed: bool

    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class InstancePool(Generic[T]):
    """Hands out idle instances, creates new ones up to `max_size`, then makes callers wait.

    `try_acquire` is the allocation-free fast path; `acquire` waits (up to
    `timeout` seconds, then raises `PoolTimeout`). With `reuse=False` every
    instance is dropped after one use.
    """

    def __init__(self, create: Callable[[], T], *, max_size: int, timeout: float, reuse: bool = True) -> None:
        if max_size < 1:
            raise ValueError("max_instances must be at least 1")
        self._create = create
        self.max_size = max_size
        self.timeout = timeout
        self.reuse = reuse
        self._idle: list[T] = []
        self._waiters: deque[asyncio.Future[T | None]] = deque()
        self.size = 0  # instances alive: idle + in use

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def in_use(self) -> int:
        return self.size - len(self._idle)

    def put(self, instance: T) -> None:
        """Add a freshly created instance (e.g. the eager one) to the idle set."""
        self.size += 1
        self._idle.append(instance)

    def try_acquire(self) -> T | None:
        if self._idle:
            return self._idle.pop()
        if self.size < self.max_size:
            self.size += 1
            try:
                return self._create()
            except BaseException:
                self.size -= 1
                raise
        return None

    async def acquire(self) -> T:
        instance = self.try_acquire()
        if instance is not None:
            return instance
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
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
                    raise PoolTimeout(f"no instance free within {self.timeout:g} s "
                                      f"({self.max_size} in use)") from None
                raise
            if got is not None:
                return got
            instance = self.try_acquire()  # a slot was freed: create in it
            if instance is not None:
                return instance

    def release(self, instance: T, *, discard: bool = False) -> None:
        if discard or not self.reuse or instance.closed:
            instance.close()
            self.size -= 1
            self._give_back(None)
        elif self._waiters:
            self._give_back(instance)
        else:  # nobody waits: the allocation-free fast path
            self._idle.append(instance)

    def _give_back(self, instance: T | None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(instance)
                return
        if instance is not None:
            self._idle.append(instance)

    def close(self) -> None:
        for instance in self._idle:
            instance.close()
        self.size -= len(self._idle)
        self._idle.clear()
