"""The chain on every ASGI server, for real: uvicorn (httptools and h11), Hypercorn, Granian and Daphne,
each over HTTP/1.1 and, where it can, HTTP/2 over TLS (tests/support/asgi_servers.py).

Each server runs tests/support/matrix_app.py in its own process, started once for this module (one server at a
time). Through each (server, HTTP version): every conformance case that applies, with the Go and the
Zig conformance guest; the example chain (examples/chain.yaml); a guest that answers, traps or
rewrites; bodies that stream both ways; response trailers (read and edited by a guest where the
server offers `http.response.trailers`, received by a real HTTP/2 client); and a client that leaves.
`SERVER_FACTS` is what differs between the servers; README "ASGI servers" names these tests.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h2.connection
import h2.events
import httpx
import pytest

from http_wasm_asgi.devkit.conformance import check_response, load_suite, send
from support import docs
from support.asgi_servers import (
    ENDPOINTS,
    SERVERS,
    START_TIMEOUT,
    TLS,
    UNIX_SOCKET,
    Endpoint,
    answers,
    make_tls,
    on_unix_socket,
    running,
    wait_for,
)
from support.ops import AUTH, hup, scrape, total, wait_until, write_config
from support.procs import BIN, COMMAND, free_port, run, serving
from test_examples import check_example_chain

APP = "tests.support.matrix_app:app"
LANGS = ("go", "zig")
TRAILERS = {("hypercorn", "2"), ("uvicorn-zttp", "2")}  # the endpoints whose server offers http.response.trailers
IDS = {key: f"{key[0]}-http{key[1]}" for key in ENDPOINTS}

# What each server puts in the scope and how it tells the app that the client left; the host
# copes with each (flow.exchange_from_scope, the unwind on an app's exception).
SERVER_FACTS: dict[str, dict[str, Any]] = {
    "uvicorn-httptools": {"client": ["tuple", "str", "int"], "extensions": [], "left": "receive: http.disconnect"},
    "uvicorn-h11": {"client": ["tuple", "str", "int"], "extensions": [], "left": "receive: http.disconnect"},
    "uvicorn-zttp": {"client": ["tuple", "str", "int"], "extensions": [], "left": "receive: http.disconnect"},
    "hypercorn": {"client": ["tuple", "str", "int"], "extensions": [], "left": "receive: http.disconnect"},
    "granian": {"client": ["tuple", "str", "str"], "extensions": ["http.response.pathsend", "websocket.http.response"],
                "left": "receive: http.disconnect"},
    "daphne": {"client": ["list", "str", "int"], "extensions": [], "left": "receive: http.disconnect"},
}
H2_EXTENSIONS = {"hypercorn": ["http.response.early_hint", "http.response.push", "http.response.trailers"],
                 "uvicorn-zttp": ["http.response.early_hint", "http.response.trailers"]}


@pytest.fixture(scope="module")
def tls() -> Iterator[TLS]:
    with make_tls() as made:
        yield made


@pytest.fixture(scope="module")
def endpoint(request: pytest.FixtureRequest, tls: TLS, tmp_path_factory: pytest.TempPathFactory,
             started: dict[str, Any]) -> Endpoint:
    """The (server, HTTP version) of the test's parameters; its server starts once, the one before it stops."""
    server, version = request.param
    if started.get("server") != server:
        for client in started["clients"].values():  # open keep-alive connections would slow its shutdown
            client.close()
        started["clients"].clear()
        started["stack"].close()
        stack = started["stack"] = ExitStack()
        env = {"HTTP_WASM_ASGI_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "wasm-cache")}
        started["endpoints"] = stack.enter_context(running(server, APP, tls, env=env))
        started["server"] = server
    return started["endpoints"][version]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def started() -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"stack": ExitStack(), "clients": {}}
    yield state
    for client in state["clients"].values():
        client.close()
    state["stack"].close()


def endpoints(*, only: set[tuple[str, str]] | None = None) -> Any:
    """Parametrize `endpoint` (indirectly) over every (server, HTTP version), or `only` these."""
    keys = [key for key in ENDPOINTS if only is None or key in only]
    return pytest.mark.parametrize("endpoint", keys, ids=[IDS[k] for k in keys], indirect=True)


