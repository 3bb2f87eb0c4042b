"""Chain config files (YAML or TOML, one schema): validated fully before any guest loads.

```yaml
app: examples.hello:app            # an ASGI app "module:attribute" ...
# upstream: http://127.0.0.1:9000  # ... or an HTTP service to proxy to (exactly one of the two)
# upstream_timeout: 30             # seconds, or {connect: 5, read: 30, write: 30, pool: 10}
server: {host: 127.0.0.1, port: 8080, workers: 1}
guests:                            # outermost first
  - name: auth
    path: ../guests/zig/auth.wasm  # relative to the config file's folder
    config: "secret"               # a string, a mapping (sent as JSON), or {base64: ...}
    max_instances: 16
  # - {name: waf, oci: ghcr.io/org/waf:1.2, sha256: <64 hex>}   # or url: https://...; see sources.py
# routes:                          # optional per-route chains, first match wins; see routes.py
#   - {match: {path_prefix: /api/}, guests: [auth]}
```

Every error names the file, the key path (`guests[1].path`) and what to do about it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import difflib
import importlib
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    import yaml

    _PARSE_ERRORS: tuple[type[Exception], ...] = (tomllib.TOMLDecodeError, yaml.YAMLError)
except ImportError:  # TOML config files need nothing beyond the standard library
    yaml = None  # type: ignore[assignment]
    _PARSE_ERRORS = (tomllib.TOMLDecodeError,)

from .. import registry
from ..asgi.middleware import DEFAULT_MAX_BODY_SIZE, HttpWasmMiddleware
from ..asgi.proxy import ProxyApp, UpstreamTimeout
from ..asgi.routes import MATCH_KEYS, Route
from ..asgi.types import ASGIApp
from ..errors import GuestError, MissingExtra
from ..guest import FAILURE_POLICIES, Guest
from ..wasm import cache_files
from .interop import ENTRY_KEYS, PackagingError, dapr_entries, expand_entry
from .sources import RemoteSource, SourceError, cached_digest, file_sha256, resolve

TOP_KEYS = ("app", "upstream", "upstream_timeout", "server", "guests", "routes", "max_body_size", "log_level",
            "metrics", "cache_max_size", "dapr")
ROUTE_KEYS = ("match", "guests")
SERVER_KEYS = ("host", "port", "workers", "shutdown_timeout")
METRICS_KEYS = ("host", "port")
TIMEOUT_KEYS = ("connect", "read", "write", "pool")
GUEST_KEYS = ("name", "path", "config", "config_file", "config_env", "max_instances", "min_instances", "max_idle",
              "idle_timeout", "memory_budget", "recycle_memory", "reuse_instances", "pool_timeout", "call_timeout",
              "init_timeout", "memory_limit", "snapshot", "threaded", "wasi", "url", "oci", "sha256", "insecure",
              "allow_unpinned", "failure_policy", *ENTRY_KEYS)
WASI_KEYS = ("env", "dirs")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


class ConfigError(Exception):
    """A config file is wrong: the message names the file, the key path, the problem and the fix."""

    def __init__(self, file: str | os.PathLike[str], key: str, problem: str) -> None:
        where = f"{os.fspath(file)}: {key}: " if key else f"{os.fspath(file)}: "
        super().__init__(where + problem)
        self.file = os.fspath(file)
        self.key = key
        self.problem = problem


@dataclass
class GuestSpec:
    name: str
    path: Path  # for a url/oci source: the module's file in the cache
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "url: ..." or "oci: ..." when fetched (as `sources.pins_key` names it)


@dataclass
class RouteSpec:
    """One routes[] entry: its match keys (Route keyword arguments) and the indexes of its guests."""

    key: str
    match: dict[str, Any]
    guests: list[int]


@dataclass
class ChainConfig:
    file: Path
    app: str | None
    upstream: str | None
    upstream_timeout: UpstreamTimeout = field(default_factory=UpstreamTimeout)
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    log_level: str = "info"
    shutdown_timeout: float = 30.0  # seconds in-flight requests get after SIGTERM
    metrics_host: str | None = None  # the metrics listener's address (default: server.host)
    metrics_port: int | None = None  # None: no metrics listener
    guests: list[GuestSpec] = field(default_factory=list)
    routes: list[RouteSpec] | None = None  # None: `guests` is the one chain
    cache_max_size: int | None = None  # the compile cache's size limit ($HTTP_WASM_ASGI_CACHE_MAX_SIZE wins)

    def load_guest(self, index: int) -> Guest:
        """Compile and instantiate guest `index`; a failure is a ConfigError naming `guests[index].path`."""
        spec = self.guests[index]
        cache_files.configure(self.cache_max_size)
        try:
            return Guest(spec.path, name=spec.name, **spec.options)
        except GuestError as exc:
            raise ConfigError(self.file, f"guests[{index}].path",
                              f"{exc}; fix: use an http-wasm guest built for this host (see `http-wasm-asgi "
                              f"inspect {spec.path}`) and give it the config it expects") from None

    def source_pins(self) -> dict[str, str]:
        """The digest of each url/oci guest's module as loaded, by source: what `serve --workers` hands its
        workers, so they all run these modules (an unpinned tag may move meanwhile)."""
        return {spec.source: cached_digest(spec.path) for spec in self.guests if spec.source}

    def load_guests(self) -> list[Guest]:
        """Every guest, in order; on a failure the ones already loaded are closed."""
        loaded: list[Guest] = []
        try:
            for index in range(len(self.guests)):
                loaded.append(self.load_guest(index))
        except BaseException:
            for guest in loaded:
                guest.close()
            raise
        return loaded

    def build_routes(self) -> list[Route]:
        """The Route objects of `routes:`: each guest a route names is loaded once and shared by every
        route naming it (a guest no route names is not loaded)."""
        loaded: dict[int, Guest] = {}
        for index in (i for spec in self.routes or () for i in spec.guests):
            if index not in loaded:
                loaded[index] = self.load_guest(index)
        return [Route(guests=[loaded[i] for i in spec.guests], name=spec.key, **spec.match)
                for spec in self.routes or ()]


def _unknown(file: Path, where: str, key: str, allowed: tuple[str, ...]) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed keys here: {', '.join(allowed)}"
    return ConfigError(file, f"{where}{key}" if where else key, f"unknown key; {hint}")


def _type_name(value: Any) -> str:
    return {"NoneType": "nothing", "dict": "a mapping", "list": "a list", "str": "a string", "int": "an integer",
            "float": "a number", "bool": "a boolean"}.get(type(value).__name__, type(value).__name__)


def _expect(file: Path, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        shown = "" if value is None or isinstance(value, dict | list) else f" {value!r}"
        raise ConfigError(file, key, f"must be {what}, got {_type_name(value)}{shown}")
    return value


def _number(file: Path, key: str, value: Any, what: str = "a number of seconds greater than 0") -> float:
    number = float(_expect(file, key, value, (int, float), what))
    if not number > 0:
        raise ConfigError(file, key, f"must be {what}, got {value!r}")
    return number


def _integer(file: Path, key: str, value: Any, low: int, high: int, what: str) -> int:
    number = int(_expect(file, key, value, int, what))
    if not low <= number <= high:
        raise ConfigError(file, key, f"must be {what}, got {value!r}")
    return number


def _size(file: Path, key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) == 0:
        raise ConfigError(file, key, f"must be a size in bytes like 65536 or '64MiB', got {value!r}")
    return int(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]


def _recycle_memory(file: Path, key: str, value: Any) -> int | None:
    """How far an instance may grow past its start before it is replaced (a size), or null/none: never."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    try:
        return _size(file, key, value)
    except ConfigError:
        raise ConfigError(file, key, f"must be a size like '64MiB' (how far an instance may grow past its start "
                                     f"before it is replaced), or null to never replace one; got {value!r}") from None


