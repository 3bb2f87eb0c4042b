"""Function bodies and constant expressions, instruction by instruction: where they end, and whether they
do what a snapshot cannot capture (table mutation, dropped segments)."""

from __future__ import annotations

import re
from typing import Final

from .encoding import _END_OP, _REF_PREFIXES, SnapshotError, _Reader

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


def _skip_locals(data: bytes, start: int) -> int:
    """Where a function body's instructions begin: past its local declarations (a count and a type each)."""
    count, pos = _read_leb(data, start)
    for _ in range(count):
        pos = _skip_blocktype(data, _skip_leb(data, pos))
    return pos


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
