"""Sidecar benchmark (issue 14): an upstream service hit directly vs through `http-wasm-asgi serve`.

    python bench/sidecar.py               # full run (about 4 minutes; needs `wrk`)
    python bench/sidecar.py --smoke       # one short round of everything: keeps the script working
    python bench/sidecar.py --candidates  # also the upstream clients compared (about 4 more minutes)

What runs, all on 127.0.0.1 with free ports:
- the upstream: `uvicorn examples.upstream:app` (one process, defaults, as README's sidecar section);
- the sidecar: `http-wasm-asgi serve examples/sidecar.yaml --upstream URL` (3 guests), with 1 and
  with 2 workers;
- nginx (Debian's, `make system-deps` installs it; a skip row when it is missing) in front of the
  same upstream as a reverse proxy: 1 worker, a keep-alive upstream pool, its access log on (as the
  sidecar's), a config written to a temporary folder (`nginx_config`);
- with --candidates, the same 3-guest chain in front of a minimal proxy (below) on each upstream
  client: what the choice of `proxy.py`'s client was made on.

Each variant is driven by `wrk -t1 -c32` with the example's token on `/anything`, in interleaved
rounds (order alternating) against servers that stay up, so machine drift hits all alike; a
variant's rate is the median of its rounds, the sidecar's share the median of the per-round
shares. CPU per request is the server process tree's user+system time over the requests wrk
counted. Every variant has an upstream process of its own (all alike): its CPU per request is shown
too, and TIME_WAIT counts the sockets to or from that upstream's port that entered TIME_WAIT during
the variant's runs (upstream connections closed under load: a proxy without keep-alive leaves one
per request).

Bodies: 20 MiB up (the upstream counts it) and 20 MiB down (the upstream sends it), through the
sidecar and directly, against a raw ASGI upstream in this file; median of a few transfers.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.machinery
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from benchutil import cpu_seconds, free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CONFIG = ROOT / "examples" / "sidecar.yaml"
TOKEN = "Bearer demo-token"
MiB = 1024 * 1024
BODY_MIB = 20
CANDIDATES = ("httpx", "httpx+sniffio", "httpcore", "aiohttp", "aiosonic", "pyreqwest")


# --- the candidates: the same minimal proxy on each client ------------------------------------------
# Each forwards the method, raw path and query and the headers minus hop-by-hop ones (the sidecar's
# own header preparation), streams the request body if there is one, and streams the response back.


def _prepare(scope: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bool]:
    from http_wasm_asgi.asgi.proxy import request_headers
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    target = (path + b"?" + query if query else path).decode("latin-1")
    has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request_headers(scope)]
    return target, headers, has_body


async def _body(receive: Any) -> AsyncIterator[bytes]:
    more = True
    while more:
        message = await receive()
        if message.get("body"):
            yield message["body"]
        more = message.get("more_body", False)


async def _stream_back(send: Any, status: int, headers: list[tuple[bytes, bytes]], chunks: Any) -> None:
    from http_wasm_asgi.asgi.proxy import response_headers
    await send({"type": "http.response.start", "status": status, "headers": response_headers(headers)})
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _block_sniffio() -> None:
    """As if sniffio were not installed: every import of it searches sys.path, then fails."""

    class Blocker:
        @staticmethod
        def find_spec(name: str, path: Any = None, target: Any = None) -> None:
            if name == "sniffio":
                importlib.machinery.PathFinder.find_spec(name, path)
                raise ModuleNotFoundError("No module named 'sniffio'", name=name)

    sys.modules.pop("sniffio", None)
    sys.meta_path.insert(0, Blocker())


def _httpx_proxy(upstream: str) -> Any:
    import httpx
    client = httpx.AsyncClient(base_url=upstream, trust_env=False, timeout=30,
                               limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        target, headers, has_body = _prepare(scope)
        request = client.build_request(scope["method"], upstream + target, headers=headers,
                                       content=_body(receive) if has_body else None)
        response = await client.send(request, stream=True)
        try:
            await _stream_back(send, response.status_code, response.headers.raw, response.aiter_raw())
        finally:
            await response.aclose()
    return app


def _httpcore_proxy(upstream: str) -> Any:
    import httpcore
    pool = httpcore.AsyncConnectionPool(max_connections=256, max_keepalive_connections=256)
    netloc = upstream.split("://", 1)[1]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        target, headers, has_body = _prepare(scope)
        headers.append(("host", netloc))
        async with pool.stream(scope["method"].encode(), upstream + target, headers=headers,
                               content=_body(receive) if has_body else None) as response:
            await _stream_back(send, response.status, response.headers, response.aiter_stream())
    return app


def _aiohttp_proxy(upstream: str) -> Any:
    import aiohttp
    import yarl
    session: list[aiohttp.ClientSession] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not session:
            session.append(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=0), auto_decompress=False,
                skip_auto_headers=("accept", "accept-encoding", "user-agent", "content-type")))
        target, headers, has_body = _prepare(scope)
        async with session[0].request(
                scope["method"], yarl.URL(upstream + target, encoded=True),
                headers=headers,
                data=_body(receive) if has_body else None, allow_redirects=False) as response:
            await _stream_back(send, response.status, list(response.raw_headers), response.content.iter_any())
    return app


def _aiosonic_proxy(upstream: str) -> Any:
    import aiosonic
    client = aiosonic.HTTPClient(aiosonic.TCPConnector(pool_configs={":default": {"size": 256}}))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        target, headers, has_body = _prepare(scope)
        body = b""
        if has_body:
            body = b"".join([chunk async for chunk in _body(receive)])  # no streamed request body
        response = await client.request(upstream + target, scope["method"], stream=True, data=body or None,
                                        headers=headers)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
        await _stream_back(send, response.status_code, raw, response.read_chunks())
    return app


def _pyreqwest_proxy(upstream: str) -> Any:
    from pyreqwest.client import ClientBuilder
    client: list[Any] = []

    async def chunks(reader: Any) -> AsyncIterator[bytes]:
        while (chunk := await reader.read_chunk()) is not None:
            yield bytes(chunk)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not client:
            client.append(ClientBuilder().max_connections(256).pool_max_idle_per_host(256).build())
        target, headers, has_body = _prepare(scope)
        builder = client[0].request(scope["method"], upstream + target).headers(headers)
        if has_body:
            builder = builder.body_stream(_body(receive))
        async with builder.build_streamed() as response:
            raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
            await _stream_back(send, response.status, raw, chunks(response.body_reader))
    return app


def candidate_app() -> Any:
    """uvicorn factory: the example chain in front of the minimal proxy on $SIDECAR_CANDIDATE."""
    from http_wasm_asgi import HttpWasmMiddleware
    name, upstream = os.environ["SIDECAR_CANDIDATE"], os.environ["SIDECAR_UPSTREAM"]
    if name == "httpx":
        _block_sniffio()
    build = {"httpx": _httpx_proxy, "httpx+sniffio": _httpx_proxy, "httpcore": _httpcore_proxy,
             "aiohttp": _aiohttp_proxy, "aiosonic": _aiosonic_proxy, "pyreqwest": _pyreqwest_proxy}[name]
    return HttpWasmMiddleware.from_config(CONFIG, app=build(upstream))


def _candidate_installed(name: str) -> bool:
    module = {"httpx+sniffio": "sniffio"}.get(name, name)
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# --- a raw upstream for the body figures ------------------------------------------------------------


async def body_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """POST: counts the body and answers its size; GET /N: sends N MiB in 1 MiB chunks."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["method"] == "POST":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": str(size).encode()})
        return
    mib = int(scope["path"].strip("/") or "1")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(mib * MiB).encode())]})
    for _ in range(mib):
        await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


