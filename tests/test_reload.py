"""Hot reload and shutdown: `replace_guests`/`reload_config` from Python, SIGHUP and `--watch` through the
real `serve` command (one process and `--workers 2`), a failed reload that keeps the old chain, SIGTERM
letting requests in flight finish, and 200 reloads under the load of 16 clients."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from http_wasm_asgi import ConfigError, Guest, HttpWasmMiddleware, reload_config
from http_wasm_asgi.registry import RELOADS, open_guests
from http_wasm_asgi.testing import echo_app
from support import WAT, ClientFactory
from support.ops import AUTH, ZIG, hup, rss_mib, scrape, total, wait_until, write_config
from support.procs import COMMAND, free_port, serving

INVALID = WAT / "invalid"


def stamp(version: str) -> Guest:
    return Guest(ZIG / "headeradder.wasm", name="stamp", config=f"response x-version {version}")


async def test_requests_in_flight_finish_on_the_chain_they_started_on(client: ClientFactory) -> None:
    release = asyncio.Event()

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["path"] == "/wait":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    old = stamp("old")
    middleware = HttpWasmMiddleware(app, [old])
    async with client(middleware) as c:
        in_flight = asyncio.ensure_future(c.get("/wait"))
        await asyncio.sleep(0.1)
        new = stamp("new")
        ok_before = RELOADS["ok"]
        middleware.replace_guests([new])
        assert RELOADS["ok"] == ok_before + 1 and middleware.guests == (new,)
        assert (await c.get("/")).headers["x-version"] == "new"
        assert old in open_guests() and old.pool.size == 1  # still serving the request in flight
        release.set()
        assert (await in_flight).headers["x-version"] == "old"
    assert old not in open_guests() and old.pool.size == 0  # closed once its last request ended
    assert new in open_guests()
    middleware.close()
    assert new not in open_guests()


async def test_a_replaced_chain_that_fails_to_close_costs_its_last_request_nothing(
        client: ClientFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    release = asyncio.Event()
    seen: list[object] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def record_end(scope: dict[str, object], receive: object, send: object) -> None:
        try:
            await middleware(scope, receive, send)
        except BaseException as exc:
            seen.append(exc)  # what the server would get back: it drops the connection on any
            raise

    old = stamp("old")

    def broken_close() -> None:
        raise RuntimeError("cannot close")

    monkeypatch.setattr(old, "close", broken_close)
    middleware = HttpWasmMiddleware(app, [old])
    async with client(record_end) as c:
        in_flight = asyncio.ensure_future(c.get("/"))
        await asyncio.sleep(0.1)
        middleware.replace_guests([stamp("new")])
        release.set()
        response = await in_flight
    assert response.status_code == 200 and response.headers["x-version"] == "old"
    assert seen == []  # the last request on the old chain ends cleanly
    assert "closing the guests of a replaced chain failed" in caplog.text and "cannot close" in caplog.text
    monkeypatch.undo()
    old.close()
    middleware.close()


def test_replace_guests_keeps_a_guest_passed_again() -> None:
    kept, dropped = stamp("kept"), Guest(ZIG / "auth.wasm", name="auth", config=b"t")
    middleware = HttpWasmMiddleware(echo_app, [kept, dropped])
    middleware.replace_guests([kept])
    assert kept in open_guests() and dropped not in open_guests()
    middleware.close()


async def test_reload_config_swaps_and_a_failure_keeps_the_old_chain(tmp_path: Path, client: ClientFactory) -> None:
    config = write_config(tmp_path, 1)
    middleware = HttpWasmMiddleware.from_config(config)
    async with client(middleware) as c:
        assert (await c.get("/", headers=AUTH)).headers["x-version"] == "1"
        write_config(tmp_path, 2)
        await reload_config(middleware, config)
        assert (await c.get("/", headers=AUTH)).headers["x-version"] == "2"
        errors = RELOADS["error"]
        write_config(tmp_path, 3, guests=f"  - path: {INVALID / 'traps_at_init.wat'}\n")
        with pytest.raises(ConfigError, match=r"guests\[2\]\.path: guest 'traps_at_init': failed to initialize"):
            await reload_config(middleware, config)
        assert RELOADS["error"] == errors + 1
        assert (await c.get("/", headers=AUTH)).headers["x-version"] == "2"  # the old chain goes on
        assert {g.name for g in open_guests()} >= {"stamp", "auth"}
        assert not [g for g in open_guests() if g.name == "stamp" and g.config.endswith(b" 3")]  # closed again
    middleware.close()


async def test_a_reload_swaps_the_routes_with_their_guests(tmp_path: Path, client: ClientFactory) -> None:
    def routes_config(version: str) -> Path:
        return write_config(tmp_path, version, extra="routes:\n  - match: {path_prefix: /api/}\n"
                                                     "    guests: [stamp, auth]\n  - match: {path: /open}\n"
                                                     "    guests: [stamp]\n")

    config = routes_config("1")
    middleware = HttpWasmMiddleware.from_config(config)
    async with client(middleware) as c:
        assert (await c.get("/api/x")).status_code == 401
        assert (await c.get("/open")).headers["x-version"] == "1"
        assert "x-version" not in (await c.get("/other")).headers  # no route: straight to the app
        old = middleware.all_guests
        routes_config("2")
        await reload_config(middleware, config)
        assert (await c.get("/open")).headers["x-version"] == "2"
        assert (await c.get("/api/x", headers=AUTH)).headers["x-version"] == "2"
    assert not set(old) & set(open_guests())  # the old routes' guests are closed
    assert len(middleware.all_guests) == 2 and set(middleware.all_guests) <= set(open_guests())
    middleware.close()


def version(url: str) -> str:
    return httpx.get(url + "/", headers=AUTH, timeout=5).headers["x-version"]


@pytest.mark.slow
@pytest.mark.servers
def test_sighup_reloads_and_a_bad_config_keeps_the_old_chain(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, 1)
    metrics = f"http://127.0.0.1:{metrics_port}"
    with serving([COMMAND, "serve", str(config), "--port", str(port), "--metrics-port", str(metrics_port)], port,
                 cwd=tmp_path) as server:
        assert version(server.url) == "1"
        write_config(tmp_path, 2)
        hup(server.proc.pid)
        wait_until(lambda: version(server.url) == "2", 5, "version 2 after SIGHUP")
        config.write_text(config.read_text().replace("config: t\n", "config: t\n    max_instance: 3\n"))
        hup(server.proc.pid)
        out = server.wait_for_output("reload failed")
        assert version(server.url) == "2"
        samples = scrape(metrics)
        assert total(samples, "http_wasm_reloads_total", result="ok") == 1
        assert total(samples, "http_wasm_reloads_total", result="error") == 1
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, out
    assert "the previous chain keeps serving" in errors[0] and "guests[1].max_instance: unknown key" in errors[0]
    assert "Traceback" not in server.output()


@pytest.mark.slow
@pytest.mark.servers
def test_reload_flag_watches_the_config_and_the_guest_files(tmp_path: Path) -> None:
    port = free_port()
    guest = tmp_path / "adder.wasm"
    guest.write_bytes((ZIG / "headeradder.wasm").read_bytes())
    extra = f"  - name: extra\n    path: {guest}\n    config: response x-extra one\n"
    config = write_config(tmp_path, 1, guests=extra)
    with serving([COMMAND, "serve", str(config), "--port", str(port), "--watch"], port, cwd=tmp_path) as server:
        assert version(server.url) == "1"
        write_config(tmp_path, 2, guests=extra)
        wait_until(lambda: version(server.url) == "2", 10, "version 2 after the config changed")
        before = server.output().count("chain reloaded")
        guest.write_bytes((ZIG / "headeradder.wasm").read_bytes())  # the guest file itself changed
        server.wait_for_output("chain reloaded", count=before + 1, timeout=10)
    assert "adder.wasm changed: reloading" in server.output()


@pytest.mark.slow
@pytest.mark.servers
def test_reload_flag_follows_a_configmap_volume_update(tmp_path: Path) -> None:
    """A Kubernetes ConfigMap volume: chain.yaml -> ..data/chain.yaml, ..data -> ..<timestamp>/, and an
    update swaps ..data to a new folder and removes the old one (the kubelet's atomic writer)."""
    volume = tmp_path / "config"
    volume.mkdir()

    def publish(version: int) -> None:
        folder = volume / f"..v{version}"
        folder.mkdir()
        write_config(folder, version)
        (volume / "..data_tmp").symlink_to(folder.name)
        os.replace(volume / "..data_tmp", volume / "..data")
        if version > 1:
            shutil.rmtree(volume / f"..v{version - 1}")

    publish(1)
    (volume / "chain.yaml").symlink_to("..data/chain.yaml")
    write_config(tmp_path, 0)  # opsapp.py in the current folder (the app is imported from there)
    port = free_port()
    with serving([COMMAND, "serve", str(volume / "chain.yaml"), "--port", str(port), "--watch"], port,
                 cwd=tmp_path) as server:
        assert version(server.url) == "1"
        publish(2)
        wait_until(lambda: version(server.url) == "2", 10, "version 2 after the ConfigMap update")
        publish(3)
        wait_until(lambda: version(server.url) == "3", 10, "version 3 after the next one")


@pytest.mark.slow
@pytest.mark.servers
def test_sighup_and_reload_flag_reload_every_worker(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, 1)

    def versions() -> dict[int, str]:
        seen = {}
        for _ in range(40):
            r = httpx.get(server.url + "/", headers={**AUTH, "connection": "close"}, timeout=5)
            seen[r.json()["pid"]] = r.headers["x-version"]
        return seen

    with serving([COMMAND, "serve", str(config), "--port", str(port), "--workers", "2", "--watch"], port,
                 cwd=tmp_path, ready_path="/ready") as server:
        server.wait_for_output("Application startup complete", count=2)
        write_config(tmp_path, 2)  # --watch sees it and signals the serve process, which tells each worker
        server.wait_for_output("chain reloaded", count=2, timeout=20)
        first = versions()
        assert len(first) == 2 and set(first.values()) == {"2"}, first
        config.write_text(config.read_text().replace("x-version 2", "x-version 3"))
        hup(server.proc.pid)  # a manual SIGHUP too (the file watcher may add its own reload: harmless)
        wait_until(lambda: set(versions().values()) == {"3"}, 20, "both workers on version 3")
        assert set(versions()) == set(first)  # the same two workers: reloaded in place, never restarted
    assert server.output().count("SIGHUP: every worker reloads its chain") >= 2


@pytest.mark.slow
@pytest.mark.servers
def test_sigterm_lets_requests_in_flight_finish_then_closes_every_pool(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, 1)
    metrics = f"http://127.0.0.1:{metrics_port}"
    with serving([COMMAND, "serve", str(config), "--port", str(port), "--metrics-port", str(metrics_port)], port,
                 cwd=tmp_path) as server, ThreadPoolExecutor(1) as pool:
        assert httpx.get(metrics + "/readyz", timeout=5).status_code == 200
        slow = pool.submit(httpx.get, server.url + "/slow?s=3", headers=AUTH, timeout=10)
        # SIGTERM once the request is in flight (its guests hold their instances while the app sleeps), not
        # after a fixed wait: a loaded machine may not have delivered it yet, and the server would refuse it
        wait_until(lambda: total(scrape(metrics), "http_wasm_pool_instances", state="in_use") >= 1, 10,
                   "the slow request in flight")
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(metrics + "/readyz", timeout=5).status_code == 503, 1.5, "503 while draining")
        assert httpx.get(metrics + "/healthz", timeout=5).status_code == 200
        def refused() -> bool:  # the listener closes right after /readyz turns 503 (within a loop turn or two)
            try:
                httpx.get(server.url + "/", headers=AUTH, timeout=2)
            except httpx.TransportError:
                return True
            return False

        wait_until(refused, 1.0, "no longer accepting")
        response = slow.result()
        assert response.status_code == 200 and response.headers["x-version"] == "1"
        assert server.proc.wait(15) == 0
    out = server.output()
    assert f"process {server.proc.pid}: chain closed (2 guests), exiting" in out
    assert out.index("chain closed") > out.index("Shutting down")


