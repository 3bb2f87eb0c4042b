"""Heavy guests with `Guest()` defaults: snapshots after init, instances off the event loop,
pool bounds that fit what instances cost, idle trimming, and the errors that name the setting to change.

The heavy guests are guests/wat/heavy_init.wat (80 MiB, ~0.25 s init) and the WAF of guests/go/waf
with the generated rule set (~73 MiB, ~0.3 s init); see test_waf.py for what they do.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from http_wasm_asgi import Guest, GuestError, HttpWasmMiddleware
from http_wasm_asgi.devkit import conformance
from http_wasm_asgi.testing import echo_app, serve
from support import ROOT, WAT
from test_waf import WAF, expected_sample, expected_spin, rules

MiB = 1024 * 1024
HEAVY = WAT / "heavy_init.wat"
ZIG = ROOT / "guests" / "zig"
GO = ROOT / "guests" / "go"


async def get(app: Any, path: str = "/", **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await c.get(path, **kw)


# --- defaults that fit ------------------------------------------------------------------------------


async def test_a_guest_whose_init_leaves_80_mib_loads_with_defaults_and_runs_from_its_snapshot() -> None:
    guest = Guest(HEAVY)
    assert guest.snapshot.used and guest.snapshot.image_bytes == 80 * MiB
    assert "_initialize" in {name for name, _ in guest.info.exports}  # info describes the guest as built
    app = HttpWasmMiddleware(echo_app, guests=[guest])
    for _ in range(3):
        r = await get(app)
        assert r.status_code == 200
        assert r.headers["x-heavy-sample"] == expected_sample()  # the state init left, from the snapshot
        assert r.headers["x-heavy-spin"] == expected_spin()
    start = time.perf_counter()
    instance = guest.new_instance()  # no init: the snapshot's memory is mapped, not rebuilt
    assert time.perf_counter() - start < guest.snapshot.init_seconds / 2  # the init took ~0.25 s
    assert instance.memory_size() == 80 * MiB
    instance.close()


def test_hitting_memory_limit_names_the_guest_the_limit_and_the_fix() -> None:
    with pytest.raises(GuestError) as info:
        Guest(HEAVY, memory_limit=64 * MiB, snapshot=False)
    message = str(info.value)
    assert "guest 'heavy_init'" in message and "memory_limit is 64 MiB" in message
    assert "memory_limit: ... in the guest's config" in message and "Guest(memory_limit=...)" in message


def test_init_has_its_own_cpu_limit_apart_from_call_timeout() -> None:
    Guest(HEAVY, call_timeout=0.05, snapshot=False)  # a 0.25 s init is not a request's call
    with pytest.raises(GuestError) as info:
        Guest(HEAVY, init_timeout=0.02, snapshot=False)
    message = str(info.value)
    assert "guest 'heavy_init'" in message and "CPU time limit for init (0.02 s)" in message
    assert "init_timeout" in message


@pytest.mark.slow
async def test_the_waf_with_thousands_of_rules_runs_with_defaults() -> None:
    guest = Guest(WAF, config=rules.heavy())
    assert guest.snapshot.used and guest.snapshot.image_bytes >= 50 * MiB
    assert guest.features & 1  # buffer_request, enabled by its init: carried by the snapshot
    app = HttpWasmMiddleware(echo_app, guests=[guest])
    assert (await get(app, "/search", params={"id": "1' OR '1'='1"})).status_code == 403
    assert (await get(app, "/page", params={"q": "<script>alert(1)</script>"})).status_code == 403
    clean = await get(app, "/search", params={"q": "blue shoes"})
    assert clean.status_code == 200 and clean.json()["path"] == "/search"


# --- snapshots --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["zig", "go"])
def test_snapshot_and_init_give_identical_answers_on_the_conformance_suite(lang: str) -> None:
    path = ZIG / "conformance.wasm" if lang == "zig" else GO / "conformance" / "conformance.wasm"
    verdicts = {}
    for snapshot in (True, False):
        results = conformance.run(path, snapshot=snapshot)
        assert all(r.passed for r in results), [(r.case_id, r.problems) for r in results if not r.passed]
        verdicts[snapshot] = [(r.case_id, r.passed) for r in results]
    assert verdicts[True] == verdicts[False] and len(verdicts[True]) >= 30


TABLE_GROW = """(module
  (memory (export "memory") 1)
  (table 1 funcref)
  (func (export "handle_request") (result i64)
    (drop (table.grow (ref.null func) (i32.const 1))) (i64.const 1))
  (func (export "handle_response") (param i32 i32)))"""


def test_a_guest_the_snapshot_cannot_capture_runs_its_init_and_says_why_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    guest = Guest(TABLE_GROW.encode(), name="grower")
    assert not guest.snapshot.used and "table.grow" in guest.snapshot.detail
    lines = [r.getMessage() for r in caplog.records if "no snapshot" in r.getMessage()]
    assert lines == ["guest 'grower': no snapshot, each instance runs the guest's init: function 0 uses "
                     "table.grow: table state cannot be captured"]
    assert guest.pool.try_acquire() is not None  # and it works


def test_preopened_wasi_dirs_and_snapshot_false_turn_snapshots_off(tmp_path: Path) -> None:
    wasi = Guest(ZIG / "wasi_hello.wasm", wasi_dirs={"/data": str(tmp_path)})
    assert not wasi.snapshot.used and "preopened" in wasi.snapshot.detail
    off = Guest(ZIG / "auth.wasm", config=b"t", snapshot=False)
    assert not off.snapshot.used and "snapshot: false" in off.snapshot.detail


def test_the_snapshot_comes_from_the_disk_cache_and_replays_what_init_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="http_wasm_asgi")  # INFO lines are not even emitted at build
    built = Guest(ZIG / "wasi_hello.wasm", cache_dir=tmp_path)
    assert built.snapshot.detail == "built"
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    caplog.clear()
    again = Guest(ZIG / "wasi_hello.wasm", cache_dir=tmp_path)
    assert again.snapshot.detail == "disk" and again.snapshot.image_bytes == built.snapshot.image_bytes
    assert [r.getMessage() for r in caplog.records if r.name.endswith(".wasi_hello")] == ["wasi_hello: initialized"]
    # the compiled snapshot may come from this process's memory (an earlier test): its .cwasm is elsewhere
    stored = [*tmp_path.glob("snapshot-*.wasm"), *tmp_path.glob("snapshot-*.json"), *tmp_path.glob("*.cwasm")]
    assert len(stored) >= 2 and all(p.stat().st_mode & 0o077 == 0 for p in stored)  # the guest's state: owner only


@pytest.mark.slow
def test_processes_starting_together_build_the_snapshot_once(tmp_path: Path) -> None:
    code = ("import sys; from http_wasm_asgi import Guest; "
            "print(Guest(sys.argv[1], cache_dir=sys.argv[2]).snapshot.detail)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(HEAVY), str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT) for _ in range(3)]
    details = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert details == ["built", "disk", "disk"]
    assert len(list(tmp_path.glob("snapshot-*.wasm"))) == 1


async def test_a_restored_guest_sees_one_monotonic_clock() -> None:
    """The guest's init read the clock 20 ms in; a new WASI context's own clock would start again at 0."""
    guest = Guest(WAT / "clock_after_init.wat", reuse_instances=False)
    assert guest.snapshot.used
    app = HttpWasmMiddleware(echo_app, guests=[guest])
    for _ in range(3):
        assert (await get(app)).headers["x-clock"] == "ok"


async def test_a_fresh_instance_per_request_is_cheap_from_a_snapshot() -> None:
    guest = Guest(HEAVY, reuse_instances=False)
    app = HttpWasmMiddleware(echo_app, guests=[guest])
    start = time.perf_counter()
    for _ in range(5):
        assert (await get(app)).headers["x-heavy-sample"] == expected_sample()
    assert time.perf_counter() - start < 2 * guest.snapshot.init_seconds  # five inits would take 5x
    assert guest.pool.size == 0


# --- the pool: off the loop, bounded by cost, trimmed -----------------------------------------------


def slow(seconds: float) -> Any:
    """The echo app after `seconds` of waiting (a database call): requests overlap, instances pile up."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(seconds)
        await echo_app(scope, receive, send)
    return app


