"""Snapshots of a guest after its init (wizer's technique), in pure Python.

A guest's init (start section, `_initialize` or `_start`) can take hundreds of
milliseconds and leave a large heap. Run it once, capture linear memory and the
mutable globals, and emit a module that starts in that state: instances then map
the captured memory copy-on-write instead of re-running init.

The host drives it in three steps, and this module never runs wasm itself:

1. `refusal(wasm)` says why a module cannot be snapshotted (state that the
   snapshot could not carry), or None;
2. `instrument(wasm)` adds exports for the memory and every defined mutable
   global (new exports shift no index), so the host can run init on it and read
   them;
3. `rewrite(wasm, memory, globals)` emits the snapshot module from the original
   module and what was read.

Only the sections a snapshot touches are decoded into fields (import, memory,
global, export, start, data count, data); the others keep their bytes. Function
bodies are decoded instruction by instruction only to look for what a snapshot
cannot capture (table mutation, dropped segments).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from .abi import EXPORT_INITIALIZE, EXPORT_START

_T = TypeVar("_T")

PAGE_SIZE: Final = 65536
MEMORY_EXPORT: Final = "__snapshot_memory"
GLOBAL_EXPORT_PREFIX: Final = "__snapshot_global_"
SNAPSHOT_EXPORT_PREFIX: Final = "__snapshot_"
DEFAULT_GAP: Final = 4096
"""Zero runs shorter than this stay inside a data segment: splitting within a 4 KiB host page saves no image."""
DEFAULT_MAX_SEGMENTS: Final = 10_000
"""Fewer segments than wasmparser's limit (100,000), and a small data section to parse."""
DENSE_IMAGE_SIZE: Final = 16 << 20
"""wasmtime's `Config.memory_guaranteed_dense_image_size` default: images below it are always copy-on-write."""

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


# --- instructions --------------------------------------------------------------------------------------------------
# Each opcode's immediates, as far as needed to step over them. An opcode left out is unknown: the scan refuses it
# rather than guessing its length (a wrong guess could hide a table.grow).

_NONE, _LEB, _LEB2, _BLOCK, _MEMARG, _BYTES4, _BYTES8, _BR_TABLE, _SELECT, _TRY_TABLE, _END, _DELEGATE = range(12)
_FORBIDDEN, _PREFIX_FC, _PREFIX_FD, _PREFIX_FE = range(12, 16)


def _opcode_table() -> list[int | None]:
    table: list[int | None] = [None] * 256

    def put(kind: int, *opcodes: int | range) -> None:
        for op in opcodes:
            for code in op if isinstance(op, range) else (op,):
                table[code] = kind

    # unreachable nop else throw_ref return catch_all drop select ref.is_null ref.eq ref.as_non_null, numeric
    put(_NONE, 0x00, 0x01, 0x05, 0x0A, 0x0F, 0x19, 0x1A, 0x1B, 0xD1, 0xD3, 0xD4, range(0x45, 0xC5))
    put(_BLOCK, 0x02, 0x03, 0x04, 0x06)  # block loop if try(legacy)
    put(_END, _END_OP)
    put(_DELEGATE, 0x18)  # legacy `delegate` ends a try block
    # catch throw rethrow br br_if call return_call call_ref return_call_ref, local/global get/set, table.get,
    # memory.size memory.grow i32.const i64.const ref.null ref.func br_on_null br_on_non_null
    put(_LEB, 0x07, 0x08, 0x09, 0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, range(0x20, 0x26), 0x3F, 0x40, 0x41, 0x42,
        0xD0, 0xD2, 0xD5, 0xD6)
    put(_LEB2, 0x11, 0x13)  # call_indirect return_call_indirect: type, table
    put(_MEMARG, range(0x28, 0x3F))  # loads and stores
    put(_BYTES4, 0x43)
    put(_BYTES8, 0x44)
    put(_BR_TABLE, 0x0E)
    put(_SELECT, 0x1C)
    put(_TRY_TABLE, 0x1F)
    put(_FORBIDDEN, 0x26)  # table.set
    put(_PREFIX_FC, 0xFC)
    put(_PREFIX_FD, 0xFD)
    put(_PREFIX_FE, 0xFE)
    return table


_OPCODES: Final = _opcode_table()

# 0xFC prefix: saturating truncation, bulk memory, tables, wide arithmetic.
_FC: Final[dict[int, int]] = {
    **dict.fromkeys(range(8), _NONE), 8: _LEB2, 9: _FORBIDDEN, 10: _LEB2, 11: _LEB, 12: _FORBIDDEN,
    13: _FORBIDDEN, 14: _FORBIDDEN, 15: _FORBIDDEN, 16: _LEB, 17: _FORBIDDEN, **dict.fromkeys(range(19, 23), _NONE)}
_FORBIDDEN_NAMES: Final = {0x26: "table.set", 0xFC09: "data.drop", 0xFC0C: "table.init", 0xFC0D: "elem.drop",
                           0xFC0E: "table.copy", 0xFC0F: "table.grow", 0xFC11: "table.fill"}
