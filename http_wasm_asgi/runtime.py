"""The one module that talks to wasmtime.

Everything that compiles, links, instantiates or calls into WebAssembly lives
here, so the rest of the package never sees wasmtime, ctypes or the C
accelerator. Hot calls (guest exports, host functions, memory access) go
through wasmtime's *unchecked* C API: the high-level `wasmtime.Func.__call__`
costs ~16 us a call and each `Linker.define_func` host function 6-11 us.

Two implementations of the same calls:
- the optional C accelerator (`_fastpath.c`, built at install): a `Core` per
  instance makes a guest call one C call (~0.05 us), host functions are entered
  through a C trampoline (~0.1 us to a Python host function), and the hottest
  host functions are native (~0.02 us) with the Python ones in host.py as their
  reference and fallback (see NATIVE_HOST_FUNCTIONS);
- ctypes, when the accelerator is not built or HTTP_WASM_ASGI_NO_FASTPATH is set.

Threading: a guest call runs on the calling thread. The accelerator keeps the
GIL during the call (cheaper) unless the instance's `release_gil` is set
(Guest(threaded=True)); ctypes always releases it. Either way the epoch ticker
(a native thread with the accelerator) interrupts an endless loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import wasmtime
from wasmtime import _ffi as ffi

from . import abi
from . import host as _host
from .errors import GuestError, GuestTrap, HostTrap

__all__ = [
    "EPOCH_TICK_SECONDS",
    "HostFunction",
    "Limits",
    "ModuleInfo",
    "WasiOptions",
    "WasmInstance",
    "WasmModule",
    "check_binding",
    "merge_response_headers",
    "wasmtime_version",
]

log = logging.getLogger("http_wasm_asgi.runtime")

# A host function receives the instance's host object first, then the wasm
# arguments as unsigned ints; it returns an int for functions with a result.
HostFunction = Callable[..., int | None]

EPOCH_TICK_SECONDS: Final = 0.01
WASMTIME_MAJOR: Final = 50
FASTPATH_VERSION: Final = 2  # the _fastpath.c this module was written for (its VERSION)
_EMPTY: Final = b""

# --- raw C entry points, with argument types chosen for speed (plain ints) ---
_dll = ffi.dll
_VP = ctypes.c_void_p


def _cfunc(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = _dll[name]  # a fresh function pointer: our argtypes, not wasmtime-py's
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_func_call_unchecked = _cfunc("wasmtime_func_call_unchecked", _VP, _VP, _VP, _VP, ctypes.c_size_t, _VP)
_memory_data = _cfunc("wasmtime_memory_data", ctypes.c_size_t, _VP, _VP)
_memory_data_size = _cfunc("wasmtime_memory_data_size", ctypes.c_size_t, _VP, _VP)
_set_epoch_deadline = _cfunc("wasmtime_context_set_epoch_deadline", None, _VP, ctypes.c_uint64)
_trap_new = _cfunc("wasmtime_trap_new", _VP, ctypes.c_char_p, ctypes.c_size_t)
_caller_export_get = _cfunc("wasmtime_caller_export_get", ctypes.c_bool, _VP, ctypes.c_char_p,
                            ctypes.c_size_t, _VP)
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_size_t, _VP, _VP, _VP, ctypes.c_size_t)
_FINALIZER = ctypes.CFUNCTYPE(None, _VP)
_linker_define_unchecked = _cfunc("wasmtime_linker_define_func_unchecked", _VP, _VP, ctypes.c_char_p,
                                  ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, _VP, _CALLBACK,
                                  _VP, _FINALIZER)
_NO_FINALIZER = _FINALIZER()
_linker_define_addr = ctypes.cast(_dll.wasmtime_linker_define_func_unchecked, _VP).value
_RAW_SIZE: Final = ctypes.sizeof(ffi.wasmtime_val_raw_t)  # 16: one slot per argument/result
_RESULT = struct.Struct("<Q")
_ARG_STRUCTS = {n: struct.Struct("<" + f"I{_RAW_SIZE - 4}x" * n) for n in range(6)}
# One memoryview over the whole address space: host callbacks read their arguments and
# guest memory with a slice or struct.unpack_from (~0.1 us) instead of a ctypes object each
# time (~0.4 us). Only ranges checked against wasmtime's own bounds are ever touched.
_ADDRESS_SPACE = memoryview((ctypes.c_char * (1 << 47)).from_address(0)).cast("B")
_U32_PAIR = struct.Struct("<II")


@functools.cache
def wasmtime_version() -> str:
    from importlib.metadata import version

    return version("wasmtime")


def check_binding() -> None:
    """Fail loudly when the installed wasmtime is not the one this fast path was built for."""
    major = int(wasmtime_version().split(".")[0])
    if major != WASMTIME_MAJOR:
        raise RuntimeError(f"http_wasm_asgi needs wasmtime {WASMTIME_MAJOR}.x, found {wasmtime_version()}")
    if _RAW_SIZE != 16:
        raise RuntimeError(f"unexpected wasmtime_val_raw size {_RAW_SIZE}")


check_binding()

# The optional C accelerator (http_wasm_asgi/_fastpath.c): same calls, no ctypes on the hot path.
try:
    if os.environ.get("HTTP_WASM_ASGI_NO_FASTPATH"):
        raise ImportError("disabled by HTTP_WASM_ASGI_NO_FASTPATH")
    from . import _fastpath  # type: ignore[attr-defined]

    if getattr(_fastpath, "VERSION", None) != FASTPATH_VERSION:
        raise ImportError(f"http_wasm_asgi._fastpath is a stale build (VERSION {getattr(_fastpath, 'VERSION', None)}, "
                          f"expected {FASTPATH_VERSION}): reinstall the package to rebuild it")
except ImportError as _exc:  # not compiled (no C compiler at install): the ctypes path below does the same
    if "stale build" in str(_exc):
        log.warning("%s", _exc)
    _fastpath = None
FAST_PATH: Final = _fastpath is not None
# Host functions the accelerator implements natively (the common, valid case; anything else
# falls back to the Python function in host.py, which stays the reference).
NATIVE_HOST_FUNCTIONS: frozenset[str] = frozenset()

# --- the current instance, per thread: host callbacks find their instance here ---
_current = threading.local()


def _trap(message: str) -> int:
    data = message.encode("utf-8", "replace")
    return int(_trap_new(data, len(data)))


def _make_callback(name: str, fn: HostFunction, nparams: int, nresults: int, *, on_instance: bool = False) -> Any:
    unpack = _ARG_STRUCTS[nparams].unpack_from
    pack = _RESULT.pack_into
    space = _ADDRESS_SPACE

    def callback(_env: int | None, caller: int, values: int, _n: int) -> int:
        inst: WasmInstance = _current.instance
        try:
            if inst._memory_addr == 0:
                inst._bind_memory_from_caller(caller)
            target = inst if on_instance else inst.host
            result = fn(target, *unpack(space, values)) if nparams else fn(target)
            if nresults:
                pack(space, values, result & 0xFFFF_FFFF_FFFF_FFFF)  # type: ignore[operator]
            return 0
        except HostTrap as exc:
            inst.trap_status = exc.status
            return _trap(f"{name}: {exc}")
        except BaseException as exc:  # a host bug must trap the guest, never unwind through wasm
            log.exception("host function %s failed", name)
            return _trap(f"{name}: host error: {type(exc).__name__}")

    return _CALLBACK(callback)


def _host_error(name: str, exc: BaseException, inst: WasmInstance | None) -> str:
    """A host function failed under the C trampoline: the trap message (and status) for it."""
    if isinstance(exc, HostTrap):
        if inst is not None and inst._core is not None:
            inst._core.trap_status = exc.status
        return f"{name}: {exc}"
    # a host bug must trap the guest, never unwind through wasm
    log.error("host function %s failed", name, exc_info=exc)
    return f"{name}: host error: {type(exc).__name__}"


# Accelerated helpers the rest of the package may use; the Python references live in host.py.
merge_response_headers: Callable[[Sequence[tuple[bytes, bytes]], Sequence[tuple[bytes, bytes]]],
                                 list[tuple[bytes, bytes]]] = _host.merge_response_headers
_NATIVE_REFERENCE: Final = _host.HOST_FUNCTIONS

if _fastpath is not None:
    _fastpath.configure(*(ctypes.cast(getattr(_dll, name), _VP).value for name in (
        "wasmtime_func_call_unchecked", "wasmtime_context_set_epoch_deadline", "wasmtime_trap_new",
        "wasmtime_engine_increment_epoch", "wasmtime_memory_data_size")), _host_error)
    try:
        _fastpath.configure_host(_host.GuestHost, _host.Exchange, _host.PHASES, _host.merge_response_headers)
        NATIVE_HOST_FUNCTIONS = frozenset(_fastpath.native_functions())
        merge_response_headers = _fastpath.merge_response_headers
    except TypeError as _exc:  # the classes changed shape: the Python host functions do it all
        log.warning("native host functions disabled: %s", _exc)


# --- WASI output: our own fd_write collects every buffer (wasmtime's may write only the first) ---
def _fd_write(mem: WasmInstance, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
    if fd not in (1, 2):
        return 8  # EBADF: a guest gets no files
    total = 0
    parts = []
    raw = mem.read(iovs, iovs_len * 8)
    for i in range(iovs_len):
        ptr, length = _U32_PAIR.unpack_from(raw, i * 8)
        parts.append(mem.read(ptr, length))
        total += length
    mem.write(nwritten, struct.pack("<I", total))
    mem.output(fd, b"".join(parts))
    return 0


# --- engine, epoch ticker and compile cache ---
_engine_lock = threading.Lock()
_engine: wasmtime.Engine | None = None
_module_cache: dict[str, wasmtime.Module] = {}
ENGINE_FINGERPRINT: Final = "epoch=1;opt=speed;fixed-memory"


def _get_engine() -> wasmtime.Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            config.epoch_interruption = True
            config.cranelift_opt_level = "speed"
            config.memory_may_move = False  # lets instances cache their memory's base address
            _engine = wasmtime.Engine(config)
            if _fastpath is not None:  # guest calls keep the GIL there: the ticker must be native
                # its own reference to the engine, never freed: the thread outlives interpreter shutdown
                ticker_engine = ffi.wasmtime_engine_clone(_engine.ptr())
                _fastpath.start_ticker(ctypes.cast(ticker_engine, _VP).value, int(EPOCH_TICK_SECONDS * 1e6))
            else:
                threading.Thread(target=_tick, args=(_engine,), name="http-wasm-epoch", daemon=True).start()
        return _engine


def _tick(engine: wasmtime.Engine) -> None:
    while True:
        time.sleep(EPOCH_TICK_SECONDS)
        engine.increment_epoch()


def default_cache_dir() -> Path | None:
    """Where compiled modules are kept: $HTTP_WASM_ASGI_CACHE_DIR, else ~/.cache/http-wasm-asgi.

    Set the variable to an empty string to turn the disk cache off.
    """
    env = os.environ.get("HTTP_WASM_ASGI_CACHE_DIR")
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "http-wasm-asgi"


def _compile(name: str, wasm: bytes, cache_dir: Path | None) -> tuple[wasmtime.Module, float, str, str]:
    """Compile once per process, and once per machine with the disk cache.

    Returns (module, seconds, source, sha256 of the wasm); source is "compiled", "disk" or "memory".
    Processes starting together (N workers) compile a module once: the first takes a lock on
    the cache entry, the others wait for it and load what it wrote.
    """
    engine = _get_engine()
    key = hashlib.sha256(wasm).hexdigest()
    cached = _module_cache.get(key)
    if cached is not None:
        return cached, 0.0, "memory", key
    start = time.perf_counter()
    path = None
    lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if cache_dir is not None:
        path = cache_dir / f"{key}-{_cache_tag()}.cwasm"
        module = _load_cached(engine, path)
        if module is None:
            lock = _entry_lock(path)
    else:
        module = None
    with lock:
        if module is None and path is not None:
            module = _load_cached(engine, path)  # another process may have written it while we waited
        if module is not None:
            _module_cache[key] = module
            return module, time.perf_counter() - start, "disk", key
        try:
            module = wasmtime.Module(engine, wasm)
        except Exception as exc:
            raise GuestError(name, f"not a valid WebAssembly module: {_first_line(exc)}") from None
        elapsed = time.perf_counter() - start
        if path is not None:
            with contextlib.suppress(OSError):
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(module.serialize())
                os.replace(tmp, path)  # readers see the old file or the whole new one
    _module_cache[key] = module
    return module, elapsed, "compiled", key


@functools.cache
def _cache_tag() -> str:
    return hashlib.sha256(f"{wasmtime_version()};{ENGINE_FINGERPRINT}".encode()).hexdigest()[:12]


def _load_cached(engine: wasmtime.Engine, path: Path) -> wasmtime.Module | None:
    """The module of a cache entry, or None (missing, stale or corrupt: it is simply rebuilt).

    Read into memory, not mapped (deserialize_file): a cache file replaced or truncated later
    must not pull pages out from under a live module. Deserialized straight from our buffer
    (wasmtime-py's deserialize copies it once more first).
    """
    try:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            if f.readinto(data) != len(data):
                return None
    except OSError:
        return None
    ptr = ctypes.POINTER(ffi.wasmtime_module_t)()
    error = ffi.wasmtime_module_deserialize(engine.ptr(), (ctypes.c_uint8 * len(data)).from_buffer(data), len(data),
                                            ctypes.byref(ptr))
    if error:
        wasmtime.WasmtimeError._from_ptr(error)  # frees it
        return None
    return wasmtime.Module._from_ptr(ptr)


@contextlib.contextmanager
def _entry_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on one cache entry across processes (best effort: none where flock is missing)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- public types ---
@dataclass(frozen=True)
class Limits:
    """Per-instance resource limits."""

    call_timeout: float = 1.0  # seconds of CPU per guest call (epoch based)
    memory_bytes: int = 64 * 1024 * 1024  # linear memory cap
    table_elements: int = 1_000_000  # table size cap (a table.grow bomb is memory too)


@dataclass(frozen=True)
class WasiOptions:
    """What a WASI guest may see. Nothing by default."""

    env: Mapping[str, str] = field(default_factory=dict)
    dirs: Mapping[str, str] = field(default_factory=dict)  # guest path -> host path, read-only
    dirs_writable: bool = False


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


class WasmModule:
    """A validated guest module, linked against the host functions, ready to instantiate."""

    def __init__(self, name: str, wasm: bytes, host_functions: Mapping[str, HostFunction],
                 *, cache_dir: Path | None = None, wasi: WasiOptions | None = None,
                 limits: Limits | None = None) -> None:
        self.name = name
        self.limits = limits or Limits()
        self.wasi = wasi or WasiOptions()
        if not isinstance(wasm, bytes | bytearray | memoryview):
            raise GuestError(name, f"expected the module's bytes, got {type(wasm).__name__}")
        wasm = bytes(wasm)
        if wasm[:4] != b"\0asm":
            try:  # WebAssembly text is accepted too (tests, hand-written guests)
                wasm = bytes(wasmtime.wat2wasm(wasm.decode("utf-8")))
            except Exception as exc:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise GuestError(name, "not a WebAssembly module (no \\0asm header) and not valid "
                                       f"WebAssembly text: {detail}") from None
        self._module, seconds, source, sha256 = _compile(name, wasm, cache_dir)
        imports = tuple((i.module, i.name or "", _describe(i.type)) for i in self._module.imports)
        exports = tuple((e.name, _describe(e.type)) for e in self._module.exports)
        self.info = ModuleInfo(len(wasm), sha256, imports, exports,
                               any(m == abi.WASI_MODULE for m, _, _ in imports), seconds, source)
        self._validate()
        self._engine = _get_engine()
        self._callbacks: list[Any] = []  # keep ctypes callbacks alive as long as the linker
        self._pre = self._link(host_functions)
        self._deadline_ticks = max(1, round(self.limits.call_timeout / EPOCH_TICK_SECONDS))

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
        m, n = module.encode(), name.encode()
        if _fastpath is not None:
            self._callbacks.append(functype)
            native = module == abi.HOST_MODULE and name in NATIVE_HOST_FUNCTIONS and \
                _NATIVE_REFERENCE.get(name) is fn
            err = _fastpath.define(_linker_define_addr, ctypes.cast(linker.ptr(), _VP).value, m, n,
                                   ctypes.cast(functype.ptr(), _VP).value, fn, len(params), len(results),
                                   on_instance, native)
        else:
            callback = _make_callback(name, fn, len(params), len(results), on_instance=on_instance)
            self._callbacks.append((callback, functype))
            err = _linker_define_unchecked(ctypes.cast(linker.ptr(), _VP), m, len(m), n, len(n),
                                           ctypes.cast(functype.ptr(), _VP), callback, None, _NO_FINALIZER)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ctypes.POINTER(ffi.wasmtime_error_t)))

    def _link(self, host_functions: Mapping[str, HostFunction]) -> wasmtime.InstancePre:
        linker = wasmtime.Linker(self._engine)
        if self.info.uses_wasi:
            linker.define_wasi()
            linker.allow_shadowing = True
            self._define(linker, abi.WASI_MODULE, "fd_write", _fd_write, (abi.I32,) * 4, (abi.I32,),
                         on_instance=True)
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


_EXPORTS: Final = (abi.EXPORT_HANDLE_REQUEST, abi.EXPORT_HANDLE_RESPONSE, abi.EXPORT_INITIALIZE,
                   abi.EXPORT_START)  # export index -> name (the accelerator's Core numbers them)


class WasmInstance:
    """One guest instance in its own store. Used by one request at a time.

    `handle_request()` and `handle_response(req_ctx, is_error)` call the guest's exports.
    `request(exchange, features)` is `host.begin(exchange, features)`, handle_request and
    `host.after_next()` when the guest said next; `response(req_ctx, is_error)` is
    handle_response then `host.end()` (the host object is what `make_host` built). With the
    accelerator these are the C `Core`'s methods (one C call each), else the ctypes path.
    """

    __slots__ = ("_args", "_args_addr", "_base", "_core", "_ctx", "_deadline", "_err", "_err_addr", "_funcs",
                 "_keep", "_memory", "_memory_addr", "_module_ref", "_release_gil", "_size", "_store", "_trap",
                 "_trap_addr", "closed", "handle_request", "handle_response", "host", "name", "output_fn",
                 "request", "response", "trap_status")

    handle_request: Callable[[], int]
    handle_response: Callable[[int, bool], None]
    request: Callable[[Any, int], int]
    response: Callable[[int, bool], None]

    def __init__(self, module: WasmModule, make_host: Callable[[WasmInstance], Any],
                 output: Callable[[int, bytes], None] | None) -> None:
        self.name = module.name
        self._module_ref = module
        self.closed = False
        self.trap_status = 500
        self._release_gil = False
        self.output_fn = output
        self._memory: Any = None
        self._memory_addr = 0
        self._base = 0  # memory base address: fixed (memory_may_move=False)
        self._size = 0  # a lower bound of the memory size: memory only grows
        self._deadline = module._deadline_ticks
        store = wasmtime.Store(module._engine)
        # one memory (the cap is per memory) and a few tables (the element cap is per table)
        store.set_limits(memory_size=module.limits.memory_bytes, table_elements=module.limits.table_elements,
                         memories=1, tables=8)
        if module.info.uses_wasi:
            wasi = wasmtime.WasiConfig()
            if module.wasi.env:
                wasi.env = [(k, v) for k, v in module.wasi.env.items()]
            for guest_path, host_path in module.wasi.dirs.items():
                wasi.preopen_dir(host_path, guest_path, fs_mutable=module.wasi.dirs_writable)
            store.set_wasi(wasi)
        self._store = store
        self._ctx = ctypes.cast(store._context(), _VP).value
        self._args = (ctypes.c_uint64 * 4)()  # two 16-byte wasmtime_val_raw slots
        self._args_addr = ctypes.addressof(self._args)
        self._trap = ctypes.c_void_p()
        self._trap_addr = ctypes.addressof(self._trap)
        self._err = ctypes.c_void_p()
        self._err_addr = ctypes.addressof(self._err)
        self.host = make_host(self)
        self._core: Any = None
        if _fastpath is not None:
            core = _fastpath.Core(self, self._ctx, self._deadline)
            core.host = self.host
            self._core = core
            self.handle_request = core.handle_request
            self.handle_response = core.handle_response
            self.request = core.request
            self.response = core.response
        else:
            self.handle_request = self._ct_handle_request
            self.handle_response = self._ct_handle_response
            self.request = self._ct_request
            self.response = self._ct_response
        _set_epoch_deadline(self._ctx, self._deadline)
        prev = getattr(_current, "instance", None)
        _current.instance = self
        prev_core = _fastpath.set_current(self._core) if _fastpath is not None else None
        try:
            instance = module._pre.instantiate(store)
            exports = instance.exports(store)
            self._set_memory(exports[abi.EXPORT_MEMORY]._memory)  # type: ignore[union-attr]
            self._keep = [exports[name] for name in (abi.EXPORT_HANDLE_REQUEST, abi.EXPORT_HANDLE_RESPONSE)]
            self._funcs = {name: ctypes.addressof(f._func)  # type: ignore[union-attr]
                           for name, f in zip((abi.EXPORT_HANDLE_REQUEST, abi.EXPORT_HANDLE_RESPONSE),
                                              self._keep, strict=True)}
            for init in (abi.EXPORT_INITIALIZE, abi.EXPORT_START):
                func = exports.get(init)
                if isinstance(func, wasmtime.Func):
                    self._keep.append(func)
                    self._funcs[init] = ctypes.addressof(func._func)
                    break
            if self._core is not None:
                for index, name in enumerate(_EXPORTS):
                    if name in self._funcs:
                        self._core.set_func(index, self._funcs[name])
            for init in (abi.EXPORT_INITIALIZE, abi.EXPORT_START):
                if init in self._funcs:
                    try:
                        self._call(init)
                    except GuestTrap as exc:
                        if exc.exit_code != 0:  # proc_exit(0) from `_start` is a normal end
                            raise
                        self.closed = False
                    break
        except GuestTrap as exc:
            raise GuestError(self.name, f"failed to initialize in {exc.export}: {exc.message}") from None
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            code = getattr(exc, "code", None)
            if code == 0:  # proc_exit(0) from a start function is a normal end
                pass
            else:
                what = f"exited with code {code}" if code is not None else _first_line(exc)
                raise GuestError(self.name, f"failed to initialize: {what}") from None
        finally:
            _current.instance = prev
            if _fastpath is not None:
                _fastpath.set_current(prev_core)

    @property
    def release_gil(self) -> bool:
        """True when called from a worker thread (see Guest(threaded=True)): wasm runs without the GIL."""
        return self._release_gil

    @release_gil.setter
    def release_gil(self, value: bool) -> None:
        self._release_gil = bool(value)
        if self._core is not None:
            self._core.release_gil = self._release_gil

    # -- calls into the guest --
    def _call(self, export: str) -> None:
        """Call an init export (`_initialize`/`_start`)."""
        if self._core is not None:
            self._core.call(_EXPORTS.index(export))
        else:
            self._ct_call(export, 0)

    def _raise_trap(self, index: int) -> None:
        """The accelerator's call trapped: raise it as GuestTrap (called from C)."""
        trap, err = self._core.take_trap()
        self.closed = True
        raise self._trap_error(_EXPORTS[index], trap, err, self._core.trap_status)

    def _ct_call(self, export: str, nargs: int) -> int:
        """ctypes path: call an export through the unchecked C API; arguments/results in self._args."""
        local = _current
        prev = getattr(local, "instance", None)
        local.instance = self
        self.trap_status = 500
        try:
            _set_epoch_deadline(self._ctx, self._deadline)
            err = _func_call_unchecked(self._ctx, self._funcs[export], self._args_addr, 2, self._trap_addr)
            result = None if err or self._trap.value else self._args[0]
        finally:
            local.instance = prev
        if result is None:
            self.closed = True
            trap, self._trap.value = self._trap.value, None
            raise self._trap_error(export, trap or 0, err or 0, self.trap_status)
        return int(result)

    def _trap_error(self, export: str, trap_ptr: int, err_ptr: int, status: int) -> GuestTrap:
        exit_code = None
        if err_ptr:
            exc = wasmtime.WasmtimeError._from_ptr(ctypes.cast(err_ptr, ctypes.POINTER(ffi.wasmtime_error_t)))
            exit_code = getattr(exc, "code", None)
            message = f"exited with code {exit_code}" if exit_code is not None else _first_line(exc)
        else:
            trap = wasmtime.Trap._from_ptr(ctypes.cast(trap_ptr, ctypes.POINTER(ffi.wasm_trap_t)))
            code = trap.trap_code
            if code == wasmtime.TrapCode.INTERRUPT:
                message = f"exceeded the CPU time limit ({self._module_ref.limits.call_timeout:g} s)"
                status = 503
            else:
                message = _first_line(trap)
        return GuestTrap(self.name, export, message, status=status, exit_code=exit_code)

    def _ct_handle_request(self) -> int:
        """Call `handle_request`; returns the raw i64 ctx_next."""
        return self._ct_call(abi.EXPORT_HANDLE_REQUEST, 0)

    def _ct_handle_response(self, req_ctx: int, is_error: bool) -> None:
        args = self._args
        args[0] = req_ctx & 0xFFFF_FFFF
        args[2] = 1 if is_error else 0
        self._ct_call(abi.EXPORT_HANDLE_RESPONSE, 2)

    def _ct_request(self, exchange: Any, features: int) -> int:
        host = self.host
        host.begin(exchange, features)
        ctx_next = self._ct_call(abi.EXPORT_HANDLE_REQUEST, 0)
        if ctx_next & 1:
            host.after_next()
        return ctx_next

    def _ct_response(self, req_ctx: int, is_error: bool) -> None:
        host = self.host
        self._ct_handle_response(req_ctx, is_error)
        host.end()

    # -- guest memory, for host functions --
    def _bind_memory_from_caller(self, caller: int) -> None:
        """During instantiation (start section) the memory export is found through the caller."""
        item = ffi.wasmtime_extern_t()
        if not _caller_export_get(caller, b"memory", 6, ctypes.addressof(item)) or \
                int(item.kind) != ffi.WASMTIME_EXTERN_MEMORY.value:
            raise HostTrap("guest has no exported memory")
        self._set_memory(item.of.memory)

    def _set_memory(self, memory: Any) -> None:
        self._memory = memory
        self._memory_addr = ctypes.addressof(memory)
        self._base = int(_memory_data(self._ctx, self._memory_addr))
        self._size = int(_memory_data_size(self._ctx, self._memory_addr))
        if self._core is not None:
            self._core.set_memory(self._memory_addr, self._base, self._size)

    def _in_bounds(self, end: int) -> bool:
        if end <= self._size:
            return True
        self._size = int(_memory_data_size(self._ctx, self._memory_addr))  # the guest may have grown it
        return end <= self._size

    def read(self, ptr: int, length: int) -> bytes:
        """Guest memory [ptr, ptr+length); traps on out-of-bounds."""
        if length == 0:
            return _EMPTY
        if ptr + length > self._size and not self._in_bounds(ptr + length):
            raise HostTrap(f"out of bounds memory read [{ptr}, {ptr + length})")
        start = self._base + ptr
        return _ADDRESS_SPACE[start:start + length].tobytes()

    def write(self, ptr: int, data: bytes) -> None:
        """Write data at guest memory ptr; traps on out-of-bounds."""
        n = len(data)
        if ptr + n > self._size and not self._in_bounds(ptr + n):
            raise HostTrap(f"out of bounds memory write [{ptr}, {ptr + n})")
        if n:
            start = self._base + ptr
            _ADDRESS_SPACE[start:start + n] = data

    def memory_size(self) -> int:
        return int(_memory_data_size(self._ctx, self._memory_addr)) if self._memory_addr else 0

    def output(self, fd: int, data: bytes) -> None:
        if self.output_fn is not None:
            self.output_fn(fd, data)

    def close(self) -> None:
        """Drop the store (and so the instance and its memory)."""
        self.closed = True
        self._memory_addr = 0
        self.host = None
        if self._core is not None:
            self._core.close()  # no call can reach the dropped store; breaks the core <-> instance cycle
            self._core = None
        self.handle_request = self.handle_response = self.request = self.response = _closed
        self._store = None  # type: ignore[assignment]


def _closed(*_: Any) -> Any:
    raise RuntimeError("guest instance is closed")


def _first_line(exc: BaseException) -> str:
    """The cause of a wasmtime error or trap, without its backtrace."""
    text = str(exc).strip()
    if "Caused by:" in text:
        cause = [line.strip() for line in text.split("Caused by:", 1)[1].splitlines() if line.strip()]
        text = " ".join(cause)
        return text.removeprefix("wasm trap: ")
    return text.splitlines()[0] if text else type(exc).__name__
