"""failure_policy per guest: fail_closed (a failing guest fails the request, the default) and fail_open (it is
skipped as if it were not in the chain), for a trapping, a looping and a memory-hungry guest and a pool that
times out, on both call paths; what cannot be skipped; the metric and the log lines."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import pytest

from http_wasm_asgi import Guest, GuestError, HttpWasmMiddleware
from http_wasm_asgi.asgi import failure
from http_wasm_asgi.server.config import ConfigError, load_config
from http_wasm_asgi.testing import echo_app
from support import ZIG
from support.attack import HOSTILE, assert_clean_error, idle_instance
from support.driver import LOOP, READ_ALL, TRAP, Program

pytestmark = pytest.mark.usefixtures("call_path")

REQ = 0
MiB = 1024 * 1024
_names = itertools.count()


def _name(kind: str) -> str:
    """A name of its own per guest: metrics count by name for the whole process."""
    return f"{kind}-{next(_names)}"


def after_guest() -> Guest:
    """The guest after the failing one: it marks the responses it saw go by."""
    return Guest(ZIG / "headeradder.wasm", name=_name("after"), config="request x-after seen\nresponse x-after yes")


def failing(kind: str, policy: str) -> Guest:
    if kind == "trap":
        return Program().req(TRAP).guest(name=_name("trap"), failure_policy=policy)
    if kind == "loop":
        return Program().req(LOOP).guest(name=_name("loop"), failure_policy=policy, call_timeout=0.2)
    assert kind == "memory"  # leaks a page a request: the 16th finds 1 MiB full and traps
    return Guest(HOSTILE / "leak.wat", name=_name("leak"), memory_limit=1 * MiB, max_instances=1,
                 failure_policy=policy)


CAUSES = {"trap": "trap", "loop": "cpu_limit", "memory": "memory_limit"}


@pytest.fixture(autouse=True)
def _new_bursts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failure, "_bursts", {})


@pytest.mark.parametrize("kind", ["trap", "loop", "memory"])
async def test_fail_open_skips_the_failing_guest(client: Any, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    guest, after = failing(kind, "fail_open"), after_guest()
    c = client(HttpWasmMiddleware(echo_app, guests=[guest, after]))
    requests = 16 if kind == "memory" else 3
    for _ in range(requests):
        r = await c.get("/x")
        assert r.status_code == 200, r.text  # the app answered ...
        assert ["x-after", "seen"] in r.json()["headers"]  # ... after the next guest saw the request
        assert r.headers["x-after"] == "yes"
    skips = 1 if kind == "memory" else requests
    assert guest.stats.skips == {CAUSES[kind]: skips}
    assert guest.pool.in_use == 0 and after.pool.in_use == 0  # no instance left checked out
    assert all(not instance.closed for instance in guest.pool._idle)  # the failed ones were thrown away
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and guest.name in
                r.getMessage()]
    assert len(warnings) == 1, warnings  # once per burst
    assert "skipped (failure_policy fail_open" in warnings[0] and CAUSES[kind] in warnings[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("kind", ["trap", "loop", "memory"])
async def test_fail_closed_fails_the_request(client: Any, kind: str) -> None:
    guest = failing(kind, "fail_closed")
    c = client(HttpWasmMiddleware(echo_app, guests=[guest, after_guest()]))
    statuses = [(await c.get("/")).status_code for _ in range(16 if kind == "memory" else 1)]
    assert statuses[-1] == (503 if kind == "loop" else 500)
    assert guest.stats.skips == {}
    assert guest.pool.in_use == 0


async def test_default_is_fail_closed() -> None:
    guest = Program().guest(name=_name("default"))
    assert guest.failure_policy == "fail_closed" and not guest.fail_open


def test_unknown_policy_is_a_guest_error() -> None:
    with pytest.raises(GuestError, match="failure_policy must be one of fail_closed, fail_open, got 'open'"):
        Program().guest(name=_name("bad"), failure_policy="open")


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_handle_response_trap_with_a_buffered_response(client: Any, policy: str) -> None:
    """Held past next: fail_open sends the response as the inner layers left it; fail_closed a 500."""
    guest = Guest(HOSTILE / "trap_on_header.wat", name=_name("resp"), failure_policy=policy)
    c = client(HttpWasmMiddleware(echo_app, guests=[after_guest(), guest]))
    r = await c.get("/answer", headers={"x-trap": "response"})
    if policy == "fail_open":
        assert r.status_code == 200 and r.json()["path"] == "/answer"
        assert r.headers["x-after"] == "yes"  # the outer guest's handle_response still ran
        assert guest.stats.skips == {"trap": 1}
    else:
        assert_clean_error(r, 500)
    assert guest.pool.in_use == 0


async def test_a_guest_that_started_the_response_is_not_skipped(client: Any) -> None:
    """A trap in handle_request after the guest set the response's status: that response is half made, so
    the request fails as with fail_closed."""
    guest = Program().req("set_status_code", 418).req(TRAP).guest(name=_name("half"), failure_policy="fail_open")
    r = await client(HttpWasmMiddleware(echo_app, guests=[guest])).get("/")
    assert_clean_error(r, 500)
    assert guest.stats.skips == {}


async def test_a_client_error_is_not_skipped(client: Any) -> None:
    """A body over max_body_size is the client's fault (413): a fail_open reader must not let it by."""
    guest = Program().req("enable_features", 1).req(READ_ALL, REQ, 0x1000, 1024).guest(
        name=_name("reader"), failure_policy="fail_open")
    c = client(HttpWasmMiddleware(echo_app, guests=[guest], max_body_size=4096))
    assert_clean_error(await c.post("/", content=b"x" * 5000), 413)
    assert guest.stats.skips == {}


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_pool_timeout(client: Any, policy: str) -> None:
    guest = Program().guest(name=_name("busy"), failure_policy=policy, max_instances=1, pool_timeout=0.05)
    taken = guest.pool.try_acquire()  # the only instance, busy elsewhere
    assert taken is not None
    try:
        r = await client(HttpWasmMiddleware(echo_app, guests=[guest, after_guest()])).get("/")
    finally:
        guest.pool.release(taken)
    if policy == "fail_open":
        assert r.status_code == 200 and r.headers["x-after"] == "yes"
        assert guest.stats.skips == {"pool_timeout": 1}
    else:
        assert_clean_error(r, 503)
    idle_instance(guest)  # the instance is back, nothing else is held


