"""Chain config files (YAML or TOML, one schema): validated fully before any guest loads.

```yaml
app: examples.hello:app            # an ASGI app "module:attribute" ...
# upstream: http://127.0.0.1:9000  # ... or an HTTP service to proxy to (exactly one of the two)
server: {host: 127.0.0.1, port: 8080, workers: 1}
guests:                            # outermost first
  - name: auth
    path: guests/auth.wasm         # relative to the config file's folder
    config: "secret=..."           # a string, a mapping (sent as JSON), or {base64: ...}
    max_instances: 16
```
"""

from __future__ import annotations

import base64
import difflib
import importlib
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import GuestError
from .guest import Guest

TOP_KEYS = ("app", "upstream", "upstream_timeout", "server", "guests", "max_body_size", "log_level")
SERVER_KEYS = ("host", "port", "workers")
GUEST_KEYS = ("name", "path", "config", "max_instances", "reuse_instances", "pool_timeout", "call_timeout",
              "memory_limit", "wasi")
WASI_KEYS = ("env", "dirs")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


class ConfigError(Exception):
    """A config file is wrong: the message names the file, the key path and the fix."""

    def __init__(self, file: str | os.PathLike[str], key: str, problem: str) -> None:
        where = f"{os.fspath(file)}: {key}: " if key else f"{os.fspath(file)}: "
        super().__init__(where + problem)
        self.file = os.fspath(file)
        self.key = key
        self.problem = problem


@dataclass
class GuestSpec:
    name: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChainConfig:
    file: Path
    app: str | None
    upstream: str | None
    upstream_timeout: float = 30.0
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_size: int = 16 * 1024 * 1024
    log_level: str = "info"
    guests: list[GuestSpec] = field(default_factory=list)

    def load_guests(self) -> list[Guest]:
        guests = []
        for index, spec in enumerate(self.guests):
            try:
                guests.append(Guest(spec.path, name=spec.name, **spec.options))
            except GuestError as exc:
                raise ConfigError(self.file, f"guests[{index}]", str(exc)) from None
        return guests


def _unknown(file: Path, where: str, key: str, allowed: tuple[str, ...]) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
    return ConfigError(file, f"{where}{key}" if where else key, f"unknown key; {hint}")


