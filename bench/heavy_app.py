"""The app bench/heavy.py serves (issue 12): an app that awaits like a database call, behind a guest.

Configured by environment variables (read at import):

    HEAVY_GUEST         waf (default: guests/go/waf with the heavy rule set), churn (guests/go/churn: a heap
                        churned per request, like a garbage-collected guest's), light (guests/zig/headeradder
                        with Guest() defaults) or none (the app alone, e.g. behind a config file's chain)
    HEAVY_CHURN         churn's config (default: its own, "state=16 churn=4096")
    HEAVY_RECYCLE       Guest(recycle_memory=...) in bytes, or "none" (default: the Guest() default)
    HEAVY_DELAY_MS      what a request awaits before answering (default 20; 0 answers at once: CPU-bound)
    HEAVY_REUSE         1 (default) or 0: Guest(reuse_instances=...)
    HEAVY_IDLE_TIMEOUT  Guest(idle_timeout=...) in seconds (default: the Guest() default)
    HEAVY_SNAPSHOT      1 (default) or 0: Guest(snapshot=...)
    HEAVY_RULES         the WAF's rule count (default: rules.py's heavy(), 3000 rules)
    HEAVY_SLOW_CALLBACK_MS  diagnosis: asyncio debug mode, logging every loop step slower than this

The module's `app` is the guest in front of `inner`; `inner` alone is the app for a config file
(bench/heavy.yaml). Besides `/`, `inner` answers:

    GET /_stats   JSON: the event loop's largest lag so far (a ticker coroutine started at lifespan
                  startup, or at the first request), the process id, and, when this module built the
                  guest, its pool's figures and every instance creation (how long, on the loop or not)
    GET /big      a 20 MiB response, streamed in 64 KiB chunks (the slow-reader check)
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from http_wasm_asgi import Guest, HttpWasmMiddleware

ROOT = Path(__file__).resolve().parent.parent
WAF = ROOT / "guests" / "go" / "waf" / "waf.wasm"
LIGHT = ROOT / "guests" / "zig" / "headeradder.wasm"
CHURN = ROOT / "guests" / "go" / "churn" / "churn.wasm"
DELAY = float(os.environ.get("HEAVY_DELAY_MS", "20")) / 1000
TICK = 0.005  # the ticker's period: a lag is how late its sleep came back
BIG_CHUNK = b"x" * 65536
BIG_CHUNKS = 20 * 16  # 20 MiB


def waf_rules() -> Any:
    """guests/go/waf/rules.py, loaded by path (guests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("waf_rules", ROOT / "guests" / "go" / "waf" / "rules.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Ticker:
    """Sleeps TICK at a time on the event loop and records how late each wake-up was."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self.max_lag_at = 0.0  # seconds after the ticker started
        self.max_lag_cpu = 0.0  # the loop thread's CPU time during that tick (the rest: waiting for a CPU)
        self.max_cpu = 0.0  # the most CPU time the loop thread spent in one tick
        self.stalls = 0  # wake-ups more than 50 ms late
        self.ticks = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            loop = asyncio.get_running_loop()
            if os.environ.get("HEAVY_SLOW_CALLBACK_MS"):  # diagnosis: asyncio's debug mode names slow steps
                loop.set_debug(True)
                loop.slow_callback_duration = float(os.environ["HEAVY_SLOW_CALLBACK_MS"]) / 1000
            self.task = loop.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            before, cpu = loop.time(), time.thread_time()
            await asyncio.sleep(TICK)
            lag = loop.time() - before - TICK
            cpu = time.thread_time() - cpu
            self.ticks += 1
            if lag > self.max_lag:
                self.max_lag, self.max_lag_at, self.max_lag_cpu = lag, before - began, cpu
            self.max_cpu = max(self.max_cpu, cpu)
            self.stalls += lag > 0.050


TICKER = Ticker()
CREATIONS: list[tuple[float, float, bool]] = []  # (seconds, CPU seconds of the thread, on the event loop's thread)
PEAK = {"pool_size": 0}
IN_USE_AT_CREATION: list[int] = []
INFLIGHT = {"now": 0, "peak": 0}  # requests inside the app (not /_stats)
SERVER_INFLIGHT = {"now": 0, "peak": 0}  # requests inside the middleware
CLIENTS: set[tuple[Any, ...]] = set()  # client addresses seen: connections opened
GUEST: Guest | None = None


def stats() -> dict[str, Any]:
    got: dict[str, Any] = {"pid": os.getpid(), "max_lag_ms": TICKER.max_lag * 1000, "stalls_over_50ms": TICKER.stalls,
                           "max_lag_at_s": TICKER.max_lag_at, "max_lag_cpu_ms": TICKER.max_lag_cpu * 1000,
                           "max_tick_cpu_ms": TICKER.max_cpu * 1000, "ticks": TICKER.ticks}
    if GUEST is not None:
        pool = GUEST.pool
        snap = GUEST.snapshot
        got.update(pool_size=pool.size, pool_in_use=pool.in_use, pool_idle=pool.idle, pool_peak=PEAK["pool_size"],
                   created=len(CREATIONS), created_on_loop=sum(on_loop for *_, on_loop in CREATIONS),
                   create_ms=[round(s * 1000, 3) for s, *_ in CREATIONS],
                   create_cpu_ms=[round(c * 1000, 3) for _, c, _ in CREATIONS], in_use_at_creation=IN_USE_AT_CREATION,
                   app_inflight_peak=INFLIGHT["peak"], server_inflight_peak=SERVER_INFLIGHT["peak"],
                   connections=len(CLIENTS),
                   snapshot={"used": snap.used, "detail": snap.detail, "init_seconds": snap.init_seconds,
                             "image_bytes": snap.image_bytes}, **memory())
    return got


def memory() -> dict[str, Any]:
    """What the live instances hold of their own (pages written: /proc/self/pagemap) and how far they grew."""
    assert GUEST is not None
    instances = GUEST.pool.instances()
    own = [instance.own_memory() or 0 for instance in instances]
    grown = [instance.memory_size() - GUEST.snapshot.image_bytes for instance in instances]
    return {"pool_recycled": GUEST.pool.recycled, "recycle_memory": GUEST.recycle_memory,
            "own_mib": [round(b / 2**20, 2) for b in own], "grown_mib": [round(b / 2**20, 2) for b in grown]}


async def inner(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                TICKER.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                summary = {k: v for k, v in stats().items() if not isinstance(v, list)}
                print("heavy_app stats:", json.dumps(summary), flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    TICKER.start()
    path = scope["path"]
    if path == "/_stats":
        await _answer(send, json.dumps(stats()).encode(), b"application/json")
    elif path == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for _ in range(BIG_CHUNKS):
            await send({"type": "http.response.body", "body": BIG_CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        INFLIGHT["now"] += 1
        INFLIGHT["peak"] = max(INFLIGHT["peak"], INFLIGHT["now"])
        try:
            if DELAY:
                await asyncio.sleep(DELAY)  # a database call
            await _answer(send, b"hello", b"text/plain")
        finally:
            INFLIGHT["now"] -= 1


async def _answer(send: Any, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _timed(create: Any, loop_thread: int) -> Any:
    """The pool's instance factory, timed: how long each creation took and on which thread."""

    def timed_create() -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        instance = create()
        CREATIONS.append((time.perf_counter() - start, time.thread_time() - cpu, threading.get_ident() == loop_thread))
        if GUEST is not None:
            PEAK["pool_size"] = max(PEAK["pool_size"], GUEST.pool.size)
            IN_USE_AT_CREATION.append(GUEST.pool.in_use)
        return instance

    return timed_create


def _guest() -> Guest | None:
    kind = os.environ.get("HEAVY_GUEST", "waf")
    if kind == "none":
        return None
    if kind == "light":
        return Guest(LIGHT, config=b"response x-bench heavy")  # Guest() defaults
    options: dict[str, Any] = {"reuse_instances": os.environ.get("HEAVY_REUSE", "1") == "1",
                               "snapshot": os.environ.get("HEAVY_SNAPSHOT", "1") == "1"}
    if os.environ.get("HEAVY_IDLE_TIMEOUT"):
        options["idle_timeout"] = float(os.environ["HEAVY_IDLE_TIMEOUT"])
    recycle = os.environ.get("HEAVY_RECYCLE")
    if recycle:
        options["recycle_memory"] = None if recycle == "none" else int(recycle)
    if kind == "churn":
        return Guest(CHURN, name="churn", config=os.environ.get("HEAVY_CHURN", ""), **options)
    rules = waf_rules()
    count = os.environ.get("HEAVY_RULES")
    return Guest(WAF, name="waf", config=rules.generate(int(count)) if count else rules.heavy(), **options)


GUEST = _guest()
app: Any = inner
if GUEST is not None:
    # uvicorn runs the app on its main thread: creations there are on the event loop
    GUEST.pool._create = _timed(GUEST.pool._create, threading.main_thread().ident or 0)  # type: ignore[method-assign]
    app = HttpWasmMiddleware(inner, [GUEST])
    _wrapped = app

    async def app(scope: Any, receive: Any, send: Any) -> None:  # counts the requests inside the server
        if scope["type"] != "http":
            return await _wrapped(scope, receive, send)
        CLIENTS.add(tuple(scope.get("client") or ()))
        SERVER_INFLIGHT["now"] += 1
        SERVER_INFLIGHT["peak"] = max(SERVER_INFLIGHT["peak"], SERVER_INFLIGHT["now"])
        try:
            return await _wrapped(scope, receive, send)
        finally:
            SERVER_INFLIGHT["now"] -= 1
