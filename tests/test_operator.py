"""What an operator used to uvicorn reaches for, through the real command: `--version`, uvicorn's flags
passed through (and refused on Hypercorn), every flag from HTTP_WASM_ASGI_<FLAG> with flag > environment >
config file > default, `--watch` and the deprecated `--reload`, JSON log lines, and HTTP/2 on uvicorn
(`--http2`: h2c and TLS, with `--workers 2`)."""

from __future__ import annotations

import json
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from http_wasm_asgi import _native
from http_wasm_asgi.registry import package_version
from http_wasm_asgi.server.serve_options import FLAGS
from http_wasm_asgi.wasm.capi import wasmtime_version
from support.asgi_servers import TLS, make_tls
from support.paths import ZIG
from support.procs import COMMAND, Server, free_port, run, serving

# The app behind the chain: what uvicorn put in the scope, as JSON.
SCOPE_APP = """
import json

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({key: scope.get(key) for key in ("root_path", "client", "scheme", "http_version")}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""
XFF = {"x-forwarded-for": "203.0.113.7"}


def write_config(folder: Path, server: str = "") -> Path:
    """The scope app behind the Zig accesslog guest (it logs each request through its own logger)."""
    (folder / "scopeapp.py").write_text(SCOPE_APP)
    config = folder / "chain.yaml"
    config.write_text(f"app: scopeapp:app\n{server}guests:\n  - name: accesslog\n    path: {ZIG / 'accesslog.wasm'}\n")
    return config


@pytest.fixture(scope="module")
def tls() -> Iterator[TLS]:
    with make_tls() as made:
        yield made


def cache_env(tmp_path: Path) -> dict[str, str]:
    return {"HTTP_WASM_ASGI_CACHE_DIR": str(tmp_path / "cache")}


# --- fast: the command line itself ----------------------------------------------------------------------

def test_version_names_the_package_wasmtime_and_the_native_path() -> None:
    result = run([COMMAND, "--version"])
    assert result.returncode == 0 and result.stderr == "", result
    line = result.stdout.strip()
    assert line.startswith(f"http-wasm-asgi {package_version()} (wasmtime {wasmtime_version()}; native path "
                           f"{_native.status()};"), line


def test_help_documents_every_flag_its_variable_and_the_precedence() -> None:
    text = " ".join(run([COMMAND, "serve", "--help"]).stdout.split())
    for flag in FLAGS:
        assert flag.names[0] in text and f"env {flag.env}" in text, flag
        if flag.key:
            assert f"overrides {flag.key}" in text, flag
    assert "Precedence: flag > environment > config file" in text
    assert "--watch" in text and "deprecated spelling of --watch" in text


@pytest.mark.slow
@pytest.mark.parametrize("flag", [flag for flag in FLAGS if flag.parse is not str], ids=lambda flag: flag.env)
def test_a_bad_variable_is_a_one_line_error_naming_it(flag: Any, tmp_path: Path) -> None:
    """Each variable is read (and checked like its flag): a bad value is exit 2, one line, no traceback."""
    result = run([COMMAND, "serve", str(write_config(tmp_path))], env={flag.env: "not-a-value!"})
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"error: {flag.env}: must be ") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "env", "message"), [
    (["--server", "hypercorn", "--forwarded-allow-ips", "*"], {}, "--server hypercorn has no --forwarded-allow-ips"),
    (["--server", "hypercorn"], {"HTTP_WASM_ASGI_PROXY_HEADERS": "0"}, "HTTP_WASM_ASGI_PROXY_HEADERS"),
    (["--server", "hypercorn"], {"HTTP_WASM_ASGI_LIMIT_CONCURRENCY": "4"}, "has no --limit-concurrency"),
    (["--ssl-keyfile", "README.md"], {}, "--ssl-keyfile needs --ssl-certfile"),
])
def test_what_a_server_cannot_do_is_refused_in_one_line(flags: list[str], env: dict[str, str], message: str,
                                                        tmp_path: Path) -> None:
    result = run([COMMAND, "serve", str(write_config(tmp_path)), *flags], env=env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result


# --- precedence: flag > environment > config file > default -----------------------------------------------

def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("source", ["flag", "env", "config", "default"])
def test_port_from_flag_then_environment_then_config_then_default(source: str, tmp_path: Path) -> None:
    """Each source given along with every lower one: the highest wins."""
    flag, env, key = free_port(), free_port(), free_port()
    expected = {"flag": flag, "env": env, "config": key, "default": 8080}[source]
    levels = ["flag", "env", "config", "default"][["flag", "env", "config", "default"].index(source):]
    if source == "default" and _port_in_use(8080):
        pytest.skip("port 8080 is taken on this machine")
    config = write_config(tmp_path, f"server: {{port: {key}}}\n" if "config" in levels else "")
    args = [COMMAND, "serve", str(config), *(["--port", str(flag)] if "flag" in levels else [])]
    variables = {"HTTP_WASM_ASGI_PORT": str(env)} if "env" in levels else {}
    with serving(args, expected, cwd=tmp_path, env={**cache_env(tmp_path), **variables}) as server:
        assert httpx.get(server.url + "/", timeout=10).status_code == 200
        assert f"Uvicorn running on http://127.0.0.1:{expected}" in server.output()


@pytest.mark.slow
@pytest.mark.servers
def test_workers_and_log_level_from_environment_over_the_config(tmp_path: Path) -> None:
    """HTTP_WASM_ASGI_WORKERS=2 and _LOG_LEVEL=info beat server.workers: 1 and log_level: error; the flag
    --log-level warning beats the variable."""
    port = free_port()
    config = write_config(tmp_path, "server: {workers: 1}\nlog_level: error\n")
    env = {**cache_env(tmp_path), "HTTP_WASM_ASGI_WORKERS": "2", "HTTP_WASM_ASGI_LOG_LEVEL": "info"}
    with serving([COMMAND, "serve", str(config), "--port", str(port)], port, cwd=tmp_path, env=env) as server:
        server.wait_for_output("chain loaded", count=3)  # the serve process, then each of the 2 workers
        assert httpx.get(server.url + "/", timeout=10).status_code == 200
    with serving([COMMAND, "serve", str(config), "--port", str(port), "--log-level", "warning"], port,
                 cwd=tmp_path, env=env) as server:
        assert httpx.get(server.url + "/", timeout=10).status_code == 200
    assert "INFO" not in server.final_output and "chain loaded" not in server.final_output, server.final_output


# --- uvicorn's flags, passed through ------------------------------------------------------------------------

PASSED = {  # flag -> (its command-line words, its variable's value)
    "root_path": (["--root-path", "/mounted"], "/mounted"),
    "proxy_headers": (["--no-proxy-headers"], "off"),
    "access_log": (["--no-access-log"], "0"),
    "timeout_keep_alive": (["--timeout-keep-alive", "1"], "1"),
}


def check_passed_through(server: Server) -> None:
    """root_path set, X-Forwarded-For not taken, no access log, idle connections closed after 1 s."""
    scope = httpx.get(server.url + "/", headers=XFF, timeout=10).json()
    assert scope["root_path"] == "/mounted" and scope["client"][0] == "127.0.0.1", scope
    server.wait_for_output("accesslog: GET /mounted/ 200")  # uvicorn puts root_path in front of the path
    assert '"GET / HTTP/1.1" 200' not in server.output()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        while sock.recv(65536):
            pass
        assert time.monotonic() - start < 3  # uvicorn's default keeps it 5 s


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("source", ["flag", "env", "flag-over-env"])
def test_uvicorns_flags_pass_through_from_flag_or_environment(source: str, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path)
    flags = [word for words, _ in PASSED.values() for word in words] if source != "env" else []
    if source == "flag-over-env":  # the variables say the opposite: the flags win
        env = {"HTTP_WASM_ASGI_ROOT_PATH": "/other", "HTTP_WASM_ASGI_PROXY_HEADERS": "1",
               "HTTP_WASM_ASGI_ACCESS_LOG": "yes", "HTTP_WASM_ASGI_TIMEOUT_KEEP_ALIVE": "30"}
    elif source == "env":
        env = {f"HTTP_WASM_ASGI_{name.upper()}": value for name, (_, value) in PASSED.items()}
    else:
        env = {}
    with serving([COMMAND, "serve", str(config), "--port", str(port), *flags], port, cwd=tmp_path,
                 env={**cache_env(tmp_path), **env}) as server:
        check_passed_through(server)


@pytest.mark.slow
@pytest.mark.servers
def test_the_defaults_trust_the_local_proxy_and_log_each_request(tmp_path: Path) -> None:
    """uvicorn's own defaults: proxy headers from 127.0.0.1 taken, root_path empty, an access log line;
    --forwarded-allow-ips (flag, or its variable) names whom to trust instead, and --limit-concurrency
    answers 503 beyond its limit."""
    port = free_port()
    config = write_config(tmp_path)
    with serving([COMMAND, "serve", str(config), "--port", str(port)], port, cwd=tmp_path,
                 env=cache_env(tmp_path)) as server:
        scope = httpx.get(server.url + "/", headers=XFF, timeout=10).json()
        assert scope["root_path"] == "" and scope["client"][0] == "203.0.113.7", scope
        server.wait_for_output('"GET / HTTP/1.1" 200')
    env = {**cache_env(tmp_path), "HTTP_WASM_ASGI_FORWARDED_ALLOW_IPS": "10.9.9.9"}
    for flags in ([], ["--forwarded-allow-ips", "10.9.9.9"]):
        with serving([COMMAND, "serve", str(config), "--port", str(port), *flags], port, cwd=tmp_path,
                     env=env if not flags else cache_env(tmp_path)) as server:
            assert httpx.get(server.url + "/", headers=XFF, timeout=10).json()["client"][0] == "127.0.0.1"
    with serving([COMMAND, "serve", str(config), "--port", str(port), "--limit-concurrency", "1"], port,
                 cwd=tmp_path, env=cache_env(tmp_path)) as server:
        assert httpx.get(server.url + "/", timeout=10).status_code == 503  # its own connection is the one


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("source", ["flag", "env"])
def test_a_unix_socket_from_flag_or_environment(source: str, tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="hwa-uds-") as folder:  # short: sun_path has 108 bytes
        path = str(Path(folder) / "s.sock")
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport, base_url="http://localhost", timeout=10) as client:
            def ready() -> bool:
                try:
                    return client.get("/").status_code == 200
                except httpx.TransportError:
                    return False

            flags = ["--uds", path] if source == "flag" else []
            env = {**cache_env(tmp_path), **({"HTTP_WASM_ASGI_UDS": path} if source == "env" else {})}
            with serving([COMMAND, "serve", str(write_config(tmp_path)), *flags], 0, cwd=tmp_path, env=env,
                         ready=ready):
                assert client.get("/").json()["client"] is None


# --- TLS and HTTP/2 on uvicorn --------------------------------------------------------------------------------

def _answers(url: str, tls: TLS, **options: Any) -> bool:
    try:
        with httpx.Client(verify=tls.client_context(), timeout=2, **options) as client:
            client.get(url)
        return True
    except httpx.TransportError:
        return False


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("source", ["flag", "env"])
def test_http2_on_uvicorn_with_two_workers_over_tls_and_h2c(source: str, tls: TLS, tmp_path: Path) -> None:
    """`--http2 --ssl-certfile --ssl-keyfile --workers 2` (or their variables): HTTP/2 and HTTP/1.1 by ALPN;
    then `--http2` in the clear: HTTP/2 by prior knowledge (h2c) and HTTP/1.1 on the same port."""
    port = free_port()
    config = write_config(tmp_path)
    named = {"http2": "1", "ssl_certfile": str(tls.certfile), "ssl_keyfile": str(tls.keyfile), "workers": "2"}
    flags = ["--http2", "--ssl-certfile", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile), "--workers", "2"]
    env = {f"HTTP_WASM_ASGI_{k.upper()}": v for k, v in named.items()} if source == "env" else {}
    url = f"https://127.0.0.1:{port}/"
    with serving([COMMAND, "serve", str(config), "--port", str(port), *([] if env else flags)], port, cwd=tmp_path,
                 env={**cache_env(tmp_path), **env}, ready=lambda: _answers(url, tls)) as server:
        server.wait_for_output("chain loaded", count=3)
        for http2, version in ((True, "2"), (False, "1.1")):
            with httpx.Client(verify=tls.client_context(), http1=not http2, http2=http2, timeout=10) as client:
                for _ in range(8):
                    r = client.get(url)
                    assert (r.status_code, r.http_version) == (200, f"HTTP/{version}")
                    assert (r.json()["http_version"], r.json()["scheme"]) == (version, "https")
    h2c = {"HTTP_WASM_ASGI_HTTP2": "true"} if source == "env" else {}
    with serving([COMMAND, "serve", str(config), "--port", str(port), "--workers", "2",
                  *([] if h2c else ["--http2"])], port, cwd=tmp_path, env={**cache_env(tmp_path), **h2c}) as server:
        with httpx.Client(http1=False, http2=True, timeout=10) as client:
            r = client.get(server.url + "/")
        assert (r.http_version, r.json()["http_version"]) == ("HTTP/2", "2")
        assert httpx.get(server.url + "/", timeout=10).json()["http_version"] == "1.1"


# --- logs and --watch -------------------------------------------------------------------------------------------

def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text`, each parsed as JSON (a line that is not JSON fails)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize(("flags", "env"), [(["--log-format", "json"], {}),
                                           ([], {"HTTP_WASM_ASGI_LOG_FORMAT": "json"})], ids=["flag", "env"])
def test_json_logs_one_object_per_line_with_the_guests_name(flags: list[str], env: dict[str, str],
                                                            tmp_path: Path) -> None:
    """uvicorn's lines, the host's and the guest's, one JSON object each; the guest's carry its name."""
    port = free_port()
    config = write_config(tmp_path)
    with serving([COMMAND, "serve", str(config), "--port", str(port), "--reload", *flags], port, cwd=tmp_path,
                 env={**cache_env(tmp_path), **env}) as server:
        assert httpx.get(server.url + "/x?y=1", timeout=10).status_code == 200
        server.wait_for_output('"guest": "accesslog"')
        server.wait_for_output('"logger": "uvicorn.access"', count=2)
    lines = json_lines(server.final_output)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    by_logger = {line["logger"]: line for line in lines}
    guest = by_logger["http_wasm_asgi.guest.accesslog"]
    assert (guest["guest"], guest["level"], guest["message"]) == ("accesslog", "INFO", "GET /x?y=1 200")
    assert by_logger["uvicorn.access"]["status"] == 200 and by_logger["uvicorn.access"]["path"] == "/x?y=1"
    assert any("chain loaded" in line["message"] for line in lines if line["logger"] == "http_wasm_asgi")
    assert any(line["logger"] == "uvicorn.error" and "Uvicorn running" in line["message"] for line in lines)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", guest["time"])
    warnings = [line for line in lines if "--reload is deprecated" in line["message"]]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARNING"  # and --reload still watches: see below


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("spelling", [["--watch"], ["--reload"], []], ids=["watch", "reload", "env"])
def test_watch_and_its_deprecated_spelling_reload_on_a_change(spelling: list[str], tmp_path: Path) -> None:
    """--watch, HTTP_WASM_ASGI_WATCH=1 and the old --reload all reload on a change; only --reload warns."""
    port = free_port()
    config = write_config(tmp_path)
    env = {**cache_env(tmp_path), **({} if spelling else {"HTTP_WASM_ASGI_WATCH": "on"})}
    with serving([COMMAND, "serve", str(config), "--port", str(port), *spelling], port, cwd=tmp_path,
                 env=env) as server:
        config.write_text(config.read_text() + "    config: changed\n")
        server.wait_for_output("chain reloaded", timeout=20)
    warned = "WARNING:     http_wasm_asgi: --reload is deprecated: it is --watch now"
    assert server.final_output.count(warned) == (1 if spelling == ["--reload"] else 0), server.final_output
