"""End-to-end tests of the Zig example guests (guests/zig) through a real uvicorn server.

The behaviour every language shares is tested by `ExampleGuestTests`
(guest_examples.py); here it runs on the Zig guests, plus what only the Zig
guests do.
"""

from __future__ import annotations

import logging

import pytest
from guest_examples import ExampleGuestTests, messages, serve_guests


class TestZigExamples(ExampleGuestTests):
    lang = "zig"

    def test_wasi_reactor_initializes_once_per_instance_and_adds_a_header(
            self, guest_log: pytest.LogCaptureFixture) -> None:
        guest = self.guest("wasi_hello")
        assert guest.info.uses_wasi
        with serve_guests(guest) as client:
            for _ in range(3):
                r = client.get("/")
                assert r.status_code == 200
                assert r.headers["x-wasi"] == "yes"
                assert r.headers["x-echo"] == "1"
        printed = [m for m in messages(guest_log, "wasi_hello") if m[1] == "wasi_hello: initialized"]
        assert printed and all(level == logging.INFO for level, _ in printed)

    def test_freestanding_guests_import_nothing_but_the_abi(self) -> None:
        for name in ("conformance", "auth", "router", "redact", "accesslog", "headeradder", "bodyrewrite", "hello"):
            info = self.guest(name).info
            assert not info.uses_wasi, name
            assert {module for module, _, _ in info.imports} == {"http_handler"}, name

    def test_bodyrewrite_with_a_bad_config_fails_every_request_and_says_why(
            self, guest_log: pytest.LogCaptureFixture) -> None:
        # A freestanding Zig guest has no init hook: the config is parsed on the first request.
        for config in ('{"request": [{"from": "", "to": "x"}]}', '{"request": "colour"}', "{not json",
                       '{"requests": []}'):
            guest_log.clear()
            with serve_guests(self.guest("bodyrewrite", config)) as client:
                assert client.post("/", content=b"colour").status_code == 500
                assert client.get("/").status_code == 500
            errors = [m for level, m in messages(guest_log, "bodyrewrite") if level == logging.ERROR]
            assert errors and errors[0].startswith("bodyrewrite: bad JSON config"), (config, errors)
