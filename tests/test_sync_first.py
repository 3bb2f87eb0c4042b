"""The native call's synchronous first try of handle_request: a call that ends within a tick answers as on any
path; one still running after a whole tick is stopped, its request starts over with cooperative calls on fresh
instances (the earlier guests' held ones are discarded too). A second stop within 5,000 calls of the guest makes
its calls cooperative for 10 s; stops further apart leave the fast path on. A guest that spins still gets its 503
at its CPU limit. The Python path never takes the synchronous try."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from http_wasm_asgi import Guest, HttpWasmMiddleware, _native
from http_wasm_asgi.testing import echo_app, serve
from http_wasm_asgi.wasm.calls import PYTHON_PATH, TURN_SECONDS, using_path
from http_wasm_asgi.wasm.stats import STATS_SYNC_AFTER
from support import WAT

pytestmark = pytest.mark.skipif(_native.EXT is None, reason="the native path is the subject")

SPIN = WAT / "spin_on_header.wat"
COPY = WAT / "copy_header.wat"
LONG = "3000000"  # get_header_values calls in spin_on_header's handle_request: ~100 ms, far past two ticks


def chain(prefix: str, **spin: Any) -> tuple[HttpWasmMiddleware, Guest, Guest]:
    """copy_header then spin_on_header, in front of echo_app (names per test: counters live for the process)."""
    copy = Guest(COPY, name=f"{prefix}-copy")
    spinner = Guest(SPIN, name=f"{prefix}-spin", **spin)
    return HttpWasmMiddleware(echo_app, [copy, spinner]), copy, spinner


def created(guest: Guest) -> int:
    return sum(guest.stats.created.values())


async def next_turn() -> None:
    """Let the turn's window pass: a long call's last slices may have used its guest time, and a call is then
    not tried synchronously (it waits for the loop first)."""
    await asyncio.sleep(3 * TURN_SECONDS)


async def test_a_request_whose_guest_overruns_starts_over_and_is_answered_once() -> None:
    app, copy, spinner = chain("sync-over")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        quick = await client.get("/", headers={"x-id": "a"})
        assert quick.status_code == 200 and quick.headers["x-id"] == "a"
        assert spinner.stats.sync_overruns == 0 and (created(copy), created(spinner)) == (1, 1)

        slow = await client.get("/", headers={"x-id": "b", "x-spin": LONG})
        assert slow.status_code == 200
        assert slow.headers["x-id"] == "b" and slow.headers["x-spun"] == "b"  # both guests, each once
        assert slow.headers.get_list("x-id") == ["b"]
        assert spinner.stats.sync_overruns == 1 and copy.stats.sync_overruns == 0
        # the stopped call's instance and the one copy_header held for the first try are discarded
        assert (created(copy), created(spinner)) == (2, 2)
        assert (copy.pool.in_use, spinner.pool.in_use) == (0, 0)

        await next_turn()
        again = await client.get("/", headers={"x-id": "c", "x-spin": LONG})  # one stop: still tried synchronously
        assert again.status_code == 200 and again.headers["x-spun"] == "c"
        assert (spinner.stats.sync_overruns, created(copy), created(spinner)) == (2, 3, 3)

        await next_turn()
        third = await client.get("/", headers={"x-id": "d", "x-spin": LONG})  # two close stops: cooperative at once
        assert third.status_code == 200 and third.headers["x-spun"] == "d"
        assert (spinner.stats.sync_overruns, created(copy), created(spinner)) == (2, 3, 3)

        spinner.stats.counts[STATS_SYNC_AFTER] = 0  # as if its 10 s were over: tried synchronously again
        await next_turn()
        retried = await client.get("/", headers={"x-id": "e", "x-spin": LONG})
        assert retried.status_code == 200 and retried.headers["x-spun"] == "e"
        assert (spinner.stats.sync_overruns, created(copy), created(spinner)) == (3, 4, 4)
    app.close()


async def test_stops_far_apart_leave_the_synchronous_try_on() -> None:
    # a guest whose quick calls far outnumber its long ones: each long request starts over, the quick ones
    # between keep the fast path (no fiber)
    app, _, spinner = chain("sync-apart")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for i in range(3):
            await next_turn()
            slow = await client.get("/", headers={"x-id": str(i), "x-spin": LONG})
            assert slow.status_code == 200 and slow.headers["x-spun"] == str(i)
            assert spinner.stats.sync_overruns == i + 1 and spinner.stats.counts[STATS_SYNC_AFTER] == 0
            spinner.stats.counts[0] += 5000  # as if 5,000 quick calls of handle_request had ended since
        spinner.stats.counts[0] -= 4999  # the next stop comes within 5,000 calls of the last: a pause
        await next_turn()
        close = await client.get("/", headers={"x-id": "c", "x-spin": LONG})
        assert close.status_code == 200 and spinner.stats.sync_overruns == 4
        assert spinner.stats.counts[STATS_SYNC_AFTER] > 0
    app.close()


async def test_a_spinning_guest_still_gets_its_503_at_the_cpu_limit() -> None:
    app, copy, spinner = chain("sync-spin", call_timeout=0.2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        spun = await client.get("/", headers={"x-id": "a", "x-spin": "forever"})
        assert spun.status_code == 503
        assert spinner.stats.sync_overruns == 1
        assert spinner.stats.traps == {("handle_request", "cpu_limit"): 1}
        after = await client.get("/", headers={"x-id": "b"})
        assert after.status_code == 200 and after.headers["x-id"] == "b"
    assert (copy.pool.in_use, spinner.pool.in_use) == (0, 0)
    app.close()


async def test_the_python_path_never_takes_the_synchronous_try() -> None:
    with using_path(PYTHON_PATH):
        app, copy, spinner = chain("sync-python")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            # Python host functions are slower: fewer calls still run past two ticks
            slow = await client.get("/", headers={"x-id": "a", "x-spin": "50000"})
        assert slow.status_code == 200 and slow.headers["x-spun"] == "a"
        assert spinner.stats.sync_overruns == 0 and (created(copy), created(spinner)) == (1, 1)
        app.close()


def test_a_thread_with_a_small_stack_never_takes_the_synchronous_try() -> None:
    # a synchronous call runs on the caller's stack (wasm may use 512 KiB of it): a thread with little room left
    # makes its calls on a fiber of their own
    app, _, spinner = chain("sync-small-stack")
    answers: list[httpx.Response] = []

    async def requests() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            answers.append(await client.get("/", headers={"x-id": "a", "x-spin": LONG}))

    previous = threading.stack_size(512 * 1024)
    try:
        thread = threading.Thread(target=lambda: asyncio.run(requests()))
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    assert [r.status_code for r in answers] == [200] and answers[0].headers["x-spun"] == "a"
    assert spinner.stats.sync_overruns == 0
    app.close()


def test_through_uvicorn_a_request_that_starts_over_is_answered_and_so_are_the_next() -> None:
    app, copy, spinner = chain("sync-uvicorn")
    with serve(app) as base, httpx.Client(base_url=base) as client:
        statuses = [client.get("/", headers={"x-id": str(i)}).status_code for i in range(3)]
        slow = client.get("/", headers={"x-id": "slow", "x-spin": LONG})
        after = client.get("/", headers={"x-id": "after"})
    assert statuses == [200, 200, 200]
    assert slow.status_code == 200 and slow.headers["x-spun"] == "slow"
    assert after.status_code == 200 and after.headers["x-id"] == "after"
    assert spinner.stats.sync_overruns == 1 and (created(copy), created(spinner)) == (2, 2)
    app.close()
