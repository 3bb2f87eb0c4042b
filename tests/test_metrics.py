"""Prometheus metrics: what the call paths and the pools count (on both paths), the collector an app can register, and
the listener of `serve --metrics-port` (/metrics, /healthz, /readyz), in one process and with
`--workers 2` (the figures add up, the endpoint is served once)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from http_wasm_asgi import Guest, HttpWasmMiddleware
from http_wasm_asgi.metrics import FAMILIES, GuestCollector, figures
from http_wasm_asgi.testing import echo_app
from http_wasm_asgi.wasm import stats
from http_wasm_asgi.wasm.calls import CallPath
from support import ROOT, WAT, ClientFactory, docs
from support.ops import AUTH, ZIG, scrape, total, wait_until, write_config
from support.procs import COMMAND, UVICORN, free_port, serving

HOSTILE = WAT / "hostile"


def sample(name: str, **labels: str) -> float:
    return total(figures(), name, **labels)


async def test_in_process_calls_short_circuits_and_durations_are_counted(client: ClientFactory,
                                                                         call_path: CallPath) -> None:
    p = call_path.name  # counters live for the process: each path counts under its own guest names
    auth = Guest(ZIG / "auth.wasm", name=f"count-auth-{p}", config=b"t")
    adder = Guest(ZIG / "headeradder.wasm", name=f"count-adder-{p}", config="response x-a 1")
    app = HttpWasmMiddleware(echo_app, [auth, adder])
    async with client(app) as c:
        for _ in range(5):
            assert (await c.get("/")).status_code == 401  # auth answers: a short circuit
        for _ in range(3):
            assert (await c.get("/", headers=AUTH)).status_code == 200
    calls = "http_wasm_guest_calls_total"
    assert sample(calls, guest=f"count-auth-{p}", phase="handle_request") == 8
    assert sample(calls, guest=f"count-auth-{p}", phase="handle_response") == 3  # not after it answered
    assert sample(calls, guest=f"count-adder-{p}", phase="handle_request") == 3
    assert sample("http_wasm_guest_short_circuits_total", guest=f"count-auth-{p}") == 5
    assert sample("http_wasm_guest_short_circuits_total", guest=f"count-adder-{p}") == 0
    seconds = "http_wasm_guest_call_seconds"
    assert sample(seconds + "_count", guest=f"count-auth-{p}", phase="handle_request") == 8
    assert sample(seconds + "_bucket", guest=f"count-auth-{p}", phase="handle_request", le="+Inf") == 8
    assert 0 < sample(seconds + "_sum", guest=f"count-auth-{p}", phase="handle_request") < 8 * 0.5
    buckets = [sample(seconds + "_bucket", guest=f"count-adder-{p}", phase="handle_response", le=f"{ns / 1e9:g}")
               for ns in stats.CALL_BUCKETS_NS]
    assert buckets == sorted(buckets) and buckets[-1] == 3  # cumulative, every call under 1 s
    assert sample("http_wasm_instances_created_total", guest=f"count-auth-{p}", source="snapshot") == 1
    assert sample("http_wasm_pool_instances", guest=f"count-auth-{p}", state="idle") == 1
    assert sample("http_wasm_instance_memory_bytes", guest=f"count-auth-{p}") >= 65536
    app.close()
    assert sample("http_wasm_pool_instances", guest=f"count-auth-{p}", state="idle") == 0  # a closed pool is gone
    assert sample(calls, guest=f"count-auth-{p}", phase="handle_request") == 8  # counters are not


async def test_in_process_traps_are_counted_by_cause(client: ClientFactory, call_path: CallPath) -> None:
    p = call_path.name  # counters live for the process: each path counts under its own guest names
    trap = Guest(HOSTILE / "trap_on_header.wat", name=f"count-trap-{p}")
    spin = Guest(WAT / "spin_on_header.wat", name=f"count-spin-{p}", call_timeout=0.05)
    leak = Guest(HOSTILE / "leak.wat", name=f"count-leak-{p}", memory_limit=4 * 65536)
    async with client(HttpWasmMiddleware(echo_app, [trap, spin, leak])) as c:
        assert (await c.get("/", headers={"x-trap": "request"})).status_code == 500
        assert (await c.get("/", headers={"x-spin": "forever"})).status_code == 503
        statuses = [(await c.get("/")).status_code for _ in range(4)]  # the 4th page is over memory_limit
    assert statuses[:3] == [200, 200, 200] and statuses[3] == 500
    traps = "http_wasm_guest_traps_total"
    assert sample(traps, guest=f"count-trap-{p}", phase="handle_request", cause="trap") == 1
    assert sample(traps, guest=f"count-spin-{p}", phase="handle_request", cause="cpu_limit") == 1
    assert sample(traps, guest=f"count-leak-{p}", phase="handle_request", cause="memory_limit") == 1
    # On the native path the spinning handle_request first runs synchronously: stopped after a tick, its request
    # starts over, and the instance the trap guest held for it is discarded too.
    overruns = 1 if p == "native" else 0
    assert sample("http_wasm_guest_sync_overruns_total", guest=f"count-spin-{p}") == overruns
    assert sample("http_wasm_guest_sync_overruns_total", guest=f"count-trap-{p}") == 0
    # the trapped instance was replaced, and so was the one held for a request that started over
    assert sample("http_wasm_instances_created_total", guest=f"count-trap-{p}") == 2 + overruns


async def test_in_process_pool_gauges_and_timeouts(client: ClientFactory, call_path: CallPath) -> None:
    p = call_path.name  # counters live for the process: each path counts under its own guest names
    guest = Guest(ZIG / "headeradder.wasm", name=f"count-pool-{p}", max_instances=1, pool_timeout=0.3)

    async def slow_app(scope: dict[str, object], receive: object, send: object) -> None:
        await asyncio.sleep(1.0)  # the guest's instance stays in use until handle_response
        await echo_app(scope, receive, send)

    async with client(HttpWasmMiddleware(slow_app, [guest])) as c:
        first = asyncio.ensure_future(c.get("/"))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(c.get("/"))
        # read the gauges while the second request waits (its 0.3 s pool_timeout from now), polled rather
        # than after a fixed sleep that a stalled loop could stretch past that window
        for _ in range(50):
            if sample("http_wasm_pool_waiting", guest=f"count-pool-{p}") == 1:
                break
            await asyncio.sleep(0.002)
        assert sample("http_wasm_pool_instances", guest=f"count-pool-{p}", state="in_use") == 1
        assert sample("http_wasm_pool_waiting", guest=f"count-pool-{p}") == 1
        assert (await second).status_code == 503
        assert sample("http_wasm_pool_timeouts_total", guest=f"count-pool-{p}") == 1
        assert (await first).status_code == 200
    assert sample("http_wasm_pool_instances", guest=f"count-pool-{p}", state="in_use") == 0
    guest.close()
    assert sample("http_wasm_pool_timeouts_total", guest=f"count-pool-{p}") == 1  # kept past its pool's close


def test_a_collector_on_any_registry_describes_every_family() -> None:
    registry = CollectorRegistry()
    registry.register(GuestCollector())
    text = generate_latest(registry).decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert set(FAMILIES) <= names, set(FAMILIES) - names


async def test_the_readme_example_mounts_the_metrics_in_an_app(client: ClientFactory) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import prometheus_app  # examples/prometheus_app.py, as README "Metrics" shows it
    finally:
        sys.path.remove(str(ROOT / "examples"))
    async with client(prometheus_app.app) as c:
        assert (await c.get("/", headers={"authorization": "Bearer demo-token"})).status_code == 200
        assert (await c.get("/")).status_code == 401
        text = (await c.get("/metrics/")).text  # a Mount: /metrics/
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert total(samples, "http_wasm_guest_short_circuits_total", guest="auth") >= 1
    assert total(samples, "http_wasm_guest_calls_total", guest="auth", phase="handle_request") >= 2


@pytest.mark.slow
@pytest.mark.servers
def test_the_prometheus_example_runs_as_the_readme_says() -> None:
    readme = docs.text()
    assert "`uvicorn examples.prometheus_app:app` then `curl http://127.0.0.1:8000/metrics/`" in readme
    port = free_port()
    with serving([UVICORN, "examples.prometheus_app:app", "--port", str(port)], port) as server:
        assert httpx.get(server.url + "/", headers={"authorization": "Bearer demo-token"}, timeout=5).text == "hello\n"
        text = httpx.get(server.url + "/metrics/", timeout=5).text
    assert 'http_wasm_guest_calls_total{guest="auth",phase="handle_request"} 2.0' in text  # the probe and ours
    assert "python_gc_objects_collected_total" in text  # the app's own registry: the default collectors too


@pytest.mark.slow
@pytest.mark.servers
def test_serve_metrics_listener_from_the_config(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, 1, extra=f"metrics: {{port: {metrics_port}}}\n")
    with serving([COMMAND, "serve", str(config), "--port", str(port)], port, cwd=tmp_path) as server:
        base = f"http://127.0.0.1:{metrics_port}"
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        assert httpx.get(base + "/readyz", timeout=5).status_code == 200
        assert httpx.get(base + "/other", timeout=5).status_code == 404
        before = total(scrape(base), "http_wasm_guest_calls_total", guest="auth", phase="handle_request")
        for _ in range(7):
            assert httpx.get(server.url + "/", headers=AUTH, timeout=5).headers["x-version"] == "1"
        on_app_port = httpx.get(server.url + "/metrics", headers=AUTH, timeout=5)
        assert on_app_port.json()["path"] == "/metrics"  # the app's own route: metrics never share its port
        samples = scrape(base)
    assert total(samples, "http_wasm_guest_calls_total", guest="auth", phase="handle_request") == before + 8
    assert total(samples, "http_wasm_pool_instances", guest="stamp") >= 1
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in server.output()


@pytest.mark.slow
@pytest.mark.servers
def test_serve_workers_2_add_up_and_serve_the_endpoint_once(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, 2)
    args = [COMMAND, "serve", str(config), "--port", str(port), "--workers", "2", "--metrics-port", str(metrics_port)]
    with serving(args, port, cwd=tmp_path, ready_path="/ready") as server:
        base = f"http://127.0.0.1:{metrics_port}"
        wait_until(lambda: httpx.get(base + "/readyz", timeout=5).status_code == 200, 20, "both workers ready")
        pids, requests = set(), 0
        # new connections until both workers have served one: the kernel may hand a run of accepts to one worker
        while requests < 40 or (len(pids) < 2 and requests < 1000):
            r = httpx.get(server.url + "/", headers={**AUTH, "connection": "close"}, timeout=5)
            assert r.status_code == 200
            pids.add(r.json()["pid"])
            requests += 1
        sent = requests + 1  # and the readiness probe of `serving`

        def calls() -> float:
            return total(scrape(base), "http_wasm_guest_calls_total", guest="stamp", phase="handle_request")

        wait_until(lambda: calls() == sent, 10, f"the workers' figures adding up to {sent}")
        samples = scrape(base)
        assert total(samples, "http_wasm_pool_instances", guest="auth") >= 2  # a pool in each worker
        assert total(samples, "http_wasm_guest_short_circuits_total", guest="auth") == 1  # the probe
    assert len(pids) == 2  # both workers served, and the sum above has both
