"""Facts of the http-wasm http-handler ABI: names, signatures and constants.

Nothing here talks to wasmtime or ASGI; every other module reads the ABI from
here. Source: https://http-wasm.io/http-handler-abi/
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, IntFlag
from types import MappingProxyType
from typing import Final

HOST_MODULE: Final = "http_handler"
WASI_MODULE: Final = "wasi_snapshot_preview1"

EXPORT_MEMORY: Final = "memory"
EXPORT_HANDLE_REQUEST: Final = "handle_request"
EXPORT_HANDLE_RESPONSE: Final = "handle_response"
EXPORT_INITIALIZE: Final = "_initialize"  # WASI reactors (Go c-shared, Zig reactor)
EXPORT_START: Final = "_start"  # WASI commands (TinyGo)

I32: Final = "i32"
I64: Final = "i64"

# (params, results) of the guest's required exports.
GUEST_EXPORTS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    EXPORT_HANDLE_REQUEST: ((), (I64,)),
    EXPORT_HANDLE_RESPONSE: ((I32, I32), ()),
}

# Every host function of the ABI: name -> (params, results).
HOST_FUNCTIONS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "enable_features": ((I32,), (I32,)),
    "get_config": ((I32, I32), (I32,)),
    "log": ((I32, I32, I32), ()),
    "log_enabled": ((I32,), (I32,)),
    "get_method": ((I32, I32), (I32,)),
    "set_method": ((I32, I32), ()),
    "get_uri": ((I32, I32), (I32,)),
    "set_uri": ((I32, I32), ()),
    "get_protocol_version": ((I32, I32), (I32,)),
    "get_header_names": ((I32, I32, I32), (I64,)),
    "get_header_values": ((I32, I32, I32, I32, I32), (I64,)),
    "set_header_value": ((I32, I32, I32, I32, I32), ()),
    "add_header_value": ((I32, I32, I32, I32, I32), ()),
    "remove_header": ((I32, I32, I32), ()),
    "read_body": ((I32, I32, I32), (I64,)),
    "write_body": ((I32, I32, I32), ()),
    "get_status_code": ((), (I32,)),
    "set_status_code": ((I32,), ()),
    "get_source_addr": ((I32, I32), (I32,)),
}


class Feature(IntFlag):
    """Bits of `enable_features`."""

    NONE = 0
    BUFFER_REQUEST = 1
    BUFFER_RESPONSE = 2
    TRAILERS = 4


def feature_names(features: int) -> list[str]:
    """The names of the feature bits set in `features`, as the ABI spells them (e.g. buffer_request)."""
    return [str(feature.name).lower() for feature in Feature if feature and features & feature]


class HeaderKind(IntEnum):
    REQUEST = 0
    RESPONSE = 1
    REQUEST_TRAILERS = 2
    RESPONSE_TRAILERS = 3


class BodyKind(IntEnum):
    REQUEST = 0
    RESPONSE = 1


class LogLevel(IntEnum):
    DEBUG = -1
    INFO = 0
    WARN = 1
    ERROR = 2
    NONE = 3


# `handle_request`'s i64 result: req_ctx in the upper 32 bits, the next flag in bit 0.
NEXT_BIT: Final = 1
REQ_CTX_SHIFT: Final = 32
# A `count_len` (or `eof_len`) i64: the count (or eof) in the upper 32 bits, the length in the lower.
COUNT_SHIFT: Final = 32


def split_ctx_next(ctx_next: int) -> tuple[int, bool]:
    """Split `handle_request`'s i64 result into (req_ctx, next)."""
    value = ctx_next & 0xFFFF_FFFF_FFFF_FFFF
    return value >> REQ_CTX_SHIFT, bool(value & NEXT_BIT)


def count_len(count: int, length: int) -> int:
    """Encode a `count_len` (or `eof_len`) i64: count in the upper 32 bits."""
    return (count << COUNT_SHIFT) | length


# The facts the native path (http_wasm_asgi/_native) uses, handed to its configure_abi: it restates none of
# them and refuses a missing or an unknown key.
NATIVE_FACTS: Final[Mapping[str, int]] = MappingProxyType({
    "next_bit": NEXT_BIT,
    "req_ctx_shift": REQ_CTX_SHIFT,
    "count_shift": COUNT_SHIFT,
    "buffer_response": int(Feature.BUFFER_RESPONSE),
    "header_kind_request": int(HeaderKind.REQUEST),
    "header_kind_response": int(HeaderKind.RESPONSE),
})
