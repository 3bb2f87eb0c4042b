"""Guests as other http-wasm hosts package them: Traefik plugin directories and Dapr components.

- **Traefik**: a local plugin is a directory with a `.traefik.yml` manifest (`displayName`, `type:
  middleware`, `runtime: wasm`, `wasmPath`, `testData`) and the module. The middleware's config block
  goes to `get_config` as JSON: `testData` by default, `config:` instead when given. Traefik's wasm
  `settings`: `envs` (names of environment variables forwarded to the guest) and `mounts`
  (`host[:guest][:ro|:rw]`, read-write unless `:ro`) become the guest's WASI env and directories.
- **Dapr**: a `kind: Component` of `spec.type: middleware.http.wasm`, its `spec.metadata` items `url`
  (`file://`, `http://`, `https://`) and `guestConfig` (the guest's config, a string); a `kind:
  Configuration`'s `spec.httpPipeline.handlers` (name and type) orders the components found in a
  resources folder. A `file://` URL is read as daprd reads it: relative to the working directory;
  `http(s)` URLs follow the guest source rules (sources.py: pins, cache).

Each reader gives a plain guest entry (what a config file's `guests[]` entry holds: `path:` or `url:`,
`config:`) and the WASI options, so the config layer checks and loads it like any other guest. Every
error names the file and the key in it, and says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..errors import MissingExtra
from ..guest import Guest
from .sources import fetch

MANIFEST: Final = ".traefik.yml"
DAPR_WASM_TYPE: Final = "middleware.http.wasm"
ENTRY_KEYS: Final = ("traefik_plugin", "settings", "dapr_component")  # what a config's guests[] entry may add
SETTINGS_KEYS: Final = ("envs", "mounts")
DAPR_KEYS: Final = ("configuration", "resources", "options")  # a config file's top-level `dapr:`


class PackagingError(Exception):
    """A Traefik plugin or Dapr file is not usable: `key` is where (in the config entry or the `dapr:`
    block), `problem` names the packaging file, its key and the fix."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass
class Packaged:
    """A guest read from another host's packaging, as a config entry and its WASI options."""

    name: str
    entry: dict[str, Any]  # `path:` (or `url:`) and `config:`, as a config file's guests[] entry
    wasi_env: dict[str, str] = field(default_factory=dict)
    wasi_dirs: dict[str, str] = field(default_factory=dict)  # guest path -> host folder
    writable: set[str] = field(default_factory=set)  # guest paths mounted read-write

    def wasi_options(self) -> dict[str, Any]:
        """The Guest() keywords of its WASI settings (none when it has none)."""
        options: dict[str, Any] = {}
        if self.wasi_env:
            options["wasi_env"] = dict(self.wasi_env)
        if self.wasi_dirs:
            options["wasi_dirs"] = dict(self.wasi_dirs)
            options["wasi_dirs_writable"] = frozenset(self.writable)
        return options


