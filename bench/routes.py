"""What choosing a request's chain costs with 50 routes (issue 16's target: <= 1 us).

    python bench/routes.py           # the figures (about a minute)
    python bench/routes.py --smoke   # a few iterations: keeps the script working in CI

Times `RouteTable.match(scope)` alone (the only per-request work routing adds), best of 300
interleaved rounds of 2,000 calls per case, each call on a fresh copy of the request made just
before it (new path and header objects, as a server makes them: no hash is cached from an earlier
call; the time of making the copies, measured alone, is subtracted), beside an empty function call
measured the same way (how fast Python calls are on this machine right now):

- mixed: 50 routes as a gateway config has them (a prefix per service, some with methods, a host
  or a header, exact health paths, a wildcard host, a catch-all last); requests matching the
  first, a middle and the last specific route, and ones only the catch-all matches (after the
  wildcard-host route had to read the Host header: the costliest path).
- one segment: 50 prefixes under the same first folder (`/api/r0/` ... `/api/r49/`), matching
  the last one.
- whole request: one guest's chain alone vs the same chain chosen by the 50 routes (what routing
  adds to a whole request).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from http_wasm_asgi import Guest, HttpWasmMiddleware
from http_wasm_asgi.asgi.routes import Route, RouteTable

GOAL_US = 1.0
ROOT = Path(__file__).resolve().parent.parent


def mixed_routes() -> list[Route]:
    routes: list[Route] = [Route(path="/healthz"), Route(path="/readyz")]
    for i in range(46):
        keys: dict[str, Any] = {"path_prefix": f"/svc{i}/"}
        if i % 3 == 0:
            keys["methods"] = ["GET", "POST"]
        if i % 5 == 1:
            keys["host"] = "api.example.com"
        if i % 7 == 2:
            keys["headers"] = {"x-tenant": "blue"}
        routes.append(Route(**keys))
    routes.append(Route(host="*.internal.example.com"))
    routes.append(Route(path_prefix="/"))
    return routes


def scope(path: str, method: str = "GET", host: bytes = b"api.example.com") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path,
            "headers": [(b"host", host), (b"user-agent", b"bench"), (b"accept", b"*/*"), (b"x-tenant", b"blue")]}


def reference(request: dict[str, Any]) -> Any:
    """An empty Python function of the same shape: what any call costs on this machine."""
    return request


def fresh(request: dict[str, Any]) -> dict[str, Any]:
    """A copy with new path and header objects, as a server makes for each request (so no hash of a
    string or bytes is already cached from an earlier call)."""
    return {**request, "path": (request["path"] + "#")[:-1],
            "headers": [(bytes(bytearray(k)), bytes(bytearray(v))) for k, v in request["headers"]]}


def _round_us(function: Any, request: dict[str, Any], number: int) -> float:
    """Microseconds per call of function(fresh copy), or of making the copy alone (function None)."""
    start = time.perf_counter()
    if function is None:
        for _ in range(number):
            fresh(request)
    else:
        for _ in range(number):
            function(fresh(request))
    return (time.perf_counter() - start) / number * 1e6


def best_us(calls: list[tuple[Any, dict[str, Any]]], number: int, rounds: int) -> list[float]:
    """Per (function, request): the best time of function(fresh copy of the request) minus the best
    time of making the copy alone, rounds interleaved so drift hits all alike. The copy is made just
    before the call, as a server builds the scope just before the app sees it (in cache)."""
    best = [float("inf")] * len(calls)
    copying = {id(request): float("inf") for _, request in calls}
    for _ in range(rounds):
        for index, (function, request) in enumerate(calls):
            best[index] = min(best[index], _round_us(function, request, number))
            copying[id(request)] = min(copying[id(request)], _round_us(None, request, number))
    return [best[index] - copying[id(request)] for index, (_, request) in enumerate(calls)]


async def bare_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def request_us(app: Any, request: dict[str, Any], iterations: int) -> float:
    """Median microseconds of one whole request through `app` (ASGI called directly, no socket)."""
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_: Any) -> None:
        return None

    samples = []
    gc.disable()
    try:
        for _ in range(iterations):
            scope = dict(request)
            start = time.perf_counter_ns()
            await app(scope, receive, send)
            samples.append(time.perf_counter_ns() - start)
    finally:
        gc.enable()
    return statistics.median(samples) / 1000


async def whole_request(smoke: bool) -> tuple[float, float]:
    """A request through one guest (guests/wat/copy_header.wat): the chain alone, and the same chain
    as the last specific route of the 50 (choosing it, then the one nested call into it)."""
    guest = Guest(ROOT / "guests" / "wat" / "copy_header.wat")
    routes = [Route(guests=[guest], **{k: v for k, v in vars(r).items() if k in ("path", "path_prefix", "methods",
                                                                               "host", "headers")})
              for r in mixed_routes()]
    plain, routed = HttpWasmMiddleware(bare_app, [guest]), HttpWasmMiddleware(bare_app, routes=routes)
    request = {**scope("/svc45/x", "POST"), "query_string": b"", "raw_path": b"/svc45/x", "http_version": "1.1"}
    request["headers"] = [*request["headers"], (b"x-id", b"abc")]
    rounds, iterations = (2, 50) if smoke else (10, 5_000)
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for index, app in enumerate((plain, routed)):
            best[index] = min(best[index], await request_us(app, request, iterations))
    routed.close()
    return best[0], best[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few iterations only (figures mean nothing)")
    args = parser.parse_args()
    number, rounds = (200, 2) if args.smoke else (2_000, 300)
    mixed = mixed_routes()
    table = RouteTable([(route, index) for index, route in enumerate(mixed)], default=-1)
    one_segment = RouteTable([(Route(path_prefix=f"/api/r{i}/"), i) for i in range(50)], default=-1)
    cases = [  # (what, table, request, expected route index)
        ("mixed, first route (exact /healthz)", table, scope("/healthz"), 0),
        ("mixed, a middle route (/svc20/...)", table, scope("/svc20/orders/42"), 22),
        ("mixed, last specific route (/svc45/..., POST)", table, scope("/svc45/x", "POST"), 47),
        ("mixed, only the catch-all matches", table, scope("/static/app.js", host=b"www.example.com"), 49),
        ("mixed, only the catch-all, Host with a port", table, scope("/static/app.js", host=b"www.example.com:8443"),
         49),
        ("one segment, last of 50 (worst case)", one_segment, scope("/api/r49/items"), 49),
    ]
    for what, routes, request, expected in cases:
        got = routes.match(request)
        assert got == expected, f"{what}: matched route {got}, expected {expected}"
    figures = best_us([(routes.match, request) for _, routes, request, _ in cases]
                      + [(reference, cases[0][2])], number, rounds)
    print(f"{len(mixed)} routes; RouteTable.match(scope) per call, best of {rounds} interleaved rounds of {number:,}")
    for (what, *_), us in zip(cases, figures, strict=False):
        print(f"  {what:48} {us:6.3f} us")
    print(f"  {'(reference: an empty Python function call)':48} {figures[-1]:6.3f} us")
    worst = max(figures[:-1])
    plain, routed = asyncio.run(whole_request(args.smoke))
    print(f"whole request through one guest, median (best of interleaved rounds): the chain alone {plain:.2f} us, "
          f"as the last specific of the 50 routes {routed:.2f} us: routing adds {routed - plain:+.2f} us")
    verdict = "met" if worst <= GOAL_US else "MISSED"
    print(f"target: choosing the chain with 50 routes <= {GOAL_US} us: worst case {worst:.3f} us: {verdict}")
    return 0 if args.smoke or worst <= GOAL_US else 1


if __name__ == "__main__":
    sys.exit(main())
