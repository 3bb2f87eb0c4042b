"""The guest authors' kit: host-call tracing, the test client (in-process and through uvicorn),
the pytest plugin and its failure reports."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from http_wasm_asgi import Guest, _native, host
from http_wasm_asgi.abi import Feature, HeaderKind
from http_wasm_asgi.testing import GuestClient, RecordingApp, recent_results
from http_wasm_asgi.tracing import TRACE, HostCall
from http_wasm_asgi.wasm.calls import NATIVE_PATH
from support import docs
from support.driver import Program

ROOT = Path(__file__).resolve().parent.parent
ZIG = ROOT / "guests" / "zig"
GO = ROOT / "guests" / "go"
TRAPS = ROOT / "guests" / "wat" / "hostile" / "trap_on_header.wat"
REWRITE = {"request": [{"from": "colour", "to": "color"}], "response": [{"from": "secret", "to": "******"}]}

pytest_plugins = ["pytester"]


# --- tracing ---
def test_trace_records_every_host_call_with_decoded_arguments() -> None:
    calls: list[HostCall] = []
    guest = Guest(ZIG / "hello.wasm", config="Zig", trace=calls.append)
    with GuestClient(guest) as client:
        calls.clear()
        result = client.get("/hello")
    assert result.status == 200 and result.text == "hello, Zig\n"
    assert [c.function for c in result.trace] == [c.function for c in calls]
    assert [c.function for c in calls][-4:] == ["get_method", "get_uri", "set_header_value", "write_body"]
    method, uri, header, body = calls[-4:]
    assert method.result == "GET" and uri.result == "/hello" and method.phase == "request"
    assert dict(header.args) == {"kind": "response", "name": "content-type", "value": "text/plain"}
    assert dict(body.args) == {"kind": "response", "bytes": len("hello, Zig\n")}
    assert all(c.seconds > 0 and c.guest == "hello" and c.error is None for c in calls)
    assert "set_header_value(kind=response, name='content-type', value='text/plain')" in str(header)


def test_tracing_is_chosen_at_link_time_and_off_by_default() -> None:
    """Off: the guest links the host functions themselves (the native path's); on: wrappers."""
    plain = Guest(ZIG / "copyheader.wasm")
    assert not plain.traced and plain.host_functions is host.HOST_FUNCTIONS
    if NATIVE_PATH is not None:
        assert "get_header_values" in _native.native_host_functions()
    calls: list[HostCall] = []
    traced = Guest(ZIG / "copyheader.wasm", name="traced", trace=calls.append)
    assert traced.traced and all(traced.host_functions[n] is not f for n, f in host.HOST_FUNCTIONS.items())
    for guest, expected in ((plain, 0), (traced, 3)):
        with GuestClient(guest) as client:
            calls.clear()
            assert client.get("/", headers={"x-id": "7"}).headers["x-id"] == "7"
        assert len(calls) == expected


def test_a_trace_logger_enabled_for_trace_at_load_turns_tracing_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(TRACE, logger="http_wasm_asgi.trace.logged")
    guest = Guest(ZIG / "copyheader.wasm", name="logged")
    assert guest.traced
    with GuestClient(guest) as client:
        result = client.get("/", headers={"x-id": "abc"})
    lines = [r.getMessage() for r in caplog.records if r.name == "http_wasm_asgi.trace.logged"]
    assert any("get_header_values(kind=request, name='x-id'" in line and "['abc']" in line for line in lines)
    assert [c.function for c in result.trace] == ["get_header_values", "set_header_value", "get_status_code"]
    assert result.trace[-1].phase == "response" and result.trace[-1].result == 200


def test_a_host_function_that_traps_is_traced_with_its_error() -> None:
    program = Program().req("set_status_code", 99)
    with GuestClient(program.guest(trace=True)) as c:
        result = c.get("/")
    assert result.status == 500 and result.trapped and result.app is None
    last = result.trace[-1]
    assert last.function == "set_status_code" and dict(last.args) == {"status": 99}
    assert last.error is not None and "invalid status code 99" in last.error
    assert "TRAP: invalid status code 99" in result.report()


# --- the client, in-process and through uvicorn (same API, same answers) ---
@pytest.fixture(params=[False, True], ids=["in-process", "uvicorn"])
def server(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.mark.parametrize("auth", [ZIG / "auth.wasm", GO / "auth" / "auth.wasm"], ids=["zig", "go"])
def test_a_guest_that_answers_itself(server: bool, auth: Path) -> None:
    with GuestClient(auth, config="s3cret", server=server) as client:
        denied = client.get("/private")
        allowed = client.get("/private?x=1", headers={"authorization": "Bearer s3cret"})
    assert denied.status == 401 and denied.headers["www-authenticate"] == "Bearer"
    assert denied.app is None and not denied.trapped
    assert "(app not called)" in repr(denied) and "the app saw: nothing" in denied.report()
    assert allowed.status == 200 and allowed.app is not None
    assert allowed.app.method == "GET" and allowed.app.uri == "/private?x=1"
    assert allowed.app.headers["authorization"] == "Bearer s3cret"
    assert allowed.json()["path"] == "/private"  # the echo app's answer
    assert any(c.function == "get_header_values" and ("name", "authorization") in c.args for c in allowed.trace)


@pytest.mark.parametrize("rewrite", [ZIG / "bodyrewrite.wasm", GO / "bodyrewrite" / "bodyrewrite.wasm"],
                         ids=["zig", "go"])
def test_a_guest_that_buffers_bodies(server: bool, rewrite: Path) -> None:
    app = RecordingApp(body=b"the secret is out", headers={"content-type": "text/plain"})
    with GuestClient(rewrite, config=REWRITE, server=server, app=app) as client:
        result = client.post("/paint", "colour: red")
    assert result.app is not None and result.app.body == b"color: red"
    assert result.app.headers["content-length"] == str(len(b"color: red"))
    assert result.status == 200 and result.body == b"the ****** is out"
    assert result.headers["content-length"] == str(len(result.body))
    features = [c.result for c in result.calls("enable_features")]
    assert "buffer_request" in str(features) and "buffer_response" in str(features[-1])
    assert {(c.phase, c.function) for c in result.trace} >= {("request", "read_body"), ("request", "write_body"),
                                                            ("response", "read_body"), ("response", "write_body")}


@pytest.mark.parametrize("where", ["request", "response"])
def test_a_guest_that_traps(server: bool, where: str) -> None:
    with GuestClient(TRAPS, server=server) as client:
        trapped = client.get("/", headers={"x-trap": where})
        healthy = client.get("/")
    assert trapped.status == 500 and trapped.trapped and trapped.body == b"Internal Server Error"
    assert trapped.traps[0].export == f"handle_{where}" and "unreachable" in trapped.traps[0].message
    assert (trapped.app is None) == (where == "request")  # after next, the app had run
    assert f"trapped: guest 'trap_on_header' trapped in handle_{where}" in trapped.report()
    assert healthy.status == 200 and not healthy.trapped and healthy.app is not None


def test_guest_logs_are_recorded_per_request(server: bool) -> None:
    with GuestClient(ZIG / "accesslog.wasm", server=server) as client:
        first = client.get("/a?b=1")
        second = client.request("DELETE", "/c")
    assert [(log.guest, log.level, log.message) for log in first.logs] == [("accesslog", "INFO", "GET /a?b=1 200")]
    assert [log.message for log in second.logs] == ["DELETE /c 200"]


def test_log_level_is_what_log_enabled_answers() -> None:
    with GuestClient(ZIG / "accesslog.wasm", log_level=logging.WARNING) as client:
        result = client.get("/")
    assert result.logs == [] and result.calls("log_enabled")[0].result is False


def test_response_trailers_in_process() -> None:
    program = Program()
    name, value = program.s("x-checksum"), program.s("abc")
    program.req("enable_features", int(Feature.TRAILERS | Feature.BUFFER_RESPONSE))
    program.resp("set_header_value", int(HeaderKind.RESPONSE_TRAILERS), *name, *value)
    with GuestClient(program.guest(trace=True)) as client:
        result = client.get("/")
    assert result.status == 200 and result.trailers["x-checksum"] == "abc"
    assert "(trailer) x-checksum: abc" in result.report()


async def test_the_async_api_runs_on_the_test_s_loop() -> None:
    with GuestClient(ZIG / "hello.wasm", config="async") as client:
        result = await client.arequest("GET", "/hello")
    assert result.text == "hello, async\n"


@pytest.mark.slow
def test_a_chain_of_guests_made_with_trace_true_is_traced_in_order() -> None:
    zig = Guest(ZIG / "hello.wasm", name="zig", config="zig", trace=True)
    go = Guest(GO / "hello" / "hello.wasm", name="go", config="go", trace=True)
    with GuestClient(zig, go) as client:
        result = client.get("/")
    assert result.headers.get_list("x-hello") == ["go"]  # set by both: the inner guest's value replaces
    assert [c.guest for c in result.trace if c.function == "set_header_value"] == ["zig", "go"]


def test_recent_results_remember_the_last_requests() -> None:
    with GuestClient(ZIG / "hello.wasm") as client:
        client.get("/one")
        client.get("/two")
    assert [r.url for r in recent_results()[-2:]] == ["/one", "/two"]


@pytest.mark.slow
def test_the_report_reads_as_the_whole_exchange() -> None:
    with GuestClient(GO / "headeradder" / "headeradder.wasm",
                     config={"request": {"x-a": ["1"]}, "response": {"x-b": "2"}}) as client:
        result = client.post("/p?q=1", b"hi", headers={"x-in": "yes"})
    report = result.report()
    for line in ("request: POST /p?q=1", "  > x-in: yes", "  > body: 'hi'", "response: 200", "  < x-b: 2",
                 "the app saw: POST /p?q=1", "  | x-a: 1", "  | body: 'hi'", "trapped: no"):
        assert line in report.splitlines(), line
    assert "add_header_value(kind=request, name='x-a', value='1')" in report \
        or "set_header_value(kind=request, name='x-a', value='1')" in report


# --- the pytest plugin ---
def test_the_plugin_is_registered_by_an_entry_point() -> None:
    points = importlib.metadata.entry_points(group="pytest11")
    assert any(p.value == "http_wasm_asgi.devkit.pytest_plugin" for p in points)


def test_the_plugin_is_light_to_import() -> None:
    code = ("import sys, http_wasm_asgi.devkit.pytest_plugin\n"
            "print(sorted(m for m in ('wasmtime', 'httpx', 'uvicorn', 'http_wasm_asgi.guest') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


PLUGIN_TESTS = """
def test_passes(wasm_client):
    result = wasm_client.get("/hello")
    assert result.text == "hello, plugin\\n"

def test_fails(wasm_client):
    result = wasm_client.get("/somewhere")
    assert result.status == 418
"""


@pytest.mark.slow
def test_the_plugin_points_a_session_at_a_guest_and_reports_failures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_guest=PLUGIN_TESTS)
    for server in ([], ["--wasm-server"]):
        run = pytester.runpytest_subprocess("--wasm-guest", str(ZIG / "hello.wasm"), "--wasm-guest-config",
                                            "plugin", *server)
        run.assert_outcomes(passed=1, failed=1)
        out = run.stdout.str()
        assert "http-wasm-asgi: the last request of this test (<Result GET /somewhere -> 200>)" in out
        assert "host calls: 5" in out and "get_method(buf_limit=2048) -> 'GET'" in out
        assert "set_header_value(kind=response, name='x-hello', value='plugin')" in out
        assert "the app saw: GET /somewhere" in out


@pytest.mark.slow
def test_the_plugin_says_what_is_missing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_guest=PLUGIN_TESTS)
    run = pytester.runpytest_subprocess("-k", "passes")
    run.assert_outcomes(errors=1)
    assert "no guest to test: run pytest with --wasm-guest PATH" in run.stdout.str()
    run = pytester.runpytest_subprocess("-k", "passes", "--wasm-guest", "missing.wasm")
    assert "--wasm-guest: file" in run.stdout.str() and "missing.wasm' not found" in run.stdout.str()


@pytest.mark.slow
def test_the_guest_client_fixture_loads_guests_with_config(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_factory=f"""
        import json
        def test_two_clients(guest_client):
            auth = guest_client({str(ZIG / "auth.wasm")!r}, config="t")
            assert auth.get("/").status == 401
            chain = guest_client({str(ZIG / "auth.wasm")!r}, {str(ZIG / "hello.wasm")!r}, config="t", server=True)
            result = chain.get("/", headers={{"authorization": "Bearer t"}})
            assert result.status == 200 and result.app.headers["authorization"] == "Bearer t"
    """)
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_json_configs_reach_the_guest() -> None:
    """Init's host calls are traced when init runs at load (without a snapshot, at each new instance)."""
    config = {"redirects": {"/old": "/new"}}
    with GuestClient(GO / "router" / "router.wasm", config=config, snapshot=False) as client:
        result = client.get("/old?x=1")
    assert result.status == 302 and result.headers["location"] == "/new?x=1"
    got = [c for c in client.init_trace if c.function == "get_config" and c.phase == "init"]
    assert got and json.loads(got[-1].result) == config


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="at least one guest"):
        GuestClient()
    with pytest.raises(Exception, match=r"missing\.wasm"):
        GuestClient("missing.wasm")


