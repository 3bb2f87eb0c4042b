"""Guest sources with real servers on loopback: an HTTPS server with a test CA (trustme) and the Debian
`docker-registry` (distribution 2.8, with and without htpasswd auth), started per test with a temporary
config and storage. Covers first fetch, a cached restart with the source down, digest mismatch, auth
required (environment and docker config file), unpinned refused, both OCI artifact forms, `push`,
`serve` end to end and the README's commands as written."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import ssl
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
import pytest
import trustme

from http_wasm_asgi import ConfigError, load_config
from http_wasm_asgi.server import oci as oci_client
from http_wasm_asgi.server.config import build_middleware
from http_wasm_asgi.testing import echo_app
from support import ROOT, docs
from support.ops import hup, wait_until
from support.procs import COMMAND, free_port, run, serving

AUTH = ROOT / "guests" / "zig" / "auth.wasm"  # 401 unless `authorization: Bearer <its config>`
TAGGER = ROOT / "guests" / "zig" / "headeradder.wasm"
AUTH_SHA = hashlib.sha256(AUTH.read_bytes()).hexdigest()
REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"  # Debian's (`make system-deps`)
USER = {"HTTP_WASM_ASGI_REGISTRY_USER": "alice", "HTTP_WASM_ASGI_REGISTRY_PASSWORD": "wonderland"}


# --- servers --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


class Files(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("content-length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def running(server: ThreadingHTTPServer) -> Iterator[int]:
    """`server` serving on a thread until the block ends; yields its port."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextlib.contextmanager
def https_server(ca: trustme.CA, files: dict[str, bytes]) -> Iterator[str]:
    """A real HTTPS server on 127.0.0.1 (certificate from the test CA) serving `files`."""
    handler = type("Handler", (Files,), {"files": files})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with running(server) as port:
        yield f"https://127.0.0.1:{port}"


@contextlib.contextmanager
def registry(folder: Path, *, users: dict[str, str] | None = None, port: int | None = None,
             token: dict[str, str] | None = None) -> Iterator[str]:
    """docker-registry on 127.0.0.1 with its storage in `folder` (kept across restarts); htpasswd auth
    when `users` are given, token auth with a `token` section. Yields `127.0.0.1:PORT`."""
    port = port or free_port()
    config = {"version": 0.1, "log": {"level": "warn"}, "http": {"addr": f"127.0.0.1:{port}", "secret": "test"},
              "storage": {"filesystem": {"rootdirectory": str(folder / "storage")}}}
    if users:
        lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}" for u, p in users.items()]
        (folder / "htpasswd").write_text("\n".join(lines) + "\n")
        config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(folder / "htpasswd")}}
    if token:
        config["auth"] = {"token": token}
    (folder / "registry.json").write_text(json.dumps(config))  # YAML is a superset of JSON
    with serving([REGISTRY, "serve", str(folder / "registry.json")], port, ready_path="/v2/"):
        yield f"127.0.0.1:{port}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@contextlib.contextmanager