def control(endpoint: Endpoint, *, clear: bool = False) -> dict[str, Any]:
    with endpoint.client() as client:
        r = client.get("/", params="clear" if clear else None, headers={"x-matrix": "control"})
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def check_version(endpoint: Endpoint, response: httpx.Response) -> None:
    assert response.http_version == ("HTTP/2" if endpoint.http_version == "2" else "HTTP/1.1")


# --- conformance -------------------------------------------------------------------------------------

def _conformance_params() -> list[Any]:
    params = []
    for key in ENDPOINTS:
        trailers = key in TRAILERS
        for case in load_suite().cases:
            if case.applies(key[1], trailers):
                params += [pytest.param(key, lang, case, id=f"{IDS[key]}-{lang}:{case.id}") for lang in LANGS]
    return params


@pytest.fixture
def clients(started: dict[str, Any]) -> dict[tuple[str, str, str], httpx.Client]:
    """One keep-alive client per endpoint and language for the conformance cases (closed with its server)."""
    return started["clients"]  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize(("endpoint", "lang", "case"), _conformance_params(), indirect=["endpoint"])
def test_conformance_case(endpoint: Endpoint, clients: dict[tuple[str, str, str], httpx.Client], lang: str,
                          case: Any) -> None:
    key = (endpoint.server, endpoint.http_version, lang)
    if key not in clients:
        clients[key] = endpoint.client(headers={"x-matrix": f"conformance-{lang}"})
    client = clients[key]
    logs_wanted = "log" in case.expect or "no_log" in case.expect
    if logs_wanted:
        control(endpoint, clear=True)
    response = send(client, case)
    check_version(endpoint, response)
    logged = control(endpoint)["logs"].get(f"conformance-{lang}", []) if logs_wanted else []
    assert check_response(case, response, logged) == [], f"{lang} guest, {case.id}: {case.check}"


def test_every_endpoint_runs_every_case_once_per_language() -> None:
    """Each case runs where its `when` matches: HTTP/2-only cases on the HTTP/2 endpoints, and so on."""
    params = _conformance_params()
    suite = load_suite().cases
    for key in ENDPOINTS:
        ran = {(p.values[1], p.values[2].id) for p in params if p.values[0] == key}
        applicable = [c.id for c in suite if c.applies(key[1], key in TRAILERS)]
        assert ran == {(lang, case) for lang in LANGS for case in applicable}
        assert len(applicable) == len(suite) - 2  # one of each pair: protocol version, trailers granted or not


# --- the example chain, and guests that answer, trap or rewrite ---------------------------------------

@pytest.mark.slow
@pytest.mark.servers
@endpoints()
def test_the_example_chain(endpoint: Endpoint) -> None:
    with endpoint.client(headers={"x-matrix": "chain"}) as client:
        check_example_chain(client)  # 401 (answer), 302 (answer), rewrite, redaction both ways, added headers
        check_version(endpoint, client.get("/"))


@pytest.mark.slow
@pytest.mark.servers
@endpoints()
def test_a_guest_that_traps_costs_the_request_a_500(endpoint: Endpoint) -> None:
    with endpoint.client(headers={"x-matrix": "trap"}) as client:
        for where in ("request", "response"):
            r = client.get("/", headers={"x-trap": where})
            check_version(endpoint, r)
            assert r.status_code == 500 and "x-echo" not in r.headers, where
            assert r.text == "Internal Server Error"
        assert client.get("/").headers["x-echo"] == "1"  # the next request is served


