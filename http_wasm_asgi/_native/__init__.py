"""The native path: the C code that mirrors the hot parts of the Python modules, and its contract.

Everything about it lives here: loading the compiled module (`_ext`, built at install from the `.c`
files beside this one), the version check, and every bind. The Python modules stay the reference:
each C part mirrors one of them (`core.c` <-> `wasm/calls.py`, `host.c` <-> `host.py`, `pool.c` <->
`pool.py`, `flow.c` <-> `asgi/flow.py`) and falls back to it outside the common case.

**The contract.** A class whose objects the C reads declares, beside its own definition,
`NATIVE_SLOTS` (plain object slots the C reads and writes by offset) and `NATIVE_ATTRIBUTES`
(attributes and methods the C gets or calls by name). `learn(role, cls)` checks both when the class's
module is imported: every declared name must exist on the class (a slot, a method, a property or an
annotated instance attribute), and the C, which lists what it uses per role in one table
(`contract.c`), must use exactly the declared names. A rename on either side fails at import with a
`NativeContractError` naming the class and the attribute, not at request time. ABI facts reach the C
from `abi.NATIVE_FACTS`, never restated there.

Without the compiled module (no C compiler at install, or HTTP_WASM_ASGI_NO_NATIVE=1), `EXT` is None,
`OFF_REASON` says why, the declarations are still checked, and the Python path does everything.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from .. import abi

log = logging.getLogger("http_wasm_asgi.native")

VERSION: Final = 21  # the C this module was written for (its VERSION): a stale build is refused
DISABLE_ENV: Final = "HTTP_WASM_ASGI_NO_NATIVE"
_OLD_DISABLE_ENV: Final = "HTTP_WASM_ASGI_NO_FASTPATH"  # the former name, still honoured

F = TypeVar("F", bound=Callable[..., Any])


class NativeContractError(TypeError):
    """A class and the native path disagree on what it has: fix the declaration or the code."""


def _load() -> tuple[Any | None, str | None]:
    """The compiled module, or None and why."""
    if os.environ.get(DISABLE_ENV) or os.environ.get(_OLD_DISABLE_ENV):
        return None, f"turned off by {DISABLE_ENV}"
    try:
        ext: Any = importlib.import_module("._ext", __package__)
    except ImportError as exc:  # not compiled (no C compiler at install): the Python path does the same
        log.warning("the native path is not built (%s): guests run on the Python path, about 2.5x the cost per "
                    "guest; fix: install a wheel of http-wasm-asgi, or reinstall it with a C compiler", exc)
        return None, f"not built ({exc})"
    version = getattr(ext, "VERSION", None)
    if version != VERSION:
        log.warning("http_wasm_asgi._native._ext is a stale build (VERSION %s, expected %s): reinstall the "
                    "package to rebuild it", version, VERSION)
        return None, f"stale build (VERSION {version}, expected {VERSION})"
    ext.configure_abi(dict(abi.NATIVE_FACTS))
    return ext, None


EXT, OFF_REASON = _load()


def status() -> str:
    """'on', or 'off (why)': for `inspect`, `check`, `serve`'s start-up line and the build-info metric."""
    return "on" if EXT is not None else f"off ({OFF_REASON})"
_native_host_functions: frozenset[str] = frozenset()
_host_references: Mapping[str, Callable[..., Any]] = {}


def _has(cls: type, name: str) -> bool:
    """Whether objects of `cls` have `name`: a slot, a class attribute (method, property) or an annotated
    instance attribute."""
    if any(name in getattr(klass, "__slots__", ()) or name in vars(klass).get("__annotations__", {})
           for klass in cls.__mro__):
        return True
    return hasattr(cls, name)


def learn(role: str, cls: type) -> None:
    """Check `cls`'s declarations (NATIVE_SLOTS, NATIVE_ATTRIBUTES) and give them to the C as `role`.

    Raises NativeContractError, naming the class and the name, when one is missing on either side."""
    declared: dict[str, tuple[str, ...]] = {}
    for kind in ("NATIVE_SLOTS", "NATIVE_ATTRIBUTES"):
        names = getattr(cls, kind, None)
        if not isinstance(names, tuple) or not all(isinstance(n, str) for n in names):
            raise NativeContractError(f"{cls.__qualname__}.{kind} must be a tuple of names")
        declared[kind] = names
    for name in declared["NATIVE_SLOTS"]:
        if name not in {s for klass in cls.__mro__ for s in getattr(klass, "__slots__", ())}:
            raise NativeContractError(f"{cls.__qualname__}.{name} is declared in NATIVE_SLOTS but is not a slot")
    for name in declared["NATIVE_ATTRIBUTES"]:
        if not _has(cls, name):
            raise NativeContractError(f"{cls.__qualname__}.{name} is declared in NATIVE_ATTRIBUTES, but "
                                      f"{cls.__qualname__} has no attribute {name!r} (renamed?)")
    if EXT is not None:
        try:
            EXT.learn(role, cls, declared["NATIVE_SLOTS"], declared["NATIVE_ATTRIBUTES"])
        except TypeError as exc:
            raise NativeContractError(str(exc)) from None


