"""Helpers for the end-to-end tests of the example guests, and the tests every language shares.

The Zig and Go example guests (guests/zig/<name>.zig, guests/go/<name>/) have
the same behaviour and take the same configs, so their tests are written once,
here, in `ExampleGuestTests`; test_zig_examples.py and test_go_examples.py
subclass it with their language. Each test puts one guest (or a chain) in
front of `echo_app`, serves it with uvicorn on 127.0.0.1 (ephemeral port) in a
background thread, and checks what the guest visibly does: status, response
headers, and the request as the app saw it (the echo JSON).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from http_wasm_asgi import Guest, HttpWasmMiddleware
from http_wasm_asgi.devkit.conformance import load_suite
from http_wasm_asgi.testing import echo_app, serve

ROOT = Path(__file__).resolve().parents[2]
GUESTS = ROOT / "guests"
LANGUAGES = ("zig", "go", "rust", "assemblyscript", "c")
# One file per guest next to its source: guests/<lang>/<name>.wasm (built by guests/<lang>/build_lang.py).
FLAT_LANGUAGES = ("zig", "rust", "assemblyscript", "c")


def guest_path(lang: str, name: str) -> Path:
    """Where guests/build.py writes a guest: guests/<lang>/<name>.wasm, guests/go/<name>/<name>.wasm."""
    if lang in FLAT_LANGUAGES:
        return GUESTS / lang / f"{name}.wasm"
    if lang == "go":
        return GUESTS / "go" / name / f"{name}.wasm"
    raise ValueError(f"no guests in language {lang!r}")


def load_guest(lang: str, name: str, config: bytes | str = b"", **options: Any) -> Guest:
    path = guest_path(lang, name)
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `python guests/build.py {lang}`")
    return Guest(path, name=name, config=config, **options)


@contextmanager
def served(app: Any) -> Iterator[httpx.Client]:
    """`app` on a real uvicorn server in a thread; yields an httpx client pointed at it."""
    with serve(app) as url, httpx.Client(base_url=url, timeout=10, follow_redirects=False) as client:
        yield client


def serve_guests(*guests: Guest, app: Any = echo_app) -> AbstractContextManager[httpx.Client]:
    return served(HttpWasmMiddleware(app, guests=list(guests)))


def app_headers(response: httpx.Response, name: str) -> list[str]:
    """Values of request header `name` as the app behind the guests received them."""
    return [v for k, v in response.json()["headers"] if k == name]


def messages(caplog: pytest.LogCaptureFixture, guest: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name.endswith(f".{guest}")]


async def not_found_or_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/missing":
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    await echo_app(scope, receive, send)


async def text_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the text of the query string's `say`, as text/plain (or gzip-labelled when `gz` is set)."""
    assert scope["type"] == "http"
    query = parse_qs(scope["query_string"].decode())
    body = query.get("say", [""])[0].encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    if "gz" in query:
        headers.append((b"content-encoding", b"gzip"))
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


ROUTES = """
# moved pages
redirect /old /new
rewrite /api/ /v2/
redirect /api/legacy /elsewhere
"""

REWRITES = json.dumps({
    "request": [{"from": "colour", "to": "color"}, {"from": "color", "to": "COLOR"}],
    "response": [{"from": "secret", "to": "******"}, {"from": "\u00e9", "to": "e"}],
})


