"""Helpers shared by the tests, imported as `support` (pyproject.toml puts tests/ on the path for pytest).

- `support.paths`: ROOT (the repository), WAT and ZIG (guest folders), re-exported here;
- `support.driver`: programs for the ABI driver guest (guests/wat/driver.wat);
- `support.attack`: hostile-guest, limits, soak and property helpers (raw HTTP, RSS, idle instances);
- `support.procs`: subprocesses (free ports, servers waited for and always stopped, the venv's commands);
- `support.ops`: production helpers (chain configs with a version, Prometheus text parsing);
- `support.asgi_servers`: every ASGI server the chain runs on, started for real;
- `support.matrix_app`: the app those servers run (`tests.support.matrix_app:app`, from the repository root).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from http_wasm_asgi.testing import echo_app

from .paths import ROOT, WAT, ZIG

ClientFactory = Callable[[Any], httpx.AsyncClient]  # the `client` fixture: `async with client(app) as c: ...`

__all__ = ["ROOT", "WAT", "ZIG", "ClientFactory", "echo_app"]
