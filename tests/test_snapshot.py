"""Snapshots after init (http_wasm_asgi.wasm.snapshot): refusal rules, instrument, rewrite, memory layout.

wasmtime is used directly here: it runs the init, reads what the instrumented module exports, and checks that the
snapshot validates and starts in the captured state.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from hypothesis import given
from hypothesis import strategies as st

from http_wasm_asgi.wasm import snapshot
from http_wasm_asgi.wasm.snapshot import (
    PAGE_SIZE,
    SnapshotError,
    code,
    cow_friendly,
    encoding,
    instrument,
    layout,
    refusal,
    rewrite,
    sections,
    steps,
)
from support import ROOT

MiB = 1 << 20
ENGINE = wasmtime.Engine()
GUESTS = ROOT / "guests"


def wat(text: str) -> bytes:
    return wasmtime.wat2wasm(text)


class Run:
    """An instance of a module, with the http_handler (and any other non-WASI) imports as stubs that trap."""

    def __init__(self, wasm: bytes, *, wasi: bool = False) -> None:
        self.module = wasmtime.Module(ENGINE, wasm)
        self.store = wasmtime.Store(ENGINE)
        linker = wasmtime.Linker(ENGINE)
        if wasi:
            self.store.set_wasi(wasmtime.WasiConfig())
            linker.define_wasi()
        for item in self.module.imports:
            if wasi and item.module == "wasi_snapshot_preview1":
                continue
            assert isinstance(item.type, wasmtime.FuncType), f"{item.module}.{item.name}"
            linker.define_func(item.module, item.name, item.type, _trap(item.name))
        self.exports = linker.instantiate(self.store, self.module).exports(self.store)

    def call(self, name: str, *args: Any) -> Any:
        func = self.exports[name]
        assert isinstance(func, wasmtime.Func)
        return func(self.store, *args)

    def capture(self, instrumented: snapshot.Instrumented) -> tuple[bytes, dict[int, int | float]]:
        """The memory and mutable globals, read through the exports `instrument` added."""
        memory = b""
        if instrumented.memory_export:
            exported = self.exports[instrumented.memory_export]
            assert isinstance(exported, wasmtime.Memory)
            memory = bytes(exported.read(self.store))
        values: dict[int, int | float] = {}
        for item in instrumented.globals:
            exported = self.exports[item.export]
            assert isinstance(exported, wasmtime.Global)
            values[item.index] = exported.value(self.store)
        return memory, values


def _trap(name: str) -> Callable[..., Any]:
    def stub(*_: Any) -> Any:
        raise wasmtime.Trap(f"stub {name} called: only the module's own init may run")

    return stub


def state_of(wasm: bytes, **kwargs: Any) -> tuple[bytes, dict[int, int | float]]:
    """Memory and mutable globals of a fresh instance (of the instrumented module, so that they can be read)."""
    instrumented = instrument(wasm)
    return Run(instrumented.wasm, **kwargs).capture(instrumented)


def section_ids(wasm: bytes) -> list[int]:
    return [section.id for section in sections._Module.parse(wasm).sections]


def same_floats(a: Mapping[int, int | float], b: Mapping[int, int | float]) -> bool:
    """Equal, with NaN equal to NaN (and -0.0 distinct from 0.0)."""
    def key(v: int | float) -> object:
        return ("nan",) if isinstance(v, float) and math.isnan(v) else (v, math.copysign(1, v))
    return a.keys() == b.keys() and all(key(a[k]) == key(b[k]) for k in a)


# --- a start section that grows memory and sets globals ------------------------------------------------------------

START_MODULE = r"""
(module
  (memory (export "memory") 1 64)
  (global $runs (mut i32) (i32.const 0))
  (global $i32 (mut i32) (i32.const 0))
  (global $i64 (mut i64) (i64.const 0))
  (global $f32 (mut f32) (f32.const 0))
  (global $f64 (mut f64) (f64.const 0))
  (global $nan (mut f64) (f64.const 0))
  (global $fixed i32 (i32.const 7))
  (data (i32.const 16) "from the data section")
  (func $init
    (global.set $runs (i32.add (global.get $runs) (i32.const 1)))
    (drop (memory.grow (i32.const 40)))                                   ;; 41 pages, 2.6 MiB
    (memory.fill (i32.const 70000) (i32.const 0xab) (i32.const 5000))     ;; a run in page 1
    (memory.fill (i32.const 75000) (i32.const 0xcd) (i32.const 100))      ;; 0 bytes between: one run
    (memory.fill (i32.const 90000) (i32.const 0xef) (i32.const 10))       ;; 14,900 zeros before: another
    (i32.store (i32.const 2686972) (i32.const 0x12345678))                ;; the last 4 bytes of page 40
    (i32.store8 (i32.const 16) (i32.const 70))                            ;; 'F' over the data segment's 'f'
    (global.set $i32 (i32.const -5))
    (global.set $i64 (i64.const -0x7edcba9876543210))
    (global.set $f32 (f32.const 0.1))
    (global.set $f64 (f64.const -2.25e100))
    (global.set $nan (f64.const -nan:0x4000000000001)))
  (start $init)
  (func (export "runs") (result i32) (global.get $runs))
  (func (export "fixed") (result i32) (global.get $fixed)))
