"""Where things are: the repository root and the guest folders the tests load."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository root
WAT = ROOT / "guests" / "wat"
ZIG = ROOT / "guests" / "zig"
