"""Guest calls, two implementations of one interface (as uvicorn has two HTTP protocols):

- the **native path** (`_native`, C, built at install): a `Core` per instance makes a guest call one
  C call (~0.05 us), host functions are entered through a C trampoline (~0.1 us to a Python host
  function), and the hottest host functions are native (~0.02 us), with the Python ones in host.py
  as their reference;
- the **Python path** (`PythonCore` here, over wasmtime's C API through ctypes), the reference and
  the fallback when the native path is not built or HTTP_WASM_ASGI_NO_NATIVE is set.

A `CallPath` names one of them; each `WasmModule` is bound to one for its life (its linker's host
functions and its instances' cores must match), and new modules take `default_path()`. Both paths
can live in one process: the tests run the per-request path on each (`using_path`).

Threading: a guest call runs on the calling thread. The native path keeps the GIL during the call
(cheaper) unless the instance's `release_gil` is set (Guest(threaded=True)); ctypes always releases
it. Either way the epoch ticker interrupts an endless loop.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import wasmtime
from wasmtime import _ffi as ffi

from .. import _native, abi
from ..errors import HostTrap
from . import capi
from .stats import CALL_BUCKETS_NS, STATS_SHORT, STATS_SIZE, count_call

log = logging.getLogger("http_wasm_asgi.runtime")  # the name operators configure, kept

# A host function receives the instance's host object first, then the wasm
# arguments as unsigned ints; it returns an int for functions with a result.
HostFunction = Callable[..., int | None]

EXPORTS: Final = (abi.EXPORT_HANDLE_REQUEST, abi.EXPORT_HANDLE_RESPONSE, abi.EXPORT_INITIALIZE,
                  abi.EXPORT_START)  # export index -> name (a Core numbers them)
INIT_EXPORTS: Final = (abi.EXPORT_INITIALIZE, abi.EXPORT_START)  # the first one exported runs at init
# Cooperative calls (see WasmInstance.start_request and scheduler.CallScheduler):
SUSPENDED: Final = -1  # what start_request/start_response return when the guest yielded: await finish()
TURN_SECONDS: Final = 0.001  # guest time per event-loop turn; later first slices wait for the next turn
TURN_NS: Final = int(TURN_SECONDS * 1e9)
LONG_CALL_SECONDS: Final = 0.005  # a suspended call that used more is "long": it yields to shorter ones ...
LONG_CALL_NS: Final = int(LONG_CALL_SECONDS * 1e9)  # ... and its clock counts part of the time it waited:
LONG_WAIT: Final = 0.5  # held to a small share of a busy loop, it still ends within ~call_timeout / LONG_WAIT


class _Thread(threading.local):
    """Per-thread state of the ctypes path (the native path keeps the same in C thread-locals)."""

    core: PythonCore | None = None  # whose guest code runs on this thread
    slices = 0  # ns of guest slices ever run on this thread
    turn_start = 0  # ns: the current turn (see TURN_SECONDS)
    turn_busy = 0  # ns of guest time in the current turn
    quick = 0  # cooperative calls that ended in their first slice


_ct_local = _Thread()


def _trap(message: str) -> int:
    data = message.encode("utf-8", "replace")
    return int(capi.trap_new(data, len(data)))


_AFTER_NONE, _AFTER_RESULT, _AFTER_REQUEST, _AFTER_RESPONSE = range(4)  # what completing a call returns/does
_DONE, _SUSPENDED, _FAILED = 0, 1, -1


# The native ticker's two signals (a slice runs: +1/-1; a slice of a call that yielded before begins), which the
# Python path sends too, so the ticker serves its calls; None without the native module (the ticker is then a
# Python thread).
_SLICE_RUNNING: Final = getattr(_native.EXT, "slice_running", None)
_WAKE_TICKER: Final = getattr(_native.EXT, "wake_ticker", None)


class PythonCore:
    """One instance's call path through ctypes: the interface of the native path's `Core`.

    Core(owner, store, context address, budget seconds) makes the store yield to its caller at
    every epoch tick; `set_func(index, func address)` for each export of `EXPORTS`.
    Calls that run to their end: `instantiate(instance_pre, instance_t address)`, `call(index)`,
    `handle_request()`, `handle_response(req_ctx, is_error)`, `request(exchange, features)`
    (host.begin, handle_request, host.after_next on next) and `response(req_ctx, is_error)`
    (handle_response, host.end). Cooperative calls: `start_request`/`start_response` return
    SUSPENDED when the guest did not finish in its first slice (or the event loop's turn was
    used up); `resume()` runs one more slice, `cancel()` abandons the call. `sync_response`: the
    guest's handle_response cannot loop, and the native path calls it as one synchronous call (never
    SUSPENDED); this path calls it as any other.
    A call's clock is its own slices plus, once it is long (LONG_CALL_SECONDS of guest time),
    LONG_WAIT of the non-guest time that ran on its thread while it was suspended (a short call is
    never timed out for waiting on a busy loop); past `budget` seconds it is cancelled (`take_trap`
    says timed out, status 503).
    A trap is kept (`take_trap`) and raised by `owner._raise_trap(index)`. `trap_status` is the
    HTTP status of the running call's trap (a host function may set it); `host` is what Python
    host functions get first; `used` the seconds of guest time of the running (or last) call.
    """

    __slots__ = ("_after", "_args", "_ctx", "_err", "_funcs", "_future", "_index", "_others0", "_own", "_ptrs",
                 "_results", "_start_ns", "_stats", "_trap", "_yielded", "budget", "host", "owner", "release_gil",
                 "store", "sync_response", "timed_out", "trap_status")

    def __init__(self, owner: Any, store: Any, ctx: int, budget: float) -> None:
        self.owner = owner
        self.store = store
        self.host: Any = None
        self._ctx: int | None = ctx
        self.budget = budget
        self.trap_status = 500
        self.release_gil = False  # ctypes releases the GIL in every foreign call anyway
        self.sync_response = False  # kept for the interface: this path makes every call the same way
        self.timed_out = False
        self._funcs: list[int | None] = [None] * len(EXPORTS)
        self._args = (ffi.wasmtime_val_t * 2)()
        self._results = (ffi.wasmtime_val_t * 1)()
        self._trap = ctypes.c_void_p()
        self._err = ctypes.c_void_p()
        self._ptrs = (ctypes.addressof(self._args), ctypes.addressof(self._results), ctypes.addressof(self._trap),
                      ctypes.addressof(self._err))
        self._future: int | None = None
        self._yielded = False  # the running call was suspended at least once (its slices wake the ticker)
        self._index = self._after = 0
        self._start_ns = self._own = self._others0 = 0
        self._stats: array.array[int] | None = None
        capi.yield_update(ctx, 1)

    @property
    def used(self) -> float:
        return self._own / 1e9

    def set_func(self, index: int, func: int) -> None:
        self._funcs[index] = func

    def set_memory(self, memory: int, base: int, size: int) -> None:
        """Nothing to cache: host functions read memory through the owner (WasmInstance.read)."""

    def set_stats(self, counts: array.array[int] | None) -> None:
        """Count this instance's calls in `counts` (CallStats.counts), or not (None)."""
        self._stats = counts

    def take_trap(self) -> tuple[int, int, bool]:
        got = (self._trap.value or 0, self._err.value or 0, self.timed_out)
        self._trap.value = self._err.value = None
        self.timed_out = False
        return got

    def cancel(self) -> None:
        if self._future is not None:
            self._yielded = False
            future, self._future = self._future, None
            if getattr(self.store, "_Managed__ptr", None) is not None:  # else the store is gone: leave it
                capi.future_delete(future)  # wasmtime unwinds the call's fiber

    def close(self) -> None:
        self.cancel()
        self._ctx = None
        self._funcs = [None] * len(EXPORTS)
        self.host = self.owner = self.store = None

    def _slice(self, t0: int) -> int:
        local = _ct_local
        prev, local.core = local.core, self
        running = _SLICE_RUNNING
        if running is not None:
            running(1)
            if self._yielded and _WAKE_TICKER is not None:
                _WAKE_TICKER()
        try:
            done = capi.future_poll(self._future)
        finally:
            local.core = prev
            if running is not None:
                running(-1)
        t1 = time.perf_counter_ns()
        d = t1 - t0
        self._own += d
        local.slices += d
        local.turn_busy += d
        if done:
            self._yielded = False
            capi.future_delete(self._future)
            self._future = None
            if self._stats is not None and self._index < 2:
                count_call(self._stats, self._index, t1 - self._start_ns)
            if self._trap.value or self._err.value:
                return self._raise()
            return _DONE
        budget = self.budget * 1e9  # the clock: as in the native path's slice() (_native/core.c)
        waited = (t1 - self._start_ns) - (local.slices - self._others0)  # non-guest time since the call began
        if self._own >= budget or (self._own >= LONG_CALL_NS and self._own + LONG_WAIT * waited >= budget):
            self.cancel()
            if self._stats is not None and self._index < 2:
                count_call(self._stats, self._index, t1 - self._start_ns)
            self.timed_out = True
            self.trap_status = 503
            return self._raise()
        self._yielded = True  # its next slices wake an idle ticker
        return _SUSPENDED

    def _raise(self) -> int:
        self.owner._raise_trap(self._index)
        raise RuntimeError("guest call failed")

    def _run(self, cooperative: bool) -> int:
        local = _ct_local
        t = time.perf_counter_ns()
        self._start_ns, self._own, self._others0 = t, 0, local.slices
        if cooperative:
            if t - local.turn_start >= 2 * TURN_NS:
                local.turn_start, local.turn_busy = t, 0
            if local.turn_busy >= TURN_NS:
                return _SUSPENDED  # deferred: let the event loop run first
        rc = self._slice(t)
        if not cooperative:
            while rc == _SUSPENDED:
                rc = self._slice(time.perf_counter_ns())
        elif rc == _DONE:
            local.quick += 1
        return rc

    def _begin(self, index: int, after: int, future: Callable[[], int]) -> None:
        if self._ctx is None or (index < len(EXPORTS) and self._funcs[index] is None):
            raise RuntimeError("guest instance is closed")
        if self._future is not None:
            raise RuntimeError("a call is already running on this instance")
        self._trap.value = self._err.value = None
        self.timed_out = False
        self.trap_status = 500
        self._index, self._after = index, after
        capi.set_epoch_deadline(self._ctx, 1)  # the first slice ends at the next tick
        self._future = future()

    def _call(self, index: int, after: int, cooperative: bool) -> Any:
        nargs, nresults = (2 if index == 1 else 0), (1 if index == 0 else 0)
        args, results, trap, err = self._ptrs
        self._begin(index, after, lambda: int(capi.call_async(self._ctx, self._funcs[index], args, nargs, results,
                                                          nresults, trap, err)))
        return self._complete(self._run(cooperative))

    def _complete(self, rc: int) -> Any:
        if rc == _SUSPENDED:
            return SUSPENDED
        after = self._after
        if after == _AFTER_NONE:
            return None
        if after == _AFTER_RESPONSE:
            self.host.end()
            return None
        ctx_next = self._results[0].of.i64 & 0xFFFF_FFFF_FFFF_FFFF
        if after == _AFTER_REQUEST:
            if ctx_next & 1:
                self.host.after_next()
            elif self._stats is not None:
                self._stats[STATS_SHORT] += 1
        return ctx_next

    def _set_response_args(self, req_ctx: int, is_error: bool) -> None:
        args = self._args
        args[0].kind = args[1].kind = 0  # type: ignore[assignment]  # WASMTIME_I32
        args[0].of.i32 = ctypes.c_int32(req_ctx & 0xFFFF_FFFF).value
        args[1].of.i32 = 1 if is_error else 0

    def instantiate(self, pre: int, out: int) -> None:
        _, _, trap, err = self._ptrs
        self._begin(len(EXPORTS), _AFTER_NONE, lambda: int(capi.instantiate_async(pre, self._ctx, out, trap, err)))
        self._complete(self._run(False))

    def call(self, index: int) -> None:
        self._call(index, _AFTER_NONE, False)

    def handle_request(self) -> int:
        return int(self._call(0, _AFTER_RESULT, False))

    def handle_response(self, req_ctx: int, is_error: bool) -> None:
        self._set_response_args(req_ctx, is_error)
        self._call(1, _AFTER_NONE, False)

    def request(self, exchange: Any, features: int) -> int:
        self.host.begin(exchange, features)
        return int(self._call(0, _AFTER_REQUEST, False))

    def start_request(self, exchange: Any, features: int) -> int:
        self.host.begin(exchange, features)
        return int(self._call(0, _AFTER_REQUEST, True))

    def response(self, req_ctx: int, is_error: bool) -> None:
        self._set_response_args(req_ctx, is_error)
        self._call(1, _AFTER_RESPONSE, False)

    def start_response(self, req_ctx: int, is_error: bool) -> int | None:
        self._set_response_args(req_ctx, is_error)
        return self._call(1, _AFTER_RESPONSE, True)  # type: ignore[no-any-return]

    def resume(self) -> Any:
        if self._future is None:
            raise RuntimeError("no suspended call on this instance")
        t = time.perf_counter_ns()
        _ct_local.turn_start, _ct_local.turn_busy = t, 0
        return self._complete(self._slice(t))

    @staticmethod
    def set_current(core: PythonCore | None) -> PythonCore | None:
        """Make `core` the one whose guest code runs on this thread (instantiation); the previous one."""
        prev = _ct_local.core
        _ct_local.core = core
        return prev

    @staticmethod
    def quick_calls() -> int:
        return _ct_local.quick