"""


def test_start_section_snapshot_keeps_memory_and_globals_and_does_not_run_init_again() -> None:
    wasm = wat(START_MODULE)
    assert refusal(wasm) is None
    instrumented = instrument(wasm)
    assert [(g.index, g.type) for g in instrumented.globals] == [
        (0, "i32"), (1, "i32"), (2, "i64"), (3, "f32"), (4, "f64"), (5, "f64")]
    assert instrumented.memory_export == snapshot.MEMORY_EXPORT
    original = Run(instrumented.wasm)
    assert original.call("runs") == 1
    memory, values = original.capture(instrumented)
    assert len(memory) == 41 * PAGE_SIZE
    assert memory[16:37] == b"From the data section"
    assert values[1] == -5 and values[2] == -0x7EDCBA9876543210
    assert values[3] == struct.unpack("<f", struct.pack("<f", 0.1))[0] and values[4] == -2.25e100
    assert math.isnan(values[5])

    snap = rewrite(wasm, memory, values)
    wasmtime.Module.validate(ENGINE, snap)
    assert encoding._START not in section_ids(snap)
    assert encoding._CUSTOM in section_ids(snap)  # the name section is kept
    restored = Run(snap)
    assert restored.call("runs") == 1, "the start function ran again"
    assert restored.call("fixed") == 7
    exported = restored.exports["memory"]
    assert isinstance(exported, wasmtime.Memory)
    assert exported.size(restored.store) == 41
    assert exported.type(restored.store).limits.max == 64
    assert exported.read(restored.store) == memory
    # the globals, read through a second instrumentation (the snapshot itself exports no extra names)
    assert {e.name for e in wasmtime.Module(ENGINE, snap).exports} == {"memory", "runs", "fixed"}
    again_memory, again_values = state_of(snap)
    assert again_memory == memory
    assert same_floats(again_values, values)
    nan_bits = sections._Module.parse(snap).globals[5].init[1:9]
    assert struct.unpack("<Q", nan_bits)[0] >> 52 == 0xFFF  # still a negative NaN

    # the layout: the data segment's bytes and the three runs (two merged across no gap), the word at the end
    assert layout(memory) == [(16, 37), (70000, 75100), (90000, 90010), (2686972, 2686976)]


def test_rewrite_rejects_a_capture_that_does_not_fit() -> None:
    wasm = wat(START_MODULE)
    memory, values = state_of(wasm)
    with pytest.raises(SnapshotError, match="more than the memory's maximum 64"):
        rewrite(wasm, memory + bytes(24 * PAGE_SIZE), values)
    with pytest.raises(SnapshotError, match="fewer than the memory's minimum"):
        rewrite(wat("(module (memory 2))"), bytes(PAGE_SIZE), {})
    with pytest.raises(SnapshotError, match="whole number of 64 KiB pages"):
        rewrite(wasm, memory[:-1], values)
    with pytest.raises(SnapshotError, match=r"missing \[5\]"):
        rewrite(wasm, memory, {k: v for k, v in values.items() if k != 5})
    with pytest.raises(SnapshotError, match=r"not mutable or not defined \[6\]"):
        rewrite(wasm, memory, {**values, 6: 7})
    with pytest.raises(SnapshotError, match="needs an int"):
        rewrite(wasm, memory, {**values, 1: 1.5})
    with pytest.raises(SnapshotError, match="does not fit in i32"):
        rewrite(wasm, memory, {**values, 1: 1 << 32})
    with pytest.raises(SnapshotError, match="does not fit in f32"):
        rewrite(wasm, memory, {**values, 3: 1e300})
    with pytest.raises(SnapshotError, match="has no memory"):
        rewrite(wat("(module)"), bytes(PAGE_SIZE), {})
    with pytest.raises(SnapshotError, match="imports a memory"):
        rewrite(wat('(module (import "env" "memory" (memory 1)))'), b"", {})


@pytest.mark.parametrize(("kind", "value", "expected"), [
    ("i32", -1, -1), ("i32", 0xFFFFFFFF, -1), ("i32", -(1 << 31), -(1 << 31)), ("i32", (1 << 31) - 1, (1 << 31) - 1),
    ("i64", (1 << 64) - 1, -1), ("i64", -(1 << 63), -(1 << 63)), ("i64", 1 << 62, 1 << 62),
    ("f32", 0.5, 0.5), ("f32", -math.inf, -math.inf), ("f64", -0.0, -0.0), ("f64", 5e-324, 5e-324),
])
def test_global_values_round_trip_through_wasmtime(kind: str, value: int | float, expected: int | float) -> None:
    wasm = wat(f"(module (global (mut {kind}) ({kind}.const 0)) (global {kind} ({kind}.const 0)))")
    _, values = state_of(rewrite(wasm, b"", {0: value}))
    assert same_floats(values, {0: expected})


# --- an _initialize export, passive segments and memory.init after init -------------------------------------------

INITIALIZE_MODULE = r"""
(module
  (memory (export "memory") 1)
  (global $ready (mut i32) (i32.const 0))
  (data $active (i32.const 0) "active!")
  (data $passive "passive segment")
  (func (export "_initialize")
    (global.set $ready (i32.add (global.get $ready) (i32.const 1)))
    (memory.init $passive (i32.const 200) (i32.const 0) (i32.const 7))
    (i32.store8 (i32.const 100) (i32.const 42)))
  (func (export "handle_request") (result i64)
    (memory.init $passive (i32.const 1000) (i32.const 0) (i32.const 15))
    (i64.extend_i32_u (global.get $ready)))
  (func (export "init_active") (param i32)   ;; the active segment: dropped once applied, in both modules
    (memory.init $active (i32.const 2000) (i32.const 0) (local.get 0))))