_FORBIDDEN_WHY: Final = {"data.drop": "dropped data segments cannot be captured",
                         "elem.drop": "dropped element segments cannot be captured"}

# 0xFD prefix: SIMD and relaxed SIMD (0x00-0x113) minus the numbers the proposal left unassigned.
_SIMD_UNASSIGNED: Final = frozenset({0x9A, 0xA2, 0xA5, 0xA6, 0xAF, 0xB0, 0xB2, 0xB3, 0xB4, 0xBB, 0xC2, 0xC5, 0xC6,
                                     0xCF, 0xD0, 0xD2, 0xD3, 0xD4, 0xE2, 0xEE})
_SIMD_MEMARG: Final = frozenset((*range(0x00, 0x0C), 0x5C, 0x5D))  # v128.load*, v128.store, load*_zero
_SIMD_MEMARG_LANE: Final = range(0x54, 0x5C)  # v128.load*_lane, v128.store*_lane
_SIMD_LANE: Final = range(0x15, 0x23)  # extract_lane, replace_lane
_SIMD_16_BYTES: Final = (0x0C, 0x0D)  # v128.const, i8x16.shuffle
_SIMD_LAST: Final = 0x113


def _skip_leb(data: bytes, pos: int) -> int:
    while data[pos] & 0x80:
        pos += 1
    return pos + 1


def _read_leb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise SnapshotError(f"LEB128 integer too long at byte {pos}")


def _skip_memarg(data: bytes, pos: int) -> int:
    align, pos = _read_leb(data, pos)
    if align & 0x40:  # multi-memory: a memory index follows
        pos = _skip_leb(data, pos)
    return _skip_leb(data, pos)  # offset (u64 with memory64)


def _skip_blocktype(data: bytes, pos: int) -> int:
    if data[pos] in _REF_PREFIXES:
        return _skip_leb(data, pos + 1)
    return _skip_leb(data, pos)  # 0x40, a one-byte value type, or a type index (s33)


def _step(data: bytes, pos: int) -> tuple[int, str | None]:
    """Step over the instruction at pos: the position after it, and its name if a snapshot refuses it.

    Raises SnapshotError on an unknown opcode, IndexError past the data (callers turn it into a SnapshotError).
    """
    op = data[pos]
    pos += 1
    kind = _OPCODES[op]
    if kind in (_NONE, _END):
        return pos, None
    if kind == _LEB:
        return _skip_leb(data, pos), None
    if kind == _MEMARG:
        return _skip_memarg(data, pos), None
    if kind == _BLOCK:
        return _skip_blocktype(data, pos), None
    if kind in (_LEB2, _DELEGATE):
        return _skip_leb(data, _skip_leb(data, pos)) if kind == _LEB2 else _skip_leb(data, pos), None
    if kind == _BYTES4:
        return pos + 4, None
    if kind == _BYTES8:
        return pos + 8, None
    if kind == _BR_TABLE:
        count, pos = _read_leb(data, pos)
        for _ in range(count + 1):
            pos = _skip_leb(data, pos)
        return pos, None
    if kind == _PREFIX_FC:
        sub, pos = _read_leb(data, pos)
        sub_kind = _FC.get(sub)
        if sub_kind == _NONE:
            return pos, None
        if sub_kind == _LEB:
            return _skip_leb(data, pos), None
        if sub_kind == _LEB2:
            return _skip_leb(data, _skip_leb(data, pos)), None
        if sub_kind == _FORBIDDEN:
            return pos, _FORBIDDEN_NAMES[0xFC00 | sub]
        raise SnapshotError(f"unknown opcode 0xfc 0x{sub:02x}")
    if kind == _PREFIX_FD:
        return _skip_simd(data, pos), None
    if kind == _PREFIX_FE:
        return _skip_atomic(data, pos), None
    if kind == _SELECT:
        count, pos = _read_leb(data, pos)
        for _ in range(count):
            pos = _skip_blocktype(data, pos)  # a value type: same shapes
        return pos, None
    if kind == _TRY_TABLE:
        pos = _skip_blocktype(data, pos)
        count, pos = _read_leb(data, pos)
        for _ in range(count):
            catch = data[pos]
            pos += 1
            if catch in (0, 1):  # catch, catch_ref: tag and label
                pos = _skip_leb(data, _skip_leb(data, pos))
            elif catch in (2, 3):  # catch_all, catch_all_ref: label
                pos = _skip_leb(data, pos)
            else:
                raise SnapshotError(f"unknown catch kind 0x{catch:02x} in try_table")
        return pos, None
    if kind == _FORBIDDEN:
        return pos, _FORBIDDEN_NAMES[op]
    raise SnapshotError(f"unknown opcode 0x{op:02x}")


