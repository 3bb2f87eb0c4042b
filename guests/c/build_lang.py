"""Build the C guests: each `<name>.c` here becomes `<name>.wasm` next to it (httpwasm.h is the library).

Driven by guests/build.py (`python guests/build.py c`). The compiler is Zig's clang, `zig cc`, from
the `ziglang` package on PyPI (`pip install .[guests]`, the same pinned version as the Zig guests),
run as `python -m ziglang cc`: freestanding wasm32, no libc (`-nostdlib`), no entry point.

Reproducibility: fixed flags, symbols stripped (`-s`, so no debug info with paths), the source given
by its name with this folder as the working directory, a fresh empty Zig cache per build, and none of
the caller's ZIG_* / CFLAGS-like variables.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

ZIG_VERSION = "0.17.1"  # the ziglang the Zig guests use (guests/zig/build_lang.py)

GUESTS = ["conformance", "auth", "headeradder"]

FLAGS = [
    "--target=wasm32-freestanding",
    "-std=c11",
    "-Os",
    "-nostdlib",
    "-Wall", "-Wextra", "-Werror",
    "-Wl,--no-entry",
    "-Wl,-z,stack-size=65536",  # 64 KiB of stack: these guests keep little on it
    "-s",
]


class CMissing(RuntimeError):
    pass


def _check_zig() -> None:
    if importlib.util.find_spec("ziglang") is None:
        raise CMissing(f"`zig cc` is missing: install the project's guest toolchains with `pip install .[guests]` "
                       f"(it provides ziglang=={ZIG_VERSION})")
    version = subprocess.run([sys.executable, "-m", "ziglang", "version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if version != ZIG_VERSION:
        raise CMissing(f"ziglang {version} is installed but the C guests are built with {ZIG_VERSION}")


def _env(cache: Path) -> dict[str, str]:
    drop = ("ZIG_", "CFLAGS", "CPPFLAGS", "LDFLAGS", "C_INCLUDE_PATH", "CPATH", "LIBRARY_PATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(ZIG_LOCAL_CACHE_DIR=str(cache / "local"), ZIG_GLOBAL_CACHE_DIR=str(cache / "global"))
    return env


def _build_one(name: str, cache: Path) -> Path:
    source = HERE / f"{name}.c"
    if not source.exists():
        raise FileNotFoundError(f"{source} is listed in build_lang.py but does not exist")
    out = HERE / f"{name}.wasm"
    built = cache / f"{name}.wasm"
    cmd = [sys.executable, "-m", "ziglang", "cc", *FLAGS, "-o", str(built), source.name]
    proc = subprocess.run(cmd, cwd=HERE, env=_env(cache), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"zig cc build of {source.name} failed:\n{proc.stderr.strip()}")
    shutil.copyfile(built, out)
    return out


def build() -> list[Path]:
    """Build every C guest; returns the written `.wasm` paths (guests/build.py compares them)."""
    _check_zig()
    with tempfile.TemporaryDirectory(prefix="c-guests-") as tmp:
        return [_build_one(name, Path(tmp)) for name in GUESTS]


if __name__ == "__main__":
    for path in build():
        print(path.name, path.stat().st_size)