"""


def test_initialize_export_and_passive_segments() -> None:
    wasm = wat(INITIALIZE_MODULE)
    assert refusal(wasm) is None
    instrumented = instrument(wasm)
    original = Run(instrumented.wasm)
    original.call("_initialize")
    memory, values = original.capture(instrumented)
    assert values == {0: 1}
    assert memory[:7] == b"active!" and memory[200:207] == b"passive" and memory[100] == 42

    snap = rewrite(wasm, memory, values)
    restored = Run(snap)
    assert "_initialize" not in {e.name for e in restored.module.exports}
    data = sections._Module.parse(snap).data
    assert [(seg.flags, seg.init) for seg in data[:2]] == [(1, b""), (1, b"passive segment")]  # indices kept
    assert sections._Module.parse(snap).data_count == len(data)
    assert restored.call("handle_request") == 1
    exported = restored.exports["memory"]
    assert isinstance(exported, wasmtime.Memory)
    after = exported.read(restored.store)
    assert after[1000:1015] == b"passive segment"
    assert after[:1000] == memory[:1000] and after[1015:] == memory[1015:]
    for run in (original, restored):  # memory.init of the old active segment: length 0 works, more traps
        run.call("init_active", 0)
        with pytest.raises(wasmtime.Trap, match="out of bounds"):
            run.call("init_active", 1)
    kept = rewrite(wasm, memory, values, drop_exports=())
    assert "_initialize" in {e.name for e in wasmtime.Module(ENGINE, kept).exports}


def test_module_without_datacount_loses_its_old_active_segments() -> None:
    wasm = wat('(module (memory 1) (data (i32.const 8) "abc") (data (i32.const 8000) "def") (start $s) '
               '(func $s (i32.store8 (i32.const 9) (i32.const 66))))')
    memory, values = state_of(wasm)
    snap = rewrite(wasm, memory, values)
    module = sections._Module.parse(snap)
    assert module.data_count is None
    assert [(seg.flags, seg.offset, seg.init) for seg in module.data] == [
        (0, b"\x41\x08\x0b", b"aBc"), (0, b"\x41\xc0\x3e\x0b", b"def")]
    assert state_of(snap)[0] == memory


def test_no_memory_no_globals_and_big_offsets() -> None:
    empty = wat("(module (func (export \"f\")))")
    assert rewrite(empty, b"", {}) == empty
    assert instrument(empty) == snapshot.Instrumented(empty, (), None)
    # offsets past 2 GiB are negative i32.const values
    assert steps._i32_offset(0x80000000) == b"\x41\x80\x80\x80\x80\x78\x0b"
    assert steps._i32_offset(0xFFFFFFFF) == b"\x41\x7f\x0b"


def test_instrument_refuses_what_it_cannot_export_and_name_clashes() -> None:
    with pytest.raises(SnapshotError, match="imports a global"):
        instrument(wat('(module (import "env" "g" (global i32)))'))
    with pytest.raises(SnapshotError, match="already exports '__snapshot_memory'"):
        instrument(wat('(module (memory (export "__snapshot_memory") 1))'))


# --- refusal rules ---------------------------------------------------------------------------------------------------

TABLE = '(table $t 2 funcref) (elem $e func $f) (func $f)'
REFUSED = {
    "imported memory": ('(module (import "env" "memory" (memory 1)))',
                        "imports a memory (env.memory): imported memory state cannot be captured"),
    "imported table": ('(module (import "env" "table" (table 1 funcref)))',
                       "imports a table (env.table): imported table state cannot be captured"),
    "imported global": ('(module (import "env" "g" (global i32)))',
                        "imports a global (env.g): imported global state cannot be captured"),
    "table.grow": (f'(module {TABLE} (func $grow (drop (table.grow $t (ref.null func) (i32.const 1)))))',
                   "function 1 (grow) uses table.grow: table state cannot be captured"),
    "table.set": (f'(module {TABLE} (func (table.set $t (i32.const 0) (ref.null func))))',
                  "function 1 uses table.set: table state cannot be captured"),
    "table.fill": (f'(module {TABLE} (func (table.fill $t (i32.const 0) (ref.null func) (i32.const 1))))',
                   "uses table.fill: table state cannot be captured"),
    "table.copy": (f'(module {TABLE} (func (table.copy (i32.const 0) (i32.const 1) (i32.const 1))))',
                   "uses table.copy: table state cannot be captured"),
    "table.init": (f'(module {TABLE} (func (table.init $e (i32.const 0) (i32.const 0) (i32.const 1))))',
                   "uses table.init: table state cannot be captured"),
    "elem.drop": (f'(module {TABLE} (func (elem.drop $e)))',
                  "uses elem.drop: dropped element segments cannot be captured"),
    "data.drop": ('(module (memory 1) (data $d "x") (func (export "handle_request") (data.drop $d)))',
                  "function 0 uses data.drop: dropped data segments cannot be captured"),
    "mutable funcref global": ('(module (global (mut funcref) (ref.null func)))',
                               "global 0 is a mutable funcref: reference-typed globals cannot be captured"),
    "mutable externref global": ('(module (global i32 (i32.const 1)) (global (mut externref) (ref.null extern)))',
                                 "global 1 is a mutable externref: reference-typed globals cannot be captured"),
    "mutable v128 global": ('(module (global (mut v128) (v128.const i64x2 0 0)))', "global 0 is a mutable v128"),
    "two memories": ('(module (memory 1) (memory 1))',
                     "defines 2 memories: only a single memory can be captured"),
    "shared memory": ('(module (memory 1 2 shared))', "its memory is shared"),
    "memory64": ('(module (memory i64 1))', "its memory is 64-bit"),
    "GC instruction": ('(module (type $s (struct)) (func (drop (struct.new $s))))', "unknown opcode 0xfb"),
    "after an imported function": (
        f'(module (import "env" "f" (func)) {TABLE} (func (nop)) (func $last (table.set $t (i32.const 0) '
        '(ref.null func))))', "function 3 (last) uses table.set"),
}


@pytest.mark.parametrize("rule", REFUSED)
def test_refusal_rule(rule: str) -> None:
    text, message = REFUSED[rule]
    wasm = wat(text)
    wasmtime.Module.validate(ENGINE, wasm)  # refused, yet a valid module
    reason = refusal(wasm)
    assert reason is not None and message in reason, reason


def test_refusal_of_what_is_not_a_module() -> None:
    assert refusal(b"not wasm") == "cannot parse the module: not a WebAssembly 1.0 module (bad magic or version)"
    truncated = wat(START_MODULE)[:-3]
    assert (refusal(truncated) or "").startswith("cannot parse the module:")
    # two functions; the first body's size cuts its i32.const immediate short
    module = (encoding._MAGIC + bytes.fromhex("010401600000") + bytes.fromhex("0303020000")
              + bytes.fromhex("0a0802" "03004180" "02000b"))
    assert refusal(module) == "function 0: its body does not end where its size says"
    assert refusal(module[:-5] + bytes.fromhex("00c5" "02000b")) == "function 0: unknown opcode 0xc5"
    assert refusal(module[:-1]) == "cannot parse the module: unexpected end of section"


# Every kind of immediate, with bytes inside immediates that would be refused opcodes if read as such: the decoder
# must step over them exactly (and the regex scan must agree with the plain decoder).
IMMEDIATES_MODULE = r"""
(module
  (type $sig (func (param i32) (result i32)))
  (memory 1 1 shared)
  (table $t 2 funcref)
  (tag $tag (param i32))
  (data $d "xyz")
  (elem declare func $f)
  (func $f (type $sig) (local.get 0))
  (func (export "all") (param i32) (result i32) (local i64 f32 f64 v128 funcref)
    (block $out
      (loop $l
        (br_table 0 1 0 0 1 (local.get 0))))
    (drop (if (result i32) (i32.const 1) (then (i32.const 0x26)) (else (i32.const 0xfc0f))))
    (drop (f32.const 0x1.4c26p+0)) (drop (f64.const 0x1.26fc0f0fc1126p+0))
    (drop (i64.const 0x26fc0ffc0efc11))
    (drop (select (result i32) (i32.const 1) (i32.const 2) (i32.const 3)))
    (drop (select (i32.const 1) (i32.const 2) (i32.const 3)))
    (drop (call_indirect $t (type $sig) (i32.const 0x26) (i32.const 0)))
    (drop (call_ref $sig (i32.const 1) (ref.func $f)))
    (drop (ref.is_null (ref.null func)))
    (drop (table.get $t (i32.const 0))) (drop (table.size $t))
    (drop (i32.load offset=0x26fc align=2 (i32.const 0)))
    (i64.store32 offset=0xfc0f (i32.const 0) (i64.const 0x26))
    (drop (memory.size)) (drop (memory.grow (i32.const 0)))
    (memory.init $d (i32.const 0) (i32.const 0) (i32.const 0))
    (memory.copy (i32.const 0) (i32.const 1) (i32.const 1))
    (memory.fill (i32.const 0) (i32.const 0x26) (i32.const 1))
    (drop (i32.trunc_sat_f32_s (f32.const 1)))
    (drop (v128.const i8x16 0x26 0xfc 0x0f 0xfc 0x09 0xfc 0x0c 0xfc 0x0d 0xfc 0x0e 0xfc 0x11 0x26 0x26 0x26))
    (drop (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 (v128.const i64x2 0 0) (v128.const i64x2 0 0)))
    (drop (i8x16.extract_lane_s 15 (v128.load offset=0x26 (i32.const 0))))
    (drop (v128.load16_lane offset=0xfc 7 (i32.const 0) (v128.const i64x2 0 0)))
    (v128.store64_lane 1 (i32.const 0) (v128.const i64x2 0 0))
    (drop (v128.load32_zero (i32.const 0)))
    (drop (f32x4.relaxed_madd (v128.const i64x2 0 0) (v128.const i64x2 0 0) (v128.const i64x2 0 0)))
    (drop (i32x4.dot_i16x8_s (v128.const i64x2 0 0) (v128.const i64x2 0 0)))
    (drop (i32.atomic.rmw.cmpxchg offset=0x26 (i32.const 0) (i32.const 1) (i32.const 2)))
    (drop (memory.atomic.notify (i32.const 0) (i32.const 1)))
    (atomic.fence)
    (drop (block $caught (result i32)
      (try_table (catch $tag $caught) (throw $tag (i32.const 0x26)))
      (i32.const 0)))
    (block $any (try_table (catch_all $any) (nop)))
    (drop (i64.extend_i32_s (i32.extend8_s (i32.const 0x26))))
    (i32.const 0x26)))
