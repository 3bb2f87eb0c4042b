"""Benchmark: what the wasm hop costs per request, measured side by side in one run.

    python bench/run.py            # full run (a minute or two)
    python bench/run.py --smoke    # a few iterations: keeps the script working in CI

Prints a table for the targets of the performance issue and PASS/FAIL for each.
In-process figures drive the ASGI callable directly (no client, no sockets);
medians of many single-request timings, baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.middleware.base import BaseHTTPMiddleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from http_wasm_asgi import Guest, HttpWasmMiddleware  # noqa: E402

WAT = ROOT / "guests" / "wat"
App = Callable[..., Any]


async def hello(request: Any) -> PlainTextResponse:
    return PlainTextResponse("hello")


def starlette_app(middleware: list[Middleware] | None = None) -> Starlette:
    return Starlette(routes=[Route("/", hello)], middleware=middleware or [])


class RawHeaderMiddleware:
    """The cheapest possible Python filter: a raw ASGI middleware copying x-id."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        value = next((v for k, v in scope["headers"] if k == b"x-id"), None)

        async def send_with_header(message: Any) -> None:
            if message["type"] == "http.response.start" and value is not None:
                message["headers"] = [*message.get("headers", []), (b"x-id", value)]
            await send(message)

        await self.app(scope, receive, send_with_header)


class BaseHeaderMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        value = request.headers.get("x-id")
        if value is not None:
            response.headers["x-id"] = value
        return response


def scope_for(body: bool = False) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST" if body else "GET",
            "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"bench"), (b"x-id", b"abc123")], "client": ("127.0.0.1", 1234),
            "server": ("127.0.0.1", 80), "extensions": {}}


async def time_app(app: App, iterations: int, body: bytes = b"") -> float:
    """Median microseconds per request, one request at a time."""
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_: Any) -> None:
        return None

    scope = scope_for(bool(body))
    for _ in range(min(500, iterations)):
        await app(dict(scope), receive, send)
    samples = []
    perf = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(iterations):
            s = dict(scope)
            t0 = perf()
            await app(s, receive, send)
            samples.append(perf() - t0)
    finally:
        gc.enable()
    return statistics.median(samples) / 1000


def guest(file: str, **kw: Any) -> Guest:
    return Guest(WAT / f"{file}.wat", **kw)


def row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("PASS" if ok else "FAIL")
    print(f"| {label:<58} | {value:>14} | {target:<22} | {verdict:<4} |")


