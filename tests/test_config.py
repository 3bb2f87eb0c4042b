"""Config files: every error kind (file, key path and fix in the message), YAML and TOML giving the
same chain, the three forms of a guest's config reaching the guest, load_config and from_config."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from http_wasm_asgi import ConfigError, HttpWasmMiddleware, load_config
from http_wasm_asgi.asgi.proxy import ProxyApp, UpstreamTimeout
from http_wasm_asgi.server.config import middleware_from_config
from http_wasm_asgi.testing import echo_app
from support import ROOT, WAT

ZIG = ROOT / "guests" / "zig"
START = WAT / "start_section.wat"  # echoes its config in the `x-config` response header


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A config folder with a guest next to it (`guest.wat`) and a module with an ASGI app."""
    (tmp_path / "guest.wat").write_bytes(START.read_bytes())
    (tmp_path / "bad.wasm").write_bytes(b"\0asm\x01\0\0\0garbage")
    (tmp_path / "traps.wat").write_bytes((WAT / "invalid" / "traps_at_init.wat").read_bytes())
    (tmp_path / "cfgapp.py").write_text("async def app(scope, receive, send):\n    pass\n")
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('the module is broken')\n")
    return tmp_path


def error_of(folder: Path, text: str, name: str = "chain.yaml") -> ConfigError:
    path = write(folder, name, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # always names the file
    return info.value


OK = "app: cfgapp:app\nguests:\n  - path: guest.wat\n"

# (yaml text, key path, words the message must contain): one row per kind of mistake
BAD_YAML = [
    ("app: cfgapp:app\nguest: []\n", "guest", "did you mean 'guests'?"),
    ("app: cfgapp:app\nupstream_timout: 3\nguests: []\n", "upstream_timout", "did you mean 'upstream_timeout'?"),
    ("app: cfgapp:app\nzzz: 1\nguests: []\n", "zzz", "allowed keys here: app, upstream"),
    ("app: cfgapp:app\nserver: {prot: 80}\nguests: []\n", "server.prot", "did you mean 'port'?"),
    (OK + "    max_instance: 3\n", "guests[0].max_instance", "did you mean 'max_instances'?"),
    (OK + "    wasi: {envs: {}}\n", "guests[0].wasi.envs", "did you mean 'env'?"),
    ("app: cfgapp:app\nupstream_timeout: {conect: 1}\nguests: []\n", "upstream_timeout.conect",
     "did you mean 'connect'?"),
    ("guests: []\n", "app", "set 'app' (an ASGI app as module:attribute) or 'upstream'"),
    ("app: cfgapp:app\nupstream: http://127.0.0.1:9\nguests: []\n", "upstream", "keep exactly one of 'app'"),
    ("app: cfgapp\nguests: []\n", "app", "must be 'module:attribute'"),
    ("upstream: ftp://x\nguests: []\n", "upstream", "must be an http:// or https:// URL"),
    ("upstream: 9000\nguests: []\n", "upstream", "must be an http:// or https:// URL"),
    ("app: cfgapp:app\n", "guests", "is missing; fix: add 'guests:'"),
    ("app: cfgapp:app\nguests: {path: guest.wat}\n", "guests",
     "must be a list of guests (outermost first), got a mapping"),
    ("app: cfgapp:app\nguests: [guest.wat]\n", "guests[0]", "must be a mapping with at least 'path', got a string"),
    ("app: cfgapp:app\nguests:\n  - name: a\n", "guests[0].path", "is missing; fix: set it to the guest's .wasm"),
    ("app: cfgapp:app\nguests:\n  - path: 7\n", "guests[0].path", "must be a file path, got an integer 7"),
    (OK + "  - path: missing.wasm\n", "guests[1].path",
     "file 'missing.wasm' not found (looked for"),
    (OK + "  - path: guest.wat\n", "guests[1].name", "duplicate guest name 'guest' (also guests[0])"),
    (OK + "    name: 5\n", "guests[0].name", "must be a name, got an integer 5"),
    (OK + "    config: [1, 2]\n", "guests[0].config", "must be a string, a mapping (sent as JSON) or {base64: ...}"),
    (OK + "    config: {base64: '***'}\n", "guests[0].config.base64", "is not valid base64"),
    (OK + "    config: {base64: aGk=, x: 1}\n", "guests[0].config.base64", "must be the only key"),
    (OK + "    max_instances: many\n", "guests[0].max_instances", "must be a number of instances (1 or more)"),
    (OK + "    max_instances: 0\n", "guests[0].max_instances", "must be a number of instances (1 or more), got 0"),
    (OK + "    max_instances: true\n", "guests[0].max_instances", "got a boolean"),
    (OK + "    reuse_instances: yes please\n", "guests[0].reuse_instances", "must be true or false"),
    (OK + "    call_timeout: -1\n", "guests[0].call_timeout", "greater than 0, got -1"),
    (OK + "    pool_timeout: soon\n", "guests[0].pool_timeout", "must be a number of seconds"),
    (OK + "    memory_limit: lots\n", "guests[0].memory_limit", "like 65536 or '64MiB', got 'lots'"),
    (OK + "    recycle_memory: lots\n", "guests[0].recycle_memory",
     "must be a size like '64MiB' (how far an instance may grow past its start before it is replaced), or null to "
     "never replace one; got 'lots'"),
    (OK + "  - {name: churn, path: guest.wat, recycle_memory: -1}\n", "guests[1].recycle_memory", "or null"),
    (OK + "    recycle_memory: false\n", "guests[0].recycle_memory", "got False"),
    (OK + "    wasi: {dirs: {/data: nowhere}}\n", "guests[0].wasi.dirs./data", "folder 'nowhere' not found"),
    (OK + "server: {port: http}\n", "server.port", "must be a port number (0-65535), got a string 'http'"),
    (OK + "server: {port: 70000}\n", "server.port", "must be a port number (0-65535), got 70000"),
    (OK + "server: {workers: 0}\n", "server.workers", "a number of worker processes (1 or more), got 0"),
    (OK + "server: {host: [a]}\n", "server.host", "must be a host name or address, got a list"),
    (OK + "server: 8080\n", "server", "must be a mapping with host, port, workers"),
    (OK + "server: {shutdown_timeout: 0}\n", "server.shutdown_timeout", "must be a number of seconds greater than 0"),
    (OK + "metrics: {prot: 9100}\n", "metrics.prot", "did you mean 'port'?"),
    (OK + "metrics: {host: 0.0.0.0}\n", "metrics.port", "is missing; fix: the port of the metrics listener"),
    (OK + "metrics: {port: 99999}\n", "metrics.port", "must be a port number (0-65535), got 99999"),
    (OK + "metrics: 9100\n", "metrics", "must be a mapping with port (and host), got an integer 9100"),
    (OK + "max_body_size: -5\n", "max_body_size", "must be a size in bytes"),
    (OK + "log_level: loud\n", "log_level", "must be one of critical, error, warning, info, debug, trace"),
    (OK + "upstream_timeout: 0\n", "upstream_timeout", "greater than 0, or a mapping"),
    (OK + "upstream_timeout: {read: fast}\n", "upstream_timeout.read", "must be a number of seconds"),
]


@pytest.mark.parametrize(("text", "key", "words"), BAD_YAML, ids=[row[1] + ":" + row[2][:24] for row in BAD_YAML])
def test_each_mistake_names_the_file_the_key_and_the_fix(folder: Path, text: str, key: str, words: str) -> None:
    error = error_of(folder, text)
    assert error.key == key
    assert f": {key}: " in str(error)
    assert words in str(error)


BAD_TOML = [
    ('app = "cfgapp:app"\nguest = []\n', "guest", "did you mean 'guests'?"),
    ('app = "cfgapp:app"\n[[guests]]\npath = "guest.wat"\nmax_instance = 2\n', "guests[0].max_instance",
     "did you mean 'max_instances'?"),
    ('app = "cfgapp:app"\n[server]\nport = "http"\n[[guests]]\npath = "guest.wat"\n', "server.port",
     "must be a port number"),
    ('app = "cfgapp:app"\nupstream = "http://h"\nguests = []\n', "upstream", "keep exactly one"),
    ('app = "cfgapp:app"\n[[guests]]\npath = "guest.wat"\nrecycle_memory = "off"\n', "guests[0].recycle_memory",
     "or null to never replace one; got 'off'"),
    ('app = "cfgapp:app"\n[[guests]]\npath = "guest.wat"\n[[guests]]\npath = "nope.wasm"\n', "guests[1].path",
     "not found"),
]


@pytest.mark.parametrize(("text", "key", "words"), BAD_TOML, ids=[row[1] for row in BAD_TOML])
def test_toml_mistakes_are_reported_the_same_way(folder: Path, text: str, key: str, words: str) -> None:
    error = error_of(folder, text, "chain.toml")
    assert (error.key, words in str(error)) == (key, True), str(error)


def test_file_level_problems(folder: Path) -> None:
    missing = folder / "absent.yaml"
    with pytest.raises(ConfigError, match=r"absent\.yaml: config file not found; fix: check the path"):
        load_config(missing)
    error = error_of(folder, "app: cfgapp:app\nguests: [\n  - path: x\n")
    assert "not valid YAML" in str(error) and "line" in str(error)
    error = error_of(folder, 'app = "cfgapp:app"\nguests = = []\n', "chain.toml")
    assert "not valid TOML" in str(error) and "line" in str(error)
    assert "must be a mapping with 'guests'" in str(error_of(folder, "- a\n- b\n"))
    assert "must be a mapping with 'guests'" in str(error_of(folder, ""))


def test_a_guest_that_fails_validation_is_reported_with_its_key_path(folder: Path) -> None:
    for bad, words in (("bad.wasm", "not a valid WebAssembly module"), ("traps.wat", "")):
        config = load_config(write(folder, "chain.yaml", OK + f"  - name: second\n    path: {bad}\n"))
        with pytest.raises(ConfigError) as info:
            config.load_guests()
        message = str(info.value)
        assert info.value.key == "guests[1].path"
        assert message.startswith(f"{folder / 'chain.yaml'}: guests[1].path: guest 'second': ")
        assert words in message
        assert "fix: use an http-wasm guest built for this host (see `http-wasm-asgi inspect" in message


def test_an_app_that_does_not_import_is_a_config_error(folder: Path) -> None:
    with pytest.raises(ConfigError, match=r"app: cannot import 'nosuchmodule:app'.*fix: run from the folder"):
        middleware_from_config(write(folder, "c1.yaml", "app: nosuchmodule:app\nguests: []\n"))
    with pytest.raises(ConfigError, match=r"app: cannot import 'cfgapp:nothing'"):
        middleware_from_config(write(folder, "c2.yaml", "app: cfgapp:nothing\nguests: []\n"))
    with pytest.raises(ConfigError, match=r"importing 'broken_app:app' failed: RuntimeError: the module is broken"):
        middleware_from_config(write(folder, "c3.yaml", "app: broken_app:app\nguests: []\n"))


def test_defaults_and_every_option(folder: Path) -> None:
    (folder / "data").mkdir()
    config = load_config(write(folder, "full.yaml", """
upstream: http://127.0.0.1:9000/base
upstream_timeout: {connect: 1.5, read: 2}
server: {host: 0.0.0.0, port: 9999, workers: 3}
max_body_size: 2MiB
log_level: WARNING
guests:
  - name: first
    path: guest.wat
    config: {base64: "aGVs bG8="}
    max_instances: 4
    reuse_instances: false
    pool_timeout: 2
    call_timeout: 0.5
    memory_limit: 8MiB
    threaded: true
    wasi: {env: {A: 1}, dirs: {/data: data}}
  - path: guest.wat
    name: second
    config:
"""))
    assert (config.app, config.upstream) == (None, "http://127.0.0.1:9000/base")
    assert config.upstream_timeout == UpstreamTimeout(connect=1.5, read=2.0, write=30.0, pool=10.0)
    assert (config.host, config.port, config.workers) == ("0.0.0.0", 9999, 3)
    assert (config.max_body_size, config.log_level) == (2 * 1024 * 1024, "warning")
    first, second = config.guests
    assert (first.name, first.path) == ("first", folder / "guest.wat")
    assert first.options == {"config": b"hello", "max_instances": 4, "reuse_instances": False, "pool_timeout": 2.0,
                             "call_timeout": 0.5, "memory_limit": 8 * 1024 * 1024, "threaded": True,
                             "wasi_env": {"A": "1"}, "wasi_dirs": {"/data": str(folder / "data")}}
    assert (second.name, second.options) == ("second", {})  # an empty config is no config
    bare = load_config(write(folder, "bare.yaml", "app: cfgapp:app\nguests: []\nupstream_timeout: 7\n"))
    assert bare.upstream_timeout == UpstreamTimeout(7, 7, 7, 7)
    assert (bare.host, bare.port, bare.workers, bare.log_level, bare.guests) == ("127.0.0.1", 8080, 1, "info", [])
    assert bare.max_body_size == 16 * 1024 * 1024


def test_yaml_and_toml_examples_give_the_same_chain() -> None:
    yaml_chain = load_config(ROOT / "examples" / "chain.yaml")
    toml_chain = load_config(ROOT / "examples" / "chain.toml")
    assert yaml_chain.guests == toml_chain.guests
    assert [g.name for g in yaml_chain.guests] == ["accesslog", "router", "auth", "redact", "headeradder"]
    assert all(g.path.parent.resolve() == ZIG for g in yaml_chain.guests)
    for field in ("app", "upstream", "upstream_timeout", "host", "port", "workers", "max_body_size", "log_level"):
        assert getattr(yaml_chain, field) == getattr(toml_chain, field), field


def test_yaml_and_toml_with_every_config_form_give_the_same_chain(folder: Path) -> None:
    yaml_path = write(folder, "forms.yaml", """
app: cfgapp:app
guests:
  - {name: text, path: guest.wat, config: "line one\\nline two"}
  - {name: json, path: guest.wat, config: {limit: 3, paths: [/a, /b], deep: {enabled: true}}}
  - {name: bytes, path: guest.wat, config: {base64: AAEC/w==}}
""")
    toml_path = write(folder, "forms.toml", """
app = "cfgapp:app"
[[guests]]
name = "text"
path = "guest.wat"
config = "line one\\nline two"
[[guests]]
name = "json"
path = "guest.wat"
config = { limit = 3, paths = ["/a", "/b"], deep = { enabled = true } }
[[guests]]
name = "bytes"
path = "guest.wat"
config = { base64 = "AAEC/w==" }
""")
    from_yaml, from_toml = load_config(yaml_path), load_config(toml_path)
    assert from_yaml.guests == from_toml.guests
    assert [g.options["config"] for g in from_yaml.guests] == [
        "line one\nline two", {"limit": 3, "paths": ["/a", "/b"], "deep": {"enabled": True}}, b"\x00\x01\x02\xff"]


async def test_each_config_form_reaches_the_guest_as_documented(folder: Path) -> None:
    """A string as UTF-8, a mapping as compact JSON, {base64: ...} as the decoded bytes."""
    payload = base64.b64encode(b"raw=bytes+/").decode()
    cases = {"text": ("config: \"caf\\xE9 au lait\"", "café au lait".encode()),
             "mapping": ("config: {b: [1, 2], a: x}", json.dumps({"b": [1, 2], "a": "x"},
                                                                  separators=(",", ":")).encode()),
             "base64": (f"config: {{base64: '{payload}'}}", b"raw=bytes+/")}
    for name, (line, expected) in cases.items():
        path = write(folder, f"{name}.yaml", f"app: cfgapp:app\nguests:\n  - path: guest.wat\n    {line}\n")
        app = HttpWasmMiddleware.from_config(str(path), app=echo_app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            response = await client.get("/")
        assert response.status_code == 200, name
        assert (b"x-config", expected) in response.headers.raw, name


async def test_from_config_builds_the_chain_in_front_of_the_file_app_or_a_given_one(folder: Path) -> None:
    (folder / "tokenapp.py").write_text(
        "from starlette.responses import PlainTextResponse\n"
        "async def app(scope, receive, send):\n"
        "    await PlainTextResponse('from the file app')(scope, receive, send)\n")
    path = write(folder, "auth.yaml", f"app: tokenapp:app\nguests:\n  - path: {ZIG / 'auth.wasm'}\n"
                                      "    config: s3cret\n")
    given = Starlette(routes=[Route("/", lambda request: PlainTextResponse("from the given app"))])
    for app, text in ((HttpWasmMiddleware.from_config(str(path)), "from the file app"),
                      (HttpWasmMiddleware.from_config(str(path), app=given), "from the given app")):
        assert isinstance(app, HttpWasmMiddleware) and [g.name for g in app.guests] == ["auth"]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.get("/")).status_code == 401
            ok = await client.get("/", headers={"authorization": "Bearer s3cret"})
        assert (ok.status_code, ok.text) == (200, text)


def test_from_config_with_upstream_builds_a_proxy_with_the_configured_timeouts(folder: Path) -> None:
    path = write(folder, "side.yaml", "upstream: http://127.0.0.1:9/x\nupstream_timeout: {connect: 1, read: 2.5}\n"
                                      "max_body_size: 1KiB\nguests:\n  - path: guest.wat\n")
    middleware = HttpWasmMiddleware.from_config(str(path))
    proxy: Any = middleware.app
    assert isinstance(proxy, ProxyApp) and proxy.upstream == "http://127.0.0.1:9/x"
    timeout = proxy.timeout
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (1.0, 2.5, 30.0, 10.0)
    assert middleware.max_body_size == 1024


def test_load_config_is_exported_and_loads_no_guest(folder: Path) -> None:
    import http_wasm_asgi

    assert http_wasm_asgi.load_config is load_config and "load_config" in http_wasm_asgi.__all__
    # validation does not compile: a broken module is only found when the guests load
    config = load_config(write(folder, "lazy.yaml", "app: cfgapp:app\nguests:\n  - path: bad.wasm\n"))
    assert [g.name for g in config.guests] == ["bad"]


async def test_a_guest_config_from_a_file_or_the_environment_reaches_the_guest(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets stay out of config files: `config_file` (e.g. a mounted Secret, relative to the config) and
    `config_env` give the guest the bytes of a file or the value of a variable."""
    (folder / "token").write_bytes(b"from-a-file")
    monkeypatch.setenv("CHAIN_TOKEN", "from-the-env")
    config = write(folder, "chain.yaml", "app: cfgapp:app\nguests:\n  - {path: guest.wat, config_file: token}\n"
                                         "  - {path: guest.wat, name: second, config_env: CHAIN_TOKEN}\n")
    loaded = load_config(config)
    assert [g.options["config"] for g in loaded.guests] == [b"from-a-file", b"from-the-env"]
    app = middleware_from_config(config, echo_app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/")).headers["x-config"] == "from-a-file"  # the outer guest sets it last
    app.close()


@pytest.mark.parametrize(("entry", "key", "words"), [
    ("{path: guest.wat, config_file: missing}", "guests[0].config_file", "cannot read"),
    ("{path: guest.wat, config_env: NO_SUCH_VARIABLE_HERE}", "guests[0].config_env", "is not set"),
    ("{path: guest.wat, config: a, config_env: X}", "guests[0].config_env", "cannot be set together with 'config'"),
    ("{path: guest.wat, config_file: 3}", "guests[0].config_file", "must be a file path"),
])
def test_a_guest_config_from_elsewhere_that_cannot_be_read_is_a_clear_error(folder: Path, entry: str, key: str,
                                                                            words: str) -> None:
    config = write(folder, "chain.yaml", f"app: cfgapp:app\nguests:\n  - {entry}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.key == key and words in caught.value.problem, str(caught.value)


def test_recycle_memory_is_a_size_or_none_and_reaches_the_guests_instances(folder: Path) -> None:
    """`recycle_memory`: how far an instance may grow past its start before the pool replaces it."""
    from http_wasm_asgi.guest import DEFAULT_RECYCLE_MEMORY

    yaml_file = write(folder, "chain.yaml", "app: cfgapp:app\nguests:\n"
                      "  - {name: sized, path: guest.wat, recycle_memory: 8MiB}\n"
                      "  - {name: never, path: guest.wat, recycle_memory: null}\n"
                      "  - {name: default, path: guest.wat}\n")
    toml_file = write(folder, "chain.toml", 'app = "cfgapp:app"\n[[guests]]\nname = "bytes"\npath = "guest.wat"\n'
                      'recycle_memory = 65536\n[[guests]]\nname = "never"\npath = "guest.wat"\n'
                      'recycle_memory = "None"\n')
    guests = load_config(yaml_file).load_guests() + load_config(toml_file).load_guests()
    try:
        assert [g.name for g in guests] == ["sized", "never", "default", "bytes", "never"]
        assert guests[2].snapshot.used  # the default applies to snapshot instances
        assert [g.recycle_memory for g in guests] == [8 * 1024 * 1024, None, DEFAULT_RECYCLE_MEMORY, 65536, None]
        for guest in guests:
            instance = guest.pool.instances()[0]  # min_instances: created at load
            expected = None if guest.recycle_memory is None else instance.memory_size() + guest.recycle_memory
            assert instance.recycle_above == expected, guest.name
    finally:
        for guest in guests:
            guest.close()