def _run_pattern(with_end: bool) -> re.Pattern[bytes]:
    """A regex that steps over a run of the common instructions exactly as `_step` would, in C.

    It is only an accelerator: whatever it does not match (br_table, prefixes but 0xFC's common ones, anything
    refused or unknown) is left to `_step`. Built from the same tables, so the two cannot disagree on lengths.
    """

    def codes(*kinds: int) -> bytes:
        return b"[" + b"".join(b"\\x%02x" % op for op, kind in enumerate(_OPCODES) if kind in kinds) + b"]"

    leb = rb"[\x80-\xff]*+[\x00-\x7f]"
    # memarg: an align with bit 6 set (in its first byte) is followed by a memory index; then the offset.
    memarg = rb"(?:[\x00-\x3f]|[\x80-\xbf]" + leb + rb"|(?:[\x40-\x7f]|[\xc0-\xff]" + leb + b")" + leb + b")" + leb
    fc = {kind: b"".join(b"\\x%02x" % sub for sub, k in _FC.items() if k == kind) for kind in (_NONE, _LEB, _LEB2)}
    alternatives = [
        codes(_NONE, _END) if with_end else codes(_NONE),
        codes(_LEB) + leb,
        codes(_MEMARG) + memarg,
        codes(_BLOCK) + rb"(?:[\x63\x64]" + leb + b"|" + leb + b")",
        codes(_LEB2) + leb + leb,
        rb"\x43[\x00-\xff]{4}",
        rb"\x44[\x00-\xff]{8}",
        rb"\xfc(?:[" + fc[_NONE] + b"]|[" + fc[_LEB] + b"]" + leb + b"|[" + fc[_LEB2] + b"]" + leb + leb + b")",
    ]
    return re.compile(b"(?:" + b"|".join(alternatives) + b")*+")


_BODY_RUN: Final = _run_pattern(with_end=True)
_EXPR_RUN: Final = _run_pattern(with_end=False)


def _scan(data: bytes, pos: int, end: int, *, expression: bool = False, fast: bool = True) -> tuple[int, str | None]:
    """Step over the instructions from pos: the position where it stopped, and the first refused instruction.

    expression=True: a constant expression, which has no blocks: stop after its first `end`. Otherwise a function
    body: stop at `end` (callers check that the last step did not go past it). fast=False steps in Python only
    (to test the regex against). Stops at the first refused instruction. Raises SnapshotError on an unknown opcode,
    IndexError past the data.
    """
    run = (_EXPR_RUN if expression else _BODY_RUN).match if fast else None
    while True:
        if run is not None:
            matched = run(data, pos, end)
            assert matched is not None  # a starred pattern always matches
            pos = matched.end()
        if expression and data[pos] == _END_OP:
            return pos + 1, None
        if not expression and pos >= end:
            return pos, None
        pos, refused = _step(data, pos)
        if refused:
            return pos, refused


def _skip_simd(data: bytes, pos: int) -> int:
    sub, pos = _read_leb(data, pos)
    if sub > _SIMD_LAST or sub in _SIMD_UNASSIGNED:
        raise SnapshotError(f"unknown opcode 0xfd 0x{sub:02x}")
    if sub in _SIMD_MEMARG:
        return _skip_memarg(data, pos)
    if sub in _SIMD_MEMARG_LANE:
        return _skip_memarg(data, pos) + 1
    if sub in _SIMD_LANE:
        return pos + 1
    if sub in _SIMD_16_BYTES:
        return pos + 16
    return pos


def _skip_atomic(data: bytes, pos: int) -> int:
    sub, pos = _read_leb(data, pos)
    if sub <= 0x02 or 0x10 <= sub <= 0x4E:  # notify, wait32, wait64; atomic loads, stores, rmw, cmpxchg
        return _skip_memarg(data, pos)
    if sub == 0x03:  # atomic.fence: one reserved byte
        return pos + 1
    raise SnapshotError(f"unknown opcode 0xfe 0x{sub:02x}")


def _const_expr(reader: _Reader) -> bytes:
    """The bytes of a constant expression, its `end` included."""
    start = reader.pos
    try:
        end, forbidden = _scan(reader.data, start, reader.end, expression=True)
    except IndexError:
        raise SnapshotError("unexpected end of section in a constant expression") from None
    if forbidden or end > reader.end:
        raise SnapshotError("malformed constant expression")
    reader.pos = end
    return reader.data[start:end]


# --- sections -----------------------------------------------------------------------------------------------------


@dataclass
class _Section:
    id: int
    payload: bytes
    raw: bytes = b""  # the section as read; reused on output while `payload` is unchanged

    def encode(self) -> bytes:
        if self.raw:
            return self.raw
        return bytes([self.id]) + _uleb(len(self.payload)) + self.payload


@dataclass
class _Limits:
    flags: int
    minimum: int
    maximum: int | None
    page_size_log2: int | None = None

    @classmethod
    def read(cls, reader: _Reader) -> _Limits:
        flags = reader.byte()
        if flags & ~0x0F:
            raise SnapshotError(f"unknown limits flags 0x{flags:02x}")
        minimum = reader.uleb(64)
        maximum = reader.uleb(64) if flags & 1 else None
        page_size_log2 = reader.uleb() if flags & 8 else None
        return cls(flags, minimum, maximum, page_size_log2)

    def encode(self) -> bytes:
        out = bytes([self.flags]) + _uleb(self.minimum)
        if self.maximum is not None:
            out += _uleb(self.maximum)
        if self.page_size_log2 is not None:
            out += _uleb(self.page_size_log2)
        return out


