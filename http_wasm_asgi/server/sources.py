"""Where a guest's module comes from: a file (`path:`), an HTTPS URL (`url:`) or an OCI registry
(`oci:`), pinned by the module's sha256, with a content-addressed cache.

A pinned module already in the cache is used without asking the network: a start-up with the
source down works. A fetched module whose sha256 differs from the pin is refused. An unpinned
source (only with `allow_unpinned: true`) is fetched on every load and fails when unreachable.
`serve --workers N` fetches it in the serve process and hands the workers its digest (a pins file
named by $HTTP_WASM_ASGI_SOURCE_PINS), so every worker runs the same module even when the tag or URL
moves meanwhile; a SIGHUP fetches it again, before the workers reload.

Cache (under $HTTP_WASM_ASGI_CACHE_DIR or ~/.cache/http-wasm-asgi, beside the compiled modules):
`sources/sha256/<hex>.wasm` (the modules, by their digest) and `sources/oci/<manifest hex>` (the
module digest a pinned manifest digest stands for).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..files import write_atomic
from ..wasm.cache import default_cache_dir
from . import oci

PINS_ENV = "HTTP_WASM_ASGI_SOURCE_PINS"  # a JSON file {"url: ..." or "oci: ...": sha256} unpinned sources follow

follow_pins = True  # False in the process that writes the pins file (it fetches for itself)


class SourceError(Exception):
    """A guest's module could not be had: the message names the guest, the source and the fix."""


@dataclass(frozen=True)
class RemoteSource:
    """A `url:` or `oci:` guest source with its pin and permissions."""

    guest: str
    kind: str  # "url" or "oci"
    location: str
    sha256: str | None = None  # 64 hex digits of the module itself
    insecure: bool = False  # plain http (url) / http registry (oci) beyond loopback hosts
    allow_unpinned: bool = False

    @property
    def reference(self) -> oci.Reference:
        return oci.Reference.parse(self.location)

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None or (self.kind == "oci" and self.reference.digest is not None)

    def check(self) -> None:
        """Refuse what must not be fetched (raises ValueError): bad URLs, plain http, no pin."""
        if self.kind == "url":
            parts = urlsplit(self.location)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise ValueError(f"must be an https:// URL, got {self.location!r}")
            if parts.scheme == "http" and not (self.insecure or oci.is_loopback(parts.hostname)):
                raise ValueError(f"plain http is allowed only for loopback hosts; fix: use https, or set "
                                 f"'insecure: true' to fetch {self.location!r} unprotected")
        else:
            self.reference  # noqa: B018  (parses: a ValueError names the expected form)
        if not self.pinned and not self.allow_unpinned:
            raise ValueError("is not pinned: set 'sha256' to the module's digest (`sha256sum GUEST.wasm`), use "
                             "an oci reference by @sha256 digest, or set 'allow_unpinned: true' to run whatever "
                             "the source serves")


def sources_dir() -> Path:
    base = default_cache_dir()
    return (base if base is not None else Path(tempfile.gettempdir()) / "http-wasm-asgi") / "sources"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(*, url: str | None = None, oci: str | None = None, sha256: str | None = None, insecure: bool = False,
          allow_unpinned: bool = False, name: str = "guest") -> Path:
    """The local file of a module from a URL or an OCI registry, for `Guest(...)`: the same rules
    and cache as `url:`/`oci:` in a config. Raises ValueError (refused before fetching) or SourceError."""
    if (url is None) == (oci is None):
        raise ValueError("give exactly one of url= or oci=")
    pin = sha256.lower().removeprefix("sha256:") if sha256 else None
    source = RemoteSource(name, "url" if url else "oci", url or oci or "", pin, insecure, allow_unpinned)
    source.check()
    return resolve(source)


def pins_key(source: RemoteSource) -> str:
    """How the pins file (and a loaded config's guest) names a source: "url: https://..." or "oci: ..."."""
    return f"{source.kind}: {source.location}"


def cached_digest(path: Path) -> str:
    """The sha256 of a module `resolve` returned: the cache names its files by it."""
    return path.stem


def write_pins(path: Path, pins: dict[str, str]) -> None:
    """The pins file the workers of `serve` follow (written atomically: a worker may be reading it)."""
    _store(path, json.dumps(pins, sort_keys=True).encode())


