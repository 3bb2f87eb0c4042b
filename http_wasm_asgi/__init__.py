"""http-wasm-asgi: run http-wasm guest middleware (WebAssembly HTTP filters) in front of any ASGI app.

    from http_wasm_asgi import HttpWasmMiddleware, Guest
    app = HttpWasmMiddleware(app, guests=[Guest("guests/auth.wasm", config=b"secret")])
"""

from .config import ConfigError, load_config
from .errors import GuestError, GuestTrap, HostTrap, PoolTimeout
from .guest import Guest
from .middleware import HttpWasmMiddleware

__all__ = ["ConfigError", "Guest", "GuestError", "GuestTrap", "HostTrap", "HttpWasmMiddleware", "PoolTimeout",
           "load_config"]
__version__ = "0.1.0"