async def test_skips_are_in_the_metrics(client: Any) -> None:
    metrics = pytest.importorskip("http_wasm_asgi.server.metrics")
    guest = Program().req(TRAP).guest(name=_name("counted"), failure_policy="fail_open")
    c = client(HttpWasmMiddleware(echo_app, guests=[guest]))
    for _ in range(3):
        assert (await c.get("/")).status_code == 200
    figures = metrics.figures()
    assert figures["http_wasm_guest_skips_total", (("cause", "trap"), ("guest", guest.name))] == 3
    assert "http_wasm_guest_skips" in metrics.FAMILIES


async def test_a_new_burst_is_logged_again(client: Any, caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="http_wasm_asgi")
    now = [1000.0]
    monkeypatch.setattr(failure.time, "monotonic", lambda: now[0])
    guest = Program().req(TRAP).guest(name=_name("bursty"), failure_policy="fail_open")
    c = client(HttpWasmMiddleware(echo_app, guests=[guest]))
    for step in (0, 1, 1, 30, 1):  # a burst of 3, a quiet 30 s, a burst of 2
        now[0] += step
        await c.get("/")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2, lines
    assert "(2 more skips since the last line)" in lines[1]


# --- config files ---
def _config(tmp_path: Path, policy: str) -> Path:
    path = tmp_path / "chain.yaml"
    path.write_text(f"app: hello:app\nguests:\n  - path: {ZIG / 'hello.wasm'}\n    failure_policy: {policy}\n")
    return path


def test_config_key(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, "fail_open")).guests[0].options["failure_policy"] == "fail_open"
    with pytest.raises(ConfigError, match=r"guests\[0\]\.failure_policy: must be fail_closed .* got 'open'"):
        load_config(_config(tmp_path, "open"))
