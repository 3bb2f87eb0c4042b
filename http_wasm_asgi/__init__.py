"""http-wasm-asgi: run http-wasm guest middleware (WebAssembly HTTP filters) in front of any ASGI app.

    from http_wasm_asgi import HttpWasmMiddleware, Guest
    app = HttpWasmMiddleware(app, guests=[Guest("guests/auth.wasm", config=b"secret")])

The core (`Guest`, `HttpWasmMiddleware`) needs only wasmtime; config files (PyYAML) and the
sidecar proxy (aiohttp) load on first use of `load_config`/`ConfigError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import GuestError, GuestTrap, HostTrap, PoolTimeout
from .guest import Guest
from .middleware import HttpWasmMiddleware

if TYPE_CHECKING:
    from .config import ConfigError, load_config

__all__ = ["ConfigError", "Guest", "GuestError", "GuestTrap", "HostTrap", "HttpWasmMiddleware", "PoolTimeout",
           "load_config"]
__version__ = "0.1.0"

_FROM_CONFIG = ("ConfigError", "load_config")


def __getattr__(name: str) -> Any:
    """PEP 562: the config layer is imported when first asked for."""
    if name in _FROM_CONFIG:
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
