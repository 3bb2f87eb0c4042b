"""Cooperative guest calls through a real uvicorn server: with `Guest()` defaults, requests whose
guest spins until its CPU limit do not hold up the others, and a client that leaves while its guest call is
suspended gets its instance dropped.

The server runs in a thread of this process (so the tests can look at the pool); the load comes from a
client in its own process: a server that held the GIL would otherwise stall the client's clock too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from http_wasm_asgi import Guest, HttpWasmMiddleware
from http_wasm_asgi.testing import echo_app, serve
from http_wasm_asgi.wasm.calls import LONG_WAIT
from support import WAT
from support.attack import Catch, assert_replaced, idle_instance

SPIN = WAT / "spin_on_header.wat"
CALL_TIMEOUT = 1.0  # Guest()'s default, which these tests keep

# The load: normal requests on 8 keep-alive connections, back to back (as wrk -c8 does), and a spinning
# request (`x-spin: forever`, a new connection each) every 1/rate s from the start. Raw HTTP/1.1 on
# asyncio streams: a full HTTP client would cost the machine more CPU than the server. Prints (start,
# seconds, status) of each request as JSON.
_LOAD = """
import asyncio, json, sys, time

host, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])

async def exchange(reader, writer, extra):
    writer.write(b"GET / HTTP/1.1\\r\\nhost: load\\r\\n" + extra + b"\\r\\n")
    head = await reader.readuntil(b"\\r\\n\\r\\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.lower().split(b"\\r\\n")
                  if line.startswith(b"content-length:"))
    await reader.readexactly(length)
    return status

async def main():
    normal, spins = [], []
    start = time.perf_counter()
    end = start + seconds

    async def worker(i):
        reader, writer = await asyncio.open_connection(host, port)
        await exchange(reader, writer, b"x-id: warm\\r\\n")
        while time.perf_counter() < end:
            t = time.perf_counter()
            status = await exchange(reader, writer, b"x-id: n%d\\r\\n" % i)
            normal.append((t - start, time.perf_counter() - t, status))
        writer.close()

    async def spin():
        t = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, port)
        status = await exchange(reader, writer, b"x-spin: forever\\r\\n")
        spins.append((t - start, time.perf_counter() - t, status))
        writer.close()

    async def attacker():
        tasks, k = [], 0
        while start + k / rate < end:
            await asyncio.sleep(max(0.0, start + k / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(spin()))
            k += 1
        await asyncio.gather(*tasks)

    await asyncio.wait_for(asyncio.gather(attacker(), *(worker(i) for i in range(8))), seconds + 30)
    print(json.dumps({"normal": normal, "spins": spins}))

asyncio.run(main())
"""


def _drive(base: str, seconds: float, rate: float) -> dict[str, list[tuple[float, float, int]]]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    out = subprocess.run([sys.executable, "-c", _LOAD, host, port, str(seconds), str(rate)], capture_output=True,
                         text=True, timeout=seconds + 60)
    assert out.returncode == 0, out.stderr[-3000:]
    got: dict[str, list[tuple[float, float, int]]] = json.loads(out.stdout)
    return got


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class _Ticker:
    """An ASGI layer that starts, on the first request, a coroutine in the server's event loop measuring how
    late the loop wakes it after each 1 ms sleep (a loop held by a guest call wakes it late)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lags: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._tick())
        await self.app(scope, receive, send)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.001)
            self.lags.append(loop.time() - t - 0.001)


@pytest.mark.slow
def test_spinning_requests_do_not_hold_up_normal_ones() -> None:
    """2 spinning requests a second, each until its call_timeout (1 s) clock: normal requests go on being answered
    promptly. A guest call that held the event loop for its whole second would make normal requests wait
    up to 1 s each (p99 ~1 s, a few dozen requests a second)."""
    guest = Guest(SPIN)  # the defaults: call_timeout 1 s, calls on the event loop
    assert guest.module.limits.call_timeout == CALL_TIMEOUT and not guest.threaded
    app = Catch(HttpWasmMiddleware(echo_app, [guest]))
    ticker = _Ticker(app)
    seconds, rate = 4.0, 2.0
    with serve(ticker) as base:
        got = _drive(base, seconds, rate)
    normal = [(t, latency, status) for t, latency, status in got["normal"] if t >= 0.5]  # spinners in flight
    latencies = [latency for _, latency, _ in normal]
    p50, p99, worst = statistics.median(latencies), _p99(latencies), max(latencies)
    spin_seconds = sorted(latency for _, latency, _ in got["spins"])
    stall = max(ticker.lags)
    print(f"\n{len(normal)} normal requests under attack: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {worst * 1000:.0f} ms; event loop late by at most {stall * 1000:.0f} ms; "
          f"{len(spin_seconds)} spinning requests answered {sorted({s for _, _, s in got['spins']})} "
          f"after {spin_seconds[0]:.2f}-{spin_seconds[-1]:.2f} s")
    # Bounds for a loaded 2-core machine (measured here with the load average at 7-9: 2,500-4,400 normal
    # requests, p99 39-62 ms, the loop late by 48-390 ms at worst); with calls that hold the loop (same
    # machine): 15 normal requests, p99 4.5 s, the loop held for 1 s and more at a time.
    assert {status for _, _, status in got["normal"]} == {200}
    assert len(normal) >= 300, f"only {len(normal)} normal requests answered in {seconds - 0.5:.1f} s"
    assert p99 < 0.3, f"normal requests: p99 {p99 * 1000:.0f} ms"
    assert stall < 0.8, f"the event loop was held for {stall * 1000:.0f} ms"
    # Every spinning request: a 5xx (503) once its call's clock reached call_timeout. Held to a small share of
    # the busy loop, its clock counts its own slices and LONG_WAIT of its waiting: it ends later in wall time,
    # within about call_timeout / LONG_WAIT (measured: 2.0-2.4 s; up to 4.4 s with the machine loaded, as time
    # the server thread lost inside other calls' slices counts as theirs), never before call_timeout.
    assert len(got["spins"]) == int(seconds * rate)
    assert all(500 <= status < 600 for _, _, status in got["spins"]), got["spins"]
    assert spin_seconds[0] >= CALL_TIMEOUT * 0.95, spin_seconds
    assert spin_seconds[-1] < CALL_TIMEOUT / LONG_WAIT * 3, spin_seconds
    assert guest.pool.in_use == 0
    assert not app.errors