def together(count: int) -> Any:
    """The echo app once `count` requests are in it at the same time (each holds its instances meanwhile):
    a burst that needs `count` instances however slowly the machine starts the requests (a fixed wait
    may let the first request end, and give its instance to a later one, on a stalled machine)."""
    arrived = 0
    everyone = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == count:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 10)
        await echo_app(scope, receive, send)
    return app


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(0.005)
        lags.append(loop.time() - t - 0.005)


async def test_instances_without_a_snapshot_are_created_off_the_event_loop() -> None:
    guest = Guest(HEAVY, snapshot=False, max_instances=4)

    app = HttpWasmMiddleware(slow(0.05), guests=[guest])
    create, threads = guest.pool._create, []

    def recorded() -> Any:  # where each new instance is made: the pool's creator, watched
        threads.append(threading.current_thread())
        return create()

    guest.pool._create = recorded
    stop, lags = asyncio.Event(), []
    tick = asyncio.create_task(ticker(stop, lags))
    responses = await asyncio.gather(*(get(app) for _ in range(4)))
    stop.set()
    await tick
    assert [r.status_code for r in responses] == [200] * 4 and guest.pool.size == 4  # three new ones
    assert len(threads) == 3 and threading.main_thread() not in threads, [t.name for t in threads]
    # on the loop, the three inits would hold it for ~0.75 s in a row
    assert max(lags) < 0.4, f"the loop stalled {max(lags) * 1000:.0f} ms (an init takes ~250 ms)"


