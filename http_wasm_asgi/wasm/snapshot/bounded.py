"""Whether a guest export always ends quickly, read from its code: the host may then call it as one plain
synchronous call instead of a cooperative one (no fiber, no future), because it cannot hold the event loop.

An export is bounded when nothing it can reach loops: no `loop` instruction, no call cycle (tail calls count),
no call through a table or a reference (the target is not known), no bulk memory or table operation (their cost
grows with an operand) and no atomic wait. It may call the http_handler host functions, which do bounded work on
the host side; any other import (WASI) makes it unbounded. Without loops, a function runs each instruction of its
body at most once, so its cost is at most its size plus its callees' costs: past MAX_INSTRUCTIONS in all it is
treated as unbounded too, and so is code the reader does not know. The answer errs towards "unbounded", which
only means the cooperative call, as for any guest.
"""

from __future__ import annotations

from typing import Final

from ...abi import HOST_MODULE
from .code import _read_leb, _skip_locals, _step
from .encoding import _FUNC_KIND, SnapshotError
from .sections import _Import, _parse

# Instructions an export may run, callees included: ~100 us of guest code at worst, far below a tick.
MAX_INSTRUCTIONS: Final = 100_000

_LOOP, _CALL, _RETURN_CALL = 0x03, 0x10, 0x12
_INDIRECT_CALLS: Final = frozenset({0x11, 0x13, 0x14, 0x15})  # call_indirect, return_call_indirect, call_ref, ...
# 0xFC sub-opcodes whose cost grows with an operand: memory.init/copy/fill, table.init/copy/grow/fill
_BULK: Final = frozenset({8, 10, 11, 12, 14, 15, 17})
_ATOMIC_WAITS: Final = frozenset({1, 2})  # memory.atomic.wait32/64 (0xFE prefix)


class _Unbounded(Exception):
    """Something reachable may run long (or cannot be read): the export is not bounded."""


def runs_bounded(wasm: bytes, export: str) -> bool:
    """Whether the function exported as `export` always ends within MAX_INSTRUCTIONS (see the module's doc)."""
    try:
        module = _parse(wasm)
        index = next((e.index for e in module.exports if e.name == export and e.kind == _FUNC_KIND), None)
        if index is None:
            return False
        imports = [item for item in module.imports if item.kind == _FUNC_KIND]
        bodies = {i: (data, start, end) for i, data, start, end in module.function_bodies()}
        _cost(index, imports, bodies, {}, set())
    except (_Unbounded, SnapshotError, IndexError, RecursionError):
        return False
    return True


def _cost(function: int, imports: list[_Import], bodies: dict[int, tuple[bytes, int, int]], costs: dict[int, int],
          active: set[int]) -> int:
    """The most instructions `function` may run, callees included (`costs` memoises them; `active` holds the
    functions on the current call path: reaching one again is a cycle)."""
    if function < len(imports):
        if imports[function].module != HOST_MODULE:
            raise _Unbounded
        return 1
    if function in costs:
        return costs[function]
    if function in active or function not in bodies:
        raise _Unbounded
    active.add(function)
    total, callees = _read_body(*bodies[function])
    for callee in callees:
        total += _cost(callee, imports, bodies, costs, active)
        if total > MAX_INSTRUCTIONS:
            raise _Unbounded
    active.remove(function)
    costs[function] = total
    return total


def _read_body(data: bytes, start: int, end: int) -> tuple[int, list[int]]:
    """A body's instruction count and the functions it calls (once per call site); raises _Unbounded at the
    first instruction that may run long, or past MAX_INSTRUCTIONS."""
    pos = _skip_locals(data, start)
    instructions, callees = 0, []
    while pos < end:
        op = data[pos]
        instructions += 1
        if op == _LOOP or op in _INDIRECT_CALLS or instructions > MAX_INSTRUCTIONS:
            raise _Unbounded
        if op in (_CALL, _RETURN_CALL):
            callee, pos = _read_leb(data, pos + 1)
            callees.append(callee)
            continue
        if op in (0xFC, 0xFE) and _read_leb(data, pos + 1)[0] in (_BULK if op == 0xFC else _ATOMIC_WAITS):
            raise _Unbounded
        pos = _step(data, pos)[0]
    if pos != end:
        raise _Unbounded
    return instructions, callees
