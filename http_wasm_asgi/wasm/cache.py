"""The compile cache: a module is compiled once per process (in memory) and once per machine (on disk).

Nothing read from disk runs unverified. An entry is wasmtime's serialized machine code, and its file
name carries the sha256 of its contents (`<key>-<tag>-<digest>.cwasm`, written whole by
`files.write_atomic`): the digest is checked before the entry is deserialized or mapped, so a flipped
bit, a truncated file or another guest's file put in its place is found before any of its code runs
(wasmtime's own loader catches cruder damage only, and a changed code section would run). A bad entry
gets one WARNING naming the guest and the file, is removed, and the module is compiled again.

`key` is the module's sha256 (or the caller's key, e.g. a snapshot's) and `tag` what compiled code
depends on (wasmtime's version, the engine's settings). Writers of one entry are serialised across
processes by a per-entry lock; `cache_files.py` bounds the folder's size.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import mmap
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import wasmtime
from wasmtime import _ffi as ffi

from ..errors import GuestError, first_line
from ..files import entry_lock, write_atomic
from . import cache_files
from .capi import wasmtime_version
from .engine import ENGINE_FINGERPRINT, get_engine

log = logging.getLogger("http_wasm_asgi.cache")

CACHE_DIR_ENV = "HTTP_WASM_ASGI_CACHE_DIR"
DIGEST_CHARS = 32  # of the sha256 in an entry's name: 128 bits
# Compiled modules in use in this process, by key: held weakly, so the modules of a chain that was
# reloaded away (e.g. a snapshot per guest config) are freed with it, not kept for the process's life.
_module_cache: weakref.WeakValueDictionary[str, wasmtime.Module] = weakref.WeakValueDictionary()


def default_cache_dir() -> Path | None:
    """Where compiled modules are kept: $HTTP_WASM_ASGI_CACHE_DIR, else ~/.cache/http-wasm-asgi.

    Set the variable to an empty string to turn the disk cache off.
    """
    env = os.environ.get(CACHE_DIR_ENV)
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "http-wasm-asgi"


def content_digest(data: bytes | bytearray | memoryview | mmap.mmap) -> str:
    """The digest an entry's name carries."""
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


Source = bytes | Callable[[], bytes]  # a module's bytes, or what reads them when they are needed


def compile_module(name: str, wasm: Source, cache_dir: Path | None,
                   cache_key: str | None = None) -> tuple[wasmtime.Module, float, str, str]:
    """Compile once per process, and once per machine with the disk cache.

    Returns (module, seconds, source, key); source is "compiled", "disk" or "memory"; the key
    is the sha256 of the wasm unless the caller names the entry (`cache_key`, e.g. a snapshot's,
    derived from what it was built from: no need to hash a large module again). With a key, `wasm` may
    be a callable: it is called only when the module must be compiled (a snapshot's module is then not
    read at all when its compiled form is in the cache).
    Processes starting together (N workers) compile a module once: the first takes a lock on
    the cache entry, the others wait for it and load what it wrote.
    """
    if cache_key is None:
        wasm = wasm() if callable(wasm) else wasm
    key = cache_key or hashlib.sha256(wasm).hexdigest()  # type: ignore[arg-type]
    cached = _module_cache.get(key)
    if cached is not None:
        return cached, 0.0, "memory", key
    start = time.perf_counter()
    mapped = cache_key is not None  # a snapshot: its memory image is the file's pages, shared by processes
    module = None
    if cache_dir is not None:
        stem = f"{key}-{_cache_tag()}"
        module = _load(name, cache_dir, stem, mapped)
        if module is None:
            with entry_lock(cache_dir / stem):
                module = _load(name, cache_dir, stem, mapped)  # another process may have written it meanwhile
                if module is None:
                    return _compile_and_store(name, wasm, key, cache_dir / stem, mapped, start)
    if module is not None:
        _module_cache[key] = module
        return module, time.perf_counter() - start, "disk", key
    return _compile_and_store(name, wasm, key, None, mapped, start)