# --- README "Testing a guest", run as written ---
README = docs.text()  # README.md and the pages of docs/


def _readme_block(first_line: str, fence: str = "```python\n") -> str:
    start = README.index(fence + first_line) + len(fence)
    return README[start:README.index("```\n", start)]


@pytest.mark.slow
def test_the_readme_example_file_is_included_verbatim_and_passes() -> None:
    example = (ROOT / "examples" / "test_hello_guest.py").read_text()
    assert _readme_block('"""Tests of the hello guest') == example
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "examples/test_hello_guest.py"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 passed" in run.stdout  # 3 tests x (Go, Zig)


@pytest.mark.slow
def test_the_readme_client_example_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    code = _readme_block("from http_wasm_asgi.testing import GuestClient, RecordingApp")
    exec(compile(code, "README.md", "exec"), {})


def test_the_readme_trace_sample_is_what_the_command_prints() -> None:
    sample = _readme_block("$ http-wasm-asgi trace ", fence="```\n")
    command, *expected = sample.splitlines()
    args = ["trace", "guests/zig/accesslog.wasm", "--", "POST", "/orders", "-d", '{"item": 1}']
    assert command == "$ http-wasm-asgi " + " ".join(a if " " not in a else f"'{a}'" for a in args)
    got = subprocess.run([str(Path(sys.executable).parent / "http-wasm-asgi"), *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=120).stdout.splitlines()

    def normal(lines: list[str]) -> list[str]:  # times and where the snapshot came from vary
        return [re.sub(r"^ +[\d.]+ us ", "T us ", re.sub(r"snapshot yes \(\w+\)", "snapshot yes", line))
                for line in lines]

    assert normal(got) == normal(expected)


@pytest.mark.slow
def test_the_failure_report_of_a_trapping_guest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_trap="""
        def test_no_trap(wasm_client):
            result = wasm_client.get("/", headers={"x-trap": "request"})
            assert not result.trapped
    """)
    run = pytester.runpytest_subprocess("--wasm-guest", str(TRAPS))
    run.assert_outcomes(failed=1)
    out = run.stdout.str()
    assert "(<Result GET / -> 500 (trapped)>)" in out
    assert "trapped: guest 'trap_on_header' trapped in handle_request: wasm `unreachable`" in out
    assert "get_header_values(kind=request, name='x-trap', buf_limit=64) -> ['request']" in out