LIFESPAN_APP = """
import pathlib

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            pathlib.Path(kind).write_text("done")  # 'startup', then 'shutdown', in the current folder
            await send({"type": message["type"] + ".complete"})
            if kind == "shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""


@pytest.mark.slow
@pytest.mark.servers
def test_the_app_s_own_lifespan_runs_inside_serve_s(tmp_path: Path) -> None:
    (tmp_path / "lifeapp.py").write_text(LIFESPAN_APP)
    config = tmp_path / "chain.yaml"
    config.write_text(f"app: lifeapp:app\nguests:\n  - path: {ZIG / 'headeradder.wasm'}\n"
                      "    config: response x-life yes\n")
    port = free_port()
    with serving([COMMAND, "serve", str(config), "--port", str(port)], port, cwd=tmp_path) as server:
        assert (tmp_path / "startup").exists() and not (tmp_path / "shutdown").exists()
        assert httpx.get(server.url + "/", timeout=5).headers["x-life"] == "yes"
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
    assert (tmp_path / "shutdown").exists()
    assert "chain closed (1 guests), exiting" in server.output()


@pytest.mark.slow
@pytest.mark.servers
def test_sigterm_bounds_the_wait_with_shutdown_timeout(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, 1, extra="server: {shutdown_timeout: 1}\n")
    with serving([COMMAND, "serve", str(config), "--port", str(port)], port, cwd=tmp_path) as server, \
            ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(httpx.get, server.url + "/slow?s=60", headers=AUTH, timeout=30)
        time.sleep(0.5)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
        assert time.monotonic() - start < 8  # 1 s of grace, not the request's 60 s
        try:
            status = stuck.result().status_code  # uvicorn cancelled it: a 500 or a closed connection
        except httpx.TransportError:
            status = 0
        assert status in (0, 500)
    assert "chain closed (2 guests)" in server.output()


# -- 200 reloads under load --
RELOADS_IN_SOAK = 200
CLIENTS = 16
VISIBLE_WITHIN = 2.0  # seconds from SIGHUP until responses carry the new config
RSS_GROWTH_MIB = 24.0  # the serve process's RSS after all reloads vs after the first WARMUP


STALE_CONNECTION = "Server disconnected without sending a response"


def _load(url: str, stop: threading.Event, failures: list[str], counts: list[int], retried: list[str]) -> None:
    """GET / in a loop on one keep-alive connection, as a browser would: a GET on a reused connection that
    closed before any byte of a response is sent again once (RFC 9112, 9.3.1); that retry is recorded."""
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as c:
        while not stop.is_set():
            try:
                try:
                    r = c.get("/")
                except httpx.RemoteProtocolError as exc:
                    if STALE_CONNECTION not in str(exc):
                        raise
                    retried.append(f"{time.strftime('%H:%M:%S')} {exc!r}")
                    r = c.get("/")
                if r.status_code != 200 or "x-version" not in r.headers:
                    failures.append(f"{r.status_code} {r.headers}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            counts.append(1)


@pytest.mark.slow
@pytest.mark.servers
def test_200_reloads_under_load_drop_nothing_and_leak_nothing(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, 0)
    metrics = f"http://127.0.0.1:{metrics_port}"
    args = [COMMAND, "serve", str(config), "--port", str(port), "--metrics-port", str(metrics_port),
            "--log-level", "warning"]
    with serving(args, port, cwd=tmp_path) as server:
        pid = server.proc.pid
        baseline = total(scrape(metrics), "http_wasm_pool_instances")
        stop, failures, counts, retried = threading.Event(), [], [], []
        clients = [threading.Thread(target=_load, args=(server.url, stop, failures, counts, retried))
                   for _ in range(CLIENTS)]
        for thread in clients:
            thread.start()
        waits, rss = [], {}
        try:
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as probe:
                for n in range(1, RELOADS_IN_SOAK + 1):
                    write_config(tmp_path, n)
                    hup(pid)
                    waits.append(wait_until(lambda n=n: probe.get("/").headers["x-version"] == str(n),
                                            VISIBLE_WITHIN, f"reload {n} visible"))
                    if n in (20, RELOADS_IN_SOAK):
                        rss[n] = rss_mib(pid)
        finally:
            stop.set()
            for thread in clients:
                thread.join(30)
        write_config(tmp_path, "final")  # with no request in flight: every old chain must be closed now
        hup(pid)
        wait_until(lambda: version(server.url) == "final", VISIBLE_WITHIN, "the last reload visible")
        samples = scrape(metrics)
        errors = [line for line in server.output().splitlines() if "ERROR" in line or "Traceback" in line]
    print(f"\nsoak: {RELOADS_IN_SOAK} reloads, {len(counts)} requests by {CLIENTS} clients, {len(failures)} failed, "
          f"{len(retried)} sent again on a fresh connection; "
          f"new config visible after max {max(waits):.3f} s (median {sorted(waits)[len(waits) // 2]:.3f} s); "
          f"RSS {rss[20]:.1f} MiB after 20 reloads, {rss[RELOADS_IN_SOAK]:.1f} MiB after {RELOADS_IN_SOAK}; "
          f"live instances {total(samples, 'http_wasm_pool_instances'):.0f} (baseline {baseline:.0f})")
    assert not failures, failures[:5]
    assert not errors, errors[:20]  # the server dropped nothing: no request failed on its side
    assert len(retried) <= 2, retried  # a rare race of keep-alive, not a pattern
    assert len(counts) > RELOADS_IN_SOAK * 4  # the load really ran throughout
    assert total(samples, "http_wasm_reloads_total", result="ok") == RELOADS_IN_SOAK + 1
    assert total(samples, "http_wasm_reloads_total", result="error") == 0
    assert rss[RELOADS_IN_SOAK] - rss[20] < RSS_GROWTH_MIB, rss
    assert total(samples, "http_wasm_pool_instances") == baseline  # one instance per guest: no old pool open
    assert total(samples, "http_wasm_pool_instances", state="in_use") == 0