def _compile_and_store(name: str, wasm: Source, key: str, stem: Path | None, mapped: bool,
                       start: float) -> tuple[wasmtime.Module, float, str, str]:
    engine = get_engine()
    binary = wasm() if callable(wasm) else wasm  # (reading a lazy source may fail: that is the caller's)
    try:
        module = wasmtime.Module(engine, binary)
    except Exception as exc:
        raise GuestError(name, f"not a valid WebAssembly module: {first_line(exc)}") from None
    elapsed = time.perf_counter() - start
    if stem is not None:
        data = module.serialize()
        path = stem.parent / f"{stem.name}-{content_digest(data)}.cwasm"
        try:
            write_atomic(path, data)
        except OSError as exc:  # a cache that cannot be written is no cache, not a failure
            log.warning("guest %r: cannot write the compile cache (%s): %s", name, path, exc.strerror or exc)
        else:
            cache_files.record(path, guest=name, kind="snapshot, compiled" if mapped else "module, compiled")
            if mapped:  # this process maps the image like the others do, not a copy of its own
                mapped_module = _deserialize_file(engine, path)
                if mapped_module is not None:
                    module = mapped_module
                    cache_files.hold(module, path)
            cache_files.keep_within_limit(stem.parent)
    _module_cache[key] = module
    return module, elapsed, "compiled", key


@functools.cache
def _cache_tag() -> str:
    return hashlib.sha256(f"{wasmtime_version()};{ENGINE_FINGERPRINT}".encode()).hexdigest()[:12]


def _load(name: str, folder: Path, stem: str, mapped: bool) -> wasmtime.Module | None:
    """The module of a verified entry, or None (none there, or every one there was bad and is removed).

    `mapped` (snapshots): mapped from the file (deserialize_file), so the module's copy-on-write memory
    image (the guest's initialized heap) is the file's pages, shared by every instance and every worker
    process; the process holds a shared lock on the file for the module's life, so pruning passes it by.
    Entries are only ever replaced whole (a file rewritten in place under a live mapping would crash
    the process); ordinary modules are read into memory instead.
    """
    for path in cache_files.candidates(folder, stem, ".cwasm"):
        data = _verified(name, path, keep=not mapped)
        if data is None:
            continue
        engine = get_engine()
        module = _deserialize_file(engine, path) if mapped else _deserialize(engine, data)
        if module is None:
            cache_files.reject(name, path, "wasmtime cannot load it (written by another version?)")
            continue
        if mapped:
            cache_files.hold(module, path)
        cache_files.touch(path)
        return module
    return None


def _verified(name: str, path: Path, *, keep: bool) -> bytearray | None:
    """The entry's bytes (`keep`; else an empty buffer: a mapped entry is hashed through a mapping of its
    own, with no copy) when their digest is the one its name carries; else it is rejected (None)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if keep:
                data = bytearray(size)
                intact = f.readinto(data) == size and content_digest(data) == cache_files.name_digest(path)
            else:
                data = bytearray()
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                    intact = content_digest(view) == cache_files.name_digest(path)
    except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
        cache_files.reject(name, path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})")
        return None
    if not intact:
        cache_files.reject(name, path, "its contents do not match the digest in its name (damaged on disk?)")
        return None
    return data


def _deserialize(engine: wasmtime.Engine, data: bytearray) -> wasmtime.Module | None:
    ptr = ctypes.POINTER(ffi.wasmtime_module_t)()
    error = ffi.wasmtime_module_deserialize(engine.ptr(), (ctypes.c_uint8 * len(data)).from_buffer(data), len(data),
                                            ctypes.byref(ptr))
    if error:
        wasmtime.WasmtimeError._from_ptr(error)  # frees it
        return None
    return wasmtime.Module._from_ptr(ptr)


def _deserialize_file(engine: wasmtime.Engine, path: Path) -> wasmtime.Module | None:
    with contextlib.suppress(wasmtime.WasmtimeError, OSError):
        return wasmtime.Module.deserialize_file(engine, str(path))
    return None
