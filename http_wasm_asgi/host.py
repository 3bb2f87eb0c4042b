"""The host side of the ABI: HTTP state per request and the host functions over it.

Runtime-agnostic: host functions receive a `GuestHost` (one per wasm instance)
whose `mem` reads and writes guest memory, and whose `exchange` is the request
this instance is serving right now (None during instantiation). They
raise `HostTrap` for whatever the spec says traps. Nothing here knows ASGI
messages or wasmtime.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import ClassVar, Final, Protocol, cast

from . import _native
from .abi import BodyKind, Feature, HeaderKind, LogLevel, count_len, feature_names
from .errors import HostTrap

Headers = list[tuple[bytes, bytes]]
# The value of a header list nobody wrote yet: immutable, shared (typed as a list for readers;
# writers go through Exchange.mutable_headers, which copies it).
NO_HEADERS: Final = cast(Headers, ())
_REQUEST: Final = int(HeaderKind.REQUEST)
_RESPONSE: Final = int(HeaderKind.RESPONSE)

_PY_LEVELS: Final[dict[int, int]] = {LogLevel.DEBUG: logging.DEBUG, LogLevel.INFO: logging.INFO,
                                     LogLevel.WARN: logging.WARNING, LogLevel.ERROR: logging.ERROR}
_TOKEN_CHARS: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE_CHARS: Final = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])  # RFC 9110 field-value bytes
HEADER_BYTES: Final = (_TOKEN_CHARS, _VALUE_CHARS)  # allowed in names, in values (the native path's tables)
_EDGE_SPACE: Final = (b" ", b"\t")  # field values neither start nor end with whitespace
_BAD_URI = re.compile(rb"[\x00-\x20\x7f-\xff#]")
# Plain ints on the hot path: IntFlag arithmetic costs a Python call per operation.
BUFFER_REQUEST: Final = int(Feature.BUFFER_REQUEST)
BUFFER_RESPONSE: Final = int(Feature.BUFFER_RESPONSE)
TRAILERS: Final = int(Feature.TRAILERS)
ALWAYS_SUPPORTED: Final = BUFFER_REQUEST | BUFFER_RESPONSE


class Memory(Protocol):
    def read(self, ptr: int, length: int) -> bytes: ...
    def write(self, ptr: int, data: bytes) -> None: ...


class Phase(IntEnum):
    INIT = 0  # instantiation: no request
    REQUEST = 1  # inside handle_request, before next
    RESPONSE = 2  # after next: the next handler ran (or is running)


# Plain ints in GuestHost.phase (the native path reads them; IntEnum comparisons cost a call).
_PHASE_INIT: Final = int(Phase.INIT)
_PHASE_REQUEST: Final = int(Phase.REQUEST)
_PHASE_RESPONSE: Final = int(Phase.RESPONSE)
PHASES: Final = (_PHASE_INIT, _PHASE_REQUEST, _PHASE_RESPONSE)


class Exchange:
    """One HTTP request and its response, as every guest of a chain sees it.

    Built by the server binding from what the server gave (the request line parts as bytes,
    headers as (lowercased name, value) pairs); copies what a guest changes. Rare fields
    (trailers, bodies, a rewritten URI) start as shared immutable values.
    """

    __slots__ = ("client", "headers_changed", "max_body_size", "method", "path", "protocol", "query",
                 "request_body", "request_body_more", "request_body_replaced", "request_headers",
                 "request_trailers", "response_body", "response_body_replaced", "response_headers",
                 "response_trailers", "status", "trailers_supported", "uri")
    # what the native path reads and writes (see _native: the contract)
    NATIVE_SLOTS: ClassVar = ("client", "headers_changed", "max_body_size", "method", "path", "protocol", "query",
                              "request_body", "request_body_replaced", "request_headers", "response_headers",
                              "status", "trailers_supported", "uri")
    NATIVE_ATTRIBUTES: ClassVar = ()

    def __init__(self, method: str, path: bytes, query: bytes, headers: Headers, max_body_size: int,
                 protocol: bytes = b"HTTP/1.1", client: tuple[str, int] | None = None,
                 trailers_supported: bool = False) -> None:
        self.method = method
        self.path = path  # encoded, without the query
        self.query = query  # encoded, without '?'
        self.uri: bytes | None = None  # set when a guest rewrites it
        self.protocol = protocol  # e.g. b"HTTP/1.1"
        self.client = client  # (host, port) of the peer, if the server knows it
        self.trailers_supported = trailers_supported  # the server can send response trailers
        self.max_body_size = max_body_size
        self.request_headers = headers
        self.headers_changed = False
        # Header lists start as a shared empty, immutable value and become lists on first write
        # (mutable_headers): most requests never touch them.
        self.request_trailers = NO_HEADERS
        self.response_headers = NO_HEADERS
        self.response_trailers = NO_HEADERS
        self.status = 200
        self.request_body: bytes | None = None  # None: untouched, the next handler reads the stream
        self.request_body_more = False  # the stream goes on past request_body (over the cap)
        self.request_body_replaced = False
        self.response_body: bytes | bytearray = b""
        self.response_body_replaced = False

    # -- request line --
    def get_uri(self) -> bytes:
        if self.uri is not None:
            return self.uri
        uri = self.path + b"?" + self.query if self.query else self.path
        return uri or b"/"

    def source_addr(self) -> bytes:
        client = self.client
        if not client or not client[0]:  # a Unix socket: None (uvicorn, Hypercorn, Daphne) or ('', '0') (Granian)
            return b""
        host, port = client[0], client[1]
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()

    # -- headers --
    def headers(self, kind: int) -> Headers:
        if kind == HeaderKind.REQUEST:
            return self.request_headers
        if kind == HeaderKind.RESPONSE:
            return self.response_headers
        if kind == HeaderKind.REQUEST_TRAILERS:
            return self.request_trailers
        if kind == HeaderKind.RESPONSE_TRAILERS:
            return self.response_trailers
        raise HostTrap(f"unknown header kind {kind}")

    def mutable_headers(self, kind: int) -> Headers:
        if kind == HeaderKind.REQUEST:
            if not self.headers_changed:
                self.request_headers = list(self.request_headers)  # copy on first write: the scope is shared
                self.headers_changed = True
            return self.request_headers
        headers = self.headers(kind)
        if type(headers) is not list:  # the shared empty value (or a sequence the app sent): copy it
            headers = list(headers)
            if kind == HeaderKind.RESPONSE:
                self.response_headers = headers
            elif kind == HeaderKind.REQUEST_TRAILERS:
                self.request_trailers = headers
            else:
                self.response_trailers = headers
        return headers


def merge_response_headers(guest_headers: Sequence[tuple[bytes, bytes]],
                           app_headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """Response headers a guest set before next stay unless the app sets the same name.

    A new list: the guests' entries the app does not override, then the app's.
    """
    merged: Headers = []
    if len(guest_headers) * len(app_headers) <= 64:  # a few of each (the usual case): no set
        for entry in guest_headers:
            name = entry[0]
            for app_name, _ in app_headers:
                if app_name == name or app_name.lower() == name:
                    break
            else:
                merged.append(entry)
    else:
        app_names = {app_name.lower() for app_name, _ in app_headers}
        merged = [entry for entry in guest_headers if entry[0] not in app_names]
    merged += app_headers
    return merged


class GuestContext:
    """What every instance of one guest shares: name, config, logger, init-time features."""

    NATIVE_SLOTS: ClassVar = ()  # what the native path reads (see _native: the contract)
    NATIVE_ATTRIBUTES: ClassVar = ("features",)
    features: int

    def __init__(self, name: str, config: bytes, logger: logging.Logger) -> None:
        self.name = name
        self.config = config
        self.logger = logger
        self.features = 0  # Feature bits enabled at init
        self.recent_output: deque[str] = deque(maxlen=20)
        # While set (a snapshot's init), every line the guest logs or prints, whatever the log level:
        # replayed when the snapshot is reused, as if init ran again.
        self.transcript: list[tuple[int, str]] | None = None
        self._partial: dict[int, bytes] = {}

    def say(self, level: int, message: str) -> None:
        """One line of the guest's (its `log` calls and its stdout/stderr) to its logger."""
        if self.transcript is not None:
            self.transcript.append((level, message))
        self.logger.log(level, "%s", message)

    def output(self, fd: int, data: bytes) -> None:
        """Guest stdout/stderr (WASI) becomes log lines: INFO for stdout, WARNING for stderr."""
        text = self._partial.pop(fd, b"") + data
        *lines, rest = text.split(b"\n")
        if rest:
            self._partial[fd] = rest
        for line in lines:
            self._emit(fd, line)

    def flush_output(self) -> None:
        for fd, rest in list(self._partial.items()):
            self._emit(fd, rest)
        self._partial.clear()

    def _emit(self, fd: int, line: bytes) -> None:
        message = line.decode("utf-8", "replace").rstrip("\r")
        self.recent_output.append(message)
        self.say(logging.INFO if fd == 1 else logging.WARNING, message)