_CHUNK = hashlib.sha256(b"chunk").digest() * (MiB // 32)


# --- nginx, the reference reverse proxy -------------------------------------------------------------


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def nginx_config(folder: Path, port: int, upstream_port: int) -> Path:
    """A reverse proxy as the sidecar is one: 1 worker, HTTP/1.1 keep-alive to the upstream, x-forwarded-*."""
    config = folder / "nginx.conf"
    config.write_text(f"""daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
""")
    return config


# --- processes, measurement ---------------------------------------------------------------------------


@contextlib.contextmanager
def server(args: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A server process (its own session, output shown if it fails to start), stopped with its workers afterwards."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            try:
                wait_port(port, proc, 60)
            except RuntimeError:
                log.seek(0)
                sys.stderr.write(log.read()[-4000:].decode(errors="replace"))
                raise
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def time_wait(port: int, within: float) -> int:
    """Sockets with `port` at either end that entered TIME_WAIT in the last `within` seconds."""
    hz, linger = 100, 60  # /proc/net/tcp counts the TIME_WAIT timer down in 1/100 s from 60 s
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                ports = {int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)}
                left = int(fields[5].split(":")[1], 16) / hz
                count += fields[3] == "06" and port in ports and left > linger - within
    return count


def wrk(port: int, seconds: float, path: str = "/anything") -> tuple[float, int, int]:
    """(requests per second, requests, errors: non-2xx/3xx responses and socket errors) of one wrk run."""
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds:g}s", "-H", f"authorization: {TOKEN}",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|connect|read|write|timeout):? (\d+)",
                                            out))
    return rate, total, errors


