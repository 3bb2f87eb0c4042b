"""The files of the cache folder: which entries there are, whose they are, and a bound on their size.

An *entry* is the files of one cached thing: a compiled module (`<key>-<tag>-<digest>.cwasm`, with
`<key>-<tag>.about` saying whose it is and `<key>-<tag>.lock`), or a snapshot (`snapshot-<key>.wasm`,
`.json`, `.refused`, `.lock`, see snapshot_cache.py). The folder is kept under a size limit
(`max_size()`: $HTTP_WASM_ASGI_CACHE_MAX_SIZE, else the config file's `cache_max_size`, else 1 GiB)
by removing the least recently used entries after each write; temp files of writers that died are
swept at the same time.

An entry a live process maps (a snapshot's compiled module: its memory image is the file's pages) is
never removed: the process holds a shared `flock` on the file for as long as the module lives, and
pruning skips any entry it cannot lock exclusively. (On Linux, removing a mapped file would be safe
for the process, which keeps the inode; but its disk space would not come back, and the next worker
to start would compile it again.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..files import pid_alive, write_atomic

log = logging.getLogger("http_wasm_asgi.cache")

MAX_SIZE_ENV: Final = "HTTP_WASM_ASGI_CACHE_MAX_SIZE"
# A heavy guest (a WAF with the OWASP rule set) costs ~160 MiB per configuration (its snapshot module and
# the snapshot's compiled form, ~75 MiB each, and its own compiled module); 1 GiB keeps the last few
# configurations of such a guest, or hundreds of light ones, and no more.
DEFAULT_MAX_SIZE: Final = 1 << 30
STALE_TEMP_SECONDS: Final = 3600.0  # a temp file this old is a dead writer's, whatever its pid says
_ENTRY = re.compile(r"^(?P<stem>.+?)(?:-(?P<digest>[0-9a-f]{32})\.cwasm|\.about|\.lock|\.wasm|\.json|\.refused)$")
_TEMP = re.compile(r"\.(?P<pid>\d+)\.tmp$")
_configured_max: int | None = None
_held: dict[int, int] = {}  # id(module) -> fd holding its file's shared lock


def max_size() -> int:
    """The folder's size limit, in bytes."""
    env = os.environ.get(MAX_SIZE_ENV)
    if env:
        return parse_size(env, MAX_SIZE_ENV)
    return DEFAULT_MAX_SIZE if _configured_max is None else _configured_max


def configure(max_bytes: int | None) -> None:
    """The limit a config file sets (`cache_max_size`); the environment still wins."""
    global _configured_max
    _configured_max = max_bytes


def parse_size(text: str, what: str) -> int:
    """'512MiB', '2 GB', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"{what}: {text!r} is not a size (e.g. 512MiB, 2GiB, 1000000)")
    units = {"b": 1, "kb": 1000, "kib": 1 << 10, "mb": 1000**2, "mib": 1 << 20, "gb": 1000**3, "gib": 1 << 30,
             "tb": 1000**4, "tib": 1 << 40}
    return int(match.group(1)) * units[(match.group(2) or "b").lower()]


# -- one entry's files --
def candidates(folder: Path, stem: str, suffix: str) -> list[Path]:
    """The files of entry `stem` with a digest in their name, newest first."""
    try:
        found = [p for p in folder.glob(f"{stem}-*{suffix}") if _ENTRY.match(p.name)]
    except OSError:
        return []
    return sorted(found, key=_mtime, reverse=True)


def name_digest(path: Path) -> str | None:
    match = _ENTRY.match(path.name)
    return match.group("digest") if match else None


def reject(guest: str, path: Path, why: str) -> None:
    """A cache file that must not be used: one WARNING naming the guest and the file, and it is removed."""
    log.warning("guest %r: cache file %s is not used: %s; it is removed and built again", guest, path, why)
    with contextlib.suppress(OSError):
        path.unlink()


def record(path: Path, *, guest: str, kind: str) -> None:
    """Say whose an entry is (for `http-wasm-asgi cache info`); informative only, never trusted."""
    match = _ENTRY.match(path.name)
    if match is None:
        return
    with contextlib.suppress(OSError):
        write_atomic(path.parent / f"{match.group('stem')}.about", json.dumps({"guest": guest, "kind": kind}).encode())


def touch(path: Path) -> None:
    """Mark an entry used now (least recently used entries go first)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def hold(module: object, path: Path) -> None:
    """Keep a shared lock on `path` while `module` (which maps it) lives: pruning then passes it by."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
    except (ImportError, OSError):
        return
    key = id(module)
    _held[key] = fd
    weakref.finalize(module, _release, key)


def _release(key: int) -> None:
    fd = _held.pop(key, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


# -- the folder --
@dataclass
class Entry:
    """The files of one cached thing."""

    stem: str
    files: list[Path] = field(default_factory=list)
    size: int = 0
    used: float = 0.0  # the last time it was written or loaded
    in_use: bool = False  # a live process maps it
    about: dict[str, Any] = field(default_factory=dict)

    @property
    def guest(self) -> str:
        return str(self.about.get("guest", "?"))

    @property
    def kind(self) -> str:
        return str(self.about.get("kind", "?"))


def entries(folder: Path) -> list[Entry]:
    """Every entry of the cache folder, least recently used first."""
    groups: dict[str, Entry] = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    for name in names:
        match = _ENTRY.match(name)
        if match is None:
            continue
        entry = groups.setdefault(match.group("stem"), Entry(match.group("stem")))
        path = folder / name
        with contextlib.suppress(OSError):
            stat = path.stat()
            entry.files.append(path)
            entry.size += stat.st_size
            if not name.endswith(".lock"):
                entry.used = max(entry.used, stat.st_mtime)
    for entry in groups.values():
        entry.in_use = any(_locked(p) for p in entry.files if p.suffix == ".cwasm")
        entry.about = _about(folder, entry)
    return sorted(groups.values(), key=lambda e: e.used)


def _about(folder: Path, entry: Entry) -> dict[str, Any]:
    for name in (f"{entry.stem}.about", f"{entry.stem}.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError, KeyError, TypeError):  # never trusted
            data = json.loads((folder / name).read_text())
            if name.endswith(".json"):  # a snapshot's metadata
                return {"guest": data["payload"]["guest"], "kind": "snapshot"}
            return dict(data)
    return {}


def _locked(path: Path) -> bool:
    """Whether a live process holds a lock on `path` (it maps the file)."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock
    return False


