"""http-wasm-asgi: run http-wasm guest middleware (WebAssembly HTTP filters) in front of any ASGI app.

    from http_wasm_asgi import HttpWasmMiddleware, Guest
    app = HttpWasmMiddleware(app, guests=[Guest("guests/auth.wasm", config=b"secret")])

The core (`Guest`, `HttpWasmMiddleware`) needs only wasmtime; config files (PyYAML) and the
sidecar proxy (httptools) load on first use of `load_config`/`ConfigError`. Everything but the
exceptions is imported when first asked for (PEP 562): the pytest plugin, loaded by every pytest
run once the package is installed, must not load wasmtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import GuestError, GuestTrap, HostTrap, PoolTimeout

if TYPE_CHECKING:
    from .asgi.middleware import HttpWasmMiddleware
    from .asgi.routes import Route
    from .guest import Guest
    from .server.config import ConfigError, load_config, reload_config
    from .server.interop import PackagingError, dapr_component, dapr_pipeline, traefik_plugin
    from .server.sources import SourceError
    from .server.sources import fetch as fetch_guest

__all__ = ["ConfigError", "Guest", "GuestError", "GuestTrap", "HostTrap", "HttpWasmMiddleware", "PackagingError",
           "PoolTimeout", "Route", "SourceError", "dapr_component", "dapr_pipeline", "fetch_guest", "load_config",
           "reload_config", "traefik_plugin"]


def __getattr__(name: str) -> Any:
    """PEP 562: the core and the config layer are imported when first asked for."""
    if name == "__version__":
        from .registry import package_version

        return package_version()
    if name == "Guest":
        from .guest import Guest

        return Guest
    if name == "HttpWasmMiddleware":
        from .asgi.middleware import HttpWasmMiddleware

        return HttpWasmMiddleware
    if name in ("fetch_guest", "SourceError"):
        from .server import sources

        return sources.fetch if name == "fetch_guest" else sources.SourceError
    if name == "Route":
        from .asgi.routes import Route

        return Route
    if name in ("ConfigError", "load_config", "reload_config"):
        from .server import config

        return getattr(config, name)
    if name in ("PackagingError", "dapr_component", "dapr_pipeline", "traefik_plugin"):
        from .server import interop

        return getattr(interop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
