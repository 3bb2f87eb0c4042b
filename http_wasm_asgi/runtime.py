"""The one module that talks to wasmtime.

Everything that compiles, links, instantiates or calls into WebAssembly lives
here, so the rest of the package never sees wasmtime, ctypes or the C
accelerator. It knows the ABI's names (`abi`) but no HTTP: the composition
layer (`guest.py`) hands it the host's classes with `bind_native_host`. Hot
calls (guest exports, host functions, memory access) go through wasmtime's
*unchecked* C API: the high-level `wasmtime.Func.__call__` costs ~16 us a call
and each `Linker.define_func` host function 6-11 us.

Two implementations of the same calls, chosen once at import (`Core`,
`_define_host`, `_start_ticker`, `set_current`):
- the optional C accelerator (`_fastpath.c`, built at install): a `Core` per
  instance makes a guest call one C call (~0.05 us), host functions are entered
  through a C trampoline (~0.1 us to a Python host function), and the hottest
  host functions are native (~0.02 us) with the Python ones in host.py as their
  reference and fallback (see NATIVE_HOST_FUNCTIONS);
- ctypes (`PyCore` below, the same interface), when the accelerator is not built
  or HTTP_WASM_ASGI_NO_FASTPATH is set.

Threading: a guest call runs on the calling thread. The accelerator keeps the
GIL during the call (cheaper) unless the instance's `release_gil` is set
(Guest(threaded=True)); ctypes always releases it. Either way the epoch ticker
(a native thread with the accelerator) interrupts an endless loop.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import functools
import hashlib
import importlib
import logging
import os
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import wasmtime
from wasmtime import _ffi as ffi

from . import abi
from .errors import GuestError, GuestTrap, HostTrap

__all__ = [
    "CALL_BUCKETS_NS",
    "EPOCH_TICK_SECONDS",
    "SUSPENDED",
    "CallStats",
    "HostFunction",
    "Limits",
    "ModuleInfo",
    "WasiOptions",
    "WasmInstance",
    "WasmModule",
    "accelerated",
    "bind_native_host",
    "check_binding",
    "wasmtime_version",
]

log = logging.getLogger("http_wasm_asgi.runtime")

# A host function receives the instance's host object first, then the wasm
# arguments as unsigned ints; it returns an int for functions with a result.
HostFunction = Callable[..., int | None]

EPOCH_TICK_SECONDS: Final = 0.001  # a guest call yields to its caller at every tick: the slice length
WASMTIME_MAJOR: Final = 50
FASTPATH_VERSION: Final = 11  # the _fastpath.c this module was written for (its VERSION)
# Cooperative calls (see WasmInstance.start_request and _Slices):
SUSPENDED: Final = -1  # what start_request/start_response return when the guest yielded: await finish()
TURN_SECONDS: Final = 0.001  # guest time per event-loop turn; later first slices wait for the next turn
TURN_NS: Final = int(TURN_SECONDS * 1e9)
LONG_CALL_SECONDS: Final = 0.01  # a suspended call that used more is "long": it yields to shorter ones ...
LONG_CALL_NS: Final = int(LONG_CALL_SECONDS * 1e9)  # ... and its clock counts the time it waited
LONG_SHARE: Final = 0.1  # ... and gets at most this share of the loop while other requests are served
_EMPTY: Final = b""
# Call counters (CallStats.counts, the accelerator's layout): per phase [calls, ns, a count per bucket, +Inf]
CALL_BUCKETS_NS: Final = (5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
                          5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000, 1_000_000_000)
_STATS_STRIDE: Final = 2 + len(CALL_BUCKETS_NS) + 1
_STATS_SHORT: Final = 2 * _STATS_STRIDE
STATS_SIZE: Final = _STATS_SHORT + 1

# --- raw C entry points, with argument types chosen for speed (plain ints) ---
_dll = ffi.dll
_VP = ctypes.c_void_p


def _cfunc(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = _dll[name]  # a fresh function pointer: our argtypes, not wasmtime-py's
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


def _address(name: str) -> int:
    """The address of a wasmtime C function (handed to the accelerator)."""
    return int(ctypes.cast(getattr(_dll, name), _VP).value or 0)


_call_async = _cfunc("wasmtime_func_call_async", _VP, _VP, _VP, _VP, ctypes.c_size_t, _VP, ctypes.c_size_t, _VP, _VP)
_instantiate_async = _cfunc("wasmtime_instance_pre_instantiate_async", _VP, _VP, _VP, _VP, _VP, _VP)
_future_poll = _cfunc("wasmtime_call_future_poll", ctypes.c_bool, _VP)
_future_delete = _cfunc("wasmtime_call_future_delete", None, _VP)
_yield_update = _cfunc("wasmtime_context_epoch_deadline_async_yield_and_update", None, _VP, ctypes.c_uint64)
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
    if _RAW_SIZE != 16 or ctypes.sizeof(ffi.wasmtime_val_t) != 32:
        raise RuntimeError(f"unexpected wasmtime_val_raw/wasmtime_val size {_RAW_SIZE}/"
                           f"{ctypes.sizeof(ffi.wasmtime_val_t)}")


check_binding()


def _load_accelerator() -> Any:
    """The optional C accelerator (http_wasm_asgi/_fastpath.c), configured; None when not built."""
    try:
        if os.environ.get("HTTP_WASM_ASGI_NO_FASTPATH"):
            raise ImportError("disabled by HTTP_WASM_ASGI_NO_FASTPATH")
        _fastpath: Any = importlib.import_module("._fastpath", __package__)
    except ImportError:  # not compiled (no C compiler at install): the ctypes path does the same
        return None
    version = getattr(_fastpath, "VERSION", None)
    if version != FASTPATH_VERSION or getattr(_fastpath, "STATS_BUCKETS_NS", None) != CALL_BUCKETS_NS \
            or getattr(_fastpath, "STATS_SIZE", None) != STATS_SIZE:
        log.warning("http_wasm_asgi._fastpath is a stale build (VERSION %s, expected %s): reinstall the "
                    "package to rebuild it", version, FASTPATH_VERSION)
        return None
    _fastpath.configure(*map(_address, (
        "wasmtime_func_call_async", "wasmtime_instance_pre_instantiate_async", "wasmtime_call_future_poll",
        "wasmtime_call_future_delete", "wasmtime_context_epoch_deadline_async_yield_and_update",
        "wasmtime_context_set_epoch_deadline", "wasmtime_trap_new", "wasmtime_engine_increment_epoch",
        "wasmtime_memory_data_size")), _host_error)
    _fastpath.set_turn(TURN_SECONDS, 2 * TURN_SECONDS, LONG_CALL_SECONDS)
    return _fastpath


class CallStats:
    """What one guest's calls did: counted on the call path (by the accelerator, in C), read at scrape time.

    `counts` holds plain integers the Core bumps when a call of handle_request or handle_response ends
    (calls, nanoseconds, a histogram of durations) or when handle_request answers itself; traps and new
    instances, which are rare, are counted in Python. Shared by every instance of a guest.
    """

    __slots__ = ("closed_pool_timeouts", "counts", "created", "traps")

    def __init__(self) -> None:
        self.counts = array.array("Q", bytes(8 * STATS_SIZE))
        self.traps: dict[tuple[str, str], int] = {}  # (export, cause) -> traps
        self.created: dict[str, int] = {}  # how instances started ("init", "snapshot") -> instances
        self.closed_pool_timeouts = 0  # pool timeouts of this guest's closed pools (open ones count their own)

    def calls(self, phase: int) -> int:
        """Calls of handle_request (phase 0) or handle_response (1) that ended."""
        return int(self.counts[phase * _STATS_STRIDE])

    def histogram(self, phase: int) -> tuple[list[int], float]:
        """Cumulative counts per bound of CALL_BUCKETS_NS then +Inf, and the seconds of all calls."""
        base = phase * _STATS_STRIDE
        buckets, total = [], 0
        for count in self.counts[base + 2:base + _STATS_STRIDE]:
            total += count
            buckets.append(total)
        return buckets, self.counts[base + 1] / 1e9

    @property
    def short_circuits(self) -> int:
        return int(self.counts[_STATS_SHORT])

    def count_trap(self, export: str, cause: str) -> None:
        self.traps[export, cause] = self.traps.get((export, cause), 0) + 1


def _count_call(counts: array.array[int], index: int, ns: int) -> None:
    """The ctypes path's version of the accelerator's count_call."""
    base = index * _STATS_STRIDE
    bucket = 0
    while bucket < len(CALL_BUCKETS_NS) and ns > CALL_BUCKETS_NS[bucket]:
        bucket += 1
    counts[base] += 1
    counts[base + 1] += ns
    counts[base + 2 + bucket] += 1


# --- the ctypes implementation of the accelerator's interface ---
class _Thread(threading.local):
    """Per-thread state of the ctypes path (the accelerator keeps the same in C thread-locals)."""

    core: PyCore | None = None  # whose guest code runs on this thread
    slices = 0  # ns of guest slices ever run on this thread
    turn_start = 0  # ns: the current turn (see TURN_SECONDS)
    turn_busy = 0  # ns of guest time in the current turn
    quick = 0  # cooperative calls that ended in their first slice


_ct_local = _Thread()


def _trap(message: str) -> int:
    data = message.encode("utf-8", "replace")
    return int(_trap_new(data, len(data)))


_AFTER_NONE, _AFTER_RESULT, _AFTER_REQUEST, _AFTER_RESPONSE = range(4)  # what completing a call returns/does
_DONE, _SUSPENDED, _FAILED = 0, 1, -1


class PyCore:
    """One instance's call path through ctypes: the interface of the accelerator's `_fastpath.Core`.

    Core(owner, store, context address, budget seconds) makes the store yield to its caller at
    every epoch tick; `set_func(index, func address)` for each export of `_EXPORTS`.
    Calls that run to their end: `instantiate(instance_pre, instance_t address)`, `call(index)`,
    `handle_request()`, `handle_response(req_ctx, is_error)`, `request(exchange, features)`
    (host.begin, handle_request, host.after_next on next) and `response(req_ctx, is_error)`
    (handle_response, host.end). Cooperative calls: `start_request`/`start_response` return
    SUSPENDED when the guest did not finish in its first slice (or the event loop's turn was
    used up); `resume()` runs one more slice, `cancel()` abandons the call.
    A call's clock is its own slices plus, once it is long (LONG_CALL_SECONDS of guest time), the
    non-guest time that ran on its thread while it was suspended (a short call is never timed out
    for waiting on a busy loop); past `budget` seconds it is cancelled (`take_trap` says timed
    out, status 503).
    A trap is kept (`take_trap`) and raised by `owner._raise_trap(index)`. `trap_status` is the
    HTTP status of the running call's trap (a host function may set it); `host` is what Python
    host functions get first; `used` the seconds of guest time of the running (or last) call.
    """

    __slots__ = ("_after", "_args", "_ctx", "_err", "_funcs", "_future", "_index", "_others0", "_own", "_ptrs",
                 "_results", "_start_ns", "_stats", "_trap", "budget", "host", "owner", "release_gil", "store",
                 "timed_out", "trap_status")

    def __init__(self, owner: Any, store: Any, ctx: int, budget: float) -> None:
        self.owner = owner
        self.store = store
        self.host: Any = None
        self._ctx: int | None = ctx
        self.budget = budget
        self.trap_status = 500
        self.release_gil = False  # ctypes releases the GIL in every foreign call anyway
        self.timed_out = False
        self._funcs: list[int | None] = [None] * len(_EXPORTS)
        self._args = (ffi.wasmtime_val_t * 2)()
        self._results = (ffi.wasmtime_val_t * 1)()
        self._trap = ctypes.c_void_p()
        self._err = ctypes.c_void_p()
        self._ptrs = (ctypes.addressof(self._args), ctypes.addressof(self._results), ctypes.addressof(self._trap),
                      ctypes.addressof(self._err))
        self._future: int | None = None
        self._index = self._after = 0
        self._start_ns = self._own = self._others0 = 0
        self._stats: array.array[int] | None = None
        _yield_update(ctx, 1)

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
            future, self._future = self._future, None
            if getattr(self.store, "_Managed__ptr", None) is not None:  # else the store is gone: leave it
                _future_delete(future)  # wasmtime unwinds the call's fiber

    def close(self) -> None:
        self.cancel()
        self._ctx = None
        self._funcs = [None] * len(_EXPORTS)
        self.host = self.owner = self.store = None

    def _slice(self, t0: int) -> int:
        local = _ct_local
        prev, local.core = local.core, self
        try:
            done = _future_poll(self._future)
        finally:
            local.core = prev
        t1 = time.perf_counter_ns()
        d = t1 - t0
        self._own += d
        local.slices += d
        local.turn_busy += d
        if done:
            _future_delete(self._future)
            self._future = None
            if self._stats is not None and self._index < 2:
                _count_call(self._stats, self._index, t1 - self._start_ns)
            if self._trap.value or self._err.value:
                return self._raise()
            return _DONE
        budget = self.budget * 1e9  # the clock: as in _fastpath.c's slice()
        if self._own >= budget or (self._own >= LONG_CALL_NS and
                                   (t1 - self._start_ns) - (local.slices - self._others0 - self._own) >= budget):
            self.cancel()
            if self._stats is not None and self._index < 2:
                _count_call(self._stats, self._index, t1 - self._start_ns)
            self.timed_out = True
            self.trap_status = 503
            return self._raise()
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
        if self._ctx is None or (index < len(_EXPORTS) and self._funcs[index] is None):
            raise RuntimeError("guest instance is closed")
        if self._future is not None:
            raise RuntimeError("a call is already running on this instance")
        self._trap.value = self._err.value = None
        self.timed_out = False
        self.trap_status = 500
        self._index, self._after = index, after
        _set_epoch_deadline(self._ctx, 1)  # the first slice ends at the next tick
        self._future = future()

    def _call(self, index: int, after: int, cooperative: bool) -> Any:
        nargs, nresults = (2 if index == 1 else 0), (1 if index == 0 else 0)
        args, results, trap, err = self._ptrs
        self._begin(index, after, lambda: int(_call_async(self._ctx, self._funcs[index], args, nargs, results,
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
                self._stats[_STATS_SHORT] += 1
        return ctx_next

    def _set_response_args(self, req_ctx: int, is_error: bool) -> None:
        args = self._args
        args[0].kind = args[1].kind = 0  # type: ignore[assignment]  # WASMTIME_I32
        args[0].of.i32 = ctypes.c_int32(req_ctx & 0xFFFF_FFFF).value
        args[1].of.i32 = 1 if is_error else 0

    def instantiate(self, pre: int, out: int) -> None:
        _, _, trap, err = self._ptrs
        self._begin(len(_EXPORTS), _AFTER_NONE, lambda: int(_instantiate_async(pre, self._ctx, out, trap, err)))
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
    def set_current(core: PyCore | None) -> PyCore | None:
        """Make `core` the one whose guest code runs on this thread (instantiation); the previous one."""
        prev = _ct_local.core
        _ct_local.core = core
        return prev

    @staticmethod
    def quick_calls() -> int:
        return _ct_local.quick


def _make_callback(name: str, fn: HostFunction, nparams: int, nresults: int, *, on_instance: bool = False) -> Any:
    unpack = _ARG_STRUCTS[nparams].unpack_from
    pack = _RESULT.pack_into
    space = _ADDRESS_SPACE

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
            return _trap(_host_error(name, exc, core))

    return _CALLBACK(callback)


def _host_error(name: str, exc: BaseException, core: Any) -> str:
    """A host function failed: the trap message (and the call's status, on its core)."""
    if isinstance(exc, HostTrap):
        if core is not None:
            core.trap_status = exc.status
        return f"{name}: {exc}"
    log.error("host function %s failed", name, exc_info=exc)
    return f"{name}: host error: {type(exc).__name__}"


def _define_ctypes(linker: wasmtime.Linker, module: bytes, name: bytes, functype: wasmtime.FuncType,
                   fn: HostFunction, nparams: int, nresults: int, on_instance: bool, native: bool,
                   keep: list[Any]) -> int:
    callback = _make_callback(name.decode(), fn, nparams, nresults, on_instance=on_instance)
    keep.append((callback, functype))  # alive as long as the module's linker
    err = _linker_define_unchecked(ctypes.cast(linker.ptr(), _VP), module, len(module), name, len(name),
                                   ctypes.cast(functype.ptr(), _VP), callback, None, _NO_FINALIZER)
    return int(err or 0)


def _start_ticker_thread(engine: wasmtime.Engine) -> None:
    def tick() -> None:
        while True:
            time.sleep(EPOCH_TICK_SECONDS)
            engine.increment_epoch()

    threading.Thread(target=tick, name="http-wasm-epoch", daemon=True).start()


# --- the call path, chosen once ---
_fastpath = _load_accelerator()
FAST_PATH: Final = _fastpath is not None
# Host functions the accelerator implements natively (the common, valid case; anything else
# falls back to the Python function, which stays the reference). Set by bind_native_host.
NATIVE_HOST_FUNCTIONS: frozenset[str] = frozenset()
_native_reference: Mapping[str, HostFunction] = {}

if _fastpath is not None:
    Core: Any = _fastpath.Core
    set_current: Callable[[Any], Any] = _fastpath.set_current
    _quick_calls: Callable[[], int] = _fastpath.quick_calls
    _linker_define_addr: Final = _address("wasmtime_linker_define_func_unchecked")

    def _define_host(linker: wasmtime.Linker, module: bytes, name: bytes, functype: wasmtime.FuncType,
                     fn: HostFunction, nparams: int, nresults: int, on_instance: bool, native: bool,
                     keep: list[Any]) -> int:
        keep.append(functype)
        return int(_fastpath.define(_linker_define_addr, ctypes.cast(linker.ptr(), _VP).value, module, name,
                                    ctypes.cast(functype.ptr(), _VP).value, fn, nparams, nresults, on_instance,
                                    native))

    def _start_ticker(engine: wasmtime.Engine) -> None:  # guest calls keep the GIL: the ticker must be native
        # its own reference to the engine, never freed: the thread outlives interpreter shutdown
        ticker_engine = ffi.wasmtime_engine_clone(engine.ptr())
        _fastpath.start_ticker(ctypes.cast(ticker_engine, _VP).value, int(EPOCH_TICK_SECONDS * 1e6))
else:
    Core = PyCore
    set_current = PyCore.set_current
    _quick_calls = PyCore.quick_calls
    _define_host = _define_ctypes
    _start_ticker = _start_ticker_thread


def bind_native_host(host_class: type, exchange_class: type, phases: Sequence[int],
                     header_bytes: tuple[bytes, bytes], host_functions: Mapping[str, HostFunction]) -> None:
    """Let the accelerator's native host functions work on the host's own objects.

    `host_class` and `exchange_class` declare the slots the native code reads in their
    `NATIVE_SLOTS`; `phases` are the (init, request, response) values of the host's phase slot;
    `header_bytes` the bytes allowed in header names and in header values; `host_functions` the
    Python reference implementations (a host function is native only while it is the reference).
    Without the accelerator, or when the classes changed shape, the Python functions do it all.
    """
    global NATIVE_HOST_FUNCTIONS, _native_reference
    _native_reference = dict(host_functions)
    if _fastpath is None:
        return
    try:
        _fastpath.configure_host(host_class, tuple(host_class.NATIVE_SLOTS),  # type: ignore[attr-defined]
                                 exchange_class, tuple(exchange_class.NATIVE_SLOTS),  # type: ignore[attr-defined]
                                 tuple(phases), *header_bytes)
        NATIVE_HOST_FUNCTIONS = frozenset(_fastpath.native_functions())
    except (TypeError, AttributeError) as exc:  # the classes changed shape: the Python host functions do it all
        log.warning("native host functions disabled: %s", exc)
        NATIVE_HOST_FUNCTIONS = frozenset()


F = TypeVar("F", bound=Callable[..., Any])


def bind_native_pool(pool_class: type) -> None:
    """Give the instance pool the accelerator's `try_acquire` and `release`: their fast cases (an idle
    instance taken and given back) in C, every other case by the Python methods, for the slots
    `pool_class` declares in `NATIVE_SLOTS`. Without the accelerator the Python methods stay."""
    if _fastpath is None:
        return
    try:
        methods = _fastpath.native_pool(pool_class, tuple(pool_class.NATIVE_SLOTS))  # type: ignore[attr-defined]
    except (TypeError, AttributeError) as exc:
        log.warning("native instance pool disabled: %s", exc)
        return
    for name, method in methods.items():
        setattr(pool_class, name, method)


def bind_native_flow(flow_class: type, buffer_response: int, open_flow: F,
                     prototypes: tuple[object, object], protocols: Mapping[str, bytes],
                     scope_for_app: Callable[..., Any]) -> F:
    """Give the ASGI binding's per-request class the accelerator's `enter`, `app_args`, `leave` and
    `stream`, and return the accelerator's `open_flow` (the same call: the flow and its exchange in
    one step).

    `flow_class` declares the slots they read and write in `NATIVE_SLOTS` (a call's GuestTrap is an
    outcome they hand back, not a failure); `buffer_response` is the feature bit that makes a guest's
    response buffered. The native `open_flow` starts from copies of `prototypes` (a flow and an
    exchange made by the Python constructors, so the defaults are written once), maps the scope's
    http_version through `protocols`, and leaves
    any scope out of the common case to `open_flow`; `app_args` leaves a request the guests changed
    to `scope_for_app`. Without the accelerator, or when the classes changed shape, the Python
    methods and `open_flow` stay.
    """
    if _fastpath is None or not NATIVE_HOST_FUNCTIONS:
        return open_flow
    try:
        methods = _fastpath.native_flow(flow_class, tuple(flow_class.NATIVE_SLOTS),  # type: ignore[attr-defined]
                                        GuestTrap, buffer_response, prototypes, dict(protocols), open_flow,
                                        scope_for_app)
    except (TypeError, AttributeError) as exc:
        log.warning("native request flow disabled: %s", exc)
        return open_flow
    native_open: F = methods.pop("open_flow")
    for name, method in methods.items():
        setattr(flow_class, name, method)
    return native_open


def accelerated(reference: F) -> F:
    """The accelerator's implementation of a Python helper (same name, same results), else the helper.

    The native version falls back to `reference` for anything but the common case.
    """
    if _fastpath is None:
        return reference
    native = _fastpath.accelerated(reference)
    return reference if native is None else native


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


# --- WASI clocks: one clock for every instance (a snapshot's runtime read it before this instance began) ---
_CLOCKS: Final[dict[int, Callable[[], int]]] = {0: time.time_ns, 1: time.monotonic_ns, 2: time.process_time_ns,
                                                3: time.thread_time_ns}  # realtime, monotonic, process, thread


def _clock_time_get(mem: WasmInstance, clock_id: int, _precision: int, result: int) -> int:
    """wasmtime's monotonic clock starts again in each WASI context; a guest restored from a snapshot
    saw the clock of the instance that ran its init, so it would see time go backwards. The host's
    monotonic clock is the same for every instance and every process of the machine."""
    clock = _CLOCKS.get(clock_id)
    if clock is None:
        return 28  # EINVAL
    mem.write(result, struct.pack("<Q", clock()))
    return 0



# --- cooperative calls: the event loop's scheduler of suspended guest calls ---
class _Slices:
    """The suspended guest calls of one event loop: one slice (up to an epoch tick) per turn.

    A turn is one callback of the loop, so other requests run between any two slices; calls that
    used less than LONG_CALL_SECONDS of guest time go first, round robin. Longer ones (a runaway
    guest, or a very heavy request) get a slice only when no shorter call waits, and while other
    requests are being served (guest calls ended in their first slice, or shorter calls ran) at
    most LONG_SHARE of the loop's time.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.short: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self.long: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self.handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self.long_after = 0.0  # loop time before which no long call runs again
        self.activity = -1  # quick calls + short turns, at the last long turn

    def add(self, core: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        self._queue(core, future)
        return future

    def _queue(self, core: Any, future: asyncio.Future[Any]) -> None:
        if core.used < LONG_CALL_SECONDS:
            self.short.append((core, future))
            if isinstance(self.handle, asyncio.TimerHandle):  # a long call's gap must not hold it up
                self.handle.cancel()
                self.handle = None
        else:
            self.long.append((core, future))
        self._schedule()

    def _schedule(self) -> None:
        if self.handle is not None or not (self.short or self.long):
            return
        delay = 0.0 if self.short else self.long_after - self.loop.time()
        self.handle = self.loop.call_soon(self._turn) if delay <= 0 else self.loop.call_later(delay, self._turn)

    def _turn(self) -> None:
        """Short calls' slices until the turn's guest time (TURN_SECONDS) is used, or one long call's.

        Calls deferred before their first slice (their turn was used up) mostly end at once: many
        of them fit in one turn, instead of each waiting for a loop iteration of its own.
        """
        self.handle = None
        end = self.loop.time() + TURN_SECONDS
        while self.short or self.long:
            long = not self.short
            self._slice(long)
            if long or self.loop.time() >= end:
                break
        self._schedule()

    def _slice(self, long: bool) -> None:
        core, future = (self.long if long else self.short).popleft()
        if future.done():  # its request was cancelled (WasmInstance.finish drops the call)
            return
        start = self.loop.time()
        try:
            result = core.resume()
        except BaseException as exc:  # the awaiting request gets it
            future.set_exception(exc)
        else:
            if result == SUSPENDED:
                self._queue(core, future)
            else:
                future.set_result(result)
        activity = _quick_calls() + self.short_turns
        if long:
            busy = activity != self.activity  # others are being served: keep to LONG_SHARE
            self.activity = activity
            if busy:
                self.long_after = self.loop.time() + (self.loop.time() - start) * (1 - LONG_SHARE) / LONG_SHARE
        else:
            self.short_turns += 1

    short_turns = 0


_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slices] = weakref.WeakKeyDictionary()


def _scheduler() -> _Slices:
    loop = asyncio.get_running_loop()
    scheduler = _schedulers.get(loop)
    if scheduler is None:
        scheduler = _schedulers[loop] = _Slices(loop)
    return scheduler


# --- engine, epoch ticker and compile cache ---
_engine_lock = threading.Lock()
_engine: wasmtime.Engine | None = None
# Compiled modules in use in this process, by key: held weakly, so the modules of a chain that was
# reloaded away (e.g. a snapshot per guest config) are freed with it, not kept for the process's life.
_module_cache: weakref.WeakValueDictionary[str, wasmtime.Module] = weakref.WeakValueDictionary()
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
            _start_ticker(_engine)
        return _engine


def default_cache_dir() -> Path | None:
    """Where compiled modules are kept: $HTTP_WASM_ASGI_CACHE_DIR, else ~/.cache/http-wasm-asgi.

    Set the variable to an empty string to turn the disk cache off.
    """
    env = os.environ.get("HTTP_WASM_ASGI_CACHE_DIR")
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "http-wasm-asgi"


def _compile(name: str, wasm: bytes, cache_dir: Path | None,
             cache_key: str | None = None) -> tuple[wasmtime.Module, float, str, str]:
    """Compile once per process, and once per machine with the disk cache.

    Returns (module, seconds, source, key); source is "compiled", "disk" or "memory"; the key
    is the sha256 of the wasm unless the caller names the entry (`cache_key`, e.g. a snapshot's,
    derived from what it was built from: no need to hash a large module again).
    Processes starting together (N workers) compile a module once: the first takes a lock on
    the cache entry, the others wait for it and load what it wrote.
    """
    engine = _get_engine()
    key = cache_key or hashlib.sha256(wasm).hexdigest()
    cached = _module_cache.get(key)
    if cached is not None:
        return cached, 0.0, "memory", key
    start = time.perf_counter()
    path = None
    lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if cache_dir is not None:
        path = cache_dir / f"{key}-{_cache_tag()}.cwasm"
        module = _load_cached(engine, path, mapped=cache_key is not None)
        if module is None:
            lock = cache_entry_lock(path)
    else:
        module = None
    with lock:
        if module is None and path is not None:
            # another process may have written it while we waited
            module = _load_cached(engine, path, mapped=cache_key is not None)
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
                # owner-only: a snapshot's image is the guest's memory after init (its config, secrets)
                with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                    f.write(module.serialize())
                os.replace(tmp, path)  # readers see the old file or the whole new one
            if cache_key is not None:  # a snapshot: this process maps the image like the others, not a copy
                module = _load_cached(engine, path, mapped=True) or module
    _module_cache[key] = module
    return module, elapsed, "compiled", key


@functools.cache
def _cache_tag() -> str:
    return hashlib.sha256(f"{wasmtime_version()};{ENGINE_FINGERPRINT}".encode()).hexdigest()[:12]


def _load_cached(engine: wasmtime.Engine, path: Path, mapped: bool) -> wasmtime.Module | None:
    """The module of a cache entry, or None (missing, stale or corrupt: it is simply rebuilt).

    `mapped` (snapshots): mapped from the file (deserialize_file), so the module's copy-on-write
    memory image (the guest's initialized heap) is the file's pages, shared by every instance and
    every worker process. The host only ever replaces entries whole (os.replace: a mapped old
    file lives on until unmapped); a file rewritten in place under a live mapping would crash the
    process, so ordinary modules are read into memory instead.
    """
    if mapped:
        try:
            return wasmtime.Module.deserialize_file(engine, str(path)) if path.is_file() else None
        except (wasmtime.WasmtimeError, OSError):
            return None
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
def cache_entry_lock(path: Path) -> Iterator[None]:
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
    init_timeout: float = 10.0  # seconds of CPU for the guest's init (start function, _initialize/_start)
    # linear memory cap: a cap, not a reservation; generous enough for a WAF's rule set (~75-100 MiB)
    memory_bytes: int = 256 * 1024 * 1024
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

    def __init__(self, name: str, wasm: bytes, host_functions: Mapping[str, HostFunction],
                 *, cache_dir: Path | None = None, wasi: WasiOptions | None = None,
                 limits: Limits | None = None, cache_key: str | None = None) -> None:
        self.name = name
        self.limits = limits or Limits()
        self.wasi = wasi or WasiOptions()
        self.stats: CallStats | None = None  # where its instances count their calls (set by the guest)
        wasm = wasm_binary(name, wasm)
        self._module, seconds, source, sha256 = _compile(name, wasm, cache_dir, cache_key)
        imports = tuple((i.module, i.name or "", _describe(i.type)) for i in self._module.imports)
        exports = tuple((e.name, _describe(e.type)) for e in self._module.exports)
        self.info = ModuleInfo(len(wasm), sha256, imports, exports,
                               any(m == abi.WASI_MODULE for m, _, _ in imports), seconds, source)
        self._validate()
        self._engine = _get_engine()
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
        native = module == abi.HOST_MODULE and name in NATIVE_HOST_FUNCTIONS and _native_reference.get(name) is fn
        err = _define_host(linker, module.encode(), name.encode(), functype, fn, len(params), len(results),
                           on_instance, native, self._callbacks)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ctypes.POINTER(ffi.wasmtime_error_t)))

    def _link(self, host_functions: Mapping[str, HostFunction]) -> wasmtime.InstancePre:
        linker = wasmtime.Linker(self._engine)
        if self.info.uses_wasi:
            linker.define_wasi()
            linker.allow_shadowing = True
            self._define(linker, abi.WASI_MODULE, "fd_write", _fd_write, (abi.I32,) * 4, (abi.I32,),
                         on_instance=True)
            if (abi.WASI_MODULE, "clock_time_get") in {(m, n) for m, n, _ in self.info.imports}:
                self._define(linker, abi.WASI_MODULE, "clock_time_get", _clock_time_get,
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


_EXPORTS: Final = (abi.EXPORT_HANDLE_REQUEST, abi.EXPORT_HANDLE_RESPONSE, abi.EXPORT_INITIALIZE,
                   abi.EXPORT_START)  # export index -> name (Core numbers them)
_INIT_EXPORTS: Final = (abi.EXPORT_INITIALIZE, abi.EXPORT_START)  # the first one exported runs at init


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
            wasi.preopen_dir(host_path, guest_path, fs_mutable=module.wasi.dirs_writable)
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
    plus, once it has used LONG_CALL_SECONDS of guest time, the non-guest work that ran on its
    thread while it waited (other guests' slices never count); past it the call fails with
    GuestTrap (503) and the instance is closed.
    These are the methods of the instance's `Core` (one C call each with the accelerator).
    """

    __slots__ = ("_base", "_core", "_ctx", "_keep", "_memory", "_memory_addr", "_module_ref", "_size", "_stats",
                 "_store", "_store_exports", "closed", "handle_request", "handle_response", "host", "name", "output_fn",
                 "request", "response", "start_request", "start_response")

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
        self.output_fn = output
        self._memory: Any = None
        self._memory_addr = 0
        self._stats: CallStats | None = None
        self._base = 0  # memory base address: fixed (memory_may_move=False)
        self._size = 0  # a lower bound of the memory size: memory only grows
        self._store = _new_store(module)
        self._ctx = ctypes.cast(self._store._context(), _VP).value
        self.host = make_host(self)
        core = self._core = Core(self, self._store, self._ctx, module.limits.init_timeout)  # init's own limit
        core.host = self.host
        self.handle_request = core.handle_request
        self.handle_response = core.handle_response
        self.request = core.request
        self.response = core.response
        self.start_request = core.start_request
        self.start_response = core.start_response
        prev = set_current(core)  # a start section may call host functions
        core.release_gil = True  # init may run on a pool thread: the event loop's thread keeps going
        try:
            self._start(module)
        except (GuestTrap, wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            failure = self._init_failure(exc)
            if failure is not None:
                raise failure from None
        finally:
            set_current(prev)
            core.release_gil = False
        core.budget = module.limits.call_timeout
        self.set_stats(module.stats)

    def set_stats(self, stats: CallStats | None) -> None:
        """Count this instance's calls and traps in `stats` (None: not counted)."""
        self._stats = stats
        self._core.set_stats(None if stats is None else stats.counts)

    def _start(self, module: WasmModule) -> None:
        """Instantiate (running the start section), bind the exports, run `_initialize`/`_start`."""
        raw = ffi.wasmtime_instance_t()
        self._core.instantiate(ctypes.cast(module._pre.ptr(), _VP).value, ctypes.addressof(raw))  # to its end
        exports = self._store_exports = wasmtime.Instance._from_raw(raw).exports(self._store)
        self._set_memory(exports[abi.EXPORT_MEMORY]._memory)  # type: ignore[union-attr]
        funcs = [exports.get(name) for name in _EXPORTS]
        self._keep = [f for f in funcs if isinstance(f, wasmtime.Func)]  # the addresses below stay valid
        for index, func in enumerate(funcs):
            if isinstance(func, wasmtime.Func):
                self._core.set_func(index, ctypes.addressof(func._func))
        init = next((name for name in _INIT_EXPORTS if isinstance(exports.get(name), wasmtime.Func)), None)
        if init is not None:
            self._core.call(_EXPORTS.index(init))

    def _init_failure(self, exc: BaseException) -> GuestError | None:
        """Why initialization failed; None for proc_exit(0) (a start function's normal end)."""
        if isinstance(exc, GuestTrap):
            code, message, where = exc.exit_code, exc.message, f" in {exc.export}" if exc.export else ""
        else:  # the start section trapped (raised by wasmtime's instantiate)
            code = getattr(exc, "code", None)
            message, where = (f"exited with code {code}" if code is not None else _first_line(exc)), ""
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
            return await _scheduler().add(core)
        except asyncio.CancelledError:
            core.cancel()
            self.closed = True
            raise

    def _raise_trap(self, index: int) -> None:
        """The running call trapped or ran out of time: raise it as GuestTrap (called by the Core)."""
        core = self._core
        trap, err, timed_out = core.take_trap()
        self.closed = True
        export = _EXPORTS[index] if index < len(_EXPORTS) else ""  # past them: instantiation
        error = self._trap_error(export, trap, err, core.trap_status, timed_out)
        if self._stats is not None and index < 2:
            self._stats.count_trap(export, self._trap_cause(error, timed_out))
        raise error

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
        self._core.close()  # no call can reach the dropped store; breaks the core <-> instance cycle
        self.handle_request = self.handle_response = self.request = self.response = _closed
        self._store_exports = None  # type: ignore[assignment]
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
