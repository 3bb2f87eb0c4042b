"""The Rust, AssemblyScript and C guests (guests/rust, guests/assemblyscript, guests/c).

Each language has a small library (httpwasm.rs, httpwasm.ts, httpwasm.h), a conformance guest (run
on every case by test_conformance.py and test_conformance_command.py, like Go's and Zig's) and two
examples: `auth` and `headeradder`, with the same behaviour and configs as the Go and Zig ones, so the
shared tests of `ExampleGuestTests` for them run here unchanged. Also here: what is particular to
these libraries (per-request memory that is reused, not leaked; freestanding modules), tested through
`http_wasm_asgi.testing.GuestClient`, and the build plumbing (pins, Makefile, committed binaries).
"""

from __future__ import annotations

import importlib.util
import json
import re
from types import ModuleType

import pytest
from guest_examples import GUESTS, ROOT, ExampleGuestTests, guest_path, load_guest

from http_wasm_asgi.testing import GuestClient
from support import docs

NEW_LANGUAGES = ("rust", "assemblyscript", "c")
SOURCE_SUFFIX = {"rust": ".rs", "assemblyscript": ".ts", "c": ".c"}
LIBRARY = {"rust": "httpwasm.rs", "assemblyscript": "httpwasm.ts", "c": "httpwasm.h"}


