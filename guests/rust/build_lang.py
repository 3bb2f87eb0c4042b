"""Build the Rust guests: each `<name>.rs` here (but the library, httpwasm.rs) becomes `<name>.wasm`.

Driven by guests/build.py (`python guests/build.py rust`). The compiler is Debian's `rustc` with its
wasm32 standard library and linker (`apt-get install rustc libstd-rust-dev-wasm32 lld`, which
`make system-deps` does), run as /usr/bin/rustc: a `rustc` earlier on PATH (rustup's) may be another
version, or lack the wasm32 target. crates.io is not used: the guests are `#![no_std]`, no crates.

Reproducibility: fixed flags (one codegen unit, LTO, symbols stripped, no debug info), the source
given by its name with this folder as the working directory and `--remap-path-prefix` for it, and
an output in a fresh temporary directory, so nothing of the machine or the checkout's location
reaches the bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUSTC = Path("/usr/bin/rustc")
RUST_VERSION = "1.63.0"  # Debian bookworm's rustc: the bytes depend on it

GUESTS = ["conformance", "auth", "headeradder"]

FLAGS = [
    "--edition", "2021",
    "--target", "wasm32-unknown-unknown",
    "--crate-type", "cdylib",
    "-C", "opt-level=s",
    "-C", "panic=abort",
    "-C", "lto",
    "-C", "codegen-units=1",
    "-C", "debuginfo=0",
    "-C", "strip=symbols",
    "-C", "link-arg=-zstack-size=65536",  # 64 KiB of stack instead of 1 MiB: the guests keep little on it
]


class RustMissing(RuntimeError):
    pass


def _check_rustc() -> None:
    hint = ("install Debian's Rust with its wasm32 target: `apt-get install rustc libstd-rust-dev-wasm32 lld` "
            "(`make system-deps` does it)")
    if not RUSTC.is_file():
        raise RustMissing(f"{RUSTC} is missing: {hint}")
    version = subprocess.run([str(RUSTC), "--version"], capture_output=True, text=True, check=True).stdout.split()
    if version[1] != RUST_VERSION:
        raise RustMissing(f"{RUSTC} is {version[1]} but the guests are built with {RUST_VERSION}")
    sysroot = subprocess.run([str(RUSTC), "--print", "sysroot"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if not (Path(sysroot) / "lib" / "rustlib" / "wasm32-unknown-unknown" / "lib").is_dir():
        raise RustMissing(f"{RUSTC} has no wasm32-unknown-unknown standard library: {hint}")


def _env(tmp: Path) -> dict[str, str]:
    """No RUSTFLAGS, RUSTC_* or CARGO_* of the caller's: a minimal environment from scratch."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "TMPDIR": str(tmp), "LC_ALL": "C"}


def _build_one(name: str, tmp: Path) -> Path:
    source = HERE / f"{name}.rs"
    if not source.exists():
        raise FileNotFoundError(f"{source} is listed in build_lang.py but does not exist")
    out = HERE / f"{name}.wasm"
    built = tmp / f"{name}.wasm"
    cmd = [str(RUSTC), *FLAGS, f"--remap-path-prefix={HERE}=guests/rust", "-o", str(built), source.name]
    proc = subprocess.run(cmd, cwd=HERE, env=_env(tmp), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"rustc build of {source.name} failed:\n{proc.stderr.strip()}")
    shutil.copyfile(built, out)
    os.chmod(out, 0o644)
    return out


def build() -> list[Path]:
    """Build every Rust guest; returns the written `.wasm` paths (guests/build.py compares them)."""
    _check_rustc()
    with tempfile.TemporaryDirectory(prefix="rust-guests-") as tmp:
        return [_build_one(name, Path(tmp)) for name in GUESTS]


if __name__ == "__main__":
    for path in build():
        print(path.name, path.stat().st_size)
