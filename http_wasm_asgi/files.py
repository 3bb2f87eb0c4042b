"""Files the host writes for later runs (compiled modules, snapshots, fetched guests): whole or not at all.

A leaf module: every cache of the package writes through `write_atomic` and serialises writers of
one entry across processes with `entry_lock`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: Path, data: bytes | bytearray, mode: int = 0o600) -> None:
    """Write `data` to `path` through a temp file and `os.replace`: readers see the old file or the whole
    new one, never a part (a live process may map the old one: it lives on until unmapped). Owner-only
    by default: caches hold guests' state (a snapshot's memory holds the guest's config, its secrets).
    The temp file is removed when the write fails (a full disk), and the error raised."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (the writer of a temp file, a worker that published its figures)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on one cache entry across processes (best effort: none where flock is missing)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
