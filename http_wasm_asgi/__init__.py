"""http-wasm-asgi: run http-wasm guest middleware (WebAssembly HTTP filters) in front of any ASGI app.

    from http_wasm_asgi import HttpWasmMiddleware, Guest
    app = HttpWasmMiddleware(app, guests=[Guest("guests/auth.wasm", config=b"secret")])
"""

from .errors import GuestError, GuestTrap, HostTrap, PoolTimeout
from .guest import Guest
from .middleware import HttpWasmMiddleware

__all__ = ["Guest", "GuestError", "GuestTrap", "HostTrap", "HttpWasmMiddleware", "PoolTimeout", "load_config"]
__version__ = "0.1.0"


def load_config(path: str):  # type: ignore[no-untyped-def]
    """Read and validate a chain config file (YAML or TOML). See `http_wasm_asgi.config`."""
    from .config import load_config as _load

    return _load(path)
