"""The sections a snapshot touches, decoded into fields (import, memory, global, export, start, data count,
data); the others keep their bytes. `_Module` reads a module and writes it back."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from .code import _const_expr, _read_leb
from .encoding import (
    _CODE,
    _CUSTOM,
    _DATA,
    _DATACOUNT,
    _EXPORT,
    _FUNC_KIND,
    _FUNCTION,
    _GLOBAL,
    _GLOBAL_KIND,
    _IMPORT,
    _KIND_NAMES,
    _MAGIC,
    _MEMORY,
    _MEMORY_KIND,
    _ORDER,
    _START,
    _T,
    _TABLE_KIND,
    _TAG_KIND,
    SnapshotError,
    _name,
    _Reader,
    _uleb,
)

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