class GuestHost:
    """The host object of one wasm instance; host functions get it as first argument.

    An instance serves one request at a time, so this guest's part in the current request
    (its features, how far it has come, how much of the bodies it read) lives here too:
    `begin` starts it, `end` closes it. `exchange` is None outside a request (instantiation).
    """

    __slots__ = ("config", "exchange", "features", "guest", "mem", "phase", "request_read", "request_written",
                 "response_read", "response_written")
    # what the native path reads, writes and calls (see _native: the contract)
    NATIVE_SLOTS: ClassVar = ("config", "exchange", "features", "phase", "request_read", "request_written",
                              "response_read", "response_written")
    NATIVE_ATTRIBUTES: ClassVar = ("after_next", "begin", "end", "pass_on_request_body")

    def __init__(self, mem: Memory, guest: GuestContext) -> None:
        self.mem = mem
        self.guest = guest
        self.config = guest.config  # read by the native get_config
        self.exchange: Exchange | None = None
        self.features = 0
        self.phase = _PHASE_INIT
        self.request_read = 0  # bytes of the request body this guest has read
        self.request_written = False  # first write_body(request) overwrites
        self.response_read = 0
        self.response_written = False  # first write_body(response) per phase overwrites

    def begin(self, exchange: Exchange, features: int) -> None:
        """This instance starts serving `exchange`, with the guest's init-time `features`."""
        self.exchange = exchange
        self.features = features
        self.phase = _PHASE_REQUEST
        self.request_read = 0
        self.request_written = False
        self.response_read = 0
        self.response_written = False

    def after_next(self) -> None:
        self.phase = _PHASE_RESPONSE
        self.response_written = False
        self.response_read = 0

    def end(self) -> None:
        self.exchange = None
        self.phase = _PHASE_INIT

    def pass_on_request_body(self) -> None:
        """After next: what a guest read of the request body without buffer_request is consumed (the
        ABI's streaming rule), so the next handler gets only the rest."""
        exchange = self.exchange
        if exchange is not None and self.request_read and not self.features & BUFFER_REQUEST \
                and not exchange.request_body_replaced and exchange.request_body is not None:
            exchange.request_body = exchange.request_body[self.request_read:]

    def request(self, function: str) -> Exchange:
        exchange = self.exchange
        if exchange is None:
            raise HostTrap(f"{function} needs a request; it was called outside handle_request/handle_response")
        return exchange


