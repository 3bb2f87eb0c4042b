"""`Guest`: one http-wasm module, compiled once, with its instance pool and settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from . import _native, abi, registry
from .errors import GuestError
from .host import HOST_FUNCTIONS, GuestContext, GuestHost
from .pool import InstancePool, NativeInstancePool
from .snapshot_cache import DamagedSnapshot, SnapshotEntry, snapshot_key
from .tracing import HostCallSink, sinks_for, traced
from .wasm.cache import default_cache_dir
from .wasm.calls import HostFunction
from .wasm.instance import WasmInstance
from .wasm.module import Limits, ModuleInfo, WasiOptions, WasmModule, wasm_binary
from .wasm.snapshot import SNAPSHOT_EXPORT_PREFIX, SnapshotError, instrument, refusal, rewrite, runs_bounded
from .wasm.stats import CallStats

GuestSource = str | os.PathLike[str] | bytes | bytearray
GuestConfig = bytes | str | Mapping[str, Any] | None

log = logging.getLogger("http_wasm_asgi")  # the host's own lines; a guest's go to its own logger
DEFAULT_LOGGER = "http_wasm_asgi.guest"
DEFAULT_LIMITS = Limits()
DEFAULT_MAX_INSTANCES = 1024  # a count cap: what instances cost is bounded by memory_budget
DEFAULT_MEMORY_BUDGET = 1024 * 1024 * 1024  # linear memory of one guest's instances, beyond a shared snapshot
DEFAULT_IDLE_TIMEOUT = 60.0  # seconds an instance may stay idle before it is closed (down to min_instances)
# an instance (from a snapshot) whose linear memory grew more than this past the image is replaced when released:
# a guard against one that ballooned (a huge request), not a per-request reset (a fresh instance faults its pages in
# again: 8 MiB cost a garbage-collected guest 3.4x its CPU per request)
DEFAULT_RECYCLE_MEMORY = 64 * 1024 * 1024
INSTANCE_OVERHEAD = 128 * 1024  # what an instance costs beside its linear memory (store, tables), for the budget
MEMORY_PROBE_LIMIT = 4 * 1024 * 1024 * 1024  # after an init that failed: what it needed (up to 4x the limit)
FAILURE_POLICIES = ("fail_closed", "fail_open")  # what a guest that traps, overruns or cannot get an instance does
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


def _read_source(source: GuestSource, name: str | None) -> tuple[Path | None, str, bytes]:
    """(path, name, module binary) of a guest given as a file or as bytes (binary or text); the name defaults
    to the file's stem."""
    if isinstance(source, bytes | bytearray):
        return None, name or "guest", wasm_binary(name or "guest", bytes(source))
    path = Path(source)
    name = name or path.stem
    try:
        return path, name, wasm_binary(name, path.read_bytes())
    except OSError as exc:
        raise GuestError(name, f"cannot read {os.fspath(source)}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class SnapshotInfo:
    """How a guest's instances start: from a snapshot taken after its init, or by running init each time."""

    used: bool
    detail: str  # where the snapshot came from ("built", "disk"), or why there is none
    init_seconds: float = 0.0  # what the guest's init took (when the snapshot was built)
    image_bytes: int = 0  # linear memory captured after init: mapped copy-on-write by every instance
    exports: tuple[tuple[str, str], ...] = ()  # the original module's exports (name, type), init ones included


class Guest:
    """An http-wasm guest: validated and compiled here, instantiated per request from a pool.

    Raises `GuestError` (naming the guest and the problem) when the module is
    not a usable http-wasm guest, or when its initialization fails.

    By default the guest's init runs once, at load: its memory and globals are captured in a
    snapshot module, and every instance starts from it in microseconds (`snapshot=False` runs
    init per instance). The pool holds up to `max_instances` instances while their memory
    stays within `memory_budget`, keeps `min_instances` ready and closes instances idle for
    `idle_timeout` seconds (or beyond `max_idle`). An instance whose linear memory grew more than
    `recycle_memory` bytes past its start (a garbage-collected guest's heap at its high-water mark) is
    closed when released and replaced, when needed, by a fresh one: its memory goes back to the system.
    The default (64 MiB, for instances from a snapshot, which are cheap to replace) guards against an
    instance that ballooned; a small value bounds a churning guest's memory but costs it CPU (a fresh
    instance faults its pages in again). None never replaces them (an explicit value applies without a
    snapshot too).

    `trace` records every host function call (`tracing.HostCall`): a callable gets each one, True
    logs them to `http_wasm_asgi.trace.<name>` at TRACE; the default traces only when that logger
    is enabled for TRACE at load. Untraced guests (the default) pay nothing for it.
    """

    # What the native path reads of a guest (see _native: the contract); set in __init__.
    NATIVE_SLOTS: ClassVar = ()
    NATIVE_ATTRIBUTES: ClassVar = ("pool", "threaded")
    context: GuestContext
    pool: InstancePool[WasmInstance]
    reads_request_body: bool
    threaded: bool

    def __init__(
        self,
        source: GuestSource,
        *,
        name: str | None = None,
        config: GuestConfig = None,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        min_instances: int = 1,
        max_idle: int | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        recycle_memory: int | None = _USE_DEFAULT,
        reuse_instances: bool = True,
        pool_timeout: float = 10.0,
        call_timeout: float = DEFAULT_LIMITS.call_timeout,
        init_timeout: float = DEFAULT_LIMITS.init_timeout,
        memory_limit: int = DEFAULT_LIMITS.memory_bytes,
        snapshot: bool = True,
        logger: str | logging.Logger | None = None,
        wasi_env: Mapping[str, str] | None = None,
        wasi_dirs: Mapping[str, str] | None = None,
        cache_dir: str | os.PathLike[str] | None = _USE_DEFAULT,
        threaded: bool = False,
        trace: bool | HostCallSink | None = None,
        failure_policy: str = "fail_closed",
        wasi_dirs_writable: Collection[str] = (),
    ) -> None:
        self.path, self.name, wasm = _read_source(source, name)
        self._settings(config, max_instances, failure_policy)
        self.trace_sinks, self.host_functions = self._link_time_tracing(trace)
        self.logger = logger if isinstance(logger, logging.Logger) else \
            logging.getLogger(f"{logger or DEFAULT_LOGGER}.{self.name}")
        self.reuse_instances = reuse_instances
        self.threaded = threaded  # guest calls on worker threads (else on the event loop: fastest)
        self.context = GuestContext(self.name, self.config, self.logger)
        self.module, self.snapshot, self.info = self._load(
            wasm, snapshot, default_cache_dir() if cache_dir is _USE_DEFAULT else
            (Path(cache_dir) if cache_dir else None),
            WasiOptions(env=dict(wasi_env or {}), dirs=dict(wasi_dirs or {}), writable=frozenset(wasi_dirs_writable)),
            Limits(call_timeout=call_timeout, init_timeout=init_timeout, memory_bytes=memory_limit))
        self.recycle_memory = self._recycle_memory(recycle_memory)
        # Guests that may read the request body get it buffered before handle_request:
        # a host function cannot wait for the client.
        self.reads_request_body = self.info.imports_host("read_body")
        self.pool = self._make_pool(max_size=max_instances, timeout=pool_timeout, reuse=reuse_instances,
                                    min_size=max(min_instances, 1), max_idle=max_idle, idle_timeout=idle_timeout,
                                    budget=memory_budget)
        self._fill(wasm)  # fail fast, and learn the init-time features
        registry.guest_opened(self)

    def _settings(self, config: GuestConfig, max_instances: int, failure_policy: str) -> None:
        """The settings checked before anything loads: the config's bytes, the pool's size, the policy."""
        try:
            self.config = encode_config(config)
        except TypeError as exc:
            raise GuestError(self.name, str(exc)) from None
        if max_instances < 1:
            raise GuestError(self.name, f"max_instances must be at least 1, got {max_instances}")
        if failure_policy not in FAILURE_POLICIES:
            raise GuestError(self.name, f"failure_policy must be one of {', '.join(FAILURE_POLICIES)}, got "
                                        f"{failure_policy!r}")
        self.failure_policy = failure_policy
        # fail_open: a trap, a CPU or memory overrun or a pool timeout skips this guest (see asgi/failure.py)
        self.fail_open = failure_policy == "fail_open"

    def _recycle_memory(self, value: int | None) -> int | None:
        """The growth past which an instance is replaced: the default only for snapshot instances."""
        if value is _USE_DEFAULT:
            return DEFAULT_RECYCLE_MEMORY if self.snapshot.used else None
        if value is not None and value < 0:
            raise GuestError(self.name, f"recycle_memory must be at least 0 (or None), got {value}")
        return value

    def _link_time_tracing(self, trace: bool | HostCallSink | None) -> tuple[list[HostCallSink] | None,
                                                                             Mapping[str, HostFunction]]:
        """Host-call tracing is chosen here, at link time: an untraced guest links the host functions
        themselves (native ones with the accelerator), a traced one wrappers that report each call to
        `trace_sinks` (a list: a test client adds its own)."""
        sinks = sinks_for(self.name, trace)
        return (None, HOST_FUNCTIONS) if sinks is None else (sinks, traced(HOST_FUNCTIONS, self.name, sinks))

    @property
    def native(self) -> bool:
        """Whether this guest's calls take the native path (chosen when its module was linked)."""
        return self.module.path.native

    @property
    def traced(self) -> bool:
        """Whether this guest's host calls are traced (chosen at load)."""
        return self.trace_sinks is not None

    def _make_pool(self, **bounds: Any) -> InstancePool[WasmInstance]:
        """The instance pool; an instance costs its linear memory beyond the snapshot's shared image.

        Its instances count their calls in the guest's stats (metrics)."""
        self.stats = self.module.stats = registry.stats_for(self.name, CallStats)
        self.instance_source = "snapshot" if self.snapshot.used else "init"
        image = self.snapshot.image_bytes
        pool_class = NativeInstancePool if self.native else InstancePool
        return pool_class(self.new_instance, name=self.name, create_inline=self.snapshot.used,
                            cost=lambda instance: max(instance.memory_size() - image, 0) + INSTANCE_OVERHEAD,
                            **bounds)

    @property
    def features(self) -> int:
        """Features the guest enabled during initialization (apply to every request)."""
        return int(self.context.features)

    def new_instance(self) -> WasmInstance:
        instance = self._instantiate(self.module)
        if self.recycle_memory is not None:
            instance.recycle_above = instance.memory_size() + self.recycle_memory
        created = self.stats.created
        created[self.instance_source] = created.get(self.instance_source, 0) + 1
        return instance

    def _make_host(self, instance: WasmInstance) -> GuestHost:
        return GuestHost(instance, self.context)

    def _instantiate(self, module: WasmModule) -> WasmInstance:
        """A new instance of `module` (running its init, if it has one); errors carry what the guest printed."""
        try:
            instance = module.instantiate(self._make_host, self.context.output)
            instance.release_gil = self.threaded
            return instance
        except GuestError as exc:
            self.context.flush_output()
            printed = " | ".join(self.context.recent_output)
            if printed:
                raise GuestError(self.name, f"{exc.problem}; guest output: {printed}") from None
            raise
        finally:
            self.context.flush_output()

    def _fill(self, wasm: bytes) -> None:
        """The first instances, at load: a guest that cannot start fails here, saying why."""
        try:
            self.pool.fill()
        except GuestError as exc:
            raise GuestError(self.name, exc.problem + self._memory_needed(wasm, self.module)) from None

    def _memory_needed(self, wasm: bytes, module: WasmModule) -> str:
        """After a failed init: whether memory_limit was the cause (init is run again without it)."""
        limit = module.limits.memory_bytes
        probe_limit = min(max(4 * limit, 1 << 30), MEMORY_PROBE_LIMIT)
        if limit >= probe_limit:
            return ""
        roomy = WasmModule(self.name, wasm, HOST_FUNCTIONS, wasi=module.wasi,
                           limits=dataclasses.replace(module.limits, memory_bytes=probe_limit))
        saved, self.context.logger = self.context.logger, logging.getLogger(f"{self.logger.name}.memory-probe")
        self.context.logger.disabled = True  # the probe's output is not the guest's log
        try:
            instance = roomy.instantiate(self._make_host, None)
        except GuestError:
            return ""  # it fails with more memory too: memory_limit is not the cause
        finally:
            self.context.logger = saved
            self.context.recent_output.clear()
        needed = instance.memory_size()
        instance.close()
        return (f" (it needs {needed / 2**20:.1f} MiB of linear memory at init, memory_limit is "
                f"{limit / 2**20:.0f} MiB; fix: raise memory_limit (memory_limit: ... in the guest's config, "
                f"Guest(memory_limit=...)))")

    # -- loading: a snapshot after init when it is safe, else init per instance --
    def _load(self, wasm: bytes, enabled: bool, cache_dir: Path | None, wasi: WasiOptions,
              limits: Limits) -> tuple[WasmModule, SnapshotInfo, ModuleInfo]:
        """The module instances start from, how, and what the guest declares (its own size, hash and
        exports: a snapshot module lacks the init exports it was built without)."""
        sha256 = hashlib.sha256(wasm).hexdigest()
        module, snapshot = self._module(wasm, sha256, enabled, cache_dir, wasi, limits)
        info = dataclasses.replace(module.info, size=len(wasm), sha256=sha256,
                                   exports=snapshot.exports or module.info.exports)
        return module, snapshot, info

    def _module(self, wasm: bytes, sha256: str, enabled: bool, cache_dir: Path | None, wasi: WasiOptions,
                limits: Limits) -> tuple[WasmModule, SnapshotInfo]:
        if not enabled:
            reason = "turned off (snapshot: false)"
        elif wasi.dirs:
            reason = "WASI directories are preopened: files opened during init cannot be captured"
        else:
            try:
                return self._from_snapshot(wasm, sha256, cache_dir, wasi, limits)
            except (GuestError, SnapshotError) as exc:
                reason = str(exc)
        if enabled:
            log.info("guest %r: no snapshot, each instance runs the guest's init: %s", self.name, reason)
        module = WasmModule(self.name, wasm, self.host_functions, cache_dir=cache_dir, wasi=wasi, limits=limits)
        module.sync_response = runs_bounded(wasm, abi.EXPORT_HANDLE_RESPONSE)
        return module, SnapshotInfo(False, reason)

    def _from_snapshot(self, wasm: bytes, sha256: str, cache_dir: Path | None, wasi: WasiOptions,
                       limits: Limits) -> tuple[WasmModule, SnapshotInfo]:
        """The guest's snapshot module: from the disk cache, or built now (init runs once, here).

        Processes starting together (N workers) build it once: the first holds the entry's lock.
        """
        key = snapshot_key(sha256, self.config, wasi.env)
        if cache_dir is None:
            return self._build_snapshot(wasm, None, key, wasi, limits)
        entry = SnapshotEntry(cache_dir, key, self.name)
        with entry.lock():
            cached = entry.read()
            if cached is None:
                reason = entry.refusal()
                if reason is None:  # never checked (or the cache was cleared)
                    return self._build_snapshot(wasm, entry, key, wasi, limits)
                raise SnapshotError(reason)
        snap, meta = cached
        try:  # the snapshot module is read (and verified) only if its compiled form is not in the cache
            module = WasmModule(self.name, snap, self.host_functions, cache_dir=cache_dir, wasi=wasi,
                                limits=limits, cache_key=key)
        except DamagedSnapshot:
            with entry.lock():
                return self._build_snapshot(wasm, entry, key, wasi, limits)
        self.context.features = int(meta["features"])
        module.sync_response = meta["sync_response"] is True  # read from the code when the entry was built
        for level, message in meta["init_log"]:  # what the guest said during its init, as if it ran now
            self.context.say(int(level), str(message))
        return module, SnapshotInfo(True, "disk", float(meta["init_seconds"]), int(meta["image_bytes"]),
                                    tuple((str(n), str(t)) for n, t in meta["exports"]))

    def _build_snapshot(self, wasm: bytes, entry: SnapshotEntry | None, key: str, wasi: WasiOptions,
                        limits: Limits) -> tuple[WasmModule, SnapshotInfo]:
        reason = refusal(wasm)
        if reason is not None:
            if entry is not None:
                entry.refuse(reason)
            raise SnapshotError(reason)
        said = self.context.transcript = []
        try:
            snap, memory, seconds, exports = self._take_snapshot(wasm, wasi, limits)
        finally:
            self.context.transcript = None
        module = WasmModule(self.name, snap, self.host_functions, cache_dir=entry.folder if entry else None,
                            wasi=wasi, limits=limits, cache_key=key)
        module.sync_response = runs_bounded(wasm, abi.EXPORT_HANDLE_RESPONSE)
        instance = module.instantiate(self._make_host, None)  # verify once: a fresh instance starts as captured
        try:
            if instance.read(0, instance.memory_size()) != memory:
                raise SnapshotError("a fresh instance of the snapshot does not hold the captured memory")
        finally:
            instance.close()
        if entry is not None:
            entry.write(snap, {"features": self.context.features, "init_seconds": seconds,
                                          "image_bytes": len(memory), "exports": exports, "init_log": said,
                                          "sync_response": module.sync_response})
        log.info("guest %r: snapshot after init (%.0f ms, %.1f MiB of memory); instances start from it",
                 self.name, seconds * 1000, len(memory) / 2**20)
        return module, SnapshotInfo(True, "built", seconds, len(memory), exports)

    def _take_snapshot(self, wasm: bytes, wasi: WasiOptions,
                       limits: Limits) -> tuple[bytes, bytes, float, tuple[tuple[str, str], ...]]:
        """Run the guest's init once in an instrumented copy.

        Returns the snapshot module, the captured memory, the init's seconds and the guest's own exports.
        """
        instrumented = instrument(wasm)
        probe = WasmModule(self.name, instrumented.wasm, self.host_functions, cache_dir=None, wasi=wasi,
                           limits=limits)
        start = time.perf_counter()
        instance = self._instantiate(probe)
        seconds = time.perf_counter() - start
        try:
            memory, values = instance.capture(instrumented.memory_export,
                                              [g.export for g in instrumented.globals])
        finally:
            instance.close()
        globals_ = {g.index: value for g, value in zip(instrumented.globals, values, strict=True)}
        exports = tuple(e for e in probe.info.exports if not e[0].startswith(SNAPSHOT_EXPORT_PREFIX))
        return rewrite(wasm, memory, globals_), memory, seconds, exports

    def close(self) -> None:
        self.pool.close()
        if registry.guest_closed(self):
            self.stats.closed_pool_timeouts += self.pool.timeouts

    def __repr__(self) -> str:
        return f"Guest({self.name!r}, {self.info.size} bytes, features={self.features})"


_native.learn("guest", Guest)
