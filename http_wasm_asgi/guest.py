"""`Guest`: one http-wasm module, compiled once, with its instance pool and settings."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import runtime
from .errors import GuestError
from .host import HEADER_BYTES, PHASES, Exchange, GuestContext, GuestHost
from .host import HOST_FUNCTIONS as _HOST_FUNCTIONS
from .pool import InstancePool
from .runtime import Limits, WasiOptions, WasmInstance, WasmModule

runtime.bind_native_host(GuestHost, Exchange, PHASES, HEADER_BYTES, _HOST_FUNCTIONS)  # host.py for the accelerator

GuestSource = str | os.PathLike[str] | bytes | bytearray
GuestConfig = bytes | str | Mapping[str, Any] | None

DEFAULT_LOGGER = "http_wasm_asgi.guest"
_USE_DEFAULT: Any = object()


def encode_config(config: GuestConfig) -> bytes:
    """bytes as they are, text as UTF-8, a mapping as compact JSON."""
    if config is None:
        return b""
    if isinstance(config, bytes | bytearray):
        return bytes(config)
    if isinstance(config, str):
        return config.encode("utf-8")
    if isinstance(config, Mapping):
        return json.dumps(config, separators=(",", ":")).encode("utf-8")
    raise TypeError(f"config must be bytes, str or a mapping, not {type(config).__name__}")


class Guest:
    """An http-wasm guest: validated and compiled here, instantiated per request from a pool.

    Raises `GuestError` (naming the guest and the problem) when the module is
    not a usable http-wasm guest, or when its initialization fails.
    """

    def __init__(
        self,
        source: GuestSource,
        *,
        name: str | None = None,
        config: GuestConfig = None,
        max_instances: int = 64,
        reuse_instances: bool = True,
        pool_timeout: float = 10.0,
        call_timeout: float = 1.0,
        memory_limit: int = 64 * 1024 * 1024,
        logger: str | logging.Logger | None = None,
        wasi_env: Mapping[str, str] | None = None,
        wasi_dirs: Mapping[str, str] | None = None,
        cache_dir: str | os.PathLike[str] | None = _USE_DEFAULT,
        threaded: bool = False,
    ) -> None:
        if isinstance(source, bytes | bytearray):
            wasm = bytes(source)
            self.path: Path | None = None
            self.name = name or "guest"
        else:
            self.path = Path(source)
            self.name = name or self.path.stem
            try:
                wasm = self.path.read_bytes()
            except OSError as exc:
                raise GuestError(self.name, f"cannot read {os.fspath(source)}: {exc.strerror or exc}") from None
        if isinstance(logger, logging.Logger):
            log = logger
        else:
            log = logging.getLogger(f"{logger or DEFAULT_LOGGER}.{self.name}")
        self.logger = log
        try:
            self.config = encode_config(config)
        except TypeError as exc:
            raise GuestError(self.name, str(exc)) from None
        self.reuse_instances = reuse_instances
        # Guest calls run on the event loop by default (fastest); threaded=True runs them on worker
        # threads, so a slow or spinning guest does not hold up other requests.
        self.threaded = threaded
        self.context = GuestContext(self.name, self.config, log)
        cache = runtime.default_cache_dir() if cache_dir is _USE_DEFAULT else (
            Path(cache_dir) if cache_dir else None)
        self.module = WasmModule(
            self.name, wasm, _HOST_FUNCTIONS, cache_dir=cache,
            wasi=WasiOptions(env=dict(wasi_env or {}), dirs=dict(wasi_dirs or {})),
            limits=Limits(call_timeout=call_timeout, memory_bytes=memory_limit))
        self.info = self.module.info
        # Guests that may read the request body get it buffered before handle_request:
        # a host function cannot wait for the client.
        self.reads_request_body = self.info.imports_host("read_body")
        self.pool: InstancePool[WasmInstance] = InstancePool(
            self.new_instance, max_size=max_instances, timeout=pool_timeout, reuse=reuse_instances)
        self.pool.put(self.new_instance())  # fail fast, and learn the init-time features

    @property
    def features(self) -> int:
        """Features the guest enabled during initialization (apply to every request)."""
        return int(self.context.features)

    def new_instance(self) -> WasmInstance:
        try:
            instance = self.module.instantiate(lambda mem: GuestHost(mem, self.context), self.context.output)
            instance.release_gil = self.threaded
            return instance
        except GuestError as exc:
            printed = " | ".join(self.context.recent_output)
            if printed:
                raise GuestError(self.name, f"{exc.problem}; guest output: {printed}") from None
            raise
        finally:
            self.context.flush_output()

    def close(self) -> None:
        self.pool.close()

    def __repr__(self) -> str:
        return f"Guest({self.name!r}, {self.info.size} bytes, features={self.features})"