def remove(entry: Entry) -> int:
    """Remove an entry's files (the lock last); the bytes freed."""
    freed = 0
    for path in sorted(entry.files, key=lambda p: p.suffix == ".lock"):
        with contextlib.suppress(OSError):
            size = path.stat().st_size
            path.unlink()
            freed += size
    return freed


def _dead_writers(name: str, mtime: float, now: float) -> bool:
    """Whether temp file `name` is a dead writer's: its pid is gone, or it is an hour old."""
    match = _TEMP.search(name)
    return match is None or not pid_alive(int(match.group("pid"))) or now - mtime > STALE_TEMP_SECONDS


def sweep_temp_files(folder: Path, now: float | None = None) -> list[Path]:
    """Remove the temp files of writers that died, in the folder and below it."""
    now = time.time() if now is None else now
    removed = []
    for path in _walk_temp(folder):
        with contextlib.suppress(OSError):
            if _dead_writers(path.name, path.stat().st_mtime, now):
                path.unlink()
                removed.append(path)
    return removed


def _walk_temp(folder: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError):
        yield from (p for p in folder.rglob("*.tmp") if p.is_file())


def prune(folder: Path, limit: int) -> tuple[list[Entry], list[Entry]]:
    """Remove least recently used entries until the folder holds at most `limit` bytes (entries in use
    stay), and the temp files of dead writers. Returns (removed, kept in use although over the limit)."""
    sweep_temp_files(folder)
    found = entries(folder)
    total = sum(e.size for e in found)
    removed: list[Entry] = []
    skipped: list[Entry] = []
    for entry in found:
        if total <= limit:
            break
        if entry.in_use:
            skipped.append(entry)
            continue
        total -= remove(entry)
        removed.append(entry)
    return removed, skipped


def _size_and_sweep(folder: Path) -> int:
    """The bytes of the folder's entries, in one pass that also removes temp files of writers that died:
    cheap enough for every write (no lock is probed)."""
    total, now = 0, time.time()
    with contextlib.suppress(OSError), os.scandir(folder) as found:
        for item in found:
            with contextlib.suppress(OSError):
                if item.name.endswith(".tmp") and item.is_file():
                    if _dead_writers(item.name, item.stat().st_mtime, now):
                        os.unlink(item.path)
                elif _ENTRY.match(item.name):
                    total += item.stat().st_size
    return total


def keep_within_limit(folder: Path) -> None:
    """After a write: prune to the limit when over it, logging what went (never failing the write)."""
    try:
        if _size_and_sweep(folder) <= max_size():
            return
        removed, _ = prune(folder, max_size())
    except (OSError, ValueError) as exc:
        log.warning("cache %s: pruning failed: %s", folder, exc)
        return
    if removed:
        log.info("cache %s: removed %d least recently used entries (%.1f MiB) to stay under %.0f MiB", folder,
                 len(removed), sum(e.size for e in removed) / 2**20, max_size() / 2**20)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
