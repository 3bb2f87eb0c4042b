"""`http-wasm-asgi conformance GUEST.wasm` and the module behind it (http_wasm_asgi.devkit.conformance).

The command is run as a subprocess (as a user would) on both languages'
conformance guests, on guests that do not implement the contract, and with
bad arguments; the checker is also tested on its own, one expectation at a
time, on responses built by hand.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import wasmtime
from guest_examples import LANGUAGES, ROOT, guest_path

from http_wasm_asgi import GuestError
from http_wasm_asgi.devkit.conformance import Case, check_response, load_suite, run, select

ON_UVICORN = [case for case in load_suite().cases if case.applies()]  # what the command runs: HTTP/1.1, no trailers
N_CASES = len(ON_UVICORN)

# Claims `pass` for every case without checking anything, and never calls the app.
LIAR = """
(module
  (import "http_handler" "set_header_value" (func $set (param i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "x-conformance-result")
  (data (i32.const 32) "pass")
  (func (export "handle_request") (result i64)
    (call $set (i32.const 1) (i32.const 0) (i32.const 20) (i32.const 32) (i32.const 4))
    (i64.const 0))
  (func (export "handle_response") (param i32 i32)))
"""


def command(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "http_wasm_asgi", "conformance", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line]


@pytest.mark.slow
@pytest.mark.parametrize("lang", LANGUAGES)
def test_command_passes_every_case_on_each_languages_guest(lang: str) -> None:
    proc = command(guest_path(lang, "conformance"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = lines(proc.stdout)
    assert out[-1] == f"{N_CASES} of {N_CASES} cases passed"
    assert out[:-1] == [f"pass  {case.id}" for case in ON_UVICORN]


@pytest.mark.slow
def test_command_runs_only_the_chosen_cases() -> None:
    proc = command(guest_path("go", "conformance"), "--case", "req_ctx", "--case", "get_uri/encoded")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines(proc.stdout) == ["pass  req_ctx", "pass  get_uri/encoded", "2 of 2 cases passed"]


def test_command_fails_a_guest_that_does_not_implement_the_contract() -> None:
    proc = command(guest_path("zig", "hello"))
    assert proc.returncode == 1
    out = lines(proc.stdout)
    assert out[-1] == f"0 of {N_CASES} cases passed, {N_CASES} failed"
    assert len(out) == N_CASES + 1
    for line, case in zip(out, ON_UVICORN, strict=False):
        assert line.startswith(f"FAIL  {case.id} ")
        assert "no x-conformance-result response header (status 200)" in line


def test_command_catches_a_guest_that_claims_to_pass(tmp_path: Path) -> None:
    liar = tmp_path / "liar.wasm"
    liar.write_bytes(wasmtime.wat2wasm(LIAR))
    proc = command(liar)
    assert proc.returncode == 1
    report = {line.split()[1]: line for line in lines(proc.stdout)[:-1]}
    assert len(report) == N_CASES
    # What the client can see gives it away: the app never ran, nothing was logged, the status is always 200.
    assert report["set_method"].startswith("FAIL")
    assert "the response is not the echo app's JSON" in report["set_method"]
    assert "the guest did not log 'conformance log 0'" in report["log/levels"]
    assert "status 200, want 401" in report["short_circuit/response"]
    assert "response header x-echo: None, want '1'" in report["set_header_value/response_before_next"]
    assert "body b'', want 'replaced'" in report["write_body/response"]
    # Cases only the guest can check pass on its word.
    assert report["short_circuit/default"] == "pass  short_circuit/default"
    assert report["get_config/bytes"] == "pass  get_config/bytes"
    passed = sum(line.startswith("pass") for line in report.values())
    assert lines(proc.stdout)[-1] == f"{passed} of {N_CASES} cases passed, {N_CASES - passed} failed"


def test_command_errors(tmp_path: Path) -> None:
    proc = command(guest_path("zig", "conformance"), "--case", "no/such")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert "unknown conformance case(s): no/such" in proc.stderr
    proc = command(tmp_path / "missing.wasm")
    assert proc.returncode == 2
    assert "missing.wasm" in proc.stderr
    (tmp_path / "junk.wasm").write_bytes(b"not wasm")
    proc = command(tmp_path / "junk.wasm")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")


# --- the module -----------------------------------------------------------------------------------------


def test_run_returns_a_result_per_case_and_reports_as_it_goes() -> None:
    seen: list[str] = []
    results = run(guest_path("zig", "conformance").read_bytes(), ["get_method/post", "log/levels"],
                  on_result=lambda result: seen.append(result.case_id))
    assert [(r.case_id, r.passed, r.problems) for r in results] == [
        ("get_method/post", True, ()), ("log/levels", True, ())]
    assert seen == ["get_method/post", "log/levels"]


def test_run_raises_for_unknown_cases_and_unusable_guests() -> None:
    with pytest.raises(ValueError, match="unknown conformance case"):
        run(guest_path("zig", "conformance"), ["get_method/get", "nope"])
    with pytest.raises(GuestError):
        run(b"\0asm but not really")
    assert [case.id for case in select(["req_ctx"])] == ["req_ctx"]
    assert select() == tuple(ON_UVICORN)
    assert {case.id for case in load_suite().cases} - {case.id for case in select()} == {
        "get_protocol_version/http2", "enable_features/trailers_supported"}  # tests/test_servers.py runs those
    with pytest.raises(ValueError, match="get_protocol_version/http2 need a server other than uvicorn"):
        select(["get_protocol_version/http2"])


def echo_response(status: int = 200, headers: dict[str, str] | None = None, body: bytes = b"",
                  verdict: str | None = "pass") -> httpx.Response:
    all_headers = dict(headers or {})
    if verdict is not None:
        all_headers["x-conformance-result"] = verdict
    return httpx.Response(status, headers=all_headers, content=body)


def case(**expect: object) -> Case:
    return Case("some/case", {}, "", {"status": 200, **expect})


def test_check_response_sees_each_kind_of_problem() -> None:
    echoed = b'{"method": "PUT", "path": "/p", "headers": [["x-a", "1"], ["x-a", "2"]], "body": ""}'
    ok = echo_response(headers={"x-echo": "1"}, body=echoed)
    assert check_response(case(), ok, []) == []
    assert check_response(case(app={"method": "PUT"}, app_headers={"x-a": ["1", "2"], "x-b": []}), ok, []) == []
    assert check_response(case(), echo_response(verdict=None), []) == [
        "no x-conformance-result response header (status 200)"]
    assert check_response(case(), echo_response(verdict="fail: because"), []) == ["guest: fail: because"]
    assert check_response(case(status=418), ok, []) == ["status 200, want 418"]
    assert check_response(case(headers={"x-echo": "2"}), ok, []) == ["response header x-echo: '1', want '2'"]
    assert check_response(case(no_headers=["x-echo"]), ok, []) == [
        "response header x-echo should be absent, got '1'"]
    assert check_response(case(body="other"), echo_response(body=b"body"), []) == ["body b'body', want 'other'"]
    assert check_response(case(app={"method": "GET"}), ok, []) == ["the app saw method 'PUT', want 'GET'"]
    assert check_response(case(app_headers={"x-a": ["2", "1"]}), ok, []) == [
        "the app saw request header x-a ['1', '2'], want ['2', '1']"]
    assert check_response(case(app={"method": "GET"}), echo_response(body=b"<html>"), []) == [
        "the response is not the echo app's JSON: b'<html>'"]
    assert check_response(case(log=["a"], no_log=["b"]), ok, ["a", "c"]) == []
    assert check_response(case(log=["a"], no_log=["b"]), ok, ["b"]) == [
        "the guest did not log 'a'", "the guest logged 'b', which the logger level filters out"]


def test_the_cases_ship_with_the_package() -> None:
    # Read through importlib.resources (works from a wheel), and declared as package data.
    assert load_suite().config == b'{"name":"conformance","answer":42}'
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "devkit/conformance_cases.json" in pyproject["tool"]["setuptools"]["package-data"]["http_wasm_asgi"]
    assert not (ROOT / "guests" / "conformance").exists()
