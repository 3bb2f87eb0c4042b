"""The compile cache: a module is compiled once per process (in memory) and once per machine (on disk).

Entries are wasmtime's serialized machine code (`*.cwasm`), named by the module's sha256 (or the
caller's key, e.g. a snapshot's) and by what compiled code depends on (wasmtime's version and the
engine's settings), written whole (`files.write_atomic`) under a per-entry lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import time
import weakref
from pathlib import Path

import wasmtime
from wasmtime import _ffi as ffi

from ..errors import GuestError, first_line
from ..files import entry_lock, write_atomic
from .capi import wasmtime_version
from .engine import ENGINE_FINGERPRINT, get_engine

# Compiled modules in use in this process, by key: held weakly, so the modules of a chain that was
# reloaded away (e.g. a snapshot per guest config) are freed with it, not kept for the process's life.
_module_cache: weakref.WeakValueDictionary[str, wasmtime.Module] = weakref.WeakValueDictionary()


def default_cache_dir() -> Path | None:
    """Where compiled modules are kept: $HTTP_WASM_ASGI_CACHE_DIR, else ~/.cache/http-wasm-asgi.

    Set the variable to an empty string to turn the disk cache off.
    """
    env = os.environ.get("HTTP_WASM_ASGI_CACHE_DIR")
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "http-wasm-asgi"


def compile_module(name: str, wasm: bytes, cache_dir: Path | None,
             cache_key: str | None = None) -> tuple[wasmtime.Module, float, str, str]:
    """Compile once per process, and once per machine with the disk cache.

    Returns (module, seconds, source, key); source is "compiled", "disk" or "memory"; the key
    is the sha256 of the wasm unless the caller names the entry (`cache_key`, e.g. a snapshot's,
    derived from what it was built from: no need to hash a large module again).
    Processes starting together (N workers) compile a module once: the first takes a lock on
    the cache entry, the others wait for it and load what it wrote.
    """
    engine = get_engine()
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
            lock = entry_lock(path)
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
            raise GuestError(name, f"not a valid WebAssembly module: {first_line(exc)}") from None
        elapsed = time.perf_counter() - start
        if path is not None:
            with contextlib.suppress(OSError):  # a cache that cannot be written is no cache, not a failure
                write_atomic(path, module.serialize())
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