def _make_callback(name: str, fn: HostFunction, nparams: int, nresults: int, *, on_instance: bool = False) -> Any:
    unpack = capi.ARG_STRUCTS[nparams].unpack_from
    pack = capi.RESULT.pack_into
    space = capi.ADDRESS_SPACE

    def callback(_env: int | None, caller: int, values: int, _n: int) -> int:
        core = _ct_local.core
        try:
            inst = core.owner  # type: ignore[union-attr]
            if inst._memory_addr == 0:
                inst._bind_memory_from_caller(caller)
            target = inst if on_instance else core.host  # type: ignore[union-attr]
            result = fn(target, *unpack(space, values)) if nparams else fn(target)
            if nresults:
                pack(space, values, result & 0xFFFF_FFFF_FFFF_FFFF)  # type: ignore[operator]
            return 0
        except BaseException as exc:  # a host bug must trap the guest, never unwind through wasm
            return _trap(host_error(name, exc, core))

    return capi.CALLBACK(callback)


def host_error(name: str, exc: BaseException, core: Any) -> str:
    """A host function failed: the trap message (and the call's status, on its core)."""
    if isinstance(exc, HostTrap):
        if core is not None:
            core.trap_status = exc.status
        return f"{name}: {exc}"
    log.error("host function %s failed", name, exc_info=exc)
    return f"{name}: host error: {type(exc).__name__}"


