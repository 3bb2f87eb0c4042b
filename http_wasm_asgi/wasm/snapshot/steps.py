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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ...abi import EXPORT_INITIALIZE, EXPORT_START
from .code import _FORBIDDEN_WHY, _scan, _skip_locals
from .encoding import (
    _DATA,
    _DATACOUNT,
    _EXPORT,
    _GLOBAL,
    _GLOBAL_KIND,
    _KIND_NAMES,
    _MEMORY,
    _MEMORY_KIND,
    _NUMERIC,
    _START,
    _TABLE_KIND,
    SnapshotError,
    _sleb,
    _uleb,
    _valtype_name,
)
from .sections import _Data, _encode_vec, _Export, _Module, _parse

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
            pos, forbidden = _scan(data, _skip_locals(data, start), end)
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