async def in_process(iterations: int) -> list[bool]:
    bare = starlette_app()
    apps: dict[str, App] = {
        "bare Starlette hello": bare,
        "raw ASGI middleware (copy x-id)": RawHeaderMiddleware(bare),
        "Starlette BaseHTTPMiddleware (copy x-id)": starlette_app([Middleware(BaseHeaderMiddleware)]),
        "http-wasm: 1 guest (WAT copy_header, 3 host calls)": HttpWasmMiddleware(bare, [guest("copy_header")]),
        "http-wasm: 3 guests (WAT copy_header x3)": HttpWasmMiddleware(
            bare, [guest("copy_header", name=f"c{i}") for i in range(3)]),
    }
    extra = _compiled_guests()
    for label, g in extra.items():
        apps[f"http-wasm: 1 guest ({label})"] = HttpWasmMiddleware(bare, [g])
    # interleave rounds so drift hits every variant alike
    rounds = 5
    times: dict[str, list[float]] = {k: [] for k in apps}
    for _ in range(rounds):
        for label, app in apps.items():
            times[label].append(await time_app(app, max(50, iterations // rounds)))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["bare Starlette hello"]
    base_mw_added = med["Starlette BaseHTTPMiddleware (copy x-id)"] - base
    print("\n### In-process, per request (median us)\n")
    row("variant", "us/request", "added vs bare")
    row("-" * 58, "-" * 14, "-" * 22)
    for label, us in med.items():
        row(label, f"{us:.2f}", f"+{us - base:.2f} us ({(us - base) / base:+.2f}x)")
    one = med["http-wasm: 1 guest (WAT copy_header, 3 host calls)"] - base
    three = med["http-wasm: 3 guests (WAT copy_header x3)"] - base
    results = [one <= 0.5 * base, one <= base_mw_added / 10, three <= 1.5 * base]
    print("\n### Targets 1-2\n")
    row("target", "measured", "goal")
    row("-" * 58, "-" * 14, "-" * 22)
    row("1a. one guest added cost / bare request", f"{one / base:.2f}x", "<= 0.5x", results[0])
    row("1b. one guest added cost / BaseHTTPMiddleware added cost", f"{one / base_mw_added:.3f}x", "<= 0.1x",
        results[1])
    row("2.  three guests added cost / bare request", f"{three / base:.2f}x", "<= 1.5x", results[2])
    return results


def _compiled_guests() -> dict[str, Guest]:
    found: dict[str, Guest] = {}
    for label, path in (("Zig headeradder", ROOT / "guests/zig/headeradder.wasm"),
                        ("Go headeradder", ROOT / "guests/go/headeradder/headeradder.wasm")):
        if path.exists():
            cfg = b"request x-a 1\nresponse x-b 2\n" if "zig" in str(path) else b'{"response": {"x-b": "2"}}'
            found[label] = Guest(path, config=cfg)
    return found


def startup() -> list[bool]:
    go_guest = ROOT / "guests/go/conformance/conformance.wasm"
    print("\n### Target 4: start-up\n")
    row("guest", "ms", "goal")
    row("-" * 58, "-" * 14, "-" * 22)
    if not go_guest.exists():
        row("Go conformance guest", "missing", "build guests first", False)
        return [False]
    with tempfile.TemporaryDirectory() as cache:
        code = ("import time,sys;t=time.perf_counter();from http_wasm_asgi import Guest;"
                f"g=Guest({str(go_guest)!r}, cache_dir={cache!r}, config=b'x');"
                "print((time.perf_counter()-t)*1000, g.info.compiled_from, g.info.compile_seconds*1000)")
        cold = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        warm = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    cold_ms, cold_from, cold_compile = cold.stdout.split()
    warm_ms, warm_from, warm_compile = warm.stdout.split()
    size = go_guest.stat().st_size / 1e6
    row(f"Go guest {size:.1f} MB, cold ({cold_from}): ready / compile", f"{float(cold_ms):.0f} / "
        f"{float(cold_compile):.0f}", "")
    ok = float(warm_compile) <= 20
    row(f"Go guest, from disk cache ({warm_from}): load module", f"{float(warm_compile):.1f}", "<= 20 ms", ok)
    row("Go guest, from disk cache: import + load + first instance", f"{float(warm_ms):.0f}", "")
    return [ok and warm_from == "disk"]


async def bodies(smoke: bool) -> list[bool]:
    from driver_program import read_all_guest  # type: ignore[import-not-found]

    size = 1024 * 1024
    body = b"x" * size
    bare = starlette_app()
    app = HttpWasmMiddleware(bare, [read_all_guest()])
    us = await time_app(app, 5 if smoke else 50, body=body)
    base = await time_app(bare, 5 if smoke else 50, body=body)
    rate = size / ((us - base) / 1e6) / 1e6 if us > base else float("inf")
    print("\n### Target 5: bodies\n")
    ok = rate >= 200
    row("guest reads a 1 MiB request body (buffer_request), MB/s", f"{rate:.0f}", ">= 200 MB/s", ok)
    return [ok]


def memory() -> None:
    import resource

    print("\n### Target 6: per-instance memory\n")
    go_guest = ROOT / "guests/go/conformance/conformance.wasm"
    if not go_guest.exists():
        row("Go guest", "missing", "")
        return
    g = Guest(go_guest, config=b"x", max_instances=64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    instances = [g.pool.try_acquire() for _ in range(63)]
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    linear = sum(i.memory_size() for i in instances if i) / len(instances) / 2**20
    row("Go guest: linear memory per instance (MiB)", f"{linear:.1f}", "")
    row("Go guest: RSS growth for 63 more instances (MiB)", f"{(after - before) / 1024:.0f}", "")
    for i in instances:
        if i:
            g.pool.release(i)


def end_to_end(smoke: bool) -> None:
    print("\n### Target 3: end to end (uvicorn, 1 worker, wrk)\n")
    if shutil.which("wrk") is None:
        print("wrk not found (apt-get install wrk): end-to-end part skipped")
        return
    duration = "2s" if smoke else "10s"
    results: dict[str, list[float]] = {"bare": [], "1 guest": [], "3 guests": []}
    for _ in range(1 if smoke else 3):
        for variant in results:
            port = _free_port()
            env = dict(os.environ, BENCH_VARIANT=variant, PYTHONPATH=str(ROOT))
            server = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.e2e_app:app", "--port", str(port),
                                       "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env)
            try:
                _wait_port(port)
                out = subprocess.run(["wrk", "-t1", "-c32", f"-d{duration}", "-H", "x-id: abc",
                                      f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True)
                rps = float(next(line.split()[1] for line in out.stdout.splitlines()
                                 if line.startswith("Requests/sec")))
                results[variant].append(rps)
            finally:
                server.terminate()
                server.wait(10)
    med = {k: statistics.median(v) for k, v in results.items()}
    row("variant", "req/s", "share of bare")
    for k, v in med.items():
        row(k, f"{v:.0f}", f"{v / med['bare']:.0%}")
    row("3a. one guest keeps >= 90% of bare", f"{med['1 guest'] / med['bare']:.0%}", ">= 90%",
        med["1 guest"] / med["bare"] >= 0.9)
    row("3b. three guests keep >= 80% of bare", f"{med['3 guests'] / med['bare']:.0%}", ">= 80%",
        med["3 guests"] / med["bare"] >= 0.8)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few iterations, to keep the script working")
    parser.add_argument("--iterations", type=int, default=20000)
    args = parser.parse_args()
    iterations = 200 if args.smoke else args.iterations
    sys.path.insert(0, str(Path(__file__).parent))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, iterations {iterations}")
    ok = asyncio.run(in_process(iterations))
    ok += startup()
    ok += asyncio.run(bodies(args.smoke))
    memory()
    end_to_end(args.smoke)
    print(f"\n{sum(ok)} of {len(ok)} in-process targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
