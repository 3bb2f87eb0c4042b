"""What the `trace` and `bench` commands do: one request through a guest with every host call shown, and
what a guest costs (added time per request, memory per instance), measured as `bench/run.py` does."""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..asgi.middleware import HttpWasmMiddleware
from ..asgi.types import Message, Receive, Scope, Send
from ..guest import Guest, GuestConfig
from .testing import GuestClient, Result


@dataclass(frozen=True)
class RequestSpec:
    """A request from the command line: `METHOD URL [-H 'k: v'] [-d BODY]`."""

    method: str = "GET"
    target: str = "/"  # path and query
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def parse_request(words: Sequence[str]) -> RequestSpec:
    """`METHOD URL [-H 'name: value']... [-d BODY | -d @FILE]`; ValueError says what is wrong. URL is a path
    (`/a?b=1`) or `http://host/a?b=1` (its host becomes the host header)."""
    parser = _RequestParser(prog="-- METHOD URL", add_help=False)
    parser.add_argument("method", nargs="?", default="GET")
    parser.add_argument("url", nargs="?", default="/")
    parser.add_argument("-H", "--header", action="append", default=[], dest="headers")
    parser.add_argument("-d", "--data", default=None)
    args = parser.parse_args(list(words))
    parts = urlsplit(args.url)
    if not parts.path.startswith("/") and not parts.netloc:
        raise ValueError(f"URL must be a path (/a?b=1) or http://host/path, got {args.url!r}")
    headers = [("host", parts.netloc)] if parts.netloc else []
    for header in args.headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"-H takes 'name: value', got {header!r}")
        headers.append((name.strip().lower(), value.strip()))
    return RequestSpec(args.method.upper(), (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                       headers, _body(args.data))


class _RequestParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ValueError(f"the request: {message}")


def _body(data: str | None) -> bytes:
    if data is None:
        return b""
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            raise ValueError(f"-d {data}: cannot read the file: {exc.strerror or exc}") from None
    return data.encode()


# --- trace ---
def trace(guest: str, config: GuestConfig, request: RequestSpec) -> tuple[str, Result]:
    """One request through `guest` in front of the echo app: the whole story as text, and the result."""
    with GuestClient(guest, config=config) as client:
        result = client.request(request.method, request.target, headers=request.headers, body=request.body)
        loaded = client.guests[0]
        lines = [f"guest {loaded.name!r}: {loaded.info.size} bytes, snapshot "
                 f"{'yes (' + loaded.snapshot.detail + ')' if loaded.snapshot.used else 'no'}"]
        if client.init_logs or client.init_trace:
            lines.append(f"at load: {len(client.init_logs)} log line(s), {len(client.init_trace)} host call(s)")
            lines += [f"  {log}" for log in client.init_logs] + [f"  {call}" for call in client.init_trace]
    return "\n".join([*lines, result.report()]), result


# --- bench ---
@dataclass(frozen=True)
class Cost:
    """What a guest adds to a request and what its instances hold."""

    status: int
    app_us: float  # median us per request, the app alone
    chain_us: float  # median us per request, the guest in front of it
    added_us: float  # median of the per-round differences
    requests: int  # timed per variant
    linear_mib: float  # linear memory per instance (the snapshot's image included)
    image_mib: float  # the snapshot's image, mapped copy-on-write by every instance (0: no snapshot)
    rss_mib: float | None  # RSS growth per extra instance (None where /proc is missing)
    instances: int  # new instances the memory figure is measured over

    def report(self) -> str:
        shared = f"the snapshot image, {self.image_mib:.2f} MiB, shared copy-on-write" if self.image_mib \
            else "no snapshot"
        rss = f"{self.rss_mib:.3f} MiB of RSS (growth over {self.instances} more instances, each holding a " \
            "request)" if self.rss_mib is not None else \
            "RSS n/a (the guest answered the request itself: no instance was held)" if not self.instances \
            else "RSS n/a"
        return "\n".join([
            f"response: {self.status}",
            f"the app alone:       {self.app_us:8.2f} us/request (median)",
            f"with the guest:      {self.chain_us:8.2f} us/request (median)",
            f"the guest adds:      {self.added_us:8.2f} us/request (median of {self.requests} requests per "
            f"variant, interleaved rounds)",
            f"memory per instance: {self.linear_mib:.2f} MiB of linear memory ({shared})",
            f"                     {rss}"])


async def _fixed_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The app of the measurement: reads the body, answers 200 with 5 bytes."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


def _scope(request: RequestSpec) -> Scope:
    path, _, query = request.target.partition("?")
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers]
    if not any(k == b"host" for k, _ in headers):
        headers.insert(0, (b"host", b"bench"))
    if request.body:
        headers.append((b"content-length", str(len(request.body)).encode()))
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
            "scheme": "http", "path": unquote(path), "raw_path": path.encode("ascii"),
            "query_string": query.encode("ascii"), "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80), "extensions": {}}


