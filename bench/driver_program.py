"""Bench guests built from the ABI driver (guests/wat/driver.wat)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from http_wasm_asgi import Guest
from support.driver import GROW, READ_ALL, Program


def read_all_guest() -> Guest:
    """Enables buffer_request and reads the whole request body in 64 KiB chunks into guest memory."""
    p = Program().init(GROW, 20).req("enable_features", 1).req(READ_ALL, 0, 0x20000, 65536)
    return p.guest(name="reader", memory_limit=64 * 1024 * 1024)
