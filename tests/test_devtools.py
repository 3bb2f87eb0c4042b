"""`http-wasm-asgi trace` and `http-wasm-asgi bench`, run as real subprocesses, and the request
syntax they share."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from http_wasm_asgi.devkit.devtools import RequestSpec, parse_request
from support import ROOT
from support.procs import COMMAND, run

ZIG = ROOT / "guests" / "zig"
GO = ROOT / "guests" / "go"
TRAPS = ROOT / "guests" / "wat" / "hostile" / "trap_on_header.wat"


def test_the_request_syntax() -> None:
    assert parse_request([]) == RequestSpec("GET", "/", [], b"")
    got = parse_request(["post", "http://example.com:8080/a%20b?x=1", "-H", "X-A: 1 2", "-d", "body"])
    assert got == RequestSpec("POST", "/a%20b?x=1", [("host", "example.com:8080"), ("x-a", "1 2")], b"body")


def test_a_body_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "body.json").write_bytes(b'{"a": 1}')
    assert parse_request(["PUT", "/", "-d", f"@{tmp_path / 'body.json'}"]).body == b'{"a": 1}'


@pytest.mark.parametrize(("words", "message"), [
    (["GET", "nopath"], "URL must be a path"),
    (["GET", "/", "-H", "novalue"], "-H takes 'name: value'"),
    (["GET", "/", "-d", "@/no/such/file"], "cannot read the file"),
    (["GET", "/", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_requests_are_named(words: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_request(words)


@pytest.mark.slow
def test_trace_prints_the_calls_the_logs_what_the_app_saw_and_the_response() -> None:
    result = run([COMMAND, "trace", str(GO / "headeradder" / "headeradder.wasm"), "--config",
                  json.dumps({"request": {"x-added": ["yes"]}, "response": {"x-out": "1"}}),
                  "--", "POST", "/submit?id=7", "-H", "x-in: a", "-d", "hello"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("guest 'headeradder': ")
    for line in ("request: POST /submit?id=7", "  > x-in: a", "  > body: 'hello'", "response: 200",
                 "  < x-out: 1", "the app saw: POST /submit?id=7", "  | x-added: yes", "  | body: 'hello'",
                 "trapped: no", "guest logs: none"):
        assert line in out.splitlines(), (line, out)
    calls = [line for line in out.splitlines() if re.match(r"^\s+[\d.]+ us  headeradder ", line)]
    assert any("name='x-added', value='yes')" in line and "kind=request" in line for line in calls), out
    assert any("name='x-out', value='1')" in line for line in calls), out
    assert re.search(r"^host calls: (\d+)$", out, re.M)


def test_trace_of_a_guest_that_answers_itself_and_logs() -> None:
    result = run([COMMAND, "trace", str(ZIG / "accesslog.wasm"), "--", "DELETE", "/item/3"])
    assert result.returncode == 0, result.stderr
    assert "guest logs: 1\n  INFO    accesslog: DELETE /item/3 200" in result.stdout
    hello = run([COMMAND, "trace", str(ZIG / "hello.wasm"), "--config", "CLI", "--", "GET", "/hello"])
    assert "the app saw: nothing (not called)" in hello.stdout and "  < body: 'hello, CLI\\n'" in hello.stdout
    assert "write_body(kind=response, bytes=11)" in hello.stdout


def test_trace_of_a_guest_that_traps_exits_1() -> None:
    result = run([COMMAND, "trace", str(TRAPS), "--", "GET", "/", "-H", "x-trap: request"])
    assert result.returncode == 1
    assert "response: 500" in result.stdout
    assert "trapped: guest 'trap_on_header' trapped in handle_request: wasm `unreachable`" in result.stdout
    assert "get_header_values(kind=request, name='x-trap', buf_limit=64) -> ['request']" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_trace_and_bench_refuse_bad_input_cleanly() -> None:
    for args in (["trace", "missing.wasm"], ["bench", "missing.wasm"], ["trace", str(ZIG / "hello.wasm"), "--",
                                                                         "GET", "nopath"]):
        result = run([COMMAND, *args])
        assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "missing.wasm" in run([COMMAND, "bench", "missing.wasm"]).stderr


def test_bench_prints_the_added_cost_and_memory_per_instance() -> None:
    result = run([COMMAND, "bench", str(ZIG / "copyheader.wasm"), "--requests", "600", "--rounds", "3",
                  "--", "GET", "/", "-H", "x-id: 1"], timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    app = float(re.search(r"the app alone: +([\d.]+) us/request \(median\)", out)[1])  # type: ignore[index]
    chain = float(re.search(r"with the guest: +([\d.]+) us/request \(median\)", out)[1])  # type: ignore[index]
    added = float(re.search(r"the guest adds: +(-?[\d.]+) us/request", out)[1])  # type: ignore[index]
    assert 0 < app < chain and added > 0 and "median of 600 requests per variant" in out
    memory = re.search(r"memory per instance: ([\d.]+) MiB of linear memory \(the snapshot image, ([\d.]+) MiB, "
                       r"shared copy-on-write\)\n +([\d.]+) MiB of RSS \(growth over (\d+) more instances", out)
    assert memory is not None, out
    assert float(memory[1]) >= float(memory[2]) > 0 and int(memory[4]) >= 16


def test_bench_of_a_request_that_traps_says_so() -> None:
    result = run([COMMAND, "bench", str(TRAPS), "--", "GET", "/", "-H", "x-trap: request"])
    assert result.returncode == 1 and "the request traps, nothing to measure" in result.stderr


def test_help_shows_the_request_syntax() -> None:
    for command in ("trace", "bench"):
        out = run([COMMAND, command, "--help"]).stdout
        assert f"usage: http-wasm-asgi {command} GUEST [--config TEXT]" in out
        assert "METHOD URL [-H 'name: value']... [-d BODY | -d @FILE]" in " ".join(out.split())


REWRITE = json.dumps({"request": [{"from": "colour", "to": "color"}], "response": [{"from": "POST", "to": "post"}]})


def test_trace_of_a_guest_that_buffers_bodies() -> None:
    result = run([COMMAND, "trace", str(ZIG / "bodyrewrite.wasm"), "--config", REWRITE, "--", "POST", "/paint",
                  "-d", "colour: red"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "  | body: 'color: red'" in out  # the app saw the rewritten request body
    assert '"method": "post"' in out  # and the client the rewritten response
    assert "request  read_body(kind=request, buf_limit=" in out and "-> 11 bytes, eof" in out
    assert "request  write_body(kind=request, bytes=10)" in out
    assert "response read_body(kind=response" in out and "response write_body(kind=response, bytes=" in out
    assert "enable_features(features=buffer_request)" in out


@pytest.mark.slow
def test_bench_of_a_guest_that_buffers_bodies_and_of_one_that_answers_itself() -> None:
    result = run([COMMAND, "bench", str(GO / "bodyrewrite" / "bodyrewrite.wasm"), "--config", REWRITE, "--requests",
                  "300", "--rounds", "3", "--", "POST", "/", "-d", "colour " * 100], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "response: 200" in result.stdout and "MiB of RSS (growth over" in result.stdout
    assert float(re.search(r"the guest adds: +(-?[\d.]+) us", result.stdout)[1]) > 0  # type: ignore[index]
    hello = run([COMMAND, "bench", str(ZIG / "hello.wasm"), "--requests", "300", "--rounds", "3", "--", "GET",
                 "/hello"], timeout=120)
    assert hello.returncode == 0, hello.stderr
    assert "RSS n/a (the guest answered the request itself: no instance was held)" in hello.stdout
