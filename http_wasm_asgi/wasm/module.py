"""A guest module: validated against the ABI, compiled (through the cache), linked, ready to instantiate."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from .. import _native, abi
from ..errors import GuestError
from . import wasi as wasi_shims
from .cache import Source, compile_module
from .calls import CallPath, HostFunction, default_path
from .engine import get_engine
from .instance import WasmInstance
from .stats import CallStats


@dataclass(frozen=True)
class Limits:
    """Per-instance resource limits."""

    call_timeout: float = 1.0  # seconds of CPU per guest call (epoch based)
    init_timeout: float = 10.0  # seconds of CPU for the guest's init (start function, _initialize/_start)
    # linear memory cap: a cap, not a reservation; generous enough for a WAF's rule set (~75-100 MiB)
    memory_bytes: int = 256 * 1024 * 1024
    table_elements: int = 1_000_000  # table size cap (a table.grow bomb is memory too)


@dataclass(frozen=True)
class WasiOptions:
    """What a WASI guest may see. Nothing by default."""

    env: Mapping[str, str] = field(default_factory=dict)
    dirs: Mapping[str, str] = field(default_factory=dict)  # guest path -> host path, read-only
    dirs_writable: bool = False  # every directory read-write
    writable: frozenset[str] = frozenset()  # the guest paths of dirs mounted read-write (the others read-only)


@dataclass(frozen=True)
class ModuleInfo:
    """What a compiled guest declares, for `inspect`/`check` and for the host's own choices."""

    size: int
    sha256: str
    imports: tuple[tuple[str, str, str], ...]  # (module, name, type)
    exports: tuple[tuple[str, str], ...]  # (name, type)
    uses_wasi: bool
    compile_seconds: float
    compiled_from: str  # "compiled", "disk" or "memory"

    def imports_host(self, name: str) -> bool:
        return any(m == abi.HOST_MODULE and n == name for m, n, _ in self.imports)


def _valtypes(types: list[wasmtime.ValType]) -> tuple[str, ...]:
    return tuple(str(t) for t in types)


def _describe(ty: Any) -> str:
    if isinstance(ty, wasmtime.FuncType):
        return f"func({', '.join(_valtypes(ty.params))}) -> ({', '.join(_valtypes(ty.results))})"
    return type(ty).__name__.replace("Type", "").lower()


def _signature(params: tuple[str, ...], results: tuple[str, ...]) -> str:
    return f"func({', '.join(params)}) -> ({', '.join(results)})"


def wasm_binary(name: str, wasm: bytes) -> bytes:
    """The module's binary; WebAssembly text is accepted too (tests, hand-written guests)."""
    if not isinstance(wasm, bytes | bytearray | memoryview):
        raise GuestError(name, f"expected the module's bytes, got {type(wasm).__name__}")
    wasm = bytes(wasm)
    if wasm[:4] == b"\0asm":
        return wasm
    try:
        return bytes(wasmtime.wat2wasm(wasm.decode("utf-8")))
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise GuestError(name, "not a WebAssembly module (no \\0asm header) and not valid "
                               f"WebAssembly text: {detail}") from None


