"""Snapshots of a guest after its init (wizer's technique), in pure Python: `refusal`, `instrument` and
`rewrite` (the three steps, `steps.py`) over a reader and writer of the binary format (`encoding.py`,
`code.py`, `sections.py`). The same reader tells whether an export `runs_bounded` (`bounded.py`)."""

from .bounded import runs_bounded
from .encoding import SnapshotError
from .steps import (
    DEFAULT_GAP,
    DEFAULT_MAX_SEGMENTS,
    DENSE_IMAGE_SIZE,
    GLOBAL_EXPORT_PREFIX,
    MEMORY_EXPORT,
    PAGE_SIZE,
    SNAPSHOT_EXPORT_PREFIX,
    CapturedGlobal,
    Instrumented,
    cow_friendly,
    instrument,
    layout,
    refusal,
    rewrite,
)

__all__ = ["DEFAULT_GAP", "DEFAULT_MAX_SEGMENTS", "DENSE_IMAGE_SIZE", "GLOBAL_EXPORT_PREFIX", "MEMORY_EXPORT",
           "PAGE_SIZE", "SNAPSHOT_EXPORT_PREFIX", "CapturedGlobal", "Instrumented", "SnapshotError", "cow_friendly",
           "instrument", "layout", "refusal", "rewrite", "runs_bounded"]
