"""Every ASGI server the tests run a chain on, started for real on 127.0.0.1 (a subprocess each).

`SERVERS` names each server and how it is started; `ENDPOINTS` are the (server, HTTP version)
pairs it serves: HTTP/1.1 in the clear, HTTP/2 over TLS (ALPN) with a certificate from a test CA
(`trustme`). Granian and uvicorn with zttp serve one TLS port for both versions (each binds one address); Hypercorn and
Daphne bind a plain port and a TLS port in one process.
"""

from __future__ import annotations

import contextlib
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import trustme
from cryptography.hazmat.primitives import serialization

from .procs import BIN, ROOT, free_port, serving

HOST = "127.0.0.1"
START_TIMEOUT = 180.0  # the first server compiles the Go guests (~20 s on a loaded 2-core machine)


@dataclass(frozen=True)
class TLS:
    """A test CA and a certificate for 127.0.0.1 signed by it, as files."""

    ca: trustme.CA
    certfile: Path  # the leaf certificate (and its chain)
    keyfile: Path  # its private key, PKCS#8 (what Granian requires; the others take it too)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@contextlib.contextmanager
def make_tls() -> Iterator[TLS]:
    ca = trustme.CA()
    leaf = ca.issue_cert(HOST, "localhost")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    with tempfile.TemporaryDirectory(prefix="http-wasm-asgi-tls-") as tmp:
        certfile, keyfile = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        certfile.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        yield TLS(ca, certfile, keyfile)


@dataclass(frozen=True)
class Ports:
    plain: int
    tls: int


# server name -> its command line for the app `app` (module:attribute) on these ports and certificate
Command = Callable[[str, Ports, TLS], list[str]]


def _uvicorn(http: str) -> Command:
    return lambda app, ports, tls: [str(BIN / "uvicorn"), app, "--host", HOST, "--port", str(ports.plain),
                                    "--http", http, "--log-level", "warning"]


def _uvicorn_zttp(app: str, ports: Ports, tls: TLS) -> list[str]:
    """uvicorn's HTTP/2 (zttp) as `serve --http2` runs it: `--http zttp --http2` with the fix of
    `http_wasm_asgi.server.uvicorn_h2` (a bodiless request's receive() otherwise waits for the client to
    leave); HTTP/2 and HTTP/1.1 by ALPN on one TLS port. One worker: the matrix app keeps what it saw in its
    process (`serve --http2 --workers 2` is tests/test_operator.py's)."""
    script = ("import sys, uvicorn; from http_wasm_asgi.server.uvicorn_h2 import PROTOCOL; "
              "uvicorn.run(sys.argv[1], host=sys.argv[2], port=int(sys.argv[3]), http=PROTOCOL, "
              "ssl_certfile=sys.argv[4], ssl_keyfile=sys.argv[5], log_level='warning')")
    return [str(BIN / "python"), "-c", script, app, HOST, str(ports.tls), str(tls.certfile), str(tls.keyfile)]


def _hypercorn(app: str, ports: Ports, tls: TLS) -> list[str]:
    return [str(BIN / "hypercorn"), app, "--bind", f"{HOST}:{ports.tls}", "--insecure-bind", f"{HOST}:{ports.plain}",
            "--certfile", str(tls.certfile), "--keyfile", str(tls.keyfile), "--log-level", "warning"]


def _granian(app: str, ports: Ports, tls: TLS) -> list[str]:
    return [str(BIN / "granian"), "--interface", "asgi", "--host", HOST, "--port", str(ports.tls),
            "--ssl-certificate", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile), "--log-level", "warning",
            "--no-ws", app]


def _daphne(app: str, ports: Ports, tls: TLS) -> list[str]:
    return [str(BIN / "daphne"), "-b", HOST, "-p", str(ports.plain), "-v", "0",
            "-e", f"ssl:{ports.tls}:interface={HOST}:privateKey={tls.keyfile}:certKey={tls.certfile}", app]


