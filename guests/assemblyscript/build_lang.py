"""Build the AssemblyScript guests: each `<name>.ts` here (but the library, httpwasm.ts) becomes `<name>.wasm`.

Driven by guests/build.py (`python guests/build.py assemblyscript`). The compiler is the npm package
`assemblyscript`, pinned exactly in package.json and package-lock.json next to this file and
installed into ./node_modules by `make guest-toolchains` (`npm ci`), run with Debian's `node`.

Flags: `-O3`, the stub runtime (a bump allocator without GC, whose heap httpwasm.ts resets per
request) and `--use abort=` (no `env.abort` import: an abort traps). Reproducibility: fixed flags,
sources given by name with this folder as the working directory, no source map, and the compiler
version checked against the pin; asc writes no timestamps or paths into the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ASC = HERE / "node_modules" / "assemblyscript" / "bin" / "asc.js"

GUESTS = ["conformance", "auth", "headeradder"]

FLAGS = ["-O3", "--runtime", "stub", "--use", "abort="]


class AssemblyScriptMissing(RuntimeError):
    pass


def pinned_version() -> str:
    return str(json.loads((HERE / "package.json").read_text())["devDependencies"]["assemblyscript"])


def _check_asc() -> None:
    hint = "run `make guest-toolchains` (npm ci in guests/assemblyscript; Debian's nodejs and npm)"
    if shutil.which("node") is None:
        raise AssemblyScriptMissing(f"node is missing: {hint}")
    installed = HERE / "node_modules" / "assemblyscript" / "package.json"
    if not ASC.is_file() or not installed.is_file():
        raise AssemblyScriptMissing(f"the AssemblyScript compiler is not installed: {hint}")
    version = json.loads(installed.read_text())["version"]
    if version != pinned_version():
        raise AssemblyScriptMissing(f"assemblyscript {version} is installed but the guests are built with "
                                    f"{pinned_version()}: {hint}")


def _build_one(name: str, tmp: Path) -> Path:
    source = HERE / f"{name}.ts"
    if not source.exists():
        raise FileNotFoundError(f"{source} is listed in build_lang.py but does not exist")
    out = HERE / f"{name}.wasm"
    built = tmp / f"{name}.wasm"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE_", "ASC_"))}
    cmd = ["node", str(ASC), source.name, "-o", str(built), *FLAGS]
    proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"asc build of {source.name} failed:\n{(proc.stderr or proc.stdout).strip()}")
    shutil.copyfile(built, out)
    return out


def build() -> list[Path]:
    """Build every AssemblyScript guest; returns the written `.wasm` paths (guests/build.py compares them)."""
    _check_asc()
    with tempfile.TemporaryDirectory(prefix="as-guests-") as tmp:
        return [_build_one(name, Path(tmp)) for name in GUESTS]


if __name__ == "__main__":
    for path in build():
        print(path.name, path.stat().st_size)
