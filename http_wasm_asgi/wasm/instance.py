"""One guest instance in its own store: calls into it, its memory for the host functions, its traps."""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

import wasmtime
from wasmtime import _ffi as ffi

from .. import _native, abi
from ..errors import GuestError, GuestTrap, HostTrap, first_line
from . import capi
from .calls import EXPORTS, INIT_EXPORTS
from .scheduler import scheduler
from .stats import CallStats

if TYPE_CHECKING:
    from .module import WasmModule

_EMPTY: Final = b""
PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# A pagemap entry's top byte (bits 56-63: exclusive, file or shared, swapped, present) -> 1 for a page of the
# process's own: present, not file-backed nor shared (the snapshot image is a shared file), mapped once.
_OWN_PAGE: Final = bytes(int(top & 0b1110_0001 == 0b1000_0001) for top in range(256))


def _new_store(module: WasmModule) -> wasmtime.Store:
    store = wasmtime.Store(module._engine)
    # one memory (the cap is per memory) and a few tables (the element cap is per table)
    store.set_limits(memory_size=module.limits.memory_bytes, table_elements=module.limits.table_elements,
                     memories=1, tables=8)
    if module.info.uses_wasi:
        wasi = wasmtime.WasiConfig()
        if module.wasi.env:
            wasi.env = [(k, v) for k, v in module.wasi.env.items()]
        for guest_path, host_path in module.wasi.dirs.items():
            writable = module.wasi.dirs_writable or guest_path in module.wasi.writable
            wasi.preopen_dir(host_path, guest_path, fs_mutable=writable)
        store.set_wasi(wasi)
    return store


