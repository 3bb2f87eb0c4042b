"""Each example runs the way the README says (as subprocesses, from the repository's top folder, on a
free port instead of 8080/9000) and does what its comments promise."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import httpx
import pytest

from support import ROOT, docs
from support.procs import COMMAND, UVICORN, free_port, serving

README = docs.text()  # README.md and the pages of docs/
TOKEN = {"authorization": "Bearer demo-token"}


@pytest.mark.parametrize("command", [
    "http-wasm-asgi serve examples/chain.yaml",
    "http-wasm-asgi serve examples/chain.toml",
    "uvicorn examples.fastapi_app:app",
    "uvicorn examples.starlette_app:app",
    "uvicorn examples.upstream:app --port 9000",
    "http-wasm-asgi serve examples/sidecar.yaml",
    "docker compose up --build",
    "pip install .",
])
def test_the_readme_gives_each_example_command(command: str) -> None:
    assert command in README


def test_make_demo_serves_the_example_chain() -> None:
    assert "$(BIN)/http-wasm-asgi serve examples/chain.yaml" in (ROOT / "Makefile").read_text()


def check_example_chain(url_or_client: str | httpx.Client) -> None:
    """What examples/chain.yaml's comments say it does (through a client of any HTTP version: see test_servers.py)."""
    with contextlib.nullcontext(url_or_client) if isinstance(url_or_client, httpx.Client) else \
            httpx.Client(base_url=url_or_client, timeout=10) as client:
        denied = client.get("/whoami")
        assert (denied.status_code, denied.headers["www-authenticate"]) == (401, "Bearer")
        ok = client.get("/whoami", headers=TOKEN)
        assert ok.status_code == 200 and ok.headers["x-powered-by"] == "http-wasm"
        assert "x-backend-host" not in ok.headers  # redacted on the way out
        seen = ok.json()["headers"]
        assert seen["x-chain"] == "http-wasm-asgi" and "authorization" not in seen  # redacted on the way in
        moved = client.get("/old?a=1")
        assert (moved.status_code, moved.headers["location"]) == (302, "/whoami?a=1")
        rewritten = client.get("/api/whoami?x=1", headers=TOKEN)
        assert (rewritten.json()["path"], rewritten.json()["query"]) == ("/whoami", "x=1")
        home = client.get("/", headers=TOKEN)
        assert home.text == "hello from the app\n"


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("config", ["examples/chain.yaml", "examples/chain.toml"])
def test_the_example_chain_served_by_the_command(config: str) -> None:
    port = free_port()
    with serving([COMMAND, "serve", config, "--port", str(port)], port) as server:
        check_example_chain(server.url)
        out = server.wait_for_output("accesslog: GET /api/whoami?x=1 200")
    for line in ("accesslog: GET /whoami 401", "accesslog: GET /old?a=1 302", "accesslog: GET / 200"):
        assert line in out


@pytest.mark.slow
@pytest.mark.servers
def test_the_example_chain_works_from_any_folder(tmp_path: Path) -> None:
    port = free_port()
    with serving([COMMAND, "serve", str(ROOT / "examples" / "chain.yaml"), "--port", str(port)], port,
                 cwd=tmp_path) as server:
        check_example_chain(server.url)


@pytest.mark.slow
@pytest.mark.servers
def test_the_example_chain_can_be_copied_elsewhere_with_its_guests(tmp_path: Path) -> None:
    """Paths in a config are relative to its folder: a copied tree keeps working."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "guests").mkdir()
    shutil.copytree(ROOT / "guests" / "zig", tmp_path / "guests" / "zig", ignore=shutil.ignore_patterns("*.zig"))
    port = free_port()
    with serving([COMMAND, "serve", "examples/chain.yaml", "--port", str(port)], port, cwd=tmp_path) as server:
        check_example_chain(server.url)


@pytest.mark.slow
@pytest.mark.servers
def test_the_fastapi_example() -> None:
    port = free_port()
    with serving([UVICORN, "examples.fastapi_app:app", "--port", str(port)], port, ready_path="/items/0") as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        r = client.get("/items/7")
        assert r.status_code == 200 and r.headers["x-powered-by"] == "http-wasm"
        assert r.json() == {"item": "7", "x-request-source": "edge"}
        assert client.get("/v1/items/8").json()["item"] == "8"
        moved = client.get("/docs-old")
        assert (moved.status_code, moved.headers["location"]) == (302, "/docs")


@pytest.mark.slow
@pytest.mark.servers
def test_the_starlette_example() -> None:
    port = free_port()
    with serving([UVICORN, "examples.starlette_app:app", "--port", str(port)], port) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/hello").status_code == 401
        r = client.get("/hello", headers=TOKEN)
        assert (r.status_code, r.text) == (200, "hello (checked by: http-wasm-auth)\n")
        assert r.headers["x-powered-by"] == "http-wasm"


@pytest.mark.slow
@pytest.mark.servers
def test_the_sidecar_example() -> None:
    upstream_port, port = free_port(), free_port()
    with serving([UVICORN, "examples.upstream:app", "--port", str(upstream_port)], upstream_port), \
            serving([COMMAND, "serve", "examples/sidecar.yaml", "--port", str(port),
                     "--upstream", f"http://127.0.0.1:{upstream_port}"], port) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post("/anything?x=1", content=b"hi").status_code == 401
        r = client.post("/anything?x=1", content=b"hi", headers=TOKEN)
        assert r.status_code == 200 and r.headers["x-served-by"] == "http-wasm-sidecar"
        body = r.json()
        assert (body["service"], body["method"], body["path"], body["query"], body["body_bytes"]) == \
            ("upstream", "POST", "/anything", "x=1", 2)
        assert body["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert body["headers"]["x-forwarded-host"] == f"127.0.0.1:{port}"
        assert body["headers"]["x-checked-by"] == "http-wasm-sidecar"
        assert client.get("/api/users", headers=TOKEN).json()["path"] == "/users"
        # no guest of this chain buffers: a body over max_body_size (16 MiB) streams through
        big = client.put("/upload", content=b"x" * (20 * 1024 * 1024), headers=TOKEN, timeout=60)
        assert big.status_code == 200 and big.json()["body_bytes"] == 20 * 1024 * 1024
        server.wait_for_output('"PUT /upload HTTP/1.1" 200')
