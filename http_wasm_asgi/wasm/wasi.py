"""WASI functions the host provides itself, in place of wasmtime's (linked with shadowing).

- `fd_write` collects every buffer: wasmtime's may write only the first (a legal short write), and
  guests that ignore the count lose their newlines; stdout/stderr become the guest's log lines.
- `clock_time_get` reads the host's clocks: wasmtime's monotonic clock starts again in each WASI
  context, so a guest restored from a snapshot would see time go backwards.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .capi import U32_PAIR

if TYPE_CHECKING:
    from .instance import WasmInstance


def fd_write(mem: WasmInstance, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
    """Guest output on stdout (1) and stderr (2), every buffer of it, to the instance's output."""
    if fd not in (1, 2):
        return 8  # EBADF: a guest gets no files
    total = 0
    parts = []
    raw = mem.read(iovs, iovs_len * 8)
    for i in range(iovs_len):
        ptr, length = U32_PAIR.unpack_from(raw, i * 8)
        parts.append(mem.read(ptr, length))
        total += length
    mem.write(nwritten, struct.pack("<I", total))
    mem.output(fd, b"".join(parts))
    return 0


_CLOCKS: Final[dict[int, Callable[[], int]]] = {0: time.time_ns, 1: time.monotonic_ns, 2: time.process_time_ns,
                                                3: time.thread_time_ns}  # realtime, monotonic, process, thread


def clock_time_get(mem: WasmInstance, clock_id: int, _precision: int, result: int) -> int:
    """wasmtime's monotonic clock starts again in each WASI context; a guest restored from a snapshot
    saw the clock of the instance that ran its init, so it would see time go backwards. The host's
    monotonic clock is the same for every instance and every process of the machine."""
    clock = _CLOCKS.get(clock_id)
    if clock is None:
        return 28  # EINVAL
    mem.write(result, struct.pack("<Q", clock()))
    return 0