class Variant:
    """A server driven by wrk (the upstream itself, or a sidecar in front of its own upstream)."""

    def __init__(self, label: str, port: int, proc: subprocess.Popen[bytes], upstream_port: int,
                 upstream: subprocess.Popen[bytes]) -> None:
        self.label, self.port, self.proc = label, port, proc
        self.upstream_port, self.upstream = upstream_port, upstream
        self.rates: list[float] = []
        self.cpu_us: list[float] = []
        self.upstream_cpu_us: list[float] = []
        self.errors = 0
        self.time_wait = 0

    @property
    def direct(self) -> bool:
        return self.proc is self.upstream

    def run(self, seconds: float) -> None:
        before, upstream_before = cpu_seconds(self.proc.pid), cpu_seconds(self.upstream.pid)
        rate, total, errors = wrk(self.port, seconds)
        self.cpu_us.append((cpu_seconds(self.proc.pid) - before) / max(total, 1) * 1e6)
        self.upstream_cpu_us.append((cpu_seconds(self.upstream.pid) - upstream_before) / max(total, 1) * 1e6)
        self.rates.append(rate)
        self.errors += errors
        if not self.direct:  # wrk's own connections to a directly hit upstream end in TIME_WAIT too
            self.time_wait += time_wait(self.upstream_port, seconds)


def drive(variants: list[Variant], rounds: int, seconds: float) -> None:
    for variant in variants:
        wrk(variant.port, 1)  # warm-up: connections, first instances, allocator
    for index in range(rounds):
        for variant in variants if index % 2 == 0 else variants[::-1]:
            variant.run(seconds)
        print(f"  round {index + 1}/{rounds}: " + ", ".join(f"{v.label} {v.rates[-1]:.0f}" for v in variants),
              flush=True)


def report(variants: list[Variant]) -> None:
    direct = variants[0]
    print("\n| variant | req/s (median) | share of direct (range) | CPU us/request: front | upstream | errors "
          "| TIME_WAIT to upstream |")
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        shares = [r / d for r, d in zip(v.rates, direct.rates, strict=True)]
        share = "" if v.direct else f"{statistics.median(shares):.2f}x ({min(shares):.2f}-{max(shares):.2f})"
        front = "" if v.direct else f"{statistics.median(v.cpu_us):.0f}"
        print(f"| {v.label} | {statistics.median(v.rates):.0f} | {share} | {front} | "
              f"{statistics.median(v.upstream_cpu_us):.0f} | {v.errors} | {'' if v.direct else v.time_wait} |")


