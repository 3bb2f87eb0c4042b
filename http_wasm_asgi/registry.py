"""Process-wide facts: what this process has loaded and done, in one place, and the package version.

Read at scrape time by the metrics (`server/metrics.py`): every open guest (its pool), the call
counters of each guest name (kept for the process's life, so that a reloaded guest of the same name
goes on counting), and the count of chains replaced and of reloads that failed. Written by the
layers that do those things (guest.py, asgi/middleware.py, server/config.py); a leaf module.
"""

from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .guest import Guest
    from .wasm.stats import CallStats

_open_guests: weakref.WeakSet[Guest] = weakref.WeakSet()
_stats_by_name: dict[str, CallStats] = {}
RELOADS: Final = {"ok": 0, "error": 0}  # chains replaced in this process, and reloads that failed


def guest_opened(guest: Guest) -> None:
    _open_guests.add(guest)


def guest_closed(guest: Guest) -> bool:
    """Forget a guest that closed; False when it was not open."""
    if guest not in _open_guests:
        return False
    _open_guests.discard(guest)
    return True


def open_guests() -> list[Guest]:
    """The guests whose pools are open, in this process (a chain being retired is still here)."""
    return list(_open_guests)


def stats_for(name: str, new: type[CallStats]) -> CallStats:
    """The call counters of guest `name` (made with `new()` the first time the name is loaded)."""
    stats = _stats_by_name.get(name)
    if stats is None:
        stats = _stats_by_name[name] = new()
    return stats


def guest_stats() -> dict[str, CallStats]:
    """The call counters of every guest name this process has loaded."""
    return dict(_stats_by_name)


@functools.cache
def package_version() -> str:
    """The installed package's version (pyproject.toml is its one source)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("http-wasm-asgi")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"