@dataclass
class _Import:
    module: str
    name: str
    kind: int
    desc: bytes  # the type part, kept as read

    def encode(self) -> bytes:
        return _name(self.module) + _name(self.name) + bytes([self.kind]) + self.desc


@dataclass
class _Global:
    valtype: bytes
    mutable: bool
    init: bytes  # constant expression, `end` included

    def encode(self) -> bytes:
        return self.valtype + bytes([self.mutable]) + self.init


@dataclass
class _Export:
    name: str
    kind: int
    index: int

    def encode(self) -> bytes:
        return _name(self.name) + bytes([self.kind]) + _uleb(self.index)


@dataclass
class _Data:
    flags: int  # 0: active in memory 0, 1: passive, 2: active with a memory index
    memory: int
    offset: bytes  # constant expression (active segments), else b""
    init: bytes

    def encode(self) -> bytes:
        out = _uleb(self.flags)
        if self.flags == 2:
            out += _uleb(self.memory)
        return out + self.offset + _uleb(len(self.init)) + self.init


def _read_vec(payload: bytes, read_one: Callable[[_Reader], _T]) -> list[_T]:
    reader = _Reader(payload)
    items = [read_one(reader) for _ in range(reader.uleb())]
    reader.done()
    return items


def _encode_vec(items: Sequence[_Limits | _Import | _Global | _Export | _Data]) -> bytes:
    return _uleb(len(items)) + b"".join(item.encode() for item in items)


def _read_import(reader: _Reader) -> _Import:
    module, name = reader.name(), reader.name()
    kind = reader.byte()
    start = reader.pos
    if kind == _FUNC_KIND:
        reader.uleb()
    elif kind == _TABLE_KIND:
        reader.valtype()
        _Limits.read(reader)
    elif kind == _MEMORY_KIND:
        _Limits.read(reader)
    elif kind == _GLOBAL_KIND:
        reader.valtype()
        reader.byte()
    elif kind == _TAG_KIND:
        reader.byte()
        reader.uleb()
    else:
        raise SnapshotError(f"unknown import kind 0x{kind:02x} ({module}.{name})")
    return _Import(module, name, kind, reader.data[start:reader.pos])


def _read_global(reader: _Reader) -> _Global:
    valtype = reader.valtype()
    mutability = reader.byte()
    if mutability > 1:
        raise SnapshotError(f"unknown global mutability 0x{mutability:02x}")
    return _Global(valtype, bool(mutability), _const_expr(reader))


def _read_export(reader: _Reader) -> _Export:
    name = reader.name()
    kind = reader.byte()
    if kind not in _KIND_NAMES:
        raise SnapshotError(f"unknown export kind 0x{kind:02x} ({name})")
    return _Export(name, kind, reader.uleb())


_I32_CONST_OFFSET: Final = re.compile(rb"\x00\x41[\x80-\xff]{0,4}[\x00-\x7f]\x0b")


def _read_data(reader: _Reader) -> _Data:
    # Most segments are `active, i32.const offset`: read those without the general path (Go emits thousands).
    matched = _I32_CONST_OFFSET.match(reader.data, reader.pos, reader.end)
    if matched:
        size, start = _read_leb(reader.data, matched.end())
        reader.pos = start + size
        if reader.pos > reader.end:
            raise SnapshotError("unexpected end of section")
        return _Data(0, 0, matched.group()[1:], reader.data[start:reader.pos])
    flags = reader.uleb()
    if flags > 2:
        raise SnapshotError(f"unknown data segment flags {flags}")
    memory = reader.uleb() if flags == 2 else 0
    offset = _const_expr(reader) if flags != 1 else b""
    return _Data(flags, memory, offset, reader.take(reader.uleb()))


