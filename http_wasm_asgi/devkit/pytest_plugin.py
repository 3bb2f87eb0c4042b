"""The pytest plugin (entry point `pytest11`, active once the package is installed): test a guest.

Fixtures:
- `guest_client`: a factory, `guest_client(source=None, *, config=None, server=False, **options)`,
  of `testing.GuestClient`s (closed after the test); no source: the `--wasm-guest` one;
- `wasm_guest`: the path given with `--wasm-guest PATH` (or the `wasm_guest` ini option);
- `wasm_client`: a client for that guest, with `--wasm-guest-config TEXT` as its config, through
  uvicorn with `--wasm-server`.

When a test that sent requests through a `GuestClient` fails, its report gets a section with the
last request: what the client sent and got, what the app saw, the guests' logs and every host call.

Light to import (pytest loads it in every session): the host and wasmtime load when a fixture is used.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .testing import GuestClient

_TESTING = "http_wasm_asgi.devkit.testing"  # looked up, not imported: loaded only when a test uses it


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("http-wasm-asgi", "testing http-wasm guests (http_wasm_asgi.testing)")
    group.addoption("--wasm-guest", metavar="PATH",
                    help="the guest (.wasm or .wat) of the wasm_guest and wasm_client fixtures")
    group.addoption("--wasm-guest-config", metavar="TEXT", help="the config wasm_client gives that guest (text)")
    group.addoption("--wasm-server", action="store_true",
                    help="wasm_client sends its requests through a real uvicorn server (default: in-process)")
    parser.addini("wasm_guest", "the guest of the wasm_guest fixture, relative to the ini file (--wasm-guest "
                  "overrides it)", default="")


@pytest.fixture
def wasm_guest(pytestconfig: pytest.Config) -> Path:
    """The guest this session tests: --wasm-guest PATH, else the `wasm_guest` ini option."""
    option = pytestconfig.getoption("wasm_guest")
    if option:
        path = pytestconfig.invocation_params.dir / option
    elif pytestconfig.getini("wasm_guest"):
        path = (pytestconfig.inipath.parent if pytestconfig.inipath else pytestconfig.rootpath) / \
            str(pytestconfig.getini("wasm_guest"))
    else:
        pytest.fail("no guest to test: run pytest with --wasm-guest PATH (or set wasm_guest in the pytest "
                    "ini options)", pytrace=False)
    if not path.is_file():
        pytest.fail(f"--wasm-guest: file {str(path)!r} not found", pytrace=False)
    return Path(path)


ClientFactory = Callable[..., "GuestClient"]


@pytest.fixture
def guest_client(request: pytest.FixtureRequest) -> Iterator[ClientFactory]:
    """A factory of GuestClients: `guest_client("filter.wasm", config=..., server=False, **Guest options)`."""
    from .testing import GuestClient

    made: list[GuestClient] = []

    def make(*guests: Any, config: Any = None, server: bool = False, **options: Any) -> GuestClient:
        if not guests:
            guests = (request.getfixturevalue("wasm_guest"),)
            if config is None:
                config = request.config.getoption("wasm_guest_config")
        client = GuestClient(*guests, config=config, server=server, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def wasm_client(guest_client: ClientFactory, pytestconfig: pytest.Config) -> GuestClient:
    """A client for the --wasm-guest guest in front of the recording echo app."""
    return guest_client(server=bool(pytestconfig.getoption("wasm_server")))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    testing = sys.modules.get(_TESTING)
    if testing is not None:
        testing.forget_results()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failed test that sent requests through a GuestClient: show the last one, host calls included."""
    outcome = yield
    report = outcome.get_result()
    testing = sys.modules.get(_TESTING)
    if testing is None or not report.failed or call.when != "call":
        return
    results = testing.recent_results()
    if results:
        report.sections.append((f"http-wasm-asgi: the last request of this test ({results[-1]!r})",
                                results[-1].report()))
