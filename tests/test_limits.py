"""Resource limits: CPU time per call, guest memory, host memory a guest can make the host spend,
body size caps (413/500), pool exhaustion (503) and traps while other requests wait."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

from http_wasm_asgi import Guest, GuestError, HttpWasmMiddleware
from http_wasm_asgi.testing import echo_app, serve
from support import WAT
from support.attack import (
    HOSTILE,
    assert_clean_error,
    assert_logged,
    assert_replaced,
    idle_instance,
    routed,
    rss_bytes,
)
from support.driver import EMIT_RESULTS, GROW, LOOP, READ_ALL, RETURN, Program, results

REQ, RESP = 0, 1
PAGE = 64 * 1024
MiB = 1024 * 1024


# --- CPU ---
@pytest.mark.parametrize("where", ["handle_request", "handle_response", "host calls"])
async def test_endless_loop_gets_503_within_the_cpu_limit(client: Any, caplog: pytest.LogCaptureFixture,
                                                         where: str) -> None:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    if where == "host calls":
        guest = Guest(HOSTILE / "host_call_spin.wat", name="spin", call_timeout=0.2)
    else:
        p = Program().req("enable_features", 2)
        (p.req(LOOP) if where == "handle_request" else p.resp(LOOP))
        guest = p.guest(name="spin", call_timeout=0.2)
    before = idle_instance(guest)
    start = time.perf_counter()
    r = await client(HttpWasmMiddleware(echo_app, guests=[guest])).get("/")
    elapsed = time.perf_counter() - start
    assert_clean_error(r, 503)
    assert 0.15 <= elapsed < 1.0, elapsed
    assert_logged(caplog.records, "spin", "exceeded the CPU time limit (0.2 s)")
    assert_replaced(guest, before)


# The client runs in its own process: a spinning guest may stall this whole process (GIL included),
# which would stall an in-process client's clock too and hide the stall.
_PROBE = """
import json, sys, threading, time, httpx
base = sys.argv[1]
out = {}
def spin():
    t = time.perf_counter()
    out["spin_status"] = httpx.get(base + "/spin/", timeout=10).status_code
    out["spin_seconds"] = time.perf_counter() - t
with httpx.Client(base_url=base, timeout=10) as c:
    c.get("/warm")
    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.2)
    t = time.perf_counter()
    out["healthy_status"] = c.get("/healthy").status_code
    out["healthy_seconds"] = time.perf_counter() - t
    thread.join()
print(json.dumps(out))
"""


def _spin_probe(threaded: bool) -> dict[str, float]:
    spin = Program().req(LOOP).guest(name="spin", call_timeout=1.0, threaded=threaded)
    app = routed({"spin": HttpWasmMiddleware(echo_app, guests=[spin])}, echo_app)
    with serve(app) as base:
        probe = subprocess.run([sys.executable, "-c", _PROBE, base], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    got: dict[str, float] = json.loads(probe.stdout)
    print(f"\nthreaded={threaded}: healthy request took {got['healthy_seconds'] * 1000:.0f} ms while a guest "
          f"spun {got['spin_seconds'] * 1000:.0f} ms")
    assert got["spin_status"] == 503 and got["spin_seconds"] >= 0.9
    assert got["healthy_status"] == 200
    assert spin.pool.in_use == 0
    return got


@pytest.mark.slow
def test_a_spinning_guest_on_the_event_loop_does_not_hold_up_other_requests() -> None:
    """Default (cooperative calls on the event loop): the spinning call yields every slice, so a healthy
    request is answered long before the spinner's 1 s CPU limit ends it (a call holding the loop would make
    it wait for the whole limit), as fast as with a threaded guest."""
    got = _spin_probe(threaded=False)
    assert got["healthy_seconds"] < 0.25, f"a healthy request waited {got['healthy_seconds']:.2f} s for another " \
                                          "request's spinning guest"


@pytest.mark.slow
def test_threaded_guest_leaves_the_event_loop_free_while_it_spins() -> None:
    """Guest(threaded=True): a healthy request does not wait for another request's spinning guest."""
    got = _spin_probe(threaded=True)
    assert got["healthy_seconds"] < 0.25, f"a healthy request waited {got['healthy_seconds']:.2f} s for another " \
                                          "request's spinning guest"