def serve_args(config: Path, port: int, upstream: str, workers: int = 1) -> list[str]:
    return [str(BIN / "http-wasm-asgi"), "serve", str(config), "--port", str(port), "--upstream", upstream,
            "--workers", str(workers)]


NGINX = "nginx (1 worker, keep-alive upstream pool)"


def throughput(rounds: int, seconds: float, candidates: bool) -> dict[str, Any]:
    """The wrk part: direct, the sidecar with 1 and 2 workers, nginx, optionally each candidate client.

    Every variant has an upstream process of its own (all alike), so TIME_WAIT and the upstream's
    CPU are the variant's own.
    """
    fronts: list[tuple[str, list[str], dict[str, str]]] = [("upstream direct", [], {})]
    for workers in (1, 2):
        fronts.append((f"sidecar, {workers} worker{'s' * (workers > 1)}", serve_args(CONFIG, 0, "", workers), {}))
    nginx = nginx_binary()
    if nginx is None:
        print("  nginx: not installed (make system-deps, or apt-get install nginx-light): skipped")
    else:
        fronts.append((NGINX, [nginx, "-p", "{folder}", "-c", "{config}", "-e", "{folder}/error.log"], {}))
    for name in CANDIDATES if candidates else ():
        if not _candidate_installed(name):
            print(f"  candidate {name}: not installed, skipped")
            continue
        fronts.append((f"candidate: {name}", [sys.executable, "-m", "uvicorn", "--factory", "--app-dir",
                                              str(ROOT / "bench"), "sidecar:candidate_app", "--port", "0"],
                       {"SIDECAR_CANDIDATE": name}))
    with contextlib.ExitStack() as stack:
        variants = [_start(stack, label, args, env) for label, args, env in fronts]
        drive(variants, rounds, seconds)
        report(variants)
    direct, one, two = variants[:3]
    by_label = {v.label: v for v in variants}
    return {"share": _share(one, direct), "share2": _share(two, direct), "errors": one.errors + two.errors,
            "rate": statistics.median(one.rates), "direct": statistics.median(direct.rates),
            "cpu": statistics.median(one.cpu_us),
            "nginx": _share(by_label[NGINX], direct) if NGINX in by_label else None}


def _start(stack: contextlib.ExitStack, label: str, args: list[str], env: dict[str, str]) -> Variant:
    """A variant's upstream, then its front (none: the upstream hit directly), both stopped by `stack`."""
    up_port = free_port()
    up = stack.enter_context(server([str(BIN / "uvicorn"), "examples.upstream:app", "--port", str(up_port)], up_port))
    if not args:
        return Variant(label, up_port, up, up_port, up)
    port, upstream = free_port(), f"http://127.0.0.1:{up_port}"
    names = {"0": str(port), "": upstream}
    if label == NGINX:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sidecar-nginx-")))
        names.update({"{folder}": str(folder), "{config}": str(nginx_config(folder, port, up_port))})
    args = [names.get(a, a).replace("{folder}", names.get("{folder}", "")) for a in args]
    proc = stack.enter_context(server(args, port, env={**env, "SIDECAR_UPSTREAM": upstream}))
    return Variant(label, port, proc, up_port, up)


def _share(variant: Variant, direct: Variant) -> float:
    """The median of the per-round shares of the direct rate."""
    return statistics.median(r / d for r, d in zip(variant.rates, direct.rates, strict=True))


