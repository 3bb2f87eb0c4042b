"""Wasm guests in OCI registries: pull one (either artifact form) and push one, over the
distribution API with httpx.

Why not the `oras` package: its requests wrapper retries a refused connection or a refused login
with sleeps of 3 s up to 83 s (minutes before a start-up can fail), and it reads only
~/.docker/config.json, not $DOCKER_CONFIG. A start-up needs a fast, clear answer; what is needed of
the API is small: a manifest, a blob, and the 401 challenge (Basic, or Bearer with a token).

Forms pulled:
- the wasm artifact: a layer of media type `application/vnd.wasm.content.layer.v1+wasm` (what
  `push` writes, and `oras push ... guest.wasm:application/vnd.wasm.content.layer.v1+wasm`), or
  `application/wasm`;
- the single-layer image some tools push (`FROM scratch` + `COPY plugin.wasm`): one tar layer,
  gzipped or not, holding one `.wasm` file.
An image index is followed to its wasm entry (platform os `wasip1`/`wasi` or architecture `wasm`),
or its only entry.

Credentials: $HTTP_WASM_ASGI_REGISTRY_USER/_PASSWORD, else the docker config file
($DOCKER_CONFIG/config.json or ~/.docker/config.json: `auths`, `credHelpers`, `credsStore`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import ipaddress
import json
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass
from typing import Any

try:
    import httpx
except ImportError as exc:  # an extra: anything that talks to a registry or a URL says so when it is used
    httpx = None  # type: ignore[assignment]
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

from ..errors import MissingExtra


def require_client() -> None:
    """Fail with a clear message when the HTTP client (the 'sources' extra) is not installed."""
    if _MISSING is not None:
        raise MissingExtra("guests from url: and oci: (and push)", "sources", _MISSING)

WASM_LAYER = "application/vnd.wasm.content.layer.v1+wasm"
WASM_LAYERS = (WASM_LAYER, "application/wasm")
WASM_CONFIG = "application/vnd.wasm.config.v1+json"
TAR_LAYERS = ("application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar",
              "application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.diff.tar")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFESTS = (OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json")
INDEXES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
TIMEOUT = httpx.Timeout(30.0, connect=5.0) if httpx is not None else None
MAX_BYTES = 512 * 1024 * 1024  # a module (or image layer) larger than this is refused, never buffered
_REFERENCE = re.compile(r"^(?:oci://)?(?P<registry>[^/]+)/(?P<repo>[a-z0-9][a-z0-9._/-]*?)"
                        r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class OciError(Exception):
    """Pulling or pushing failed: the message says what the registry answered and what to do."""


class RegistryUnreachable(OciError):
    """The registry could not be reached at all (connection refused, DNS, timeout)."""


@dataclass(frozen=True)
class Reference:
    """`registry/repository[:tag][@sha256:...]`; the tag defaults to `latest` when no digest is given."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        match = _REFERENCE.match(text.strip())
        if not match or not ("." in match["registry"] or ":" in match["registry"] or match["registry"] == "localhost"):
            raise ValueError(f"not an OCI reference like 'ghcr.io/org/guest:1.0' or 'registry/repo@sha256:<64 hex>' "
                             f"(the registry host comes first), got {text!r}")
        tag = match["tag"] or (None if match["digest"] else "latest")
        return cls(match["registry"], match["repo"], tag, match["digest"])

    @property
    def ref(self) -> str:
        """What the manifest is fetched by: the digest if given, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "") + \
            (f"@{self.digest}" if self.digest else "")


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: plain http stays on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plain_http_allowed(registry: str, insecure: bool) -> bool:
    """A registry is spoken to over plain http only on loopback (as docker does) or when told so."""
    return insecure or is_loopback(registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def credentials(registry: str) -> tuple[str, str] | None:
    """(user, password) for a registry: the environment first, then the docker config file."""
    user, password = os.environ.get("HTTP_WASM_ASGI_REGISTRY_USER"), os.environ.get("HTTP_WASM_ASGI_REGISTRY_PASSWORD")
    if user and password:
        return user, password
    folder = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, ValueError):
        return None
    helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
    for key, entry in (config.get("auths") or {}).items():
        if re.sub(r"^https?://|/.*$", "", key) == registry and isinstance(entry, dict):
            if entry.get("auth"):
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                return user, password
            if entry.get("username") and entry.get("password"):
                return str(entry["username"]), str(entry["password"])
    return _from_helper(str(helper), registry) if helper else None


def _from_helper(helper: str, registry: str) -> tuple[str, str] | None:
    """Ask `docker-credential-<helper> get` (the docker credential-helper protocol)."""
    try:
        done = subprocess.run([f"docker-credential-{helper}", "get"], input=registry, capture_output=True,
                              text=True, timeout=30, check=True)
        answer = json.loads(done.stdout)
        return str(answer["Username"]), str(answer["Secret"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None


class Registry:
    """One registry's distribution API: answers its 401 challenges (Basic, or Bearer tokens per scope)."""

    def __init__(self, registry: str, *, plain_http: bool = False, verify: Any = True,
                 auth: tuple[str, str] | None = None) -> None:
        require_client()
        host = "registry-1.docker.io" if registry == "docker.io" else registry
        self.base = f"{'http' if plain_http else 'https'}://{host}/v2/"
        self.registry = registry
        self.auth = auth if auth is not None else credentials(registry)
        self.client = httpx.Client(timeout=TIMEOUT, verify=verify, follow_redirects=True)
        self._authorization: dict[str, str] = {}  # scope -> Authorization header value

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, scope: str, **kwargs: Any) -> httpx.Response:
        """One API call; on 401, answer the challenge once and retry."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        headers = dict(kwargs.pop("headers", None) or {})
        if scope in self._authorization:
            headers["Authorization"] = self._authorization[scope]
        try:
            response = self.client.request(method, url, headers=headers, **kwargs)
            if response.status_code == 401:
                self._authorization[scope] = self._answer(response, scope)
                headers["Authorization"] = self._authorization[scope]
                response = self.client.request(method, url, headers=headers, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise RegistryUnreachable(f"registry {self.registry} is unreachable ({self.base}): {exc}") from None
        except httpx.HTTPError as exc:
            raise OciError(f"registry {self.registry}: {type(exc).__name__}: {exc}") from None
        if response.status_code in (401, 403):
            who = f"as {self.auth[0]!r}" if self.auth else "without credentials"
            raise OciError(f"registry {self.registry} refused access {who} (HTTP {response.status_code}); fix: "
                           "log in (`docker login`, a docker config file) or set HTTP_WASM_ASGI_REGISTRY_USER "
                           "and HTTP_WASM_ASGI_REGISTRY_PASSWORD")
        return response

    def _answer(self, response: httpx.Response, scope: str) -> str:
        challenge = response.headers.get("www-authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        basic = "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode() if self.auth else None
        if scheme == "basic" and basic:
            return basic
        if scheme == "bearer":
            params = dict(_CHALLENGE.findall(challenge))
            query = {k: v for k, v in (("service", params.get("service")), ("scope", params.get("scope") or scope))
                     if v}
            token = self.client.get(params.get("realm", ""), params=query,
                                    headers={"Authorization": basic} if basic else {})
            if token.status_code == 200:
                body = token.json()
                return "Bearer " + str(body.get("token") or body.get("access_token"))
        return basic or ""


def pull_wasm(reference: Reference, registry: Registry) -> tuple[bytes, str]:
    """The module of a reference and the digest of the manifest it came from."""
    scope = f"repository:{reference.repository}:pull"
    manifest, digest = _manifest(registry, reference.repository, reference.ref, scope)
    if manifest.get("mediaType") in INDEXES or "manifests" in manifest:
        entry = _wasm_entry(reference, manifest)
        manifest, digest = _manifest(registry, reference.repository, entry, scope)
    layers = manifest.get("layers") or []
    wasm = [layer for layer in layers if layer.get("mediaType") in WASM_LAYERS]
    if any(int(layer.get("size") or 0) > MAX_BYTES for layer in layers):
        raise OciError(f"{reference}: a layer is larger than {MAX_BYTES >> 20} MiB; refused")
    if len(wasm) == 1:
        return _blob(registry, reference, wasm[0]["digest"], scope), digest
    if len(layers) == 1 and layers[0].get("mediaType") in TAR_LAYERS:
        return _wasm_from_tar(reference, _blob(registry, reference, layers[0]["digest"], scope)), digest
    found = ", ".join(str(layer.get("mediaType")) for layer in layers) or "no layers"
    raise OciError(f"{reference} holds no wasm module: expected one layer of media type {WASM_LAYER} (or one tar "
                   f"layer with a .wasm file), found: {found}")


def _manifest(registry: Registry, repository: str, ref: str, scope: str) -> tuple[dict[str, Any], str]:
    response = registry.request("GET", f"{repository}/manifests/{ref}", scope,
                                headers={"Accept": ", ".join((*MANIFESTS, *INDEXES))})
    if response.status_code == 404:
        raise OciError(f"{registry.registry}/{repository}:{ref} not found in the registry (HTTP 404); fix: check "
                       "the name and tag, or push it first (`http-wasm-asgi push GUEST.wasm oci://...`)")
    if response.status_code != 200:
        raise OciError(f"{registry.registry}/{repository}: the manifest {ref}: HTTP {response.status_code}")
    digest = sha256_digest(response.content)
    if ref.startswith("sha256:") and digest != ref:
        raise OciError(f"{registry.registry}/{repository}: the manifest fetched by {ref} has digest {digest}")
    return json.loads(response.content), digest


def _wasm_entry(reference: Reference, index: dict[str, Any]) -> str:
    entries = index.get("manifests") or []
    for entry in entries:
        platform = entry.get("platform") or {}
        if platform.get("os") in ("wasip1", "wasi") or platform.get("architecture") == "wasm":
            return str(entry["digest"])
    if len(entries) == 1:
        return str(entries[0]["digest"])
    raise OciError(f"{reference} is an image index without a wasm entry (platform os wasip1/wasi or architecture "
                   "wasm); fix: pin the entry's own digest")


def _blob(registry: Registry, reference: Reference, digest: str, scope: str) -> bytes:
    response = registry.request("GET", f"{reference.repository}/blobs/{digest}", scope)
    if response.status_code != 200:
        raise OciError(f"{reference}: blob {digest}: HTTP {response.status_code}")
    if sha256_digest(response.content) != digest:
        raise OciError(f"{reference}: blob {digest} arrived with digest {sha256_digest(response.content)}")
    return response.content


def _wasm_from_tar(reference: Reference, layer: bytes) -> bytes:
    """The one .wasm file of an image layer (`plugin.wasm` if there are several)."""
    data = gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".wasm")]
        chosen = [m for m in members if os.path.basename(m.name) == "plugin.wasm"] or members
        if len(chosen) != 1:
            raise OciError(f"{reference}: its image layer holds {len(members)} .wasm files; expected one "
                           "(or one named plugin.wasm)")
        file = tar.extractfile(chosen[0])
        assert file is not None
        return file.read()


def push_blob(registry: Registry, repository: str, data: bytes) -> str:
    """Upload a blob (monolithic: POST, then PUT with its digest) unless the registry has it."""
    digest, scope = sha256_digest(data), f"repository:{repository}:pull,push"
    if registry.request("HEAD", f"{repository}/blobs/{digest}", scope).status_code == 200:
        return digest
    started = registry.request("POST", f"{repository}/blobs/uploads/", scope)
    if started.status_code != 202 or "location" not in started.headers:
        raise OciError(f"{registry.registry}/{repository}: the upload was refused (HTTP {started.status_code})")
    location = httpx.URL(registry.base).join(started.headers["location"])
    location = location.copy_merge_params({"digest": digest})  # keeps the registry's own _state parameter
    done = registry.request("PUT", str(location), scope, content=data,
                            headers={"Content-Type": "application/octet-stream"})
    if done.status_code != 201:
        raise OciError(f"{registry.registry}/{repository}: blob {digest} was refused (HTTP {done.status_code})")
    return digest


def push_manifest(registry: Registry, reference: Reference, manifest: dict[str, Any]) -> str:
    body = json.dumps(manifest, separators=(",", ":")).encode()
    response = registry.request("PUT", f"{reference.repository}/manifests/{reference.ref}",
                                f"repository:{reference.repository}:pull,push", content=body,
                                headers={"Content-Type": str(manifest["mediaType"])})
    if response.status_code != 201:
        raise OciError(f"{reference}: the manifest was refused (HTTP {response.status_code}: {response.text[:200]})")
    return sha256_digest(body)


def push_wasm(wasm: bytes, reference: Reference, registry: Registry, *, title: str = "module.wasm") -> str:
    """Push a module as a wasm artifact (config `application/vnd.wasm.config.v1+json`, one layer of
    `application/vnd.wasm.content.layer.v1+wasm`); returns the manifest's digest."""
    config = b"{}"
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": WASM_CONFIG, "digest": push_blob(registry, reference.repository, config),
                   "size": len(config)},
        "layers": [{"mediaType": WASM_LAYER, "digest": push_blob(registry, reference.repository, wasm),
                    "size": len(wasm), "annotations": {"org.opencontainers.image.title": title}}],
    }
    return push_manifest(registry, reference, manifest)
