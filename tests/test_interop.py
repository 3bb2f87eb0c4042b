"""Guests as Traefik and Dapr package them (server/interop.py): plugin directories, components and a Dapr
pipeline, in config files and from Python, through `serve` and `add_middleware`; every error path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from http_wasm_asgi import (
    ConfigError,
    HttpWasmMiddleware,
    PackagingError,
    dapr_component,
    dapr_pipeline,
    traefik_plugin,
)
from http_wasm_asgi.server.config import load_config
from http_wasm_asgi.server.sources import file_sha256, sources_dir
from support import ROOT, ZIG, docs
from support.procs import COMMAND, free_port, serving

TRAEFIK = ROOT / "examples" / "traefik"
DAPR = ROOT / "examples" / "dapr"
TOKEN = {"authorization": "Bearer demo-token"}
MANIFEST = """displayName: Header adder
type: middleware
runtime: wasm
wasmPath: plugin.wasm
testData:
  Headers: {X-Demo: yes}
"""


def plugin(tmp_path: Path, manifest: str = MANIFEST, wasm: Path | None = ZIG / "headeradder.wasm") -> Path:
    folder = tmp_path / "plugins" / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".traefik.yml").write_text(manifest)
    if wasm is not None:
        shutil.copy(wasm, folder / "plugin.wasm")
    return folder


def component(path: Path, name: str, url: str, config: str | None = None, kind: str = "middleware.http.wasm") -> Path:
    items = [{"name": "url", "value": url}] + ([{"name": "guestConfig", "value": config}] if config else [])
    doc = {"apiVersion": "dapr.io/v1alpha1", "kind": "Component", "metadata": {"name": name},
           "spec": {"type": kind, "version": "v1", "metadata": items}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def chain_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chain.yaml"
    path.write_text("app: examples.hello:app\n" + text)
    return path


def starlette_app() -> Starlette:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/{path:path}", hello)])


async def check_auth_chain(app: Any) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        denied = await c.get("/whoami")
        assert (denied.status_code, denied.headers["www-authenticate"]) == (401, "Bearer")
        ok = await c.get("/whoami", headers=TOKEN)
        assert ok.status_code == 200 and ok.headers["x-powered-by"] == "http-wasm"


# --- Traefik ---
def test_testdata_is_the_default_config_sent_as_json(tmp_path: Path) -> None:
    guest = traefik_plugin(plugin(tmp_path))
    assert guest.name == "demo"
    assert json.loads(guest.config) == {"Headers": {"X-Demo": True}}
    assert json.loads(traefik_plugin(plugin(tmp_path), config={"a": 1}).config) == {"a": 1}
    assert traefik_plugin(plugin(tmp_path), config="response x-a 1").config == b"response x-a 1"


def test_envs_and_mounts_become_wasi_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_TOKEN", "t0k3n")
    monkeypatch.delenv("DEMO_UNSET", raising=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "cache").mkdir()
    monkeypatch.chdir(tmp_path)
    guest = traefik_plugin(plugin(tmp_path), envs=["DEMO_TOKEN", "DEMO_UNSET"],
                           mounts=["data:/data:ro", "cache:/cache", "data"])
    wasi = guest.module.wasi
    assert dict(wasi.env) == {"DEMO_TOKEN": "t0k3n"}  # a variable that is not set is not forwarded
    assert dict(wasi.dirs) == {"/data": str(tmp_path / "data"), "/cache": str(tmp_path / "cache"),
                               "data": str(tmp_path / "data")}
    assert wasi.writable == {"/cache", "data"}  # read-write unless ':ro'


def test_a_config_entry_with_settings(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    plugin(tmp_path)
    config = load_config(chain_file(tmp_path, "guests:\n  - traefik_plugin: plugins/demo\n"
                                              "    settings: {mounts: ['files:/files:ro']}\n"
                                              "    failure_policy: fail_open\n"))
    spec = config.guests[0]
    assert spec.name == "demo" and spec.path == (tmp_path / "plugins" / "demo" / "plugin.wasm")
    assert spec.options["config"] == {"Headers": {"X-Demo": True}}  # sent as JSON
    assert spec.options["wasi_dirs"] == {"/files": str(tmp_path / "files")}
    assert spec.options["wasi_dirs_writable"] == frozenset()
    assert spec.options["failure_policy"] == "fail_open"


@pytest.mark.parametrize(("manifest", "wasm", "error"), [
    ("displayName: x\ntype: middleware\nruntime: yaegi\nimport: github.com/x/y\n", True,
     r"\.traefik\.yml: runtime: must be 'wasm', got 'yaegi'"),
    ("type: provider\nruntime: wasm\nwasmPath: plugin.wasm\n", True, r"\.traefik\.yml: type: must be 'middleware'"),
    ("type: middleware\nruntime: wasm\n", True, r"\.traefik\.yml: wasmPath: is missing"),
    ("type: middleware\nruntime: wasm\nwasmPath: plugin.wasm\n", False,
     r"\.traefik\.yml: wasmPath: file 'plugin.wasm' not found"),
    ("type: middleware\nruntime: wasm\nwasmPath: plugin.wasm\ntestData: [1]\n", True,
     r"\.traefik\.yml: testData: must be a mapping"),
    ("type: middleware\nruntime: wasm\nwasmPath: [x: y\n", True, r"\.traefik\.yml: not valid YAML"),
    ("- a list\n", True, r"\.traefik\.yml: must be one YAML mapping"),
])
def test_manifest_errors_name_the_file_and_key(tmp_path: Path, manifest: str, wasm: bool, error: str) -> None:
    plugin(tmp_path, manifest, ZIG / "headeradder.wasm" if wasm else None)
    with pytest.raises(ConfigError, match=r"chain\.yaml: guests\[0\]\.traefik_plugin: .*plugins/demo/" + error):
        load_config(chain_file(tmp_path, "guests:\n  - traefik_plugin: plugins/demo\n"))
    with pytest.raises(PackagingError, match=error):
        traefik_plugin(tmp_path / "plugins" / "demo")


@pytest.mark.parametrize(("entry", "error"), [
    ("traefik_plugin: nowhere", r"guests\[0\]\.traefik_plugin: plugin directory '.*nowhere' not found"),
    ("traefik_plugin: empty", r"guests\[0\]\.traefik_plugin: .*empty/\.traefik\.yml: file not found"),
    ("traefik_plugin: plugins/demo\n    path: x.wasm", r"guests\[0\]\.path: cannot be set together with "
                                                       "'traefik_plugin'"),
    ("path: plugins/demo/plugin.wasm\n    settings: {envs: [A]}", r"guests\[0\]\.settings: is Traefik's wasm settings"),
    ("traefik_plugin: plugins/demo\n    settings: {env: [A]}", r"guests\[0\]\.settings\.env: unknown key"),
    ("traefik_plugin: plugins/demo\n    settings: {envs: A}", r"guests\[0\]\.settings\.envs: must be a list"),
    ("traefik_plugin: plugins/demo\n    settings: {mounts: ['a:b:c']}",
     r"guests\[0\]\.settings\.mounts\[0\]: must be 'host:guest' with an optional ':ro'"),
    ("traefik_plugin: plugins/demo\n    settings: {mounts: ['gone:/gone']}",
     r"guests\[0\]\.settings\.mounts\[0\]: host folder 'gone' not found"),
    ("traefik_plugin: 3", r"guests\[0\]\.traefik_plugin: must be a path"),
])
def test_entry_errors(tmp_path: Path, entry: str, error: str) -> None:
    plugin(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=error):
        load_config(chain_file(tmp_path, f"guests:\n  - {entry}\n"))


async def test_traefik_plugins_through_add_middleware() -> None:
    app = starlette_app()
    app.add_middleware(HttpWasmMiddleware, guests=[
        traefik_plugin(TRAEFIK / "plugins" / "auth", config="demo-token"),
        traefik_plugin(TRAEFIK / "plugins" / "headeradder", config="response x-powered-by http-wasm")])
    await check_auth_chain(app)


# --- Dapr ---
def test_a_component_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative file:// URL is read from the working directory, as daprd does
    shutil.copy(ZIG / "auth.wasm", tmp_path / "auth.wasm")
    path = component(tmp_path / "deploy" / "auth.yaml", "gate", "file://auth.wasm", "demo-token")
    guest = dapr_component(path)
    assert (guest.name, guest.config, guest.path) == ("gate", b"demo-token", tmp_path / "auth.wasm")
    config = load_config(chain_file(tmp_path, "guests:\n  - dapr_component: deploy/auth.yaml\n"
                                              "    max_instances: 4\n"))
    spec = config.guests[0]
    assert (spec.name, spec.path, spec.options) == ("gate", tmp_path / "auth.wasm",
                                                    {"config": "demo-token", "max_instances": 4})
    absolute = component(tmp_path / "abs.yaml", "abs", f"file://{ZIG / 'auth.wasm'}")
    assert dapr_component(absolute).path == ZIG / "auth.wasm"


def test_an_https_component_follows_the_source_rules(tmp_path: Path) -> None:
    component(tmp_path / "remote.yaml", "remote", "https://guests.example.invalid/auth.wasm", "demo-token")
    with pytest.raises(ConfigError, match=r"guests\[0\]\.url: is not pinned"):
        load_config(chain_file(tmp_path, "guests:\n  - dapr_component: remote.yaml\n"))
    digest = file_sha256(ZIG / "auth.wasm")  # pinned and in the cache: used without the network
    cached = sources_dir() / "sha256" / f"{digest}.wasm"
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ZIG / "auth.wasm", cached)
    config = load_config(chain_file(tmp_path, f"guests:\n  - dapr_component: remote.yaml\n    sha256: {digest}\n"))
    assert config.guests[0].path == cached and config.guests[0].source.startswith("url: https://")
    assert dapr_component(tmp_path / "remote.yaml", sha256=digest).config == b"demo-token"


@pytest.mark.parametrize(("doc", "error"), [
    ({"kind": "Component", "spec": {"type": "middleware.http.oauth2", "metadata": []}},
     r"spec\.type: must be 'middleware\.http\.wasm', got 'middleware\.http\.oauth2'"),
    ({"kind": "Component", "spec": {"type": "middleware.http.wasm", "metadata": []}},
     r"spec\.metadata: has no 'url' item"),
    ({"kind": "Component", "spec": {"type": "middleware.http.wasm", "metadata": [
        {"name": "url", "secretKeyRef": {"name": "s", "key": "k"}}]}},
     r"spec\.metadata\[0\]\.secretKeyRef: secret references are not resolved here"),
    ({"kind": "Component", "spec": {"type": "middleware.http.wasm", "metadata": [
        {"name": "url", "value": "oci://ghcr.io/x"}]}},
     r"spec\.metadata url: must be a file://, http:// or https:// URL"),
    ({"kind": "Component", "spec": {"type": "middleware.http.wasm", "metadata": [
        {"name": "url", "value": "file://missing.wasm"}]}},
     r"spec\.metadata url: file 'file://missing\.wasm' not found .* read from the working directory, as daprd"),
    ({"kind": "Configuration"}, r"must hold one 'kind: Component', found 0"),
])
def test_component_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, doc: dict[str, Any], error: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"guests\[0\]\.dapr_component: .*c\.yaml: " + error):
        load_config(chain_file(tmp_path, "guests:\n  - dapr_component: c.yaml\n"))


def pipeline(tmp_path: Path, handlers: list[dict[str, str]]) -> None:
    doc = {"kind": "Configuration", "metadata": {"name": "c"}, "spec": {"httpPipeline": {"handlers": handlers}}}
    (tmp_path / "config.yaml").write_text(json.dumps(doc))
    component(tmp_path / "components" / "auth.yaml", "auth", f"file://{ZIG / 'auth.wasm'}", "demo-token")
    component(tmp_path / "components" / "adder.yaml", "adder", f"file://{ZIG / 'headeradder.wasm'}",
              "response x-powered-by http-wasm")
    (tmp_path / "components" / "state.yaml").write_text("kind: Component\nmetadata: {name: redis}\n"
                                                        "spec: {type: state.redis, metadata: []}\n---\n")


WASM = "middleware.http.wasm"
DAPR_CHAIN = "dapr: {configuration: config.yaml, resources: components}\n"


def test_a_pipeline_orders_the_components(tmp_path: Path) -> None:
    pipeline(tmp_path, [{"name": "adder", "type": WASM}, {"name": "auth", "type": WASM}])
    config = load_config(chain_file(tmp_path, "dapr: {configuration: config.yaml, resources: components, "
                                              "options: {auth: {failure_policy: fail_open}}}\n"))
    assert [(g.name, g.path.name) for g in config.guests] == [("adder", "headeradder.wasm"), ("auth", "auth.wasm")]
    assert config.guests[1].options == {"config": "demo-token", "failure_policy": "fail_open"}


@pytest.mark.parametrize(("handlers", "text", "error"), [
    ([{"name": "nope", "type": WASM}], DAPR_CHAIN,
     r"dapr\.resources: .*handlers\[0\]: no component named 'nope' of type 'middleware\.http\.wasm'"),
    ([{"name": "oauth", "type": "middleware.http.oauth2"}], DAPR_CHAIN,
     r"dapr\.configuration: .*handlers\[0\]: type: 'middleware\.http\.oauth2' is not"),
    ([], DAPR_CHAIN, r"dapr\.configuration: .*spec\.httpPipeline\.handlers: is missing or empty"),
    ([{"name": "auth", "type": WASM}], "dapr: {configuration: config.yaml, resources: nowhere}\n",
     r"dapr\.resources: folder '.*nowhere' not found"),
    ([{"name": "auth", "type": WASM}], "dapr: {configuration: nowhere.yaml, resources: components}\n",
     r"dapr\.configuration: .*nowhere\.yaml: file not found"),
    ([{"name": "auth", "type": WASM}], "dapr: {resources: components}\n", r"dapr\.configuration: is missing"),
    ([{"name": "auth", "type": WASM}], "dapr: {configuration: config.yaml, resources: components, pipe: 1}\n",
     r"dapr\.pipe: unknown key"),
    ([{"name": "auth", "type": WASM}], "dapr: {configuration: config.yaml, resources: components, "
                                       "options: {auht: {}}}\n", r"dapr\.options: no handler .* named 'auht'"),
    ([{"name": "auth", "type": WASM}], DAPR_CHAIN + "guests: []\n", r"dapr: cannot be set together with 'guests'"),
])
def test_pipeline_errors(tmp_path: Path, handlers: list[dict[str, str]], text: str, error: str) -> None:
    pipeline(tmp_path, handlers)
    with pytest.raises(ConfigError, match=r"chain\.yaml: " + error):
        load_config(chain_file(tmp_path, text))


async def test_a_dapr_pipeline_through_add_middleware() -> None:
    cwd = os.getcwd()
    os.chdir(ROOT)  # the example components' file:// URLs are relative to the repository's top folder
    try:
        guests = dapr_pipeline(DAPR / "config.yaml", DAPR / "components", failure_policy="fail_open")
    finally:
        os.chdir(cwd)
    assert [(g.name, g.failure_policy) for g in guests] == [("auth", "fail_open"), ("headeradder", "fail_open")]
    app = starlette_app()
    app.add_middleware(HttpWasmMiddleware, guests=guests)
    await check_auth_chain(app)


# --- the examples, through the command ---
@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("config", ["examples/traefik/chain.yaml", "examples/dapr/chain.yaml"])
def test_the_examples_served_by_the_command(config: str) -> None:
    port = free_port()
    with serving([COMMAND, "serve", config, "--port", str(port)], port) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        denied = client.get("/whoami")
        assert (denied.status_code, denied.headers["www-authenticate"]) == (401, "Bearer")
        ok = client.get("/whoami", headers=TOKEN)
        assert ok.status_code == 200 and ok.headers["x-powered-by"] == "http-wasm"
        assert ok.json()["path"] == "/whoami"


def test_the_readme_maps_every_key() -> None:
    section = docs.section("Coming from Traefik or Dapr")  # docs/guide/traefik-dapr.md
    for key in ("wasmPath", "testData", "settings.envs", "settings.mounts", "spec.metadata", "guestConfig",
                "httpPipeline", "file://", "failure_policy", "examples/traefik/chain.yaml", "examples/dapr/chain.yaml"):
        assert key in section, key