def _expect(file: Path, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and kind is not bool and not (isinstance(kind, tuple) and bool in kind):
        raise ConfigError(file, key, f"must be {what}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(file, key, f"must be {what}, got {type(value).__name__} {value!r}")
    return value


def _size(file: Path, key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ConfigError(file, key, f"must be a size in bytes like 65536 or '64MiB', got {value!r}")
    return int(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]


def _guest_config(file: Path, key: str, value: Any) -> bytes | str | dict[str, Any]:
    if isinstance(value, dict) and set(value) == {"base64"}:
        try:
            return base64.b64decode(str(value["base64"]), validate=True)
        except ValueError:
            raise ConfigError(file, f"{key}.base64", "is not valid base64") from None
    if isinstance(value, str | dict):
        return value
    raise ConfigError(file, key, f"must be a string, a mapping (sent as JSON) or {{base64: ...}}, got {value!r}")


def load_config(path: str | os.PathLike[str]) -> ChainConfig:
    """Read and validate a chain config; raises ConfigError (never loads guests)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read the config file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text) if file.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(file, "", f"not valid {'TOML' if file.suffix == '.toml' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(file, "", "must be a mapping with 'guests' and one of 'app' or 'upstream'")
    for key in data:
        if key not in TOP_KEYS:
            raise _unknown(file, "", str(key), TOP_KEYS)
    app, upstream = data.get("app"), data.get("upstream")
    if (app is None) == (upstream is None):
        raise ConfigError(file, "app", "set exactly one of 'app' (module:attribute) or 'upstream' (http URL)")
    if app is not None and not (isinstance(app, str) and re.fullmatch(r"[\w.]+:[\w.]+", app)):
        raise ConfigError(file, "app", f"must be 'module:attribute', e.g. 'examples.hello:app', got {app!r}")
    if upstream is not None and not (isinstance(upstream, str) and re.match(r"https?://", upstream)):
        raise ConfigError(file, "upstream", f"must be an http:// or https:// URL, got {upstream!r}")
    config = ChainConfig(file=file, app=app, upstream=upstream)
    if "upstream_timeout" in data:
        config.upstream_timeout = float(_expect(file, "upstream_timeout", data["upstream_timeout"], (int, float),
                                                "a number of seconds"))
    server = _expect(file, "server", data.get("server") or {}, dict, "a mapping")
    for key in server:
        if key not in SERVER_KEYS:
            raise _unknown(file, "server.", str(key), SERVER_KEYS)
    config.host = _expect(file, "server.host", server.get("host", config.host), str, "a host name or address")
    config.port = _expect(file, "server.port", server.get("port", config.port), int, "a port number")
    config.workers = _expect(file, "server.workers", server.get("workers", 1), int, "a number of processes")
    if "max_body_size" in data:
        config.max_body_size = _size(file, "max_body_size", data["max_body_size"])
    config.log_level = str(_expect(file, "log_level", data.get("log_level", "info"), str, "a log level")).lower()
    guests = _expect(file, "guests", data.get("guests"), list, "a list of guests (outermost first)")
    names: set[str] = set()
    for index, entry in enumerate(guests):
        where = f"guests[{index}]"
        entry = _expect(file, where, entry, dict, "a mapping with at least 'path'")
        for key in entry:
            if key not in GUEST_KEYS:
                raise _unknown(file, f"{where}.", str(key), GUEST_KEYS)
        if "path" not in entry:
            raise ConfigError(file, f"{where}.path", "is missing: the guest's .wasm (or .wat) file")
        rel = _expect(file, f"{where}.path", entry["path"], str, "a file path")
        guest_path = (file.parent / rel) if not os.path.isabs(rel) else Path(rel)
        if not guest_path.is_file():
            raise ConfigError(file, f"{where}.path", f"file {rel!r} not found (paths are relative to the config "
                                                     "file's folder)")
        name = _expect(file, f"{where}.name", entry.get("name", guest_path.stem), str, "a name")
        if name in names:
            raise ConfigError(file, f"{where}.name", f"duplicate guest name {name!r}: names must be unique")
        names.add(name)
        options: dict[str, Any] = {}
        if "config" in entry:
            options["config"] = _guest_config(file, f"{where}.config", entry["config"])
        for key in ("max_instances",):
            if key in entry:
                options[key] = _expect(file, f"{where}.{key}", entry[key], int, "an integer")
        if "reuse_instances" in entry:
            options["reuse_instances"] = _expect(file, f"{where}.reuse_instances", entry["reuse_instances"], bool,
                                                 "true or false")
        for key in ("pool_timeout", "call_timeout"):
            if key in entry:
                options[key] = float(_expect(file, f"{where}.{key}", entry[key], (int, float), "seconds"))
        if "memory_limit" in entry:
            options["memory_limit"] = _size(file, f"{where}.memory_limit", entry["memory_limit"])
        if "wasi" in entry:
            wasi = _expect(file, f"{where}.wasi", entry["wasi"], dict, "a mapping with env and/or dirs")
            for key in wasi:
                if key not in WASI_KEYS:
                    raise _unknown(file, f"{where}.wasi.", str(key), WASI_KEYS)
            env = _expect(file, f"{where}.wasi.env", wasi.get("env") or {}, dict, "a mapping of strings")
            dirs = _expect(file, f"{where}.wasi.dirs", wasi.get("dirs") or {}, dict, "guest path: host path")
            options["wasi_env"] = {str(k): str(v) for k, v in env.items()}
            options["wasi_dirs"] = {str(k): str(file.parent / str(v)) for k, v in dirs.items()}
        config.guests.append(GuestSpec(name, guest_path, options))
    return config


def import_app(spec: str, base: Path | None = None) -> Any:
    """Import "module:attribute" (the config file's folder and the cwd are on sys.path)."""
    module_name, _, attr = spec.partition(":")
    for folder in (os.getcwd(), str(base) if base else None):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def middleware_from_config(path: str | os.PathLike[str], app: Any = None) -> Any:
    """HttpWasmMiddleware for a config file; `app` overrides the file's app/upstream."""
    from .middleware import HttpWasmMiddleware

    config = load_config(path)
    if app is None:
        if config.app is not None:
            try:
                app = import_app(config.app, config.file.parent)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(config.file, "app", f"cannot import {config.app!r}: {exc}") from None
        else:
            from .proxy import ProxyApp

            assert config.upstream is not None
            app = ProxyApp(config.upstream, timeout=config.upstream_timeout)
    return HttpWasmMiddleware(app, config.load_guests(), max_body_size=config.max_body_size)