@dataclass
class _Module:
    """A module split into sections, with the ones a snapshot changes decoded."""

    sections: list[_Section]
    imports: list[_Import] = field(default_factory=list)
    function_count: int = 0
    memories: list[_Limits] = field(default_factory=list)
    globals: list[_Global] = field(default_factory=list)
    exports: list[_Export] = field(default_factory=list)
    start: int | None = None
    data_count: int | None = None
    _data: list[_Data] | None = None

    @property
    def data(self) -> list[_Data]:
        """The data segments, decoded on first use (only `rewrite` needs them)."""
        if self._data is None:
            section = self.section(_DATA)
            self._data = [] if section is None else _read_vec(section.payload, _read_data)
        return self._data

    @classmethod
    def parse(cls, wasm: bytes) -> _Module:
        if wasm[:8] != _MAGIC:
            raise SnapshotError("not a WebAssembly 1.0 module (bad magic or version)")
        module = cls(sections=[])
        reader = _Reader(wasm, 8)
        last = 0
        while reader.pos < reader.end:
            start = reader.pos
            section_id = reader.byte()
            size = reader.uleb()
            payload = reader.take(size)
            if section_id != _CUSTOM:
                if section_id not in _ORDER:
                    raise SnapshotError(f"unknown section id {section_id}")
                if _ORDER[section_id] <= last:
                    raise SnapshotError(f"section {section_id} out of order or repeated")
                last = _ORDER[section_id]
            module.sections.append(_Section(section_id, payload, wasm[start:reader.pos]))
            module._decode(section_id, payload)
        return module

    def _decode(self, section_id: int, payload: bytes) -> None:
        if section_id == _IMPORT:
            self.imports = _read_vec(payload, _read_import)
        elif section_id == _FUNCTION:
            self.function_count = _Reader(payload).uleb()
        elif section_id == _MEMORY:
            self.memories = _read_vec(payload, _Limits.read)
        elif section_id == _GLOBAL:
            self.globals = _read_vec(payload, _read_global)
        elif section_id == _EXPORT:
            self.exports = _read_vec(payload, _read_export)
        elif section_id == _START:
            reader = _Reader(payload)
            self.start = reader.uleb()
            reader.done()
        elif section_id == _DATACOUNT:
            reader = _Reader(payload)
            self.data_count = reader.uleb()
            reader.done()

    def imported(self, kind: int) -> int:
        return sum(1 for item in self.imports if item.kind == kind)

    def section(self, section_id: int) -> _Section | None:
        return next((s for s in self.sections if s.id == section_id), None)

    def replace(self, section_id: int, payload: bytes | None) -> None:
        """Set a section's payload (adding the section in its place if missing), or remove it with None."""
        current = self.section(section_id)
        if payload is None:
            if current is not None:
                self.sections.remove(current)
            return
        if current is not None:
            if current.payload != payload:
                current.payload, current.raw = payload, b""
            return
        rank = _ORDER[section_id]
        at = next((i for i, s in enumerate(self.sections) if s.id != _CUSTOM and _ORDER[s.id] > rank),
                  len(self.sections))
        self.sections.insert(at, _Section(section_id, payload))

    def encode_fields(self) -> None:
        """Re-encode every decoded section from its fields (sections that were absent stay absent)."""
        encoders: dict[int, Callable[[], bytes]] = {
            _IMPORT: lambda: _encode_vec(self.imports), _MEMORY: lambda: _encode_vec(self.memories),
            _GLOBAL: lambda: _encode_vec(self.globals), _EXPORT: lambda: _encode_vec(self.exports),
            _START: lambda: _uleb(self.start or 0), _DATACOUNT: lambda: _uleb(self.data_count or 0),
            _DATA: lambda: _encode_vec(self.data)}
        for section in self.sections:
            if section.id in encoders:
                self.replace(section.id, encoders[section.id]())

    def encode(self, parts: Mapping[int, Sequence[bytes | memoryview]] | None = None) -> bytes:
        """The module's bytes; `parts` gives a section's payload as pieces (a big data section: joined once here)."""
        pieces: list[bytes | memoryview] = [_MAGIC]
        for section in self.sections:
            if parts and section.id in parts:
                payload = parts[section.id]
                pieces += [bytes([section.id]), _uleb(sum(len(piece) for piece in payload)), *payload]
            else:
                pieces.append(section.encode())
        return b"".join(pieces)

    def function_bodies(self) -> Iterable[tuple[int, bytes, int, int]]:
        """(function index, code payload, body start, body end) of every defined function."""
        code = self.section(_CODE)
        if code is None:
            return
        reader = _Reader(code.payload)
        first = self.imported(_FUNC_KIND)
        for i in range(reader.uleb()):
            size = reader.uleb()
            start = reader.pos
            reader.take(size)
            yield first + i, code.payload, start, reader.pos
        reader.done()

    def function_names(self) -> dict[int, str]:
        """Function names from the `name` custom section, if any (best effort: for messages only)."""
        for section in self.sections:
            if section.id != _CUSTOM:
                continue
            reader = _Reader(section.payload)
            try:
                if reader.name() != "name":
                    continue
                while reader.pos < reader.end:
                    sub, size = reader.byte(), reader.uleb()
                    if sub != 1:
                        reader.take(size)
                        continue
                    names = {}
                    for _ in range(reader.uleb()):
                        index = reader.uleb()
                        names[index] = reader.name()
                    return names
            except SnapshotError:
                return {}
        return {}


def _parse(wasm: bytes) -> _Module:
    try:
        return _Module.parse(bytes(wasm))
    except SnapshotError as exc:
        raise SnapshotError(f"cannot parse the module: {exc}") from None


# --- what cannot be captured ----------------------------------------------------------------------------------------