# --- bodies stream --------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.servers
@endpoints()
def test_request_and_response_bodies_stream(endpoint: Endpoint) -> None:
    """The chain's max_body_size is 1 KiB: 1 MiB each way arrives only because nothing buffers it."""
    def body() -> Iterator[bytes]:
        for _ in range(16):
            yield b"z" * 65536

    with endpoint.client(headers={"x-matrix": "count"}) as client, \
            client.stream("POST", "/upload", content=body()) as r:
        check_version(endpoint, r)
        size, _, rest = r.headers["x-received"].partition(" bytes in ")
        assert (r.status_code, r.headers["x-streamed"], int(size)) == (200, "yes", 16 * 65536)
        assert int(rest.split()[0]) > 1  # the app got it in pieces
        pieces = [len(chunk) for chunk in r.iter_raw()]
    assert sum(pieces) == 64 * 16384 and len(pieces) > 1


# --- trailers -------------------------------------------------------------------------------------------

def h2_get(url: str, path: str, headers: list[tuple[str, str]], tls: TLS, *, te: bool = True) -> dict[str, Any]:
    """One GET over HTTP/2 (TLS, ALPN h2) with the `h2` library: headers, body and trailers as received.
    `te`: the request says `te: trailers` (that it accepts them)."""
    host, port = urlsplit(url).hostname or "", urlsplit(url).port or 443
    context = tls.client_context()
    context.set_alpn_protocols(["h2"])
    got: dict[str, Any] = {"headers": [], "body": b"", "trailers": []}
    with socket.create_connection((host, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as sock:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                   (":authority", f"{host}:{port}"), *([("te", "trailers")] if te else []),
                                   *headers], end_stream=True)
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data, "the server closed the connection before the stream ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    got["headers"] = [(bytes(k).decode(), bytes(v).decode()) for k, v in event.headers or []]
                elif isinstance(event, h2.events.DataReceived):
                    got["body"] += event.data or b""
                    conn.acknowledge_received_data(event.flow_controlled_length or 0, stream)
                elif isinstance(event, h2.events.TrailersReceived):
                    got["trailers"] = [(bytes(k).decode(), bytes(v).decode()) for k, v in event.headers or []]
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream reset: {event.error_code!r}")
            sock.sendall(conn.data_to_send())
    return got


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("lang", LANGS)
@endpoints(only=TRAILERS)
def test_a_guest_reads_and_edits_the_apps_response_trailers(endpoint: Endpoint, lang: str) -> None:
    """The app sends x-status: pending, x-drop, x-keep; the guest (config in matrix_app.TRAILERS_CONFIG)
    reports what it read, sets x-status, adds x-added twice, removes x-drop; a real HTTP/2 client gets that."""
    got = h2_get(endpoint.url, "/", [("x-matrix", f"trailers-{lang}")], endpoint.tls)
    headers = dict(got["headers"])
    assert headers[":status"] == "200" and got["body"] == b"body"
    assert headers["x-trailers"] == "granted"
    assert headers["x-app-trailers"] == "x-status=pending, x-drop=secret, x-keep=1"
    assert sorted(got["trailers"]) == [("x-added", "one"), ("x-added", "two"), ("x-keep", "1"), ("x-status", "ok")]