async def test_the_sync_api_inside_an_event_loop_says_what_to_use() -> None:
    with GuestClient(ZIG / "hello.wasm") as client:
        with pytest.raises(RuntimeError, match=r"await client\.arequest"):
            client.get("/hello")
        assert (await client.arequest("GET", "/hello")).status == 200


@pytest.mark.slow
def test_the_wasm_guest_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makeini(f"[pytest]\nwasm_guest = {ZIG / 'hello.wasm'}\n")
    pytester.makepyfile(test_ini="""
        def test_from_ini(wasm_guest, wasm_client):
            assert wasm_guest.name == "hello.wasm"
            assert wasm_client.get("/hello").text == "hello, world\\n"
    """)
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


@pytest.mark.slow
@pytest.mark.servers
def test_serve_with_log_level_trace_traces_every_guest(tmp_path: Path) -> None:
    from support.procs import COMMAND, free_port, serving

    port = free_port()
    config = tmp_path / "chain.yaml"
    config.write_text(f"app: http_wasm_asgi.testing:echo_app\nserver: {{port: {port}}}\nguests:\n"
                      f"  - path: {ZIG / 'copyheader.wasm'}\n")
    with serving([COMMAND, "serve", str(config), "--log-level", "trace"], port) as server:
        assert httpx.get(server.url + "/", headers={"x-id": "42"}, timeout=10).headers["x-id"] == "42"
        line = server.wait_for_output("get_header_values(kind=request, name='x-id'")
    assert "TRACE:     http_wasm_asgi.trace.copyheader:" in line and "-> ['42']" in line