def token_service(users: dict[str, str], issuer: str, service: str) -> Iterator[tuple[str, Path]]:
    """A real token server (the registry token protocol): checks Basic credentials, answers a JWT
    signed with an RSA key whose certificate (x5c) chains to the CA the registry trusts. Yields its
    realm URL and that CA's bundle."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.x509 import load_pem_x509_certificate

    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert("token-signer", key_type=trustme.KeyType.RSA)
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    der = load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(serialization.Encoding.DER)

    class Tokens(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            given = base64.b64decode(self.headers.get("authorization", "Basic ")[6:] or b"").decode()
            user, _, password = given.partition(":")
            if not user or users.get(user) != password:
                self.send_response(401)
                self.end_headers()
                return
            kind, name, actions = parse_qs(urlsplit(self.path).query)["scope"][0].split(":")
            now = int(time.time())
            claims = {"iss": issuer, "sub": user, "aud": service, "exp": now + 300, "nbf": now - 10, "iat": now,
                      "jti": str(now), "access": [{"type": kind, "name": name, "actions": actions.split(",")}]}
            head = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
            signed = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}"
            signature = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
            body = json.dumps({"token": f"{signed}.{b64url(signature)}"}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Tokens)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "token-ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/token", bundle
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache for this test only (compiled modules and fetched sources)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("HTTP_WASM_ASGI_CACHE_DIR", str(folder))
    return folder


def write(folder: Path, guests: str) -> Path:
    path = folder / "chain.yaml"
    path.write_text(f"app: cfgapp:app\nguests:\n{guests}")
    (folder / "cfgapp.py").write_text("from http_wasm_asgi.testing import echo_app as app\n")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


async def answers(config: Path) -> tuple[int, int]:
    """(status without a token, status with one) through the chain the config builds (in-process)."""
    middleware = build_middleware(load_config(config), echo_app)
    try:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return ((await c.get("/")).status_code,
                    (await c.get("/", headers={"authorization": "Bearer t0ken"})).status_code)
    finally:
        middleware.close()


# --- url: ---------------------------------------------------------------------------------------------

async def test_url_first_fetch_then_the_cache_when_the_server_is_down(
        tmp_path: Path, cache: Path, ca: trustme.CA, ca_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with https_server(ca, {"/auth.wasm": AUTH.read_bytes()}) as base:
        config = write(tmp_path, f"  - {{url: {base}/auth.wasm, sha256: {AUTH_SHA}, config: t0ken}}\n")
        assert await answers(config) == (401, 200)
    assert (cache / "sources" / "sha256" / f"{AUTH_SHA}.wasm").read_bytes() == AUTH.read_bytes()
    assert load_config(config).guests[0].name == "auth"  # the server is gone: the pinned module is cached
    assert await answers(config) == (401, 200)


async def test_fetch_guest_from_python_with_routes(tmp_path: Path, cache: Path, ca: trustme.CA, ca_file: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from http_wasm_asgi import Guest, HttpWasmMiddleware, Route, SourceError, fetch_guest

    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with https_server(ca, {"/auth.wasm": AUTH.read_bytes()}) as base:
        path = fetch_guest(url=f"{base}/auth.wasm", sha256=AUTH_SHA)
        with pytest.raises(SourceError, match=f"guest 'guest': digest mismatch .* expected sha256:{'0' * 64}"):
            fetch_guest(url=f"{base}/auth.wasm", sha256="0" * 64)
    with pytest.raises(ValueError, match="is not pinned"):
        fetch_guest(url=f"{base}/auth.wasm")
    assert fetch_guest(url=f"{base}/auth.wasm", sha256=AUTH_SHA) == path  # server gone: from the cache
    auth = Guest(path, config=b"t0ken")
    app = HttpWasmMiddleware(echo_app, routes=[Route(path_prefix="/private/", guests=[auth])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        assert (await c.get("/private/x")).status_code == 401
        assert (await c.get("/public")).status_code == 200
    app.close()


def test_url_digest_mismatch_is_refused(tmp_path: Path, cache: Path, ca: trustme.CA, ca_file: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with https_server(ca, {"/auth.wasm": TAGGER.read_bytes()}) as base:  # a different module than pinned
        message = config_error(write(tmp_path, f"  - {{name: gate, url: {base}/auth.wasm, sha256: {AUTH_SHA}}}\n"))
    actual = hashlib.sha256(TAGGER.read_bytes()).hexdigest()
    assert "guests[0].url: guest 'gate': digest mismatch" in message
    assert f"expected sha256:{AUTH_SHA}, got sha256:{actual}" in message
    assert not (cache / "sources" / "sha256").exists() or not list((cache / "sources" / "sha256").iterdir())


def test_a_missing_file_names_the_status(tmp_path: Path, cache: Path, ca: trustme.CA, ca_file: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with https_server(ca, {}) as base:
        message = config_error(write(tmp_path, f"  - {{url: {base}/gone.wasm, sha256: {AUTH_SHA}}}\n"))
    assert f"guests[0].url: guest 'gone': fetching {base}/gone.wasm: HTTP 404" in message


def test_an_untrusted_certificate_is_refused(tmp_path: Path, cache: Path, ca: trustme.CA,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with https_server(ca, {"/auth.wasm": AUTH.read_bytes()}) as base:
        message = config_error(write(tmp_path, f"  - {{url: {base}/auth.wasm, sha256: {AUTH_SHA}}}\n"))
    assert "guests[0].url: guest 'auth': TLS refused" in message and "SSL_CERT_FILE" in message


@pytest.mark.parametrize(("entry", "words"), [
    (f"{{url: 'http://example.com/a.wasm', sha256: {AUTH_SHA}}}", "plain http is allowed only for loopback hosts"),
    ("{url: 'https://example.com/a.wasm'}", "is not pinned: set 'sha256'"),
    ("{oci: 'ghcr.io/org/guest:1.0'}", "is not pinned"),
    ("{oci: 'guest:1.0', allow_unpinned: true}", "not an OCI reference like 'ghcr.io/org/guest:1.0'"),
    ("{url: 'https://example.com/a.wasm', sha256: abc}", "must be 64 hex digits"),
    (f"{{path: {AUTH}, url: 'https://example.com/a.wasm'}}", "cannot be set together with 'path'"),
    (f"{{path: {TAGGER}, sha256: {AUTH_SHA}}}", f"digest mismatch for {TAGGER}: expected sha256:{AUTH_SHA}"),
])
def test_sources_refused_before_any_fetch(tmp_path: Path, cache: Path, entry: str, words: str) -> None:
    message = config_error(write(tmp_path, f"  - {entry}\n"))
    assert re.search(r"guests\[0\]\.(url|oci|path|sha256): ", message) and words in message, message


def test_unpinned_and_unreachable_exits_2_with_a_clear_error(tmp_path: Path, cache: Path) -> None:
    port = free_port()  # nothing listens there
    config = write(tmp_path, f"  - {{url: 'http://127.0.0.1:{port}/a.wasm', allow_unpinned: true}}\n")
    result = run([COMMAND, "check", str(config)], env={"HTTP_WASM_ASGI_CACHE_DIR": str(cache)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"guests[0].url: guest 'a': http://127.0.0.1:{port}/a.wasm is unreachable" in result.stderr
    assert "the source is not pinned, so no cached copy can stand in" in result.stderr
    served = run([COMMAND, "serve", str(config), "--port", str(free_port())], env={"HTTP_WASM_ASGI_CACHE_DIR":
                                                                                   str(cache)})
    assert served.returncode == 2 and "is unreachable" in served.stderr and "Traceback" not in served.stderr


class Moving(BaseHTTPRequestHandler):
    """Each GET gets the next of `bodies` (the last one again once they run out): a tag that moves."""

    bodies: ClassVar[list[bytes]] = []
    served: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        body = self.bodies[min(len(self.served), len(self.bodies) - 1)]
        self.served.append(self.path)
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def moving_source(tmp_path: Path, kind: type[Moving], **attrs: Any) -> Iterator[tuple[Any, list[str], int]]:
    """A loopback source of `kind` that serves the tagger first and the auth guest after, and the
    `serve --workers 2` command (and its port) of a config naming it unpinned: (handler, command, port)."""
    handler: Any = type("Handler", (kind,), {"bodies": [TAGGER.read_bytes(), AUTH.read_bytes()], "served": [],
                                             **attrs})
    with running(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as source_port:
        url = f"http://127.0.0.1:{source_port}/moving.wasm"
        config = write(tmp_path, f"  - {{url: '{url}', allow_unpinned: true, config: response x-v one}}\n")
        port = free_port()
        yield handler, [COMMAND, "serve", str(config), "--port", str(port), "--workers", "2"], port


@pytest.mark.slow
@pytest.mark.servers
def test_workers_run_the_unpinned_module_the_serve_process_fetched(tmp_path: Path, cache: Path) -> None:
    """serve --workers 2 fetches an unpinned source once and every worker runs that module, though the
    source serves another one to the next fetch; a SIGHUP fetches once more, then every worker reloads."""
    env = {"HTTP_WASM_ASGI_CACHE_DIR": str(cache)}
    with moving_source(tmp_path, Moving) as (handler, args, port), serving(args, port, cwd=tmp_path,
                                                                            env=env) as server:
        first = [httpx.get(server.url + "/", timeout=10) for _ in range(30)]  # a new connection each
        assert [(r.status_code, r.headers.get("x-v")) for r in first] == [(200, "one")] * 30  # the tagger
        assert handler.served == ["/moving.wasm"]  # fetched once, by the serve process
        hup(server.proc.pid)
        wait_until(lambda: {httpx.get(server.url + "/", timeout=10).status_code for _ in range(10)} == {401},
                   20, "every worker on the module fetched at SIGHUP")
        assert {httpx.get(server.url + "/", timeout=10).status_code for _ in range(30)} == {401}  # auth now
        assert handler.served == ["/moving.wasm"] * 2  # once more, for both workers


class Stalling(Moving):
    """Like Moving, but every fetch after the first waits until `release` is set: a source that hangs."""

    release: ClassVar[threading.Event] = threading.Event()
    arrived: ClassVar[list[str]] = []  # every fetch, counted as it comes in (`served` counts answered ones)

    def do_GET(self) -> None:
        self.arrived.append(self.path)
        if len(self.arrived) > 1:
            self.release.wait(60)
        super().do_GET()


@pytest.mark.slow
@pytest.mark.servers
def test_a_hanging_source_at_sighup_does_not_hold_up_the_serve_process(tmp_path: Path, cache: Path) -> None:
    """The serve process fetches at SIGHUP on a thread: while the source hangs, the workers serve the old
    module and SIGTERM still ends everything at once (a supervisor that waited for the fetch would not read
    the signal for up to the fetch's 30 s timeout); once the source answers, every worker reloads."""
    with moving_source(tmp_path, Stalling, arrived=[], release=threading.Event()) as (handler, args, port):
        env = {"HTTP_WASM_ASGI_CACHE_DIR": str(cache)}
        with serving(args, port, cwd=tmp_path, env=env) as server:
            hup(server.proc.pid)
            wait_until(lambda: len(handler.arrived) == 2, 20, "the fetch at SIGHUP reached the source")
            assert {httpx.get(server.url + "/", timeout=10).headers.get("x-v") for _ in range(10)} == {"one"}
            handler.release.set()  # the source answers: every worker reloads onto what it served
            wait_until(lambda: {httpx.get(server.url + "/", timeout=10).status_code for _ in range(10)} == {401},
                       20, "every worker on the module fetched at SIGHUP")
        with serving(args, port, cwd=tmp_path, env=env) as server:  # fetched at start: the source answers
            handler.release.clear()
            hup(server.proc.pid)
            wait_until(lambda: len(handler.arrived) == 4, 20, "the second fetch at SIGHUP reached the source")
            server.proc.send_signal(signal.SIGTERM)
            took = wait_until(lambda: server.proc.poll() is not None, 20, "serve ended after SIGTERM")
            assert server.proc.returncode == 0, server.output()
            assert took < 10, f"SIGTERM took {took:.1f} s while a fetch hung"
        handler.release.set()


# --- oci: ---------------------------------------------------------------------------------------------

def push(reference: str, env: dict[str, str], guest: Path = AUTH) -> str:
    """`http-wasm-asgi push`; returns the manifest digest it prints."""
    result = run([COMMAND, "push", str(guest), f"oci://{reference}"], env=env)
    assert result.returncode == 0, result.stderr
    return re.search(r"manifest: (sha256:[0-9a-f]{64})", result.stdout)[1]  # type: ignore[index]


@pytest.mark.slow
@pytest.mark.servers
def test_oci_push_serve_and_restart_with_the_registry_down(tmp_path: Path, cache: Path) -> None:
    env = {**USER, "HTTP_WASM_ASGI_CACHE_DIR": str(cache)}
    with registry(tmp_path, users={"alice": "wonderland"}) as host:
        manifest = push(f"{host}/guests/auth:1.0", env)
        config = write(tmp_path, f"  - {{oci: '{host}/guests/auth@{manifest}', config: t0ken}}\n")
        config.write_text(config.read_text().replace("cfgapp:app", "hello:app"))
        (tmp_path / "hello.py").write_text((ROOT / "examples" / "hello.py").read_text())
        port = free_port()
        with serving([COMMAND, "serve", str(config), "--port", str(port)], port, env=env) as server:
            assert httpx.get(server.url + "/", timeout=10).status_code == 401
            assert httpx.get(server.url + "/", headers={"authorization": "Bearer t0ken"}, timeout=10).text == \
                "hello from the app\n"
    # the registry is down now: pinned by manifest digest, the cache answers
    port = free_port()
    with serving([COMMAND, "serve", str(config), "--port", str(port)], port, env=env) as server:
        assert httpx.get(server.url + "/", timeout=10).status_code == 401


@pytest.mark.slow
@pytest.mark.servers
def test_oci_auth_required(tmp_path: Path, cache: Path) -> None:
    env = {"HTTP_WASM_ASGI_CACHE_DIR": str(cache), "DOCKER_CONFIG": str(tmp_path / "no-docker")}
    with registry(tmp_path, users={"alice": "wonderland"}) as host:
        push(f"{host}/guests/auth:1.0", {**env, **USER})
        config = write(tmp_path, f"  - {{oci: '{host}/guests/auth:1.0', sha256: {AUTH_SHA}}}\n")
        refused = run([COMMAND, "check", str(config)], env=env)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert (f"guests[0].oci: guest 'auth': registry {host} refused access without credentials (HTTP 401)"
                in refused.stderr)
        wrong = run([COMMAND, "check", str(config)], env={**env, **USER, "HTTP_WASM_ASGI_REGISTRY_PASSWORD": "no"})
        assert wrong.returncode == 2 and "refused access as 'alice'" in wrong.stderr
        docker = tmp_path / "docker"
        docker.mkdir()
        login = base64.b64encode(b"alice:wonderland").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {host: {"auth": login}}}))
        ok = run([COMMAND, "check", str(config)], env={**env, "DOCKER_CONFIG": str(docker)})
        assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