# --- helpers ---
def _write_limited(h: GuestHost, buf: int, limit: int, value: bytes) -> int:
    """The buf_limit rule: write only when the value fits; always return its length."""
    n = len(value)
    if 0 < n <= limit:
        h.mem.write(buf, value)
    return n


def _write_list(h: GuestHost, buf: int, limit: int, items: list[bytes]) -> int:
    if not items:
        return 0
    data = items[0] + b"\0" if len(items) == 1 else b"\0".join(items) + b"\0"
    if len(data) <= limit:
        h.mem.write(buf, data)
    return count_len(len(items), len(data))


def _read_name(h: GuestHost, ptr: int, length: int) -> bytes:
    if length == 0:
        raise HostTrap("header name cannot be empty")
    return h.mem.read(ptr, length).lower()


def _is_token(data: bytes) -> bool:
    return bool(data) and not data.translate(None, _TOKEN_CHARS)


def _check_header(name: bytes, value: bytes) -> None:
    if not _is_token(name):
        raise HostTrap(f"invalid header name {name[:64]!r}")
    if value.translate(None, _VALUE_CHARS):
        raise HostTrap(f"invalid header value for {name.decode()!r}: control characters are not allowed")
    if value[:1] in _EDGE_SPACE or value[-1:] in _EDGE_SPACE:
        raise HostTrap(f"invalid header value for {name.decode()!r}: leading or trailing whitespace")


def _before_next(h: GuestHost, what: str) -> None:
    if h.phase != _PHASE_REQUEST:
        raise HostTrap(f"can't {what} after next")


def _before_next_or(h: GuestHost, feature: int, what: str) -> None:
    if h.phase != _PHASE_REQUEST and not h.features & feature:
        raise HostTrap(f"can't {what} after next unless {feature_names(feature)[0]} is enabled")