async def test_idle_instances_are_closed_after_a_burst() -> None:
    guest = Guest(ZIG / "auth.wasm", config=b"t", idle_timeout=0.2)

    app = HttpWasmMiddleware(together(8), guests=[guest])
    token = {"authorization": "Bearer t"}
    assert [r.status_code for r in await asyncio.gather(*(get(app, headers=token) for _ in range(8)))] == [200] * 8
    assert guest.pool.size == 8
    loop = asyncio.get_running_loop()
    start = loop.time()
    while guest.pool.size > 1 and loop.time() - start < 5:  # one to two idle_timeouts (more on a busy machine)
        await asyncio.sleep(0.05)
    assert guest.pool.size == 1 and guest.pool.idle == 1  # min_instances stays
    assert loop.time() - start >= 0.2  # not before an idle_timeout


async def test_max_idle_keeps_only_that_many_idle() -> None:
    guest = Guest(ZIG / "auth.wasm", config=b"t", max_idle=2)

    app = HttpWasmMiddleware(together(6), guests=[guest])
    await asyncio.gather(*(get(app, headers={"authorization": "Bearer t"}) for _ in range(6)))
    assert guest.pool.idle == 2 and guest.pool.size == 2


async def test_the_memory_budget_makes_requests_wait_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="http_wasm_asgi")
    guest = Guest(ZIG / "auth.wasm", config=b"t", memory_budget=1, pool_timeout=0.3)

    app = HttpWasmMiddleware(slow(0.6), guests=[guest])
    first, second = await asyncio.gather(*(get(app, headers={"authorization": "Bearer t"}) for _ in range(2)))
    assert sorted([first.status_code, second.status_code]) == [200, 503]
    assert guest.pool.size == 1 and guest.pool.budget_waits >= 1
    said = [r.getMessage() for r in caplog.records if "memory budget reached" in r.getMessage()]
    assert said and "guest 'auth'" in said[0] and "memory_budget" in said[0]


@pytest.mark.slow
def test_clients_that_stop_reading_do_not_starve_a_light_guest_with_defaults() -> None:
    """200 clients request a 20 MiB response and never read it: each holds an instance until its
    response ends. With defaults, a normal request is still answered at once."""
    guest = Guest(ZIG / "headeradder.wasm", config=b"response x-seen yes")
    chunk = b"x" * (1024 * 1024)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] != "/big":
            await echo_app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"20971520")]})
        for _ in range(20):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with serve(HttpWasmMiddleware(app, guests=[guest])) as url:
        host, port = url.removeprefix("http://").split(":")
        stalled = []
        try:
            for _ in range(200):
                sock = socket.create_connection((host, int(port)))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")
                stalled.append(sock)
            deadline = time.monotonic() + 10
            while guest.pool.in_use < 150 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert guest.pool.in_use >= 150  # the slow readers hold their instances
            start = time.perf_counter()
            r = httpx.get(url + "/", timeout=5)
            assert r.status_code == 200 and r.headers["x-seen"] == "yes"
            assert time.perf_counter() - start < 2.0  # waiting for an instance would be pool_timeout (10 s)
        finally:
            for sock in stalled:
                sock.close()


# --- memory given back: instances that grew are replaced ----------------------------------------------

CHURN = GO / "churn" / "churn.wasm"  # a heap churned per request, like a garbage-collected guest's
SMALL_CHURN = "state=2 churn=2048"  # 2 MiB of state, 2 MiB dropped per request: grows ~6 MiB when kept