def _structural_refusal(module: _Module) -> str | None:
    """Why the module's imports, memories or globals keep it from being snapshotted (no code is looked at)."""
    for item in module.imports:
        if item.kind in (_MEMORY_KIND, _TABLE_KIND, _GLOBAL_KIND):
            kind = _KIND_NAMES[item.kind]
            return f"imports a {kind} ({item.module}.{item.name}): imported {kind} state cannot be captured"
    if len(module.memories) > 1:
        return f"defines {len(module.memories)} memories: only a single memory can be captured"
    for memory in module.memories:
        if memory.flags & 2:
            return "its memory is shared: shared memory cannot be captured"
        if memory.flags & 4:
            return "its memory is 64-bit (memory64): not supported by snapshots"
        if memory.page_size_log2 is not None:
            return "its memory has a custom page size: not supported by snapshots"
    first = module.imported(_GLOBAL_KIND)
    for i, global_ in enumerate(module.globals):
        if global_.mutable and global_.valtype[0] not in _NUMERIC:
            what = _valtype_name(global_.valtype)
            why = "v128 globals cannot be read through the host" if what == "v128" else \
                "reference-typed globals cannot be captured"
            return f"global {first + i} is a mutable {what}: {why}"
    return None


def _code_refusal(module: _Module) -> str | None:
    """Why some function body keeps the module from being snapshotted (table mutation, dropped segments)."""
    names: dict[int, str] | None = None
    for index, data, start, end in module.function_bodies():
        try:
            count, pos = _read_leb(data, start)
            for _ in range(count):  # locals: count and type
                pos = _skip_blocktype(data, _skip_leb(data, pos))
            pos, forbidden = _scan(data, pos, end)
            if pos > end or (forbidden is None and pos != end):
                problem = "its body does not end where its size says"
            elif forbidden is not None:
                problem = f"uses {forbidden}: {_FORBIDDEN_WHY.get(forbidden, 'table state cannot be captured')}"
            else:
                continue
        except IndexError:
            problem = "its body runs past the code section"
        except SnapshotError as exc:
            problem = str(exc)
        if names is None:
            names = module.function_names()
        label = f"function {index}" + (f" ({names[index]})" if index in names else "")
        return f"{label} {problem}" if problem.startswith("uses ") else f"{label}: {problem}"
    return None


def refusal(wasm: bytes) -> str | None:
    """Why this module cannot be snapshotted, or None if it can.

    Refused: imported memories, tables or globals; more than one memory (or a shared, 64-bit or custom-page-size
    one); mutable globals that are not i32/i64/f32/f64; any table.set/grow/fill/copy/init, elem.drop or data.drop in
    a function body (their effect during init would be lost); an unknown opcode; a module that cannot be parsed.
    """
    try:
        module = _parse(wasm)
    except SnapshotError as exc:
        return str(exc)
    return _structural_refusal(module) or _code_refusal(module)


# --- instrument -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CapturedGlobal:
    """A defined mutable global, and the export `instrument` gave it."""

    index: int
    type: str  # "i32", "i64", "f32" or "f64"
    export: str


@dataclass(frozen=True)
class Instrumented:
    """The module to run init on, and where to read what `rewrite` needs from its instance."""

    wasm: bytes
    globals: tuple[CapturedGlobal, ...]
    memory_export: str | None  # None: the module has no memory


def _mutable_globals(module: _Module) -> list[tuple[int, str]]:
    first = module.imported(_GLOBAL_KIND)
    return [(first + i, _NUMERIC[g.valtype[0]]) for i, g in enumerate(module.globals) if g.mutable]


def instrument(wasm: bytes) -> Instrumented:
    """Export the memory and every defined mutable global so that their values can be read after init.

    Only exports are added: no index moves, so the instrumented module runs init exactly as the original does.
    Raises SnapshotError for a module whose imports, memories or globals `refusal` rejects (its code is not looked
    at: call `refusal` first).
    """
    module = _parse(wasm)
    reason = _structural_refusal(module)
    if reason:
        raise SnapshotError(f"cannot snapshot: {reason}")
    taken = {export.name for export in module.exports}
    captured = tuple(CapturedGlobal(index, kind, f"{GLOBAL_EXPORT_PREFIX}{index}")
                     for index, kind in _mutable_globals(module))
    added = [_Export(g.export, _GLOBAL_KIND, g.index) for g in captured]
    memory_export = MEMORY_EXPORT if module.memories else None
    if memory_export:
        added.append(_Export(memory_export, _MEMORY_KIND, 0))
    clash = [export.name for export in added if export.name in taken]
    if clash:
        raise SnapshotError(f"the module already exports {clash[0]!r}")
    module.exports.extend(added)
    module.replace(_EXPORT, _encode_vec(module.exports))
    return Instrumented(module.encode(), captured, memory_export)


# --- memory layout --------------------------------------------------------------------------------------------------

_NONZERO: Final = re.compile(rb"[^\x00]")
_ZERO_CHUNK: Final = bytes(1 << 16)


