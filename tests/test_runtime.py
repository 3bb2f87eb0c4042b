"""The wasm call path: the binding it expects, both implementations, the compile cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, WAT

from http_wasm_asgi import Guest, runtime


def test_binding_is_what_the_fast_path_expects() -> None:
    runtime.check_binding()  # raises on another wasmtime major or an ABI change of wasmtime_val_raw
    assert runtime.wasmtime_version().startswith(f"{runtime.WASMTIME_MAJOR}.")
    assert runtime.FAST_PATH, "the C accelerator (http_wasm_asgi/_fastpath.c) was not built: is a C compiler there?"


def test_ctypes_fallback_path_passes_the_abi_tests() -> None:
    env = dict(os.environ, HTTP_WASM_ASGI_NO_FASTPATH="1")
    code = "from http_wasm_asgi import runtime; assert not runtime.FAST_PATH"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_abi.py", "tests/test_middleware.py", "-k", "not uvicorn"],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout


def test_compile_cache_on_disk(tmp_path: Path) -> None:
    wasm = (WAT / "copy_header.wat").read_bytes()
    runtime._module_cache.clear()  # as in a fresh process
    cold = Guest(wasm, name="cached", cache_dir=tmp_path)
    assert cold.info.compiled_from == "compiled"
    assert len(list(tmp_path.glob("*.cwasm"))) == 1
    runtime._module_cache.clear()  # a new process would start here
    warm = Guest(wasm, name="cached", cache_dir=tmp_path)
    assert warm.info.compiled_from == "disk"
    (next(tmp_path.glob("*.cwasm"))).write_bytes(b"corrupt")
    runtime._module_cache.clear()
    again = Guest(wasm, name="cached", cache_dir=tmp_path)  # a corrupt entry is rebuilt, not fatal
    assert again.info.compiled_from == "compiled"