async def test_an_instance_that_grew_past_recycle_memory_is_replaced_by_a_fresh_one() -> None:
    answers: dict[str, set[str]] = {}
    for recycle in (3 * MiB, None):
        guest = Guest(CHURN, config=SMALL_CHURN, recycle_memory=recycle)
        app = HttpWasmMiddleware(echo_app, guests=[guest])
        answers[str(recycle)] = {(await get(app, "/a?b=c")).headers["x-churn"] for _ in range(12)}
        image = guest.snapshot.image_bytes
        grown = max((instance.memory_size() - image for instance in guest.pool.instances()), default=0)
        if recycle is None:  # kept: it grows past what the other guest allows, and is never replaced
            assert guest.pool.recycled == 0 and guest.pool.size == 1
            assert grown > 3 * MiB
        else:
            assert guest.pool.recycled >= 3 and guest.pool.size <= 1  # each replaced in turn, when needed
            assert grown < 3 * MiB + 4 * MiB  # at most what one request adds past the threshold
            fresh = guest.new_instance()
            assert fresh.memory_size() == image and fresh.recycle_above == image + recycle
            fresh.close()
    # one answer, from fresh instances and from a reused one alike: the state is intact, nothing carried over
    assert answers[str(3 * MiB)] == answers["None"] and len(answers["None"]) == 1


async def test_the_default_keeps_a_guest_that_churns_a_few_mib_and_its_cpu() -> None:
    """The default (64 MiB) guards against an instance that balloons: a garbage-collected guest at its usual
    high-water mark keeps its instance (replacing it per request would fault its pages in again)."""
    guest = Guest(CHURN, config=SMALL_CHURN)
    app = HttpWasmMiddleware(echo_app, guests=[guest])
    for _ in range(12):
        assert (await get(app, "/a?b=c")).status_code == 200
    [instance] = guest.pool.instances()
    assert instance.memory_size() - guest.snapshot.image_bytes > 3 * MiB  # it grew, as in the test above
    assert guest.pool.recycled == 0 and instance.recycle_above == guest.snapshot.image_bytes + 64 * MiB


async def test_the_pages_that_replaced_instances_wrote_go_back_to_the_system() -> None:
    own: dict[str, int] = {}
    for name, recycle in (("recycled", 2 * MiB), ("kept", None)):
        guest = Guest(CHURN, config=SMALL_CHURN, recycle_memory=recycle)
        assert (guest.new_instance().own_memory() or 0) < MiB  # a fresh instance maps the image, shared
        app = HttpWasmMiddleware(together(6), guests=[guest])
        for _ in range(4):
            responses = await asyncio.gather(*(get(app, f"/{n}") for n in range(6)))
            assert [r.status_code for r in responses] == [200] * 6
        held = [instance.own_memory() for instance in guest.pool.instances()]
        assert None not in held, "/proc/self/pagemap is not readable"
        own[name] = sum(b for b in held if b is not None)
    assert own["kept"] > 6 * 4 * MiB  # six instances at their heap's high-water mark
    assert own["recycled"] < own["kept"] / 2, own


async def test_the_native_release_recycles_like_the_reference() -> None:
    from http_wasm_asgi.pool import InstancePool, NativeInstancePool

    guest = Guest(CHURN, config=SMALL_CHURN, max_instances=4)
    assert guest.recycle_memory == 64 * MiB  # the default, for instances from a snapshot
    for release in (NativeInstancePool.release, InstancePool.release):
        pool = guest.pool
        grown, small = pool.try_acquire(), pool.try_acquire()
        assert grown is not None and small is not None
        grown.recycle_above = grown.memory_size()  # reached: replaced
        small.recycle_above = small.memory_size() + 1  # not reached: kept
        before = pool.recycled
        release(pool, grown)
        release(pool, small)
        assert grown.closed and pool.recycled == before + 1 and grown not in pool.instances()
        assert not small.closed and pool._idle[-1] is small


def test_recycle_memory_is_for_snapshot_instances_unless_set() -> None:
    assert Guest(CHURN, config=SMALL_CHURN, snapshot=False).recycle_memory is None  # init per instance: costly
    assert Guest(CHURN, config=SMALL_CHURN, snapshot=False, recycle_memory=MiB).recycle_memory == MiB
    with pytest.raises(GuestError, match="recycle_memory must be at least 0"):
        Guest(CHURN, config=SMALL_CHURN, recycle_memory=-1)