# wasmtime's C functions the native path calls, in the order configure() takes their addresses
WASMTIME_FUNCTIONS: Final = (
    "wasmtime_func_call_async", "wasmtime_instance_pre_instantiate_async", "wasmtime_call_future_poll",
    "wasmtime_call_future_delete", "wasmtime_context_epoch_deadline_async_yield_and_update",
    "wasmtime_context_set_epoch_deadline", "wasmtime_trap_new", "wasmtime_engine_increment_epoch",
    "wasmtime_memory_data_size", "wasmtime_func_call_unchecked", "wasmtime_error_delete")


def bind_calls(address: Callable[[str], int], error_handler: Callable[[str, BaseException, Any], str],
               turn: float, window: float, long_call: float, long_wait: float,
               stats_layout: tuple[tuple[int, ...], int]) -> Any | None:
    """The compiled module, set up for guest calls: wasmtime's entry points (`address` of each of
    WASMTIME_FUNCTIONS), the host error handler, the event loop's turn and what a long call's clock
    counts of its waiting (calls.LONG_WAIT); None without it.

    `stats_layout` (the buckets and size of CallStats.counts) must be the C's: a mismatch is a bug."""
    if EXT is None:
        return None
    if (tuple(EXT.STATS_BUCKETS_NS), EXT.STATS_SIZE) != stats_layout:
        raise NativeContractError(f"the native path counts calls in {EXT.STATS_SIZE} counters with buckets "
                                  f"{EXT.STATS_BUCKETS_NS}, CallStats has {stats_layout}")
    EXT.configure(*map(address, WASMTIME_FUNCTIONS), error_handler)
    EXT.set_turn(turn, window, long_call, long_wait)
    return EXT


def bind_host(phases: Sequence[int], header_bytes: tuple[bytes, bytes],
              host_functions: Mapping[str, Callable[..., Any]]) -> None:
    """Native host functions over the learned "host" and "exchange" classes.

    `phases` are the (init, request, response) values of the host's phase slot; `header_bytes` the bytes
    allowed in header names and in header values; `host_functions` the Python references (a host function
    is linked native only while it is its reference: a traced guest links wrappers)."""
    global _native_host_functions, _host_references
    _host_references = dict(host_functions)
    if EXT is None:
        return
    EXT.configure_host(tuple(phases), *header_bytes)
    _native_host_functions = frozenset(EXT.native_functions())


def native_host_functions() -> frozenset[str]:
    """The host functions with a native implementation (empty without the native path)."""
    return _native_host_functions


def is_native_host_function(name: str, fn: Callable[..., Any]) -> bool:
    """Whether `fn` is linked as the native implementation of host function `name`."""
    return name in _native_host_functions and _host_references.get(name) is fn


def install(cls: type, methods: Mapping[str, Any]) -> None:
    """Give `cls` (a class of the native path, e.g. NativeInstancePool) these native methods."""
    for name, method in methods.items():
        setattr(cls, name, method)


def pool_methods(cls: type) -> dict[str, Any]:
    """The native try_acquire and release for `cls`, a subclass of the learned "pool" class (none without
    the native path)."""
    return {} if EXT is None else dict(EXT.pool_methods(cls))


def flow_methods(cls: type, trap_class: type, held_type: type, pending_type: type,
                 prototypes: tuple[object, object], protocols: Mapping[str, bytes], default_http_version: str,
                 open_flow: F, scope_for_app: Callable[..., Any]) -> tuple[dict[str, Any], F | None]:
    """The native enter, app_args, leave and stream for `cls` (a subclass of the learned "flow" class), and
    the native open_flow (None without the native path).

    The native open_flow starts from copies of `prototypes` (a `cls` and an Exchange made by the Python
    constructors, so the defaults are written once), maps the scope's http_version through `protocols`,
    and leaves any scope out of the common case to `open_flow`; app_args leaves a request the guests
    changed to `scope_for_app`."""
    if EXT is None:
        return {}, None
    methods = dict(EXT.flow_methods(cls, trap_class, held_type, pending_type, prototypes, dict(protocols),
                                    default_http_version, open_flow, scope_for_app))
    native_open: F = methods.pop("open_flow")
    return methods, native_open


def middleware_call(cls: type, serve: Callable[..., Any], close_retired: Callable[[Any], None],
                    stages: Mapping[str, int]) -> None:
    """Calls of `cls` (the learned "middleware" class) take the native path: the common request end to end in
    C, the rest handed to `serve` at its `stages`; cls.__call__ stays the reference. Nothing without it."""
    if EXT is not None:
        EXT.middleware_call(cls, serve, close_retired, dict(stages))


def accelerated(reference: F) -> F:
    """The native implementation of a Python helper (same name, same results), else the helper.

    The native version falls back to `reference` for anything but the common case."""
    if EXT is None:
        return reference
    native = EXT.accelerated(reference)
    return reference if native is None else native
