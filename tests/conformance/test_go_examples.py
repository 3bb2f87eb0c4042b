"""End-to-end tests of the Go example guests (guests/go) through a real uvicorn server.

The behaviour every language shares is tested by `ExampleGuestTests`
(guest_examples.py); here it runs on the Go guests, plus what only the Go
guests do: JSON configs, config errors at load time (from `init`, run by
`_initialize`), and the library's JSON parser, tested natively against
encoding/json.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from guest_examples import GUESTS, ExampleGuestTests, app_headers, serve_guests

from http_wasm_asgi import GuestError

pytestmark = pytest.mark.slow  # the Go guests are large to load, and `go test` runs the JSON parser's tests


def go_build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("go_build_lang", GUESTS / "go" / "build_lang.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestGoExamples(ExampleGuestTests):
    lang = "go"

    def test_go_guests_are_wasi_reactors_with_only_abi_and_wasi_imports(self) -> None:
        for name in ("conformance", "auth", "router", "redact", "accesslog", "headeradder", "bodyrewrite", "hello"):
            info = self.guest(name).info
            assert info.uses_wasi, name
            assert "_initialize" in {export for export, _ in info.exports}, name
            assert {module for module, _, _ in info.imports} == {"http_handler", "wasi_snapshot_preview1"}, name

    def test_router_json_config(self) -> None:
        config = {"redirects": {"/old": "/new", "/gone": "https://example.com/"},
                  "rewrites": {"/api/": "/v2/", "/api/v1/": "/legacy/"}}
        with serve_guests(self.guest("router", json.dumps(config))) as client:
            r = client.get("/old?x=1")
            assert (r.status_code, r.headers["location"]) == (302, "/new?x=1")
            assert client.get("/gone").headers["location"] == "https://example.com/"
            # The longest rewrite prefix wins, whatever the order in the JSON.
            assert client.get("/api/v1/users?q=1").json()["path"] == "/legacy/users"
            assert client.get("/api/v3/users").json()["path"] == "/v2/v3/users"
            assert client.get("/elsewhere").json()["path"] == "/elsewhere"

    def test_router_config_from_a_mapping_as_in_the_readme(self) -> None:
        with serve_guests(self.guest("router", json.dumps({"redirects": {"/old": "/new"}}))) as client:
            assert client.get("/old").headers["location"] == "/new"

    def test_headeradder_json_config(self) -> None:
        config = {"request": {"x-z": "last", "x-a": ["1", "2"]}, "response": {"x-b": "two words"}}
        with serve_guests(self.guest("headeradder", json.dumps(config))) as client:
            r = client.get("/", headers={"x-a": "0"})
            assert app_headers(r, "x-a") == ["0", "1", "2"]
            assert app_headers(r, "x-z") == ["last"]
            assert [k for k, _ in r.json()["headers"] if k in ("x-a", "x-z")][-1] == "x-z", "names in sorted order"
            assert r.headers["x-b"] == "two words"
            assert app_headers(r, "x-b") == []

    @pytest.mark.parametrize(("name", "config", "reason"), [
        ("router", "{bad", "router: bad JSON config: json: expected a string key at offset 1"),
        ("router", '{"redirects": {"/a": 1}}', 'router: bad JSON config: "redirects" must be an object of strings'),
        ("router", '{"redirect": {}}', 'router: bad JSON config: unknown key "redirect"'),
        ("headeradder", '{"request": {"x-a": [1]}}',
         'headeradder: bad JSON config: request header "x-a" must be a string or a list of strings'),
        ("headeradder", '{"request": ["x-a"]}', 'headeradder: bad JSON config: "request" must be an object'),
        ("bodyrewrite", '{"request": [{"from": "", "to": "x"}]}', 'bodyrewrite: bad JSON config: "request" must be'),
        ("bodyrewrite", '{"response": [{"from": "a"}]}', 'bodyrewrite: bad JSON config: "response" must be'),
        ("bodyrewrite", "nope", "bodyrewrite: bad JSON config: json: invalid literal at offset 0"),
    ])
    def test_a_bad_config_fails_the_load_with_the_guests_reason(self, name: str, config: str, reason: str) -> None:
        # init() runs in _initialize, once per instance: a bad config is a load error, not a failing request.
        with pytest.raises(GuestError) as error:
            self.guest(name, config)
        assert reason in str(error.value)

    def test_the_json_parser_agrees_with_encoding_json(self, tmp_path: Path) -> None:
        # The guests' JSON parser (httpwasm/jsonvalue) has no wasm dependency: its Go tests run natively,
        # comparing it with encoding/json on valid and invalid documents.
        build = go_build_module()
        root = build.go_root()
        go = str(root / "bin" / "go")
        env = build._env(root, tmp_path)
        host = subprocess.run([go, "env", "GOHOSTOS", "GOHOSTARCH"], env=env, capture_output=True, text=True,
                              check=True).stdout.split()
        env |= {"GOOS": host[0], "GOARCH": host[1]}
        proc = subprocess.run([go, "test", "-count=1", "./httpwasm/jsonvalue/"], cwd=GUESTS / "go", env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("ok ")
