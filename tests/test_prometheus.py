"""A real Prometheus server (the Debian package, `make system-deps`) scrapes `serve --workers 2
--metrics-port`: PromQL over what it stored matches the requests the test sent."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from support.ops import AUTH, wait_until, write_config
from support.procs import COMMAND, free_port, serving

pytestmark = [pytest.mark.slow, pytest.mark.servers]  # a prometheus daemon and `serve --workers 2`

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def query(base: str, promql: str) -> float | None:
    """The value of an instant query with one result (None while there is none)."""
    response = httpx.get(base + "/api/v1/query", params={"query": promql}, timeout=10)
    assert response.status_code == 200, response.text
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_chain_and_promql_counts_the_requests_sent(tmp_path: Path) -> None:
    assert Path(PROMETHEUS).is_file(), "the prometheus server is missing: run `make system-deps`"
    port, metrics_port, prometheus_port = free_port(), free_port(), free_port()
    config = write_config(tmp_path, 1)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: http-wasm-asgi\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    chain = [COMMAND, "serve", str(config), "--port", str(port), "--workers", "2", "--metrics-port", str(metrics_port)]
    prometheus = [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                  f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prometheus_port}"]
    with serving(chain, port, cwd=tmp_path, ready_path="/probe") as server, \
            serving(prometheus, prometheus_port, cwd=tmp_path, ready_path="/-/ready") as prom:
        wait_until(lambda: httpx.get(prom.url + "/-/ready", timeout=5).status_code == 200, 30, "prometheus ready")
        allowed, refused = 30, 7
        for _ in range(allowed):
            assert httpx.get(server.url + "/", headers={**AUTH, "connection": "close"}, timeout=5).status_code == 200
        for _ in range(refused):
            assert httpx.get(server.url + "/", headers={"connection": "close"}, timeout=5).status_code == 401
        sent = allowed + refused + 1  # and the readiness probe of `serving` (refused too: no token)
        calls = 'sum(http_wasm_guest_calls_total{job="http-wasm-asgi",guest="stamp",phase="handle_request"})'
        wait_until(lambda: query(prom.url, calls) == sent, 30, f"PromQL {calls} == {sent}")
        assert query(prom.url, 'sum(http_wasm_guest_short_circuits_total{guest="auth"})') == refused + 1
        assert query(prom.url, 'sum(http_wasm_guest_call_seconds_count{guest="auth",phase="handle_request"})') == sent
        assert query(prom.url, 'sum(http_wasm_guest_calls_total{guest="auth",phase="handle_response"})') == allowed
        assert query(prom.url, 'up{job="http-wasm-asgi"}') == 1
        assert query(prom.url, 'sum(http_wasm_pool_instances{guest="auth"})') >= 2  # a pool in each worker
