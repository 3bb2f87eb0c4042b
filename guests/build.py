"""Build every guest in this folder from its source, reproducibly.

Usage: python guests/build.py [--check] [LANG ...]

Each language folder (guests/go, guests/zig, ...) has a `build_lang.py` with a
`build() -> list[pathlib.Path]` function that writes each `.wasm`
next to its source. This script installs nothing: Go, Zig and C (`zig cc`) come
from the project's `guests` extra (`pip install .[guests]`), Rust (Debian's
rustc) and AssemblyScript (npm, pinned in guests/assemblyscript) from
`make guest-toolchains`. With --check it rebuilds and fails if any committed
`.wasm` differs from what its source builds to.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _languages() -> list[str]:
    return sorted(p.parent.name for p in HERE.glob("*/build_lang.py"))


def _load(lang: str):  # type: ignore[no-untyped-def]
    path = HERE / lang / "build_lang.py"
    spec = importlib.util.spec_from_file_location(f"build_{lang}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if a committed .wasm differs from its build")
    parser.add_argument("langs", nargs="*", help=f"languages to build (default: all of {_languages()})")
    args = parser.parse_args(argv)
    langs = args.langs or _languages()
    before = {p: _digest(p) for lang in langs for p in (HERE / lang).rglob("*.wasm")}
    built: list[Path] = []
    for lang in langs:
        print(f"== building {lang} guests", flush=True)
        built += _load(lang).build()
    for path in built:
        print(f"   {path.relative_to(HERE.parent)}  {path.stat().st_size} bytes")
    if args.check:
        changed = [p for p in built if before.get(p) != _digest(p)]
        if changed:
            for p in changed:
                print(f"MISMATCH: {p.relative_to(HERE.parent)} differs from the committed binary", file=sys.stderr)
            return 1
        print(f"check: {len(built)} guest binaries match their sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