class WasmModule:
    """A validated guest module, linked against the host functions, ready to instantiate."""

    def __init__(self, name: str, wasm: Source, host_functions: Mapping[str, HostFunction],
                 *, cache_dir: Path | None = None, wasi: WasiOptions | None = None,
                 limits: Limits | None = None, cache_key: str | None = None, path: CallPath | None = None) -> None:
        self.name = name
        self.path = path or default_path()  # the call path of its linker and its instances, for its life
        self.limits = limits or Limits()
        self.wasi = wasi or WasiOptions()
        self.stats: CallStats | None = None  # where its instances count their calls (set by the guest)
        # handle_response cannot loop (snapshot.runs_bounded, set by the guest): a plain synchronous call
        self.sync_response = False
        if not callable(wasm):
            wasm = wasm_binary(name, wasm)
        self._module, seconds, source, sha256 = compile_module(name, wasm, cache_dir, cache_key)
        imports = tuple((i.module, i.name or "", _describe(i.type)) for i in self._module.imports)
        exports = tuple((e.name, _describe(e.type)) for e in self._module.exports)
        self.info = ModuleInfo(0 if callable(wasm) else len(wasm), sha256, imports, exports,
                               any(m == abi.WASI_MODULE for m, _, _ in imports), seconds, source)
        self._validate()
        self._engine = get_engine()
        self._callbacks: list[Any] = []  # keep ctypes callbacks alive as long as the linker
        self._pre = self._link(host_functions)

    def _validate(self) -> None:
        exports = {e.name: e.type for e in self._module.exports}
        for export, (params, results) in abi.GUEST_EXPORTS.items():
            ty = exports.get(export)
            if ty is None:
                raise GuestError(self.name, f"missing export {export!r} (an http-wasm guest must export "
                                            f"memory, handle_request and handle_response)")
            if not isinstance(ty, wasmtime.FuncType) or (_valtypes(ty.params), _valtypes(ty.results)) != (
                    params, results):
                raise GuestError(self.name, f"export {export!r} has type {_describe(ty)}, "
                                            f"the ABI needs {_signature(params, results)}")
        if not isinstance(exports.get(abi.EXPORT_MEMORY), wasmtime.MemoryType):
            raise GuestError(self.name, "missing export 'memory' (the host reads and writes guest "
                                        "memory through it)")
        for imp in self._module.imports:
            module, name, ty = imp.module, imp.name or "", imp.type
            if module == abi.HOST_MODULE:
                sig = abi.HOST_FUNCTIONS.get(name)
                if sig is None:
                    raise GuestError(self.name, f"imports {module}.{name}, which the http-handler ABI "
                                                "does not define")
                if not isinstance(ty, wasmtime.FuncType) or (
                        _valtypes(ty.params), _valtypes(ty.results)) != sig:
                    raise GuestError(self.name, f"imports {module}.{name} as {_describe(ty)}, the ABI "
                                                f"defines {_signature(*sig)}")
            elif module != abi.WASI_MODULE:
                raise GuestError(self.name, f"imports {module}.{name} ({_describe(ty)}), which this host "
                                            f"cannot provide (only {abi.HOST_MODULE} and {abi.WASI_MODULE})")

    def _define(self, linker: wasmtime.Linker, module: str, name: str, fn: HostFunction,
                params: tuple[str, ...], results: tuple[str, ...], *, on_instance: bool = False) -> None:
        vt = {abi.I32: wasmtime.ValType.i32(), abi.I64: wasmtime.ValType.i64()}
        functype = wasmtime.FuncType([vt[p] for p in params], [vt[r] for r in results])
        native = self.path.native and module == abi.HOST_MODULE and _native.is_native_host_function(name, fn)
        err = self.path.define(linker, module.encode(), name.encode(), functype, fn, len(params), len(results),
                           on_instance, native, self._callbacks)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ctypes.POINTER(ffi.wasmtime_error_t)))

    def _link(self, host_functions: Mapping[str, HostFunction]) -> wasmtime.InstancePre:
        linker = wasmtime.Linker(self._engine)
        if self.info.uses_wasi:
            linker.define_wasi()
            linker.allow_shadowing = True
            self._define(linker, abi.WASI_MODULE, "fd_write", wasi_shims.fd_write, (abi.I32,) * 4, (abi.I32,),
                         on_instance=True)
            if (abi.WASI_MODULE, "clock_time_get") in {(m, n) for m, n, _ in self.info.imports}:
                self._define(linker, abi.WASI_MODULE, "clock_time_get", wasi_shims.clock_time_get,
                             (abi.I32, abi.I64, abi.I32), (abi.I32,), on_instance=True)
        for name in {n for m, n, _ in self.info.imports if m == abi.HOST_MODULE}:
            params, results = abi.HOST_FUNCTIONS[name]
            self._define(linker, abi.HOST_MODULE, name, host_functions[name], params, results)
        try:
            return linker.instantiate_pre(self._module)
        except Exception as exc:
            raise GuestError(self.name, f"cannot link: {exc}") from None

    def instantiate(self, make_host: Callable[[WasmInstance], Any],
                    output: Callable[[int, bytes], None] | None = None) -> WasmInstance:
        """Create a fresh instance and run its start function / `_initialize` / `_start`."""
        return WasmInstance(self, make_host, output)