def _yaml_documents(path: Path, key: str) -> list[Any]:
    try:
        import yaml
    except ImportError as exc:
        raise MissingExtra("Traefik plugin manifests and Dapr components", "config", exc) from None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PackagingError(key, f"{os.fspath(path)}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PackagingError(key, f"{os.fspath(path)}: cannot read it: {getattr(exc, 'strerror', None) or exc}") \
            from None
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise PackagingError(key, f"{os.fspath(path)}: not valid YAML: {' '.join(str(exc).split())}") from None


# -- Traefik --
def read_traefik_plugin(directory: Path, *, config: Any = None, settings: Mapping[str, Any] | None = None,
                        base: Path | None = None, key: str = "traefik_plugin") -> Packaged:
    """A Traefik local plugin directory as a guest: its manifest's module, testData (unless `config`) and
    `settings` (envs, mounts; host folders relative to `base`, default the working directory)."""
    manifest = directory / MANIFEST
    if not directory.is_dir():
        raise PackagingError(key, f"plugin directory {os.fspath(directory)!r} not found; fix: give the folder "
                                  f"that holds {MANIFEST} and the .wasm")
    docs = _yaml_documents(manifest, key)
    data = docs[0] if len(docs) == 1 else None
    where = os.fspath(manifest)
    if not isinstance(data, dict):
        raise PackagingError(key, f"{where}: must be one YAML mapping (displayName, type, runtime, wasmPath, "
                                  "testData)")
    for name, expected in (("type", "middleware"), ("runtime", "wasm")):
        if data.get(name) != expected:
            raise PackagingError(key, f"{where}: {name}: must be {expected!r}, got {data.get(name)!r}; fix: only "
                                      "wasm middleware plugins run here (a yaegi plugin is Go source)")
    wasm_path = data.get("wasmPath")
    if not isinstance(wasm_path, str) or not wasm_path:
        raise PackagingError(key, f"{where}: wasmPath: is missing; fix: set it to the plugin's module, relative "
                                  "to the plugin directory (e.g. plugin.wasm)")
    module = directory / wasm_path
    if not module.is_file():
        raise PackagingError(key, f"{where}: wasmPath: file {wasm_path!r} not found (looked for "
                                  f"{os.fspath(module)!r})")
    test_data = data.get("testData", {})
    if config is None and not isinstance(test_data, dict):
        raise PackagingError(key, f"{where}: testData: must be a mapping (sent to the guest as JSON), got "
                                  f"{type(test_data).__name__}")
    packaged = Packaged(directory.resolve().name, {"path": module, "config": test_data if config is None else config})
    _traefik_settings(packaged, settings or {}, base or Path.cwd())
    return packaged


def _traefik_settings(packaged: Packaged, settings: Mapping[str, Any], base: Path) -> None:
    if not isinstance(settings, Mapping):
        raise PackagingError("settings", "must be a mapping with envs and/or mounts (Traefik's wasm settings)")
    for name in settings:
        if name not in SETTINGS_KEYS:
            raise PackagingError(f"settings.{name}", f"unknown key; allowed keys here: {', '.join(SETTINGS_KEYS)}")
    for env in _strings(settings.get("envs"), "settings.envs"):
        value = os.environ.get(env)
        if value is not None:  # a variable that is not set is not forwarded (as Traefik does)
            packaged.wasi_env[env] = value
    for index, mount in enumerate(_strings(settings.get("mounts"), "settings.mounts")):
        host, guest, writable = _mount(mount, f"settings.mounts[{index}]")
        folder = base / host
        if not folder.is_dir():
            raise PackagingError(f"settings.mounts[{index}]", f"host folder {host!r} not found (looked for "
                                                              f"{os.fspath(folder)!r})")
        packaged.wasi_dirs[guest] = os.fspath(folder)
        if writable:
            packaged.writable.add(guest)


def _strings(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PackagingError(key, f"must be a list of strings, got {value!r}")
    return list(value)


def _mount(mount: str, key: str) -> tuple[str, str, bool]:
    """`host`, `host:guest`, `host:guest:ro` or `host:guest:rw` -> (host, guest, writable)."""
    parts = mount.split(":")
    mode = parts.pop() if len(parts) == 3 or (len(parts) == 2 and parts[1] in ("ro", "rw")) else "rw"
    if mode not in ("ro", "rw") or not 1 <= len(parts) <= 2 or not all(parts):
        raise PackagingError(key, f"must be 'host:guest' with an optional ':ro' or ':rw', got {mount!r}")
    return parts[0], parts[-1], mode == "rw"


# -- Dapr --
def _dapr_components(path: Path, key: str) -> list[tuple[dict[str, Any], str]]:
    """The `kind: Component` documents of a file, each with how to name it in errors."""
    found = []
    for index, doc in enumerate(_yaml_documents(path, key)):
        if isinstance(doc, dict) and doc.get("kind") == "Component":
            found.append((doc, f"{os.fspath(path)}" + (f" (document {index + 1})" if index else "")))
    return found


def read_dapr_component(file: Path, *, key: str = "dapr_component", cwd: Path | None = None,
                        component: tuple[dict[str, Any], str] | None = None) -> Packaged:
    """A Dapr Component of type middleware.http.wasm as a guest: its url and guestConfig."""
    if component is None:
        components = _dapr_components(file, key)
        if len(components) != 1:
            raise PackagingError(key, f"{os.fspath(file)}: must hold one 'kind: Component', found "
                                      f"{len(components)}")
        component = components[0]
    doc, where = component
    name = (doc.get("metadata") or {}).get("name")
    spec = doc.get("spec")
    if not isinstance(spec, dict) or spec.get("type") != DAPR_WASM_TYPE:
        kind = spec.get("type") if isinstance(spec, dict) else None
        raise PackagingError(key, f"{where}: spec.type: must be {DAPR_WASM_TYPE!r}, got {kind!r}; fix: only "
                                  "wasm HTTP middleware components run here")
    metadata = _dapr_metadata(spec.get("metadata"), where, key)
    if "url" not in metadata:
        raise PackagingError(key, f"{where}: spec.metadata: has no 'url' item; fix: add "
                                  "{name: url, value: file://guest.wasm}")
    entry = _dapr_url(metadata["url"], where, key, cwd or Path.cwd())
    if "guestConfig" in metadata:
        entry["config"] = metadata["guestConfig"]
    return Packaged(name if isinstance(name, str) and name else file.stem, entry)


def _dapr_metadata(items: Any, where: str, key: str) -> dict[str, str]:
    if not isinstance(items, list):
        raise PackagingError(key, f"{where}: spec.metadata: must be a list of {{name, value}} items")
    found: dict[str, str] = {}
    for index, item in enumerate(items):
        at = f"{where}: spec.metadata[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise PackagingError(key, f"{at}: must be a mapping with 'name' and 'value'")
        if "secretKeyRef" in item:
            raise PackagingError(key, f"{at}.secretKeyRef: secret references are not resolved here; fix: give "
                                      "the value, or a config_file/config_env guest entry for a secret")
        value = item.get("value")
        if not isinstance(value, str | int | float | bool):
            raise PackagingError(key, f"{at}.value: must be a string, got {type(value).__name__}")
        found[item["name"]] = value if isinstance(value, str) else str(value).lower() \
            if isinstance(value, bool) else str(value)
    return found


def _dapr_url(url: str, where: str, key: str, cwd: Path) -> dict[str, Any]:
    """A component's url as a guest entry's source: `file://` (relative to `cwd`, as daprd), or `url:`."""
    if url.startswith("file://"):
        path = Path(url.removeprefix("file://"))
        module = path if path.is_absolute() else cwd / path
        if not module.is_file():
            raise PackagingError(key, f"{where}: spec.metadata url: file {url!r} not found (looked for "
                                      f"{os.fspath(module)!r}); fix: a relative file:// URL is read from the "
                                      "working directory, as daprd reads it: run where `dapr run` runs")
        return {"path": module}
    if url.startswith(("http://", "https://")):
        return {"url": url}
    raise PackagingError(key, f"{where}: spec.metadata url: must be a file://, http:// or https:// URL, got "
                              f"{url!r}")


def read_dapr_pipeline(configuration: Path, resources: Path, *, cwd: Path | None = None) -> list[Packaged]:
    """The guests of a Dapr Configuration's spec.httpPipeline, in its order, from a resources folder."""
    docs = [doc for doc in _yaml_documents(configuration, "configuration")
            if isinstance(doc, dict) and doc.get("kind") == "Configuration"]
    if len(docs) != 1:
        raise PackagingError("configuration", f"{os.fspath(configuration)}: must hold one 'kind: Configuration', "
                                              f"found {len(docs)}")
    pipeline = (docs[0].get("spec") or {}).get("httpPipeline") or {}
    handlers = pipeline.get("handlers") if isinstance(pipeline, dict) else None
    if not isinstance(handlers, list) or not handlers:
        raise PackagingError("configuration", f"{os.fspath(configuration)}: spec.httpPipeline.handlers: is "
                                              "missing or empty; fix: list the middleware, {name, type} each")
    if not resources.is_dir():
        raise PackagingError("resources", f"folder {os.fspath(resources)!r} not found; fix: the folder of "
                                          "component files (`dapr run --resources-path`)")
    components = {}
    for path in sorted(p for p in resources.iterdir() if p.suffix in (".yaml", ".yml")):
        for doc, where in _dapr_components(path, "resources"):
            meta = doc.get("metadata") or {}
            spec = doc.get("spec") or {}
            components[meta.get("name"), spec.get("type") if isinstance(spec, dict) else None] = (doc, where)
    return [_handler(configuration, index, handler, components, resources, cwd)
            for index, handler in enumerate(handlers)]


def _handler(configuration: Path, index: int, handler: Any, components: dict[Any, Any], resources: Path,
             cwd: Path | None) -> Packaged:
    at = f"{os.fspath(configuration)}: spec.httpPipeline.handlers[{index}]"
    if not isinstance(handler, dict) or not isinstance(handler.get("name"), str):
        raise PackagingError("configuration", f"{at}: must be a mapping with 'name' and 'type'")
    name, kind = handler["name"], handler.get("type")
    if kind != DAPR_WASM_TYPE:
        raise PackagingError("configuration", f"{at}: type: {kind!r} is not {DAPR_WASM_TYPE!r}; fix: only wasm "
                                              "middleware runs here")
    if (name, kind) not in components:
        raise PackagingError("resources", f"{at}: no component named {name!r} of type {kind!r} in "
                                          f"{os.fspath(resources)!r}")
    return read_dapr_component(resources, key="resources", cwd=cwd, component=components[name, kind])


# -- config files --
def expand_entry(file: Path, entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A config's guests[] entry that names a `traefik_plugin` or a `dapr_component`: the plain entry it
    stands for (`path:`/`url:`, `config:` unless the entry gives its own, a default name) and the WASI
    options. Plugin directories and component files are relative to the config file's folder."""
    given = [name for name in ("traefik_plugin", "dapr_component", "path", "url", "oci") if name in entry]
    if len(given) > 1:
        raise PackagingError(given[1], f"cannot be set together with '{given[0]}'; fix: give one source")
    if "settings" in entry and given[0] != "traefik_plugin":
        raise PackagingError("settings", "is Traefik's wasm settings: it goes with 'traefik_plugin' (use 'wasi' "
                                         "otherwise)")
    kind = given[0]
    location = entry[kind]
    if not isinstance(location, str):
        raise PackagingError(kind, f"must be a path, got {type(location).__name__}")
    if kind == "traefik_plugin":
        packaged = read_traefik_plugin(file.parent / location, settings=entry.get("settings"), base=file.parent)
    else:
        packaged = read_dapr_component(file.parent / location)
    return plain_entry(packaged, entry), packaged.wasi_options()


def plain_entry(packaged: Packaged, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The guests[] entry for a packaged guest: the entry's own keys win over what the packaging says."""
    plain = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
    plain.setdefault("name", packaged.name)
    for name, value in packaged.entry.items():
        if name == "config" and any(k in entry for k in ("config", "config_file", "config_env")):
            continue
        plain[name] = os.path.abspath(value) if isinstance(value, Path) else value
    return plain


def dapr_entries(file: Path, value: Any) -> list[dict[str, Any]]:
    """A config file's `dapr: {configuration, resources, options}`: the guests[] entries of the pipeline,
    with `options: {COMPONENT: {guest keys}}` merged in (Dapr components have no WASI settings)."""
    if not isinstance(value, dict):
        raise PackagingError("dapr", "must be a mapping with configuration and resources")
    for name in value:
        if name not in DAPR_KEYS:
            raise PackagingError(str(name), f"unknown key; allowed keys here: {', '.join(DAPR_KEYS)}")
    for name in ("configuration", "resources"):
        if not isinstance(value.get(name), str):
            raise PackagingError(name, "is missing; fix: the Dapr Configuration file and the components folder, "
                                       "relative to this config file's folder")
    options = value.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise PackagingError("options", "must map component names to guest keys (failure_policy, sha256, ...)")
    guests = read_dapr_pipeline(file.parent / value["configuration"], file.parent / value["resources"])
    unknown = set(options) - {guest.name for guest in guests}
    if unknown:
        raise PackagingError("options", f"no handler of the pipeline is named {sorted(unknown)[0]!r}")
    return [plain_entry(guest, options.get(guest.name, {})) for guest in guests]


# -- Python --
def _dapr_guest(packaged: Packaged, options: dict[str, Any], sources: Mapping[str, Any]) -> Guest:
    entry = packaged.entry
    options.setdefault("name", packaged.name)
    if "config" in entry:
        options.setdefault("config", entry["config"])
    module = entry["path"] if "path" in entry else fetch(url=entry["url"], name=options["name"], **sources)
    return Guest(module, **options)


def traefik_plugin(directory: str | os.PathLike[str], *, config: Any = None, envs: Iterable[str] = (),
                   mounts: Iterable[str] = (), **options: Any) -> Guest:
    """A Guest from a Traefik local plugin directory: its `.traefik.yml`'s wasmPath, with `config` (sent
    as JSON when a mapping) or else the manifest's testData; `envs` and `mounts` as in Traefik's wasm
    settings (relative mounts from the working directory). Other keywords go to Guest. Raises
    PackagingError for an unusable plugin."""
    packaged = read_traefik_plugin(Path(directory), config=config,
                                   settings={"envs": list(envs), "mounts": list(mounts)})
    options.setdefault("name", packaged.name)
    return Guest(packaged.entry["path"], config=packaged.entry["config"], **{**packaged.wasi_options(), **options})


def dapr_component(file: str | os.PathLike[str], *, sha256: str | None = None, insecure: bool = False,
                   allow_unpinned: bool = False, **options: Any) -> Guest:
    """A Guest from a Dapr Component file (middleware.http.wasm): its url (`file://` relative to the
    working directory; http(s) fetched with the source rules: `sha256` pin or `allow_unpinned`) and its
    guestConfig. Other keywords go to Guest."""
    sources = {"sha256": sha256, "insecure": insecure, "allow_unpinned": allow_unpinned}
    return _dapr_guest(read_dapr_component(Path(file)), options, sources)


def dapr_pipeline(configuration: str | os.PathLike[str], resources: str | os.PathLike[str],
                  **options: Any) -> list[Guest]:
    """The Guests of a Dapr Configuration's httpPipeline (outermost first), from a resources folder; the
    keywords go to every Guest (http(s) components need `allow_unpinned=True` here: no pin per component)."""
    sources = {"allow_unpinned": options.pop("allow_unpinned", False), "insecure": options.pop("insecure", False)}
    loaded: list[Guest] = []
    try:
        for packaged in read_dapr_pipeline(Path(configuration), Path(resources)):
            loaded.append(_dapr_guest(packaged, dict(options), sources))
    except BaseException:
        for guest in loaded:
            guest.close()
        raise
    return loaded
