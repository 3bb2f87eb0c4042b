"""The `http-wasm-asgi` command: serve a chain, check a config, inspect a guest."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .config import ConfigError, load_config, middleware_from_config
from .errors import GuestError

_ENV_CONFIG = "HTTP_WASM_ASGI_CONFIG"


def _setup_logging(level: str) -> None:
    """Guest `log` calls and WASI output go to the `http_wasm_asgi` loggers: show them on stderr."""
    import logging

    logger = logging.getLogger("http_wasm_asgi")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())


def _app_from_env() -> Any:
    """uvicorn factory for `serve` (each worker process loads the chain itself)."""
    _setup_logging(os.environ.get(_ENV_CONFIG + "_LOG_LEVEL", "info"))
    return middleware_from_config(os.environ[_ENV_CONFIG])


def _describe(guest: Any, seconds: float | None = None) -> str:
    info = guest.info
    imports = ", ".join(f"{m}.{n}" for m, n, _ in info.imports) or "(none)"
    exports = ", ".join(n for n, _ in info.exports)
    features = [name for bit, name in ((1, "buffer_request"), (2, "buffer_response"), (4, "trailers"))
                if guest.features & bit]
    lines = [f"guest {guest.name!r}",
             f"  size:      {info.size} bytes (sha256 {info.sha256[:16]})",
             f"  imports:   {imports}",
             f"  exports:   {exports}",
             f"  features at start: {', '.join(features) or 'none'}",
             f"  WASI:      {'yes' if info.uses_wasi else 'no'}",
             f"  compile:   {info.compile_seconds * 1000:.1f} ms ({info.compiled_from})"]
    if seconds is not None:
        lines.append(f"  ready in:  {seconds * 1000:.1f} ms (compile + first instance)")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    target = f"app {config.app}" if config.app else f"upstream {config.upstream}"
    print(f"{args.config}: {len(config.guests)} guest(s) in front of {target}")
    from .guest import Guest

    for index, spec in enumerate(config.guests):
        start = time.perf_counter()
        try:
            guest = Guest(spec.path, name=spec.name, **spec.options)
        except GuestError as exc:
            raise ConfigError(config.file, f"guests[{index}]", str(exc)) from None
        print(_describe(guest, time.perf_counter() - start))
    print("ok")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .guest import Guest

    start = time.perf_counter()
    guest = Guest(args.guest, config=args.guest_config.encode() if args.guest_config else None)
    print(_describe(guest, time.perf_counter() - start))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    config = load_config(args.config)
    host = args.host or config.host
    port = args.port if args.port is not None else config.port
    workers = args.workers or config.workers
    level = (args.log_level or config.log_level).lower()
    os.environ[_ENV_CONFIG] = os.path.abspath(args.config)
    os.environ[_ENV_CONFIG + "_LOG_LEVEL"] = level
    _setup_logging(level)
    if workers == 1:
        app = middleware_from_config(args.config)  # fail here, before binding, on a bad guest
        uvicorn.run(app, host=host, port=port, log_level=level)
    else:
        middleware_from_config(args.config)  # validate (and fill the compile cache) once before forking
        uvicorn.run("http_wasm_asgi.cli:_app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="http-wasm-asgi", description="Run http-wasm guest chains on ASGI.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a chain (config file) on uvicorn",
                           description="Serve the app or upstream of CONFIG behind its guest chain on uvicorn.")
    serve.add_argument("config", help="chain config file (.yaml, .yml or .toml)")
    serve.add_argument("--host", help="bind address (overrides server.host)")
    serve.add_argument("--port", type=int, help="port (overrides server.port)")
    serve.add_argument("--workers", type=int, help="worker processes (overrides server.workers)")
    serve.add_argument("--log-level", help="uvicorn and guest log level (debug, info, warning, error)")
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="load, compile and instantiate every guest of a config",
                           description="Validate CONFIG and every guest in it; print what each guest is.")
    check.add_argument("config", help="chain config file")
    check.set_defaults(func=cmd_check)
    inspect = sub.add_parser("inspect", help="describe one guest module",
                             description="Compile and instantiate GUEST; print its imports, exports and features.")
    inspect.add_argument("guest", help=".wasm (or .wat) file")
    inspect.add_argument("--config", dest="guest_config", help="config string given to the guest at init")
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, GuestError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
