"""Build the Zig guests: each `<name>.zig` here becomes `<name>.wasm` next to it.

Driven by guests/build.py (`python guests/build.py zig`). The compiler is the
`ziglang` package from PyPI (`pip install .[guests]`), run as
`python -m ziglang`. Flags are fixed and every build uses a fresh, empty cache
directory, so the same source and compiler version give the same bytes.
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

ZIG_VERSION = "0.17.1"

# Plain http-wasm guests: no WASI, only the two handlers and memory exported.
FREESTANDING = [
    "conformance", "auth", "router", "redact", "accesslog", "headeradder", "bodyrewrite", "hello", "trailers",
    "copyheader",  # bench/run.py's filter: the same as guests/wat/copy_header.wat
]
# WASI reactors: `_initialize` runs once per instance (the host calls it), then the handlers.
WASI_REACTORS = ["wasi_hello"]

COMMON_FLAGS = [
    "-O", "ReleaseSmall",
    "-fstrip",
    "-fsingle-threaded",
    "--stack", "65536",  # 64 KiB stack: these guests keep big data in static buffers or the heap
    "--export=handle_request",
    "--export=handle_response",
]
TARGET_FLAGS = {
    "freestanding": ["-target", "wasm32-freestanding", "-fno-entry"],
    "wasi": ["-target", "wasm32-wasi", "-mexec-model=reactor"],
}


class ZigMissing(RuntimeError):
    pass


def _check_zig() -> None:
    if importlib.util.find_spec("ziglang") is None:
        raise ZigMissing(
            f"the Zig compiler is missing: install the project's guest toolchains with `pip install .[guests]` "
            f"(it provides ziglang=={ZIG_VERSION})")
    version = subprocess.run([sys.executable, "-m", "ziglang", "version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if version != ZIG_VERSION:
        raise ZigMissing(f"ziglang {version} is installed but the guests are built with {ZIG_VERSION}: "
                         f"`pip install .[guests]` installs the pinned version")


def _env() -> dict[str, str]:
    """The caller's environment without ZIG_* overrides (lib dir, caches) that could change the output."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ZIG_")}


def _build_one(name: str, target: str, cache: Path) -> Path:
    source = HERE / f"{name}.zig"
    if not source.exists():
        raise FileNotFoundError(f"{source} is listed in build_lang.py but does not exist")
    out = HERE / f"{name}.wasm"
    tmp = cache / f"{name}.wasm"
    cmd = [sys.executable, "-m", "ziglang", "build-exe", source.name, *TARGET_FLAGS[target], *COMMON_FLAGS,
           "--cache-dir", str(cache / "local"), "--global-cache-dir", str(cache / "global"),
           f"-femit-bin={tmp}"]
    proc = subprocess.run(cmd, cwd=HERE, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"zig build of {source.name} failed:\n{proc.stderr.strip()}")
    shutil.copyfile(tmp, out)
    return out


def build() -> list[Path]:
    """Build every Zig guest; returns the written `.wasm` paths (guests/build.py compares them)."""
    _check_zig()
    built: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="zig-guests-") as tmp:
        cache = Path(tmp)
        for name in FREESTANDING:
            built.append(_build_one(name, "freestanding", cache))
        for name in WASI_REACTORS:
            built.append(_build_one(name, "wasi", cache))
    return built


if __name__ == "__main__":
    for path in build():
        print(path.name, path.stat().st_size)