def _send_spin_and_leave(port: int, wait_until: Any) -> float:
    """Send a spinning request, wait until its guest call is under way (and suspended), then close the
    connection; the time it was closed."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nhost: test\r\nx-spin: forever\r\n\r\n")
    deadline = time.monotonic() + 10
    while not wait_until():
        assert time.monotonic() < deadline, "the spinning request never reached its guest"
        time.sleep(0.002)
    time.sleep(0.05)  # well past the first slice: the call is suspended, awaited by the request
    sock.close()
    return time.perf_counter()


def _wait(condition: Any, timeout: float) -> float:
    """Seconds until condition() held (polled); fails after timeout."""
    start = time.perf_counter()
    while not condition():
        assert time.perf_counter() - start < timeout, "timed out"
        time.sleep(0.005)
    return time.perf_counter() - start


def _checked_out(guest: Guest, seen: list[Any]) -> Callable[[], bool]:
    """A wait condition: one instance is checked out, which `seen` then holds (the one the suspended call runs on;
    not always the one that was idle when the request came: on the native path a first request's synchronous
    try of a spinning guest is stopped, and the request starts over on a fresh instance)."""
    def one() -> bool:
        seen[:] = [i for i in guest.pool.instances() if all(i is not j for j in guest.pool._idle)]
        return len(seen) == 1
    return one


@pytest.mark.slow
def test_a_client_that_leaves_mid_call_frees_its_instance() -> None:
    """uvicorn does not cancel a request whose client left: the suspended call goes on until its CPU limit,
    then the instance is dropped (never handed to another request) and nothing stays checked out."""
    limit = 3 * CALL_TIMEOUT  # room to start four spinning calls before the first one's limit ends it
    guest = Guest(SPIN, call_timeout=limit)
    app = Catch(HttpWasmMiddleware(echo_app, [guest]))
    with serve(app) as base:
        port = int(base.rsplit(":", 1)[1])
        for _ in range(3):
            idle_instance(guest)  # one is idle: the request takes it without creating one
            serving: list[Any] = []
            sent = time.perf_counter()
            left = _send_spin_and_leave(port, _checked_out(guest, serving))
            if left - sent < limit * 0.9:  # else a stalled machine let its CPU limit end it already
                assert not serving[0].closed and guest.pool.in_use == 1  # not dropped at the disconnect
            freed = _wait(lambda: guest.pool.in_use == 0, limit * 5)
            assert freed < limit * 2.5
            assert_replaced(guest, serving[0])
        # several at once, then the server still serves with what is left. A call counts as started once its
        # instance is in use or its CPU limit ended it (a stalled machine can end the first before the fourth
        # is sent, so in_use alone may never reach 4).
        ended_before = sum(guest.stats.traps.values())

        def started() -> int:
            return guest.pool.in_use + sum(guest.stats.traps.values()) - ended_before

        closes = [_send_spin_and_leave(port, lambda n=n: started() >= n) for n in range(1, 5)]
        _wait(lambda: guest.pool.in_use == 0, limit * 5)
        assert time.perf_counter() - closes[0] < limit * 5
        assert guest.pool.size == guest.pool.idle
        assert httpx.get(base + "/", headers={"x-id": "after"}).status_code == 200
    assert not app.errors


class _CancelOnDisconnect:
    """An ASGI layer that cancels the request when its client leaves (as some servers and frameworks do),
    for requests without a body: the first receive() is the (empty) request, the next one waits for
    http.disconnect."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        first = await receive()
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        task = asyncio.ensure_future(self.app(scope, replay, send))
        watch = asyncio.ensure_future(receive())
        await asyncio.wait([task, watch], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.slow
def test_a_cancelled_request_frees_its_instance_at_once() -> None:
    """When the request is cancelled (a layer or server that cancels on disconnect), the suspended call is
    abandoned there and then: the instance is dropped well before its CPU limit would have ended it."""
    guest = Guest(SPIN)
    inner = Catch(HttpWasmMiddleware(echo_app, [guest]))
    with serve(_CancelOnDisconnect(inner)) as base:
        port = int(base.rsplit(":", 1)[1])
        for _ in range(5):
            idle_instance(guest)  # one is idle: the request takes it without creating one
            serving: list[Any] = []
            closed_at = _send_spin_and_leave(port, _checked_out(guest, serving))
            _wait(lambda: guest.pool.in_use == 0, CALL_TIMEOUT * 5)
            freed = time.perf_counter() - closed_at
            assert freed < CALL_TIMEOUT / 2, f"freed {freed:.2f} s after the client left"
            assert_replaced(guest, serving[0])
        assert httpx.get(base + "/", headers={"x-id": "after"}).status_code == 200
    assert all(isinstance(e, asyncio.CancelledError) for e in inner.errors)
