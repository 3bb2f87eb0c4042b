"""Generate docs/config.schema.json, the JSON Schema of config files, from the loader's own key lists.

    python docs/gen_schema.py           # write docs/config.schema.json
    python docs/gen_schema.py --check   # exit 1 if the checked-in file differs (tests/test_docs.py does this)

The keys come from `http_wasm_asgi.server.config` (TOP_KEYS, GUEST_KEYS, SERVER_KEYS, ...), the match keys
from `asgi.routes`, the Traefik/Dapr keys from `server.interop`: a key added there without a description
here fails this script, so the schema cannot fall behind the code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from http_wasm_asgi.asgi.routes import MATCH_KEYS
from http_wasm_asgi.guest import FAILURE_POLICIES
from http_wasm_asgi.server import config as C
from http_wasm_asgi.server.interop import DAPR_KEYS, SETTINGS_KEYS

OUT = Path(__file__).resolve().parent / "config.schema.json"
ID = "https://github.com/http-wasm-asgi/http-wasm-asgi/docs/config.schema.json"  # an identifier, not fetched

SIZE: dict[str, Any] = {"description": "bytes, or text with a unit: '64MiB' (B, KB, KiB, MB, MiB, GB, GiB)",
                        "anyOf": [{"type": "integer", "exclusiveMinimum": 0},
                                  {"type": "string", "pattern": r"^\s*[0-9]+\s*([BbKkMmGg]|[KkMmGg][Ii]?[Bb])?\s*$"}]}
SECONDS: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0}
PORT: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 65535}
BOOL: dict[str, Any] = {"type": "boolean"}
STRING: dict[str, Any] = {"type": "string"}


def text(description: str) -> dict[str, Any]:
    return {**STRING, "description": description}


def described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description}


def instances(low: int, description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": 1_000_000, "description": description}


def mapping(keys: tuple[str, ...], properties: dict[str, Any], description: str) -> dict[str, Any]:
    missing, extra = set(keys) - set(properties), set(properties) - set(keys)
    if missing or extra:
        raise SystemExit(f"docs/gen_schema.py: describe {sorted(missing)}, drop {sorted(extra)} ({description})")
    return {"type": "object", "description": description, "additionalProperties": False,
            "properties": {key: properties[key] for key in keys}}


def schema() -> dict[str, Any]:
    timeout = mapping(C.TIMEOUT_KEYS, {
        "connect": described(SECONDS, "connecting to the upstream (default 5)"),
        "read": described(SECONDS, "the status line once the request is sent, then each read of the body (30)"),
        "write": described(SECONDS, "each chunk of the request body, until the response starts (30)"),
        "pool": described(SECONDS, "waiting for a pooled connection, then 503 (10)"),
    }, "the sidecar's timeouts per phase")
    match = mapping(MATCH_KEYS, {
        "path_prefix": text("the request path starts with it (a plain string prefix: write /api/)"),
        "path": text("the request path exactly"),
        "methods": {"type": "array", "items": STRING, "description": "one of these methods (GET does not imply HEAD)"},
        "host": text("the Host header, exactly, or *.example.com for any subdomain"),
        "headers": {"type": "object", "additionalProperties": STRING,
                    "description": "each named header has exactly this value"},
    }, "all the keys given must match; no match: every request")
    route = mapping(C.ROUTE_KEYS, {
        "match": match,
        "guests": {"type": "array", "items": STRING, "description": "names of guests[] entries, outermost first"},
    }, "a route: the first that matches a request picks its chain")
    wasi = mapping(C.WASI_KEYS, {
        "env": {"type": "object", "additionalProperties": STRING, "description": "WASI environment variables"},
        "dirs": {"type": "object", "additionalProperties": STRING,
                 "description": "guest path: host folder (relative to the config file's folder), read-only"},
    }, "opt-in WASI for this guest")
    settings = mapping(SETTINGS_KEYS, {
        "envs": {"type": "array", "items": STRING, "description": "forwarded to the guest's WASI environment"},
        "mounts": {"type": "array", "items": STRING, "description": "host:guest[:ro] WASI directories"},
    }, "Traefik's wasm settings of a traefik_plugin")
    config_value = {"description": "what get_config returns: text (UTF-8), a mapping (sent as JSON) or {base64: ...}",
                    "anyOf": [STRING, {"type": "object", "properties": {"base64": STRING}}, {"type": "null"}]}
    guest = mapping(C.GUEST_KEYS, {
        "name": text("unique; default: the file's stem"),
        "path": text("the .wasm (or .wat) file, relative to the config file's folder"),
        "url": text("an https:// URL (plain http:// on loopback), pinned by sha256"),
        "oci": text("an OCI reference: registry/repository:tag or ...@sha256:<digest>"),
        "sha256": {"type": "string", "pattern": "^(sha256:)?[0-9a-fA-F]{64}$", "description": "the module's sha256"},
        "insecure": described(BOOL, "allow plain http to a non-loopback url/oci host"),
        "allow_unpinned": described(BOOL, "run an unpinned url/oci source"),
        "config": config_value,
        "config_file": text("the guest's config is this file's bytes (relative to the config file's folder)"),
        "config_env": text("the guest's config is this environment variable"),
        "max_instances": instances(1, "the pool's count cap (default 1024)"),
        "min_instances": instances(1, "instances kept ready, created at load (default 1)"),
        "max_idle": instances(0, "idle instances beyond this many are closed"),
        "idle_timeout": described(SECONDS, "idle instances are closed after this long (default 60)"),
        "memory_budget": described(SIZE, "new instances only while the guest's instances hold less (default 1GiB)"),
        "memory_limit": described(SIZE, "linear memory cap per instance (default 256MiB)"),
        "recycle_memory": {"description": "an instance that grew more than this past its start is replaced by a "
                                          "fresh one (default 64MiB, snapshot instances); null or none: never",
                           "anyOf": [*SIZE["anyOf"], {"type": "null"},
                                     {"type": "string", "pattern": r"^\s*[Nn][Oo][Nn][Ee]\s*$"}]},
        "pool_timeout": described(SECONDS, "how long a request waits for an instance, then 503 (default 10)"),
        "call_timeout": described(SECONDS, "time a guest call may take, then 503 (default 1.0)"),
        "init_timeout": described(SECONDS, "CPU time the guest's init may take (default 10)"),
        "reuse_instances": described(BOOL, "false: a brand-new instance per request (default true)"),
        "snapshot": described(BOOL, "start instances from a snapshot taken after init (default true)"),
        "threaded": described(BOOL, "run this guest's calls on worker threads (default false)"),
        "failure_policy": {"enum": list(FAILURE_POLICIES), "description": "fail_open: skip the guest when it fails"},
        "wasi": wasi,
        "traefik_plugin": text("a Traefik plugin directory (.traefik.yml and the module) instead of path"),
        "settings": settings,
        "dapr_component": text("a Dapr component file (middleware.http.wasm) instead of path"),
    }, "a guest, as Guest(...) takes it")
    dapr = mapping(DAPR_KEYS, {
        "configuration": text("a kind: Configuration with spec.httpPipeline.handlers"),
        "resources": text("the components folder (dapr run --resources-path)"),
        "options": {"type": "object", "additionalProperties": {"type": "object"},
                    "description": "guest keys per component name"},
    }, "instead of guests: the chain of a Dapr pipeline")
    top = mapping(C.TOP_KEYS, {
        "app": {"type": "string", "pattern": r"^[\w.]+:[\w.]+$", "description": "the ASGI app, module:attribute"},
        "upstream": {"type": "string", "pattern": r"^(https?://[^/\s]+|unix:/\S)",
                     "description": "an HTTP service to proxy to (sidecar mode), or unix:/path.sock"},
        "upstream_timeout": {"anyOf": [SECONDS, timeout], "description": "seconds, or per phase"},
        "server": mapping(C.SERVER_KEYS, {
            "host": text("bind address (default 127.0.0.1)"),
            "port": described(PORT, "port (default 8080)"),
            "workers": {"type": "integer", "minimum": 1, "maximum": 1024, "description": "worker processes"},
            "shutdown_timeout": described(SECONDS, "the SIGTERM drain's limit (default 30)"),
        }, "where serve listens; its flags override it"),
        "guests": {"type": "array", "items": {"$ref": "#/$defs/guest"}, "description": "the chain, outermost first"},
        "routes": {"type": "array", "items": route, "description": "per-route chains, first match wins"},
        "max_body_size": described(SIZE, "what may be buffered for guests (default 16MiB)"),
        "log_level": {"enum": list(C.LOG_LEVELS), "description": "default info"},
        "metrics": {**mapping(C.METRICS_KEYS, {
            "host": text("its bind address (default: server.host)"),
            "port": described(PORT, "the metrics listener's port: /metrics, /healthz, /readyz"),
        }, "the metrics listener"), "required": ["port"]},
        "cache_max_size": described(SIZE, "the compile cache's limit (default 1GiB)"),
        "dapr": dapr,
    }, "an http-wasm-asgi config file (YAML, or TOML for .toml files)")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": ID,
            "title": "http-wasm-asgi config file", **top,
            "oneOf": [{"required": ["app"]}, {"required": ["upstream"]}],
            "$defs": {"guest": guest}}


def render() -> str:
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    if "--check" in argv:
        if OUT.read_text() != render():
            print("docs/config.schema.json is out of date: run python docs/gen_schema.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