def _mutable_headers(h: GuestHost, kind: int, what: str) -> Headers:
    exchange = h.exchange
    if exchange is None:
        exchange = h.request(f"{what}_header")
    if kind == _RESPONSE and h.phase == _PHASE_REQUEST:  # the common case, first
        return exchange.mutable_headers(kind)
    if kind in (HeaderKind.REQUEST_TRAILERS, HeaderKind.RESPONSE_TRAILERS) and not h.features & TRAILERS:
        raise HostTrap(f"can't {what} trailers: the trailers feature is not enabled (or not supported)")
    if kind in (HeaderKind.REQUEST, HeaderKind.REQUEST_TRAILERS):
        _before_next(h, f"{what} request headers")
    elif kind in (HeaderKind.RESPONSE, HeaderKind.RESPONSE_TRAILERS):
        _before_next_or(h, BUFFER_RESPONSE, f"{what} response headers")
    return exchange.mutable_headers(kind)


# --- administrative ---
def enable_features(h: GuestHost, features: int) -> int:
    if h.exchange is None:  # at init: applies to every request of this guest
        h.guest.features |= features & ALWAYS_SUPPORTED
        return h.guest.features
    supported = ALWAYS_SUPPORTED | (TRAILERS if h.exchange.trailers_supported else 0)
    h.features |= features & supported
    return h.features


def get_config(h: GuestHost, buf: int, limit: int) -> int:
    return _write_limited(h, buf, limit, h.config)


def log(h: GuestHost, level: int, ptr: int, length: int) -> None:
    py_level = _PY_LEVELS.get(_signed(level))
    guest = h.guest
    if py_level is None or (not guest.logger.isEnabledFor(py_level) and guest.transcript is None):
        return
    try:
        message = h.mem.read(ptr, length)
    except HostTrap:
        return  # the spec: a host that fails to log ignores the message
    guest.say(py_level, message.decode("utf-8", "replace"))


def log_enabled(h: GuestHost, level: int) -> int:
    py_level = _PY_LEVELS.get(_signed(level))
    return 1 if py_level is not None and h.guest.logger.isEnabledFor(py_level) else 0


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


# --- request line ---
def get_method(h: GuestHost, buf: int, limit: int) -> int:
    exchange = h.request("get_method")
    return _write_limited(h, buf, limit, exchange.method.encode())


def set_method(h: GuestHost, ptr: int, length: int) -> None:
    exchange = h.request("set_method")
    _before_next(h, "set the method")
    if length == 0:
        raise HostTrap("method cannot be empty")
    method = h.mem.read(ptr, length)
    if not _is_token(method):
        raise HostTrap(f"invalid method {method[:32]!r}")
    exchange.method = method.decode("ascii")


def get_uri(h: GuestHost, buf: int, limit: int) -> int:
    exchange = h.request("get_uri")
    return _write_limited(h, buf, limit, exchange.get_uri())


def set_uri(h: GuestHost, ptr: int, length: int) -> None:
    exchange = h.request("set_uri")
    _before_next(h, "set the uri")
    uri = h.mem.read(ptr, length) or b"/"
    if not uri.startswith(b"/") or _BAD_URI.search(uri):
        raise HostTrap(f"invalid uri {uri[:64]!r}: it must start with '/' and be encoded ASCII")
    exchange.uri = uri


def get_protocol_version(h: GuestHost, buf: int, limit: int) -> int:
    exchange = h.request("get_protocol_version")
    return _write_limited(h, buf, limit, exchange.protocol)


def get_source_addr(h: GuestHost, buf: int, limit: int) -> int:
    exchange = h.request("get_source_addr")
    return _write_limited(h, buf, limit, exchange.source_addr())


# --- headers ---
def get_header_names(h: GuestHost, kind: int, buf: int, limit: int) -> int:
    exchange = h.request("get_header_names")
    headers = exchange.headers(kind)
    if kind >= HeaderKind.REQUEST_TRAILERS and not h.features & TRAILERS:
        return 0
    return _write_list(h, buf, limit, list(dict.fromkeys([name.lower() for name, _ in headers])))


def get_header_values(h: GuestHost, kind: int, name_ptr: int, name_len: int, buf: int, limit: int) -> int:
    exchange = h.exchange
    if exchange is None:
        h.request("get_header_values")
        return 0
    name = _read_name(h, name_ptr, name_len)
    if kind == _REQUEST:
        headers = exchange.request_headers
    elif kind == _RESPONSE:
        headers = exchange.response_headers
    else:
        headers = exchange.headers(kind)
        if not h.features & TRAILERS:
            return 0
    return _write_list(h, buf, limit, [v for k, v in headers if k.lower() == name])


def set_header_value(h: GuestHost, kind: int, name_ptr: int, name_len: int, value_ptr: int, value_len: int) -> None:
    name = _read_name(h, name_ptr, name_len)
    value = h.mem.read(value_ptr, value_len)
    _check_header(name, value)
    headers = _mutable_headers(h, kind, "set")
    for k, _ in headers:
        if k.lower() == name:
            headers[:] = [(k, v) for k, v in headers if k.lower() != name]
            break
    headers.append((name, value))