class ExampleGuestTests:
    """The example guests' behaviour, identical in every language. Subclasses set `lang`."""

    lang: str

    def guest(self, name: str, config: bytes | str = b"", **options: Any) -> Guest:
        return load_guest(self.lang, name, config, **options)

    @pytest.fixture
    def guest_log(self, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
        """Guest logs (the `log` host function and WASI stdout) at INFO and above."""
        caplog.set_level(logging.INFO, logger="http_wasm_asgi.guest")
        return caplog

    # --- auth -------------------------------------------------------------------------------------

    def test_auth_rejects_without_the_right_bearer_token(self) -> None:
        with serve_guests(self.guest("auth", "s3cret\n")) as client:
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

    def test_auth_lets_the_right_token_through(self) -> None:
        with serve_guests(self.guest("auth", "s3cret\n")) as client:
            r = client.get("/private?x=1", headers={"authorization": "Bearer s3cret"})
            assert r.status_code == 200
            assert r.headers["x-echo"] == "1"
            assert "www-authenticate" not in r.headers
            assert r.json()["path"] == "/private"
            assert app_headers(r, "authorization") == ["Bearer s3cret"]

    def test_auth_with_empty_config_lets_nobody_in(self) -> None:
        with serve_guests(self.guest("auth", "")) as client:
            assert client.get("/", headers={"authorization": "Bearer"}).status_code == 401
            assert client.get("/", headers={"authorization": "Bearer x"}).status_code == 401
            assert client.get("/").status_code == 401

    def test_auth_with_values_bigger_than_the_first_read_buffer(self) -> None:
        # The libraries read into a 2 KiB buffer first: these values need the grow-and-retry path.
        token = "t" * 5000
        with serve_guests(self.guest("auth", token)) as client:
            for _ in range(20):  # instances are reused: the grown buffer must keep working
                assert client.get("/", headers={"authorization": f"Bearer {token}"}).status_code == 200
                assert client.get("/", headers={"authorization": f"Bearer {token[:-1]}x"}).status_code == 401
            assert client.get("/").status_code == 401

    # --- router -----------------------------------------------------------------------------------

    def test_router_redirects_exact_paths_keeping_the_query(self) -> None:
        with serve_guests(self.guest("router", ROUTES)) as client:
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

    def test_router_rewrites_prefixes_for_the_app(self) -> None:
        with serve_guests(self.guest("router", ROUTES)) as client:
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

    def test_router_leaves_other_paths_alone(self) -> None:
        with serve_guests(self.guest("router", ROUTES)) as client:
            r = client.get("/apix/users?q=2")
            assert r.status_code == 200
            assert (r.json()["path"], r.json()["query_string"]) == ("/apix/users", "q=2")
            assert client.get("/").json()["path"] == "/"

    # --- redact -----------------------------------------------------------------------------------

    def test_redact_removes_configured_headers_both_ways(self) -> None:
        with serve_guests(self.guest("redact", "x-secret\n\nCookie\nx-echo\n")) as client:
            r = client.get("/", headers={"x-secret": "1", "cookie": "a=b", "x-keep": "yes"})
            assert r.status_code == 200
            assert app_headers(r, "x-secret") == []
            assert app_headers(r, "cookie") == []
            assert app_headers(r, "x-keep") == ["yes"]
            assert "x-echo" not in r.headers, "x-echo is in the config: it must be removed from the response"
            assert r.headers["content-type"] == "application/json"
            assert r.json()["method"] == "GET", "the response body passes through intact"

    def test_redact_with_nothing_configured_changes_nothing(self) -> None:
        with serve_guests(self.guest("redact", "")) as client:
            r = client.post("/p", headers={"x-secret": "1"}, content=b"body")
            assert app_headers(r, "x-secret") == ["1"]
            assert r.headers["x-echo"] == "1"
            assert r.json()["body"] == "body"

    # --- accesslog --------------------------------------------------------------------------------

    def test_accesslog_logs_method_uri_and_status(self, guest_log: pytest.LogCaptureFixture) -> None:
        with serve_guests(self.guest("accesslog"), app=not_found_or_echo) as client:
            assert client.get("/a/b?q=1").status_code == 200
            assert client.post("/form", content=b"x").status_code == 200
            assert client.get("/missing").status_code == 404
        assert messages(guest_log, "accesslog") == [
            (logging.INFO, "GET /a/b?q=1 200"),
            (logging.INFO, "POST /form 200"),
            (logging.INFO, "GET /missing 404"),
        ]

    def test_accesslog_logs_the_uri_as_the_client_sent_it(self, guest_log: pytest.LogCaptureFixture) -> None:
        # accesslog runs first, router rewrites after it: the log shows the original URI.
        guests = (self.guest("accesslog"), self.guest("router", "rewrite /api/ /v2/"))
        with serve_guests(*guests) as client:
            assert client.get("/api/x").json()["path"] == "/v2/x"
        assert messages(guest_log, "accesslog") == [(logging.INFO, "GET /api/x 200")]

    def test_accesslog_is_quiet_when_info_is_off(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="http_wasm_asgi.guest")
        with serve_guests(self.guest("accesslog")) as client:
            assert client.get("/").status_code == 200
        assert messages(caplog, "accesslog") == []

    # --- headeradder ------------------------------------------------------------------------------

    def test_headeradder_adds_request_and_response_headers(self) -> None:
        config = "request x-a 1\nresponse x-b two  words\n\nrequest x-a 2\nnonsense line here\nresponse\tx-c\n"
        with serve_guests(self.guest("headeradder", config)) as client:
            r = client.get("/", headers={"x-a": "0"})
            assert r.status_code == 200
            assert app_headers(r, "x-a") == ["0", "1", "2"]
            assert app_headers(r, "x-b") == []
            assert r.headers["x-b"] == "two  words"
            assert r.headers["x-c"] == ""
            assert r.headers["x-echo"] == "1"
            assert "nonsense" not in r.headers

    # --- bodyrewrite ------------------------------------------------------------------------------

    def test_bodyrewrite_rewrites_the_request_body_in_rule_order(self) -> None:
        with serve_guests(self.guest("bodyrewrite", REWRITES)) as client:
            r = client.post("/form", content=b"colour: red; colour: blue")
            assert r.status_code == 200
            # Rules apply in order, each to the result of the one before.
            assert r.json()["body"] == "COLOR: red; COLOR: blue"
            assert app_headers(r, "content-length") == ["23"]

    def test_bodyrewrite_leaves_a_request_body_without_matches_to_the_app(self) -> None:
        # buffer_request: the guest read the body, and the app still gets all of it.
        body = b"nothing to see here " * 1000
        with serve_guests(self.guest("bodyrewrite", REWRITES)) as client:
            r = client.post("/form", content=body)
            assert r.json()["body"] == body.decode()
            assert app_headers(r, "content-length") == [str(len(body))]
            assert client.get("/").json()["body"] == ""

    def test_bodyrewrite_rewrites_the_response_body(self) -> None:
        with serve_guests(self.guest("bodyrewrite", REWRITES), app=text_app) as client:
            r = client.get("/", params={"say": "the secret is café, secretly"})
            assert r.status_code == 200
            assert r.text == "the ****** is cafe, ******ly"
            assert r.headers["content-length"] == str(len(r.content))
            r = client.get("/", params={"say": "plain"})
            assert (r.text, r.headers["content-length"]) == ("plain", "5")

    def test_bodyrewrite_leaves_encoded_bodies_alone(self) -> None:
        with serve_guests(self.guest("bodyrewrite", REWRITES), app=text_app) as client, \
                client.stream("GET", "/", params={"say": "secret", "gz": "1"}) as r:
            assert r.headers["content-encoding"] == "gzip"
            assert b"".join(r.iter_raw()) == b"secret"
        with serve_guests(self.guest("bodyrewrite", REWRITES)) as client:
            r = client.post("/", content=b"colour", headers={"content-encoding": "gzip"})
            assert r.json()["body"] == "colour"

    def test_bodyrewrite_without_rules_passes_everything(self) -> None:
        for config in ("", '{"request": [], "response": []}', "{}"):
            with serve_guests(self.guest("bodyrewrite", config)) as client:
                r = client.post("/x", content=b"colour secret")
                assert (r.status_code, r.json()["body"]) == (200, "colour secret")

    # --- hello (the README's example) -------------------------------------------------------------

    def test_hello_answers_hello_and_tags_the_rest(self) -> None:
        with serve_guests(self.guest("hello", "wasm")) as client:
            r = client.get("/hello")
            assert (r.status_code, r.text, r.headers["content-type"]) == (200, "hello, wasm\n", "text/plain")
            assert "x-echo" not in r.headers
            r = client.get("/other")
            assert (r.headers["x-hello"], r.headers["x-echo"]) == ("wasm", "1")
            assert client.post("/hello").headers["x-echo"] == "1", "only GET /hello is answered by the guest"
        with serve_guests(self.guest("hello")) as client:
            assert client.get("/hello").text == "hello, world\n"

    # --- a chain ----------------------------------------------------------------------------------

    def test_chain_auth_router_headeradder(self) -> None:
        guests = (self.guest("auth", "tok"), self.guest("router", ROUTES),
                  self.guest("headeradder", "request x-user ok"))
        with serve_guests(*guests) as client:
            r = client.get("/old")
            assert r.status_code == 401, "auth answers before the router can redirect"
            r = client.get("/old", headers={"authorization": "Bearer tok"})
            assert (r.status_code, r.headers["location"]) == (302, "/new")
            r = client.get("/api/z", headers={"authorization": "Bearer tok"})
            assert r.json()["path"] == "/v2/z"
            assert app_headers(r, "x-user") == ["ok"]

    # --- the conformance guest can fail -----------------------------------------------------------
    # (Its passing runs are test_conformance.py; here: it does not pass everything blindly.)

    def test_conformance_guest_reports_failures(self) -> None:
        with serve_guests(self.guest("conformance", b"not the contract config")) as client:
            def result(case_id: str, path: str = "/", **kw: Any) -> str:
                r = client.get(path, headers={"x-httpwasm-test-id": case_id, **kw.pop("headers", {})}, **kw)
                return r.headers["x-conformance-result"]

            assert result("get_config/bytes").startswith("fail: get_config(buf, 0) = 23, want 34")
            assert result("no/such/case") == "fail: unknown case"
            assert result("") == "fail: unknown case"
            assert result("get_uri/root", path="/other") == "fail: get_uri = '/other', want '/'"
            assert result("get_header_values/single", headers={"x-single": "0123456"}) == \
                "fail: get_header_values count_len = 4294967304, want 4294967305"
            assert result("get_header_values/single", headers={"x-single": "01234567"}) == "pass"
            assert result("get_header_values/single", headers={"x-single": "0123456x"}) == \
                "fail: get_header_values bytes = '0123456x?', want '01234567?'"
            assert result("add_header_value/request") == "fail: value count = 1, want 2"
            assert result("get_header_names/lowercase") == "fail: x-case-a or x-case-b missing from get_header_names"
            assert client.post("/", headers={"x-httpwasm-test-id": "read_body/request"}, content=b"other") \
                .headers["x-conformance-result"] == "fail: request body = 'other', want 'hello conformance body'"

    def test_conformance_config_matches_the_contract(self) -> None:
        source, declaration = {
            "zig": (GUESTS / "zig" / "conformance.zig", "const expected_config = {};"),
            "go": (GUESTS / "go" / "conformance" / "main.go", "const expectedConfig = {}"),
            "rust": (GUESTS / "rust" / "conformance.rs", "const EXPECTED_CONFIG: &str = {};"),
            "assemblyscript": (GUESTS / "assemblyscript" / "conformance.ts", "const expectedConfig = {};"),
            "c": (GUESTS / "c" / "conformance.c", "static const char expected_config[] = {};"),
        }[self.lang]
        embedded = json.dumps(load_suite().config.decode())  # the string literal is the JSON-escaped config
        assert declaration.format(embedded) in source.read_text()