def _first_nonzero(memory: bytes | bytearray, pos: int) -> int:
    """Index of the first non-zero byte at or after pos, or -1."""
    end = len(memory)
    step = len(_ZERO_CHUNK)
    while pos + step <= end and memory.startswith(_ZERO_CHUNK, pos):
        pos += step
    match = _NONZERO.search(memory, pos)
    return match.start() if match else -1


def _last_nonzero_end(memory: bytes | bytearray) -> int:
    """One past the last non-zero byte (0 for an all-zero memory)."""
    end = len(memory)
    step = len(_ZERO_CHUNK)
    while end >= step and memory.endswith(_ZERO_CHUNK, 0, end):
        end -= step
    return len(memory[max(0, end - step):end].rstrip(b"\0")) + max(0, end - step)


def _runs(memory: bytes | bytearray, gap: int) -> list[tuple[int, int]]:
    """Non-zero runs of memory as (start, end), merged across zero runs shorter than gap bytes."""
    if gap < 1:
        raise ValueError("gap must be at least 1")
    runs: list[tuple[int, int]] = []
    pos = _first_nonzero(memory, 0)
    if pos < 0:
        return runs
    last = _last_nonzero_end(memory)
    zeros = bytes(gap)
    while True:
        stop = memory.find(zeros, pos, last)
        if stop < 0:
            runs.append((pos, last))
            return runs
        # memory[stop - 1] is not zero: a zero run starting earlier would have been found first.
        runs.append((pos, stop))
        pos = _first_nonzero(memory, stop + gap)


def cow_friendly(segments: Sequence[tuple[int, int]], *, dense_image_size: int = DENSE_IMAGE_SIZE) -> bool:
    """Whether wasmtime builds a copy-on-write memory image from these active segments ((start, end) byte ranges).

    wasmtime's rule (crates/environ, try_static_init), per memory, empty segments left out: the image size (last
    byte minus first byte over all segments) is less than twice the sum of segment lengths, or less than
    `Config.memory_guaranteed_dense_image_size` (16 MiB by default). Segments must also use i32.const offsets and
    fit in the memory's minimum size, which `rewrite` guarantees.
    """
    used = [(start, end) for start, end in segments if end > start]
    if not used:
        return True
    image = max(end for _, end in used) - min(start for start, _ in used)
    data = sum(end - start for start, end in used)
    return image < 2 * data or image < dense_image_size


def layout(memory: bytes | bytearray, *, gap: int = DEFAULT_GAP, max_segments: int = DEFAULT_MAX_SEGMENTS,
           dense_image_size: int = DENSE_IMAGE_SIZE) -> list[tuple[int, int]]:
    """The byte ranges of memory to emit as data segments, as (start, end), in order.

    Non-zero runs, merged across zero runs shorter than `gap`. If that layout is not `cow_friendly`, or has more
    than `max_segments` segments, the smallest zero gaps are merged too until it is: a single segment from the
    first to the last non-zero byte always is.
    """
    if max_segments < 1:
        raise ValueError("max_segments must be at least 1")
    runs = _runs(memory, gap)
    if len(runs) <= max_segments and cow_friendly(runs, dense_image_size=dense_image_size):
        return runs
    image = runs[-1][1] - runs[0][0]
    data = sum(end - start for start, end in runs)
    count = len(runs)
    # Gap i lies between runs i and i + 1; merge the smallest first (fewest zero bytes stored for each merge).
    merged = [False] * (len(runs) - 1)
    for i in sorted(range(len(runs) - 1), key=lambda i: runs[i + 1][0] - runs[i][1]):
        if count <= max_segments and (image < 2 * data or image < dense_image_size):
            break
        merged[i] = True
        data += runs[i + 1][0] - runs[i][1]
        count -= 1
    out = [runs[0]]
    for i, run in enumerate(runs[1:]):
        if merged[i]:
            out[-1] = (out[-1][0], run[1])
        else:
            out.append(run)
    return out


# --- rewrite --------------------------------------------------------------------------------------------------------


def _const(kind: str, value: int | float) -> bytes:
    """A constant expression of this type and value (see `rewrite` for what values are accepted)."""
    if kind in ("i32", "i64"):
        if isinstance(value, float):
            raise SnapshotError(f"an {kind} global needs an int, got {value!r}")
        bits = 32 if kind == "i32" else 64
        if not -(1 << (bits - 1)) <= value < (1 << bits):
            raise SnapshotError(f"{value} does not fit in {kind}")
        value &= (1 << bits) - 1
        if value >> (bits - 1):
            value -= 1 << bits
        return (b"\x41" if kind == "i32" else b"\x42") + _sleb(value) + b"\x0b"
    try:
        if kind == "f32":
            return b"\x43" + struct.pack("<f", value) + b"\x0b"
        return b"\x44" + struct.pack("<d", value) + b"\x0b"
    except (OverflowError, struct.error) as exc:
        raise SnapshotError(f"{value!r} does not fit in {kind}: {exc}") from None