def add_header_value(h: GuestHost, kind: int, name_ptr: int, name_len: int, value_ptr: int, value_len: int) -> None:
    name = _read_name(h, name_ptr, name_len)
    value = h.mem.read(value_ptr, value_len)
    _check_header(name, value)
    _mutable_headers(h, kind, "add").append((name, value))


def remove_header(h: GuestHost, kind: int, name_ptr: int, name_len: int) -> None:
    name = _read_name(h, name_ptr, name_len)
    headers = _mutable_headers(h, kind, "remove")
    headers[:] = [(k, v) for k, v in headers if k.lower() != name]


# --- bodies ---
def read_body(h: GuestHost, kind: int, buf: int, limit: int) -> int:
    exchange = h.request("read_body")
    if limit == 0:
        raise HostTrap("read_body with buf_limit 0")
    body: bytes | bytearray
    if kind == BodyKind.REQUEST:
        _before_next_or(h, BUFFER_REQUEST, "read the request body")
        if exchange.request_body is None:
            raise HostTrap("the request body was not buffered for this guest")
        body = exchange.request_body
        pos = h.request_read
    elif kind == BodyKind.RESPONSE:
        _before_next_or(h, BUFFER_RESPONSE, "read the response body")
        body = exchange.response_body
        pos = h.response_read
    else:
        raise HostTrap(f"unknown body kind {kind}")
    chunk = body[pos:pos + limit]
    if chunk:
        h.mem.write(buf, bytes(chunk))
    pos += len(chunk)
    if kind == BodyKind.REQUEST:
        h.request_read = pos
        if pos >= len(body) and exchange.request_body_more:
            raise HostTrap(f"request body is larger than max_body_size ({exchange.max_body_size} bytes)",
                           status=413)
    else:
        h.response_read = pos
    eof = 1 if pos >= len(body) else 0
    return count_len(eof, len(chunk))


def write_body(h: GuestHost, kind: int, ptr: int, length: int) -> None:
    exchange = h.request("write_body")
    data = h.mem.read(ptr, length)
    if kind == BodyKind.REQUEST:
        _before_next(h, "write the request body")
        old = exchange.request_body if h.request_written and exchange.request_body else b""
        if len(old) + len(data) > exchange.max_body_size:
            raise HostTrap(f"request body written by the guest exceeds max_body_size ({exchange.max_body_size})")
        exchange.request_body = old + data
        exchange.request_body_more = False
        exchange.request_body_replaced = True
        h.request_written = True
    elif kind == BodyKind.RESPONSE:
        _before_next_or(h, BUFFER_RESPONSE, "write the response body")
        if not h.response_written:
            exchange.response_body = bytearray()
            h.response_written = True
        if len(exchange.response_body) + len(data) > exchange.max_body_size:
            raise HostTrap(f"response body written by the guest exceeds max_body_size "
                           f"({exchange.max_body_size})")
        exchange.response_body += data
        exchange.response_body_replaced = True
    else:
        raise HostTrap(f"unknown body kind {kind}")


# --- status ---
def get_status_code(h: GuestHost) -> int:
    exchange = h.exchange
    if exchange is None:
        h.request("get_status_code")
        return 0
    return exchange.status


def set_status_code(h: GuestHost, status: int) -> None:
    exchange = h.request("set_status_code")
    _before_next_or(h, BUFFER_RESPONSE, "set the status code")
    if not 200 <= status <= 599:  # 1xx are interim responses: never a final status
        raise HostTrap(f"invalid status code {_signed(status)} (a final status is 200-599)")
    exchange.status = status


# The host functions through which a guest sees the next handler's response (status, headers,
# trailers): a chain that imports none of them lets an unbuffered response go straight through.
RESPONSE_OBSERVERS: Final = frozenset({"get_status_code", "get_header_names", "get_header_values"})

HOST_FUNCTIONS: Final[dict[str, Callable[..., int | None]]] = {
    f.__name__: f for f in (
        enable_features, get_config, log, log_enabled, get_method, set_method, get_uri, set_uri,
        get_protocol_version, get_header_names, get_header_values, set_header_value, add_header_value,
        remove_header, read_body, write_body, get_status_code, set_status_code, get_source_addr)
}


_native.learn("context", GuestContext)
_native.learn("exchange", Exchange)
_native.learn("host", GuestHost)
_native.bind_host(PHASES, HEADER_BYTES, HOST_FUNCTIONS)