def build_module(lang: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"build_{lang}_lang_new", GUESTS / lang / "build_lang.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _AuthAndHeaderAdder:
    """The tests of ExampleGuestTests for the examples these languages have, plus their own."""

    lang: str
    guest = ExampleGuestTests.guest
    guest_log = ExampleGuestTests.guest_log

    test_auth_rejects_without_the_right_bearer_token = \
        ExampleGuestTests.test_auth_rejects_without_the_right_bearer_token
    test_auth_lets_the_right_token_through = ExampleGuestTests.test_auth_lets_the_right_token_through
    test_auth_with_empty_config_lets_nobody_in = ExampleGuestTests.test_auth_with_empty_config_lets_nobody_in
    test_auth_with_values_bigger_than_the_first_read_buffer = \
        ExampleGuestTests.test_auth_with_values_bigger_than_the_first_read_buffer
    test_headeradder_adds_request_and_response_headers = \
        ExampleGuestTests.test_headeradder_adds_request_and_response_headers
    test_conformance_guest_reports_failures = ExampleGuestTests.test_conformance_guest_reports_failures
    test_conformance_config_matches_the_contract = ExampleGuestTests.test_conformance_config_matches_the_contract

    def test_guests_are_freestanding_and_import_only_the_abi(self) -> None:
        for name in ("conformance", "auth", "headeradder"):
            info = self.guest(name).info
            assert not info.uses_wasi, name
            assert {module for module, _, _ in info.imports} == {"http_handler"}, name

    def test_auth_through_the_guest_client(self) -> None:
        with GuestClient(guest_path(self.lang, "auth"), config="tok") as client:
            denied = client.get("/x", headers={"authorization": "Bearer nope"})
            assert (denied.status, denied.headers["www-authenticate"], denied.app) == (401, "Bearer", None)
            assert not denied.trapped
            allowed = client.get("/x?y=1", headers={"authorization": "Bearer tok"})
            assert allowed.status == 200 and allowed.app is not None
            assert allowed.app.uri == "/x?y=1"
            # The config is read once per instance (Rust, C) or once per request (AssemblyScript: its
            # heap is reset per request); the header once per request, never more.
            assert len(allowed.calls("get_header_values")) == 1
            assert len(allowed.calls("get_config")) <= 1

    def test_headeradder_through_the_guest_client(self) -> None:
        config = "# a comment\nrequest x-a 1\nrequest x-a 2\nresponse x-b  b  c \n"
        with GuestClient(guest_path(self.lang, "headeradder"), config=config) as client:
            result = client.get("/", headers={"x-a": "0"})
            assert result.status == 200 and result.app is not None
            assert result.app.headers.get_list("x-a") == ["0", "1", "2"]
            assert result.headers["x-b"] == "b  c"
            assert [call.function for call in result.trace if call.function.endswith("_header_value")] == \
                ["add_header_value"] * 3

    def test_memory_is_reused_from_request_to_request(self) -> None:
        # The libraries free what a request read at the start of the next one: a big header read on
        # every request must not grow the instance's memory after the first few.
        token = "t" * 100_000
        guest = load_guest(self.lang, "auth", token)
        with GuestClient(guest) as client:
            sizes = []
            for i in range(60):
                result = client.get("/", headers={"authorization": f"Bearer {token}", "x-pad": "p" * (i * 997)})
                assert result.status == 200
                instance = guest.pool.try_acquire()
                assert instance is not None
                sizes.append(instance.memory_size())
                guest.pool.release(instance)
        assert sizes[-1] == sizes[5], sizes
        assert sizes[-1] <= 2 << 20  # ~100 KiB read per request (AssemblyScript: also as UTF-16, heap doubling)


class TestRustGuests(_AuthAndHeaderAdder):
    lang = "rust"


class TestAssemblyScriptGuests(_AuthAndHeaderAdder):
    lang = "assemblyscript"

    def test_non_ascii_text_is_utf8_on_the_wire(self) -> None:
        # AssemblyScript strings are UTF-16: the library encodes and decodes UTF-8 at the boundary.
        with GuestClient(guest_path(self.lang, "headeradder"), config="response x-word café") as client:
            assert (b"x-word", "café".encode()) in client.get("/").headers.raw


class TestCGuests(_AuthAndHeaderAdder):
    lang = "c"


# --- sources, builds, pins ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", NEW_LANGUAGES)
def test_every_guest_source_is_built_and_committed(lang: str) -> None:
    sources = {p.stem for p in (GUESTS / lang).glob(f"*{SOURCE_SUFFIX[lang]}")} - {"httpwasm"}
    assert sources == set(build_module(lang).GUESTS) == {"conformance", "auth", "headeradder"}
    assert (GUESTS / lang / LIBRARY[lang]).is_file()
    for name in sources:
        assert guest_path(lang, name).is_file(), name
    assert {p.stem for p in (GUESTS / lang).glob("*.wasm")} == sources


def test_assemblyscript_is_pinned_exactly_and_locked() -> None:
    folder = GUESTS / "assemblyscript"
    package = json.loads((folder / "package.json").read_text())
    lock = json.loads((folder / "package-lock.json").read_text())
    pinned = package["devDependencies"]["assemblyscript"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "an exact version, not a range"
    assert lock["packages"]["node_modules/assemblyscript"]["version"] == pinned
    assert build_module("assemblyscript").pinned_version() == pinned
    assert "guests/assemblyscript/node_modules/" in (ROOT / ".gitignore").read_text().splitlines()


def test_make_installs_the_toolchains_that_check_guests_needs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    packages = re.search(r"^GUEST_PACKAGES := (.*?)(?<!\\)\n", makefile, re.M | re.S)
    assert packages, "GUEST_PACKAGES is missing from the Makefile"
    pairs = dict(p.split(":")[::-1] for p in packages[1].replace("\\\n", " ").split())
    assert set(pairs) == {"rustc", "libstd-rust-dev-wasm32", "lld"}
    assert pairs["rustc"] == str(build_module("rust").RUSTC), "check the rustc the build uses, not the one on PATH"
    assert re.search(r"^check-guests: .*guest-toolchains", makefile, re.M)
    assert re.search(r"^guest-toolchains: .*system-deps", makefile, re.M)
    assert "npm ci" in makefile


def test_c_and_zig_guests_use_the_same_zig() -> None:
    assert build_module("c").ZIG_VERSION == build_module("zig").ZIG_VERSION


def test_readme_shows_the_auth_guests_and_the_generated_table() -> None:
    readme = docs.text()  # README.md and docs/guests/writing.md
    blocks = dict(re.findall(r"^```(rust|ts|c)\n(.*?)^```$", readme, re.M | re.S))
    assert blocks == {
        "rust": (GUESTS / "rust" / "auth.rs").read_text(),
        "ts": (GUESTS / "assemblyscript" / "auth.ts").read_text(),
        "c": (GUESTS / "c" / "auth.c").read_text(),
    }
    spec = importlib.util.spec_from_file_location("compare_guests", GUESTS / "compare.py")
    assert spec and spec.loader
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    header = compare.table([]).splitlines()[0]
    assert header in readme.splitlines(), "paste the output of `python guests/compare.py` into docs/guests/writing.md"
    rows = [line for line in readme.splitlines() if line.startswith("| ") and line.count("|") == 9]
    assert {row.split(" | ")[0].removeprefix("| ") for row in rows} >= set(compare.LANGUAGES.values())