def _keys(file: Path, where: str, mapping: dict[Any, Any], allowed: tuple[str, ...]) -> None:
    for key in mapping:
        if key not in allowed:
            raise _unknown(file, where, str(key), allowed)


def _guest_config(file: Path, key: str, value: Any) -> bytes | str | dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict) and "base64" in value:
        if set(value) != {"base64"} or not isinstance(value["base64"], str):
            raise ConfigError(file, f"{key}.base64", "must be the only key, with a base64 string as its value "
                                                     "(or drop 'base64' to send the mapping as JSON)")
        try:
            return base64.b64decode("".join(value["base64"].split()), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(file, f"{key}.base64", "is not valid base64; fix: encode the bytes with "
                                                     "`base64 -w0 FILE`") from None
    if isinstance(value, str | dict):
        return value
    raise ConfigError(file, key, f"must be a string, a mapping (sent as JSON) or {{base64: ...}}, got "
                                 f"{_type_name(value)} {value!r}")


def _upstream_timeout(file: Path, value: Any) -> UpstreamTimeout:
    if isinstance(value, dict):
        _keys(file, "upstream_timeout.", value, TIMEOUT_KEYS)
        return UpstreamTimeout(**{k: _number(file, f"upstream_timeout.{k}", v) for k, v in value.items()})
    seconds = _number(file, "upstream_timeout", value,
                      "seconds greater than 0, or a mapping with connect, read, write and/or pool")
    return UpstreamTimeout(seconds, seconds, seconds, seconds)


def _parse(file: Path) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "", "config file not found; fix: check the path (it is relative to the current "
                                    "folder)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "", f"cannot read the config file: {getattr(exc, 'strerror', None) or exc}") \
            from None
    toml = file.suffix.lower() == ".toml"
    if not toml and yaml is None:
        raise MissingExtra("YAML config files", "config")
    try:
        return tomllib.loads(text) if toml else yaml.safe_load(text)
    except _PARSE_ERRORS as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(file, "", f"not valid {'TOML' if toml else 'YAML'}: {detail}; fix: correct the syntax "
                                    "at the place shown") from None


def load_config(path: str | os.PathLike[str]) -> ChainConfig:
    """Read and validate a chain config (YAML, or TOML for `.toml` files); raises ConfigError.

    Guests are not loaded here: `ChainConfig.load_guests()` compiles and instantiates them.
    """
    file = Path(path)
    data = _parse(file)
    if not isinstance(data, dict):
        raise ConfigError(file, "", "must be a mapping with 'guests' and one of 'app' or 'upstream'")
    _keys(file, "", data, TOP_KEYS)
    app, upstream = data.get("app"), data.get("upstream")
    if app is None and upstream is None:
        raise ConfigError(file, "app", "is missing; fix: set 'app' (an ASGI app as module:attribute) or "
                                       "'upstream' (the http:// URL of a service to proxy to)")
    if app is not None and upstream is not None:
        raise ConfigError(file, "upstream", "cannot be set together with 'app'; fix: keep exactly one of 'app' "
                                            "(serve an ASGI app) or 'upstream' (sidecar in front of a service)")
    if app is not None and not (isinstance(app, str) and re.fullmatch(r"[\w.]+:[\w.]+", app)):
        raise ConfigError(file, "app", f"must be 'module:attribute', e.g. 'examples.hello:app', got {app!r}")
    if upstream is not None and not (isinstance(upstream, str) and re.match(r"https?://[^/\s]+|unix:/\S", upstream)):
        raise ConfigError(file, "upstream", f"must be an http:// or https:// URL like 'http://127.0.0.1:9000', "
                                            f"or a Unix socket as 'unix:/absolute/path.sock', got {upstream!r}")
    config = ChainConfig(file=file, app=app, upstream=upstream)
    if "upstream_timeout" in data:
        config.upstream_timeout = _upstream_timeout(file, data["upstream_timeout"])
    _server(file, data.get("server"), config)
    if data.get("metrics") is not None:
        _metrics(file, data["metrics"], config)
    if "max_body_size" in data:
        config.max_body_size = _size(file, "max_body_size", data["max_body_size"])
    if "cache_max_size" in data:
        config.cache_max_size = _size(file, "cache_max_size", data["cache_max_size"])
    level = _expect(file, "log_level", data.get("log_level", "info"), str, f"one of {', '.join(LOG_LEVELS)}")
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(file, "log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    config.log_level = level.lower()
    guests = _chain_entries(file, data)
    names: dict[str, int] = {}
    for index, entry in enumerate(guests):
        config.guests.append(_guest_spec(file, index, entry, names))
    if "routes" in data:
        routes = _expect(file, "routes", data["routes"], list, "a list of routes (first match wins)")
        config.routes = [_route_spec(file, index, entry, names) for index, entry in enumerate(routes)]
    return config


def _chain_entries(file: Path, data: dict[str, Any]) -> list[Any]:
    """The guests[] entries: `guests:`, or those of a Dapr pipeline (`dapr:`, see interop.py)."""
    if "dapr" in data:
        if "guests" in data:
            raise ConfigError(file, "dapr", "cannot be set together with 'guests'; fix: take the chain from the "
                                            "Dapr pipeline or list it under 'guests', not both")
        try:
            return list(dapr_entries(file, data["dapr"]))
        except PackagingError as exc:
            raise ConfigError(file, f"dapr.{exc.key}", exc.problem) from None
    if "guests" not in data:
        raise ConfigError(file, "guests", "is missing; fix: add 'guests:', a list of guests (outermost first), "
                                          "each with at least 'path'")
    return list(_expect(file, "guests", data["guests"], list, "a list of guests (outermost first)"))


def _packaged(file: Path, where: str, entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Traefik plugin or Dapr component entry as a plain one, and its WASI options (see interop.py)."""
    if not any(key in entry for key in ENTRY_KEYS):
        return entry, {}
    try:
        return expand_entry(file, entry)
    except PackagingError as exc:
        raise ConfigError(file, f"{where}.{exc.key}", exc.problem) from None


def _route_spec(file: Path, index: int, entry: Any, names: dict[str, int]) -> RouteSpec:
    where = f"routes[{index}]"
    entry = _expect(file, where, entry, dict, "a mapping with 'match' and 'guests'")
    _keys(file, f"{where}.", entry, ROUTE_KEYS)
    match = _expect(file, f"{where}.match", entry.get("match") or {}, dict,
                    f"a mapping of match keys ({', '.join(MATCH_KEYS)})")
    _keys(file, f"{where}.match.", match, MATCH_KEYS)
    for key in ("path_prefix", "path", "host"):
        if key in match:
            _expect(file, f"{where}.match.{key}", match[key], str, "a string")
    if "methods" in match:
        methods = _expect(file, f"{where}.match.methods", match["methods"], list, "a list like [GET, POST]")
        for i, method in enumerate(methods):
            _expect(file, f"{where}.match.methods[{i}]", method, str, "an HTTP method like GET")
    if "headers" in match:
        headers = _expect(file, f"{where}.match.headers", match["headers"], dict, "a mapping of name to value")
        for name, value in headers.items():
            _expect(file, f"{where}.match.headers.{name}", value, str, "a string (the exact value)")
    if "guests" not in entry:
        raise ConfigError(file, f"{where}.guests", "is missing; fix: list the names of the guests this route "
                                                   "runs (outermost first), or [] to send it straight to the app")
    listed = _expect(file, f"{where}.guests", entry["guests"], list, "a list of guest names (outermost first)")
    indexes = [_guest_ref(file, f"{where}.guests[{i}]", name, names) for i, name in enumerate(listed)]
    try:
        Route(name=where, **match)  # the Route's own checks (paths start with '/', host form, ...)
    except ValueError as exc:
        raise ConfigError(file, f"{where}.match", str(exc).removeprefix(f"{where}: ")) from None
    return RouteSpec(where, match, indexes)


def _guest_ref(file: Path, key: str, name: Any, names: dict[str, int]) -> int:
    _expect(file, key, name, str, "the name of a guest defined under 'guests'")
    if name not in names:
        close = difflib.get_close_matches(name, list(names), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"defined guests: {', '.join(names) or '(none)'}"
        raise ConfigError(file, key, f"unknown guest {name!r}; {hint}")
    return names[name]


def _server(file: Path, value: Any, config: ChainConfig) -> None:
    server = {} if value is None else _expect(file, "server", value, dict, "a mapping with host, port, workers")
    _keys(file, "server.", server, SERVER_KEYS)
    config.host = _expect(file, "server.host", server.get("host", config.host), str, "a host name or address")
    config.port = _integer(file, "server.port", server.get("port", config.port), 0, 65535,
                           "a port number (0-65535)")
    config.workers = _integer(file, "server.workers", server.get("workers", 1), 1, 1024,
                              "a number of worker processes (1 or more)")
    if "shutdown_timeout" in server:
        config.shutdown_timeout = _number(file, "server.shutdown_timeout", server["shutdown_timeout"])


def _metrics(file: Path, value: Any, config: ChainConfig) -> None:
    metrics = _expect(file, "metrics", value, dict, "a mapping with port (and host)")
    _keys(file, "metrics.", metrics, METRICS_KEYS)
    if "port" not in metrics:
        raise ConfigError(file, "metrics.port", "is missing; fix: the port of the metrics listener (/metrics, "
                                                "/healthz, /readyz), not the app's")
    config.metrics_port = _integer(file, "metrics.port", metrics["port"], 0, 65535, "a port number (0-65535)")
    if "host" in metrics:
        config.metrics_host = _expect(file, "metrics.host", metrics["host"], str, "a host name or address")


def _guest_spec(file: Path, index: int, entry: Any, names: dict[str, int]) -> GuestSpec:
    where = f"guests[{index}]"
    entry = _expect(file, where, entry, dict, "a mapping with at least 'path'")
    _keys(file, f"{where}.", entry, GUEST_KEYS)
    entry, packaged = _packaged(file, where, entry)
    kind = _source_kind(file, where, entry)
    local = _guest_path(file, where, entry) if kind == "path" else None
    default_name = local.stem if local else Path(urlsplit(entry[kind]).path).stem.split(":")[0].split("@")[0]
    name = _expect(file, f"{where}.name", entry.get("name", default_name or "guest"), str, "a name")
    if name in names:
        raise ConfigError(file, f"{where}.name", f"duplicate guest name {name!r} (also guests[{names[name]}]); fix: "
                                                 "give each guest a unique 'name'")
    names[name] = index
    options = {**packaged, **_guest_options(file, where, entry)}
    if "wasi" in entry:
        options.update(_wasi_options(file, f"{where}.wasi", entry["wasi"]))
    if local is not None:
        return GuestSpec(name, local, options)
    return GuestSpec(name, _remote_path(file, where, entry, kind, name), options, f"{kind}: {entry[kind]}")


def _source_kind(file: Path, where: str, entry: dict[str, Any]) -> str:
    given = [key for key in ("path", "url", "oci") if key in entry]
    if not given:
        raise ConfigError(file, f"{where}.path", "is missing; fix: set it to the guest's .wasm (or .wat) file, "
                                                 "relative to the config file's folder (or give 'url' or 'oci')")
    if len(given) > 1:
        raise ConfigError(file, f"{where}.{given[1]}", f"cannot be set together with '{given[0]}'; fix: give one "
                                                       "source: path, url or oci")
    what = {"path": "a file path", "url": "an https:// URL", "oci": "an OCI reference like ghcr.io/org/guest:1.0"}
    _expect(file, f"{where}.{given[0]}", entry[given[0]], str, what[given[0]])
    return given[0]


def _pin(file: Path, where: str, entry: dict[str, Any]) -> str | None:
    if "sha256" not in entry:
        return None
    value = _expect(file, f"{where}.sha256", entry["sha256"], str, "the module's sha256 (64 hex digits)")
    digest = str(value).strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ConfigError(file, f"{where}.sha256", f"must be 64 hex digits (`sha256sum GUEST.wasm`), got {value!r}")
    return digest


def _remote_path(file: Path, where: str, entry: dict[str, Any], kind: str, name: str) -> Path:
    """Fetch (or find in the cache) a url/oci guest; every refusal is a ConfigError at its key."""
    flags = {key: _expect(file, f"{where}.{key}", entry.get(key, False), bool, "true or false")
             for key in ("insecure", "allow_unpinned")}
    source = RemoteSource(name, kind, entry[kind], _pin(file, where, entry), **flags)
    try:
        source.check()
    except ValueError as exc:
        raise ConfigError(file, f"{where}.{kind}", str(exc)) from None
    try:
        return resolve(source)
    except SourceError as exc:
        raise ConfigError(file, f"{where}.{kind}", str(exc)) from None

def _guest_path(file: Path, where: str, entry: dict[str, Any]) -> Path:
    rel = entry["path"]
    guest_path: Path = file.parent / rel
    if not guest_path.is_file():
        folder = os.fspath(file.parent) or "."
        raise ConfigError(file, f"{where}.path", f"file {rel!r} not found (looked for {os.fspath(guest_path)!r}); "
                                                 f"fix: paths are relative to the config file's folder ({folder!r})")
    pin = _pin(file, where, entry)
    if pin is not None and file_sha256(guest_path) != pin:
        raise ConfigError(file, f"{where}.sha256", f"digest mismatch for {rel}: expected sha256:{pin}, got sha256:"
                                                   f"{file_sha256(guest_path)}; refused")
    return guest_path


def _guest_options(file: Path, where: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The Guest() keyword arguments of one guests[] entry (all but the path, name and wasi)."""
    options: dict[str, Any] = {}
    secret = _secret_config(file, where, entry)
    if secret is not None:
        options["config"] = secret
    elif "config" in entry:
        guest_config = _guest_config(file, f"{where}.config", entry["config"])
        if guest_config is not None:
            options["config"] = guest_config
    for key, low in (("max_instances", 1), ("min_instances", 1), ("max_idle", 0)):
        if key in entry:
            options[key] = _integer(file, f"{where}.{key}", entry[key], low, 1_000_000,
                                    f"a number of instances ({low} or more)")
    for key in ("reuse_instances", "snapshot", "threaded"):
        if key in entry:
            options[key] = _expect(file, f"{where}.{key}", entry[key], bool, "true or false")
    for key in ("pool_timeout", "call_timeout", "init_timeout", "idle_timeout"):
        if key in entry:
            options[key] = _number(file, f"{where}.{key}", entry[key])
    for key in ("memory_limit", "memory_budget"):
        if key in entry:
            options[key] = _size(file, f"{where}.{key}", entry[key])
    if "recycle_memory" in entry:
        options["recycle_memory"] = _recycle_memory(file, f"{where}.recycle_memory", entry["recycle_memory"])
    if "failure_policy" in entry:
        policy = _expect(file, f"{where}.failure_policy", entry["failure_policy"], str, "fail_closed or fail_open")
        if policy not in FAILURE_POLICIES:
            raise ConfigError(file, f"{where}.failure_policy", f"must be fail_closed (a failing guest fails the "
                                                               f"request) or fail_open (it is skipped), got {policy!r}")
        options["failure_policy"] = policy
    return options


def _secret_config(file: Path, where: str, entry: dict[str, Any]) -> bytes | None:
    """A guest's config kept out of the config file (tokens, keys): `config_file` (a file's bytes, relative
    to the config's folder, e.g. a mounted Kubernetes Secret) or `config_env` (an environment variable)."""
    given = [key for key in ("config", "config_file", "config_env") if key in entry]
    if len(given) > 1:
        raise ConfigError(file, f"{where}.{given[1]}", f"cannot be set together with '{given[0]}'; fix: give the "
                                                        "guest's config one way")
    if "config_file" in entry:
        name = _expect(file, f"{where}.config_file", entry["config_file"], str, "a file path")
        path = (file.parent / name) if not os.path.isabs(name) else Path(name)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(file, f"{where}.config_file", f"cannot read {path}: {exc.strerror or exc}; fix: "
                                                             "check the path (relative to the config file)") from None
    if "config_env" in entry:
        name = _expect(file, f"{where}.config_env", entry["config_env"], str, "an environment variable's name")
        value = os.environ.get(name)
        if value is None:
            raise ConfigError(file, f"{where}.config_env", f"the environment variable {name} is not set; fix: set "
                                                            "it (e.g. from a Kubernetes Secret) or use 'config'")
        return value.encode("utf-8")
    return None


def _wasi_options(file: Path, where: str, value: Any) -> dict[str, Any]:
    wasi = _expect(file, where, value, dict, "a mapping with env and/or dirs")
    _keys(file, f"{where}.", wasi, WASI_KEYS)
    env = _expect(file, f"{where}.env", wasi.get("env") or {}, dict, "a mapping of names to strings")
    dirs = _expect(file, f"{where}.dirs", wasi.get("dirs") or {}, dict, "a mapping of guest paths to host folders")
    for guest_dir, host_dir in dirs.items():
        if not (file.parent / str(host_dir)).is_dir():
            raise ConfigError(file, f"{where}.dirs.{guest_dir}", f"folder {host_dir!r} not found; fix: "
                              "host folders are relative to the config file's folder")
    return {"wasi_env": {str(k): str(v) for k, v in env.items()},
            "wasi_dirs": {str(k): str(file.parent / str(v)) for k, v in dirs.items()}}


def import_app(spec: str, base: Path | None = None) -> Any:
    """Import "module:attribute" (the current folder and the config file's folder are on sys.path)."""
    module_name, _, attr = spec.partition(":")
    for folder in (os.getcwd(), os.fspath(base.resolve()) if base else None):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_app(config: ChainConfig) -> ASGIApp:
    """The ASGI app behind the chain: the imported `app`, or a proxy to `upstream`."""
    if config.app is not None:
        try:
            app: ASGIApp = import_app(config.app, config.file.parent)
            return app
        except (ImportError, AttributeError) as exc:
            raise ConfigError(config.file, "app", f"cannot import {config.app!r}: {exc}; fix: run from the folder "
                                                  "that contains the module, or put it next to the config file") \
                from None
        except Exception as exc:
            raise ConfigError(config.file, "app", f"importing {config.app!r} failed: {type(exc).__name__}: {exc}"
                                                  "; fix: the error is in the app's module (rerun with --debug "
                                                  "for the traceback)") from exc

    assert config.upstream is not None
    return ProxyApp(config.upstream, timeout=config.upstream_timeout)


def build_middleware(config: ChainConfig, app: ASGIApp | None = None) -> HttpWasmMiddleware:
    """HttpWasmMiddleware for a loaded config; `app` overrides the file's app/upstream."""
    if app is None:
        app = load_app(config)
    if config.routes is not None:
        return HttpWasmMiddleware(app, routes=config.build_routes(), max_body_size=config.max_body_size)
    return HttpWasmMiddleware(app, config.load_guests(), max_body_size=config.max_body_size)


def middleware_from_config(path: str | os.PathLike[str], app: ASGIApp | None = None) -> HttpWasmMiddleware:
    """HttpWasmMiddleware for a config file; `app` overrides the file's app/upstream."""
    return build_middleware(load_config(path), app)


async def reload_config(middleware: HttpWasmMiddleware, path: str | os.PathLike[str]) -> ChainConfig:
    """Load the guests of config file `path` off the event loop, then swap them in (`replace_guests`).

    Compiling, init and snapshots run on a worker thread; requests in flight finish on the guests they
    started with. The app stays the one the middleware serves (a changed `app` or `upstream` takes a
    restart). On a failure the current guests go on serving, `http_wasm_reloads_total{result="error"}`
    counts it, and the error (ConfigError for a bad config or guest) is raised.
    """
    def load() -> tuple[ChainConfig, list[Guest], list[Route] | None]:
        config = load_config(path)
        if config.routes is not None:
            return config, [], config.build_routes()
        return config, config.load_guests(), None

    try:
        config, guests, routes = await asyncio.to_thread(load)
    except Exception:
        registry.RELOADS["error"] += 1
        raise
    middleware.replace_guests(guests, routes=routes, max_body_size=config.max_body_size)
    return config
