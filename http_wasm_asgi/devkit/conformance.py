"""Run the http-wasm conformance cases against a conformance guest.

A conformance guest (guests/zig/conformance.zig, guests/go/conformance/ in
the source tree) implements the contract of `conformance_cases.json`: for a
request with header `x-httpwasm-test-id: <case id>` it runs that case's checks
against this host from inside the guest and answers with the response header
`x-conformance-result: pass` (or `fail: <reason>`). This module serves the
guest in front of `testing.echo_app` on a real uvicorn server (127.0.0.1, an
ephemeral port), sends every case with httpx, and checks the verdict plus what
the client and the app saw (`expect`).

    from http_wasm_asgi.devkit.conformance import run
    for result in run("guests/go/conformance/conformance.wasm"):
        print(result.case_id, "pass" if result.passed else result.problems)

The command line: `http-wasm-asgi conformance GUEST.wasm [--case ID ...]`.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, cast

import httpx

from ..asgi.middleware import HttpWasmMiddleware
from ..asgi.types import ASGIApp
from ..guest import Guest, GuestSource
from .testing import echo_app, serve

CASE_HEADER = "x-httpwasm-test-id"
RESULT_HEADER = "x-conformance-result"
_EXPECTATIONS = frozenset({"status", "headers", "no_headers", "body", "app", "app_headers", "log", "no_log"})
_CONDITIONS = frozenset({"http_version", "trailers"})
_LOGGER = "http_wasm_asgi.conformance.guest"


@dataclass(frozen=True)
class Case:
    """One conformance case: what to send, what the guest checks, what the client expects."""

    id: str
    request: Mapping[str, Any]
    check: str
    expect: Mapping[str, Any]
    when: Mapping[str, Any] = field(default_factory=dict)  # the servers it runs on, e.g. {"http_version": "2"}

    def applies(self, http_version: str = "1.1", trailers: bool = False) -> bool:
        """Whether the case runs on a server speaking `http_version` (the scope's) that does (not) offer
        response trailers. The defaults are uvicorn's, which the `conformance` command serves on."""
        when = self.when
        version_ok = when.get("http_version", http_version) == http_version
        return bool(version_ok and when.get("trailers", trailers) == trailers)


@dataclass(frozen=True)
class Suite:
    about: str
    config: bytes  # what every conformance guest is given as its config
    cases: tuple[Case, ...]


@dataclass(frozen=True)
class CaseResult:
    case: Case
    problems: tuple[str, ...]  # empty when the case passed

    @property
    def case_id(self) -> str:
        return self.case.id

    @property
    def passed(self) -> bool:
        return not self.problems


@cache
def load_suite() -> Suite:
    """The cases shipped with the package (`http_wasm_asgi/conformance_cases.json`)."""
    text = resources.files(__package__).joinpath("conformance_cases.json").read_text(encoding="utf-8")
    data = json.loads(text)
    cases = tuple(Case(c["id"], c.get("request", {}), c["check"], c["expect"], c.get("when", {}))
                  for c in data["cases"])
    for case in cases:
        unknown = set(case.expect) - _EXPECTATIONS
        if unknown:
            raise ValueError(f"conformance case {case.id!r} has unknown expectations {sorted(unknown)}")
        unknown = set(case.when) - _CONDITIONS
        if unknown:
            raise ValueError(f"conformance case {case.id!r} has unknown conditions {sorted(unknown)}")
    return Suite(data["about"], data["config"].encode("utf-8"), cases)


def select(case_ids: Sequence[str] | None = None) -> tuple[Case, ...]:
    """The cases with these ids (in the given order), or all that run on uvicorn (HTTP/1.1, no trailers);
    ValueError names unknown ids and cases for another server."""
    cases = load_suite().cases
    if not case_ids:
        return tuple(case for case in cases if case.applies())
    by_id = {case.id: case for case in cases}
    unknown = [i for i in case_ids if i not in by_id]
    if unknown:
        raise ValueError(f"unknown conformance case(s): {', '.join(unknown)}")
    elsewhere = [i for i in case_ids if not by_id[i].applies()]
    if elsewhere:
        raise ValueError(f"conformance case(s) {', '.join(elsewhere)} need a server other than uvicorn over HTTP/1.1 "
                         f"(see their 'when' in conformance_cases.json)")
    return tuple(by_id[i] for i in case_ids)


def send(client: httpx.Client, case: Case) -> httpx.Response:
    """Send the request of `case` (with its id header) and return the response."""
    request = case.request
    headers = [(str(name), str(value)) for name, value in request.get("headers", [])]
    headers.append((CASE_HEADER, case.id))
    body = request.get("body")
    return client.request(request.get("method", "GET"), request.get("path", "/"), headers=headers,
                          content=body.encode("utf-8") if body is not None else None)


def check_response(case: Case, response: httpx.Response, logged: Sequence[str]) -> list[str]:
    """Everything wrong with `response` (and the guest's log lines `logged`) for `case`; empty when it passed."""
    problems: list[str] = []
    verdict = response.headers.get(RESULT_HEADER)
    if verdict is None:
        problems.append(f"no {RESULT_HEADER} response header (status {response.status_code})")
    elif verdict != "pass":
        problems.append(f"guest: {verdict}")
    expect = case.expect
    if "status" in expect and response.status_code != expect["status"]:
        problems.append(f"status {response.status_code}, want {expect['status']}")
    for name, value in expect.get("headers", {}).items():
        got = response.headers.get(name)
        if got != value:
            problems.append(f"response header {name}: {got!r}, want {value!r}")
    for name in expect.get("no_headers", []):
        if name in response.headers:
            problems.append(f"response header {name} should be absent, got {response.headers[name]!r}")
    if "body" in expect and response.content != expect["body"].encode("utf-8"):
        problems.append(f"body {_short(response.content)}, want {expect['body']!r}")
    if "app" in expect or "app_headers" in expect:
        problems += _check_app(expect, response)
    for message in expect.get("log", []):
        if message not in logged:
            problems.append(f"the guest did not log {message!r}")
    for message in expect.get("no_log", []):
        if message in logged:
            problems.append(f"the guest logged {message!r}, which the logger level filters out")
    return problems


def _check_app(expect: Mapping[str, Any], response: httpx.Response) -> list[str]:
    """Checks on what the app saw: the echo app's JSON."""
    try:
        seen = response.json()
        seen_headers = seen["headers"]
    except (ValueError, KeyError, TypeError):
        return [f"the response is not the echo app's JSON: {_short(response.content)}"]
    problems = []
    for key, value in expect.get("app", {}).items():
        if seen.get(key) != value:
            problems.append(f"the app saw {key} {seen.get(key)!r}, want {value!r}")
    for name, values in expect.get("app_headers", {}).items():
        got = [v for k, v in seen_headers if k == name]
        if got != values:
            problems.append(f"the app saw request header {name} {got!r}, want {values!r}")
    return problems


def _short(body: bytes) -> str:
    return repr(body[:80] + (b"..." if len(body) > 80 else b""))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_runs = itertools.count(1)


@contextmanager
def _guest_logger() -> Iterator[tuple[logging.Logger, _Collect]]:
    """A logger of its own (runs in other threads do not mix) at INFO, the level the cases expect,
    whose records are collected, not printed."""
    logger = logging.getLogger(f"{_LOGGER}.run{next(_runs)}")
    collect = _Collect()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(collect)
    try:
        yield logger, collect
    finally:
        logger.removeHandler(collect)


def run(guest: GuestSource, case_ids: Sequence[str] | None = None, *, timeout: float = 10.0,
        on_result: Callable[[CaseResult], None] | None = None, **options: Any) -> list[CaseResult]:
    """Run the cases (all, or `case_ids`) against the conformance guest `guest` (a path or the module's bytes).

    `on_result` is called with each result as soon as it is known; `options` go to `Guest` (e.g.
    snapshot=False). Raises GuestError when the guest does not load, ValueError for an unknown case id.
    """
    cases = select(case_ids)
    with _guest_logger() as (logger, collect):
        loaded = Guest(guest, name="conformance", config=load_suite().config, logger=logger, **options)
        app = HttpWasmMiddleware(cast(ASGIApp, echo_app), guests=[loaded])
        results = []
        with serve(app) as url, httpx.Client(base_url=url, timeout=timeout, follow_redirects=False) as client:
            for case in cases:
                collect.messages.clear()
                try:
                    response = send(client, case)
                    result = CaseResult(case, tuple(check_response(case, response, list(collect.messages))))
                except httpx.HTTPError as exc:
                    result = CaseResult(case, (f"request failed: {exc!r}",))
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results