async def time_requests(app: Any, scope: Scope, body: bytes, iterations: int) -> tuple[float, int]:
    """(median us per request, last status), one request at a time, the collector paused while sampling.

    `bench/run.py` times its in-process variants with this too, so `bench` measures as it does."""
    message = {"type": "http.request", "body": body, "more_body": False}
    status = 0

    async def receive() -> Message:
        return message

    async def send(sent: Message) -> None:
        nonlocal status
        if sent["type"] == "http.response.start":
            status = sent["status"]

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
    return statistics.median(samples) / 1000, status


async def _timings(chain: HttpWasmMiddleware, request: RequestSpec, requests: int,
                   rounds: int) -> tuple[float, float, float, int]:
    scope = _scope(request)
    per_round = max(1, requests // rounds)
    await time_requests(chain, scope, request.body, min(200, per_round))  # warm-up: instances, caches
    await time_requests(_fixed_app, scope, request.body, min(200, per_round))
    app: list[float] = []
    guest: list[float] = []
    status = 0
    for r in range(rounds):  # interleaved, alternating order: drift hits both alike
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            if which:
                us, status = await time_requests(chain, scope, request.body, per_round)
                guest.append(us)
            else:
                app.append((await time_requests(_fixed_app, scope, request.body, per_round))[0])
    added = statistics.median(g - a for g, a in zip(guest, app, strict=True))
    return statistics.median(app), statistics.median(guest), added, status


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:
        return None


async def _memory(guest: Guest, request: RequestSpec, count: int) -> tuple[float, float | None, int]:
    """(linear MiB per instance, RSS MiB per extra instance, extra instances) with `count` requests held in
    the app at once, each on an instance of its own (as bench/run.py measures a pool)."""
    gate = asyncio.Event()
    reached = 0  # requests the guest passed on: each holds its instance until the gate opens

    async def held(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal reached
        reached += 1
        await gate.wait()
        await _fixed_app(scope, receive, send)

    chain = HttpWasmMiddleware(held, [guest])
    scope = _scope(request)
    message = {"type": "http.request", "body": request.body, "more_body": False}

    async def receive() -> Message:
        return message

    async def send(_: Message) -> None:
        return None

    size, before = guest.pool.size, _rss()
    tasks = [asyncio.create_task(chain(dict(scope), receive, send)) for _ in range(count)]
    deadline = time.monotonic() + 30
    while reached < count and not all(t.done() for t in tasks) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # a guest that answers itself never holds its instance
    # A guest that answers itself holds no instance, though the pool may have grown while calls waited
    # for their slice of the event loop: then there is nothing to measure.
    after, added = _rss(), guest.pool.size - size if reached else 0
    gate.set()
    await asyncio.gather(*tasks)
    instance = guest.pool.try_acquire()
    linear = instance.memory_size() if instance is not None else 0
    if instance is not None:
        guest.pool.release(instance)
    rss = None if before is None or after is None or added < 1 else (after - before) / added / 2**20
    return linear / 2**20, rss, added


def bench(source: str, config: GuestConfig, request: RequestSpec, *, requests: int = 20000, rounds: int = 10,
          instances: int = 32) -> Cost:
    """The guest's added cost per request (in-process, against the app alone) and its memory per instance."""
    guest = Guest(source, config=config)
    chain = HttpWasmMiddleware(_fixed_app, [guest])
    try:
        app_us, chain_us, added, status = asyncio.run(_timings(chain, request, requests, rounds))
        linear, rss, instances = asyncio.run(_memory(guest, request, instances))
    finally:
        chain.close()
    return Cost(status, app_us, chain_us, added, max(1, requests // rounds) * rounds, linear,
                guest.snapshot.image_bytes / 2**20, rss, instances)