def _i32_offset(offset: int) -> bytes:
    """`i32.const offset; end`, with the offset as the signed value i32.const takes."""
    return b"\x41" + _sleb(offset - (1 << 32) if offset >= 1 << 31 else offset) + b"\x0b"


def _set_globals(module: _Module, globals: Mapping[int, int | float]) -> None:
    """Every defined mutable global gets its captured value as constant initializer."""
    mutable = dict(_mutable_globals(module))
    missing = sorted(set(mutable) - set(globals))
    extra = sorted(set(globals) - set(mutable))
    if missing or extra:
        raise SnapshotError(f"globals do not match the module's defined mutable globals {sorted(mutable)}: "
                            f"missing {missing}, not mutable or not defined {extra}")
    first = module.imported(_GLOBAL_KIND)
    for index, kind in mutable.items():
        module.globals[index - first].init = _const(kind, globals[index])
    if mutable:
        module.replace(_GLOBAL, _encode_vec(module.globals))


def _set_memory(module: _Module, memory: bytes | bytearray, *, gap: int,
                max_segments: int) -> list[tuple[int, int]]:
    """The memory's minimum becomes the captured size; returns the layout of its data segments."""
    if not module.memories:
        if memory:
            raise SnapshotError("the module has no memory, but a captured memory was given")
        return []
    limits = module.memories[0]
    pages, rest = divmod(len(memory), PAGE_SIZE)
    if rest:
        raise SnapshotError(f"captured memory is {len(memory)} bytes: not a whole number of 64 KiB pages")
    if pages < limits.minimum:
        raise SnapshotError(f"captured memory has {pages} pages, fewer than the memory's minimum "
                            f"{limits.minimum}: memory cannot shrink")
    if limits.maximum is not None and pages > limits.maximum:
        raise SnapshotError(f"captured memory has {pages} pages, more than the memory's maximum {limits.maximum}")
    limits.minimum = pages
    module.replace(_MEMORY, _encode_vec(module.memories))
    return layout(memory, gap=gap, max_segments=max_segments)


def rewrite(wasm: bytes, memory: bytes | bytearray, globals: Mapping[int, int | float], *,
            drop_exports: Iterable[str] = (EXPORT_INITIALIZE, EXPORT_START), gap: int = DEFAULT_GAP,
            max_segments: int = DEFAULT_MAX_SEGMENTS) -> bytes:
    """The snapshot module: `wasm` (the original, not the instrumented module) starting in the captured state.

    - memory: the whole captured linear memory (a multiple of 64 KiB; empty if the module has no memory). Its
      page count becomes the memory's minimum (the maximum is kept; exceeding it is an error), its non-zero bytes
      become active data segments laid out by `layout` (copy-on-write friendly, appended after the original
      segments). The original active segments become empty passive ones so that data indices stay valid for
      memory.init; if the module has no DataCount section (then nothing can refer to a data index) they are left
      out instead. Passive segments are kept as they are.
    - globals: the value of every defined mutable global by global index, as `Instrumented.globals` lists them:
      ints for i32/i64 (signed or unsigned), Python floats for f32/f64 (what wasmtime's `Global.value` returns;
      f32 values are rounded to f32). Each becomes that global's constant initializer.
    - The start section goes, and so do the exports named in drop_exports and any `__snapshot_` export.
    Everything else (types, functions, tables, element segments, custom sections) is kept byte for byte.

    Raises SnapshotError if the module is refused by its imports, memories or globals, or the capture does not fit
    it. Function bodies are not checked: call `refusal` first.
    """
    module = _parse(wasm)
    reason = _structural_refusal(module)
    if reason:
        raise SnapshotError(f"cannot snapshot: {reason}")

    _set_globals(module, globals)
    # Data indices matter only to memory.init and data.drop, which need a DataCount section: with one, the old
    # active segments (applied at instantiation, dropped since) stay as empty passive ones; without, they go.
    keep_indices = module.data_count is not None
    data = [seg if seg.flags == 1 else _Data(1, 0, b"", b"") for seg in module.data
            if keep_indices or seg.flags == 1]
    segments = _set_memory(module, memory, gap=gap, max_segments=max_segments)
    # The data section is handed to `encode` as pieces that point into memory: one copy of the captured bytes.
    view = memoryview(memory)
    data_parts: list[bytes | memoryview] = [_uleb(len(data) + len(segments)), *(seg.encode() for seg in data)]
    for start, end in segments:
        data_parts += [b"\0" + _i32_offset(start) + _uleb(end - start), view[start:end]]
    module.replace(_DATA, b"" if data or segments else None)  # its place; the payload comes from data_parts
    if keep_indices:
        module.replace(_DATACOUNT, _uleb(len(data) + len(segments)))

    dropped = set(drop_exports)
    exports = [e for e in module.exports if e.name not in dropped and not e.name.startswith(SNAPSHOT_EXPORT_PREFIX)]
    if len(exports) != len(module.exports):
        module.replace(_EXPORT, _encode_vec(exports))
    module.replace(_START, None)
    return module.encode({_DATA: data_parts})
