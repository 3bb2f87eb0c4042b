from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_wasm_asgi.testing import echo_app

ROOT = Path(__file__).resolve().parent.parent
WAT = ROOT / "guests" / "wat"


@pytest.fixture(autouse=True)
def _quiet_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled-module cache in a temp folder shared by the session: tests never touch the user's cache."""
    monkeypatch.setenv("HTTP_WASM_ASGI_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "wasm-cache"))


@pytest.fixture
def guest_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    return caplog


ClientFactory = Callable[[Any], httpx.AsyncClient]


@pytest.fixture
async def client() -> AsyncIterator[ClientFactory]:
    """In-process client: `async with client(app) as c: ...`."""
    clients: list[httpx.AsyncClient] = []

    def make(app: Any) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.aclose()


__all__ = ["ROOT", "WAT", "echo_app"]
