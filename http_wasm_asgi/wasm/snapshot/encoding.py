"""The WebAssembly binary format's basics for snapshots: constants, LEB128, a section reader, value types."""

from __future__ import annotations

from typing import Final, TypeVar

_T = TypeVar("_T")

_MAGIC: Final = b"\0asm\x01\0\0\0"

# Section ids.
_CUSTOM, _TYPE, _IMPORT, _FUNCTION, _TABLE, _MEMORY, _GLOBAL, _EXPORT = 0, 1, 2, 3, 4, 5, 6, 7
_START, _ELEMENT, _CODE, _DATA, _DATACOUNT, _TAG = 8, 9, 10, 11, 12, 13
# Position of each known section in a module (the binary format fixes the order).
_ORDER: Final = {_TYPE: 1, _IMPORT: 2, _FUNCTION: 3, _TABLE: 4, _MEMORY: 5, _TAG: 6, _GLOBAL: 7, _EXPORT: 8,
                 _START: 9, _ELEMENT: 10, _DATACOUNT: 11, _CODE: 12, _DATA: 13}

# External kinds (imports and exports).
_FUNC_KIND, _TABLE_KIND, _MEMORY_KIND, _GLOBAL_KIND, _TAG_KIND = 0, 1, 2, 3, 4
_KIND_NAMES: Final = {_FUNC_KIND: "function", _TABLE_KIND: "table", _MEMORY_KIND: "memory",
                      _GLOBAL_KIND: "global", _TAG_KIND: "tag"}

# Value types: the four a captured global may have, and the others, by name for messages.
_NUMERIC: Final = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64"}
_V128: Final = 0x7B
_REF_PREFIXES: Final = (0x63, 0x64)  # (ref null ht), (ref ht): a heap type follows
_REF_ABBREVIATIONS: Final = {0x70: "funcref", 0x6F: "externref", 0x6E: "anyref", 0x6D: "eqref", 0x6C: "i31ref",
                             0x6B: "structref", 0x6A: "arrayref", 0x69: "exnref", 0x71: "nullref",
                             0x72: "nullexternref", 0x73: "nullfuncref", 0x74: "nullexnref"}
_END_OP: Final = 0x0B


class SnapshotError(ValueError):
    """The module cannot be read, instrumented or rewritten; the message says why."""


# --- LEB128 -------------------------------------------------------------------------------------------------------


def _uleb(value: int) -> bytes:
    """Unsigned LEB128, minimal length."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _sleb(value: int) -> bytes:
    """Signed LEB128, minimal length."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _name(text: str) -> bytes:
    raw = text.encode()
    return _uleb(len(raw)) + raw


class _Reader:
    """A cursor over one section's payload; running off its end is a SnapshotError."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise SnapshotError("unexpected end of section")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self, bits: int = 32) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift >= bits + 7:
                raise SnapshotError(f"LEB128 integer too long at byte {self.pos}")
        if result >> bits:
            raise SnapshotError(f"integer out of range at byte {self.pos}")
        return result

    def take(self, size: int) -> bytes:
        if size > self.end - self.pos:
            raise SnapshotError("unexpected end of section")
        value = self.data[self.pos:self.pos + size]
        self.pos += size
        return value

    def name(self) -> str:
        raw = self.take(self.uleb())
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise SnapshotError(f"a name is not UTF-8: {raw!r}") from exc

    def valtype(self) -> bytes:
        """The encoding of one value type (one byte, or a reference prefix and its heap type)."""
        start = self.pos
        code = self.byte()
        if code in _REF_PREFIXES:
            self.uleb(33)  # heap type, s33: same length rules
        elif code not in _NUMERIC and code != _V128 and code not in _REF_ABBREVIATIONS:
            raise SnapshotError(f"unknown value type 0x{code:02x}")
        return self.data[start:self.pos]

    def done(self) -> None:
        if self.pos != self.end:
            raise SnapshotError(f"{self.end - self.pos} unexpected bytes at the end of a section")


def _valtype_name(raw: bytes) -> str:
    code = raw[0]
    if code in _NUMERIC:
        return _NUMERIC[code]
    if code == _V128:
        return "v128"
    return _REF_ABBREVIATIONS.get(code, "reference")