@pytest.mark.servers
def test_oci_digest_mismatch_and_unpinned(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in USER.items():
        monkeypatch.setenv(key, value)
    with registry(tmp_path, users={"alice": "wonderland"}) as host:
        push(f"{host}/guests/auth:1.0", dict(USER), guest=TAGGER)  # the tag now holds another module
        mismatch = config_error(write(tmp_path, f"  - {{oci: '{host}/guests/auth:1.0', sha256: {AUTH_SHA}}}\n"))
        actual = hashlib.sha256(TAGGER.read_bytes()).hexdigest()
        assert f"guest 'auth': digest mismatch for {host}/guests/auth:1.0: expected sha256:{AUTH_SHA}, " \
               f"got sha256:{actual}; refused" in mismatch
        unpinned = config_error(write(tmp_path, f"  - {{oci: '{host}/guests/auth:1.0'}}\n"))
        assert "guests[0].oci: is not pinned" in unpinned
        allowed = load_config(write(tmp_path, f"  - {{oci: '{host}/guests/auth:1.0', allow_unpinned: true}}\n"))
        assert allowed.guests[0].path.read_bytes() == TAGGER.read_bytes()
    down = config_error(write(tmp_path, f"  - {{oci: '{host}/guests/auth:1.0', allow_unpinned: true}}\n"))
    assert f"registry {host} is unreachable" in down and "not pinned, so no cached copy can stand in" in down


def image_layer(wasm: bytes) -> bytes:
    """A gzipped tar holding plugin.wasm: the single-layer image form (`FROM scratch`, `COPY plugin.wasm`)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(wasm)
        tar.addfile(info, io.BytesIO(wasm))
    return gzip.compress(raw.getvalue())


@pytest.mark.slow
@pytest.mark.servers
async def test_oci_single_layer_image_form(tmp_path: Path, cache: Path) -> None:
    with registry(tmp_path) as host:
        reference = oci_client.Reference.parse(f"{host}/images/auth:v1")
        with oci_client.Registry(host, plain_http=True) as client:
            layer, config = image_layer(AUTH.read_bytes()), b'{"architecture":"amd64","os":"linux"}'
            manifest = {"schemaVersion": 2, "mediaType": oci_client.OCI_MANIFEST,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                                   "digest": oci_client.push_blob(client, reference.repository, config)},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(layer),
                                    "digest": oci_client.push_blob(client, reference.repository, layer)}]}
            oci_client.push_manifest(client, reference, manifest)
        config_path = write(tmp_path, f"  - {{oci: '{host}/images/auth:v1', sha256: {AUTH_SHA}, config: t0ken}}\n")
        assert await answers(config_path) == (401, 200)


@pytest.mark.slow
@pytest.mark.servers
async def test_oci_image_index_leads_to_its_wasm_entry(tmp_path: Path, cache: Path) -> None:
    with registry(tmp_path) as host:
        with oci_client.Registry(host, plain_http=True) as client:
            wasm = oci_client.push_wasm(AUTH.read_bytes(), oci_client.Reference.parse(f"{host}/multi/auth:wasm"),
                                        client)
            other = oci_client.push_wasm(TAGGER.read_bytes(), oci_client.Reference.parse(f"{host}/multi/auth:x"),
                                         client)
            index = {"schemaVersion": 2, "mediaType": oci_client.INDEXES[0], "manifests": [
                {"mediaType": oci_client.OCI_MANIFEST, "digest": other, "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": oci_client.OCI_MANIFEST, "digest": wasm, "size": 1,
                 "platform": {"os": "wasip1", "architecture": "wasm"}}]}
            oci_client.push_manifest(client, oci_client.Reference.parse(f"{host}/multi/auth:1"), index)
        config = write(tmp_path, f"  - {{oci: '{host}/multi/auth:1', sha256: {AUTH_SHA}, config: t0ken}}\n")
        assert await answers(config) == (401, 200)


@pytest.mark.slow
@pytest.mark.servers
def test_oci_token_auth(tmp_path: Path, cache: Path) -> None:
    """A registry with token auth (as ghcr.io and Docker Hub): the 401 names a realm, the client gets
    a Bearer token there with its credentials, for the scope the registry asked for."""
    with token_service({"alice": "wonderland"}, "test-issuer", "test-registry") as (realm, bundle), \
            registry(tmp_path, token={"realm": realm, "service": "test-registry", "issuer": "test-issuer",
                                      "rootcertbundle": str(bundle)}) as host:
        env = {"HTTP_WASM_ASGI_CACHE_DIR": str(cache), "DOCKER_CONFIG": str(tmp_path / "no-docker")}
        manifest = push(f"{host}/guests/auth:1.0", {**env, **USER})
        config = write(tmp_path, f"  - {{oci: '{host}/guests/auth@{manifest}'}}\n")
        refused = run([COMMAND, "check", str(config)], env=env)
        assert refused.returncode == 2 and "refused access without credentials" in refused.stderr
        ok = run([COMMAND, "check", str(config)], env={**env, **USER})
        assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
@pytest.mark.servers
def test_oci_credentials_from_a_docker_credential_helper(tmp_path: Path, cache: Path) -> None:
    """`credHelpers` runs docker-credential-<name> get (the docker protocol: the registry on stdin, JSON out)."""
    tools, docker = tmp_path / "bin", tmp_path / "docker"
    tools.mkdir()
    docker.mkdir()
    helper = tools / "docker-credential-testpass"
    helper.write_text(f"#!{sys.executable}\nimport json, sys\nsys.stdin.read()\n"
                      "print(json.dumps({'Username': 'alice', 'Secret': 'wonderland'}))\n")
    helper.chmod(0o755)
    with registry(tmp_path, users={"alice": "wonderland"}) as host:
        push(f"{host}/guests/auth:1.0", dict(USER))
        (docker / "config.json").write_text(json.dumps({"credHelpers": {host: "testpass"}}))
        config = write(tmp_path, f"  - {{oci: '{host}/guests/auth:1.0', sha256: {AUTH_SHA}}}\n")
        env = {"HTTP_WASM_ASGI_CACHE_DIR": str(cache), "DOCKER_CONFIG": str(docker),
               "PATH": f"{tools}:{os.environ['PATH']}"}
        no_helper = run([COMMAND, "check", str(config)], env={**env, "PATH": os.environ["PATH"]})
        assert no_helper.returncode == 2 and "refused access without credentials" in no_helper.stderr
        ok = run([COMMAND, "check", str(config)], env=env)
        assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
def test_push_needs_a_tag_and_names_what_is_wrong(tmp_path: Path) -> None:
    digest = run([COMMAND, "push", str(AUTH), f"oci://127.0.0.1:1/a@sha256:{AUTH_SHA}"])
    assert digest.returncode == 2 and "push to a tag" in digest.stderr
    missing = run([COMMAND, "push", str(tmp_path / "nope.wasm"), "oci://127.0.0.1:1/a:1"])
    assert missing.returncode == 2 and "No such file" in missing.stderr
    down = run([COMMAND, "push", str(AUTH), f"oci://127.0.0.1:{free_port()}/a:1"])
    assert down.returncode == 1 and "is unreachable" in down.stderr and "Traceback" not in down.stderr


# --- the README -----------------------------------------------------------------------------------------

def readme_section() -> str:
    return docs.section("Guest sources")  # docs/guide/guest-sources.md


def test_the_readme_example_is_the_example_file() -> None:
    block = re.search(r"```yaml\n(.*?)```", readme_section(), re.DOTALL)[1]  # type: ignore[index]
    assert block == (ROOT / "examples" / "sources.yaml").read_text()
    assert f"sha256: {AUTH_SHA}" in block  # the pin matches the committed guest


@pytest.mark.slow
@pytest.mark.servers
def test_the_readme_commands_run_as_written(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The section's commands, from the repository's top folder; only the ports (5000 of the registry,
    8000 of the file server) become free ones."""
    shell = re.search(r"```sh\n(.*?)```", readme_section(), re.DOTALL)[1]  # type: ignore[index]
    files_port, env = free_port(), {"HTTP_WASM_ASGI_CACHE_DIR": str(cache)}
    monkeypatch.chdir(ROOT)
    config = tmp_path / "sources.yaml"
    with registry(tmp_path) as host, contextlib.ExitStack() as stack:
        def as_here(line: str) -> list[str]:
            line = line.replace("127.0.0.1:5000", host).replace(" 8000 ", f" {files_port} ")
            return line.removesuffix("&").replace("examples/sources.yaml", str(config)).split()

        config.write_text((ROOT / "examples" / "sources.yaml").read_text().replace("127.0.0.1:5000", host)
                          .replace("127.0.0.1:8000", f"127.0.0.1:{files_port}"))
        (tmp_path / "hello.py").write_text((ROOT / "examples" / "hello.py").read_text())
        lines = shell.strip().splitlines()
        assert [line.split()[:2] for line in lines] == [["python", "-m"], ["http-wasm-asgi", "push"],
                                                        ["http-wasm-asgi", "serve"]]
        stack.enter_context(serving([sys.executable, *as_here(lines[0])[1:]], files_port))
        pushed = run([COMMAND, *as_here(lines[1])[1:]], env=env)
        assert pushed.returncode == 0, pushed.stderr
        python = re.search(r"```python\n(.*?)```", readme_section(), re.DOTALL)[1]  # type: ignore[index]
        namespace: dict[str, Any] = {}
        exec(python.replace("127.0.0.1:5000", host), namespace)
        assert namespace["auth"].info.sha256 == AUTH_SHA
        namespace["auth"].close()
        port = free_port()
        with serving([COMMAND, *as_here(lines[2])[1:], "--port", str(port)], port, env=env) as server:
            assert httpx.get(server.url + "/", timeout=10).status_code == 401
            ok = httpx.get(server.url + "/", headers={"authorization": "Bearer demo-token"}, timeout=10)
            assert (ok.status_code, ok.headers["x-powered-by"]) == (200, "http-wasm")
