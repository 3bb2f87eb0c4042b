"""The snapshot cache: a guest's snapshot module and what its init did, on disk, shared by processes.

An entry is named by what the snapshot depends on (the guest's module, its config, its WASI
environment, the snapshot format) and holds: the snapshot module (`.wasm`), its metadata (`.json`: the
features and log lines of the init, its time, the image size, the guest's own exports, whether its
handle_response can loop, whose it is and the sha256 of the module), or, for a guest that cannot be
captured, the reason (`.refused`: the check reads every function, so it is kept). The metadata carries a
digest of itself and of the module: an entry that does not match is not used (one WARNING naming the
guest and the file; it is removed and built again). Processes starting together (N workers) build an
entry once: the first holds its lock.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from .files import entry_lock, write_atomic
from .wasm import cache_files

SNAPSHOT_FORMAT: Final = 4  # bump when what a snapshot captures changes: old cache entries are then ignored
# sync_response: whether the guest's handle_response cannot loop (read from its code, which takes a 2 MB module
# ~2 ms: kept here so that a start from the cache does not read the module again)
_META_KEYS: Final = ("features", "init_seconds", "image_bytes", "exports", "init_log", "sync_response")


class DamagedSnapshot(Exception):
    """A cached snapshot module was not what its metadata says (it is removed; build the snapshot again)."""


def snapshot_key(module_sha256: str, config: bytes, wasi_env: Mapping[str, str]) -> str:
    """The entry of a guest's snapshot: what its init saw decides what it captured."""
    return hashlib.sha256(b"\0".join([
        f"http-wasm-asgi snapshot {SNAPSHOT_FORMAT}".encode(), module_sha256.encode(), config,
        json.dumps(sorted(wasi_env.items())).encode()])).hexdigest()


def _sealed(payload: dict[str, Any]) -> bytes:
    """A JSON document that carries the digest of its payload."""
    text = json.dumps(payload, sort_keys=True)
    return json.dumps({"payload": payload, "digest": hashlib.sha256(text.encode()).hexdigest()}).encode()


def _unsealed(data: bytes) -> dict[str, Any] | None:
    """The payload of a sealed document, or None when it is damaged."""
    try:
        doc = json.loads(data)
        payload = doc["payload"]
        ok = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest() == doc["digest"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return payload if ok and isinstance(payload, dict) else None


class SnapshotEntry:
    """One snapshot of guest `guest` in the cache folder `folder`."""

    def __init__(self, folder: Path, key: str, guest: str) -> None:
        self.folder = folder
        self.key = key
        self.guest = guest
        self.module_path = folder / f"snapshot-{key}.wasm"
        self.meta_path = folder / f"snapshot-{key}.json"
        self.refused_path = folder / f"snapshot-{key}.refused"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with entry_lock(self.folder / f"snapshot-{self.key}"):
            yield

    def read(self) -> tuple[Callable[[], bytes], dict[str, Any]] | None:
        """The snapshot's metadata, verified, and what reads its module (verified too) when it is needed:
        when the module's compiled form is in the compile cache, the module itself is never read. None
        when there is none (or it was damaged and is removed: it is built again)."""
        try:
            sealed = self.meta_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._reject(self.meta_path, f"cannot be read ({exc.strerror or exc})")
            return None
        meta = _unsealed(sealed)
        if meta is None or not all(k in meta for k in (*_META_KEYS, "module_sha256")) \
                or not self.module_path.is_file():
            self._reject(self.meta_path, "its metadata is damaged (the digest it carries does not match), or its "
                                         "module is missing")
            return None
        cache_files.touch(self.meta_path)
        return functools.partial(self._module, str(meta["module_sha256"])), {k: meta[k] for k in _META_KEYS}

    def _module(self, sha256: str) -> bytes:
        """The snapshot module's bytes; DamagedSnapshot (the entry removed) when they are not what the
        metadata says."""
        try:
            wasm = self.module_path.read_bytes()
        except OSError as exc:
            self._reject(self.module_path, f"cannot be read ({exc.strerror or exc})")
            raise DamagedSnapshot(str(self.module_path)) from None
        if hashlib.sha256(wasm).hexdigest() != sha256:
            self._reject(self.module_path, "its contents do not match the digest in its metadata")
            raise DamagedSnapshot(str(self.module_path))
        return wasm

    def _reject(self, path: Path, why: str) -> None:
        """Not used: the entry (module and metadata) is removed (it is built again)."""
        cache_files.reject(self.guest, path, why)
        for other in (self.meta_path, self.module_path):
            with contextlib.suppress(OSError):
                other.unlink()

    def write(self, wasm: bytes, meta: dict[str, Any]) -> None:
        """Both files, each replaced whole; the metadata last, so a reader never sees it without its module.
        A cache that cannot be written is no cache, not a failure."""
        payload = {**meta, "guest": self.guest, "module_sha256": hashlib.sha256(wasm).hexdigest()}
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.module_path, wasm)  # owner-only: it holds the guest's state after init
            write_atomic(self.meta_path, _sealed(payload))
            cache_files.keep_within_limit(self.folder)

    def refusal(self) -> str | None:
        """Why this guest cannot be captured, when an earlier run found out; None when never checked (or the
        record is damaged: it is checked again)."""
        try:
            payload = _unsealed(self.refused_path.read_bytes())
        except OSError:
            return None
        return str(payload["reason"]) if payload is not None and "reason" in payload else None

    def refuse(self, reason: str) -> None:
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.refused_path, _sealed({"reason": reason, "guest": self.guest}), mode=0o644)
