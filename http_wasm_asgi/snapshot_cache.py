"""The snapshot cache: a guest's snapshot module and what its init did, on disk, shared by processes.

An entry is named by what the snapshot depends on (the guest's module, its config, its WASI
environment, the snapshot format) and holds three files: the snapshot module (`.wasm`), its metadata
(`.json`: the features and log lines of the init, its time, the image size, the guest's own exports),
or, for a guest that cannot be captured, the reason (`.refused`: the check reads every function, so it
is kept). Processes starting together (N workers) build an entry once: the first holds its lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from .files import entry_lock, write_atomic

SNAPSHOT_FORMAT: Final = 2  # bump when what a snapshot captures changes: old cache entries are then ignored
_META_KEYS: Final = ("features", "init_seconds", "image_bytes", "exports", "init_log")


def snapshot_key(module_sha256: str, config: bytes, wasi_env: Mapping[str, str]) -> str:
    """The entry of a guest's snapshot: what its init saw decides what it captured."""
    return hashlib.sha256(b"\0".join([
        f"http-wasm-asgi snapshot {SNAPSHOT_FORMAT}".encode(), module_sha256.encode(), config,
        json.dumps(sorted(wasi_env.items())).encode()])).hexdigest()


class SnapshotEntry:
    """One snapshot in the cache folder `folder`."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.key = key
        self.module_path = folder / f"snapshot-{key}.wasm"
        self.meta_path = folder / f"snapshot-{key}.json"
        self.refused_path = folder / f"snapshot-{key}.refused"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with entry_lock(self.module_path):
            yield

    def read(self) -> tuple[bytes, dict[str, Any]] | None:
        """The snapshot module and its metadata (missing or unreadable: None, it is built again)."""
        try:
            meta = json.loads(self.meta_path.read_text())
            return self.module_path.read_bytes(), {k: meta[k] for k in _META_KEYS}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, wasm: bytes, meta: dict[str, Any]) -> None:
        """Both files, each replaced whole; the metadata last, so a reader never sees it without its module.
        A cache that cannot be written is no cache, not a failure."""
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.module_path, wasm)  # owner-only: it holds the guest's state after init
            write_atomic(self.meta_path, json.dumps(meta).encode())

    def refusal(self) -> str | None:
        """Why this guest cannot be captured, when an earlier run found out; None when never checked."""
        try:
            return self.refused_path.read_text()
        except OSError:
            return None

    def refuse(self, reason: str) -> None:
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.refused_path, reason.encode(), mode=0o644)