def bodies(transfers: int) -> dict[str, float]:
    """MB/s for 20 MiB up and down, through the sidecar and directly (median of `transfers`)."""
    import httpx
    up_port, port = free_port(), free_port()
    results: dict[str, float] = {}
    with server([str(BIN / "uvicorn"), "--app-dir", str(ROOT / "bench"), "sidecar:body_upstream", "--port",
                 str(up_port), "--no-access-log"], up_port), \
            server(serve_args(CONFIG, port, f"http://127.0.0.1:{up_port}"), port), \
            httpx.Client(timeout=60, headers={"authorization": TOKEN}) as client:
        for label, target in (("direct", up_port), ("sidecar", port)):
            up, down = [], []
            for _ in range(transfers):
                start = time.perf_counter()
                r = client.post(f"http://127.0.0.1:{target}/", content=(_CHUNK for _ in range(BODY_MIB)))
                up.append(time.perf_counter() - start)
                assert r.text == str(BODY_MIB * MiB), r.text
                start, size = time.perf_counter(), 0
                with client.stream("GET", f"http://127.0.0.1:{target}/{BODY_MIB}") as r:
                    for chunk in r.iter_raw():
                        size += len(chunk)
                down.append(time.perf_counter() - start)
                assert size == BODY_MIB * MiB, size
            results[f"{label} up"] = BODY_MIB * MiB / statistics.median(up) / 1e6
            results[f"{label} down"] = BODY_MIB * MiB / statistics.median(down) / 1e6
    print(f"\n| {BODY_MIB} MiB body (median of {transfers}) | direct MB/s | through the sidecar MB/s |")
    print("|---|---|---|")
    for way in ("up", "down"):
        print(f"| {way} | {results[f'direct {way}']:.0f} | {results[f'sidecar {way}']:.0f} |")
    return results


Check = tuple[str, str, str, bool]  # label, measured, goal, met: as bench/run.py's Report.check takes them


def checks(smoke: bool, rounds: int | None = None, seconds: float | None = None,
           candidates: bool = False) -> list[Check]:
    """Run everything (tables printed on the way); the targets of issues 14 and 28 with their verdicts."""
    rounds = rounds or (1 if smoke else 5)
    seconds = seconds or (1 if smoke else 8)
    out: list[Check] = []
    if shutil.which("wrk") is None:
        print("\nwrk not found (apt-get install wrk): the sidecar's req/s part is skipped")
    else:
        print(f"\nSidecar vs direct (issues 14, 28): wrk -t1 -c32 -d{seconds:g}s, {rounds} interleaved rounds",
              flush=True)
        got = throughput(rounds, seconds, candidates)
        nginx = "nginx not installed" if got["nginx"] is None else f"nginx in the same run: {got['nginx']:.2f}x"
        out.append((f"sidecar keeps, 3 guests, 1 worker ({got['rate']:.0f} vs {got['direct']:.0f} req/s; "
                    f"{got['cpu']:.0f} us CPU/req; {nginx})", f"{got['share']:.2f}x", ">= 0.60x of direct",
                    got["share"] >= 0.60))
        out.append((f"sidecar errors under load (1 and 2 workers; 2 workers keep {got['share2']:.2f}x)",
                    str(got["errors"]), "0", got["errors"] == 0))
    mbps = bodies(2 if smoke else 5)
    slowest = min(mbps["sidecar up"], mbps["sidecar down"])
    out.append((f"{BODY_MIB} MiB bodies through the sidecar (up {mbps['sidecar up']:.0f}, down "
                f"{mbps['sidecar down']:.0f} MB/s)", f"{slowest:.0f} MB/s", ">= 200 MB/s", slowest >= 200))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one short round of everything")
    parser.add_argument("--candidates", action="store_true", help="also compare the upstream clients")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved wrk rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=None, help="wrk duration per run (default 8)")
    args = parser.parse_args()
    results = checks(args.smoke, args.rounds, args.seconds, args.candidates)
    print()
    for label, value, goal, ok in results:
        print(f"| {label} | {value} | {goal} | {'met' if ok else 'MISSED'} |")
    if args.smoke:
        print("(smoke run: figures are not meaningful)")
    return 0 if args.smoke or all(ok for *_, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