def _followed_pin(source: RemoteSource) -> str | None:
    """The digest the serve process fetched for this unpinned source, when this is one of its workers."""
    pins_file = os.environ.get(PINS_ENV)
    if not follow_pins or not pins_file:
        return None
    try:
        pins = json.loads(Path(pins_file).read_text())
    except (OSError, ValueError):
        return None
    pin = pins.get(pins_key(source)) if isinstance(pins, dict) else None
    return pin if isinstance(pin, str) else None


def resolve(source: RemoteSource, cache: Path | None = None) -> Path:
    """The cached file of a source's module: from the cache when pinned and present, else fetched."""
    cache = cache or sources_dir()
    followed = None if source.pinned else _followed_pin(source)
    if followed is not None:  # the module the serve process fetched: this one or none
        source = dataclasses.replace(source, sha256=followed)
    cached = _cached(source, cache)
    if cached is not None:
        return cached
    try:
        wasm, manifest = _fetch(source)
    except oci.RegistryUnreachable as exc:
        raise SourceError(_unreachable(source, str(exc))) from None
    except oci.OciError as exc:
        raise SourceError(f"guest {source.guest!r}: {exc}") from None
    actual = hashlib.sha256(wasm).hexdigest()
    if source.sha256 is not None and actual != source.sha256:
        raise SourceError(f"guest {source.guest!r}: digest mismatch for {source.location}: expected sha256:"
                          f"{source.sha256}, got sha256:{actual}; refused. fix: if the new module is the one "
                          "you want, pin its digest")
    path = _store(cache / "sha256" / f"{actual}.wasm", wasm)
    if manifest is not None and source.kind == "oci" and source.reference.digest is not None:
        _store(cache / "oci" / manifest.removeprefix("sha256:"), actual.encode())
    return path


def _cached(source: RemoteSource, cache: Path) -> Path | None:
    digest = source.sha256
    if digest is None and source.kind == "oci" and source.reference.digest is not None:
        try:
            digest = (cache / "oci" / source.reference.digest.removeprefix("sha256:")).read_text().strip()
        except OSError:
            return None
    if digest is None:
        return None
    path = cache / "sha256" / f"{digest}.wasm"
    if path.is_file() and file_sha256(path) == digest:  # a damaged file is fetched again
        return path
    return None


def _fetch(source: RemoteSource) -> tuple[bytes, str | None]:
    """The module's bytes, and for oci the digest of the manifest they came from."""
    if source.kind == "url":
        return _download(source), None
    reference = source.reference
    plain = oci.plain_http_allowed(reference.registry, source.insecure)
    with oci.Registry(reference.registry, plain_http=plain, verify=_tls()) as registry:
        return oci.pull_wasm(reference, registry)


def _tls() -> ssl.SSLContext:
    """The system's trust store, honouring $SSL_CERT_FILE / $SSL_CERT_DIR (e.g. a company CA)."""
    return ssl.create_default_context()


def _download(source: RemoteSource) -> bytes:
    oci.require_client()
    import httpx

    try:
        with httpx.stream("GET", source.location, timeout=oci.TIMEOUT, verify=_tls(),
                          follow_redirects=True) as response:
            if response.status_code != 200:
                raise oci.OciError(f"fetching {source.location}: HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > oci.MAX_BYTES:
                    raise oci.OciError(f"{source.location} is larger than {oci.MAX_BYTES >> 20} MiB; refused")
            return bytes(body)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        if isinstance(exc.__context__, ssl.SSLError) or "CERTIFICATE" in str(exc):
            raise oci.OciError(f"TLS refused {source.location}: {exc}; fix: the server's certificate must be "
                               "trusted (a private CA: set SSL_CERT_FILE to its bundle)") from None
        raise oci.RegistryUnreachable(f"{source.location} is unreachable: {exc}") from None
    except httpx.HTTPError as exc:
        raise oci.OciError(f"fetching {source.location} failed: {type(exc).__name__}: {exc}") from None


def _unreachable(source: RemoteSource, reason: str) -> str:
    if source.pinned:
        return (f"guest {source.guest!r}: {reason}; and the pinned module is not in the cache "
                f"({sources_dir()}), so there is nothing to start with. fix: start once with the source "
                "reachable (or copy the module into the cache)")
    return (f"guest {source.guest!r}: {reason}; the source is not pinned, so no cached copy can stand in. "
            "fix: make it reachable, or pin it with 'sha256' so a cached copy is used when it is down")


def _store(path: Path, data: bytes) -> Path:
    """Write atomically (another process may be reading or writing the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return path