def define_python(linker: wasmtime.Linker, module: bytes, name: bytes, functype: wasmtime.FuncType,
                  fn: HostFunction, nparams: int, nresults: int, on_instance: bool, native: bool,
                  keep: list[Any]) -> int:
    """Define host function `name` on `linker` as a ctypes callback (the Python path)."""
    callback = _make_callback(name.decode(), fn, nparams, nresults, on_instance=on_instance)
    keep.append((callback, functype))  # alive as long as the module's linker
    err = capi.linker_define_unchecked(ctypes.cast(linker.ptr(), capi.VP), module, len(module), name, len(name),
                                       ctypes.cast(functype.ptr(), capi.VP), callback, None, capi.NO_FINALIZER)
    return int(err or 0)




# --- the two paths ---
Define = Callable[[wasmtime.Linker, bytes, bytes, wasmtime.FuncType, HostFunction, int, int, bool, bool, list[Any]],
                  int]


@dataclass(frozen=True)
class CallPath:
    """One implementation of guest calls: what a module links its host functions with and its
    instances call through."""

    name: str  # "native" or "python"
    core: Callable[..., Any]  # Core(owner, store, context address, budget seconds)
    set_current: Callable[[Any], Any]  # make a core the one whose guest code runs on this thread
    quick_calls: Callable[[], int]  # cooperative calls on this thread that ended in their first slice
    define: Define  # define a host function on a linker

    @property
    def native(self) -> bool:
        return self.name == "native"


