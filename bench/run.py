"""Benchmark: what the wasm hop costs, measured side by side in one run, against the targets of issues 5,
10 (serve --workers), 12 (heavy guests, bench/heavy.py), 13 (cooperative calls, bench/cooperative.py) and 14
(the sidecar, bench/sidecar.py).

    python bench/run.py            # full run (about 20 minutes; the end-to-end parts need `wrk`)
    python bench/run.py --smoke    # a few iterations of everything: keeps the script working in CI

Prints a table per target and PASS/FAIL for each, then a summary; the full run exits 1 when a
target is missed. In-process figures drive the ASGI callable directly (no client, no sockets):
medians of single-request timings, every variant measured in interleaved rounds of the same
run. End-to-end figures start real uvicorn servers (one worker) and drive them with wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from benchutil import CLIENT_CPU, SERVER_CPU, cpu_split, free_port, on_cpu, wait_port, wrk_seconds  # noqa: E402
from e2e_app import RawHeaderMiddleware  # noqa: E402  # the cheapest Python filter, also served end to end
from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.middleware.base import BaseHTTPMiddleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from http_wasm_asgi import Guest, HttpWasmMiddleware, _native  # noqa: E402
from http_wasm_asgi.devkit.devtools import time_requests  # noqa: E402
from http_wasm_asgi.wasm import calls, capi  # noqa: E402

App = Callable[..., Any]

# The filter of targets 1-3, one per guest language: read the request header x-id in handle_request
# and set it as a response header, read the status in handle_response (3 host calls per request).
COPY_HEADER = {
    "WAT": ROOT / "guests" / "wat" / "copy_header.wat",
    "Zig": ROOT / "guests" / "zig" / "copyheader.wasm",
    "Go": ROOT / "guests" / "go" / "copyheader" / "copyheader.wasm",
}
# Target 4's "2 MB Go guest" (the conformance guest), else the benchmark's own Go guest.
GO_STARTUP = [ROOT / "guests" / "go" / "conformance" / "conformance.wasm", COPY_HEADER["Go"]]
# Target 6: the pool of 64 is stated for this Go guest (bench/README.md, closing note).
POOL_RSS_LIMIT_MIB = 128  # a pool of 64 Go guest instances stays within this RSS (measured 88 MiB)


async def hello(request: Any) -> PlainTextResponse:
    return PlainTextResponse("hello")


def starlette_app(middleware: list[Middleware] | None = None) -> Starlette:
    return Starlette(routes=[Route("/", hello)], middleware=middleware or [])


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
    """Median microseconds per request, one request at a time (collector paused while sampling)."""
    scope = scope_for(bool(body))
    await time_requests(app, scope, body, min(200, iterations))  # warm-up
    return (await time_requests(app, scope, body, iterations))[0]


def guest(file: str, **kw: Any) -> Guest:
    return Guest(ROOT / "guests" / "wat" / f"{file}.wat", **kw)


class Report:
    def __init__(self) -> None:
        self.verdicts: list[tuple[str, bool]] = []

    @staticmethod
    def header(title: str, *columns: str) -> None:
        print(f"\n### {title}\n")
        Report.row(*columns)
        Report.row(*("-" * w for w in (60, 14, 24)), "-" * 4)

    @staticmethod
    def row(label: str, value: str = "", target: str = "", verdict: str = "") -> None:
        print(f"| {label:<60} | {value:>14} | {target:<24} | {verdict:<4} |")

    def check(self, label: str, value: str, target: str, ok: bool) -> None:
        self.verdicts.append((label, ok))
        self.row(label, value, target, "PASS" if ok else "FAIL")

    def skip(self, label: str, why: str) -> None:
        self.row(label, "skipped", why)


# --- targets 1 and 2: in-process --------------------------------------------------------------------
async def in_process(report: Report, iterations: int, rounds: int) -> None:
    bare = starlette_app()
    apps: dict[str, App] = {
        "bare Starlette hello": bare,
        "raw ASGI middleware (copy x-id)": RawHeaderMiddleware(bare),
        "Starlette BaseHTTPMiddleware (copy x-id)": starlette_app([Middleware(BaseHeaderMiddleware)]),
    }
    chains: dict[str, tuple[str, str]] = {}  # language -> (1-guest label, 3-guest label)
    for lang, path in COPY_HEADER.items():
        if not path.exists():
            continue
        one, three = f"http-wasm: 1 guest, {lang} copy x-id", f"http-wasm: 3 guests, {lang} copy x-id"
        apps[one] = HttpWasmMiddleware(bare, [Guest(path, name=f"{lang}-copy")])
        apps[three] = HttpWasmMiddleware(bare, [Guest(path, name=f"{lang}-copy{i}") for i in range(3)])
        chains[lang] = (one, three)
    # Host-call tracing (issue 18) is chosen at link time: off by default (the host functions themselves), and
    # when on, Python wrappers around them. Same run: the default, explicitly off, and on (records discarded).
    if COPY_HEADER["WAT"].exists():
        apps[TRACE_OFF] = HttpWasmMiddleware(bare, [Guest(COPY_HEADER["WAT"], name="WAT-off", trace=False)])
        apps[TRACE_ON] = HttpWasmMiddleware(bare, [Guest(COPY_HEADER["WAT"], name="WAT-on", trace=lambda _: None)])
    times: dict[str, list[float]] = {k: [] for k in apps}
    per_round = max(50, iterations // rounds)
    for r in range(rounds):  # interleaved, and in alternating order, so drift hits every variant alike
        for label in (list(apps) if r % 2 == 0 else list(reversed(apps))):
            times[label].append(await time_app(apps[label], per_round))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["bare Starlette hello"]
    base_mw_added = med["Starlette BaseHTTPMiddleware (copy x-id)"] - base
    report.header(f"In-process, per request (median of {per_round * rounds} calls, {rounds} interleaved rounds)",
                  "variant", "us/request", "added vs bare")
    for label, us in med.items():
        report.row(label, f"{us:.2f}", "" if label == "bare Starlette hello" else
                   f"+{us - base:.2f} us ({(us - base) / base:.2f}x)")
    report.header("Targets 1-2: added cost, in-process", "target", "measured", "goal", "")
    for lang, (one_label, three_label) in chains.items():
        one, three = med[one_label] - base, med[three_label] - base
        report.check(f"1a. {lang}: one guest, added / bare request", f"{one / base:.2f}x", "<= 0.30x",
                     one <= 0.30 * base)
        report.check(f"1b. {lang}: one guest, added / BaseHTTPMiddleware added", f"{one / base_mw_added:.3f}x",
                     "<= 0.1x", one <= base_mw_added / 10)
        report.check(f"2.  {lang}: three guests, added / bare request", f"{three / base:.2f}x", "<= 1.5x",
                     three <= 1.5 * base)
    for lang, path in COPY_HEADER.items():
        if lang not in chains:
            report.skip(f"{lang} guest", f"missing {path.relative_to(ROOT)}")
    if "WAT" in chains:
        tracing(report, {k: times[k] for k in ("bare Starlette hello", chains["WAT"][0], TRACE_OFF, TRACE_ON)})
        metrics_cost(report)


TRACE_OFF = "http-wasm: 1 guest, WAT copy x-id, trace=False"
TRACE_ON = "http-wasm: 1 guest, WAT copy x-id, traced"


def uncounted(guest: Guest) -> Guest:
    """The guest with its call counters detached (metrics off): what counting costs is the difference."""
    guest.module.stats = None
    for instance in guest.pool.instances():
        instance.set_stats(None)
    return guest


def metrics_cost(report: Report) -> None:
    """Issue 15: the call path counts every call (calls, a duration histogram, short circuits) for the
    Prometheus metrics; nothing is done per request in Python. Same run: one guest's two calls of a request,
    counted vs counters detached (this thread's CPU time: whole-request medians on a shared machine vary by
    more than what is measured here)."""
    on, off, added = _call_pair_us()
    report.header("Metrics (issue 15): one WAT guest's call pair, counted vs not, same run", "variant",
                  "us of CPU", "")
    report.row("handle_request + handle_response, counted (default)", f"{on:.3f}", "best round")
    report.row("the same, counters detached", f"{off:.3f}", "best round")
    report.check("M. metrics on: added per guest per request", f"{added:+.3f} us", "<= 0.5 us (median pair)",
                 added <= 0.5)
    report.row("one scrape of /metrics (every guest of this process)", f"{_scrape_ms():.2f} ms", "at scrape time only")


def _call_pair_us(rounds: int = 41, n: int = 3000) -> tuple[float, float, float]:
    """The guest's two calls of a request (the Core's request() and response(), as the middleware
    makes them), counters attached vs detached, in back-to-back pairs of rounds (alternating which goes
    first); us of this thread's CPU per pair: the best round of each, and the median of the pairs'
    differences (robust to the machine's drift, which a difference of two medians is not)."""
    counted = Guest(COPY_HEADER["WAT"], name="WAT-pair-counted")
    detached = uncounted(Guest(COPY_HEADER["WAT"], name="WAT-pair-detached"))
    per: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(rounds):
        for label, g in (("on", counted), ("off", detached)) if r % 2 == 0 else (("off", detached), ("on", counted)):
            per[label].append(_pair_round(g, n))
    counted.close()
    detached.close()
    diffs = [on - off for on, off in zip(per["on"], per["off"], strict=True)]
    return min(per["on"]), min(per["off"]), statistics.median(diffs)


def _pair_round(g: Guest, n: int) -> float:
    from http_wasm_asgi.asgi.flow import exchange_from_scope

    instance = g.pool.try_acquire()
    assert instance is not None
    features = g.context.features
    clock = time.thread_time_ns  # this thread's CPU time: a round the machine preempted costs nothing
    gc.disable()
    try:
        t0 = clock()
        for _ in range(n):
            ctx_next = instance.request(exchange_from_scope(scope_for(), 1 << 20), features)
            instance.response(ctx_next >> 32, False)
        return (clock() - t0) / n / 1000
    finally:
        gc.enable()
        g.pool.release(instance)


def _scrape_ms() -> float:
    from prometheus_client import generate_latest

    from http_wasm_asgi.metrics import registry

    collector_registry = registry()
    samples = []
    for _ in range(20):
        t0 = time.perf_counter()
        generate_latest(collector_registry)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def tracing(report: Report, times: dict[str, list[float]]) -> None:
    """Issue 18: tracing costs nothing when off. The default links the same host functions as trace=False (the
    native path's native ones): what it adds over trace=False is noise, far below what tracing costs when on."""
    bare, default, off, on = (statistics.median(ts) for ts in times.values())
    added = {"default": default - bare, "off": off - bare, "on": on - bare}
    report.header("Host-call tracing (issue 18): 1 WAT guest, added cost per request, same run", "variant",
                  "added us", "")
    native = sorted(_native.native_host_functions() & {"get_header_values", "set_header_value", "get_status_code"})
    report.row("default Guest(): tracing off", f"+{added['default']:.2f}", f"native: {len(native)} of 3 host fns")
    report.row("Guest(trace=False)", f"+{added['off']:.2f}", f"default/this: {default / off:.2f}x")
    report.row("Guest(trace=callback): its 3 host calls traced", f"+{added['on']:.2f}", "Python wrappers")
    gap = (added["default"] - added["off"]) / max(added["on"] - added["off"], 1e-9)
    report.check("T. tracing off: default minus trace=False, / cost of tracing", f"{gap:+.2f}",
                 "<= 0.1 (noise, vs on)", gap <= 0.1)


# --- target 3: end to end ---------------------------------------------------------------------------
E2E_SERVERS = ("uvicorn", "granian")
E2E_VARIANTS = ("bare", "raw", "1 guest", "3 guests")
E2E_GOALS = {"1 guest": (0.92, "Go host: 0.83x"), "3 guests": (0.88, "Go host: 0.69x")}


class Drive(NamedTuple):
    """One wrk run against a fresh server: its rate, the server's CPU per request (all its threads) split
    into user and kernel time, and how often per request the client (wrk) went to sleep waiting for it."""

    rate: float
    user_us: float
    kernel_us: float
    client_sleeps: float

    @property
    def cpu_us(self) -> float:
        return self.user_us + self.kernel_us


def end_to_end(report: Report, smoke: bool, rounds: int, seconds: int) -> None:
    """Target 3: Starlette "hello" behind 1 and 3 copy-header guests, on uvicorn and on Granian (one worker
    each), against the bare app and a raw Python middleware doing the guest's work, in one run.

    The client runs on one core and the server, with all its threads, on another (`benchutil.on_cpu`).
    A second table splits the server's CPU per request into user and kernel time, beside the client's sleeps
    per request: the kernel time of a loopback server is mostly its sends waking the client, which sleeps
    more often the slower the server answers, so any added cost also adds kernel time."""
    if shutil.which("wrk") is None:
        report.header("Target 3: end to end", "variant", "req/s (median)", "share of bare; CPU/req")
        report.skip("end to end", "wrk not found")
        print("\nwrk not found (apt-get install wrk): end-to-end part skipped")
        return
    labels = {"bare": "bare Starlette hello", "raw": "raw Python middleware (copy x-id)"}
    for server in E2E_SERVERS:
        runs: dict[str, list[Drive]] = {v: [] for v in E2E_VARIANTS}
        shares: dict[str, list[float]] = {v: [] for v in E2E_VARIANTS}
        for r in range(rounds):
            for variant in (E2E_VARIANTS if r % 2 == 0 else tuple(reversed(E2E_VARIANTS))):
                runs[variant].append(_serve_and_drive(server, variant, seconds))
            for variant in E2E_VARIANTS:  # the share within each round: both sides saw the same machine
                shares[variant].append(runs[variant][-1].rate / runs["bare"][-1].rate)

        placed = ", wrk and server on a core each" if on_cpu(SERVER_CPU) else ""
        report.header(f"Target 3: end to end on {server} (1 worker{placed}, wrk -t1 -c32 -d{seconds}s, {rounds} "
                      "interleaved rounds)", "variant", "req/s (median)", "share of bare; CPU/req")
        for variant in E2E_VARIANTS:
            report.row(labels.get(variant, f"{variant} (WAT copy x-id)"), f"{_median(runs[variant], 'rate'):.0f}",
                       f"{statistics.median(shares[variant]):.0%}; {_median(runs[variant], 'cpu_us'):.0f} us")
        report.header(f"Where the server's time goes on {server} (medians, per request)", "variant",
                      "user; kernel us", "client sleeps")
        for variant in E2E_VARIANTS:
            report.row(labels.get(variant, f"{variant} (WAT copy x-id)"),
                       f"{_median(runs[variant], 'user_us'):.1f}; {_median(runs[variant], 'kernel_us'):.1f}",
                       f"{_median(runs[variant], 'client_sleeps'):.2f}")
        for variant, (goal, anchor) in E2E_GOALS.items():
            share = statistics.median(shares[variant])
            added = _median(runs[variant], "cpu_us") - _median(runs["bare"], "cpu_us")
            report.check(f"3{'a' if variant == '1 guest' else 'b'}. {server}: {variant} keep (+{added:.1f} us CPU/req)",
                         f"{share:.2f}x", f">= {goal:.2f}x ({anchor})", share >= goal)


def _median(drives: list[Drive], field: str) -> float:
    return statistics.median(getattr(drive, field) for drive in drives)


def _serve_and_drive(server: str, variant: str, seconds: int) -> Drive:
    """One wrk run against a fresh server of this variant."""
    port = free_port()
    env = dict(os.environ, BENCH_VARIANT=variant, PYTHONPATH=str(ROOT))
    if server == "granian":
        command = [str(Path(sys.executable).parent / "granian"), "--interface", "asgi", "--host", "127.0.0.1",
                   "--port", str(port), "--workers", "1", "--http", "1", "--log-level", "warning",
                   "--no-access-log", "bench.e2e_app:app"]
    else:
        command = [sys.executable, "-m", "uvicorn", "bench.e2e_app:app", "--port", str(port), "--log-level",
                   "warning", "--no-access-log"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, **on_cpu(SERVER_CPU))
    try:
        wait_port(port, timeout=20)
        _wrk(port, 1)  # warm-up: caches, first instances, allocator
        user0, kernel0 = cpu_split(process.pid)
        out, sleeps = _wrk(port, seconds)
        user1, kernel1 = cpu_split(process.pid)
        rate = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
        total = max(next(int(line.split()[0]) for line in out.splitlines() if "requests in" in line), 1)
        return Drive(rate, (user1 - user0) / total * 1e6, (kernel1 - kernel0) / total * 1e6, sleeps / total)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


def _wrk(port: int, seconds: int) -> tuple[str, int]:
    """wrk's report and its voluntary context switches (the times it slept waiting for the server)."""
    client = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{seconds}s", "-H", "x-id: abc", f"http://127.0.0.1:{port}/"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **on_cpu(CLIENT_CPU))
    assert client.stdout is not None
    out = client.stdout.read()
    client.stdout.close()
    _, status, usage = os.wait4(client.pid, 0)  # wait4: the rusage of this child alone
    client.returncode = os.waitstatus_to_exitcode(status)
    if client.returncode != 0:
        raise RuntimeError(f"wrk exited with {client.returncode}: {out.strip()}")
    return out, usage.ru_nvcsw


# --- target 3c: serve --workers N -------------------------------------------------------------------
def workers_scaling(report: Report, smoke: bool, rounds: int, seconds: int) -> None:
    """`http-wasm-asgi serve examples/chain.yaml --workers N`: N=2 must not be slower than N=1 (issue 10)."""
    report.header(f"Target 3c: serve --workers (examples/chain.yaml, 5 guests; wrk -t2 -c64 -d{seconds}s and "
                  f"-c1, {rounds} interleaved rounds)", "workers", "req/s c=64 (median)", "p50 at c=1")
    if shutil.which("wrk") is None:
        report.skip("serve --workers", "wrk not found")
        return
    rps: dict[int, list[float]] = {1: [], 2: []}
    p50: dict[int, list[float]] = {1: [], 2: []}
    for r in range(rounds):
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            got, latency = _serve_chain(workers, seconds)
            rps[workers].append(got)
            p50[workers].append(latency)
    for workers in (1, 2):
        report.row(f"--workers {workers}", f"{statistics.median(rps[workers]):.0f}",
                   f"{statistics.median(p50[workers]) * 1000:.2f} ms")
    one, two = statistics.median(rps[1]), statistics.median(rps[2])
    report.check("3c. --workers 2 throughput at c=64 vs --workers 1", f"{two / one:.2f}x", ">= 1.0x",
                 two >= one)
    latency = statistics.median(p50[2])
    report.check("3d. --workers 2 keep-alive p50 at c=1", f"{latency * 1000:.2f} ms", "<= 5 ms", latency <= 0.005)


def _serve_chain(workers: int, seconds: int) -> tuple[float, float]:
    """(req/s at c=64, p50 seconds at c=1) of the example chain served by the command."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "http-wasm-asgi"), "serve", "examples/chain.yaml",
                               "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
                              cwd=ROOT, start_new_session=True)
    auth = ["-H", "authorization: Bearer demo-token"]
    url = f"http://127.0.0.1:{port}/whoami"
    try:
        wait_port(port, timeout=20)
        subprocess.run(["wrk", "-t2", "-c64", "-d1s", *auth, url], capture_output=True, check=True)  # warm-up
        out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", *auth, url], capture_output=True, text=True,
                             check=True).stdout
        rate = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
        out = subprocess.run(["wrk", "-t1", "-c1", f"-d{max(1, seconds // 2)}s", "--latency", *auth, url],
                             capture_output=True, text=True, check=True).stdout
        median = next(line.split()[1] for line in out.splitlines() if line.strip().startswith("50%"))
        return rate, wrk_seconds(median)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)


# --- target 4: start-up -----------------------------------------------------------------------------
_STARTUP = """
import json, sys, time
t = time.perf_counter()
from http_wasm_asgi import Guest
imported = time.perf_counter()
g = Guest(sys.argv[1], cache_dir=sys.argv[2], config=b"x")
ready = time.perf_counter()
print(json.dumps({"import_ms": (imported - t) * 1000, "ready_ms": (ready - imported) * 1000,
                  "from": g.info.compiled_from, "load_ms": g.info.compile_seconds * 1000}))
"""


def startup(report: Report, smoke: bool) -> None:
    report.header("Target 4: start-up (fresh processes)", "guest", "ms", "goal")
    path = next((p for p in GO_STARTUP if p.exists()), None)
    if path is None:
        report.skip("Go guest", "missing (build the guests)")
        report.verdicts.append(("4. Go guest start-up", False))
        return

    def run(cache: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-c", _STARTUP, str(path), cache], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout
        return dict(json.loads(out))

    size = path.stat().st_size / 1e6
    with tempfile.TemporaryDirectory() as cache:
        cold = run(cache)
        warm = [run(cache) for _ in range(3 if smoke else 7)]
    ready = statistics.median(w["ready_ms"] for w in warm)
    report.row(f"Go guest ({path.parent.name}, {size:.1f} MB) cold: compile", f"{cold['load_ms']:.0f}",
               f"({cold['from']})")
    load = statistics.median(w["load_ms"] for w in warm)
    report.row("  from the disk cache: load the compiled module", f"{load:.1f}")
    report.check("4a. from the disk cache: Guest() ready (+link, 1st instance)", f"{ready:.1f}", "<= 20 ms",
                 ready <= 20 and all(w["from"] == "disk" for w in warm))
    report.row("  (importing http_wasm_asgi itself, once per process)", f"{warm[0]['import_ms']:.0f}")
    workers = 2 if smoke else 4
    with tempfile.TemporaryDirectory() as cache:  # N workers start together on an empty cache
        procs = [subprocess.Popen([sys.executable, "-c", _STARTUP, str(path), cache], stdout=subprocess.PIPE,
                                  text=True, cwd=ROOT) for _ in range(workers)]
        sources = [json.loads(p.communicate()[0])["from"] for p in procs]
    compiled = sources.count("compiled")
    report.check(f"4b. {workers} workers start together: compilations", str(compiled), "1 (the others: disk)",
                 compiled == 1)


# --- target 5: bodies -------------------------------------------------------------------------------
async def bodies(report: Report, smoke: bool) -> None:
    from driver_program import read_all_guest  # type: ignore[import-not-found]

    report.header("Target 5: bodies", "measure", "value", "goal")
    size = 1024 * 1024
    body = b"x" * size
    bare = starlette_app()
    app = HttpWasmMiddleware(bare, [read_all_guest()])
    n = 5 if smoke else 50
    us = await time_app(app, n, body=body)
    base = await time_app(bare, n, body=body)
    rate = size / ((us - base) / 1e6) / 1e6 if us > base else float("inf")
    report.check("5a. guest reads a 1 MiB request body (buffer_request)", f"{rate:.0f} MB/s", ">= 200 MB/s",
                 rate >= 200)
    small, large = (2, 8) if smoke else (4, 32)
    peaks = {mib: await _streaming_peak(mib) for mib in (small, large)}
    grew = round((peaks[large] - peaks[small]) / 2**20, 2) + 0.0  # no "-0.00"
    for mib in (small, large):
        report.row(f"  unbuffered, 3 guests, {mib} MiB each way: peak traced memory", f"{peaks[mib] / 1024:.1f} KiB")
    report.check(f"5b. streaming: peak growth from {small} to {large} MiB bodies", f"{grew:+.2f} MiB",
                 "< 1 MiB (flat)", grew < 1)


async def _streaming_peak(mib: int) -> int:
    """Peak traced allocation while mib MiB stream in and out through 3 observing, unbuffered guests."""
    import tracemalloc

    chunk = b"x" * 65536
    chunks = mib * 16

    async def app(scope: Any, receive: Any, send: Any) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    wrapped = HttpWasmMiddleware(app, [guest("copy_header", name=f"s{i}") for i in range(3)])
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        sent += 1
        return {"type": "http.request", "body": chunk, "more_body": sent < chunks}

    async def send(message: Any) -> None:
        return None

    tracemalloc.start()
    try:
        await wrapped(scope_for(body=True), receive, send)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- target 6: memory -------------------------------------------------------------------------------
_POOL = """
import asyncio, json, sys
from http_wasm_asgi import Guest, HttpWasmMiddleware
from http_wasm_asgi.wasm import calls
from http_wasm_asgi.wasm import capi

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

async def main(path, n, cache):
    before = rss()
    g = Guest(path, name="pool", max_instances=n, cache_dir=cache)
    one = rss()
    gate = asyncio.Event()
    async def app(scope, receive, send):
        await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    mw = HttpWasmMiddleware(app, [g])
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(m):
        pass
    scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": [(b"x-id", b"abc")], "http_version": "1.1"}
    tasks = [asyncio.create_task(mw(dict(scope), receive, send)) for _ in range(n)]
    while g.pool.size < n:
        await asyncio.sleep(0.01)
    full = rss()
    gate.set()
    await asyncio.gather(*tasks)
    inst = g.pool.try_acquire()
    print(json.dumps({"guest_and_first": one - before, "pool": full - one, "n": g.pool.size,
                      "linear": inst.memory_size()}))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


def memory(report: Report, smoke: bool) -> None:
    n = 8 if smoke else 64
    report.header(f"Target 6: memory, a pool of {n} instances (all in use at once)", "guest", "MiB", "goal")
    for label, path in (("WAT copy x-id", COPY_HEADER["WAT"]), ("Go copy x-id", COPY_HEADER["Go"])):
        if not path.exists():
            report.skip(label, f"missing {path.relative_to(ROOT)}")
            continue
        with tempfile.TemporaryDirectory() as cache:  # compiled by one process, loaded by the measured one
            subprocess.run([sys.executable, "-c", "import sys; from http_wasm_asgi import Guest; "
                            "Guest(sys.argv[1], cache_dir=sys.argv[2])", str(path), cache], check=True, cwd=ROOT)
            out = subprocess.run([sys.executable, "-c", _POOL, str(path), str(n), cache], capture_output=True,
                                 text=True, check=True, cwd=ROOT).stdout
        got = json.loads(out)
        per = got["pool"] / (n - 1) / 2**20
        first = got["guest_and_first"] / 2**20
        report.row(f"{label}: linear memory per instance", f"{got['linear'] / 2**20:.2f}")
        report.row(f"{label}: RSS per instance (pool growth / {n - 1})", f"{per:.2f}")
        report.row(f"{label}: RSS of the module (disk cache) + 1st instance", f"{first:.1f}")
        if label.startswith("Go"):
            pool = first + per * 63  # measured with 64 in the full run; extrapolated from n in a smoke run
            report.check("6. Go guest: RSS of a pool of 64" + ("" if n == 64 else " (extrapolated)"),
                         f"{pool:.0f}", f"<= {POOL_RSS_LIMIT_MIB} MiB", pool <= POOL_RSS_LIMIT_MIB)
    if not COPY_HEADER["Go"].exists():
        report.verdicts.append(("6. Go guest pool memory (guest missing)", False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few iterations of everything")
    parser.add_argument("--iterations", type=int, default=20000, help="in-process calls per variant")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (in-process and end to end)")
    parser.add_argument("--seconds", type=int, default=None, help="wrk duration per end-to-end run")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args()
    smoke = args.smoke
    iterations = 300 if smoke else args.iterations
    rounds = args.rounds or (1 if smoke else 5)
    report = Report()
    print(f"python {sys.version.split()[0]}, wasmtime {capi.wasmtime_version()}, {os.cpu_count()} cpus, "
          f"native path {'on' if calls.NATIVE_PATH is not None else 'OFF (Python path)'}")
    asyncio.run(in_process(report, iterations, 3 if smoke else 10))
    if args.no_e2e:
        report.skip("end to end", "--no-e2e")
    else:
        end_to_end(report, smoke, rounds, args.seconds or (2 if smoke else 10))
        workers_scaling(report, smoke, 1 if smoke else 3, args.seconds or (2 if smoke else 5))
        import sidecar  # bench/sidecar.py (issue 14): the sidecar vs its upstream, 20 MiB bodies through it
        sidecar_checks = sidecar.checks(smoke)
        report.header("Sidecar (issue 14): bench/sidecar.py", "target", "measured", "goal", "")
        for label, value, goal, ok in sidecar_checks:
            report.check(label, value, goal, ok)
        import heavy  # bench/heavy.py (issue 12): the WAF guest behind a 20 ms app, cold starts (--smoke: 100 rules)
        heavy_checks = heavy.checks(smoke)
        report.header("Heavy guests (issue 12): bench/heavy.py", "target", "measured", "goal", "")
        for label, value, goal, ok in heavy_checks:
            report.check(label, value, goal, ok)
        import cooperative  # bench/cooperative.py (issue 13): 2 spinning requests/s vs normal traffic; per call
        cooperative_checks = cooperative.checks(smoke)
        report.header("Cooperative calls (issue 13): bench/cooperative.py", "target", "measured", "goal", "")
        for label, value, goal, ok in cooperative_checks:
            report.check(label, value, goal, ok)
    startup(report, smoke)
    asyncio.run(bodies(report, smoke))
    memory(report, smoke)
    met = sum(ok for _, ok in report.verdicts)
    print(f"\n{met} of {len(report.verdicts)} targets met" + (" (smoke run: figures are not meaningful)"
                                                             if smoke else ""))
    for label, ok in report.verdicts:
        if not ok:
            print(f"  not met: {label}")
    return 0 if smoke or met == len(report.verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
