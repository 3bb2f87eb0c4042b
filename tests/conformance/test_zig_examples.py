"""End-to-end tests of the Zig example guests (guests/zig) through a real uvicorn server.

Each test puts one guest (or a chain) in front of `echo_app`, serves it with
uvicorn on 127.0.0.1 (ephemeral port) in a background thread, and checks what
the guest visibly does: status, response headers, and the request as the app
saw it (the echo JSON).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from http_wasm_asgi import Guest, HttpWasmMiddleware
from http_wasm_asgi.testing import echo_app

ZIG = Path(__file__).resolve().parents[2] / "guests" / "zig"
CASES = json.loads((ZIG.parent / "conformance" / "cases.json").read_text())


def zig_guest(name: str, config: bytes | str = b"") -> Guest:
    path = ZIG / f"{name}.wasm"
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `python guests/build.py zig`")
    return Guest(path, name=name, config=config)


@contextmanager
def served(app: Any) -> Iterator[httpx.Client]:
    """`app` on a real uvicorn server in a thread; yields an httpx client pointed at it."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn-zig-examples", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start in 20 s"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, follow_redirects=False) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


def serve_guests(*guests: Guest, app: Any = echo_app) -> AbstractContextManager[httpx.Client]:
    return served(HttpWasmMiddleware(app, guests=list(guests)))


def app_headers(response: httpx.Response, name: str) -> list[str]:
    """Values of request header `name` as the app behind the guests received them."""
    return [v for k, v in response.json()["headers"] if k == name]