SERVERS: dict[str, Command] = {
    "uvicorn-httptools": _uvicorn("httptools"),
    "uvicorn-h11": _uvicorn("h11"),
    "uvicorn-zttp": _uvicorn_zttp,
    "hypercorn": _hypercorn,
    "granian": _granian,
    "daphne": _daphne,
}
# (server, HTTP version) pairs, and whether that version is served over TLS
ENDPOINTS: dict[tuple[str, str], bool] = {
    ("uvicorn-httptools", "1.1"): False,
    ("uvicorn-h11", "1.1"): False,
    ("uvicorn-zttp", "1.1"): True,
    ("uvicorn-zttp", "2"): True,
    ("hypercorn", "1.1"): False,
    ("hypercorn", "2"): True,
    ("granian", "1.1"): True,
    ("granian", "2"): True,
    ("daphne", "1.1"): False,
    ("daphne", "2"): True,
}


# server name -> its command line for the app `app` on the Unix socket `path`
UNIX_SOCKET: dict[str, Callable[[str, Path], list[str]]] = {
    "uvicorn-httptools": lambda app, path: [str(BIN / "uvicorn"), app, "--uds", str(path), "--log-level", "warning"],
    "hypercorn": lambda app, path: [str(BIN / "hypercorn"), app, "--bind", f"unix:{path}", "--log-level", "warning"],
    "granian": lambda app, path: [str(BIN / "granian"), "--interface", "asgi", "--uds", str(path), "--no-ws",
                                  "--log-level", "warning", app],
    "daphne": lambda app, path: [str(BIN / "daphne"), "-u", str(path), "-v", "0", app],
}


@contextlib.contextmanager
def on_unix_socket(server: str, app: str, *, env: dict[str, str] | None = None) -> Iterator[httpx.Client]:
    """`server` serving `app` on a Unix socket; yields an httpx client for it."""
    with tempfile.TemporaryDirectory(prefix="http-wasm-asgi-uds-") as tmp:
        path = Path(tmp) / "server.sock"
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://localhost", timeout=10) as client:
            def ready() -> bool:
                try:
                    client.get("/")
                    return True
                except httpx.TransportError:
                    return False

            with serving(UNIX_SOCKET[server](app, path), 0, env=env, ready=ready, start_timeout=START_TIMEOUT):
                yield client


@dataclass(frozen=True)
class Endpoint:
    """One server speaking one HTTP version: clients for it, and the server's output."""

    server: str
    http_version: str  # as in the ASGI scope: "1.1" or "2"
    url: str
    tls: TLS
    output: Callable[[], str]

    def client(self, **options: object) -> httpx.Client:
        """An httpx client that speaks exactly this endpoint's HTTP version (and trusts the test CA)."""
        http2 = self.http_version == "2"
        return httpx.Client(base_url=self.url, http1=not http2, http2=http2, verify=self.tls.client_context(),
                            timeout=10, follow_redirects=False, **options)  # type: ignore[arg-type]


@contextlib.contextmanager
def running(server: str, app: str, tls: TLS, *, env: dict[str, str] | None = None) -> Iterator[dict[str, Endpoint]]:
    """`server` serving `app` from the repository's top folder; yields its endpoints by HTTP version."""
    ports = Ports(free_port(), free_port())
    versions = {version: on_tls for (name, version), on_tls in ENDPOINTS.items() if name == server}
    first_url = _url(ports, next(iter(versions.values())))
    with serving(SERVERS[server](app, ports, tls), ports.plain, env=env,
                 ready=lambda: answers(first_url + "/", tls, {"x-matrix": "control"}),
                 start_timeout=START_TIMEOUT) as proc:
        yield {version: Endpoint(server, version, _url(ports, on_tls), tls, proc.output)
               for version, on_tls in versions.items()}


def _url(ports: Ports, on_tls: bool) -> str:
    return f"https://{HOST}:{ports.tls}" if on_tls else f"http://{HOST}:{ports.plain}"


def answers(url: str, tls: TLS, headers: dict[str, str] | None = None) -> bool:
    """Whether a server answers `url` at all (any status): a `ready` check for `serving`."""
    try:
        httpx.get(url, headers=headers, verify=tls.client_context(), timeout=2)
        return True
    except httpx.TransportError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float = 15) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


__all__ = ["ENDPOINTS", "ROOT", "SERVERS", "TLS", "UNIX_SOCKET", "Endpoint", "answers", "make_tls", "on_unix_socket",
           "running", "wait_for"]