class WasmInstance:
    """One guest instance in its own store. Used by one request at a time.

    `handle_request()` and `handle_response(req_ctx, is_error)` call the guest's exports.
    `request(exchange, features)` is `host.begin(exchange, features)`, handle_request and
    `host.after_next()` when the guest said next; `response(req_ctx, is_error)` is
    handle_response then `host.end()` (the host object is what `make_host` built). These run
    the call to its end on the calling thread (Guest(threaded=True) calls them on a worker).

    On the event loop, `start_request`/`start_response` do the same cooperatively: the guest
    runs until it ends or the next epoch tick (~1 ms); if it did not end they return
    SUSPENDED and `await finish()` runs the rest, one slice per event-loop turn, and returns
    what the call returns. Either way `call_timeout` bounds the call's clock: its own slices,
    plus, once it has used LONG_CALL_SECONDS of guest time, LONG_WAIT of the non-guest work that
    ran on its thread while it waited (other guests' slices never count); past it the call fails with
    GuestTrap (503) and the instance is closed.
    These are the methods of the instance's `Core` (one C call each on the native path).
    """

    __slots__ = ("_base", "_core", "_ctx", "_keep", "_memory", "_memory_addr", "_module_ref", "_size", "_stats",
                 "_store", "_store_exports", "closed", "handle_request", "handle_response", "host", "name", "output_fn",
                 "recycle_above", "request", "response", "start_request", "start_response")
    # What the native path reads and calls on an instance: its contract, checked at import (_native.learn).
    NATIVE_SLOTS: ClassVar = ("_core", "closed", "recycle_above")
    NATIVE_ATTRIBUTES: ClassVar = ("_bind_memory_from_caller", "_raise_trap")

    handle_request: Callable[[], int]
    handle_response: Callable[[int, bool], None]
    request: Callable[[Any, int], int]
    response: Callable[[int, bool], None]
    start_request: Callable[[Any, int], int]  # ctx_next, or SUSPENDED
    start_response: Callable[[int, bool], int | None]  # None, or SUSPENDED

    def __init__(self, module: WasmModule, make_host: Callable[[WasmInstance], Any],
                 output: Callable[[int, bytes], None] | None) -> None:
        self.name = module.name
        self._module_ref = module
        self.closed = False
        self.recycle_above: int | None = None  # the pool replaces it once its memory is this big (None: never)
        self.output_fn = output
        self._memory: Any = None
        self._memory_addr = 0
        self._stats: CallStats | None = None
        self._base = 0  # memory base address: fixed (memory_may_move=False)
        self._size = 0  # a lower bound of the memory size: memory only grows
        self._store = _new_store(module)
        self._ctx = ctypes.cast(self._store._context(), capi.VP).value
        self.host = make_host(self)
        # init has a CPU limit of its own
        core = self._core = module.path.core(self, self._store, self._ctx, module.limits.init_timeout)
        core.host = self.host
        self.handle_request = core.handle_request
        self.handle_response = core.handle_response
        self.request = core.request
        self.response = core.response
        self.start_request = core.start_request
        self.start_response = core.start_response
        prev = module.path.set_current(core)  # a start section may call host functions
        core.release_gil = True  # init may run on a pool thread: the event loop's thread keeps going
        try:
            self._start(module)
        except (GuestTrap, wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            failure = self._init_failure(exc)
            if failure is not None:
                raise failure from None
        finally:
            module.path.set_current(prev)
            core.release_gil = False
        core.budget = module.limits.call_timeout
        core.sync_response = module.sync_response
        self.set_stats(module.stats)

    def set_stats(self, stats: CallStats | None) -> None:
        """Count this instance's calls and traps in `stats` (None: not counted)."""
        self._stats = stats
        self._core.set_stats(None if stats is None else stats.counts)

    def _start(self, module: WasmModule) -> None:
        """Instantiate (running the start section), bind the exports, run `_initialize`/`_start`."""
        raw = ffi.wasmtime_instance_t()
        self._core.instantiate(ctypes.cast(module._pre.ptr(), capi.VP).value, ctypes.addressof(raw))  # to its end
        exports = self._store_exports = wasmtime.Instance._from_raw(raw).exports(self._store)
        self._set_memory(exports[abi.EXPORT_MEMORY]._memory)  # type: ignore[union-attr]
        funcs = [exports.get(name) for name in EXPORTS]
        self._keep = [f for f in funcs if isinstance(f, wasmtime.Func)]  # the addresses below stay valid
        for index, func in enumerate(funcs):
            if isinstance(func, wasmtime.Func):
                self._core.set_func(index, ctypes.addressof(func._func))
        init = next((name for name in INIT_EXPORTS if isinstance(exports.get(name), wasmtime.Func)), None)
        if init is not None:
            self._core.call(EXPORTS.index(init))

    def _init_failure(self, exc: BaseException) -> GuestError | None:
        """Why initialization failed; None for proc_exit(0) (a start function's normal end)."""
        if isinstance(exc, GuestTrap):
            code, message, where = exc.exit_code, exc.message, f" in {exc.export}" if exc.export else ""
        else:  # the start section trapped (raised by wasmtime's instantiate)
            code = getattr(exc, "code", None)
            message, where = (f"exited with code {code}" if code is not None else first_line(exc)), ""
        if code == 0:
            self.closed = False
            return None
        limits = self._module_ref.limits
        if (isinstance(exc, GuestTrap) and exc.status == 503) or \
                getattr(exc, "trap_code", None) == wasmtime.TrapCode.INTERRUPT:
            message = (f"exceeded the CPU time limit for init ({limits.init_timeout:g} s); fix: raise "
                       "init_timeout (init_timeout: ... in the guest's config, Guest(init_timeout=...))")
        return GuestError(self.name, f"failed to initialize{where}: {message}{self.memory_hint(message)}")

    def memory_hint(self, message: str) -> str:
        """When a failure looks like the memory_limit at work: what the guest has, the limit and the fix."""
        limit = self._module_ref.limits.memory_bytes
        size = self.memory_size() if self._memory_addr else 0
        if size <= limit // 2 and not any(word in message.lower() for word in ("memory", "alloc")):
            return ""
        have = f"linear memory is {size / 2**20:.1f} MiB, " if size else ""
        return (f" ({have}memory_limit is {limit / 2**20:.0f} MiB: memory past it is refused; fix: raise "
                f"memory_limit (memory_limit: ... in the guest's config, Guest(memory_limit=...)))")

    def capture(self, memory_export: str | None, global_exports: Sequence[str]) -> tuple[bytes, list[int | float]]:
        """The whole linear memory and the values of these exported globals (a snapshot after init)."""
        exports = self._store_exports
        memory = exports.get(memory_export) if memory_export else None
        data = b""
        if isinstance(memory, wasmtime.Memory):
            size = memory.data_len(self._store)
            data = self.read(0, size) if memory_export == abi.EXPORT_MEMORY else \
                bytes(memory.read(self._store, 0, size))
        values: list[int | float] = []
        for name in global_exports:
            item = exports.get(name)
            if not isinstance(item, wasmtime.Global):
                raise GuestError(self.name, f"snapshot: export {name!r} is not a global")
            values.append(item.value(self._store))
        return data, values

    @property
    def release_gil(self) -> bool:
        """True when called from a worker thread (see Guest(threaded=True)): wasm runs without the GIL."""
        return bool(self._core.release_gil)

    @release_gil.setter
    def release_gil(self, value: bool) -> None:
        self._core.release_gil = bool(value)

    async def finish(self) -> Any:
        """The rest of a call that start_request/start_response left SUSPENDED; what the call returns.

        Raises GuestTrap as the call would. If the awaiting task is cancelled, the call is
        abandoned (wasmtime unwinds it) and the instance is closed: release it with discard.
        """
        core = self._core
        try:
            return await scheduler().add(core)
        except asyncio.CancelledError:
            core.cancel()
            self.closed = True
            raise

    def _raise_trap(self, index: int) -> None:
        """The running call trapped or ran out of time: raise it as GuestTrap (called by the Core)."""
        core = self._core
        trap, err, timed_out = core.take_trap()
        self.closed = True
        export = EXPORTS[index] if index < len(EXPORTS) else ""  # past them: instantiation
        error = self._trap_error(export, trap, err, core.trap_status, timed_out)
        if self._stats is not None and index < 2:
            self._stats.count_trap(export, self._trap_cause(error, timed_out))
        raise error

    def trap_cause(self, error: GuestTrap) -> str:
        """What ended a call that raised `error` (as the traps metric names it), after the fact."""
        return self._trap_cause(error, False)

    def _trap_cause(self, error: GuestTrap, timed_out: bool) -> str:
        """cpu_limit, memory_limit (the instance held over half its memory_limit: a refused memory.grow is
        the likely cause), exit (proc_exit) or trap."""
        if timed_out or error.status == 503:
            return "cpu_limit"
        if self.memory_size() > self._module_ref.limits.memory_bytes // 2:
            return "memory_limit"
        return "exit" if error.exit_code is not None else "trap"

    def _trap_error(self, export: str, trap_ptr: int, err_ptr: int, status: int, timed_out: bool) -> GuestTrap:
        exit_code = None
        if timed_out:
            message = f"exceeded the CPU time limit ({self._module_ref.limits.call_timeout:g} s)"
            status = 503
        elif err_ptr:
            exc = wasmtime.WasmtimeError._from_ptr(ctypes.cast(err_ptr, ctypes.POINTER(ffi.wasmtime_error_t)))
            exit_code = getattr(exc, "code", None)
            message = f"exited with code {exit_code}" if exit_code is not None else first_line(exc)
        else:
            trap = wasmtime.Trap._from_ptr(ctypes.cast(trap_ptr, ctypes.POINTER(ffi.wasm_trap_t)))
            code = trap.trap_code
            if code == wasmtime.TrapCode.INTERRUPT:
                message = f"exceeded the CPU time limit ({self._module_ref.limits.call_timeout:g} s)"
                status = 503
            else:
                message = first_line(trap)
        return GuestTrap(self.name, export, message, status=status, exit_code=exit_code)

    # -- guest memory, for host functions --
    def _bind_memory_from_caller(self, caller: int) -> None:
        """During instantiation (start section) the memory export is found through the caller."""
        item = ffi.wasmtime_extern_t()
        if not capi.caller_export_get(caller, b"memory", 6, ctypes.addressof(item)) or \
                int(item.kind) != ffi.WASMTIME_EXTERN_MEMORY.value:
            raise HostTrap("guest has no exported memory")
        self._set_memory(item.of.memory)

    def _set_memory(self, memory: Any) -> None:
        self._memory = memory
        self._memory_addr = ctypes.addressof(memory)
        self._base = int(capi.memory_data(self._ctx, self._memory_addr))
        self._size = int(capi.memory_data_size(self._ctx, self._memory_addr))
        self._core.set_memory(self._memory_addr, self._base, self._size)

    def _in_bounds(self, end: int) -> bool:
        if end <= self._size:
            return True
        self._size = int(capi.memory_data_size(self._ctx, self._memory_addr))  # the guest may have grown it
        return end <= self._size

    def read(self, ptr: int, length: int) -> bytes:
        """Guest memory [ptr, ptr+length); traps on out-of-bounds."""
        if length == 0:
            return _EMPTY
        if ptr + length > self._size and not self._in_bounds(ptr + length):
            raise HostTrap(f"out of bounds memory read [{ptr}, {ptr + length})")
        start = self._base + ptr
        return capi.ADDRESS_SPACE[start:start + length].tobytes()

    def write(self, ptr: int, data: bytes) -> None:
        """Write data at guest memory ptr; traps on out-of-bounds."""
        n = len(data)
        if ptr + n > self._size and not self._in_bounds(ptr + n):
            raise HostTrap(f"out of bounds memory write [{ptr}, {ptr + n})")
        if n:
            start = self._base + ptr
            capi.ADDRESS_SPACE[start:start + n] = data

    def memory_size(self) -> int:
        return int(capi.memory_data_size(self._ctx, self._memory_addr)) if self._memory_addr else 0

    def own_memory(self) -> int | None:
        """Bytes of linear memory this instance holds alone: the pages it wrote (its copies of the snapshot
        image's pages, and pages past it), not the image it maps shared. From /proc/self/pagemap (Linux);
        None where that cannot be read. A few tens of microseconds for 100 MiB of memory: not per request."""
        size = self.memory_size()
        if not size:
            return 0
        try:
            fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        except OSError:
            return None
        try:
            entries = os.pread(fd, size // PAGE * 8, self._base // PAGE * 8)
        except OSError:
            return None
        finally:
            os.close(fd)
        return entries[7::8].translate(_OWN_PAGE).count(1) * PAGE

    def output(self, fd: int, data: bytes) -> None:
        if self.output_fn is not None:
            self.output_fn(fd, data)

    def close(self) -> None:
        """Drop the store (and so the instance and its memory)."""
        self.closed = True
        self._memory_addr = 0
        self.host = None
        self._core.close()  # no call can reach the dropped store; breaks the core <-> instance cycle
        self.handle_request = self.handle_response = self.request = self.response = _closed
        self._store_exports = None  # type: ignore[assignment]
        self._store = None  # type: ignore[assignment]


def _closed(*_: Any) -> Any:
    raise RuntimeError("guest instance is closed")


_native.learn("instance", WasmInstance)
