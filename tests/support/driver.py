"""Build programs for the ABI driver guest (guests/wat/driver.wat)."""

from __future__ import annotations

import struct
from typing import Any

from http_wasm_asgi import Guest, abi

from .paths import WAT

DRIVER = WAT / "driver.wat"
OPS = {name: index for index, name in enumerate(abi.HOST_FUNCTIONS)}
(RETURN, EMIT_RESULTS, TRAP, LOOP, FILL, WRITE_LAST, SET_HEADER_LAST, GROW, RECORD_CTX, READ_ALL,
 LOG_IF_ERROR) = range(100, 111)
INIT, REQUEST, RESPONSE = 0, 1, 2
STRINGS = 0x10004  # where the guest keeps the program's strings
BUF = 0x1000  # a scratch buffer tests may use
BUF2 = 0x4000


class Program:
    """A driver program: `p.req("get_uri", BUF, 64)`, strings via `p.s("x-id")` -> (ptr, len)."""

    def __init__(self) -> None:
        self.strings = bytearray()
        self.records: list[tuple[int, ...]] = []

    def s(self, text: str | bytes) -> tuple[int, int]:
        data = text.encode() if isinstance(text, str) else text
        ptr = STRINGS + len(self.strings)
        self.strings += data
        return ptr, len(data)

    def op(self, phase: int, op: str | int, *args: int) -> Program:
        code = OPS[op] if isinstance(op, str) else op
        values = [a & 0xFFFFFFFF for a in args] + [0] * (6 - len(args))
        self.records.append((phase, code, *values))
        return self

    def init(self, op: str | int, *args: int) -> Program:
        return self.op(INIT, op, *args)

    def req(self, op: str | int, *args: int) -> Program:
        return self.op(REQUEST, op, *args)

    def resp(self, op: str | int, *args: int) -> Program:
        return self.op(RESPONSE, op, *args)

    def config(self) -> bytes:
        out = struct.pack("<I", len(self.strings)) + bytes(self.strings)
        for record in self.records:
            out += struct.pack("<8I", *record)
        return out

    def guest(self, **options: Any) -> Guest:
        options.setdefault("name", "driver")
        return Guest(DRIVER, config=self.config(), **options)


def results(body: bytes, count: int | None = None) -> list[int]:
    """Decode the i64 results log the guest wrote with EMIT_RESULTS."""
    n = len(body) // 8 if count is None else count
    return list(struct.unpack(f"<{n}Q", body[: n * 8]))


def split(value: int) -> tuple[int, int]:
    """(upper 32 bits, lower 32 bits) of a count_len / eof_len."""
    return value >> 32, value & 0xFFFFFFFF
