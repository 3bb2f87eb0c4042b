"""Host-call tracing: every host function call of a guest, with its arguments decoded, its result and its time.

Chosen once, when a guest is linked (`Guest(trace=...)`): a traced guest is linked with wrappers
around the Python host functions (so the C accelerator's native host functions are not used for
it); an untraced guest is linked with the host functions themselves and pays nothing for this
module. Guests whose trace logger (`http_wasm_asgi.trace.<name>`) is enabled for TRACE when they
are loaded are traced to it (`--log-level trace`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .abi import BodyKind, HeaderKind, LogLevel, feature_names
from .errors import HostTrap

TRACE: Final = 5  # the logging level of host-call records, below DEBUG (uvicorn's "trace" too)
TRACE_LOGGER: Final = "http_wasm_asgi.trace"  # + ".<guest name>"
PREVIEW: Final = 120  # characters of a decoded value shown before it is cut
PHASES: Final = ("init", "request", "response")  # GuestHost.phase -> its name

logging.addLevelName(TRACE, "TRACE")  # as uvicorn names it

HostCallSink = Callable[["HostCall"], None]
HostFunction = Callable[..., int | None]


@dataclass(frozen=True, slots=True)
class HostCall:
    """One host function call: what the guest asked for and what it got."""

    guest: str
    function: str
    phase: str  # "init", "request" (before next) or "response" (after next)
    args: tuple[tuple[str, Any], ...]  # (name, decoded value): header names and values, URIs, body sizes
    result: Any  # decoded; None for a function without a result (or one that trapped)
    seconds: float  # time spent in the host function
    error: str | None = None  # the trap the host function raised
    request: int = 0  # tells the calls of concurrent requests apart (0 at init); unique while a request runs

    def __str__(self) -> str:
        args = ", ".join(f"{name}={_show(value)}" for name, value in self.args)
        outcome = f" -> TRAP: {self.error}" if self.error is not None else \
            "" if self.result is None else f" -> {_show(self.result)}"
        return f"{self.seconds * 1e6:8.1f} us  {self.guest} {self.phase:<8} {self.function}({args}){outcome}"


class Name(str):
    """A decoded value that reads as a name or a note (a header kind, a log level, "<...>"): shown unquoted."""

    __slots__ = ()


def _show(value: Any) -> str:
    if isinstance(value, Name):
        return str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= PREVIEW else value[:PREVIEW] + "...")
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def sinks_for(guest: str, trace: bool | HostCallSink | None) -> list[HostCallSink] | None:
    """Where a guest's host calls go: a callable as given, True: its trace logger, None: the logger when it is
    enabled for TRACE now (at load), False: nowhere (None: untraced). More sinks may join the list later."""
    if callable(trace):
        return [trace]
    logger = logging.getLogger(f"{TRACE_LOGGER}.{guest}")
    if trace is False or (trace is None and not logger.isEnabledFor(TRACE)):
        return None

    def log_call(call: HostCall) -> None:
        logger.log(TRACE, "%s", call)

    return [log_call]


def traced(functions: Mapping[str, HostFunction], guest: str, sinks: list[HostCallSink]) -> dict[str, HostFunction]:
    """The host functions, each wrapped to report its calls to every sink in `sinks` (as it is at the time)."""
    def sink(call: HostCall) -> None:
        for each in sinks:
            each(call)

    return {name: _wrap(name, fn, guest, sink) for name, fn in functions.items()}


def _wrap(name: str, fn: HostFunction, guest: str, sink: HostCallSink) -> HostFunction:
    arg_spec, result_spec = SPECS[name]
    clock = time.perf_counter_ns

    def host_function(h: Any, *args: int) -> int | None:
        phase = PHASES[h.phase] if 0 <= h.phase < len(PHASES) else str(h.phase)
        request = id(h.exchange) if h.exchange is not None else 0
        t0 = clock()
        try:
            result = fn(h, *args)
        except BaseException as exc:
            seconds = (clock() - t0) / 1e9
            error = str(exc) if isinstance(exc, HostTrap) else f"host error: {type(exc).__name__}: {exc}"
            sink(HostCall(guest, name, phase, _decode_args(h, arg_spec, args), None, seconds, error, request))
            raise
        seconds = (clock() - t0) / 1e9
        decoded = _decode_result(h, result_spec, args, result)
        sink(HostCall(guest, name, phase, _decode_args(h, arg_spec, args), decoded, seconds, None, request))
        return result

    host_function.__name__ = host_function.__qualname__ = name
    return host_function


# --- how each host function's arguments and result read ---
# Argument shapes: "header_kind", "body_kind", "level", "features" and "status" take one argument;
# "text:<label>" a (ptr, len) pair read from guest memory; "size:<label>" a (ptr, len) pair shown as its
# length; "buf" a (buf, buf_limit) pair the host writes into (shown as its limit).
# Results: "text" (what was written into buf, or its length when it did not fit), "list" (a count_len of
# NUL-terminated values in buf), "body" (an eof_len), "features", "bool", "int"; None: no result.
SPECS: Final[dict[str, tuple[tuple[str, ...], str | None]]] = {
    "enable_features": (("features",), "features"),
    "get_config": (("buf",), "text"),
    "log": (("level", "text:message"), None),
    "log_enabled": (("level",), "bool"),
    "get_method": (("buf",), "text"),
    "set_method": (("text:method",), None),
    "get_uri": (("buf",), "text"),
    "set_uri": (("text:uri",), None),
    "get_protocol_version": (("buf",), "text"),
    "get_header_names": (("header_kind", "buf"), "list"),
    "get_header_values": (("header_kind", "text:name", "buf"), "list"),
    "set_header_value": (("header_kind", "text:name", "text:value"), None),
    "add_header_value": (("header_kind", "text:name", "text:value"), None),
    "remove_header": (("header_kind", "text:name"), None),
    "read_body": (("body_kind", "buf"), "body"),
    "write_body": (("body_kind", "size:bytes"), None),
    "get_status_code": ((), "int"),
    "set_status_code": (("status",), None),
    "get_source_addr": (("buf",), "text"),
}
_WIDTH: Final = {"buf": 2, "text": 2, "size": 2}


def _enum_name(enum: Any, value: int) -> Name:
    try:
        return Name(str(enum(value).name).lower())
    except ValueError:
        return Name(f"unknown({value})")


def _features(value: int) -> Name:
    return Name("|".join(feature_names(value)) or "none")


def _read_text(h: Any, ptr: int, length: int) -> str:
    try:
        return str(h.mem.read(ptr, min(length, 4 * PREVIEW)).decode("utf-8", "replace"))
    except Exception:  # out of bounds: the host function itself traps and says so
        return Name(f"<{length} bytes at {ptr}: out of bounds>")


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _decode_args(h: Any, spec: tuple[str, ...], args: tuple[int, ...]) -> tuple[tuple[str, Any], ...]:
    decoded: list[tuple[str, Any]] = []
    i = 0
    for shape in spec:
        kind, _, label = shape.partition(":")
        if kind == "header_kind":
            decoded.append(("kind", _enum_name(HeaderKind, args[i])))
        elif kind == "body_kind":
            decoded.append(("kind", _enum_name(BodyKind, args[i])))
        elif kind == "level":
            decoded.append(("level", _enum_name(LogLevel, _signed(args[i]))))
        elif kind == "features":
            decoded.append(("features", _features(args[i])))
        elif kind == "status":
            decoded.append(("status", _signed(args[i])))
        elif kind == "text":
            decoded.append((label, _read_text(h, args[i], args[i + 1])))
        elif kind == "size":
            decoded.append((label, args[i + 1]))
        elif kind == "buf":
            decoded.append(("buf_limit", args[i + 1]))
        i += _WIDTH.get(kind, 1)
    return tuple(decoded)


def _decode_result(h: Any, spec: str | None, args: tuple[int, ...], result: int | None) -> Any:
    if spec is None or result is None:
        return None
    if spec == "int":
        return result
    if spec == "bool":
        return bool(result)
    if spec == "features":
        return _features(result)
    buf, limit = args[-2], args[-1]
    if spec == "text":
        return _read_text(h, buf, result) if 0 < result <= limit else \
            "" if result == 0 else Name(f"<{result} bytes: larger than buf_limit, not written>")
    count, length = result >> 32, result & 0xFFFF_FFFF
    if spec == "body":
        return Name(f"{length} bytes" + (", eof" if count else ""))
    if length > limit:
        return Name(f"<{count} values, {length} bytes: larger than buf_limit, not written>")
    try:
        return [v.decode("utf-8", "replace") for v in h.mem.read(buf, length).split(b"\0")[:count]]
    except Exception:
        return Name(f"<{count} values at {buf}: out of bounds>")
