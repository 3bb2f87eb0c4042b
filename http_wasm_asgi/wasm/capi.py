"""wasmtime's C API through ctypes: the raw entry points the call path uses, typed for speed.

The high-level `wasmtime.Func.__call__` costs ~16 us a call and each `Linker.define_func` host
function 6-11 us; the *unchecked* entry points below (plain ints in, plain ints out) cost ~1 us.
`check_binding` refuses a wasmtime whose C types differ from the ones this module was written for.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from typing import Any, Final

from wasmtime import _ffi as ffi

WASMTIME_MAJOR: Final = 50

_dll = ffi.dll
VP = ctypes.c_void_p


def _cfunc(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = _dll[name]  # a fresh function pointer: our argtypes, not wasmtime-py's
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


def address(name: str) -> int:
    """The address of a wasmtime C function (handed to the native path)."""
    return int(ctypes.cast(getattr(_dll, name), VP).value or 0)


call_async = _cfunc("wasmtime_func_call_async", VP, VP, VP, VP, ctypes.c_size_t, VP, ctypes.c_size_t, VP, VP)
instantiate_async = _cfunc("wasmtime_instance_pre_instantiate_async", VP, VP, VP, VP, VP, VP)
future_poll = _cfunc("wasmtime_call_future_poll", ctypes.c_bool, VP)
future_delete = _cfunc("wasmtime_call_future_delete", None, VP)
yield_update = _cfunc("wasmtime_context_epoch_deadline_async_yield_and_update", None, VP, ctypes.c_uint64)
memory_data = _cfunc("wasmtime_memory_data", ctypes.c_size_t, VP, VP)
memory_data_size = _cfunc("wasmtime_memory_data_size", ctypes.c_size_t, VP, VP)
set_epoch_deadline = _cfunc("wasmtime_context_set_epoch_deadline", None, VP, ctypes.c_uint64)
trap_new = _cfunc("wasmtime_trap_new", VP, ctypes.c_char_p, ctypes.c_size_t)
caller_export_get = _cfunc("wasmtime_caller_export_get", ctypes.c_bool, VP, ctypes.c_char_p, ctypes.c_size_t, VP)
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_size_t, VP, VP, VP, ctypes.c_size_t)
FINALIZER = ctypes.CFUNCTYPE(None, VP)
linker_define_unchecked = _cfunc("wasmtime_linker_define_func_unchecked", VP, VP, ctypes.c_char_p,
                                 ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, VP, CALLBACK, VP, FINALIZER)
NO_FINALIZER = FINALIZER()
RAW_SIZE: Final = ctypes.sizeof(ffi.wasmtime_val_raw_t)  # 16: one slot per argument/result
RESULT = struct.Struct("<Q")
ARG_STRUCTS = {n: struct.Struct("<" + f"I{RAW_SIZE - 4}x" * n) for n in range(6)}
# One memoryview over the whole address space: host callbacks read their arguments and
# guest memory with a slice or struct.unpack_from (~0.1 us) instead of a ctypes object each
# time (~0.4 us). Only ranges checked against wasmtime's own bounds are ever touched.
ADDRESS_SPACE = memoryview((ctypes.c_char * (1 << 47)).from_address(0)).cast("B")
U32_PAIR = struct.Struct("<II")


@functools.cache
def wasmtime_version() -> str:
    from importlib.metadata import version

    return version("wasmtime")


def check_binding() -> None:
    """Fail loudly when the installed wasmtime is not the one this call path was built for."""
    major = int(wasmtime_version().split(".")[0])
    if major != WASMTIME_MAJOR:
        raise RuntimeError(f"http_wasm_asgi needs wasmtime {WASMTIME_MAJOR}.x, found {wasmtime_version()}")
    if RAW_SIZE != 16 or ctypes.sizeof(ffi.wasmtime_val_t) != 32:
        raise RuntimeError(f"unexpected wasmtime_val_raw/wasmtime_val size {RAW_SIZE}/"
                           f"{ctypes.sizeof(ffi.wasmtime_val_t)}")


check_binding()
