"""Helpers for the production tests (metrics, reloads, shutdown): an app with a slow route, chain
configs that name a version, the serve command with a metrics listener, and Prometheus text parsing."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .paths import ZIG

TOKEN = "t"
AUTH = {"authorization": f"Bearer {TOKEN}"}

# The app behind the chain: its pid, and /slow?s=N answers after N seconds.
OPS_APP = """
import asyncio, json, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    query = scope.get("query_string", b"").decode()
    if scope["path"] == "/slow":
        await asyncio.sleep(float(query.partition("=")[2] or 1))
    body = json.dumps({"pid": os.getpid(), "path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def write_config(folder: Path, version: int | str, *, extra: str = "", guests: str = "") -> Path:
    """A chain of two guests: `stamp` (response header x-version: VERSION) and `auth` (token t), in front of
    the ops app; replaced atomically, as an operator's tooling would."""
    (folder / "opsapp.py").write_text(OPS_APP)
    config = folder / "chain.yaml"
    text = (f"app: opsapp:app\n{extra}guests:\n"
            f"  - name: stamp\n    path: {ZIG / 'headeradder.wasm'}\n    config: response x-version {version}\n"
            f"  - name: auth\n    path: {ZIG / 'auth.wasm'}\n    config: {TOKEN}\n{guests}")
    tmp = folder / "chain.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, config)
    return config


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics: every sample, by (name, sorted labels)."""
    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(value for (sample, have), value in samples.items()
               if sample == name and set(labels.items()) <= set(have))


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check` until it holds; the seconds it took (AssertionError naming `what` past `timeout`)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


def hup(pid: int) -> None:
    os.kill(pid, signal.SIGHUP)


def rss_mib(pid: int) -> float:
    """Resident memory of a process (and nothing else), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")
