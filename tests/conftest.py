"""Fixtures and hooks shared by the tests. Constants and helpers live in the `support` package (tests/support/),
which the tests import by name: pyproject.toml puts tests/ on pytest's path."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from http_wasm_asgi.wasm.calls import NATIVE_PATH, PYTHON_PATH, CallPath, using_path
from support import ClientFactory


@pytest.fixture(autouse=True)
def _quiet_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled-module cache in a temp folder shared by the session: tests never touch the user's cache."""
    monkeypatch.setenv("HTTP_WASM_ASGI_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "wasm-cache"))


@pytest.fixture(params=["native", "python"])
def call_path(request: pytest.FixtureRequest) -> Iterator[CallPath]:
    """Runs the test once per call path: every guest it makes takes that path (the native path and its Python
    reference must behave alike). The native path must be built (`make install` compiles it)."""
    path = NATIVE_PATH if request.param == "native" else PYTHON_PATH
    if path is None:
        pytest.fail("the native path is not built (no C compiler at install?): see _native.OFF_REASON")
    with using_path(path):
        yield path


@pytest.fixture
def guest_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    return caplog


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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """tests/test_servers.py: all tests of one server in a row (its module fixture starts it once).

    pytest groups a module fixture's parameters by their index in each test's parametrize list, and
    the conformance cases' list is not the other tests': after its own reordering, a stable sort by server.
    """
    mine = [i for i, item in enumerate(items) if item.path.name == "test_servers.py"]
    if not mine:
        return
    from support.asgi_servers import SERVERS

    order = {name: index for index, name in enumerate(SERVERS)}

    def server_of(item: pytest.Item) -> int:
        callspec = getattr(item, "callspec", None)
        endpoint = callspec.params.get("endpoint") if callspec is not None else None
        return order[endpoint[0]] if isinstance(endpoint, tuple) else len(order)

    for slot, item in zip(mine, sorted((items[i] for i in mine), key=server_of), strict=True):
        items[slot] = item
