"""The `http-wasm-asgi` command, run as a real subprocess: serve, check, inspect, --help, exit codes,
--debug, `python -m http_wasm_asgi`, and `serve --workers 2` with its on-disk compile cache."""

from __future__ import annotations

import hashlib
import re
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from http_wasm_asgi import _native
from support import ROOT, WAT
from support.procs import COMMAND, free_port, run, serving

ZIG = ROOT / "guests" / "zig"
CHAIN = "examples/chain.yaml"
TOKEN = {"authorization": "Bearer demo-token"}


def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(f"app: hello:app\nguests:\n  - path: {ZIG / 'auth.wasm'}\n    max_instance: 2\n")
    return path


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, one `error:` line on stderr naming what is wrong, and no traceback."""
    assert result.returncode == 2, result
    err = result.stderr
    assert err.count("\n") == 1, err
    assert "Traceback" not in err, err
    assert err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# --- help -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    ([], ["serve", "check", "inspect", "--debug", "exit status: 0 ok, 2 a bad config"]),
    (["serve"], ["CONFIG", "--host", "--port", "--workers", "--log-level", "--upstream", "--debug",
                 "overrides server.port", "{critical,error,warning,info,debug,trace}", "disk cache",
                 "--metrics-port PORT", "/metrics (Prometheus), /healthz and /readyz", "--reload",
                 "--shutdown-timeout SECONDS"]),
    (["check"], ["CONFIG", "size, imports, exports, features enabled at start, WASI yes/no", "compile time",
                 "--debug"]),
    (["inspect"], ["GUEST", "--config TEXT", "imports, exports, features enabled", "--debug"]),
])
def test_help_of_each_command(args: list[str], expected: list[str]) -> None:
    result = run([COMMAND, *args, "--help"])
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: http-wasm-asgi")
    text = " ".join(result.stdout.split())
    for fragment in expected:
        assert " ".join(fragment.split()) in text, fragment


def test_no_command_is_a_usage_error() -> None:
    result = run([COMMAND])
    assert result.returncode == 2 and "usage: http-wasm-asgi" in result.stderr and "Traceback" not in result.stderr


def test_python_dash_m_is_the_same_command() -> None:
    result = run([sys.executable, "-m", "http_wasm_asgi", "--help"])
    assert result.returncode == 0 and result.stdout.startswith("usage: http-wasm-asgi")
    result = run([sys.executable, "-m", "http_wasm_asgi", "inspect", str(ZIG / "auth.wasm")])
    assert result.returncode == 0 and "guest 'auth'" in result.stdout
    assert_clean_error(run([sys.executable, "-m", "http_wasm_asgi", "inspect", "nowhere.wasm"]), "nowhere.wasm")


# --- check and inspect ----------------------------------------------------------------------------


def test_check_describes_every_guest_of_the_example_chain() -> None:
    result = run([COMMAND, "check", CHAIN])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0] == f"{CHAIN}: 5 guest(s) in front of app hello:app"
    assert out.splitlines()[-1] == "ok"
    blocks = out.split("guest '")[1:]
    assert [b.split("'")[0] for b in blocks] == ["accesslog", "router", "auth", "redact", "headeradder"]
    for name, block in zip(["accesslog", "router", "auth", "redact", "headeradder"], blocks, strict=True):
        size = (ZIG / f"{name}.wasm").stat().st_size
        assert f"size:      {size} bytes" in block
        assert "exports:   memory, handle_request, handle_response" in block
        assert "features at start: none" in block and "WASI:      no" in block
        assert re.search(r"compile:   \d+\.\d ms \((compiled|disk|memory)\)", block), block
    assert "imports:   http_handler.get_config, http_handler.get_header_values" in blocks[2]  # auth


def test_inspect_shows_features_at_start_wasi_and_imports() -> None:
    start = run([COMMAND, "inspect", str(WAT / "start_section.wat"), "--config", "abc"])
    assert start.returncode == 0, start.stderr
    assert "features at start: buffer_response" in start.stdout
    assert "imports:   http_handler.enable_features, http_handler.get_config, http_handler.log" in start.stdout
    wasi = run([COMMAND, "inspect", str(ZIG / "wasi_hello.wasm")])
    assert wasi.returncode == 0 and "WASI:      yes" in wasi.stdout
    assert "wasi_snapshot_preview1." in wasi.stdout and "_initialize" in wasi.stdout


@pytest.mark.skipif(_native.EXT is None, reason="the line is the native path's")
def test_inspect_says_when_handle_response_is_one_synchronous_call() -> None:
    bounded = run([COMMAND, "inspect", str(WAT / "copy_header.wat")])
    assert bounded.returncode == 0, bounded.stderr
    assert "call path: native; handle_response is one synchronous call (its code cannot loop)" in bounded.stdout
    looping = run([COMMAND, "inspect", str(WAT / "driver.wat")])  # an interpreter: its handle_response loops
    assert looping.returncode == 0, looping.stderr
    assert "call path: native\n" in looping.stdout


@pytest.mark.slow
def test_check_and_inspect_fail_on_each_kind_of_problem(tmp_path: Path) -> None:
    assert_clean_error(run([COMMAND, "check", str(bad_config(tmp_path))]),
                       "bad.yaml: guests[0].max_instance: unknown key; did you mean 'max_instances'?")
    assert_clean_error(run([COMMAND, "check", str(tmp_path / "absent.yaml")]), "config file not found")
    broken = tmp_path / "broken.wasm"
    broken.write_bytes(b"\0asm\x01\0\0\0junk")
    config = tmp_path / "guest.yaml"
    config.write_text(f"upstream: http://127.0.0.1:9\nguests:\n  - path: {ROOT / 'examples' / 'hello.py'}\n"
                      "    name: notwasm\n")
    assert_clean_error(run([COMMAND, "check", str(config)]), "guests[0].path: guest 'notwasm'", "fix:")
    config.write_text("app: nosuch.module:app\nguests: []\n")
    assert_clean_error(run([COMMAND, "check", str(config)]), "app: cannot import 'nosuch.module:app'")
    assert_clean_error(run([COMMAND, "inspect", str(broken)]), "guest 'broken': not a valid WebAssembly module")
    assert_clean_error(run([COMMAND, "inspect", str(WAT / "invalid" / "traps_at_init.wat")]), "traps_at_init")
    assert_clean_error(run([COMMAND, "inspect", str(tmp_path / "none.wasm")]), "cannot read")


def test_debug_shows_the_traceback_in_either_position(tmp_path: Path) -> None:
    config = str(bad_config(tmp_path))
    for args in (["--debug", "check", config], ["check", config, "--debug"], ["serve", config, "--debug"]):
        result = run([COMMAND, *args])
        assert result.returncode == 1, result
        assert "Traceback (most recent call last)" in result.stderr, args
        assert "ConfigError" in result.stderr and "did you mean 'max_instances'?" in result.stderr


# --- serve ----------------------------------------------------------------------------------------


def test_serve_with_a_bad_config_exits_2_before_binding(tmp_path: Path) -> None:
    port = free_port()
    result = run([COMMAND, "serve", str(bad_config(tmp_path)), "--port", str(port)], timeout=30)
    assert_clean_error(result, "guests[0].max_instance")
    missing_guest = tmp_path / "missing.yaml"
    missing_guest.write_text("app: hello:app\nguests:\n  - path: nope.wasm\n")
    assert_clean_error(run([COMMAND, "serve", str(missing_guest)]), "guests[0].path: file 'nope.wasm' not found")


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--workers", "0", "must be a whole number of 1 or more"),
    ("--port", "http", "must be a port number"),
    ("--log-level", "loud", "must be one of critical, error, warning, info, debug, trace, got 'loud'"),
    ("--upstream", "ftp://x", "must be an http:// or https:// URL"),
    ("--metrics-port", "prom", "must be a port number"),
    ("--shutdown-timeout", "0", "must be a number of seconds greater than 0"),
])
def test_serve_rejects_bad_flags(flag: str, value: str, message: str) -> None:
    result = run([COMMAND, "serve", CHAIN, flag, value])
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.servers
def test_serve_uses_the_config_server_section_and_flags_override_it(tmp_path: Path) -> None:
    config_port, flag_port = free_port(), free_port()
    config = tmp_path / "chain.yaml"
    config.write_text((ROOT / CHAIN).read_text().replace("port: 8080", f"port: {config_port}")
                      .replace("../guests/", f"{ROOT / 'guests'}/") + "log_level: info\n")
    (tmp_path / "hello.py").write_text((ROOT / "examples" / "hello.py").read_text())
    with serving([COMMAND, "serve", str(config)], config_port) as server:
        assert httpx.get(server.url + "/", headers=TOKEN, timeout=10).text == "hello from the app\n"
        server.wait_for_output("accesslog: GET / 200")  # guest logs show at the config's log level
    assert "Application shutdown complete." in server.output()  # SIGTERM is a clean shutdown
    with serving([COMMAND, "serve", str(config), "--port", str(flag_port), "--log-level", "warning"],
                 flag_port) as server:
        r = httpx.get(server.url + "/", headers=TOKEN, timeout=10)
        assert r.status_code == 200 and r.headers["x-powered-by"] == "http-wasm"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{config_port}/", timeout=2)
        out = server.output()
        assert "accesslog" not in out and '"GET / HTTP/1.1" 200' not in out  # warning: no info lines


def test_serve_on_a_port_in_use_fails_without_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run([COMMAND, "serve", CHAIN, "--port", str(port)], timeout=60)
    assert result.returncode not in (0, 2)  # uvicorn's own start-up failure code
    assert "address already in use" in result.stderr.lower() and "Traceback" not in result.stderr


PID_APP = """
import json, os, time

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    time.sleep(0.15)  # blocks this worker: concurrent requests must go to the other one
    body = json.dumps({"pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


def compiled(cache: Path) -> dict[str, tuple[int, int]]:
    """The compiled modules in a cache folder, with their inode and size (a rewrite is a new inode; the
    modification time is the entry's last use)."""
    return {p.name: (p.stat().st_ino, p.stat().st_size) for p in cache.glob("*.cwasm")}


@pytest.mark.slow
@pytest.mark.servers
def test_serve_workers_2_serves_from_two_processes_and_compiles_once(tmp_path: Path) -> None:
    (tmp_path / "pidapp.py").write_text(PID_APP)
    config = tmp_path / "chain.yaml"
    # snapshot: false: this is about the compile cache of the modules themselves (a snapshot is a
    # module per guest config, built once too: test_snapshots_are_built_once_by_workers_starting_together)
    config.write_text(f"app: pidapp:app\nguests:\n  - path: {ZIG / 'auth.wasm'}\n    config: t\n    snapshot: false\n"
                      f"  - path: {ZIG / 'headeradder.wasm'}\n    config: response x-from chain\n"
                      f"    snapshot: false\n  - name: second-adder\n    path: {ZIG / 'headeradder.wasm'}\n"
                      f"    snapshot: false\n")
    cache = tmp_path / "cache"
    env = {"HTTP_WASM_ASGI_CACHE_DIR": str(cache)}
    port = free_port()
    modules = {hashlib.sha256((ZIG / f"{name}.wasm").read_bytes()).hexdigest() for name in ("auth", "headeradder")}

    def loaded_lines(out: str) -> dict[int, str]:
        return {int(pid): guests for pid, guests in re.findall(r"process (\d+): chain loaded in front of app "
                                                               r"pidapp:app: (.*)", out)}

    with serving([COMMAND, "serve", str(config), "--port", str(port), "--workers", "2"], port, env=env,
                 ready_path="/nothing") as server:
        out = server.wait_for_output("chain loaded", count=3)  # the parent, then each worker
        lines = loaded_lines(out)
        parent, workers = server.proc.pid, set(lines) - {server.proc.pid}
        assert parent in lines and len(workers) == 2, out
        assert lines[parent].count("(compiled in") == 2 and "(memory" in lines[parent]  # two modules, 3 guests
        for pid in workers:
            assert lines[pid].count("(disk in") == 2 and "compiled" not in lines[pid], lines[pid]
        entries = compiled(cache)  # one per module: `<sha256 of the wasm>-<engine tag>-<digest>.cwasm`
        assert {name.split("-")[0] for name in entries} == modules and len(entries) == 2
        assert len({name.split("-")[1] for name in entries}) == 1
        stamps = entries

        seen: set[int] = set()

        def ask(_: int) -> int:
            r = httpx.get(server.url + "/", headers={"authorization": "Bearer t", "connection": "close"},
                          timeout=10)
            assert r.status_code == 200 and r.headers["x-from"] == "chain"
            return int(r.json()["pid"])

        with ThreadPoolExecutor(4) as pool:
            for _ in range(25):
                seen.update(pool.map(ask, range(4)))
                if len(seen) == 2:
                    break
        assert seen == workers  # both workers answered, each behind its own chain
        assert httpx.get(server.url + "/", timeout=10).status_code == 401
    # a restart compiles nothing: every process, the parent included, reads the cache
    with serving([COMMAND, "serve", str(config), "--port", str(port), "--workers", "2"], port, env=env,
                 ready_path="/nothing") as server:
        lines = loaded_lines(server.wait_for_output("chain loaded", count=3))
        assert len(lines) == 3 and all("compiled" not in guests for guests in lines.values()), lines
    assert compiled(cache) == stamps  # the same files, never rewritten


NODELAY_APP = """
import json, os, socket

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    client_port = scope["client"][1]
    nodelay = None  # TCP_NODELAY of this worker's socket for this very connection
    for fd in os.listdir("/proc/self/fd"):
        try:
            copy = os.dup(int(fd))
        except OSError:
            continue  # closed meanwhile (e.g. the listdir's own)
        try:
            sock = socket.socket(fileno=copy)
        except OSError:
            os.close(copy)
            continue  # not a socket
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getpeername()[1] == client_port:
                nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        except OSError:
            pass  # a listener: no peer
        finally:
            sock.close()
    body = json.dumps({"pid": os.getpid(), "nodelay": nodelay}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_keep_alive_responses_are_not_held_by_nagle(tmp_path: Path, workers: str) -> None:
    """With --workers N uvicorn binds the listener itself (protocol 0), so asyncio does not set TCP_NODELAY
    on accepted sockets: unless serve sets it, every keep-alive response waits for the client's delayed
    ACK (~40 ms). The option is read back on the accepted socket, and the keep-alive latency is
    far below that delay."""
    (tmp_path / "nodelayapp.py").write_text(NODELAY_APP)
    config = tmp_path / "chain.yaml"
    config.write_text(f"app: nodelayapp:app\nguests:\n  - path: {ZIG / 'auth.wasm'}\n    config: t\n")
    port = free_port()
    with serving([COMMAND, "serve", str(config), "--port", str(port), "--workers", workers,
                  "--log-level", "warning"], port, ready_path="/nothing") as server, httpx.Client() as client:
        pids: set[int] = set()
        latencies = []
        for _ in range(40):
            start = time.perf_counter()
            r = client.get(server.url + "/", headers={"authorization": "Bearer t"}, timeout=10)
            latencies.append(time.perf_counter() - start)
            assert r.status_code == 200, server.output()
            assert r.json()["nodelay"] == 1, r.json()
            pids.add(r.json()["pid"])
        assert len(pids) == 1  # one keep-alive connection, one worker
        # Nagle + delayed ACK makes every response wait ~40 ms: the median would be about that
        assert statistics.median(latencies) < 0.02, sorted(latencies)


def test_a_reader_that_goes_away_is_not_an_error() -> None:
    """`http-wasm-asgi check x.yaml | head -1`: a closed stdout ends the command quietly."""
    proc = subprocess.Popen([COMMAND, "check", CHAIN], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads: every write gets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141
    assert "Traceback" not in err and "Exception ignored" not in err and "error" not in err, err