@pytest.mark.slow
@pytest.mark.servers
@endpoints(only=TRAILERS)
def test_curl_over_http2_reads_the_trailers_of_a_buffered_response(endpoint: Endpoint) -> None:
    """The host sends a buffered response with trailers without a content-length the app did not set: curl
    (7.88) stops reading at a content-length over HTTP/2 and would never show the trailers."""
    curl = shutil.which("curl")
    assert curl is not None, "curl is missing"
    out = subprocess.run([curl, "-sS", "--http2", "-k", "-i", "-H", "te: trailers", "-H", "x-matrix: trailers-zig",
                          endpoint.url + "/"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    head, _, rest = out.stdout.partition("\n\n")  # (text mode: CRLF read as LF)
    assert head.startswith("HTTP/2 200") and "content-length" not in head.lower()
    assert rest.startswith("body")
    trailers = sorted(line.strip().lower() for line in rest[len("body"):].splitlines() if line.strip())
    assert trailers == ["x-added: one", "x-added: two", "x-keep: 1", "x-status: ok"], out.stdout


@pytest.mark.slow
@pytest.mark.servers
@endpoints(only=TRAILERS)
def test_hypercorn_sends_trailers_only_to_a_client_that_accepts_them(endpoint: Endpoint) -> None:
    """Without `te: trailers` Hypercorn (and uvicorn with zttp) leaves them out; the guest ran all the same and
    the body is whole."""
    got = h2_get(endpoint.url, "/", [("x-matrix", "trailers-zig")], endpoint.tls, te=False)
    headers = dict(got["headers"])
    assert (headers[":status"], headers["x-trailers"], got["body"], got["trailers"]) == ("200", "granted", b"body", [])
    assert headers["x-app-trailers"] == "x-status=pending, x-drop=secret, x-keep=1"


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("lang", LANGS)
@endpoints(only=set(ENDPOINTS) - TRAILERS)
def test_without_server_trailers_the_guest_is_told_and_the_response_is_whole(endpoint: Endpoint, lang: str) -> None:
    """No http.response.trailers: enable_features leaves the bit off (the guest says `unsupported`),
    the app's trailers are dropped and its body arrives complete."""
    with endpoint.client(headers={"x-matrix": f"trailers-{lang}"}) as client:
        r = client.get("/")
    check_version(endpoint, r)
    assert (r.status_code, r.text, r.headers["x-trailers"]) == (200, "body", "unsupported")
    assert "x-app-trailers" not in r.headers


# --- what differs: the scope, and a client that leaves -----------------------------------------------

@pytest.mark.slow
@pytest.mark.servers
@endpoints()
def test_what_the_server_puts_in_the_scope(endpoint: Endpoint) -> None:
    facts = SERVER_FACTS[endpoint.server]
    scope = control(endpoint)["scope"]
    assert scope["http_version"] == endpoint.http_version
    assert scope["client"][0] == "127.0.0.1" and int(scope["client"][1]) > 0 and scope["raw_path"]
    assert scope["client_types"] == facts["client"]  # get_source_addr formats each: conformance get_source_addr
    h2_trailers = (endpoint.server, endpoint.http_version) in TRAILERS
    assert scope["extensions"] == (H2_EXTENSIONS[endpoint.server] if h2_trailers else facts["extensions"])


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("server", UNIX_SOCKET)
def test_on_a_unix_socket_there_is_no_client_address(server: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No peer address (client None, or Granian's ('', '0')): get_source_addr is empty, not a trap."""
    env = {"HTTP_WASM_ASGI_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "wasm-cache")}
    with on_unix_socket(server, APP, env=env) as client:
        assert control_scope_client(client) in (None, ["", "0"])
        r = client.get("/", headers={"x-matrix": "addr"})
        assert (r.status_code, r.content) == (200, b"")
        assert client.get("/", headers={"x-matrix": "chain"}).status_code == 401  # the example chain works there too


def control_scope_client(client: httpx.Client) -> Any:
    return client.get("/", headers={"x-matrix": "control"}).json()["scope"]["client"]


@pytest.mark.slow
@pytest.mark.servers
@endpoints()
def test_a_client_that_leaves_mid_response_frees_the_guests(endpoint: Endpoint) -> None:
    before = len(control(endpoint, clear=True)["left"])
    with endpoint.client(headers={"x-matrix": "stream"}) as client, client.stream("GET", "/forever") as r:
        check_version(endpoint, r)
        assert (r.status_code, r.headers["x-streamed"]) == (200, "yes")
        assert len(next(r.iter_raw())) > 0  # streaming: the app never ends
    # the client closed the stream (HTTP/2: RST_STREAM) or the connection (HTTP/1.1)
    assert wait_for(lambda: len(control(endpoint)["left"]) > before), endpoint.output()
    state = control(endpoint)
    assert state["left"][before] == SERVER_FACTS[endpoint.server]["left"]
    assert wait_for(lambda: control(endpoint)["in_use"]["stream"] == 0)  # handle_response ran, instance back


@pytest.mark.slow
@pytest.mark.servers
@endpoints()
def test_a_client_that_leaves_while_a_guest_waits_for_the_body_frees_the_guests(endpoint: Endpoint) -> None:
    """The bodyrewrite guest reads the request body: the host buffers it; the client sends half and leaves.
    Neither the guest nor the app runs on half a body (Daphne reads whole bodies before calling the app)."""
    calls = control(endpoint)["upload_calls"]

    def half() -> Iterator[bytes]:
        yield b"a" * 1000
        raise ConnectionAbortedError("the client leaves")

    with endpoint.client(headers={"x-matrix": "upload"}) as client, pytest.raises(Exception, match="leaves"):
        client.post("/upload", content=half(), headers={"content-length": "5000"})
    assert wait_for(lambda: control(endpoint)["in_use"]["upload"] == 0)
    assert control(endpoint)["upload_calls"] == calls
    with endpoint.client(headers={"x-matrix": "upload"}) as client:
        r = client.post("/upload", content=b"abc")
    assert r.json()["body"] == "bbc"  # and the next request is served


# --- README ---------------------------------------------------------------------------------------------



def readme_server_commands() -> list[str]:
    """The commands of README "ASGI servers" (the sh block after the table), comments dropped."""
    section = docs.section("ASGI servers")  # docs/deploy/asgi-servers.md
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_has_a_command_for_each_server() -> None:
    commands = readme_server_commands()
    assert {command.split()[0] for command in commands} == {"uvicorn", "hypercorn", "granian", "daphne"}
    assert all("examples.chain_app:app" in command for command in commands)


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("command", readme_server_commands())
def test_the_readme_command_for_each_server(command: str, tls: TLS, tmp_path_factory: pytest.TempPathFactory) -> None:
    """As written, from the repository's top folder; free ports for 8080/8443, the test CA's cert.pem/key.pem."""
    port = free_port()
    on_tls = "8443" in command
    args = [str(BIN / word) if index == 0 else word.replace("8443", str(port)).replace("8080", str(port))
            .replace("cert.pem", str(tls.certfile)).replace("key.pem", str(tls.keyfile))
            for index, word in enumerate(shlex.split(command))]
    url = f"{'https' if on_tls else 'http'}://127.0.0.1:{port}"
    endpoint = Endpoint(args[0], "2" if on_tls else "1.1", url, tls, str)
    env = {"HTTP_WASM_ASGI_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "wasm-cache")}

    with serving(args, port, env=env, ready=lambda: answers(url, tls), start_timeout=START_TIMEOUT), \
            endpoint.client() as client:
        check_example_chain(client)
        check_version(endpoint, client.get("/"))


def test_the_readme_table_names_tests_that_exist_and_covers_every_endpoint() -> None:
    section = docs.section("ASGI servers")
    named = set(re.findall(r"`(test_\w+)`", section))
    assert named and all(callable(globals().get(name)) for name in named), named - set(globals())
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(SERVERS)
    for row, server in zip(rows, SERVERS, strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert all(re.search(r"\[(A|S|T|T0|D)\]", cell) for cell in cells[1:]), row
        assert cells[2].startswith("yes") == ((server, "2") in ENDPOINTS), row  # the HTTP/2 column
        assert ("edited by guests [T]" in cells[3]) == ((server, "2") in TRAILERS), row


# --- serve --server hypercorn -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.servers
def test_serve_on_hypercorn_with_tls_speaks_http2_and_http1(tls: TLS, tmp_path_factory: pytest.TempPathFactory) -> None:
    """README, "The command": one flag (and the certificate) for HTTP/2; SIGTERM ends it with status 0."""
    port = free_port()
    args = [COMMAND, "serve", "examples/chain.yaml", "--server", "hypercorn", "--port", str(port),
            "--certfile", str(tls.certfile), "--keyfile", str(tls.keyfile)]
    env = {"HTTP_WASM_ASGI_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "wasm-cache")}
    url = f"https://127.0.0.1:{port}"

    with serving(args, port, env=env, ready=lambda: answers(url, tls), start_timeout=START_TIMEOUT) as server:
        for version in ("2", "1.1"):
            endpoint = Endpoint("hypercorn", version, url, tls, server.output)
            with endpoint.client() as client:
                check_example_chain(client)
                check_version(endpoint, client.get("/"))
        out = server.wait_for_output("accesslog: GET /api/whoami?x=1 200", count=2)
    assert "chain loaded" in out
    assert server.proc.returncode == 0, server.final_output


@pytest.mark.slow
@pytest.mark.servers
def test_serve_on_hypercorn_has_metrics_reload_and_a_clean_sigterm(tmp_path: Path) -> None:
    """`--server hypercorn` runs with the same operations as uvicorn: the metrics listener (/metrics,
    /readyz), `--watch` (a changed config reloads through SIGHUP, as the watcher sends it), and SIGTERM
    (/readyz 503 while draining, pools closed, status 0): the flags are accepted, and a SIGHUP reloads
    instead of ending the process."""
    config = write_config(tmp_path, 1)
    port, metrics_port = free_port(), free_port()
    metrics = f"http://127.0.0.1:{metrics_port}"
    args = [COMMAND, "serve", str(config), "--server", "hypercorn", "--port", str(port),
            "--metrics-port", str(metrics_port), "--watch"]
    with serving(args, port, cwd=tmp_path) as server:
        assert httpx.get(server.url + "/", timeout=10).status_code == 401
        first = httpx.get(server.url + "/", headers=AUTH, timeout=10)
        assert first.status_code == 200 and first.headers["x-version"] == "1"
        assert httpx.get(metrics + "/readyz", timeout=5).status_code == 200
        samples = scrape(metrics)
        # three requests so far (serving()'s readiness probe and the first above were refused), one let in
        assert total(samples, "http_wasm_guest_calls_total", guest="auth", phase="handle_request") == 3
        assert total(samples, "http_wasm_guest_short_circuits_total", guest="auth") == 2
        assert total(samples, "http_wasm_guest_calls_total", guest="auth", phase="handle_response") == 1
        write_config(tmp_path, 2)  # --watch sees it and sends this process SIGHUP
        wait_until(lambda: httpx.get(server.url + "/", headers=AUTH, timeout=10).headers["x-version"] == "2", 20,
                   "the changed config served")
        hup(server.proc.pid)  # an operator's SIGHUP reloads too, and does not end the process
        server.wait_for_output("chain reloaded", count=2)
        assert httpx.get(server.url + "/", headers=AUTH, timeout=10).headers["x-version"] == "2"
        assert total(scrape(metrics), "http_wasm_reloads_total", result="ok") == 2
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(httpx.get, server.url + "/slow?s=2", headers=AUTH, timeout=10)
            wait_until(lambda: total(scrape(metrics), "http_wasm_pool_instances", state="in_use") >= 1, 10,
                       "the slow request in flight")
            server.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: httpx.get(metrics + "/readyz", timeout=5).status_code == 503, 5,
                       "503 while draining")
            assert slow.result().status_code == 200  # the request in flight finished
        wait_until(lambda: server.proc.poll() is not None, 15, "serve ended after SIGTERM")
    assert server.proc.returncode == 0, server.final_output
    assert "chain closed (2 guests)" in server.final_output


@pytest.mark.parametrize(("flags", "message"), [
    (["--certfile", "c.pem", "--keyfile", "k.pem"], "file 'c.pem' not found (--ssl-certfile/--ssl-keyfile)"),
    (["--server", "hypercorn", "--certfile", "README.md"], "give both --ssl-certfile and --ssl-keyfile, or neither"),
    (["--server", "hypercorn", "--forwarded-allow-ips", "*"], "--server hypercorn has no --forwarded-allow-ips"),
    (["--server", "hypercorn", "--limit-concurrency", "9"], "--server hypercorn has no --limit-concurrency"),
    (["--server", "hypercorn", "--workers", "2"], "2 workers need the default server, uvicorn"),
    (["--server", "hypercorn", "--certfile", "nope.pem", "--keyfile", "README.md"], "file 'nope.pem' not found"),
])
def test_serve_on_hypercorn_refuses_what_it_cannot_do(flags: list[str], message: str) -> None:
    proc = run([COMMAND, "serve", "examples/chain.yaml", *flags])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and message in proc.stderr and "Traceback" not in proc.stderr