# --- guest memory ---
async def test_memory_grow_bomb_gets_minus_one_at_the_limit(client: Any) -> None:
    guest = Guest(HOSTILE / "grow_bomb.wat", memory_limit=4 * MiB)
    before = rss_bytes()
    r = await client(HttpWasmMiddleware(echo_app, guests=[guest])).get("/")
    first, pages = struct.unpack("<ii", r.content)
    assert r.status_code == 200
    assert first == -1  # 4 GiB at once: refused
    assert 4 * MiB - 16 * PAGE < pages * PAGE <= 4 * MiB  # grew up to the limit, no further
    assert idle_instance(guest).memory_size() == pages * PAGE
    assert rss_bytes() - before < 32 * MiB


async def test_driver_grow_past_the_limit_records_minus_one(client: Any) -> None:
    p = Program().req(GROW, 0xFFFF).req(GROW, 14).req(GROW, 1).req(EMIT_RESULTS, RESP).req(RETURN, 0)
    r = await client(HttpWasmMiddleware(echo_app, guests=[p.guest(memory_limit=1 * MiB)])).get("/")
    assert [v - (1 << 64) if v >> 63 else v for v in results(r.content)] == [-1, 2, -1]


async def test_leaking_guest_fails_cleanly_and_is_replaced(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    guest = Guest(HOSTILE / "leak.wat", memory_limit=1 * MiB, max_instances=1)
    c = client(HttpWasmMiddleware(echo_app, guests=[guest]))
    statuses = []
    for _ in range(40):
        r = await c.get("/")
        statuses.append(r.status_code)
        if r.status_code != 200:
            assert_clean_error(r, 500)
        assert guest.pool.size <= 1 and guest.pool.in_use == 0
        if guest.pool.idle:
            assert idle_instance(guest).memory_size() <= 1 * MiB
    # 1 page to start, 15 more fit in 1 MiB: every 16th request finds memory full, the next one a fresh instance
    assert statuses == ([200] * 15 + [500]) * 2 + [200] * 8
    assert_logged(caplog.records, "leak", "trapped in handle_request", "unreachable")


def test_initial_memory_over_the_limit_is_a_load_error() -> None:
    with pytest.raises(GuestError, match=r"guest 'huge_memory'.*exceeds memory limits"):
        Guest(HOSTILE / "huge_memory.wat")
    Guest(HOSTILE / "huge_memory.wat", memory_limit=5000 * PAGE)  # the same guest, once it is allowed


def test_memory_limit_caps_the_whole_instance_not_each_memory() -> None:
    """Eight extra memories just under a 1 MiB limit each: 7.5 MiB of guest memory in one instance."""
    with pytest.raises(GuestError, match="guest 'multi_memory'"):
        Guest(HOSTILE / "multi_memory.wat", memory_limit=1 * MiB)


async def test_table_growth_is_capped_like_memory(client: Any) -> None:
    """table.grow costs host memory (8 bytes an element) the memory limit does not count: it must be capped."""
    guest = Guest(HOSTILE / "table_bomb.wat", memory_limit=1 * MiB)
    before = rss_bytes()
    r = await client(HttpWasmMiddleware(echo_app, guests=[guest])).get("/")
    grown = rss_bytes() - before
    print(f"\ntable bomb: status {r.status_code}, host RSS +{grown / MiB:.0f} MiB")
    assert r.status_code == 500  # the grow was refused, the guest gave up
    assert grown < 32 * MiB


# --- body caps ---
async def test_request_body_over_max_body_size_is_413_when_a_guest_reads_it(
        client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    guest = Program().req("enable_features", 1).req(READ_ALL, REQ, 0x1000, 1024).guest(name="reader")
    c = client(HttpWasmMiddleware(echo_app, guests=[guest], max_body_size=4096))
    assert_clean_error(await c.post("/", content=b"x" * 5000), 413)
    assert_logged(caplog.records, "reader", "larger than max_body_size (4096 bytes)")
    ok = await c.post("/", content=b"y" * 4096)
    assert ok.status_code == 200 and ok.json()["body"] == "y" * 4096
    assert guest.pool.in_use == 0


async def test_buffered_app_response_over_max_body_size_is_500(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")

    async def big(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-secret", b"1")]})
        for _ in range(10):
            await send({"type": "http.response.body", "body": b"z" * 1000, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    guest = Program().req("enable_features", 2).guest(name="buffers")
    r = await client(HttpWasmMiddleware(big, guests=[guest], max_body_size=4096)).get("/big")
    assert_clean_error(r, 500)
    assert "x-secret" not in r.headers
    assert any("exceeds max_body_size (4096 bytes)" in rec.getMessage() for rec in caplog.records)
    assert guest.pool.in_use == 0 and guest.pool.idle == 1


@pytest.mark.parametrize(("flood", "which"), [(False, "response"), (True, "request")])
async def test_guest_body_flood_stops_at_max_body_size(client: Any, caplog: pytest.LogCaptureFixture,
                                                       flood: bool, which: str) -> None:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    guest = Guest(HOSTILE / "body_flood.wat", call_timeout=5.0)
    before = rss_bytes()
    start = time.perf_counter()
    r = await client(HttpWasmMiddleware(echo_app, guests=[guest], max_body_size=8 * MiB)).get(
        "/", headers={"x-flood": "1"} if flood else {})
    assert_clean_error(r, 500)
    assert time.perf_counter() - start < 2.0  # the cap stopped it, not the 5 s CPU limit
    assert_logged(caplog.records, "body_flood", f"{which} body written by the guest exceeds max_body_size")
    assert rss_bytes() - before < 64 * MiB


# --- the pool ---
async def test_pool_timeout_is_503(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    release = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await echo_app(scope, receive, send)

    guest = Guest(WAT / "copy_header.wat", max_instances=1, pool_timeout=0.1)
    c = client(HttpWasmMiddleware(slow, guests=[guest]))
    first = asyncio.create_task(c.get("/", headers={"x-id": "first"}))
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    second = await c.get("/", headers={"x-id": "second"})
    waited = time.perf_counter() - start
    assert_clean_error(second, 503)
    assert 0.09 <= waited < 1.0
    assert any("no instance free within 0.1 s" in rec.getMessage() for rec in caplog.records)
    release.set()
    assert (await first).headers["x-id"] == "first"
    assert guest.pool.in_use == 0 and guest.pool.size == 1


async def test_no_deadlock_when_a_guest_traps_while_others_wait(client: Any) -> None:
    """One instance, twenty requests queued on it; every fourth one traps (request or response)."""
    guest = Guest(HOSTILE / "trap_on_header.wat", max_instances=1, pool_timeout=5)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.002)
        await echo_app(scope, receive, send)

    c = client(HttpWasmMiddleware(app, guests=[guest]))
    kinds = ["request" if i % 8 == 0 else "response" if i % 4 == 0 else "" for i in range(20)]
    responses = await asyncio.wait_for(asyncio.gather(*(
        c.get(f"/{i}", headers={"x-trap": kind} if kind else {}) for i, kind in enumerate(kinds))), timeout=10)
    assert [r.status_code for r in responses] == [500 if kind else 200 for kind in kinds]
    assert [r.json()["path"] for r, kind in zip(responses, kinds, strict=True) if not kind] == [
        f"/{i}" for i, kind in enumerate(kinds) if not kind]
    assert guest.pool.size <= 1 and guest.pool.in_use == 0


async def test_cpu_timeout_while_others_wait_frees_the_slot(client: Any) -> None:
    guest = Guest(HOSTILE / "host_call_spin.wat", max_instances=1, call_timeout=0.1, pool_timeout=5)
    c = client(HttpWasmMiddleware(echo_app, guests=[guest]))
    responses = await asyncio.wait_for(asyncio.gather(*(c.get("/") for _ in range(4))), timeout=10)
    assert [r.status_code for r in responses] == [503] * 4
    assert guest.pool.size == 0 and guest.pool.in_use == 0