PYTHON_PATH: Final = CallPath("python", PythonCore, PythonCore.set_current, PythonCore.quick_calls, define_python)


def _native_path() -> CallPath | None:
    ext = _native.bind_calls(capi.address, host_error, TURN_SECONDS, 2 * TURN_SECONDS, LONG_CALL_SECONDS, LONG_WAIT,
                             (CALL_BUCKETS_NS, STATS_SIZE))
    if ext is None:
        return None
    define_address = capi.address("wasmtime_linker_define_func_unchecked")

    def define(linker: wasmtime.Linker, module: bytes, name: bytes, functype: wasmtime.FuncType, fn: HostFunction,
               nparams: int, nresults: int, on_instance: bool, native: bool, keep: list[Any]) -> int:
        keep.append(functype)
        return int(ext.define(define_address, ctypes.cast(linker.ptr(), capi.VP).value, module, name,
                              ctypes.cast(functype.ptr(), capi.VP).value, fn, nparams, nresults, on_instance, native))

    return CallPath("native", ext.Core, ext.set_current, ext.quick_calls, define)


NATIVE_PATH: Final = _native_path()  # None when the native path is not built (or turned off)
_default = NATIVE_PATH or PYTHON_PATH


def default_path() -> CallPath:
    """The path new modules use: native when built (and not turned off), else Python."""
    return _default


@contextlib.contextmanager
def using_path(path: CallPath) -> Iterator[CallPath]:
    """Modules created inside use `path` (the tests run the per-request path on both)."""
    global _default
    saved, _default = _default, path
    try:
        yield path
    finally:
        _default = saved


def quick_calls() -> int:
    """Cooperative calls on this thread, on either path, that ended in their first slice."""
    return PythonCore.quick_calls() + (NATIVE_PATH.quick_calls() if NATIVE_PATH is not None else 0)