@pytest.fixture
def guest_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Guest logs (the `log` host function and WASI stdout) at INFO and above."""
    caplog.set_level(logging.INFO, logger="http_wasm_asgi.guest")
    return caplog


def messages(caplog: pytest.LogCaptureFixture, guest: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name.endswith(f".{guest}")]


# --- auth ---------------------------------------------------------------------------------------------


def test_auth_rejects_without_the_right_bearer_token() -> None:
    with serve_guests(zig_guest("auth", "s3cret\n")) as client:
        attempts: list[dict[str, str]] = [
            {},
            {"authorization": "Bearer wrong"},
            {"authorization": "Bearer s3cret2"},  # the token as a prefix is not enough
            {"authorization": "Bearer s3cre"},
            {"authorization": "bearer s3cret"},
            {"authorization": "Basic s3cret"},
            {"authorization": "s3cret"},
        ]
        for headers in attempts:
            r = client.get("/private", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
            assert "x-echo" not in r.headers, "the app must not be called"


def test_auth_lets_the_right_token_through() -> None:
    with serve_guests(zig_guest("auth", "s3cret\n")) as client:
        r = client.get("/private?x=1", headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert r.headers["x-echo"] == "1"
        assert "www-authenticate" not in r.headers
        assert r.json()["path"] == "/private"
        assert app_headers(r, "authorization") == ["Bearer s3cret"]


def test_auth_with_empty_config_lets_nobody_in() -> None:
    with serve_guests(zig_guest("auth", "")) as client:
        assert client.get("/", headers={"authorization": "Bearer"}).status_code == 401
        assert client.get("/", headers={"authorization": "Bearer x"}).status_code == 401
        assert client.get("/").status_code == 401


def test_auth_with_values_bigger_than_the_first_read_buffer() -> None:
    # The library reads into a 2 KiB buffer first: these values need the grow-and-retry path.
    token = "t" * 5000
    with serve_guests(zig_guest("auth", token)) as client:
        for _ in range(20):  # instances are reused: the grown buffer and the arena must keep working
            assert client.get("/", headers={"authorization": f"Bearer {token}"}).status_code == 200
            assert client.get("/", headers={"authorization": f"Bearer {token[:-1]}x"}).status_code == 401
        assert client.get("/").status_code == 401


# --- router -------------------------------------------------------------------------------------------

ROUTES = """
# moved pages
redirect /old /new
rewrite /api/ /v2/
redirect /api/legacy /elsewhere
"""


def test_router_redirects_exact_paths_keeping_the_query() -> None:
    with serve_guests(zig_guest("router", ROUTES)) as client:
        r = client.get("/old")
        assert r.status_code == 302
        assert r.headers["location"] == "/new"
        assert "x-echo" not in r.headers
        r = client.get("/old?a=1&b=%2F")
        assert r.status_code == 302
        assert r.headers["location"] == "/new?a=1&b=%2F"
        r = client.get("/older")
        assert r.status_code == 200
        assert r.json()["path"] == "/older"


def test_router_rewrites_prefixes_for_the_app() -> None:
    with serve_guests(zig_guest("router", ROUTES)) as client:
        r = client.get("/api/users/7?expand=1")
        assert r.status_code == 200
        seen = r.json()
        assert (seen["path"], seen["query_string"]) == ("/v2/users/7", "expand=1")
        r = client.get("/api/a%2Fb")
        assert r.json()["raw_path"] == "/v2/a%2Fb"
        assert r.json()["query_string"] == ""
        # First match wins: the rewrite line comes before this redirect.
        r = client.get("/api/legacy")
        assert r.status_code == 200
        assert r.json()["path"] == "/v2/legacy"


def test_router_leaves_other_paths_alone() -> None:
    with serve_guests(zig_guest("router", ROUTES)) as client:
        r = client.get("/apix/users?q=2")
        assert r.status_code == 200
        assert (r.json()["path"], r.json()["query_string"]) == ("/apix/users", "q=2")
        assert client.get("/").json()["path"] == "/"


# --- redact -------------------------------------------------------------------------------------------


def test_redact_removes_configured_headers_both_ways() -> None:
    with serve_guests(zig_guest("redact", "x-secret\n\nCookie\nx-echo\n")) as client:
        r = client.get("/", headers={"x-secret": "1", "cookie": "a=b", "x-keep": "yes"})
        assert r.status_code == 200
        assert app_headers(r, "x-secret") == []
        assert app_headers(r, "cookie") == []
        assert app_headers(r, "x-keep") == ["yes"]
        assert "x-echo" not in r.headers, "x-echo is in the config: it must be removed from the response"
        assert r.headers["content-type"] == "application/json"
        assert r.json()["method"] == "GET", "the response body passes through intact"


def test_redact_with_nothing_configured_changes_nothing() -> None:
    with serve_guests(zig_guest("redact", "")) as client:
        r = client.post("/p", headers={"x-secret": "1"}, content=b"body")
        assert app_headers(r, "x-secret") == ["1"]
        assert r.headers["x-echo"] == "1"
        assert r.json()["body"] == "body"


# --- accesslog ----------------------------------------------------------------------------------------


async def not_found_or_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/missing":
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    await echo_app(scope, receive, send)


def test_accesslog_logs_method_uri_and_status(guest_log: pytest.LogCaptureFixture) -> None:
    with serve_guests(zig_guest("accesslog"), app=not_found_or_echo) as client:
        assert client.get("/a/b?q=1").status_code == 200
        assert client.post("/form", content=b"x").status_code == 200
        assert client.get("/missing").status_code == 404
    assert messages(guest_log, "accesslog") == [
        (logging.INFO, "GET /a/b?q=1 200"),
        (logging.INFO, "POST /form 200"),
        (logging.INFO, "GET /missing 404"),
    ]


def test_accesslog_logs_the_uri_as_the_client_sent_it(guest_log: pytest.LogCaptureFixture) -> None:
    # accesslog runs first, router rewrites after it: the log shows the original URI.
    guests = (zig_guest("accesslog"), zig_guest("router", "rewrite /api/ /v2/"))
    with serve_guests(*guests) as client:
        assert client.get("/api/x").json()["path"] == "/v2/x"
    assert messages(guest_log, "accesslog") == [(logging.INFO, "GET /api/x 200")]


def test_accesslog_is_quiet_when_info_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="http_wasm_asgi.guest")
    with serve_guests(zig_guest("accesslog")) as client:
        assert client.get("/").status_code == 200
    assert messages(caplog, "accesslog") == []


# --- headeradder --------------------------------------------------------------------------------------


def test_headeradder_adds_request_and_response_headers() -> None:
    config = "request x-a 1\nresponse x-b two  words\n\nrequest x-a 2\nnonsense line here\nresponse x-c\n"
    with serve_guests(zig_guest("headeradder", config)) as client:
        r = client.get("/", headers={"x-a": "0"})
        assert r.status_code == 200
        assert app_headers(r, "x-a") == ["0", "1", "2"]
        assert app_headers(r, "x-b") == []
        assert r.headers["x-b"] == "two  words"
        assert r.headers["x-echo"] == "1"
        assert "nonsense" not in r.headers


# --- WASI reactor -------------------------------------------------------------------------------------


def test_wasi_reactor_initializes_once_per_instance_and_adds_a_header(guest_log: pytest.LogCaptureFixture) -> None:
    guest = zig_guest("wasi_hello")
    assert guest.info.uses_wasi
    with serve_guests(guest) as client:
        for _ in range(3):
            r = client.get("/")
            assert r.status_code == 200
            assert r.headers["x-wasi"] == "yes"
            assert r.headers["x-echo"] == "1"
    printed = [m for m in messages(guest_log, "wasi_hello") if m[1] == "wasi_hello: initialized"]
    assert printed and all(level == logging.INFO for level, _ in printed)


# --- a chain ------------------------------------------------------------------------------------------


def test_chain_auth_router_headeradder() -> None:
    guests = (zig_guest("auth", "tok"), zig_guest("router", ROUTES), zig_guest("headeradder", "request x-user ok"))
    with serve_guests(*guests) as client:
        r = client.get("/old")
        assert r.status_code == 401, "auth answers before the router can redirect"
        r = client.get("/old", headers={"authorization": "Bearer tok"})
        assert (r.status_code, r.headers["location"]) == (302, "/new")
        r = client.get("/api/z", headers={"authorization": "Bearer tok"})
        assert r.json()["path"] == "/v2/z"
        assert app_headers(r, "x-user") == ["ok"]


# --- the conformance guest can fail -------------------------------------------------------------------
# (Its passing runs are tests/conformance/test_conformance.py; here: it does not pass everything blindly.)


def test_conformance_guest_reports_failures() -> None:
    with serve_guests(zig_guest("conformance", b"not the contract config")) as client:
        def result(case_id: str, path: str = "/", **kw: Any) -> str:
            r = client.get(path, headers={"x-httpwasm-test-id": case_id, **kw.pop("headers", {})}, **kw)
            return r.headers["x-conformance-result"]

        assert result("get_config/bytes").startswith("fail: get_config(buf, 0) = 23, want 34")
        assert result("no/such/case") == "fail: unknown case"
        assert result("") == "fail: unknown case"
        assert result("get_uri/root", path="/other") == "fail: get_uri = '/other', want '/'"
        assert result("get_header_values/single", headers={"x-single": "0123456"}).startswith("fail: ")
        assert result("get_header_values/single", headers={"x-single": "01234567"}) == "pass"


def test_conformance_config_matches_the_contract() -> None:
    source = (ZIG / "conformance.zig").read_text()
    embedded = json.dumps(CASES["config"])  # the Zig string literal is the JSON-escaped config
    assert f"const expected_config = {embedded};" in source
