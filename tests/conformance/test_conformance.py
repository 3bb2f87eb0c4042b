"""Every conformance case on every language's conformance guest, through a real uvicorn server.

For each (language, case) the client sends the case's request with
`x-httpwasm-test-id`, the guest runs the case's checks against this host from
the inside and reports `x-conformance-result`; the test asserts `pass` and
then every `expect` field of the case from the outside: status, response
headers present and absent, body, the request as the app saw it (echo JSON:
fields and headers), and what the guest logged. One server per language for
the whole module. The assertions here are written out independently of
`http_wasm_asgi.devkit.conformance`, which the `conformance` command uses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import httpx
import pytest
from guest_examples import GUESTS, LANGUAGES, guest_path

from http_wasm_asgi import Guest, HttpWasmMiddleware
from http_wasm_asgi.testing import echo_app, serve

SUITE = json.loads(resources.files("http_wasm_asgi.devkit").joinpath("conformance_cases.json").read_text("utf-8"))
CASES: list[dict[str, Any]] = SUITE["cases"]
EXPECTATIONS = {"status", "headers", "no_headers", "body", "app", "app_headers", "log", "no_log"}
# uvicorn speaks HTTP/1.1 and offers no response trailers: the cases for other servers run in test_servers.py
ON_UVICORN = [case for case in CASES if case.get("when", {}).get("http_version", "1.1") == "1.1"
              and not case.get("when", {}).get("trailers", False)]

# The conformance guest of each language (see guests/build.py).
CONFORMANCE_GUESTS = {lang: guest_path(lang, "conformance") for lang in LANGUAGES}


@dataclass
class Server:
    client: httpx.Client
    logged: list[str] = field(default_factory=list)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@pytest.fixture(scope="module")
def server_for(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Server]]:
    """`server_for(lang)`: that language's conformance guest in front of echo_app on uvicorn, started once."""
    servers: dict[str, Server] = {}
    cache = tmp_path_factory.mktemp("conformance-cache")
    with ExitStack() as stack:
        def start(lang: str) -> Server:
            if lang not in servers:
                path = CONFORMANCE_GUESTS[lang]
                if not path.exists():
                    pytest.fail(f"{path} is missing: build it with `python guests/build.py {lang}`")
                logger = logging.getLogger(f"tests.conformance.{lang}")
                logger.setLevel(logging.INFO)  # the cases expect the guest's logger at INFO
                logger.propagate = False
                logged: list[str] = []
                handler = _Collect(logged)
                logger.addHandler(handler)
                stack.callback(logger.removeHandler, handler)
                guest = Guest(path, name="conformance", config=SUITE["config"].encode(), logger=logger,
                              cache_dir=cache)
                url = stack.enter_context(serve(HttpWasmMiddleware(echo_app, guests=[guest])))
                client = stack.enter_context(httpx.Client(base_url=url, timeout=10, follow_redirects=False))
                servers[lang] = Server(client, logged)
            return servers[lang]

        yield start


def test_every_conformance_guest_on_disk_is_tested() -> None:
    found = {*GUESTS.glob("*/conformance*.wasm"), *GUESTS.glob("*/conformance/conformance*.wasm")}
    assert found == set(CONFORMANCE_GUESTS.values())


def test_the_cases_are_well_formed() -> None:
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)) >= 30
    for case in CASES:
        assert set(case) - {"when"} == {"id", "request", "check", "expect"}, case["id"]
        assert set(case.get("when", {})) <= {"http_version", "trailers"}, case["id"]
        assert set(case["expect"]) <= EXPECTATIONS, case["id"]
        assert "status" in case["expect"], case["id"]


@pytest.mark.parametrize(("lang", "case"), [
    pytest.param(lang, case, id=f"{lang}:{case['id']}") for lang in LANGUAGES for case in ON_UVICORN])
def test_case(server_for: Callable[[str], Server], lang: str, case: dict[str, Any]) -> None:
    server = server_for(lang)
    server.logged.clear()
    request, expect = case["request"], case["expect"]
    headers = [(name, value) for name, value in request.get("headers", [])]
    headers.append(("x-httpwasm-test-id", case["id"]))
    body = request.get("body")
    r = server.client.request(request.get("method", "GET"), request.get("path", "/"), headers=headers,
                              content=body.encode() if body is not None else None)

    assert r.headers.get("x-conformance-result") == "pass", f"{lang} guest, {case['id']}: {case['check']}"
    assert r.status_code == expect["status"]
    for name, value in expect.get("headers", {}).items():
        assert r.headers.get(name) == value, name
    for name in expect.get("no_headers", []):
        assert name not in r.headers
    if "body" in expect:
        assert r.content == expect["body"].encode()
    if "app" in expect or "app_headers" in expect:
        seen = r.json()
        for key, value in expect.get("app", {}).items():
            assert seen[key] == value, key
        for name, values in expect.get("app_headers", {}).items():
            assert [v for k, v in seen["headers"] if k == name] == values, name
    for message in expect.get("log", []):
        assert message in server.logged
    for message in expect.get("no_log", []):
        assert message not in server.logged