"""


def test_instruction_decoder_steps_over_every_kind_of_immediate() -> None:
    wasm = wat(IMMEDIATES_MODULE)
    wasmtime.Module.validate(ENGINE, wasm)
    assert refusal(wasm) == "its memory is shared: shared memory cannot be captured"
    module = sections._Module.parse(wasm)
    assert steps._code_refusal(module) is None
    for _, data, start, end in module.function_bodies():
        count, pos = code._read_leb(data, start)
        for _ in range(count):
            pos = code._skip_blocktype(data, code._skip_leb(data, pos))
        assert code._scan(data, pos, end) == code._scan(data, pos, end, fast=False) == (end, None)
    # the same body followed by a table.grow is refused
    grows = wat(IMMEDIATES_MODULE.replace("(i32.const 0x26)))\n", "(drop (table.grow $t (ref.null func) "
                                          "(i32.const 1))) (i32.const 0x26)))\n"))
    assert (steps._code_refusal(sections._Module.parse(grows)) or "").endswith(
        "uses table.grow: table state cannot be captured")


def test_the_regex_scan_agrees_with_the_plain_decoder_on_the_repo_guests() -> None:
    for path in sorted(GUESTS.glob("zig/*.wasm")):
        module = sections._Module.parse(path.read_bytes())
        for index, data, start, end in module.function_bodies():
            count, pos = code._read_leb(data, start)
            for _ in range(count):
                pos = code._skip_blocktype(data, code._skip_leb(data, pos))
            fast, slow = code._scan(data, pos, end), code._scan(data, pos, end, fast=False)
            assert fast == slow == (end, None), (path.name, index)


# --- the repo's guests -----------------------------------------------------------------------------------------------


def repo_guests() -> list[Path]:
    return sorted(GUESTS.rglob("*.wasm"))


@pytest.mark.parametrize("path", repo_guests(), ids=lambda p: str(p.relative_to(GUESTS)))
def test_repo_guest_round_trip_and_refusal(path: Path) -> None:
    wasm = path.read_bytes()
    module = sections._Module.parse(wasm)
    assert module.encode() == wasm
    # every decoded section re-encodes to the same payload from its fields
    payloads = [section.payload for section in module.sections]
    module.encode_fields()
    assert [section.payload for section in module.sections] == payloads
    # and with every section header rewritten (minimal LEB128 sizes) it is still a valid module
    for section in module.sections:
        section.raw = b""
    wasmtime.Module.validate(ENGINE, module.encode())
    reason = refusal(wasm)
    print(f"{path.relative_to(GUESTS)}: {reason or 'can be snapshotted'}")
    assert reason is None or reason.strip(), reason
    if path.parent.name == "zig" or path.parent.parent.name == "go":  # the http-wasm guests of the repo
        assert reason is None


def test_freestanding_zig_guest_snapshot() -> None:
    wasm = (GUESTS / "zig" / "conformance.wasm").read_bytes()
    memory, values = state_of(wasm)  # no init of its own; the host functions trap if called
    snap = rewrite(wasm, memory, values)
    wasmtime.Module.validate(ENGINE, snap)
    snap_module = wasmtime.Module(ENGINE, snap)
    original_module = wasmtime.Module(ENGINE, wasm)
    assert [(i.module, i.name) for i in snap_module.imports] == [(i.module, i.name) for i in original_module.imports]
    assert [e.name for e in snap_module.exports] == [e.name for e in original_module.exports]
    again_memory, again_values = state_of(snap)
    assert again_memory == memory and again_values == values


def test_zig_reactor_snapshot_after_initialize() -> None:
    wasm = (GUESTS / "zig" / "wasi_hello.wasm").read_bytes()
    assert refusal(wasm) is None
    instrumented = instrument(wasm)
    original = Run(instrumented.wasm, wasi=True)
    original.call("_initialize")
    memory, values = original.capture(instrumented)
    snap = rewrite(wasm, memory, values)
    assert "_initialize" not in {e.name for e in wasmtime.Module(ENGINE, snap).exports}
    again_memory, again_values = state_of(snap, wasi=True)
    assert again_memory == memory and again_values == values


# --- memory layout ---------------------------------------------------------------------------------------------------


def test_cow_friendly_is_wasmtimes_rule() -> None:
    assert cow_friendly([])
    assert cow_friendly([(5, 5), (100 * MiB, 100 * MiB)])  # empty segments do not count
    assert cow_friendly([(0, 1), (16 * MiB - 2, 16 * MiB - 1)])  # image 16 MiB - 1
    assert not cow_friendly([(0, 1), (16 * MiB - 1, 16 * MiB)])  # image 16 MiB, 2 bytes of data
    assert cow_friendly([(0, 10 * MiB + 1), (30 * MiB, 30 * MiB + 10 * MiB)])  # 40 MiB < 2 x (20 MiB + 1)
    assert not cow_friendly([(0, 10 * MiB), (30 * MiB, 40 * MiB)])  # 40 MiB == 2 x 20 MiB
    assert cow_friendly([(0, 1), (100, 101)], dense_image_size=102)  # image 101 bytes, 2 of data
    assert not cow_friendly([(0, 1), (100, 101)], dense_image_size=101)


def islands(size: int, *spans: tuple[int, int]) -> bytearray:
    memory = bytearray(size)
    for start, end in spans:
        memory[start:end] = b"\x01" * (end - start)
    return memory


def test_layout_of_two_islands_100_mib_apart_is_copy_on_write_friendly() -> None:
    memory = islands(101 * MiB, (4096, 8192), (100 * MiB, 100 * MiB + 10))
    assert steps._runs(memory, snapshot.DEFAULT_GAP) == [(4096, 8192), (100 * MiB, 100 * MiB + 10)]
    assert not cow_friendly(steps._runs(memory, snapshot.DEFAULT_GAP))
    segments = layout(memory)
    assert segments == [(4096, 100 * MiB + 10)]
    assert cow_friendly(segments)


def test_wasmtime_maps_the_layout_copy_on_write() -> None:
    """The rule as wasmtime applies it: an instance of the snapshot maps its image instead of copying it.

    8 MiB of data and one byte 20 MiB away: as two segments (not COW friendly) every instance copies 8 MiB; as
    `layout` emits them (one segment) an instance maps the image, which takes microseconds.
    """
    import time

    memory = islands(21 * MiB, (0, 8 * MiB), (20 * MiB, 20 * MiB + 1))
    runs = steps._runs(memory, snapshot.DEFAULT_GAP)
    assert len(runs) == 2 and not cow_friendly(runs)
    wasm = wat("(module (memory 1))")
    snap = rewrite(wasm, memory, {})
    copied = sections._Module.parse(snap)
    copied.replace(encoding._DATA, sections._encode_vec(
        [sections._Data(0, 0, steps._i32_offset(start), bytes(memory[start:end])) for start, end in runs]))

    def fastest_instantiation(module_bytes: bytes) -> float:
        module = wasmtime.Module(ENGINE, module_bytes)
        times = []
        for _ in range(15):
            store = wasmtime.Store(ENGINE)
            started = time.perf_counter()
            wasmtime.Instance(store, module, [])
            times.append(time.perf_counter() - started)
        return min(times)

    mapped, copying = fastest_instantiation(snap), fastest_instantiation(copied.encode())
    print(f"instantiation: {mapped * 1000:.3f} ms with the layout, {copying * 1000:.3f} ms with two segments")
    assert copying > 5 * mapped


def test_layout_merges_the_smallest_gaps_first() -> None:
    chunks = [(i, i + 8192) for i in range(0, 24 * MiB, 16384)]  # 12 MiB of data in 24 MiB, 8 KiB gaps
    memory = islands(42 * MiB, *chunks, (40 * MiB, 41 * MiB))
    assert len(steps._runs(memory, 4096)) == len(chunks) + 1
    segments = layout(memory, max_segments=100_000)
    assert cow_friendly(segments)
    assert segments[-1] == (40 * MiB, 41 * MiB)  # the 16 MiB gap stays
    # only as many 8 KiB gaps are merged as it takes: data just over half the image (41 MiB)
    stored = sum(end - start for start, end in segments)
    assert 41 * MiB < 2 * stored <= 41 * MiB + 2 * 8192
    assert 2 < len(segments) < len(chunks)
    # with a gap threshold above 8 KiB they are merged right away
    assert layout(memory, gap=8193) == [(0, 24 * MiB - 8192), (40 * MiB, 41 * MiB)]


def test_layout_of_a_dense_20_mib_block() -> None:
    memory = bytearray(32 * MiB)
    memory[MiB:21 * MiB] = bytes(range(1, 256)) * (20 * MiB // 255) + b"\x01" * (20 * MiB % 255)
    segments = layout(memory)
    assert segments == [(MiB, 21 * MiB)]
    assert cow_friendly(segments)
    assert cow_friendly([(0, 20 * MiB)])


def test_layout_edge_cases() -> None:
    assert layout(bytes(3 * PAGE_SIZE)) == []
    assert layout(b"\x01" + bytes(10)) == [(0, 1)]
    assert layout(bytes(10) + b"\x01") == [(10, 11)]
    zero_gap = b"\x01" + bytes(4095) + b"\x01" + bytes(4096) + b"\x01"
    assert layout(zero_gap) == [(0, 4097), (8193, 8194)]  # 4095 zeros are merged, 4096 are not
    # at most max_segments segments, merging the smallest gaps first
    positions = list(itertools.accumulate([5000 + 1000 * i for i in range(10)], initial=0))
    memory = bytearray(positions[-1] + 1)
    for at in positions:
        memory[at] = 2
    assert layout(memory) == [(at, at + 1) for at in positions]
    assert layout(memory, max_segments=1) == [(0, positions[-1] + 1)]
    assert layout(memory, max_segments=5) == [(0, positions[6] + 1)] + [(at, at + 1) for at in positions[7:]]


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 300)), max_size=20), st.integers(1, 3000),
       st.integers(1, 25))
def test_layout_covers_every_non_zero_byte(spans: list[tuple[int, int]], gap: int, max_segments: int) -> None:
    memory = bytearray(6000)
    for start, length in spans:
        memory[start:start + length] = b"\x07" * len(memory[start:start + length])
    runs = steps._runs(memory, gap)
    # dense_image_size=0: only the "image < 2 x data" rule counts, as for images of 16 MiB and more
    segments = layout(memory, gap=gap, max_segments=max_segments, dense_image_size=0)
    assert cow_friendly(segments, dense_image_size=0) and len(segments) <= max_segments
    for found in (runs, segments):
        covered = bytearray(len(memory))
        for start, end in found:
            assert memory[start] and memory[end - 1]  # trimmed
            covered[start:end] = memory[start:end]
        assert covered == memory
        for (_, end), (start, _) in itertools.pairwise(found):
            assert start - end >= gap  # gaps left are at least `gap` zeros
            assert not any(memory[end:start])
    if cow_friendly(runs, dense_image_size=0) and len(runs) <= max_segments:
        assert segments == runs


@given(st.integers(-(1 << 63), (1 << 64) - 1))
def test_leb128_round_trip(value: int) -> None:
    signed = encoding._sleb(value)
    decoded, _ = code._read_leb(signed, 0)
    bits = 7 * len(signed)
    assert (decoded - (1 << bits) if decoded >> (bits - 1) else decoded) == value
    assert len(signed) == 1 or signed[-1] not in (0, 0x7F) or (signed[-2] & 0x40) != (signed[-1] & 0x40)
    if value >= 0:
        unsigned = encoding._uleb(value)
        assert code._read_leb(unsigned, 0) == (value, len(unsigned))
        assert len(unsigned) == max(1, -(-value.bit_length() // 7))


def test_rewrite_time_of_a_75_mib_memory() -> None:
    """A WAF-sized heap: 75 MiB with data in most pages. Printed for the record; bounded loosely."""
    import time

    in_use = bytes(range(1, 251)) * 4 + bytes(3096)
    unit = bytes(4096) + in_use * 6  # every 7th 4 KiB page empty, 1000 bytes in use in the others
    memory = (unit * (75 * MiB // len(unit) + 1))[:75 * MiB]
    wasm = wat("(module (memory 1))")
    started = time.perf_counter()
    snap = rewrite(wasm, memory, {})
    elapsed = time.perf_counter() - started
    data = sections._Module.parse(snap).section(encoding._DATA)
    assert data is not None
    count = encoding._Reader(data.payload).uleb()
    print(f"rewrite of 75 MiB: {elapsed * 1000:.0f} ms, {count} segments, {len(snap) / MiB:.1f} MiB module")
    assert count == 75 * MiB // len(unit) + 1  # one per 7 pages (the empty page splits), 6 pages merged
    assert elapsed < 10
